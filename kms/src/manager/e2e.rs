//! The end-to-end part of a relayed batch: the hybrid exchange of [`crate::hybrid`] between the
//! source and the destination node, or, for pairs explicitly configured `QKD-only`, nothing at
//! all (the relayed key is the delivered key; every trusted node on the path knows it).
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
    /// Operator: hybrid policy configured but this node has no signing key, or the peer's key is
    /// not pinned.
    #[error("end-to-end identity: {0}")]
    Identity(String),
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

/// Source side between messages.
#[derive(Debug)]
pub enum SourceState {
    /// QKD-only: the relayed keys are the keys.
    QkdOnly(Vec<Secret>),
    /// Waiting for message 2.
    Started(Box<Initiator>),
    /// Waiting for the ack.
    Confirmed(Box<AwaitingAck>),
}

/// Destination side between messages.
#[derive(Debug)]
pub enum DestState {
    /// QKD-only: the relayed keys, released on confirmation.
    QkdOnly(Vec<Secret>),
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
        Protection::QkdOnly => Ok((SourceState::QkdOnly(qkd), Vec::new())),
        Protection::Hybrid(policy) => {
            let local = keys
                .local
                .as_ref()
                .ok_or_else(|| E2eError::Identity("no signing key configured".into()))?;
            let peer = keys
                .peers
                .get(&ctx.kme_dest)
                .ok_or_else(|| E2eError::Identity(format!("no pinned key for {}", ctx.kme_dest)))?;
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
        SourceState::QkdOnly(k) => Ok((SourceState::QkdOnly(k), Vec::new())),
        SourceState::Started(init) => {
            let local = keys
                .local
                .as_ref()
                .ok_or_else(|| E2eError::Identity("no signing key configured".into()))?;
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
pub fn source_ack(state: SourceState, ack: &[u8]) -> Result<Vec<Secret>, E2eError> {
    match state {
        SourceState::QkdOnly(k) => Ok(k),
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
        Protection::QkdOnly => Ok((DestState::QkdOnly(qkd), Vec::new())),
        Protection::Hybrid(policy) => {
            let local = keys
                .local
                .as_ref()
                .ok_or_else(|| E2eError::Identity("no signing key configured".into()))?;
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
                return Err(E2eError::Identity(
                    "signed batch differs from the relay header".into(),
                ));
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
pub fn dest_confirm(state: DestState, msg3: &[u8]) -> Result<(Vec<Secret>, Vec<u8>), E2eError> {
    match state {
        DestState::QkdOnly(k) => Ok((k, Vec::new())),
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
