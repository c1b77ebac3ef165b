//! The destination's part of a relayed batch, sans-IO (docs/design.md §2; the module
//! `manager::relay` runs it).
//!
//! 1. Message 1 arrives with the relayed keys ([`Destination::offer`]): the batch is checked
//!    against this node's configuration (the master is attached at the path's first node, every
//!    slave here and paired with it, one policy and suite for all, named as the header names
//!    them, sizes within limits), the end-to-end answer (message 2) is made, and the exchange
//!    waits **in memory only**: nothing is durable before the source confirms.
//! 2. Message 3 ([`Destination::confirm`]) releases the keys: the result is the store operation
//!    to commit and the acknowledgement to send **after** it is durable (the source hands keys
//!    out once it has the ack). Wrap keys of a multicast stay in memory instead, until
//!    [`Destination::multicast`] brings the keys they seal.
//! 3. A void ([`Destination::void`]) or the batch's deadline ([`Destination::sweep`]) drops the
//!    exchange; its state zeroizes, nothing was stored.
//!
//! Delivery notices ([`notice`]) are checked here too: only the master's node may say when its
//! master got keys, under its pinned signing key.
//!
//! No I/O: the shell decodes wire messages into these inputs, commits what comes out, and
//! sends the answers. Time is the `now` given.

use std::collections::{BTreeMap, BTreeSet};

use qkd_types::{KeyId, KeyStreamId, KmeId, NodeId, SaeId, Secret, UnixMillis};

use crate::api::KeyLimits;
use crate::manager::e2e::{self, DestState, E2eKeys, KeyMode};
use crate::manager::{Malformed, PeerError, Refusal};
use crate::store::{MadeUnder, StoredKey, ops};

/// What the destination needs to know of the network's configuration.
pub trait Directory {
    /// This node.
    fn node(&self) -> &NodeId;
    /// This node's KME ID.
    fn kme(&self) -> &KmeId;
    /// The KME ID of a node.
    fn kme_of(&self, node: &NodeId) -> KmeId;
    /// The node an SAE is attached to.
    fn node_of(&self, sae: &SaeId) -> Option<&NodeId>;
    /// Whether two SAEs are configured as a pair (each lists the other).
    fn pair_allowed(&self, a: &SaeId, b: &SaeId) -> bool;
    /// The pair's policy and suite, whichever order its SAEs are given in.
    fn mode(&self, a: &SaeId, b: &SaeId) -> KeyMode;
    /// Key size and count limits.
    fn limits(&self) -> KeyLimits;
    /// This node's end-to-end identity and the pinned keys of the others.
    fn e2e(&self) -> &E2eKeys;
    /// Whether a known defect is back for a test (the network simulation shows it finds them):
    /// pairs of one request allowed to differ in policy or suite.
    fn mixed_profiles_allowed(&self) -> bool {
        crate::events::defects::active().mixed_profiles
    }
}

/// Timing rules of the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DestRules {
    /// Time allowed per hop of a relay: a batch unconfirmed after `(path length + 2)` hops'
    /// time is void.
    pub hop_timeout_ms: u64,
    /// How long a key waits for its slave after the master got it.
    pub key_ttl_ms: u64,
    /// How long a pool key may wait at the master's node (with the key TTL: the fallback expiry
    /// of a pool key here if no delivery notice comes).
    pub pool_ttl_ms: u64,
}

/// A batch's header as the destination reads it (the wire form is decoded by the shell).
#[derive(Debug, Clone)]
pub struct Offer {
    /// The batch.
    pub relay_id: [u8; 16],
    /// Its path, source first, this node last.
    pub path: Vec<NodeId>,
    /// The master SAE.
    pub master: SaeId,
    /// The slave SAEs.
    pub slaves: Vec<SaeId>,
    /// Key size in bits.
    pub size_bits: u32,
    /// Policy name as the source made the batch.
    pub policy: String,
    /// Suite name as the source made the batch.
    pub suite: String,
    /// ETSI key IDs.
    pub key_ids: Vec<KeyId>,
    /// End-to-end IDs of the relayed keys.
    pub relay_key_ids: Vec<KeyId>,
    /// Relayed bytes per key.
    pub relayed_len: u32,
    /// Wrap keys of a multicast (never delivered themselves).
    pub wrap: bool,
    /// Keys for the pair's pool.
    pub pool: bool,
    /// The key-stream indices the batch fills, if any.
    pub stream: Option<StreamSlice>,
}

/// A run of indices of a key stream, as a batch's header names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSlice {
    /// The stream.
    pub id: KeyStreamId,
    /// The index of the batch's first key.
    pub first_index: u64,
    /// When the keys expire at both ends (Unix milliseconds).
    pub expires_at: UnixMillis,
}

/// Multicast keys sealed under a confirmed wrap batch's keys.
#[derive(Debug, Clone)]
pub struct Multicast {
    /// The keys' ETSI IDs.
    pub key_ids: Vec<KeyId>,
    /// Each key sealed under the wrap key of the same position.
    pub sealed: Vec<Vec<u8>>,
    /// Key size in bits.
    pub size_bits: u32,
}

/// A delivery notice as received.
#[derive(Debug, Clone)]
pub struct Notice {
    /// The deliveries it reports, in the order the source queued them.
    pub deliveries: Vec<Delivery>,
    /// The KME the notice claims to come from.
    pub source_kme: String,
    /// Its signature.
    pub sig: Vec<u8>,
}

/// Keys a master got from its node in one `enc_keys` (or several in the same millisecond).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// When the master got them (the source node's clock).
    pub delivered_at: UnixMillis,
    /// The keys.
    pub key_ids: Vec<KeyId>,
}

/// Most key IDs one delivery notice names (64 KiB of IDs): the source splits a longer outbox
/// into several notices, the destination refuses a longer notice as malformed.
pub const NOTICE_MAX_KEYS: usize = 4096;

/// A delivery notice to send: its destination, the deliveries it reports and the outbox entries
/// (sequence numbers) it completes, to be dropped once the destination answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingNotice {
    /// The slave's node.
    pub dest: NodeId,
    /// What it reports, at most [`NOTICE_MAX_KEYS`] key IDs in all.
    pub deliveries: Vec<Delivery>,
    /// Outbox entries to this node that are fully reported once this notice and the ones
    /// before it to the same node were answered.
    pub completes: Vec<u64>,
}

/// What message 3 leads to.
#[derive(Debug)]
pub enum Confirmed {
    /// Commit `op`; once it is durable, acknowledge with `ack` (never before).
    Commit {
        /// The keys to store for their slaves.
        op: ops::StoreKeys,
        /// The acknowledgement (message 4).
        ack: Vec<u8>,
    },
    /// Wrap keys kept in memory for a multicast: acknowledge at once.
    Wrapped {
        /// The acknowledgement.
        ack: Vec<u8>,
    },
}

/// A batch dropped because its confirmation never came in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voided {
    /// The node that started it.
    pub source: NodeId,
    /// How many keys it held.
    pub keys: usize,
}

#[derive(Debug)]
struct Pending {
    wrap: bool,
    pool: bool,
    source: NodeId,
    master: SaeId,
    slaves: Vec<SaeId>,
    size_bits: u32,
    keys: Vec<KeyId>,
    state: DestState,
    deadline: UnixMillis,
    path_len: usize,
    stream: Option<StreamSlice>,
}

#[derive(Debug)]
struct Wraps {
    source: NodeId,
    master: SaeId,
    slaves: Vec<SaeId>,
    keys: Vec<Secret>,
    deadline: UnixMillis,
}

/// The batches a node is the destination of, between their messages. The only owner of that
/// state.
#[derive(Debug)]
pub struct Destination {
    rules: DestRules,
    pending: BTreeMap<[u8; 16], Pending>,
    wraps: BTreeMap<[u8; 16], Wraps>,
}

impl Destination {
    /// No batch under way.
    pub fn new(rules: DestRules) -> Self {
        Self {
            rules,
            pending: BTreeMap::new(),
            wraps: BTreeMap::new(),
        }
    }

    /// Batches waiting for their confirmation or their multicast keys.
    pub fn in_flight(&self) -> usize {
        self.pending.len() + self.wraps.len()
    }

    fn deadline(&self, now: UnixMillis, path_len: usize) -> UnixMillis {
        now.saturating_add(
            self.rules
                .hop_timeout_ms
                .saturating_mul(path_len as u64 + 2),
        )
    }

    /// Message 1 with the relayed keys (`payload`, decrypted on the last hop): checks the batch
    /// against this node's configuration and returns message 2. Nothing becomes durable.
    pub fn offer(
        &mut self,
        dir: &dyn Directory,
        now: UnixMillis,
        offer: &Offer,
        payload: &Secret,
        msg1: &[u8],
    ) -> Result<Vec<u8>, PeerError> {
        let (Some(source), Some(last)) = (offer.path.first(), offer.path.last()) else {
            return Err(Malformed::Field("path length").into());
        };
        if last != dir.node() || offer.path.len() < 2 {
            return Err(Refusal::NotOnPath.into());
        }
        let (master, slaves) = (&offer.master, &offer.slaves);
        if dir.node_of(master) != Some(source) {
            return Err(Refusal::MasterNotAtSource.into());
        }
        if slaves.is_empty()
            || !slaves
                .iter()
                .all(|s| dir.node_of(s) == Some(dir.node()) && dir.pair_allowed(master, s))
        {
            return Err(Refusal::SlavesNotHere.into());
        }
        let mode = dir.mode(master, &slaves[0]);
        if (slaves.iter().any(|s| dir.mode(master, s) != mode) && !dir.mixed_profiles_allowed())
            || offer.policy != mode.policy_name()
            || offer.suite != mode.suite_name()
        {
            return Err(Refusal::Profile.into());
        }
        let limits = dir.limits();
        if offer.key_ids.is_empty()
            || offer.key_ids.len() != offer.relay_key_ids.len()
            || !offer.size_bits.is_multiple_of(8)
            || offer.size_bits < limits.min_key_size
            || offer.size_bits > limits.max_key_size.max(limits.key_size)
            || offer.relayed_len != mode.relayed_len(offer.size_bits)
            || payload.len() as u64 != u64::from(offer.relayed_len) * offer.key_ids.len() as u64
        {
            return Err(Malformed::Field("batch parameters").into());
        }
        if let Some(slice) = &offer.stream {
            crate::manager::streams::check_slice(
                slice,
                master,
                slaves,
                &offer.key_ids,
                offer.wrap || offer.pool,
            )?;
        }
        if self.pending.contains_key(&offer.relay_id) || self.wraps.contains_key(&offer.relay_id) {
            return Err(Malformed::Field("relay ID already under way").into());
        }
        let ctx = e2e::Context {
            mode,
            kme_source: dir.kme_of(source),
            kme_dest: dir.kme().clone(),
            master: master.clone(),
            slaves: slaves.clone(),
            size_bits: offer.size_bits,
            key_ids: offer.key_ids.clone(),
            relay_key_ids: offer.relay_key_ids.clone(),
        };
        // The batch's validity window: unconfirmed by then, it is void (and so is its replay).
        let deadline = self.deadline(now, offer.path.len());
        let (state, msg2) = e2e::dest_respond(dir.e2e(), &ctx, msg1, payload, now, deadline)
            .map_err(Refusal::E2e)?;
        self.pending.insert(
            offer.relay_id,
            Pending {
                wrap: offer.wrap,
                pool: offer.pool,
                source: source.clone(),
                master: master.clone(),
                slaves: slaves.clone(),
                size_bits: offer.size_bits,
                keys: offer.key_ids.clone(),
                state,
                deadline,
                path_len: offer.path.len(),
                stream: offer.stream,
            },
        );
        Ok(msg2)
    }

    /// Takes a batch under way if `source` started it. A message naming another source leaves
    /// the batch in place (only the source may confirm or void it).
    fn take(&mut self, relay_id: &[u8; 16], source: &NodeId) -> Result<Pending, PeerError> {
        match self.pending.get(relay_id) {
            None => Err(PeerError::Voided),
            Some(p) if &p.source != source => Err(Refusal::NotSource.into()),
            Some(_) => self.pending.remove(relay_id).ok_or(PeerError::Voided),
        }
    }

    /// Message 3 from the batch's source: the keys to commit and the acknowledgement to send
    /// once they are durable.
    pub fn confirm(
        &mut self,
        dir: &dyn Directory,
        now: UnixMillis,
        relay_id: [u8; 16],
        source: &NodeId,
        msg3: &[u8],
    ) -> Result<Confirmed, PeerError> {
        let pending = self.take(&relay_id, source)?;
        if pending.deadline <= now {
            return Err(PeerError::Voided);
        }
        let (keys, ack) =
            e2e::dest_confirm(dir.e2e(), pending.state, msg3).map_err(Refusal::E2e)?;
        if keys.len() != pending.keys.len() {
            return Err(Refusal::KeyCount.into());
        }
        if pending.wrap {
            // Wrap keys stay in memory until the multicast keys they seal arrive.
            let deadline = self.deadline(now, pending.path_len);
            self.wraps.insert(
                relay_id,
                Wraps {
                    source: pending.source,
                    master: pending.master,
                    slaves: pending.slaves,
                    keys,
                    deadline,
                },
            );
            return Ok(Confirmed::Wrapped { ack });
        }
        let made_under = made_under(dir, &pending.master, &pending.slaves[0]);
        // A stream's keys expire when the master's node said, at both ends alike (bounded by
        // the longest stream TTL, whatever a peer claims); others a pool TTL and a key TTL
        // from now unless a delivery notice moves it earlier.
        let expires_at = match pending.stream {
            Some(s) => s
                .expires_at
                .min(now.saturating_add(u64::from(crate::core::stream::MAX_TTL_S) * 1000)),
            None => now
                .saturating_add(self.rules.pool_ttl_ms)
                .saturating_add(self.rules.key_ttl_ms),
        };
        let meta = StoredKey {
            request: relay_id,
            master: pending.master,
            slaves: pending.slaves.into_iter().map(|s| (s, false)).collect(),
            size_bits: pending.size_bits,
            expires_at,
            made_under: Some(made_under),
            pool: pending.pool,
        };
        Ok(Confirmed::Commit {
            op: ops::StoreKeys {
                meta,
                keys: pending.keys.into_iter().zip(keys).collect(),
                stream: pending.stream.map(|s| (s.id, s.first_index)),
            },
            ack,
        })
    }

    /// The source voids a batch (it failed on its side).
    pub fn void(&mut self, relay_id: [u8; 16], source: &NodeId) -> Result<(), PeerError> {
        self.take(&relay_id, source).map(drop)
    }

    /// The multicast keys sealed for the slaves here under a confirmed wrap batch: the store
    /// operation that keeps them for their slaves.
    pub fn multicast(
        &mut self,
        dir: &dyn Directory,
        now: UnixMillis,
        relay_id: [u8; 16],
        source: &NodeId,
        msg: &Multicast,
    ) -> Result<ops::StoreKeys, PeerError> {
        match self.wraps.get(&relay_id) {
            None => return Err(PeerError::Voided),
            Some(w) if &w.source != source => return Err(Refusal::NotSource.into()),
            Some(_) => {}
        }
        let wraps = self.wraps.remove(&relay_id).ok_or(PeerError::Voided)?;
        let limits = dir.limits();
        if msg.key_ids.len() != wraps.keys.len()
            || msg.sealed.len() != wraps.keys.len()
            || !msg.size_bits.is_multiple_of(8)
            || msg.size_bits < limits.min_key_size
            || msg.size_bits > limits.max_key_size
        {
            return Err(Malformed::Field("multicast delivery").into());
        }
        let mut keys = Vec::with_capacity(wraps.keys.len());
        for ((id, sealed), wrap) in msg.key_ids.iter().zip(&msg.sealed).zip(&wraps.keys) {
            let key = super::hop::open_multicast(wrap, *id, &relay_id, sealed)
                .filter(|k| k.len() == msg.size_bits as usize / 8)
                .ok_or(Refusal::MulticastAuthentication)?;
            keys.push((*id, key));
        }
        let meta = StoredKey {
            request: relay_id,
            made_under: Some(made_under(dir, &wraps.master, &wraps.slaves[0])),
            master: wraps.master,
            slaves: wraps.slaves.into_iter().map(|s| (s, false)).collect(),
            size_bits: msg.size_bits,
            expires_at: now.saturating_add(self.rules.key_ttl_ms),
            pool: false,
        };
        Ok(ops::StoreKeys {
            meta,
            keys,
            stream: None,
        })
    }

    /// Drops the batches whose deadline has passed (their state zeroizes; nothing was stored).
    pub fn sweep(&mut self, now: UnixMillis) -> Vec<Voided> {
        let expired: Vec<[u8; 16]> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        self.wraps.retain(|_, w| w.deadline > now);
        expired
            .iter()
            .filter_map(|id| self.pending.remove(id))
            .map(|p| Voided {
                source: p.source,
                keys: p.keys.len(),
            })
            .collect()
    }
}

/// What keys of a pair are made under now.
pub fn made_under(dir: &dyn Directory, master: &SaeId, slave: &SaeId) -> MadeUnder {
    let mode = dir.mode(master, slave);
    MadeUnder {
        policy: mode.policy_name().to_string(),
        suite: mode.suite_name().to_string(),
    }
}

/// What a delivery notice's signature covers: `"QKMS-NOTICE-v2" ‖ enc(source KME) ‖` for each
/// delivery in order `u64be(delivered_at) ‖ u32be(number of key IDs) ‖ key IDs`.
pub fn notice_signed(kme: &KmeId, deliveries: &[Delivery]) -> Vec<u8> {
    let keys: usize = deliveries.iter().map(|d| d.key_ids.len()).sum();
    let mut m = Vec::with_capacity(64 + deliveries.len() * 12 + keys * 16);
    m.extend_from_slice(b"QKMS-NOTICE-v2");
    crate::hybrid::combiner::enc(&mut m, kme.as_str().as_bytes());
    for d in deliveries {
        m.extend_from_slice(&d.delivered_at.to_be_bytes());
        // At most NOTICE_MAX_KEYS per notice on either side, so the count fits.
        m.extend_from_slice(&(d.key_ids.len() as u32).to_be_bytes());
        for id in &d.key_ids {
            m.extend_from_slice(id.as_bytes());
        }
    }
    m
}

/// The delivery notices to send for a page of the outbox (in its order: by destination, then
/// sequence): each destination's queued deliveries coalesced into as few notices as
/// [`NOTICE_MAX_KEYS`] allows, so a pass signs, forwards and verifies once per destination, not
/// once per `enc_keys`. Every delivery keeps its own stamp (deliveries at the same millisecond
/// merge). Entries to `me`, and entries stamped before `stale_before` (the destination's
/// fallback expiry has passed by then), are returned to drop unsent.
pub fn outgoing_notices(
    queued: Vec<crate::store::tables::QueuedNotice>,
    me: &NodeId,
    stale_before: UnixMillis,
) -> (Vec<(NodeId, u64)>, Vec<OutgoingNotice>) {
    let mut drop = Vec::new();
    let mut out: Vec<OutgoingNotice> = Vec::new();
    let mut keys_in_last = 0;
    for (dest, seq, delivered_at, ids) in queued {
        if delivered_at < stale_before || &dest == me {
            drop.push((dest, seq));
            continue;
        }
        let mut ids = ids.into_iter().peekable();
        while ids.peek().is_some() {
            let fresh = match out.last() {
                Some(last) => last.dest != dest || keys_in_last == NOTICE_MAX_KEYS,
                None => true,
            };
            if fresh {
                out.push(OutgoingNotice {
                    dest: dest.clone(),
                    deliveries: Vec::new(),
                    completes: Vec::new(),
                });
                keys_in_last = 0;
            }
            // Invariant: `out` was just given an entry if it had none.
            let Some(last) = out.last_mut() else { break };
            let room = NOTICE_MAX_KEYS - keys_in_last;
            let part: Vec<KeyId> = ids.by_ref().take(room).collect();
            keys_in_last += part.len();
            match last.deliveries.last_mut() {
                Some(d) if d.delivered_at == delivered_at => d.key_ids.extend(part),
                _ => last.deliveries.push(Delivery {
                    delivered_at,
                    key_ids: part,
                }),
            }
        }
        match out.last_mut() {
            Some(last) if last.dest == dest => last.completes.push(seq),
            // An entry without keys reports nothing.
            _ => drop.push((dest, seq)),
        }
    }
    (drop, out)
}

/// A delivery notice from `source` (the first node of its path): the store operation that
/// makes each key named expire a key TTL after its own delivery's stamp, if the notice is signed
/// by the node it claims to come from. Only keys whose master is attached at `source` move.
pub fn notice(
    dir: &dyn Directory,
    source: &NodeId,
    msg: &Notice,
    key_ttl_ms: u64,
    masters: BTreeSet<SaeId>,
) -> Result<ops::MoveExpiry, PeerError> {
    // Only the source node itself may say when its master got the keys: its signature, under
    // the key pinned for the KME of the node the path starts at.
    let kme = dir.kme_of(source);
    if msg.source_kme != kme.as_str() {
        return Err(Refusal::NoticeSource.into());
    }
    dir.e2e()
        .peers
        .get(&kme)
        .ok_or_else(|| Refusal::E2e(e2e::E2eError::NotPinned(kme.clone())))?
        .verify(
            &notice_signed(&kme, &msg.deliveries),
            &msg.sig,
            "delivery notice",
        )
        .map_err(Refusal::Signature)?;
    Ok(ops::MoveExpiry {
        expiries: msg
            .deliveries
            .iter()
            .flat_map(|d| {
                let at = d.delivered_at.saturating_add(key_ttl_ms);
                d.key_ids.iter().map(move |id| (*id, at))
            })
            .collect(),
        masters,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::hybrid::config::Protection;
    use crate::hybrid::identity::LocalIdentity;
    use crate::hybrid::{NodeSigningKey, PinnedPeers};
    use crate::relay::hop;

    fn n(s: &str) -> NodeId {
        NodeId::parse(s).unwrap()
    }
    fn sae(s: &str) -> SaeId {
        SaeId::parse(s).unwrap()
    }

    /// Node E of a chain A-B-E: ENC-A1 at A, ENC-E1 and ENC-E2 at E, both paired with ENC-A1;
    /// ENC-A1/ENC-E2 is `qkd-only`, everything else the default hybrid mode.
    #[derive(Debug)]
    struct Net {
        node: NodeId,
        kme: KmeId,
        e2e: E2eKeys,
        mixed_ok: bool,
    }

    impl Directory for Net {
        fn node(&self) -> &NodeId {
            &self.node
        }
        fn kme(&self) -> &KmeId {
            &self.kme
        }
        fn kme_of(&self, node: &NodeId) -> KmeId {
            KmeId::parse(&format!("KME-{node}")).unwrap()
        }
        fn node_of(&self, s: &SaeId) -> Option<&NodeId> {
            static A: std::sync::OnceLock<NodeId> = std::sync::OnceLock::new();
            static E: std::sync::OnceLock<NodeId> = std::sync::OnceLock::new();
            match s.as_str() {
                "ENC-A1" => Some(A.get_or_init(|| n("A"))),
                "ENC-E1" | "ENC-E2" | "ENC-E3" => Some(E.get_or_init(|| n("E"))),
                _ => None,
            }
        }
        fn pair_allowed(&self, a: &SaeId, b: &SaeId) -> bool {
            let mut p = [a.as_str(), b.as_str()];
            p.sort();
            matches!(p, ["ENC-A1", "ENC-E1"] | ["ENC-A1", "ENC-E2"])
        }
        fn mode(&self, a: &SaeId, b: &SaeId) -> KeyMode {
            if [a.as_str(), b.as_str()].contains(&"ENC-E2") {
                KeyMode {
                    protection: Protection::QkdOnly,
                    ..KeyMode::default()
                }
            } else {
                KeyMode::default()
            }
        }
        fn limits(&self) -> KeyLimits {
            KeyLimits::default()
        }
        fn e2e(&self) -> &E2eKeys {
            &self.e2e
        }
        fn mixed_profiles_allowed(&self) -> bool {
            self.mixed_ok
        }
    }

    struct World {
        /// The source's view (node A).
        src: Net,
        /// The destination's view (node E).
        e: Net,
        d: Destination,
    }

    const RULES: DestRules = DestRules {
        hop_timeout_ms: 100,
        key_ttl_ms: 1_000,
        pool_ttl_ms: 10_000,
    };

    fn world() -> World {
        let id = |kme: &str| {
            LocalIdentity::new(
                KmeId::parse(kme).unwrap(),
                NodeSigningKey::generate(&mut rand::rng()).unwrap(),
            )
        };
        let (a, e) = (id("KME-A"), id("KME-E"));
        let (pa, pe) = (a.public_keys().unwrap(), e.public_keys().unwrap());
        let keys = |local: LocalIdentity, peer: crate::hybrid::PeerPublicKeys| {
            let mut peers = PinnedPeers::new();
            peers.insert(peer);
            E2eKeys {
                local: Some(local),
                peers,
                replay: Mutex::default(),
            }
        };
        let (ka, ke) = (keys(a, pe), keys(e, pa));
        World {
            src: Net {
                node: n("A"),
                kme: KmeId::parse("KME-A").unwrap(),
                e2e: ka,
                mixed_ok: false,
            },
            e: Net {
                node: n("E"),
                kme: KmeId::parse("KME-E").unwrap(),
                e2e: ke,
                mixed_ok: false,
            },
            d: Destination::new(RULES),
        }
    }

    /// A batch from ENC-A1 to `slaves` over A-B-E as the source makes it: the header, the
    /// relayed keys, the source's end-to-end state and message 1.
    fn batch(
        w: &World,
        slaves: &[&str],
        n_keys: usize,
    ) -> (Offer, Secret, e2e::SourceState, Vec<u8>) {
        let slaves: Vec<SaeId> = slaves.iter().map(|s| sae(s)).collect();
        let mode = w.e.mode(&sae("ENC-A1"), &slaves[0]);
        let offer = Offer {
            relay_id: *KeyId::random().as_bytes(),
            path: vec![n("A"), n("B"), n("E")],
            master: sae("ENC-A1"),
            slaves: slaves.clone(),
            size_bits: 256,
            policy: mode.policy_name().into(),
            suite: mode.suite_name().into(),
            key_ids: (0..n_keys).map(|_| KeyId::random()).collect(),
            relay_key_ids: (0..n_keys).map(|_| KeyId::random()).collect(),
            relayed_len: mode.relayed_len(256),
            wrap: false,
            pool: true,
            stream: None,
        };
        let payload = Secret::copy_from(&vec![5u8; offer.relayed_len as usize * n_keys]);
        let ctx = e2e::Context {
            mode,
            kme_source: KmeId::parse("KME-A").unwrap(),
            kme_dest: KmeId::parse("KME-E").unwrap(),
            master: offer.master.clone(),
            slaves,
            size_bits: 256,
            key_ids: offer.key_ids.clone(),
            relay_key_ids: offer.relay_key_ids.clone(),
        };
        let (state, msg1) = e2e::source_start(&w.src.e2e, &ctx, &payload).unwrap();
        (offer, payload, state, msg1)
    }

    #[test]
    fn a_confirmed_batch_is_committed_before_its_ack_with_the_keys_the_source_gets() {
        for slave in ["ENC-E1", "ENC-E2"] {
            let mut w = world();
            let (offer, payload, s, m1) = batch(&w, &[slave], 3);
            let m2 = w.d.offer(&w.e, 1_000, &offer, &payload, &m1).unwrap();
            assert_eq!(w.d.in_flight(), 1);
            let (s, m3) = e2e::source_finish(&w.src.e2e, s, &m2).unwrap();
            let Confirmed::Commit { op, ack } =
                w.d.confirm(&w.e, 1_100, offer.relay_id, &n("A"), &m3)
                    .unwrap()
            else {
                panic!("an ordinary batch is committed");
            };
            let source_keys = e2e::source_ack(&w.src.e2e, s, &ack).unwrap();
            assert_eq!(w.d.in_flight(), 0);
            assert_eq!(op.keys.len(), 3);
            for ((id, k), (want_id, want)) in
                op.keys.iter().zip(offer.key_ids.iter().zip(&source_keys))
            {
                assert_eq!(id, want_id);
                assert_eq!(
                    k.expose(),
                    want.expose(),
                    "{slave}: both ends hold the same key"
                );
            }
            // Without a delivery notice, a pool key waits a pool TTL and a key TTL.
            assert_eq!(op.meta.expires_at, 1_100 + 10_000 + 1_000);
            assert_eq!(
                op.meta.made_under,
                Some(made_under(&w.e, &sae("ENC-A1"), &sae(slave)))
            );
            assert_eq!(op.meta.slaves, vec![(sae(slave), false)]);
            // The batch is gone: a second confirmation finds nothing.
            assert!(matches!(
                w.d.confirm(&w.e, 1_100, offer.relay_id, &n("A"), &m3),
                Err(PeerError::Voided)
            ));
        }
    }

    #[test]
    fn batches_that_do_not_fit_this_nodes_configuration_are_refused_and_nothing_waits() {
        let mut w = world();
        let refused = |w: &mut World, offer: &Offer, payload: &Secret, m1: &[u8]| {
            let r = w.d.offer(&w.e, 0, offer, payload, m1);
            assert_eq!(w.d.in_flight(), 0);
            r.unwrap_err()
        };
        let (good, payload, _, m1) = batch(&w, &["ENC-E1"], 2);
        let mut o = good.clone();
        o.path = vec![n("B"), n("E")];
        assert!(matches!(
            refused(&mut w, &o, &payload, &m1),
            PeerError::Refused(Refusal::MasterNotAtSource)
        ));
        let mut o = good.clone();
        o.path = vec![n("A"), n("E"), n("B")];
        assert!(matches!(
            refused(&mut w, &o, &payload, &m1),
            PeerError::Refused(Refusal::NotOnPath)
        ));
        let mut o = good.clone();
        o.slaves = vec![sae("ENC-E3")];
        assert!(matches!(
            refused(&mut w, &o, &payload, &m1),
            PeerError::Refused(Refusal::SlavesNotHere)
        ));
        // The header names a policy this node does not configure for the pair.
        let mut o = good.clone();
        o.policy = "QKD-only".into();
        assert!(matches!(
            refused(&mut w, &o, &payload, &m1),
            PeerError::Refused(Refusal::Profile)
        ));
        // Two slaves whose pairs differ in policy: refused (defect 1), unless the defect is back.
        let mut o = good.clone();
        o.slaves = vec![sae("ENC-E1"), sae("ENC-E2")];
        assert!(matches!(
            refused(&mut w, &o, &payload, &m1),
            PeerError::Refused(Refusal::Profile)
        ));
        w.e.mixed_ok = true;
        assert!(!matches!(
            refused(&mut w, &o, &payload, &m1),
            PeerError::Refused(Refusal::Profile)
        ));
        w.e.mixed_ok = false;
        for change in [
            |o: &mut Offer| o.size_bits = 2048,
            |o: &mut Offer| o.size_bits = 255,
            |o: &mut Offer| o.relayed_len += 1,
            |o: &mut Offer| o.relay_key_ids.truncate(1),
        ] {
            let mut o = good.clone();
            change(&mut o);
            assert!(matches!(
                refused(&mut w, &o, &payload, &m1),
                PeerError::Malformed(_)
            ));
        }
        // The good batch is accepted, once: the same relay ID again is refused.
        w.d.offer(&w.e, 0, &good, &payload, &m1).unwrap();
        assert!(w.d.offer(&w.e, 0, &good, &payload, &m1).is_err());
        assert_eq!(w.d.in_flight(), 1);
    }

    #[test]
    fn only_the_source_confirms_or_voids_and_an_unconfirmed_batch_expires() {
        let mut w = world();
        let (offer, payload, s, m1) = batch(&w, &["ENC-E1"], 1);
        let m2 = w.d.offer(&w.e, 0, &offer, &payload, &m1).unwrap();
        let (_, m3) = e2e::source_finish(&w.src.e2e, s, &m2).unwrap();
        // A node on the path (B) can neither confirm nor void it.
        assert!(matches!(
            w.d.confirm(&w.e, 10, offer.relay_id, &n("B"), &m3),
            Err(PeerError::Refused(Refusal::NotSource))
        ));
        assert!(w.d.void(offer.relay_id, &n("B")).is_err());
        assert_eq!(w.d.in_flight(), 1);
        // (path length 3 + 2) hops' time after the offer, the batch is void.
        assert_eq!(w.d.sweep(499), vec![]);
        assert_eq!(
            w.d.sweep(500),
            vec![Voided {
                source: n("A"),
                keys: 1
            }]
        );
        assert!(matches!(
            w.d.confirm(&w.e, 501, offer.relay_id, &n("A"), &m3),
            Err(PeerError::Voided)
        ));
        // A confirmation arriving after the deadline but before a sweep is void too.
        let (offer, payload, s, m1) = batch(&w, &["ENC-E1"], 1);
        let m2 = w.d.offer(&w.e, 1_000, &offer, &payload, &m1).unwrap();
        let (_, m3) = e2e::source_finish(&w.src.e2e, s, &m2).unwrap();
        assert!(matches!(
            w.d.confirm(&w.e, 1_500, offer.relay_id, &n("A"), &m3),
            Err(PeerError::Voided)
        ));
        // The source voids its own batch.
        let (offer, payload, _, m1) = batch(&w, &["ENC-E1"], 1);
        w.d.offer(&w.e, 2_000, &offer, &payload, &m1).unwrap();
        w.d.void(offer.relay_id, &n("A")).unwrap();
        assert_eq!(w.d.in_flight(), 0);
    }

    /// A confirmed wrap batch of two keys to ENC-E1: its header and the wrap keys the source got.
    fn wrapped(w: &mut World) -> (Offer, Vec<Secret>) {
        let (mut offer, payload, s, m1) = batch(w, &["ENC-E1"], 2);
        offer.wrap = true;
        offer.pool = false;
        let m2 = w.d.offer(&w.e, 0, &offer, &payload, &m1).unwrap();
        let (s, m3) = e2e::source_finish(&w.src.e2e, s, &m2).unwrap();
        let Confirmed::Wrapped { ack } =
            w.d.confirm(&w.e, 1, offer.relay_id, &n("A"), &m3).unwrap()
        else {
            panic!("wrap keys are never stored");
        };
        let wraps = e2e::source_ack(&w.src.e2e, s, &ack).unwrap();
        (offer, wraps)
    }

    #[test]
    fn wrap_keys_wait_in_memory_for_the_multicast_keys_they_seal() {
        let mut w = world();
        let ids = [KeyId::random(), KeyId::random()];
        let keys = [Secret::copy_from(&[1u8; 64]), Secret::copy_from(&[2u8; 64])];
        let sealed = |offer: &Offer, wraps: &[Secret]| Multicast {
            key_ids: ids.to_vec(),
            sealed: (0..2)
                .map(|i| hop::seal_multicast(&wraps[i], ids[i], &offer.relay_id, &keys[i]).unwrap())
                .collect(),
            size_bits: 512,
        };
        let (offer, wraps) = wrapped(&mut w);
        let msg = sealed(&offer, &wraps);
        // Another node cannot deliver them; a tampered key does not open.
        assert!(
            w.d.multicast(&w.e, 2, offer.relay_id, &n("B"), &msg)
                .is_err()
        );
        let mut bad = msg.clone();
        bad.sealed[1][0] ^= 1;
        assert!(matches!(
            w.d.multicast(&w.e, 2, offer.relay_id, &n("A"), &bad),
            Err(PeerError::Refused(Refusal::MulticastAuthentication))
        ));
        // The wrap keys are spent by the failed attempt: nothing can be delivered under them.
        assert!(matches!(
            w.d.multicast(&w.e, 2, offer.relay_id, &n("A"), &msg),
            Err(PeerError::Voided)
        ));

        let (offer, wraps) = wrapped(&mut w);
        let op =
            w.d.multicast(&w.e, 2, offer.relay_id, &n("A"), &sealed(&offer, &wraps))
                .unwrap();
        assert_eq!(
            op.meta.expires_at,
            2 + 1_000,
            "a multicast key waits a key TTL"
        );
        assert_eq!(op.keys.len(), 2);
        assert_eq!(op.keys[1].1.expose(), keys[1].expose());
        assert_eq!(w.d.in_flight(), 0);
    }

    #[test]
    fn a_delivery_notice_counts_only_if_signed_by_the_node_it_names() {
        let w = world();
        let (k1, k2, k3) = (KeyId::random(), KeyId::random(), KeyId::random());
        let deliveries = |first: UnixMillis| {
            vec![
                Delivery {
                    delivered_at: first,
                    key_ids: vec![k1, k2],
                },
                Delivery {
                    delivered_at: first + 7,
                    key_ids: vec![k3],
                },
            ]
        };
        let sign = |kme: &str, d: &[Delivery]| {
            w.src
                .e2e
                .local
                .as_ref()
                .unwrap()
                .signing()
                .sign(&notice_signed(&KmeId::parse(kme).unwrap(), d))
                .unwrap()
        };
        let masters: BTreeSet<SaeId> = [sae("ENC-A1")].into();
        let good = Notice {
            deliveries: deliveries(5_000),
            source_kme: "KME-A".into(),
            sig: sign("KME-A", &deliveries(5_000)),
        };
        let op = notice(&w.e, &n("A"), &good, 1_000, masters.clone()).unwrap();
        // Each key expires a key TTL after its own delivery's stamp.
        assert_eq!(op.expiries, vec![(k1, 6_000), (k2, 6_000), (k3, 6_007)]);
        assert_eq!(op.masters, masters);
        // Relayed through B, but B claims to be its source: refused.
        assert!(matches!(
            notice(&w.e, &n("B"), &good, 1_000, masters.clone()),
            Err(PeerError::Refused(Refusal::NoticeSource))
        ));
        // Another stamp than the one signed, keys moved from one delivery to another, or a
        // delivery left out: refused, as tampering.
        let mut later = good.clone();
        later.deliveries[1].delivered_at = 9_000;
        let mut regrouped = good.clone();
        let k = regrouped.deliveries[0].key_ids.pop().unwrap();
        regrouped.deliveries[1].key_ids.insert(0, k);
        let mut shorter = good.clone();
        shorter.deliveries.pop();
        for tampered in [later, regrouped, shorter] {
            let Err(PeerError::Refused(why)) =
                notice(&w.e, &n("A"), &tampered, 1_000, masters.clone())
            else {
                panic!("a notice other than the one signed is refused");
            };
            assert!(matches!(why, Refusal::Signature(_)) && why.tampering());
        }
        // From a node whose key this node never pinned: refused, but as configuration.
        let mut unpinned = good.clone();
        unpinned.source_kme = "KME-C".into();
        let Err(PeerError::Refused(why)) = notice(&w.e, &n("C"), &unpinned, 1_000, masters) else {
            panic!("a notice from an unpinned node is refused");
        };
        assert!(matches!(why, Refusal::E2e(e2e::E2eError::NotPinned(_))));
        assert!(!why.tampering(), "a missing pinned key is not an attack");
    }

    #[test]
    fn a_pass_coalesces_the_outbox_into_one_notice_per_destination_keeping_each_stamp() {
        let ids = |n: usize| (0..n).map(|_| KeyId::random()).collect::<Vec<_>>();
        let (a, b, c) = (ids(2), ids(1), ids(3));
        let queued = vec![
            (n("B"), 0, 10, a.clone()),
            (n("B"), 1, 10, b.clone()),
            (n("B"), 2, 12, c.clone()),
            // Too old to matter, and one to this node itself: dropped unsent.
            (n("C"), 0, 4, ids(1)),
            (n("C"), 1, 20, c.clone()),
            (n("E"), 3, 30, ids(1)),
        ];
        let (drop, out) = outgoing_notices(queued, &n("E"), 5);
        assert_eq!(drop, vec![(n("C"), 0), (n("E"), 3)]);
        assert_eq!(out.len(), 2, "one notice per destination");
        assert_eq!(out[0].dest, n("B"));
        assert_eq!(out[0].completes, vec![0, 1, 2]);
        let mut same_ms = a.clone();
        same_ms.extend(&b);
        assert_eq!(
            out[0].deliveries,
            vec![
                Delivery {
                    delivered_at: 10,
                    key_ids: same_ms
                },
                Delivery {
                    delivered_at: 12,
                    key_ids: c.clone()
                }
            ]
        );
        assert_eq!(
            (out[1].dest.clone(), out[1].completes.clone()),
            (n("C"), vec![1])
        );
    }

    #[test]
    fn a_long_outbox_is_split_and_an_entry_completes_with_its_last_part() {
        let big: Vec<KeyId> = (0..NOTICE_MAX_KEYS + 10).map(|_| KeyId::random()).collect();
        let small = vec![KeyId::random()];
        let queued = vec![
            (n("B"), 7, 10, small.clone()),
            (n("B"), 8, 11, big.clone()),
            (n("B"), 9, 12, small.clone()),
        ];
        let (drop, out) = outgoing_notices(queued, &n("A"), 0);
        assert!(drop.is_empty());
        assert_eq!(out.len(), 2);
        let keys = |o: &OutgoingNotice| o.deliveries.iter().map(|d| d.key_ids.len()).sum::<usize>();
        assert_eq!(keys(&out[0]), NOTICE_MAX_KEYS);
        assert_eq!(keys(&out[1]), 12);
        // Entry 8 is fully reported only by the second notice.
        assert_eq!(out[0].completes, vec![7]);
        assert_eq!(out[1].completes, vec![8, 9]);
        assert_eq!(out[1].deliveries[0].delivered_at, 11);
        let all: Vec<KeyId> = out
            .iter()
            .flat_map(|o| o.deliveries.iter())
            .filter(|d| d.delivered_at == 11)
            .flat_map(|d| d.key_ids.iter().copied())
            .collect();
        assert_eq!(all, big, "every key once, in order");
    }

    #[test]
    fn a_source_batch_and_its_destination_agree_and_a_failure_says_whether_keys_may_be_left() {
        use crate::relay::source::{self, BatchSpec, SourceBatch, StartError};
        let mut w = world();
        let spec = |slaves: &[&str]| BatchSpec {
            master: sae("ENC-A1"),
            slaves: slaves.iter().map(|s| sae(s)).collect(),
            size_bits: 256,
            number: 4,
            wrap: false,
            pool: true,
            stream: None,
        };
        // Hybrid: 32 relayed bytes a key and a MAC key per hop; QKD-only: the key itself.
        let needs = source::needs(&w.src, &spec(&["ENC-E1"])).unwrap();
        assert_eq!(
            (needs.dest.clone(), needs.link_bytes),
            (n("E"), 4 * 32 + 32)
        );
        assert_eq!(
            source::needs(&w.src, &spec(&["ENC-E1", "ENC-E2"])),
            Err(StartError::MixedProfiles)
        );
        assert_eq!(
            source::needs(&w.src, &spec(&["ENC-X9"])),
            Err(StartError::UnknownSlave)
        );
        let path = vec![n("A"), n("B"), n("E")];
        for slave in ["ENC-E1", "ENC-E2"] {
            let (mut b, out) =
                SourceBatch::start(&w.src, &spec(&[slave]), path.clone(), &mut rand::rng())
                    .unwrap();
            assert_eq!(out.offer.key_ids.len(), 4);
            assert!(
                out.offer
                    .key_ids
                    .iter()
                    .all(|k| k.uuid().get_version_num() == 4)
            );
            let m2 =
                w.d.offer(&w.e, 0, &out.offer, &out.payload, &out.msg1)
                    .unwrap();
            assert!(!b.maybe_committed());
            let m3 = b.on_answer(&w.src, &m2).unwrap();
            assert!(
                b.maybe_committed(),
                "from message 3 on, the destination may commit"
            );
            let Confirmed::Commit { op, ack } =
                w.d.confirm(&w.e, 1, b.relay_id(), &n("A"), &m3).unwrap()
            else {
                panic!("an ordinary batch is committed");
            };
            let keys = b.on_ack(&w.src, &ack).unwrap();
            assert_eq!(keys.len(), 4);
            for ((id, k), (sid, sk)) in keys.iter().zip(&op.keys) {
                assert_eq!(id, sid);
                assert_eq!(k.expose(), sk.expose());
            }
            // The machine is spent: nothing more goes through it.
            assert!(b.on_ack(&w.src, &ack).is_err());
        }
        // A tampered answer fails the source before message 3: nothing can be left anywhere.
        let (mut b, out) =
            SourceBatch::start(&w.src, &spec(&["ENC-E1"]), path, &mut rand::rng()).unwrap();
        let mut m2 =
            w.d.offer(&w.e, 0, &out.offer, &out.payload, &out.msg1)
                .unwrap();
        let last = m2.len() - 1;
        m2[last] ^= 1;
        assert!(b.on_answer(&w.src, &m2).is_err());
        assert!(!b.maybe_committed());
    }
}
