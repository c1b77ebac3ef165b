//! Fuzz target `store_codecs`: the body is `qkd_kms::fuzzing::store_codecs` (see its documentation).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| qkd_kms::fuzzing::store_codecs(data));
