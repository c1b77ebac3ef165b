//! `qkd-sim`: the research command line of the QKD simulator. A thin shell over the
//! `qkd_simulator` library: argument parsing, progress bars, files.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use qkd_simulator::curve::{Axis, CurveProtocol, rate_curve_detailed};
use qkd_simulator::detail::{self, DetailedPoint, FixedParams};
use qkd_simulator::network::{RunOptions, run};
use qkd_simulator::physics::channel::DvHardware;
use qkd_simulator::physics::cv::Gg02;
use qkd_simulator::physics::twinfield::TwinField;
use qkd_simulator::plot;
use qkd_simulator::scenario::{PairSpec, Scenario};
use qkd_simulator::spec::HardwarePreset;

/// Appends a formatted line to a report string (writing to a String cannot fail).
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}
#[derive(Parser)]
#[command(
    name = "qkd-sim",
    version,
    about = "QKD link and network simulator (research tool)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Secret key rate and QBER versus distance or loss, with the PLOB bound alongside.
    #[command(after_help = "Examples:\n  \
        qkd-sim rate --protocol decoy-vacuum-weak --hardware gys --to 150 --out gys\n  \
        qkd-sim rate --protocol finite-key --hardware lim2014 --block 1e7 --to 200 --points 101 --out lim\n  \
        qkd-sim rate --protocol cv-gg02 --axis loss --to 30 --out cv\n  \
        qkd-sim rate --protocol one-decoy --hardware metro-ghz --block 1e6 --p-basis 0.9 --out rusca\n\n\
        Writes rate.csv and rate.json (per point: key rate, bounds, the parameters used and the\n\
        estimator values behind the rate), rate.png/svg (key rate, PLOB, TGW, and the\n\
        single-repeater bound for twin-field) and qber.png/svg into --out.\n\
        Flags a protocol does not use are refused.")]
    Rate(RateArgs),
    /// Simulate a network scenario: per-link time series, end-to-end key, summary, plots.
    #[command(after_help = "Examples:\n  \
        qkd-sim run simulator/scenarios/metro-2node.toml --out metro\n  \
        qkd-sim run simulator/scenarios/euroqci.toml --aggregate 300 --out euroqci\n  \
        qkd-sim run simulator/scenarios/euroqci.toml --pair lisbon:copenhagen --no-plot --out eu\n\n\
        Writes links.csv, pairs.csv, summary.json, links.png/svg and pairs.png/svg into --out\n\
        and prints a summary table.")]
    Run(RunArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Protocol {
    /// Decoy BB84, infinitely many decoys, μ optimised per point.
    DecoyInfinite,
    /// Decoy BB84, vacuum + weak decoy (--mu, --nu).
    DecoyVacuumWeak,
    /// BB84 with weak coherent pulses and no decoy (GLLP).
    NoDecoy,
    /// Efficient BB84 with biased basis choice (--p-z).
    EfficientBb84,
    /// Finite-key three-intensity decoy BB84, Lim 2014 (--block), optimised per point.
    FiniteKey,
    /// Finite-key one-decoy BB84, Rusca 2018 (--block), optimised per point.
    OneDecoy,
    /// GG02 CV-QKD, reverse reconciliation, homodyne, trusted detector.
    CvGg02,
    /// Phase-matching twin-field QKD (total Alice-Bob distance).
    TwinField,
}

#[derive(Clone, Copy, ValueEnum)]
enum Hw {
    Gys,
    Kth,
    Lim2014,
    MetroGhz,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum AxisArg {
    Distance,
    Loss,
}

#[derive(clap::Args)]
#[command(allow_negative_numbers = true)]
struct RateArgs {
    /// Protocol.
    #[arg(long, value_enum, default_value = "decoy-infinite")]
    protocol: Protocol,
    /// Hardware parameter set (DV protocols) [default: gys].
    #[arg(long, value_enum)]
    hardware: Option<Hw>,
    /// Override fibre attenuation, dB/km.
    #[arg(long)]
    alpha: Option<f64>,
    /// Override Bob's optics × detector efficiency (DV protocols).
    #[arg(long)]
    eta_bob: Option<f64>,
    /// Override dark-count probability per detector per gate (DV protocols).
    #[arg(long)]
    dark_count: Option<f64>,
    /// Override misalignment error (DV protocols).
    #[arg(long)]
    misalignment: Option<f64>,
    /// Override repetition rate, Hz (DV protocols).
    #[arg(long)]
    rep_rate: Option<f64>,
    /// Extra fixed loss (connectors), dB (not twin-field).
    #[arg(long)]
    extra_loss: Option<f64>,
    /// Error-correction inefficiency f (DV protocols) [default: 1.22].
    #[arg(long)]
    f_ec: Option<f64>,
    /// Signal intensity, photons per pulse: vacuum + weak [default: 0.48]; fixes μ (μ₁) of
    /// decoy-infinite, no-decoy, efficient-bb84, finite-key and one-decoy instead of optimising it.
    #[arg(long)]
    mu: Option<f64>,
    /// Weak decoy intensity (vacuum + weak) [default: 0.05].
    #[arg(long)]
    nu: Option<f64>,
    /// Basis-Z probability (efficient BB84) [default: 0.9].
    #[arg(long)]
    p_z: Option<f64>,
    /// Fixes the decoy intensity μ₂ (finite-key, one-decoy).
    #[arg(long)]
    mu2: Option<f64>,
    /// Sets the weakest intensity μ₃ (finite-key) [default: 2e-4].
    #[arg(long)]
    mu3: Option<f64>,
    /// Fixes the probability of sending μ₁ (finite-key, one-decoy).
    #[arg(long)]
    p_mu1: Option<f64>,
    /// Fixes the probability of sending μ₂ (finite-key).
    #[arg(long)]
    p_mu2: Option<f64>,
    /// Fixes the key-basis probability, q_x of finite-key or p_Z of one-decoy.
    #[arg(long)]
    p_basis: Option<f64>,
    /// Block size in key-basis bits (finite-key, one-decoy) [default: 1e7].
    #[arg(long)]
    block: Option<f64>,
    /// X axis.
    #[arg(long, value_enum, default_value = "distance")]
    axis: AxisArg,
    /// First x value (km or dB).
    #[arg(long, default_value_t = 0.0)]
    from: f64,
    /// Last x value (km or dB).
    #[arg(long, default_value_t = 200.0)]
    to: f64,
    /// Number of points.
    #[arg(long, default_value_t = 201)]
    points: usize,
    /// Output directory.
    #[arg(long, default_value = "qkd-sim-rate")]
    out: PathBuf,
    /// Skip the plots.
    #[arg(long)]
    no_plot: bool,
}

impl RateArgs {
    /// Refuses every optional flag that `self.protocol` would ignore, naming them.
    fn refuse_unused_flags(&self) -> Result<()> {
        let given: [(&str, bool); 17] = [
            ("--hardware", self.hardware.is_some()),
            ("--eta-bob", self.eta_bob.is_some()),
            ("--dark-count", self.dark_count.is_some()),
            ("--misalignment", self.misalignment.is_some()),
            ("--rep-rate", self.rep_rate.is_some()),
            ("--extra-loss", self.extra_loss.is_some()),
            ("--f-ec", self.f_ec.is_some()),
            ("--mu", self.mu.is_some()),
            ("--nu", self.nu.is_some()),
            ("--p-z", self.p_z.is_some()),
            ("--mu2", self.mu2.is_some()),
            ("--mu3", self.mu3.is_some()),
            ("--p-mu1", self.p_mu1.is_some()),
            ("--p-mu2", self.p_mu2.is_some()),
            ("--p-basis", self.p_basis.is_some()),
            ("--block", self.block.is_some()),
            ("--alpha", self.alpha.is_some()),
        ];
        const DV: [&str; 8] = [
            "--hardware",
            "--eta-bob",
            "--dark-count",
            "--misalignment",
            "--rep-rate",
            "--extra-loss",
            "--f-ec",
            "--alpha",
        ];
        let (name, own): (&str, &[&str]) = match self.protocol {
            Protocol::DecoyInfinite => ("decoy-infinite", &["--mu"]),
            Protocol::DecoyVacuumWeak => ("decoy-vacuum-weak", &["--mu", "--nu"]),
            Protocol::NoDecoy => ("no-decoy", &["--mu"]),
            Protocol::EfficientBb84 => ("efficient-bb84", &["--mu", "--p-z"]),
            Protocol::FiniteKey => (
                "finite-key",
                &[
                    "--block",
                    "--mu",
                    "--mu2",
                    "--mu3",
                    "--p-mu1",
                    "--p-mu2",
                    "--p-basis",
                ],
            ),
            Protocol::OneDecoy => (
                "one-decoy",
                &["--block", "--mu", "--mu2", "--p-mu1", "--p-basis"],
            ),
            Protocol::CvGg02 => ("cv-gg02", &["--alpha", "--extra-loss"]),
            Protocol::TwinField => ("twin-field", &["--alpha"]),
        };
        let dv = !matches!(self.protocol, Protocol::CvGg02 | Protocol::TwinField);
        let unused: Vec<&str> = given
            .iter()
            .filter(|(flag, set)| *set && !own.contains(flag) && !(dv && DV.contains(flag)))
            .map(|(flag, _)| *flag)
            .collect();
        if !unused.is_empty() {
            anyhow::bail!(
                "--protocol {name} does not use {}: remove {} (see `qkd-sim rate --help`)",
                unused.join(", "),
                if unused.len() == 1 { "it" } else { "them" }
            );
        }
        Ok(())
    }
}

#[derive(clap::Args)]
struct RunArgs {
    /// Scenario file (.toml or .json).
    scenario: PathBuf,
    /// Output directory.
    #[arg(long, default_value = "qkd-sim-run")]
    out: PathBuf,
    /// Aggregate time series into buckets of this many seconds (default: 60, or the step if
    /// larger). Use the step itself for full resolution on small scenarios.
    #[arg(long)]
    aggregate: Option<u64>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Skip the plots.
    #[arg(long)]
    no_plot: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Links shown in the summary table (slowest first).
    #[arg(long, default_value_t = 25)]
    max_rows: usize,
    /// Also report end-to-end key between these nodes, as `A:B` (repeatable).
    #[arg(long = "pair", value_name = "A:B")]
    pairs: Vec<String>,
    /// Time-series files: links.csv/pairs.csv, links.parquet/pairs.parquet (needs the
    /// `parquet` feature), or both. summary.json is always written.
    #[arg(long, value_enum, default_value = "csv")]
    format: Format,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Format {
    Csv,
    Parquet,
    Both,
}

/// Above this many bytes of CSV, `run` warns before writing.
const LARGE_OUTPUT_BYTES: u64 = 1_000_000_000;

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::Rate(a) => rate(a),
        Command::Run(a) => run_scenario(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole cause chain on one line, without a backtrace: these are user errors.
            eprintln!("qkd-sim: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn rate(a: RateArgs) -> Result<()> {
    a.refuse_unused_flags()?;
    let mut out = String::new();
    let preset = match a.hardware.unwrap_or(Hw::Gys) {
        Hw::Gys => HardwarePreset::Gys,
        Hw::Kth => HardwarePreset::Kth,
        Hw::Lim2014 => HardwarePreset::Lim2014,
        Hw::MetroGhz => HardwarePreset::MetroGhz,
    };
    let mut hw: DvHardware = preset.hardware();
    for (dst, v) in [
        (&mut hw.alpha_db_per_km, a.alpha),
        (&mut hw.eta_bob, a.eta_bob),
        (&mut hw.dark_count_prob, a.dark_count),
        (&mut hw.misalignment, a.misalignment),
        (&mut hw.rep_rate_hz, a.rep_rate),
        (&mut hw.extra_loss_db, a.extra_loss),
    ] {
        if let Some(v) = v {
            *dst = v;
        }
    }
    let block = a.block.unwrap_or(1e7);
    let (protocol, name) = match a.protocol {
        Protocol::DecoyInfinite => (
            CurveProtocol::DecoyInfinite,
            "decoy BB84, infinite decoys".to_string(),
        ),
        Protocol::DecoyVacuumWeak => {
            let (mu, nu) = (a.mu.unwrap_or(0.48), a.nu.unwrap_or(0.05));
            (
                CurveProtocol::DecoyVacuumWeak { mu, nu },
                format!("decoy BB84, vacuum+weak (mu {mu}, nu {nu})"),
            )
        }
        Protocol::NoDecoy => (
            CurveProtocol::NoDecoy,
            "BB84 without decoys (GLLP)".to_string(),
        ),
        Protocol::EfficientBb84 => {
            let p_z = a.p_z.unwrap_or(0.9);
            (
                CurveProtocol::EfficientBb84 { p_z },
                format!("efficient BB84 (p_Z {p_z})"),
            )
        }
        Protocol::FiniteKey => (
            CurveProtocol::FiniteKey { block_bits: block },
            format!("finite-key decoy BB84, Lim 2014, n_X = {block:e}"),
        ),
        Protocol::OneDecoy => (
            CurveProtocol::OneDecoy { block_bits: block },
            format!("one-decoy BB84, Rusca 2018, n_Z = {block:e}"),
        ),
        Protocol::CvGg02 => {
            let mut m = Gg02::REFERENCE;
            if let Some(x) = a.alpha {
                m.alpha_db_per_km = x;
            }
            (
                CurveProtocol::CvGg02(m),
                "GG02 CV-QKD (RR, homodyne)".to_string(),
            )
        }
        Protocol::TwinField => {
            let mut m = TwinField::LONG_HAUL;
            if let Some(x) = a.alpha {
                m.alpha_db_per_km = x;
            }
            (
                CurveProtocol::TwinField(m),
                "twin-field (PM-QKD)".to_string(),
            )
        }
    };
    // --mu is the protocol's own value for vacuum + weak, a fixed parameter elsewhere.
    let fixed = FixedParams {
        mu: a
            .mu
            .filter(|_| !matches!(a.protocol, Protocol::DecoyVacuumWeak)),
        mu2: a.mu2,
        mu3: a.mu3,
        p_mu1: a.p_mu1,
        p_mu2: a.p_mu2,
        p_basis: a.p_basis,
    };
    let axis = if a.axis == AxisArg::Loss {
        Axis::Loss
    } else {
        Axis::Distance
    };
    let started = Instant::now();
    let points = rate_curve_detailed(
        &protocol,
        &hw,
        a.f_ec.unwrap_or(1.22),
        &fixed,
        axis,
        a.from,
        a.to,
        a.points,
    )
    .context("invalid parameters")?;
    let elapsed = started.elapsed();
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    detail::write_csv(&points, &a.out.join("rate.csv"))?;
    detail::write_json(&points, &a.out.join("rate.json"))?;
    let mut notes = Vec::new();
    if !a.no_plot {
        notes = plot::rate_curve(&points, axis, &name, &a.out)?;
    }
    outln!(
        out,
        "{name}: {} points in {:.1} ms",
        points.len(),
        elapsed.as_secs_f64() * 1e3
    );
    let given = fixed.given();
    if !given.is_empty() {
        outln!(
            out,
            "fixed: {} (the rest optimised per point)",
            given.join(", ")
        );
    }
    outln!(
        out,
        "{:>10} {:>10} {:>14} {:>14} {:>10}",
        if axis == Axis::Loss { "loss dB" } else { "km" },
        "loss dB",
        "key bit/s",
        "PLOB bit/s",
        "QBER %"
    );
    let every = (points.len() / 10).max(1);
    for p in points.iter().step_by(every).map(|d| &d.point) {
        outln!(
            out,
            "{:>10.2} {:>10.2} {:>14.4e} {:>14.4e} {:>10.3}",
            p.x,
            p.loss_db,
            p.key_bps,
            p.plob_bps,
            100.0 * p.qber
        );
    }
    if let Some(last) = points.iter().rev().find(|p| p.point.key_per_pulse > 0.0) {
        outln!(
            out,
            "last point with key: {:.2} ({:.2} km, {:.2} dB)",
            last.point.x,
            last.point.length_km,
            last.point.loss_db
        );
    } else {
        outln!(out, "no point with a positive key rate");
    }
    report_bound(&mut out, &points);
    for n in notes {
        outln!(out, "note: {n}");
    }
    outln!(out, "wrote {}", a.out.display());
    emit(&out)
}

/// Says which bound the protocol's family is held against, and flags every point above it.
fn report_bound(out: &mut String, points: &[DetailedPoint]) {
    let Some(first) = points.first() else { return };
    let over = detail::violations(points);
    if over.is_empty() {
        outln!(
            out,
            "bound: {}; no point exceeds it",
            first.bound.describe()
        );
    } else {
        let shown: Vec<String> = over.iter().take(5).map(|x| format!("{x:.2}")).collect();
        outln!(
            out,
            "BOUND VIOLATED: {} of {} points exceed {} (x = {}{}); see exceeds_bound in rate.csv",
            over.len(),
            points.len(),
            first.bound.describe(),
            shown.join(", "),
            if over.len() > 5 { ", ..." } else { "" }
        );
    }
}

/// Writes the report to stdout; a closed pipe (`qkd-sim ... | head`) is not an error.
fn emit(report: &str) -> Result<()> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(report.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Writes the run's files in `format`, warning on stderr first when the CSV files would exceed
/// a gigabyte.
fn write_run(
    r: &qkd_simulator::network::RunResult,
    dir: &std::path::Path,
    format: Format,
) -> Result<()> {
    if format != Format::Parquet {
        let bytes = r.estimated_csv_bytes();
        if bytes > LARGE_OUTPUT_BYTES {
            let (links, pairs) = r.rows();
            eprintln!(
                "qkd-sim: warning: writing about {:.1} GB of CSV ({} + {} rows) into {}; a coarser \
                 --aggregate or --format parquet writes far less",
                bytes as f64 / 1e9,
                links,
                pairs,
                dir.display()
            );
        }
        r.write(dir)?;
    } else {
        r.write_summary(dir)?;
    }
    if format != Format::Csv {
        write_parquet(r, dir)?;
    }
    Ok(())
}

#[cfg(feature = "parquet")]
fn write_parquet(r: &qkd_simulator::network::RunResult, dir: &std::path::Path) -> Result<()> {
    Ok(qkd_simulator::parquet_out::write(r, dir)?)
}

#[cfg(not(feature = "parquet"))]
fn write_parquet(_: &qkd_simulator::network::RunResult, _: &std::path::Path) -> Result<()> {
    write_parquet_unavailable()
}

fn write_parquet_unavailable() -> Result<()> {
    anyhow::bail!(
        "--format parquet needs the `parquet` feature: cargo build --release -p qkd-simulator --features parquet"
    )
}

fn bar(len: u64, what: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} links {elapsed}")
    {
        b.set_style(style.progress_chars("=> "));
    }
    b.set_message(what.to_string());
    b
}

fn run_scenario(a: RunArgs) -> Result<()> {
    if a.format != Format::Csv && !cfg!(feature = "parquet") {
        // Say so before the simulation, not after it.
        write_parquet_unavailable()?;
    }
    let mut out = String::new();
    let mut sc = Scenario::load(&a.scenario)?;
    for p in &a.pairs {
        let Some((x, y)) = p.split_once(':') else {
            anyhow::bail!("--pair {p}: write the two node ids as A:B");
        };
        for id in [x, y] {
            if !sc.nodes.iter().any(|n| n.id == id) {
                anyhow::bail!("--pair {p}: {} has no node `{id}`", a.scenario.display());
            }
        }
        sc.pairs.push(PairSpec {
            a: x.to_string(),
            b: y.to_string(),
        });
    }
    let n = sc.links.len() as u64;
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |p| p.get()));
    let t0 = Instant::now();
    let pb = bar(n, "physics", a.quiet);
    let links = sc.build_links(&a.scenario, &|_| pb.inc(1))?;
    pb.finish();
    let t_build = t0.elapsed();
    let pb = bar(n, "simulate", a.quiet);
    let aggregate = a.aggregate.unwrap_or(60);
    let t1 = Instant::now();
    let result = run(
        &sc,
        &links,
        RunOptions {
            aggregate_s: aggregate,
            threads,
        },
        &|_| pb.inc(1),
    );
    pb.finish();
    let t_run = t1.elapsed();
    write_run(&result, &a.out, a.format)?;
    let mut notes = Vec::new();
    if !a.no_plot {
        notes = plot::run_result(&result, &a.out)?;
    }
    out.push_str(&result.summary_table(a.max_rows));
    for n in notes {
        outln!(out, "note: {n}");
    }
    outln!(
        out,
        "\nphysics set-up {:.2} s, simulation {:.2} s ({} threads), output in {}",
        t_build.as_secs_f64(),
        t_run.as_secs_f64(),
        threads,
        a.out.display()
    );
    emit(&out)
}
