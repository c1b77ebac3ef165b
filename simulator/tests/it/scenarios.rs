//! Scenario files through the library API: loading, building, running.

use std::path::{Path, PathBuf};

use qkd_simulator::network::{RunOptions, run};
use qkd_simulator::physical::Phase;
use qkd_simulator::scenario::{Scenario, ScenarioError};

pub fn scenario_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(name)
}

#[test]
fn metro_day_shows_attack_cut_and_maintenance() {
    let path = scenario_path("metro-2node.toml");
    let sc = Scenario::load(&path).unwrap();
    let links = sc.build_links(&path, &|_| {}).unwrap();
    let res = run(
        &sc,
        &links,
        RunOptions {
            aggregate_s: 60,
            threads: 1,
        },
        &|_| {},
    );
    let l = &res.links[0];
    assert_eq!(l.buckets.len(), 1440);
    // Down 30 min (maintenance) + 2 h (cut); aborted 10 min (attack).
    assert!((l.aborted - 600.0 / 86_400.0).abs() < 2e-4, "{}", l.aborted);
    assert!(
        (l.availability - (1.0 - (1800.0 + 7200.0 + 600.0) / 86_400.0)).abs() < 2e-4,
        "{}",
        l.availability
    );
    let at = |t: u64| &l.buckets[(t / 60) as usize - 1];
    assert_eq!(at(21_600 + 300).phase, Phase::Aborted);
    assert_eq!(at(43_200 + 3_600).phase, Phase::Down);
    assert_eq!(at(43_200 + 3_600).key_bits, 0);
    assert_eq!(at(30_000).phase, Phase::Up);
    assert!(at(30_000).qber > 0.005 && at(30_000).qber < 0.03);
    assert!(l.mean_rate_bps > 1e3, "{}", l.mean_rate_bps);
    // End to end over one hop equals the link.
    assert_eq!(res.pairs[0].total_bits, l.total_bits);
    assert!((res.pairs[0].connected_fraction - l.availability).abs() < 1e-3);
    // Deterministic.
    let again = run(
        &sc,
        &sc.build_links(&path, &|_| {}).unwrap(),
        RunOptions {
            aggregate_s: 60,
            threads: 2,
        },
        &|_| {},
    );
    assert_eq!(again.links[0].total_bits, l.total_bits);
}

#[test]
fn invalid_scenarios_name_file_field_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(scenario_path("metro-2node.toml")).unwrap();
    let cases = [
        (
            "length_km = 31.0",
            "length_km = -31.0",
            "links[0]",
            "length_km",
        ),
        (
            "fraction = 0.6",
            "fraction = 1.6",
            "events[0].fraction",
            "(0, 1]",
        ),
        (
            "b = \"saclay\"\n",
            "b = \"orsay\"\n",
            "links[0].b",
            "no node `orsay`",
        ),
        ("lat = 48.7130", "lat = 98.7130", "nodes[1].lat", "latitude"),
        (
            "step_s = 1",
            "step_s = 1\nstep = 2",
            "unknown field",
            "step",
        ),
        (
            "extra_loss_db = 2.0",
            "extra_loss_db = 2.0, eta_bob = 0",
            "eta_bob",
            "(0, 1]",
        ),
    ];
    for (i, (from, to, field, problem)) in cases.iter().enumerate() {
        let p = dir.path().join(format!("bad{i}.toml"));
        assert!(text.contains(from), "{from}");
        std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
        let err = match Scenario::load(&p) {
            Ok(sc) => sc.build_links(&p, &|_| {}).map(|_| ()).unwrap_err(),
            Err(e) => e,
        };
        let msg = err.to_string();
        assert!(msg.contains(&format!("bad{i}.toml")), "{msg}");
        assert!(
            msg.contains(field) && msg.contains(problem),
            "case {i}: {msg}"
        );
        if i == 0 {
            assert!(matches!(err, ScenarioError::Invalid { .. }));
        }
    }
}

#[test]
fn json_scenarios_load_like_toml() {
    let path = scenario_path("metro-2node.toml");
    let sc = Scenario::load(&path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("metro.json");
    std::fs::write(&json, serde_json::to_vec_pretty(&sc).unwrap()).unwrap();
    let back = Scenario::load(&json).unwrap();
    assert_eq!(back, sc);
    let opts = RunOptions {
        aggregate_s: 3600,
        threads: 1,
    };
    let a = run(&sc, &sc.build_links(&path, &|_| {}).unwrap(), opts, &|_| {});
    let b = run(
        &back,
        &back.build_links(&json, &|_| {}).unwrap(),
        opts,
        &|_| {},
    );
    assert_eq!(a.links[0].total_bits, b.links[0].total_bits);
    // A JSON syntax error names the file and the position.
    std::fs::write(&json, "{ \"scenario\": ").unwrap();
    let e = Scenario::load(&json).unwrap_err().to_string();
    assert!(e.contains("metro.json") && e.contains("line"), "{e}");
}

#[test]
fn shared_links_split_key_between_pairs() {
    let path = scenario_path("euroqci.toml");
    let mut sc = Scenario::load(&path).unwrap();
    sc.scenario.duration_s = 600;
    let links = sc.build_links(&path, &|_| {}).unwrap();
    let r = run(
        &sc,
        &links,
        RunOptions {
            aggregate_s: 60,
            threads: 2,
        },
        &|_| {},
    );
    let mut users = vec![0u64; r.links.len()];
    for p in &r.pairs {
        for &li in &p.path_links {
            users[li] += 1;
        }
    }
    assert!(
        users.iter().any(|&u| u > 1),
        "some links carry several pairs"
    );
    for p in &r.pairs {
        assert!(p.shared_total_bits <= p.total_bits);
        let expect = p
            .path_links
            .iter()
            .map(|&li| r.links[li].buckets.last().unwrap().cumulative_bits / users[li])
            .min()
            .unwrap();
        assert_eq!(p.shared_total_bits, expect);
    }
}
