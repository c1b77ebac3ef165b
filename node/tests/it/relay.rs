//! Multi-hop relay across real node processes: a five-node chain, a mesh with two disjoint paths
//! and a failing middle node, and tampered relay messages.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Net, POOL, keys};

/// Waits until every pool of every master at `nodes` is full, so that no relay is in flight.
async fn wait_quiet(net: &Net, pairs: &[(&str, &str)]) {
    for (m, s) in pairs {
        net.wait_for_keys(m, s, POOL).await;
    }
}

/// Per link, the counters both ends report.
async fn link_counters(net: &Net, nodes: &[&str]) -> HashMap<String, Vec<Value>> {
    let mut out: HashMap<String, Vec<Value>> = HashMap::new();
    for n in nodes {
        let st = net.status(n).await;
        for l in st["links"].as_array().unwrap() {
            out.entry(l["link"].as_str().unwrap().to_string())
                .or_default()
                .push(l.clone());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_node_chain_delivers_identical_keys_and_uses_one_pad_per_key_per_hop() {
    let net = Net::setup_topology("chain5", 50_000_000);
    for n in ["A", "B", "C", "D", "E"] {
        net.start(n);
    }
    // Pools fill in both directions over the chain at once (A1->E1 and E1->A1 share links).
    let pairs = [
        ("ENC-A1", "ENC-E1"),
        ("ENC-E1", "ENC-A1"),
        ("ENC-C1", "ENC-E1"),
        ("ENC-E1", "ENC-C1"),
    ];
    wait_quiet(&net, &pairs).await;

    let mut seen = HashSet::new();
    for (m, s) in pairs {
        // Default size from the pool, and a 512-bit key derived on demand.
        for q in ["number=5", "number=2&size=512"] {
            let (code, body) = net
                .call_retrying(m, &format!("{s}/enc_keys?{q}"), None)
                .await;
            assert_eq!(code, 200, "{m}->{s} {q}: {body}");
            let got = keys(&body);
            let ids: Vec<_> = got.iter().map(|(id, _)| json!({ "key_ID": id })).collect();
            let (code, back) = net
                .call(s, &format!("{m}/dec_keys"), Some(json!({ "key_IDs": ids })))
                .await;
            assert_eq!(code, 200, "{back}");
            assert_eq!(
                keys(&back),
                got,
                "slave got other bytes than master across the chain"
            );
            for (_, k) in got {
                assert!(seen.insert(k), "a key was delivered twice");
            }
        }
    }
    wait_quiet(&net, &pairs).await;
    // Every hop used exactly 32 bytes of link key as pad per relayed key (whatever the size
    // asked for), plus 32 bytes per message for its MAC, as each end counted it. (The two ends'
    // totals need not be equal: a hop that timed out on a loaded machine was counted, and its
    // link key spent, by its sender alone.)
    let links = link_counters(&net, &["A", "B", "C", "D", "E"]).await;
    assert_eq!(links.len(), 4);
    for (link, ends) in &links {
        assert_eq!(ends.len(), 2, "{link}");
        for e in ends {
            let keys_relayed = e["relay_keys"].as_u64().unwrap();
            assert!(keys_relayed >= 1024, "{link} carried {keys_relayed} keys");
            assert_eq!(
                e["relay_pad_bytes"].as_u64().unwrap(),
                32 * keys_relayed,
                "{link}: pad bytes"
            );
            assert_eq!(
                e["relay_auth_bytes"].as_u64().unwrap(),
                32 * e["relay_messages"].as_u64().unwrap(),
                "{link}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_middle_node_reroutes_and_never_releases_unconfirmed_keys() {
    let net = Net::setup_topology("mesh", 50_000_000);
    for n in ["A", "B", "C", "D", "E"] {
        net.start(n);
    }
    net.wait_for_keys("ENC-A1", "ENC-E1", POOL).await;
    // Take keys while B (on the shorter path A-B-E) dies, so that refills in flight through B
    // fail and later ones take A-C-D-E.
    let mut answered = Vec::new();
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    while answered.len() < 1500 {
        assert!(
            Instant::now() < deadline,
            "only {} keys after killing B",
            answered.len()
        );
        let (code, body) = net.call("ENC-A1", "ENC-E1/enc_keys?number=100", None).await;
        if code == 200 {
            answered.extend(keys(&body));
        } else {
            assert_eq!(code, 503, "{body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !killed && answered.len() >= 200 {
            net.kill9("B");
            killed = true;
        }
    }
    // Traffic went around B: links A-C, C-D and D-E carried relays.
    let links = link_counters(&net, &["A", "C", "D", "E"]).await;
    for l in ["A-C", "C-D", "D-E"] {
        assert!(
            links[l][0]["relay_keys"].as_u64().unwrap() > 0,
            "{l} carried nothing"
        );
    }
    // Every key A answered is at E, once, with the same bytes; nothing twice.
    let mut ids = HashSet::new();
    for chunk in answered.chunks(100) {
        let want: Vec<_> = chunk
            .iter()
            .map(|(id, _)| json!({ "key_ID": id }))
            .collect();
        let (code, back) = net
            .call(
                "ENC-E1",
                "ENC-A1/dec_keys",
                Some(json!({ "key_IDs": want })),
            )
            .await;
        assert_eq!(code, 200, "an answered key is missing at E: {back}");
        assert_eq!(keys(&back), chunk.to_vec());
        for (id, _) in chunk {
            assert!(ids.insert(id.clone()));
        }
        let (code, _) = net
            .call(
                "ENC-E1",
                &format!("ENC-A1/dec_keys?key_ID={}", chunk[0].0),
                None,
            )
            .await;
        assert_eq!(code, 400, "delivered twice");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_relay_messages_are_rejected_and_release_nothing() {
    let net = Net::setup_topology("chain5", 50_000_000);
    // C corrupts every relay message it sends.
    net.set_relay_option("C", "test_tamper_relay = true");
    for n in ["A", "B", "C", "D", "E"] {
        net.start(n);
    }
    // A pair that does not cross C still works...
    net.wait_for_keys("ENC-A1", "ENC-B1", POOL).await;
    // ...while batches A1->E1 reach C, are corrupted towards D, and D refuses them, saying why.
    // (D's relay counter on C-D is no measure of this: it also counts the messages D sends to C
    // for E's batches, so it can grow before any forgery arrives.)
    let deadline = Instant::now() + Duration::from_secs(60);
    while net.log("D").matches("failed authentication").count() < 3 {
        assert!(
            Instant::now() < deadline,
            "D did not report three forged relay messages"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, st) = net.call("ENC-A1", "ENC-E1/status", None).await;
    assert_eq!(code, 200);
    assert_eq!(
        st["stored_key_count"], 0,
        "a batch crossing the tampering node was released"
    );
    assert_eq!(net.call("ENC-A1", "ENC-E1/enc_keys", None).await.0, 503);
    // D's operators see it as tampering, by cause, in its metrics (the engine's refusal event).
    let admin = net.listen("D").admin.expect("D has an admin listener");
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let forged: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("qkd_peer_refusals_total{")
                && l.contains("cause=\"hop_authentication\"")
                && l.contains("tampering=\"true\"")
        })
        .filter_map(|l| l.rsplit_once(" ")?.1.parse::<f64>().ok())
        .sum();
    assert!(
        forged >= 3.0,
        "D's metrics do not count the forgeries:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multicast_reaches_slaves_at_two_nodes_with_identical_keys_once_each() {
    let net = Net::setup_topology("chain5", 50_000_000);
    for n in ["A", "B", "C", "D", "E"] {
        net.start(n);
    }
    net.wait_for_keys("ENC-A1", "ENC-E1", POOL).await;
    net.wait_for_keys("ENC-A1", "ENC-C1", POOL).await;
    let (code, st) = net.call("ENC-A1", "ENC-E1/status", None).await;
    assert_eq!(code, 200);
    assert!(st["max_SAE_ID_count"].as_u64().unwrap() >= 1, "{st}");
    let body = json!({ "number": 3, "size": 512, "additional_slave_SAE_IDs": ["ENC-C1"] });
    let (code, got) = net
        .call_retrying("ENC-A1", "ENC-E1/enc_keys", Some(body))
        .await;
    assert_eq!(code, 200, "{got}\n{}", net.log("A"));
    let got = keys(&got);
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|(_, k)| k.len() == 64));
    let ids: Vec<_> = got.iter().map(|(id, _)| json!({ "key_ID": id })).collect();
    for slave in ["ENC-E1", "ENC-C1"] {
        let (code, back) = net
            .call(slave, "ENC-A1/dec_keys", Some(json!({ "key_IDs": ids })))
            .await;
        assert_eq!(code, 200, "{slave}: {back}");
        assert_eq!(keys(&back), got, "{slave} got other bytes");
        let (code, _) = net
            .call(slave, "ENC-A1/dec_keys", Some(json!({ "key_IDs": ids })))
            .await;
        assert_eq!(code, 400, "{slave} fetched a multicast key twice");
    }

    // The same over gRPC: the master asks at A, E1 fetches over gRPC at E, C1 over ETSI at C.
    let mut a1 = net.grpc("ENC-A1", "A");
    let req = qkd_proto::keys::GetKeysRequest {
        slave_sae_id: "ENC-E1".into(),
        number: Some(2),
        size: Some(512),
        additional_slave_sae_ids: vec!["ENC-C1".into()],
    };
    // Retry as a client does on RESOURCE_EXHAUSTED / UNAVAILABLE (on-demand relay, busy machine).
    let mut delay = Duration::from_millis(50);
    let got = loop {
        match a1.get_keys(req.clone()).await {
            Ok(r) => break r.into_inner().keys,
            Err(s)
                if [tonic::Code::ResourceExhausted, tonic::Code::Unavailable]
                    .contains(&s.code())
                    && delay < Duration::from_secs(10) =>
            {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(s) => panic!("{s:?}\n{}", net.log("A")),
        }
    };
    assert_eq!(got.len(), 2);
    let id_strings: Vec<String> = got.iter().map(|k| k.key_id.clone()).collect();
    let by_ids = qkd_proto::keys::GetKeysByIdsRequest {
        master_sae_id: "ENC-A1".into(),
        key_ids: id_strings.clone(),
    };
    let mut e1 = net.grpc("ENC-E1", "E");
    let back = e1
        .get_keys_by_ids(by_ids.clone())
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(back.len(), 2);
    for (x, y) in got.iter().zip(&back) {
        assert_eq!(
            (&x.key_id, &x.key),
            (&y.key_id, &y.key),
            "ENC-E1 got other bytes"
        );
    }
    let again = e1.get_keys_by_ids(by_ids).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::NotFound, "{again:?}");
    let ids: Vec<_> = id_strings
        .iter()
        .map(|id| json!({ "key_ID": id }))
        .collect();
    let (code, back) = net
        .call("ENC-C1", "ENC-A1/dec_keys", Some(json!({ "key_IDs": ids })))
        .await;
    assert_eq!(code, 200, "{back}");
    let back = keys(&back);
    for (x, (id, bytes)) in got.iter().zip(&back) {
        assert_eq!((&x.key_id, &x.key), (id, bytes), "ENC-C1 got other bytes");
    }
}
