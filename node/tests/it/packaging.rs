//! `packaging/`: the systemd unit keeps its hardening, and the sample production configuration
//! passes every offline check of `qkd-node check` against a throw-away PKI at its own paths.

use std::path::{Path, PathBuf};
use std::process::Command;

use qkd_kms::hybrid::NodeSigningKey;
use qkd_kms::pki::DemoPki;
use qkd_testnet_pki::TestCa;
use qkd_types::NodeId;

use crate::harness::BIN;

fn packaging(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging")
        .join(file)
}

fn read(file: &str) -> String {
    let path = packaging(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `key=value` lines of one section of a unit file, in order (comments and blank lines
/// dropped; a key may repeat, as systemd allows).
fn unit_section(text: &str, section: &str) -> Vec<(String, String)> {
    let mut current = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_owned();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a key=value line in [{current}]: {line}"));
        if current == section {
            out.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    out
}

/// The sample configuration's `data_dir`.
const DATA_DIR: &str = "/var/lib/qkd-node";
/// Where the sample configuration is installed (the unit's `--config`).
const CONFIG: &str = "/etc/qkd/node.toml";

#[test]
fn the_systemd_unit_keeps_its_hardening() {
    let unit = read("systemd/qkd-node.service");
    let service = unit_section(&unit, "Service");
    let values = |key: &str| -> Vec<&str> {
        service
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    for (key, want) in [
        ("User", "qkd"),
        ("Group", "qkd"),
        ("LimitCORE", "0"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
        ("NoNewPrivileges", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
        ("CapabilityBoundingSet", ""),
        ("StateDirectory", "qkd-node"),
        ("StateDirectoryMode", "0700"),
        ("UMask", "0077"),
        ("ReadWritePaths", DATA_DIR),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
    ] {
        assert_eq!(values(key), [want], "{key}= in [Service]");
    }
    assert_eq!(
        values("SystemCallFilter").first(),
        Some(&"@system-service"),
        "the allow list comes first"
    );
    assert!(
        values("LimitMEMLOCK").len() == 1,
        "memory locking is allowed by LimitMEMLOCK="
    );
    // CAP_IPC_LOCK only if the code locks memory: it does not (SECURITY.md), so the unit must not
    // grant a capability nobody uses.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let locks = ["types/src", "kms/src", "node/src", "hardware/src"]
        .iter()
        .any(|dir| tree_calls(&root.join(dir), &["mlock(", "mlockall("]));
    let grants = service.iter().any(|(_, v)| v.contains("CAP_IPC_LOCK"));
    assert_eq!(
        grants, locks,
        "grant CAP_IPC_LOCK exactly when the code calls mlock or mlockall"
    );
    let exec = values("ExecStart");
    assert_eq!(exec.len(), 1);
    assert!(
        exec[0].ends_with(&format!("qkd-node run --config {CONFIG}")),
        "{}",
        exec[0]
    );

    // The dedicated user cannot log in; the data directory is the node's alone.
    let users = read("systemd/qkd-node.sysusers.conf");
    let user: Vec<&str> = users
        .lines()
        .find(|l| l.starts_with("u "))
        .expect("a `u` line")
        .split_whitespace()
        .collect();
    assert_eq!(user[1], "qkd");
    assert_eq!(user.last(), Some(&"/usr/sbin/nologin"));
    let tmpfiles = read("systemd/qkd-node.tmpfiles.conf");
    assert!(
        tmpfiles.lines().any(|l| {
            l.split_whitespace().collect::<Vec<_>>() == ["d", DATA_DIR, "0700", "qkd", "qkd", "-"]
        }),
        "{tmpfiles}"
    );
}

/// Whether any `.rs` file under `dir` contains one of `calls`.
fn tree_calls(dir: &Path, calls: &[&str]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|entry| {
        let p = entry.unwrap().path();
        if p.is_dir() {
            tree_calls(&p, calls)
        } else {
            p.extension().is_some_and(|e| e == "rs") && {
                let text = std::fs::read_to_string(&p).unwrap();
                calls.iter().any(|c| text.contains(c))
            }
        }
    })
}

#[test]
fn the_sample_configuration_passes_every_offline_check() {
    let text = read("node.example.toml");
    assert!(text.contains(&format!("data_dir = \"{DATA_DIR}\"")));
    // Every absolute path is under /etc/qkd or the data directory.
    for quoted in text.split('"').skip(1).step_by(2) {
        if quoted.starts_with('/') {
            assert!(
                quoted.starts_with("/etc/qkd/") || quoted.starts_with(DATA_DIR),
                "{quoted} is outside /etc/qkd and {DATA_DIR}"
            );
        }
    }

    // The same layout in a temporary root, with a throw-away PKI at every path it names.
    let root = tempfile::tempdir().unwrap();
    let etc = root.path().join("etc/qkd");
    let data = root.path().join("var/lib/qkd-node");
    let local = text
        .replace("/etc/qkd/", &format!("{}/", etc.display()))
        .replace(DATA_DIR, &data.display().to_string());
    let put = |rel: &str, contents: &[u8]| {
        let p = etc.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, contents).unwrap();
    };

    let pki = DemoPki::create(&root.path().join("pki")).unwrap();
    let node = pki
        .issue_node(&NodeId::parse("B").unwrap(), "10.0.0.2".parse().unwrap())
        .unwrap();
    put("tls/node.crt", &std::fs::read(&node.cert).unwrap());
    put("tls/node.key", &std::fs::read(&node.key).unwrap());
    put("tls/ca.pem", &std::fs::read(pki.ca_cert()).unwrap());
    put(
        "tls/operators-ca.pem",
        TestCa::new("operators CA").pem.as_bytes(),
    );
    let vendor = TestCa::new("QKD vendor CA");
    put("devices/vendor-ca.pem", vendor.pem.as_bytes());
    for (link, sae) in [("A-B", "node-b-west"), ("B-C", "node-b-east")] {
        let (cert, key) = vendor.client(sae);
        put(&format!("devices/{link}.crt"), cert.as_bytes());
        put(&format!("devices/{link}.key"), key.as_bytes());
    }
    let siem = TestCa::new("SIEM CA");
    put("siem/ca.pem", siem.pem.as_bytes());
    let (cert, key) = siem.client("B");
    put("siem/client.crt", cert.as_bytes());
    put("siem/client.key", key.as_bytes());
    for peer in ["A", "C"] {
        let signing = NodeSigningKey::generate(&mut rand::rng()).unwrap();
        put(
            &format!("peers/{peer}.pub"),
            hex::encode(signing.public_key().to_bytes()).as_bytes(),
        );
    }
    put("node.toml", local.as_bytes());

    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(etc.join("node.toml"))
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    for expected in [
        "OK (node B, 2 links, 3 SAEs",
        "forwarded to siem.example:6514 over TLS",
        "metrics at /metrics",
        "control listener on 127.0.0.1:9200",
    ] {
        assert!(report.contains(expected), "{expected} not in:\n{report}");
    }
    assert!(!data.exists(), "check never creates the data directory");
}
