//! The hybrid layer (`qkd_kms::hybrid`): known-answer vectors and the authenticated exchange.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod exchange;
mod kat;

/// The benchmark's workloads, run a few times each so the benchmark cannot rot.
#[allow(dead_code)] // its `main` is for `cargo bench`
#[path = "../../../benches/hybrid.rs"]
mod bench;

#[test]
fn bench_smoke() {
    assert!(bench::run(false).len() >= 6);
}
