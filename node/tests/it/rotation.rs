//! Rotation without downtime (issue 12, item 4): `qkdctl rotate certs` and `qkdctl rotate kek`
//! against a live 3-node network while clients keep fetching keys with ample key available:
//! every request is answered 200, new TLS handshakes present the new certificate, and keys
//! delivered before and after a KEK rotation are intact at both ends.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use qkd_kms::tls::TlsFiles;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};

use crate::harness::{Net, keys};

const QKDCTL: &str = env!("CARGO_BIN_EXE_qkdctl");

/// `qkdctl <args> --config <node.toml> --cert/--key operator-demo`, off the runtime's threads.
pub(crate) async fn qkdctl(net: &Net, node: &str, args: &[&str]) -> (bool, String) {
    let pki = net.path().join("pki");
    let mut cmd = Command::new(QKDCTL);
    cmd.args(args)
        .arg("--config")
        .arg(net.path().join(node).join("node.toml"))
        .arg("--cert")
        .arg(pki.join("operator-demo.crt"))
        .arg("--key")
        .arg(pki.join("operator-demo.key"));
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The node's `[tls]` certificate and key files.
pub(crate) fn node_files(net: &Net, node: &str) -> (PathBuf, PathBuf) {
    let dir = net.path().join(node);
    let cfg: toml::Table = std::fs::read_to_string(dir.join("node.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let file = |k: &str| dir.join(cfg["tls"][k].as_str().unwrap());
    (file("cert"), file("key"))
}

/// A certificate for `node` from the demo CA (its key in `pki/ca.key`), valid until `year`.
fn issue_node(net: &Net, node: &str, year: i32) -> (String, String) {
    issue_node_named(
        net,
        node,
        year,
        vec![
            SanType::DnsName("localhost".try_into().unwrap()),
            SanType::IpAddress([127, 0, 0, 1].into()),
        ],
    )
}

/// [`issue_node`] with these DNS and IP names (and the `urn:qkd:node:` URI SAN).
pub(crate) fn issue_node_named(
    net: &Net,
    node: &str,
    year: i32,
    mut names: Vec<SanType>,
) -> (String, String) {
    let pki = net.path().join("pki");
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(pki.join("ca.key")).unwrap()).unwrap();
    // The demo CA's name and constraints (qkd_kms::pki): the issuer needs its name and key.
    let mut ca = CertificateParams::default();
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "QKD stack demo CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let issuer = Issuer::new(ca, ca_key);
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, node);
    names.push(SanType::URI(
        format!("urn:qkd:node:{node}").try_into().unwrap(),
    ));
    p.subject_alt_names = names;
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.use_authority_key_identifier_extension = true;
    p.not_after = rcgen::date_time_ymd(year, 1, 1);
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Puts a certificate and key in place the way the runbook says: written beside, then moved.
pub(crate) fn put(cert_path: &Path, key_path: &Path, cert: &str, key: &str) {
    let tmp = |p: &Path| PathBuf::from(format!("{}.new", p.display()));
    std::fs::write(tmp(cert_path), cert).unwrap();
    std::fs::write(tmp(key_path), key).unwrap();
    std::fs::rename(tmp(cert_path), cert_path).unwrap();
    std::fs::rename(tmp(key_path), key_path).unwrap();
}

/// The certificate a new TLS handshake with `addr` presents, as `client` (TLS files of an SAE
/// or a node) with the given configuration.
async fn served(addr: SocketAddr, cfg: rustls::ClientConfig) -> Vec<u8> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let conn = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    let leaf: &CertificateDer<'_> = &conn.get_ref().1.peer_certificates().unwrap()[0];
    leaf.to_vec()
}

fn files(net: &Net, name: &str) -> TlsFiles {
    let pki = net.path().join("pki");
    TlsFiles {
        cert_chain: pki.join(format!("{name}.crt")),
        key: pki.join(format!("{name}.key")),
        ca: pki.join("ca.crt"),
    }
}

fn der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// The KEK files of a node.
fn kek_files(net: &Net, node: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(net.path().join(node).join("data").join("keys"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("kek-"))
        .collect();
    v.sort();
    v
}

/// Fetches keys for ENC-A1 -> ENC-B1 until `stop`, each answered 200: through the client's
/// pooled connections and, every other request, a fresh client (a new TLS handshake). Returns
/// the keys fetched.
async fn fetch_until(net: &Net, stop: &AtomicBool) -> Vec<(String, Vec<u8>)> {
    let mut got = Vec::new();
    let mut i = 0u32;
    while !stop.load(Ordering::SeqCst) || i < 4 {
        let (code, body) = if i.is_multiple_of(2) {
            net.call("ENC-A1", "ENC-B1/enc_keys?number=2", None).await
        } else {
            let c = net.sae_client("ENC-A1").unwrap();
            let r = c
                .get(format!("{}ENC-B1/enc_keys?number=2", net.base("A")))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json().await.unwrap())
        };
        assert_eq!(code, 200, "request {i}: {body}");
        got.extend(keys(&body));
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    got
}

/// The slave fetches `fetched` by ID at its node: the same bytes.
async fn slave_agrees(net: &Net, fetched: &[(String, Vec<u8>)]) {
    for chunk in fetched.chunks(16) {
        let ids: Vec<Value> = chunk.iter().map(|(id, _)| json!({"key_ID": id})).collect();
        let (code, body) = net
            .call("ENC-B1", "ENC-A1/dec_keys", Some(json!({"key_IDs": ids})))
            .await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(keys(&body), chunk, "the slave got other bytes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_and_the_kek_rotate_while_keys_are_fetched() {
    let net = Net::setup_topology("triangle", 1_000_000);
    for n in ["A", "B", "C"] {
        net.start(n);
    }
    net.wait_for_keys("ENC-A1", "ENC-B1", 200).await;
    let listen = net.listen("A");
    let sae = || qkd_kms::tls::client_config(&files(&net, "sae-ENC-A1")).unwrap();
    let node_b = || qkd_kms::tls::peer_client_config(&files(&net, "node-B")).unwrap();
    let (cert_path, key_path) = node_files(&net, "A");
    let old_cert = std::fs::read_to_string(&cert_path).unwrap();
    let old_key = std::fs::read_to_string(&key_path).unwrap();
    assert_eq!(served(listen.etsi, sae()).await, der(&old_cert));

    // Refused, naming the file and changing nothing: another node's certificate, an expired
    // one, a key that does not match.
    let b_cert = std::fs::read_to_string(net.path().join("pki/node-B.crt")).unwrap();
    let b_key = std::fs::read_to_string(net.path().join("pki/node-B.key")).unwrap();
    let (expired, expired_key) = issue_node(&net, "A", 2001);
    let (next, next_key) = issue_node(&net, "A", 2040);
    // A certificate for A from a CA that is not in A's CA file.
    let other = tempfile::tempdir().unwrap();
    let stranger = qkd_kms::pki::DemoPki::create(other.path())
        .unwrap()
        .issue_node(
            &qkd_types::NodeId::parse("A").unwrap(),
            [127, 0, 0, 1].into(),
        )
        .unwrap();
    let stranger = (
        std::fs::read_to_string(&stranger.cert).unwrap(),
        std::fs::read_to_string(&stranger.key).unwrap(),
    );
    for (cert, key, why) in [
        (&b_cert, &b_key, "names node B"),
        (&expired, &expired_key, "the certificate expired"),
        (&next, &old_key, "KeyMismatch"),
        (&stranger.0, &stranger.1, "does not chain to a CA in"),
    ] {
        put(&cert_path, &key_path, cert, key);
        let (ok, out) = qkdctl(&net, "A", &["rotate", "certs"]).await;
        assert!(!ok, "{out}");
        assert!(
            out.contains("409") && out.contains(why) && out.contains("nothing was changed"),
            "{out}"
        );
        assert_eq!(served(listen.etsi, sae()).await, der(&old_cert));
    }
    put(&cert_path, &key_path, &old_cert, &old_key);

    // A good certificate, moved into place while keys are fetched.
    let stop = AtomicBool::new(false);
    let rotate = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        put(&cert_path, &key_path, &next, &next_key);
        let r = qkdctl(&net, "A", &["rotate", "certs"]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::SeqCst);
        r
    };
    let (fetched, (ok, out)) = tokio::join!(fetch_until(&net, &stop), rotate);
    assert!(ok, "{out}");
    assert!(out.starts_with("applied: new TLS handshakes"), "{out}");
    assert!(fetched.len() >= 8, "{}", fetched.len());
    slave_agrees(&net, &fetched).await;
    // New handshakes at the ETSI 014, peer and control ports present the new certificate.
    assert_eq!(served(listen.etsi, sae()).await, der(&next));
    assert_eq!(served(listen.peer, node_b()).await, der(&next));
    let operator = qkd_kms::tls::client_config(&files(&net, "operator-demo")).unwrap();
    assert_eq!(served(listen.control.unwrap(), operator).await, der(&next));
    // The certificate_expiry watch has the new end of validity (2040-01-01).
    let metrics = reqwest::get(format!("http://{}/metrics", listen.admin.unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let expiry: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("qkd_certificate_expiry_timestamp_seconds{certificate=\"tls.cert\"} ")
        })
        .expect("the tls.cert expiry metric")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(expiry, 2_208_988_800.0, "2040-01-01T00:00:00Z");

    // KEK rotation at both ends of A-B while keys are fetched: the master's pool and the
    // slave's waiting keys are re-encrypted into the new epoch; the old KEK files go.
    let before = (kek_files(&net, "A"), kek_files(&net, "B"));
    assert_eq!((before.0.len(), before.1.len()), (1, 1), "{before:?}");
    let early = fetch_until(&net, &AtomicBool::new(true)).await;
    let stop = AtomicBool::new(false);
    let rotate = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let a = qkdctl(&net, "A", &["rotate", "kek"]).await;
        let b = qkdctl(&net, "B", &["rotate", "kek"]).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.store(true, Ordering::SeqCst);
        (a, b)
    };
    let (during, ((ok_a, out_a), (ok_b, out_b))) = tokio::join!(fetch_until(&net, &stop), rotate);
    assert!(ok_a && ok_b, "{out_a}{out_b}");
    assert!(out_a.starts_with("applied: data-key epoch"), "{out_a}");
    for (node, was) in [("A", &before.0), ("B", &before.1)] {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let now = kek_files(&net, node);
            if now.len() == 1 && now != *was {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{node}: the old KEK file stays: {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let after = fetch_until(&net, &AtomicBool::new(true)).await;
    slave_agrees(&net, &early).await;
    slave_agrees(&net, &during).await;
    slave_agrees(&net, &after).await;

    // Both are audited.
    let want: Vec<(String, String)> = [
        ("rotate_certs", "refused"),
        ("rotate_certs", "refused"),
        ("rotate_certs", "refused"),
        ("rotate_certs", "refused"),
        ("rotate_certs", "applied"),
        ("rotate_kek", "applied"),
    ]
    .iter()
    .map(|(a, o)| (a.to_string(), o.to_string()))
    .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log =
            std::fs::read_to_string(net.path().join("A").join("data").join("audit.log")).unwrap();
        let actions: Vec<(String, String)> = log
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| r["event"] == "control_action")
            .map(|r| {
                (
                    r["action"].as_str().unwrap().to_owned(),
                    r["outcome"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        if actions.len() >= want.len() || Instant::now() > deadline {
            assert_eq!(actions, want);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
