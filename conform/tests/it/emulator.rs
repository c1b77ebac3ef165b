//! `qkd-conform` against the emulated device pair.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] functions

use std::path::{Path, PathBuf};
use std::sync::Arc;

use qkd_conform::{Basis, Config, Outcome, Report};
use qkd_simulator::emulator::{DevicePair, Fault, PairConfig, Quirk, run, server_tls};
use qkd_simulator::model::ConstantRate;
use qkd_types::{ManualClock, SaeId};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use tokio::sync::oneshot;

/// Numeric SAE IDs, so that the `integer-sae-ids` quirk applies.
const MASTER: &str = "1001";
const SLAVE: &str = "1002";
const THIRD: &str = "1003";

struct Emulated {
    dir: tempfile::TempDir,
    pair: DevicePair,
    stops: Vec<oneshot::Sender<()>>,
    urls: [String; 2],
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

impl Emulated {
    async fn start(quirks: &[Quirk]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = CertificateParams::default();
        ca.distinguished_name
            .push(DnType::CommonName, "conform test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let ca_key = KeyPair::generate().unwrap();
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        write(dir.path(), "ca.crt", &ca_pem);
        for sae in [MASTER, SLAVE, THIRD] {
            let mut p = CertificateParams::default();
            p.distinguished_name.push(DnType::CommonName, sae);
            let key = KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, &issuer).unwrap();
            write(dir.path(), &format!("{sae}.crt"), &cert.pem());
            write(dir.path(), &format!("{sae}.key"), &key.serialize_pem());
        }
        let mut config =
            PairConfig::new(SaeId::parse(MASTER).unwrap(), SaeId::parse(SLAVE).unwrap());
        config.saes[1].push(SaeId::parse(THIRD).unwrap());
        config.quirks = quirks.iter().copied().collect();
        let clock = ManualClock::new(100_000);
        let pair = DevicePair::new(
            config,
            Box::new(ConstantRate::new(1_000_000)),
            Arc::new(clock),
            0,
        );
        let mut stops = Vec::new();
        let mut urls = Vec::new();
        for i in 0..2 {
            let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
            p.subject_alt_names
                .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
            let key = KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, &issuer).unwrap();
            let tls = server_tls(
                cert.pem().as_bytes(),
                key.serialize_pem().as_bytes(),
                ca_pem.as_bytes(),
            )
            .unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            urls.push(format!("https://{}", listener.local_addr().unwrap()));
            let (tx, rx) = oneshot::channel();
            tokio::spawn(run(listener, tls, pair.clone(), i, async {
                let _ = rx.await;
            }));
            stops.push(tx);
        }
        let toml = format!(
            r#"
ca = "ca.crt"
max_keys = 1000
[master]
url = "{a}"
sae_id = "{MASTER}"
cert = "{MASTER}.crt"
key = "{MASTER}.key"
[slave]
url = "{b}"
sae_id = "{SLAVE}"
cert = "{SLAVE}.crt"
key = "{SLAVE}.key"
[third]
url = "{b}"
sae_id = "{THIRD}"
cert = "{THIRD}.crt"
key = "{THIRD}.key"
"#,
            a = urls[0],
            b = urls[1]
        );
        write(dir.path(), "conform.toml", &toml);
        Self {
            dir,
            pair,
            stops,
            urls: urls.try_into().unwrap(),
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("conform.toml")
    }

    async fn run(&self) -> (Report, u32) {
        let config = Config::load(&self.config_path()).unwrap();
        let mut planned = 0;
        let report = qkd_conform::run(&config, |p| planned = p.max_keys)
            .await
            .unwrap();
        (report, planned)
    }

    fn stop(self) {
        for s in self.stops {
            let _ = s.send(());
        }
    }
}

fn failures(r: &Report) -> Vec<String> {
    r.cases
        .iter()
        .filter(|c| c.outcome == Outcome::Fail)
        .map(|c| format!("{}: {}", c.id, c.seen))
        .collect()
}

#[tokio::test]
async fn the_plain_emulator_passes_every_case_within_the_announced_budget() {
    let emu = Emulated::start(&[]).await;
    let (report, planned) = emu.run().await;
    assert_eq!(
        failures(&report),
        Vec::<String>::new(),
        "{}",
        report.table()
    );
    assert_eq!(report.exit_code(), 0);
    assert!(report.quirks.is_empty(), "{:?}", report.quirks);
    // Consumption: announced before running, never exceeded, and what the device handed out.
    assert_eq!(report.planned_keys, planned);
    assert!(report.consumed_keys <= planned);
    assert_eq!(u64::from(report.consumed_keys), emu.pair.issued_keys());
    let skipped: Vec<_> = report
        .cases
        .iter()
        .filter(|c| c.outcome == Outcome::Skip)
        .map(|c| c.id)
        .collect();
    // Multicast is not advertised by the emulator; everything else runs.
    assert_eq!(skipped, ["enc-keys-multicast"], "{}", report.table());
    assert!(report.case("dec-keys-not-the-slave").unwrap().outcome == Outcome::Pass);
    // Decision cases are labelled apart from spec clauses.
    assert!(matches!(
        report.case("unknown-path-404").unwrap().basis,
        Basis::Decision(_)
    ));
    assert!(matches!(
        report.case("dec-keys-unknown").unwrap().basis,
        Basis::Spec("§6.4")
    ));
    emu.stop();
}

#[tokio::test]
async fn every_vendor_quirk_is_named_in_the_report() {
    for quirk in Quirk::ALL {
        let emu = Emulated::start(&[quirk]).await;
        let (report, _) = emu.run().await;
        assert!(
            report.quirks.contains(&quirk.name()),
            "{quirk:?} not named; quirks seen {:?}\n{}",
            report.quirks,
            report.table()
        );
        assert!(report.consumed_keys <= report.planned_keys);
        emu.stop();
    }
}

#[tokio::test]
async fn read_only_mode_consumes_nothing_and_a_budget_is_never_exceeded() {
    let emu = Emulated::start(&[]).await;
    let mut config = Config::load(&emu.config_path()).unwrap();
    config.read_only = true;
    let report = qkd_conform::run(&config, |p| assert_eq!(p.max_keys, 0))
        .await
        .unwrap();
    assert_eq!(report.consumed_keys, 0);
    assert_eq!(emu.pair.issued_keys(), 0);
    assert_eq!(
        failures(&report),
        Vec::<String>::new(),
        "{}",
        report.table()
    );
    assert!(report.case("dec-keys-unknown").unwrap().outcome == Outcome::Pass);

    config.read_only = false;
    config.max_keys = 5;
    let report = qkd_conform::run(&config, |p| assert!(p.max_keys <= 5))
        .await
        .unwrap();
    assert!(report.consumed_keys <= 5, "{}", report.table());
    assert!(emu.pair.issued_keys() <= 5);
    emu.stop();
}

#[tokio::test]
async fn the_binary_prints_a_table_or_json_and_exits_by_result() {
    let bin = env!("CARGO_BIN_EXE_qkd-conform");
    let emu = Emulated::start(&[]).await;
    let path = emu.config_path();
    let out = tokio::process::Command::new(bin)
        .arg(&path)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stderr.contains("consumes at most"), "{stderr}");
    assert!(stdout.contains("dec-keys-at-most-once"), "{stdout}");

    // A spec deviation: exit 1, and the JSON names clause, result and quirk.
    emu.pair.set_quirks([Quirk::NotFound404]);
    let out = tokio::process::Command::new(bin)
        .arg(&path)
        .arg("--json")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let case = v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "dec-keys-unknown")
        .unwrap();
    assert_eq!(case["outcome"], "fail");
    assert_eq!(case["basis"], "spec");
    assert_eq!(case["reference"], "§6.4");
    assert_eq!(case["quirk"], "not-found-404");

    // Only a decision deviates: exit 2 (capital `Keys` is tolerated by the spec's Table 11).
    emu.pair.set_quirks([Quirk::CapitalKeys]);
    let out = tokio::process::Command::new(bin)
        .arg(&path)
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A configuration error: exit 3 with the file named.
    let out = tokio::process::Command::new(bin)
        .arg(emu.dir.path().join("missing.toml"))
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
    let _ = &emu.urls;
    emu.stop();
}

#[tokio::test]
async fn malformed_and_reissued_keys_fail_spec_cases() {
    let emu = Emulated::start(&[]).await;
    for (fault, case) in [
        (Fault::WrongLength, "enc-keys-get-default"),
        (Fault::BadBase64, "enc-keys-post-empty"),
        (Fault::DuplicateId, "enc-keys-get-number-size"),
        (Fault::ReissueId, "key-ids-unique"),
    ] {
        emu.pair.set_fault(Some(fault));
        let (report, _) = emu.run().await;
        let c = report.case(case).unwrap();
        assert_eq!(c.outcome, Outcome::Fail, "{fault:?}\n{}", report.table());
        assert!(matches!(c.basis, Basis::Spec(_)));
        assert_eq!(report.exit_code(), 1);
        assert!(report.consumed_keys <= report.planned_keys);
    }
    emu.stop();
}
