use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use qkd_hardware::etsi014::{DeviceConfig, DeviceLimits, Etsi014Source, PemSource, StatusMetrics};
use qkd_hardware::{
    DeviceError, DeviceFault, DeviceOp, KeySource, LinkRole, LinkState, TlsFailure,
};
use qkd_testnet_pki::TestCa;
use qkd_types::{KmeId, SaeId};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How the device misbehaves once asked for keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Misbehaviour {
    /// A 200 whose chunked body never ends.
    EndlessBody,
    /// A 200 announcing a terabyte body.
    HugeContentLength,
    /// Never answers.
    Silent,
    /// A 200 with HTML instead of a key container.
    NotJson,
}

/// The hostile device: serves connections until dropped; counts body bytes it managed to send.
struct Hostile {
    url: String,
    sent: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const STATUS: &str = r#"{"source_KME_ID":"KME-T","target_KME_ID":"KME-U","master_SAE_ID":"node-a","slave_SAE_ID":"node-b","key_size":256,"stored_key_count":1000,"max_key_count":1000,"max_key_per_request":8,"max_key_size":256,"min_key_size":256,"max_SAE_ID_count":0}"#;

async fn hostile(server: &TestCa, clients: &TestCa, how: Misbehaviour) -> Hostile {
    let (chain, key) = server.device();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(clients.pem.as_bytes()).unwrap())
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            CertificateDer::pem_slice_iter(chain.as_bytes())
                .map(Result::unwrap)
                .collect(),
            PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let task = tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if tls.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_lowercase();
                if head.contains("/status") {
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{STATUS}",
                        STATUS.len()
                    );
                    let _ = tls.write_all(answer.as_bytes()).await;
                    let _ = tls.shutdown().await;
                    return;
                }
                match how {
                    Misbehaviour::EndlessBody => {
                        let _ = tls
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
                            .await;
                        let chunk = format!("10000\r\n{}\r\n", " ".repeat(0x10000));
                        // Until the client hangs up.
                        while tls.write_all(chunk.as_bytes()).await.is_ok() {
                            counter.fetch_add(0x10000, Ordering::Relaxed);
                        }
                    }
                    Misbehaviour::HugeContentLength => {
                        let _ = tls
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000000000000\r\n\r\n{\"keys\":[")
                            .await;
                        // Keep the connection open: the client must not wait for the body.
                        let mut sink = [0u8; 64];
                        while tls.read(&mut sink).await.unwrap_or(0) > 0 {}
                    }
                    Misbehaviour::Silent => {
                        let mut sink = [0u8; 64];
                        while tls.read(&mut sink).await.unwrap_or(0) > 0 {}
                    }
                    Misbehaviour::NotJson => {
                        let page = "<html><body>keys</body></html>";
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                            page.len()
                        );
                        let _ = tls.write_all(answer.as_bytes()).await;
                        let _ = tls.shutdown().await;
                    }
                }
            });
        }
    });
    Hostile { url, sent, task }
}

fn config(url: &str, trust: &TestCa, client: &TestCa) -> DeviceConfig {
    let (chain, key) = client.client("node-a");
    DeviceConfig {
        url: url.into(),
        ca: PemSource::Pem(trust.pem.clone()),
        client_cert: PemSource::Pem(chain),
        client_key: PemSource::Pem(key),
        expected_kme_id: KmeId::parse("KME-T").unwrap(),
        sae_id: SaeId::parse("node-a").unwrap(),
        peer_sae_id: SaeId::parse("node-b").unwrap(),
        server_name: None,
        key_bits: None,
        allow_tls12: false,
        status_metrics: StatusMetrics::default(),
        limits: DeviceLimits {
            attempts: 1,
            max_body_bytes: 1 << 20,
            ..DeviceLimits::default()
        },
    }
}

fn fault(r: Result<Vec<qkd_hardware::KeyBlock>, DeviceError>) -> DeviceFault {
    match r {
        Err(DeviceError::Device(f)) => f,
        other => panic!("expected a device fault, got {other:?}"),
    }
}

#[tokio::test]
async fn an_endless_body_is_cut_at_the_cap() {
    let pki = TestCa::new("device CA");
    let device = hostile(&pki, &pki, Misbehaviour::EndlessBody).await;
    let source = Etsi014Source::new(config(&device.url, &pki, &pki), LinkRole::Master).unwrap();
    let f = fault(source.next_blocks(4).await);
    assert_eq!(
        f,
        DeviceFault::BodyTooLarge {
            op: DeviceOp::EncKeys,
            limit: 1 << 20
        }
    );
    // The device got to send about the cap, not without bound (TCP and TLS buffers aside).
    assert!(device.sent.load(Ordering::Relaxed) < 64 << 20);
    assert!(matches!(
        source.status().await.state,
        LinkState::Down { .. }
    ));
}

#[tokio::test]
async fn a_huge_announced_body_is_refused_without_reading_it() {
    let pki = TestCa::new("device CA");
    let device = hostile(&pki, &pki, Misbehaviour::HugeContentLength).await;
    let source = Etsi014Source::new(config(&device.url, &pki, &pki), LinkRole::Master).unwrap();
    let f = fault(source.next_blocks(4).await);
    assert!(matches!(f, DeviceFault::BodyTooLarge { .. }), "{f}");
}

#[tokio::test]
async fn a_silent_device_times_out_and_a_page_is_malformed() {
    let pki = TestCa::new("device CA");
    let device = hostile(&pki, &pki, Misbehaviour::Silent).await;
    let mut cfg = config(&device.url, &pki, &pki);
    cfg.limits.request_timeout_ms = 300;
    let source = Etsi014Source::new(cfg, LinkRole::Master).unwrap();
    let f = fault(source.next_blocks(4).await);
    assert_eq!(
        f,
        DeviceFault::Timeout {
            op: DeviceOp::EncKeys
        }
    );
    assert_eq!(f.culprit(), qkd_hardware::Culprit::Network);

    let device = hostile(&pki, &pki, Misbehaviour::NotJson).await;
    let source = Etsi014Source::new(config(&device.url, &pki, &pki), LinkRole::Master).unwrap();
    let f = fault(source.next_blocks(4).await);
    assert!(
        matches!(
            f,
            DeviceFault::Malformed {
                op: DeviceOp::EncKeys,
                category: "syntax",
                ..
            }
        ),
        "{f}"
    );
    // The message says where, never what (the answer may hold key text).
    assert!(!f.to_string().contains("html"), "{f}");
}

#[tokio::test]
async fn transport_and_tls_failures_say_which() {
    let pki = TestCa::new("device CA");
    let stranger = TestCa::new("another CA");
    // Nobody listening: refused.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", closed.local_addr().unwrap());
    drop(closed);
    let source = Etsi014Source::new(config(&url, &pki, &pki), LinkRole::Master).unwrap();
    let f = fault(source.next_blocks(1).await);
    assert!(
        matches!(
            f,
            DeviceFault::Unreachable {
                op: DeviceOp::Status,
                ..
            }
        ),
        "{f}"
    );

    // A device whose certificate our CA did not issue.
    let device = hostile(&stranger, &pki, Misbehaviour::NotJson).await;
    let source = Etsi014Source::new(config(&device.url, &pki, &pki), LinkRole::Master).unwrap();
    let f = fault(source.next_blocks(1).await);
    assert_eq!(
        f,
        DeviceFault::Tls {
            op: DeviceOp::Status,
            failure: TlsFailure::UntrustedCertificate
        }
    );
    assert_eq!(f.culprit(), qkd_hardware::Culprit::Operator);

    // A device that does not accept this node's certificate.
    let device = hostile(&pki, &pki, Misbehaviour::NotJson).await;
    let source =
        Etsi014Source::new(config(&device.url, &pki, &stranger), LinkRole::Master).unwrap();
    let f = fault(source.next_blocks(1).await);
    assert_eq!(
        f,
        DeviceFault::Tls {
            op: DeviceOp::Status,
            failure: TlsFailure::ClientRefused
        },
        "{f}"
    );
}

#[tokio::test]
async fn a_device_naming_this_node_as_another_sae_gets_no_key_request() {
    let pki = TestCa::new("device CA");
    // Were the key request made, its answer (an HTML page) would be a `Malformed` fault.
    let device = hostile(&pki, &pki, Misbehaviour::NotJson).await;
    let mut cfg = config(&device.url, &pki, &pki);
    cfg.sae_id = SaeId::parse("node-x").unwrap();
    let source = Etsi014Source::new(cfg, LinkRole::Master).unwrap();
    for _ in 0..2 {
        let f = fault(source.next_blocks(1).await);
        assert!(
            matches!(&f, DeviceFault::SaeMismatch { reported, .. } if reported == "node-a"),
            "{f}"
        );
        assert_eq!(f.culprit(), qkd_hardware::Culprit::Operator);
    }
    assert!(matches!(
        source.status().await.state,
        LinkState::Down { .. }
    ));
}
