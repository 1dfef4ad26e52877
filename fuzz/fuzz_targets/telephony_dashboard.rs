#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| gatewayd_fuzz_targets::telephony_dashboard(data));
