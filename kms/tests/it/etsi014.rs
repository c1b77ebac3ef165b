//! ETSI GS QKD 014 conformance over real HTTPS with mutual TLS: a table of requests run through
//! one `check()` helper, plus scenarios that need several steps (identical bytes at the slave,
//! keep-alive across errors, untrusted certificates, shutdown).
//!
//! Placeholders in a case's path or body: `{KEY}` is a key A just obtained for slave B (not yet
//! fetched), `{KEYU}` the same ID in upper case, `{GONE}` a key B already fetched. `check()`
//! creates them before the request and, whatever the case, verifies that a refused request
//! consumed nothing: A→B's `stored_key_count` is unchanged and a `{KEY}` named by a refused
//! request is still fetchable by B, byte for byte.
//!
//! Every rule of docs/etsi014.md (the product policy for what ETSI 014 leaves open) is covered
//! by rows tagged `[DECISION]` in comments.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use qkd_kms::api::etsi014::ServerLimits;
use qkd_kms::api::etsi014::reply::{
    MSG_INSUFFICIENT_KEY_MATERIAL, MSG_KEYS_NOT_FOUND, MSG_MANDATORY_UNSUPPORTED,
    MSG_SIZE_NOT_MULTIPLE_OF_8, MSG_UNKNOWN_SLAVE,
};
use qkd_kms::api::{
    DecKeysRequest, DeliveredKey, EncKeysRequest, KeyLimits, KeyProfile, KeyService, PairStatus,
    ServiceError,
};
use qkd_kms::tls;
use qkd_proto::etsi014::{KeyContainer, Status};
use qkd_types::{SaeId, Secret};
use serde_json::Value;
use tokio::sync::Notify;

use qkd_testnet::etsi_fixture::{Fixture, RawConn, check_nothing_consumed};
use qkd_testnet::fake::FakeKeys;

/// One request and the answer it must get.
#[derive(Debug, Clone, Copy)]
struct Case {
    /// The SAE whose certificate is presented.
    sae: &'static str,
    method: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    body: &'static str,
    /// Expected status.
    want: u16,
    /// Exact `message` of the Error body, when the spec or policy fixes it.
    message: Option<&'static str>,
}

const fn case(
    sae: &'static str,
    method: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    body: &'static str,
    want: u16,
    message: Option<&'static str>,
) -> Case {
    Case {
        sae,
        method,
        path,
        content_type,
        body,
        want,
        message,
    }
}

const J: Option<&str> = Some("application/json");
const N: Option<&str> = None;

#[rustfmt::skip]
const TABLE: &[Case] = &[
    // [DECISION] admission: an SAE not attached here (R: attached elsewhere; U: registered
    // nowhere; NODE: a node certificate) gets 401 on every path, before any other check.
    case("R", "GET", "/api/v1/keys/B/status", N, "", 401, None),
    case("R", "POST", "/api/v1/keys/B/enc_keys", J, "{bad", 401, None),
    case("U", "POST", "/api/v1/keys/A/dec_keys", J, "[]", 401, None),
    case("U", "GET", "/nope", N, "", 401, None),
    case("R", "DELETE", "/api/v1/keys/B/status", N, "", 401, None),
    case("NODE", "GET", "/api/v1/keys/B/enc_keys", N, "", 401, None),
    case("R", "GET", "/api/v1/keys/A/dec_keys?key_ID={KEY}", N, "", 401, None),
    case("U", "GET", "/api/v1/keys/B/enc_keys?number=x", N, "", 401, None),
    // Get status.
    case("A", "GET", "/api/v1/keys/B/status", N, "", 200, None),
    case("A", "GET", "/api/v1/keys/%42/status", N, "", 200, None), // [DECISION] every %XX decoded
    case("A", "GET", "/api/v1/keys/Nobody/status", N, "", 400, Some(MSG_UNKNOWN_SLAVE)),
    case("A", "GET", "/api/v1/keys/A/status", N, "", 400, None),
    case("A", "GET", "/api/v1/keys/%41/status", N, "", 400, None),
    case("A", "GET", "/api/v1/keys/C/status", N, "", 401, None), // pairing refused
    case("A", "GET", "/api/v1/keys/R/status", N, "", 401, None),
    case("A", "GET", "/api/v1/keys/B/status?x=1", N, "", 400, None),
    // [DECISION] 404 / 405 + Allow.
    case("A", "POST", "/api/v1/keys/B/status", J, "{}", 405, None),
    case("A", "PUT", "/api/v1/keys/B/status", N, "", 405, None),
    case("A", "PUT", "/api/v1/keys/B/enc_keys", J, "{}", 405, None),
    case("A", "DELETE", "/api/v1/keys/B/enc_keys", N, "", 405, None),
    case("B", "PATCH", "/api/v1/keys/A/dec_keys", J, "{bad", 405, None),
    case("A", "GET", "/api/v1/keys/B/status/x", N, "", 404, None),
    case("A", "GET", "/api/v1/keys/B/keys", N, "", 404, None),
    case("A", "GET", "/api/v1/keys", N, "", 404, None),
    case("A", "GET", "/", N, "", 404, None),
    // Get key, GET form ([DECISION] only number and size, decimal, once each).
    case("A", "GET", "/api/v1/keys/B/enc_keys", N, "", 200, None),
    case("A", "GET", "/api/v1/keys/B/enc_keys?number=2&size=512", N, "", 200, None),
    case("A", "GET", "/api/v1/keys/B/enc_keys?number=abc", N, "", 400, None),
    case("A", "GET", "/api/v1/keys/B/enc_keys?number=1.5", N, "", 400, None),
    case("A", "GET", "/api/v1/keys/B/enc_keys?number=-1", N, "", 400, None),
    case("A", "GET", "/api/v1/keys/B/enc_keys?number=1&number=1", N, "", 400, None),
    case("A", "GET", "/api/v1/keys/B/enc_keys?additional_slave_SAE_IDs=C", N, "", 400, None),
    case("A", "GET", "/api/v1/keys/B/enc_keys?abc_route_type=direct", N, "", 400, None),
    case("A", "GET", "/api/v1/keys/B/enc_keys?number=0", N, "", 400, None),
    case("A", "GET", "/api/v1/keys/B/enc_keys?number=129", N, "", 400, None),
    case("A", "GET", "/api/v1/keys/B/enc_keys?size=100", N, "", 400, Some(MSG_SIZE_NOT_MULTIPLE_OF_8)),
    case("A", "GET", "/api/v1/keys/B/enc_keys?size=2048", N, "", 400, None),
    case("A", "GET", "/api/v1/keys/B/enc_keys?size=8", N, "", 400, None),
    case("A", "GET", "/api/v1/keys/B/enc_keys", J, "{}", 400, None), // GET with a body
    // Get key, POST form ([DECISION] request bodies).
    case("A", "POST", "/api/v1/keys/B/enc_keys", N, "", 200, None),
    case("A", "POST", "/api/v1/keys/B/enc_keys", Some("text/plain"), "", 200, None),
    case("A", "POST", "/api/v1/keys/B/enc_keys", J, "{}", 200, None),
    case("A", "POST", "/api/v1/keys/B/enc_keys", Some("application/json; charset=utf-8"), r#"{"number":2,"size":512,"vendor_x":[1]}"#, 200, None),
    case("A", "POST", "/api/v1/keys/B/enc_keys", J, r#"{"extension_optional":[{"abc_x":1}]}"#, 200, None),
    case("A", "POST", "/api/v1/keys/B/enc_keys", Some("text/plain"), r#"{"number":1}"#, 400, None),
    case("A", "POST", "/api/v1/keys/B/enc_keys", J, "{bad", 400, None),
    case("A", "POST", "/api/v1/keys/B/enc_keys", J, "[]", 400, None),
    case("A", "POST", "/api/v1/keys/B/enc_keys", J, "null", 400, None),
    case("A", "POST", "/api/v1/keys/B/enc_keys", J, r#"{"number":"3"}"#, 400, None),
    case("A", "POST", "/api/v1/keys/B/enc_keys", J, r#"{"number":1.5}"#, 400, None),
    case("A", "POST", "/api/v1/keys/B/enc_keys", J, r#"{"number":-1}"#, 400, None),
    case("A", "POST", "/api/v1/keys/B/enc_keys", J, r#"{"size":"256"}"#, 400, None),
    case("A", "POST", "/api/v1/keys/B/enc_keys", J, r#"{"additional_slave_SAE_IDs":"C"}"#, 400, None),
    case("A", "POST", "/api/v1/keys/B/enc_keys", J, r#"{"size":100}"#, 400, Some(MSG_SIZE_NOT_MULTIPLE_OF_8)),
    case("A", "POST", "/api/v1/keys/B/enc_keys?number=2", J, "{}", 400, None),
    // Multicast: max_SAE_ID_count is 0, so any non-empty list is refused.
    case("A", "POST", "/api/v1/keys/B/enc_keys", J, r#"{"additional_slave_SAE_IDs":[]}"#, 200, None),
    case("A", "POST", "/api/v1/keys/B/enc_keys", J, r#"{"additional_slave_SAE_IDs":["C"]}"#, 400, None),
    // [DECISION] order for enc_keys: admission → slave → syntax/values → pairing → extension → 503.
    case("A", "POST", "/api/v1/keys/Nobody/enc_keys", J, "{bad", 400, Some(MSG_UNKNOWN_SLAVE)),
    case("A", "POST", "/api/v1/keys/A/enc_keys", J, "{bad", 400, None),
    case("A", "POST", "/api/v1/keys/C/enc_keys", J, r#"{"size":100}"#, 400, Some(MSG_SIZE_NOT_MULTIPLE_OF_8)),
    case("A", "POST", "/api/v1/keys/C/enc_keys", J, r#"{"extension_mandatory":[{"abc_route_type":"direct"}]}"#, 401, None),
    case("A", "POST", "/api/v1/keys/B/enc_keys", J, r#"{"extension_mandatory":[{"abc_route_type":"direct"}]}"#, 400, Some(MSG_MANDATORY_UNSUPPORTED)),
    case("A", "POST", "/api/v1/keys/B/enc_keys", J, r#"{"number":128,"size":1024,"extension_mandatory":[{"abc_x":1}]}"#, 400, Some(MSG_MANDATORY_UNSUPPORTED)),
    // [DECISION] beyond the pool: 503, atomic, nothing consumed.
    case("A", "POST", "/api/v1/keys/B/enc_keys", J, r#"{"number":128,"size":1024}"#, 503, Some(MSG_INSUFFICIENT_KEY_MATERIAL)),
    case("A", "GET", "/api/v1/keys/B/enc_keys?number=128&size=1024", N, "", 503, Some(MSG_INSUFFICIENT_KEY_MATERIAL)),
    // Get key with key IDs.
    case("B", "GET", "/api/v1/keys/A/dec_keys?key_ID={KEY}", N, "", 200, None),
    case("B", "GET", "/api/v1/keys/A/dec_keys?key_ID={KEYU}", N, "", 200, None),
    case("B", "POST", "/api/v1/keys/A/dec_keys", J, r#"{"key_IDs":[{"key_ID":"{KEY}"}]}"#, 200, None),
    case("B", "POST", "/api/v1/keys/A/dec_keys", N, r#"{"key_IDs":[{"key_ID":"{KEYU}","key_ID_extension":{}}],"key_IDs_extension":{}}"#, 200, None),
    // [DECISION] GET form of dec_keys: exactly one key_ID, nothing else.
    case("B", "GET", "/api/v1/keys/A/dec_keys", N, "", 400, None),
    case("B", "GET", "/api/v1/keys/A/dec_keys?key_ID=x", N, "", 400, None),
    case("B", "GET", "/api/v1/keys/A/dec_keys?key_ID={KEY}&key_ID={KEY}", N, "", 400, None),
    case("B", "GET", "/api/v1/keys/A/dec_keys?key_ID={KEY}&key_IDs_extension=1", N, "", 400, None),
    case("B", "GET", "/api/v1/keys/A/dec_keys?key_id={KEY}", N, "", 400, None),
    // [DECISION] dec_keys shape → 400.
    case("B", "POST", "/api/v1/keys/A/dec_keys", J, r#"{"key_IDs":[]}"#, 400, None),
    case("B", "POST", "/api/v1/keys/A/dec_keys", J, "{}", 400, None),
    case("B", "POST", "/api/v1/keys/A/dec_keys", N, "", 400, None),
    case("B", "POST", "/api/v1/keys/A/dec_keys", J, r#"{"key_IDs":[{"key_ID":""}]}"#, 400, None),
    case("B", "POST", "/api/v1/keys/A/dec_keys", J, r#"{"key_IDs":[{"key_ID":"nope"}]}"#, 400, None),
    case("B", "POST", "/api/v1/keys/A/dec_keys", J, r#"{"key_IDs":"{KEY}"}"#, 400, None),
    case("B", "POST", "/api/v1/keys/A/dec_keys", Some("text/plain"), r#"{"key_IDs":[{"key_ID":"{KEY}"}]}"#, 400, None),
    // [DECISION] dec_keys lookup → 400 with the spec message; the path master gets no own check.
    case("B", "POST", "/api/v1/keys/A/dec_keys", J, r#"{"key_IDs":[{"key_ID":"00000000-0000-4000-8000-000000000000"}]}"#, 400, Some(MSG_KEYS_NOT_FOUND)),
    case("B", "POST", "/api/v1/keys/A/dec_keys", J, r#"{"key_IDs":[{"key_ID":"{KEY}"},{"key_ID":"00000000-0000-4000-8000-000000000000"}]}"#, 400, Some(MSG_KEYS_NOT_FOUND)),
    case("B", "GET", "/api/v1/keys/A/dec_keys?key_ID={GONE}", N, "", 400, Some(MSG_KEYS_NOT_FOUND)),
    case("B", "POST", "/api/v1/keys/A/dec_keys", J, r#"{"key_IDs":[{"key_ID":"{GONE}"}]}"#, 400, Some(MSG_KEYS_NOT_FOUND)),
    case("B", "POST", "/api/v1/keys/Nobody/dec_keys", J, r#"{"key_IDs":[{"key_ID":"{KEY}"}]}"#, 400, Some(MSG_KEYS_NOT_FOUND)),
    case("B", "POST", "/api/v1/keys/C/dec_keys", J, r#"{"key_IDs":[{"key_ID":"{KEY}"}]}"#, 400, Some(MSG_KEYS_NOT_FOUND)),
    case("B", "POST", "/api/v1/keys/R/dec_keys", J, r#"{"key_IDs":[{"key_ID":"{KEY}"}]}"#, 400, Some(MSG_KEYS_NOT_FOUND)),
    case("B", "POST", "/api/v1/keys/a%2Fb/dec_keys", J, r#"{"key_IDs":[{"key_ID":"{KEY}"}]}"#, 400, Some(MSG_KEYS_NOT_FOUND)),
    // [DECISION] dec_keys: not a slave of the keys → 401, key kept for the real slave.
    case("C", "POST", "/api/v1/keys/A/dec_keys", J, r#"{"key_IDs":[{"key_ID":"{KEY}"}]}"#, 401, None),
    case("C", "GET", "/api/v1/keys/A/dec_keys?key_ID={KEY}", N, "", 401, None),
    case("A", "POST", "/api/v1/keys/A/dec_keys", J, r#"{"key_IDs":[{"key_ID":"{KEY}"}]}"#, 401, None),
];

/// A row a backend is known to answer against the policy, pending a fix in that backend. The row
/// still runs and must fail with exactly this status, so the fix makes the suite fail until the
/// entry is removed: a deviation cannot outlive its bug, nor hide a different one.
#[derive(Debug, Clone, Copy)]
struct KnownDeviation {
    /// The row, by its SAE, method and path (these must pick exactly one row).
    sae: &'static str,
    method: &'static str,
    path: &'static str,
    /// The status the backend answers instead of the row's.
    got: u16,
}

/// Runs the whole table against a deployment; panics listing every failing row, every known
/// deviation that no longer fails as recorded, and every deviation that names no single row.
async fn run_table(fx: &Fixture, deviations: &[KnownDeviation]) {
    let is = |d: &KnownDeviation, c: &Case| (d.sae, d.method, d.path) == (c.sae, c.method, c.path);
    let mut failures = Vec::new();
    for d in deviations {
        let rows = TABLE.iter().filter(|c| is(d, c)).count();
        if rows != 1 {
            failures.push(format!("known deviation {d:?} names {rows} rows, not 1"));
        }
    }
    for (i, c) in TABLE.iter().enumerate() {
        let result = check(fx, c).await;
        let row = format!("row {i} {} {} {}", c.sae, c.method, c.path);
        match (deviations.iter().find(|d| is(d, c)), result) {
            (None, Ok(())) => {}
            (None, Err(e)) => failures.push(format!("{row}: {e}")),
            (Some(d), Err(e)) if e.starts_with(&format!("status {}, ", d.got)) => {}
            (Some(d), result) => failures.push(format!(
                "{row}: known deviation (status {}) no longer seen, got {result:?}; \
                 remove it if the backend was fixed",
                d.got
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        TABLE.len(),
        failures.join("\n")
    );
}

/// Sends one case and checks the answer and the invariants every answer must keep.
async fn check(fx: &Fixture, c: &Case) -> Result<(), String> {
    let uses = |p: &str| c.path.contains(p) || c.body.contains(p);
    let key = if uses("{KEY") {
        Some(enc_one(fx).await?)
    } else {
        None
    };
    let gone = if uses("{GONE}") {
        let (id, _) = enc_one(fx).await?;
        dec_one(fx, &id).await?;
        Some(id)
    } else {
        None
    };
    let fill = |s: &str| {
        let mut s = s.to_owned();
        if let Some((id, _)) = &key {
            s = s.replace("{KEYU}", &id.to_uppercase()).replace("{KEY}", id);
        }
        if let Some(id) = &gone {
            s = s.replace("{GONE}", id);
        }
        s
    };
    let before = stored_key_count(fx).await?;

    let method = reqwest::Method::from_bytes(c.method.as_bytes()).map_err(|e| e.to_string())?;
    let mut req = fx
        .client(c.sae)
        .request(method, fx.url(c.sae, &fill(c.path)))
        .body(fill(c.body));
    if let Some(ct) = c.content_type {
        req = req.header("content-type", ct);
    }
    let resp = req.send().await.map_err(|e| format!("send: {e}"))?;
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let allow = resp.headers().get("allow").is_some();
    let body = resp.bytes().await.map_err(|e| format!("body: {e}"))?;
    let text = String::from_utf8_lossy(&body);

    if status != c.want {
        return Err(format!("status {status}, want {}; body {text}", c.want));
    }
    match status {
        401 if !body.is_empty() => return Err(format!("401 with a body: {text}")),
        400 | 503 => {
            if content_type.as_deref() != Some("application/json") {
                return Err(format!("{status} with content-type {content_type:?}"));
            }
            let v: Value = serde_json::from_slice(&body).map_err(|e| format!("error body: {e}"))?;
            let message = v["message"].as_str().ok_or("Error without message")?;
            if let Some(want) = c.message
                && message != want
            {
                return Err(format!("message {message:?}, want {want:?}"));
            }
            if text.contains("\"key\"") {
                return Err(format!("error body carries a key: {text}"));
            }
        }
        405 if !allow => return Err("405 without Allow".into()),
        _ => {}
    }

    if status != 200 {
        let after = stored_key_count(fx).await?;
        check_nothing_consumed(
            before,
            after,
            key,
            |id| async move { dec_one(fx, &id).await },
        )
        .await?;
    }
    Ok(())
}

/// A→B `stored_key_count`, as A sees it.
async fn stored_key_count(fx: &Fixture) -> Result<u64, String> {
    let resp = fx
        .client("A")
        .get(fx.url("A", "/api/v1/keys/B/status"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if resp.status() != 200 {
        return Err(format!("status: {}", resp.status()));
    }
    let s: Status = resp.json().await.map_err(|e| e.to_string())?;
    Ok(s.stored_key_count)
}

/// A gets one default-size key for B; returns its ID and bytes.
async fn enc_one(fx: &Fixture) -> Result<(String, Secret), String> {
    let mut keys = keys(fx, "A", "/api/v1/keys/B/enc_keys", None).await?;
    let (id, key) = keys.pop().ok_or("no key")?;
    Ok((id, key))
}

/// B fetches one key of master A by ID.
async fn dec_one(fx: &Fixture, id: &str) -> Result<Secret, String> {
    let body = serde_json::json!({"key_IDs": [{"key_ID": id}]});
    let mut keys = keys(fx, "B", "/api/v1/keys/A/dec_keys", Some(body)).await?;
    keys.pop().map(|(_, k)| k).ok_or_else(|| "no key".into())
}

/// POSTs `body` (or GETs when `None`) and decodes a 200 Key container.
async fn keys(
    fx: &Fixture,
    sae: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Vec<(String, Secret)>, String> {
    let client = fx.client(sae);
    let url = fx.url(sae, path);
    let req = match body {
        Some(b) => client.post(url).json(&b),
        None => client.get(url),
    };
    let resp = req.send().await.map_err(|e| e.to_string())?;
    if resp.status() != 200 {
        let status = resp.status();
        return Err(format!(
            "{status}: {}",
            resp.text().await.unwrap_or_default()
        ));
    }
    let c: KeyContainer = resp.json().await.map_err(|e| e.to_string())?;
    c.keys
        .into_iter()
        .map(|k| {
            let bytes = k.key.to_secret().map_err(|e| e.to_string())?;
            Ok((k.key_id.to_string(), bytes))
        })
        .collect()
}

/// Runs the conformance table against one deployment: `conformance!(test_name, constructor)`,
/// where the constructor is an `async` expression giving a [`Fixture`]; a third argument lists
/// the rows that backend is known to fail ([`KnownDeviation`]).
macro_rules! conformance {
    ($name:ident, $fixture:expr) => {
        conformance!($name, $fixture, &[]);
    };
    ($name:ident, $fixture:expr, $deviations:expr) => {
        #[tokio::test]
        async fn $name() {
            let fx = $fixture.await;
            run_table(&fx, $deviations).await;
            fx.stop().await;
        }
    };
}

conformance!(conformance_table_against_fake_kme, Fixture::fake());
conformance!(conformance_table_against_two_nodes, Fixture::two_nodes());

#[tokio::test]
async fn slave_gets_identical_keys_in_request_order_once() {
    let fx = Fixture::fake().await;
    let before = stored_key_count(&fx).await.unwrap();
    let body = serde_json::json!({"number": 3, "size": 512});
    let keys_a = keys(&fx, "A", "/api/v1/keys/B/enc_keys", Some(body))
        .await
        .unwrap();
    assert_eq!(keys_a.len(), 3);
    assert!(keys_a.iter().all(|(_, k)| k.len() == 64));
    // 3 keys of 512 bits = 6 default-size keys.
    assert_eq!(stored_key_count(&fx).await.unwrap(), before - 6);
    for (id, _) in &keys_a {
        assert_eq!(id, &id.to_lowercase(), "key IDs are lower case");
    }

    let ids: Vec<Value> = keys_a
        .iter()
        .rev()
        .map(|(id, _)| serde_json::json!({"key_ID": id}))
        .collect();
    let keys_b = keys(
        &fx,
        "B",
        "/api/v1/keys/A/dec_keys",
        Some(serde_json::json!({ "key_IDs": ids })),
    )
    .await
    .unwrap();
    let expected: Vec<_> = keys_a.iter().rev().collect();
    assert_eq!(keys_b.len(), 3);
    for ((id_b, key_b), (id_a, key_a)) in keys_b.iter().zip(expected) {
        assert_eq!(id_b, id_a);
        assert_eq!(key_b, key_a);
    }
    // dec_keys does not change stored_key_count, and a second fetch is refused.
    assert_eq!(stored_key_count(&fx).await.unwrap(), before - 6);
    let again = dec_one(&fx, &keys_a[0].0).await.unwrap_err();
    assert!(again.contains(MSG_KEYS_NOT_FOUND), "{again}");
    fx.stop().await;
}

#[tokio::test]
async fn status_reports_the_pair() {
    let fx = Fixture::fake().await;
    let s: Value = fx
        .client("A")
        .get(fx.url("A", "/api/v1/keys/B/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s["master_SAE_ID"], "A");
    assert_eq!(s["slave_SAE_ID"], "B");
    assert_eq!(s["key_size"], 256);
    assert_eq!(s["stored_key_count"], 256);
    assert_eq!(s["max_key_count"], 256);
    assert_eq!(s["max_SAE_ID_count"], 0);
    assert_eq!(s["source_KME_ID"], "KME-1");
    fx.stop().await;
}

#[tokio::test]
async fn unsupported_mandatory_extension_details_follow_the_spec() {
    let fx = Fixture::fake().await;
    let resp = fx
        .client("A")
        .post(fx.url("A", "/api/v1/keys/B/enc_keys"))
        .json(&serde_json::json!({"extension_mandatory": [{"abc_route_type": "direct"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "message": "not all extension_mandatory parameters are supported",
            "details": [{"extension_mandatory_unsupported": "abc_route_type is not supported"}]
        })
    );
    fx.stop().await;
}

#[tokio::test]
async fn keep_alive_survives_every_kind_of_error() {
    let fx = Fixture::fake().await;
    let mut conn = fx.raw("A").await.unwrap();
    let big = vec![b' '; 100 * 1024];
    let steps: &[(&str, &[u8], u16)] = &[
        (
            "POST /api/v1/keys/B/enc_keys HTTP/1.1\r\nContent-Type: application/json",
            b"{bad",
            400,
        ),
        ("GET /api/v1/keys/B/nothing HTTP/1.1", b"", 404),
        ("DELETE /api/v1/keys/B/enc_keys HTTP/1.1", b"{\"x\":1}", 405),
        ("GET /api/v1/keys/C/status HTTP/1.1", b"", 401),
        ("GET /api/v1/keys/B/enc_keys HTTP/1.1", b"{}", 400),
        ("POST /api/v1/keys/B/enc_keys HTTP/1.1", &big, 400),
        // Dot segments are not normalised: this is not a known path.
        ("GET /api/v1/keys/B/../B/status HTTP/1.1", b"", 404),
        (
            "POST /api/v1/keys/B/enc_keys HTTP/1.1\r\nContent-Type: application/json",
            br#"{"number":128,"size":1024}"#,
            503,
        ),
        ("GET /api/v1/keys/B/status HTTP/1.1", b"", 200),
    ];
    for (head, body, want) in steps {
        let r = conn.send(head, body).await.unwrap();
        assert_eq!(
            r.status,
            *want,
            "{head}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_ne!(r.header("connection"), Some("close"), "{head}");
        if *want == 400 || *want == 503 {
            assert_eq!(r.header("content-type"), Some("application/json"), "{head}");
        }
        if *want == 405 {
            assert_eq!(r.header("allow"), Some("GET, POST"));
        }
    }
    fx.stop().await;
}

#[tokio::test]
async fn oversized_body_is_refused_and_connection_closed() {
    let fx = Fixture::fake().await;
    let mut conn = fx.raw("A").await.unwrap();
    let huge = vec![b' '; 2 * 1024 * 1024];
    let r = conn
        .send("POST /api/v1/keys/B/enc_keys HTTP/1.1", &huge)
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.header("connection"), Some("close"));
    fx.stop().await;
}

/// Defect 6: many connections from one admitted but slow client (headers sent, then nothing)
/// must not make a legitimate client's request time out. The server's total cap is small so that
/// the test needs only a few connections; the per-client cap must leave room for others, and the
/// body deadline is long so that only the cap can save the legitimate client.
#[tokio::test]
async fn slow_admitted_client_cannot_starve_the_port() {
    const TOTAL: usize = 12;
    const PER_CLIENT: usize = 3;
    let fx = Fixture::fake_limited(ServerLimits {
        max_connections: TOTAL,
        max_connections_per_client: PER_CLIENT,
        body_timeout: Duration::from_secs(600),
        ..ServerLimits::default()
    })
    .await;
    let mut slow = Vec::new();
    for _ in 0..TOTAL {
        let mut conn = fx.raw("B").await.unwrap();
        // Over its cap the server may already have closed the connection: ignore write errors.
        let _ = conn
            .send_head("POST /api/v1/keys/A/enc_keys HTTP/1.1", 100)
            .await;
        slow.push(conn);
    }
    // Generous: the request itself takes milliseconds; the deadline only turns a hang into a
    // failure.
    let status = tokio::time::timeout(Duration::from_secs(60), async {
        fx.client("A")
            .get(fx.url("A", "/api/v1/keys/B/status"))
            .send()
            .await
            .map(|r| r.status().as_u16())
    })
    .await
    .expect("the legitimate client was starved")
    .expect("the legitimate request failed");
    assert_eq!(status, 200);
    // Connections beyond the per-client cap were closed by the server.
    let mut closed = 0;
    for conn in &mut slow {
        if conn.is_closed().await {
            closed += 1;
        }
    }
    assert!(
        closed >= TOTAL - PER_CLIENT,
        "only {closed} of {TOTAL} closed"
    );
    drop(slow);
    fx.stop().await;
}

/// Defect 6: a body that never arrives is answered 400 with `Connection: close` once the body
/// deadline passed.
#[tokio::test]
async fn body_that_never_arrives_gets_400_and_close() {
    let fx = Fixture::fake_limited(ServerLimits {
        body_timeout: Duration::from_secs(1),
        ..ServerLimits::default()
    })
    .await;
    let mut conn = fx.raw("A").await.unwrap();
    conn.send_head("POST /api/v1/keys/B/enc_keys HTTP/1.1", 100)
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(60), conn.response())
        .await
        .expect("no answer after the body deadline")
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(conn.is_closed().await);
    fx.stop().await;
}

/// Defect 6: admission comes before the body. A client whose certificate names no SAE attached
/// here gets 401 with `Connection: close` although its body was never sent.
#[tokio::test]
async fn unadmitted_client_gets_401_and_close_without_its_body_being_read() {
    let fx = Fixture::fake().await;
    for who in ["U", "R", "NODE"] {
        let mut conn = fx.raw(who).await.unwrap();
        conn.send_head("POST /api/v1/keys/B/enc_keys HTTP/1.1", 1000)
            .await
            .unwrap();
        let r = tokio::time::timeout(Duration::from_secs(60), conn.response())
            .await
            .unwrap_or_else(|_| panic!("{who}: no answer without the body"))
            .unwrap();
        assert_eq!(r.status, 401, "{who}");
        assert_eq!(r.header("connection"), Some("close"), "{who}");
        assert!(r.body.is_empty(), "{who}");
        assert!(conn.is_closed().await, "{who}");
    }
    fx.stop().await;
}

/// Defect 8: a node certificate is never an SAE, even when its CN names an attached SAE.
#[tokio::test]
async fn node_certificate_naming_an_sae_gets_401() {
    let fx = Fixture::fake().await;
    for path in ["/api/v1/keys/B/status", "/api/v1/keys/B/enc_keys"] {
        let r = fx
            .client("NODE-A")
            .get(fx.url("NODE-A", path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path}");
    }
    // The SAE A itself is served.
    let r = fx
        .client("A")
        .get(fx.url("A", "/api/v1/keys/B/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    fx.stop().await;
}

#[tokio::test]
async fn untrusted_client_certificate_fails_the_handshake() {
    let fx = Fixture::fake().await;
    let addr = fx.kmes[0].addr;
    let result = async {
        let mut conn = RawConn::connect(addr, fx.untrusted.clone()).await?;
        conn.send("GET /api/v1/keys/B/status HTTP/1.1", b"").await
    }
    .await;
    assert!(result.is_err(), "untrusted client got {result:?}");
    fx.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_in_flight_and_closes_idle_connections() {
    let fx = Fixture::fake().await;
    // Leave an idle keep-alive connection in A's pool and an idle raw connection open.
    assert_eq!(stored_key_count(&fx).await.unwrap(), 256);
    let mut idle = fx.raw("B").await.unwrap();
    assert_eq!(
        idle.send("GET /api/v1/keys/A/status HTTP/1.1", b"")
            .await
            .unwrap()
            .status,
        200
    );
    fx.stop().await; // asserts a prompt, clean return
    assert!(idle.is_closed().await);
}

/// Delays enc_keys after signalling that a request reached the key manager.
struct Slow {
    inner: Arc<FakeKeys>,
    entered: Arc<Notify>,
}

#[async_trait]
impl KeyService for Slow {
    fn admits(&self, s: &SaeId) -> bool {
        self.inner.admits(s)
    }
    fn knows(&self, s: &SaeId) -> bool {
        self.inner.knows(s)
    }
    fn limits(&self, m: &SaeId, s: &SaeId) -> KeyLimits {
        self.inner.limits(m, s)
    }
    fn may_pair(&self, m: &SaeId, s: &SaeId) -> bool {
        self.inner.may_pair(m, s)
    }
    fn profile(&self, m: &SaeId, s: &SaeId) -> KeyProfile {
        self.inner.profile(m, s)
    }
    async fn status(&self, m: &SaeId, s: &SaeId) -> Result<PairStatus, ServiceError> {
        self.inner.status(m, s).await
    }
    async fn enc_keys(&self, req: EncKeysRequest) -> Result<Vec<DeliveredKey>, ServiceError> {
        self.entered.notify_one();
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.inner.enc_keys(req).await
    }
    async fn dec_keys(&self, req: DecKeysRequest) -> Result<Vec<DeliveredKey>, ServiceError> {
        self.inner.dec_keys(req).await
    }
}

#[tokio::test]
async fn shutdown_lets_the_request_in_flight_finish() {
    let entered = Arc::new(Notify::new());
    let notify = entered.clone();
    let fx = Fixture::fake_with(move |inner| {
        Arc::new(Slow {
            inner,
            entered: notify,
        })
    })
    .await;
    let client = fx.client("A").clone();
    let url = fx.url("A", "/api/v1/keys/B/enc_keys");
    let in_flight = tokio::spawn(async move { client.get(url).send().await });
    entered.notified().await;
    fx.stop().await;
    let resp = in_flight.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    // The server announces that it closes the connection after this answer.
    assert_eq!(resp.headers()["connection"], "close");
    let c: KeyContainer = resp.json().await.unwrap();
    assert_eq!(c.keys.len(), 1);
}

#[tokio::test]
async fn tls_prefers_hybrid_post_quantum_and_accepts_tls12() {
    let fx = Fixture::fake().await;
    let conn = fx.raw("A").await.unwrap();
    assert_eq!(
        conn.negotiated(),
        (
            "Some(TLSv1_3)".to_owned(),
            "Some(X25519MLKEM768)".to_owned()
        )
    );

    // A TLS 1.2-only client with the same certificate is served too.
    let files = fx.files("A");
    let tls12 = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(tls::load_roots(&files.ca).unwrap())
        .with_client_auth_cert(
            tls::load_certs(&files.cert_chain).unwrap(),
            tls::load_private_key(&files.key).unwrap(),
        )
        .unwrap();
    let mut conn = RawConn::connect(fx.kmes[0].addr, Arc::new(tls12))
        .await
        .unwrap();
    assert_eq!(conn.negotiated().0, "Some(TLSv1_2)");
    let r = conn
        .send("GET /api/v1/keys/B/status HTTP/1.1", b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    fx.stop().await;
}

#[tokio::test]
async fn client_without_certificate_fails_the_handshake() {
    let fx = Fixture::fake().await;
    let config = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(tls::load_roots(&fx.files("A").ca).unwrap())
        .with_no_client_auth();
    let result = async {
        let mut conn = RawConn::connect(fx.kmes[0].addr, Arc::new(config)).await?;
        conn.send("GET /api/v1/keys/B/status HTTP/1.1", b"").await
    }
    .await;
    assert!(result.is_err(), "client without certificate got {result:?}");
    fx.stop().await;
}
