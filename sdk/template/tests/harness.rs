//! The component through Loupe's own plugin host, against the parser run
//! natively, whole and at every split: `cargo build --release --target
//! wasm32-wasip2` first, then `cargo test --features harness`.
#![cfg(feature = "harness")]
#![allow(clippy::unwrap_used)]

use __LIB__::__TYPE__;
use loupe_sdk::Direction::{ToClient, ToServer};
use loupe_sdk::harness::Harness;

#[test]
fn the_component_frames_as_the_native_parser_does() {
    let wasm = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/wasm32-wasip2/release/__LIB__.wasm"
    );
    let harness = Harness::<__TYPE__>::load(wasm).unwrap();
    harness
        .check(&[
            (ToServer, b"SET greeting hello\r\nGET greeting\r\n"),
            (ToClient, b"+OK\r\n+hello\r\n"),
        ])
        .unwrap();
}
