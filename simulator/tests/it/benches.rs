//! Every benchmark workload, tiny, so the benchmarks cannot rot.

#[path = "../../benches/support/workloads.rs"]
mod workloads;

use crate::scenarios::scenario_path;

#[test]
fn benchmark_workloads_run_small() {
    let c = workloads::asymptotic_curves(50);
    assert!(
        (c[0].1 - 142.0).abs() < 5.0 && (c[1].1 - 140.0).abs() < 5.0,
        "{c:?}"
    );
    let f = workloads::finite_key_optimisations(3);
    assert!(f[0].1 >= 2 && f[1].1 >= 2, "{f:?}");
    let (cpu, _, with_key) = workloads::lim_point_times(3, 178.0, 1);
    assert_eq!(with_key, 3);
    // The kernel updates the figure at scheduler ticks: a run this short may read 0.
    assert!(cpu.is_some() || !cfg!(target_os = "linux"));
    let (_, _, r) = workloads::network(&scenario_path("metro-2node.toml"), Some(600), 60, 1);
    assert_eq!(r.links[0].buckets.len(), 10);
    let (_, _, d) = workloads::dynamics(
        &scenario_path("metro-2node.toml"),
        0.05,
        60,
        "constant:1000",
    );
    assert_eq!(d.pairs[0].demanded_bits, d.pairs[0].served_bits);
}

/// The metro scenario over its first two hours, one-minute buckets (set-up, run, result).
pub fn small_metro_run() -> (
    std::time::Duration,
    std::time::Duration,
    qkd_simulator::network::RunResult,
) {
    workloads::network(&scenario_path("metro-2node.toml"), Some(7200), 60, 1)
}
