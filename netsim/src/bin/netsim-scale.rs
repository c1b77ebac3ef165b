//! `netsim-scale`: how control traffic, route convergence and relay latency grow with the size
//! of a random mesh of real key managers, measured in the deterministic simulation
//! (`qkd_netsim::scale`). Simulated figures are the same on every machine for the same options;
//! the wall-clock time printed beside them is not.

#![forbid(unsafe_code)]

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use qkd_netsim::scale::{ScaleOptions, csv, measure, table};

/// Measures the simulated network at several sizes and prints a table.
#[derive(Debug, Parser)]
#[command(name = "netsim-scale")]
struct Args {
    /// Network sizes (nodes), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "5,10,20,40,80,150,300")]
    sizes: Vec<usize>,
    /// Seed of the meshes and of the network's delays.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Simulated seconds before the traffic window.
    #[arg(long, default_value_t = 10)]
    warmup_s: u64,
    /// Simulated seconds of the traffic window.
    #[arg(long, default_value_t = 10)]
    window_s: u64,
    /// Every node's link-state flooding interval, in milliseconds.
    #[arg(long, default_value_t = 300)]
    advert_ms: u64,
    /// Size of the on-demand keys of the latency figures, in bits.
    #[arg(long, default_value_t = 512)]
    latency_bits: u32,
    /// Also write the results as CSV to this file.
    #[arg(long)]
    csv: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.sizes.iter().any(|&n| n < 3) {
        bail!("--sizes: every network needs at least 3 nodes");
    }
    if args.advert_ms == 0 || args.window_s == 0 {
        bail!("--advert-ms and --window-s must be above zero");
    }
    let mut rows = Vec::new();
    for &n in &args.sizes {
        let o = ScaleOptions {
            seed: args.seed,
            warmup: Duration::from_secs(args.warmup_s),
            window: Duration::from_secs(args.window_s),
            advert_interval: Duration::from_millis(args.advert_ms),
            latency_bits: args.latency_bits,
            ..ScaleOptions::new(n)
        };
        let r = measure(&o)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("N = {n}"))?;
        eprintln!(
            "N = {n}: {:.1} s simulated in {:.1} s wall clock",
            r.sim_ms as f64 / 1000.0,
            r.wall.as_secs_f64()
        );
        rows.push(r);
        if let Some(path) = &args.csv {
            // Written after every size, so a long run leaves what it measured so far.
            std::fs::write(path, csv(&rows))
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    print!("{}", table(&rows));
    Ok(())
}
