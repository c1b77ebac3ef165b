//! SKIP across real node processes: two routers at sites A and E of a five-node chain get the
//! same hybrid key, relayed across the trusted nodes B, C and D, each from its own node's Key
//! Provider, exactly once; several routers at one site each reach only their own pairs; the key
//! is one key for every front end (a key fetched over SKIP is gone for ETSI 014 too).

use std::time::Duration;

use serde_json::Value;

use crate::harness::{BIN, Net};

/// GET `target` on `node`'s SKIP port with `sae`'s certificate; status and JSON body.
async fn skip_get(net: &Net, sae: &str, node: &str, target: &str) -> (u16, Value) {
    let addr = net.listen(node).skip.expect("node has a SKIP listener");
    let resp = net.clients[sae]
        .get(format!("https://{addr}{target}"))
        .send()
        .await
        .unwrap();
    let code = resp.status().as_u16();
    assert_eq!(
        resp.headers()
            .get("connection")
            .map(|v| v.to_str().unwrap()),
        Some("close"),
        "SKIP answers close the connection"
    );
    let body = resp.bytes().await.unwrap();
    (code, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// A new key at `node`, retrying on 503 as a router does while the relay makes key on demand
/// (exponential backoff from 50 ms to 2 s, at most 10 retries).
async fn new_key(net: &Net, sae: &str, node: &str, remote: &str) -> (String, String) {
    use backon::{ExponentialBuilder, Retryable};
    let target = format!("/key?remoteSystemID={remote}&size=256");
    let attempt = || async {
        match skip_get(net, sae, node, &target).await {
            (200, v) => Ok(v),
            (503, v) => Err(v),
            (code, v) => panic!("{sae} at {node}: {code} {v}"),
        }
    };
    let v = attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(50))
                .with_max_delay(Duration::from_secs(2))
                .with_max_times(10),
        )
        .await
        .unwrap_or_else(|v| panic!("{sae} at {node}: still 503: {v}"));
    let id = v["keyId"].as_str().unwrap().to_owned();
    let key = v["key"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    assert_eq!(key.len(), 64, "256 bits as hex");
    (id, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routers_at_a_and_e_get_the_same_hybrid_key_relayed_across_the_chain() {
    let net = Net::setup_topology("chain5", 50_000_000);
    // The demo's configuration passes `qkd-node check`, which reports the Key Provider.
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(net.path().join("A").join("node.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("SKIP Key Provider KP_A"), "{stdout}");
    for n in ["A", "B", "C", "D", "E"] {
        net.start(n);
    }

    // Capabilities: each router learns its own Key Provider and only its own peers.
    let (code, caps) = skip_get(&net, "ENC-A1", "A", "/capabilities").await;
    assert_eq!(code, 200, "{caps}");
    assert_eq!(
        caps,
        serde_json::json!({"entropy": true, "key": true, "algorithm": "QKD+PQ+T",
            "localSystemID": "KP_A", "remoteSystemID": ["KP_B", "KP_C", "KP_E"]})
    );
    let (_, caps_a2) = skip_get(&net, "ENC-A2", "A", "/capabilities").await;
    assert_eq!(caps_a2["remoteSystemID"], serde_json::json!(["KP_B"]));
    let (_, caps_e) = skip_get(&net, "ENC-E1", "E", "/capabilities").await;
    assert_eq!(caps_e["localSystemID"], "KP_E");

    // The IKEv2 flow: the initiator's new key at A, the responder's key by ID at E.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..3 {
        let (id, key) = new_key(&net, "ENC-A1", "A", "KP_E").await;
        assert!(seen.insert(key.clone()), "a key was delivered twice");
        let (code, back) = skip_get(
            &net,
            "ENC-E1",
            "E",
            &format!("/key/{id}?remoteSystemID=KP_A"),
        )
        .await;
        assert_eq!(code, 200, "{back}");
        assert_eq!(back["keyId"], id.as_str());
        assert_eq!(back["key"], key.as_str(), "E got other bytes than A");
        // Exactly once on each side, and once across front ends.
        let again = skip_get(
            &net,
            "ENC-E1",
            "E",
            &format!("/key/{id}?remoteSystemID=KP_A"),
        )
        .await;
        assert_eq!(again.0, 400, "{}", again.1);
        let own = skip_get(
            &net,
            "ENC-A1",
            "A",
            &format!("/key/{id}?remoteSystemID=KP_E"),
        )
        .await;
        assert_eq!(own.0, 400, "the initiator re-read its key: {}", own.1);
        let uuid = format!(
            "{}-{}-{}-{}-{}",
            &id[..8],
            &id[8..12],
            &id[12..16],
            &id[16..20],
            &id[20..]
        );
        let (code, etsi) = net
            .call("ENC-E1", &format!("ENC-A1/dec_keys?key_ID={uuid}"), None)
            .await;
        assert_eq!(
            code, 400,
            "a SKIP key was delivered again over ETSI 014: {etsi}"
        );
    }
    // The other direction: E's router initiates, A's responds.
    let (id, key) = new_key(&net, "ENC-E1", "E", "KP_A").await;
    let (code, back) = skip_get(
        &net,
        "ENC-A1",
        "A",
        &format!("/key/{id}?remoteSystemID=KP_E"),
    )
    .await;
    assert_eq!((code, back["key"].as_str()), (200, Some(key.as_str())));

    // Two routers at site A, each with its own pairs: ENC-A2 has no route to KP_E, and its key
    // for KP_B belongs to ENC-B2, not to ENC-B1 (whose KP_A route means ENC-A1).
    let (code, v) = skip_get(&net, "ENC-A2", "A", "/key?remoteSystemID=KP_E").await;
    assert_eq!(code, 400, "{v}");
    let (id, key) = new_key(&net, "ENC-A2", "A", "KP_B").await;
    let target = format!("/key/{id}?remoteSystemID=KP_A");
    assert_eq!(skip_get(&net, "ENC-B1", "B", &target).await.0, 400);
    let (code, back) = skip_get(&net, "ENC-B2", "B", &target).await;
    assert_eq!((code, back["key"].as_str()), (200, Some(key.as_str())));
    // A router attached to another node is not served here.
    assert_eq!(skip_get(&net, "ENC-E1", "A", "/capabilities").await.0, 403);
}
