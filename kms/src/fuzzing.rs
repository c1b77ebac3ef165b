//! The bodies of the fuzz targets in `fuzz/` (docs/fuzzing.md), as plain functions.
//!
//! `cargo fuzz` runs them on generated input; the workspace's ordinary tests run them over the
//! committed corpus (`fuzz/corpus/<target>/`), so they cannot rot and every crash found stays a
//! regression test. Each body takes arbitrary bytes, must never panic, and asserts the property
//! its target checks. Not an API: nothing outside the fuzz crate and those tests calls this.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use arbitrary::{Arbitrary, Unstructured};
use http::Method;
use prost::Message;
use qkd_proto::hybrid as hpb;
use qkd_proto::peer as pb;
use qkd_types::{BlockId, KeyId, KmeId, SaeId, Secret};

use crate::api::etsi014::{Body, RawRequest, handle};
use crate::api::{
    DecKeysRequest, DeliveredKey, EncKeysRequest, KeyLimits, KeyProfile, KeyService, PairStatus,
    ServiceError,
};
use crate::core::pool::{BlockMeta, BlockState};
use crate::hybrid::combiner::{Ma, Mb};
use crate::hybrid::exchange::ReceivedInit;
use crate::hybrid::{Policy, Suite};
use crate::manager::{advert_of, key_id, merged, offered_blocks, parse_path, range_of, request_id};
use crate::relay::destination::{DestRules, Destination, Directory, notice};
use crate::relay::topology::Topology;
use crate::store::vault::Sealed;
use crate::store::{self, MadeUnder, PoolKey, StoredKey};

// ---- corpus runs (the workspace's tests) ----

/// Runs `body` over every file of the target's corpus and regressions; fails naming each file
/// whose run panicked. An empty corpus is a failure too: the test must test something.
pub fn run_corpus(fuzz_dir: &Path, target: &str, body: fn(&[u8])) {
    let mut files: Vec<PathBuf> = Vec::new();
    for sub in ["corpus", "regressions"] {
        let dir = fuzz_dir.join(sub).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        files.extend(entries.map(|e| e.expect("corpus entry").path()));
    }
    files.sort();
    assert!(
        files.len() >= 10,
        "{target}: only {} corpus files under {}",
        files.len(),
        fuzz_dir.display()
    );
    let mut failures = Vec::new();
    for f in &files {
        let data = std::fs::read(f).expect("corpus file reads");
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&data))).is_err() {
            failures.push(f.display().to_string());
        }
    }
    assert!(
        failures.is_empty(),
        "{target} panicked on:\n{}",
        failures.join("\n")
    );
}

// ---- etsi_request ----

/// Target `etsi_request`: one request through the sans-IO ETSI 014 layer ([`handle`]) against
/// [`FuzzKeyService`]. Every answer must carry a status the policy allows, a JSON body unless it
/// is 401, `Allow` only on 405, and a 200 must hold exactly what the service delivered.
///
/// The input is a readable framing of what the HTTP shell hands over, one item per line:
/// caller SAE ID (`-` for a client without one), `METHOD target` (target = path, optionally
/// `?query`), Content-Type (`-` for none), `complete` or `too-large`, then the body (the rest).
/// Missing lines take the defaults `-`, `GET /`, `-`, `complete`. Returns the answer's status,
/// or `None` for input no HTTP shell would hand over (an invalid method, caller or target).
pub fn etsi_request(data: &[u8]) -> Option<u16> {
    let f = Framed::parse(data)?;
    let caller = f.caller;
    let req = RawRequest {
        method: &f.method,
        path: f.path,
        query: f.query,
        content_type: f.content_type,
        body: f.body,
    };
    let service = FuzzKeyService::default();
    let reply = futures::executor::block_on(handle(&req, caller.as_ref(), &service));

    let code = reply.status.as_u16();
    assert!(
        [200, 400, 401, 404, 405, 503].contains(&code),
        "status {code} is not one the policy allows"
    );
    assert_eq!(reply.body.is_none(), code == 401, "JSON body unless 401");
    assert_eq!(reply.allow.is_some(), code == 405, "Allow only on 405");
    if code == 401 || caller.as_ref().is_none_or(|c| !service.admits(c)) {
        assert_eq!(code, 401, "an unadmitted caller learns nothing");
        assert_eq!(service.delivered(), 0);
    }
    let body: serde_json::Value = match &reply.body {
        Some(b) => serde_json::from_slice(b).expect("every body is JSON"),
        None => return Some(code),
    };
    if code == 200 {
        if let Some(keys) = body.get("keys") {
            let keys = keys.as_array().expect("keys is an array");
            assert_eq!(
                keys.len() as u64,
                service.delivered(),
                "200 holds what was delivered"
            );
            assert!(!keys.is_empty());
        } else {
            assert!(
                body.get("source_KME_ID").is_some(),
                "a 200 is keys or status"
            );
            assert_eq!(service.delivered(), 0);
        }
    } else {
        assert!(body.get("message").is_some_and(|m| m.is_string()));
        assert_eq!(service.delivered(), 0, "nothing is delivered on an error");
    }
    Some(code)
}

/// The readable framing of the request targets (see [`etsi_request`]).
struct Framed<'a> {
    caller: Option<SaeId>,
    method: Method,
    path: &'a str,
    query: Option<&'a str>,
    content_type: Option<&'a [u8]>,
    body: Body<'a>,
}

impl<'a> Framed<'a> {
    /// `None` for input no HTTP shell would hand over (an invalid method, caller or target).
    fn parse(data: &'a [u8]) -> Option<Self> {
        let mut rest = data;
        let caller_line = line(&mut rest).unwrap_or(b"-");
        let request_line = line(&mut rest).unwrap_or(b"GET /");
        let ctype_line = line(&mut rest).unwrap_or(b"-");
        let body_line = line(&mut rest).unwrap_or(b"complete");

        let caller = match caller_line {
            b"-" => None,
            c => match std::str::from_utf8(c).ok().map(SaeId::parse) {
                Some(Ok(c)) => Some(c),
                // A certificate never yields an invalid SAE ID: such input says nothing new.
                _ => return None,
            },
        };
        let (method, target) = match request_line.iter().position(|&b| b == b' ') {
            Some(i) => (&request_line[..i], &request_line[i + 1..]),
            None => (request_line, &b"/"[..]),
        };
        // The HTTP shell (hyper) hands over only valid methods and UTF-8 targets.
        let method = Method::from_bytes(method).ok()?;
        let target = std::str::from_utf8(target).ok()?;
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        Some(Self {
            caller,
            method,
            path,
            query,
            content_type: (ctype_line != b"-").then_some(ctype_line),
            body: if body_line == b"too-large" {
                Body::TooLarge
            } else {
                Body::Complete(rest)
            },
        })
    }
}

// ---- skip_request ----

/// Target `skip_request`: one request through the sans-IO SKIP layer
/// ([`crate::api::skip::handle`]) against [`FuzzKeyService`] and a Key Provider `KP_1` with the
/// routes A →KP_2→ B, A →KP_R→ R, B →KP_2→ A, M →KP_2→ A and X →KP_2→ B (X may pair with
/// nobody). Every answer must carry a status the policy allows (docs/skip.md §4), a JSON body,
/// `Allow` only on 405; a caller without a route gets 403 and nothing else; nothing is delivered
/// on an error, and a key answer holds exactly one delivered key.
///
/// The input uses the framing of [`etsi_request`]; the Content-Type line is ignored and a
/// request has a body if anything follows the fourth line (or it says `too-large`). Returns the
/// answer's status, or `None` for input no HTTP shell would hand over.
pub fn skip_request(data: &[u8]) -> Option<u16> {
    use crate::api::skip::{self, KeyProvider, OsEntropy, Route, SystemId};
    let f = Framed::parse(data)?;
    let req = skip::RawRequest {
        method: &f.method,
        path: f.path,
        query: f.query,
        has_body: !matches!(f.body, Body::Complete(&[])),
    };
    let sae = |s: &str| SaeId::parse(s).expect("valid SAE ID");
    let system = |s: &str| SystemId::parse(s).expect("valid system ID");
    let routes = [
        ("A", "KP_2", "B"),
        ("A", "KP_R", "R"),
        ("B", "KP_2", "A"),
        ("M", "KP_2", "A"),
        ("X", "KP_2", "B"),
    ]
    .map(|(e, r, p)| Route {
        encryptor: sae(e),
        remote: system(r),
        peer: sae(p),
    });
    let provider = KeyProvider::new(
        system("KP_1"),
        None,
        routes,
        Some(std::sync::Arc::new(OsEntropy)),
    )
    .expect("valid provider");
    let service = FuzzKeyService::default();
    let reply =
        futures::executor::block_on(skip::handle(&req, f.caller.as_ref(), &provider, &service));

    let code = reply.status.as_u16();
    assert!(
        [200, 400, 403, 404, 405, 500, 503].contains(&code),
        "status {code} is not one the policy allows"
    );
    assert_eq!(reply.allow.is_some(), code == 405, "Allow only on 405");
    if f.caller.as_ref().is_none_or(|c| !provider.serves(c)) {
        assert_eq!(code, 403, "a caller without a route learns nothing");
    }
    let body: serde_json::Value =
        serde_json::from_slice(reply.body.as_deref().expect("every answer has a body"))
            .expect("every body is JSON");
    if code == 200 && body.get("keyId").is_some() {
        assert_eq!(
            service.delivered(),
            1,
            "a key answer holds one delivered key"
        );
        let id = body["keyId"].as_str().expect("keyId is text");
        assert!(
            id.len() == 32
                && id
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    } else {
        assert_eq!(
            service.delivered(),
            0,
            "nothing is delivered without a key answer"
        );
        if code != 200 {
            assert!(body.get("message").is_some_and(|m| m.is_string()));
        }
    }
    Some(code)
}

/// A small in-memory key manager: SAEs `A`, `A2`, `B`, `C`, `M` attached here, `R` elsewhere,
/// `X` attached but paired with nobody. `A`-`B`, `A`-`C`, `A`-`A2`, `A`-`R`, `M`-`A`, `B`-`C`
/// may pair; `A2`'s pairs are hybrid with another suite (so mixing them is refused). Holds 64
/// keys per request size; `dec_keys` knows the key IDs whose first byte is even.
#[derive(Debug, Default)]
pub struct FuzzKeyService {
    delivered: std::sync::atomic::AtomicU64,
}

impl FuzzKeyService {
    /// Keys delivered so far.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn keys(&self, ids: Vec<KeyId>, size_bits: u32) -> Vec<DeliveredKey> {
        self.delivered
            .fetch_add(ids.len() as u64, std::sync::atomic::Ordering::Relaxed);
        ids.into_iter()
            .map(|id| DeliveredKey {
                id,
                key: Secret::zeroed(size_bits as usize / 8),
            })
            .collect()
    }
}

const LOCAL_SAES: [&str; 6] = ["A", "A2", "B", "C", "M", "X"];
const PAIRS: [(&str, &str); 6] = [
    ("A", "B"),
    ("A", "C"),
    ("A", "A2"),
    ("A", "R"),
    ("M", "A"),
    ("B", "C"),
];

#[async_trait::async_trait]
impl KeyService for FuzzKeyService {
    fn admits(&self, sae: &SaeId) -> bool {
        LOCAL_SAES.contains(&sae.as_str())
    }

    fn knows(&self, sae: &SaeId) -> bool {
        self.admits(sae) || sae.as_str() == "R"
    }

    fn limits(&self, master: &SaeId, _slave: &SaeId) -> KeyLimits {
        KeyLimits {
            max_sae_id_count: if master.as_str() == "A" { 2 } else { 0 },
            ..KeyLimits::default()
        }
    }

    fn may_pair(&self, master: &SaeId, slave: &SaeId) -> bool {
        let (m, s) = (master.as_str(), slave.as_str());
        PAIRS
            .iter()
            .any(|&(a, b)| (a, b) == (m, s) || (b, a) == (m, s))
    }

    fn profile(&self, master: &SaeId, slave: &SaeId) -> KeyProfile {
        let other = [master.as_str(), slave.as_str()].contains(&"A2");
        KeyProfile {
            policy: "QKD+PQ+T",
            suite: if other { "suite-2" } else { "suite-1" },
        }
    }

    async fn status(&self, master: &SaeId, slave: &SaeId) -> Result<PairStatus, ServiceError> {
        Ok(PairStatus {
            source_kme: KmeId::parse("KME-1").map_err(|_| ServiceError::Storage)?,
            target_kme: KmeId::parse(if slave.as_str() == "R" {
                "KME-2"
            } else {
                "KME-1"
            })
            .map_err(|_| ServiceError::Storage)?,
            limits: self.limits(master, slave),
            stored_key_count: 64,
            max_key_count: 1024,
        })
    }

    async fn enc_keys(&self, req: EncKeysRequest) -> Result<Vec<DeliveredKey>, ServiceError> {
        if req.slave.as_str() == "R" && req.size_bits > 512 {
            return Err(ServiceError::PeerUnavailable(
                crate::api::Unavailable::Unreachable,
            ));
        }
        if req.number > 64 {
            return Err(ServiceError::InsufficientKeyMaterial);
        }
        let ids = (0..req.number).map(|_| KeyId::random()).collect();
        Ok(self.keys(ids, req.size_bits))
    }

    async fn dec_keys(&self, req: DecKeysRequest) -> Result<Vec<DeliveredKey>, ServiceError> {
        if req.key_ids.iter().any(|k| k.as_bytes()[0] % 2 == 1) {
            return Err(ServiceError::KeysNotFound);
        }
        if req.master == req.slave || !self.may_pair(&req.master, &req.slave) {
            return Err(ServiceError::NotSlave);
        }
        Ok(self.keys(req.key_ids, 256))
    }
}

/// Takes one `\n`-terminated line (or whatever is left) off the front.
fn line<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    if rest.is_empty() {
        return None;
    }
    let (l, r) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (*rest, &b""[..]),
    };
    *rest = r;
    Some(l)
}

// ---- peer_messages ----

/// The peer messages [`peer_messages`] decodes, by the value of the input's first byte (modulo
/// their number).
pub const PEER_MESSAGES: [&str; 14] = [
    "OfferBlocksRequest",
    "AdvertiseRequest",
    "RelayAllocateRequest",
    "RelayRequest",
    "ForwardRequest",
    "MulticastDeliver",
    "DeliveryNotice",
    "HybridInit",
    "HybridReply",
    "HybridConfirm",
    "HybridAck",
    "QkdOnlyInit",
    "QkdOnlyReply",
    "QkdOnlyAck",
];

/// Target `peer_messages`: the first byte picks a message of the peer protocol
/// ([`PEER_MESSAGES`]); the rest is decoded as it with prost and converted into domain values
/// with the key manager's own conversions (IDs, paths, adverts into the topology, ranges,
/// hybrid message 1 and the bound `MA`/`MB` encodings). Anything malformed must come back as an
/// error, never a panic; what converts must satisfy the conversion's promises.
pub fn peer_messages(data: &[u8]) {
    let Some((&kind, msg)) = data.split_first() else {
        return;
    };
    match kind as usize % PEER_MESSAGES.len() {
        0 => {
            let Ok(m) = pb::OfferBlocksRequest::decode(msg) else {
                return;
            };
            let _ = qkd_types::LinkId::parse(&m.link_id);
            if let Ok(blocks) = offered_blocks(&m) {
                assert_eq!(blocks.len(), m.block_ids.len());
                for (i, (seq, _)) in blocks.iter().enumerate() {
                    assert_eq!(*seq - m.first_seq, i as u64, "sequence numbers follow on");
                }
            }
        }
        1 => {
            let Ok(m) = pb::AdvertiseRequest::decode(msg) else {
                return;
            };
            let mut topo = Topology::new();
            for (i, a) in m.adverts.iter().enumerate() {
                if let Ok(advert) = advert_of(a) {
                    assert_eq!(advert.links.len(), a.links.len());
                    topo.update(advert, i as u64);
                }
            }
            // Whatever the adverts say, routing over them terminates with a loop-free path.
            let nodes: Vec<_> = topo.adverts().map(|a| a.origin.clone()).collect();
            let _ = topo.edges();
            for from in nodes.iter().take(4) {
                for to in nodes.iter().take(4) {
                    if let Some(path) = topo.route(from, to, 1) {
                        let distinct: BTreeSet<_> = path.iter().collect();
                        assert_eq!(distinct.len(), path.len(), "route repeats a node");
                        assert_eq!(path.first(), Some(from));
                        assert_eq!(path.last(), Some(to));
                    }
                    let _ = topo.link_between(from, to);
                }
            }
            topo.expire(u64::MAX, 1);
        }
        2 => {
            let Ok(m) = pb::RelayAllocateRequest::decode(msg) else {
                return;
            };
            let _ = request_id(&m.hop_id);
            let _ = qkd_types::LinkId::parse(&m.link_id);
        }
        3 => {
            let Ok(m) = pb::RelayRequest::decode(msg) else {
                return;
            };
            if let Some(h) = &m.header {
                relay_header(h, &m.ciphertext, &m.e2e);
            }
            let _ = request_id(&m.hop_id);
            let _ = qkd_types::LinkId::parse(&m.link_id);
            let mut all: Vec<_> = m.pad.iter().map(range_of).collect();
            all.extend(m.auth.iter().map(range_of));
            let joined = merged(&all);
            assert!(joined.len() <= all.len());
            let total = |rs: &[crate::core::pool::Range]| -> u64 {
                rs.iter().map(|r| u64::from(r.len)).sum()
            };
            assert_eq!(total(&joined), total(&all), "merging keeps every byte");
        }
        4 => {
            let Ok(m) = pb::ForwardRequest::decode(msg) else {
                return;
            };
            if let Ok(path) = parse_path(&m.path) {
                assert!((2..=64).contains(&path.len()));
            }
            let _ = request_id(&m.relay_id);
            // The end-to-end payload, as the destination reads it by kind.
            peer_messages_e2e(m.kind, &m.e2e);
        }
        5 => peer_messages_e2e(3, msg),
        6 => peer_messages_e2e(4, msg),
        7 => {
            let Ok(m) = hpb::HybridInit::decode(msg) else {
                return;
            };
            hybrid_init(&m);
        }
        8 => {
            let Ok(m) = hpb::HybridReply::decode(msg) else {
                return;
            };
            for suite in Suite::ALL {
                for policy in Policy::ALL {
                    if let Ok(mb) = Mb::parse(suite, policy, &m.mb) {
                        assert_eq!(mb.encode(), m.mb, "MB parses only its exact encoding");
                    }
                }
            }
        }
        9 => {
            let _ = hpb::HybridConfirm::decode(msg);
        }
        10 => {
            let _ = hpb::HybridAck::decode(msg);
        }
        11 => {
            let Ok(m) = hpb::QkdOnlyInit::decode(msg) else {
                return;
            };
            let _ = KmeId::parse(&m.kme_a);
            let _ = KmeId::parse(&m.kme_b);
            let _ = SaeId::parse(&m.sae_master);
            let _: Result<Vec<KeyId>, _> = m.key_ids.iter().map(|k| key_id(k)).collect();
            let _: Result<Vec<KeyId>, _> = m.relay_key_ids.iter().map(|k| key_id(k)).collect();
        }
        12 => {
            let _ = hpb::QkdOnlyReply::decode(msg);
        }
        _ => {
            let _ = hpb::QkdOnlyAck::decode(msg);
        }
    }
}

/// The relay header as the destination converts it.
fn relay_header(h: &pb::RelayHeader, payload: &[u8], msg1: &[u8]) {
    let Ok(path) = parse_path(&h.path) else {
        return;
    };
    let distinct: BTreeSet<_> = path.iter().collect();
    assert_eq!(distinct.len(), path.len());
    let Ok(offer) = crate::peer::wire::offer_of(h, &path) else {
        return;
    };
    assert_eq!(offer.key_ids.len(), h.key_ids.len());
    assert_eq!(offer.relay_key_ids.len(), h.relay_key_ids.len());
    // The destination's checks on whatever the header says: an answer or a refusal, and a
    // refusal leaves nothing waiting.
    let dir = FuzzNet::new();
    let mut d = Destination::new(DestRules {
        hop_timeout_ms: 1_000,
        key_ttl_ms: 1_000,
        pool_ttl_ms: 1_000,
    });
    let r = d.offer(&dir, 0, &offer, &Secret::copy_from(payload), msg1);
    assert_eq!(d.in_flight(), usize::from(r.is_ok()));
}

/// A network for the destination's checks: node E with SAEs ENC-E1 and ENC-E2, ENC-A1 at A,
/// every pair allowed, the default mode; no end-to-end identity (so no exchange completes).
#[derive(Debug)]
struct FuzzNet {
    a: qkd_types::NodeId,
    e: qkd_types::NodeId,
    kme: KmeId,
    e2e: crate::manager::E2eKeys,
}

impl FuzzNet {
    fn new() -> Self {
        Self {
            a: qkd_types::NodeId::parse("A").expect("valid"),
            e: qkd_types::NodeId::parse("E").expect("valid"),
            kme: KmeId::parse("KME-E").expect("valid"),
            e2e: crate::manager::E2eKeys::default(),
        }
    }
}

impl Directory for FuzzNet {
    fn node(&self) -> &qkd_types::NodeId {
        &self.e
    }
    fn kme(&self) -> &KmeId {
        &self.kme
    }
    fn kme_of(&self, node: &qkd_types::NodeId) -> KmeId {
        KmeId::parse(&format!("KME-{node}")).unwrap_or_else(|_| self.kme.clone())
    }
    fn node_of(&self, sae: &SaeId) -> Option<&qkd_types::NodeId> {
        match sae.as_str() {
            "ENC-A1" => Some(&self.a),
            "ENC-E1" | "ENC-E2" => Some(&self.e),
            _ => None,
        }
    }
    fn pair_allowed(&self, _: &SaeId, _: &SaeId) -> bool {
        true
    }
    fn mode(&self, _: &SaeId, _: &SaeId) -> crate::manager::KeyMode {
        crate::manager::KeyMode::default()
    }
    fn limits(&self) -> KeyLimits {
        KeyLimits::default()
    }
    fn e2e(&self) -> &crate::manager::E2eKeys {
        &self.e2e
    }
    fn mixed_profiles_allowed(&self) -> bool {
        false
    }
}

/// An end-to-end payload of a forwarded message of `kind` (3 = multicast delivery, 4 = delivery
/// notice; the others are hybrid messages checked by the exchange), converted as the
/// destination converts it; a notice is then checked as the destination checks it (no key is
/// pinned here, so it must be refused).
fn peer_messages_e2e(kind: u32, e2e: &[u8]) {
    match kind {
        3 => {
            let _ = crate::peer::wire::multicast_of(e2e);
        }
        4 => {
            if let Ok(m) = crate::peer::wire::notice_of(e2e) {
                let dir = FuzzNet::new();
                assert!(notice(&dir, &dir.a, &m, 1_000, BTreeSet::new()).is_err());
            }
        }
        _ => {
            let _ = hpb::HybridConfirm::decode(e2e);
        }
    }
}

/// Hybrid message 1 as the destination decodes it before verifying it.
fn hybrid_init(m: &hpb::HybridInit) {
    if ReceivedInit::parse(m).is_ok() {
        assert!(!m.key_ids.is_empty());
    }
    for suite in Suite::ALL {
        for policy in Policy::ALL {
            if let Ok(ma) = Ma::parse(suite, policy, &m.ma) {
                assert_eq!(ma.encode(), m.ma, "MA parses only its exact encoding");
            }
        }
    }
}

// ---- store_codecs ----

/// Target `store_codecs`: the first byte picks what to do with the rest.
///
/// * 0 to 3: decode the rest as a waiting key, a pool key, block metadata or a sealed value. A
///   corrupt record must be an error, never a panic or an abort; what decodes re-encodes to a
///   record that decodes to the same value.
/// * otherwise: build an arbitrary record of each kind from the rest (with `arbitrary`), encode
///   it and decode it: the same record must come back.
pub fn store_codecs(data: &[u8]) {
    let Some((&op, rest)) = data.split_first() else {
        return;
    };
    match op {
        0 => {
            if let Ok((m, s)) = store::decode_key(rest) {
                let again = store::decode_key(&store::encode_key(&m, &s)).expect("re-decodes");
                assert_eq!(again.0, m);
                assert_eq!(again.1, s);
            }
        }
        1 => {
            if let Ok((m, s)) = store::decode_pool_key(rest) {
                let again =
                    store::decode_pool_key(&store::encode_pool_key(&m, &s)).expect("re-decodes");
                assert_eq!(again.0, m);
                assert_eq!(again.1, s);
            }
        }
        2 => {
            if let Ok(m) = store::decode_block_meta(rest) {
                let again =
                    store::decode_block_meta(&store::encode_block_meta(&m)).expect("re-decodes");
                assert_eq!(again, m);
            }
        }
        3 => {
            if let Ok(s) = store::decode_sealed(rest) {
                let again = store::decode_sealed(&store::encode_sealed(&s)).expect("re-decodes");
                assert_eq!(again, s);
            }
        }
        _ => {
            let mut u = Unstructured::new(rest);
            let Ok(rec) = Records::arbitrary(&mut u) else {
                return;
            };
            let (m, s) = store::decode_key(&store::encode_key(&rec.key, &rec.sealed))
                .expect("an encoded key decodes");
            assert_eq!((m, s), (rec.key, rec.sealed.clone()));
            let (m, s) = store::decode_pool_key(&store::encode_pool_key(&rec.pool, &rec.sealed))
                .expect("an encoded pool key decodes");
            assert_eq!((m, s), (rec.pool, rec.sealed));
            let m = store::decode_block_meta(&store::encode_block_meta(&rec.block))
                .expect("encoded block metadata decodes");
            assert_eq!(m, rec.block);
        }
    }
}

/// One record of each kind, built by `arbitrary`.
#[derive(Debug)]
struct Records {
    key: StoredKey,
    pool: PoolKey,
    block: BlockMeta,
    sealed: Sealed,
}

impl<'a> Arbitrary<'a> for Records {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let made_under = |u: &mut Unstructured<'a>| -> arbitrary::Result<Option<MadeUnder>> {
            Ok(if u.arbitrary()? {
                Some(MadeUnder {
                    policy: u.arbitrary()?,
                    suite: u.arbitrary()?,
                })
            } else {
                None
            })
        };
        let key = StoredKey {
            request: u.arbitrary()?,
            master: arbitrary_sae(u)?,
            slaves: (0..u.int_in_range(0..=8)?)
                .map(|_| Ok((arbitrary_sae(u)?, u.arbitrary()?)))
                .collect::<arbitrary::Result<_>>()?,
            size_bits: u.arbitrary()?,
            expires_at: u.arbitrary()?,
            made_under: made_under(u)?,
            pool: u.arbitrary()?,
        };
        let pool = PoolKey {
            master: arbitrary_sae(u)?,
            slaves: (0..u.int_in_range(0..=8)?)
                .map(|_| arbitrary_sae(u))
                .collect::<arbitrary::Result<_>>()?,
            size_bits: u.arbitrary()?,
            created_at: u.arbitrary()?,
            made_under: made_under(u)?,
        };
        let block = BlockMeta {
            id: BlockId::from_bytes(u.arbitrary()?),
            len: u.arbitrary()?,
            state: if u.arbitrary()? {
                BlockState::Available
            } else {
                BlockState::Pending
            },
            taken: u.arbitrary()?,
        };
        let sealed = Sealed {
            epoch: u.arbitrary()?,
            nonce: u.arbitrary()?,
            ct: u.arbitrary()?,
        };
        Ok(Self {
            key,
            pool,
            block,
            sealed,
        })
    }
}

/// A valid SAE ID: 1 to 64 characters of the allowed set.
fn arbitrary_sae(u: &mut Unstructured<'_>) -> arbitrary::Result<SaeId> {
    const CHARS: &[u8] = b"ABCabc019-._~!$&'()*+,;=:@";
    let n = u.int_in_range(1..=qkd_types::MAX_ID_LEN)?;
    let s: String = (0..n)
        .map(|_| u.choose(CHARS).map(|&c| c as char))
        .collect::<arbitrary::Result<_>>()?;
    SaeId::parse(&s).map_err(|_| arbitrary::Error::IncorrectFormat)
}

#[cfg(test)]
mod tests {
    //! `write_seeds` regenerates the committed seed corpora of `peer_messages` and
    //! `store_codecs` from values the code itself encodes (docs/fuzzing.md):
    //! `cargo test -p qkd-kms --lib fuzzing::tests::write_seeds -- --ignored`.

    use std::path::PathBuf;

    use qkd_types::{KmeId, SaeId, Secret};
    use rand::SeedableRng;

    use super::*;
    use crate::hybrid::{
        Context, Initiator, KeySlot, LocalIdentity, MemoryReplayGuard, NodeSigningKey, PinnedPeers,
    };

    fn dir(target: &str) -> PathBuf {
        let d = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn put(target: &str, name: &str, op: u8, body: &[u8]) {
        let mut v = vec![op];
        v.extend_from_slice(body);
        std::fs::write(dir(target).join(name), v).unwrap();
    }

    fn id(b: u8) -> Vec<u8> {
        [b; 16].to_vec()
    }

    /// The four messages of one real hybrid exchange (QKD+PQ+T, a suite without static KEM).
    fn exchange() -> (
        hpb::HybridInit,
        hpb::HybridReply,
        hpb::HybridConfirm,
        hpb::HybridAck,
    ) {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let suite = Suite::ALL
            .into_iter()
            .find(|s| s.is_available() && s.static_kem().is_none())
            .unwrap();
        let policy = Policy::QkdPqT;
        let kme = |s: &str| KmeId::parse(s).unwrap();
        let a = LocalIdentity::new(kme("KME-A"), NodeSigningKey::generate(&mut rng).unwrap());
        let b = LocalIdentity::new(kme("KME-C"), NodeSigningKey::generate(&mut rng).unwrap());
        let mut pinned_a = PinnedPeers::new();
        pinned_a.insert(b.public_keys().unwrap());
        let mut pinned_b = PinnedPeers::new();
        pinned_b.insert(a.public_keys().unwrap());
        let ctx = Context {
            suite,
            policy,
            kme_a: kme("KME-A"),
            kme_b: kme("KME-C"),
            sae_master: SaeId::parse("ENC-A1").unwrap(),
            sae_slaves: vec![SaeId::parse("ENC-C1").unwrap()],
            size_bits: 256,
        };
        let slots: Vec<KeySlot> = (1..=2)
            .map(|i| KeySlot {
                key_id: KeyId::from_bytes([i; 16]),
                relay_key_id: Some(KeyId::from_bytes([0x80 | i; 16])),
            })
            .collect();
        let qkd = || {
            (1..=2)
                .map(|i| Secret::copy_from(&[i; 32]))
                .collect::<Vec<_>>()
        };
        let peer = pinned_a.get(b.kme()).unwrap();
        let (init, m1) = Initiator::start(&a, peer, ctx, slots, qkd(), &mut rng).unwrap();
        let (resp, m2) = ReceivedInit::parse(&m1)
            .unwrap()
            .verify(&b, &pinned_b, suite, policy)
            .unwrap()
            .respond(&b, qkd(), &mut MemoryReplayGuard::default(), &mut rng)
            .unwrap();
        let (_wait, m3) = init.handle_reply(&a, &m2).unwrap();
        let (_keys, pending) = resp.handle_confirm(&m3).unwrap();
        (m1, m2, m3, pending.ack())
    }

    fn range(block_seq: u64, offset: u32, len: u32) -> pb::Range {
        pb::Range {
            block_seq,
            offset,
            len,
        }
    }

    fn write_peer_seeds() {
        let t = "peer_messages";
        let (m1, m2, m3, m4) = exchange();
        let offer = pb::OfferBlocksRequest {
            link_id: "A-B".into(),
            first_seq: 12,
            block_ids: vec![id(1), id(2), id(3)],
            release_before: 10,
        };
        put(t, "offer-blocks", 0, &offer.encode_to_vec());
        let bad_offer = pb::OfferBlocksRequest {
            block_ids: vec![vec![1; 15]],
            ..offer.clone()
        };
        put(t, "offer-blocks-short-id", 0, &bad_offer.encode_to_vec());
        let link = |id: &str, peer: &str, up, bytes, rate| pb::LinkAdvertMsg {
            link_id: id.into(),
            peer: peer.into(),
            up,
            available_bytes: bytes,
            secret_key_rate_bps: rate,
        };
        let advert = pb::AdvertiseRequest {
            adverts: vec![
                pb::NodeAdvertMsg {
                    origin: "A".into(),
                    seq: 5,
                    links: vec![link("A-B", "B", true, 4096, 2.3e6)],
                },
                pb::NodeAdvertMsg {
                    origin: "B".into(),
                    seq: 9,
                    links: vec![
                        link("A-B", "A", true, 4000, -1.0),
                        link("B-C", "C", true, 1 << 20, 4.4e6),
                        link("B-D", "D", false, 0, -1.0),
                    ],
                },
                pb::NodeAdvertMsg {
                    origin: "C".into(),
                    seq: 2,
                    links: vec![link("B-C", "B", true, 1 << 20, 4.4e6)],
                },
            ],
        };
        put(t, "advertise", 1, &advert.encode_to_vec());
        let alloc = pb::RelayAllocateRequest {
            hop_id: id(9),
            link_id: "B-C".into(),
            len: 96,
        };
        put(t, "relay-allocate", 2, &alloc.encode_to_vec());
        let header = pb::RelayHeader {
            relay_id: id(4),
            path: vec!["A".into(), "B".into(), "C".into()],
            master_sae: "ENC-A1".into(),
            slave_saes: vec!["ENC-C1".into()],
            size_bits: 256,
            policy: "QKD+PQ+T".into(),
            suite: m1.suite.clone(),
            key_ids: vec![id(1), id(2)],
            relay_key_ids: vec![id(0x81), id(0x82)],
            relayed_len: 32,
            wrap: false,
            pool: true,
            stream: None,
        };
        let relay = pb::RelayRequest {
            header: Some(header.clone()),
            hop: 1,
            hop_id: id(9),
            link_id: "A-B".into(),
            pad: vec![range(3, 0, 40), range(3, 40, 24)],
            auth: vec![range(4, 0, 32)],
            ciphertext: vec![0x5a; 64],
            tag: vec![0xa5; 32],
            e2e: m1.encode_to_vec(),
        };
        put(t, "relay", 3, &relay.encode_to_vec());
        let qkd_only = pb::RelayRequest {
            header: Some(pb::RelayHeader {
                policy: "QKD-only".into(),
                suite: String::new(),
                relayed_len: 32,
                wrap: true,
                pool: false,
                ..header.clone()
            }),
            e2e: hpb::QkdOnlyInit {
                kme_a: "KME-A".into(),
                kme_b: "KME-C".into(),
                sae_master: "ENC-A1".into(),
                sae_slaves: vec!["ENC-C1".into()],
                size_bits: 256,
                key_ids: vec![id(1), id(2)],
                relay_key_ids: vec![id(0x81), id(0x82)],
                nonce_a: vec![7; 32],
                key_digest: vec![8; 48],
                sig_a: vec![9; 64],
            }
            .encode_to_vec(),
            ..relay.clone()
        };
        put(t, "relay-qkd-only", 3, &qkd_only.encode_to_vec());
        let deliver = pb::MulticastDeliver {
            key_ids: vec![id(5), id(6)],
            sealed: vec![vec![0x11; 48], vec![0x22; 48]],
            size_bits: 256,
        };
        let notice = pb::DeliveryNotice {
            deliveries: vec![
                pb::Delivery {
                    delivered_at: 1_796_413_742_723,
                    key_ids: vec![id(1), id(2)],
                },
                pb::Delivery {
                    delivered_at: 1_796_413_742_730,
                    key_ids: vec![id(3)],
                },
            ],
            source_kme: "KME-A".into(),
            sig: vec![5; 64],
        };
        for (kind, name, e2e) in [
            (1, "forward-confirm", m3.encode_to_vec()),
            (2, "forward-void", Vec::new()),
            (3, "forward-multicast", deliver.encode_to_vec()),
            (4, "forward-notice", notice.encode_to_vec()),
        ] {
            let f = pb::ForwardRequest {
                relay_id: id(4),
                path: vec!["A".into(), "B".into(), "C".into()],
                hop: 2,
                kind,
                e2e,
            };
            put(t, name, 4, &f.encode_to_vec());
        }
        put(t, "multicast-deliver", 5, &deliver.encode_to_vec());
        put(t, "delivery-notice", 6, &notice.encode_to_vec());
        put(t, "hybrid-init", 7, &m1.encode_to_vec());
        put(t, "hybrid-reply", 8, &m2.encode_to_vec());
        put(t, "hybrid-confirm", 9, &m3.encode_to_vec());
        put(t, "hybrid-ack", 10, &m4.encode_to_vec());
        put(
            t,
            "qkd-only-init",
            11,
            &hpb::QkdOnlyInit::decode(&qkd_only.e2e[..])
                .unwrap()
                .encode_to_vec(),
        );
        let reply = hpb::QkdOnlyReply {
            nonce_a: vec![7; 32],
            sig_b: vec![3; 64],
            nonce_b: vec![8; 32],
        };
        put(t, "qkd-only-reply", 12, &reply.encode_to_vec());
        let ack = hpb::QkdOnlyAck {
            nonce_a: vec![7; 32],
            sig_ack: vec![4; 64],
        };
        put(t, "qkd-only-ack", 13, &ack.encode_to_vec());
    }

    fn write_store_seeds() {
        let t = "store_codecs";
        let sae = |s: &str| SaeId::parse(s).unwrap();
        let sealed = Sealed {
            epoch: 3,
            nonce: 17,
            ct: vec![0xc3; 48],
        };
        let key = StoredKey {
            request: [4; 16],
            master: sae("ENC-A1"),
            slaves: vec![(sae("ENC-C1"), false), (sae("ENC-C2"), true)],
            size_bits: 256,
            expires_at: 1_796_413_742_723,
            made_under: Some(MadeUnder {
                policy: "QKD+PQ+T".into(),
                suite: "X25519/ML-KEM-768".into(),
            }),
            pool: true,
        };
        put(t, "key", 0, &store::encode_key(&key, &sealed));
        let plain = StoredKey {
            made_under: None,
            pool: false,
            ..key.clone()
        };
        put(t, "key-no-origin", 0, &store::encode_key(&plain, &sealed));
        // The first record version: no origin, no pool flag.
        let mut v1 = vec![1];
        let str_ = |v: &mut Vec<u8>, s: &[u8]| {
            v.extend_from_slice(&(s.len() as u32).to_be_bytes());
            v.extend_from_slice(s);
        };
        str_(&mut v1, &[4; 16]);
        str_(&mut v1, b"ENC-A1");
        v1.extend_from_slice(&1u32.to_be_bytes());
        str_(&mut v1, b"ENC-C1");
        v1.push(0);
        v1.extend_from_slice(&256u32.to_be_bytes());
        v1.extend_from_slice(&1_796_413_742_723u64.to_be_bytes());
        v1.push(1);
        v1.extend_from_slice(&store::encode_sealed(&sealed));
        put(t, "key-version-1", 0, &v1);
        let pool = PoolKey {
            master: sae("ENC-A1"),
            slaves: vec![sae("ENC-B1")],
            size_bits: 512,
            created_at: 1_796_413_000_000,
            made_under: Some(MadeUnder {
                policy: "QKD-only".into(),
                suite: String::new(),
            }),
        };
        put(t, "pool-key", 1, &store::encode_pool_key(&pool, &sealed));
        let pool_legacy = PoolKey {
            made_under: None,
            ..pool.clone()
        };
        put(
            t,
            "pool-key-no-origin",
            1,
            &store::encode_pool_key(&pool_legacy, &sealed),
        );
        let block = BlockMeta {
            id: BlockId::from_bytes([0xb1; 16]),
            len: 65536,
            state: BlockState::Available,
            taken: vec![(0, 96), (128, 4096)],
        };
        put(t, "block-meta", 2, &store::encode_block_meta(&block));
        let pending = BlockMeta {
            state: BlockState::Pending,
            taken: vec![],
            ..block.clone()
        };
        put(
            t,
            "block-meta-pending",
            2,
            &store::encode_block_meta(&pending),
        );
        put(t, "sealed", 3, &store::encode_sealed(&sealed));
        // Structured records from fixed pseudo-random bytes.
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
        for i in 0..4 {
            let mut b = vec![0u8; 64 << i];
            rand::RngCore::fill_bytes(&mut rng, &mut b);
            put(t, &format!("records-{i}"), 4 + i as u8, &b);
        }
    }

    #[test]
    #[ignore = "writes the seed corpora under fuzz/corpus; run by hand (docs/fuzzing.md)"]
    fn write_seeds() {
        write_peer_seeds();
        write_store_seeds();
    }

    #[test]
    fn bodies_take_empty_and_short_input() {
        for data in [&b""[..], b"\0", b"\x07", b"\xff\xff"] {
            let _ = etsi_request(data);
            peer_messages(data);
            store_codecs(data);
        }
    }
}
