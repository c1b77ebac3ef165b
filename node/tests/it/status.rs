//! The operator status endpoint: pair warnings, health, unknown paths.

use crate::harness::Net;

/// Item 9: a pair configured `qkd-only` gets a warning at start and in `/status`, saying that
/// end-to-end PQ protection is off for it; a hybrid pair gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qkd_only_pair_is_warned_at_start_and_in_status() {
    let net = Net::setup(1_000_000);
    // Both ends agree on the pair's protection (a mismatch would abort its exchanges).
    for node in ["A", "B"] {
        let toml = net.path().join(node).join("node.toml");
        let text = std::fs::read_to_string(&toml).unwrap();
        std::fs::write(
            &toml,
            format!("{text}\n[[pair]]\nsaes = [\"ENC-B1\", \"ENC-A1\"]\npolicy = \"qkd-only\"\n"),
        )
        .unwrap();
    }
    net.start("A");
    net.start("B");
    // Serving (the admin endpoint starts with the other servers).
    net.wait_for_keys("ENC-A2", "ENC-B2", 1).await;

    let st = net.status("A").await;
    let warnings = st["warnings"].as_array().unwrap_or_else(|| panic!("{st}"));
    assert_eq!(warnings.len(), 1, "{st}");
    let w = &warnings[0];
    assert_eq!(w["saes"], serde_json::json!(["ENC-A1", "ENC-B1"]), "{st}");
    let text = w["warning"].as_str().unwrap();
    assert!(text.contains("end-to-end PQ protection is OFF"), "{text}");
    assert!(
        net.log("A").contains("end-to-end PQ protection is OFF"),
        "{}",
        net.log("A")
    );

    let admin = net.listen("A").admin.unwrap();
    let get = |path: &str| reqwest::get(format!("http://{admin}{path}"));
    let health = get("/healthz").await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    assert_eq!(health.text().await.unwrap(), "ok\n");
    assert_eq!(get("/nope").await.unwrap().status().as_u16(), 404);
    let status = get("/status").await.unwrap();
    assert_eq!(
        status.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
}
