#![no_main]
//! Fuzz target: see `wss_chat_fuzz::tls_records` for the property it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| wss_chat_fuzz::tls_records(data));
