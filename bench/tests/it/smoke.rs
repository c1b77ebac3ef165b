//! Each subcommand runs briefly and must produce a well-formed report with no mismatch.
//!
//! No assertion depends on the machine's speed: rates measured over a short window may be zero
//! on a loaded 2-core machine (speed targets live in BENCHMARKS.md, not here). What is asserted is
//! what any machine must give: correct keys, counted requests, and finite, non-negative figures.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_qkd-bench");

/// A figure of a report: present, finite and not negative.
fn figure(v: &Value, r: &Value) -> f64 {
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("missing figure in {r}"));
    assert!(x.is_finite() && x >= 0.0, "{x} in {r}");
    x
}

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

/// The `qkd-node` binary of the same target directory and profile (built when missing).
fn node_bin() -> PathBuf {
    qkd_testnet::node_bin_beside(BENCH.as_ref())
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
        "--pool-keys",
        "256",
        "--nodes-bin",
        bin.to_str().unwrap(),
    ]);
    assert_eq!(r["errors"]["mismatches"], 0, "{r}");
    figure(&r["pairs_per_s"], &r);
    figure(&r["pair"]["p99_ms"], &r);
    // Both end nodes' store writers are reported (metrics are on by default).
    let store = r["store"].as_array().unwrap();
    assert_eq!(store.len(), 2, "{r}");
    for s in store {
        figure(&s["commits"], &r);
        figure(&s["disk_bytes"], &r);
    }
}

/// The same loop between A and E of the five-node chain: every pool refill crosses four hops.
#[test]
fn etsi_relayed() {
    let r = short_etsi(&["--pair", "relayed", "--pool-keys", "512"]);
    assert_eq!(r["pair_kind"], "relayed", "{r}");
    // A drained pool may answer 503 on a slow machine while its relayed refill runs; a key
    // handed out at A is always at E.
    for e in ["mismatches", "dec_keys"] {
        assert_eq!(r["errors"][e], 0, "{r}");
    }
    let nodes: Vec<&str> = r["store"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["A", "E"], "{r}");
    figure(&r["pairs_per_s"], &r);
}

/// A short run of `etsi` with two clients in both directions, with `extra` arguments.
fn short_etsi(extra: &[&str]) -> Value {
    let bin = node_bin();
    let mut args = vec![
        "etsi",
        "--clients",
        "2",
        "--duration",
        "2s",
        "--warmup",
        "500ms",
        "--both-directions",
        "--nodes-bin",
        bin.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    bench(&args)
}

/// The loop of `etsi` over another front end (`--api`, with `extra` arguments), two clients:
/// keys must match and no request may fail (a broken path fails every request, however slow
/// the machine).
fn front_end(api: &str, extra: &[&str]) -> Value {
    let mut args = vec!["--api", api, "--pool-keys", "256"];
    args.extend_from_slice(extra);
    let r = short_etsi(&args);
    assert_eq!(r["api"], api, "{r}");
    for e in ["mismatches", "enc_keys", "dec_keys"] {
        assert_eq!(r["errors"][e], 0, "{r}");
    }
    figure(&r["pairs_per_s"], &r);
    figure(&r["pairs_per_node_core_s"], &r);
    r
}

/// The same loop over SKIP (a new TLS connection per request).
#[test]
fn etsi_over_skip() {
    front_end("skip", &[]);
}

/// The same loop over gRPC (GetKeys, GetKeysByIds) with the nodes' metrics off.
#[test]
fn etsi_over_grpc_with_metrics_off() {
    let r = front_end("grpc", &["--metrics", "off"]);
    assert_eq!(r["metrics"], "off", "{r}");
    assert_eq!(r["errors"]["transport"], 0, "{r}");
}

#[test]
fn relay() {
    let bin = node_bin();
    let r = bench(&[
        "relay",
        "--pool-keys",
        "64",
        "--concurrency",
        "1,2",
        "--requests",
        "4",
        "--clients",
        "2",
        "--number",
        "16",
        "--warmup",
        "500ms",
        "--duration",
        "1500ms",
        "--scarce-link-rate-bps",
        "2000000",
        "--scarce-warmup",
        "500ms",
        "--scarce-duration",
        "1500ms",
        "--scarce-clients",
        "1",
        "--nodes-bin",
        bin.to_str().unwrap(),
    ]);
    for level in r["latency"].as_array().unwrap() {
        // On-demand requests are counted, not timed: each is retried on 503 with backoff as a
        // client would (qkd-bench's client_backoff), so some of the 4 get through however
        // loaded the machine is.
        assert!(level["enc_keys"]["count"].as_u64().unwrap() >= 1, "{r}");
        assert_eq!(level["errors"]["mismatches"], 0, "{r}");
    }
    let t = &r["throughput"];
    figure(&t["delivered_keys_per_s"], &r);
    figure(&t["relayed_keys_per_s"], &r);
    assert_eq!(t["errors"]["mismatches"], 0, "{r}");
    let s = &r["scarce"];
    assert_eq!(s["links"].as_array().unwrap().len(), 4, "{r}");
    figure(&s["busiest_pad_fraction"], &r);
    assert_eq!(s["errors"]["mismatches"], 0, "{r}");
}

/// Five real nodes in a random mesh: the scenario runs end to end (start, quiet window, relay
/// to every hop distance, a cut link withdrawn and restored in every node's view) and reports
/// finite figures. Nothing here depends on speed: convergence is waited for, not timed.
#[test]
fn growth() {
    let bin = node_bin();
    let r = bench(&[
        "growth",
        "--nodes",
        "5",
        "--seed",
        "1",
        "--window",
        "1s",
        "--requests",
        "2",
        "--nodes-bin",
        bin.to_str().unwrap(),
    ]);
    let sizes = r["sizes"].as_array().unwrap();
    assert_eq!(sizes.len(), 1, "{r}");
    let s = &sizes[0];
    assert_eq!(s["nodes"], 5, "{r}");
    assert_eq!(s["links"], 7, "{r}");
    assert_eq!(s["errors"], 0, "{r}");
    // Adverts flow between every pair of neighbours all the time.
    assert!(figure(&s["control_bytes_per_s"], &r) > 0.0, "{r}");
    figure(&s["failure"]["withdraw_s"], &r);
    figure(&s["failure"]["restore_s"], &r);
    let relay = s["relay"].as_array().unwrap();
    assert!(!relay.is_empty(), "{r}");
    for (i, h) in relay.iter().enumerate() {
        assert_eq!(h["hops"], i + 1, "one destination per hop distance: {r}");
        assert_eq!(h["enc_keys"]["count"], 2, "{r}");
        assert!(
            h["links_used"].as_u64().unwrap() >= h["hops"].as_u64().unwrap(),
            "{r}"
        );
    }
}

#[test]
fn ingest() {
    let r = bench(&["ingest", "--mib", "8", "--block-kib", "64"]);
    figure(&r["mbit_per_s"], &r);
    assert!(r["commits"].as_u64().unwrap() >= 1, "{r}");
}

#[test]
fn disk() {
    let r = bench(&["disk", "--builtin", "--runtime", "300ms"]);
    let tests = r["tests"].as_array().unwrap();
    assert_eq!(tests.len(), 2, "{r}");
    for t in tests {
        figure(&t["iops"], &r);
    }
}

#[test]
fn device() {
    let r = bench(&[
        "device",
        "--rate-bps",
        "2000000",
        "--duration",
        "1s",
        "--warmup",
        "300ms",
    ]);
    assert_eq!(r["mismatches"], 0, "{r}");
    assert!(r["blocks"].as_u64().unwrap() > 0, "{r}");
    assert!(r["adapter_cpu_percent"].as_f64().unwrap() >= 0.0, "{r}");
}

#[test]
fn conform() {
    let bin = node_bin();
    let r = bench(&[
        "conform",
        "--runs",
        "1",
        "--nodes-bin",
        bin.to_str().unwrap(),
    ]);
    assert_eq!(r["failed"], 0, "{r}");
    assert!(r["passed"].as_u64().unwrap() > 30, "{r}");
    assert_eq!(r["runs_s"].as_array().unwrap().len(), 1, "{r}");
}

#[test]
fn stream() {
    let bin = node_bin();
    let r = bench(&[
        "stream",
        "--rate",
        "50",
        "--keys",
        "20",
        "--nodes-bin",
        bin.to_str().unwrap(),
    ]);
    assert_eq!(r["mismatched"], 0, "{r}");
    for end in ["master", "slave"] {
        assert_eq!(r[end]["keys"], 20, "{r}");
        figure(&r[end]["achieved_keys_per_s"], &r);
        figure(&r[end]["jitter"]["max_ms"], &r);
        figure(&r[end]["interval"]["p50_ms"], &r);
    }
}

/// Both tunnels carry every byte, the rekeyed one through more than one epoch.
#[test]
fn link() {
    let bin = node_bin();
    let link = qkd_testnet::bin_beside(BENCH.as_ref(), "qkd-link", "qkd-link");
    let r = bench(&[
        "link",
        "--rounds",
        "1",
        "--duration",
        "3s",
        "--nodes-bin",
        bin.to_str().unwrap(),
        "--link-bin",
        link.to_str().unwrap(),
    ]);
    figure(&r["rekeyed"]["median_mb_per_s"], &r);
    figure(&r["fixed"]["median_mb_per_s"], &r);
    assert_eq!(r["fixed"]["epochs_per_run"][0], 1, "{r}");
    assert!(
        r["rekeyed"]["epochs_per_run"][0].as_u64().unwrap() >= 2,
        "{r}"
    );
}

/// A node with 20 SAE pairs: every pool gauge is in the exposition, and scrapes are timed.
#[test]
fn scrape() {
    let bin = node_bin();
    let r = bench(&[
        "scrape",
        "--pairs",
        "20",
        "--scrapes",
        "5",
        "--pool-keys",
        "64",
        "--nodes-bin",
        bin.to_str().unwrap(),
    ]);
    assert_eq!(r["pairs"], 20, "{r}");
    assert_eq!(r["pool_series"], 20, "{r}");
    assert_eq!(r["scrape"]["count"], 5, "{r}");
    assert!(r["response_bytes"].as_u64().unwrap() > 1000, "{r}");
    figure(&r["scrape"]["p99_ms"], &r);
}
