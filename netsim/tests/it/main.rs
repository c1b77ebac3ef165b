//! The deterministic network simulation over the real key managers: a fixed set of seeds in CI
//! (`SIM_SEEDS=` runs more), determinism, replay, and proof that it finds known defects when a
//! test seam puts them back.

mod scale;

use qkd_kms::events::defects::Defects;
use qkd_netsim::{Faults, Options, Shape, StoreKind, Violation, run, run_seeds, seed_count};

/// Steps per run in CI.
const STEPS: u32 = 200;
/// Seeds per shape in CI: 1,000 runs in all (about 0.3 s of CPU each, docs/simulation.md).
const SEEDS: u64 = 500;
/// Seeds of the runs on the in-memory store in CI.
const SEEDS_IN_MEMORY: u64 = 100;

fn must_hold(shape: Shape, default_seeds: u64, store: StoreKind) {
    let count = seed_count(default_seeds);
    match run_seeds(shape, STEPS, count, Defects::default(), store) {
        Ok(summary) => {
            eprintln!("{} on {}: {summary}", shape.name(), store.name());
            assert!(
                count < 20 || (summary.slave_keys > 0 && summary.stream_keys > 0),
                "the workload got no keys to slaves or from key streams: {summary}"
            );
            assert!(
                count < 20 || summary.expired_pool_keys > 0,
                "no pool key went stale, so the relay tick's expiry went unchecked: {summary}"
            );
            assert!(
                count < 20 || summary.reloads > 0,
                "no configuration change reached a node by a live reload: {summary}"
            );
            assert!(
                count < 20 || store != StoreKind::Disk || summary.kek_rotations > 0,
                "no KEK rotated while its node ran: {summary}"
            );
        }
        Err(v) => panic!("{v}"),
    }
}

#[test]
fn chain_of_five() {
    must_hold(Shape::Chain(5), SEEDS, StoreKind::Disk);
}

#[test]
fn mesh_of_six() {
    must_hold(Shape::Mesh(6), SEEDS, StoreKind::Disk);
}

/// The same runs with the nodes' stores in memory (the store's model, `MemStore`): the key
/// managers keep every invariant on either implementation of the store operations.
#[test]
fn mesh_of_six_on_the_memory_store() {
    must_hold(Shape::Mesh(6), SEEDS_IN_MEMORY, StoreKind::Memory);
}

/// Two runs of the same options give the same trace.
#[test]
fn runs_are_deterministic() {
    let o = Options {
        seed: 7,
        steps: 80,
        shape: Shape::Mesh(5),
        defects: Defects::default(),
        faults: Faults::default(),
        store: StoreKind::Disk,
    };
    let a = run(&o).unwrap_or_else(|v| panic!("{v}"));
    let b = run(&o).unwrap_or_else(|v| panic!("{v}"));
    assert_eq!(a, b, "two runs of seed 7 differ");
    assert!(
        a.master_keys > 0 && a.slave_keys > 0,
        "the workload got no keys: {a:?}"
    );
}

/// Replays one run: `SIM_SEED`, `SIM_STEPS`, `SIM_SHAPE` (and `SIM_DEFECTS`, `SIM_STORE`) as a
/// violation prints them.
#[test]
fn replay() {
    let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) else {
        return;
    };
    let steps = std::env::var("SIM_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(STEPS);
    let shape = std::env::var("SIM_SHAPE")
        .ok()
        .and_then(|s| Shape::parse(&s))
        .unwrap_or(Shape::Chain(5));
    let defects = match std::env::var("SIM_DEFECTS") {
        Ok(s) => Violation::parse_defects(&s)
            .unwrap_or_else(|| panic!("SIM_DEFECTS: unknown defect in {s:?}")),
        Err(_) => Defects::default(),
    };
    let store = match std::env::var("SIM_STORE") {
        Ok(s) => StoreKind::parse(&s)
            .unwrap_or_else(|| panic!("SIM_STORE: {s:?} is neither `disk` nor `memory`")),
        Err(_) => StoreKind::Disk,
    };
    let o = run(&Options {
        seed,
        steps,
        shape,
        defects,
        faults: Faults::default(),
        store,
    })
    .unwrap_or_else(|v| panic!("{v}"));
    eprintln!("{o:?}");
}

/// A violation found with a defect put back replays to the same violation from its command.
#[test]
fn a_failing_seed_replays_to_the_same_violation() {
    let defects = Defects {
        reissued_ids: true,
        ..Defects::default()
    };
    let (o, first) = (0..40)
        .find_map(|seed| {
            let o = Options {
                seed,
                steps: STEPS,
                shape: Shape::Chain(5),
                defects,
                faults: Faults::default(),
                store: StoreKind::Disk,
            };
            run(&o).err().map(|v| (o, v))
        })
        .expect("a violation with re-issued IDs accepted");
    let cmd = first.replay_command();
    assert!(
        cmd.contains(&format!("SIM_SEED={} ", o.seed)) && cmd.contains("SIM_DEFECTS=reissued_ids"),
        "{cmd}"
    );
    let again = run(&o).expect_err("the replay fails too");
    assert_eq!(
        (again.step, again.trace.clone()),
        (first.step, first.trace.clone()),
        "the replay took another course"
    );
}

/// The first seed (of up to `max`) on which the run finds a violation with `defects` back.
fn finds(defects: Defects, shape: Shape, max: u64) -> String {
    for seed in 0..max {
        if let Err(v) = run(&Options {
            seed,
            steps: STEPS,
            shape,
            defects,
            faults: Faults::default(),
            store: StoreKind::Disk,
        }) {
            return v.what.clone();
        }
    }
    panic!("no violation in {max} seeds with {defects:?} put back");
}

#[test]
fn finds_defect_1_mixed_profiles() {
    let what = finds(
        Defects {
            mixed_profiles: true,
            ..Defects::default()
        },
        Shape::Chain(5),
        20,
    );
    assert!(what.contains("made under"), "{what}");
}

#[test]
fn finds_defect_2_stale_keys() {
    let what = finds(
        Defects {
            stale_keys: true,
            ..Defects::default()
        },
        Shape::Chain(5),
        40,
    );
    assert!(
        what.contains("bits") || what.contains("made under"),
        "{what}"
    );
}

#[test]
fn finds_defect_4_reissued_ids() {
    let what = finds(
        Defects {
            reissued_ids: true,
            ..Defects::default()
        },
        Shape::Chain(5),
        40,
    );
    assert!(what.contains("link key used twice"), "{what}");
}

/// The key-stream invariant holds the streams to account: with GET_KEY leaving an index
/// undelivered, an index is served twice to one end.
#[test]
fn finds_a_stream_index_served_twice() {
    let what = finds(
        Defects {
            stream_redelivery: true,
            ..Defects::default()
        },
        Shape::Chain(5),
        40,
    );
    assert!(what.contains("delivered twice to the same end"), "{what}");
}
