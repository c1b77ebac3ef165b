//! The benchmark workloads, shared by the `simulator` bench (full size, timed) and the
//! integration tests (tiny size, so the benchmarks cannot rot).

use std::path::Path;
use std::time::{Duration, Instant};

use qkd_simulator::curve::{Axis, CurveProtocol, rate_curve};
use qkd_simulator::network::{RunOptions, RunResult, run};
use qkd_simulator::physics::channel::DvHardware;
use qkd_simulator::physics::finite::{Lim2014, Rusca2018};
use qkd_simulator::scenario::Scenario;

/// Asymptotic key-rate curves of `points` points: (infinite decoys with μ optimised, vacuum+weak
/// at fixed μ, ν). Returns the elapsed time of each and the last distance with key.
pub fn asymptotic_curves(points: usize) -> [(Duration, f64); 2] {
    let protos = [
        CurveProtocol::DecoyInfinite,
        CurveProtocol::DecoyVacuumWeak { mu: 0.48, nu: 0.05 },
    ];
    protos.map(|p| {
        let t = Instant::now();
        // A fixed, valid sweep: an error here is a bug in the crate.
        let c = rate_curve(
            &p,
            &DvHardware::GYS,
            1.22,
            Axis::Distance,
            0.0,
            200.0,
            points,
        )
        .expect("valid sweep");
        let el = t.elapsed();
        (
            el,
            c.iter()
                .rev()
                .find(|x| x.key_per_pulse > 0.0)
                .map_or(0.0, |x| x.x),
        )
    })
}

/// Finite-key optimisations (Lim 2014, n_X = 10⁷; Rusca 2018, n_Z = 10⁷) at `points` distances
/// from 0 to 150 km. Returns the mean time per optimisation of each and the number with key.
pub fn finite_key_optimisations(points: usize) -> [(Duration, usize); 2] {
    let lengths: Vec<f64> = (0..points)
        .map(|i| 150.0 * i as f64 / points.max(2) as f64)
        .collect();
    let lim = Lim2014::paper(1e7);
    let t = Instant::now();
    let lim_ok = lengths
        .iter()
        .filter(|l| lim.optimise(lim.hw.eta_sys(**l)).1.key_bits > 0.0)
        .count();
    let lim_t = t.elapsed() / points as u32;
    let rusca = Rusca2018::new(DvHardware::METRO_GHZ, 1e7);
    let t = Instant::now();
    let r_ok = lengths
        .iter()
        .filter(|l| rusca.optimise(rusca.hw.eta_sys(**l)).1.key_bits > 0.0)
        .count();
    [(lim_t, lim_ok), (t.elapsed() / points as u32, r_ok)]
}

/// Lim 2014 finite-key optimisations (n_X = 10⁷) at `points` distances from 0 to `to_km`, the
/// whole sweep run `repeats` times. Returns the mean time per optimisation in CPU time of this
/// thread (`None` where the OS does not report it) and in wall time, and how many of the
/// distances have key. CPU time is what the work costs, whatever the load of the machine.
pub fn lim_point_times(
    points: usize,
    to_km: f64,
    repeats: usize,
) -> (Option<Duration>, Duration, usize) {
    let lengths: Vec<f64> = (0..points)
        .map(|i| to_km * i as f64 / points.max(2) as f64)
        .collect();
    let lim = Lim2014::paper(1e7);
    let cpu0 = thread_cpu_time();
    let t = Instant::now();
    let mut with_key = 0;
    for _ in 0..repeats {
        with_key = lengths
            .iter()
            .filter(|l| lim.optimise(lim.hw.eta_sys(**l)).1.key_bits > 0.0)
            .count();
    }
    let n = (points * repeats) as u32;
    let wall = t.elapsed() / n;
    let cpu = cpu0.zip(thread_cpu_time()).map(|(a, b)| (b - a) / n);
    (cpu, wall, with_key)
}

/// CPU time used by the calling thread so far: the first field of
/// `/proc/thread-self/schedstat` (Linux; nanoseconds on the CPU, the sum behind
/// `CLOCK_THREAD_CPUTIME_ID`), without unsafe code. `None` elsewhere. The kernel brings it up to
/// date at each scheduler tick (a few milliseconds) rather than at the read, so time a run of a
/// tenth of a second or more.
pub fn thread_cpu_time() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// Loads `path`, shortens it to `duration_s` if given, builds every link and runs it at the
/// scenario's step with `aggregate_s` buckets. Returns (set-up time, run time, result); no
/// output is written.
pub fn network(
    path: &Path,
    duration_s: Option<u64>,
    aggregate_s: u64,
    threads: usize,
) -> (Duration, Duration, RunResult) {
    // Workloads run on the scenarios shipped with the crate; failing to load one is a bug.
    let mut sc = Scenario::load(path).expect("scenario loads");
    if let Some(d) = duration_s {
        sc.scenario.duration_s = d;
    }
    let t = Instant::now();
    let links = sc.build_links(path, &|_| {}).expect("links build");
    let setup = t.elapsed();
    let t = Instant::now();
    let r = run(
        &sc,
        &links,
        RunOptions {
            aggregate_s,
            threads,
        },
        &|_| {},
    );
    (setup, t.elapsed(), r)
}

/// The time-resolved buffer simulation of `path` over `days` at `step_s`, with the demand
/// `demand` on every pair and the event-free baseline run as well (what `qkd-sim dynamics` does).
/// Returns (set-up time, simulation time of both runs, result); no output is written.
pub fn dynamics(
    path: &Path,
    days: f64,
    step_s: u64,
    demand: &str,
) -> (Duration, Duration, qkd_simulator::dynamics::DynamicsResult) {
    use qkd_simulator::dynamics::{Demand, DynamicsOptions, baseline_links, run_dynamics};
    // Workloads run on the scenarios shipped with the crate; failing to load one is a bug.
    let mut sc = Scenario::load(path).expect("scenario loads");
    sc.scenario.duration_s = (days * 86_400.0) as u64;
    let demand = Demand::parse(demand).expect("valid demand");
    let opts = DynamicsOptions {
        step_s,
        ..Default::default()
    };
    let t = Instant::now();
    let links = sc.build_links(path, &|_| ()).expect("links build");
    let base = baseline_links(&sc, path).expect("links build");
    let setup = t.elapsed();
    let t = Instant::now();
    let mut r = run_dynamics(&sc, &links, &demand, &opts);
    r.set_baseline(&run_dynamics(&sc, &base, &demand, &opts));
    (setup, t.elapsed(), r)
}
