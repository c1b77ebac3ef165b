//! Scenario files through the library API: loading, building, running.

use std::path::{Path, PathBuf};

use qkd_simulator::detail::BoundFamily;
use qkd_simulator::network::{RunOptions, run};
use qkd_simulator::physical::Phase;
use qkd_simulator::physics::bounds::{plob, single_repeater};
use qkd_simulator::physics::channel::db_to_transmittance;
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

/// Every protocol family of a `run` is held against its bound: repeaterless fibre protocols and
/// satellite downlinks against PLOB, twin-field ones against the single-repeater bound, and a
/// constant-rate link (no channel) against none. No correct model comes near a violation.
#[test]
fn runs_say_which_bound_holds_each_link() {
    let text = r#"
[scenario]
name = "bounds"
start_utc = "2026-06-21T00:00:00Z"
duration_s = 86400
step_s = 60
seed = 3

[[nodes]]
id = "a"
lat = 48.0
lon = 2.0

[[nodes]]
id = "b"
lat = 48.1
lon = 2.1

[[nodes]]
id = "gs"
kind = "ground-station"
lat = 48.8
lon = 2.3
clear_sky_prob = 1.0

[[nodes]]
id = "sat"
kind = "satellite"
orbit = { altitude_km = 500.0, inclination_deg = 97.4, raan_deg = 265.0, phase_deg = 0.0 }

[[links]]
id = "down"
a = "sat"
b = "gs"
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bounds.toml");
    let fibre = [
        (
            "bb84",
            "finite-key-bb84",
            "length_km = 50.0, block_bits = 1e6",
        ),
        ("tf", "twin-field", "length_km = 300.0"),
        ("sns", "sns-tf", "length_km = 300.0"),
        ("cv", "cv-qkd", "length_km = 20.0"),
        ("mdi", "mdi-qkd", "length_km = 100.0"),
        ("bbm92", "bbm92", "length_km = 100.0"),
        ("const", "constant-rate", "bits_per_second = 1000"),
    ];
    let links: String = fibre
        .iter()
        .map(|(id, kind, rest)| {
            format!(
                "\n[[links]]\nid = \"{id}\"\na = \"a\"\nb = \"b\"\n\
                 model = {{ kind = \"{kind}\", {rest} }}\n"
            )
        })
        .collect();
    std::fs::write(&path, format!("{text}{links}")).unwrap();
    let sc = Scenario::load(&path).unwrap();
    let links = sc.build_links(&path, &|_| {}).unwrap();
    let res = run(
        &sc,
        &links,
        RunOptions {
            aggregate_s: 3600,
            threads: 2,
        },
        &|_| {},
    );
    let link = |id: &str| res.links.iter().find(|l| l.id == id).unwrap();
    for (id, family) in [
        ("bb84", BoundFamily::Plob),
        ("tf", BoundFamily::SingleRepeater),
        ("sns", BoundFamily::SingleRepeater),
        ("cv", BoundFamily::Plob),
        ("mdi", BoundFamily::Plob),
        ("bbm92", BoundFamily::Plob),
        ("down", BoundFamily::Plob),
    ] {
        let b = link(id)
            .bound
            .unwrap_or_else(|| panic!("{id} has no bound"));
        assert_eq!(b.bound, family, "{id}");
        assert!(b.key > 0.0 && b.ratio > 0.0 && b.ratio < 1.0, "{id}: {b:?}");
        assert!(!link(id).violates_bound());
    }
    assert!(link("const").bound.is_none());
    assert_eq!(res.bound_violations().count(), 0);
    // Fibre: the bound at the link's channel loss in bit/s (PLOB at 50 km of 0.2 dB/km fibre
    // and 1 GHz, the Lim 2014 hardware, no extra loss).
    let bb84 = link("bb84").bound.unwrap();
    let eta = db_to_transmittance(0.2 * 50.0);
    assert!(
        (bb84.limit / (plob(eta) * 1e9) - 1.0).abs() < 1e-9,
        "{bb84:?}"
    );
    // Twin-field at 300 km passes PLOB (why it has a bound of its own) but not the
    // single-repeater bound.
    let tf = link("tf").bound.unwrap();
    let eta = db_to_transmittance(0.2 * 300.0);
    let uses_per_s = tf.limit / single_repeater(eta);
    assert!(tf.key > plob(eta) * uses_per_s, "{tf:?}");
    let table = res.summary_table(20);
    assert!(table.contains("1-rep") && table.contains("plob"), "{table}");
    assert!(!table.contains("BOUND VIOLATED"), "{table}");
    // summary.json carries the check per link.
    res.write_summary(dir.path()).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("summary.json")).unwrap()).unwrap();
    let in_json = |id: &str| {
        json["links"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(in_json("tf")["bound"]["bound"], "single-repeater");
    assert_eq!(in_json("down")["bound"]["bound"], "plob");
    assert!(in_json("const")["bound"].is_null());
}
