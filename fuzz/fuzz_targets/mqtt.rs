#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    loupe_fuzz::fuzz::<loupe_plugin_mqtt::Mqtt>(data);
});
