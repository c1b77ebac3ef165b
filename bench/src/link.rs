//! `qkd-bench link`: throughput of a `qkd-link` tunnel rekeyed every second against the same
//! tunnel with a fixed key (issue 11, "Performance").
//!
//! Lays out the demo pair (`qkd-node demo --setup-only --topology pair`), starts both nodes and
//! two tunnels side by side, each a `qkd-link listen` for ENC-A1 at A and a `qkd-link serve` for
//! ENC-B1 at B in front of a sink that discards what it reads: one rekeyed every
//! `--rekey-interval`, one never (interval and byte budget off: its runs stay in epoch 0). The
//! runs alternate between the two (the rekeyed tunnel first in odd rounds, the fixed one first in
//! even rounds), each one client pushing 64 KiB writes for `--duration`; a run's throughput is
//! the bytes the sink received over the time from the first write to the sink's end of stream.
//! Reports each tunnel's runs with median, min and max, and the ratio of the medians.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use qkd_testnet::{Layout, LinkProc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Arguments of `qkd-bench link`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Rounds; each runs both tunnels once.
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    /// How long each run pushes data.
    #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
    pub duration: Duration,
    /// Rekey interval of the rekeyed tunnel (`qkd-link --rekey-interval`).
    #[arg(long, default_value = "1s")]
    pub rekey_interval: String,
    /// Secret key rate of the simulated link, bit/s.
    #[arg(long, default_value_t = 20_000_000)]
    pub link_rate_bps: u64,
    /// The `qkd-node` binary (default: next to this binary).
    #[arg(long)]
    pub nodes_bin: Option<PathBuf>,
    /// The `qkd-link` binary (default: next to this binary).
    #[arg(long)]
    pub link_bin: Option<PathBuf>,
    /// Directory for the temporary network (default: the system temp directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// The runs of one tunnel.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Mode {
    /// MB/s (10^6 bytes) of each run, in order.
    pub runs_mb_per_s: Vec<f64>,
    /// Median of the runs.
    pub median_mb_per_s: f64,
    /// Slowest run.
    pub min_mb_per_s: f64,
    /// Fastest run.
    pub max_mb_per_s: f64,
    /// Epochs (stream indices) each run used, as the opener reported them.
    pub epochs_per_run: Vec<u64>,
}

/// The figures of one benchmark.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Rounds run.
    pub rounds: u32,
    /// Seconds each run pushed data.
    pub duration_s: f64,
    /// The rekeyed tunnel's interval, as given.
    pub rekey_interval: String,
    /// The tunnel rekeyed every interval.
    pub rekeyed: Mode,
    /// The tunnel with one key for each run.
    pub fixed: Mode,
    /// Median of the rekeyed runs over median of the fixed runs.
    pub ratio_of_medians: f64,
}

impl Report {
    /// Prints the human-readable table.
    pub fn print(&self) {
        println!(
            "qkd-link tunnel throughput, {} interleaved rounds of {:.1} s per tunnel (one client, \
             64 KiB writes, A-B over loopback)",
            self.rounds, self.duration_s
        );
        println!(
            "{:<28} {:>8} {:>8} {:>8}  runs (MB/s); epochs per run",
            "tunnel", "median", "min", "max"
        );
        for (name, m) in [
            (
                format!("rekey every {}", self.rekey_interval),
                &self.rekeyed,
            ),
            ("fixed key".to_string(), &self.fixed),
        ] {
            let runs: Vec<String> = m.runs_mb_per_s.iter().map(|r| format!("{r:.1}")).collect();
            println!(
                "{:<28} {:>8.1} {:>8.1} {:>8.1}  {}; {:?}",
                name,
                m.median_mb_per_s,
                m.min_mb_per_s,
                m.max_mb_per_s,
                runs.join(" "),
                m.epochs_per_run
            );
        }
        println!("rekeyed / fixed (medians): {:.3}", self.ratio_of_medians);
    }
}

/// One tunnel: its two processes, where clients connect, and the sink's reports.
struct Tunnel {
    listen: LinkProc,
    _serve: LinkProc,
    local: String,
    sink: mpsc::UnboundedReceiver<(u64, Instant)>,
    runs: u64,
}

/// Runs the benchmark.
pub async fn run(args: &Args) -> Result<Report> {
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let bin = qkd_testnet::node_bin(args.nodes_bin.as_ref())?;
    let link_bin = qkd_testnet::sibling_bin(args.link_bin.as_ref(), "qkd-link", "--link-bin")?;
    let net = crate::start_network(
        &bin,
        args.dir.as_deref(),
        &Layout {
            topology: "pair".into(),
            link_rate_bps: args.link_rate_bps,
            pool_keys: None,
            batch_keys: None,
            log_level: "warn".into(),
        },
    )?;
    let mut rekeyed = tunnel(&net, &link_bin, &args.rekey_interval).await?;
    let mut fixed = tunnel(&net, &link_bin, "off").await?;
    let (mut r, mut f) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        if round % 2 == 0 {
            r.push(push(&mut rekeyed, args.duration).await.context("rekeyed")?);
            f.push(push(&mut fixed, args.duration).await.context("fixed")?);
        } else {
            f.push(push(&mut fixed, args.duration).await.context("fixed")?);
            r.push(push(&mut rekeyed, args.duration).await.context("rekeyed")?);
        }
    }
    let (rekeyed, fixed) = (mode(r), mode(f));
    Ok(Report {
        rounds: args.rounds,
        duration_s: args.duration.as_secs_f64(),
        rekey_interval: args.rekey_interval.clone(),
        ratio_of_medians: if fixed.median_mb_per_s > 0.0 {
            rekeyed.median_mb_per_s / fixed.median_mb_per_s
        } else {
            0.0
        },
        rekeyed,
        fixed,
    })
}

/// Starts a sink, `qkd-link serve` at B in front of it and `qkd-link listen` at A.
async fn tunnel(net: &qkd_testnet::Net, bin: &std::path::Path, interval: &str) -> Result<Tunnel> {
    const WAIT: Duration = Duration::from_secs(60);
    let sink = TcpListener::bind("127.0.0.1:0").await?;
    let sink_addr = sink.local_addr()?.to_string();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = sink.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let mut n = 0u64;
                while let Ok(k) = s.read(&mut buf).await {
                    if k == 0 {
                        break;
                    }
                    n += k as u64;
                }
                let _ = tx.send((n, Instant::now()));
            });
        }
    });
    let common = ["--rekey-interval", interval, "--rekey-bytes", "0"];
    let mut args = vec!["serve", "--peer-sae", "ENC-A1", "--listen", "127.0.0.1:0"];
    args.extend(["--target", sink_addr.as_str()]);
    args.extend(common);
    let mut serve = LinkProc::start(bin, net, "B", "ENC-B1", &args, &[])?;
    let far = serve.addr(WAIT).await?;
    let mut args = vec!["listen", "--peer-sae", "ENC-B1", "--local", "127.0.0.1:0"];
    args.extend(["--remote", far.as_str()]);
    args.extend(common);
    let mut listen = LinkProc::start(bin, net, "A", "ENC-A1", &args, &[])?;
    let local = listen.addr(WAIT).await?;
    Ok(Tunnel {
        listen,
        _serve: serve,
        local,
        sink: rx,
        runs: 0,
    })
}

/// One run: MB/s and the epochs the tunnel used.
async fn push(t: &mut Tunnel, duration: Duration) -> Result<(f64, u64)> {
    let mut s = TcpStream::connect(&t.local).await?;
    s.set_nodelay(true)?;
    let chunk = vec![0x5au8; 64 * 1024];
    let t0 = Instant::now();
    let mut sent = 0u64;
    while t0.elapsed() < duration {
        s.write_all(&chunk)
            .await
            .context("writing into the tunnel")?;
        sent += chunk.len() as u64;
    }
    s.shutdown().await?;
    let (got, end) = tokio::time::timeout(Duration::from_secs(120), t.sink.recv())
        .await
        .context("the sink did not see the end of the stream")?
        .context("the sink stopped")?;
    if got != sent {
        bail!("the sink received {got} bytes of {sent}");
    }
    // The tunnel closes once the sink's side has ended too.
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await?;
    t.runs += 1;
    let closed = t.listen.closed(t.runs, Duration::from_secs(60)).await?;
    if closed["ok"] != true {
        bail!("the tunnel failed: {}", closed["error"]);
    }
    let epochs = closed["epochs"].as_array().map_or(0, |e| e.len() as u64);
    let secs = (end - t0).as_secs_f64();
    Ok((got as f64 / 1e6 / secs, epochs))
}

fn mode(runs: Vec<(f64, u64)>) -> Mode {
    let mut sorted: Vec<f64> = runs.iter().map(|r| r.0).collect();
    sorted.sort_by(f64::total_cmp);
    let median = match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    };
    Mode {
        runs_mb_per_s: runs.iter().map(|r| r.0).collect(),
        median_mb_per_s: median,
        min_mb_per_s: sorted.first().copied().unwrap_or(0.0),
        max_mb_per_s: sorted.last().copied().unwrap_or(0.0),
        epochs_per_run: runs.iter().map(|r| r.1).collect(),
    }
}
