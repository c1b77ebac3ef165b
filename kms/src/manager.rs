//! The key manager of one node: the shell around the link pools and the store.
//!
//! It serves three masters:
//! * SAEs, through [`KeyService`] (the ETSI 014 front end calls it);
//! * the peer nodes, through the gRPC service in [`crate::peer`];
//! * the QKD devices, through the ingest loop of each link it allocates.
//!
//! The decisions (which bytes back which key, what a peer may claim) are made by the sans-IO
//! [`LinkPool`]; this module sequences them with the durable store and the network:
//!
//! * **Master SAE here, allocator here**: allocate → persist the request *reserved*, the link
//!   bytes taken and the keys' tombstones (consumed) → `Bind` at the peer, which stores the keys
//!   for the slave durably → answer the SAE. The request is then marked committed lazily; a
//!   reserved request found after a crash is bound again (idempotent), never reused.
//! * **Master SAE here, allocator at the peer**: `Allocate` at the peer, which picks the bytes
//!   and stores the keys for its slave durably → check and take the ranges, persist tombstones →
//!   answer. Retries carry the same request ID and get the same ranges.
//! * Any failure before the answer voids the request at both ends; voided link bytes are never
//!   used again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use qkd_hardware::{KeySource, LinkRole};
use qkd_proto::peer as pb;
use qkd_proto::peer::peer_kms_client::PeerKmsClient;
use qkd_types::{BlockId, Clock, KeyId, KmeId, LinkId, NodeId, SaeId};
use tonic::transport::Channel;

use crate::core::pool::{BlockMeta, BlockState, LinkPool, PoolError, Range};
use crate::service::{
    DecKeysRequest, DeliveredKey, EncKeysRequest, KeyLimits, KeyService, PairStatus, ServiceError,
};
use crate::store::{Recovered, RequestRecord, RequestState, Side, StoreError, StoredKey, Txn};
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
    /// Client of the peer's gRPC service (lazy connection).
    pub client: PeerKmsClient<Channel>,
}

#[derive(Debug)]
struct LinkRt {
    setup: LinkSetup,
    pool: Mutex<LinkPool>,
    /// Non-allocator: release points announced by the allocator, applied only once old enough
    /// that no bind or allocation naming those blocks can still be in flight.
    releases: Mutex<std::collections::VecDeque<(u64, std::time::Instant)>>,
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
    cfg: ManagerConfig,
    clock: Arc<dyn Clock>,
    writer: Writer,
    links: HashMap<LinkId, LinkRt>,
}

/// Peer errors that are worth a gRPC status; mapped to `tonic::Status` in [`crate::peer`] only.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Peer: asked about a link this node does not have with it.
    #[error("no link {0} with the calling node")]
    UnknownLink(String),
    /// Peer: a malformed message (bad ID, wrong sizes...).
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Peer: the message contradicts what this node holds (overlap, wrong pair, reused key ID).
    #[error("refused: {0}")]
    Refused(String),
    /// Peer: the request was voided earlier; it will never be served.
    #[error("request was voided")]
    Voided,
    /// This node: not enough link key.
    #[error("not enough link key")]
    Exhausted,
    /// This node's device failed.
    #[error("device: {0}")]
    Device(String),
    /// This node's store failed (the node is going down).
    #[error("store: {0}")]
    Store(String),
}

impl From<StoreError> for PeerError {
    fn from(e: StoreError) -> Self {
        PeerError::Store(e.to_string())
    }
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
        let mut map = HashMap::new();
        for setup in links {
            let allocator = setup.source.info().role == LinkRole::Master;
            let (next_seq, blocks) = recovered.links.remove(&setup.id).unwrap_or_default();
            let pool = LinkPool::restore(allocator, setup.capacity_bytes, next_seq, blocks);
            map.insert(
                setup.id.clone(),
                LinkRt {
                    setup,
                    pool: Mutex::new(pool),
                    releases: Mutex::default(),
                },
            );
        }
        Self {
            inner: Arc::new(Inner {
                cfg,
                clock,
                writer,
                links: map,
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ManagerConfig {
        &self.inner.cfg
    }

    /// Resolves when the store failed and the node must exit.
    pub async fn fatal(&self) {
        self.inner.writer.fatal().await
    }

    /// Finishes what a crash interrupted: requests reserved but never settled are bound again at
    /// the peer (they may have been answered) or, if the peer refuses, voided.
    pub async fn recover(&self, reserved: Vec<([u8; 16], RequestRecord)>) {
        for (id, rec) in reserved {
            let ok = match self.inner.links.get(&rec.link) {
                Some(link) => self.send_bind(link, &id, &rec).await.is_ok(),
                None => false,
            };
            let state = if ok {
                RequestState::Committed
            } else {
                RequestState::Voided
            };
            let r = self.set_request_state(id, state).await;
            if let (false, Some(link)) = (ok, self.inner.links.get(&rec.link)) {
                self.void_at_peer(link, id, &rec).await;
            }
            tracing::info!(request = %hex_id(&id), ?state, ok = r.is_ok(), "recovered reserved request");
        }
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
                }
            })
            .collect();
        v.sort_by(|a, b| a.link.cmp(&b.link));
        v
    }

    /// The key source of a link, for status pages.
    pub fn source(&self, link: &LinkId) -> Option<Arc<dyn KeySource>> {
        self.inner.links.get(link).map(|l| l.setup.source.clone())
    }

    /// Runs forever: pulls blocks from the devices of the links this node allocates and offers
    /// them to the peers. Also expires keys. Cancel by dropping the future.
    pub async fn run_background(&self, poll: Duration) {
        let mut tasks = Vec::new();
        for link in self.inner.links.values() {
            if link.allocator() {
                let me = self.clone();
                let id = link.setup.id.clone();
                tasks.push(tokio::spawn(async move { me.ingest_loop(id, poll).await }));
            }
        }
        let me = self.clone();
        tasks.push(tokio::spawn(async move { me.expiry_loop().await }));
        // Abort the spawned loops when this future is dropped.
        struct AbortAll(Vec<tokio::task::JoinHandle<()>>);
        impl Drop for AbortAll {
            fn drop(&mut self) {
                self.0.iter().for_each(|t| t.abort());
            }
        }
        let guard = AbortAll(tasks);
        futures::future::pending::<()>().await;
        drop(guard);
    }

    async fn expiry_loop(&self) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let now = self.inner.clock.now();
            let retention = self.inner.cfg.tombstone_retention_ms;
            let r = self
                .inner
                .writer
                .run(move |tx| -> Result<usize, StoreError> {
                    let expired = tx.expired_keys(now, 1024)?;
                    for (id, meta) in &expired {
                        tx.retire_key(*id, meta, now)?;
                    }
                    tx.prune_tombstones(now.saturating_sub(retention), 1024)?;
                    Ok(expired.len())
                })
                .await;
            match r {
                Ok(Ok(n)) if n > 0 => tracing::info!(count = n, "erased expired keys"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) | Err(e) => {
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
            .map_err(|e| PeerError::Device(e.to_string()))?;
        if blocks.is_empty() {
            return Ok(0);
        }
        let mut added = Vec::with_capacity(blocks.len());
        {
            let mut p = link.pool();
            for (i, b) in blocks.iter().enumerate() {
                let seq = next_seq + i as u64;
                let len = u32::try_from(b.key.len())
                    .map_err(|_| PeerError::Device("block too large".into()))?;
                p.add_block(seq, b.id, len)
                    .map_err(|e| PeerError::Refused(e.to_string()))?;
                added.push((seq, b.id));
            }
        }
        let lid = link_id.clone();
        let metas: Vec<(u64, BlockMeta)> = {
            let p = link.pool();
            added
                .iter()
                .filter_map(|(s, _)| p.block(*s).map(|m| (*s, m.clone())))
                .collect()
        };
        self.inner
            .writer
            .run(move |tx| -> Result<(), StoreError> {
                for ((seq, meta), b) in metas.iter().zip(&blocks) {
                    tx.put_block(&lid, *seq, meta, &b.key)?;
                }
                Ok(())
            })
            .await??;
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
        let mut client = link.setup.client.clone();
        let mut r = tonic::Request::new(req);
        r.set_timeout(self.inner.cfg.peer_timeout * 4);
        match client.offer_blocks(r).await {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                // The peer's device cannot deliver these blocks: they are useless, retire them.
                tracing::warn!(link = %link.setup.id, status = %s.message(), "peer refused blocks; discarding them");
                let seqs: Vec<u64> = blocks.iter().map(|b| b.0).collect();
                self.discard_blocks(link, seqs).await?;
                return Ok(());
            }
            Err(s) => {
                return Err(PeerError::Device(format!(
                    "peer offer failed: {}",
                    s.message()
                )));
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
        let lid = link.setup.id.clone();
        self.inner
            .writer
            .run(move |tx| -> Result<(), StoreError> {
                for (seq, m) in &metas {
                    tx.put_block_meta(&lid, *seq, m)?;
                }
                Ok(())
            })
            .await??;
        link.pool().mark_available(seqs);
        Ok(())
    }

    async fn discard_blocks(&self, link: &LinkRt, seqs: Vec<u64>) -> Result<(), PeerError> {
        link.pool().forget(&seqs);
        let lid = link.setup.id.clone();
        self.inner
            .writer
            .run(move |tx| -> Result<(), StoreError> {
                for s in &seqs {
                    tx.delete_block(&lid, *s)?;
                }
                Ok(())
            })
            .await??;
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
            .ok_or_else(|| PeerError::UnknownLink(id.to_string()))
    }

    /// The link towards the node a remote SAE is attached to.
    fn link_to_sae(&self, sae: &SaeId) -> Option<&LinkRt> {
        let entry = self.inner.cfg.saes.get(sae)?;
        let n = self.inner.cfg.neighbours.get(&entry.node)?;
        self.inner.links.get(&n.link)
    }

    fn is_local(&self, sae: &SaeId) -> bool {
        self.inner
            .cfg
            .saes
            .get(sae)
            .is_some_and(|e| e.node == self.inner.cfg.node)
    }

    fn pair_allowed(&self, a: &SaeId, b: &SaeId) -> bool {
        let cfg = &self.inner.cfg;
        cfg.saes.get(a).is_some_and(|e| e.peers.contains(b))
            && cfg.saes.get(b).is_some_and(|e| e.peers.contains(a))
    }

    async fn set_request_state(&self, id: [u8; 16], state: RequestState) -> Result<(), StoreError> {
        self.inner
            .writer
            .run(move |tx| -> Result<(), StoreError> {
                if let Some(mut r) = tx.request(&id)? {
                    r.state = state;
                    tx.put_request(&id, &r)?;
                }
                Ok(())
            })
            .await?
    }

    async fn send_bind(
        &self,
        link: &LinkRt,
        id: &[u8; 16],
        rec: &RequestRecord,
    ) -> Result<(), tonic::Status> {
        let req = pb::BindRequest {
            request_id: id.to_vec(),
            link_id: link.setup.id.to_string(),
            pair: Some(pair_msg(rec)),
            keys: rec.keys.iter().map(|(k, r)| binding_msg(*k, r)).collect(),
        };
        let mut client = link.setup.client.clone();
        let mut r = tonic::Request::new(req);
        r.set_timeout(self.inner.cfg.peer_timeout);
        client.bind(r).await.map(|_| ())
    }

    /// Voids a request at the peer, in the background, until the peer acknowledges.
    async fn void_at_peer(&self, link: &LinkRt, id: [u8; 16], rec: &RequestRecord) {
        let req = pb::VoidRequest {
            request_id: id.to_vec(),
            link_id: link.setup.id.to_string(),
            ranges: rec
                .keys
                .iter()
                .flat_map(|(_, r)| r.iter().map(range_msg))
                .collect(),
        };
        let client = link.setup.client.clone();
        let timeout = self.inner.cfg.peer_timeout;
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(100);
            for _ in 0..60 {
                let mut c = client.clone();
                let mut r = tonic::Request::new(req.clone());
                r.set_timeout(timeout);
                match c.void(r).await {
                    Ok(_) => return,
                    Err(s) => tracing::debug!(status = %s.message(), "void not acknowledged yet"),
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            tracing::warn!(request = %hex_id(&id), "peer never acknowledged void; its keys expire by TTL");
        });
    }

    /// Keys for a master SAE here and a slave at a neighbour.
    async fn enc_remote(
        &self,
        req: EncKeysRequest,
        link: &LinkRt,
    ) -> Result<Vec<DeliveredKey>, ServiceError> {
        let now = self.inner.clock.now();
        let request_id = *KeyId::random().as_bytes();
        let key_ids: Vec<KeyId> = (0..req.number).map(|_| KeyId::random()).collect();
        let size_bytes = req.size_bits / 8;
        let mut rec = RequestRecord {
            state: RequestState::Reserved,
            side: Side::Master,
            link: link.setup.id.clone(),
            master: req.master.clone(),
            slave: req.slave.clone(),
            size_bits: req.size_bits,
            expires_at: now + self.inner.cfg.key_ttl_ms,
            created_at: now,
            keys: Vec::new(),
        };
        if link.allocator() {
            // Allocate and queue the durable write under one lock, so store writes follow
            // allocation order.
            let persisted = {
                let mut p = link.pool();
                let ranges = p
                    .allocate(&vec![size_bytes; key_ids.len()])
                    .map_err(|_| ServiceError::InsufficientKeyMaterial)?;
                rec.keys = key_ids.iter().copied().zip(ranges).collect();
                self.master_side_job(&mut p, link, request_id, rec.clone())
            };
            let keys = store_result(persisted.await)?;
            match self.send_bind(link, &request_id, &rec).await {
                Ok(()) => {
                    // Settle the request lazily: it is answerable already (tombstones durable,
                    // peer committed); a crash before this commit only re-binds idempotently.
                    let me = self.clone();
                    tokio::spawn(async move {
                        let _ = me
                            .set_request_state(request_id, RequestState::Committed)
                            .await;
                    });
                    Ok(keys)
                }
                Err(status) => {
                    drop(keys);
                    tracing::warn!(link = %link.setup.id, status = %status.message(), "peer did not bind; voiding");
                    self.set_request_state(request_id, RequestState::Voided)
                        .await
                        .map_err(|_| ServiceError::Storage)?;
                    self.void_at_peer(link, request_id, &rec).await;
                    Err(ServiceError::PeerUnavailable(status.message().to_string()))
                }
            }
        } else {
            let msg = pb::AllocateRequest {
                request_id: request_id.to_vec(),
                link_id: link.setup.id.to_string(),
                pair: Some(pair_msg(&rec)),
                key_ids: key_ids.iter().map(|k| k.as_bytes().to_vec()).collect(),
            };
            let reply = self.allocate_at_peer(link, msg).await;
            let bindings = match reply.and_then(|r| parse_bindings(&r.keys, &key_ids, size_bytes)) {
                Ok(b) => b,
                Err(e) => {
                    if e != ServiceError::InsufficientKeyMaterial {
                        self.void_at_peer(link, request_id, &rec).await;
                    }
                    return Err(e);
                }
            };
            rec.keys = bindings;
            rec.state = RequestState::Committed;
            let all: Vec<Range> = rec
                .keys
                .iter()
                .flat_map(|(_, r)| r.iter().copied())
                .collect();
            let persisted = {
                let mut p = link.pool();
                match p.take(&all) {
                    Ok(()) => Ok(self.master_side_job(&mut p, link, request_id, rec.clone())),
                    Err(e) => Err(e),
                }
            };
            match persisted {
                Ok(fut) => store_result(fut.await),
                Err(e) => {
                    tracing::error!(link = %link.setup.id, error = %e, "peer allocated link key this node cannot use");
                    self.void_at_peer(link, request_id, &rec).await;
                    Err(ServiceError::PeerUnavailable(
                        "peer allocation rejected".into(),
                    ))
                }
            }
        }
    }

    async fn allocate_at_peer(
        &self,
        link: &LinkRt,
        msg: pb::AllocateRequest,
    ) -> Result<pb::AllocateReply, ServiceError> {
        let mut last = String::new();
        for attempt in 0..3u32 {
            let mut client = link.setup.client.clone();
            let mut r = tonic::Request::new(msg.clone());
            r.set_timeout(self.inner.cfg.peer_timeout);
            match client.allocate(r).await {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                    return Err(ServiceError::InsufficientKeyMaterial);
                }
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                    ) =>
                {
                    last = s.message().to_string();
                    tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
                }
                Err(s) => return Err(ServiceError::PeerUnavailable(s.message().to_string())),
            }
        }
        Err(ServiceError::PeerUnavailable(last))
    }

    /// Under the pool lock: queues the durable write of a master-side request (reserved or
    /// committed) with its tombstones and taken link bytes; the future yields the keys read from
    /// the link bytes once durable.
    fn master_side_job(
        &self,
        pool: &mut LinkPool,
        link: &LinkRt,
        request_id: [u8; 16],
        rec: RequestRecord,
    ) -> impl std::future::Future<Output = Result<Result<Vec<DeliveredKey>, StoreError>, StoreError>>
    + use<> {
        let (metas, drained) = block_updates(pool, rec.keys.iter().flat_map(|(_, r)| r.iter()));
        let lid = link.setup.id.clone();
        let now = self.inner.clock.now();
        self.inner
            .writer
            .run(move |tx| -> Result<Vec<DeliveredKey>, StoreError> {
                let mut keys = Vec::with_capacity(rec.keys.len());
                for (id, ranges) in &rec.keys {
                    keys.push(DeliveredKey {
                        id: *id,
                        key: tx.read_ranges(&lid, ranges)?,
                    });
                }
                write_blocks(tx, &lid, &metas, &drained)?;
                for (id, _) in &rec.keys {
                    tx.put_tombstone(*id, &rec.master, Some(&rec.slave), now)?;
                }
                tx.put_request(&request_id, &rec)?;
                Ok(keys)
            })
    }

    // ---- peer-facing operations (called by crate::peer) ----

    /// `OfferBlocks` from the allocator at `from`.
    pub async fn on_offer(
        &self,
        from: &NodeId,
        req: pb::OfferBlocksRequest,
    ) -> Result<(), PeerError> {
        let link = self.peer_link(from, &req.link_id)?;
        if link.allocator() {
            return Err(PeerError::Refused("this node allocates the link".into()));
        }
        let ids = req
            .block_ids
            .iter()
            .map(|b| block_id(b))
            .collect::<Result<Vec<_>, _>>()?;
        // Blocks already held (a retried offer) are skipped; the rest are fetched by ID.
        let mut fresh = Vec::new();
        {
            let p = link.pool();
            for (i, id) in ids.iter().enumerate() {
                let seq = req.first_seq + i as u64;
                match p.block(seq) {
                    Some(b) if b.id == *id => {}
                    Some(_) => return Err(PeerError::Refused(format!("block {seq} differs"))),
                    None if seq < p.next_seq() => {}
                    None => fresh.push((seq, *id)),
                }
            }
            if let Some((seq, _)) = fresh.first().filter(|(seq, _)| *seq != p.next_seq()) {
                return Err(PeerError::Refused(format!(
                    "offer starts at {seq}, expected {}",
                    p.next_seq()
                )));
            }
        }
        if !fresh.is_empty() {
            let want: Vec<BlockId> = fresh.iter().map(|f| f.1).collect();
            let blocks = link
                .setup
                .source
                .blocks_by_id(&want)
                .await
                .map_err(|e| PeerError::Device(e.to_string()))?;
            let mut metas = Vec::with_capacity(blocks.len());
            {
                let mut p = link.pool();
                for ((seq, id), b) in fresh.iter().zip(&blocks) {
                    let len = u32::try_from(b.key.len())
                        .map_err(|_| PeerError::Device("block too large".into()))?;
                    if b.id != *id {
                        return Err(PeerError::Device("device returned another block".into()));
                    }
                    p.add_block(*seq, *id, len)
                        .map_err(|e| PeerError::Refused(e.to_string()))?;
                    metas.push((
                        *seq,
                        p.block(*seq)
                            .cloned()
                            .ok_or(PeerError::Refused("block".into()))?,
                    ));
                }
            }
            let lid = link.setup.id.clone();
            self.inner
                .writer
                .run(move |tx| -> Result<(), StoreError> {
                    for ((seq, meta), b) in metas.iter().zip(&blocks) {
                        tx.put_block(&lid, *seq, meta, &b.key)?;
                    }
                    Ok(())
                })
                .await??;
        }
        // Blocks the allocator has used up entirely can go.
        let release_before = {
            let mut q = link.releases.lock().unwrap_or_else(|p| p.into_inner());
            q.push_back((req.release_before, std::time::Instant::now()));
            let grace = self.inner.cfg.peer_timeout * 2;
            let mut upto = 0;
            while let Some(&(seq, at)) = q.front() {
                if at.elapsed() < grace {
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

    /// `Bind` from the allocator at `from`: store keys for a slave here.
    pub async fn on_bind(&self, from: &NodeId, req: pb::BindRequest) -> Result<(), PeerError> {
        let link = self.peer_link(from, &req.link_id)?;
        let request_id = request_id(&req.request_id)?;
        let rec = self.slave_side_record(from, link, req.pair.as_ref(), RequestState::Committed)?;
        let size_bytes = rec.size_bits / 8;
        let ids: Vec<KeyId> = req
            .keys
            .iter()
            .map(|k| key_id(&k.key_id))
            .collect::<Result<_, _>>()?;
        let keys = parse_bindings(&req.keys, &ids, size_bytes)
            .map_err(|_| PeerError::Malformed("bindings".into()))?;
        let rec = RequestRecord { keys, ..rec };
        // A retry of a request already settled is answered from the store.
        if let Some(done) = self.settled(request_id).await? {
            return done;
        }
        let all: Vec<Range> = rec
            .keys
            .iter()
            .flat_map(|(_, r)| r.iter().copied())
            .collect();
        let persisted = {
            let mut p = link.pool();
            p.take(&all)
                .map_err(|e| PeerError::Refused(e.to_string()))?;
            self.slave_side_job(&mut p, link, request_id, rec)
        };
        persisted.await??
    }

    /// `Allocate` from the peer at `from`: pick link bytes and store keys for a slave here.
    pub async fn on_allocate(
        &self,
        from: &NodeId,
        req: pb::AllocateRequest,
    ) -> Result<pb::AllocateReply, PeerError> {
        let link = self.peer_link(from, &req.link_id)?;
        if !link.allocator() {
            return Err(PeerError::Refused(
                "this node does not allocate the link".into(),
            ));
        }
        let request_id = request_id(&req.request_id)?;
        if let Some(done) = self.settled(request_id).await? {
            done?;
            return self.bindings_of(request_id).await;
        }
        let rec = self.slave_side_record(from, link, req.pair.as_ref(), RequestState::Committed)?;
        let ids: Vec<KeyId> = req
            .key_ids
            .iter()
            .map(|k| key_id(k))
            .collect::<Result<_, _>>()?;
        let limits = self.inner.cfg.limits;
        if ids.is_empty() || ids.len() > limits.max_key_per_request as usize {
            return Err(PeerError::Malformed("number of keys".into()));
        }
        if rec.size_bits % 8 != 0
            || rec.size_bits < limits.min_key_size
            || rec.size_bits > limits.max_key_size
        {
            return Err(PeerError::Malformed("key size".into()));
        }
        let (reply, persisted) = {
            let mut p = link.pool();
            let ranges = p
                .allocate(&vec![rec.size_bits / 8; ids.len()])
                .map_err(|e| match e {
                    PoolError::Insufficient { .. } => PeerError::Exhausted,
                    e => PeerError::Refused(e.to_string()),
                })?;
            let rec = RequestRecord {
                keys: ids.iter().copied().zip(ranges).collect(),
                ..rec
            };
            let reply = pb::AllocateReply {
                keys: rec.keys.iter().map(|(k, r)| binding_msg(*k, r)).collect(),
            };
            (reply, self.slave_side_job(&mut p, link, request_id, rec))
        };
        persisted.await???;
        Ok(reply)
    }

    /// `Void` from the peer at `from`.
    pub async fn on_void(&self, from: &NodeId, req: pb::VoidRequest) -> Result<(), PeerError> {
        let link = self.peer_link(from, &req.link_id)?;
        let request_id = request_id(&req.request_id)?;
        let ranges: Vec<Range> = req.ranges.iter().map(range_of).collect();
        // Retire the link bytes here too (those not yet taken), so they are never used; queue the
        // store write under the same lock.
        let persisted = {
            let mut p = link.pool();
            let fresh: Vec<Range> = ranges
                .iter()
                .copied()
                .filter(|r| p.check_free(&[*r]).is_ok())
                .collect();
            let _ = p.take(&fresh);
            let (metas, drained) = block_updates(&mut p, fresh.iter());
            let lid = link.setup.id.clone();
            let now = self.inner.clock.now();
            self.inner.writer.run(move |tx| -> Result<(), StoreError> {
                match tx.request(&request_id)? {
                    Some(mut r) => {
                        if r.state != RequestState::Voided {
                            if r.side == Side::Slave {
                                for (id, _) in &r.keys {
                                    if let Some(meta) = tx.key_meta(*id)? {
                                        tx.retire_key(*id, &meta, now)?;
                                    }
                                }
                            }
                            r.state = RequestState::Voided;
                            tx.put_request(&request_id, &r)?;
                        }
                    }
                    None => {
                        // Never seen: remember the void so a late Bind or Allocate is refused.
                        let placeholder =
                            SaeId::parse("voided").map_err(|_| StoreError::Corrupt("id"))?;
                        tx.put_request(
                            &request_id,
                            &RequestRecord {
                                state: RequestState::Voided,
                                side: Side::Slave,
                                link: lid.clone(),
                                master: placeholder.clone(),
                                slave: placeholder,
                                size_bits: 0,
                                expires_at: now,
                                created_at: now,
                                keys: Vec::new(),
                            },
                        )?;
                    }
                }
                write_blocks(tx, &lid, &metas, &drained)
            })
        };
        persisted.await??;
        Ok(())
    }

    /// `PoolLevel` from the peer at `from`.
    pub fn on_pool_level(
        &self,
        from: &NodeId,
        link_id: &str,
    ) -> Result<pb::PoolLevelReply, PeerError> {
        let link = self.peer_link(from, link_id)?;
        let p = link.pool();
        Ok(pb::PoolLevelReply {
            available_bytes: p.available_bytes(),
            capacity_bytes: p.capacity_bytes(),
        })
    }

    fn peer_link(&self, from: &NodeId, link_id: &str) -> Result<&LinkRt, PeerError> {
        let id = LinkId::parse(link_id).map_err(|e| PeerError::Malformed(e.to_string()))?;
        let link = self.link(&id)?;
        if &link.setup.peer != from {
            return Err(PeerError::UnknownLink(link_id.to_string()));
        }
        Ok(link)
    }

    fn slave_side_record(
        &self,
        from: &NodeId,
        link: &LinkRt,
        pair: Option<&pb::Pair>,
        state: RequestState,
    ) -> Result<RequestRecord, PeerError> {
        let pair = pair.ok_or_else(|| PeerError::Malformed("missing pair".into()))?;
        let master =
            SaeId::parse(&pair.master_sae).map_err(|e| PeerError::Malformed(e.to_string()))?;
        let slave =
            SaeId::parse(&pair.slave_sae).map_err(|e| PeerError::Malformed(e.to_string()))?;
        let cfg = &self.inner.cfg;
        if cfg.saes.get(&master).map(|e| &e.node) != Some(from) {
            return Err(PeerError::Refused(format!(
                "master SAE {master} is not attached to the calling node"
            )));
        }
        if !self.is_local(&slave) {
            return Err(PeerError::Refused(format!(
                "slave SAE {slave} is not attached here"
            )));
        }
        if !self.pair_allowed(&master, &slave) {
            return Err(PeerError::Refused(format!(
                "{master} may not pair with {slave}"
            )));
        }
        if pair.size_bits == 0 || pair.size_bits % 8 != 0 {
            return Err(PeerError::Malformed("key size".into()));
        }
        let now = self.inner.clock.now();
        Ok(RequestRecord {
            state,
            side: Side::Slave,
            link: link.setup.id.clone(),
            master,
            slave,
            size_bits: pair.size_bits,
            // The expiry is this node's: TTL from now, whatever the peer's clock says.
            expires_at: now + cfg.key_ttl_ms,
            created_at: now,
            keys: Vec::new(),
        })
    }

    /// `Some(Ok)` if the request is already committed, `Some(Err(Voided))` if voided.
    async fn settled(&self, id: [u8; 16]) -> Result<Option<Result<(), PeerError>>, PeerError> {
        let state = self
            .inner
            .writer
            .run(move |tx| tx.request(&id).map(|r| r.map(|r| r.state)))
            .await??;
        Ok(match state {
            Some(RequestState::Committed) => Some(Ok(())),
            Some(RequestState::Voided) => Some(Err(PeerError::Voided)),
            _ => None,
        })
    }

    async fn bindings_of(&self, id: [u8; 16]) -> Result<pb::AllocateReply, PeerError> {
        let rec = self.inner.writer.run(move |tx| tx.request(&id)).await??;
        let rec = rec.ok_or(PeerError::Refused("request vanished".into()))?;
        Ok(pb::AllocateReply {
            keys: rec.keys.iter().map(|(k, r)| binding_msg(*k, r)).collect(),
        })
    }

    /// Under the pool lock: queues the durable write of a slave-side request: the keys for the
    /// slave, the taken link bytes and the request record. Refuses reused key or request IDs.
    fn slave_side_job(
        &self,
        pool: &mut LinkPool,
        link: &LinkRt,
        request_id: [u8; 16],
        rec: RequestRecord,
    ) -> impl std::future::Future<
        Output = Result<Result<Result<(), PeerError>, StoreError>, StoreError>,
    > + use<> {
        let (metas, drained) = block_updates(pool, rec.keys.iter().flat_map(|(_, r)| r.iter()));
        let lid = link.setup.id.clone();
        self.inner
            .writer
            .run(move |tx| -> Result<Result<(), PeerError>, StoreError> {
                for (id, _) in &rec.keys {
                    if tx.key_id_used(*id)? {
                        return Ok(Err(PeerError::Refused(format!("key ID {id} already used"))));
                    }
                }
                if tx.request(&request_id)?.is_some() {
                    return Ok(Err(PeerError::Refused("request ID already used".into())));
                }
                let meta = StoredKey {
                    request: request_id,
                    master: rec.master.clone(),
                    slaves: vec![(rec.slave.clone(), false)],
                    size_bits: rec.size_bits,
                    expires_at: rec.expires_at,
                };
                let mut keys = Vec::with_capacity(rec.keys.len());
                for (id, ranges) in &rec.keys {
                    keys.push((*id, tx.read_ranges(&lid, ranges)?));
                }
                for (id, key) in &keys {
                    tx.put_key(*id, &meta, key)?;
                }
                write_blocks(tx, &lid, &metas, &drained)?;
                tx.put_request(&request_id, &rec)?;
                Ok(Ok(()))
            })
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
fn store_result<T>(r: Result<Result<T, StoreError>, StoreError>) -> Result<T, ServiceError> {
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) | Err(e) => {
            tracing::error!(error = %e, "store failed while delivering keys");
            Err(ServiceError::Storage)
        }
    }
}

fn write_blocks(
    tx: &mut Txn<'_>,
    link: &LinkId,
    metas: &[(u64, BlockMeta)],
    drained: &[u64],
) -> Result<(), StoreError> {
    for (s, m) in metas {
        tx.put_block_meta(link, *s, m)?;
    }
    for s in drained {
        tx.delete_block(link, *s)?;
    }
    Ok(())
}

fn pair_msg(rec: &RequestRecord) -> pb::Pair {
    pb::Pair {
        master_sae: rec.master.to_string(),
        slave_sae: rec.slave.to_string(),
        size_bits: rec.size_bits,
        expires_at_ms: rec.expires_at,
    }
}

fn range_msg(r: &Range) -> pb::Range {
    pb::Range {
        block_seq: r.block_seq,
        offset: r.offset,
        len: r.len,
    }
}

fn range_of(r: &pb::Range) -> Range {
    Range {
        block_seq: r.block_seq,
        offset: r.offset,
        len: r.len,
    }
}

fn binding_msg(k: KeyId, ranges: &[Range]) -> pb::KeyBinding {
    pb::KeyBinding {
        key_id: k.as_bytes().to_vec(),
        ranges: ranges.iter().map(range_msg).collect(),
    }
}

/// Checks a peer's bindings: the expected key IDs in order, each backed by exactly its size.
fn parse_bindings(
    keys: &[pb::KeyBinding],
    expected: &[KeyId],
    size_bytes: u32,
) -> Result<Vec<(KeyId, Vec<Range>)>, ServiceError> {
    let bad = || ServiceError::PeerUnavailable("malformed allocation from peer".into());
    if keys.len() != expected.len() {
        return Err(bad());
    }
    keys.iter()
        .zip(expected)
        .map(|(k, want)| {
            let id = key_id(&k.key_id).map_err(|_| bad())?;
            let ranges: Vec<Range> = k.ranges.iter().map(range_of).collect();
            let total: u64 = ranges.iter().map(|r| u64::from(r.len)).sum();
            if id != *want || total != u64::from(size_bytes) {
                return Err(bad());
            }
            Ok((id, ranges))
        })
        .collect()
}

fn key_id(b: &[u8]) -> Result<KeyId, PeerError> {
    <[u8; 16]>::try_from(b)
        .map(KeyId::from_bytes)
        .map_err(|_| PeerError::Malformed("key ID".into()))
}

fn block_id(b: &[u8]) -> Result<BlockId, PeerError> {
    <[u8; 16]>::try_from(b)
        .map(BlockId::from_bytes)
        .map_err(|_| PeerError::Malformed("block ID".into()))
}

fn request_id(b: &[u8]) -> Result<[u8; 16], PeerError> {
    <[u8; 16]>::try_from(b).map_err(|_| PeerError::Malformed("request ID".into()))
}

fn hex_id(id: &[u8; 16]) -> String {
    KeyId::from_bytes(*id).to_string()
}

#[async_trait]
impl KeyService for KeyManager {
    fn admits(&self, sae: &SaeId) -> bool {
        self.is_local(sae)
    }

    fn knows(&self, sae: &SaeId) -> bool {
        self.inner.cfg.saes.contains_key(sae)
    }

    fn limits(&self, _master: &SaeId, _slave: &SaeId) -> KeyLimits {
        self.inner.cfg.limits
    }

    fn may_pair(&self, master: &SaeId, slave: &SaeId) -> bool {
        self.pair_allowed(master, slave)
    }

    async fn status(&self, master: &SaeId, slave: &SaeId) -> Result<PairStatus, ServiceError> {
        let cfg = &self.inner.cfg;
        let limits = cfg.limits;
        let key_bytes = u64::from(limits.key_size / 8).max(1);
        let target_node = cfg.saes.get(slave).map(|e| e.node.clone());
        let target_kme = target_node
            .as_ref()
            .and_then(|n| cfg.neighbours.get(n).map(|e| e.kme.clone()))
            .unwrap_or_else(|| cfg.kme.clone());
        let _ = master;
        let Some(link) = self.link_to_sae(slave) else {
            return Ok(PairStatus {
                source_kme: cfg.kme.clone(),
                target_kme,
                limits,
                stored_key_count: 0,
                max_key_count: 0,
            });
        };
        let (available, capacity) = if link.allocator() {
            let p = link.pool();
            (p.available_bytes(), p.capacity_bytes())
        } else {
            // The allocator holds the truth; ask it now (never cached).
            let mut client = link.setup.client.clone();
            let mut r = tonic::Request::new(pb::PoolLevelRequest {
                link_id: link.setup.id.to_string(),
            });
            r.set_timeout(cfg.peer_timeout);
            match client.pool_level(r).await {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    (reply.available_bytes, reply.capacity_bytes)
                }
                Err(_) => (0, link.pool().capacity_bytes()),
            }
        };
        Ok(PairStatus {
            source_kme: cfg.kme.clone(),
            target_kme,
            limits,
            stored_key_count: available / key_bytes,
            max_key_count: capacity / key_bytes,
        })
    }

    async fn enc_keys(&self, req: EncKeysRequest) -> Result<Vec<DeliveredKey>, ServiceError> {
        if !req.additional_slaves.is_empty() {
            // Multicast is advertised as unsupported (max_SAE_ID_count 0); the front end refuses
            // it before we get here.
            return Err(ServiceError::PeerUnavailable(
                "multicast not supported".into(),
            ));
        }
        let Some(link) = self.link_to_sae(&req.slave) else {
            return Err(ServiceError::PeerUnavailable(
                "no link towards the slave's KME".into(),
            ));
        };
        self.enc_remote(req, link).await
    }

    async fn dec_keys(&self, req: DecKeysRequest) -> Result<Vec<DeliveredKey>, ServiceError> {
        let now = self.inner.clock.now();
        let out = self
            .inner
            .writer
            .run(
                move |tx| -> Result<Result<Vec<DeliveredKey>, ServiceError>, StoreError> {
                    // Check every key first (all or nothing), in the policy's order: existence for
                    // this master (400), then the caller's right to it (401).
                    let mut metas = Vec::with_capacity(req.key_ids.len());
                    for id in &req.key_ids {
                        match tx.key_meta(*id)? {
                            Some(m)
                                if m.master == req.master
                                    && m.expires_at > now
                                    && !m
                                        .slaves
                                        .iter()
                                        .any(|(s, done)| *s == req.slave && *done) =>
                            {
                                metas.push(m)
                            }
                            _ => return Ok(Err(ServiceError::KeysNotFound)),
                        }
                    }
                    if metas
                        .iter()
                        .any(|m| !m.slaves.iter().any(|(s, _)| *s == req.slave))
                    {
                        return Ok(Err(ServiceError::NotSlave));
                    }
                    let mut keys = Vec::with_capacity(req.key_ids.len());
                    for (id, mut meta) in req.key_ids.iter().zip(metas) {
                        let key = tx
                            .key_bytes(*id)?
                            .ok_or(StoreError::Corrupt("key bytes vanished"))?;
                        keys.push(DeliveredKey { id: *id, key });
                        for s in meta.slaves.iter_mut() {
                            if s.0 == req.slave {
                                s.1 = true;
                            }
                        }
                        if meta.slaves.iter().all(|(_, done)| *done) {
                            tx.retire_key(*id, &meta, now)?;
                        } else {
                            tx.update_key_meta(*id, &meta)?;
                        }
                    }
                    Ok(Ok(keys))
                },
            )
            .await;
        match out {
            Ok(Ok(r)) => r,
            Ok(Err(e)) | Err(e) => {
                tracing::error!(error = %e, "store failed while delivering keys");
                Err(ServiceError::Storage)
            }
        }
    }
}
