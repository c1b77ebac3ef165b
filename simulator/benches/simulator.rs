//! Benchmarks of the simulator (not timed tests): `cargo bench -p qkd-simulator`.
//! Figures are recorded in simulator/BENCHMARKS.md.

#[allow(dead_code)]
#[path = "support/workloads.rs"]
mod workloads;

use std::path::Path;

fn main() {
    // `cargo bench` passes `--bench`; anything else is ignored.
    let threads = std::thread::available_parallelism().map_or(1, |p| p.get());
    let best = |f: &dyn Fn() -> f64| (0..5).map(|_| f()).fold(f64::INFINITY, f64::min);

    let curves = workloads::asymptotic_curves(1000);
    let inf = best(&|| workloads::asymptotic_curves(1000)[0].0.as_secs_f64());
    let vw = best(&|| workloads::asymptotic_curves(1000)[1].0.as_secs_f64());
    println!(
        "asymptotic curve, 1000 points, infinite decoys (mu optimised per point): {:.2} ms (reach {:.1} km)",
        inf * 1e3,
        curves[0].1
    );
    println!(
        "asymptotic curve, 1000 points, vacuum+weak (fixed mu, nu):              {:.3} ms (reach {:.1} km)",
        vw * 1e3,
        curves[1].1
    );

    let fk = workloads::finite_key_optimisations(50);
    println!(
        "finite-key optimisation per point, Lim 2014 (n_X = 1e7, 5 parameters): {:.2} ms ({} of 50 points with key)",
        fk[0].0.as_secs_f64() * 1e3,
        fk[0].1
    );
    println!(
        "finite-key optimisation per point, Rusca 2018 (n_Z = 1e7, 4 parameters): {:.2} ms ({} of 50 points with key)",
        fk[1].0.as_secs_f64() * 1e3,
        fk[1].1
    );

    // CPU time of this thread, so that the figure does not depend on the machine's load: the
    // 50 distances from 0 to 150 km above, and 50 from 0 to 178 km (full reach: every point
    // has key), each sweep run 20 times.
    for to_km in [150.0, 178.0] {
        let (cpu, wall, ok) = workloads::lim_point_times(50, to_km, 20);
        let cpu = cpu.map_or("n/a".to_string(), |c| {
            format!("{:.3} ms", c.as_secs_f64() * 1e3)
        });
        println!(
            "finite-key optimisation per point, Lim 2014 (n_X = 1e7), 0-{to_km} km, CPU time: {cpu} (wall {:.3} ms; {ok} of 50 points with key)",
            wall.as_secs_f64() * 1e3
        );
    }

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/euroqci.toml");
    for aggregate in [1, 60] {
        let (setup, run, r) = workloads::network(&path, None, aggregate, threads);
        println!(
            "EuroQCI day ({} links, 86400 steps of 1 s, buckets of {aggregate} s, {threads} threads): set-up {:.2} s, simulation {:.2} s, total {:.2} s (no output)",
            r.links.len(),
            setup.as_secs_f64(),
            run.as_secs_f64(),
            (setup + run).as_secs_f64()
        );
    }
    for step in [60, 10] {
        let (setup, run, r) = workloads::dynamics(&path, 7.0, step, "bursty:20000,300,900");
        println!(
            "EuroQCI week with key buffers ({} links, {} pairs, {step} s steps, bursty demand, with the event-free baseline): set-up {:.2} s, simulation {:.2} s, total {:.2} s (no output)",
            r.links.len(),
            r.pairs.len(),
            setup.as_secs_f64(),
            run.as_secs_f64(),
            (setup + run).as_secs_f64()
        );
    }
}
