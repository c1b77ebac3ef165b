//! Every fuzz target's body over its committed corpus, as an ordinary test (docs/fuzzing.md):
//! `fuzz/corpus/<target>/` (seeds and what fuzzing kept) and `fuzz/regressions/<target>/` (each
//! input that once crashed a body). Needs nothing but stable Rust; `cargo fuzz` is not involved.

use std::path::{Path, PathBuf};

use qkd_kms::fuzzing::run_corpus;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

#[test]
fn etsi_request_corpus() {
    run_corpus(&fuzz_dir(), "etsi_request", |d| {
        let _ = qkd_kms::fuzzing::etsi_request(d);
    });
}

/// The seeds are real requests: together they reach every answer the policy has.
#[test]
fn etsi_request_seeds_reach_every_status() {
    let mut seen = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(fuzz_dir().join("corpus/etsi_request")).unwrap() {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        seen.extend(qkd_kms::fuzzing::etsi_request(&data));
    }
    let want: std::collections::BTreeSet<u16> = [200, 400, 401, 404, 405, 503].into();
    assert_eq!(seen, want);
}

#[test]
fn peer_messages_corpus() {
    run_corpus(
        &fuzz_dir(),
        "peer_messages",
        qkd_kms::fuzzing::peer_messages,
    );
}

#[test]
fn store_codecs_corpus() {
    run_corpus(&fuzz_dir(), "store_codecs", qkd_kms::fuzzing::store_codecs);
}
