//! `qkd-bench disk`: the disk's own sync-write figures, the floor under any durable store.
//!
//! Two tests, each on a file in the chosen directory:
//! * 4 KiB writes, each followed by `fdatasync` (small commits: IOPS and latency);
//! * 1 MiB sequential writes, each followed by `fsync` (large commits: MB/s).
//!
//! With `fio` installed they run under fio (`--ioengine=sync`); otherwise, or with `--builtin`,
//! under an equivalent loop in this binary. fio is never required.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Arguments of `qkd-bench disk`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run time of each test.
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    pub runtime: Duration,
    /// Directory for the test files (default: the system temp directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Use the built-in loop even if fio is installed.
    #[arg(long)]
    pub builtin: bool,
}

/// Result of `qkd-bench disk`.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    /// "fio <version>" or "built-in".
    pub tool: String,
    pub tests: Vec<SyncWrite>,
}

/// One sync-write test.
#[derive(Debug, serde::Serialize)]
pub struct SyncWrite {
    pub name: String,
    /// Exact command (fio) or description (built-in).
    pub command: String,
    pub block_bytes: u64,
    /// Writes (each followed by its sync) per second.
    pub iops: f64,
    pub mb_per_s: f64,
    /// Latency of the sync call alone, where known.
    pub sync_p50_ms: Option<f64>,
    pub sync_p99_ms: Option<f64>,
}

impl Report {
    /// Prints the table.
    pub fn print(&self) {
        println!("disk sync writes ({})", self.tool);
        println!(
            "{:<22} {:>10} {:>10} {:>12} {:>12}",
            "test", "IOPS", "MB/s", "sync p50 ms", "sync p99 ms"
        );
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
        for t in &self.tests {
            println!(
                "{:<22} {:>10.0} {:>10.1} {:>12} {:>12}",
                t.name,
                t.iops,
                t.mb_per_s,
                f(t.sync_p50_ms),
                f(t.sync_p99_ms)
            );
        }
        for t in &self.tests {
            println!("  {}: {}", t.name, t.command);
        }
    }
}

/// The two tests: name, block size, sync flag for fio, file size.
const TESTS: [(&str, u64, &str, u64); 2] = [
    ("4k write+fdatasync", 4096, "--fdatasync=1", 64 << 20),
    ("1m seq write+fsync", 1 << 20, "--fsync=1", 256 << 20),
];

/// Runs the benchmark.
pub fn run(args: &Args) -> Result<Report> {
    let dir = qkd_testnet::scratch_dir(args.dir.as_deref(), "qkd-bench-disk-")?;
    let fio = if args.builtin { None } else { fio_version() };
    let mut tests = Vec::new();
    for (name, bs, sync, size) in TESTS {
        tests.push(match &fio {
            Some(_) => run_fio(dir.path(), name, bs, sync, size, args.runtime)?,
            None => run_builtin(dir.path(), name, bs, size, args.runtime)?,
        });
    }
    Ok(Report {
        tool: fio.unwrap_or_else(|| "built-in".into()),
        tests,
    })
}

fn fio_version() -> Option<String> {
    let out = Command::new("fio").arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn run_fio(
    dir: &Path,
    name: &str,
    bs: u64,
    sync: &str,
    size: u64,
    runtime: Duration,
) -> Result<SyncWrite> {
    let args = vec![
        format!("--name={}", name.replace(['+', ' '], "_")),
        format!("--directory={}", dir.display()),
        "--rw=write".into(),
        format!("--bs={bs}"),
        format!("--size={size}"),
        sync.into(),
        "--ioengine=sync".into(),
        format!("--runtime={}ms", runtime.as_millis().max(1)),
        "--time_based".into(),
        "--output-format=json".into(),
    ];
    let out = Command::new("fio")
        .args(&args)
        .output()
        .context("running fio")?;
    if !out.status.success() {
        bail!("fio failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    // fio may print notices before its JSON.
    let text = String::from_utf8_lossy(&out.stdout);
    let json = text.find('{').map_or("", |i| &text[i..]);
    let v: serde_json::Value = serde_json::from_str(json).context("parsing fio's JSON")?;
    let job = &v["jobs"][0];
    let pct = |p: &str| {
        job["sync"]["lat_ns"]["percentile"][p]
            .as_f64()
            .map(|ns| ns / 1e6)
    };
    Ok(SyncWrite {
        name: name.into(),
        command: format!("fio {}", args.join(" ")),
        block_bytes: bs,
        iops: job["write"]["iops"].as_f64().unwrap_or(0.0),
        mb_per_s: job["write"]["bw_bytes"].as_f64().unwrap_or(0.0) / 1e6,
        sync_p50_ms: pct("50.000000"),
        sync_p99_ms: pct("99.000000"),
    })
}

fn run_builtin(dir: &Path, name: &str, bs: u64, size: u64, runtime: Duration) -> Result<SyncWrite> {
    let path = dir.join(name.replace(['+', ' '], "_"));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    let buf: Vec<u8> = (0..bs).map(|i| (i * 7 + 13) as u8).collect();
    let data_only = bs < (1 << 20);
    let mut syncs: Vec<Duration> = Vec::new();
    let mut writes = 0u64;
    let mut offset = 0u64;
    let start = Instant::now();
    while start.elapsed() < runtime {
        if offset + bs > size {
            offset = 0;
            f.seek(SeekFrom::Start(0))?;
        }
        f.write_all(&buf)?;
        let t = Instant::now();
        if data_only {
            f.sync_data()?;
        } else {
            f.sync_all()?;
        }
        syncs.push(t.elapsed());
        offset += bs;
        writes += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    syncs.sort_unstable();
    let pct = |p: f64| {
        let rank = ((p / 100.0) * syncs.len() as f64).ceil() as usize;
        syncs
            .get(rank.clamp(1, syncs.len().max(1)) - 1)
            .map(|d| d.as_secs_f64() * 1000.0)
    };
    Ok(SyncWrite {
        name: name.into(),
        command: format!(
            "built-in: {bs}-byte sequential writes over a {} MiB file, each followed by {}",
            size >> 20,
            if data_only { "fdatasync" } else { "fsync" }
        ),
        block_bytes: bs,
        iops: writes as f64 / secs,
        mb_per_s: (writes * bs) as f64 / secs / 1e6,
        sync_p50_ms: pct(50.0),
        sync_p99_ms: pct(99.0),
    })
}
