//! `qkd-sim`: the research command line of the QKD simulator. A thin shell over the
//! `qkd_simulator` library: argument parsing, progress bars, files.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use qkd_simulator::curve::{Axis, CurveProtocol, rate_curve_detailed};
use qkd_simulator::detail::{self, DetailedPoint, FixedParams};
use qkd_simulator::dynamics::{Demand, DynamicsOptions, baseline_links, run_dynamics};
use qkd_simulator::network::{RunOptions, run};
use qkd_simulator::passtrack::{
    PassOptions, evaluate_passes, load_elevation_track, load_loss_table, write_passes,
};
use qkd_simulator::physics::channel::DvHardware;
use qkd_simulator::physics::cv::Gg02;
use qkd_simulator::physics::twinfield::TwinField;
use qkd_simulator::physics::{
    bbm92::Bbm92,
    cv_finite::{CvDetection, CvFiniteSize},
    detector::Timing,
    mdi::MdiQkd,
    sns::Sns,
};
use qkd_simulator::plot;
use qkd_simulator::satellite::{GroundStation, LinkBudget};
use qkd_simulator::scenario::parse_utc;
use qkd_simulator::scenario::{PairSpec, Scenario};
use qkd_simulator::spec::HardwarePreset;
use qkd_simulator::tle::Tle;

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
        qkd-sim rate --protocol one-decoy --hardware metro-ghz --block 1e6 --p-basis 0.9 --out rusca\n  \
        qkd-sim rate --protocol sns-tf --pulses 1e12 --to 500 --points 26 --out sns\n  \
        qkd-sim rate --protocol mdi-qkd --to 250 --out mdi\n  \
        qkd-sim rate --protocol decoy-infinite --hardware metro-ghz --jitter 5e-11 --dead-time 1e-7 --out jitter\n\n\
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
    /// Time-resolved network run with key buffers: demand per pair, hop-by-hop relaying, buffer
    /// levels, unmet demand, and the key lost to cuts and attacks against an event-free run.
    #[command(after_help = "Examples:\n  \
        qkd-sim dynamics simulator/scenarios/metro-2node.toml --demand constant:2000 --step 10 --aggregate 600 --out metro-dyn\n  \
        qkd-sim dynamics simulator/scenarios/euroqci.toml --days 1 --demand bursty:20000,300,900 --out eu-dyn\n\n\
        --demand is constant:BPS, bursty:BPS,ON_S,OFF_S[,SEED] or trace:FILE.csv (columns t_s,\n\
        bits_per_s and optionally pair as A:B). Writes dynamics_pairs.csv, dynamics_links.csv and\n\
        dynamics_summary.json into --out and prints a table.")]
    Dynamics(DynamicsArgs),
    /// Satellite passes from a measured loss table, an elevation track or a TLE (SGP4): sifted
    /// and finite-key secret key per pass, and the rates over each pass.
    #[command(after_help = "Examples:\n  \
        qkd-sim pass --tle simulator/data/tle/iss-2020-07-12.tle --station 48.15,11.58 --hours 24 --day --out iss\n  \
        qkd-sim pass --tle simulator/data/tle/sgp4-verification.tle --sat 28057 --station 40.65,16.70 --hours 48 --out s28057\n\n\
        --loss-table FILE.csv has columns t_s and loss_db (channel loss without the detector; an\n\
        empty loss is no link); --elevation-track FILE.csv has t_s, elevation_deg and optionally\n\
        range_km. Writes passes.csv, pass_points.csv and passes.json into --out.")]
    Pass(PassArgs),
}

#[derive(clap::Args)]
struct PassArgs {
    /// Loss table: CSV with t_s and loss_db.
    #[arg(long, conflicts_with_all = ["elevation_track", "tle"])]
    loss_table: Option<PathBuf>,
    /// Elevation track: CSV with t_s, elevation_deg and optionally range_km.
    #[arg(long, conflicts_with = "tle")]
    elevation_track: Option<PathBuf>,
    /// TLE file (two- or three-line sets).
    #[arg(long)]
    tle: Option<PathBuf>,
    /// NORAD number of the satellite in the TLE file (default: the first set).
    #[arg(long)]
    sat: Option<u64>,
    /// Ground station as LAT,LON in degrees (with --tle).
    #[arg(long, value_name = "LAT,LON", allow_hyphen_values = true)]
    station: Option<String>,
    /// Start, UTC as YYYY-MM-DDTHH:MM:SSZ (with --tle; default: the TLE epoch).
    #[arg(long)]
    start: Option<String>,
    /// Span searched for passes, hours (with --tle).
    #[arg(long, default_value_t = 24.0)]
    hours: f64,
    /// Lowest usable elevation, degrees (--tle and --elevation-track).
    #[arg(long, default_value_t = 15.0)]
    min_elevation: f64,
    /// Use daylight passes too (with --tle; the default is night only, Sun below −12°).
    #[arg(long)]
    day: bool,
    /// Orbit altitude for slant ranges when an elevation track has no range_km, km.
    #[arg(long, default_value_t = 500.0)]
    altitude: f64,
    /// Source repetition rate, Hz.
    #[arg(long, default_value_t = 1e8)]
    rep_rate: f64,
    /// Ground detector efficiency.
    #[arg(long, default_value_t = 0.5)]
    eta_det: f64,
    /// Dark-count (background) probability per detector per pulse.
    #[arg(long)]
    dark_count: Option<f64>,
    /// Sampling step along the pass, s.
    #[arg(long, default_value_t = 1.0)]
    step: f64,
    /// Output directory.
    #[arg(long, default_value = "qkd-sim-pass")]
    out: PathBuf,
}

#[derive(clap::Args)]
struct DynamicsArgs {
    /// Scenario file (.toml or .json).
    scenario: PathBuf,
    /// Demand of every pair: constant:BPS, bursty:BPS,ON_S,OFF_S[,SEED] or trace:FILE.csv.
    #[arg(long, default_value = "constant:1000")]
    demand: String,
    /// Simulated days (default: the scenario's duration).
    #[arg(long)]
    days: Option<f64>,
    /// Time step, s.
    #[arg(long, default_value_t = 60)]
    step: u64,
    /// Width of the reported buckets, s.
    #[arg(long, default_value_t = 3600)]
    aggregate: u64,
    /// Key block drawn by relays, bits.
    #[arg(long, default_value_t = 256)]
    block: u64,
    /// Buffer capacity per link, bits.
    #[arg(long, default_value_t = 1e9)]
    capacity: f64,
    /// Pre-shared key in every buffer at the start, bits.
    #[arg(long, default_value_t = 0.0)]
    initial: f64,
    /// Also serve these node pairs, as `A:B` (repeatable).
    #[arg(long = "pair", value_name = "A:B")]
    pairs: Vec<String>,
    /// Skip the event-free baseline run (the "lost to events" column).
    #[arg(long)]
    no_baseline: bool,
    /// Output directory.
    #[arg(long, default_value = "qkd-sim-dynamics")]
    out: PathBuf,
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
    /// Decoy MDI-QKD, infinite decoys (total Alice-Bob distance, Charlie in the middle).
    MdiQkd,
    /// Entanglement-based BBM92, PDC source in the middle (total distance).
    Bbm92,
    /// Sending-or-not-sending twin-field; finite key with --pulses, else asymptotic.
    SnsTf,
    /// CV-QKD with --detection homodyne|heterodyne; composable finite size with --symbols.
    CvQkd,
}

#[derive(Clone, Copy, ValueEnum)]
enum DetectionArg {
    Homodyne,
    Heterodyne,
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
    /// Detector dead time, s (DV protocols on --hardware; Rusca's correction).
    #[arg(long)]
    dead_time: Option<f64>,
    /// Afterpulse probability (finite-key models, Lim's detector model).
    #[arg(long)]
    afterpulse: Option<f64>,
    /// Detector timing jitter, standard deviation in s (DV protocols on --hardware): lowers
    /// Bob's efficiency and adds errors from detections in the neighbouring slot.
    #[arg(long)]
    jitter: Option<f64>,
    /// Detection acceptance window, s (default: the whole slot 1/rep-rate; with --jitter).
    #[arg(long)]
    window: Option<f64>,
    /// Pulse pairs of one SNS finite-key run (sns-tf; absent: asymptotic).
    #[arg(long)]
    pulses: Option<f64>,
    /// CV-QKD detection (cv-qkd) [default: heterodyne].
    #[arg(long, value_enum)]
    detection: Option<DetectionArg>,
    /// Symbols of one CV-QKD block for the composable finite-size rate (cv-qkd; absent:
    /// asymptotic).
    #[arg(long)]
    symbols: Option<f64>,
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
        let given: [(&str, bool); 24] = [
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
            ("--dead-time", self.dead_time.is_some()),
            ("--afterpulse", self.afterpulse.is_some()),
            ("--jitter", self.jitter.is_some()),
            ("--window", self.window.is_some()),
            ("--pulses", self.pulses.is_some()),
            ("--detection", self.detection.is_some()),
            ("--symbols", self.symbols.is_some()),
        ];
        const DV: [&str; 11] = [
            "--hardware",
            "--eta-bob",
            "--dark-count",
            "--misalignment",
            "--rep-rate",
            "--extra-loss",
            "--f-ec",
            "--alpha",
            "--dead-time",
            "--jitter",
            "--window",
        ];
        const TWO_ARM: [&str; 6] = [
            "--alpha",
            "--eta-bob",
            "--dark-count",
            "--misalignment",
            "--rep-rate",
            "--f-ec",
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
                    "--afterpulse",
                ],
            ),
            Protocol::OneDecoy => (
                "one-decoy",
                &[
                    "--block",
                    "--mu",
                    "--mu2",
                    "--p-mu1",
                    "--p-basis",
                    "--afterpulse",
                ],
            ),
            Protocol::CvGg02 => ("cv-gg02", &["--alpha", "--extra-loss"]),
            Protocol::TwinField => ("twin-field", &["--alpha"]),
            Protocol::MdiQkd => ("mdi-qkd", &TWO_ARM),
            Protocol::Bbm92 => ("bbm92", &TWO_ARM),
            Protocol::SnsTf => (
                "sns-tf",
                &[
                    "--alpha",
                    "--eta-bob",
                    "--dark-count",
                    "--misalignment",
                    "--rep-rate",
                    "--pulses",
                ],
            ),
            Protocol::CvQkd => ("cv-qkd", &["--alpha", "--detection", "--symbols"]),
        };
        let dv = !matches!(
            self.protocol,
            Protocol::CvGg02
                | Protocol::TwinField
                | Protocol::MdiQkd
                | Protocol::Bbm92
                | Protocol::SnsTf
                | Protocol::CvQkd
        );
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
        Command::Dynamics(a) => dynamics(a),
        Command::Pass(a) => pass(a),
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
        (&mut hw.dead_time_s, a.dead_time),
        (&mut hw.afterpulse_prob, a.afterpulse),
    ] {
        if let Some(v) = v {
            *dst = v;
        }
    }
    if a.jitter.is_some() || a.window.is_some() {
        let timing = Timing {
            jitter_s: a.jitter.unwrap_or(0.0),
            window_s: a.window,
        };
        timing
            .validate(hw.rep_rate_hz)
            .context("invalid parameters")?;
        hw = timing.apply(&hw);
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
        Protocol::MdiQkd => {
            let mut m = MdiQkd::XU2013;
            two_arm_overrides(
                &a,
                [
                    &mut m.alpha_db_per_km,
                    &mut m.eta_det,
                    &mut m.dark_count_prob,
                    &mut m.misalignment,
                    &mut m.rep_rate_hz,
                ],
            );
            if let Some(f) = a.f_ec {
                m.f_ec = f;
            }
            (
                CurveProtocol::Mdi(m),
                "decoy MDI-QKD (infinite decoys)".to_string(),
            )
        }
        Protocol::Bbm92 => {
            let mut m = Bbm92::GYS;
            two_arm_overrides(
                &a,
                [
                    &mut m.alpha_db_per_km,
                    &mut m.eta_det,
                    &mut m.dark_count_prob,
                    &mut m.misalignment,
                    &mut m.rep_rate_hz,
                ],
            );
            if let Some(f) = a.f_ec {
                m.f_ec = f;
            }
            (
                CurveProtocol::Bbm92(m),
                "entanglement-based BBM92 (PDC source in the middle)".to_string(),
            )
        }
        Protocol::SnsTf => {
            let mut m = Sns {
                misalignment: 0.03,
                ..Sns::WYH2018
            };
            two_arm_overrides(
                &a,
                [
                    &mut m.alpha_db_per_km,
                    &mut m.eta_det,
                    &mut m.dark_count_prob,
                    &mut m.misalignment,
                    &mut m.rep_rate_hz,
                ],
            );
            let name = match a.pulses {
                Some(n) => format!("SNS twin-field, finite key, N = {n:e}"),
                None => "SNS twin-field, asymptotic".to_string(),
            };
            (
                CurveProtocol::SnsTf {
                    model: m,
                    pulses: a.pulses,
                    delta_rad: 0.2,
                },
                name,
            )
        }
        Protocol::CvQkd => {
            let mut m = Gg02::REFERENCE;
            if let Some(x) = a.alpha {
                m.alpha_db_per_km = x;
            }
            let detection = match a.detection.unwrap_or(DetectionArg::Heterodyne) {
                DetectionArg::Homodyne => CvDetection::Homodyne,
                DetectionArg::Heterodyne => CvDetection::Heterodyne,
            };
            let finite = a.symbols.map(|n| CvFiniteSize {
                symbols: n,
                ..Default::default()
            });
            (
                CurveProtocol::CvQkd {
                    model: m,
                    detection,
                    finite,
                },
                format!(
                    "GG02 CV-QKD (RR, {}, {})",
                    match detection {
                        CvDetection::Homodyne => "homodyne",
                        CvDetection::Heterodyne => "heterodyne",
                    },
                    match a.symbols {
                        Some(n) => format!("finite size, N = {n:e}"),
                        None => "asymptotic".to_string(),
                    }
                ),
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

/// The overrides a two-arm model (MDI, BBM92, SNS) takes from the DV flags: --alpha, --eta-bob
/// (the detector efficiency), --dark-count, --misalignment and --rep-rate, in that order.
fn two_arm_overrides(a: &RateArgs, fields: [&mut f64; 5]) {
    let values = [a.alpha, a.eta_bob, a.dark_count, a.misalignment, a.rep_rate];
    for (dst, v) in fields.into_iter().zip(values) {
        if let Some(v) = v {
            *dst = v;
        }
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

/// Adds `--pair A:B` arguments to the scenario's pairs, checking the node ids.
fn add_pairs(sc: &mut Scenario, pairs: &[String], file: &Path) -> Result<()> {
    for p in pairs {
        let Some((x, y)) = p.split_once(':') else {
            anyhow::bail!("--pair {p}: write the two node ids as A:B");
        };
        for id in [x, y] {
            if !sc.nodes.iter().any(|n| n.id == id) {
                anyhow::bail!("--pair {p}: {} has no node `{id}`", file.display());
            }
        }
        sc.pairs.push(PairSpec {
            a: x.to_string(),
            b: y.to_string(),
        });
    }
    Ok(())
}

fn dynamics(a: DynamicsArgs) -> Result<()> {
    let mut out = String::new();
    let demand = Demand::parse(&a.demand)?;
    let mut sc = Scenario::load(&a.scenario)?;
    add_pairs(&mut sc, &a.pairs, &a.scenario)?;
    if let Some(days) = a.days {
        if !(days > 0.0 && days <= 366.0) {
            anyhow::bail!("--days {days}: simulate between a second and a year");
        }
        sc.scenario.duration_s = (days * 86_400.0).round() as u64;
    }
    if sc.pairs.is_empty() {
        anyhow::bail!(
            "{} has no [[pairs]]: name the pairs to serve with --pair A:B",
            a.scenario.display()
        );
    }
    for (name, v) in [("--capacity", a.capacity), ("--initial", a.initial)] {
        if !(v.is_finite() && (0.0..=1e18).contains(&v)) {
            anyhow::bail!("{name} {v}: a number of bits between 0 and 10¹⁸");
        }
    }
    if a.step == 0 || a.block == 0 || a.capacity < a.block as f64 {
        anyhow::bail!("--step and --block must be > 0, and --capacity at least one block");
    }
    let opts = DynamicsOptions {
        step_s: a.step,
        block_bits: a.block,
        capacity_bits: a.capacity as u64,
        initial_bits: a.initial as u64,
        max_paths: 3,
        aggregate_s: a.aggregate,
    };
    let t0 = Instant::now();
    let links = sc.build_links(&a.scenario, &|_| ())?;
    let baseline = if a.no_baseline {
        None
    } else {
        Some(baseline_links(&sc, &a.scenario)?)
    };
    let t_build = t0.elapsed();
    let t1 = Instant::now();
    let mut result = run_dynamics(&sc, &links, &demand, &opts);
    if let Some(b) = &baseline {
        result.set_baseline(&run_dynamics(&sc, b, &demand, &opts));
    }
    let t_run = t1.elapsed();
    result.write(&a.out)?;
    out.push_str(&result.summary_table());
    outln!(
        out,
        "\nphysics set-up {:.2} s, simulation {:.2} s{}, output in {}",
        t_build.as_secs_f64(),
        t_run.as_secs_f64(),
        if baseline.is_some() {
            " (with the event-free baseline)"
        } else {
            ""
        },
        a.out.display()
    );
    emit(&out)
}

fn pass(a: PassArgs) -> Result<()> {
    let mut out = String::new();
    let mut opts = PassOptions::default();
    opts.protocol.hw.rep_rate_hz = a.rep_rate;
    opts.protocol.hw.eta_bob = a.eta_det;
    if let Some(p) = a.dark_count {
        opts.protocol.hw.dark_count_prob = p;
    }
    opts.protocol.hw.validate().context("invalid parameters")?;
    if !(a.step > 0.0 && a.step <= 60.0) {
        anyhow::bail!("--step {}: sample a pass every 0 to 60 s", a.step);
    }
    opts.max_gap_s = opts.max_gap_s.max(2.0 * a.step);
    let budget = LinkBudget::MICIUS_LIKE;
    let (track, what) = if let Some(f) = &a.loss_table {
        (load_loss_table(f)?, format!("loss table {}", f.display()))
    } else if let Some(f) = &a.elevation_track {
        (
            load_elevation_track(f, &budget, a.altitude, a.min_elevation)?,
            format!("elevation track {}", f.display()),
        )
    } else if let Some(f) = &a.tle {
        let sets = Tle::load(f)?;
        let tle = match a.sat {
            Some(id) => sets
                .iter()
                .find(|t| t.norad_id == id)
                .with_context(|| format!("{} has no satellite {id}", f.display()))?,
            None => &sets[0],
        };
        let Some((lat, lon)) = a
            .station
            .as_deref()
            .and_then(|s| s.split_once(','))
            .and_then(|(x, y)| {
                Some((x.trim().parse::<f64>().ok()?, y.trim().parse::<f64>().ok()?))
            })
        else {
            anyhow::bail!("--tle needs --station LAT,LON in degrees");
        };
        let station = GroundStation {
            lat_deg: lat,
            lon_deg: lon,
            min_elevation_deg: a.min_elevation,
            clear_sky_prob: 1.0,
        };
        if !((-90.0..=90.0).contains(&lat) && (-180.0..=360.0).contains(&lon)) {
            anyhow::bail!("--station {lat},{lon}: latitude in [−90, 90], longitude in [−180, 360]");
        }
        if !(a.hours > 0.0 && a.hours <= 24.0 * 31.0) {
            anyhow::bail!("--hours {}: search between 0 and 744 hours", a.hours);
        }
        let start = match &a.start {
            Some(s) => parse_utc(s).map_err(|e| anyhow::anyhow!("--start {s}: {e}"))? as f64,
            None => tle.epoch_unix_s,
        };
        let track = tle.track(
            &station,
            &budget,
            start,
            a.hours * 3600.0,
            a.step,
            -12.0,
            !a.day,
        )?;
        (
            track,
            format!(
                "{} (NORAD {}) over {lat:.2},{lon:.2}, {} h from Unix {start:.0}{}",
                tle.name.as_deref().unwrap_or("TLE"),
                tle.norad_id,
                a.hours,
                if a.day { "" } else { ", night passes only" }
            ),
        )
    } else {
        anyhow::bail!("give --loss-table, --elevation-track or --tle");
    };
    let passes = evaluate_passes(&track, &opts);
    write_passes(&passes, &a.out)?;
    outln!(out, "{what}: {} passes", passes.len());
    outln!(
        out,
        "{:>10} {:>10} {:>9} {:>9} {:>14} {:>14} {:>8}",
        "start s",
        "length s",
        "min dB",
        "max dB",
        "sifted bits",
        "secret bits",
        "QBER %"
    );
    for p in &passes {
        outln!(
            out,
            "{:>10.1} {:>10.1} {:>9.2} {:>9.2} {:>14.0} {:>14} {:>8.3}",
            p.start_s,
            p.end_s - p.start_s,
            p.min_loss_db,
            p.max_loss_db,
            p.sifted_bits,
            p.secret_bits,
            100.0 * p.qber
        );
    }
    outln!(out, "wrote {}", a.out.display());
    emit(&out)
}

fn run_scenario(a: RunArgs) -> Result<()> {
    if a.format != Format::Csv && !cfg!(feature = "parquet") {
        // Say so before the simulation, not after it.
        write_parquet_unavailable()?;
    }
    let mut out = String::new();
    let mut sc = Scenario::load(&a.scenario)?;
    add_pairs(&mut sc, &a.pairs, &a.scenario)?;
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
