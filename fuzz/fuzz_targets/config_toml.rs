//! Fuzz target `config_toml`: the body is `qkd_node::fuzz_config_toml` (see its documentation).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| qkd_node::fuzz_config_toml(data));
