//! The EuroQCI-like scenario: size, realism and a short run.

use std::collections::HashSet;

use qkd_simulator::network::{RunOptions, run};
use qkd_simulator::scenario::{NodeKind, Scenario, great_circle_km};

use crate::scenarios::scenario_path;

#[test]
fn euroqci_scenario_is_eu_scale_and_realistic() {
    let path = scenario_path("euroqci.toml");
    let sc = Scenario::load(&path).unwrap();
    let countries: HashSet<&str> = sc
        .nodes
        .iter()
        .map(|n| n.country.as_str())
        .filter(|c| !c.is_empty())
        .collect();
    assert!(countries.len() >= 8, "{countries:?}");
    assert!(sc.links.len() >= 200, "{}", sc.links.len());
    let gs = sc
        .nodes
        .iter()
        .filter(|n| n.kind == NodeKind::GroundStation)
        .count();
    assert_eq!(gs, 2);
    assert!(sc.nodes.iter().any(|n| n.kind == NodeKind::Satellite));
    let node = |id: &str| sc.nodes.iter().find(|n| n.id == id).unwrap();
    let mut cross_border = 0;
    for (i, l) in sc.links.iter().enumerate() {
        let (a, b) = (node(&l.a), node(&l.b));
        if a.kind == NodeKind::Satellite || b.kind == NodeKind::Satellite {
            continue;
        }
        let len = l.model.as_ref().and_then(|m| m.length_km()).unwrap();
        // Trusted nodes every ~50-100 km; fibre 1.1-1.6x the straight line.
        assert!(len <= 100.0, "{}: {len} km", sc.link_id(i));
        let gc = great_circle_km(a.lat, a.lon, b.lat, b.lon);
        assert!(
            len >= 1.1 * gc && len <= 1.6 * gc.max(1.0),
            "{}: {len} km vs {gc} km",
            sc.link_id(i)
        );
        if a.country != b.country {
            cross_border += 1;
        }
    }
    assert!(cross_border >= 10, "{cross_border}");
}

#[test]
fn euroqci_short_run_connects_capitals() {
    let path = scenario_path("euroqci.toml");
    let mut sc = Scenario::load(&path).unwrap();
    sc.scenario.duration_s = 1800;
    let links = sc.build_links(&path, &|_| {}).unwrap();
    let r = run(
        &sc,
        &links,
        RunOptions {
            aggregate_s: 300,
            threads: 2,
        },
        &|_| {},
    );
    for p in &r.pairs {
        assert!(p.path.len() >= 2, "{} <-> {}", p.a, p.b);
        assert!(p.total_bits > 0, "{} <-> {}", p.a, p.b);
        // End-to-end key is bounded by every link on the path.
        assert!(p.bottleneck_bps > 0.0);
    }
    let fibre_up = r
        .links
        .iter()
        .filter(|l| l.length_km.is_some() && l.total_bits > 0)
        .count();
    assert!(fibre_up as f64 > 0.95 * (r.links.len() - 2) as f64);
}
