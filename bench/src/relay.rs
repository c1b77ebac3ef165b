//! `qkd-bench relay`: relayed and hybridised keys across a multi-hop network (issue 5).
//!
//! Three parts, each against real node processes laid out by `qkd-node demo --setup-only`
//! (five-node chain A-B-C-D-E by default: ENC-A1 at A and ENC-E1 at E share keys over four
//! relay hops):
//!
//! * **latency** - `enc_keys` at A for ENC-E1 with a non-default size (`number=1&size=512`),
//!   which runs a whole relayed + hybridised batch synchronously (route, one-time-pad relay over
//!   every hop, the authenticated end-to-end exchange, the destination's commit, the ack), then
//!   `dec_keys` of the same key at E; sequentially and at a few concurrency levels.
//! * **throughput** - clients keep draining the A1->E1 pool with `enc_keys number=N` (and fetch
//!   every key at E with one POST `dec_keys`), with link key plentiful: the sustained delivered
//!   rate is the pool refill rate. The relay counters of `/status` say how many batches and keys
//!   crossed the first hop, so the refill's batch cycle can be told apart from the clients.
//! * **scarce** - a second network whose links make little key (`--scarce-link-rate-bps`);
//!   pools A1->E1 and C1->E1 are drained continuously (so links C-D and D-E carry both flows),
//!   and over a steady-state window each link's one-time-pad bytes and authentication bytes
//!   (from `/status`) are compared with the link's secret key rate.
//!
//! Every delivered key is checked: `dec_keys` at the slave's node must return the same bytes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::etsi::{Errors, Failure, fetch, fetch_post, fetch_retrying};
use crate::measure::{CpuSnapshot, CpuUse, Latency, Samples};
use qkd_testnet::{Layout, LinkCounters, Net};

/// Bytes of one simulated key block in the demo's configuration (`block_bits = 524288`): link
/// key reaches a node in blocks of this size, which bounds how exactly a window's supply is known.
const DEMO_BLOCK_BYTES: f64 = 65_536.0;

/// A part of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Latency,
    Throughput,
    Scarce,
}

/// Arguments of `qkd-bench relay`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which parts to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "latency,throughput,scarce"
    )]
    pub parts: Vec<Part>,
    /// Network shape (`qkd-node demo --topology`); ENC-A1 at A and ENC-E1 at E must exist.
    #[arg(long, default_value = "chain5")]
    pub topology: String,
    /// Secret key rate of every link for the latency and throughput parts (plentiful), bit/s.
    #[arg(long, default_value_t = 100_000_000)]
    pub link_rate_bps: u64,
    /// Finished keys kept ready per SAE pair (`qkd-node demo --pool-keys`; default: the demo's).
    #[arg(long)]
    pub pool_keys: Option<u32>,
    /// Keys per relayed batch (`[relay] batch_keys` of every node; default as generated).
    #[arg(long)]
    pub batch_keys: Option<u32>,
    /// Latency: concurrency levels (clients with one on-demand request in flight each).
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub concurrency: Vec<usize>,
    /// Latency: measured requests per concurrency level.
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// Latency: key size of the on-demand requests (bits; not the pool's default size).
    #[arg(long, default_value_t = 512)]
    pub on_demand_size: u32,
    /// Throughput: concurrent clients draining the A1->E1 pool.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Throughput and scarce: keys per `enc_keys` request (default size, from the pool).
    #[arg(long, default_value_t = 128)]
    pub number: u32,
    /// Throughput: measured window.
    #[arg(long, default_value = "20s", value_parser = crate::parse_duration)]
    pub duration: Duration,
    /// Throughput: warm-up before the window (drains the full pool, so the window sees refills).
    #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
    pub warmup: Duration,
    /// Throughput and scarce: pause of a client after a 503 (pool empty) before it asks again.
    #[arg(long, default_value = "10ms", value_parser = crate::parse_duration)]
    pub empty_backoff: Duration,
    /// Scarce: secret key rate of every link, bit/s.
    #[arg(long, default_value_t = 200_000)]
    pub scarce_link_rate_bps: u64,
    /// Scarce: measured window (long: link key arrives in 64 KiB blocks).
    #[arg(long, default_value = "120s", value_parser = crate::parse_duration)]
    pub scarce_duration: Duration,
    /// Scarce: warm-up (the link backlog and the initial pool fills are used up first).
    #[arg(long, default_value = "30s", value_parser = crate::parse_duration)]
    pub scarce_warmup: Duration,
    /// Scarce: clients per drained pair.
    #[arg(long, default_value_t = 2)]
    pub scarce_clients: usize,
    /// The `qkd-node` binary (default: next to this binary).
    #[arg(long)]
    pub nodes_bin: Option<std::path::PathBuf>,
    /// Directory in which the temporary networks are created.
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
}

/// Result of `qkd-bench relay`.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub topology: String,
    pub link_rate_bps: u64,
    /// Pool target per pair (`max_key_count`) of the plentiful network.
    pub pool_keys: Option<u64>,
    pub batch_keys: Option<u32>,
    /// Seconds until every pool of the plentiful network was full and no relay ran.
    pub pool_fill_s: Option<f64>,
    pub latency: Vec<LatencyLevel>,
    pub throughput: Option<Throughput>,
    pub scarce: Option<Scarce>,
}

/// On-demand requests at one concurrency level.
#[derive(Debug, serde::Serialize)]
pub struct LatencyLevel {
    pub concurrency: usize,
    pub size_bits: u32,
    /// Measured requests answered per second (wall time of the level).
    pub requests_per_s: f64,
    /// `enc_keys` at A: a whole relayed + hybridised batch of one key.
    pub enc_keys: Latency,
    /// `dec_keys` of that key at E.
    pub dec_keys: Latency,
    pub errors: Errors,
}

/// Sustained delivery from a drained pool with plentiful link key.
#[derive(Debug, serde::Serialize)]
pub struct Throughput {
    pub clients: usize,
    pub number: u32,
    pub window_s: f64,
    /// Keys answered by `enc_keys` and fetched identical by `dec_keys`, per second.
    pub delivered_keys_per_s: f64,
    /// Keys relayed over the first hop (A-B) per second: the refill rate.
    pub relayed_keys_per_s: f64,
    /// Relay messages over A-B per second (one per batch).
    pub batches_per_s: f64,
    pub keys_per_batch: f64,
    /// A1->E1 pool level at the start and the end of the window.
    pub pool_start: u64,
    pub pool_end: u64,
    /// `enc_keys` answered 503 (pool below `number`) in the window: clients waited for refills.
    pub empty_pool_answers: u64,
    pub enc_keys: Latency,
    pub dec_keys: Latency,
    pub errors: Errors,
    pub cpu: CpuUse,
}

/// Link use when link key is scarce.
#[derive(Debug, serde::Serialize)]
pub struct Scarce {
    pub link_rate_bps: u64,
    pub window_s: f64,
    /// Keys delivered end to end (both drained pairs) per second.
    pub delivered_keys_per_s: f64,
    pub empty_pool_answers: u64,
    pub links: Vec<LinkUse>,
    /// The link that carried the most one-time-pad bytes.
    pub busiest: String,
    /// Its relayed key material (pad bytes) / its secret key rate over the window.
    pub busiest_pad_fraction: f64,
    /// Its authentication bytes / its secret key rate.
    pub busiest_auth_fraction: f64,
    /// How far the supply of one window can stray from rate x window: one 64 KiB block.
    pub block_uncertainty: f64,
    pub errors: Errors,
    pub cpu: CpuUse,
}

/// One link over the scarce window (counters of its first-named end).
#[derive(Debug, serde::Serialize)]
pub struct LinkUse {
    pub link: String,
    pub messages: u64,
    pub keys: u64,
    pub pad_bytes: u64,
    pub auth_bytes: u64,
    /// Pad bytes / (rate / 8 x window).
    pub pad_fraction: f64,
    /// Auth bytes / (rate / 8 x window).
    pub auth_fraction: f64,
    /// Unallocated link key at the start and the end of the window.
    pub available_start: u64,
    pub available_end: u64,
}

impl Report {
    /// Prints the tables.
    pub fn print(&self) {
        println!(
            "relay: topology {}, links {} Mbit/s, pool {} keys/pair, batch {}",
            self.topology,
            self.link_rate_bps as f64 / 1e6,
            self.pool_keys.map_or("-".into(), |n| n.to_string()),
            self.batch_keys
                .map_or("as generated".into(), |n| n.to_string())
        );
        if let Some(s) = self.pool_fill_s {
            println!("pools full and quiet after {s:.1} s");
        }
        if !self.latency.is_empty() {
            println!("on-demand enc_keys A -> ENC-E1 (a whole relayed + hybridised batch):");
            println!(
                "{:>5} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6}",
                "conc",
                "count",
                "req/s",
                "enc p50",
                "enc p99",
                "enc max",
                "dec p50",
                "dec p99",
                "errors"
            );
            for l in &self.latency {
                println!(
                    "{:>5} {:>6} {:>8.1} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>6}",
                    l.concurrency,
                    l.enc_keys.count,
                    l.requests_per_s,
                    l.enc_keys.p50_ms,
                    l.enc_keys.p99_ms,
                    l.enc_keys.max_ms,
                    l.dec_keys.p50_ms,
                    l.dec_keys.p99_ms,
                    l.errors.enc_keys + l.errors.dec_keys + l.errors.transport
                );
            }
        }
        if let Some(t) = &self.throughput {
            println!(
                "throughput: {} clients x enc_keys number={} over {:.1} s",
                t.clients, t.number, t.window_s
            );
            println!(
                "  delivered {:.0} keys/s; relayed over A-B {:.0} keys/s in {:.1} batches/s of \
                 {:.1} keys; pool {} -> {}; {} empty-pool answers",
                t.delivered_keys_per_s,
                t.relayed_keys_per_s,
                t.batches_per_s,
                t.keys_per_batch,
                t.pool_start,
                t.pool_end,
                t.empty_pool_answers
            );
            for (name, l) in [("enc_keys", &t.enc_keys), ("dec_keys", &t.dec_keys)] {
                println!(
                    "  {name}: count {} mean {:.2} p50 {:.2} p99 {:.2} max {:.2} ms",
                    l.count, l.mean_ms, l.p50_ms, l.p99_ms, l.max_ms
                );
            }
            print_errors(&t.errors);
            t.cpu.print();
        }
        if let Some(s) = &self.scarce {
            println!(
                "scarce: links {} kbit/s, window {:.1} s, delivered {:.1} keys/s, {} empty-pool \
                 answers",
                s.link_rate_bps as f64 / 1e3,
                s.window_s,
                s.delivered_keys_per_s,
                s.empty_pool_answers
            );
            println!(
                "  {:<6} {:>8} {:>8} {:>10} {:>9} {:>7} {:>7} {:>10} {:>10}",
                "link",
                "messages",
                "keys",
                "pad B",
                "auth B",
                "pad %",
                "auth %",
                "avail 0",
                "avail 1"
            );
            for l in &s.links {
                println!(
                    "  {:<6} {:>8} {:>8} {:>10} {:>9} {:>7.1} {:>7.2} {:>10} {:>10}",
                    l.link,
                    l.messages,
                    l.keys,
                    l.pad_bytes,
                    l.auth_bytes,
                    l.pad_fraction * 100.0,
                    l.auth_fraction * 100.0,
                    l.available_start,
                    l.available_end
                );
            }
            println!(
                "  busiest link {}: relayed key material = {:.1} % of its key rate, \
                 authentication {:.2} % (supply known to +/- {:.1} %: one key block)",
                s.busiest,
                s.busiest_pad_fraction * 100.0,
                s.busiest_auth_fraction * 100.0,
                s.block_uncertainty * 100.0
            );
            print_errors(&s.errors);
            s.cpu.print();
        }
    }

    /// Fails the run if any key did not match (a correctness failure, not a slow run).
    pub fn check(&self) -> Result<()> {
        let mismatches = self
            .latency
            .iter()
            .map(|l| l.errors.mismatches)
            .chain(self.throughput.iter().map(|t| t.errors.mismatches))
            .chain(self.scarce.iter().map(|s| s.errors.mismatches))
            .sum::<u64>();
        if mismatches > 0 {
            bail!("{mismatches} keys did not match at the slave's node");
        }
        Ok(())
    }
}

fn print_errors(e: &Errors) {
    println!(
        "  errors: enc_keys {}, dec_keys {}, transport {}, mismatches {}",
        e.enc_keys, e.dec_keys, e.transport, e.mismatches
    );
    for s in &e.samples {
        println!("    e.g. {s}");
    }
}

/// Runs the benchmark.
pub async fn run(args: &Args) -> Result<Report> {
    if args.number == 0 || args.clients == 0 || args.scarce_clients == 0 {
        bail!("--number, --clients and --scarce-clients must be at least 1");
    }
    if args.on_demand_size == 0 || !args.on_demand_size.is_multiple_of(8) {
        bail!("--on-demand-size must be a positive multiple of 8 bits");
    }
    let bin = qkd_testnet::node_bin(args.nodes_bin.as_ref())?;
    let mut report = Report {
        topology: args.topology.clone(),
        link_rate_bps: args.link_rate_bps,
        pool_keys: None,
        batch_keys: args.batch_keys,
        pool_fill_s: None,
        latency: Vec::new(),
        throughput: None,
        scarce: None,
    };
    let wants = |p| args.parts.contains(&p);
    if wants(Part::Latency) || wants(Part::Throughput) {
        let layout = Layout {
            topology: args.topology.clone(),
            link_rate_bps: args.link_rate_bps,
            pool_keys: args.pool_keys,
            batch_keys: args.batch_keys,
            log_level: "warn".into(),
        };
        let net = crate::start_network(&bin, args.dir.as_deref(), &layout)?;
        let a1 = net.sae_client("ENC-A1")?;
        let mut pools = Vec::new();
        for (master, node, slave) in DIRECTED_PAIRS {
            pools.push((net.sae_client(master)?, node.to_string(), slave.to_string()));
        }
        report.pool_fill_s = Some(
            net.wait_settled(&pools, Duration::from_secs(1800))
                .await?
                .as_secs_f64(),
        );
        report.pool_keys = Some(net.pool_level(&a1, "A", "ENC-E1").await?.1);
        if wants(Part::Latency) {
            for &c in &args.concurrency {
                report.latency.push(latency(&net, args, c.max(1)).await?);
                net.check_alive()?;
            }
        }
        if wants(Part::Throughput) {
            report.throughput = Some(throughput(&net, args).await?);
            net.check_alive()?;
        }
    }
    if wants(Part::Scarce) {
        report.scarce = Some(scarce(&bin, args).await?);
    }
    Ok(report)
}

/// Every directed SAE pair of the five-node demo layouts: (master, its node, slave).
const DIRECTED_PAIRS: [(&str, &str, &str); 10] = [
    ("ENC-A1", "A", "ENC-B1"),
    ("ENC-A1", "A", "ENC-C1"),
    ("ENC-A1", "A", "ENC-E1"),
    ("ENC-A2", "A", "ENC-B2"),
    ("ENC-B1", "B", "ENC-A1"),
    ("ENC-B2", "B", "ENC-A2"),
    ("ENC-C1", "C", "ENC-A1"),
    ("ENC-C1", "C", "ENC-E1"),
    ("ENC-E1", "E", "ENC-A1"),
    ("ENC-E1", "E", "ENC-C1"),
];

/// On-demand requests at concurrency `c`: each client runs one request at a time until
/// `args.requests` were measured (after one unmeasured warm-up request per client).
async fn latency(net: &Net, args: &Args, c: usize) -> Result<LatencyLevel> {
    let enc_url = format!(
        "{}ENC-E1/enc_keys?number=1&size={}",
        net.try_base("A")?,
        args.on_demand_size
    );
    let dec_base = format!("{}ENC-A1/dec_keys?key_ID=", net.try_base("E")?);
    let left = Arc::new(AtomicUsize::new(args.requests));
    let mut tasks = tokio::task::JoinSet::new();
    let t0 = Instant::now();
    for _ in 0..c {
        let (enc_c, dec_c) = (net.sae_client("ENC-A1")?, net.sae_client("ENC-E1")?);
        let (enc_url, dec_base, left) = (enc_url.clone(), dec_base.clone(), left.clone());
        let size = args.on_demand_size;
        tasks.spawn(async move {
            let mut enc = Samples::default();
            let mut dec = Samples::default();
            let mut errors = Errors::default();
            let mut warm = true;
            loop {
                if !warm
                    && left
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                        .is_err()
                {
                    break;
                }
                let t0 = Instant::now();
                // On demand: a 503 (a hop timed out under load) is retried as a client would;
                // the latency then includes the retries, as a client would see it.
                let (id, key) = match fetch_retrying(&enc_c, &enc_url).await {
                    Ok(mut keys) if keys.len() == 1 => keys.remove(0),
                    Ok(keys) => {
                        errors.note_status(true, format!("enc_keys returned {} keys", keys.len()));
                        continue;
                    }
                    Err(f) => {
                        errors.note(true, f);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let t1 = Instant::now();
                let got = fetch(&dec_c, &format!("{dec_base}{id}")).await;
                let t2 = Instant::now();
                match got {
                    Ok(k) if k.len() == 1 && k[0].0 == id && k[0].1 == key => {}
                    Ok(_) => {
                        errors.mismatches += 1;
                        errors.sample(format!("mismatch for key {id}"));
                        continue;
                    }
                    Err(f) => {
                        errors.note(false, f);
                        continue;
                    }
                }
                if key.len() * 8 != size as usize {
                    errors.mismatches += 1;
                    errors.sample(format!("key {id} has {} bytes", key.len()));
                }
                if !warm {
                    enc.push(t1 - t0);
                    dec.push(t2 - t1);
                }
                warm = false;
            }
            (enc, dec, errors)
        });
    }
    let mut enc = Samples::default();
    let mut dec = Samples::default();
    let mut errors = Errors::default();
    while let Some(r) = tasks.join_next().await {
        let (e, d, er) = r?;
        enc.extend(e);
        dec.extend(d);
        errors.merge(er);
    }
    let wall = t0.elapsed().as_secs_f64();
    let enc = enc.summary();
    Ok(LatencyLevel {
        concurrency: c,
        size_bits: args.on_demand_size,
        requests_per_s: enc.count as f64 / wall,
        enc_keys: enc,
        dec_keys: dec.summary(),
        errors,
    })
}

/// Sustained delivery from the A1->E1 pool with plentiful link key.
async fn throughput(net: &Net, args: &Args) -> Result<Throughput> {
    let start = Instant::now();
    let warm_end = start + args.warmup;
    let stop = warm_end + args.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.clients {
        tasks.spawn(Drainer::new(net, "ENC-A1", "A", "ENC-E1", "E", args)?.run(warm_end, stop));
    }
    let probe = net.sae_client("ENC-A1")?;
    tokio::time::sleep_until(warm_end.into()).await;
    let cpu0 = CpuSnapshot::take(&net.processes());
    let (c0, pool_start) = (
        first_hop(net).await?,
        net.pool_level(&probe, "A", "ENC-E1").await?.0,
    );
    tokio::time::sleep_until(stop.into()).await;
    let cpu = cpu0.until(&CpuSnapshot::take(&net.processes()));
    let (c1, pool_end) = (
        first_hop(net).await?,
        net.pool_level(&probe, "A", "ENC-E1").await?.0,
    );
    let d = Drained::join(tasks).await?;
    let window = args.duration.as_secs_f64();
    let messages = c1.relay_messages.saturating_sub(c0.relay_messages);
    let keys = c1.relay_keys.saturating_sub(c0.relay_keys);
    Ok(Throughput {
        clients: args.clients,
        number: args.number,
        window_s: window,
        delivered_keys_per_s: d.keys as f64 / window,
        relayed_keys_per_s: keys as f64 / window,
        batches_per_s: messages as f64 / window,
        keys_per_batch: keys as f64 / (messages.max(1)) as f64,
        pool_start,
        pool_end,
        empty_pool_answers: d.empty,
        enc_keys: d.enc.summary(),
        dec_keys: d.dec.summary(),
        errors: d.errors,
        cpu,
    })
}

/// Counters of link A-B as A sees them.
async fn first_hop(net: &Net) -> Result<LinkCounters> {
    net.counters("A")
        .await?
        .into_iter()
        .find(|(l, _)| l == "A-B")
        .map(|(_, c)| c)
        .ok_or_else(|| anyhow::anyhow!("node A has no link A-B"))
}

/// Link use with scarce link key, on a network of its own.
async fn scarce(bin: &std::path::Path, args: &Args) -> Result<Scarce> {
    let layout = Layout {
        topology: args.topology.clone(),
        link_rate_bps: args.scarce_link_rate_bps,
        pool_keys: args.pool_keys,
        batch_keys: args.batch_keys,
        log_level: "warn".into(),
    };
    let net = crate::start_network(bin, args.dir.as_deref(), &layout)?;
    let start = Instant::now();
    let warm_end = start + args.scarce_warmup;
    let stop = warm_end + args.scarce_duration;
    let mut tasks = tokio::task::JoinSet::new();
    for (master, mnode) in [("ENC-A1", "A"), ("ENC-C1", "C")] {
        for _ in 0..args.scarce_clients {
            tasks
                .spawn(Drainer::new(&net, master, mnode, "ENC-E1", "E", args)?.run(warm_end, stop));
        }
    }
    tokio::time::sleep_until(warm_end.into()).await;
    let cpu0 = CpuSnapshot::take(&net.processes());
    let c0 = net.link_counters().await?;
    let t0 = Instant::now();
    tokio::time::sleep_until(stop.into()).await;
    let c1 = net.link_counters().await?;
    let window = t0.elapsed().as_secs_f64();
    let cpu = cpu0.until(&CpuSnapshot::take(&net.processes()));
    let d = Drained::join(tasks).await?;
    net.check_alive()?;
    let supply = args.scarce_link_rate_bps as f64 / 8.0 * window;
    let links: Vec<LinkUse> = c0
        .iter()
        .zip(&c1)
        .map(|((link, a), (_, b))| {
            let pad = b.relay_pad_bytes.saturating_sub(a.relay_pad_bytes);
            let auth = b.relay_auth_bytes.saturating_sub(a.relay_auth_bytes);
            LinkUse {
                link: link.clone(),
                messages: b.relay_messages.saturating_sub(a.relay_messages),
                keys: b.relay_keys.saturating_sub(a.relay_keys),
                pad_bytes: pad,
                auth_bytes: auth,
                pad_fraction: pad as f64 / supply,
                auth_fraction: auth as f64 / supply,
                available_start: a.available_bytes,
                available_end: b.available_bytes,
            }
        })
        .collect();
    let busiest = links
        .iter()
        .max_by_key(|l| l.pad_bytes)
        .ok_or_else(|| anyhow::anyhow!("no links"))?;
    Ok(Scarce {
        link_rate_bps: args.scarce_link_rate_bps,
        window_s: window,
        delivered_keys_per_s: d.keys as f64 / window,
        empty_pool_answers: d.empty,
        busiest: busiest.link.clone(),
        busiest_pad_fraction: busiest.pad_fraction,
        busiest_auth_fraction: busiest.auth_fraction,
        block_uncertainty: DEMO_BLOCK_BYTES / supply,
        links,
        errors: d.errors,
        cpu,
    })
}

/// A client that keeps taking keys from one pair's pool and fetching them at the slave's node.
struct Drainer {
    enc: reqwest::Client,
    dec: reqwest::Client,
    enc_url: String,
    dec_url: String,
    backoff: Duration,
}

/// What drainers measured in the window.
#[derive(Default)]
struct Drained {
    keys: u64,
    empty: u64,
    enc: Samples,
    dec: Samples,
    errors: Errors,
}

impl Drainer {
    fn new(
        net: &Net,
        master: &str,
        master_node: &str,
        slave: &str,
        slave_node: &str,
        args: &Args,
    ) -> Result<Self> {
        Ok(Self {
            enc: net.sae_client(master)?,
            dec: net.sae_client(slave)?,
            enc_url: format!(
                "{}{slave}/enc_keys?number={}",
                net.try_base(master_node)?,
                args.number
            ),
            dec_url: format!("{}{master}/dec_keys", net.try_base(slave_node)?),
            backoff: args.empty_backoff,
        })
    }

    async fn run(self, warm_end: Instant, stop: Instant) -> Drained {
        let mut out = Drained::default();
        loop {
            let t0 = Instant::now();
            if t0 >= stop {
                break;
            }
            let counted = t0 >= warm_end;
            let keys = match fetch(&self.enc, &self.enc_url).await {
                Ok(keys) => keys,
                Err(Failure::Unavailable(_)) => {
                    out.empty += u64::from(counted);
                    tokio::time::sleep(self.backoff).await;
                    continue;
                }
                Err(f) => {
                    out.errors.note(true, f);
                    tokio::time::sleep(self.backoff).await;
                    continue;
                }
            };
            let t1 = Instant::now();
            let ids: Vec<serde_json::Value> = keys
                .iter()
                .map(|(id, _)| serde_json::json!({ "key_ID": id }))
                .collect();
            let body = serde_json::json!({ "key_IDs": ids });
            let got = fetch_post(&self.dec, &self.dec_url, &body).await;
            let t2 = Instant::now();
            match got {
                Ok(back) if same_keys(&back, &keys) => {}
                Ok(_) => {
                    out.errors.mismatches += 1;
                    out.errors.sample("dec_keys returned other keys".into());
                    continue;
                }
                Err(f) => {
                    out.errors.note(false, f);
                    continue;
                }
            }
            if counted && t2 <= stop {
                out.keys += keys.len() as u64;
                out.enc.push(t1 - t0);
                out.dec.push(t2 - t1);
            }
        }
        out
    }
}

/// Whether `dec_keys` returned exactly the keys `enc_keys` gave, in any order.
fn same_keys(back: &[(String, Vec<u8>)], sent: &[(String, Vec<u8>)]) -> bool {
    let mut back: Vec<_> = back.iter().collect();
    let mut sent: Vec<_> = sent.iter().collect();
    back.sort();
    sent.sort();
    back == sent
}

impl Drained {
    async fn join(mut tasks: tokio::task::JoinSet<Drained>) -> Result<Self> {
        let mut all = Drained::default();
        while let Some(r) = tasks.join_next().await {
            let r = r?;
            all.keys += r.keys;
            all.empty += r.empty;
            all.enc.extend(r.enc);
            all.dec.extend(r.dec);
            all.errors.merge(r.errors);
        }
        Ok(all)
    }
}
