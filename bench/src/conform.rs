//! `qkd-bench conform`: how long `qkd-conform`'s whole suite takes against a local KME.
//!
//! Lays out the demo pair (`qkd-node demo --setup-only --topology pair`), starts both nodes,
//! waits until the ENC-A1 → ENC-B1 pool is full and quiet, then runs the suite (the
//! `qkd-conform` library, exactly what the binary runs) `--runs` times with ENC-A1 as master,
//! ENC-B1 as slave and ENC-B2 as third SAE. The demo does not let ENC-A1 pair with ENC-B2, so
//! the multicast case is skipped (401) here; the node's own test enables that pair.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use qkd_testnet::Layout;

/// Arguments of `qkd-bench conform`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Whole-suite runs to time.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// The `qkd-node` binary (default: next to this binary).
    #[arg(long)]
    pub nodes_bin: Option<PathBuf>,
    /// Directory in which the temporary demo network is created.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// What `qkd-bench conform` measured.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    /// Seconds per whole-suite run.
    pub runs_s: Vec<f64>,
    pub cases: usize,
    pub passed: usize,
    pub skipped: usize,
    pub failed: usize,
    pub keys_consumed_per_run: u32,
}

impl Report {
    pub fn print(&self) {
        let max = self.runs_s.iter().copied().fold(0.0, f64::max);
        let min = self.runs_s.iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "qkd-conform whole suite against two local qkd-node processes: {} runs, {:.3} s to {:.3} s each",
            self.runs_s.len(),
            min,
            max
        );
        println!(
            "  {} cases: {} passed, {} skipped, {} failed; {} keys consumed per run",
            self.cases, self.passed, self.skipped, self.failed, self.keys_consumed_per_run
        );
    }
}

pub async fn run(a: &Args) -> Result<Report> {
    let bin = qkd_testnet::node_bin(a.nodes_bin.as_ref())?;
    let net = crate::start_network(
        &bin,
        a.dir.as_deref(),
        &Layout {
            topology: "pair".into(),
            link_rate_bps: 10_000_000,
            pool_keys: Some(256),
            batch_keys: None,
            log_level: "warn".into(),
        },
    )?;
    let master = net.sae_client("ENC-A1")?;
    net.wait_settled(
        &[(master, "A".into(), "ENC-B1".into())],
        Duration::from_secs(120),
    )
    .await?;
    let dir = net.path();
    let url = |node: &str| -> Result<String> {
        Ok(net
            .try_base(node)?
            .trim_end_matches("/api/v1/keys/")
            .to_string())
    };
    let sae = |role: &str, id: &str, node: &str| -> Result<String> {
        Ok(format!(
            "[{role}]\nurl = \"{}\"\nsae_id = \"{id}\"\ncert = \"pki/sae-{id}.crt\"\nkey = \"pki/sae-{id}.key\"\n",
            url(node)?
        ))
    };
    let toml = format!(
        "ca = \"pki/ca.crt\"\nmax_keys = 200\n{}{}{}",
        sae("master", "ENC-A1", "A")?,
        sae("slave", "ENC-B1", "B")?,
        sae("third", "ENC-B2", "B")?
    );
    let path = dir.join("conform.toml");
    std::fs::write(&path, toml)?;
    let config = qkd_conform::Config::load(&path).context("conform.toml")?;
    let mut runs_s = Vec::new();
    let mut last = None;
    for _ in 0..a.runs.max(1) {
        let t0 = Instant::now();
        let report = qkd_conform::run(&config, |_| {}).await?;
        runs_s.push(t0.elapsed().as_secs_f64());
        net.check_alive()?;
        last = Some(report);
    }
    let Some(r) = last else {
        bail!("no run");
    };
    let count = |o| r.cases.iter().filter(|c| c.outcome == o).count();
    Ok(Report {
        runs_s,
        cases: r.cases.len(),
        passed: count(qkd_conform::Outcome::Pass),
        skipped: count(qkd_conform::Outcome::Skip),
        failed: count(qkd_conform::Outcome::Fail),
        keys_consumed_per_run: r.consumed_keys,
    })
}
