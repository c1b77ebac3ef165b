//! The key manager of one node: the shell around the link pools, the relay and the store.
//!
//! It serves three masters:
//! * SAEs, through [`KeyService`] (the front ends in [`crate::api`] call it);
//! * the peer nodes, through the gRPC service in [`crate::peer`];
//! * the QKD devices, through the ingest loop of each link whose device master end is here.
//!
//! What it sequences (docs/design.md has the protocol and its invariants):
//!
//! * **Link key.** At a link's allocator (the device's master end) the ingest loop pulls blocks,
//!   refuses any device key ID already used on the link, stores them *pending*, offers them to
//!   the peer (which fetches the same blocks from its end by ID and stores them) and then marks
//!   them available. The sans-IO [`LinkPool`] decides which bytes back which use; only the
//!   allocator chooses, the other end checks.
//! * **Keys for SAEs.** Every delivered key comes from a relayed batch, decided by the relay
//!   engine's sans-IO machines ([`crate::relay`]) and run by this module's `relay`: hop-by-hop
//!   one-time pad over link key to the slave's node, end-to-end exchange (hybrid, or a signed
//!   description for `qkd-only` pairs), the destination commits before the source keeps the keys.
//!   Default-size keys wait in per-pair pools at the master's node; other sizes and multicast are
//!   made on demand. `enc_keys` takes keys from a pool, writes tombstones and queues a delivery
//!   notice in one durable commit before answering; `dec_keys` at the slave's node checks and
//!   consumes in one commit.
//! * **Configuration.** A key that no longer fits its pair's size, policy or suite is erased at
//!   start and never served ([`crate::core::fit`]).
//!
//! Any failure before a batch's keys are committed at both ends voids the batch; link key used on
//! the way is never used again. A store commit error stops the node, which recovers from disk.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use qkd_hardware::{KeySource, LinkRole};
use qkd_proto::peer as pb;
use qkd_types::{BlockId, Clock, KeyId, KmeId, LinkId, NodeId, SaeId};

use crate::api::{
    DecKeysRequest, DeliveredKey, EncKeysRequest, KeyLimits, KeyProfile, KeyService, PairStatus,
    ServiceError,
};
use crate::core::fetch::FetchRefusal;
use crate::core::pool::{BlockMeta, BlockState, LinkPool, PoolError, Range};
use crate::store::{Recovered, StoreError, Tables, ops};
use crate::writer::Writer;

/// An SAE of the network, as every node's registry knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaeEntry {
    /// The node (KME) it is attached to.
    pub node: NodeId,
    /// SAEs it may share keys with, in either role.
    pub peers: BTreeSet<SaeId>,
}

/// A neighbour node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighbourEntry {
    /// Its KME ID (reported as `target_KME_ID`).
    pub kme: KmeId,
    /// The link to it.
    pub link: LinkId,
}

/// Static configuration of the key manager (the node builds it from its TOML file).
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// This node.
    pub node: NodeId,
    /// This node's KME ID.
    pub kme: KmeId,
    /// Every SAE of the network.
    pub saes: BTreeMap<SaeId, SaeEntry>,
    /// Neighbour nodes.
    pub neighbours: BTreeMap<NodeId, NeighbourEntry>,
    /// Key size and count limits for every pair.
    pub limits: KeyLimits,
    /// How long a key waits for its slave after the master got it.
    pub key_ttl_ms: u64,
    /// How long to wait for a peer's answer.
    pub peer_timeout: Duration,
    /// How long tombstones are kept (they guard against key-ID reuse).
    pub tombstone_retention_ms: u64,
    /// Relay, pools and end-to-end protection.
    pub relay: RelayConfig,
}

impl ManagerConfig {
    /// Whether `a` and `b` may share keys (each lists the other as a peer).
    pub fn pairs(&self, a: &SaeId, b: &SaeId) -> bool {
        self.saes.get(a).is_some_and(|e| e.peers.contains(b))
            && self.saes.get(b).is_some_and(|e| e.peers.contains(a))
    }
}

/// One link as the manager runs it.
#[derive(Debug)]
pub struct LinkSetup {
    /// The link.
    pub id: LinkId,
    /// The node at the other end.
    pub peer: NodeId,
    /// This end's key source.
    pub source: Arc<dyn KeySource>,
    /// Most unallocated link key held at once, in bytes.
    pub capacity_bytes: u64,
    /// The neighbour's peer service (gRPC with a lazy connection, or the simulated network).
    pub client: Arc<dyn crate::peer::PeerLink>,
}

#[derive(Debug)]
struct LinkRt {
    setup: LinkSetup,
    pool: Mutex<LinkPool>,
    /// Non-allocator: release points announced by the allocator, applied only once old enough
    /// that no relay hop naming those blocks can still be in flight.
    releases: Mutex<std::collections::VecDeque<(u64, qkd_types::UnixMillis)>>,
    /// Relay traffic over this link since start, both directions.
    counters: RelayCounters,
}

/// Relay traffic over one link since the node started (both directions).
#[derive(Debug, Default)]
struct RelayCounters {
    messages: std::sync::atomic::AtomicU64,
    keys: std::sync::atomic::AtomicU64,
    pad_bytes: std::sync::atomic::AtomicU64,
    auth_bytes: std::sync::atomic::AtomicU64,
    /// Device key IDs refused because they were already used on the link.
    reissued: std::sync::atomic::AtomicU64,
    /// Bytes of link key taken from this end's device and stored.
    generated: std::sync::atomic::AtomicU64,
}

impl RelayCounters {
    fn add(&self, keys: u64, pad: u64, auth: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.messages.fetch_add(1, Relaxed);
        self.keys.fetch_add(keys, Relaxed);
        self.pad_bytes.fetch_add(pad, Relaxed);
        self.auth_bytes.fetch_add(auth, Relaxed);
    }
}

impl LinkRt {
    fn allocator(&self) -> bool {
        self.setup.source.info().role == LinkRole::Master
    }

    fn pool(&self) -> MutexGuard<'_, LinkPool> {
        // A poisoned pool means a panic while holding it; the pool itself is still consistent
        // because every mutation is all-or-nothing, so keep serving.
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The key manager. Cheap to clone.
#[derive(Debug, Clone)]
pub struct KeyManager {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The configuration in force, replaced whole by [`KeyManager::reconfigure`].
    live: std::sync::RwLock<Live>,
    /// Reconfigurations one at a time.
    reconfiguring: tokio::sync::Mutex<()>,
    clock: Arc<dyn Clock>,
    writer: Writer,
    links: BTreeMap<LinkId, LinkRt>,
    relay: relay::RelayState,
    /// Pool keys found at start that no longer fit their pair's configuration, to be erased by
    /// [`KeyManager::void_stale_keys`] (never served meanwhile: they are not in the pools).
    stale_pool: Mutex<Vec<KeyId>>,
    /// Keys voided at start because the configuration changed, per pair and reason.
    voided: Mutex<BTreeMap<(Voiding, SaeId, SaeId, String), u64>>,
    /// Every task this manager spawned and that may still run; [`KeyManager::halt`] aborts them.
    tasks: Mutex<tokio::task::JoinSet<()>>,
    /// Who hears this node's events (see [`KeyManager::observe`]).
    observer: std::sync::OnceLock<Arc<dyn crate::events::Observer>>,
    /// Relay latency and keys made (metric handles, registered once).
    instruments: crate::instruments::RelayInstruments,
    /// The pumps of the key streams whose master end is here.
    streams: streams::StreamsRt,
}

/// The configuration in force and what follows from it. Readers take a snapshot (two `Arc`s)
/// per request, so a request runs under one configuration from start to end.
#[derive(Debug)]
struct Live {
    cfg: Arc<ManagerConfig>,
    /// The configuration stored keys are held against (from `cfg`; shared with the store
    /// operations that serve keys).
    fit: Arc<crate::core::fit::FitContext>,
}

/// When keys were voided because their pair's configuration changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Voiding {
    /// At start: the configuration changed while the node was down.
    Start,
    /// By a reload while the node ran.
    Reload,
}

/// Keys of one pair voided because they no longer fit its configuration (at start or by a reload).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VoidedKeys {
    /// Master SAE of the pair.
    pub master: SaeId,
    /// Slave SAE of the pair.
    pub slave: SaeId,
    /// How many keys.
    pub keys: u64,
    /// Why, e.g. "pool key of 256 bits, default key size now 512".
    pub reason: String,
}

/// Peer errors that are worth a gRPC status; mapped to `tonic::Status` in [`crate::peer`] only.
/// Each variant says who causes it.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Peer: asked about a link this node does not have with it.
    #[error("no link {0} with the calling node")]
    UnknownLink(LinkId),
    /// Peer: a malformed message (bad ID, wrong sizes...).
    #[error("malformed message: {0}")]
    Malformed(#[from] Malformed),
    /// Peer: the message contradicts what this node holds or its configuration.
    #[error("refused: {0}")]
    Refused(#[from] Refusal),
    /// Peer: the request was voided earlier; it will never be served.
    #[error("request was voided")]
    Voided,
    /// This node: not enough link key.
    #[error("not enough link key")]
    Exhausted,
    /// This node's device failed or gave key it may not use.
    #[error("device: {0}")]
    Device(#[from] DeviceFault),
    /// A further hop of a relay failed (this node is a relay on the path).
    #[error("onward hop: {0}")]
    Onward(Box<RelayError>),
    /// Operator: the store's free space is below its watermark; no new key material is taken
    /// (stored keys are still served). Transient: ingest resumes once space is freed.
    #[error("key store below its free-space watermark: {0}")]
    LowSpace(StoreError),
    /// This node's store failed (the node is going down).
    #[error("store: {0}")]
    Store(StoreError),
}

/// What is malformed in a peer's message. Caused by the peer (a bug or an attack).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// An identifier that is not 16 bytes long.
    #[error("{0} is not 16 bytes long")]
    IdLength(&'static str),
    /// An identifier that does not parse.
    #[error("{what}: {error}")]
    Id {
        /// Which identifier.
        what: &'static str,
        /// Why it does not parse.
        error: qkd_types::IdError,
    },
    /// A field missing, out of range or inconsistent with the others.
    #[error("bad {0}")]
    Field(&'static str),
}

/// Why a peer's (well-formed) message was refused. Caused by the peer, or by configurations
/// that disagree between the two nodes.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Only the allocator of a link chooses its bytes; the caller is it.
    #[error("this node allocates the link")]
    AllocatesLink,
    /// The caller asked this node to allocate a link it does not allocate.
    #[error("this node does not allocate the link")]
    NotAllocator,
    /// The caller is not a neighbour.
    #[error("not a neighbour")]
    NotNeighbour,
    /// An offered block contradicts the block held under its sequence number.
    #[error("block {0} differs")]
    BlockDiffers(u64),
    /// An offer that does not continue the link where this end is.
    #[error("offer starts at {first}, expected {expected}")]
    OfferOutOfSequence {
        /// First sequence number offered.
        first: u64,
        /// The one expected.
        expected: u64,
    },
    /// The link's pool refused (ranges not free, out of sequence...).
    #[error("link key: {0}")]
    Pool(#[from] PoolError),
    /// A key ID already used here.
    #[error("key ID {0} already used")]
    KeyIdUsed(KeyId),
    /// The relay path does not run through this node as the message says.
    #[error("relay path does not run through this hop")]
    NotOnPath,
    /// A relay message names link key not allocated for its hop.
    #[error("relay names link key not allocated for this hop")]
    UnallocatedHop,
    /// The hop's allocation is gone (answered twice, or expired).
    #[error("hop allocation vanished")]
    AllocationVanished,
    /// A relay message failed its MAC: altered on the way, or sent with other link key.
    #[error("relay message authentication failed")]
    Authentication,
    /// The master SAE is not attached to the batch's source node.
    #[error("master SAE is not attached to the source node")]
    MasterNotAtSource,
    /// Slave SAEs not attached here, or not allowed to pair with the master.
    #[error("slave SAEs not attached here or not allowed to pair")]
    SlavesNotHere,
    /// The batch's policy or suite is not this node's configuration for its pairs.
    #[error("policy or suite differs from this node's configuration")]
    Profile,
    /// An end-to-end message from a node other than the batch's source.
    #[error("not the batch's source")]
    NotSource,
    /// The batch's key counts disagree.
    #[error("key count differs")]
    KeyCount,
    /// A multicast key failed authentication under its wrap key.
    #[error("multicast key failed authentication")]
    MulticastAuthentication,
    /// A delivery notice naming a source other than the path's first node.
    #[error("delivery notice from another node")]
    NoticeSource,
    /// The end-to-end exchange failed.
    #[error("end-to-end: {0}")]
    E2e(#[from] e2e::E2eError),
    /// A signature (delivery notice) failed.
    #[error("signature: {0}")]
    Signature(#[from] crate::hybrid::HybridError),
    /// A batch reserving key-stream indices whose key IDs are not the stream's, or a stream this
    /// node holds for another pair.
    #[error("key stream slice does not match the stream")]
    StreamSlice,
}

impl Refusal {
    /// The refusal's cause by name, one of a fixed set (for metrics and audit).
    pub fn cause(&self) -> &'static str {
        match self {
            Refusal::AllocatesLink => "allocates_link",
            Refusal::NotAllocator => "not_allocator",
            Refusal::NotNeighbour => "not_neighbour",
            Refusal::BlockDiffers(_) => "block_differs",
            Refusal::OfferOutOfSequence { .. } => "offer_out_of_sequence",
            Refusal::Pool(_) => "link_key",
            Refusal::KeyIdUsed(_) => "key_id_used",
            Refusal::NotOnPath => "not_on_path",
            Refusal::UnallocatedHop => "unallocated_hop",
            Refusal::AllocationVanished => "allocation_vanished",
            Refusal::Authentication => "hop_authentication",
            Refusal::MasterNotAtSource => "master_not_at_source",
            Refusal::SlavesNotHere => "slaves_not_here",
            Refusal::Profile => "profile",
            Refusal::NotSource => "not_source",
            Refusal::KeyCount => "key_count",
            Refusal::MulticastAuthentication => "multicast_authentication",
            Refusal::NoticeSource => "notice_source",
            Refusal::E2e(_) => "end_to_end",
            Refusal::Signature(_) => "signature",
            Refusal::StreamSlice => "stream_slice",
        }
    }

    /// Whether the refusal means a message was altered or forged on its way: a hop's MAC, a
    /// multicast key's seal, the end-to-end exchange or a signature failed, or a node spoke for
    /// a batch or notice it did not start. An end-to-end refusal caused by this node's own
    /// configuration (no signing key, no key pinned for the peer) is not: it pages no one for an
    /// attack that is a missing file.
    pub fn tampering(&self) -> bool {
        match self {
            Refusal::E2e(e2e::E2eError::NoSigningKey | e2e::E2eError::NotPinned(_)) => false,
            Refusal::Authentication
            | Refusal::MulticastAuthentication
            | Refusal::E2e(_)
            | Refusal::Signature(_)
            | Refusal::NotSource
            | Refusal::NoticeSource => true,
            _ => false,
        }
    }
}

/// A device that failed, or gave key the node may not use. Caused by the device (or, for
/// [`DeviceFault::PeerOffer`], by the peer's device).
#[derive(Debug, thiserror::Error)]
pub enum DeviceFault {
    /// The device's own error.
    #[error(transparent)]
    Device(#[from] qkd_hardware::DeviceError),
    /// A block larger than a link block may be.
    #[error("block of {0} bytes is too large")]
    BlockTooLarge(usize),
    /// The device answered with another block than the one asked for.
    #[error("device returned block {got} when asked for {asked}")]
    WrongBlock {
        /// Asked for.
        asked: BlockId,
        /// Returned.
        got: BlockId,
    },
    /// A device key ID already used on the link (a re-issuing device).
    #[error("device key ID {0} was already used on this link")]
    Reissued(BlockId),
    /// The peer could not take the offered blocks from its device.
    #[error("peer could not take the offered blocks: {0}")]
    PeerOffer(tonic::Status),
}

impl From<StoreError> for PeerError {
    fn from(e: StoreError) -> Self {
        match e {
            e @ StoreError::LowSpace { .. } => PeerError::LowSpace(e),
            e => PeerError::Store(e),
        }
    }
}

impl Live {
    fn new(cfg: ManagerConfig) -> Self {
        let fit = Arc::new(fit_context(&cfg));
        Self {
            cfg: Arc::new(cfg),
            fit,
        }
    }
}

/// The configuration stored keys are held against, from the manager's configuration.
fn fit_context(cfg: &ManagerConfig) -> crate::core::fit::FitContext {
    crate::core::fit::FitContext::new(
        cfg.relay
            .pairs
            .iter()
            .map(|(pair, mode)| (pair.clone(), mode.profile())),
        cfg.relay.default_mode.profile(),
        cfg.limits,
    )
}

impl KeyManager {
    /// Builds the manager from its configuration, its links and what the store recovered.
    pub fn new(
        cfg: ManagerConfig,
        clock: Arc<dyn Clock>,
        writer: Writer,
        links: Vec<LinkSetup>,
        mut recovered: Recovered,
    ) -> Self {
        let mut map = BTreeMap::new();
        for setup in links {
            let allocator = setup.source.info().role == LinkRole::Master;
            let (next_seq, blocks) = recovered.links.remove(&setup.id).unwrap_or_default();
            let mut pool = LinkPool::restore(allocator, setup.capacity_bytes, next_seq, blocks);
            pool.remember_device_ids(recovered.device_ids.remove(&setup.id).unwrap_or_default());
            map.insert(
                setup.id.clone(),
                LinkRt {
                    setup,
                    pool: Mutex::new(pool),
                    releases: Mutex::default(),
                    counters: RelayCounters::default(),
                },
            );
        }
        let me = Self {
            inner: Arc::new(Inner {
                live: std::sync::RwLock::new(Live::new(cfg)),
                reconfiguring: Default::default(),
                clock,
                writer,
                links: map,
                relay: Default::default(),
                stale_pool: Mutex::default(),
                voided: Mutex::default(),
                tasks: Mutex::default(),
                observer: std::sync::OnceLock::new(),
                instruments: crate::instruments::RelayInstruments::register(),
                streams: Default::default(),
            }),
        };
        me.restore_pools(std::mem::take(&mut recovered.pool));
        me
    }

    /// Runs `task` in the background as part of this manager: [`KeyManager::halt`] aborts it.
    /// Must be called inside a tokio runtime.
    pub fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = relay::lock(&self.inner.tasks);
        // Reap finished tasks so the set holds only live ones.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    /// Aborts every background task of this manager at its next await point, the way a crash
    /// stops a process: nothing in flight completes, what is durable stays. The manager must not
    /// be used afterwards. The network simulation crashes nodes with it.
    pub fn halt(&self) {
        relay::lock(&self.inner.tasks).abort_all();
    }

    /// Subscribes `observer` to this node's events (one subscriber; later calls are ignored).
    pub fn observe(&self, observer: Arc<dyn crate::events::Observer>) {
        let _ = self.inner.observer.set(observer);
    }

    fn emit(&self, event: &crate::events::Event<'_>) {
        if let Some(o) = self.inner.observer.get() {
            o.event(event);
        }
    }

    /// Reports a neighbour's refused message as an event, and passes the result on.
    fn reported<T>(&self, from: &NodeId, r: Result<T, PeerError>) -> Result<T, PeerError> {
        if let Err(PeerError::Refused(why)) = &r {
            self.emit(&crate::events::Event::PeerRefused {
                from,
                cause: why.cause(),
                tampering: why.tampering(),
            });
        }
        r
    }

    /// The configuration in force (a snapshot: [`KeyManager::reconfigure`] may replace it).
    pub fn config(&self) -> Arc<ManagerConfig> {
        self.cfg()
    }

    /// The configuration in force.
    fn cfg(&self) -> Arc<ManagerConfig> {
        relay::read(&self.inner.live).cfg.clone()
    }

    /// The configuration stored keys are held against now.
    fn fit(&self) -> Arc<crate::core::fit::FitContext> {
        relay::read(&self.inner.live).fit.clone()
    }

    /// Erases, before the node serves anything, every stored key that no longer fits its pair's
    /// configuration (a changed key size, policy or suite): the pool keys left out at restore,
    /// and the keys waiting here for their slaves. Each leaves a tombstone, so its ID stays
    /// used. They are logged and listed in [`KeyManager::voided_at_start`]. `dec_keys` checks
    /// the same rule on every key it serves, so nothing stale is served even before this ran.
    pub async fn void_stale_keys(&self) -> Result<(), StoreError> {
        const BATCH: usize = 1024;
        let stale: Vec<KeyId> = std::mem::take(&mut *relay::lock(&self.inner.stale_pool));
        for chunk in stale.chunks(BATCH) {
            self.inner
                .writer
                .apply(ops::DiscardPoolKeys {
                    ids: chunk.to_vec(),
                })
                .await?;
        }
        let mut after = None;
        loop {
            let page = self
                .inner
                .writer
                .apply(ops::KeysAfter {
                    after,
                    limit: BATCH,
                })
                .await?;
            let Some(last) = page.last().map(|(id, _)| *id) else {
                break;
            };
            after = Some(last);
            let mut void = Vec::new();
            for (id, meta) in page {
                let slaves: Vec<SaeId> = meta.slaves.iter().map(|(s, _)| s.clone()).collect();
                let origin = crate::core::fit::KeyOrigin {
                    made_under: meta.made_under.as_ref(),
                    size_bits: meta.size_bits,
                    pool: meta.pool,
                };
                if let Some(why) = self.misfit(&meta.master, &slaves, origin) {
                    let slave = slaves.first().cloned().unwrap_or(meta.master.clone());
                    self.note_voided(Voiding::Start, &meta.master, &slave, &why);
                    void.push((id, meta));
                }
            }
            if !void.is_empty() {
                let now = self.inner.clock.now();
                self.inner
                    .writer
                    .apply(ops::RetireKeys { keys: void, now })
                    .await?;
            }
        }
        for v in self.voided_at_start() {
            tracing::warn!(
                master = %v.master,
                slave = %v.slave,
                keys = v.keys,
                reason = %v.reason,
                "voided stored keys made under an earlier configuration"
            );
        }
        Ok(())
    }

    /// Keys voided at start because the configuration changed (for `/status`).
    pub fn voided_at_start(&self) -> Vec<VoidedKeys> {
        self.voided(Voiding::Start)
    }

    /// Keys voided since start by reloads that changed their pair's configuration (for
    /// `/status`).
    pub fn voided_by_reload(&self) -> Vec<VoidedKeys> {
        self.voided(Voiding::Reload)
    }

    fn voided(&self, when: Voiding) -> Vec<VoidedKeys> {
        relay::lock(&self.inner.voided)
            .iter()
            .filter(|((w, ..), _)| *w == when)
            .map(|((_, master, slave, reason), keys)| VoidedKeys {
                master: master.clone(),
                slave: slave.clone(),
                keys: *keys,
                reason: reason.clone(),
            })
            .collect()
    }

    fn note_voided(
        &self,
        when: Voiding,
        master: &SaeId,
        slave: &SaeId,
        why: &crate::core::fit::Misfit,
    ) {
        *relay::lock(&self.inner.voided)
            .entry((when, master.clone(), slave.clone(), why.to_string()))
            .or_default() += 1;
    }

    /// Why a key of `master` for `slaves` may no longer be served, if it may not.
    fn misfit(
        &self,
        master: &SaeId,
        slaves: &[SaeId],
        origin: crate::core::fit::KeyOrigin<'_>,
    ) -> Option<crate::core::fit::Misfit> {
        self.fit().misfit(master, slaves, origin)
    }

    /// The store's free space and watermark (for operators' metrics and alarms).
    pub fn store_space(&self) -> &crate::store::SpaceGauge {
        self.inner.writer.space()
    }

    /// Resolves when the store failed and the node must exit.
    pub async fn fatal(&self) {
        self.inner.writer.fatal().await
    }

    /// Per-link status for operators: (link, peer, role, simulated, available bytes, capacity).
    pub fn link_levels(&self) -> Vec<LinkLevel> {
        let mut v: Vec<LinkLevel> = self
            .inner
            .links
            .values()
            .map(|l| {
                let info = l.setup.source.info();
                let pool = l.pool();
                LinkLevel {
                    link: l.setup.id.clone(),
                    peer: l.setup.peer.clone(),
                    role: info.role,
                    simulated: info.simulated,
                    source_kind: info.kind,
                    available_bytes: pool.available_bytes(),
                    stored_bytes: pool.stored_bytes(),
                    capacity_bytes: pool.capacity_bytes(),
                    relay_messages: l
                        .counters
                        .messages
                        .load(std::sync::atomic::Ordering::Relaxed),
                    relay_keys: l.counters.keys.load(std::sync::atomic::Ordering::Relaxed),
                    relay_pad_bytes: l
                        .counters
                        .pad_bytes
                        .load(std::sync::atomic::Ordering::Relaxed),
                    relay_auth_bytes: l
                        .counters
                        .auth_bytes
                        .load(std::sync::atomic::Ordering::Relaxed),
                    device_reissued_ids: l
                        .counters
                        .reissued
                        .load(std::sync::atomic::Ordering::Relaxed),
                    generated_bytes: l
                        .counters
                        .generated
                        .load(std::sync::atomic::Ordering::Relaxed),
                    admin: self.link_admin(&l.setup.id),
                }
            })
            .collect();
        v.sort_by(|a, b| a.link.cmp(&b.link));
        v
    }

    /// The blocks of a link this node holds, by link sequence number with their device key
    /// IDs (both ends of a link must agree on them).
    pub fn link_blocks(&self, link: &LinkId) -> Vec<(u64, BlockId)> {
        self.inner.links.get(link).map_or_else(Vec::new, |l| {
            l.pool().blocks().map(|(seq, b)| (seq, b.id)).collect()
        })
    }

    /// Reads the store in a transaction that is never committed, when the writer is inline
    /// ([`Writer::inline`]); `None` otherwise. For the network simulation's invariant checks.
    pub fn inspect_store<T>(&self, read: impl FnOnce(&mut dyn Tables) -> T) -> Option<T> {
        self.inner.writer.inspect(read)
    }

    /// The key source of a link, for status pages.
    pub fn source(&self, link: &LinkId) -> Option<Arc<dyn KeySource>> {
        self.inner.links.get(link).map(|l| l.setup.source.clone())
    }

    /// Runs forever: pulls blocks from the devices of the links this node allocates and offers
    /// them to the peers. Also expires keys. Cancel by dropping the future.
    pub async fn run_background(&self, poll: Duration) {
        for link in self.inner.links.values() {
            if link.allocator() {
                let me = self.clone();
                let id = link.setup.id.clone();
                self.spawn(async move { me.ingest_loop(id, poll).await });
            }
        }
        let me = self.clone();
        self.spawn(async move { me.expiry_loop().await });
        let me = self.clone();
        self.spawn(async move { me.relay_loop().await });
        let me = self.clone();
        self.spawn(async move { me.resume_streams().await });
        // Abort every task of the manager when this future is dropped.
        struct Halt<'a>(&'a KeyManager);
        impl Drop for Halt<'_> {
            fn drop(&mut self) {
                self.0.halt();
            }
        }
        let _guard = Halt(self);
        futures::future::pending::<()>().await;
    }

    async fn expiry_loop(&self) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let now = self.inner.clock.now();
            let retention = self.cfg().tombstone_retention_ms;
            let r = self
                .inner
                .writer
                .apply(ops::Expire {
                    now,
                    prune_before: now.saturating_sub(retention),
                    limit: 1024,
                })
                .await;
            match r {
                Ok(n) if n > 0 => tracing::info!(count = n, "erased expired keys"),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "expiry failed");
                    return;
                }
            }
        }
    }

    /// One pass of the ingest loop of an allocated link: returns the number of new blocks.
    pub async fn ingest_once(&self, link_id: &LinkId) -> Result<usize, PeerError> {
        let link = self.link(link_id)?;
        // Blocks a crash left pending are offered again first.
        let pending: Vec<(u64, BlockId)> = link
            .pool()
            .blocks()
            .filter(|(_, b)| b.state == BlockState::Pending)
            .map(|(s, b)| (s, b.id))
            .collect();
        if !pending.is_empty() {
            self.offer(link, &pending).await?;
            return Ok(0);
        }
        // Below the store's watermark, take no key from the device: it would be refused.
        self.inner.writer.space().admit_ingest()?;
        let (room, next_seq, block_len) = {
            let p = link.pool();
            (
                p.room_bytes(),
                p.next_seq(),
                p.blocks().last().map(|(_, b)| u64::from(b.len)),
            )
        };
        // Never hold more than the capacity: ask only for blocks that fit (one block to learn
        // the device's block size if the pool is empty), at most 64 per pass.
        let want = match block_len {
            Some(len) => (room / len.max(1)).min(64),
            None => u64::from(room > 0),
        };
        if want == 0 {
            return Ok(0);
        }
        let blocks = link
            .setup
            .source
            .next_blocks(want as usize)
            .await
            .map_err(DeviceFault::Device)?;
        if blocks.is_empty() {
            return Ok(0);
        }
        // A crash here leaves keys the device handed out that this node never recorded: the
        // peer is never told their IDs, so neither end uses them.
        failpoint!("master-after-enc-keys");
        let mut added = Vec::with_capacity(blocks.len());
        let mut kept = Vec::with_capacity(blocks.len());
        let mut reissued = 0u64;
        {
            let mut p = link.pool();
            debug_assert_eq!(p.next_seq(), next_seq);
            for b in blocks {
                let seq = p.next_seq();
                let len = u32::try_from(b.key.len())
                    .map_err(|_| DeviceFault::BlockTooLarge(b.key.len()))?;
                match p.add_block(seq, b.id, len) {
                    Ok(()) => {
                        added.push((seq, b.id));
                        kept.push(b);
                    }
                    // Dropping the block zeroizes it: its bytes are never used.
                    Err(PoolError::Reissued(_)) => reissued += 1,
                    Err(e) => return Err(Refusal::Pool(e).into()),
                }
            }
        }
        if reissued > 0 {
            link.counters
                .reissued
                .fetch_add(reissued, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(
                link = %link_id,
                count = reissued,
                "the QKD device re-issued key IDs already used on this link; refused them \
                 (a device fault: check the device)"
            );
        }
        let blocks = kept;
        let lid = link_id.clone();
        let metas: Vec<(u64, BlockMeta)> = {
            let p = link.pool();
            added
                .iter()
                .filter_map(|(s, _)| p.block(*s).map(|m| (*s, m.clone())))
                .collect()
        };
        let bytes: usize = blocks.iter().map(|b| b.key.len()).sum();
        self.store_blocks(lid, metas, blocks).await?;
        link.counters
            .generated
            .fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
        // A crash here leaves the blocks pending: they are offered again after the restart.
        failpoint!("master-after-store");
        let n = added.len();
        self.offer(link, &added).await?;
        Ok(n)
    }

    async fn offer(&self, link: &LinkRt, blocks: &[(u64, BlockId)]) -> Result<(), PeerError> {
        let Some(first) = blocks.first().map(|b| b.0) else {
            return Ok(());
        };
        let release_before = link.pool().low_water();
        let req = pb::OfferBlocksRequest {
            link_id: link.setup.id.to_string(),
            first_seq: first,
            block_ids: blocks
                .iter()
                .map(|(_, id)| id.as_bytes().to_vec())
                .collect(),
            release_before,
        };
        let timeout = self.cfg().peer_timeout * 4;
        match link.setup.client.offer_blocks(req, timeout).await {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                // The peer's device cannot deliver these blocks: they are useless, retire them.
                tracing::warn!(link = %link.setup.id, status = %s.message(), "peer refused blocks; discarding them");
                let seqs: Vec<u64> = blocks.iter().map(|b| b.0).collect();
                self.discard_blocks(link, seqs).await?;
                return Ok(());
            }
            Err(s) => {
                return Err(DeviceFault::PeerOffer(s).into());
            }
        }
        let seqs: Vec<u64> = blocks.iter().map(|b| b.0).collect();
        let metas: Vec<(u64, BlockMeta)> = {
            let p = link.pool();
            seqs.iter()
                .filter_map(|s| {
                    p.block(*s).map(|m| {
                        (
                            *s,
                            BlockMeta {
                                state: BlockState::Available,
                                ..m.clone()
                            },
                        )
                    })
                })
                .collect()
        };
        self.inner
            .writer
            .apply(ops::WriteBlocks {
                link: link.setup.id.clone(),
                metas,
                erase: Vec::new(),
            })
            .await?;
        link.pool().mark_available(seqs);
        Ok(())
    }

    /// Stores new link blocks durably.
    async fn store_blocks(
        &self,
        lid: LinkId,
        metas: Vec<(u64, BlockMeta)>,
        blocks: Vec<qkd_hardware::KeyBlock>,
    ) -> Result<(), PeerError> {
        let blocks = metas
            .into_iter()
            .zip(blocks)
            .map(|((seq, meta), b)| (seq, meta, b.key))
            .collect();
        self.inner
            .writer
            .apply(ops::PutBlocks { link: lid, blocks })
            .await?;
        Ok(())
    }

    async fn discard_blocks(&self, link: &LinkRt, seqs: Vec<u64>) -> Result<(), PeerError> {
        link.pool().forget(&seqs);
        self.inner
            .writer
            .apply(ops::WriteBlocks {
                link: link.setup.id.clone(),
                metas: Vec::new(),
                erase: seqs,
            })
            .await?;
        Ok(())
    }

    async fn ingest_loop(&self, link: LinkId, poll: Duration) {
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            // Drain what is ready before sleeping again.
            loop {
                match self.ingest_once(&link).await {
                    Ok(0) => break,
                    Ok(_) => {
                        if failing {
                            tracing::info!(link = %link, "link key ingest recovered");
                            failing = false;
                        }
                    }
                    Err(PeerError::Store(e)) => {
                        tracing::error!(link = %link, error = %e, "store failed during ingest");
                        return;
                    }
                    Err(e @ PeerError::LowSpace(_)) => {
                        if !failing {
                            tracing::error!(link = %link, error = %e, "link key ingest paused: the key store is low on disk space; stored keys are still served");
                            failing = true;
                        }
                        break;
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(link = %link, error = %e, "link key ingest failing; will retry");
                            failing = true;
                        }
                        break;
                    }
                }
            }
        }
    }

    fn link(&self, id: &LinkId) -> Result<&LinkRt, PeerError> {
        self.inner
            .links
            .get(id)
            .ok_or_else(|| PeerError::UnknownLink(id.clone()))
    }

    fn is_local(&self, sae: &SaeId) -> bool {
        let cfg = self.cfg();
        cfg.saes.get(sae).is_some_and(|e| e.node == cfg.node)
    }

    fn pair_allowed(&self, a: &SaeId, b: &SaeId) -> bool {
        self.cfg().pairs(a, b)
    }

    // ---- peer-facing operations (called by crate::peer) ----

    /// `OfferBlocks` from the allocator at `from`.
    pub async fn on_offer(
        &self,
        from: &NodeId,
        req: pb::OfferBlocksRequest,
    ) -> Result<(), PeerError> {
        let r = self.offer_in(from, req).await;
        self.reported(from, r)
    }

    async fn offer_in(&self, from: &NodeId, req: pb::OfferBlocksRequest) -> Result<(), PeerError> {
        let link = self.peer_link(from, &req.link_id)?;
        if link.allocator() {
            return Err(Refusal::AllocatesLink.into());
        }
        let offered = offered_blocks(&req)?;
        // Blocks already held (a retried offer) are skipped; the rest are fetched by ID.
        let mut fresh = Vec::new();
        {
            let p = link.pool();
            for (seq, id) in offered.iter().map(|(s, id)| (*s, id)) {
                match p.block(seq) {
                    Some(b) if b.id == *id => {}
                    Some(_) => return Err(Refusal::BlockDiffers(seq).into()),
                    None if seq < p.next_seq() => {}
                    // Never fetch from the device a key ID already used here: refuse the block.
                    None if p.seen_device_id(id) => {
                        link.counters
                            .reissued
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::error!(link = %link.setup.id, block = %id, "peer offered a device key ID already used on this link; refused");
                        return Err(DeviceFault::Reissued(*id).into());
                    }
                    None => fresh.push((seq, *id)),
                }
            }
            // An offer that starts past this end's next block: the allocator discarded the
            // blocks between (this end's device could not deliver them); they are skipped below.
            if let Some((seq, _)) = fresh.first().filter(|(seq, _)| *seq < p.next_seq()) {
                return Err(Refusal::OfferOutOfSequence {
                    first: *seq,
                    expected: p.next_seq(),
                }
                .into());
            }
        }
        if !fresh.is_empty() {
            let want: Vec<BlockId> = fresh.iter().map(|f| f.1).collect();
            let blocks = link
                .setup
                .source
                .blocks_by_id(&want)
                .await
                .map_err(DeviceFault::Device)?;
            // A crash here loses keys this end's device has handed out: the allocator offers
            // them again, the device no longer has them, and both ends drop the blocks.
            failpoint!("slave-after-dec-keys");
            let mut metas = Vec::with_capacity(blocks.len());
            {
                let mut p = link.pool();
                if let Some((first, _)) = fresh.first() {
                    p.skip_to(*first).map_err(Refusal::Pool)?;
                }
                for ((seq, id), b) in fresh.iter().zip(&blocks) {
                    let len = u32::try_from(b.key.len())
                        .map_err(|_| DeviceFault::BlockTooLarge(b.key.len()))?;
                    if b.id != *id {
                        return Err(DeviceFault::WrongBlock {
                            asked: *id,
                            got: b.id,
                        }
                        .into());
                    }
                    p.add_block(*seq, *id, len).map_err(|e| match e {
                        // The allocator discards blocks its peer's device cannot back.
                        PoolError::Reissued(_) => {
                            link.counters
                                .reissued
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tracing::error!(link = %link.setup.id, error = %e, "refused offered link key");
                            PeerError::Device(DeviceFault::Reissued(*id))
                        }
                        e => Refusal::Pool(e).into(),
                    })?;
                    metas.push((
                        *seq,
                        p.block(*seq).cloned().ok_or(Refusal::AllocationVanished)?,
                    ));
                }
            }
            let lid = link.setup.id.clone();
            let bytes: usize = blocks.iter().map(|b| b.key.len()).sum();
            self.store_blocks(lid, metas, blocks).await?;
            link.counters
                .generated
                .fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
            // A crash here leaves the allocator unanswered: its next offer of the same blocks
            // finds them held and is accepted without asking the device again.
            failpoint!("slave-after-store");
        }
        // Blocks the allocator has used up entirely can go.
        let release_before = {
            let now = self.inner.clock.now();
            let mut q = link.releases.lock().unwrap_or_else(|p| p.into_inner());
            q.push_back((req.release_before, now));
            let grace = (self.cfg().peer_timeout * 2).as_millis() as u64;
            let mut upto = 0;
            while let Some(&(seq, at)) = q.front() {
                if now.saturating_sub(at) < grace {
                    break;
                }
                upto = upto.max(seq);
                q.pop_front();
            }
            upto
        };
        let released = link.pool().released_before(release_before);
        if !released.is_empty() {
            self.discard_blocks(link, released).await?;
        }
        Ok(())
    }

    fn peer_link(&self, from: &NodeId, link_id: &str) -> Result<&LinkRt, PeerError> {
        let id = LinkId::parse(link_id).map_err(|error| Malformed::Id {
            what: "link ID",
            error,
        })?;
        let link = self.link(&id)?;
        if &link.setup.peer != from {
            return Err(PeerError::UnknownLink(id));
        }
        Ok(link)
    }
}

/// Operator view of one link.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LinkLevel {
    /// The link.
    pub link: LinkId,
    /// The node at the other end.
    pub peer: NodeId,
    /// This end's device role (master = allocator).
    pub role: LinkRole,
    /// Whether the keys are simulated (demos and tests only).
    pub simulated: bool,
    /// Kind of key source.
    pub source_kind: String,
    /// Unallocated bytes usable now.
    pub available_bytes: u64,
    /// Unallocated bytes stored (including blocks not yet confirmed by the peer).
    pub stored_bytes: u64,
    /// Capacity of the pool.
    pub capacity_bytes: u64,
    /// Relay messages over this link since start (both directions).
    pub relay_messages: u64,
    /// Keys relayed over this link since start.
    pub relay_keys: u64,
    /// Link key used as one-time pad since start: exactly the relayed key material.
    pub relay_pad_bytes: u64,
    /// Link key used to authenticate relay messages since start (32 bytes per message).
    pub relay_auth_bytes: u64,
    /// Device key IDs refused since start because they were already used on this link: the
    /// device re-issued key (a device fault an operator must look at).
    pub device_reissued_ids: u64,
    /// Link key taken from this end's device and stored since start.
    pub generated_bytes: u64,
    /// Whether an operator drained the link (it is then advertised down).
    pub admin: crate::relay::topology::LinkAdmin,
}

/// Under the pool lock, after taking `ranges`: the metadata to rewrite for the blocks they touch,
/// and the blocks now drained, which are forgotten here and erased by the same store operation.
/// Because the caller queues that operation while still holding the lock, store writes of
/// block metadata follow the pool's own order and never go backwards.
fn block_updates<'a>(
    pool: &mut LinkPool,
    ranges: impl Iterator<Item = &'a Range>,
) -> (Vec<(u64, BlockMeta)>, Vec<u64>) {
    let seqs: BTreeSet<u64> = ranges.map(|r| r.block_seq).collect();
    let mut metas = Vec::new();
    let mut drained = Vec::new();
    for s in seqs {
        if let Some(m) = pool.block(s) {
            if m.is_drained() {
                drained.push(s);
            } else {
                metas.push((s, m.clone()));
            }
        }
    }
    pool.forget(&drained);
    (metas, drained)
}

/// Maps a store outcome of a key delivery to the SAE-facing error.
fn store_result<T>(r: Result<T, StoreError>) -> Result<T, ServiceError> {
    match r {
        Ok(v) => Ok(v),
        Err(e) => {
            tracing::error!(error = %e, "store failed while delivering keys");
            Err(ServiceError::Storage)
        }
    }
}

fn range_msg(r: &Range) -> pb::Range {
    pb::Range {
        block_seq: r.block_seq,
        offset: r.offset,
        len: r.len,
    }
}

pub(crate) fn range_of(r: &pb::Range) -> Range {
    Range {
        block_seq: r.block_seq,
        offset: r.offset,
        len: r.len,
    }
}

/// The blocks an `OfferBlocks` names, with their sequence numbers on the link (a peer's numbers:
/// one past `u64::MAX` is malformed, not an overflow).
pub(crate) fn offered_blocks(
    req: &pb::OfferBlocksRequest,
) -> Result<Vec<(u64, BlockId)>, PeerError> {
    req.block_ids
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let seq = req
                .first_seq
                .checked_add(i as u64)
                .ok_or(Malformed::Field("block sequence number"))?;
            Ok((seq, block_id(b)?))
        })
        .collect()
}

pub(crate) fn key_id(b: &[u8]) -> Result<KeyId, PeerError> {
    <[u8; 16]>::try_from(b)
        .map(KeyId::from_bytes)
        .map_err(|_| Malformed::IdLength("key ID").into())
}

pub(crate) fn block_id(b: &[u8]) -> Result<BlockId, PeerError> {
    <[u8; 16]>::try_from(b)
        .map(BlockId::from_bytes)
        .map_err(|_| Malformed::IdLength("block ID").into())
}

pub(crate) fn request_id(b: &[u8]) -> Result<[u8; 16], PeerError> {
    <[u8; 16]>::try_from(b).map_err(|_| Malformed::IdLength("request ID").into())
}

#[async_trait]
impl KeyService for KeyManager {
    fn admits(&self, sae: &SaeId) -> bool {
        self.is_local(sae)
    }

    fn knows(&self, sae: &SaeId) -> bool {
        self.cfg().saes.contains_key(sae)
    }

    fn limits(&self, _master: &SaeId, _slave: &SaeId) -> KeyLimits {
        self.cfg().limits
    }

    fn may_pair(&self, master: &SaeId, slave: &SaeId) -> bool {
        self.pair_allowed(master, slave)
    }

    fn profile(&self, master: &SaeId, slave: &SaeId) -> KeyProfile {
        self.fit().profile(master, slave)
    }

    async fn status(&self, master: &SaeId, slave: &SaeId) -> Result<PairStatus, ServiceError> {
        let cfg = self.cfg();
        let target_kme = cfg
            .saes
            .get(slave)
            .map_or_else(|| cfg.kme.clone(), |e| self.kme_of(&e.node));
        let local_pair = self.is_local(slave);
        Ok(PairStatus {
            source_kme: cfg.kme.clone(),
            target_kme,
            limits: cfg.limits,
            // Finished keys of the default size ready in the pair's pool, counted now.
            stored_key_count: if local_pair {
                0
            } else {
                self.pool_level(master, slave)
            },
            max_key_count: if local_pair {
                0
            } else {
                u64::from(cfg.relay.pool_keys)
            },
        })
    }

    async fn enc_keys(&self, req: EncKeysRequest) -> Result<Vec<DeliveredKey>, ServiceError> {
        if self.is_local(&req.slave) {
            // Every key comes from a QKD link or a relay: a pair inside one node has none.
            return Err(ServiceError::PeerUnavailable(
                crate::api::Unavailable::SameNode,
            ));
        }
        let number = req.number as usize;
        if req.additional_slaves.is_empty() && req.size_bits == self.cfg().limits.key_size {
            return self.enc_from_pool(&req.master, &req.slave, number).await;
        }
        // Other sizes (and multicast) are derived on demand, but only for requests the pair's
        // pool could cover (policy: never more key material than `stored_key_count`).
        let key_size = u64::from(self.cfg().limits.key_size);
        let wanted = u64::from(req.number)
            * u64::from(req.size_bits)
            * (1 + req.additional_slaves.len() as u64);
        if wanted > self.pool_level(&req.master, &req.slave) * key_size {
            self.kick_refill(req.master.clone(), req.slave.clone());
            return Err(ServiceError::InsufficientKeyMaterial);
        }
        let mut slaves = vec![req.slave.clone()];
        slaves.extend(req.additional_slaves.iter().cloned());
        self.enc_on_demand(&req.master, slaves, number, req.size_bits)
            .await
    }

    async fn dec_keys(&self, req: DecKeysRequest) -> Result<Vec<DeliveredKey>, ServiceError> {
        // The front ends refuse duplicate key IDs; the store operation refuses them too, and
        // treats a key stream's keys as absent (they are served only through their stream).
        let (master, slave) = (req.master.clone(), req.slave.clone());
        let out = self
            .inner
            .writer
            .apply(ops::FetchForSlave {
                master_here: self.is_local(&req.master),
                master: req.master,
                slave: req.slave,
                ids: req.key_ids,
                ttl_ms: self.cfg().key_ttl_ms,
                now: self.inner.clock.now(),
                fit: self.fit(),
            })
            .await;
        match out {
            Ok(Ok(handed)) => {
                let made: Vec<(KeyId, Option<crate::store::MadeUnder>)> = handed
                    .iter()
                    .map(|h| (h.id, h.made_under.clone()))
                    .collect();
                self.emit(&crate::events::Event::Delivered {
                    side: crate::events::Side::Slave,
                    master: &master,
                    slaves: std::slice::from_ref(&slave),
                    keys: &made,
                });
                Ok(handed
                    .into_iter()
                    .map(|h| DeliveredKey {
                        id: h.id,
                        key: h.key,
                    })
                    .collect())
            }
            Ok(Err(FetchRefusal::NotFound)) => Err(ServiceError::KeysNotFound),
            Ok(Err(FetchRefusal::NotSlave)) => Err(ServiceError::NotSlave),
            Err(e) => {
                tracing::error!(error = %e, "store failed while delivering keys");
                Err(ServiceError::Storage)
            }
        }
    }

    async fn open_stream(
        &self,
        req: crate::api::OpenStreamRequest,
    ) -> Result<crate::api::OpenedStream, crate::api::StreamFailure> {
        self.open_stream_at(req).await
    }

    async fn stream_qos(
        &self,
        caller: &SaeId,
        stream: qkd_types::KeyStreamId,
    ) -> Result<crate::core::stream::Qos, crate::api::StreamFailure> {
        self.stream_qos_at(caller, stream).await
    }

    async fn stream_key(
        &self,
        caller: &SaeId,
        stream: qkd_types::KeyStreamId,
        index: u64,
    ) -> Result<DeliveredKey, crate::api::StreamFailure> {
        self.stream_key_at(caller, stream, index).await
    }

    async fn close_stream(
        &self,
        caller: &SaeId,
        stream: qkd_types::KeyStreamId,
    ) -> Result<(), crate::api::StreamFailure> {
        self.close_stream_at(caller, stream).await
    }
}

pub(crate) mod e2e;
pub mod reconfigure;
mod relay;
pub(crate) mod streams;

pub use e2e::{E2eKeys, KeyMode};
pub use reconfigure::{Blocker, LiveConfig, ReconfigureError};
pub use relay::{NoticeStats, RelayConfig, RelayError};
// For the fuzz target bodies (crate::fuzzing) only.
pub(crate) use crate::peer::wire::{advert_of, parse_path};
pub(crate) use crate::relay::hop::merged;
