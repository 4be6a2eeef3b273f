//! A component exporting `loupe:plugin/parser` at a version the host does not
//! speak (2.0.0): refused at install with the versions it does.
#![no_std]
#![cfg(target_arch = "wasm32")]

// The SDK is linked only for its zero-import runtime (allocator, panic handler).
use loupe_sdk as _;

mod bindings {
    wit_bindgen::generate!({
        inline: "
            package loupe:plugin@2.0.0;
            interface parser { describe: func() -> u32; }
            world plugin { export parser; }
        ",
    });
}

struct Future;

impl bindings::exports::loupe::plugin::parser::Guest for Future {
    fn describe() -> u32 {
        2
    }
}

bindings::export!(Future with_types_in bindings);
