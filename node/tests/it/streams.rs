//! ETSI GS QKD 004 key streams over gRPC on real `qkd-node` processes: both ends of a stream
//! relayed across a trusted node get identical keys at identical indices, once; StreamKeys keeps
//! order and loses nothing under a slow reader; a stream resumes after either end's node is
//! killed; another SAE can neither join, read nor close it; unfetched indices expire at both ends
//! alike; scarce key is RESOURCE_EXHAUSTED with a retry hint, never a stall.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use qkd_proto::keys as pb;
use qkd_proto::keys::key_delivery_client::KeyDeliveryClient;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::harness::Net;

type Client = KeyDeliveryClient<Channel>;

/// 100 keys per second of 32 bytes.
const MAX_BPS: u32 = 100 * 32 * 8;

fn qos(ttl: u32, timeout_ms: u32, max_bps: u32) -> pb::Qos {
    pb::Qos {
        key_chunk_size: 32,
        max_bps,
        ttl,
        timeout: timeout_ms,
        ..Default::default()
    }
}

async fn open(
    c: &mut Client,
    peer: &str,
    q: pb::Qos,
    join: Option<&str>,
) -> pb::OpenStreamResponse {
    c.open_stream(pb::OpenStreamRequest {
        peer_sae_id: peer.into(),
        qos: Some(q),
        key_stream_id: join.map(str::to_owned),
    })
    .await
    .unwrap()
    .into_inner()
}

async fn get(
    c: &mut Client,
    ksid: &str,
    index: u64,
) -> Result<pb::GetStreamKeyResponse, tonic::Status> {
    c.get_stream_key(pb::GetStreamKeyRequest {
        key_stream_id: ksid.into(),
        index,
    })
    .await
    .map(|r| r.into_inner())
}

/// The key of `index`, retrying (as a client would) while it is not reserved yet.
async fn get_retrying(c: &mut Client, ksid: &str, index: u64) -> pb::GetStreamKeyResponse {
    let mut last = None;
    for _ in 0..60 {
        match get(c, ksid, index).await {
            Ok(k) => return k,
            Err(s) if s.code() == Code::ResourceExhausted => {
                let delay = s.get_details_retry_info().and_then(|r| r.retry_delay);
                assert!(delay.is_some(), "no retry hint: {s:?}");
                last = Some(s);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(s) => panic!("index {index}: {s:?}"),
        }
    }
    panic!("index {index} never came: {last:?}")
}

/// The reason and ETSI 004 status an error carries.
fn reason(s: &tonic::Status) -> (String, Option<String>) {
    let info = s
        .get_details_error_info()
        .unwrap_or_else(|| panic!("{s:?}"));
    assert_eq!(info.domain, "etsi004.qkd");
    (info.reason, info.metadata.get("status").cloned())
}

/// `count` keys from `from` over StreamKeys, reading slowly at first (a reader that lags makes
/// the server wait, never drop or reorder).
async fn stream(
    c: &mut Client,
    ksid: &str,
    from: u64,
    count: u64,
    slow: usize,
) -> Vec<(u64, String, Vec<u8>)> {
    let mut s = c
        .stream_keys(pb::StreamKeysRequest {
            key_stream_id: ksid.into(),
            from_index: from,
            count: Some(count),
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.next().await {
        let m = m.unwrap_or_else(|e| panic!("after {} keys: {e:?}", out.len()));
        assert_eq!(m.status, pb::Etsi004Status::Successful as i32);
        let k = m.key.unwrap();
        out.push((m.index, k.key_id.clone(), k.key.clone()));
        if out.len() <= slow {
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }
    out
}

fn key(r: &pb::GetStreamKeyResponse) -> (u64, String, Vec<u8>) {
    let k = r.key.as_ref().unwrap();
    (r.index, k.key_id.clone(), k.key.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_stream_gives_both_ends_the_same_keys_once_and_survives_restarts() {
    // A-B-C-D-E; ENC-A1 at A and ENC-C1 at C pair across the trusted node B. (Every node runs:
    // a node starts once it knows its neighbours' addresses.)
    let net = Net::setup_topology("chain5", 20_000_000);
    for n in ["A", "B", "C", "D", "E"] {
        net.start(n);
    }
    let mut a1 = net.grpc("ENC-A1", "A");
    let mut c1 = net.grpc("ENC-C1", "C");

    let opened = open(&mut a1, "ENC-C1", qos(600, 10_000, MAX_BPS), None).await;
    assert_eq!(opened.status, pb::Etsi004Status::Successful as i32);
    assert!(opened.master);
    let ksid = opened.key_stream_id.clone();
    assert_eq!(opened.qos.as_ref().unwrap().key_chunk_size, 32);
    let joined = open(
        &mut c1,
        "ENC-A1",
        qos(600, 10_000, MAX_BPS),
        Some(&ksid.to_uppercase()),
    )
    .await;
    assert_eq!(joined.key_stream_id, ksid);
    assert!(!joined.master);
    // Opening it again is KSID_IN_USE (004 status 5).
    let again = a1
        .open_stream(pb::OpenStreamRequest {
            peer_sae_id: "ENC-C1".into(),
            qos: Some(qos(600, 0, MAX_BPS)),
            key_stream_id: Some(ksid.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
    assert_eq!(reason(&again), ("KSID_IN_USE".into(), Some("5".into())));

    // Another SAE at A can neither join, read nor close ENC-A1's stream, and nothing is burnt.
    let mut a2 = net.grpc("ENC-A2", "A");
    let join = a2
        .open_stream(pb::OpenStreamRequest {
            peer_sae_id: "ENC-B2".into(),
            qos: Some(qos(600, 0, 0)),
            key_stream_id: Some(ksid.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(join.code(), Code::PermissionDenied, "{join:?}");
    let read = get(&mut a2, &ksid, 0).await.unwrap_err();
    assert_eq!(read.code(), Code::PermissionDenied, "{read:?}");
    assert_eq!(reason(&read).0, "STREAM_OF_ANOTHER_SAE");
    let close = a2
        .close_stream(pb::CloseStreamRequest {
            key_stream_id: ksid.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(close.code(), Code::PermissionDenied, "{close:?}");
    // A stream ID nobody opened here, and one that does not parse.
    let unknown = get(&mut a1, "550e8400-e29b-41d4-a716-446655440000", 0)
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    let bad = get(&mut a1, "stream-1", 0).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");

    // GET_KEY index by index at both ends: the same key under the same ID, once.
    let mut seen = HashSet::new();
    for i in 0..10 {
        let (ia, ida, ka) = key(&get_retrying(&mut a1, &ksid, i).await);
        let (ic, idc, kc) = key(&get_retrying(&mut c1, &ksid, i).await);
        assert_eq!((ia, ic), (i, i));
        assert_eq!(ida, idc);
        assert_eq!(ka, kc, "index {i}");
        assert_eq!(ka.len(), 32);
        assert!(seen.insert(ka), "a key repeats at index {i}");
    }
    for c in [&mut a1, &mut c1] {
        let twice = get(c, &ksid, 3).await.unwrap_err();
        assert_eq!(twice.code(), Code::NotFound, "{twice:?}");
        assert_eq!(reason(&twice).0, "INDEX_ALREADY_DELIVERED");
    }
    // The stream's keys are not for ETSI 014 or GetKeysByIds, even to the right slave.
    let stream_key_id = key(&get_retrying(&mut a1, &ksid, 10).await).1;
    let by_id = c1
        .get_keys_by_ids(pb::GetKeysByIdsRequest {
            master_sae_id: "ENC-A1".into(),
            key_ids: vec![stream_key_id],
        })
        .await
        .unwrap_err();
    assert_eq!(by_id.code(), Code::NotFound, "{by_id:?}");
    assert_eq!(key(&get_retrying(&mut c1, &ksid, 10).await).0, 10);

    // StreamKeys at both ends at once, the slave's reader slow at first: every index once, in
    // order, the same keys.
    let (mut a1s, mut c1s) = (a1.clone(), c1.clone());
    let (ka, kc) = tokio::join!(
        stream(&mut a1s, &ksid, 11, 60, 0),
        stream(&mut c1s, &ksid, 11, 60, 15)
    );
    assert_eq!(ka.len(), 60);
    assert_eq!(ka, kc);
    for (n, (i, _, k)) in ka.iter().enumerate() {
        assert_eq!(*i, 11 + n as u64);
        assert!(seen.insert(k.clone()), "a key repeats at index {i}");
    }
    let twice = get(&mut c1, &ksid, 40).await.unwrap_err();
    assert_eq!(reason(&twice).0, "INDEX_ALREADY_DELIVERED");

    // Kill the master's node and the slave's node; the stream goes on where it was, at both
    // ends, beyond what was reserved before the crash (more than a window: 200 at this rate).
    net.kill9("A");
    net.kill9("C");
    net.start("A");
    net.start("C");
    let mut a1 = net.grpc("ENC-A1", "A");
    let mut c1 = net.grpc("ENC-C1", "C");
    let twice = get(&mut a1, &ksid, 5).await.unwrap_err();
    assert_eq!(reason(&twice).0, "INDEX_ALREADY_DELIVERED", "{twice:?}");
    let mut both = 0;
    let mut i = 71;
    while both < 250 {
        // A run that was being reserved when the node died is void at both ends (INDEX_EXPIRED);
        // every index either end delivers is the same key at the other.
        match (get(&mut a1, &ksid, i).await, get(&mut c1, &ksid, i).await) {
            (Ok(a), Ok(c)) => {
                assert_eq!(key(&a), key(&c));
                assert!(seen.insert(key(&a).2), "a key repeats at index {i}");
                both += 1;
            }
            (a, c) => {
                let a = a.map(|k| key(&k)).map_err(|s| reason(&s));
                let c = c.map(|k| key(&k)).map_err(|s| reason(&s));
                assert!(
                    matches!(&a, Err((r, _)) if r == "INDEX_EXPIRED" || r == "INSUFFICIENT_KEY")
                        || matches!(&c, Err((r, _)) if r == "INDEX_EXPIRED" || r == "INSUFFICIENT_KEY"),
                    "index {i}: {a:?} / {c:?}"
                );
                assert!(i < 71 + 2 * 64 + 250, "index {i}: too many void indices");
            }
        }
        i += 1;
    }

    // CLOSE at both ends; afterwards the stream is unknown to each.
    for c in [&mut a1, &mut c1] {
        let closed = c
            .close_stream(pb::CloseStreamRequest {
                key_stream_id: ksid.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(closed.status, pb::Etsi004Status::Successful as i32);
        let gone = get(c, &ksid, i).await.unwrap_err();
        assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
        assert_eq!(reason(&gone).0, "STREAM_NOT_FOUND");
    }

    let a = net.status("A").await;
    let n = |op: &str, o: &str| a["api_requests"]["grpc"][op][o].as_u64().unwrap();
    assert!(n("stream_key", "ok") >= 250, "{a}");
    assert_eq!(n("close_stream", "ok"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfetched_indices_expire_at_both_ends_and_scarce_key_is_resource_exhausted() {
    let net = Net::setup(20_000_000);
    net.start("A");
    net.start("B");
    let mut a1 = net.grpc("ENC-A1", "A");
    let mut b1 = net.grpc("ENC-B1", "B");

    // QoS the node cannot meet: refused with 004 status 7 and a counter-proposal that it grants.
    let refused = a1
        .open_stream(pb::OpenStreamRequest {
            peer_sae_id: "ENC-B1".into(),
            qos: Some(pb::Qos {
                key_chunk_size: 1_000_000,
                ..qos(5, 0, 0)
            }),
            key_stream_id: None,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let info = refused.get_details_error_info().unwrap();
    assert_eq!(info.metadata["status"], "7");
    let counter: u32 = info.metadata["key_chunk_size"].parse().unwrap();
    let limits = a1
        .get_status(pb::GetStatusRequest {
            slave_sae_id: "ENC-B1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(counter, limits.max_key_size / 8);

    const TTL: u32 = 5;
    let ksid = open(&mut a1, "ENC-B1", qos(TTL, 10_000, 0), None)
        .await
        .key_stream_id;
    open(&mut b1, "ENC-A1", qos(TTL, 10_000, 0), Some(&ksid)).await;
    let (a0, b0) = (
        get_retrying(&mut a1, &ksid, 0).await,
        get_retrying(&mut b1, &ksid, 0).await,
    );
    assert_eq!(key(&a0), key(&b0));
    // Index 0 was reserved before it was fetched, so its run (indices 0..16) expires by TTL
    // seconds from now, at both ends (one expiry time, chosen by the master's node).
    tokio::time::sleep(Duration::from_millis(u64::from(TTL) * 1000 + 700)).await;
    for i in 1..5 {
        for c in [&mut a1, &mut b1] {
            let e = get(c, &ksid, i).await.unwrap_err();
            assert_eq!(e.code(), Code::NotFound, "index {i}: {e:?}");
            assert_eq!(reason(&e), ("INDEX_EXPIRED".into(), Some("6".into())));
        }
    }
    // The stream goes on past the expired run.
    let (a, b) = (
        get_retrying(&mut a1, &ksid, 20).await,
        get_retrying(&mut b1, &ksid, 20).await,
    );
    assert_eq!(key(&a), key(&b));

    // Far ahead of what is reserved: RESOURCE_EXHAUSTED at once (timeout 0 in this stream's
    // QoS would not wait; this one waits its 10 s first), with RetryInfo and 004 status 2.
    let ahead_ksid = open(&mut a1, "ENC-B1", qos(TTL, 0, 0), None)
        .await
        .key_stream_id;
    let ahead = get(&mut a1, &ahead_ksid, 1_000_000).await.unwrap_err();
    assert_eq!(ahead.code(), Code::ResourceExhausted, "{ahead:?}");
    assert!(
        ahead
            .get_details_retry_info()
            .unwrap()
            .retry_delay
            .is_some()
    );
    assert_eq!(
        reason(&ahead),
        ("INSUFFICIENT_KEY".into(), Some("2".into()))
    );

    // No key can be made while the slave's node is down: a GET_KEY beyond what is reserved
    // answers RESOURCE_EXHAUSTED within its QoS timeout instead of hanging.
    net.stop("B");
    let scarce_ksid = open(
        &mut a1,
        "ENC-B1",
        pb::Qos {
            timeout: 300,
            ..qos(TTL, 0, 0)
        },
        None,
    )
    .await
    .key_stream_id;
    let started = std::time::Instant::now();
    let scarce = get(&mut a1, &scarce_ksid, 0).await.unwrap_err();
    assert_eq!(scarce.code(), Code::ResourceExhausted, "{scarce:?}");
    assert!(scarce.get_details_retry_info().is_some());
    // Not a speed assertion: only that the call ended instead of stalling.
    assert!(started.elapsed() < Duration::from_secs(60));
    let st = net.status("A").await;
    assert!(
        st["api_requests"]["grpc"]["stream_key"]["exhausted"]
            .as_u64()
            .unwrap()
            >= 2
    );
}
