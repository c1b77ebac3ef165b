//! Regression tests for defects that black-box testing found in the key manager, each against
//! real `qkd-node` processes. Every test here failed on the code before its fix.

use serde_json::{Value, json};

use crate::harness::{Net, POOL, keys};

/// Lets `a` and `b` pair, in a node's `[[sae]]` registry.
fn allow_pair(t: &mut toml::Table, a: &str, b: &str) {
    let saes = t["sae"].as_array_mut().unwrap();
    for (me, other) in [(a, b), (b, a)] {
        let entry = saes
            .iter_mut()
            .find(|s| s["id"].as_str() == Some(me))
            .unwrap();
        entry["peers"]
            .as_array_mut()
            .unwrap()
            .push(toml::Value::String(other.into()));
    }
}

/// Adds a `[[pair]]` entry with a policy.
fn set_pair_policy(t: &mut toml::Table, a: &str, b: &str, policy: &str) {
    let mut pair = toml::Table::new();
    pair.insert("saes".into(), toml::Value::Array(vec![a.into(), b.into()]));
    pair.insert("policy".into(), policy.into());
    t.entry("pair")
        .or_insert_with(|| toml::Value::Array(Vec::new()))
        .as_array_mut()
        .unwrap()
        .push(toml::Value::Table(pair));
}

async fn stored_key_count(net: &Net, master: &str, slave: &str) -> u64 {
    let (code, st) = net.call(master, &format!("{slave}/status"), None).await;
    assert_eq!(code, 200, "{st}");
    st["stored_key_count"].as_u64().unwrap()
}

/// The sum of `keys` over the entries of a node's `/status` `voided_at_start` list.
fn voided_at_start(status: &Value) -> u64 {
    status["voided_at_start"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v["keys"].as_u64()).sum())
        .unwrap_or(0)
}

/// Defect 1: a request whose slaves' pairs differ in policy or suite was served under the first
/// pair's policy (a silent downgrade of the second pair to `qkd-only`). It is now refused with
/// 400, naming the pairs, and consumes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multicast_over_pairs_of_different_policies_is_refused_and_consumes_nothing() {
    let net = Net::setup(20_000_000);
    for node in ["A", "B"] {
        net.edit_config(node, |t| {
            allow_pair(t, "ENC-A1", "ENC-B2");
            set_pair_policy(t, "ENC-A1", "ENC-B1", "qkd-only");
        });
    }
    net.start("B");
    net.start("A");
    net.wait_for_keys("ENC-A1", "ENC-B1", POOL).await;
    net.wait_for_keys("ENC-A1", "ENC-B2", POOL).await;
    let before = (
        stored_key_count(&net, "ENC-A1", "ENC-B1").await,
        stored_key_count(&net, "ENC-A1", "ENC-B2").await,
    );

    let body = json!({"number": 2, "additional_slave_SAE_IDs": ["ENC-B2"]});
    let (code, reply) = net
        .call("ENC-A1", "ENC-B1/enc_keys", Some(body.clone()))
        .await;
    assert_eq!(code, 400, "{reply}");
    assert_eq!(
        reply["message"], "all slaves of a request must share the policy and suite of the pair",
        "{reply}"
    );
    let details = reply["details"].to_string();
    assert!(
        details.contains("ENC-B1") && details.contains("ENC-B2"),
        "{reply}"
    );
    // The additional slave named first gives the same refusal.
    let (code, reply) = net
        .call(
            "ENC-A1",
            "ENC-B2/enc_keys",
            Some(json!({"additional_slave_SAE_IDs": ["ENC-B1"]})),
        )
        .await;
    assert_eq!(code, 400, "{reply}");

    let after = (
        stored_key_count(&net, "ENC-A1", "ENC-B1").await,
        stored_key_count(&net, "ENC-A1", "ENC-B2").await,
    );
    assert_eq!(before, after, "a refused request consumed keys");
}

/// Defect 2, key size: pool keys made at 256 bits were served as 512-bit keys' stand-ins after
/// `key_size` became 512. They are now voided at both ends at start, and `/status` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_keys_made_before_a_key_size_change_are_voided_at_both_ends() {
    let net = Net::setup(20_000_000);
    net.start("B");
    net.start("A");
    net.wait_for_keys("ENC-A1", "ENC-B1", POOL).await;
    net.stop("A");
    net.stop("B");
    for node in ["A", "B"] {
        net.edit_config(node, |t| {
            t["limits"]["key_size"] = toml::Value::Integer(512);
        });
    }
    // B stays down, so A cannot make any key under the new configuration yet.
    net.start("A");
    let (code, reply) = net.call("ENC-A1", "ENC-B1/enc_keys", None).await;
    assert_eq!(
        code, 503,
        "a key made under the old size was served: {reply}"
    );
    assert!(
        voided_at_start(&net.status("A").await) >= POOL,
        "{}",
        net.status("A").await
    );

    net.start("B");
    assert!(
        voided_at_start(&net.status("B").await) >= POOL,
        "{}",
        net.status("B").await
    );
    net.wait_for_keys("ENC-A1", "ENC-B1", 1).await;
    let (code, reply) = net.call("ENC-A1", "ENC-B1/enc_keys", None).await;
    assert_eq!(code, 200, "{reply}");
    let got = keys(&reply);
    assert_eq!(got[0].1.len(), 64, "default-size keys are now 512 bits");
    let (code, back) = net
        .call(
            "ENC-B1",
            &format!("ENC-A1/dec_keys?key_ID={}", got[0].0),
            None,
        )
        .await;
    assert_eq!(code, 200, "{back}");
    assert_eq!(keys(&back), got);
}

/// Defect 2, policy: after a pair moved from the default hybrid policy to `qkd-only`, keys made
/// under the hybrid policy were still served. They are now voided at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_keys_made_before_a_policy_change_are_never_served() {
    let net = Net::setup(20_000_000);
    net.start("B");
    net.start("A");
    net.wait_for_keys("ENC-A1", "ENC-B1", POOL).await;
    net.wait_for_keys("ENC-A2", "ENC-B2", POOL).await;
    net.stop("A");
    net.stop("B");
    for node in ["A", "B"] {
        net.edit_config(node, |t| set_pair_policy(t, "ENC-A1", "ENC-B1", "qkd-only"));
    }
    net.start("A");
    let (code, reply) = net.call("ENC-A1", "ENC-B1/enc_keys", None).await;
    assert_eq!(
        code, 503,
        "a key made under the old policy was served: {reply}"
    );
    assert!(voided_at_start(&net.status("A").await) >= POOL);
    // The other pair kept its policy, and its keys.
    assert_eq!(stored_key_count(&net, "ENC-A2", "ENC-B2").await, POOL);
}

/// Drains `total` keys from the pair, waiting for refills in between, like a client would.
async fn drain(net: &Net, master: &str, slave: &str, total: u64) {
    let mut taken = 0;
    while taken < total {
        net.wait_for_keys(master, slave, 128).await;
        let (code, reply) = net
            .call(master, &format!("{slave}/enc_keys?number=128"), None)
            .await;
        assert_eq!(code, 200, "{reply}");
        taken += 128;
    }
}

/// Small link pools, so that a few refills need fresh link key from the device.
fn small_link(t: &mut toml::Table) {
    let link = &mut t["link"].as_array_mut().unwrap()[0];
    link["capacity_bytes"] = toml::Value::Integer(16 * 1024);
    link["source"]["block_bits"] = toml::Value::Integer(4 * 8 * 1024);
}

/// Defect 4: after the node at the master end of a link restarted, the simulated device
/// re-issued blocks from index 0, the peer refused them and the link never yielded key again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_keeps_yielding_key_after_its_master_end_restarts() {
    let net = Net::setup(20_000_000);
    for node in ["A", "B"] {
        net.edit_config(node, small_link);
    }
    net.start("B");
    net.start("A");
    net.wait_for_keys("ENC-A1", "ENC-B1", POOL).await;
    // About 64 KiB of link key: four times what the link pools hold.
    drain(&net, "ENC-A1", "ENC-B1", 2048).await;

    net.kill9("A");
    net.start("A");
    drain(&net, "ENC-A1", "ENC-B1", 2048).await;

    net.stop("A");
    net.start("A");
    drain(&net, "ENC-A1", "ENC-B1", 2048).await;

    // Both ends restarted: nothing re-issued is accepted, and key keeps flowing.
    net.kill9("A");
    net.kill9("B");
    net.start("B");
    net.start("A");
    drain(&net, "ENC-A1", "ENC-B1", 2048).await;
    assert!(
        !net.log("A").contains("re-issued") && !net.log("B").contains("re-issued"),
        "the simulated device re-issued link key"
    );
}

/// Defect 3: a key waiting at the slave's node expired a pool TTL plus a key TTL after its pool
/// batch was made, not `key_ttl_seconds` after the master's enc_keys (docs/etsi014.md, key expiry). The
/// source now stamps each delivery and tells the destination asynchronously; the destination
/// expires the key a key TTL after that stamp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_expires_at_the_slaves_node_a_key_ttl_after_the_masters_enc_keys() {
    // Long enough for the fresh key's round trip on a loaded machine; the expiry check waits it.
    const TTL_S: u64 = 10;
    let net = Net::setup(20_000_000);
    for node in ["A", "B"] {
        net.edit_config(node, |t| {
            t["node"]["key_ttl_seconds"] = toml::Value::Integer(TTL_S as i64);
        });
    }
    net.start("B");
    net.start("A");
    net.wait_for_keys("ENC-A1", "ENC-B1", 4).await;

    // Within the TTL the slave gets its key.
    let (code, fresh) = net.call("ENC-A1", "ENC-B1/enc_keys", None).await;
    assert_eq!(code, 200, "{fresh}");
    let fresh = keys(&fresh);
    let (code, back) = net
        .call(
            "ENC-B1",
            &format!("ENC-A1/dec_keys?key_ID={}", fresh[0].0),
            None,
        )
        .await;
    assert_eq!(code, 200, "{back}");

    let (code, late) = net.call("ENC-A1", "ENC-B1/enc_keys?number=2", None).await;
    assert_eq!(code, 200, "{late}");
    let delivered = std::time::Instant::now();
    let late = keys(&late);
    // The delivery notice reaches B asynchronously; wait for it (generously: a loaded machine).
    let deadline = delivered + std::time::Duration::from_secs(60);
    loop {
        let st = net.status("B").await;
        if st["delivery_notices"]["keys_received"]
            .as_u64()
            .unwrap_or(0)
            >= 3
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no delivery notice: {st}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Past the TTL (counted from A's enc_keys, plus a margin for clocks and the expiry sweep),
    // the slave's request finds nothing.
    let wait = std::time::Duration::from_secs(TTL_S + 2).saturating_sub(delivered.elapsed());
    tokio::time::sleep(wait).await;
    for (id, _) in &late {
        let (code, reply) = net
            .call("ENC-B1", &format!("ENC-A1/dec_keys?key_ID={id}"), None)
            .await;
        assert_eq!(code, 400, "expired key served: {reply}");
        assert_eq!(
            reply["message"],
            "one or more keys specified are not found on KME"
        );
    }
}

/// Pool keys past the pool TTL still counted toward their pool until a request discarded them,
/// so a pool that no request touched for a TTL held only stale keys and started no refill: the
/// first request after a quiet TTL got 503. Each relay tick now drops them, and the pool refills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_untouched_for_its_ttl_is_refilled_with_fresh_keys() {
    use std::time::{Duration, Instant};
    const POOL_TTL_S: u64 = 3;
    let net = Net::setup(20_000_000);
    for node in ["A", "B"] {
        net.set_relay_option(node, &format!("pool_ttl_seconds = {POOL_TTL_S}"));
    }
    net.start("B");
    net.start("A");
    net.wait_for_keys("ENC-A1", "ENC-B1", POOL).await;
    let full = Instant::now();
    // A TTL (and a margin) after the pool was first full, every key it then held is too old to
    // hand out and no longer counted: any key counted from then on was made since, with no
    // request to start its refill. (Not a full pool: on a busy machine a refill may trail the
    // keys going stale.)
    let deadline = full + Duration::from_secs(90);
    loop {
        let level = stored_key_count(&net, "ENC-A1", "ENC-B1").await;
        if full.elapsed() > Duration::from_secs(POOL_TTL_S + 1) && level > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pool at {level} of {POOL} keys {:?} after it was full",
            full.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        net.log("A")
            .contains("pool keys past the pool TTL discarded"),
        "{}",
        net.log("A")
    );
    // A request takes fresh keys (retried on 503 as a client would, should the keys just
    // counted go stale first), and the slave gets them.
    let got = loop {
        let (code, got) = net.call("ENC-A1", "ENC-B1/enc_keys", None).await;
        if code == 200 {
            break got;
        }
        assert!(code == 503 && Instant::now() < deadline, "{code} {got}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let id = &keys(&got)[0].0;
    let (code, back) = net
        .call("ENC-B1", &format!("ENC-A1/dec_keys?key_ID={id}"), None)
        .await;
    assert_eq!(code, 200, "{back}");
}
