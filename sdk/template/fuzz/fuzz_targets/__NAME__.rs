#![no_main]

// Arbitrary bytes, cut arbitrarily, in both directions: nothing may panic, and
// framing may not depend on the cuts.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    loupe_fuzz::fuzz::<__LIB__::__TYPE__>(data);
});
