//! Each subcommand runs briefly and must report nonzero throughput and no mismatch.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_qkd-bench");

/// Runs `qkd-bench --json ARGS` and returns its report.
fn bench(args: &[&str]) -> Value {
    let out = Command::new(BENCH)
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qkd-bench {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["machine"]["cores"].as_u64().unwrap() >= 1, "{v}");
    v["report"].clone()
}

/// The `qkd-node` binary of the same target directory and profile. `cargo test --workspace` (the
/// README's test command) builds it with the same features as this test; a test of this package
/// alone does not build another package's binary, so it is built here when missing. Building it
/// unconditionally would select other features than the outer build and rebuild it every time.
fn node_bin() -> PathBuf {
    let exe = PathBuf::from(BENCH);
    let profile_dir = exe.parent().unwrap();
    let bin = profile_dir.join("qkd-node");
    if bin.is_file() {
        return bin;
    }
    let target_dir = profile_dir.parent().unwrap();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "-p",
            "qkd-node",
            "--bin",
            "qkd-node",
            "--target-dir",
        ])
        .arg(target_dir);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(bin.is_file(), "no {}", bin.display());
    bin
}

#[test]
fn etsi() {
    let bin = node_bin();
    let r = bench(&[
        "etsi",
        "--clients",
        "4",
        "--duration",
        "2s",
        "--warmup",
        "500ms",
        "--both-directions",
        "--nodes-bin",
        bin.to_str().unwrap(),
    ]);
    assert_eq!(r["errors"]["mismatches"], 0, "{r}");
    assert!(r["pairs_per_s"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["pair"]["p99_ms"].as_f64().unwrap() > 0.0, "{r}");
}

#[test]
fn ingest() {
    let r = bench(&["ingest", "--mib", "8", "--block-kib", "64"]);
    assert!(r["mbit_per_s"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["commits"].as_u64().unwrap() >= 1, "{r}");
}

#[test]
fn disk() {
    let r = bench(&["disk", "--builtin", "--runtime", "300ms"]);
    let tests = r["tests"].as_array().unwrap();
    assert_eq!(tests.len(), 2, "{r}");
    for t in tests {
        assert!(t["iops"].as_f64().unwrap() > 0.0, "{r}");
    }
}
