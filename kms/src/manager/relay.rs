//! Trusted-node key relay, the per-pair key pools it fills, and delivery notices.
//!
//! A batch of keys for SAE pair (master at node S, slave at node D) is made like this:
//!
//! 1. S picks a route to D over available link key ([`Topology::route`]).
//! 2. S draws the batch's relayed keys from its CSPRNG and sends them hop by hop: on every hop the
//!    keys travel XOR a fresh run of link key exactly as long (one-time pad), with an HMAC-SHA-256
//!    tag keyed by 32 further bytes of fresh link key. Each relay checks the tag, decrypts and
//!    re-encrypts for its next hop, and forgets the keys. The first end-to-end message travels
//!    with the keys; D checks it against its own configuration for the pair, keeps its state
//!    in memory only (nothing durable yet) and answers (message 2) on the way back.
//! 3. S checks the answer and confirms end to end (message 3, forwarded along the path); D
//!    verifies, commits its keys durably and only then acknowledges (message 4).
//! 4. Only then does S store the keys in the pair's pool, from which `enc_keys` serves them.
//!
//! Any failure before step 4 leaves nothing usable: D's in-memory state is voided (by message or
//! after the batch's deadline), S never stores the keys, and link key used on the way is never
//! used again. The end-to-end messages are the hybrid exchange (docs/hybrid.md) or, for pairs
//! configured `qkd-only`, the signed batch description (docs/qkd-only.md).
//!
//! After `enc_keys`, S forwards a delivery notice to D from a durable outbox, so D expires the
//! slave's copy a key TTL after the master got it (docs/design.md, "Expiry").

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use backon::Retryable;
use qkd_proto::peer as pb;
use qkd_types::{BlockId, KeyId, KmeId, LinkId, NodeId, SaeId, Secret, UnixMillis};
use rand::RngCore;
use ring::hmac;
use subtle::ConstantTimeEq;

use super::{
    DeliveredKey, KeyManager, LinkRt, Malformed, PeerError, Refusal, ServiceError, block_updates,
    range_msg, range_of, store_result,
};
use crate::api::Unavailable;
use crate::core::fit::KeyOrigin;
use crate::core::pool::{LinkPool, PoolError, Range};
use crate::events::{Event, Side};
use crate::manager::e2e::{self, DestState, E2eKeys, KeyMode};
use crate::relay::pools::{PoolRules, Pools, Taken};
use crate::relay::topology::{LinkAdmin, LinkAdvert, NodeAdvert, Topology, advertised_up};
use crate::store::{MadeUnder, PoolKey, StoreError, StoredKey, ops};

/// Bytes of link key keying the MAC of one hop message.
const AUTH_LEN: u32 = 32;
/// Forward kinds.
const FORWARD_CONFIRM: u32 = 1;
const FORWARD_VOID: u32 = 2;
const FORWARD_DELIVER: u32 = 3;
const FORWARD_NOTICE: u32 = 4;
/// Batches of one pair's pool under way at once.
const MAX_INFLIGHT: usize = 3;
/// Adverts a neighbour may miss in a row before its link is taken out of routes.
const MISSED_ADVERTS: u32 = 3;

/// Relay and pool settings.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// KME ID of every node of the network (for `target_KME_ID` and end-to-end identities).
    pub kme_ids: std::collections::BTreeMap<NodeId, KmeId>,
    /// Finished keys to keep ready per SAE pair (the pool's capacity, `max_key_count`).
    pub pool_keys: u32,
    /// Keys made per relayed batch (one end-to-end exchange each).
    pub batch_keys: u32,
    /// How long a pool key may wait before it is handed out.
    pub pool_ttl_ms: u64,
    /// Time allowed per hop of a relay.
    pub hop_timeout: Duration,
    /// How often link-state adverts are sent.
    pub advert_interval: Duration,
    /// How the keys of each pair are protected; pairs not listed get `default_mode`.
    pub pairs: std::collections::BTreeMap<(SaeId, SaeId), KeyMode>,
    /// Protection of pairs not listed.
    pub default_mode: KeyMode,
    /// Fault injection for tests: flip a bit of every relay ciphertext this node sends.
    pub tamper_relay: bool,
    /// This node's end-to-end identity and its peers' pinned keys.
    pub e2e: std::sync::Arc<E2eKeys>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            kme_ids: Default::default(),
            pool_keys: 1024,
            batch_keys: 64,
            pool_ttl_ms: 86_400_000,
            hop_timeout: Duration::from_secs(2),
            advert_interval: Duration::from_millis(300),
            pairs: Default::default(),
            default_mode: KeyMode::default(),
            tamper_relay: false,
            e2e: Default::default(),
        }
    }
}

/// In-memory relay state of a node.
#[derive(Debug, Default)]
pub(super) struct RelayState {
    topology: Mutex<Topology>,
    advert_seq: Mutex<u64>,
    /// Master side: the pairs' pools of ready keys (`None` until the configuration is known).
    pools: Mutex<Option<Pools>>,
    /// Destination side: batches awaiting end-to-end confirmation.
    pending: Mutex<BTreeMap<[u8; 16], Pending>>,
    /// Allocator side: hop allocations answered to a neighbour, with the link bytes read when
    /// they were taken (a drained block is erased at once), until the hop's message arrives.
    hop_allocs: Mutex<VecDeque<HopAlloc>>,
    /// Neighbours that did not answer the last advert.
    unreachable: Mutex<BTreeSet<NodeId>>,
    /// Links an operator drained (advertised down until enabled again; not kept across a
    /// restart: a restarted node starts with every link enabled).
    drained: Mutex<BTreeSet<LinkId>>,
    /// Adverts each neighbour missed in a row.
    missed: Mutex<BTreeMap<NodeId, u32>>,
    /// Destination side: confirmed wrap batches waiting for their multicast keys.
    wraps: Mutex<BTreeMap<[u8; 16], Wraps>>,
    /// Source side: a pass over the delivery-notice outbox is under way.
    sending_notices: std::sync::atomic::AtomicBool,
    /// Delivery notices sent and received since start.
    notices: NoticeCounters,
}

/// Delivery notices since start (for `/status`).
#[derive(Debug, Default)]
struct NoticeCounters {
    sent: std::sync::atomic::AtomicU64,
    keys_sent: std::sync::atomic::AtomicU64,
    received: std::sync::atomic::AtomicU64,
    keys_received: std::sync::atomic::AtomicU64,
}

/// Delivery notices since start, as `/status` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct NoticeStats {
    /// Notices this node sent (as the master's node).
    pub sent: u64,
    /// Keys they named.
    pub keys_sent: u64,
    /// Notices this node received and applied (as a slave's node).
    pub received: u64,
    /// Keys they named.
    pub keys_received: u64,
}

#[derive(Debug)]
struct Wraps {
    source: NodeId,
    master: SaeId,
    slaves: Vec<SaeId>,
    keys: Vec<Secret>,
    deadline: UnixMillis,
}

#[derive(Debug)]
struct HopAlloc {
    hop_id: [u8; 16],
    link: LinkId,
    ranges: Vec<Range>,
    bytes: Secret,
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
    /// The key stream whose indices the batch reserves: (stream, first index, expiry).
    stream: Option<(qkd_types::KeyStreamId, u64, UnixMillis)>,
}

/// What a batch is for.
#[derive(Debug, Clone)]
pub(super) struct BatchSpec {
    pub master: SaeId,
    pub slaves: Vec<SaeId>,
    pub size_bits: u32,
    pub number: usize,
    /// Keys that wrap multicast keys, never delivered themselves.
    pub wrap: bool,
    /// Keys for the pair's pool, at its default size.
    pub pool: bool,
    /// Indices of a key stream the batch reserves: its key IDs are the stream's, not random.
    pub stream: Option<StreamSlice>,
}

/// A run of indices of a key stream, reserved by one batch.
#[derive(Debug, Clone)]
pub(super) struct StreamSlice {
    /// The stream.
    pub id: qkd_types::KeyStreamId,
    /// The IDs of the run's keys, in index order.
    pub key_ids: Vec<KeyId>,
    /// The index of the first.
    pub first_index: u64,
    /// When the keys expire at both ends.
    pub expires_at: UnixMillis,
}

/// Why a batch failed, and whether its destination may have committed its keys (the
/// confirmation was sent): a batch that failed before cannot have left keys anywhere.
#[derive(Debug)]
pub(super) struct BatchFailure {
    pub error: RelayError,
    pub maybe_committed: bool,
}

/// A finished batch.
#[derive(Debug)]
pub(super) struct Batch {
    pub keys: Vec<DeliveredKey>,
    path: Vec<NodeId>,
    pub relay_id: [u8; 16],
}

impl KeyManager {
    fn relay(&self) -> &RelayState {
        &self.inner.relay
    }

    fn now(&self) -> UnixMillis {
        self.inner.clock.now()
    }

    /// The mode (policy) of a pair, whichever order its SAEs are given in.
    pub(super) fn pair_mode(&self, a: &SaeId, b: &SaeId) -> KeyMode {
        let rc = &self.inner.cfg.relay;
        let key = if a <= b {
            (a.clone(), b.clone())
        } else {
            (b.clone(), a.clone())
        };
        rc.pairs.get(&key).cloned().unwrap_or(rc.default_mode)
    }

    /// KME ID of a node.
    pub(super) fn kme_of(&self, node: &NodeId) -> KmeId {
        let cfg = &self.inner.cfg;
        if node == &cfg.node {
            return cfg.kme.clone();
        }
        cfg.relay
            .kme_ids
            .get(node)
            .cloned()
            .or_else(|| cfg.neighbours.get(node).map(|n| n.kme.clone()))
            .unwrap_or_else(|| KmeId::parse(node.as_str()).unwrap_or_else(|_| cfg.kme.clone()))
    }

    fn neighbour_link(&self, node: &NodeId) -> Option<&LinkRt> {
        let n = self.inner.cfg.neighbours.get(node)?;
        self.inner.links.get(&n.link)
    }

    /// What keys of a pair are made under now.
    pub(super) fn made_under(&self, master: &SaeId, slave: &SaeId) -> MadeUnder {
        let mode = self.pair_mode(master, slave);
        MadeUnder {
            policy: mode.policy_name().to_string(),
            suite: mode.suite_name().to_string(),
        }
    }

    /// The nodes the slaves are attached to, each once, in order.
    fn slave_nodes(&self, slaves: &[SaeId]) -> Vec<NodeId> {
        let mut out: Vec<NodeId> = Vec::new();
        for s in slaves {
            if let Some(e) = self.inner.cfg.saes.get(s)
                && !out.contains(&e.node)
            {
                out.push(e.node.clone());
            }
        }
        out
    }

    /// Delivery notices sent and received since start.
    pub fn notice_stats(&self) -> NoticeStats {
        use std::sync::atomic::Ordering::Relaxed;
        let n = &self.relay().notices;
        NoticeStats {
            sent: n.sent.load(Relaxed),
            keys_sent: n.keys_sent.load(Relaxed),
            received: n.received.load(Relaxed),
            keys_received: n.keys_received.load(Relaxed),
        }
    }

    /// Starts a pass over the delivery-notice outbox in the background, unless one is running:
    /// each queued notice goes along a route to its destination and is dropped once answered,
    /// or once it is too old to matter (the destination's fallback expiry has passed by then).
    fn kick_notices(&self) {
        use std::sync::atomic::Ordering;
        if self.relay().sending_notices.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        self.spawn(async move {
            if let Err(e) = me.send_notices().await {
                tracing::debug!(error = %e, "delivery notices not sent; will retry");
            }
            me.relay().sending_notices.store(false, Ordering::Release);
        });
    }

    async fn send_notices(&self) -> Result<(), RelayError> {
        let queued = self
            .inner
            .writer
            .apply(ops::QueuedNotices { limit: 256 })
            .await
            .map_err(|_| RelayError::Store)?;
        let cfg = &self.inner.cfg;
        let stale_before = self
            .now()
            .saturating_sub(cfg.relay.pool_ttl_ms + cfg.key_ttl_ms);
        let mut done = Vec::new();
        let mut unreachable: BTreeSet<NodeId> = BTreeSet::new();
        for (dest, seq, delivered_at, ids) in queued {
            if delivered_at < stale_before || dest == cfg.node {
                done.push((dest, seq));
                continue;
            }
            if unreachable.contains(&dest) {
                continue;
            }
            let path = lock(&self.relay().topology).route(&cfg.node, &dest, 0);
            let Some(path) = path else {
                unreachable.insert(dest);
                continue;
            };
            let Some(local) = cfg.relay.e2e.local.as_ref() else {
                return Err(RelayError::E2e(e2e::E2eError::NoSigningKey));
            };
            let sig = local
                .signing()
                .sign(&notice_signed(&cfg.kme, delivered_at, &ids))
                .map_err(RelayError::Sign)?;
            let msg = pb::DeliveryNotice {
                key_ids: ids.iter().map(|k| k.as_bytes().to_vec()).collect(),
                delivered_at,
                source_kme: cfg.kme.to_string(),
                sig,
            };
            let id = *KeyId::random().as_bytes();
            let encoded = prost::Message::encode_to_vec(&msg);
            match self.forward(&id, &path, 1, FORWARD_NOTICE, encoded).await {
                Ok(_) => {
                    use std::sync::atomic::Ordering::Relaxed;
                    self.relay().notices.sent.fetch_add(1, Relaxed);
                    self.relay()
                        .notices
                        .keys_sent
                        .fetch_add(ids.len() as u64, Relaxed);
                    done.push((dest, seq));
                }
                Err(_) => {
                    // Notices to one node go in order: try its later ones next pass.
                    unreachable.insert(dest);
                }
            }
        }
        if !done.is_empty() {
            self.inner
                .writer
                .apply(ops::DropNotices { notices: done })
                .await
                .map_err(|_| RelayError::Store)?;
        }
        Ok(())
    }

    /// A delivery notice from `source`: keys waiting here whose master is attached there expire
    /// a key TTL after the stamp (never later than they would have).
    async fn accept_notice(
        &self,
        source: &NodeId,
        msg: &[u8],
    ) -> Result<pb::ForwardReply, PeerError> {
        let msg: pb::DeliveryNotice =
            prost::Message::decode(msg).map_err(|_| Malformed::Field("delivery notice"))?;
        let ids: Vec<KeyId> = msg
            .key_ids
            .iter()
            .map(|k| super::key_id(k))
            .collect::<Result<_, _>>()?;
        // Only the source node itself may say when its master got the keys: its signature,
        // under the key pinned for the KME of the node the path starts at.
        let kme = self.kme_of(source);
        if msg.source_kme != kme.as_str() {
            return Err(Refusal::NoticeSource.into());
        }
        self.inner
            .cfg
            .relay
            .e2e
            .peers
            .get(&kme)
            .ok_or_else(|| Refusal::E2e(e2e::E2eError::NotPinned(kme.clone())))?
            .verify(
                &notice_signed(&kme, msg.delivered_at, &ids),
                &msg.sig,
                "delivery notice",
            )
            .map_err(Refusal::Signature)?;
        let n = ids.len() as u64;
        let expires_at = msg.delivered_at.saturating_add(self.inner.cfg.key_ttl_ms);
        // Only the master's own node may say when its master got the key.
        let masters: BTreeSet<SaeId> = self
            .inner
            .cfg
            .saes
            .iter()
            .filter(|(_, e)| &e.node == source)
            .map(|(s, _)| s.clone())
            .collect();
        let moved = self
            .inner
            .writer
            .apply(ops::MoveExpiry {
                ids,
                masters,
                expires_at,
            })
            .await?;
        self.emit(&Event::ExpiryMoved {
            keys: &moved,
            expires_at,
        });
        use std::sync::atomic::Ordering::Relaxed;
        self.relay().notices.received.fetch_add(1, Relaxed);
        self.relay().notices.keys_received.fetch_add(n, Relaxed);
        Ok(pb::ForwardReply { e2e: Vec::new() })
    }

    /// Restores the pools from the store at start. Keys that no longer fit their pair's
    /// configuration are left out, to be erased by [`KeyManager::void_stale_keys`].
    pub(super) fn restore_pools(&self, pool: Vec<(KeyId, PoolKey)>) {
        let mut pools = Pools::new(self.pool_rules());
        let mut keep = Vec::new();
        for (id, meta) in pool {
            let origin = KeyOrigin {
                made_under: meta.made_under.as_ref(),
                size_bits: meta.size_bits,
                pool: true,
            };
            if let Some(why) = self.misfit(&meta.master, &meta.slaves, origin) {
                let slave = meta.slaves.first().cloned().unwrap_or(meta.master.clone());
                self.note_voided(&meta.master, &slave, &why);
                lock(&self.inner.stale_pool).push(id);
                continue;
            }
            if let Some(slave) = meta.slaves.first() {
                keep.push(((meta.master.clone(), slave.clone()), id, meta.created_at));
            }
        }
        pools.restore(keep);
        *lock(&self.relay().pools) = Some(pools);
    }

    fn pool_rules(&self) -> PoolRules {
        let rc = &self.inner.cfg.relay;
        PoolRules {
            target: rc.pool_keys as usize,
            batch_keys: rc.batch_keys as usize,
            max_inflight: MAX_INFLIGHT,
            ttl_ms: rc.pool_ttl_ms,
        }
    }

    /// Runs `f` on the pools (restored when the manager is built).
    fn pools<T>(&self, f: impl FnOnce(&mut Pools) -> T) -> T {
        let mut guard = lock(&self.relay().pools);
        f(guard.get_or_insert_with(|| Pools::new(self.pool_rules())))
    }

    /// Ready keys for a pair at this (master's) node, not counting keys too old to hand out
    /// (for operators' metrics and alarms too).
    pub fn pool_level(&self, master: &SaeId, slave: &SaeId) -> u64 {
        let now = self.now();
        self.pools(|p| p.level(&(master.clone(), slave.clone()), now))
    }

    /// Serves `enc_keys` of the default size from the pair's pool, all or nothing.
    pub(super) async fn enc_from_pool(
        &self,
        master: &SaeId,
        slave: &SaeId,
        number: usize,
    ) -> Result<Vec<DeliveredKey>, ServiceError> {
        let now = self.now();
        // Keys too old to hand out are discarded (their slave copies expire at the peer).
        let Taken { keys: ids, stale } =
            self.pools(|p| p.take(&(master.clone(), slave.clone()), number, now));
        self.kick_refill(master.clone(), slave.clone());
        if !stale.is_empty() {
            let _ = self
                .inner
                .writer
                .apply(ops::DiscardPoolKeys { ids: stale })
                .await;
        }
        let ids = ids.ok_or(ServiceError::InsufficientKeyMaterial)?;
        let now = self.now();
        let dests = self.slave_nodes(std::slice::from_ref(slave));
        let r = self
            .inner
            .writer
            .apply(ops::DeliverPoolKeys {
                ids,
                now,
                notify: dests,
            })
            .await;
        let handed = store_result(r)?;
        let made: Vec<(KeyId, Option<MadeUnder>)> = handed
            .iter()
            .map(|h| (h.id, h.made_under.clone()))
            .collect();
        let out: Vec<DeliveredKey> = handed
            .into_iter()
            .map(|h| DeliveredKey {
                id: h.id,
                key: h.key,
            })
            .collect();
        self.emit(&Event::Delivered {
            side: Side::Master,
            master,
            slaves: std::slice::from_ref(slave),
            keys: &made,
        });
        Ok(out)
    }

    /// Starts refills of the pair's pool in the background until it is full, with at most
    /// [`MAX_INFLIGHT`] batches of the pair under way (so one pair cannot take every link's key).
    pub(super) fn kick_refill(&self, master: SaeId, slave: SaeId) {
        let refills = self.pools(|p| p.refills(&(master.clone(), slave.clone())));
        for refill in refills {
            let me = self.clone();
            self.spawn(async move {
                let (master, slave) = refill.pair.clone();
                let r = me.refill(&master, &slave, refill.keys).await;
                let made = r.as_ref().ok().map(|ids| (ids.clone(), me.now()));
                me.pools(|p| p.refill_done(&refill, made));
                match r {
                    Ok(_) => me.kick_refill(master, slave),
                    Err(e) => {
                        tracing::debug!(%master, %slave, error = %e, "pool refill failed; will retry")
                    }
                }
            });
        }
    }

    /// Makes `n` keys for the pair's pool and stores them durably: their IDs.
    async fn refill(
        &self,
        master: &SaeId,
        slave: &SaeId,
        n: usize,
    ) -> Result<Vec<KeyId>, RelayError> {
        // Below the store's watermark no batch is made: its keys could not be stored, and the
        // link key it would use is gone either way.
        if self.inner.writer.space().admit_ingest().is_err() {
            return Err(RelayError::Store);
        }
        let spec = BatchSpec {
            master: master.clone(),
            slaves: vec![slave.clone()],
            size_bits: self.inner.cfg.limits.key_size,
            number: n,
            wrap: false,
            pool: true,
            stream: None,
        };
        let keys = self.run_batch(&spec).await?.keys;
        let now = self.now();
        let meta = PoolKey {
            master: master.clone(),
            slaves: spec.slaves.clone(),
            size_bits: spec.size_bits,
            created_at: now,
            made_under: Some(self.made_under(master, slave)),
        };
        let ids: Vec<KeyId> = keys.iter().map(|k| k.id).collect();
        let r = self
            .inner
            .writer
            .apply(ops::PutPoolKeys {
                meta,
                keys: keys.into_iter().map(|k| (k.id, k.key)).collect(),
            })
            .await;
        store_result(r).map_err(|_| RelayError::Store)?;
        Ok(ids)
    }

    /// Keys of a non-default size (or for several slaves) made on demand and answered directly.
    pub(super) async fn enc_on_demand(
        &self,
        master: &SaeId,
        slaves: Vec<SaeId>,
        number: usize,
        size_bits: u32,
    ) -> Result<Vec<DeliveredKey>, ServiceError> {
        let map_err = |e: RelayError| {
            tracing::warn!(%master, error = %e, "on-demand keys failed");
            match e {
                RelayError::NoRoute | RelayError::Exhausted => {
                    ServiceError::InsufficientKeyMaterial
                }
                RelayError::Store => ServiceError::Storage,
                RelayError::MixedProfiles => ServiceError::MixedProfiles,
                RelayError::E2e(_) | RelayError::Sign(_) => {
                    ServiceError::PeerUnavailable(Unavailable::EndToEnd)
                }
                RelayError::Unsupported(what) => {
                    ServiceError::PeerUnavailable(Unavailable::Unsupported(what))
                }
                RelayError::Hop { .. } | RelayError::Allocation(_) | RelayError::Malformed(_) => {
                    ServiceError::PeerUnavailable(Unavailable::Unreachable)
                }
            }
        };
        let mode = self.pair_mode(master, &slaves[0]);
        if slaves.iter().any(|s| self.pair_mode(master, s) != mode)
            && !crate::events::defects::active().mixed_profiles
        {
            return Err(ServiceError::MixedProfiles);
        }
        // Slaves grouped by the node they are attached to.
        let mut groups: std::collections::BTreeMap<NodeId, Vec<SaeId>> = Default::default();
        for s in &slaves {
            let node = self
                .inner
                .cfg
                .saes
                .get(s)
                .map(|e| e.node.clone())
                .ok_or(ServiceError::KeysNotFound)?;
            groups.entry(node).or_default().push(s.clone());
        }
        let keys = if groups.len() == 1 {
            let spec = BatchSpec {
                master: master.clone(),
                slaves: slaves.clone(),
                size_bits,
                number,
                wrap: false,
                pool: false,
                stream: None,
            };
            self.run_batch(&spec).await.map_err(map_err)?.keys
        } else {
            self.multicast(master, groups, number, size_bits)
                .await
                .map_err(map_err)?
        };
        let now = self.now();
        let ids: Vec<(KeyId, SaeId, SaeId)> = keys
            .iter()
            .map(|k| (k.id, master.clone(), slaves[0].clone()))
            .collect();
        let r = self
            .inner
            .writer
            .apply(ops::RecordIssued {
                keys: ids,
                now,
                notify: self.slave_nodes(&slaves),
            })
            .await;
        store_result(r)?;
        let made_under = self.made_under(master, &slaves[0]);
        let made: Vec<(KeyId, Option<MadeUnder>)> = keys
            .iter()
            .map(|k| (k.id, Some(made_under.clone())))
            .collect();
        self.emit(&Event::Delivered {
            side: Side::Master,
            master,
            slaves: &slaves,
            keys: &made,
        });
        Ok(keys)
    }

    /// Multicast to slaves at several nodes: one random key per output key, sealed for each
    /// node under wrap keys from an end-to-end (hybrid) batch with that node (docs/hybrid.md, "Multicast").
    async fn multicast(
        &self,
        master: &SaeId,
        groups: std::collections::BTreeMap<NodeId, Vec<SaeId>>,
        number: usize,
        size_bits: u32,
    ) -> Result<Vec<DeliveredKey>, RelayError> {
        let key_ids: Vec<KeyId> = (0..number).map(|_| KeyId::random()).collect();
        let keys: Vec<Secret> = (0..number)
            .map(|_| {
                let mut k = Secret::zeroed(size_bits as usize / 8);
                rand::rng().fill_bytes(k.expose_mut());
                k
            })
            .collect();
        let deliveries = groups.into_values().map(|slaves| {
            let spec = BatchSpec {
                master: master.clone(),
                slaves,
                size_bits: 256,
                number,
                wrap: true,
                pool: false,
                stream: None,
            };
            let key_ids = &key_ids;
            let keys = &keys;
            async move {
                let batch = self.run_batch(&spec).await?;
                let mut sealed = Vec::with_capacity(number);
                for ((wrap, id), k) in batch.keys.iter().zip(key_ids).zip(keys) {
                    sealed.push(seal_multicast(&wrap.key, *id, &batch.relay_id, k)?);
                }
                let msg = pb::MulticastDeliver {
                    key_ids: key_ids.iter().map(|k| k.as_bytes().to_vec()).collect(),
                    sealed,
                    size_bits,
                };
                self.forward(
                    &batch.relay_id,
                    &batch.path,
                    1,
                    FORWARD_DELIVER,
                    prost::Message::encode_to_vec(&msg),
                )
                .await
                .map(|_| ())
            }
        });
        for r in futures::future::join_all(deliveries).await {
            r?;
        }
        Ok(key_ids
            .into_iter()
            .zip(keys)
            .map(|(id, key)| DeliveredKey { id, key })
            .collect())
    }

    /// Makes one batch end to end; returns the keys once the destination has released its copies.
    /// Runs one batch ([`Self::relay_batch`]) and records how long it took.
    async fn run_batch(&self, spec: &BatchSpec) -> Result<Batch, RelayError> {
        self.run_batch_reporting(spec).await.map_err(|f| f.error)
    }

    /// [`Self::run_batch`], saying on failure whether the destination may hold the keys; records
    /// how long the batch took.
    pub(super) async fn run_batch_reporting(
        &self,
        spec: &BatchSpec,
    ) -> Result<Batch, BatchFailure> {
        let started = std::time::Instant::now();
        let r = self.relay_batch(spec).await;
        self.inner
            .instruments
            .batch(r.is_ok(), started.elapsed(), spec.number);
        r
    }

    async fn relay_batch(&self, spec: &BatchSpec) -> Result<Batch, BatchFailure> {
        let early = |error: RelayError| BatchFailure {
            error,
            maybe_committed: false,
        };
        let cfg = &self.inner.cfg;
        let dest = cfg
            .saes
            .get(&spec.slaves[0])
            .map(|e| e.node.clone())
            .ok_or(early(RelayError::NoRoute))?;
        if spec
            .slaves
            .iter()
            .any(|s| cfg.saes.get(s).map(|e| &e.node) != Some(&dest))
        {
            return Err(early(RelayError::Unsupported(
                "additional slaves at different nodes",
            )));
        }
        let mode = self.pair_mode(&spec.master, &spec.slaves[0]);
        // One batch, one policy and suite: never make keys for a pair under another pair's.
        if spec
            .slaves
            .iter()
            .any(|s| self.pair_mode(&spec.master, s) != mode)
            && !crate::events::defects::active().mixed_profiles
        {
            return Err(early(RelayError::MixedProfiles));
        }
        let relayed_len = mode.relayed_len(spec.size_bits);
        let need = u64::from(relayed_len) * spec.number as u64 + u64::from(AUTH_LEN);
        let path = {
            let topo = lock(&self.relay().topology);
            topo.route(&cfg.node, &dest, if relayed_len == 0 { 0 } else { need })
        }
        .ok_or(early(RelayError::NoRoute))?;
        let relay_id = *KeyId::random().as_bytes();
        let key_ids: Vec<KeyId> = match &spec.stream {
            Some(s) => s.key_ids.clone(),
            None => (0..spec.number).map(|_| KeyId::random()).collect(),
        };
        let relay_key_ids: Vec<KeyId> = (0..spec.number).map(|_| KeyId::random()).collect();
        let mut payload = Secret::zeroed(relayed_len as usize * spec.number);
        rand::rng().fill_bytes(payload.expose_mut());
        let ctx = e2e::Context {
            mode,
            kme_source: cfg.kme.clone(),
            kme_dest: self.kme_of(&dest),
            master: spec.master.clone(),
            slaves: spec.slaves.clone(),
            size_bits: spec.size_bits,
            key_ids: key_ids.clone(),
            relay_key_ids: relay_key_ids.clone(),
        };
        let e2e_keys = self.inner.cfg.relay.e2e.clone();
        let (source_state, msg1) =
            e2e::source_start(&e2e_keys, &ctx, &payload).map_err(|e| early(e.into()))?;
        let header = pb::RelayHeader {
            relay_id: relay_id.to_vec(),
            path: path.iter().map(|n| n.to_string()).collect(),
            master_sae: spec.master.to_string(),
            slave_saes: spec.slaves.iter().map(|s| s.to_string()).collect(),
            size_bits: spec.size_bits,
            policy: mode.policy_name().to_string(),
            suite: mode.suite_name().to_string(),
            key_ids: key_ids.iter().map(|k| k.as_bytes().to_vec()).collect(),
            relay_key_ids: relay_key_ids
                .iter()
                .map(|k| k.as_bytes().to_vec())
                .collect(),
            relayed_len,
            wrap: spec.wrap,
            pool: spec.pool,
            stream: spec.stream.as_ref().map(|s| pb::StreamSlice {
                key_stream_id: s.id.as_bytes().to_vec(),
                first_index: s.first_index,
                expires_at_ms: s.expires_at,
            }),
        };
        let hops = (path.len() - 1) as u32;
        let reply = self.send_hop(&header, 1, &payload, msg1, hops).await;
        // Whether the confirmation (message 3) left: only then may the destination commit.
        let mut confirm_sent = false;
        let result = async {
            let reply = reply?;
            let (state, msg3) = e2e::source_finish(&e2e_keys, source_state, &reply.e2e)?;
            confirm_sent = true;
            let ack = self
                .forward(&relay_id, &path, 1, FORWARD_CONFIRM, msg3)
                .await?;
            Ok(e2e::source_ack(&e2e_keys, state, &ack.e2e)?)
        }
        .await;
        match result {
            Ok(keys) => Ok(Batch {
                keys: key_ids
                    .into_iter()
                    .zip(keys)
                    .map(|(id, key)| DeliveredKey { id, key })
                    .collect(),
                path,
                relay_id,
            }),
            Err(e) => {
                // Void at the destination in the background; its unreleased keys also expire.
                let me = self.clone();
                let path = path.clone();
                self.spawn(async move {
                    let _ = me
                        .forward(&relay_id, &path, 1, FORWARD_VOID, Vec::new())
                        .await;
                });
                Err(BatchFailure {
                    error: e,
                    maybe_committed: confirm_sent,
                })
            }
        }
    }

    /// Sends the batch's keys over the hop into `header.path[hop]` and returns the end-to-end
    /// answer that comes back from the destination.
    fn send_hop<'a>(
        &'a self,
        header: &'a pb::RelayHeader,
        hop: u32,
        payload: &'a Secret,
        e2e_msg: Vec<u8>,
        hops_left: u32,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<pb::RelayReply, RelayError>> + Send + 'a>>
    {
        Box::pin(async move {
            let next = NodeId::parse(
                header
                    .path
                    .get(hop as usize)
                    .ok_or(RelayError::Malformed("path"))?,
            )
            .map_err(|_| RelayError::Malformed("path"))?;
            let link = self.neighbour_link(&next).ok_or(RelayError::NoRoute)?;
            let len = payload.len() as u32;
            let hop_id = *KeyId::random().as_bytes();
            // Link bytes for the pad and the MAC key, taken durably before anything is sent.
            let (all, bytes) = self.hop_key(link, hop_id, len).await?;
            link.counters.add(
                header.key_ids.len() as u64,
                u64::from(len),
                u64::from(AUTH_LEN),
            );
            let (pad_ranges, auth_ranges) = split_ranges(&all, len);
            let ciphertext = xor(payload, &bytes, len as usize);
            let mut req = pb::RelayRequest {
                header: Some(header.clone()),
                hop,
                hop_id: hop_id.to_vec(),
                link_id: link.setup.id.to_string(),
                pad: pad_ranges.iter().map(range_msg).collect(),
                auth: auth_ranges.iter().map(range_msg).collect(),
                ciphertext,
                tag: Vec::new(),
                e2e: e2e_msg,
            };
            // The MAC key is exposed only to key the HMAC of this one message.
            let auth_key = &bytes.expose()[len as usize..];
            req.tag = mac(auth_key, &req);
            if self.inner.cfg.relay.tamper_relay {
                // Test fault: the message is altered after it was authenticated, as an attacker
                // on the wire (or a broken relay) would.
                if let Some(b) = req.ciphertext.first_mut() {
                    *b ^= 1;
                }
            }
            let timeout = self.inner.cfg.relay.hop_timeout * hops_left.max(1);
            link.setup
                .client
                .relay(req, timeout)
                .await
                .map_err(|status| RelayError::Hop {
                    peer: next.clone(),
                    status,
                })
        })
    }

    /// Takes fresh link key for one hop message (`len` pad bytes, then the MAC key): allocated
    /// here if this node allocates the link, else by the neighbour. Durable before it returns.
    async fn hop_key(
        &self,
        link: &LinkRt,
        hop_id: [u8; 16],
        len: u32,
    ) -> Result<(Vec<Range>, Secret), RelayError> {
        let (all, fut) = if link.allocator() {
            let mut p = link.pool();
            let all: Vec<Range> = p
                .allocate(&[len, AUTH_LEN])
                .map_err(|_| RelayError::Exhausted)?
                .into_iter()
                .flatten()
                .collect();
            let fut = self.take_read_job(&mut p, link, all.clone());
            (all, fut)
        } else {
            let all = self
                .allocate_at_neighbour(link, hop_id, len + AUTH_LEN)
                .await?;
            let mut p = link.pool();
            p.take(&all).map_err(RelayError::Allocation)?;
            let fut = self.take_read_job(&mut p, link, all.clone());
            (all, fut)
        };
        let bytes = fut.await.map_err(|_| RelayError::Store)?;
        Ok((all, bytes))
    }

    /// Under the pool lock, after the ranges were taken in memory: queues the durable write of
    /// the taken bytes and the read of their contents.
    fn take_read_job(
        &self,
        pool: &mut LinkPool,
        link: &LinkRt,
        ranges: Vec<Range>,
    ) -> impl Future<Output = Result<Secret, StoreError>> + use<> {
        let runs: Vec<(BlockId, u32, u32)> = ranges
            .iter()
            .filter_map(|r| pool.block(r.block_seq).map(|b| (b.id, r.offset, r.len)))
            .collect();
        let (metas, drained) = block_updates(pool, ranges.iter());
        let lid = link.setup.id.clone();
        let done = self.inner.writer.apply(ops::TakeLinkKey {
            link: lid,
            ranges,
            metas,
            erase: drained,
        });
        let me = self.clone();
        let lid = link.setup.id.clone();
        async move {
            let r = done.await;
            // Reported once the take is durable: only then may the bytes be used.
            if r.is_ok() {
                me.emit(&Event::LinkKeyTaken {
                    link: &lid,
                    runs: &runs,
                });
            }
            r
        }
    }

    async fn allocate_at_neighbour(
        &self,
        link: &LinkRt,
        hop_id: [u8; 16],
        len: u32,
    ) -> Result<Vec<Range>, RelayError> {
        let msg = pb::RelayAllocateRequest {
            hop_id: hop_id.to_vec(),
            link_id: link.setup.id.to_string(),
            len,
        };
        let hop_failed = |status| RelayError::Hop {
            peer: link.setup.peer.clone(),
            status,
        };
        // An allocation is idempotent per hop ID, so a lost call or answer is simply retried.
        let timeout = self.inner.cfg.relay.hop_timeout;
        let retry = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(20))
            .with_max_times(2);
        let reply = (|| link.setup.client.relay_allocate(msg.clone(), timeout))
            .retry(retry)
            .when(|s: &tonic::Status| {
                matches!(
                    s.code(),
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                )
            })
            .await
            .map_err(|s| match s.code() {
                tonic::Code::ResourceExhausted => RelayError::Exhausted,
                _ => hop_failed(s),
            })?;
        let ranges: Vec<Range> = reply.ranges.iter().map(range_of).collect();
        if ranges.iter().map(|r| u64::from(r.len)).sum::<u64>() != u64::from(len) {
            return Err(RelayError::Malformed("allocation length"));
        }
        Ok(ranges)
    }

    /// Sends an end-to-end message along `path` from the node at `hop - 1` (this one).
    fn forward<'a>(
        &'a self,
        relay_id: &'a [u8; 16],
        path: &'a [NodeId],
        hop: u32,
        kind: u32,
        e2e_msg: Vec<u8>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<pb::ForwardReply, RelayError>> + Send + 'a>>
    {
        Box::pin(async move {
            let next = path
                .get(hop as usize)
                .ok_or(RelayError::Malformed("path"))?;
            let link = self.neighbour_link(next).ok_or(RelayError::NoRoute)?;
            let req = pb::ForwardRequest {
                relay_id: relay_id.to_vec(),
                path: path.iter().map(|n| n.to_string()).collect(),
                hop,
                kind,
                e2e: e2e_msg,
            };
            let timeout = self.inner.cfg.relay.hop_timeout * (path.len() as u32 - hop).max(1);
            link.setup
                .client
                .forward(req, timeout)
                .await
                .map_err(|status| RelayError::Hop {
                    peer: next.clone(),
                    status,
                })
        })
    }

    /// Copies of link bytes for a relay, read back after a hop.
    async fn read_back(&self, link: &LinkRt, ranges: Vec<Range>) -> Result<Secret, PeerError> {
        let fut = {
            let mut p = link.pool();
            p.take(&ranges).map_err(Refusal::Pool)?;
            self.take_read_job(&mut p, link, ranges)
        };
        Ok(fut.await?)
    }

    // ---- peer-facing ----

    /// Checks that a message for position `hop` of `path` came from the node before it and is
    /// for this node; returns the position.
    fn check_hop(&self, from: &NodeId, path: &[NodeId], hop: u32) -> Result<usize, PeerError> {
        let hop = hop as usize;
        if hop == 0
            || hop >= path.len()
            || path[hop] != self.inner.cfg.node
            || &path[hop - 1] != from
        {
            return Err(Refusal::NotOnPath.into());
        }
        Ok(hop)
    }

    /// `Advertise` from a neighbour: store newer adverts.
    pub fn on_advertise(&self, from: &NodeId, req: pb::AdvertiseRequest) -> Result<(), PeerError> {
        if !self.inner.cfg.neighbours.contains_key(from) {
            return Err(Refusal::NotNeighbour.into());
        }
        let now = self.now();
        let mut topo = lock(&self.relay().topology);
        for a in req.adverts {
            let Ok(advert) = advert_of(&a) else { continue };
            // Our own advert comes back from neighbours: ignore it.
            if advert.origin != self.inner.cfg.node {
                topo.update(advert, now);
            }
        }
        Ok(())
    }

    /// `RelayAllocate` from a neighbour: pick link bytes for its hop to us.
    pub async fn on_relay_allocate(
        &self,
        from: &NodeId,
        req: pb::RelayAllocateRequest,
    ) -> Result<pb::RelayAllocateReply, PeerError> {
        let link = self.peer_link(from, &req.link_id)?;
        if !link.allocator() {
            return Err(Refusal::NotAllocator.into());
        }
        let hop_id = super::request_id(&req.hop_id)?;
        if let Some(a) = lock(&self.relay().hop_allocs)
            .iter()
            .find(|a| a.hop_id == hop_id)
        {
            return Ok(pb::RelayAllocateReply {
                ranges: a.ranges.iter().map(range_msg).collect(),
            });
        }
        if req.len == 0 || req.len > 1 << 24 {
            return Err(Malformed::Field("length").into());
        }
        let (all, fut) = {
            let mut p = link.pool();
            let all: Vec<Range> = p
                .allocate(&[req.len])
                .map_err(|e| match e {
                    PoolError::Insufficient { .. } => PeerError::Exhausted,
                    e => Refusal::Pool(e).into(),
                })?
                .into_iter()
                .flatten()
                .collect();
            let fut = self.take_read_job(&mut p, link, all.clone());
            (all, fut)
        };
        let bytes = fut.await?;
        {
            let mut h = lock(&self.relay().hop_allocs);
            h.push_back(HopAlloc {
                hop_id,
                link: link.setup.id.clone(),
                ranges: all.clone(),
                bytes,
            });
            while h.len() > 1024 {
                h.pop_front();
            }
        }
        Ok(pb::RelayAllocateReply {
            ranges: all.iter().map(range_msg).collect(),
        })
    }

    /// `Relay` from a neighbour: check, decrypt, then forward or (at the destination) answer.
    pub async fn on_relay(
        &self,
        from: &NodeId,
        req: pb::RelayRequest,
    ) -> Result<pb::RelayReply, PeerError> {
        let header = req.header.clone().ok_or(Malformed::Field("header"))?;
        let path = parse_path(&header.path)?;
        let hop = self.check_hop(from, &path, req.hop)?;
        let link = self.peer_link(from, &req.link_id)?;
        let pad: Vec<Range> = req.pad.iter().map(range_of).collect();
        let auth: Vec<Range> = req.auth.iter().map(range_of).collect();
        let pad_len: u64 = pad.iter().map(|r| u64::from(r.len)).sum();
        let auth_len: u64 = auth.iter().map(|r| u64::from(r.len)).sum();
        let expected = u64::from(header.relayed_len) * header.key_ids.len() as u64;
        if pad_len != req.ciphertext.len() as u64
            || pad_len != expected
            || auth_len != u64::from(AUTH_LEN)
        {
            return Err(Malformed::Field("relay lengths").into());
        }
        // The link bytes are taken whatever the outcome: the sender used them.
        let mut all = pad.clone();
        all.extend(auth.iter().copied());
        let bytes = if link.allocator() {
            // We allocated them for this hop when the sender asked, and kept their bytes.
            let hop_id = super::request_id(&req.hop_id)?;
            let mut h = lock(&self.relay().hop_allocs);
            let pos = h
                .iter()
                .position(|a| {
                    a.hop_id == hop_id
                        && a.link == link.setup.id
                        && merged(&a.ranges) == merged(&all)
                })
                .ok_or_else(|| PeerError::Refused(Refusal::UnallocatedHop))?;
            h.remove(pos)
                .map(|a| a.bytes)
                .ok_or(Refusal::AllocationVanished)?
        } else {
            self.read_back(link, all).await?
        };
        let pad_len = pad_len as usize;
        link.counters
            .add(header.key_ids.len() as u64, pad_len as u64, auth_len);
        // The MAC key is exposed only to check this one message's tag.
        if !verify_mac(&bytes.expose()[pad_len..], &req) {
            tracing::warn!(from = %from, link = %link.setup.id, "relay message failed authentication; dropped");
            return Err(Refusal::Authentication.into());
        }
        let mut payload = Secret::zeroed(pad_len);
        for (i, b) in payload.expose_mut().iter_mut().enumerate() {
            *b = req.ciphertext[i] ^ bytes.expose()[i];
        }
        drop(bytes);
        if hop + 1 == path.len() {
            return self.accept_batch(&header, &path, &payload, &req.e2e).await;
        }
        let hops_left = (path.len() - 1 - hop) as u32;
        self.send_hop(&header, req.hop + 1, &payload, req.e2e.clone(), hops_left)
            .await
            .map_err(|e| PeerError::Onward(Box::new(e)))
    }

    /// The destination's part of a batch: check it against this node's configuration, answer
    /// message 2 and keep the exchange in memory until message 3 (nothing durable before).
    async fn accept_batch(
        &self,
        header: &pb::RelayHeader,
        path: &[NodeId],
        payload: &Secret,
        msg1: &[u8],
    ) -> Result<pb::RelayReply, PeerError> {
        let cfg = &self.inner.cfg;
        let master = SaeId::parse(&header.master_sae).map_err(|error| Malformed::Id {
            what: "master SAE ID",
            error,
        })?;
        let slaves: Vec<SaeId> = header
            .slave_saes
            .iter()
            .map(|s| SaeId::parse(s))
            .collect::<Result<_, _>>()
            .map_err(|error| Malformed::Id {
                what: "slave SAE ID",
                error,
            })?;
        let source = &path[0];
        if cfg.saes.get(&master).map(|e| &e.node) != Some(source) {
            return Err(Refusal::MasterNotAtSource.into());
        }
        if slaves.is_empty()
            || !slaves
                .iter()
                .all(|s| self.is_local(s) && self.pair_allowed(&master, s))
        {
            return Err(Refusal::SlavesNotHere.into());
        }
        let mode = self.pair_mode(&master, &slaves[0]);
        if (slaves.iter().any(|s| self.pair_mode(&master, s) != mode)
            && !crate::events::defects::active().mixed_profiles)
            || header.policy != mode.policy_name()
            || header.suite != mode.suite_name()
        {
            return Err(Refusal::Profile.into());
        }
        let key_ids: Vec<KeyId> = header
            .key_ids
            .iter()
            .map(|k| super::key_id(k))
            .collect::<Result<_, _>>()?;
        let relay_key_ids: Vec<KeyId> = header
            .relay_key_ids
            .iter()
            .map(|k| super::key_id(k))
            .collect::<Result<_, _>>()?;
        let limits = cfg.limits;
        if key_ids.is_empty()
            || key_ids.len() != relay_key_ids.len()
            || !header.size_bits.is_multiple_of(8)
            || header.size_bits < limits.min_key_size
            || header.size_bits > limits.max_key_size.max(limits.key_size)
            || header.relayed_len != mode.relayed_len(header.size_bits)
        {
            return Err(Malformed::Field("batch parameters").into());
        }
        let relay_id = super::request_id(&header.relay_id)?;
        let stream = match &header.stream {
            None => None,
            Some(slice) => Some(super::streams::check_slice(
                slice,
                &master,
                &slaves,
                &key_ids,
                header.wrap || header.pool,
            )?),
        };
        let ctx = e2e::Context {
            mode,
            kme_source: self.kme_of(source),
            kme_dest: cfg.kme.clone(),
            master: master.clone(),
            slaves: slaves.clone(),
            size_bits: header.size_bits,
            key_ids: key_ids.clone(),
            relay_key_ids,
        };
        let now = self.now();
        // The batch's validity window: unconfirmed by then, it is void (and so is its replay).
        let deadline = now + (cfg.relay.hop_timeout.as_millis() as u64) * (path.len() as u64 + 2);
        let (state, msg2) = e2e::dest_respond(&cfg.relay.e2e, &ctx, msg1, payload, now, deadline)
            .map_err(Refusal::E2e)?;
        lock(&self.relay().pending).insert(
            relay_id,
            Pending {
                wrap: header.wrap,
                pool: header.pool,
                source: source.clone(),
                master,
                slaves,
                size_bits: header.size_bits,
                keys: key_ids,
                state,
                deadline,
                stream,
            },
        );
        Ok(pb::RelayReply { e2e: msg2 })
    }

    /// `Forward` from a neighbour: pass on, or (at the destination) confirm or void a batch.
    pub async fn on_forward(
        &self,
        from: &NodeId,
        req: pb::ForwardRequest,
    ) -> Result<pb::ForwardReply, PeerError> {
        let path = parse_path(&req.path)?;
        let hop = self.check_hop(from, &path, req.hop)?;
        let relay_id = super::request_id(&req.relay_id)?;
        if hop + 1 < path.len() {
            return self
                .forward(&relay_id, &path, req.hop + 1, req.kind, req.e2e)
                .await
                .map_err(|e| PeerError::Onward(Box::new(e)));
        }
        if req.kind == FORWARD_DELIVER {
            return self.accept_multicast(&path[0], relay_id, &req.e2e).await;
        }
        if req.kind == FORWARD_NOTICE {
            return self.accept_notice(&path[0], &req.e2e).await;
        }
        let pending = lock(&self.relay().pending).remove(&relay_id);
        let Some(pending) = pending else {
            return Err(PeerError::Voided);
        };
        if path[0] != pending.source {
            return Err(Refusal::NotSource.into());
        }
        if req.kind != FORWARD_CONFIRM {
            return Ok(pb::ForwardReply { e2e: Vec::new() });
        }
        let (keys, ack) = e2e::dest_confirm(&self.inner.cfg.relay.e2e, pending.state, &req.e2e)
            .map_err(Refusal::E2e)?;
        if pending.wrap {
            // Wrap keys stay in memory until the multicast keys they seal arrive.
            let deadline = self.now()
                + self.inner.cfg.relay.hop_timeout.as_millis() as u64 * (path.len() as u64 + 2);
            lock(&self.relay().wraps).insert(
                relay_id,
                Wraps {
                    source: pending.source,
                    master: pending.master,
                    slaves: pending.slaves,
                    keys,
                    deadline,
                },
            );
            return Ok(pb::ForwardReply { e2e: ack });
        }
        if keys.len() != pending.keys.len() {
            return Err(Refusal::KeyCount.into());
        }
        let now = self.now();
        let cfg = &self.inner.cfg;
        let made_under = self.made_under(&pending.master, &pending.slaves[0]);
        // A stream's keys expire when the master's node said, at both ends alike (bounded by
        // the longest stream TTL, whatever a peer claims).
        let expires_at = match pending.stream {
            Some((_, _, at)) => at.min(now + u64::from(crate::core::stream::MAX_TTL_S) * 1000),
            None => now + cfg.relay.pool_ttl_ms + cfg.key_ttl_ms,
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
        let ids = pending.keys;
        let stream = pending.stream;
        // Commit before the ack leaves: once the source has the ack it may hand the keys out.
        self.inner
            .writer
            .apply(ops::StoreKeys {
                meta,
                keys: ids.into_iter().zip(keys).collect(),
                stream: stream.map(|(id, first, _)| (id, first)),
            })
            .await?
            .map_err(refused)?;
        Ok(pb::ForwardReply { e2e: ack })
    }

    /// The multicast keys sealed for the slaves here under a confirmed wrap batch.
    async fn accept_multicast(
        &self,
        source: &NodeId,
        relay_id: [u8; 16],
        msg: &[u8],
    ) -> Result<pb::ForwardReply, PeerError> {
        let wraps = lock(&self.relay().wraps)
            .remove(&relay_id)
            .ok_or(PeerError::Voided)?;
        if &wraps.source != source {
            return Err(Refusal::NotSource.into());
        }
        let msg: pb::MulticastDeliver =
            prost::Message::decode(msg).map_err(|_| Malformed::Field("multicast delivery"))?;
        let limits = self.inner.cfg.limits;
        if msg.key_ids.len() != wraps.keys.len()
            || msg.sealed.len() != wraps.keys.len()
            || !msg.size_bits.is_multiple_of(8)
            || msg.size_bits < limits.min_key_size
            || msg.size_bits > limits.max_key_size
        {
            return Err(Malformed::Field("multicast delivery").into());
        }
        let mut out = Vec::with_capacity(wraps.keys.len());
        for ((id, sealed), wrap) in msg.key_ids.iter().zip(&msg.sealed).zip(&wraps.keys) {
            let id = super::key_id(id)?;
            let key = open_multicast(wrap, id, &relay_id, sealed)
                .filter(|k| k.len() == msg.size_bits as usize / 8)
                .ok_or(Refusal::MulticastAuthentication)?;
            out.push((id, key));
        }
        let now = self.now();
        let cfg = &self.inner.cfg;
        let made_under = self.made_under(&wraps.master, &wraps.slaves[0]);
        let meta = StoredKey {
            request: relay_id,
            master: wraps.master,
            slaves: wraps.slaves.into_iter().map(|s| (s, false)).collect(),
            size_bits: msg.size_bits,
            expires_at: now + cfg.key_ttl_ms,
            made_under: Some(made_under),
            pool: false,
        };
        self.inner
            .writer
            .apply(ops::StoreKeys {
                meta,
                keys: out,
                stream: None,
            })
            .await?
            .map_err(refused)?;
        Ok(pb::ForwardReply { e2e: Vec::new() })
    }

    /// Drops batches whose confirmation never came.
    pub(super) fn sweep_pending(&self) {
        let now = self.now();
        let expired: Vec<Pending> = {
            let mut p = lock(&self.relay().pending);
            let ids: Vec<[u8; 16]> = p
                .iter()
                .filter(|(_, v)| v.deadline <= now)
                .map(|(k, _)| *k)
                .collect();
            ids.iter().filter_map(|k| p.remove(k)).collect()
        };
        lock(&self.relay().wraps).retain(|_, w| w.deadline > now);
        for p in expired {
            // Nothing was stored for it: dropping the state (zeroized) voids it.
            tracing::info!(keys = p.keys.len(), source = %p.source, "voiding a relayed batch never confirmed end to end");
        }
    }

    /// This node's advert of its own links.
    fn own_advert(&self, statuses: &BTreeMap<LinkId, bool>) -> NodeAdvert {
        let unreachable = lock(&self.relay().unreachable).clone();
        let links = self
            .inner
            .links
            .values()
            .map(|l| LinkAdvert {
                link: l.setup.id.clone(),
                peer: l.setup.peer.clone(),
                up: advertised_up(
                    statuses.get(&l.setup.id).copied().unwrap_or(false),
                    !unreachable.contains(&l.setup.peer),
                    self.link_admin(&l.setup.id),
                ),
                available_bytes: l.pool().available_bytes(),
                secret_key_rate_bps: None,
            })
            .collect();
        let mut seq = lock(&self.relay().advert_seq);
        *seq = (*seq + 1).max(self.now());
        NodeAdvert {
            origin: self.inner.cfg.node.clone(),
            seq: *seq,
            links,
        }
    }

    /// Runs forever: advertises links, refills pools, sweeps unconfirmed batches.
    pub(super) async fn relay_loop(&self) {
        let rc = &self.inner.cfg.relay;
        let mut tick = tokio::time::interval(rc.advert_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let mut statuses = BTreeMap::new();
            for l in self.inner.links.values() {
                let up = matches!(
                    l.setup.source.status().await.state,
                    qkd_hardware::LinkState::Up
                );
                statuses.insert(l.setup.id.clone(), up);
            }
            let own = self.own_advert(&statuses);
            let now = self.now();
            let adverts: Vec<pb::NodeAdvertMsg> = {
                let mut topo = lock(&self.relay().topology);
                topo.update(own, now);
                topo.expire(now, (rc.advert_interval.as_millis() as u64) * 20);
                topo.adverts().map(advert_msg).collect()
            };
            for l in self.inner.links.values() {
                let client = l.setup.client.clone();
                let r = pb::AdvertiseRequest {
                    adverts: adverts.clone(),
                };
                let timeout = rc.hop_timeout.max(rc.advert_interval * 3);
                let peer = l.setup.peer.clone();
                let me = self.clone();
                self.spawn(async move {
                    let ok = client.advertise(r, timeout).await.is_ok();
                    let missed = {
                        let mut m = lock(&me.relay().missed);
                        let c = m.entry(peer.clone()).or_default();
                        *c = if ok { 0 } else { *c + 1 };
                        *c
                    };
                    let mut u = lock(&me.relay().unreachable);
                    if missed == 0 {
                        u.remove(&peer);
                    } else if missed >= MISSED_ADVERTS {
                        u.insert(peer);
                    }
                });
            }
            self.sweep_pending();
            self.kick_notices();
            // Refill every pair whose master is here.
            let cfg = &self.inner.cfg;
            for (sae, entry) in &cfg.saes {
                if entry.node != cfg.node {
                    continue;
                }
                for peer in &entry.peers {
                    if !self.is_local(peer) && self.pair_allowed(sae, peer) {
                        self.kick_refill(sae.clone(), peer.clone());
                    }
                }
            }
        }
    }

    /// Sets an operator's choice for one of this node's links; returns the previous one, or
    /// `None` for a link this node does not have. Takes effect with the next advert (within
    /// one advert interval): routes computed after it arrives avoid a drained link.
    pub fn set_link_admin(&self, link: &LinkId, admin: LinkAdmin) -> Option<LinkAdmin> {
        if !self.inner.links.contains_key(link) {
            return None;
        }
        let mut drained = lock(&self.relay().drained);
        let before = if drained.contains(link) {
            LinkAdmin::Drained
        } else {
            LinkAdmin::Enabled
        };
        match admin {
            LinkAdmin::Drained => drained.insert(link.clone()),
            LinkAdmin::Enabled => drained.remove(link),
        };
        Some(before)
    }

    /// Whether a neighbour answers adverts (false after it missed several in a row).
    pub fn neighbour_reachable(&self, node: &NodeId) -> bool {
        !lock(&self.relay().unreachable).contains(node)
    }

    /// An operator's choice for one of this node's links.
    pub fn link_admin(&self, link: &LinkId) -> LinkAdmin {
        if lock(&self.relay().drained).contains(link) {
            LinkAdmin::Drained
        } else {
            LinkAdmin::Enabled
        }
    }

    /// A snapshot of the link-state database, for status pages.
    pub fn topology(&self) -> Topology {
        lock(&self.relay().topology).clone()
    }
}

/// Why a relay or a batch failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// No usable route (links down, or not enough link key on any path).
    #[error("no route with enough link key")]
    NoRoute,
    /// Not enough link key on a hop.
    #[error("not enough link key on a hop")]
    Exhausted,
    /// A call to a neighbour failed or timed out (its status, as the neighbour or the
    /// transport gave it).
    #[error("relay hop to {peer} failed: {status}")]
    Hop {
        /// The neighbour called.
        peer: NodeId,
        /// What came back.
        status: tonic::Status,
    },
    /// The neighbour allocated link key this node cannot take.
    #[error("neighbour allocated unusable link key: {0}")]
    Allocation(PoolError),
    /// A peer sent something malformed.
    #[error("malformed relay message: {0}")]
    Malformed(&'static str),
    /// The end-to-end exchange failed.
    #[error("end-to-end exchange: {0}")]
    E2e(#[from] e2e::E2eError),
    /// Signing a delivery notice failed.
    #[error("signing a delivery notice: {0}")]
    Sign(crate::hybrid::HybridError),
    /// The slaves' pairs differ in policy or suite (the front end refuses such requests first).
    #[error("the slaves' pairs differ in policy or suite")]
    MixedProfiles,
    /// Not supported (yet) in this configuration.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// The store failed.
    #[error("store failure")]
    Store,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Ranges with contiguous neighbours in one block joined, to compare two descriptions of the
/// same bytes. Offsets and lengths come from a peer: a sum that would overflow joins nothing.
pub(crate) fn merged(ranges: &[Range]) -> Vec<Range> {
    let mut out: Vec<Range> = Vec::with_capacity(ranges.len());
    for r in ranges {
        let joined = out
            .last_mut()
            .filter(|l| l.block_seq == r.block_seq && l.offset.checked_add(l.len) == Some(r.offset))
            .and_then(|l| l.len.checked_add(r.len).map(|len| l.len = len));
        if joined.is_none() {
            out.push(*r);
        }
    }
    out
}

/// Splits ranges after `n` bytes.
fn split_ranges(ranges: &[Range], n: u32) -> (Vec<Range>, Vec<Range>) {
    let mut first = Vec::new();
    let mut second = Vec::new();
    let mut left = n;
    for r in ranges {
        if left >= r.len {
            first.push(*r);
            left -= r.len;
        } else if left == 0 {
            second.push(*r);
        } else {
            first.push(Range { len: left, ..*r });
            second.push(Range {
                offset: r.offset + left,
                len: r.len - left,
                ..*r
            });
            left = 0;
        }
    }
    (first, second)
}

/// `a XOR b[..len]` as a plain byte vector (ciphertext; safe to send).
fn xor(a: &Secret, b: &Secret, len: usize) -> Vec<u8> {
    a.expose()
        .iter()
        .zip(&b.expose()[..len])
        .map(|(x, y)| x ^ y)
        .collect()
}

/// The MAC of a hop message: HMAC-SHA-256 over every field but the tag.
fn mac(key: &[u8], req: &pb::RelayRequest) -> Vec<u8> {
    let mut m = req.clone();
    m.tag.clear();
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::sign(&k, &prost::Message::encode_to_vec(&m))
        .as_ref()
        .to_vec()
}

fn verify_mac(key: &[u8], req: &pb::RelayRequest) -> bool {
    let expected = mac(key, req);
    expected.len() == req.tag.len() && bool::from(expected.ct_eq(&req.tag))
}

pub(crate) fn parse_path(p: &[String]) -> Result<Vec<NodeId>, PeerError> {
    if p.len() < 2 || p.len() > 64 {
        return Err(Malformed::Field("path length").into());
    }
    let path: Vec<NodeId> = p
        .iter()
        .map(|n| NodeId::parse(n))
        .collect::<Result<_, _>>()
        .map_err(|error| Malformed::Id {
            what: "node ID in the path",
            error,
        })?;
    let distinct: BTreeSet<&NodeId> = path.iter().collect();
    if distinct.len() != path.len() {
        return Err(Malformed::Field("path repeats a node").into());
    }
    Ok(path)
}

fn advert_msg(a: &NodeAdvert) -> pb::NodeAdvertMsg {
    pb::NodeAdvertMsg {
        origin: a.origin.to_string(),
        seq: a.seq,
        links: a
            .links
            .iter()
            .map(|l| pb::LinkAdvertMsg {
                link_id: l.link.to_string(),
                peer: l.peer.to_string(),
                up: l.up,
                available_bytes: l.available_bytes,
                secret_key_rate_bps: l.secret_key_rate_bps.unwrap_or(-1.0),
            })
            .collect(),
    }
}

pub(crate) fn advert_of(m: &pb::NodeAdvertMsg) -> Result<NodeAdvert, qkd_types::IdError> {
    Ok(NodeAdvert {
        origin: NodeId::parse(&m.origin)?,
        seq: m.seq,
        links: m
            .links
            .iter()
            .map(|l| {
                Ok(LinkAdvert {
                    link: LinkId::parse(&l.link_id)?,
                    peer: NodeId::parse(&l.peer)?,
                    up: l.up,
                    available_bytes: l.available_bytes,
                    secret_key_rate_bps: (l.secret_key_rate_bps >= 0.0)
                        .then_some(l.secret_key_rate_bps),
                })
            })
            .collect::<Result<_, qkd_types::IdError>>()?,
    })
}

/// Seals one multicast key under a wrap key used for nothing else (so a zero nonce is unique).
fn seal_multicast(
    wrap: &Secret,
    id: KeyId,
    relay_id: &[u8; 16],
    key: &Secret,
) -> Result<Vec<u8>, RelayError> {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    // The wrap key is exposed only to key AES-GCM; the multicast key only to be encrypted.
    let k = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, wrap.expose())
            .map_err(|_| RelayError::Malformed("wrap key"))?,
    );
    // The plaintext copy is zeroized whatever happens; once sealed in place it is ciphertext.
    // Room for the tag is reserved first, so appending it never reallocates (which would leave
    // an unzeroized copy of the plaintext behind).
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(key.len() + AES_256_GCM.tag_len()));
    buf.extend_from_slice(key.expose());
    k.seal_in_place_append_tag(
        Nonce::assume_unique_for_key([0; 12]),
        Aad::from(multicast_aad(id, relay_id)),
        &mut *buf,
    )
    .map_err(|_| RelayError::Malformed("seal"))?;
    Ok(std::mem::take(&mut *buf))
}

fn open_multicast(wrap: &Secret, id: KeyId, relay_id: &[u8; 16], sealed: &[u8]) -> Option<Secret> {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, wrap.expose()).ok()?);
    let mut buf = zeroize::Zeroizing::new(sealed.to_vec());
    let plain = k
        .open_in_place(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::from(multicast_aad(id, relay_id)),
            &mut buf,
        )
        .ok()?;
    Some(Secret::copy_from(plain))
}

fn multicast_aad(id: KeyId, relay_id: &[u8; 16]) -> Vec<u8> {
    let mut v = b"QKMS-multicast-v1".to_vec();
    v.extend_from_slice(id.as_bytes());
    v.extend_from_slice(relay_id);
    v
}

/// What a delivery notice's signature covers: `"QKMS-NOTICE-v1" ‖ enc(source KME) ‖
/// u64be(delivered_at) ‖ key IDs`.
fn notice_signed(kme: &KmeId, delivered_at: UnixMillis, ids: &[KeyId]) -> Vec<u8> {
    let mut m = b"QKMS-NOTICE-v1".to_vec();
    crate::hybrid::combiner::enc(&mut m, kme.as_str().as_bytes());
    m.extend_from_slice(&delivered_at.to_be_bytes());
    for id in ids {
        m.extend_from_slice(id.as_bytes());
    }
    m
}

/// Why the store refused relayed keys, as the peer is told.
fn refused(r: ops::KeysRefused) -> Refusal {
    match r {
        ops::KeysRefused::IdUsed(id) => Refusal::KeyIdUsed(id),
        ops::KeysRefused::StreamSlice => Refusal::StreamSlice,
    }
}
