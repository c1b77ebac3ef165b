//! The ETSI GS QKD 015-style view on the admin listener (issue 12, item 2) follows the real
//! state of a running network: its UUIDs are the documented UUIDv5 of our identifiers, a link
//! whose neighbour is gone stops being ACTIVE and comes back, an application's consumption
//! grows with the keys delivered, and no key byte or key ID appears in it.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Net, keys};

/// The view's namespace (docs/operations.md): pinned here so that a change is seen.
const NAMESPACE: &str = "86b68adb-0326-42ba-a728-0897f34e8743";

fn v5(name: &str) -> String {
    uuid::Uuid::new_v5(&NAMESPACE.parse().unwrap(), name.as_bytes()).to_string()
}

async fn view(net: &Net, node: &str) -> (String, Value) {
    let admin = net.listen(node).admin.unwrap();
    let r = reqwest::get(format!(
        "http://{admin}/restconf/data/etsi-qkd-sdn-node:qkd_node"
    ))
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/yang-data+json"
    );
    let text = r.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    (text, v["etsi-qkd-sdn-node:qkd_node"].clone())
}

/// Polls `node`'s view until its only link's `qkdl_status` is `want`.
async fn wait_link_status(net: &Net, node: &str, want: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (_, v) = view(net, node).await;
        let status = v["qkd_links"]["qkd_link"][0]["qkdl_status"].clone();
        if want
            .iter()
            .any(|w| status == format!("etsi-qkd-node-types:{w}"))
        {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{node}'s link never became {want:?}: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_015_view_follows_the_real_state() {
    let net = Net::setup(1_000_000);
    net.start("A");
    net.start("B");
    net.wait_for_keys("ENC-A1", "ENC-B1", 2).await;
    let v = wait_link_status(&net, "A", &["ACTIVE"]).await;

    // Node, interfaces and links by their UUIDv5; both ends name the link alike.
    assert_eq!(v["qkdn_id"], v5("node:A"), "{v:#}");
    assert_eq!(v["qkdn_location_id"], "A");
    assert_eq!(v["qkdn_capabilities"]["link_stats_support"], true);
    let link = &v["qkd_links"]["qkd_link"][0];
    assert_eq!(link["qkdl_id"], v5("link:A-B"));
    assert_eq!(link["qkdl_enable"], true);
    assert_eq!(link["qkdl_local"]["qkdn_id"], v5("node:A"));
    assert_eq!(link["qkdl_local"]["qkdi_id"], v5("interface:A/A-B"));
    assert_eq!(link["qkdl_remote"]["qkdn_id"], v5("node:B"));
    assert_eq!(link["qkdl_remote"]["qkdi_id"], v5("interface:B/A-B"));
    assert!(link["skr"].as_u64().unwrap() > 0, "{link:#}");
    let iface = &v["qkd_interfaces"]["qkd_interface"][0];
    assert_eq!(iface["qkdi_id"], v5("interface:A/A-B"));
    assert_eq!(iface["qkdi_status"], "etsi-qkd-node-types:UP");
    let (_, vb) = view(&net, "B").await;
    assert_eq!(vb["qkd_links"]["qkd_link"][0]["qkdl_id"], v5("link:A-B"));

    // The application ENC-A1 -> ENC-B1: backed by the link, consumption counted in bits.
    let app = |v: &Value, m: &str, s: &str| -> Value {
        v["qkd_applications"]["qkd_app"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["app_id"] == v5(&format!("app:{m}->{s}")))
            .cloned()
            .unwrap_or_else(|| panic!("no app {m}->{s}: {v:#}"))
    };
    let before = app(&v, "ENC-A1", "ENC-B1");
    assert_eq!(before["server_app_id"], "urn:qkd:sae:ENC-A1");
    assert_eq!(
        before["client_app_id"],
        serde_json::json!(["urn:qkd:sae:ENC-B1"])
    );
    assert_eq!(before["local_qkdn_id"], v5("node:A"));
    assert_eq!(before["remote_qkdn_id"], v5("node:B"));
    assert_eq!(
        before["backing_qkdl_id"],
        serde_json::json!([v5("link:A-B")])
    );
    assert_eq!(before["app_status"], "etsi-qkd-node-types:ON");
    let consumed = |a: &Value| a["app_statistics"]["statistics"][0]["consumed_bits"].as_u64();
    let (code, body) = net.call("ENC-A1", "ENC-B1/enc_keys?number=2", None).await;
    assert_eq!(code, 200, "{body}");
    let delivered = keys(&body);
    let (text, v) = view(&net, "A").await;
    assert_eq!(
        consumed(&app(&v, "ENC-A1", "ENC-B1")).unwrap(),
        consumed(&before).unwrap() + 2 * 256,
        "{v:#}"
    );
    // Never a key byte or a key ID.
    for (id, bytes) in &delivered {
        use base64::Engine;
        assert!(!text.contains(id.as_str()), "key ID in the view");
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        assert!(!text.contains(&b64), "key bytes in the view");
        assert!(!text.contains(&hex(bytes)), "key bytes in the view");
    }

    // B goes away: A's link is no longer ACTIVE (it still holds link key: PASSIVE), and the
    // application has no route left; B back, all is ACTIVE again.
    net.stop("B");
    let v = wait_link_status(&net, "A", &["PASSIVE", "OFF"]).await;
    assert_eq!(v["qkd_links"]["qkd_link"][0]["qkdl_enable"], true);
    net.start("B");
    wait_link_status(&net, "A", &["ACTIVE"]).await;
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
