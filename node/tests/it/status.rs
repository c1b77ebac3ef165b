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

/// `/status` shows the node's link-state view (`routing`): every node and link of the mesh once
/// the adverts have flooded, and without a stopped node's links once its neighbours have
/// noticed and told the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_routing_view_and_its_changes() {
    let net = Net::setup_topology("mesh", 1_000_000);
    for node in ["A", "B", "C", "D", "E"] {
        net.start(node);
    }
    let view = |links: &[&str]| serde_json::json!(links);
    let wait_for = |want: serde_json::Value, known: u64| {
        let net = &net;
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            loop {
                let st = net.status("A").await;
                let r = &st["routing"];
                if r["usable_links"] == want && r["known_nodes"] == known {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "A's view never became {want} with {known} nodes: {r}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    wait_for(view(&["A-B", "A-C", "B-E", "C-D", "D-E"]), 5).await;
    net.stop("D");
    // C and E stop hearing D, advertise their links to it down, and A's routes go without it;
    // D's own advert ages out of every database.
    wait_for(view(&["A-B", "A-C", "B-E"]), 4).await;
}
