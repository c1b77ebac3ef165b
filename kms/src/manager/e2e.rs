//! The end-to-end part of a relayed batch: the hybrid exchange of [`crate::hybrid`] between the
//! source and the destination node, or, for pairs explicitly configured `QKD-only`, the signed
//! batch description of QKMS-QKDONLY-v1 (docs/qkd-only.md): the relayed key is the delivered key
//! and every trusted node on the path knows it, but only the source can describe a batch and only
//! the destination can confirm it, so no other node can plant or alter keys for the pair.
//!
//! This module adapts the sans-IO state machines to the relay's four messages: message 1 travels
//! with the relayed keys, message 2 comes back with the relay's answer, message 3 and the ack
//! travel as forwarded end-to-end messages.

use std::sync::Mutex;

use prost::Message;
use qkd_proto::hybrid as hpb;
use qkd_types::{KeyId, KmeId, SaeId, Secret, UnixMillis};

use crate::hybrid::combiner::{Context as HybridContext, KeySlot};
use crate::hybrid::config::{Protection, Suite};
use crate::hybrid::exchange::{AwaitingAck, Initiator, ReceivedInit, Responder, WindowReplayGuard};
use crate::hybrid::identity::{LocalIdentity, PinnedPeers};

/// How one SAE pair's keys are protected: the configured protection and suite (never
/// negotiated; both ends must agree or the exchange aborts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyMode {
    /// Hybrid policy, or the explicit QKD-only exception.
    pub protection: Protection,
    /// Hybrid suite (ignored for QKD-only).
    pub suite: Suite,
}

impl KeyMode {
    /// Bytes of relayed QKD key per delivered key: 32 for hybrid policies with QKD (whatever
    /// the key size), the key size for QKD-only, 0 for `PQ+T`.
    pub fn relayed_len(&self, size_bits: u32) -> u32 {
        match self.protection {
            Protection::QkdOnly => size_bits / 8,
            Protection::Hybrid(p) if p.uses_qkd() => 32,
            Protection::Hybrid(_) => 0,
        }
    }

    /// Name of the policy carried in relay headers.
    pub fn policy_name(&self) -> &'static str {
        match self.protection {
            Protection::QkdOnly => "QKD-only",
            Protection::Hybrid(p) => p.name(),
        }
    }

    /// Name of the suite carried in relay headers (empty for QKD-only).
    pub fn suite_name(&self) -> &'static str {
        match self.protection {
            Protection::QkdOnly => "",
            Protection::Hybrid(_) => self.suite.name(),
        }
    }

    /// The policy and suite keys made under this mode record.
    pub fn profile(&self) -> crate::api::KeyProfile {
        crate::api::KeyProfile {
            policy: self.policy_name(),
            suite: self.suite_name(),
        }
    }
}

/// This node's end-to-end identity and the pinned keys of the nodes it exchanges with.
#[derive(Debug, Default)]
pub struct E2eKeys {
    /// Long-term signing key (and static KEM key, if any) of this node.
    pub local: Option<LocalIdentity>,
    /// Pinned public keys of other nodes, by KME ID.
    pub peers: PinnedPeers,
    /// Exchanges answered whose window is still open (the relay voids batches across restarts
    /// anyway, and a batch whose window closed can no longer be confirmed).
    pub replay: Mutex<WindowReplayGuard>,
}

/// Everything both ends know about a batch.
#[derive(Debug, Clone)]
pub struct Context {
    /// Protection of the pair.
    pub mode: KeyMode,
    /// Source (master's) KME.
    pub kme_source: KmeId,
    /// Destination (slaves') KME.
    pub kme_dest: KmeId,
    /// Master SAE.
    pub master: SaeId,
    /// Slave SAEs.
    pub slaves: Vec<SaeId>,
    /// Key size in bits.
    pub size_bits: u32,
    /// ETSI key IDs.
    pub key_ids: Vec<KeyId>,
    /// End-to-end IDs of the relayed keys.
    pub relay_key_ids: Vec<KeyId>,
}

/// Why the end-to-end part failed.
#[derive(Debug, thiserror::Error)]
pub enum E2eError {
    /// Operator: end-to-end protection configured but this node has no signing key.
    #[error("end-to-end identity: no signing key configured")]
    NoSigningKey,
    /// Operator: no key is pinned for the node at the other end.
    #[error("end-to-end identity: no pinned key for {0}")]
    NotPinned(KmeId),
    /// Peer or attacker: a signed `qkd-only` batch differs from the relay header it came with.
    #[error("signed batch differs from the relay header")]
    BatchMismatch,
    /// Peer or attacker: the relayed keys differ from the signed `qkd-only` batch.
    #[error("relayed keys differ from the signed batch")]
    KeysMismatch,
    /// Peer or attacker: the exchange failed (signature, tag, mismatch...).
    #[error(transparent)]
    Hybrid(#[from] crate::hybrid::error::HybridError),
    /// Peer: a message does not decode.
    #[error("malformed end-to-end message")]
    Decode,
    /// Bug or peer: messages out of order.
    #[error("end-to-end messages out of order")]
    Order,
}

/// A QKD-only batch between messages: its transcript hash, its nonce and the relayed keys.
#[derive(Debug)]
pub struct QkdOnlyBatch {
    th: [u8; 48],
    nonce: [u8; 32],
    /// B's nonce of this exchange (zero until message 2).
    nonce_b: [u8; 32],
    /// The other end's KME (whose signatures are expected).
    peer: KmeId,
    keys: Vec<Secret>,
}

/// Source side between messages.
#[derive(Debug)]
pub enum SourceState {
    /// QKD-only, waiting for message 2.
    QkdOnly(QkdOnlyBatch),
    /// QKD-only, waiting for the ack.
    QkdOnlyConfirmed(QkdOnlyBatch),
    /// Waiting for message 2.
    Started(Box<Initiator>),
    /// Waiting for the ack.
    Confirmed(Box<AwaitingAck>),
}

/// Destination side between messages.
#[derive(Debug)]
pub enum DestState {
    /// QKD-only: the relayed keys, released on confirmation.
    QkdOnly(QkdOnlyBatch),
    /// Waiting for message 3.
    Hybrid(Box<Responder>),
}

fn chunks(payload: &Secret, n: usize) -> Vec<Secret> {
    if n == 0 || payload.is_empty() {
        return Vec::new();
    }
    let len = payload.len() / n;
    (0..n).filter_map(|i| payload.slice(i * len, len)).collect()
}

fn hybrid_context(
    ctx: &Context,
    policy: crate::hybrid::config::Policy,
) -> (HybridContext, Vec<KeySlot>) {
    let c = HybridContext {
        suite: ctx.mode.suite,
        policy,
        kme_a: ctx.kme_source.clone(),
        kme_b: ctx.kme_dest.clone(),
        sae_master: ctx.master.clone(),
        sae_slaves: ctx.slaves.clone(),
        size_bits: ctx.size_bits,
    };
    let slots = ctx
        .key_ids
        .iter()
        .zip(&ctx.relay_key_ids)
        .map(|(k, r)| KeySlot {
            key_id: *k,
            relay_key_id: policy.uses_qkd().then_some(*r),
        })
        .collect();
    (c, slots)
}

/// Source: message 1 (empty for QKD-only).
pub fn source_start(
    keys: &E2eKeys,
    ctx: &Context,
    payload: &Secret,
) -> Result<(SourceState, Vec<u8>), E2eError> {
    let qkd = chunks(payload, ctx.key_ids.len());
    match ctx.mode.protection {
        Protection::QkdOnly => {
            let local = keys.local.as_ref().ok_or(E2eError::NoSigningKey)?;
            let mut nonce = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut nonce);
            let digest = qkd_only_digest(&nonce, &qkd);
            let th = qkd_only_th(ctx, &nonce, &digest);
            let sig_a = local
                .signing()
                .sign(&labelled(b"QKMS-QKDONLY-v1 sigA", &th))?;
            let msg = hpb::QkdOnlyInit {
                kme_a: ctx.kme_source.to_string(),
                kme_b: ctx.kme_dest.to_string(),
                sae_master: ctx.master.to_string(),
                sae_slaves: ctx.slaves.iter().map(|s| s.to_string()).collect(),
                size_bits: ctx.size_bits,
                key_ids: ctx.key_ids.iter().map(|k| k.as_bytes().to_vec()).collect(),
                relay_key_ids: ctx
                    .relay_key_ids
                    .iter()
                    .map(|k| k.as_bytes().to_vec())
                    .collect(),
                nonce_a: nonce.to_vec(),
                key_digest: digest.to_vec(),
                sig_a,
            };
            Ok((
                SourceState::QkdOnly(QkdOnlyBatch {
                    th,
                    nonce,
                    nonce_b: [0; 32],
                    peer: ctx.kme_dest.clone(),
                    keys: qkd,
                }),
                msg.encode_to_vec(),
            ))
        }
        Protection::Hybrid(policy) => {
            let local = keys.local.as_ref().ok_or(E2eError::NoSigningKey)?;
            let peer = keys
                .peers
                .get(&ctx.kme_dest)
                .ok_or_else(|| E2eError::NotPinned(ctx.kme_dest.clone()))?;
            let (c, slots) = hybrid_context(ctx, policy);
            let (state, msg) = Initiator::start(local, peer, c, slots, qkd, &mut rand::rng())?;
            Ok((SourceState::Started(Box::new(state)), msg.encode_to_vec()))
        }
    }
}

/// Source: handles message 2, returns message 3 (empty for QKD-only).
pub fn source_finish(
    keys: &E2eKeys,
    state: SourceState,
    msg2: &[u8],
) -> Result<(SourceState, Vec<u8>), E2eError> {
    match state {
        SourceState::QkdOnly(mut batch) => {
            let reply = hpb::QkdOnlyReply::decode(msg2).map_err(|_| E2eError::Decode)?;
            if reply.nonce_a != batch.nonce {
                return Err(E2eError::Order);
            }
            batch.nonce_b = reply
                .nonce_b
                .as_slice()
                .try_into()
                .map_err(|_| E2eError::Decode)?;
            peer_of(keys, &batch.peer)?.verify(
                &bound(b"QKMS-QKDONLY-v1 sigB", &batch),
                &reply.sig_b,
                "sigB",
            )?;
            let local = keys.local.as_ref().ok_or(E2eError::NoSigningKey)?;
            let confirm = hpb::QkdOnlyConfirm {
                nonce_a: batch.nonce.to_vec(),
                sig_confirm: local
                    .signing()
                    .sign(&bound(b"QKMS-QKDONLY-v1 confirm", &batch))?,
            };
            Ok((
                SourceState::QkdOnlyConfirmed(batch),
                confirm.encode_to_vec(),
            ))
        }
        SourceState::QkdOnlyConfirmed(_) => Err(E2eError::Order),
        SourceState::Started(init) => {
            let local = keys.local.as_ref().ok_or(E2eError::NoSigningKey)?;
            let reply = hpb::HybridReply::decode(msg2).map_err(|_| E2eError::Decode)?;
            let (awaiting, confirm) = init.handle_reply(local, &reply)?;
            Ok((
                SourceState::Confirmed(Box::new(awaiting)),
                confirm.encode_to_vec(),
            ))
        }
        SourceState::Confirmed(_) => Err(E2eError::Order),
    }
}

/// Source: handles the ack; returns the keys, now releasable.
pub fn source_ack(keys: &E2eKeys, state: SourceState, ack: &[u8]) -> Result<Vec<Secret>, E2eError> {
    match state {
        SourceState::QkdOnlyConfirmed(batch) => {
            let ack = hpb::QkdOnlyAck::decode(ack).map_err(|_| E2eError::Decode)?;
            if ack.nonce_a != batch.nonce {
                return Err(E2eError::Order);
            }
            peer_of(keys, &batch.peer)?.verify(
                &bound(b"QKMS-QKDONLY-v1 ack", &batch),
                &ack.sig_ack,
                "sigAck",
            )?;
            Ok(batch.keys)
        }
        SourceState::QkdOnly(_) => Err(E2eError::Order),
        SourceState::Confirmed(awaiting) => {
            let ack = hpb::HybridAck::decode(ack).map_err(|_| E2eError::Decode)?;
            Ok(awaiting
                .handle_ack(&ack)?
                .into_iter()
                .map(|k| k.key)
                .collect())
        }
        SourceState::Started(_) => Err(E2eError::Order),
    }
}

/// Destination: handles message 1 with the relayed keys; returns message 2.
pub fn dest_respond(
    keys: &E2eKeys,
    ctx: &Context,
    msg1: &[u8],
    payload: &Secret,
    now: UnixMillis,
    valid_until: UnixMillis,
) -> Result<(DestState, Vec<u8>), E2eError> {
    let qkd = chunks(payload, ctx.key_ids.len());
    match ctx.mode.protection {
        Protection::QkdOnly => {
            let local = keys.local.as_ref().ok_or(E2eError::NoSigningKey)?;
            let init = hpb::QkdOnlyInit::decode(msg1).map_err(|_| E2eError::Decode)?;
            let nonce: [u8; 32] = init
                .nonce_a
                .as_slice()
                .try_into()
                .map_err(|_| E2eError::Decode)?;
            let ids = |v: &[KeyId]| v.iter().map(|k| k.as_bytes().to_vec()).collect::<Vec<_>>();
            let slaves: Vec<String> = ctx.slaves.iter().map(|s| s.to_string()).collect();
            if init.kme_a != ctx.kme_source.as_str()
                || init.kme_b != ctx.kme_dest.as_str()
                || init.sae_master != ctx.master.as_str()
                || init.sae_slaves != slaves
                || init.size_bits != ctx.size_bits
                || init.key_ids != ids(&ctx.key_ids)
                || init.relay_key_ids != ids(&ctx.relay_key_ids)
            {
                return Err(E2eError::BatchMismatch);
            }
            let digest = qkd_only_digest(&nonce, &qkd);
            if init.key_digest != digest {
                return Err(E2eError::KeysMismatch);
            }
            let th = qkd_only_th(ctx, &nonce, &digest);
            peer_of(keys, &ctx.kme_source)?.verify(
                &labelled(b"QKMS-QKDONLY-v1 sigA", &th),
                &init.sig_a,
                "sigA",
            )?;
            {
                let mut replay = keys.replay.lock().unwrap_or_else(|p| p.into_inner());
                if !crate::hybrid::ReplayGuard::check_and_record(
                    replay.arm(now, valid_until),
                    &ctx.kme_source,
                    &nonce,
                ) {
                    return Err(E2eError::Hybrid(crate::hybrid::HybridError::Replay));
                }
            }
            let mut nonce_b = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut nonce_b);
            let batch = QkdOnlyBatch {
                th,
                nonce,
                nonce_b,
                peer: ctx.kme_source.clone(),
                keys: qkd,
            };
            let reply = hpb::QkdOnlyReply {
                nonce_a: nonce.to_vec(),
                sig_b: local
                    .signing()
                    .sign(&bound(b"QKMS-QKDONLY-v1 sigB", &batch))?,
                nonce_b: nonce_b.to_vec(),
            };
            Ok((DestState::QkdOnly(batch), reply.encode_to_vec()))
        }
        Protection::Hybrid(policy) => {
            let local = keys.local.as_ref().ok_or(E2eError::NoSigningKey)?;
            let init = hpb::HybridInit::decode(msg1).map_err(|_| E2eError::Decode)?;
            let received = ReceivedInit::parse(&init)?;
            let verified = received.verify(local, &keys.peers, ctx.mode.suite, policy)?;
            // The authenticated batch must be the one the relay header announced.
            let b = verified.batch();
            let (c, slots) = hybrid_context(ctx, policy);
            let mut want_slaves = c.sae_slaves.clone();
            want_slaves.sort();
            let mut got_slaves = b.context().sae_slaves.clone();
            got_slaves.sort();
            if b.context().kme_a != c.kme_a
                || b.context().sae_master != c.sae_master
                || got_slaves != want_slaves
                || b.context().size_bits != c.size_bits
                || b.slots() != slots.as_slice()
            {
                return Err(E2eError::BatchMismatch);
            }
            let mut replay = keys.replay.lock().unwrap_or_else(|p| p.into_inner());
            let (responder, reply) =
                verified.respond(local, qkd, replay.arm(now, valid_until), &mut rand::rng())?;
            Ok((
                DestState::Hybrid(Box::new(responder)),
                reply.encode_to_vec(),
            ))
        }
    }
}

/// Destination: handles message 3; returns the keys (to commit, then release) and the ack.
pub fn dest_confirm(
    keys: &E2eKeys,
    state: DestState,
    msg3: &[u8],
) -> Result<(Vec<Secret>, Vec<u8>), E2eError> {
    match state {
        DestState::QkdOnly(batch) => {
            let confirm = hpb::QkdOnlyConfirm::decode(msg3).map_err(|_| E2eError::Decode)?;
            if confirm.nonce_a != batch.nonce {
                return Err(E2eError::Order);
            }
            // Only A can confirm: a replayed message 1 gets a fresh nonce_b it never signed.
            peer_of(keys, &batch.peer)?.verify(
                &bound(b"QKMS-QKDONLY-v1 confirm", &batch),
                &confirm.sig_confirm,
                "sigConfirm",
            )?;
            let local = keys.local.as_ref().ok_or(E2eError::NoSigningKey)?;
            let ack = hpb::QkdOnlyAck {
                nonce_a: batch.nonce.to_vec(),
                sig_ack: local
                    .signing()
                    .sign(&bound(b"QKMS-QKDONLY-v1 ack", &batch))?,
            };
            Ok((batch.keys, ack.encode_to_vec()))
        }
        DestState::Hybrid(responder) => {
            let confirm = hpb::HybridConfirm::decode(msg3).map_err(|_| E2eError::Decode)?;
            let (keys, pending) = responder.handle_confirm(&confirm)?;
            Ok((
                keys.into_iter().map(|k| k.key).collect(),
                pending.ack().encode_to_vec(),
            ))
        }
    }
}

/// The pinned keys of `kme`, or an identity error.
fn peer_of<'a>(
    keys: &'a E2eKeys,
    kme: &KmeId,
) -> Result<&'a crate::hybrid::PeerPublicKeys, E2eError> {
    keys.peers
        .get(kme)
        .ok_or_else(|| E2eError::NotPinned(kme.clone()))
}

/// `label ‖ th`: what a QKD-only signature covers.
fn labelled(label: &[u8], th: &[u8; 48]) -> Vec<u8> {
    let mut m = label.to_vec();
    m.extend_from_slice(th);
    m
}

/// `label ‖ TH ‖ nonce_B`: what the signatures after message 1 cover.
fn bound(label: &[u8], batch: &QkdOnlyBatch) -> Vec<u8> {
    let mut m = labelled(label, &batch.th);
    m.extend_from_slice(&batch.nonce_b);
    m
}

/// SHA-384(enc("QKMS-QKDONLY-v1 keys") ‖ enc(nonce) ‖ enc(k_1) ‖ … ‖ enc(k_n)): binds the
/// relayed keys to the signed description without revealing them.
fn qkd_only_digest(nonce: &[u8; 32], keys: &[Secret]) -> [u8; 48] {
    use crate::hybrid::combiner::enc;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA384);
    let mut head = Vec::new();
    enc(&mut head, b"QKMS-QKDONLY-v1 keys");
    enc(&mut head, nonce);
    ctx.update(&head);
    for k in keys {
        // Each key is exposed only to be hashed into the digest.
        let mut framed = zeroize::Zeroizing::new(Vec::with_capacity(k.len() + 4));
        enc(&mut framed, k.expose());
        ctx.update(&framed);
    }
    let mut out = [0u8; 48];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// TH = SHA-384 of the batch description: `enc("QKMS-QKDONLY-v1") ‖ enc(KME_A) ‖ enc(KME_B) ‖
/// enc(SAE_master) ‖ u32be(#slaves) ‖ enc(slave)… ‖ u32be(size_bits) ‖ u32be(n) ‖
/// (key_ID ‖ relay_key_ID)… ‖ enc(nonce_A) ‖ enc(key_digest)`.
fn qkd_only_th(ctx: &Context, nonce: &[u8; 32], digest: &[u8; 48]) -> [u8; 48] {
    use crate::hybrid::combiner::enc;
    let mut m = Vec::with_capacity(256);
    enc(&mut m, b"QKMS-QKDONLY-v1");
    enc(&mut m, ctx.kme_source.as_str().as_bytes());
    enc(&mut m, ctx.kme_dest.as_str().as_bytes());
    enc(&mut m, ctx.master.as_str().as_bytes());
    m.extend_from_slice(&(ctx.slaves.len() as u32).to_be_bytes());
    for s in &ctx.slaves {
        enc(&mut m, s.as_str().as_bytes());
    }
    m.extend_from_slice(&ctx.size_bits.to_be_bytes());
    m.extend_from_slice(&(ctx.key_ids.len() as u32).to_be_bytes());
    for (k, r) in ctx.key_ids.iter().zip(&ctx.relay_key_ids) {
        m.extend_from_slice(k.as_bytes());
        m.extend_from_slice(r.as_bytes());
    }
    enc(&mut m, nonce);
    enc(&mut m, digest);
    let mut out = [0u8; 48];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA384, &m).as_ref());
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::hybrid::{NodeSigningKey, PinnedPeers};

    fn node(kme: &str) -> (LocalIdentity, crate::hybrid::PeerPublicKeys) {
        let id = LocalIdentity::new(
            KmeId::parse(kme).unwrap(),
            NodeSigningKey::generate(&mut rand::rng()).unwrap(),
        );
        let public = id.public_keys().unwrap();
        (id, public)
    }

    fn keys_of(local: LocalIdentity, pinned: &[&crate::hybrid::PeerPublicKeys]) -> E2eKeys {
        let mut peers = PinnedPeers::new();
        for p in pinned {
            peers.insert((*p).clone());
        }
        E2eKeys {
            local: Some(local),
            peers,
            replay: Mutex::default(),
        }
    }

    fn context(n: usize) -> Context {
        Context {
            mode: KeyMode {
                protection: Protection::QkdOnly,
                suite: Suite::default(),
            },
            kme_source: KmeId::parse("KME-A").unwrap(),
            kme_dest: KmeId::parse("KME-E").unwrap(),
            master: SaeId::parse("ENC-A1").unwrap(),
            slaves: vec![SaeId::parse("ENC-E1").unwrap()],
            size_bits: 256,
            key_ids: (0..n).map(|_| KeyId::random()).collect(),
            relay_key_ids: (0..n).map(|_| KeyId::random()).collect(),
        }
    }

    fn payload(n: usize, byte: u8) -> Secret {
        Secret::copy_from(&vec![byte; 32 * n])
    }

    #[test]
    fn a_qkd_only_batch_is_signed_end_to_end_and_confirmed_both_ways() {
        let ((a, pa), (e, pe)) = (node("KME-A"), node("KME-E"));
        let (ka, ke) = (keys_of(a, &[&pe]), keys_of(e, &[&pa]));
        let ctx = context(3);
        let (s, m1) = source_start(&ka, &ctx, &payload(3, 7)).unwrap();
        let (d, m2) = dest_respond(&ke, &ctx, &m1, &payload(3, 7), 0, 1_000).unwrap();
        let (s, m3) = source_finish(&ka, s, &m2).unwrap();
        let (dest_keys, ack) = dest_confirm(&ke, d, &m3).unwrap();
        let source_keys = source_ack(&ka, s, &ack).unwrap();
        assert_eq!(source_keys.len(), 3);
        assert_eq!(source_keys, dest_keys);
        // The same message 1 again (a replay) is refused.
        assert!(dest_respond(&ke, &ctx, &m1, &payload(3, 7), 10, 1_000).is_err());
        // Even once the replay guard forgot it (after its window, or a restart), a relay that
        // replays message 1 cannot confirm it: message 3 must be A's signature over B's fresh
        // nonce, and A's old confirmation does not fit.
        let forgetful = keys_of(node("KME-E").0, &[&pa]);
        let ke_again = E2eKeys {
            local: ke.local,
            peers: forgetful.peers,
            replay: Mutex::default(),
        };
        let (d, _) = dest_respond(&ke_again, &ctx, &m1, &payload(3, 7), 5_000, 6_000).unwrap();
        assert!(dest_confirm(&ke_again, d, &m3).is_err());
    }

    #[test]
    fn no_other_node_can_plant_or_alter_qkd_only_keys() {
        let ((a, pa), (e, pe), (x, px)) = (node("KME-A"), node("KME-E"), node("KME-A"));
        let ke = keys_of(e, &[&pa]);
        let ctx = context(2);
        // Keys altered on the way (a relay substituting its own): the digest differs.
        let ka = keys_of(a, &[&pe]);
        let (_, m1) = source_start(&ka, &ctx, &payload(2, 1)).unwrap();
        assert!(dest_respond(&ke, &ctx, &m1, &payload(2, 2), 0, 1_000).is_err());
        // A batch described by another node claiming to be A: the signature fails.
        let kx = keys_of(x, &[&pe]);
        let (_, forged) = source_start(&kx, &ctx, &payload(2, 1)).unwrap();
        assert!(dest_respond(&ke, &ctx, &forged, &payload(2, 1), 0, 1_000).is_err());
        // No message 1 at all (the protocol before it was signed): refused.
        assert!(dest_respond(&ke, &ctx, &[], &payload(2, 1), 0, 1_000).is_err());
        // A header that differs from what A signed (another slave): refused.
        let mut other = ctx.clone();
        other.slaves = vec![SaeId::parse("ENC-E2").unwrap()];
        assert!(dest_respond(&ke, &other, &m1, &payload(2, 1), 0, 1_000).is_err());
        // An ack signed by anyone but E (here X, another key for A's ID) is refused at A.
        let (s, m1) = source_start(&ka, &ctx, &payload(2, 1)).unwrap();
        let (_, m2) = dest_respond(&ke, &ctx, &m1, &payload(2, 1), 0, 1_000).unwrap();
        let (s, _) = source_finish(&ka, s, &m2).unwrap();
        let SourceState::QkdOnlyConfirmed(batch) = &s else {
            panic!("not confirmed")
        };
        let forged_ack = hpb::QkdOnlyAck {
            nonce_a: batch.nonce.to_vec(),
            sig_ack: kx
                .local
                .as_ref()
                .unwrap()
                .signing()
                .sign(&bound(b"QKMS-QKDONLY-v1 ack", batch))
                .unwrap(),
        }
        .encode_to_vec();
        let _ = px;
        assert!(source_ack(&ka, s, &forged_ack).is_err());
    }
}
