//! One network (A-B-C-D-E; ENC-A1 at A and ENC-C1 at C pair across the trusted node B) for
//! three runs: a TCP echo service through the tunnel across many rekeys, with both ends reporting
//! the same stream indices in the same order; a proxy that flips one bit of one frame, which
//! closes the tunnel with an authentication error; WireGuard mode with a stand-in `wg` at each
//! site, which must receive identical keys in the same order; and a joiner whose node dies, whose
//! next rekey fails and closes the tunnel.

use std::collections::HashSet;

use crate::harness::{Link, echo_service, lines, pattern, stand_in_wg, tampering_proxy, through};

/// Rekey after this many bytes (both directions together) in the echo run.
const REKEY_BYTES: &str = "4096";
/// Bytes the client sends (and gets back): 2 x 160 KiB in epochs of 4 KiB or a little more:
/// dozens of rekeys.
const DATA: usize = 160 * 1024;

fn tunnel_args<'a>(role: &'a str, peer: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        role,
        "--peer-sae",
        peer,
        "--rekey-bytes",
        REKEY_BYTES,
        "--rekey-interval",
        "off",
        "--key-rate",
        "50",
    ];
    v.extend_from_slice(extra);
    v
}

/// `qkd-link serve` arguments for ENC-C1 at C in front of `target`.
fn serve_args<'a>(target: &'a str, key_timeout: &'a str) -> Vec<&'a str> {
    tunnel_args(
        "serve",
        "ENC-A1",
        &[
            "--listen",
            "127.0.0.1:0",
            "--target",
            target,
            "--key-timeout",
            key_timeout,
        ],
    )
}

/// `qkd-link listen` for ENC-A1 at A, tunnelling to `remote`.
fn listen_at_a(net: &qkd_testnet::Net, remote: &str) -> Link {
    let args = tunnel_args(
        "listen",
        "ENC-C1",
        &[
            "--local",
            "127.0.0.1:0",
            "--remote",
            remote,
            "--key-timeout",
            "30s",
        ],
    );
    Link::start(net, "A", "ENC-A1", &args, &[])
}

fn epochs(v: &serde_json::Value) -> Vec<u64> {
    v["epochs"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|e| e.as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_and_wireguard_keys_across_a_relayed_path() {
    let bin = qkd_testnet::node_bin_beside(crate::harness::LINK.as_ref());
    let net = qkd_testnet::Net::setup(&bin, "chain5", 20_000_000);
    net.start_all().unwrap();

    // Site C: the tunnel's end in front of the echo service.
    let echo = echo_service().await;
    let mut serve = Link::start(&net, "C", "ENC-C1", &serve_args(&echo, "30s"), &[]);
    let tunnel_addr = serve.addr().await;
    // Site A: local clients in.
    let mut listen = listen_at_a(&net, &tunnel_addr);
    let local = listen.addr().await;

    // 1. Data arrives intact across many rekeys; both ends used the same indices in order.
    let data = pattern(DATA);
    let back = through(&local, data.clone()).await;
    let a = listen.closed(1).await;
    let c = serve.closed(1).await;
    assert_eq!(a["ok"], true, "{a}\n{}", listen.log());
    assert_eq!(c["ok"], true, "{c}\n{}", serve.log());
    assert_eq!(back.len(), data.len(), "{a}\n{c}");
    assert!(back == data, "the echo differs from what was sent");
    assert_eq!(a["key_stream_id"], c["key_stream_id"]);
    let (ea, ec) = (epochs(&a), epochs(&c));
    assert_eq!(ea, ec, "the two ends used different keys");
    assert!(ea.len() >= 25, "only {} epochs: {ea:?}", ea.len());
    eprintln!("{} epochs through the echo", ea.len());
    assert_eq!(ea[0], 0);
    assert!(
        ea.windows(2).all(|w| w[0] < w[1]),
        "an index repeated: {ea:?}"
    );
    assert_eq!(a["bytes_sent"], DATA as u64);
    assert_eq!(a["bytes_received"], DATA as u64);

    // 2. One flipped bit in one frame from A to C: C detects it and the tunnel closes at both
    //    ends; the client does not get its data back.
    let proxy = tampering_proxy(tunnel_addr.clone(), 12).await;
    let mut tampered = listen_at_a(&net, &proxy);
    let local2 = tampered.addr().await;
    let back = through(&local2, pattern(DATA)).await;
    assert!(
        back.len() < DATA,
        "all data came back through a tampered tunnel"
    );
    let c2 = serve.closed(2).await;
    assert_eq!(c2["ok"], false, "{c2}");
    let err = c2["error"].as_str().unwrap();
    assert!(err.contains("failed authentication"), "{err}");
    let a2 = tampered.closed(1).await;
    assert_eq!(a2["ok"], false, "{a2}");
    assert!(
        serve.log().contains("failed authentication"),
        "the cause is not in the log:\n{}",
        serve.log()
    );

    // 3. WireGuard mode: each site's stand-in `wg` gets the same keys in the same order.
    let dir = tempfile::tempdir().unwrap();
    let path = std::env::var("PATH").unwrap_or_default();
    let wg_a = stand_in_wg(&dir.path().join("a"));
    let wg_c = stand_in_wg(&dir.path().join("c"));
    let path_a = format!("{}:{path}", wg_a.display());
    let path_c = format!("{}:{path}", wg_c.display());
    let (pub_a, pub_c) = (
        "aGVsbG8gd2lyZWd1YXJkIHBlZXIgYSBwdWJsaWMga2V5PQ==",
        "aGVsbG8gd2lyZWd1YXJkIHBlZXIgYyBwdWJsaWMga2V5PQ==",
    );
    let wg_args = |peer_sae: &'static str, wg_peer: &'static str| {
        vec![
            "wg",
            "--peer-sae",
            peer_sae,
            "--interface",
            "wg0",
            "--peer",
            wg_peer,
            "--rekey-interval",
            "1s",
            "--key-timeout",
            "30s",
        ]
    };
    let mut args_c = wg_args("ENC-A1", pub_a);
    args_c.extend(["--listen", "127.0.0.1:0"]);
    let mut wg_at_c = Link::start(&net, "C", "ENC-C1", &args_c, &[("PATH", &path_c)]);
    let control = wg_at_c.addr().await;
    let mut args_a = wg_args("ENC-C1", pub_c);
    args_a.extend(["--connect", control.as_str()]);
    let mut wg_at_a = Link::start(&net, "A", "ENC-A1", &args_a, &[("PATH", &path_a)]);
    const KEYS: usize = 4;
    for wg in [&mut wg_at_a, &mut wg_at_c] {
        wg.wait_for("4 preshared keys", |v| {
            v["event"] == "psk_installed" && v["index"].as_u64() >= Some(KEYS as u64 - 1)
        })
        .await;
    }
    drop(wg_at_a);
    drop(wg_at_c);
    let (keys_a, keys_c) = (lines(&wg_a.join("keys.log")), lines(&wg_c.join("keys.log")));
    assert!(
        keys_a.len() >= KEYS && keys_c.len() >= KEYS,
        "{keys_a:?} {keys_c:?}"
    );
    assert_eq!(
        keys_a[..KEYS],
        keys_c[..KEYS],
        "the sites installed different keys"
    );
    let distinct: HashSet<&String> = keys_a[..KEYS].iter().collect();
    assert_eq!(distinct.len(), KEYS, "a preshared key repeated");
    for k in &keys_a[..KEYS] {
        assert_eq!(k.len(), 44, "not a base64 32-byte key: {k:?}");
    }
    assert_eq!(
        lines(&wg_a.join("calls.log"))[0],
        format!("set wg0 peer {pub_c} preshared-key /dev/stdin")
    );
    assert_eq!(
        lines(&wg_c.join("calls.log"))[0],
        format!("set wg0 peer {pub_a} preshared-key /dev/stdin")
    );

    // 4. The joiner's node goes away mid-tunnel: its next rekey cannot complete and the tunnel
    //    closes at both ends, the joiner naming the key index it could not get.
    let mut serve4 = Link::start(&net, "C", "ENC-C1", &serve_args(&echo, "3s"), &[]);
    let far = serve4.addr().await;
    let mut listen4 = listen_at_a(&net, &far);
    let local4 = listen4.addr().await;
    const BIG: usize = 8 << 20;
    let client = tokio::spawn(async move { through(&local4, pattern(BIG)).await.len() });
    serve4
        .wait_for("the tunnel", |v| v["event"] == "tunnel_open")
        .await;
    net.kill9("C");
    let c4 = serve4.closed(1).await;
    assert_eq!(c4["ok"], false, "{c4}");
    let err = c4["error"].as_str().unwrap();
    assert!(err.contains("key index"), "{err}");
    let a4 = listen4.closed(1).await;
    assert_eq!(a4["ok"], false, "{a4}");
    assert!(client.await.unwrap() < BIG);
}
