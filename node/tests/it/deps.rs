//! Architecture invariant checks on the crate graph, from `cargo metadata`.

use std::collections::{BTreeMap, BTreeSet};

fn workspace_edges() -> BTreeMap<String, BTreeSet<String>> {
    edges_of_kind(cargo_metadata::DependencyKind::Normal)
}

/// Edges between workspace crates of one kind (normal, dev or build dependencies).
fn edges_of_kind(kind: cargo_metadata::DependencyKind) -> BTreeMap<String, BTreeSet<String>> {
    let meta = cargo_metadata::MetadataCommand::new()
        .manifest_path(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
        .no_deps()
        .exec()
        .unwrap();
    let members: BTreeSet<String> = meta
        .workspace_packages()
        .iter()
        .map(|p| p.name.to_string())
        .collect();
    meta.workspace_packages()
        .iter()
        .map(|p| {
            let deps = p
                .dependencies
                .iter()
                .filter(|d| d.kind == kind)
                .map(|d| d.name.clone())
                .filter(|d| members.contains(d))
                .collect();
            (p.name.to_string(), deps)
        })
        .collect()
}

#[test]
fn crate_dependency_edges_follow_the_architecture() {
    let edges = workspace_edges();
    let allowed: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("qkd-types", &[][..]),
        ("qkd-proto", &["qkd-types"][..]),
        ("qkd-hardware", &["qkd-types", "qkd-proto"][..]),
        (
            "qkd-simulator",
            &["qkd-types", "qkd-hardware", "qkd-proto"][..],
        ),
        ("qkd-kms", &["qkd-types", "qkd-proto", "qkd-hardware"][..]),
        (
            "qkd-node",
            &[
                "qkd-types",
                "qkd-kms",
                "qkd-hardware",
                "qkd-simulator",
                "qkd-proto",
            ][..],
        ),
        // The network simulation drives the real key managers over simulated links.
        (
            "qkd-netsim",
            &[
                "qkd-types",
                "qkd-proto",
                "qkd-hardware",
                "qkd-simulator",
                "qkd-kms",
            ][..],
        ),
        // The conformance tester must work against any KME: wire types and vocabulary only.
        ("qkd-conform", &["qkd-types", "qkd-proto"][..]),
        // The reference encryptor is an SAE application: the node's public API only.
        ("qkd-link", &["qkd-types", "qkd-proto"][..]),
        (
            "qkd-testnet",
            &[
                "qkd-types",
                "qkd-proto",
                "qkd-hardware",
                "qkd-kms",
                "qkd-simulator",
                "qkd-testnet-pki",
            ][..],
        ),
        ("qkd-testnet-pki", &[][..]),
        (
            "qkd-bench",
            &[
                "qkd-types",
                "qkd-proto",
                "qkd-hardware",
                "qkd-kms",
                "qkd-simulator",
                "qkd-conform",
                "qkd-testnet",
            ][..],
        ),
    ]);
    for (krate, deps) in &edges {
        let ok = allowed
            .get(krate.as_str())
            .unwrap_or_else(|| panic!("crate {krate} is not in the architecture table"));
        for d in deps {
            assert!(ok.contains(&d.as_str()), "{krate} must not depend on {d}");
        }
    }
    // The two invariants the guide names explicitly.
    assert!(
        !edges["qkd-simulator"].contains("qkd-kms") && !edges["qkd-simulator"].contains("qkd-node")
    );
    assert!(
        edges.values().all(|d| !d.contains("qkd-node")),
        "nothing depends on the node"
    );
    for k in ["qkd-kms", "qkd-node", "qkd-simulator"] {
        assert!(
            !edges["qkd-hardware"].contains(k),
            "qkd-hardware must not depend on {k}"
        );
    }
}

/// The daemon takes the simulator's physics only: no plotting, bundled font or CSV code
/// (simulator features `plot`, `output`, `cli` off).
#[test]
fn the_node_links_no_simulator_plotting_or_output() {
    let o = std::process::Command::new(env!("CARGO"))
        .args([
            "tree", "-p", "qkd-node", "-e", "features", "--prefix", "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tree = String::from_utf8_lossy(&o.stdout);
    assert!(tree.contains("qkd-simulator"), "{tree}");
    for krate in ["plotters", "dejavu", "csv ", "ttf-parser", "indicatif"] {
        assert!(
            !tree.lines().any(|l| l.starts_with(krate)),
            "qkd-node pulls in {krate}"
        );
    }
    // The simulation's test seams (the simulated disk, the switches that put defects back) are
    // never built into the daemon's default build.
    assert!(
        !tree.contains("qkd-kms feature \"simulation\""),
        "qkd-node enables the kms simulation feature"
    );
    // Nor are the test-only crash points (node/tests/it/failpoints.rs).
    assert!(
        !tree.contains("qkd-kms feature \"failpoints\""),
        "qkd-node enables the kms failpoints feature by default"
    );
    assert!(tree.contains("qkd-kms feature \"default\""), "{tree}");
}

/// The test harnesses (`qkd-testnet`) are internal: only the benchmark binary links them; the
/// simulator's tests use the rcgen-only test CA and never the key manager through a harness.
#[test]
fn test_harnesses_stay_out_of_shipped_crates_and_the_simulator() {
    let normal = workspace_edges();
    for (krate, deps) in &normal {
        if krate != "qkd-bench" && krate != "qkd-testnet" {
            assert!(!deps.contains("qkd-testnet"), "{krate} links qkd-testnet");
        }
    }
    let dev = edges_of_kind(cargo_metadata::DependencyKind::Development);
    for d in ["qkd-kms", "qkd-node", "qkd-testnet"] {
        assert!(
            !dev["qkd-simulator"].contains(d),
            "the simulator's tests must not depend on {d}"
        );
    }
    assert!(dev["qkd-simulator"].contains("qkd-testnet-pki"));
}

/// The daemon links the ETSI 014 client adapter (`qkd-hardware` feature `etsi014`) but never
/// the device emulator's HTTPS server (`qkd-simulator` feature `emulator`, which only the
/// node's tests use, as a dev-dependency).
#[test]
fn the_node_links_the_device_adapter_but_not_the_emulator() {
    let o = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "qkd-node",
            "-e",
            "normal,build,features",
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tree = String::from_utf8_lossy(&o.stdout);
    assert!(
        tree.contains("qkd-hardware feature \"etsi014\""),
        "the node does not enable the ETSI 014 adapter:\n{tree}"
    );
    assert!(
        !tree.contains("qkd-simulator feature \"emulator\""),
        "the daemon links the device emulator"
    );
}
