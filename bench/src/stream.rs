//! `qkd-bench stream`: delivery jitter of an ETSI 004-style key stream over gRPC (issue 11).
//!
//! Lays out the demo pair (`qkd-node demo --setup-only --topology pair`), starts both nodes, opens
//! a key stream from ENC-A1 at A to ENC-B1 at B with `max_bps` set for `--rate` keys per second,
//! joins it at B, and reads `--keys` keys with `StreamKeys` at both ends at once. It records when
//! each key arrives at each end and reports the intervals between consecutive keys against the
//! cadence (`1 / rate`): their distribution, the absolute deviation from the period (the jitter),
//! the rate achieved, and whether both ends got identical keys at every index (they must).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use qkd_proto::keys as pb;
use qkd_proto::keys::key_delivery_client::KeyDeliveryClient;
use qkd_testnet::{Layout, Net};
use tonic::transport::Channel;

use crate::measure::{Latency, Samples};

/// Arguments of `qkd-bench stream`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keys per second the stream asks for (QoS `max_bps` = rate × 8 × size).
    #[arg(long, default_value_t = 100)]
    pub rate: u32,
    /// Keys read at each end (after one warm-up key).
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,
    /// Key size in bytes (QoS `key_chunk_size`).
    #[arg(long, default_value_t = 32)]
    pub size: u32,
    /// Secret key rate of the simulated link, bit/s.
    #[arg(long, default_value_t = 20_000_000)]
    pub link_rate_bps: u64,
    /// The `qkd-node` binary (default: next to this binary).
    #[arg(long)]
    pub nodes_bin: Option<PathBuf>,
    /// Directory for the temporary network (default: the system temp directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// What one end saw.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EndReport {
    /// Keys received.
    pub keys: u64,
    /// Keys per second from the first key to the last.
    pub achieved_keys_per_s: f64,
    /// Intervals between consecutive keys.
    pub interval: Latency,
    /// |interval - period|.
    pub jitter: Latency,
}

/// The figures of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Keys per second asked for.
    pub rate: u32,
    /// The cadence's period, ms.
    pub period_ms: f64,
    /// Key size, bytes.
    pub size: u32,
    /// At the master's node (A).
    pub master: EndReport,
    /// At the slave's node (B).
    pub slave: EndReport,
    /// Indices whose keys differed between the ends (must be 0).
    pub mismatched: u64,
}

impl Report {
    /// Prints the human-readable table.
    pub fn print(&self) {
        println!(
            "key stream: {} keys/s of {} bytes (period {:.1} ms), StreamKeys at both ends at once",
            self.rate, self.size, self.period_ms
        );
        println!(
            "{:<8} {:>6} {:>9} | interval ms: {:>7} {:>7} {:>7} {:>7} | jitter ms: {:>6} {:>6} {:>6}",
            "end", "keys", "keys/s", "mean", "p50", "p99", "max", "mean", "p99", "max"
        );
        for (name, e) in [("master", &self.master), ("slave", &self.slave)] {
            println!(
                "{:<8} {:>6} {:>9.1} |              {:>7.2} {:>7.2} {:>7.2} {:>7.2} |            {:>6.2} {:>6.2} {:>6.2}",
                name,
                e.keys,
                e.achieved_keys_per_s,
                e.interval.mean_ms,
                e.interval.p50_ms,
                e.interval.p99_ms,
                e.interval.max_ms,
                e.jitter.mean_ms,
                e.jitter.p99_ms,
                e.jitter.max_ms
            );
        }
        println!(
            "indices with different keys at the two ends: {}",
            self.mismatched
        );
    }

    /// Fails unless both ends got every key, identical.
    pub fn check(&self) -> Result<()> {
        if self.mismatched > 0 || self.master.keys != self.slave.keys {
            bail!(
                "the two ends differ: {} mismatched indices, {} and {} keys",
                self.mismatched,
                self.master.keys,
                self.slave.keys
            );
        }
        Ok(())
    }
}

/// Runs the benchmark.
pub async fn run(args: &Args) -> Result<Report> {
    if args.rate == 0 || args.keys < 2 {
        bail!("--rate must be positive and --keys at least 2");
    }
    let bin = qkd_testnet::node_bin(args.nodes_bin.as_ref())?;
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
    let mut a1 = client(&net, "ENC-A1", "A")?;
    let mut b1 = client(&net, "ENC-B1", "B")?;
    let max_bps = u64::from(args.rate) * 8 * u64::from(args.size);
    let qos = pb::Qos {
        key_chunk_size: args.size,
        max_bps: u32::try_from(max_bps).context("--rate × --size too large")?,
        ttl: 600,
        timeout: 10_000,
        ..Default::default()
    };
    let ksid = a1
        .open_stream(pb::OpenStreamRequest {
            peer_sae_id: "ENC-B1".into(),
            qos: Some(qos.clone()),
            key_stream_id: None,
        })
        .await
        .context("OpenStream at A")?
        .into_inner()
        .key_stream_id;
    b1.open_stream(pb::OpenStreamRequest {
        peer_sae_id: "ENC-A1".into(),
        qos: Some(qos),
        key_stream_id: Some(ksid.clone()),
    })
    .await
    .context("OpenStream (join) at B")?;
    // Warm-up: the first key at both ends (the first reservation, connections).
    for c in [&mut a1, &mut b1] {
        c.get_stream_key(pb::GetStreamKeyRequest {
            key_stream_id: ksid.clone(),
            index: 0,
        })
        .await
        .context("warm-up key")?;
    }
    let (ma, mb) = tokio::join!(
        read(&mut a1, &ksid, args.keys),
        read(&mut b1, &ksid, args.keys)
    );
    let (ma, mb) = (
        ma.context("StreamKeys at A")?,
        mb.context("StreamKeys at B")?,
    );
    let mismatched = ma
        .iter()
        .zip(&mb)
        .filter(|((_, ka), (_, kb))| ka != kb)
        .count() as u64;
    let period = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    Ok(Report {
        rate: args.rate,
        period_ms: period.as_secs_f64() * 1000.0,
        size: args.size,
        master: end_report(&ma, period),
        slave: end_report(&mb, period),
        mismatched,
    })
}

/// A client with the SAE's certificate for the node's gRPC port (it connects at the first call).
fn client(net: &Net, sae: &str, node: &str) -> Result<KeyDeliveryClient<Channel>> {
    net.try_listen(node)?
        .grpc
        .with_context(|| format!("node {node} serves no gRPC"))?;
    Ok(net.grpc(sae, node))
}

/// Reads `n` keys from index 1 with StreamKeys: (arrival, key bytes) per index, in order.
async fn read(
    c: &mut KeyDeliveryClient<Channel>,
    ksid: &str,
    n: u64,
) -> Result<Vec<(Instant, Vec<u8>)>> {
    let mut s = c
        .stream_keys(pb::StreamKeysRequest {
            key_stream_id: ksid.into(),
            from_index: 1,
            count: Some(n),
        })
        .await?
        .into_inner();
    let mut out = Vec::with_capacity(n as usize);
    while let Some(m) = s.message().await? {
        let at = Instant::now();
        if m.index != 1 + out.len() as u64 {
            bail!("index {} arrived out of order", m.index);
        }
        let key = m.key.map(|k| k.key.clone()).unwrap_or_default();
        out.push((at, key));
    }
    if out.len() as u64 != n {
        bail!("{} keys of {n} arrived", out.len());
    }
    Ok(out)
}

fn end_report(keys: &[(Instant, Vec<u8>)], period: Duration) -> EndReport {
    let mut intervals = Samples::default();
    let mut jitter = Samples::default();
    for w in keys.windows(2) {
        let d = w[1].0 - w[0].0;
        intervals.push(d);
        jitter.push(d.abs_diff(period));
    }
    let span = match (keys.first(), keys.last()) {
        (Some(f), Some(l)) => (l.0 - f.0).as_secs_f64(),
        _ => 0.0,
    };
    EndReport {
        keys: keys.len() as u64,
        achieved_keys_per_s: if span > 0.0 {
            (keys.len() - 1) as f64 / span
        } else {
            0.0
        },
        interval: intervals.summary(),
        jitter: jitter.summary(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_and_jitter_of_a_perfect_and_a_late_key() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let keys = vec![
            (t, vec![1]),
            (t + ms(10), vec![2]),
            (t + ms(20), vec![3]),
            (t + ms(35), vec![4]),
        ];
        let r = end_report(&keys, ms(10));
        assert_eq!(r.keys, 4);
        assert_eq!(r.interval.max_ms, 15.0);
        assert_eq!(r.jitter.max_ms, 5.0);
        assert_eq!(r.jitter.p50_ms, 0.0);
        assert!((r.achieved_keys_per_s - 3.0 / 0.035).abs() < 1e-6);
    }
}
