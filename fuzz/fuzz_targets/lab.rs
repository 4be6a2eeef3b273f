#![no_main]
//! Lab files through the parser and topology checks `loupe lab up` uses.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    loupe_fuzz::lab_file(data);
});
