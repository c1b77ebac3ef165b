//! gRPC key delivery on real `qkd-node` processes: the two ends of a key may use different
//! front ends (gRPC at one node, ETSI 014 at the other) and get identical bytes, once; pairing
//! rules hold over gRPC; `/status` counts the requests of both APIs.

use qkd_proto::keys as pb;
use serde_json::json;
use tonic::Code;

use crate::harness::{Net, keys};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_at_one_end_and_etsi_at_the_other_give_identical_keys_once() {
    let net = Net::setup(20_000_000);
    net.start("A");
    net.start("B");
    net.wait_for_keys("ENC-A1", "ENC-B1", 3).await;
    net.wait_for_keys("ENC-B1", "ENC-A1", 3).await;

    // Master over gRPC at A, slave over ETSI 014 at B.
    let mut a1 = net.grpc("ENC-A1", "A");
    let got = a1
        .get_keys(pb::GetKeysRequest {
            slave_sae_id: "ENC-B1".into(),
            number: Some(2),
            size: None,
            additional_slave_sae_ids: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(got.len(), 2);
    let ids: Vec<_> = got.iter().map(|k| json!({ "key_ID": k.key_id })).collect();
    let (code, back) = net
        .call("ENC-B1", "ENC-A1/dec_keys", Some(json!({ "key_IDs": ids })))
        .await;
    assert_eq!(code, 200, "{back}");
    let back = keys(&back);
    assert_eq!(back.len(), 2);
    for (g, (id, bytes)) in got.iter().zip(&back) {
        assert_eq!(&g.key_id, id);
        assert_eq!(&g.key, bytes);
    }

    // Master over ETSI 014 at B, slave over gRPC at A; a second fetch is NOT_FOUND.
    let (code, body) = net.call("ENC-B1", "ENC-A1/enc_keys?number=1", None).await;
    assert_eq!(code, 200, "{body}");
    let (id, bytes) = keys(&body).remove(0);
    let by_id = pb::GetKeysByIdsRequest {
        master_sae_id: "ENC-B1".into(),
        key_ids: vec![id.to_uppercase()],
    };
    let fetched = a1
        .get_keys_by_ids(by_id.clone())
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(fetched.len(), 1);
    assert_eq!(fetched[0].key_id, id);
    assert_eq!(fetched[0].key, bytes);
    let again = a1.get_keys_by_ids(by_id).await.unwrap_err();
    assert_eq!(again.code(), Code::NotFound, "{again:?}");

    // Another pair's SAEs can neither take keys for ENC-B1 nor read ENC-A1's.
    let mut a2 = net.grpc("ENC-A2", "A");
    let denied = a2
        .get_keys(pb::GetKeysRequest {
            slave_sae_id: "ENC-B1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let fresh = a1
        .get_keys(pb::GetKeysRequest {
            slave_sae_id: "ENC-B1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .keys;
    let mut b2 = net.grpc("ENC-B2", "B");
    let denied = b2
        .get_keys_by_ids(pb::GetKeysByIdsRequest {
            master_sae_id: "ENC-A1".into(),
            key_ids: vec![fresh[0].key_id.clone()],
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    // Nothing was burnt: the rightful slave still gets it, over gRPC this time.
    let mut b1 = net.grpc("ENC-B1", "B");
    let ok = b1
        .get_keys_by_ids(pb::GetKeysByIdsRequest {
            master_sae_id: "ENC-A1".into(),
            key_ids: vec![fresh[0].key_id.clone()],
        })
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(ok[0].key, fresh[0].key);

    // `/status` counts both APIs, per operation and outcome.
    let a = net.status("A").await;
    let b = net.status("B").await;
    let n = |v: &serde_json::Value, api: &str, op: &str, o: &str| {
        v["api_requests"][api][op][o]
            .as_u64()
            .unwrap_or_else(|| panic!("{v}"))
    };
    assert_eq!(n(&a, "grpc", "enc_keys", "ok"), 2);
    assert_eq!(n(&a, "grpc", "enc_keys", "not_permitted"), 1);
    assert_eq!(n(&a, "grpc", "dec_keys", "ok"), 1);
    assert_eq!(n(&a, "grpc", "dec_keys", "not_found"), 1);
    assert_eq!(n(&b, "grpc", "dec_keys", "not_permitted"), 1);
    assert_eq!(n(&b, "grpc", "dec_keys", "ok"), 1);
    assert_eq!(n(&b, "etsi014", "dec_keys", "ok"), 1);
    assert_eq!(n(&b, "etsi014", "enc_keys", "ok"), 1);
    assert!(n(&a, "etsi014", "status", "ok") >= 1);
}
