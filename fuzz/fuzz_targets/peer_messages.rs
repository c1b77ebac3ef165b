//! Fuzz target `peer_messages`: the body is `qkd_kms::fuzzing::peer_messages` (see its documentation).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| qkd_kms::fuzzing::peer_messages(data));
