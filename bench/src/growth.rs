//! `qkd-bench growth`: how the cost of the control plane grows with the network, on real
//! `qkd-node` processes (issue 8, "How cost grows with the network").
//!
//! For each size N, a seeded random mesh of average degree 3 (`qkd-node demo --topology
//! random:<N>:<seed>`) runs as N real daemons on 127.0.0.1 up, every node-to-node connection
//! through a counting TCP relay in this process (each neighbour entry's `peer_addr` points at
//! the relay, which listens on the neighbour's own address, so TLS names still match). Encryptor
//! `ENC-N01` at `N01` pairs with one encryptor at each hop distance from `N01`; pools hold four
//! keys, so that once they are full the peer port carries the control plane alone. Measured:
//!
//! * **control traffic** - bytes through the relays (TLS records both ways: link-state adverts,
//!   their answers, and whatever else runs in the quiet window) per node per second, and the
//!   nodes' CPU over the same window;
//! * **start convergence** - from the moment every node has bound its listeners until every
//!   node's `/status` `routing` view holds all N nodes and every link;
//! * **failure convergence** - a seeded link whose loss leaves the mesh connected is cut (its
//!   relays reset every connection and refuse new ones, as a dead peer port or a severed fibre
//!   with a router sending resets does) until no node lists it as usable; then healed until every
//!   node lists it again;
//! * **relay latency against hops** - on-demand `enc_keys` (a non-default size, so a whole
//!   relayed, hybridised batch runs while the client waits) from `ENC-N01` to each destination,
//!   with `dec_keys` of the same key at the destination checked byte for byte. The links whose
//!   relay counters moved during a destination's requests give the path actually taken (routes
//!   are widest-path, not shortest).
//!
//! The figures are wall-clock times on a shared machine: they belong in BENCHMARKS.md with
//! the machine they came from, never in an assertion.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use qkd_testnet::{Layout, Net};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::etsi::{Failure, fetch, fetch_retrying};
use crate::measure::{CpuSnapshot, Latency, Samples};

/// Keys per pair pool, made in one batch: small, so that pools fill at once and the peer port is
/// then quiet, and just enough to allow the on-demand requests (a node makes keys of another size
/// on demand only for what the pair's pool could cover: 4 × 256 bits ≥ 512 bits).
const POOL_KEYS: u32 = 4;

/// Arguments of `qkd-bench growth`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Network sizes (nodes) to run, one after the other.
    #[arg(long, value_delimiter = ',', default_value = "5,10,20,40")]
    pub nodes: Vec<usize>,
    /// Seed of the random meshes (and of the link that is cut).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Secret key rate of every simulated link, bit/s.
    #[arg(long, default_value_t = 10_000_000)]
    pub link_rate_bps: u64,
    /// Quiet window over which control traffic and CPU are measured.
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    pub window: Duration,
    /// On-demand requests per destination (sequential).
    #[arg(long, default_value_t = 10)]
    pub requests: usize,
    /// Key size of the on-demand requests, bits (not the pools' default size).
    #[arg(long, default_value_t = 512)]
    pub on_demand_size: u32,
    /// Longest wait for a network to converge (at start, after a cut, after healing).
    #[arg(long, default_value = "600s", value_parser = crate::parse_duration)]
    pub timeout: Duration,
    /// The `qkd-node` binary (default: next to this one).
    #[arg(long)]
    pub nodes_bin: Option<PathBuf>,
    /// Directory for the networks' data (default: the system temp directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// The figures of every size.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub seed: u64,
    pub link_rate_bps: u64,
    pub window_s: f64,
    pub sizes: Vec<SizeReport>,
}

/// The figures of one network size.
#[derive(Debug, serde::Serialize)]
pub struct SizeReport {
    pub nodes: usize,
    pub links: usize,
    pub mean_degree: f64,
    /// Largest hop distance from N01.
    pub eccentricity_of_n01: usize,
    /// From all listeners bound until every node's view held every node and link.
    pub start_convergence_s: f64,
    /// Bytes through the peer-port relays in the quiet window, per node per second.
    pub control_bytes_per_node_per_s: f64,
    /// The same for the whole network.
    pub control_bytes_per_s: f64,
    /// Mean CPU of one node over the quiet window, % of one core.
    pub node_cpu_percent_mean: f64,
    /// Busy share of the whole machine over the window (100 = every core busy).
    pub machine_busy_percent: f64,
    /// Resident memory of one node at the end of the window, MB (mean over nodes).
    pub node_rss_mb_mean: f64,
    /// The link cut, and how long until no node routed over it, then until every node did again.
    pub failure: CutReport,
    /// Relay latency per destination.
    pub relay: Vec<HopLatency>,
    /// Requests that failed (after a client's retries) or returned other bytes at the
    /// destination; must be 0.
    pub errors: u64,
    pub error_samples: Vec<String>,
}

/// Convergence after a link failure and after the repair.
#[derive(Debug, serde::Serialize)]
pub struct CutReport {
    pub link: String,
    /// From the cut until no node's `/status` lists the link as usable.
    pub withdraw_s: f64,
    /// From the repair until every node lists it again.
    pub restore_s: f64,
    /// How long one poll of every node's `/status` took (the figures' resolution).
    pub poll_round_s: f64,
}

/// On-demand relay latency to one destination.
#[derive(Debug, serde::Serialize)]
pub struct HopLatency {
    pub destination: String,
    /// Shortest hop distance from N01.
    pub hops: usize,
    /// Links whose relay counters moved during these requests (the path taken).
    pub links_used: usize,
    /// enc_keys at N01, retries included.
    pub enc_keys: Latency,
}

impl Report {
    pub fn print(&self) {
        println!(
            "growth: random meshes of average degree 3 (seed {}), links {} bit/s, quiet window {:.0} s",
            self.seed, self.link_rate_bps, self.window_s
        );
        println!(
            "{:>5} {:>5} {:>9} {:>14} {:>12} {:>9} {:>8} {:>10} {:>10} {:>8}",
            "nodes",
            "links",
            "start s",
            "ctl B/node/s",
            "ctl B/s",
            "cpu %/n",
            "RSS MB",
            "withdraw s",
            "restore s",
            "poll s"
        );
        for s in &self.sizes {
            println!(
                "{:>5} {:>5} {:>9.1} {:>14.0} {:>12.0} {:>9.1} {:>8.0} {:>10.2} {:>10.2} {:>8.2}",
                s.nodes,
                s.links,
                s.start_convergence_s,
                s.control_bytes_per_node_per_s,
                s.control_bytes_per_s,
                s.node_cpu_percent_mean,
                s.node_rss_mb_mean,
                s.failure.withdraw_s,
                s.failure.restore_s,
                s.failure.poll_round_s
            );
        }
        println!("relay latency of on-demand enc_keys from ENC-N01 (ms):");
        for s in &self.sizes {
            for h in &s.relay {
                println!(
                    "  N={:<3} to {:<9} hops {} (links used {}): p50 {:.1} mean {:.1} max {:.1} (n={})",
                    s.nodes,
                    h.destination,
                    h.hops,
                    h.links_used,
                    h.enc_keys.p50_ms,
                    h.enc_keys.mean_ms,
                    h.enc_keys.max_ms,
                    h.enc_keys.count
                );
            }
            if s.errors > 0 {
                println!(
                    "  N={}: {} errors: {:?}",
                    s.nodes, s.errors, s.error_samples
                );
            }
        }
    }

    /// Fails the run if a key was lost or came out different at the destination.
    pub fn check(&self) -> Result<()> {
        for s in &self.sizes {
            if s.errors > 0 {
                bail!(
                    "N={}: {} relayed requests failed or mismatched: {:?}",
                    s.nodes,
                    s.errors,
                    s.error_samples
                );
            }
        }
        Ok(())
    }
}

pub async fn run(args: &Args) -> Result<Report> {
    let bin = qkd_testnet::node_bin(args.nodes_bin.as_ref())?;
    let mut sizes = Vec::new();
    for &n in &args.nodes {
        eprintln!("growth: {n} nodes...");
        sizes.push(one_size(&bin, args, n).await?);
    }
    Ok(Report {
        seed: args.seed,
        link_rate_bps: args.link_rate_bps,
        window_s: args.window.as_secs_f64(),
        sizes,
    })
}

async fn one_size(bin: &Path, args: &Args, n: usize) -> Result<SizeReport> {
    let layout = Layout {
        topology: format!("random:{n}:{}", args.seed),
        link_rate_bps: args.link_rate_bps,
        pool_keys: Some(POOL_KEYS),
        batch_keys: Some(POOL_KEYS),
        log_level: "warn".into(),
    };
    let net = Net::launch(bin, args.dir.as_deref(), &layout)?;
    let names = net.names();
    let links = read_links(&net, &names)?;
    let relays = Relays::install(&net, &names).await?;
    net.start_all()?;
    let started = Instant::now();

    let all_links: BTreeSet<String> = links.iter().map(|l| l.0.clone()).collect();
    converge(&net, &names, args.timeout, |known, usable| {
        known == n && *usable == all_links
    })
    .await
    .context("start")?;
    let start_convergence = started.elapsed();

    // Pools full and no relay message for a second: a quiet network.
    let source = names[0].clone();
    let source_sae = format!("ENC-{source}");
    let dests = destinations(&names, &links);
    let master = net.sae_client(&source_sae)?;
    let pools: Vec<_> = dests
        .iter()
        .map(|(node, _)| (master.clone(), source.clone(), format!("ENC-{node}")))
        .collect();
    net.wait_settled(&pools, args.timeout).await?;

    // Control traffic and CPU over the quiet window.
    let procs = net.processes();
    let cpu0 = CpuSnapshot::take(&procs);
    let b0 = relays.bytes();
    tokio::time::sleep(args.window).await;
    let b1 = relays.bytes();
    let cpu = cpu0.until(&CpuSnapshot::take(&procs));
    let secs = args.window.as_secs_f64();
    let control = (b1 - b0) as f64 / secs;
    let node_cpu: Vec<f64> = cpu
        .processes
        .iter()
        .filter(|p| p.label.starts_with("node "))
        .map(|p| p.percent_of_one_core)
        .collect();
    let rss: Vec<f64> = procs
        .iter()
        .filter(|(l, _)| l.starts_with("node "))
        .map(|(_, pid)| rss_mb(*pid))
        .collect();

    // Relay latency against hops.
    let mut errors = Errors::default();
    let mut relay = Vec::new();
    for (node, hops) in &dests {
        relay.push(hop_latency(&net, args, &source, node, *hops, &mut errors).await?);
    }

    // A link failure and its repair.
    let cut =
        pick_cut(&links, n, args.seed).context("no link whose loss keeps the mesh connected")?;
    let poll0 = Instant::now();
    views(&net, &names).await?;
    let poll_round = poll0.elapsed();
    relays.set_cut(&cut.1, &cut.2, true);
    let t = Instant::now();
    converge(&net, &names, args.timeout, |_, usable| {
        !usable.contains(&cut.0)
    })
    .await
    .context("after the cut")?;
    let withdraw = t.elapsed();
    relays.set_cut(&cut.1, &cut.2, false);
    let t = Instant::now();
    converge(&net, &names, args.timeout, |_, usable| {
        usable.contains(&cut.0)
    })
    .await
    .context("after the repair")?;
    let restore = t.elapsed();
    net.check_alive()?;

    Ok(SizeReport {
        nodes: n,
        links: links.len(),
        mean_degree: 2.0 * links.len() as f64 / n as f64,
        eccentricity_of_n01: dests.iter().map(|d| d.1).max().unwrap_or(0),
        start_convergence_s: start_convergence.as_secs_f64(),
        control_bytes_per_node_per_s: control / n as f64,
        control_bytes_per_s: control,
        node_cpu_percent_mean: mean(&node_cpu),
        machine_busy_percent: cpu.machine_busy_percent,
        node_rss_mb_mean: mean(&rss),
        failure: CutReport {
            link: cut.0,
            withdraw_s: withdraw.as_secs_f64(),
            restore_s: restore.as_secs_f64(),
            poll_round_s: poll_round.as_secs_f64(),
        },
        relay,
        errors: errors.count,
        error_samples: errors.samples,
    })
}

/// Failed or mismatched requests.
#[derive(Debug, Default)]
struct Errors {
    count: u64,
    samples: Vec<String>,
}

impl Errors {
    fn note(&mut self, what: String) {
        self.count += 1;
        if self.samples.len() < 5 {
            self.samples.push(what);
        }
    }
}

fn failure_text(f: Failure) -> String {
    match f {
        Failure::Unavailable(s) | Failure::Status(s) | Failure::Transport(s) => s,
    }
}

/// `requests` sequential on-demand keys from `ENC-<source>` to `ENC-<dest>`, each fetched at the
/// destination and compared.
async fn hop_latency(
    net: &Net,
    args: &Args,
    source: &str,
    dest: &str,
    hops: usize,
    errors: &mut Errors,
) -> Result<HopLatency> {
    let (src_sae, dst_sae) = (format!("ENC-{source}"), format!("ENC-{dest}"));
    let enc_c = net.sae_client(&src_sae)?;
    let dec_c = net.sae_client(&dst_sae)?;
    let enc_url = format!(
        "{}{dst_sae}/enc_keys?number=1&size={}",
        net.try_base(source)?,
        args.on_demand_size
    );
    let dec_base = format!("{}{src_sae}/dec_keys?key_ID=", net.try_base(dest)?);
    let before = net.link_counters().await?;
    let mut samples = Samples::default();
    for _ in 0..args.requests {
        let t0 = Instant::now();
        let (id, key) = match fetch_retrying(&enc_c, &enc_url).await {
            Ok(mut k) if k.len() == 1 => k.remove(0),
            Ok(k) => {
                errors.note(format!("{dst_sae}: enc_keys returned {} keys", k.len()));
                continue;
            }
            Err(f) => {
                errors.note(failure_text(f));
                continue;
            }
        };
        samples.push(t0.elapsed());
        match fetch(&dec_c, &format!("{dec_base}{id}")).await {
            Ok(k) if k.len() == 1 && k[0].0 == id && k[0].1 == key => {}
            Ok(_) => errors.note(format!("{dst_sae}: key {id} differs at the destination")),
            Err(f) => errors.note(failure_text(f)),
        }
    }
    let after = net.link_counters().await?;
    let moved: BTreeMap<&String, u64> = before.iter().map(|(l, c)| (l, c.relay_messages)).collect();
    let links_used = after
        .iter()
        .filter(|(l, c)| moved.get(l).is_some_and(|b| c.relay_messages > *b))
        .count();
    Ok(HopLatency {
        destination: dst_sae,
        hops,
        links_used,
        enc_keys: samples.summary(),
    })
}

/// Every link of the layout as (link ID, lower end, higher end), from the nodes' configurations.
fn read_links(net: &Net, names: &[String]) -> Result<Vec<(String, String, String)>> {
    let mut links = BTreeSet::new();
    for node in names {
        let path = net.path().join(node).join("node.toml");
        let table: toml::Table = std::fs::read_to_string(&path)?
            .parse()
            .with_context(|| path.display().to_string())?;
        for l in table
            .get("link")
            .and_then(|v| v.as_array())
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let id = l.get("id").and_then(|v| v.as_str()).unwrap_or_default();
            let (a, b) = id
                .split_once('-')
                .with_context(|| format!("{}: link {id:?}", path.display()))?;
            links.insert((id.to_string(), a.to_string(), b.to_string()));
        }
    }
    Ok(links.into_iter().collect())
}

/// The destinations the layout paired with `N01` (one per hop distance), nearest first.
fn destinations(names: &[String], links: &[(String, String, String)]) -> Vec<(String, usize)> {
    let dist = distances(&names[0], links, None);
    let mut by_hops: BTreeMap<usize, String> = BTreeMap::new();
    for name in names {
        if let Some(&d) = dist.get(name)
            && d > 0
        {
            by_hops.entry(d).or_insert_with(|| name.clone());
        }
    }
    by_hops.into_iter().map(|(d, n)| (n, d)).collect()
}

/// Hop distances from `from`, optionally without one link.
fn distances(
    from: &str,
    links: &[(String, String, String)],
    without: Option<&str>,
) -> BTreeMap<String, usize> {
    let mut dist = BTreeMap::from([(from.to_string(), 0)]);
    let mut queue = VecDeque::from([from.to_string()]);
    while let Some(x) = queue.pop_front() {
        let dx = dist[&x];
        for (id, a, b) in links {
            if Some(id.as_str()) == without {
                continue;
            }
            let y = if *a == x {
                b
            } else if *b == x {
                a
            } else {
                continue;
            };
            if !dist.contains_key(y) {
                dist.insert(y.clone(), dx + 1);
                queue.push_back(y.clone());
            }
        }
    }
    dist
}

/// A link whose loss keeps the mesh connected, chosen by `seed`.
fn pick_cut(
    links: &[(String, String, String)],
    n: usize,
    seed: u64,
) -> Option<(String, String, String)> {
    let candidates: Vec<_> = links
        .iter()
        .filter(|l| distances(&l.1, links, Some(&l.0)).len() == n)
        .collect();
    if candidates.is_empty() {
        return None;
    }
    Some(candidates[(seed as usize) % candidates.len()].clone())
}

/// Each node's view: (known nodes, usable links), from `/status`.
async fn views(net: &Net, names: &[String]) -> Result<Vec<(usize, BTreeSet<String>)>> {
    let mut out = Vec::new();
    for node in names {
        let st = net.try_status(node).await?;
        let r = &st["routing"];
        let known = r["known_nodes"].as_u64().unwrap_or(0) as usize;
        let usable = r["usable_links"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        out.push((known, usable));
    }
    Ok(out)
}

/// Polls every node's view until `done` holds for all of them.
async fn converge(
    net: &Net,
    names: &[String],
    timeout: Duration,
    done: impl Fn(usize, &BTreeSet<String>) -> bool,
) -> Result<()> {
    let t0 = Instant::now();
    loop {
        net.check_alive()?;
        let v = views(net, names).await?;
        if v.iter().all(|(k, u)| done(*k, u)) {
            return Ok(());
        }
        if t0.elapsed() > timeout {
            let bad: Vec<String> = names
                .iter()
                .zip(&v)
                .filter(|(_, (k, u))| !done(*k, u))
                .map(|(n, (k, u))| format!("{n}: {k} nodes, {} links", u.len()))
                .take(5)
                .collect();
            bail!("no convergence after {timeout:?}: {}", bad.join("; "));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Resident memory of a process, MB (0 if unknown).
fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// The counting relays in front of every node's peer port, one per (caller, callee).
struct Relays {
    bytes: Arc<AtomicU64>,
    /// Per (caller, callee): the switch that cuts the connection.
    cuts: BTreeMap<(String, String), watch::Sender<bool>>,
}

impl Relays {
    /// Points every neighbour entry of every node at a relay to that neighbour.
    async fn install(net: &Net, names: &[String]) -> Result<Self> {
        let bytes = Arc::new(AtomicU64::new(0));
        let mut cuts = BTreeMap::new();
        for caller in names {
            let path = net.path().join(caller).join("node.toml");
            let mut table: toml::Table = std::fs::read_to_string(&path)?.parse()?;
            let Some(neighbours) = table.get_mut("neighbour").and_then(|v| v.as_array_mut()) else {
                continue;
            };
            for nb in neighbours {
                let Some(nb) = nb.as_table_mut() else {
                    continue;
                };
                let callee = nb
                    .get("id")
                    .and_then(|v| v.as_str())
                    .context("neighbour without id")?
                    .to_string();
                let ip = node_ip(net, &callee)?;
                let listener = TcpListener::bind((ip, 0)).await?;
                let addr = listener.local_addr()?;
                let (tx, rx) = watch::channel(false);
                let target = net.path().join(&callee).join("data").join("listen.json");
                tokio::spawn(relay(listener, target, bytes.clone(), rx));
                nb.remove("peer_addr_file");
                nb.insert("peer_addr".into(), toml::Value::String(addr.to_string()));
                cuts.insert((caller.clone(), callee), tx);
            }
            std::fs::write(&path, toml::to_string(&table)?)?;
        }
        Ok(Self { bytes, cuts })
    }

    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Cuts (or heals) both directions between `a` and `b`.
    fn set_cut(&self, a: &str, b: &str, cut: bool) {
        for key in [
            (a.to_string(), b.to_string()),
            (b.to_string(), a.to_string()),
        ] {
            if let Some(tx) = self.cuts.get(&key) {
                let _ = tx.send(cut);
            }
        }
    }
}

/// The loopback address a node's configuration binds (its `peer_listen` IP).
fn node_ip(net: &Net, node: &str) -> Result<std::net::IpAddr> {
    let path = net.path().join(node).join("node.toml");
    let table: toml::Table = std::fs::read_to_string(&path)?.parse()?;
    let listen = table
        .get("node")
        .and_then(|n| n.get("peer_listen"))
        .and_then(|v| v.as_str())
        .with_context(|| format!("{}: no node.peer_listen", path.display()))?;
    Ok(listen.parse::<SocketAddr>()?.ip())
}

/// Accepts connections for one (caller, callee) and relays each to the callee's peer port
/// (read from its `listen.json` at connect time: it may restart on another port), counting the
/// bytes both ways. While cut, live connections are dropped and new ones closed at once.
async fn relay(
    listener: TcpListener,
    target: PathBuf,
    bytes: Arc<AtomicU64>,
    cut: watch::Receiver<bool>,
) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        if *cut.borrow() {
            drop(inbound);
            continue;
        }
        let (target, bytes, mut cut) = (target.clone(), bytes.clone(), cut.clone());
        tokio::spawn(async move {
            let Some(addr) = peer_addr(&target) else {
                return;
            };
            let Ok(outbound) = TcpStream::connect(addr).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (ir, iw) = inbound.into_split();
            let (or, ow) = outbound.into_split();
            tokio::select! {
                _ = async { tokio::join!(copy(ir, ow, &bytes), copy(or, iw, &bytes)) } => {}
                _ = cut.wait_for(|c| *c) => {}
            }
        });
    }
}

fn peer_addr(listen_json: &Path) -> Option<SocketAddr> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(listen_json).ok()?).ok()?;
    v["peer"].as_str()?.parse().ok()
}

/// Copies until end of stream or an error, adding what passed to `bytes`.
async fn copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    bytes: &AtomicU64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        bytes.fetch_add(n as u64, Ordering::Relaxed);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn l(a: &str, b: &str) -> (String, String, String) {
        (format!("{a}-{b}"), a.into(), b.into())
    }

    #[test]
    fn destinations_one_per_distance_and_cuts_keep_the_mesh_connected() {
        // N01-N02-N03-N04 with a chord N01-N03: N04 is two hops away, N04's link is a bridge.
        let links = vec![
            l("N01", "N02"),
            l("N02", "N03"),
            l("N03", "N04"),
            l("N01", "N03"),
        ];
        let names: Vec<String> = ["N01", "N02", "N03", "N04"].map(String::from).to_vec();
        assert_eq!(
            destinations(&names, &links),
            [("N02".to_string(), 1), ("N04".to_string(), 2)]
        );
        for seed in 0..6 {
            let cut = pick_cut(&links, 4, seed).unwrap();
            assert_ne!(cut.0, "N03-N04", "a bridge is never cut");
        }
        assert!(pick_cut(&[l("N01", "N02")], 2, 0).is_none());
    }
}
