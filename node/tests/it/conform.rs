//! `qkd-conform`, the ETSI GS QKD 014 conformance tester, against two real `qkd-node`
//! processes: every case, spec and decision, must pass.

use std::time::Instant;

use qkd_conform::{Config, Outcome};

use crate::harness::Net;

#[tokio::test]
async fn qkd_conform_passes_every_case_against_our_kms() {
    let net = Net::setup(5_000_000);
    // Let ENC-A1 share keys with ENC-B2 as well, so that multicast (A1 → B1 + B2) can run;
    // ENC-B2 is still not the slave of A1 → B1 keys (the 401 case).
    for node in ["A", "B"] {
        let p = net.path().join(node).join("node.toml");
        let text = std::fs::read_to_string(&p).unwrap();
        let text = text
            .replace(
                "id = \"ENC-A1\"\nnode = \"A\"\npeers = [\"ENC-B1\"]",
                "id = \"ENC-A1\"\nnode = \"A\"\npeers = [\"ENC-B1\", \"ENC-B2\"]",
            )
            .replace(
                "id = \"ENC-B2\"\nnode = \"B\"\npeers = [\"ENC-A2\"]",
                "id = \"ENC-B2\"\nnode = \"B\"\npeers = [\"ENC-A2\", \"ENC-A1\"]",
            );
        assert!(text.contains("\"ENC-B1\", \"ENC-B2\"]"), "{text}");
        std::fs::write(&p, text).unwrap();
    }
    net.start("A");
    net.start("B");
    // Enough stored key for the run: it consumes a dozen keys; the pool holds more.
    net.wait_for_keys("ENC-A1", "ENC-B1", 32).await;
    let dir = net.path();
    let sae = |id: &str, node: &str| {
        format!(
            "[{}]\nurl = \"{}\"\nsae_id = \"{id}\"\ncert = \"pki/sae-{id}.crt\"\nkey = \"pki/sae-{id}.key\"\n",
            match id {
                "ENC-A1" => "master",
                "ENC-B1" => "slave",
                _ => "third",
            },
            net.base(node).trim_end_matches("/api/v1/keys/"),
        )
    };
    let toml = format!(
        "ca = \"pki/ca.crt\"\nmax_keys = 200\n{}{}{}",
        sae("ENC-A1", "A"),
        sae("ENC-B1", "B"),
        sae("ENC-B2", "B")
    );
    let path = dir.join("conform.toml");
    std::fs::write(&path, toml).unwrap();
    let config = Config::load(&path).unwrap();
    let started = Instant::now();
    let mut planned = None;
    let report = qkd_conform::run(&config, |p| planned = Some(p.max_keys))
        .await
        .unwrap();
    let failed: Vec<_> = report
        .cases
        .iter()
        .filter(|c| c.outcome == Outcome::Fail)
        .map(|c| c.id)
        .collect();
    assert!(
        failed.is_empty(),
        "{}\n(ran in {:?})\nA: {}\nB: {}",
        report.table(),
        started.elapsed(),
        net.log("A"),
        net.log("B")
    );
    assert_eq!(report.exit_code(), 0);
    assert_eq!(Some(report.planned_keys), planned);
    assert!(report.consumed_keys <= report.planned_keys);
    // Our KME advertises multicast, so only the "multicast unsupported" case does not apply.
    let skipped: Vec<_> = report
        .cases
        .iter()
        .filter(|c| c.outcome == Outcome::Skip)
        .map(|c| c.id)
        .collect();
    assert_eq!(
        skipped,
        ["enc-keys-multicast-unsupported"],
        "{}",
        report.table()
    );
    assert_eq!(
        report.case("enc-keys-multicast").unwrap().outcome,
        Outcome::Pass
    );
}
