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
fn skip_request_corpus() {
    run_corpus(&fuzz_dir(), "skip_request", |d| {
        let _ = qkd_kms::fuzzing::skip_request(d);
    });
}

/// The seeds are real SKIP requests: together they reach every answer but 500 (which the fuzz
/// service cannot cause; the conformance table in `skip.rs` reaches it).
#[test]
fn skip_request_seeds_reach_every_status() {
    let mut seen = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(fuzz_dir().join("corpus/skip_request")).unwrap() {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        seen.extend(qkd_kms::fuzzing::skip_request(&data));
    }
    let want: std::collections::BTreeSet<u16> = [200, 400, 403, 404, 405, 503].into();
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

/// Found by `store_codecs` (docs/fuzzing.md): a record whose slave count (or taken-range count)
/// is huge makes the decoder reserve memory for that many entries before reading one, and the
/// failed allocation aborts the process, so one corrupt record stops the node at every start
/// instead of being `StoreError::Corrupt`. Fixed in `kms/src/store/mod.rs`: a decoder never
/// reserves more entries than the record's remaining bytes can hold.
#[test]
fn store_records_with_huge_counts_are_corrupt_not_an_abort() {
    let huge = 0xfcff_0001u32.to_be_bytes();
    let mut pool_key = vec![1, 2, 0, 0, 0, 6];
    pool_key.extend_from_slice(b"ENC-A1");
    pool_key.extend_from_slice(&huge);
    let mut key = vec![0, 2, 0, 0, 0, 16];
    key.extend_from_slice(&[4; 16]);
    key.extend_from_slice(&[0, 0, 0, 6]);
    key.extend_from_slice(b"ENC-A1");
    key.extend_from_slice(&huge);
    let mut block = vec![2, 1, 0, 0, 0, 16];
    block.extend_from_slice(&[0xb1; 16]);
    block.extend_from_slice(&[0, 1, 0, 0, 1]);
    block.extend_from_slice(&huge);
    for input in [pool_key, key, block] {
        qkd_kms::fuzzing::store_codecs(&input);
    }
}
