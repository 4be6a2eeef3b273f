#![no_main]
//! Agent config files through the parser and validation `loupe agent` uses.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    loupe_fuzz::agent_config(data);
});
