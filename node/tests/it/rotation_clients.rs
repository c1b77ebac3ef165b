//! Live rotation of the client certificates a node presents elsewhere (issue 12, item 4): to its
//! SIEM collector and to its QKD devices (ETSI 014). Real processes, real mutual TLS: after
//! `qkdctl rotate certs` the SIEM connection is reopened with the new certificate, and the
//! device, restarted to trust only a new CA (a device CA roll-over), is served by the node
//! without a restart. A certificate from a CA the node does not hold is refused, naming the file.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qkd_simulator::emulator;
use qkd_testnet_pki::TestCa;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::devices::{Emu, until_device_key_flows, wait_link};
use crate::harness::Net;
use crate::operators::read_frames;
use crate::rotation::{put, qkdctl};

/// A SIEM collector that requires a client certificate from its own CA and records, per
/// connection, the certificate presented, and every message.
struct Collector {
    addr: std::net::SocketAddr,
    ca: TestCa,
    ca_file: PathBuf,
    /// The client certificate of each connection, in order.
    clients: Arc<Mutex<Vec<Vec<u8>>>>,
    messages: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    async fn start(dir: &Path) -> Self {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let ca = TestCa::new("SIEM test CA");
        let ca_file = dir.join("siem-ca.pem");
        std::fs::write(&ca_file, &ca.pem).unwrap();
        let (chain, key) = ca.device();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der(&ca.pem)).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .unwrap();
        let server = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![der(&chain)],
                rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let clients = Arc::new(Mutex::new(Vec::new()));
        let messages = Arc::new(Mutex::new(Vec::new()));
        let (c, m) = (clients.clone(), messages.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, c, m) = (acceptor.clone(), c.clone(), m.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
                    c.lock().unwrap().push(leaf);
                    read_frames(tls, &m).await;
                });
            }
        });
        Self {
            addr,
            ca,
            ca_file,
            clients,
            messages,
        }
    }
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// `qkdctl rotate certs` at node A.
async fn rotate(net: &Net) -> (bool, String) {
    qkdctl(net, "A", &["rotate", "certs"]).await
}

/// Polls `what` until it holds (bounded).
async fn until(net: &Net, what: &str, pred: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !pred() {
        assert!(Instant::now() < deadline, "never: {what}\n{}", net.log("A"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn siem_and_device_client_certificates_rotate_without_a_restart() {
    let net = Net::setup(1_000_000);
    let mut emu = Emu::start(&net).await;
    emu.attach(&net);
    let siem = Collector::start(&net.path()).await;
    let dir = net.path().join("siem");
    std::fs::create_dir_all(&dir).unwrap();
    let (siem_cert, siem_key) = (dir.join("client.crt"), dir.join("client.key"));
    let (first, first_key) = siem.ca.client("A");
    put(&siem_cert, &siem_key, &first, &first_key);
    net.edit_config("A", |t| {
        let audit: toml::Table = toml::from_str(&format!(
            "[siem]\naddress = \"{}\"\nserver_name = \"localhost\"\nca = \"{}\"\n\
             client_cert = \"{}\"\nclient_key = \"{}\"\n",
            siem.addr,
            siem.ca_file.display(),
            siem_cert.display(),
            siem_key.display()
        ))
        .unwrap();
        t.insert("audit".into(), toml::Value::Table(audit));
    });
    net.start("A");
    net.start("B");
    let mut seen = HashSet::new();
    until_device_key_flows(&net, &emu, 0, &mut seen).await;
    let clients = siem.clients.clone();
    until(
        &net,
        "the SIEM connection with the first certificate",
        || clients.lock().unwrap().first() == Some(&der(&first).to_vec()),
    )
    .await;

    // A device certificate from a CA the node does not hold: refused, naming the file, and
    // nothing changes (the SIEM keeps its one connection).
    let devices = net.path().join("devices");
    let (dev_cert, dev_key) = (devices.join("node-A.crt"), devices.join("node-A.key"));
    let (old_dev, old_dev_key) = (
        std::fs::read_to_string(&dev_cert).unwrap(),
        std::fs::read_to_string(&dev_key).unwrap(),
    );
    let (stranger, stranger_key) = TestCa::new("another CA").client("node-A");
    put(&dev_cert, &dev_key, &stranger, &stranger_key);
    let (ok, out) = rotate(&net).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("409")
            && out.contains("nothing was changed")
            && out.contains("link A-B device")
            && out.contains(&dev_cert.display().to_string())
            && out.contains("does not chain to a CA in"),
        "{out}"
    );
    put(&dev_cert, &dev_key, &old_dev, &old_dev_key);
    assert_eq!(siem.clients.lock().unwrap().len(), 1);

    // A device CA roll-over and a new SIEM client certificate: the new device CA is added to
    // the device CA file, the node's device certificate is issued by it, and both rotate.
    let new_ca = TestCa::new("device CA 2");
    let old_ca = std::fs::read_to_string(devices.join("ca.pem")).unwrap();
    std::fs::write(devices.join("ca.pem"), format!("{old_ca}{}", new_ca.pem)).unwrap();
    let (next_dev, next_dev_key) = new_ca.client("node-A");
    put(&dev_cert, &dev_key, &next_dev, &next_dev_key);
    let (second, second_key) = siem.ca.client("A");
    put(&siem_cert, &siem_key, &second, &second_key);
    let (ok, out) = rotate(&net).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("[audit.siem] (") && out.contains("link A-B device ("),
        "{out}"
    );

    // The SIEM connection is reopened with the new certificate, and the rotation's own audit
    // record reaches the collector.
    until(&net, "a SIEM connection with the new certificate", || {
        clients.lock().unwrap().last() == Some(&der(&second).to_vec())
    })
    .await;
    let messages = siem.messages.clone();
    until(&net, "the rotation's record at the SIEM", || {
        messages
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.contains("\"rotate_certs\"") && m.contains("\"applied\""))
    })
    .await;
    assert!(
        clients
            .lock()
            .unwrap()
            .iter()
            .all(|c| *c == der(&first).to_vec() || *c == der(&second).to_vec())
    );

    // A's device now trusts only the new CA and presents a certificate from it: key flows again
    // only if the node presents its new certificate (and trusts the new CA).
    let url = emu.source(0)["url"].as_str().unwrap().to_owned();
    let addr: std::net::SocketAddr = url.trim_start_matches("https://").parse().unwrap();
    emu.devices[0].stop().await;
    wait_link(&net, "A", "down", |s| s["state"] == "down").await;
    let (chain, key) = new_ca.device();
    let tls =
        emulator::server_tls(chain.as_bytes(), key.as_bytes(), new_ca.pem.as_bytes()).unwrap();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let device = tokio::spawn(emulator::run(listener, tls, emu.pair.clone(), 0, async {
        let _ = stopped.await;
    }));
    wait_link(&net, "A", "up", |s| s["state"] == "up").await;
    let issued = emu.pair.issued_keys();
    until_device_key_flows(&net, &emu, issued, &mut seen).await;

    let _ = stop.send(());
    device.await.unwrap().unwrap();
    emu.devices[1].stop().await;
}
