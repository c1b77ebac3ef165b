//! Fuzz target `skip_request`: the body is `qkd_kms::fuzzing::skip_request` (see its documentation).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = qkd_kms::fuzzing::skip_request(data);
});
