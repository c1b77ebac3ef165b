//! Two trusted nodes as real processes: keys agree across nodes, concurrent load from both ends
//! never delivers a key twice, and SIGKILL during load loses no answered key and duplicates none.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;

use crate::harness::{Net, POOL, keys};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enc_at_a_then_dec_at_b_returns_identical_bytes_both_directions() {
    let net = Net::setup(20_000_000);
    net.start("A");
    net.start("B");
    net.wait_for_keys("ENC-A1", "ENC-B1", POOL).await;
    net.wait_for_keys("ENC-B1", "ENC-A1", POOL).await;

    // GET form, A's SAE is master.
    let (code, body) = net
        .call("ENC-A1", "ENC-B1/enc_keys?number=2&size=512", None)
        .await;
    assert_eq!(code, 200, "{body}");
    let got = keys(&body);
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|(_, k)| k.len() == 64));
    let ids: Vec<_> = got.iter().map(|(id, _)| json!({ "key_ID": id })).collect();
    let (code, back) = net
        .call("ENC-B1", "ENC-A1/dec_keys", Some(json!({ "key_IDs": ids })))
        .await;
    assert_eq!(code, 200, "{back}");
    assert_eq!(keys(&back), got);
    // Second fetch: gone.
    let (code, again) = net
        .call(
            "ENC-B1",
            &format!("ENC-A1/dec_keys?key_ID={}", got[0].0),
            None,
        )
        .await;
    assert_eq!(code, 400);
    assert_eq!(
        again["message"],
        "one or more keys specified are not found on KME"
    );

    // POST form, B's SAE is master (B does not allocate the link: it asks A).
    let (code, body) = net
        .call("ENC-B1", "ENC-A1/enc_keys", Some(json!({ "number": 3 })))
        .await;
    assert_eq!(code, 200, "{body}");
    let got = keys(&body);
    assert_eq!(got.len(), 3);
    for (id, k) in &got {
        let (code, back) = net
            .call("ENC-A1", &format!("ENC-B1/dec_keys?key_ID={id}"), None)
            .await;
        assert_eq!(code, 200, "{back}");
        assert_eq!(&keys(&back)[0].1, k);
    }

    // Pairing policy: ENC-A2 may not pair with ENC-B1; a third SAE cannot take B1's key.
    assert_eq!(net.call("ENC-A2", "ENC-B1/enc_keys", None).await.0, 401);
    let (_, body) = net.call("ENC-A1", "ENC-B1/enc_keys", None).await;
    let id = &keys(&body)[0].0;
    assert_eq!(
        net.call("ENC-B2", &format!("ENC-A1/dec_keys?key_ID={id}"), None)
            .await
            .0,
        401
    );
    assert_eq!(
        net.call("ENC-B1", &format!("ENC-A1/dec_keys?key_ID={id}"), None)
            .await
            .0,
        200
    );
}

/// Runs `rounds` of enc_keys at the master's node followed by dec_keys at the slave's node;
/// returns every delivered (key_ID, bytes) seen by the master and checks the slave got the same.
async fn load(
    net: Arc<Net>,
    master: &'static str,
    slave: &'static str,
    rounds: usize,
) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for _ in 0..rounds {
        let (code, body) = net
            .call(master, &format!("{slave}/enc_keys?number=4&size=256"), None)
            .await;
        if code != 200 {
            continue;
        }
        let got = keys(&body);
        let ids: Vec<_> = got.iter().map(|(id, _)| json!({ "key_ID": id })).collect();
        let (code, back) = net
            .call(
                slave,
                &format!("{master}/dec_keys"),
                Some(json!({ "key_IDs": ids })),
            )
            .await;
        assert_eq!(code, 200, "slave could not fetch answered keys: {back}");
        assert_eq!(keys(&back), got, "slave got other bytes than master");
        out.extend(got);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_load_from_both_ends_never_delivers_a_key_twice() {
    let net = Net::setup(50_000_000);
    net.start("A");
    net.start("B");
    net.wait_for_keys("ENC-A1", "ENC-B1", POOL).await;
    net.wait_for_keys("ENC-B1", "ENC-A1", POOL).await;
    let net = Arc::new(net);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (m, s) = match i % 4 {
            0 => ("ENC-A1", "ENC-B1"),
            1 => ("ENC-B1", "ENC-A1"),
            2 => ("ENC-A2", "ENC-B2"),
            _ => ("ENC-B2", "ENC-A2"),
        };
        tasks.push(tokio::spawn(load(net.clone(), m, s, 25)));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert!(
        all.len() >= 16 * 25 * 4 * 9 / 10,
        "too few keys delivered: {}",
        all.len()
    );
    let ids: HashSet<_> = all.iter().map(|(id, _)| id.clone()).collect();
    let bytes: HashSet<_> = all.iter().map(|(_, k)| k.clone()).collect();
    assert_eq!(ids.len(), all.len(), "a key_ID was delivered twice");
    assert_eq!(bytes.len(), all.len(), "link key was used for two keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_load_loses_no_answered_key_and_duplicates_none() {
    let net = Net::setup(50_000_000);
    net.start("A");
    net.start("B");
    net.wait_for_keys("ENC-A1", "ENC-B1", POOL).await;
    net.wait_for_keys("ENC-B1", "ENC-A1", POOL).await;
    let net = Arc::new(net);
    let mut seen: HashMap<String, Vec<u8>> = HashMap::new();
    for victim in ["B", "A"] {
        let answers = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let net = net.clone();
                let answers = answers.clone();
                tokio::spawn(async move {
                    let (m, s) = if i % 2 == 0 {
                        ("ENC-A1", "ENC-B1")
                    } else {
                        ("ENC-B1", "ENC-A1")
                    };
                    let mut got = Vec::new();
                    for _ in 0..60 {
                        let (code, body) =
                            net.call(m, &format!("{s}/enc_keys?number=2"), None).await;
                        if code == 200 {
                            answers.fetch_add(1, Ordering::SeqCst);
                            got.extend(keys(&body).into_iter().map(|k| (m, s, k)));
                        }
                    }
                    got
                })
            })
            .collect();
        // Kill the victim once the load is well under way.
        while answers.load(Ordering::SeqCst) < 40 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let before = net.listen(victim);
        net.kill9(victim);
        let mut answered = Vec::new();
        for t in tasks {
            answered.extend(t.await.unwrap());
        }
        net.start(victim);
        let after = net.listen(victim);
        assert_eq!(
            (before.etsi, before.peer),
            (after.etsi, after.peer),
            "a restarted node moved"
        );
        assert!(answered.len() >= 80);
        // Every answered key is fetchable once by its slave, with the same bytes; none twice.
        for (m, s, (id, k)) in &answered {
            assert!(
                seen.insert(id.clone(), k.clone()).is_none(),
                "key_ID answered twice"
            );
            let (code, back) = net
                .call(s, &format!("{m}/dec_keys?key_ID={id}"), None)
                .await;
            assert_eq!(
                code, 200,
                "answered key lost after killing {victim}: {back}"
            );
            assert_eq!(&keys(&back)[0].1, k, "slave got other bytes");
            let (code, _) = net
                .call(s, &format!("{m}/dec_keys?key_ID={id}"), None)
                .await;
            assert_eq!(code, 400, "key delivered twice to its slave");
        }
    }
    let distinct: HashSet<_> = seen.values().collect();
    assert_eq!(distinct.len(), seen.len(), "link key reused across keys");
}

/// Opens a TLS 1.3 connection to a node's peer port offering only `groups`, presenting node
/// A's certificate; returns the negotiated group or the handshake error.
async fn peer_handshake(
    net: &Net,
    groups: Vec<&'static dyn rustls::crypto::SupportedKxGroup>,
) -> Result<String, String> {
    let pki = net.path().join("pki");
    let files = qkd_kms::tls::TlsFiles {
        cert_chain: pki.join("node-A.crt"),
        key: pki.join("node-A.key"),
        ca: pki.join("ca.crt"),
    };
    let provider = rustls::crypto::CryptoProvider {
        kx_groups: groups,
        ..rustls::crypto::aws_lc_rs::default_provider()
    };
    let mut cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(qkd_kms::tls::load_roots(&files.ca).unwrap())
        .with_client_auth_cert(
            qkd_kms::tls::load_certs(&files.cert_chain).unwrap(),
            qkd_kms::tls::load_private_key(&files.key).unwrap(),
        )
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let addr = net.listen("B").peer;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(addr.ip().to_string()).unwrap();
    match tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
    {
        Ok(s) => Ok(format!(
            "{:?}",
            s.get_ref()
                .1
                .negotiated_key_exchange_group()
                .map(|g| g.name())
        )),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_to_node_channel_requires_hybrid_post_quantum_key_exchange() {
    use rustls::crypto::aws_lc_rs::kx_group::{SECP256R1, X25519, X25519MLKEM768};
    let net = Net::setup(1_000_000);
    net.start("A");
    net.start("B");
    // B serves its peer port once its neighbour is known; a status answer says it is serving.
    net.wait_for_keys("ENC-B1", "ENC-A1", 1).await;
    let classical = peer_handshake(&net, vec![X25519, SECP256R1]).await;
    assert!(
        classical.is_err(),
        "a classical-only client got through: {classical:?}"
    );
    let hybrid = peer_handshake(&net, vec![X25519MLKEM768])
        .await
        .expect("hybrid handshake");
    assert!(hybrid.contains("X25519MLKEM768"), "{hybrid}");
}

/// Defect 8 at the peer port: a certificate from the same CA whose CN is a neighbour's node ID
/// but that carries no `urn:qkd:node:` URI SAN is closed right after the handshake, while the
/// neighbour's own certificate gets the server's HTTP/2 preface.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_port_closes_a_certificate_without_a_node_uri() {
    use tokio::io::AsyncReadExt;
    let net = Net::setup(1_000_000);
    net.start("A");
    net.start("B");
    let pki_dir = net.path().join("pki");
    let pki = qkd_kms::pki::DemoPki::load(&pki_dir).unwrap();
    // CN "A" (node A's ID), URI SAN urn:qkd:sae:A: an SAE certificate.
    let impostor = pki
        .issue_sae(&qkd_types::SaeId::parse("A").unwrap(), "urn:qkd:sae:")
        .unwrap();
    let addr = net.listen("B").peer;
    let first_read = |cert: std::path::PathBuf, key: std::path::PathBuf| {
        let ca = pki_dir.join("ca.crt");
        async move {
            let files = qkd_kms::tls::TlsFiles {
                cert_chain: cert,
                key,
                ca,
            };
            let cfg = qkd_kms::tls::peer_client_config(&files).unwrap();
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from(addr.ip().to_string()).unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
                .connect(name, tcp)
                .await
                .unwrap();
            let mut buf = [0u8; 64];
            // Generous: the server answers at once either way.
            tokio::time::timeout(std::time::Duration::from_secs(30), tls.read(&mut buf))
                .await
                .expect("the peer port neither spoke nor closed")
                .unwrap_or(0)
        }
    };
    let n = first_read(impostor.cert, impostor.key).await;
    assert_eq!(
        n, 0,
        "the peer port spoke to a certificate without a node URI"
    );
    let n = first_read(pki_dir.join("node-A.crt"), pki_dir.join("node-A.key")).await;
    assert!(n > 0, "the peer port did not speak to node A");
}
