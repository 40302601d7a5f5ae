#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| veil_fuzz::e2ee_blob(data));
