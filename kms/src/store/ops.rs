//! Store operations as data.
//!
//! Every change the key manager makes to its store is one of the operations below: a value that
//! names what to do and carries everything it needs (including `now` and the configuration keys
//! are held against), never a closure. The writer ([`crate::writer`]) queues them and runs a batch
//! of them in one transaction of a [`KeyStore`]; each runs over the store's records
//! ([`Tables`]) the same way whichever store holds them: redb on disk ([`super::Store`]) or the
//! in-memory model ([`super::mem::MemStore`]). Because an operation is data and deterministic given
//! the records it reads, a batch could be shipped as a log entry to replicas that apply it to the
//! same state (a replicated store for high availability is the intended next step; nothing
//! replicates yet).
//!
//! Every operation checks everything before it writes anything, so an operation that fails
//! leaves the transaction as it found it and the rest of its batch still commits. Four are
//! read-only ([`Op::writes`] is false) and would never be shipped.

use std::collections::BTreeSet;
use std::sync::Arc;

use qkd_types::{KeyId, KeyStreamId, LinkId, NodeId, SaeId, Secret, UnixMillis};

use super::tables::{QueuedNotice, Tables};
use super::{MadeUnder, PoolKey, SpaceGauge, StoreError, StoredKey};
use crate::core::fetch::{self, FetchRefusal, Found};
use crate::core::fit::FitContext;
use crate::core::pool::{BlockMeta, Range};
use crate::core::stream::{Qos, Role, StreamError, StreamRecord};

/// A store: runs batches of operations in one durable transaction.
pub trait KeyStore: Send + std::fmt::Debug {
    /// Runs `ops` in order in one transaction and commits it durably. Each operation's result is
    /// its own (a failed one changed nothing; the others still commit). `Err` if the transaction
    /// itself failed: nothing of the batch is durable, and the node must restart from its store.
    fn apply(&mut self, ops: Vec<Op>) -> Result<Vec<Result<Outcome, StoreError>>, StoreError>;

    /// Reads records in a transaction that is never committed (the simulation's invariant checks
    /// and tests).
    fn inspect(&mut self, read: &mut dyn FnMut(&mut dyn Tables)) -> Result<(), StoreError>;

    /// The store's free-space gauge.
    fn gauge(&self) -> SpaceGauge;

    /// Bytes of records (table key plus value) that committed transactions have written so far:
    /// what `qkd_store_bytes_written_total` counts. A store that does not count says 0.
    fn bytes_written(&self) -> u64 {
        0
    }

    /// Batches [`KeyStore::apply`] committed so far (one that changed nothing is dropped, not
    /// committed): what `qkd_store_commits_total` counts. `None` for a store that does not
    /// count; the writer then counts every batch.
    fn commits(&self) -> Option<u64> {
        None
    }

    /// Starts a fresh data-key epoch under a new KEK period while the store is open (an
    /// operator's rotation, [`super::Store::start_epoch_live`]); the older epochs are retired by
    /// [`KeyStore::rotation_step`]s. A store that cannot says [`StoreError::NoLiveRotation`].
    fn rotate_kek(&mut self, _now: UnixMillis) -> Result<super::KekRotation, StoreError> {
        Err(StoreError::NoLiveRotation)
    }

    /// One bounded step of the rotation pass in progress, if any (between batches).
    fn rotation_step(&mut self) -> Result<super::Rotation, StoreError> {
        Ok(super::Rotation::Done)
    }

    /// Upkeep after a batch, once its answers have left (the writer calls it then): the
    /// tombstone index's runs and merge steps, each in a durable transaction of its own, so that
    /// no answer waits for them. A failure is logged, and the upkeep is tried again after the
    /// next batch.
    fn upkeep(&mut self) {}
}

/// An operation whose result has a type of its own.
pub trait Operation: Into<Op> + Send + 'static {
    /// What it returns.
    type Output: Send + 'static;
    /// Its result out of an [`Outcome`]; `None` if the outcome is another operation's.
    fn output(outcome: Outcome) -> Option<Self::Output>;
}

macro_rules! operations {
    ($(
        $(#[$doc:meta])*
        $name:ident { $( $(#[$fdoc:meta])* $field:ident : $ty:ty ),* $(,)? } -> $out:ty;
    )*) => {
        $(
            $(#[$doc])*
            #[derive(Debug)]
            pub struct $name { $( $(#[$fdoc])* pub $field: $ty ),* }

            impl From<$name> for Op {
                fn from(op: $name) -> Op {
                    Op::$name(op)
                }
            }

            impl Operation for $name {
                type Output = $out;
                fn output(outcome: Outcome) -> Option<$out> {
                    match outcome {
                        Outcome::$name(v) => Some(v),
                        _ => None,
                    }
                }
            }
        )*

        /// A store operation.
        #[derive(Debug)]
        pub enum Op {
            $( $(#[$doc])* $name($name), )*
        }

        /// What an operation returned (same variant as its operation).
        #[derive(Debug)]
        pub enum Outcome {
            $(
                #[allow(missing_docs)]
                $name($out),
            )*
        }

        impl Op {
            /// Runs the operation over `t`.
            pub fn execute(self, t: &mut dyn Tables) -> Result<Outcome, StoreError> {
                match self {
                    $( Op::$name(op) => op.exec(t).map(Outcome::$name), )*
                }
            }

            /// The operation's name, for logs.
            pub fn name(&self) -> &'static str {
                match self {
                    $( Op::$name(_) => stringify!($name), )*
                }
            }
        }
    };
}

/// A key handed out, with the configuration it was made under.
#[derive(Debug)]
pub struct Handed {
    /// Its ID.
    pub id: KeyId,
    /// Its bytes.
    pub key: Secret,
    /// Policy and suite it was made under.
    pub made_under: Option<MadeUnder>,
}

operations! {
    /// New blocks of link key from a device (stored pending, or available where the peer already
    /// holds them). New key material: refused below the watermark.
    PutBlocks {
        /// The link.
        link: LinkId,
        /// (sequence, metadata, bytes) per block.
        blocks: Vec<(u64, BlockMeta, Secret)>,
    } -> ();
    /// Block metadata rewritten (made available, bytes taken) and blocks erased.
    WriteBlocks {
        /// The link.
        link: LinkId,
        /// New metadata by sequence.
        metas: Vec<(u64, BlockMeta)>,
        /// Blocks to erase (drained or discarded).
        erase: Vec<u64>,
    } -> ();
    /// Link bytes taken for one hop message: the bytes of `ranges` are read, and the blocks'
    /// metadata saying they are taken is written in the same transaction.
    TakeLinkKey {
        /// The link.
        link: LinkId,
        /// The bytes to take.
        ranges: Vec<Range>,
        /// The blocks' metadata with the ranges taken.
        metas: Vec<(u64, BlockMeta)>,
        /// Blocks drained by the take.
        erase: Vec<u64>,
    } -> Secret;
    /// Finished keys into their pair's pool (master side). New key material.
    PutPoolKeys {
        /// What every key shares.
        meta: PoolKey,
        /// The keys.
        keys: Vec<(KeyId, Secret)>,
    } -> ();
    /// Pool keys discarded (no longer fit the configuration, or expired).
    DiscardPoolKeys {
        /// The keys.
        ids: Vec<KeyId>,
    } -> ();
    /// Pool keys handed to their master: each leaves a tombstone, and a delivery notice is queued
    /// for every node of their slaves.
    DeliverPoolKeys {
        /// The keys, all in the pool.
        ids: Vec<KeyId>,
        /// Now.
        now: UnixMillis,
        /// Nodes to notify.
        notify: Vec<NodeId>,
    } -> Vec<Handed>;
    /// Keys made on demand were handed to their master: tombstones and delivery notices.
    RecordIssued {
        /// (key, master, first slave).
        keys: Vec<(KeyId, SaeId, SaeId)>,
        /// Now.
        now: UnixMillis,
        /// Nodes to notify.
        notify: Vec<NodeId>,
    } -> ();
    /// Relayed keys stored for their slaves here, unless an ID was ever used here (or a key
    /// stream's keys do not fit the stream's end here): then nothing is stored and the outcome
    /// says why. New key material.
    StoreKeys {
        /// What every key shares.
        meta: StoredKey,
        /// The keys.
        keys: Vec<(KeyId, Secret)>,
        /// The key stream and index of the first key, if the keys are a stream's: how far the
        /// stream's keys arrived is recorded in the same commit
        /// ([`super::streams::record_arrival`]).
        stream: Option<(KeyStreamId, u64)>,
    } -> Result<(), KeysRefused>;
    /// A slave fetches keys by ID: all or nothing, in the policy's order of checks
    /// ([`fetch::decide`]).
    FetchForSlave {
        /// The master named.
        master: SaeId,
        /// The calling slave.
        slave: SaeId,
        /// The key IDs, none repeated.
        ids: Vec<KeyId>,
        /// Whether the master is attached here.
        master_here: bool,
        /// Key TTL (how long a tombstone proves a key exists).
        ttl_ms: u64,
        /// Now.
        now: UnixMillis,
        /// The configuration keys must still fit.
        fit: Arc<FitContext>,
    } -> Result<Vec<Handed>, FetchRefusal>;
    /// A delivery notice: each waiting key named whose master is one of `masters` expires no
    /// later than the expiry given with it. Returns the keys whose expiry moved, with it.
    MoveExpiry {
        /// The keys named, each with its new expiry (a key TTL after its own delivery).
        expiries: Vec<(KeyId, UnixMillis)>,
        /// The SAEs attached at the node that sent the notice.
        masters: BTreeSet<SaeId>,
    } -> Vec<(KeyId, UnixMillis)>;
    /// Waiting keys erased (voided), leaving tombstones.
    RetireKeys {
        /// The keys and their metadata as read.
        keys: Vec<(KeyId, StoredKey)>,
        /// Now.
        now: UnixMillis,
    } -> ();
    /// Expired waiting keys erased, old tombstones pruned (at most `limit` of each), and the
    /// slave ends of key streams whose SAE never joined erased once their keys expired. Returns
    /// how many keys expired.
    Expire {
        /// Now.
        now: UnixMillis,
        /// Tombstones written before this are pruned.
        prune_before: UnixMillis,
        /// Most records of each kind.
        limit: usize,
    } -> usize;
    /// Queued delivery notices dropped (sent, or useless).
    DropNotices {
        /// (destination, sequence).
        notices: Vec<(NodeId, u64)>,
    } -> ();
    /// Read-only: waiting keys in key-ID order after `after`.
    KeysAfter {
        /// Start after this key.
        after: Option<KeyId>,
        /// Most keys.
        limit: usize,
    } -> Vec<(KeyId, StoredKey)>;
    /// Read-only: queued delivery notices, in (destination, sequence) order.
    QueuedNotices {
        /// Skip this destination and every one before it (`None`: from the first).
        after: Option<NodeId>,
        /// Most notices.
        limit: usize,
    } -> Vec<QueuedNotice>;
    /// Read-only: every key stream end held here (a reload checks them against the new
    /// configuration).
    Streams {} -> Vec<StreamRecord>;
    /// An SAE opens a key stream, or joins one opened at its peer's node
    /// ([`crate::core::stream::open`]); the stream's end is recorded here.
    OpenStream {
        /// The calling SAE.
        caller: SaeId,
        /// The SAE at the other end.
        peer: SaeId,
        /// The stream's ID (new, or the one joined).
        id: KeyStreamId,
        /// Whether the caller joins a stream opened at the other end.
        join: bool,
        /// The QoS granted.
        qos: Qos,
    } -> Result<StreamRecord, StreamError>;
    /// Read-only: a stream's QoS, for its SAEs only.
    StreamQos {
        /// The calling SAE.
        caller: SaeId,
        /// The stream.
        id: KeyStreamId,
    } -> Result<Qos, StreamError>;
    /// GET_KEY: the key at `index` of a stream, consumed and its delivery recorded if it is
    /// there ([`crate::core::stream::serve`]), otherwise why not; with the stream's QoS timeout
    /// (0 when the caller may not use the stream).
    TakeStreamKey {
        /// The calling SAE.
        caller: SaeId,
        /// The stream.
        id: KeyStreamId,
        /// The index asked for.
        index: u64,
        /// Now.
        now: UnixMillis,
        /// The configuration keys must still fit.
        fit: Arc<FitContext>,
    } -> (Result<StreamKey, StreamError>, u32);
    /// An SAE closes a stream: its end here is erased with the keys reserved ahead of the SAE
    /// (at most `max_erase`; any others expire with their TTL). Returns how many were erased.
    CloseStream {
        /// The calling SAE.
        caller: SaeId,
        /// The stream.
        id: KeyStreamId,
        /// Now.
        now: UnixMillis,
        /// Most keys erased.
        max_erase: u64,
    } -> Result<u64, StreamError>;
    /// At start: voids the reservations a crash interrupted
    /// ([`crate::core::stream::recover`]). Returns the master ends held here, whose pumps must
    /// run again.
    ResumeStreams {} -> Vec<KeyStreamId>;
    /// The next run of indices a master end should reserve, recorded as under way before the
    /// batch starts (after a crash the run is void: its key IDs are never offered twice).
    ReserveNext {
        /// The stream.
        id: KeyStreamId,
    } -> Reservation;
    /// Settles a reservation: the master's copies of the keys stored and the run counted as
    /// reserved; or the run void (the destination may hold its IDs); or the run open to be tried
    /// again (nothing can have been stored anywhere).
    SettleReservation {
        /// The stream.
        id: KeyStreamId,
        /// First index of the run.
        first: u64,
        /// Indices in the run.
        n: u64,
        /// The keys' expiry.
        expires_at: UnixMillis,
        /// The keys made and what they share, if the batch succeeded.
        reserved: Option<(Vec<(KeyId, Secret)>, StoredKey)>,
        /// Whether a failed batch may have stored the keys at the destination.
        void: bool,
    } -> ();
}

/// Why relayed keys were not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeysRefused {
    /// The key ID was used here before.
    IdUsed(KeyId),
    /// The keys claim to be a key stream's but do not fit the stream's end held here.
    StreamSlice,
}

/// A key delivered from a stream, with what the delivery event names.
#[derive(Debug)]
pub struct StreamKey {
    /// The key's (derived) ID.
    pub id: KeyId,
    /// Its bytes.
    pub key: Secret,
    /// Policy and suite it was made under.
    pub made_under: Option<MadeUnder>,
    /// The stream's master SAE.
    pub master: SaeId,
    /// The stream's slave SAE.
    pub slave: SaeId,
    /// Which end this node holds.
    pub role: Role,
}

/// What [`ReserveNext`] found to do.
#[derive(Debug)]
pub enum Reservation {
    /// The stream is gone (closed): its pump stops.
    Stop,
    /// Nothing to reserve now.
    Idle,
    /// Reserve this run of `n` indices from `first` (already recorded as under way).
    Reserve {
        /// The stream's record.
        record: StreamRecord,
        /// First index.
        first: u64,
        /// Indices.
        n: u64,
    },
}

impl Op {
    /// Whether the operation changes the store (read-only ones would never be shipped to
    /// replicas).
    pub fn writes(&self) -> bool {
        !matches!(
            self,
            Op::KeysAfter(_) | Op::QueuedNotices(_) | Op::Streams(_) | Op::StreamQos(_)
        )
    }
}

/// Whether a writing operation's outcome may have changed the store: always, except a delivery
/// notice that moved no key's expiry (its keys were already fetched: it wrote nothing). A batch
/// with no change is not committed. (A failed operation counts as a change: one that fails half
/// way keeps what it wrote, in both stores alike. A delivery with a key missing writes nothing:
/// it checks its keys before it takes any.)
pub(crate) fn changed(outcome: &Result<Outcome, StoreError>) -> bool {
    !matches!(outcome, Ok(Outcome::MoveExpiry(moved)) if moved.is_empty())
}

impl PutBlocks {
    fn exec(self, t: &mut dyn Tables) -> Result<(), StoreError> {
        t.admit_ingest()?;
        for (seq, meta, key) in &self.blocks {
            t.put_block(&self.link, *seq, meta, key)?;
        }
        Ok(())
    }
}

impl WriteBlocks {
    fn exec(self, t: &mut dyn Tables) -> Result<(), StoreError> {
        write_blocks(t, &self.link, &self.metas, &self.erase)
    }
}

fn write_blocks(
    t: &mut dyn Tables,
    link: &LinkId,
    metas: &[(u64, BlockMeta)],
    erase: &[u64],
) -> Result<(), StoreError> {
    for (seq, m) in metas {
        t.put_block_meta(link, *seq, m)?;
    }
    for seq in erase {
        t.delete_block(link, *seq)?;
    }
    Ok(())
}

impl TakeLinkKey {
    fn exec(self, t: &mut dyn Tables) -> Result<Secret, StoreError> {
        let bytes = t.read_ranges(&self.link, &self.ranges)?;
        write_blocks(t, &self.link, &self.metas, &self.erase)?;
        Ok(bytes)
    }
}

impl PutPoolKeys {
    fn exec(self, t: &mut dyn Tables) -> Result<(), StoreError> {
        t.admit_ingest()?;
        for (id, key) in &self.keys {
            t.put_pool_key(*id, &self.meta, key)?;
        }
        Ok(())
    }
}

impl DiscardPoolKeys {
    fn exec(self, t: &mut dyn Tables) -> Result<(), StoreError> {
        for id in &self.ids {
            t.take_pool_key(*id)?;
        }
        Ok(())
    }
}

impl DeliverPoolKeys {
    fn exec(self, t: &mut dyn Tables) -> Result<Vec<Handed>, StoreError> {
        // All or nothing: a key missing after others were taken would leave those consumed
        // (tombstoned) and undelivered. The first is not looked up twice: if it is missing,
        // nothing has been taken yet.
        for id in self.ids.iter().skip(1) {
            if !t.has_pool_key(*id)? {
                return Err(StoreError::Corrupt("pool key vanished"));
            }
        }
        let mut out = Vec::with_capacity(self.ids.len());
        for id in &self.ids {
            let (meta, key) = t
                .take_pool_key(*id)?
                .ok_or(StoreError::Corrupt("pool key vanished"))?;
            t.put_tombstone(*id, &meta.master, meta.slaves.first(), self.now)?;
            out.push(Handed {
                id: *id,
                key,
                made_under: meta.made_under,
            });
        }
        for dest in &self.notify {
            t.queue_notice(dest, &self.ids, self.now)?;
        }
        Ok(out)
    }
}

impl RecordIssued {
    fn exec(self, t: &mut dyn Tables) -> Result<(), StoreError> {
        for (id, master, slave) in &self.keys {
            t.put_tombstone(*id, master, Some(slave), self.now)?;
        }
        let ids: Vec<KeyId> = self.keys.iter().map(|(id, _, _)| *id).collect();
        for dest in &self.notify {
            t.queue_notice(dest, &ids, self.now)?;
        }
        Ok(())
    }
}

impl StoreKeys {
    fn exec(self, t: &mut dyn Tables) -> Result<Result<(), KeysRefused>, StoreError> {
        for (id, _) in &self.keys {
            if t.key_id_used(*id)? {
                return Ok(Err(KeysRefused::IdUsed(*id)));
            }
        }
        t.admit_ingest()?;
        if let Some((stream, first)) = self.stream {
            let arrived = first.saturating_add(self.keys.len() as u64);
            if super::streams::record_arrival(t, stream, &self.meta, arrived)?.is_err() {
                return Ok(Err(KeysRefused::StreamSlice));
            }
        }
        for (id, key) in &self.keys {
            t.put_key(*id, &self.meta, key)?;
        }
        Ok(Ok(()))
    }
}

impl FetchForSlave {
    fn exec(self, t: &mut dyn Tables) -> Result<Result<Vec<Handed>, FetchRefusal>, StoreError> {
        if fetch::has_duplicates(&self.ids) {
            return Ok(Err(FetchRefusal::NotFound));
        }
        let mut found = Vec::with_capacity(self.ids.len());
        for id in &self.ids {
            // A key stream's keys are served only through their stream, by index.
            if crate::core::stream::is_stream_key(*id) {
                found.push(Found {
                    meta: None,
                    tombstone: None,
                });
                continue;
            }
            let meta = t.key_meta(*id)?;
            let tombstone = if meta.is_none() && self.master_here {
                t.tombstone(*id)?
            } else {
                None
            };
            found.push(Found { meta, tombstone });
        }
        let request = fetch::Fetch {
            master: &self.master,
            slave: &self.slave,
            master_here: self.master_here,
            ttl_ms: self.ttl_ms,
            now: self.now,
        };
        let metas = match fetch::decide(&request, found, &self.fit) {
            Ok(m) => m,
            Err(refusal) => return Ok(Err(refusal)),
        };
        // Every key is read before any is changed, so a missing one changes nothing.
        let mut keys = Vec::with_capacity(self.ids.len());
        for id in &self.ids {
            keys.push(
                t.key_bytes(*id)?
                    .ok_or(StoreError::Corrupt("key bytes vanished"))?,
            );
        }
        let mut out = Vec::with_capacity(self.ids.len());
        for ((id, meta), key) in self.ids.iter().zip(metas).zip(keys) {
            let made_under = meta.made_under.clone();
            let (meta, done) = fetch::fetched(meta, &self.slave);
            if done {
                t.retire_key(*id, &meta, self.now)?;
            } else {
                t.update_key_meta(*id, &meta)?;
            }
            out.push(Handed {
                id: *id,
                key,
                made_under,
            });
        }
        Ok(Ok(out))
    }
}

impl MoveExpiry {
    fn exec(self, t: &mut dyn Tables) -> Result<Vec<(KeyId, UnixMillis)>, StoreError> {
        let mut moved = Vec::new();
        for (id, expires_at) in self.expiries {
            let Some(meta) = t.key_meta(id)? else {
                continue;
            };
            // Only the master's own node may say when its master got the key.
            if !self.masters.contains(&meta.master) || meta.expires_at <= expires_at {
                continue;
            }
            t.set_key_expiry(id, &meta, expires_at)?;
            moved.push((id, expires_at));
        }
        Ok(moved)
    }
}

impl RetireKeys {
    fn exec(self, t: &mut dyn Tables) -> Result<(), StoreError> {
        for (id, meta) in &self.keys {
            t.retire_key(*id, meta, self.now)?;
        }
        Ok(())
    }
}

impl Expire {
    fn exec(self, t: &mut dyn Tables) -> Result<usize, StoreError> {
        let expired = t.expired_keys(self.now, self.limit)?;
        for (id, meta) in &expired {
            t.retire_key(*id, meta, self.now)?;
        }
        t.prune_tombstones(self.prune_before, self.limit)?;
        super::streams::prune_streams(t, self.now)?;
        Ok(expired.len())
    }
}

impl DropNotices {
    fn exec(self, t: &mut dyn Tables) -> Result<(), StoreError> {
        for (dest, seq) in &self.notices {
            t.drop_notice(dest, *seq)?;
        }
        Ok(())
    }
}

impl KeysAfter {
    fn exec(self, t: &mut dyn Tables) -> Result<Vec<(KeyId, StoredKey)>, StoreError> {
        t.keys_after(self.after, self.limit)
    }
}

impl QueuedNotices {
    fn exec(self, t: &mut dyn Tables) -> Result<Vec<QueuedNotice>, StoreError> {
        t.queued_notices(self.after.as_ref(), self.limit)
    }
}

impl Streams {
    fn exec(self, t: &mut dyn Tables) -> Result<Vec<StreamRecord>, StoreError> {
        t.streams()
    }
}
