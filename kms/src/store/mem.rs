//! The in-memory model of the key store: the same records as the redb store ([`super::Store`]),
//! kept in ordered maps, with nothing sealed and nothing on disk.
//!
//! It runs the same [`super::ops`] over the same [`Tables`] contract, so a sequence of
//! operations gives the same outcomes on both; the tests in this module hold the two side by
//! side on random sequences. It serves as the reference the redb store is checked against, and as
//! a store for simulations that need no disk. A commit never fails here and its "disk" is the
//! value itself: whoever holds a `MemStore` across a simulated crash holds what was committed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use qkd_types::{BlockId, KeyId, KeyStreamId, LinkId, NodeId, SaeId, Secret, UnixMillis};

use super::ops::{KeyStore, Op, Outcome};
use super::space::FreeSpace;
use super::tables::{QueuedNotice, Tables, Tombstone, copy_range, read_runs};
use super::{PoolKey, Recovered, SpaceGauge, StoreError, StoredKey};
use crate::core::pool::{BlockMeta, Range, SEEN_DEVICE_IDS};
use crate::core::stream::StreamRecord;

/// The key store in memory.
#[derive(Debug, Default)]
pub struct MemStore {
    links: BTreeMap<LinkId, u64>,
    block_meta: BTreeMap<(LinkId, u64), BlockMeta>,
    block_data: BTreeMap<(LinkId, u64), Secret>,
    device_ids: BTreeMap<(LinkId, u64), BlockId>,
    keys: BTreeMap<KeyId, (StoredKey, Secret)>,
    expiry: BTreeSet<(UnixMillis, KeyId)>,
    tombstones: BTreeMap<KeyId, Tombstone>,
    tomb_time: BTreeSet<(UnixMillis, KeyId)>,
    pool: BTreeMap<KeyId, (PoolKey, Secret)>,
    notices: BTreeMap<(NodeId, u64), (UnixMillis, Vec<KeyId>)>,
    /// Key stream records, by stream ID (the redb table's order).
    streams: BTreeMap<KeyStreamId, StreamRecord>,
    /// Free bytes to report (unlimited unless a test sets it).
    free: Option<u64>,
    watermark: u64,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the store report `free` bytes against `watermark` (to test the low-space rules).
    pub fn set_space(&mut self, free: Option<u64>, watermark: u64) {
        self.free = free;
        self.watermark = watermark;
    }

    /// What a node restarting from this store recovers (as [`super::Store::open`] returns).
    pub fn recovered(&self) -> Recovered {
        let mut rec = Recovered::default();
        for (link, next) in &self.links {
            rec.links.insert(link.clone(), (*next, Vec::new()));
        }
        for ((link, seq), meta) in &self.block_meta {
            rec.links
                .entry(link.clone())
                .or_default()
                .1
                .push((*seq, meta.clone()));
        }
        rec.pool = self
            .pool
            .iter()
            .map(|(id, (m, _))| (*id, m.clone()))
            .collect();
        for ((link, _), id) in &self.device_ids {
            rec.device_ids.entry(link.clone()).or_default().push(*id);
        }
        rec
    }

    fn low_space(&self) -> Option<u64> {
        self.free.filter(|f| *f < self.watermark)
    }
}

impl KeyStore for MemStore {
    fn apply(&mut self, ops: Vec<Op>) -> Result<Vec<Result<Outcome, StoreError>>, StoreError> {
        Ok(ops.into_iter().map(|op| op.execute(self)).collect())
    }

    fn inspect(&mut self, read: &mut dyn FnMut(&mut dyn Tables)) -> Result<(), StoreError> {
        read(self);
        Ok(())
    }

    fn gauge(&self) -> SpaceGauge {
        SpaceGauge {
            space: Arc::new(Fixed(self.free)),
            watermark: self.watermark,
        }
    }
}

/// Free space as the model reports it.
#[derive(Debug)]
struct Fixed(Option<u64>);

impl FreeSpace for Fixed {
    fn available(&self) -> std::io::Result<u64> {
        Ok(self.0.unwrap_or(u64::MAX))
    }
    fn reserved(&self) -> std::io::Result<u64> {
        Ok(0)
    }
    fn reserve(&self, _bytes: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn release(&self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Tables for MemStore {
    fn admit_ingest(&self) -> Result<(), StoreError> {
        match self.low_space() {
            Some(available) => Err(StoreError::LowSpace {
                available,
                watermark: self.watermark,
            }),
            None => Ok(()),
        }
    }

    fn put_block(
        &mut self,
        link: &LinkId,
        seq: u64,
        meta: &BlockMeta,
        key: &Secret,
    ) -> Result<(), StoreError> {
        self.admit_ingest()?;
        self.block_data.insert((link.clone(), seq), key.duplicate());
        self.block_meta.insert((link.clone(), seq), meta.clone());
        self.device_ids.insert((link.clone(), seq), meta.id);
        if let Some(old) = seq.checked_sub(SEEN_DEVICE_IDS as u64) {
            self.device_ids.remove(&(link.clone(), old));
        }
        let next = self.links.entry(link.clone()).or_insert(0);
        *next = (*next).max(seq + 1);
        Ok(())
    }

    fn put_block_meta(
        &mut self,
        link: &LinkId,
        seq: u64,
        meta: &BlockMeta,
    ) -> Result<(), StoreError> {
        self.block_meta.insert((link.clone(), seq), meta.clone());
        Ok(())
    }

    fn delete_block(&mut self, link: &LinkId, seq: u64) -> Result<(), StoreError> {
        self.block_meta.remove(&(link.clone(), seq));
        self.block_data.remove(&(link.clone(), seq));
        Ok(())
    }

    fn read_ranges(&mut self, link: &LinkId, ranges: &[Range]) -> Result<Secret, StoreError> {
        read_runs(ranges, |r, to| {
            let block = self
                .block_data
                .get(&(link.clone(), r.block_seq))
                .ok_or(StoreError::Corrupt("block missing"))?;
            copy_range(block, r, to)
        })
    }

    fn key_id_used(&self, id: KeyId) -> Result<bool, StoreError> {
        Ok(self.keys.contains_key(&id) || self.tombstones.contains_key(&id))
    }

    fn put_key(&mut self, id: KeyId, meta: &StoredKey, key: &Secret) -> Result<(), StoreError> {
        self.admit_ingest()?;
        if let Some((old, _)) = self.keys.insert(id, (meta.clone(), key.duplicate())) {
            self.expiry.remove(&(old.expires_at, id));
        }
        self.expiry.insert((meta.expires_at, id));
        Ok(())
    }

    fn key_meta(&self, id: KeyId) -> Result<Option<StoredKey>, StoreError> {
        Ok(self.keys.get(&id).map(|(m, _)| m.clone()))
    }

    fn key_bytes(&self, id: KeyId) -> Result<Option<Secret>, StoreError> {
        Ok(self.keys.get(&id).map(|(_, k)| k.duplicate()))
    }

    fn update_key_meta(&mut self, id: KeyId, meta: &StoredKey) -> Result<(), StoreError> {
        let entry = self
            .keys
            .get_mut(&id)
            .ok_or(StoreError::Corrupt("key vanished"))?;
        entry.0 = meta.clone();
        Ok(())
    }

    fn retire_key(
        &mut self,
        id: KeyId,
        meta: &StoredKey,
        now: UnixMillis,
    ) -> Result<(), StoreError> {
        self.keys.remove(&id);
        self.expiry.remove(&(meta.expires_at, id));
        self.put_tombstone(id, &meta.master, meta.slaves.first().map(|s| &s.0), now)
    }

    fn put_tombstone(
        &mut self,
        id: KeyId,
        master: &SaeId,
        slave: Option<&SaeId>,
        now: UnixMillis,
    ) -> Result<(), StoreError> {
        if let Some((at, _, _)) = self
            .tombstones
            .insert(id, (now, master.clone(), slave.cloned()))
        {
            self.tomb_time.remove(&(at, id));
        }
        self.tomb_time.insert((now, id));
        Ok(())
    }

    fn put_pool_key(&mut self, id: KeyId, meta: &PoolKey, key: &Secret) -> Result<(), StoreError> {
        self.admit_ingest()?;
        self.pool.insert(id, (meta.clone(), key.duplicate()));
        Ok(())
    }

    fn has_pool_key(&self, id: KeyId) -> Result<bool, StoreError> {
        Ok(self.pool.contains_key(&id))
    }

    fn take_pool_key(&mut self, id: KeyId) -> Result<Option<(PoolKey, Secret)>, StoreError> {
        Ok(self.pool.remove(&id))
    }

    fn tombstone(&self, id: KeyId) -> Result<Option<Tombstone>, StoreError> {
        Ok(self.tombstones.get(&id).cloned())
    }

    fn queue_notice(
        &mut self,
        dest: &NodeId,
        key_ids: &[KeyId],
        delivered_at: UnixMillis,
    ) -> Result<(), StoreError> {
        let seq = self
            .notices
            .range((dest.clone(), 0)..=(dest.clone(), u64::MAX))
            .next_back()
            .map_or(0, |((_, s), _)| s + 1);
        self.notices
            .insert((dest.clone(), seq), (delivered_at, key_ids.to_vec()));
        Ok(())
    }

    fn queued_notices(
        &self,
        after: Option<&NodeId>,
        limit: usize,
    ) -> Result<Vec<QueuedNotice>, StoreError> {
        Ok(self
            .notices
            .iter()
            .skip_while(|((dest, _), _)| after.is_some_and(|a| dest <= a))
            .take(limit)
            .map(|((dest, seq), (at, ids))| (dest.clone(), *seq, *at, ids.clone()))
            .collect())
    }

    fn drop_notice(&mut self, dest: &NodeId, seq: u64) -> Result<(), StoreError> {
        self.notices.remove(&(dest.clone(), seq));
        Ok(())
    }

    fn set_key_expiry(
        &mut self,
        id: KeyId,
        meta: &StoredKey,
        expires_at: UnixMillis,
    ) -> Result<(), StoreError> {
        self.expiry.remove(&(meta.expires_at, id));
        self.expiry.insert((expires_at, id));
        let meta = StoredKey {
            expires_at,
            ..meta.clone()
        };
        self.update_key_meta(id, &meta)
    }

    fn keys_after(
        &self,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<(KeyId, StoredKey)>, StoreError> {
        let range = match after {
            Some(a) => self
                .keys
                .range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => self.keys.range(..),
        };
        Ok(range
            .take(limit)
            .map(|(id, (m, _))| (*id, m.clone()))
            .collect())
    }

    fn expired_keys(
        &self,
        now: UnixMillis,
        limit: usize,
    ) -> Result<Vec<(KeyId, StoredKey)>, StoreError> {
        self.expiry
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(limit)
            .map(|(_, id)| {
                self.key_meta(*id)?
                    .map(|m| (*id, m))
                    .ok_or(StoreError::Corrupt("expiry index names no key"))
            })
            .collect()
    }

    fn prune_tombstones(&mut self, before: UnixMillis, limit: usize) -> Result<usize, StoreError> {
        let old: Vec<(UnixMillis, KeyId)> = self
            .tomb_time
            .iter()
            .take_while(|(at, _)| *at < before)
            .take(limit)
            .copied()
            .collect();
        for k in &old {
            self.tomb_time.remove(k);
            self.tombstones.remove(&k.1);
        }
        Ok(old.len())
    }

    fn stream(&self, id: KeyStreamId) -> Result<Option<StreamRecord>, StoreError> {
        Ok(self.streams.get(&id).cloned())
    }

    fn put_stream(&mut self, record: &StreamRecord) -> Result<(), StoreError> {
        self.streams.insert(record.id, record.clone());
        Ok(())
    }

    fn delete_stream(&mut self, id: KeyStreamId) -> Result<(), StoreError> {
        self.streams.remove(&id);
        Ok(())
    }

    fn streams(&self) -> Result<Vec<StreamRecord>, StoreError> {
        Ok(self.streams.values().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    //! The model and the redb store, side by side: the same random batches of operations give
    //! the same outcomes, the same records, and the same state recovered at a restart.

    use std::path::Path;

    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::api::{KeyLimits, KeyProfile};
    use crate::core::fit::FitContext;
    use crate::core::pool::BlockState;
    use crate::core::stream::{Qos, stream_key_id};
    use crate::store::ops::*;
    use crate::store::vault::FileKek;
    use crate::store::{MadeUnder, Store};

    const PROFILE: KeyProfile = KeyProfile {
        policy: "QKD+PQ+T",
        suite: "X25519/ML-KEM-768",
    };

    fn open(dir: &Path) -> (Store, Recovered) {
        std::fs::create_dir_all(dir.join("keys")).unwrap();
        let kek = FileKek::open(&dir.join("keys"), 1_000, 86_400_000).unwrap();
        Store::open(&dir.join("store.redb"), &kek).unwrap()
    }

    fn sae(s: &str) -> SaeId {
        SaeId::parse(s).unwrap()
    }

    /// A small universe, so that operations collide: few links, blocks, keys, SAEs and nodes.
    struct Gen {
        rng: ChaCha8Rng,
        ids: Vec<KeyId>,
        saes: Vec<SaeId>,
        nodes: Vec<NodeId>,
        links: Vec<LinkId>,
        fit: Arc<FitContext>,
        streams: Vec<KeyStreamId>,
    }

    impl Gen {
        fn new(seed: u64) -> Self {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut ids: Vec<KeyId> = (0..10)
                .map(|_| {
                    let mut b = [0u8; 16];
                    rng.fill(&mut b);
                    KeyId::from_bytes(b)
                })
                .collect();
            let streams: Vec<KeyStreamId> = (0..2)
                .map(|_| {
                    let mut b = [0u8; 16];
                    rng.fill(&mut b);
                    KeyStreamId::from_bytes(b)
                })
                .collect();
            // The derived key IDs of the streams' first indices (streams of ENC-A to ENC-B).
            for stream in &streams {
                ids.extend((0..6).map(|i| stream_key_id(*stream, &sae("ENC-A"), &sae("ENC-B"), i)));
            }
            Self {
                streams,
                rng,
                ids,
                saes: ["ENC-A", "ENC-B", "ENC-C"]
                    .iter()
                    .map(|s| SaeId::parse(s).unwrap())
                    .collect(),
                nodes: ["N1", "N2"]
                    .iter()
                    .map(|s| NodeId::parse(s).unwrap())
                    .collect(),
                links: ["L1", "L2"]
                    .iter()
                    .map(|s| LinkId::parse(s).unwrap())
                    .collect(),
                fit: Arc::new(FitContext::new([], PROFILE, KeyLimits::default())),
            }
        }

        fn stream(&mut self) -> KeyStreamId {
            let s = self.streams.clone();
            self.pick(&s)
        }

        /// Stream keys of indices `first..first + n` (ENC-A to ENC-B), and what they share.
        fn stream_keys(
            &mut self,
            stream: KeyStreamId,
            first: u64,
            n: u64,
        ) -> (Vec<(KeyId, Secret)>, StoredKey) {
            let keys = (first..first + n)
                .map(|i| {
                    let id = stream_key_id(stream, &sae("ENC-A"), &sae("ENC-B"), i);
                    (id, self.secret(32))
                })
                .collect();
            let meta = StoredKey {
                request: [9; 16],
                master: sae("ENC-A"),
                slaves: vec![(sae("ENC-B"), false)],
                size_bits: 256,
                expires_at: self.time(),
                made_under: Some(MadeUnder {
                    policy: PROFILE.policy.into(),
                    suite: PROFILE.suite.into(),
                }),
                pool: false,
            };
            (keys, meta)
        }

        fn pick<T: Clone>(&mut self, v: &[T]) -> T {
            v[self.rng.random_range(0..v.len())].clone()
        }

        fn id(&mut self) -> KeyId {
            let ids = self.ids.clone();
            self.pick(&ids)
        }

        fn ids(&mut self) -> Vec<KeyId> {
            let n = self.rng.random_range(1..4);
            (0..n).map(|_| self.id()).collect()
        }

        fn sae(&mut self) -> SaeId {
            let s = self.saes.clone();
            self.pick(&s)
        }

        fn node(&mut self) -> NodeId {
            let n = self.nodes.clone();
            self.pick(&n)
        }

        fn link(&mut self) -> LinkId {
            let l = self.links.clone();
            self.pick(&l)
        }

        fn secret(&mut self, len: usize) -> Secret {
            let mut s = Secret::zeroed(len);
            self.rng.fill(s.expose_mut());
            s
        }

        fn time(&mut self) -> u64 {
            self.rng.random_range(0..100)
        }

        /// Metadata of block `seq` of `link`; its device ID is always the same (as a device's
        /// is), since the redb store binds a block's bytes to it.
        fn block_meta(&mut self, link: &LinkId, seq: u64) -> BlockMeta {
            let len = 32;
            let a = self.rng.random_range(0..len);
            let b = self.rng.random_range(a..=len);
            let mut id = [0u8; 16];
            id[0] = link.as_str().as_bytes()[1];
            id[8..].copy_from_slice(&seq.to_be_bytes());
            BlockMeta {
                id: BlockId::from_bytes(id),
                len,
                state: if self.rng.random_bool(0.5) {
                    BlockState::Pending
                } else {
                    BlockState::Available
                },
                taken: if a < b { vec![(a, b)] } else { Vec::new() },
            }
        }

        fn stored(&mut self) -> StoredKey {
            let master = self.sae();
            let n = self.rng.random_range(1..3);
            let slaves = (0..n).map(|_| (self.sae(), false)).collect();
            StoredKey {
                request: [7; 16],
                master,
                slaves,
                size_bits: 256,
                expires_at: self.time(),
                made_under: self.rng.random_bool(0.9).then(|| MadeUnder {
                    policy: PROFILE.policy.into(),
                    suite: PROFILE.suite.into(),
                }),
                pool: self.rng.random_bool(0.5),
            }
        }

        fn op(&mut self) -> Op {
            match self.rng.random_range(0..22) {
                0 => {
                    let link = self.link();
                    let blocks = (0..self.rng.random_range(1..3))
                        .map(|_| {
                            let seq = self.rng.random_range(0..6);
                            (seq, self.block_meta(&link, seq), self.secret(32))
                        })
                        .collect();
                    PutBlocks { link, blocks }.into()
                }
                1 => {
                    let link = self.link();
                    let metas = (0..self.rng.random_range(0..2))
                        .map(|_| {
                            let seq = self.rng.random_range(0..6);
                            (seq, self.block_meta(&link, seq))
                        })
                        .collect();
                    let erase = (0..self.rng.random_range(0..2))
                        .map(|_| self.rng.random_range(0..6))
                        .collect();
                    WriteBlocks { link, metas, erase }.into()
                }
                2 => {
                    let link = self.link();
                    let offset = self.rng.random_range(0..40);
                    let ranges = vec![Range {
                        block_seq: self.rng.random_range(0..6),
                        offset,
                        len: self.rng.random_range(1..16),
                    }];
                    let seq = self.rng.random_range(0..6);
                    let metas = vec![(seq, self.block_meta(&link, seq))];
                    TakeLinkKey {
                        link,
                        ranges,
                        metas,
                        erase: Vec::new(),
                    }
                    .into()
                }
                3 => {
                    let meta = PoolKey {
                        master: self.sae(),
                        slaves: vec![self.sae()],
                        size_bits: 256,
                        created_at: self.time(),
                        made_under: None,
                    };
                    let keys = self
                        .ids()
                        .into_iter()
                        .map(|id| (id, self.secret(32)))
                        .collect();
                    PutPoolKeys { meta, keys }.into()
                }
                4 => DiscardPoolKeys { ids: self.ids() }.into(),
                5 => DeliverPoolKeys {
                    ids: self.ids(),
                    now: self.time(),
                    notify: vec![self.node()],
                }
                .into(),
                6 => RecordIssued {
                    keys: vec![(self.id(), self.sae(), self.sae())],
                    now: self.time(),
                    notify: vec![self.node()],
                }
                .into(),
                7 | 8 => {
                    let meta = self.stored();
                    let keys = self
                        .ids()
                        .into_iter()
                        .map(|id| (id, self.secret(32)))
                        .collect();
                    StoreKeys {
                        meta,
                        keys,
                        stream: None,
                    }
                    .into()
                }
                9 | 10 => FetchForSlave {
                    master: self.sae(),
                    slave: self.sae(),
                    ids: self.ids(),
                    master_here: self.rng.random_bool(0.5),
                    ttl_ms: 50,
                    now: self.time(),
                    fit: self.fit.clone(),
                }
                .into(),
                11 => MoveExpiry {
                    expiries: self.ids().into_iter().map(|id| (id, self.time())).collect(),
                    masters: [self.sae()].into_iter().collect(),
                }
                .into(),
                12 => Expire {
                    now: self.time(),
                    prune_before: self.time(),
                    limit: self.rng.random_range(1..4),
                }
                .into(),
                13 => DropNotices {
                    notices: vec![(self.node(), self.rng.random_range(0..3))],
                }
                .into(),
                14 => KeysAfter {
                    after: self.rng.random_bool(0.5).then(|| self.id()),
                    limit: 5,
                }
                .into(),
                15 => OpenStream {
                    caller: self.sae(),
                    peer: self.sae(),
                    id: self.stream(),
                    join: self.rng.random_bool(0.5),
                    qos: Qos {
                        chunk_bytes: 32,
                        ttl_s: 60,
                        timeout_ms: 100,
                        ..Qos::default()
                    },
                }
                .into(),
                16 | 17 => TakeStreamKey {
                    caller: self.sae(),
                    id: self.stream(),
                    index: self.rng.random_range(0..6),
                    now: self.time(),
                    fit: self.fit.clone(),
                }
                .into(),
                18 => CloseStream {
                    caller: self.sae(),
                    id: self.stream(),
                    now: self.time(),
                    max_erase: self.rng.random_range(0..4),
                }
                .into(),
                19 => {
                    if self.rng.random_bool(0.3) {
                        ResumeStreams {}.into()
                    } else {
                        ReserveNext { id: self.stream() }.into()
                    }
                }
                20 => {
                    let id = self.stream();
                    let first = self.rng.random_range(0..4);
                    let n = self.rng.random_range(1..3);
                    let reserved = self
                        .rng
                        .random_bool(0.6)
                        .then(|| self.stream_keys(id, first, n));
                    SettleReservation {
                        id,
                        first,
                        n,
                        expires_at: self.time(),
                        reserved,
                        void: self.rng.random_bool(0.5),
                    }
                    .into()
                }
                _ => {
                    let id = self.stream();
                    let first = self.rng.random_range(0..4);
                    let n = self.rng.random_range(1..3);
                    let (keys, meta) = self.stream_keys(id, first, n);
                    StoreKeys {
                        meta,
                        keys,
                        stream: Some((id, first)),
                    }
                    .into()
                }
            }
        }
    }

    /// An outcome with its key bytes spelled out, to compare two stores' answers.
    fn spelled(r: &Result<Outcome, StoreError>) -> String {
        fn handed(h: &[Handed]) -> String {
            h.iter()
                .map(|h| format!("{:?}:{:?}:{:02x?}", h.id, h.made_under, h.key.expose()))
                .collect()
        }
        match r {
            Ok(Outcome::TakeLinkKey(s)) => format!("bytes {:02x?}", s.expose()),
            Ok(Outcome::DeliverPoolKeys(h)) => handed(h),
            Ok(Outcome::FetchForSlave(Ok(h))) => handed(h),
            Ok(Outcome::TakeStreamKey((Ok(k), timeout))) => format!(
                "{:?}:{:?}:{}:{}:{:?}:{:02x?} {timeout}",
                k.id,
                k.made_under,
                k.master,
                k.slave,
                k.role,
                k.key.expose()
            ),
            other => format!("{other:?}"),
        }
    }

    /// Everything a reader can see, through the records.
    fn records(t: &mut dyn Tables, ids: &[KeyId]) -> String {
        let mut out = format!(
            "{:?}\n{:?}\n{:?}\n",
            t.keys_after(None, usize::MAX).unwrap(),
            t.queued_notices(None, usize::MAX).unwrap(),
            t.streams().unwrap()
        );
        for id in ids {
            out += &format!(
                "{id:?} used={:?} tomb={:?} bytes={:02x?}\n",
                t.key_id_used(*id).unwrap(),
                t.tombstone(*id).unwrap(),
                t.key_bytes(*id).unwrap().map(|k| k.expose().to_vec()),
            );
        }
        out
    }

    fn recovered(r: &Recovered) -> String {
        let mut links: Vec<_> = r.links.iter().collect();
        links.sort_by(|a, b| a.0.cmp(b.0));
        let mut pool = r.pool.clone();
        pool.sort_by_key(|a| a.0);
        let mut ids: Vec<_> = r.device_ids.iter().collect();
        ids.sort_by(|a, b| a.0.cmp(b.0));
        format!("{links:?}\n{pool:?}\n{ids:?}")
    }

    /// Runs `steps` random batches of seed `seed` against the model and a redb store, comparing
    /// every outcome; before a batch, `crash` may lose the redb store's unsynced writes and
    /// reopen it (every batch answered must survive it). Then compares the records held and
    /// what a restart recovers.
    fn agree(
        seed: u64,
        open: &mut dyn FnMut() -> (Store, Recovered),
        crash: &mut dyn FnMut(&mut Gen) -> bool,
    ) {
        let mut disk = open().0;
        // Half the seeds write tombstone runs and merge them after a few tombstones.
        let runs = seed % 2 == 1;
        if runs {
            disk.set_tombstone_run(3);
        }
        let mut model = MemStore::new();
        let mut g = Gen::new(seed);
        let mut crashes = 0;
        let mut most_runs = 0;
        for step in 0..150 {
            if crash(&mut g) {
                drop(disk);
                disk = open().0;
                if runs {
                    disk.set_tombstone_run(3);
                }
                crashes += 1;
            }
            let n = g.rng.random_range(1..4);
            let (a, b): (Vec<Op>, Vec<Op>) = (0..n)
                .map(|_| {
                    // The same operation twice: draw it, then replay the generator's
                    // choices by drawing from a clone.
                    let mut twin = Gen {
                        rng: g.rng.clone(),
                        ids: g.ids.clone(),
                        saes: g.saes.clone(),
                        nodes: g.nodes.clone(),
                        links: g.links.clone(),
                        fit: g.fit.clone(),
                        streams: g.streams.clone(),
                    };
                    (g.op(), twin.op())
                })
                .unzip();
            let on_disk = disk.apply(a).unwrap();
            // As the writer does once the batch's answers have left: runs and merge steps.
            disk.upkeep();
            most_runs = most_runs.max(disk.index.tombs.runs().len());
            let in_memory = model.apply(b).unwrap();
            let on_disk: Vec<String> = on_disk.iter().map(spelled).collect();
            let in_memory: Vec<String> = in_memory.iter().map(spelled).collect();
            assert_eq!(
                on_disk, in_memory,
                "seed {seed} step {step} after {crashes} crashes"
            );
        }
        assert!(
            !runs || most_runs >= 2,
            "seed {seed}: at most {most_runs} tombstone runs at once: runs and merges went unexercised"
        );
        let ids = g.ids.clone();
        let mut disk_records = String::new();
        disk.inspect(&mut |t| disk_records = records(t, &ids))
            .unwrap();
        let mut model_records = String::new();
        model
            .inspect(&mut |t| model_records = records(t, &ids))
            .unwrap();
        assert_eq!(disk_records, model_records, "seed {seed}");
        drop(disk);
        let (_, at_restart) = open();
        assert_eq!(
            recovered(&at_restart),
            recovered(&model.recovered()),
            "seed {seed}"
        );
    }

    #[test]
    fn the_model_and_the_redb_store_agree_on_random_operations() {
        for seed in 0..12 {
            let dir = tempfile::tempdir().unwrap();
            let mut open = || open(dir.path());
            agree(seed, &mut open, &mut |_| false);
        }
    }

    /// The same on a simulated disk whose machine crashes between batches, losing every write
    /// not synced: batches committed through the write-ahead log (a small one, so that it
    /// wraps and checkpoints often) are applied again at open, and nothing answered is lost.
    #[test]
    fn the_model_and_the_redb_store_agree_across_crashes_that_lose_unsynced_writes() {
        use crate::store::{StoreOptions, faulty::Disk};
        for seed in 0..12 {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("keys")).unwrap();
            let kek = FileKek::open(&dir.path().join("keys"), 1_000, 86_400_000).unwrap();
            let disk = Disk::new(1 << 30);
            let opts = StoreOptions {
                log_bytes: 8 << 10,
                ..StoreOptions::default()
            };
            let mut open = || {
                Store::open_backend(disk.backend(), disk.log(), &kek, opts, disk.space(), 0)
                    .unwrap()
            };
            let mut crash = |g: &mut Gen| {
                let now = g.rng.random_range(0..8) == 0;
                if now {
                    disk.crash();
                }
                now
            };
            agree(seed, &mut open, &mut crash);
        }
    }

    /// Delivering pool keys is all or nothing, in the model and on disk alike: one key missing
    /// leaves the others in the pool, with no tombstone.
    #[test]
    fn delivering_pool_keys_with_one_missing_takes_none() {
        on_both_stores(|store| {
            let (here, gone) = (KeyId::random(), KeyId::random());
            let meta = PoolKey {
                master: sae("ENC-A"),
                slaves: vec![sae("ENC-B")],
                size_bits: 256,
                created_at: 1_000,
                made_under: None,
            };
            let put = PutPoolKeys {
                meta,
                keys: vec![(here, Secret::zeroed(32))],
            };
            store.apply(vec![put.into()]).unwrap();
            // The missing key first, then after one that was there.
            for ids in [vec![gone, here], vec![here, gone]] {
                let deliver = DeliverPoolKeys {
                    ids,
                    now: 2_000,
                    notify: Vec::new(),
                };
                let out = store.apply(vec![deliver.into()]).unwrap();
                assert!(matches!(out[0], Err(StoreError::Corrupt(_))), "{out:?}");
                let mut held = (false, true);
                store
                    .inspect(&mut |t| {
                        held = (
                            t.has_pool_key(here).unwrap(),
                            t.tombstone(here).unwrap().is_some(),
                        )
                    })
                    .unwrap();
                assert_eq!(held, (true, false), "a key taken by a refused delivery");
            }
        });
    }

    /// The outbox is read in (destination, sequence) order, and a page can start after a
    /// destination: the notice pass reads past one it cannot reach.
    #[test]
    fn queued_notices_can_start_after_a_destination() {
        on_both_stores(|store| {
            let node = |n: &str| NodeId::parse(n).unwrap();
            let mut got = Vec::new();
            store
                .inspect(&mut |t| {
                    for (dest, at) in [("D", 1), ("B", 2), ("D", 3), ("C", 4), ("B", 5)] {
                        t.queue_notice(&node(dest), &[KeyId::random()], at).unwrap();
                    }
                    for after in [
                        None,
                        Some(node("A")),
                        Some(node("B")),
                        Some(node("C")),
                        Some(node("D")),
                    ] {
                        let page = t.queued_notices(after.as_ref(), 10).unwrap();
                        got.push(
                            page.iter()
                                .map(|(d, _, at, _)| (d.as_str().to_owned(), *at))
                                .collect::<Vec<_>>(),
                        );
                    }
                    got.push(
                        t.queued_notices(Some(&node("B")), 1)
                            .unwrap()
                            .iter()
                            .map(|(d, _, at, _)| (d.as_str().to_owned(), *at))
                            .collect(),
                    );
                })
                .unwrap();
            let all = [("B", 2), ("B", 5), ("C", 4), ("D", 1), ("D", 3)]
                .map(|(d, at)| (d.to_owned(), at))
                .to_vec();
            assert_eq!(got[0], all);
            assert_eq!(got[1], all, "after a destination with none queued");
            assert_eq!(got[2], all[2..].to_vec());
            assert_eq!(got[3], all[3..].to_vec());
            assert!(got[4].is_empty());
            assert_eq!(
                got[5],
                all[2..3].to_vec(),
                "the limit counts from the start"
            );
        });
    }

    /// Runs `f` on the model and on a fresh redb store.
    fn on_both_stores(mut f: impl FnMut(&mut dyn KeyStore)) {
        let dir = tempfile::tempdir().unwrap();
        let (mut redb, _) = open(dir.path());
        f(&mut MemStore::new());
        f(&mut redb);
    }

    #[test]
    fn one_notice_moves_each_key_to_its_own_expiry_never_later() {
        on_both_stores(|store| {
            let (early, late, other) = (KeyId::random(), KeyId::random(), KeyId::random());
            let waiting = |master: &str| StoredKey {
                request: [7; 16],
                master: sae(master),
                slaves: vec![(sae("ENC-B"), false)],
                size_bits: 256,
                expires_at: 10_000,
                made_under: None,
                pool: true,
            };
            let mut put = Vec::new();
            for (id, master) in [(early, "ENC-A"), (late, "ENC-A"), (other, "ENC-C")] {
                put.push(
                    StoreKeys {
                        meta: waiting(master),
                        keys: vec![(id, Secret::zeroed(32))],
                        stream: None,
                    }
                    .into(),
                );
            }
            store.apply(put).unwrap();
            let notice = MoveExpiry {
                // `late` would expire after its current expiry: it keeps it. `other`'s master is
                // not attached at the notice's source: it keeps it too.
                expiries: vec![(early, 4_000), (late, 12_000), (other, 3_000)],
                masters: [sae("ENC-A")].into(),
            };
            let out = store.apply(vec![notice.into()]).unwrap();
            assert!(
                matches!(&out[0], Ok(Outcome::MoveExpiry(m)) if m == &vec![(early, 4_000)]),
                "{out:?}"
            );
            let mut expiries = Vec::new();
            store
                .inspect(&mut |t| {
                    expiries = [early, late, other]
                        .iter()
                        .map(|id| t.key_meta(*id).unwrap().unwrap().expires_at)
                        .collect();
                })
                .unwrap();
            assert_eq!(expiries, vec![4_000, 10_000, 10_000]);
        });
    }

    #[test]
    fn below_the_watermark_new_material_is_refused_and_keys_are_still_served() {
        let mut m = MemStore::new();
        let fit = Arc::new(FitContext::new([], PROFILE, KeyLimits::default()));
        let (a, b) = (
            SaeId::parse("ENC-A").unwrap(),
            SaeId::parse("ENC-B").unwrap(),
        );
        let id = KeyId::random();
        let meta = StoredKey {
            request: [0; 16],
            master: a.clone(),
            slaves: vec![(b.clone(), false)],
            size_bits: 256,
            expires_at: 1_000,
            made_under: Some(MadeUnder {
                policy: PROFILE.policy.into(),
                suite: PROFILE.suite.into(),
            }),
            pool: true,
        };
        let store = |m: &mut MemStore, id| {
            m.apply(vec![
                StoreKeys {
                    meta: meta.clone(),
                    keys: vec![(id, Secret::zeroed(32))],
                    stream: None,
                }
                .into(),
            ])
            .unwrap()
            .pop()
            .unwrap()
        };
        assert!(matches!(store(&mut m, id), Ok(Outcome::StoreKeys(Ok(())))));
        m.set_space(Some(10), 100);
        assert!(m.gauge().admit_ingest().is_err());
        assert!(matches!(
            store(&mut m, KeyId::random()),
            Err(StoreError::LowSpace {
                available: 10,
                watermark: 100
            })
        ));
        let fetched = m
            .apply(vec![
                FetchForSlave {
                    master: a,
                    slave: b,
                    ids: vec![id],
                    master_here: false,
                    ttl_ms: 10,
                    now: 5,
                    fit,
                }
                .into(),
            ])
            .unwrap()
            .pop()
            .unwrap();
        assert!(matches!(fetched, Ok(Outcome::FetchForSlave(Ok(ref h))) if h.len() == 1));
    }
}
