//! `qkd-node check` and the names in the node's certificate (issue 12): the certificate must
//! cover what neighbours dial, as far as the configuration shows it (`node.peer_listen`), and
//! `check --online` names the `[[neighbour]]` field when a neighbour's certificate does not
//! name what this node dials.

use rcgen::SanType;

use crate::devices::check;
use crate::harness::Net;
use crate::rotation::{issue_node_named, node_files, put};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_certificate_must_name_what_neighbours_dial() {
    let net = Net::setup(1_000_000);
    let config = net.path().join("A").join("node.toml");
    let (ok, out) = check(&config, &[]);
    assert!(ok, "{out}");
    assert!(
        out.contains("peer certificate: urn:qkd:node:A, DNS localhost, IP 127.0.0.1 (node.peer_listen's 127.0.0.1 included)"),
        "{out}"
    );

    // A certificate naming only 127.0.0.1, for a node listening on 127.0.0.9: neighbours
    // dialling 127.0.0.9 would refuse it.
    let (cert_path, key_path) = node_files(&net, "A");
    let (cert, key) = issue_node_named(
        &net,
        "A",
        2040,
        vec![SanType::IpAddress([127, 0, 0, 1].into())],
    );
    put(&cert_path, &key_path, &cert, &key);
    net.edit_config("A", |t| {
        t["node"]
            .as_table_mut()
            .unwrap()
            .insert("peer_listen".into(), "127.0.0.9:0".into());
    });
    let (ok, out) = check(&config, &[]);
    assert!(!ok, "{out}");
    for part in [
        &format!("{}: tls.cert: {}", config.display(), cert_path.display()),
        "IP 127.0.0.1 but not node.peer_listen's address 127.0.0.9",
    ] {
        assert!(out.contains(part), "{part} not in:\n{out}");
    }

    // With a DNS name, neighbours can dial it by name: accepted, and the summary says so.
    let (cert, key) = issue_node_named(
        &net,
        "A",
        2040,
        vec![SanType::DnsName("a.example".try_into().unwrap())],
    );
    put(&cert_path, &key_path, &cert, &key);
    let (ok, out) = check(&config, &[]);
    assert!(ok, "{out}");
    assert!(
        out.contains(
            "DNS a.example (not node.peer_listen's 127.0.0.9: neighbours must set server_name"
        ),
        "{out}"
    );

    // Online: A is dialled (by B) under a name its certificate does not carry. (Both run: a
    // node starts serving once it knows its neighbours' addresses.)
    let b = net.path().join("B").join("node.toml");
    net.edit_config("B", |t| {
        let n = t["neighbour"].as_array_mut().unwrap()[0]
            .as_table_mut()
            .unwrap();
        n.insert("server_name".into(), "wrong.example".into());
        assert_eq!(n["id"].as_str(), Some("A"));
    });
    net.start("A");
    net.start("B");
    // (Until A serves: it may still be starting when the first check runs.)
    let want = "neighbour[0].server_name: this node dials it as \"wrong.example\"";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let b = b.clone();
        let (_, out) = tokio::task::spawn_blocking(move || check(&b, &["--online"]))
            .await
            .unwrap();
        if out.contains(want) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{want} not in:\n{out}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
