//! `qkd-bench`: the performance figures of issues 3 and 5, measured the same way every time.
//!
//! * `etsi` - key pairs/s and latency through ETSI GS QKD 014 (`enc_keys` at one node, `dec_keys`
//!   of the same key at the other) against two real `qkd-node` processes on loopback, with many
//!   concurrent clients on keep-alive mutual-TLS connections; the same over SKIP or gRPC
//!   (`--api`), and with the nodes' metrics off (`--metrics off`);
//! * `ingest` - how fast the durable store makes link key material durable (group commit,
//!   `Durability::Immediate`), in Mbit/s;
//! * `disk` - the disk's own sync-write figures, so that a store limit can be told apart from a
//!   disk limit;
//! * `relay` - the figures of issue 5 on a multi-hop network: end-to-end latency of on-demand
//!   relayed + hybridised batches, sustained keys/s from a drained pool, and the share of a
//!   scarce link's key rate that a long-running relay turns into relayed key;
//! * `device` - the ETSI 014 device adapter against an emulated QKD device pair: key rate
//!   delivered at both ends and the adapter's CPU (issue 9);
//! * `growth` - how the control plane's cost grows with the network: N real nodes in a seeded
//!   random mesh, their link-state traffic, route convergence after a link failure, and relay
//!   latency against hop count (issue 8);
//! * `conform` - the time of `qkd-conform`'s whole suite against two local nodes (issue 9);
//! * `stream` - delivery jitter of an ETSI 004-style key stream over gRPC at a set cadence, at
//!   both ends at once (issue 11);
//! * `link` - throughput of a `qkd-link` tunnel rekeyed every second against the same tunnel
//!   with a fixed key, in interleaved runs (issue 11);
//! * `scrape` - the time and size of one Prometheus scrape of a node with many SAE pairs
//!   (issue 12).
//!
//! Every run prints where it ran (CPU model, cores, memory): the load generator always shares the
//! host with the nodes and talks to them over loopback. This binary only measures; it never
//! changes a node's configuration beyond the demo layout it creates in a temporary directory.

#![forbid(unsafe_code)]

mod conform;
mod device;
mod disk;
mod etsi;
mod growth;
mod h1;
mod ingest;
mod link;
mod machine;
mod measure;
mod relay;
mod scrape;
mod stream;

use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Benchmarks of the QKD key-management stack.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Print one JSON document instead of the human-readable table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Key pairs/s through enc_keys at one node then dec_keys at the other, over mutual TLS.
    ///
    /// Example: qkd-bench etsi --clients 64 --duration 20s --size 256
    Etsi(etsi::Args),
    /// Durable ingest rate of link key material into the store (group commit, fsync per commit).
    ///
    /// Example: qkd-bench ingest --mib 1024 --block-kib 64
    Ingest(ingest::Args),
    /// The disk's own sync-write figures (fio if installed, else a built-in loop).
    ///
    /// Example: qkd-bench disk --runtime 10s
    Disk(disk::Args),
    /// Relayed + hybridised keys across the five-node chain: latency, keys/s, scarce-link use.
    ///
    /// Example: qkd-bench relay --parts latency,throughput --clients 8 --number 128
    Relay(relay::Args),
    /// The ETSI 014 device adapter against an emulated device pair: Mbit/s and CPU.
    ///
    /// Example: qkd-bench device --rate-bps 100000000 --key-bits 256 --duration 10s
    Device(device::Args),
    /// How the control plane's cost grows with the network: N real nodes in a random mesh.
    ///
    /// Example: qkd-bench growth --nodes 5,10,20,40 --seed 1 --window 10s
    Growth(growth::Args),
    /// Time of qkd-conform's whole suite against two local qkd-node processes.
    ///
    /// Example: qkd-bench conform --runs 5
    Conform(conform::Args),
    /// Delivery jitter of a gRPC key stream (ETSI 004 style) at a set cadence, at both ends.
    ///
    /// Example: qkd-bench stream --rate 100 --keys 1000
    Stream(stream::Args),
    /// qkd-link tunnel throughput, rekeyed every second against a fixed key, interleaved runs.
    ///
    /// Example: qkd-bench link --rounds 5 --duration 5s
    Link(link::Args),
    /// Time and size of one /metrics scrape of a node with many SAE pairs (default 1,000).
    ///
    /// Example: qkd-bench scrape --pairs 1000 --scrapes 200
    Scrape(scrape::Args),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let machine = machine::Machine::probe();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = match &cli.cmd {
        Cmd::Etsi(a) => {
            let r = rt.block_on(etsi::run(a))?;
            output(cli.json, &machine, "etsi", &r, || r.print())?;
            r.check()
        }
        Cmd::Ingest(a) => {
            let r = rt.block_on(ingest::run(a))?;
            output(cli.json, &machine, "ingest", &r, || r.print())
        }
        Cmd::Relay(a) => {
            let r = rt.block_on(relay::run(a))?;
            output(cli.json, &machine, "relay", &r, || r.print())?;
            r.check()
        }
        Cmd::Growth(a) => {
            let r = rt.block_on(growth::run(a))?;
            output(cli.json, &machine, "growth", &r, || r.print())?;
            r.check()
        }
        Cmd::Device(a) => {
            let r = device::run(a)?;
            output(cli.json, &machine, "device", &r, || r.print())
        }
        Cmd::Conform(a) => {
            let r = rt.block_on(conform::run(a))?;
            output(cli.json, &machine, "conform", &r, || r.print())
        }
        Cmd::Stream(a) => {
            let r = rt.block_on(stream::run(a))?;
            output(cli.json, &machine, "stream", &r, || r.print())?;
            r.check()
        }
        Cmd::Link(a) => {
            let r = rt.block_on(link::run(a))?;
            output(cli.json, &machine, "link", &r, || r.print())
        }
        Cmd::Scrape(a) => {
            let r = rt.block_on(scrape::run(a))?;
            output(cli.json, &machine, "scrape", &r, || r.print())
        }
        Cmd::Disk(a) => {
            let r = disk::run(a)?;
            output(cli.json, &machine, "disk", &r, || r.print())
        }
    };
    // The writer thread of `ingest` and the client connections close with the runtime.
    rt.shutdown_timeout(Duration::from_secs(5));
    report
}

/// Prints `report` with the machine it ran on, as JSON or as a table.
fn output<R: serde::Serialize>(
    json: bool,
    machine: &machine::Machine,
    bench: &str,
    report: &R,
    table: impl FnOnce(),
) -> Result<()> {
    if json {
        let doc = serde_json::json!({
            "bench": bench,
            "machine": machine,
            "load_generator": machine::LOAD_GENERATOR,
            "report": report,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        machine.print();
        table();
    }
    Ok(())
}

/// Lays out a network of real `qkd-node` processes in a fresh directory under `parent` (default:
/// the temp directory) and starts every node.
fn start_network(
    bin: &std::path::Path,
    parent: Option<&std::path::Path>,
    layout: &qkd_testnet::Layout,
) -> Result<qkd_testnet::Net> {
    let net = qkd_testnet::Net::launch(bin, parent, layout)?;
    net.start_all()?;
    Ok(net)
}

/// Parses a duration such as `20s`, `500ms`, `2m` or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 20s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use ms, s or m)")),
    };
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("`{s}`: a duration must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("1h").is_err());
        assert!(parse_duration("x").is_err());
    }
}
