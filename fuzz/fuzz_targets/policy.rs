#![no_main]
//! CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy texts (YAML or JSON, one
//! or more documents) through the parser `loupe policy apply` and the agent use.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    loupe_fuzz::policy(data);
});
