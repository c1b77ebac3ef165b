//! SKIP conformance over real HTTPS with mutual TLS: a table of requests run through one
//! `check()` helper against real SKIP servers, plus the behaviours of known SKIP clients
//! (docs/skip.md, /work/shared/reference/skip.md §5).
//!
//! Deployment: three SKIP servers over one in-memory key service ([`FakeKeys`] wrapped in
//! [`Faults`]), each a Key Provider:
//! * server 0, `KP_A`, entropy from the OS: A →KP_B→ B, A →KP_C→ C (a pair A may not use),
//!   C →KP_B→ B (its peer node is down: 503), C →KP_E→ A (an empty pool: 503);
//! * server 1, `KP_B`, no entropy: B →KP_A→ A, B →KP_Z→ C (reading C's keys fails: 500),
//!   C →KP_A→ A (C is not the slave of A's keys for B);
//! * server 2, `KP_A` again with a broken random number generator.
//!
//! Every request goes on a fresh TLS connection, as SKIP clients send them, and is read until the
//! server closes it. Placeholders: `{KEY}` is a key A just got at KP_A for KP_B (not yet fetched),
//! `{KEYU}` its ID in upper case, `{GONE}` a key B already fetched. `check()` verifies on every
//! answer the framing clients depend on, and after every refusal that nothing was consumed: A→B's
//! stored count is unchanged and `{KEY}` is still B's, byte for byte.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;

use async_trait::async_trait;
use qkd_kms::api::observe::{Api, ApiCounters, ApiObserver, Operation, Outcome};
use qkd_kms::api::skip::{self, EntropySource, EntropyUnavailable, KeyProvider, Route, SystemId};
use qkd_kms::api::{
    DecKeysRequest, DeliveredKey, EncKeysRequest, KeyLimits, KeyProfile, KeyService, PairStatus,
    ServiceError, Unavailable,
};
use qkd_kms::pki::DemoPki;
use qkd_kms::tls::{self, SaeIdentityRule};
use qkd_types::{SaeId, Secret};
use serde_json::Value;

use qkd_testnet::etsi_fixture::{
    Fixture, RawConn, SAE_PREFIX, check_nothing_consumed, start_server,
};
use qkd_testnet::fake::{FakeConfig, FakeKeys};

/// One request and the status it must get.
#[derive(Debug, Clone, Copy)]
struct Case {
    /// The SAE whose certificate is presented.
    sae: &'static str,
    /// Index of the server asked.
    kp: usize,
    method: &'static str,
    target: &'static str,
    body: &'static str,
    want: u16,
}

const fn case(
    sae: &'static str,
    kp: usize,
    method: &'static str,
    target: &'static str,
    body: &'static str,
    want: u16,
) -> Case {
    Case {
        sae,
        kp,
        method,
        target,
        body,
        want,
    }
}

#[rustfmt::skip]
const TABLE: &[Case] = &[
    // Admission before everything: no route here, attached elsewhere, unknown, node cert → 403.
    case("B", 0, "GET", "/capabilities", "", 403),
    case("R", 0, "GET", "/capabilities", "", 403),
    case("U", 0, "GET", "/key?remoteSystemID=KP_B", "", 403),
    case("NODE", 0, "GET", "/capabilities", "", 403),
    case("NODE-A", 0, "GET", "/key?remoteSystemID=KP_B", "", 403),
    case("U", 0, "DELETE", "/nope", "", 403),
    case("R", 1, "GET", "/key/{KEY}?remoteSystemID=KP_A", "", 403),
    // Capabilities.
    case("A", 0, "GET", "/capabilities", "", 200),
    case("B", 1, "GET", "/capabilities", "", 200),
    case("C", 0, "GET", "/capabilities", "", 200),
    case("A", 0, "GET", "/capabilities?remoteSystemID=KP_B", "", 400),
    // Unknown paths 404, other methods 405 with Allow: GET.
    case("A", 0, "GET", "/", "", 404),
    case("A", 0, "GET", "/keys", "", 404),
    case("A", 0, "GET", "/capabilities/", "", 404),
    case("A", 0, "GET", "/key/{KEY}/x?remoteSystemID=KP_B", "", 404),
    case("A", 0, "GET", "/api/v1/keys/B/status", "", 404),
    case("B", 1, "GET", "/entropy", "", 404), // not offered at KP_B
    case("A", 0, "POST", "/key?remoteSystemID=KP_B", "", 405),
    case("A", 0, "PUT", "/capabilities", "", 405),
    case("B", 1, "DELETE", "/key/{KEY}?remoteSystemID=KP_A", "", 405),
    case("A", 0, "PATCH", "/entropy", "", 405),
    // New key (initiator).
    case("A", 0, "GET", "/key?remoteSystemID=KP_B", "", 200),
    case("A", 0, "GET", "/key?remoteSystemID=KP_B&size=256", "", 200),
    case("A", 0, "GET", "/key?size=512&remoteSystemID=KP_B", "", 200),
    case("A", 0, "GET", "/key?remoteSystemID=KP_B&size=64", "", 200),
    case("A", 0, "GET", "/key?remoteSystemID=KP_B&size=1024", "", 200),
    case("A", 0, "GET", "/key?remoteSystemID=%4B%50_B", "", 200), // percent-encoding decoded
    case("A", 0, "GET", "/key", "", 400),
    case("A", 0, "GET", "/key?remoteSystemID=", "", 400),
    case("A", 0, "GET", "/key?remoteSystemID=KP_X", "", 400),
    case("A", 0, "GET", "/key?remoteSystemID=KP_A", "", 400),
    case("A", 0, "GET", "/key?remoteSystemID=kp_b", "", 400),
    case("A", 0, "GET", "/key?remoteSystemID=KP_B&remoteSystemID=KP_B", "", 400),
    case("A", 0, "GET", "/key?remotesystemid=KP_B", "", 400),
    case("A", 0, "GET", "/key?remoteSystemID=KP_B&size=100", "", 400),
    case("A", 0, "GET", "/key?remoteSystemID=KP_B&size=0", "", 400),
    case("A", 0, "GET", "/key?remoteSystemID=KP_B&size=56", "", 400),
    case("A", 0, "GET", "/key?remoteSystemID=KP_B&size=2048", "", 400),
    case("A", 0, "GET", "/key?remoteSystemID=KP_B&size=-8", "", 400),
    case("A", 0, "GET", "/key?remoteSystemID=KP_B&size=abc", "", 400),
    case("A", 0, "GET", "/key?remoteSystemID=KP_B&size=99999999999999999999999", "", 400),
    case("A", 0, "GET", "/key?remoteSystemID=KP_B&number=2", "", 400),
    case("A", 0, "GET", "/key?remoteSystemID=KP_B", "{}", 400), // a body
    case("A", 0, "GET", "/key?remoteSystemID=KP_C", "", 403),  // route to a pair A may not use
    case("C", 0, "GET", "/key?remoteSystemID=KP_E", "", 503),  // pool empty
    case("C", 0, "GET", "/key?remoteSystemID=KP_B", "", 503),  // peer Key Provider down
    // Key by ID (responder).
    case("B", 1, "GET", "/key/{KEY}?remoteSystemID=KP_A", "", 200),
    case("B", 1, "GET", "/key/{KEYU}?remoteSystemID=KP_A", "", 200),
    case("B", 1, "GET", "/key/{GONE}?remoteSystemID=KP_A", "", 400), // second fetch refused
    case("B", 1, "GET", "/key/00000000000000000000000000000000?remoteSystemID=KP_A", "", 400),
    case("B", 1, "GET", "/key/{KEY}", "", 400),
    case("B", 1, "GET", "/key/{KEY}?remoteSystemID=KP_X", "", 400),
    case("B", 1, "GET", "/key/{KEY}?remoteSystemID=KP_A&size=256", "", 400),
    case("B", 1, "GET", "/key/{KEY}?remoteSystemID=KP_A", "{}", 400),
    case("B", 1, "GET", "/key/not-hex?remoteSystemID=KP_A", "", 400),
    case("B", 1, "GET", "/key/{KEY}00?remoteSystemID=KP_A", "", 400),
    case("B", 1, "GET", "/key/?remoteSystemID=KP_A", "", 400),
    case("B", 1, "GET", "/key/{KEYUUID}?remoteSystemID=KP_A", "", 400), // ETSI's UUID text is not a keyId
    case("C", 1, "GET", "/key/{KEY}?remoteSystemID=KP_A", "", 400), // not C's key: kept for B
    case("A", 0, "GET", "/key/{KEY}?remoteSystemID=KP_B", "", 400), // the initiator cannot re-read
    case("B", 1, "GET", "/key/{KEY}?remoteSystemID=KP_Z", "", 500), // the store fails
    // Entropy.
    case("A", 0, "GET", "/entropy", "", 200),
    case("A", 0, "GET", "/entropy?minentropy=512", "", 200),
    case("A", 0, "GET", "/entropy?minentropy=8", "", 200),
    case("A", 0, "GET", "/entropy?minentropy=4096", "", 200),
    case("A", 0, "GET", "/entropy?minentropy=0", "", 400),
    case("A", 0, "GET", "/entropy?minentropy=12", "", 400),
    case("A", 0, "GET", "/entropy?minentropy=8192", "", 400),
    case("A", 0, "GET", "/entropy?minentropy=x", "", 400),
    case("A", 0, "GET", "/entropy?size=256", "", 400),
    case("A", 2, "GET", "/entropy", "", 503),
];

/// What a SKIP client sees of one answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// The whole status line.
    status_line: String,
    /// Headers, names lower-cased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Result<Value, String> {
        serde_json::from_slice(&self.body).map_err(|e| format!("body is not JSON: {e}"))
    }
}

/// Sends `head` (request line and headers, without the blank line) and `body` on a fresh TLS
/// connection and reads until the server closes it, as known SKIP clients do.
async fn exchange(
    fx: &Fixture,
    sae: &str,
    kp: usize,
    head: &str,
    body: &str,
) -> Result<Answer, String> {
    exchange_with(fx.kmes[kp].addr, fx.tls(sae), head, body).await
}

/// [`exchange`] with an explicit TLS client configuration.
async fn exchange_with(
    addr: std::net::SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    head: &str,
    body: &str,
) -> Result<Answer, String> {
    let mut conn = RawConn::connect(addr, tls)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let length = if body.is_empty() {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    let request = format!("{head}\r\n{length}\r\n{body}");
    conn.write_raw(request.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let bytes = conn
        .read_to_close()
        .await
        .map_err(|e| format!("the server did not close the connection: {e}"))?;
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = String::from_utf8(bytes[..end].to_vec()).map_err(|_| "head not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default().to_owned();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Answer {
        status,
        status_line,
        headers,
        body: bytes[end + 4..].to_vec(),
    })
}

/// A GET as the public Python client sends it: its own system ID in `Host`, `Connection: close`.
async fn get(fx: &Fixture, sae: &str, kp: usize, target: &str) -> Result<Answer, String> {
    let head = format!("GET {target} HTTP/1.1\r\nHost: {sae}\r\nConnection: close");
    exchange(fx, sae, kp, &head, "").await
}

/// A gets one default-size key for B at KP_A; returns its hex ID and bytes.
async fn new_key(fx: &Fixture) -> Result<(String, Vec<u8>), String> {
    let a = get(fx, "A", 0, "/key?remoteSystemID=KP_B").await?;
    key_of(&a)
}

/// B fetches a key by ID at KP_B.
async fn fetch(fx: &Fixture, id: &str) -> Result<Vec<u8>, String> {
    let a = get(fx, "B", 1, &format!("/key/{id}?remoteSystemID=KP_A")).await?;
    let (got, bytes) = key_of(&a)?;
    if got != id.to_lowercase() {
        return Err(format!("asked for {id}, got {got}"));
    }
    Ok(bytes)
}

fn key_of(a: &Answer) -> Result<(String, Vec<u8>), String> {
    if a.status != 200 {
        return Err(format!(
            "{}: {}",
            a.status,
            String::from_utf8_lossy(&a.body)
        ));
    }
    let v = a.json()?;
    let id = v["keyId"].as_str().ok_or("no keyId")?.to_owned();
    let key = v["key"].as_str().ok_or("no key")?;
    if v.as_object().map(|o| o.len()) != Some(2) {
        return Err(format!("key body has other members: {v}"));
    }
    if id.len() != 32 || !is_lower_hex(&id) || !is_lower_hex(key) {
        return Err(format!("not lowercase hex (keyId {id:?})"));
    }
    Ok((id, hex::decode(key).map_err(|e| e.to_string())?))
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A→B default-size keys in the fake's pool.
async fn stored(fx_service: &FakeKeys) -> u64 {
    let sae = |s: &str| SaeId::parse(s).unwrap();
    fx_service
        .status(&sae("A"), &sae("B"))
        .await
        .unwrap()
        .stored_key_count
}

/// Sends one case and checks the answer and the invariants every answer must keep.
async fn check(fx: &Fixture, fake: &FakeKeys, c: &Case) -> Result<(), String> {
    let key = if c.target.contains("{KEY") {
        Some(new_key(fx).await?)
    } else {
        None
    };
    let gone = if c.target.contains("{GONE}") {
        let (id, _) = new_key(fx).await?;
        fetch(fx, &id).await?;
        Some(id)
    } else {
        None
    };
    let mut target = c.target.to_owned();
    if let Some((id, _)) = &key {
        let uuid = qkd_proto::skip::HexKeyId::parse(id).unwrap().0.to_string();
        target = target
            .replace("{KEYUUID}", &uuid)
            .replace("{KEYU}", &id.to_uppercase())
            .replace("{KEY}", id);
    }
    if let Some(id) = &gone {
        target = target.replace("{GONE}", id);
    }
    let before = stored(fake).await;

    let head = format!(
        "{} {target} HTTP/1.1\r\nHost: {}\r\nConnection: close",
        c.method, c.sae
    );
    let a = exchange(fx, c.sae, c.kp, &head, c.body).await?;
    let text = String::from_utf8_lossy(&a.body).into_owned();
    if a.status != c.want {
        return Err(format!("status {}, want {}; body {text}", a.status, c.want));
    }
    // Framing every known client depends on: a reason phrase, Content-Length, never chunked,
    // JSON, no caching.
    if !a.status_line.starts_with("HTTP/1.1 ") || a.status_line.split(' ').count() < 3 {
        return Err(format!(
            "status line {:?} lacks a reason phrase",
            a.status_line
        ));
    }
    if a.header("transfer-encoding").is_some() {
        return Err("chunked answer".into());
    }
    let declared: Option<usize> = a.header("content-length").and_then(|v| v.parse().ok());
    if declared != Some(a.body.len()) {
        return Err(format!(
            "Content-Length {declared:?}, body {} bytes",
            a.body.len()
        ));
    }
    if a.header("content-type") != Some("application/json") {
        return Err(format!("content-type {:?}", a.header("content-type")));
    }
    if a.header("connection") != Some("close") {
        return Err("no Connection: close".into());
    }
    if a.header("cache-control") != Some("no-store") {
        return Err("no Cache-Control: no-store".into());
    }
    if c.want == 405 && a.header("allow") != Some("GET") {
        return Err(format!("405 with Allow {:?}", a.header("allow")));
    }
    let v = a.json()?;
    if a.status == 200 {
        check_ok(c, &v, &a, key.as_ref())?;
    } else {
        if !v["message"].is_string() || v.as_object().map(|o| o.len()) != Some(1) {
            return Err(format!("error body is not {{\"message\": ...}}: {text}"));
        }
        let after = stored(fake).await;
        check_nothing_consumed(before, after, key, |id| async move { fetch(fx, &id).await })
            .await?;
    }
    Ok(())
}

/// The 200 body of each method.
fn check_ok(
    c: &Case,
    v: &Value,
    a: &Answer,
    key: Option<&(String, Vec<u8>)>,
) -> Result<(), String> {
    let query_bits = |name: &str| {
        c.target
            .split_once(&format!("{name}="))
            .and_then(|(_, rest)| rest.split('&').next())
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(256)
    };
    if c.target.starts_with("/capabilities") {
        let local = if c.kp == 1 { "KP_B" } else { "KP_A" };
        let remotes: Vec<&str> = match (c.sae, c.kp) {
            ("A", 0) => vec!["KP_B", "KP_C"],
            ("C", 0) => vec!["KP_B", "KP_E"],
            ("B", 1) => vec!["KP_A", "KP_Z"],
            _ => return Err("no expectation for this caller".into()),
        };
        let want = serde_json::json!({"entropy": c.kp != 1, "key": true, "algorithm": "QKD+PQ+T",
            "localSystemID": local, "remoteSystemID": remotes});
        if v != &want {
            return Err(format!("capabilities {v}, want {want}"));
        }
    } else if c.target.starts_with("/entropy") {
        let bits = query_bits("minentropy");
        let random = v["randomStr"].as_str().ok_or("no randomStr")?;
        if v["minentropy"] != bits || random.len() != bits / 4 || !is_lower_hex(random) {
            return Err(format!("entropy body {v} for {bits} bits"));
        }
    } else if c.target.starts_with("/key/") {
        let (id, bytes) = key.ok_or("no placeholder key")?;
        let (got_id, got) = key_of(a)?;
        if &got_id != id || &got != bytes {
            return Err("key by ID differs from the key the initiator got".into());
        }
    } else {
        let (_, bytes) = key_of(a)?;
        if bytes.len() * 8 != query_bits("size") {
            return Err(format!(
                "{} bytes for size {}",
                bytes.len(),
                query_bits("size")
            ));
        }
    }
    Ok(())
}

/// The deployment of the module documentation. Returns it and the fake behind it.
async fn deployment() -> (Fixture, Arc<FakeKeys>) {
    let (fx, fake, _) = deployment_observed().await;
    (fx, fake)
}

/// [`deployment`], its Key Providers reporting every answer to the counters returned.
async fn deployment_observed() -> (Fixture, Arc<FakeKeys>, Arc<ApiCounters>) {
    let counters = Arc::new(ApiCounters::new());
    let fake = Arc::new(FakeKeys::new(FakeConfig {
        kme: "KME-1",
        attached: vec!["A", "B", "C"],
        remote: vec!["R"],
        pairs: vec![
            ("A", "B", 65536),
            ("B", "A", 65536),
            ("C", "A", 0),
            ("C", "B", 16384),
            ("B", "C", 16384),
        ],
    }));
    let service: Arc<dyn KeyService> = Arc::new(Faults(fake.clone()));
    let dir = tempfile::tempdir().unwrap();
    let pki = DemoPki::create(dir.path()).unwrap();
    let route = |e: &str, r: &str, p: &str| Route {
        encryptor: SaeId::parse(e).unwrap(),
        remote: SystemId::parse(r).unwrap(),
        peer: SaeId::parse(p).unwrap(),
    };
    let kp_a = |entropy: Arc<dyn EntropySource>| {
        KeyProvider::new(
            SystemId::parse("KP_A").unwrap(),
            None,
            [
                route("A", "KP_B", "B"),
                route("A", "KP_C", "C"),
                route("C", "KP_B", "B"),
                route("C", "KP_E", "A"),
            ],
            Some(entropy),
        )
        .unwrap()
    };
    let kp_b = KeyProvider::new(
        SystemId::parse("KP_B").unwrap(),
        None,
        [
            route("B", "KP_A", "A"),
            route("B", "KP_Z", "C"),
            route("C", "KP_A", "A"),
        ],
        None,
    )
    .unwrap();
    let mut kmes = Vec::new();
    for (i, provider) in [
        kp_a(Arc::new(skip::OsEntropy)),
        kp_b,
        kp_a(Arc::new(BrokenRng)),
    ]
    .into_iter()
    .enumerate()
    {
        let service = service.clone();
        let observer: Arc<dyn ApiObserver> = counters.clone();
        kmes.push(
            start_server(&pki, &format!("kp-{i}"), move |listener, tls, stop| {
                tokio::spawn(skip::serve_observed(
                    listener,
                    tls,
                    service,
                    provider,
                    SaeIdentityRule::new(SAE_PREFIX),
                    Default::default(),
                    observer,
                    stop,
                ))
            })
            .await,
        );
    }
    (Fixture::with_clients(dir, pki, kmes), fake, counters)
}

/// Every answer reaches the instrumentation hook as (skip, operation, outcome class), the one
/// the node turns into metrics and audit records.
#[tokio::test]
async fn every_answer_is_reported_to_the_instrumentation_hook() {
    let (fx, _fake, counters) = deployment_observed().await;
    let status = |a: &Answer| a.status;
    assert_eq!(
        get(&fx, "A", 0, "/capabilities").await.map(|a| status(&a)),
        Ok(200)
    );
    let (id, _) = new_key(&fx).await.unwrap();
    assert_eq!(fetch(&fx, &id).await.map(|k| k.len()), Ok(32));
    // The second fetch: the key was delivered already.
    let again = get(&fx, "B", 1, &format!("/key/{id}?remoteSystemID=KP_A")).await;
    assert_eq!(again.map(|a| status(&a)), Ok(400));
    assert_eq!(
        get(&fx, "A", 0, "/entropy?minentropy=64")
            .await
            .map(|a| status(&a)),
        Ok(200)
    );
    assert_eq!(
        get(&fx, "A", 0, "/nowhere").await.map(|a| status(&a)),
        Ok(404)
    );
    assert_eq!(
        get(&fx, "A", 0, "/key?remoteSystemID=KP_B&size=7")
            .await
            .map(|a| status(&a)),
        Ok(400)
    );
    fx.stop().await;
    use Operation as Op;
    use Outcome as O;
    for (op, outcome, n) in [
        (Op::Status, O::Ok, 1),
        (Op::EncKeys, O::Ok, 1),
        (Op::DecKeys, O::Ok, 1),
        (Op::DecKeys, O::NotFound, 1),
        (Op::Entropy, O::Ok, 1),
        (Op::Other, O::Invalid, 1),
        (Op::EncKeys, O::Invalid, 1),
    ] {
        assert_eq!(
            counters.count(Api::Skip, op, outcome),
            n,
            "{} {}",
            op.label(),
            outcome.label()
        );
    }
    assert_eq!(
        counters.total(),
        7,
        "nothing counted twice, nothing under another API"
    );
}

#[tokio::test]
async fn conformance_table() {
    let (fx, fake) = deployment().await;
    let mut failures = Vec::new();
    for (i, c) in TABLE.iter().enumerate() {
        if let Err(e) = check(&fx, &fake, c).await {
            failures.push(format!(
                "row {i} {} @{} {} {}: {e}",
                c.sae, c.kp, c.method, c.target
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        TABLE.len(),
        failures.join("\n")
    );
    fx.stop().await;
}

/// The IKEv2 flow of the draft §5: capabilities at both ends, a new key at the initiator's Key
/// Provider, the same key by ID at the responder's, exactly once on each side.
#[tokio::test]
async fn initiator_and_responder_get_the_same_key_once_each() {
    let (fx, fake) = deployment().await;
    let before = stored(&fake).await;
    let (id, key) = new_key(&fx).await.unwrap();
    assert_eq!(key.len(), 32);
    assert_eq!(stored(&fake).await, before - 1, "one key taken, no more");
    assert_eq!(fetch(&fx, &id).await.unwrap(), key);
    for (sae, kp, remote) in [("B", 1, "KP_A"), ("A", 0, "KP_B")] {
        let again = get(&fx, sae, kp, &format!("/key/{id}?remoteSystemID={remote}"))
            .await
            .unwrap();
        assert_eq!(again.status, 400, "{sae} fetched twice");
    }
    // Keys are fresh: a second new key differs in ID and bytes.
    let (id2, key2) = new_key(&fx).await.unwrap();
    assert_ne!(id2, id);
    assert_ne!(key2, key);
    fx.stop().await;
}

/// What the public Python client does (skip.md §5): its exact request bytes, `Host` carrying its
/// own system ID, no percent-encoding; it reads until the server closes, needs `" 200 "` in the
/// status line and cuts the JSON from the first `{` to the last `}`.
#[tokio::test]
async fn the_public_python_clients_requests_work_byte_for_byte() {
    let (fx, _fake) = deployment().await;
    let send = |sae: &'static str, kp: usize, line: String| {
        let fx = &fx;
        async move {
            let head = format!("{line}\r\nHost: {sae}\r\nConnection: close");
            let raw = exchange(fx, sae, kp, &head, "").await.unwrap();
            assert!(raw.status_line.contains(" 200 "), "{}", raw.status_line);
            let text = String::from_utf8(raw.body).unwrap();
            let (start, end) = (text.find('{').unwrap(), text.rfind('}').unwrap());
            serde_json::from_str::<Value>(&text[start..=end]).unwrap()
        }
    };
    let caps = send("A", 0, "GET /capabilities HTTP/1.1".into()).await;
    assert_eq!(caps["localSystemID"], "KP_A");
    let remote = caps["remoteSystemID"][0].as_str().unwrap().to_owned();
    let key = send(
        "A",
        0,
        format!("GET /key?remoteSystemID={remote}&size=256 HTTP/1.1"),
    )
    .await;
    let id = key["keyId"].as_str().unwrap();
    let back = send(
        "B",
        1,
        format!("GET /key/{id}?remoteSystemID=KP_A HTTP/1.1"),
    )
    .await;
    assert_eq!(back, key);
    let entropy = send("A", 0, "GET /entropy HTTP/1.1".into()).await;
    assert_eq!(entropy["minentropy"], 256);
    // HTTP/1.0 without Host or Connection works too, and also gets a close.
    let old = exchange(&fx, "A", 0, "GET /capabilities HTTP/1.0", "")
        .await
        .unwrap();
    assert_eq!(old.status, 200);
    fx.stop().await;
}

/// A client that keeps asking on one connection gets its first answer and then a close, never a
/// second answer (one request per connection, skip.md §5).
#[tokio::test]
async fn one_request_per_connection() {
    let (fx, _fake) = deployment().await;
    let mut conn = RawConn::connect(fx.kmes[0].addr, fx.tls("A"))
        .await
        .unwrap();
    let one = "GET /capabilities HTTP/1.1\r\nHost: A\r\n\r\n";
    conn.write_raw(format!("{one}{one}").as_bytes())
        .await
        .unwrap();
    let bytes = conn.read_to_close().await.unwrap();
    let text = String::from_utf8(bytes).unwrap();
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 1, "{text}");
    fx.stop().await;
}

/// Two OS-entropy samples differ (a broken source returning zeros or a constant would not).
#[tokio::test]
async fn entropy_samples_differ() {
    let (fx, _fake) = deployment().await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        let a = get(&fx, "A", 0, "/entropy").await.unwrap();
        let v = a.json().unwrap();
        assert!(seen.insert(v["randomStr"].as_str().unwrap().to_owned()));
    }
    fx.stop().await;
}

/// The draft's certificate modes (its Table 1): TLS 1.3 with `TLS_AES_256_GCM_SHA384` (REQUIRED)
/// and TLS 1.2 with `TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384`, each the only suite the client
/// offers; a certificate from a CA the node does not trust fails.
#[tokio::test]
async fn the_drafts_certificate_suites_work_and_foreign_certificates_do_not() {
    use rustls::crypto::aws_lc_rs::{cipher_suite, default_provider};
    let (fx, _fake) = deployment().await;
    let files = fx.files("A");
    for (suite, version) in [
        (
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            &rustls::version::TLS13,
        ),
        (
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            &rustls::version::TLS12,
        ),
    ] {
        let provider = rustls::crypto::CryptoProvider {
            cipher_suites: vec![suite],
            ..default_provider()
        };
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(tls::load_roots(&files.ca).unwrap())
            .with_client_auth_cert(
                tls::load_certs(&files.cert_chain).unwrap(),
                tls::load_private_key(&files.key).unwrap(),
            )
            .unwrap();
        let head = "GET /capabilities HTTP/1.1\r\nHost: A\r\nConnection: close";
        let a = exchange_with(fx.kmes[0].addr, Arc::new(config), head, "")
            .await
            .unwrap_or_else(|e| panic!("{suite:?}: {e}"));
        assert_eq!(a.status, 200, "{suite:?}");
    }
    let head = "GET /capabilities HTTP/1.1\r\nHost: A\r\nConnection: close";
    let foreign = exchange_with(fx.kmes[0].addr, fx.untrusted.clone(), head, "").await;
    assert!(foreign.is_err(), "a foreign certificate got {foreign:?}");
    fx.stop().await;
}

/// An entropy source that always fails, for the 503 row.
struct BrokenRng;

impl EntropySource for BrokenRng {
    fn take(&self, _: usize) -> Result<Secret, EntropyUnavailable> {
        Err(EntropyUnavailable)
    }
}

/// [`FakeKeys`] with two faults: the node of C's peer B is unreachable when C asks for a key for
/// B, and reading keys whose master is C fails in the store.
struct Faults(Arc<FakeKeys>);

#[async_trait]
impl KeyService for Faults {
    fn admits(&self, sae: &SaeId) -> bool {
        self.0.admits(sae)
    }
    fn knows(&self, sae: &SaeId) -> bool {
        self.0.knows(sae)
    }
    fn limits(&self, master: &SaeId, slave: &SaeId) -> KeyLimits {
        self.0.limits(master, slave)
    }
    fn may_pair(&self, master: &SaeId, slave: &SaeId) -> bool {
        self.0.may_pair(master, slave)
    }
    fn profile(&self, master: &SaeId, slave: &SaeId) -> KeyProfile {
        self.0.profile(master, slave)
    }
    async fn status(&self, master: &SaeId, slave: &SaeId) -> Result<PairStatus, ServiceError> {
        self.0.status(master, slave).await
    }
    async fn enc_keys(&self, req: EncKeysRequest) -> Result<Vec<DeliveredKey>, ServiceError> {
        if req.master.as_str() == "C" && req.slave.as_str() == "B" {
            return Err(ServiceError::PeerUnavailable(Unavailable::Unreachable));
        }
        self.0.enc_keys(req).await
    }
    async fn dec_keys(&self, req: DecKeysRequest) -> Result<Vec<DeliveredKey>, ServiceError> {
        if req.master.as_str() == "C" {
            return Err(ServiceError::Storage);
        }
        self.0.dec_keys(req).await
    }
}
