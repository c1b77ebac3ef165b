//! `qkd-bench etsi`: key pairs/s through ETSI GS QKD 014 against two real node processes.
//!
//! Lays out the demo network (`qkd-node demo --setup-only`) in a temporary directory with fast
//! simulated links, starts `qkd-node run` for A and B, and runs N clients. Each client holds its
//! own keep-alive mutual-TLS connection to each node (one `reqwest::Client` per SAE identity) and
//! loops: `enc_keys` at the master's node, then `dec_keys` of that key ID at the slave's node,
//! checking that both answers carry the same bytes. Clients alternate between the two allowed
//! SAE pairs (A1-B1, A2-B2) so both pairs and their connections are exercised.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;

use crate::measure::{CpuSnapshot, CpuUse, Latency, Samples};

/// Arguments of `qkd-bench etsi`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Concurrent clients, each with its own connections.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Measured window (after the warm-up).
    #[arg(long, default_value = "20s", value_parser = crate::parse_duration)]
    pub duration: Duration,
    /// Warm-up before the window: requests run but are not counted.
    #[arg(long, default_value = "2s", value_parser = crate::parse_duration)]
    pub warmup: Duration,
    /// Key size in bits (a multiple of 8).
    #[arg(long, default_value_t = 256)]
    pub size: u32,
    /// Alternate directions: every other round the B-side SAE is the master.
    #[arg(long)]
    pub both_directions: bool,
    /// The `qkd-node` binary (default: next to this binary).
    #[arg(long)]
    pub nodes_bin: Option<PathBuf>,
    /// Secret key rate of the simulated link, bit/s (fast, so key never runs out).
    #[arg(long, default_value_t = 200_000_000)]
    pub link_rate_bps: u64,
    /// Directory in which the temporary demo network is created.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Count each node's fsync/fdatasync calls in the window with `perf stat` (needs perf and
    /// permission to trace syscalls).
    #[arg(long)]
    pub perf: bool,
}

/// Result of `qkd-bench etsi`.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub clients: usize,
    pub key_bits: u32,
    pub both_directions: bool,
    pub window_s: f64,
    pub link_rate_bps: u64,
    /// Key pairs (enc_keys answered and dec_keys returned the same bytes) per second in the window.
    pub pairs_per_s: f64,
    pub enc_keys: Latency,
    pub dec_keys: Latency,
    pub pair: Latency,
    pub errors: Errors,
    pub cpu: CpuUse,
    /// With `--perf`: fsync + fdatasync calls per second of each node in the window.
    pub syncs_per_s: Vec<(String, f64)>,
}

/// Failures over the whole run (warm-up included).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Errors {
    /// enc_keys answered with a status other than 200 or did not parse.
    pub enc_keys: u64,
    /// dec_keys answered with a status other than 200 or did not parse.
    pub dec_keys: u64,
    /// Connection or TLS failures.
    pub transport: u64,
    /// dec_keys returned other bytes (or another key ID) than enc_keys: must always be 0.
    pub mismatches: u64,
    /// The first few error messages, for diagnosis.
    pub samples: Vec<String>,
}

impl Report {
    /// Prints the table.
    pub fn print(&self) {
        println!(
            "etsi: {} clients, {}-bit keys, {} window {:.1} s, simulated link {} Mbit/s",
            self.clients,
            self.key_bits,
            if self.both_directions {
                "both directions,"
            } else {
                "A->B,"
            },
            self.window_s,
            self.link_rate_bps / 1_000_000
        );
        println!("key pairs/s: {:.0}", self.pairs_per_s);
        println!(
            "{:<10} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency", "count", "mean ms", "p50 ms", "p99 ms", "max ms"
        );
        for (name, l) in [
            ("enc_keys", &self.enc_keys),
            ("dec_keys", &self.dec_keys),
            ("pair", &self.pair),
        ] {
            println!(
                "{:<10} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                name, l.count, l.mean_ms, l.p50_ms, l.p99_ms, l.max_ms
            );
        }
        let e = &self.errors;
        println!(
            "errors: enc_keys {}, dec_keys {}, transport {}, mismatches {}",
            e.enc_keys, e.dec_keys, e.transport, e.mismatches
        );
        for s in &e.samples {
            println!("  e.g. {s}");
        }
        self.cpu.print();
        for (node, n) in &self.syncs_per_s {
            println!(
                "{node}: {n:.0} fsync+fdatasync/s ({:.2} per key pair)",
                n / self.pairs_per_s.max(1e-9)
            );
        }
    }

    /// Fails the run if any key pair did not match (a correctness failure, not a slow run).
    pub fn check(&self) -> Result<()> {
        if self.errors.mismatches > 0 {
            bail!("{} key pairs did not match", self.errors.mismatches);
        }
        Ok(())
    }
}

/// Runs the benchmark.
pub async fn run(args: &Args) -> Result<Report> {
    if args.size == 0 || !args.size.is_multiple_of(8) {
        bail!("--size must be a positive multiple of 8 bits");
    }
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    let bin = match &args.nodes_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the bench binary has no directory")?
            .join("qkd-node"),
    };
    if !bin.is_file() {
        bail!(
            "no qkd-node binary at {} (build it with `cargo build --release -p qkd-node` into the \
             same target directory, or pass --nodes-bin)",
            bin.display()
        );
    }
    let mut net = Network::start(&bin, args)?;
    let ids = [("ENC-A1", "ENC-B1"), ("ENC-A2", "ENC-B2")];
    let mut pairs = Vec::new();
    for (a, b) in ids {
        pairs.push(Arc::new(PairIdentity {
            a: a.into(),
            b: b.into(),
            a_pem: net.identity(a)?,
            b_pem: net.identity(b)?,
        }));
    }
    let ca = std::fs::read(net.dir.path().join("pki").join("ca.crt"))?;
    let bases = [net.base("A")?, net.base("B")?];
    // Key material must be there before the clock starts.
    let probe = client(&ca, &pairs[0].a_pem)?;
    net.wait_for_key(&probe, &bases[0], &pairs[0].b, 1_000)
        .await?;

    let start = Instant::now();
    let warm_end = start + args.warmup;
    let stop = warm_end + args.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.clients {
        let pair = pairs[i % pairs.len()].clone();
        let c = Client {
            to_a: client(&ca, &pair.a_pem)?,
            to_b: client(&ca, &pair.b_pem)?,
            bases: bases.clone(),
            pair,
            size: args.size,
            both: args.both_directions,
            // Clients start out of phase so directions mix from the first round.
            round: i as u64,
        };
        tasks.spawn(c.run(warm_end, stop));
    }
    let procs = vec![
        ("node A".to_string(), net.pid("A")),
        ("node B".to_string(), net.pid("B")),
        ("load generator".to_string(), std::process::id()),
    ];
    tokio::time::sleep_until(warm_end.into()).await;
    let cpu0 = CpuSnapshot::take(&procs);
    let perf: Vec<(String, std::process::Child)> = if args.perf {
        ["A", "B"]
            .iter()
            .map(|n| Ok((format!("node {n}"), count_syncs(net.pid(n), args.duration)?)))
            .collect::<Result<_>>()?
    } else {
        Vec::new()
    };
    tokio::time::sleep_until(stop.into()).await;
    let cpu = cpu0.until(&CpuSnapshot::take(&procs));
    let mut syncs_per_s = Vec::new();
    for (node, child) in perf {
        let out = child.wait_with_output()?;
        syncs_per_s.push((
            node,
            perf_total(&String::from_utf8_lossy(&out.stderr))? / args.duration.as_secs_f64(),
        ));
    }

    let mut enc = Samples::default();
    let mut dec = Samples::default();
    let mut pair = Samples::default();
    let mut errors = Errors::default();
    while let Some(r) = tasks.join_next().await {
        let r = r?;
        enc.extend(r.enc);
        dec.extend(r.dec);
        pair.extend(r.pair);
        errors.enc_keys += r.errors.enc_keys;
        errors.dec_keys += r.errors.dec_keys;
        errors.transport += r.errors.transport;
        errors.mismatches += r.errors.mismatches;
        for s in r.errors.samples {
            if errors.samples.len() < 5 {
                errors.samples.push(s);
            }
        }
    }
    net.check_alive()?;
    let window = args.duration.as_secs_f64();
    let pair = pair.summary();
    Ok(Report {
        clients: args.clients,
        key_bits: args.size,
        both_directions: args.both_directions,
        window_s: window,
        link_rate_bps: args.link_rate_bps,
        pairs_per_s: pair.count as f64 / window,
        enc_keys: enc.summary(),
        dec_keys: dec.summary(),
        pair,
        errors,
        cpu,
        syncs_per_s,
    })
}

/// Syscalls that make data durable, counted by `perf stat`.
const SYNC_EVENTS: &str = "syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync";

/// Starts `perf stat` counting `pid`'s sync calls for `window`.
fn count_syncs(pid: u32, window: Duration) -> Result<std::process::Child> {
    Command::new("perf")
        .args(["stat", "-x", ",", "-e", SYNC_EVENTS, "-p"])
        .arg(pid.to_string())
        .arg("--")
        .arg("sleep")
        .arg(format!("{:.3}", window.as_secs_f64()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting `perf stat` (is perf installed?)")
}

/// Sum of the counts of `perf stat -x ,` output.
fn perf_total(csv: &str) -> Result<f64> {
    let counts: Vec<f64> = csv
        .lines()
        .filter(|l| l.contains("sys_enter_f"))
        .filter_map(|l| l.split(',').next()?.trim().parse().ok())
        .collect();
    if counts.is_empty() {
        bail!("`perf stat` counted nothing (no permission to trace syscalls?):\n{csv}");
    }
    Ok(counts.iter().sum())
}

/// An allowed SAE pair and the PEM (certificate + key) of each side.
#[derive(Debug)]
struct PairIdentity {
    a: String,
    b: String,
    a_pem: Vec<u8>,
    b_pem: Vec<u8>,
}

/// One benchmark client: its own connection to each node.
#[derive(Debug)]
struct Client {
    to_a: reqwest::Client,
    to_b: reqwest::Client,
    /// ETSI 014 base URLs of A and B, ending in `/api/v1/keys/`.
    bases: [String; 2],
    pair: Arc<PairIdentity>,
    size: u32,
    both: bool,
    round: u64,
}

/// What one client measured.
#[derive(Debug, Default)]
struct ClientResult {
    enc: Samples,
    dec: Samples,
    pair: Samples,
    errors: Errors,
}

#[derive(Debug, serde::Deserialize)]
struct KeyContainer {
    keys: Vec<KeyEntry>,
}

#[derive(Debug, serde::Deserialize)]
struct KeyEntry {
    #[serde(rename = "key_ID")]
    key_id: String,
    key: String,
}

/// A failed request: which counter it goes to, and why.
enum Failure {
    Status(String),
    Transport(String),
}

impl Client {
    async fn run(mut self, warm_end: Instant, stop: Instant) -> ClientResult {
        let mut out = ClientResult::default();
        loop {
            let t0 = Instant::now();
            if t0 >= stop {
                break;
            }
            let forward = !self.both || self.round.is_multiple_of(2);
            self.round += 1;
            let (enc_c, enc_base, slave, dec_c, dec_base, master) = if forward {
                (
                    &self.to_a,
                    &self.bases[0],
                    &self.pair.b,
                    &self.to_b,
                    &self.bases[1],
                    &self.pair.a,
                )
            } else {
                (
                    &self.to_b,
                    &self.bases[1],
                    &self.pair.a,
                    &self.to_a,
                    &self.bases[0],
                    &self.pair.b,
                )
            };
            let url = format!("{enc_base}{slave}/enc_keys?number=1&size={}", self.size);
            let (id, key) = match fetch(enc_c, &url).await {
                Ok(mut keys) if keys.len() == 1 => keys.remove(0),
                Ok(keys) => {
                    out.errors
                        .note_status(true, format!("enc_keys returned {} keys", keys.len()));
                    continue;
                }
                Err(f) => {
                    out.errors.note(true, f);
                    // Back off a little so a refusing node is not spun on.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            };
            let t1 = Instant::now();
            let url = format!("{dec_base}{master}/dec_keys?key_ID={id}");
            let got = fetch(dec_c, &url).await;
            let t2 = Instant::now();
            match got {
                Ok(keys) => {
                    let ok = keys.len() == 1
                        && keys[0].0 == id
                        && keys[0].1 == key
                        && key.len() * 8 == self.size as usize;
                    if !ok {
                        out.errors.mismatches += 1;
                        if out.errors.samples.len() < 3 {
                            out.errors.samples.push(format!("mismatch for key {id}"));
                        }
                        continue;
                    }
                }
                Err(f) => {
                    out.errors.note(false, f);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            }
            if t0 >= warm_end && t2 <= stop {
                out.enc.push(t1 - t0);
                out.dec.push(t2 - t1);
                out.pair.push(t2 - t0);
            }
        }
        out
    }
}

impl Errors {
    fn note(&mut self, enc: bool, f: Failure) {
        match f {
            Failure::Status(s) => self.note_status(enc, s),
            Failure::Transport(s) => {
                self.transport += 1;
                self.sample(s);
            }
        }
    }

    fn note_status(&mut self, enc: bool, s: String) {
        if enc {
            self.enc_keys += 1;
        } else {
            self.dec_keys += 1;
        }
        self.sample(s);
    }

    fn sample(&mut self, s: String) {
        if self.samples.len() < 3 {
            self.samples.push(s);
        }
    }
}

/// GETs `url` and returns its keys as (key_ID, bytes).
async fn fetch(c: &reqwest::Client, url: &str) -> Result<Vec<(String, Vec<u8>)>, Failure> {
    let r = c
        .get(url)
        .send()
        .await
        .map_err(|e| Failure::Transport(format!("{url}: {e}")))?;
    let status = r.status();
    let body = r
        .bytes()
        .await
        .map_err(|e| Failure::Transport(format!("{url}: {e}")))?;
    if status != reqwest::StatusCode::OK {
        return Err(Failure::Status(format!(
            "{url}: {status} {}",
            String::from_utf8_lossy(&body)
        )));
    }
    let kc: KeyContainer = serde_json::from_slice(&body)
        .map_err(|e| Failure::Status(format!("{url}: bad key container: {e}")))?;
    kc.keys
        .into_iter()
        .map(|k| {
            base64::engine::general_purpose::STANDARD
                .decode(&k.key)
                .map(|b| (k.key_id, b))
                .map_err(|e| Failure::Status(format!("{url}: bad base64: {e}")))
        })
        .collect()
}

/// An HTTPS client presenting `identity_pem` (certificate + key) and trusting only `ca`.
fn client(ca: &[u8], identity_pem: &[u8]) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca)?])
        .identity(reqwest::Identity::from_pem(identity_pem)?)
        .no_proxy()
        .http1_only()
        .pool_max_idle_per_host(4)
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// The two node processes and their directory; both are killed on drop.
#[derive(Debug)]
struct Network {
    dir: tempfile::TempDir,
    nodes: Vec<(String, Child)>,
}

impl Network {
    fn start(bin: &Path, args: &Args) -> Result<Self> {
        let dir = crate::scratch_dir(args.dir.as_deref(), "qkd-bench-")?;
        let out = Command::new(bin)
            .args(["demo", "--setup-only", "--topology", "pair", "--link-rate-bps"])
            .arg(args.link_rate_bps.to_string())
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        if !out.status.success() {
            bail!(
                "qkd-node demo --setup-only failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut net = Self {
            dir,
            nodes: Vec::new(),
        };
        for node in ["A", "B"] {
            let log = std::fs::File::create(net.dir.path().join(node).join("node.log"))?;
            let child = Command::new(bin)
                .arg("run")
                .arg("--config")
                .arg(net.dir.path().join(node).join("node.toml"))
                .env("QKD_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting node {node}"))?;
            net.nodes.push((node.to_string(), child));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for node in ["A", "B"] {
            while !net.listen_file(node).exists() {
                net.check_alive()?;
                if Instant::now() > deadline {
                    bail!("node {node} did not start:\n{}", tail(&net.log(node)));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(net)
    }

    fn listen_file(&self, node: &str) -> PathBuf {
        self.dir.path().join(node).join("data").join("listen.json")
    }

    fn log(&self, node: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(node).join("node.log")).unwrap_or_default()
    }

    fn pid(&self, node: &str) -> u32 {
        self.nodes
            .iter()
            .find(|(n, _)| n == node)
            .map_or(0, |(_, c)| c.id())
    }

    /// Fails if a node has exited.
    fn check_alive(&mut self) -> Result<()> {
        for i in 0..self.nodes.len() {
            if let Some(st) = self.nodes[i].1.try_wait()? {
                let node = self.nodes[i].0.clone();
                bail!("node {node} exited ({st}):\n{}", tail(&self.log(&node)));
            }
        }
        Ok(())
    }

    /// The node's ETSI 014 base URL from its `listen.json`.
    fn base(&self, node: &str) -> Result<String> {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(self.listen_file(node))?)?;
        let etsi = v["etsi"]
            .as_str()
            .ok_or_else(|| anyhow!("no `etsi` address in {}", self.listen_file(node).display()))?;
        Ok(format!("https://{etsi}/api/v1/keys/"))
    }

    /// PEM of the SAE's certificate followed by its key.
    fn identity(&self, sae: &str) -> Result<Vec<u8>> {
        let pki = self.dir.path().join("pki");
        let mut pem = std::fs::read(pki.join(format!("sae-{sae}.crt")))?;
        pem.extend(std::fs::read(pki.join(format!("sae-{sae}.key")))?);
        Ok(pem)
    }

    /// Waits until the master's node reports at least `n` keys for `slave`.
    async fn wait_for_key(
        &self,
        c: &reqwest::Client,
        base: &str,
        slave: &str,
        n: u64,
    ) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = String::new();
        while Instant::now() < deadline {
            match c.get(format!("{base}{slave}/status")).send().await {
                Ok(r) if r.status().is_success() => {
                    let v: serde_json::Value = r.json().await?;
                    if v["stored_key_count"].as_u64().unwrap_or(0) >= n {
                        return Ok(());
                    }
                    last = v.to_string();
                }
                Ok(r) => last = r.status().to_string(),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "no key material at node A after 60 s (last status: {last})\nnode A log:\n{}\nnode B log:\n{}",
            tail(&self.log("A")),
            tail(&self.log("B"))
        )
    }
}

/// The last lines of a log.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

impl Drop for Network {
    fn drop(&mut self) {
        for (_, c) in &mut self.nodes {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn perf_csv_is_summed() {
        let csv = "1200,,syscalls:sys_enter_fsync,10001,100.00,,\n\
                   34,,syscalls:sys_enter_fdatasync,10001,100.00,,\n";
        assert_eq!(perf_total(csv).unwrap(), 1234.0);
        assert!(perf_total("<not supported>,,syscalls:sys_enter_fsync").is_err());
    }
}
