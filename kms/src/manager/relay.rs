//! The shell that runs the relay engine ([`crate::relay`]'s state machines) over the network,
//! the store's writer and timers: trusted-node key relay, the per-pair key pools it fills, and
//! delivery notices. Decisions are the machines'; this module moves their messages, commits
//! their store operations, takes link key for each hop, and owns the tasks.
//!
//! A batch of keys for SAE pair (master at node S, slave at node D) is made like this:
//!
//! 1. S picks a route to D over available link key ([`Topology::route`]) and starts the batch
//!    ([`SourceBatch`]).
//! 2. S draws the batch's relayed keys from its CSPRNG and sends them hop by hop: on every hop the
//!    keys travel XOR a fresh run of link key exactly as long (one-time pad), with an HMAC-SHA-256
//!    tag keyed by 32 further bytes of fresh link key. Each relay checks the tag, decrypts and
//!    re-encrypts for its next hop, and forgets the keys. The first end-to-end message travels
//!    with the keys; D checks it against its own configuration for the pair ([`Destination`]),
//!    keeps its state in memory only (nothing durable yet) and answers (message 2) on the way back.
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

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use backon::Retryable;
use qkd_proto::peer as pb;
use qkd_types::{BlockId, KeyId, KmeId, LinkId, NodeId, SaeId, Secret, UnixMillis};
use rand::RngCore;

use super::{
    DeliveredKey, KeyManager, LinkRt, Malformed, ManagerConfig, PeerError, Refusal, ServiceError,
    block_updates, range_msg, range_of, store_result,
};
use crate::api::Unavailable;
use crate::core::fit::KeyOrigin;
use crate::core::pool::{LinkPool, PoolError, Range};
use crate::events::{Event, Side};
use crate::manager::e2e::{self, E2eKeys, KeyMode};
use crate::peer::wire::{self, advert_msg, advert_of, parse_path};
use crate::relay::adverts::{AdvertRules, Adverts, OwnLink};
use crate::relay::destination::{self, Confirmed, DestRules, Destination, Directory};
use crate::relay::hop::{self, AUTH_LEN, HopAllocations};
use crate::relay::pools::{PoolRules, Pools, Taken};
use crate::relay::source::{self, SourceBatch, StartError};
pub(super) use crate::relay::source::{BatchSpec, StreamRun};
use crate::relay::topology::{LinkAdmin, Topology};
use crate::store::{MadeUnder, PoolKey, StoreError, ops};

/// Most outbox entries a pass over the delivery-notice outbox reads at once: one signed notice
/// per destination, and one store operation to drop them once answered (and one at the
/// destination to apply them). Small enough that none of these operations holds the store
/// writer, and the requests waiting on it, for long. Measured at 64 clients: with 4,096 entries
/// a page, node A's store made 39-55 commits of over 5 ms in 20 s, about one per advert
/// interval; with 512, 6-15.
const NOTICE_PAGE: usize = 512;
/// Most pages one pass reads (passes run every advert interval): 32,768 entries, over 100,000
/// deliveries a second at the default interval.
const NOTICE_PAGES_PER_PASS: usize = 64;

/// Most stale pool keys one store operation of the relay tick discards.
const DISCARD_CHUNK: usize = 1024;

/// Forward kinds.
const FORWARD_CONFIRM: u32 = 1;
const FORWARD_VOID: u32 = 2;
const FORWARD_DELIVER: u32 = 3;
const FORWARD_NOTICE: u32 = 4;
/// Hop allocations kept for neighbours' hops at once.
const MAX_HOP_ALLOCATIONS: usize = 1024;
/// Batches of one pair's pool under way at once.
const MAX_INFLIGHT: usize = 3;

/// Relay and pool settings.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// KME ID of every node of the network (for `target_KME_ID` and end-to-end identities).
    pub kme_ids: std::collections::BTreeMap<NodeId, KmeId>,
    /// Finished keys to keep ready per SAE pair (the pool's capacity, `max_key_count`).
    pub pool_keys: u32,
    /// Keys made per relayed batch (one end-to-end exchange each); by default
    /// [`RelayConfig::batch_keys_for`]`(pool_keys)`.
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

impl RelayConfig {
    /// The default batch for pools of `pool_keys`: a sixteenth of the pool, within 64..=256.
    ///
    /// Each batch pays one end-to-end exchange (two signatures and their verifications, the
    /// KEMs, a round trip and a commit per hop) whatever its size, so large pools want large
    /// batches; at 64 clients on the five-node chain with 96,000-key pools, batches of 256 took
    /// each intermediate node 8-12 µs of CPU per key pair against 16-19 with 64 (BENCHMARKS.md,
    /// "Whole-program optimisation and batches for large pools").
    /// A sixteenth keeps a pool three-quarters full while three batches are under way and a
    /// fourth waits. The bounds: below 64 keys the exchange costs more than the keys; above 256
    /// (8 KB of one-time pad per hop for 256-bit keys) is unmeasured, and a batch needs all of
    /// its link key at once on every hop, which slow links make wait.
    pub fn batch_keys_for(pool_keys: u32) -> u32 {
        (pool_keys / 16).clamp(64, 256)
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            kme_ids: Default::default(),
            pool_keys: 1024,
            batch_keys: Self::batch_keys_for(1024),
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
    /// Link-state adverts and the topology learnt from them (`None` until the first use).
    adverts: Mutex<Option<Adverts>>,
    /// Master side: the pairs' pools of ready keys (`None` until the configuration is known).
    pools: Mutex<Option<Pools>>,
    /// Destination side: batches between their end-to-end messages (`None` until first use).
    destination: Mutex<Option<Destination>>,
    /// Allocator side: hop allocations answered to a neighbour, with the link bytes read when
    /// they were taken (a drained block is erased at once), until the hop's message arrives.
    hop_allocs: Mutex<Option<HopAllocations>>,
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

    /// KME ID of a node.
    pub(super) fn kme_of(&self, node: &NodeId) -> KmeId {
        self.cfg().kme_of(node)
    }

    fn neighbour_link(&self, node: &NodeId) -> Option<&LinkRt> {
        let link = self.cfg().neighbours.get(node)?.link.clone();
        self.inner.links.get(&link)
    }

    /// What keys of a pair are made under now.
    pub(super) fn made_under(&self, master: &SaeId, slave: &SaeId) -> MadeUnder {
        destination::made_under(&*self.cfg(), master, slave)
    }

    /// The nodes the slaves are attached to, each once, in order.
    fn slave_nodes(&self, slaves: &[SaeId]) -> Vec<NodeId> {
        let mut out: Vec<NodeId> = Vec::new();
        for s in slaves {
            if let Some(e) = self.cfg().saes.get(s)
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
    /// what is queued for each destination goes along a route to it in one signed notice (or a
    /// few, [`destination::NOTICE_MAX_KEYS`] keys each) and is dropped once answered, or once
    /// it is too old to matter (the destination's fallback expiry has passed by then).
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
        let cfg = self.cfg();
        let Some(local) = cfg.relay.e2e.local.as_ref() else {
            return Err(RelayError::E2e(e2e::E2eError::NoSigningKey));
        };
        // Notices to one node go in order: after a failure, its later ones wait for the next
        // pass.
        let mut unreachable: BTreeSet<NodeId> = BTreeSet::new();
        // Pages start after this destination: one whose entries fill a page and cannot be sent
        // is read past, so that it does not hold back the destinations after it.
        let mut after: Option<NodeId> = None;
        for _ in 0..NOTICE_PAGES_PER_PASS {
            let queued = self
                .inner
                .writer
                .apply(ops::QueuedNotices {
                    after: after.clone(),
                    limit: NOTICE_PAGE,
                })
                .await
                .map_err(|_| RelayError::Store)?;
            let full_page = queued.len() == NOTICE_PAGE;
            let last_dest = queued.last().map(|q| q.0.clone());
            let stale_before = self
                .now()
                .saturating_sub(cfg.relay.pool_ttl_ms + cfg.key_ttl_ms);
            let (mut done, outgoing) =
                destination::outgoing_notices(queued, &cfg.node, stale_before);
            for notice in outgoing {
                if unreachable.contains(&notice.dest) {
                    continue;
                }
                let path = self.adverts(|a| a.topology().route(&cfg.node, &notice.dest, 0));
                let Some(path) = path else {
                    unreachable.insert(notice.dest);
                    continue;
                };
                let sig = local
                    .signing()
                    .sign(&destination::notice_signed(&cfg.kme, &notice.deliveries))
                    .map_err(RelayError::Sign)?;
                let msg = wire::notice_msg(cfg.kme.as_str(), &notice.deliveries, sig);
                let id = *KeyId::random().as_bytes();
                let encoded = prost::Message::encode_to_vec(&msg);
                match self.forward(&id, &path, 1, FORWARD_NOTICE, encoded).await {
                    Ok(_) => {
                        use std::sync::atomic::Ordering::Relaxed;
                        let keys: usize = notice.deliveries.iter().map(|d| d.key_ids.len()).sum();
                        self.relay().notices.sent.fetch_add(1, Relaxed);
                        self.relay()
                            .notices
                            .keys_sent
                            .fetch_add(keys as u64, Relaxed);
                        done.extend(
                            notice
                                .completes
                                .into_iter()
                                .map(|seq| (notice.dest.clone(), seq)),
                        );
                    }
                    Err(_) => {
                        unreachable.insert(notice.dest);
                    }
                }
            }
            let progress = !done.is_empty();
            if progress {
                self.inner
                    .writer
                    .apply(ops::DropNotices { notices: done })
                    .await
                    .map_err(|_| RelayError::Store)?;
            }
            // A full page may hide more behind it. A page that moved nothing would be read again,
            // unless it ends in a destination that cannot be reached: then read on after it.
            if !full_page {
                break;
            }
            if !progress {
                match last_dest {
                    Some(d) if unreachable.contains(&d) => after = Some(d),
                    _ => break,
                }
            }
        }
        Ok(())
    }

    /// A delivery notice from `source`: keys waiting here whose master is attached there expire
    /// a key TTL after their delivery's stamp (never later than they would have).
    async fn accept_notice(
        &self,
        source: &NodeId,
        msg: &[u8],
    ) -> Result<pb::ForwardReply, PeerError> {
        let msg = wire::notice_of(msg)?;
        // Only the master's own node may say when its master got the key.
        let masters: BTreeSet<SaeId> = self
            .cfg()
            .saes
            .iter()
            .filter(|(_, e)| &e.node == source)
            .map(|(s, _)| s.clone())
            .collect();
        let op = destination::notice(&*self.cfg(), source, &msg, self.cfg().key_ttl_ms, masters)?;
        let keys = op.expiries.len();
        let moved = self.inner.writer.apply(op).await?;
        let mut by_expiry: std::collections::BTreeMap<UnixMillis, Vec<KeyId>> = Default::default();
        for (id, at) in moved {
            by_expiry.entry(at).or_default().push(id);
        }
        for (expires_at, keys) in &by_expiry {
            self.emit(&Event::ExpiryMoved {
                keys,
                expires_at: *expires_at,
            });
        }
        use std::sync::atomic::Ordering::Relaxed;
        self.relay().notices.received.fetch_add(1, Relaxed);
        self.relay()
            .notices
            .keys_received
            .fetch_add(keys as u64, Relaxed);
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
                self.note_voided(super::Voiding::Start, &meta.master, &slave, &why);
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
        let cfg = self.cfg();
        let rc = &cfg.relay;
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

    /// Every pair's pooled keys here, for a reload's assessment.
    pub(super) fn pools_snapshot(&self) -> std::collections::BTreeMap<(SaeId, SaeId), u64> {
        self.pools(|p| p.held())
    }

    /// Puts `live` in force and empties the pools that `misfit` says no longer fit, in one step
    /// under the pools' lock (lock order: pools, then the configuration): the IDs taken out of
    /// each pool, and why.
    pub(super) fn swap_and_drain(
        &self,
        live: super::Live,
        misfit: impl Fn(&(SaeId, SaeId)) -> Option<crate::core::fit::Misfit>,
    ) -> Vec<((SaeId, SaeId), Vec<KeyId>, crate::core::fit::Misfit)> {
        self.pools(|p| {
            *self.inner.live.write().unwrap_or_else(|e| e.into_inner()) = live;
            let affected: Vec<_> = p
                .held()
                .into_keys()
                .filter_map(|pair| misfit(&pair).map(|why| (pair, why)))
                .collect();
            affected
                .into_iter()
                .map(|(pair, why)| {
                    let ids = p.drain(&pair);
                    (pair, ids, why)
                })
                .collect()
        })
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
            self.emit(&Event::PoolKeysExpired { keys: &stale });
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
                let cfg = me.cfg();
                let r = me.refill(&cfg, &master, &slave, refill.keys).await;
                // Under the pools' lock, as a reload swaps the configuration: keys made under a
                // configuration replaced meanwhile are voided, never pooled.
                let late = me.pools(|p| {
                    let made = r.as_ref().ok().map(|ids| (ids.clone(), me.now()));
                    match me.pool_misfit(&cfg, &master, &slave) {
                        Some(why) if made.is_some() => {
                            p.refill_done(&refill, None);
                            made.map(|(ids, _)| (ids, why))
                        }
                        _ => {
                            p.refill_done(&refill, made);
                            None
                        }
                    }
                });
                if let Some((ids, why)) = late {
                    for _ in &ids {
                        me.note_voided(super::Voiding::Reload, &master, &slave, &why);
                    }
                    tracing::info!(%master, %slave, keys = ids.len(), reason = %why, "voided a refill made under the previous configuration");
                    let _ = me.inner.writer.apply(ops::DiscardPoolKeys { ids }).await;
                    return;
                }
                match r {
                    Ok(_) => me.kick_refill(master, slave),
                    Err(e) => {
                        tracing::debug!(%master, %slave, error = %e, "pool refill failed; will retry")
                    }
                }
            });
        }
    }

    /// Why a pool key of the pair made under `made` would not fit the configuration in force.
    fn pool_misfit(
        &self,
        made: &ManagerConfig,
        master: &SaeId,
        slave: &SaeId,
    ) -> Option<crate::core::fit::Misfit> {
        let now = self.cfg();
        if !now.pairs(master, slave) {
            return Some(crate::core::fit::Misfit::Unpaired);
        }
        let made_under = destination::made_under(made, master, slave);
        self.fit().misfit(
            master,
            std::slice::from_ref(slave),
            KeyOrigin {
                made_under: Some(&made_under),
                size_bits: made.limits.key_size,
                pool: true,
            },
        )
    }

    /// Makes `n` keys for the pair's pool under `cfg` and stores them durably: their IDs.
    async fn refill(
        &self,
        cfg: &ManagerConfig,
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
            size_bits: cfg.limits.key_size,
            number: n,
            wrap: false,
            pool: true,
            stream: None,
        };
        let keys = self.run_batch(cfg, &spec).await?.keys;
        let now = self.now();
        let meta = PoolKey {
            master: master.clone(),
            slaves: spec.slaves.clone(),
            size_bits: spec.size_bits,
            created_at: now,
            made_under: Some(destination::made_under(cfg, master, slave)),
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
        // The request is made under one configuration from here to its answer.
        let cfg = self.cfg();
        let mode = cfg.mode(master, &slaves[0]);
        if slaves.iter().any(|s| cfg.mode(master, s) != mode)
            && !crate::events::defects::active().mixed_profiles
        {
            return Err(ServiceError::MixedProfiles);
        }
        // Slaves grouped by the node they are attached to.
        let mut groups: std::collections::BTreeMap<NodeId, Vec<SaeId>> = Default::default();
        for s in &slaves {
            let node = cfg
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
            self.run_batch(&cfg, &spec).await.map_err(map_err)?.keys
        } else {
            self.multicast(&cfg, master, groups, number, size_bits)
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
        cfg: &ManagerConfig,
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
                let batch = self.run_batch(cfg, &spec).await?;
                let mut sealed = Vec::with_capacity(number);
                for ((wrap, id), k) in batch.keys.iter().zip(key_ids).zip(keys) {
                    sealed.push(
                        hop::seal_multicast(&wrap.key, *id, &batch.relay_id, k)
                            .map_err(|_| RelayError::Malformed("seal"))?,
                    );
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
    async fn run_batch(&self, cfg: &ManagerConfig, spec: &BatchSpec) -> Result<Batch, RelayError> {
        self.run_batch_reporting(cfg, spec)
            .await
            .map_err(|f| f.error)
    }

    /// [`Self::run_batch`], saying on failure whether the destination may hold the keys; records
    /// how long the batch took.
    pub(super) async fn run_batch_reporting(
        &self,
        cfg: &ManagerConfig,
        spec: &BatchSpec,
    ) -> Result<Batch, BatchFailure> {
        let started = std::time::Instant::now();
        let r = self.relay_batch(cfg, spec).await;
        self.inner
            .instruments
            .batch(r.is_ok(), started.elapsed(), spec.number);
        r
    }

    /// One batch, made under `cfg` from start to end (a reload meanwhile does not change it).
    async fn relay_batch(
        &self,
        cfg: &ManagerConfig,
        spec: &BatchSpec,
    ) -> Result<Batch, BatchFailure> {
        let early = |error: RelayError| BatchFailure {
            error,
            maybe_committed: false,
        };
        let needs = source::needs(cfg, spec).map_err(|e| {
            early(match e {
                StartError::UnknownSlave => RelayError::NoRoute,
                StartError::SlavesApart => {
                    RelayError::Unsupported("additional slaves at different nodes")
                }
                StartError::MixedProfiles => RelayError::MixedProfiles,
                StartError::StreamRun => RelayError::Malformed("stream run"),
            })
        })?;
        let path = self
            .adverts(|a| a.topology().route(&cfg.node, &needs.dest, needs.link_bytes))
            .ok_or(early(RelayError::NoRoute))?;
        let (mut batch, out) = SourceBatch::start(cfg, spec, path.clone(), &mut rand::rng())
            .map_err(|e| early(e.into()))?;
        let relay_id = batch.relay_id();
        let header = wire::header_msg(&out.offer);
        let hops = (path.len() - 1) as u32;
        let result = async {
            let reply = self
                .send_hop(&header, 1, &out.payload, out.msg1, hops)
                .await?;
            let msg3 = batch.on_answer(cfg, &reply.e2e)?;
            let ack = self
                .forward(&relay_id, &path, 1, FORWARD_CONFIRM, msg3)
                .await?;
            Ok(batch.on_ack(cfg, &ack.e2e)?)
        }
        .await;
        match result {
            Ok(keys) => Ok(Batch {
                keys: keys
                    .into_iter()
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
                    maybe_committed: batch.maybe_committed(),
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
            let (pad_ranges, auth_ranges) = hop::split_ranges(&all, len);
            let ciphertext = hop::encrypt(payload, &bytes);
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
            req.tag = hop::tag(&bytes, len as usize, &wire::hop_authenticated(&req))
                .ok_or(RelayError::Malformed("link key length"))?;
            if self.cfg().relay.tamper_relay {
                // Test fault: the message is altered after it was authenticated, as an attacker
                // on the wire (or a broken relay) would.
                if let Some(b) = req.ciphertext.first_mut() {
                    *b ^= 1;
                }
            }
            let timeout = self.cfg().relay.hop_timeout * hops_left.max(1);
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
        let timeout = self.cfg().relay.hop_timeout;
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
            let timeout = self.cfg().relay.hop_timeout * (path.len() as u32 - hop).max(1);
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
        if hop == 0 || hop >= path.len() || path[hop] != self.cfg().node || &path[hop - 1] != from {
            return Err(Refusal::NotOnPath.into());
        }
        Ok(hop)
    }

    /// `Advertise` from a neighbour: store newer adverts.
    pub fn on_advertise(&self, from: &NodeId, req: pb::AdvertiseRequest) -> Result<(), PeerError> {
        if !self.cfg().neighbours.contains_key(from) {
            return self.reported(from, Err(Refusal::NotNeighbour.into()));
        }
        let now = self.now();
        let adverts = req.adverts.iter().filter_map(|a| advert_of(a).ok());
        self.adverts(|a| a.on_adverts(adverts, now));
        Ok(())
    }

    /// `RelayAllocate` from a neighbour: pick link bytes for its hop to us.
    pub async fn on_relay_allocate(
        &self,
        from: &NodeId,
        req: pb::RelayAllocateRequest,
    ) -> Result<pb::RelayAllocateReply, PeerError> {
        let r = self.relay_allocate_in(from, req).await;
        self.reported(from, r)
    }

    /// `RelayAllocate` from a neighbour: pick link bytes for its hop to us.
    async fn relay_allocate_in(
        &self,
        from: &NodeId,
        req: pb::RelayAllocateRequest,
    ) -> Result<pb::RelayAllocateReply, PeerError> {
        let link = self.peer_link(from, &req.link_id)?;
        if !link.allocator() {
            return Err(Refusal::NotAllocator.into());
        }
        let hop_id = super::request_id(&req.hop_id)?;
        if let Some(ranges) = self.hop_allocs(|h| h.answered(&hop_id)) {
            return Ok(pb::RelayAllocateReply {
                ranges: ranges.iter().map(range_msg).collect(),
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
        self.hop_allocs(|h| h.hold(hop_id, link.setup.id.clone(), all.clone(), bytes));
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
        let r = self.relay_in(from, req).await;
        self.reported(from, r)
    }

    /// `Relay` from a neighbour: check, decrypt, then forward or (at the destination) answer.
    async fn relay_in(
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
            self.hop_allocs(|h| h.claim(&hop_id, &link.setup.id, &all))
                .ok_or(Refusal::UnallocatedHop)?
        } else {
            self.read_back(link, all).await?
        };
        let pad_len = pad_len as usize;
        link.counters
            .add(header.key_ids.len() as u64, pad_len as u64, auth_len);
        if !hop::verify(&bytes, pad_len, &wire::hop_authenticated(&req), &req.tag) {
            tracing::warn!(from = %from, link = %link.setup.id, "relay message failed authentication; dropped");
            return Err(Refusal::Authentication.into());
        }
        let payload = hop::decrypt(&req.ciphertext, &bytes).ok_or(Refusal::Authentication)?;
        drop(bytes);
        if hop + 1 == path.len() {
            return self.accept_batch(&header, &path, &payload, &req.e2e).await;
        }
        let hops_left = (path.len() - 1 - hop) as u32;
        self.send_hop(&header, req.hop + 1, &payload, req.e2e.clone(), hops_left)
            .await
            .map_err(|e| PeerError::Onward(Box::new(e)))
    }

    /// Runs `f` on the hop allocations held for neighbours (made at first use).
    fn hop_allocs<T>(&self, f: impl FnOnce(&mut HopAllocations) -> T) -> T {
        let mut guard = lock(&self.relay().hop_allocs);
        f(guard.get_or_insert_with(|| HopAllocations::new(MAX_HOP_ALLOCATIONS)))
    }

    /// Runs `f` on the destination's batches (made at first use).
    fn destination<T>(&self, f: impl FnOnce(&mut Destination) -> T) -> T {
        let mut guard = lock(&self.relay().destination);
        f(guard.get_or_insert_with(|| {
            let cfg = self.cfg();
            Destination::new(DestRules {
                hop_timeout_ms: cfg.relay.hop_timeout.as_millis() as u64,
                key_ttl_ms: cfg.key_ttl_ms,
                pool_ttl_ms: cfg.relay.pool_ttl_ms,
            })
        }))
    }

    /// The destination's part of a batch ([`Destination::offer`]): message 2, with the exchange
    /// kept in memory until message 3 (nothing durable before).
    async fn accept_batch(
        &self,
        header: &pb::RelayHeader,
        path: &[NodeId],
        payload: &Secret,
        msg1: &[u8],
    ) -> Result<pb::RelayReply, PeerError> {
        let offer = wire::offer_of(header, path)?;
        let now = self.now();
        let msg2 = self.destination(|d| d.offer(&*self.cfg(), now, &offer, payload, msg1))?;
        Ok(pb::RelayReply { e2e: msg2 })
    }

    /// `Forward` from a neighbour: pass on, or (at the destination) confirm or void a batch,
    /// take multicast keys or a delivery notice.
    pub async fn on_forward(
        &self,
        from: &NodeId,
        req: pb::ForwardRequest,
    ) -> Result<pb::ForwardReply, PeerError> {
        let r = self.forward_in(from, req).await;
        self.reported(from, r)
    }

    /// `Forward` from a neighbour: pass on, or (at the destination) confirm or void a batch,
    /// take multicast keys or a delivery notice.
    async fn forward_in(
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
        let source = &path[0];
        let now = self.now();
        let cfg = &*self.cfg();
        let op = match req.kind {
            FORWARD_NOTICE => return self.accept_notice(source, &req.e2e).await,
            FORWARD_DELIVER => {
                let msg = wire::multicast_of(&req.e2e)?;
                let op = self.destination(|d| d.multicast(cfg, now, relay_id, source, &msg))?;
                (op, Vec::new())
            }
            FORWARD_CONFIRM => {
                match self.destination(|d| d.confirm(cfg, now, relay_id, source, &req.e2e))? {
                    Confirmed::Wrapped { ack } => return Ok(pb::ForwardReply { e2e: ack }),
                    Confirmed::Commit { op, ack } => (op, ack),
                }
            }
            _ => {
                self.destination(|d| d.void(relay_id, source))?;
                return Ok(pb::ForwardReply { e2e: Vec::new() });
            }
        };
        // Commit before the ack leaves: once the source has the ack it may hand the keys out.
        let (op, ack) = op;
        self.inner.writer.apply(op).await?.map_err(refused)?;
        Ok(pb::ForwardReply { e2e: ack })
    }

    /// Drops batches whose confirmation never came.
    pub(super) fn sweep_pending(&self) {
        let now = self.now();
        for v in self.destination(|d| d.sweep(now)) {
            // Nothing was stored for it: dropping the state (zeroized) voids it.
            tracing::info!(keys = v.keys, source = %v.source, "voiding a relayed batch never confirmed end to end");
            self.emit(&Event::BatchVoided {
                source: &v.source,
                keys: v.keys,
            });
        }
    }

    /// Runs `f` on the advert state (made at first use).
    fn adverts<T>(&self, f: impl FnOnce(&mut Adverts) -> T) -> T {
        let mut guard = lock(&self.relay().adverts);
        f(guard.get_or_insert_with(|| {
            Adverts::new(
                self.cfg().node.clone(),
                AdvertRules::every(self.cfg().relay.advert_interval.as_millis() as u64),
            )
        }))
    }

    /// Runs forever: advertises links, refills pools, sweeps unconfirmed batches.
    pub(super) async fn relay_loop(&self) {
        let cfg = self.cfg();
        let rc = &cfg.relay;
        let mut tick = tokio::time::interval(rc.advert_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let mut own = Vec::with_capacity(self.inner.links.len());
            for l in self.inner.links.values() {
                let device_up = matches!(
                    l.setup.source.status().await.state,
                    qkd_hardware::LinkState::Up
                );
                own.push(OwnLink {
                    link: l.setup.id.clone(),
                    peer: l.setup.peer.clone(),
                    device_up,
                    available_bytes: l.pool().available_bytes(),
                });
            }
            let now = self.now();
            let adverts: Vec<pb::NodeAdvertMsg> =
                self.adverts(|a| a.tick(now, &own).iter().map(advert_msg).collect());
            for l in self.inner.links.values() {
                let client = l.setup.client.clone();
                let r = pb::AdvertiseRequest {
                    adverts: adverts.clone(),
                };
                let timeout = rc.hop_timeout.max(rc.advert_interval * 3);
                let peer = l.setup.peer.clone();
                let me = self.clone();
                self.spawn(async move {
                    let answered = client.advertise(r, timeout).await.is_ok();
                    if let Some(change) = me.adverts(|a| a.on_sent(&peer, answered)) {
                        tracing::info!(peer = %change.peer, reachable = change.reachable, "neighbour reachability changed");
                        me.emit(&Event::Reachability {
                            peer: &change.peer,
                            reachable: change.reachable,
                        });
                    }
                });
            }
            self.sweep_pending();
            self.kick_notices();
            // Refill every pair whose master is here, once the keys too old to hand out are
            // dropped: they would count toward a pool that no request touches.
            let cfg = self.cfg();
            let now = self.now();
            let mut stale = Vec::new();
            for (sae, entry) in &cfg.saes {
                if entry.node != cfg.node {
                    continue;
                }
                for peer in &entry.peers {
                    if !self.is_local(peer) && self.pair_allowed(sae, peer) {
                        let pair = (sae.clone(), peer.clone());
                        stale.extend(self.pools(|p| p.expire(&pair, now)));
                        self.kick_refill(sae.clone(), peer.clone());
                    }
                }
            }
            if !stale.is_empty() {
                tracing::info!(keys = stale.len(), "pool keys past the pool TTL discarded");
                self.emit(&Event::PoolKeysExpired { keys: &stale });
                let me = self.clone();
                self.spawn(async move {
                    // After a long stop this can be whole pools: in bounded transactions, so
                    // that the requests queued behind the writer do not wait for all of them.
                    for chunk in stale.chunks(DISCARD_CHUNK) {
                        let ids = chunk.to_vec();
                        let _ = me.inner.writer.apply(ops::DiscardPoolKeys { ids }).await;
                    }
                });
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
        Some(self.adverts(|a| a.set_admin(link, admin)))
    }

    /// Whether a neighbour answers adverts (false after it missed several in a row).
    pub fn neighbour_reachable(&self, node: &NodeId) -> bool {
        self.adverts(|a| a.reachable(node))
    }

    /// An operator's choice for one of this node's links.
    pub fn link_admin(&self, link: &LinkId) -> LinkAdmin {
        self.adverts(|a| a.admin(link))
    }

    /// A snapshot of the link-state database, for status pages.
    pub fn topology(&self) -> Topology {
        self.adverts(|a| a.topology().clone())
    }
}

/// The network's configuration as the relay engine reads it.
impl Directory for super::ManagerConfig {
    fn node(&self) -> &NodeId {
        &self.node
    }

    fn kme(&self) -> &KmeId {
        &self.kme
    }

    fn kme_of(&self, node: &NodeId) -> KmeId {
        if node == &self.node {
            return self.kme.clone();
        }
        self.relay
            .kme_ids
            .get(node)
            .cloned()
            .or_else(|| self.neighbours.get(node).map(|n| n.kme.clone()))
            .unwrap_or_else(|| KmeId::parse(node.as_str()).unwrap_or_else(|_| self.kme.clone()))
    }

    fn node_of(&self, sae: &SaeId) -> Option<&NodeId> {
        self.saes.get(sae).map(|e| &e.node)
    }

    fn pair_allowed(&self, a: &SaeId, b: &SaeId) -> bool {
        self.saes.get(a).is_some_and(|e| e.peers.contains(b))
            && self.saes.get(b).is_some_and(|e| e.peers.contains(a))
    }

    fn mode(&self, a: &SaeId, b: &SaeId) -> KeyMode {
        let key = if a <= b {
            (a.clone(), b.clone())
        } else {
            (b.clone(), a.clone())
        };
        self.relay
            .pairs
            .get(&key)
            .cloned()
            .unwrap_or(self.relay.default_mode)
    }

    fn limits(&self) -> crate::api::KeyLimits {
        self.limits
    }

    fn e2e(&self) -> &E2eKeys {
        &self.relay.e2e
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

pub(super) fn read<T>(m: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

/// Why the store refused relayed keys, as the peer is told.
fn refused(r: ops::KeysRefused) -> Refusal {
    match r {
        ops::KeysRefused::IdUsed(id) => Refusal::KeyIdUsed(id),
        ops::KeysRefused::StreamSlice => Refusal::StreamSlice,
    }
}
