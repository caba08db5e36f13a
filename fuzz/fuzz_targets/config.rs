#![no_main]
//! Fuzz target: see `wss_chat_fuzz::config` for the property it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| wss_chat_fuzz::config(data));
