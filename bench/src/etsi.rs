//! `qkd-bench etsi`: key pairs/s through ETSI GS QKD 014 against two real node processes.
//!
//! Lays out the demo network (`qkd-node demo --setup-only`) in a temporary directory with fast
//! simulated links, starts `qkd-node run` for A and B, and runs N clients. Each client holds its
//! own keep-alive mutual-TLS connection to each node, driven through hyper's HTTP/1.1 client
//! directly so that the generator takes as little CPU from the nodes as it can ([`crate::h1`]),
//! and loops: `enc_keys` at the master's node, then `dec_keys` of that key ID at the slave's node,
//! checking that both answers carry the same bytes. Clients alternate between the two allowed
//! SAE pairs (A1-B1, A2-B2) so both pairs and their connections are exercised.
//!
//! With `--api skip` the same loop runs over SKIP instead (docs/skip.md): `GET /key` at the
//! initiator's node, `GET /key/<keyId>` at the responder's, each on a fresh TLS connection because
//! the Key Provider closes every connection after one answer, as SKIP clients expect.
//!
//! With `--api grpc` it runs over the gRPC key delivery service (docs/grpc.md) with the generated
//! client of `qkd-proto`: `GetKeys` at the master's node, `GetKeysByIds` at the slave's, each
//! client on its own HTTP/2 connection to each node. The report gives key pairs per second per
//! core of node CPU as well, so the front ends can be compared by their cost.
//!
//! `--metrics off` writes `[metrics] enabled = false` into both nodes' configuration before the
//! start: no recorder is installed, so every counter of the request path is a no-op (issue 12:
//! pairs/s with metrics on against off).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;

use crate::h1::H1;
use crate::measure::{CpuSnapshot, CpuUse, Latency, Samples};
use qkd_testnet::Layout;

/// The key-delivery front end a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// ETSI GS QKD 014: `enc_keys`, then `dec_keys`, on keep-alive connections.
    Etsi,
    /// SKIP: `GET /key`, then `GET /key/<keyId>`, one connection per request.
    Skip,
    /// gRPC key delivery: `GetKeys`, then `GetKeysByIds`, on one HTTP/2 connection per node.
    Grpc,
}

/// Whether the nodes record and serve metrics (`[metrics] enabled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Metrics {
    /// As generated: metrics recorded and served at `/metrics`.
    On,
    /// `[metrics] enabled = false` in both nodes' configuration.
    Off,
}

/// Which SAE pair a run drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PairKind {
    /// ENC-A1/ENC-B1 and ENC-A2/ENC-B2 on the two-node `pair` topology: adjacent nodes.
    Adjacent,
    /// ENC-A1/ENC-E1 on the five-node chain A-B-C-D-E (`chain5`): every pool refill is relayed
    /// over four hops; `enc_keys` runs at A, `dec_keys` at E.
    Relayed,
}

impl PairKind {
    /// The demo topology, the master's and the slave's node, and the SAE pairs the clients use.
    fn layout(
        self,
    ) -> (
        &'static str,
        [&'static str; 2],
        &'static [(&'static str, &'static str)],
    ) {
        match self {
            PairKind::Adjacent => (
                "pair",
                ["A", "B"],
                &[("ENC-A1", "ENC-B1"), ("ENC-A2", "ENC-B2")],
            ),
            PairKind::Relayed => ("chain5", ["A", "E"], &[("ENC-A1", "ENC-E1")]),
        }
    }
}

/// Arguments of `qkd-bench etsi`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// `adjacent` (A-B, the two-node pair) or `relayed` (A-E across the five-node chain).
    #[arg(long, value_enum, default_value = "adjacent")]
    pub pair: PairKind,
    /// Front end: `etsi` (ETSI 014), `skip` (SKIP Key Provider) or `grpc` (gRPC key delivery).
    #[arg(long, value_enum, default_value = "etsi")]
    pub api: Api,
    /// The nodes' metrics: `on` (as generated) or `off` (`[metrics] enabled = false`).
    #[arg(long, value_enum, default_value = "on")]
    pub metrics: Metrics,
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
    /// Finished keys each node keeps ready per SAE pair (`qkd-node demo --pool-keys`). The
    /// pools are filled before the clock starts; make them larger than the run consumes
    /// (about pairs/s x (warm-up + duration) / 2 per pair) so that no client waits for a refill.
    #[arg(long)]
    pub pool_keys: Option<u32>,
    /// Keys per relayed batch (`[relay] batch_keys` of every node; default as generated).
    #[arg(long)]
    pub batch_keys: Option<u32>,
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
    pub api: Api,
    pub pair_kind: PairKind,
    pub metrics: Metrics,
    pub clients: usize,
    pub key_bits: u32,
    pub both_directions: bool,
    pub window_s: f64,
    pub link_rate_bps: u64,
    /// Pool target per SAE pair (`max_key_count`).
    pub pool_keys: u64,
    /// Seconds from the nodes' start until every pool was full and no relay ran.
    pub pool_fill_s: f64,
    /// Pool level of each used pair (master->slave) at the end of the window: above 0 means
    /// no client ever had to wait for a refill.
    pub pool_left: Vec<(String, u64)>,
    /// Key pairs (enc_keys answered and dec_keys returned the same bytes) per second in the window.
    pub pairs_per_s: f64,
    /// Key pairs/s per core of CPU the two nodes used in the window (their user + system time).
    pub pairs_per_node_core_s: f64,
    pub enc_keys: Latency,
    pub dec_keys: Latency,
    pub pair: Latency,
    pub errors: Errors,
    pub cpu: CpuUse,
    /// With `--perf`: fsync + fdatasync calls per second of each node in the window.
    pub syncs_per_s: Vec<(String, f64)>,
    /// The store writer of the two end nodes in the window (from their `/metrics`).
    pub store: Vec<StoreUse>,
}

/// One node's store writer over the window: group commits and what they wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoreUse {
    pub node: String,
    /// Durable batch commits (`qkd_store_commits_total`; tombstone upkeep and rotation steps,
    /// which run in transactions of their own, are not counted).
    pub commits: u64,
    /// Record bytes (table key + value) the commits wrote (`qkd_store_bytes_written_total`).
    pub record_bytes: u64,
    /// Bytes the process wrote to disk (`/proc/<pid>/io` `write_bytes`).
    pub disk_bytes: u64,
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
            "{}: {} clients, {}-bit keys, {} window {:.1} s, simulated link {} Mbit/s",
            match self.api {
                Api::Etsi => "etsi",
                Api::Skip => "skip (enc_keys = GET /key, dec_keys = GET /key/<keyId>)",
                Api::Grpc => "grpc (enc_keys = GetKeys, dec_keys = GetKeysByIds)",
            },
            self.clients,
            self.key_bits,
            match (self.both_directions, self.pair_kind) {
                (true, _) => "both directions,",
                (false, PairKind::Adjacent) => "A->B,",
                (false, PairKind::Relayed) => "A->E (relayed over B, C, D),",
            },
            self.window_s,
            self.link_rate_bps / 1_000_000
        );
        println!(
            "pools: {} keys per pair, filled in {:.1} s; left at the end: {}",
            self.pool_keys,
            self.pool_fill_s,
            self.pool_left
                .iter()
                .map(|(p, n)| format!("{p} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "key pairs/s: {:.0} ({:.0} per core of node CPU); metrics {}",
            self.pairs_per_s,
            self.pairs_per_node_core_s,
            match self.metrics {
                Metrics::On => "on",
                Metrics::Off => "off",
            }
        );
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
        for p in self
            .cpu
            .processes
            .iter()
            .filter(|p| p.label.starts_with("node"))
        {
            println!(
                "{}: {:.1} KB written to disk per key pair, RSS {:.1} MB (peak {:.1} MB)",
                p.label,
                p.disk_write_bytes as f64 / 1e3 / (self.pairs_per_s * self.window_s).max(1.0),
                p.memory.rss_kib as f64 / 1024.0,
                p.memory.peak_kib as f64 / 1024.0
            );
        }
        let pairs = (self.pairs_per_s * self.window_s).max(1.0);
        for st in &self.store {
            let commits = st.commits.max(1) as f64;
            println!(
                "node {}: {:.0} commits/s, {:.2} commits per key pair, {:.1} KB to disk and {:.2} KB of records per commit",
                st.node,
                st.commits as f64 / self.window_s,
                st.commits as f64 / pairs,
                st.disk_bytes as f64 / 1e3 / commits,
                st.record_bytes as f64 / 1e3 / commits,
            );
        }
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
    let bin = qkd_testnet::node_bin(args.nodes_bin.as_ref())?;
    if args.pair == PairKind::Relayed && args.api == Api::Skip {
        bail!("--pair relayed runs over ETSI 014 or gRPC only");
    }
    let (topology, ends, sae_pairs) = args.pair.layout();
    let layout = Layout {
        topology: topology.into(),
        link_rate_bps: args.link_rate_bps,
        pool_keys: args.pool_keys,
        batch_keys: args.batch_keys,
        log_level: "warn".into(),
    };
    let net = qkd_testnet::Net::launch(&bin, args.dir.as_deref(), &layout)?;
    if args.metrics == Metrics::Off {
        for node in net.names() {
            net.edit_config(&node, |t| {
                let mut m = toml::Table::new();
                m.insert("enabled".into(), toml::Value::Boolean(false));
                t.insert("metrics".into(), toml::Value::Table(m));
            });
        }
    }
    // Every client holds its own connection to each end as its pair's SAE: room for them all
    // under the per-SAE connection cap (a relayed run puts every client on one pair).
    let per_sae = args.clients.div_ceil(sae_pairs.len()) + 16;
    for node in ends {
        net.edit_config(node, |t| {
            if let Some(n) = t.get_mut("node").and_then(|n| n.as_table_mut()) {
                let cap = n
                    .get("etsi_max_connections_per_client")
                    .and_then(|v| v.as_integer())
                    .unwrap_or(64);
                n.insert(
                    "etsi_max_connections_per_client".into(),
                    toml::Value::Integer(cap.max(per_sae as i64)),
                );
            }
        });
    }
    net.start_all()?;
    let pairs: Vec<Arc<PairIdentity>> = sae_pairs
        .iter()
        .map(|(a, b)| {
            Ok(Arc::new(PairIdentity {
                a: (*a).into(),
                b: (*b).into(),
                a_client: net.sae_client(a)?,
                b_client: net.sae_client(b)?,
            }))
        })
        .collect::<Result<_>>()?;
    let bases = match args.api {
        Api::Etsi | Api::Grpc => [net.try_base(ends[0])?, net.try_base(ends[1])?],
        Api::Skip => [net.skip_base(ends[0])?, net.skip_base(ends[1])?],
    };
    if args.api == Api::Grpc {
        for node in ends {
            net.try_listen(node)?
                .grpc
                .with_context(|| format!("node {node} serves no gRPC"))?;
        }
    }
    // Every pool (both directions) full and the refills finished before the clock starts.
    let mut pools = Vec::new();
    for p in &pairs {
        pools.push((p.a_client.clone(), ends[0].to_string(), p.b.clone()));
        pools.push((p.b_client.clone(), ends[1].to_string(), p.a.clone()));
    }
    let pool_fill = net.wait_settled(&pools, Duration::from_secs(1800)).await?;
    let pool_keys = net.pool_level(&pools[0].0, ends[0], &pairs[0].b).await?.1;

    let pki = net.path().join("pki");
    let start = Instant::now();
    let warm_end = start + args.warmup;
    let stop = warm_end + args.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.clients {
        let pair = pairs[i % pairs.len()].clone();
        let c = Client {
            to_a: net.sae_client(&pair.a)?,
            to_b: net.sae_client(&pair.b)?,
            h1: match args.api {
                Api::Etsi => Some([
                    H1::new(&pki, &pair.a, net.try_listen(ends[0])?.etsi)?,
                    H1::new(&pki, &pair.b, net.try_listen(ends[1])?.etsi)?,
                ]),
                Api::Grpc | Api::Skip => None,
            },
            grpc: match args.api {
                // Lazy channels: each connects at its first call, its own HTTP/2 connection.
                Api::Grpc => Some([net.grpc(&pair.a, ends[0]), net.grpc(&pair.b, ends[1])]),
                Api::Etsi | Api::Skip => None,
            },
            bases: bases.clone(),
            pair,
            api: args.api,
            size: args.size,
            both: args.both_directions,
            // Clients start out of phase so directions mix from the first round.
            round: i as u64,
        };
        tasks.spawn(c.run(warm_end, stop));
    }
    let procs = net.processes();
    let metrics_urls = ends
        .iter()
        .map(|n| {
            Ok(net
                .try_listen(n)?
                .admin
                .map(|a| format!("http://{a}/metrics")))
        })
        .collect::<Result<Vec<_>>>()?;
    tokio::time::sleep_until(warm_end.into()).await;
    let cpu0 = CpuSnapshot::take(&procs);
    let store0 = store_counters(&metrics_urls).await;
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
    let store1 = store_counters(&metrics_urls).await;
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
        errors.merge(r.errors);
    }
    net.check_alive()?;
    let mut pool_left = Vec::new();
    for (c, node, slave) in &pools {
        pool_left.push((
            format!("{node}->{slave}"),
            net.pool_level(c, node, slave).await?.0,
        ));
    }
    let window = args.duration.as_secs_f64();
    let pair = pair.summary();
    let pairs_per_s = pair.count as f64 / window;
    let node_cores: f64 = cpu
        .processes
        .iter()
        .filter(|p| p.label.starts_with("node "))
        .map(|p| p.percent_of_one_core / 100.0)
        .sum();
    let store = ends
        .iter()
        .zip(store0.iter().zip(&store1))
        .filter_map(|(node, (c0, c1))| {
            let ((commits0, bytes0), (commits1, bytes1)) = ((*c0)?, (*c1)?);
            let label = format!("node {node}");
            let disk = cpu.processes.iter().find(|p| p.label == label)?;
            Some(StoreUse {
                node: (*node).to_string(),
                commits: (commits1 - commits0).max(0.0) as u64,
                record_bytes: (bytes1 - bytes0).max(0.0) as u64,
                disk_bytes: disk.disk_write_bytes,
            })
        })
        .collect();
    Ok(Report {
        api: args.api,
        pair_kind: args.pair,
        metrics: args.metrics,
        clients: args.clients,
        key_bits: args.size,
        both_directions: args.both_directions,
        window_s: window,
        link_rate_bps: args.link_rate_bps,
        pool_keys,
        pool_fill_s: pool_fill.as_secs_f64(),
        pool_left,
        pairs_per_s,
        pairs_per_node_core_s: if node_cores > 0.0 {
            pairs_per_s / node_cores
        } else {
            0.0
        },
        enc_keys: enc.summary(),
        dec_keys: dec.summary(),
        pair,
        errors,
        cpu,
        syncs_per_s,
        store,
    })
}

/// Each node's (store commits, record bytes written) so far, from its `/metrics`; `None` for a
/// node without an admin listener or with metrics off.
async fn store_counters(urls: &[Option<String>]) -> Vec<Option<(f64, f64)>> {
    let mut out = Vec::with_capacity(urls.len());
    for url in urls {
        let text = match url {
            Some(u) => crate::scrape::scrape_once(u).await.ok(),
            None => None,
        };
        out.push(text.and_then(|t| {
            Some((
                crate::scrape::counter(&t, "qkd_store_commits_total")?,
                crate::scrape::counter(&t, "qkd_store_bytes_written_total")?,
            ))
        }));
    }
    out
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

/// An allowed SAE pair and a client of each side (for pool levels).
#[derive(Debug)]
struct PairIdentity {
    a: String,
    b: String,
    a_client: reqwest::Client,
    b_client: reqwest::Client,
}

/// One benchmark client: its own connection to each node.
#[derive(Debug)]
struct Client {
    to_a: reqwest::Client,
    to_b: reqwest::Client,
    /// With `--api etsi`: this client's connections to A and B.
    h1: Option<[H1; 2]>,
    /// With `--api grpc`: this client's gRPC key delivery clients of A and B.
    grpc: Option<[KeyDelivery; 2]>,
    /// Base URLs of A and B: ETSI 014's end in `/api/v1/keys/`; SKIP's are the listener's root.
    bases: [String; 2],
    pair: Arc<PairIdentity>,
    api: Api,
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
pub(crate) enum Failure {
    /// 503: no key material (an empty pool) or a peer unavailable.
    Unavailable(String),
    /// Any other status, or an answer that does not parse.
    Status(String),
    /// Connection or TLS failure.
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
            // (client, base URL, the other side's SAE, the other side's Key Provider) of the
            // master's side, then of the slave's side.
            let a = (&self.to_a, &self.bases[0], &self.pair.a, "KP_A");
            let b = (&self.to_b, &self.bases[1], &self.pair.b, "KP_B");
            let (enc_side, dec_side) = if forward { (a, b) } else { (b, a) };
            // gRPC clients of the master's node, then of the slave's node.
            let grpc = self.grpc.as_ref().map(|[ga, gb]| {
                if forward {
                    (ga.clone(), gb.clone())
                } else {
                    (gb.clone(), ga.clone())
                }
            });
            let (enc_c, enc_base, master, master_kp) = enc_side;
            let (dec_c, dec_base, slave, slave_kp) = dec_side;
            // This client's connections to the master's node, then to the slave's node.
            let (enc_h1, dec_h1) = match self.h1.as_mut() {
                Some([ha, hb]) if forward => (Some(ha), Some(hb)),
                Some([ha, hb]) => (Some(hb), Some(ha)),
                None => (None, None),
            };
            let enc = match self.api {
                Api::Etsi => match enc_h1 {
                    Some(h) => {
                        let path =
                            format!("{ETSI_PATH}{slave}/enc_keys?number=1&size={}", self.size);
                        h.get(&path).await.and_then(|b| keys_of(&b, &path))
                    }
                    None => Err(Failure::Status("no ETSI connection".into())),
                },
                Api::Skip => {
                    let url = format!(
                        "{enc_base}/key?remoteSystemID={slave_kp}&size={}",
                        self.size
                    );
                    fetch_skip(enc_c, &url).await
                }
                Api::Grpc => match &grpc {
                    Some((g, _)) => grpc_get_keys(g.clone(), slave, self.size).await,
                    None => Err(Failure::Status("no gRPC client".into())),
                },
            };
            let (id, key) = match enc {
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
            let got = match self.api {
                Api::Etsi => match dec_h1 {
                    Some(h) => {
                        let path = format!("{ETSI_PATH}{master}/dec_keys?key_ID={id}");
                        h.get(&path).await.and_then(|b| keys_of(&b, &path))
                    }
                    None => Err(Failure::Status("no ETSI connection".into())),
                },
                Api::Skip => {
                    let url = format!("{dec_base}/key/{id}?remoteSystemID={master_kp}");
                    fetch_skip(dec_c, &url).await
                }
                Api::Grpc => match &grpc {
                    Some((_, g)) => grpc_get_keys_by_ids(g.clone(), master, &id).await,
                    None => Err(Failure::Status("no gRPC client".into())),
                },
            };
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
    /// Adds another client's failures (keeping the first few samples).
    pub(crate) fn merge(&mut self, other: Errors) {
        self.enc_keys += other.enc_keys;
        self.dec_keys += other.dec_keys;
        self.transport += other.transport;
        self.mismatches += other.mismatches;
        for s in other.samples {
            if self.samples.len() < 5 {
                self.samples.push(s);
            }
        }
    }

    pub(crate) fn note(&mut self, enc: bool, f: Failure) {
        match f {
            Failure::Status(s) | Failure::Unavailable(s) => self.note_status(enc, s),
            Failure::Transport(s) => {
                self.transport += 1;
                self.sample(s);
            }
        }
    }

    pub(crate) fn note_status(&mut self, enc: bool, s: String) {
        if enc {
            self.enc_keys += 1;
        } else {
            self.dec_keys += 1;
        }
        self.sample(s);
    }

    pub(crate) fn sample(&mut self, s: String) {
        if self.samples.len() < 3 {
            self.samples.push(s);
        }
    }
}

/// GETs `url` and returns its keys as (key_ID, bytes).
pub(crate) async fn fetch(
    c: &reqwest::Client,
    url: &str,
) -> Result<Vec<(String, Vec<u8>)>, Failure> {
    send(c.get(url), url).await
}

/// How a real client retries a 503 (a peer KME briefly unavailable, a relay hop that timed out
/// on a loaded machine, a pool being refilled): exponential backoff from 20 ms up to 1 s between
/// attempts, at most 8 retries (about 4 s in all), then the 503 stands.
pub(crate) fn client_backoff() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(20))
        .with_max_delay(Duration::from_secs(1))
        .with_max_times(8)
}

/// [`fetch`], retried on 503 the way a client retries ([`client_backoff`]).
pub(crate) async fn fetch_retrying(
    c: &reqwest::Client,
    url: &str,
) -> Result<Vec<(String, Vec<u8>)>, Failure> {
    use backon::Retryable;
    (|| fetch(c, url))
        .retry(client_backoff())
        .when(|f| matches!(f, Failure::Unavailable(_)))
        .await
}

/// POSTs `body` as JSON to `url` and returns its keys as (key_ID, bytes).
pub(crate) async fn fetch_post(
    c: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> Result<Vec<(String, Vec<u8>)>, Failure> {
    send(c.post(url).json(body), url).await
}

/// The generated gRPC key delivery client (cheap to clone: clones share the connection).
type KeyDelivery =
    qkd_proto::keys::key_delivery_client::KeyDeliveryClient<tonic::transport::Channel>;

/// `GetKeys` of one key of `size` bits shared with `slave`: (key ID, bytes).
async fn grpc_get_keys(
    mut c: KeyDelivery,
    slave: &str,
    size: u32,
) -> Result<Vec<(String, Vec<u8>)>, Failure> {
    let r = c
        .get_keys(qkd_proto::keys::GetKeysRequest {
            slave_sae_id: slave.into(),
            number: Some(1),
            size: Some(size),
            additional_slave_sae_ids: Vec::new(),
        })
        .await;
    grpc_keys(r, "GetKeys")
}

/// `GetKeysByIds` of the key `id` that `master` obtained: (key ID, bytes).
async fn grpc_get_keys_by_ids(
    mut c: KeyDelivery,
    master: &str,
    id: &str,
) -> Result<Vec<(String, Vec<u8>)>, Failure> {
    let r = c
        .get_keys_by_ids(qkd_proto::keys::GetKeysByIdsRequest {
            master_sae_id: master.into(),
            key_ids: vec![id.into()],
        })
        .await;
    grpc_keys(r, "GetKeysByIds")
}

/// The keys of a gRPC answer; `UNAVAILABLE` and `RESOURCE_EXHAUSTED` are a 503's counterparts.
fn grpc_keys(
    r: Result<tonic::Response<qkd_proto::keys::GetKeysResponse>, tonic::Status>,
    call: &str,
) -> Result<Vec<(String, Vec<u8>)>, Failure> {
    match r {
        Ok(r) => Ok(r
            .into_inner()
            .keys
            .into_iter()
            .map(|k| (k.key_id.clone(), k.key.clone()))
            .collect()),
        Err(s) => {
            let msg = format!("{call}: {:?} {}", s.code(), s.message());
            Err(match s.code() {
                tonic::Code::Unavailable | tonic::Code::ResourceExhausted => {
                    Failure::Unavailable(msg)
                }
                _ => Failure::Status(msg),
            })
        }
    }
}

/// GETs a SKIP key (`/key` or `/key/<keyId>`) and returns it as the one (keyId, bytes).
async fn fetch_skip(c: &reqwest::Client, url: &str) -> Result<Vec<(String, Vec<u8>)>, Failure> {
    #[derive(serde::Deserialize)]
    struct SkipKey {
        #[serde(rename = "keyId")]
        key_id: String,
        key: String,
    }
    let body = answer(c.get(url), url).await?;
    let k: SkipKey = serde_json::from_slice(&body)
        .map_err(|e| Failure::Status(format!("{url}: bad SKIP key: {e}")))?;
    let bytes = hex::decode(&k.key).map_err(|e| Failure::Status(format!("{url}: bad hex: {e}")))?;
    Ok(vec![(k.key_id, bytes)])
}

async fn send(rb: reqwest::RequestBuilder, url: &str) -> Result<Vec<(String, Vec<u8>)>, Failure> {
    let body = answer(rb, url).await?;
    keys_of(&body, url)
}

/// The path of ETSI 014's key requests, before `<SAE_ID>/enc_keys` or `dec_keys`.
const ETSI_PATH: &str = "/api/v1/keys/";

/// The keys of an ETSI 014 key container (the answer to `url`) as (key_ID, bytes).
fn keys_of(body: &[u8], url: &str) -> Result<Vec<(String, Vec<u8>)>, Failure> {
    let kc: KeyContainer = serde_json::from_slice(body)
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

/// Sends a request and returns the body of a 200; any other answer is a [`Failure`].
async fn answer(rb: reqwest::RequestBuilder, url: &str) -> Result<bytes::Bytes, Failure> {
    let r = rb
        .send()
        .await
        .map_err(|e| Failure::Transport(format!("{url}: {e}")))?;
    let status = r.status();
    let body = r
        .bytes()
        .await
        .map_err(|e| Failure::Transport(format!("{url}: {e}")))?;
    if status != reqwest::StatusCode::OK {
        let msg = format!("{url}: {status} {}", String::from_utf8_lossy(&body));
        return Err(if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            Failure::Unavailable(msg)
        } else {
            Failure::Status(msg)
        });
    }
    Ok(body)
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
