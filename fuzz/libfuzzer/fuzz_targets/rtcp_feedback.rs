#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| veil_fuzz::rtcp_feedback(data));
