//! The durable key store, on redb.
//!
//! What it holds (see `docs/design.md` §4 for the format and the invariants):
//! * per link, the blocks of link key (bytes sealed under a data-key epoch) and which of their
//!   bytes are taken;
//! * keys waiting for their slave SAE (`dec_keys`), sealed, with master, slaves and expiry;
//! * tombstones of delivered keys: key ID, SAE pair and time only, never key bytes or hashes;
//! * finished keys in the pools of SAE pairs whose master is attached here (sealed);
//! * the ends of ETSI 004 key streams held here, without key material (`streams.rs`);
//! * the wrapped data keys (DEKs) of live epochs, and how far the rotation pass has got.
//!
//! Every change is a store operation ([`ops`]: data, not code), run over the records
//! ([`Tables`]) of one [`Txn`] and committed by the group commit writer ([`crate::writer`]):
//! durable once its row changes are appended to the write-ahead log and synced ([`wal`]), the
//! database itself synced at checkpoints; [`mem::MemStore`] is the same store in memory, the
//! model it is tested against. A commit error is fatal: the node exits and recovers from
//! disk; nothing is retried from memory.
//!
//! **Epochs.** Every open starts a fresh epoch in one small transaction, whatever the size of
//! the store: a new DEK seals everything written from then on, and the DEKs of older epochs are
//! kept only to open (never to seal: a nonce counter dies with its process). Records of older
//! epochs are re-encrypted under the current one by a *rotation pass* in bounded steps
//! ([`Store::rotate_step`], [`StoreOptions::rotation_batch`] records per transaction), whose
//! cursor is committed with each step, so a crash between steps loses nothing and the next open
//! resumes. An epoch's wrapped DEK is deleted in the transaction that finishes the pass which
//! re-encrypted its last record, and the KEK periods no live epoch needs are then destroyed.
//!
//! **Space.** Below a free-space watermark new key material is refused
//! ([`StoreError::LowSpace`]) and stored keys are still served; a reserve file is given back when
//! a restart finds the disk full (see [`space`]).

mod codec;
#[cfg(any(test, feature = "simulation"))]
#[doc(hidden)]
pub mod faulty;
mod index;
pub mod mem;
pub mod ops;
pub mod space;
mod streams;
pub mod tables;
mod tombs;
pub mod vault;
pub mod wal;

pub use self::ops::{KeyStore, Op, Operation, Outcome};
pub use self::tables::Tables;

use std::collections::HashMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use qkd_types::{BlockId, KeyId, KeyStreamId, LinkId, NodeId, SaeId, Secret, UnixMillis};
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};

use self::codec::{R, W, enc};
use self::index::{Index, IndexTxn, Which};
use self::space::{DEFAULT_RESERVE_BYTES, DEFAULT_WATERMARK_BYTES, FileSystemSpace, FreeSpace};
use self::vault::{EpochKey, KeyWrap, Keyring, OpeningKey, Sealed, VaultError, dek_aad};
use self::wal::{Commit, FileLog, LogFile, LogTx, Wal};
use crate::core::pool::{BlockMeta, BlockState, Range, SEEN_DEVICE_IDS};
use crate::core::stream::StreamRecord;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const EPOCHS: TableDefinition<u64, &[u8]> = TableDefinition::new("epochs");
const LINKS: TableDefinition<&str, u64> = TableDefinition::new("links");
const BLOCK_META: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("block_meta");
const BLOCK_DATA: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("block_data");
/// The device key IDs of each link's most recent blocks (held or erased), by sequence: at most
/// [`SEEN_DEVICE_IDS`] per link, so that a device re-issuing key is caught across restarts.
const DEVICE_IDS: TableDefinition<(&str, u64), [u8; 16]> = TableDefinition::new("device_ids");
/// Delivery notices waiting to be sent, by (destination node, sequence): `u64 delivered_at ‖
/// key IDs`. No key material.
const NOTICES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("delivery_notices");
/// Waiting keys by arrival sequence: `key ID ‖ record`. Keyed by sequence, not by the random key
/// ID, so that a batch of keys lands in one leaf and keys consumed in arrival order are erased
/// from the head: a commit touches a few pages, not one random page per key. The key-ID index is
/// kept in memory ([`Index`]) and rebuilt at open.
const KEYS: TableDefinition<u64, &[u8]> = TableDefinition::new("keys_by_seq");
/// Pool keys by sequence (`key ID ‖ record`), taken first in, first out, for the same reason.
const POOL: TableDefinition<u64, &[u8]> = TableDefinition::new("pool_by_seq");
/// Waiting keys ordered by expiry, so expiry is a range scan over only what expires.
const KEY_EXPIRY: TableDefinition<(u64, [u8; 16]), ()> = TableDefinition::new("key_expiry");
/// The rotation pass in progress: where it stopped (`cursor`).
const ROTATION: TableDefinition<&str, &[u8]> = TableDefinition::new("rotation");
/// `meta` entry: the pass in progress re-encrypts every record of an epoch below this one.
const ROTATE_BELOW: &str = "rotate_below";
/// `rotation` entry: the last record the pass visited.
const CURSOR: &str = "cursor";
/// Upper bound on the bytes one re-encrypted record makes a step write (copy-on-write leaf and
/// branch pages of its table, 4 KiB each).
const ROTATION_BYTES_PER_RECORD: u64 = 16 << 10;

/// Schema version written into `meta`. Version 1 (before issue 8) keyed waiting and pool keys by
/// key ID; version 2 keys them by sequence; version 3 keeps the tombstone log in memory, found
/// again at open from the records after `meta`'s `tomb_log_from` ([`tombs`]); version 4 may have
/// batches only in its write-ahead log ([`wal`]). A version 1 store is refused, naming its file
/// (docs/design.md, "Upgrades"); version 2 and 3 stores are upgraded in place at open (a version
/// 2 store's log table is still read, and dropped with the next run), so that an older program,
/// which would not read the tombstone log or the write-ahead log back, refuses it from then on.
const SCHEMA_VERSION: u64 = 4;
/// The oldest schema this version opens (and upgrades).
const OLDEST_SCHEMA: u64 = 2;

/// Bytes of pages redb caches in memory. Its default (a gigabyte) lets the cache grow with the
/// store; reads that miss come from the operating system's page cache, outside the node's RSS.
/// What a commit touches is the head and tail of a few tables in sequence order, and their
/// branch pages: a few hundred pages at most.
const CACHE_BYTES: usize = 4 << 20;

/// `meta` entry: the sequence number of the last batch a commit holds ([`wal`]).
const WAL_SEQ: &str = "wal_seq";
/// `meta` entry: a random number drawn when the store was created, which every record of its
/// write-ahead log carries.
const STORE_ID: &str = "store_id";

/// The tables a batch may write, numbered for the write-ahead log: the number of a table is
/// part of the log's format and never changes.
macro_rules! logged_tables {
    ($($n:literal => $def:expr),* $(,)?) => {
        /// The log's number of the table called `name`.
        fn logged(name: &str) -> Option<u8> {
            $(if name == redb::TableHandle::name(&$def) {
                return Some($n);
            })*
            None
        }

        /// Applies one logged row change again.
        fn replay_change(tx: &redb::WriteTransaction, c: &wal::Change<'_>) -> Result<(), StoreError> {
            match c.table {
                $($n => wal::replay(tx, $def, c),)*
                _ => Err(StoreError::Corrupt("write-ahead log names an unknown table")),
            }
        }
    };
}
logged_tables! {
    1 => META,
    2 => LINKS,
    3 => BLOCK_META,
    4 => BLOCK_DATA,
    5 => DEVICE_IDS,
    6 => NOTICES,
    7 => KEYS,
    8 => POOL,
    9 => KEY_EXPIRY,
    10 => tombs::TOMBS,
    11 => streams::STREAMS,
}

/// Errors of the store. Any of them during a commit makes the node exit and recover.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Operating system or disk: redb failed.
    #[error("key store: {0}")]
    Db(String),
    /// Disk or tampering: a record does not decode.
    #[error("key store record corrupt: {0}")]
    Corrupt(&'static str),
    /// Encryption at rest failed (see the inner error).
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// Operator (disk full): free space is below the watermark kept for consumption, so new
    /// key material is refused; stored keys are still served.
    #[error(
        "key store low on space: {available} bytes free, below the {watermark}-byte watermark \
         kept for consuming stored keys; new key material is refused until space is freed"
    )]
    LowSpace {
        /// Free bytes measured when the batch began.
        available: u64,
        /// The configured watermark.
        watermark: u64,
    },
    /// Operator: the store was written by a newer version.
    #[error("key store schema {found} is newer than this program's {SCHEMA_VERSION}")]
    Schema {
        /// Version found on disk.
        found: u64,
    },
    /// Operator: this store cannot rotate its key-encryption key while open (the in-memory
    /// model, or a store opened without keeping its [`KeyWrap`]).
    #[error("this key store cannot rotate its key-encryption key while open")]
    NoLiveRotation,
    /// Operator: the store was written by a version whose format this one does not convert.
    #[error(
        "key store {path} has schema {found}, written by an older version that keyed records \
         by key ID; this version ({SCHEMA_VERSION}) keys them by sequence and does not convert \
         a store in place: drain its keys with the older version, then move the file aside \
         (a new, empty store is created)"
    )]
    OldSchema {
        /// Version found on disk.
        found: u64,
        /// The store's file.
        path: String,
    },
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.to_string())
            }
        }
    )*};
}
db_err!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// A key waiting at the slave side, without its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// Relayed batch that created it.
    pub request: [u8; 16],
    /// Master SAE.
    pub master: SaeId,
    /// Slave SAEs and whether each has fetched the key.
    pub slaves: Vec<(SaeId, bool)>,
    /// Size in bits.
    pub size_bits: u32,
    /// After this time it is erased.
    pub expires_at: UnixMillis,
    /// The configuration it was made under; `None` for keys stored before it was recorded.
    pub made_under: Option<MadeUnder>,
    /// Made to fill the pair's pool (at the pair's default size) rather than for one request.
    pub pool: bool,
}

/// The configuration a key was made under: the pair's policy and suite by name. A key is served
/// only while its pair's configuration still names the same ones (docs/design.md, "Keys and
/// configuration").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MadeUnder {
    /// Policy name.
    pub policy: String,
    /// Suite name (empty where the policy uses none).
    pub suite: String,
}

/// A finished key in a pair's pool at the master's node, without its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolKey {
    /// Master SAE.
    pub master: SaeId,
    /// Slave SAEs.
    pub slaves: Vec<SaeId>,
    /// Size in bits.
    pub size_bits: u32,
    /// When it was derived.
    pub created_at: UnixMillis,
    /// The configuration it was made under; `None` for keys stored before it was recorded.
    pub made_under: Option<MadeUnder>,
}

/// What the store held when it was opened.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Per link: next sequence number and the blocks still stored.
    pub links: HashMap<LinkId, (u64, Vec<(u64, BlockMeta)>)>,
    /// Epoch started by this open.
    pub epoch: u64,
    /// Finished keys in pairs' pools (master side).
    pub pool: Vec<(KeyId, PoolKey)>,
    /// Per link: the device key IDs of its most recent blocks, oldest first.
    pub device_ids: HashMap<LinkId, Vec<BlockId>>,
}

/// Tuning of a store. [`Default`] is what a node runs with unless configured otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Free bytes kept for consumption: below it, new key material is refused
    /// ([`StoreError::LowSpace`]) and older epochs are not re-encrypted.
    pub watermark_bytes: u64,
    /// Bytes of the reserve file released when a restart finds the disk full (see [`space`]).
    pub reserve_bytes: u64,
    /// Records re-encrypted per transaction while older epochs are retired. Bounds the space and
    /// time of one rotation step.
    pub rotation_batch: usize,
    /// Bytes of write-ahead log filled before a durable checkpoint ([`wal`]); 0 commits every
    /// batch durably to the database instead.
    pub log_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            watermark_bytes: DEFAULT_WATERMARK_BYTES,
            reserve_bytes: DEFAULT_RESERVE_BYTES,
            rotation_batch: 256,
            log_bytes: wal::DEFAULT_LOG_BYTES,
        }
    }
}

/// Progress of the retirement of older data-key epochs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// Every record is sealed under a live epoch no older than the last pass's start; nothing
    /// to do until the next open.
    Done,
    /// More records of older epochs remain; call [`Store::rotate_step`] again.
    Pending,
    /// Free space is below the watermark: older epochs stay until space is freed.
    LowSpace,
}

/// The durable store. Owned by the writer thread.
#[derive(Debug)]
pub struct Store {
    db: Database,
    keys: Keyring,
    /// KEK period the current epoch's DEK is wrapped under.
    period: u64,
    gauge: SpaceGauge,
    options: StoreOptions,
    /// The rotation pass in progress (persisted in the same transactions as its steps).
    pass: Option<Pass>,
    /// Record bytes written by committed transactions ([`KeyStore::bytes_written`]).
    written: u64,
    /// Batches committed ([`KeyStore::commits`]).
    commits: u64,
    /// The KEK holder, kept when the store was opened with [`Store::open_rotating`] (or given
    /// [`Store::with_live_rotation`]) so that the KEK rotates and passes run while the store is
    /// open.
    wrap: Option<Arc<dyn KeyWrap>>,
    /// Key ID -> sequence of the waiting and pool keys (see [`KEYS`]), and the tombstone log.
    index: Index,
    /// Tombstones in the log before it is written as a run ([`tombs::LOG_RUN`]).
    log_run: usize,
    /// Key IDs one step of a tombstone merge takes ([`tombs::LOG_RUN`]).
    merge_step: usize,
    /// The write-ahead log that makes batches durable between checkpoints.
    wal: Wal,
    /// The most run entries one merge step wrote (tests check that steps are bounded).
    #[cfg(test)]
    largest_merge_step: u64,
}

/// What [`KeyStore::rotate_kek`] started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KekRotation {
    /// The fresh data-key epoch that seals everything from now on.
    pub epoch: u64,
    /// The KEK period its DEK is wrapped under.
    pub period: u64,
    /// Older epochs now live, which a rotation pass re-encrypts into `epoch` in steps.
    pub older_epochs: usize,
}

impl Store {
    /// Opens (or creates) the store at `path` with default options; see [`Store::open_with`].
    pub fn open(path: &Path, wrap: &dyn KeyWrap) -> Result<(Self, Recovered), StoreError> {
        Self::open_with(path, wrap, StoreOptions::default())
    }

    /// Opens (or creates) the store at `path`, starts a fresh epoch (one small transaction,
    /// whatever the size of the store) and, while free space is above the watermark, retires
    /// older epochs in bounded steps.
    pub fn open_with(
        path: &Path,
        wrap: &dyn KeyWrap,
        options: StoreOptions,
    ) -> Result<(Self, Recovered), StoreError> {
        let log = FileLog::open(&path.with_extension("wal")).map_err(|e| {
            StoreError::Db(format!(
                "write-ahead log {}: {e}",
                path.with_extension("wal").display()
            ))
        })?;
        Self::open_db(
            || {
                redb::Builder::new()
                    .set_cache_size(CACHE_BYTES)
                    .create(path)
            },
            Box::new(log),
            wrap,
            options,
            Box::new(FileSystemSpace::for_store(path)),
            usize::MAX,
        )
        .map_err(|e| match e {
            StoreError::OldSchema { found, .. } => StoreError::OldSchema {
                found,
                path: path.display().to_string(),
            },
            e => e,
        })
    }

    /// [`Store::open_with`], keeping `wrap`: the KEK can then rotate while the store is open
    /// ([`KeyStore::rotate_kek`]) and rotation passes run between batches
    /// ([`KeyStore::rotation_step`]).
    pub fn open_rotating(
        path: &Path,
        wrap: Arc<dyn KeyWrap>,
        options: StoreOptions,
    ) -> Result<(Self, Recovered), StoreError> {
        let (store, recovered) = Self::open_with(path, wrap.as_ref(), options)?;
        Ok((store.with_live_rotation(wrap), recovered))
    }

    /// Keeps `wrap`, the KEK this store was opened with, so that the KEK can rotate while the
    /// store is open ([`KeyStore::rotate_kek`]) and rotation passes run between batches
    /// ([`KeyStore::rotation_step`]). For stores opened on other backends
    /// ([`Store::open_backend`]).
    pub fn with_live_rotation(mut self, wrap: Arc<dyn KeyWrap>) -> Self {
        self.wrap = Some(wrap);
        self
    }

    /// Opens a store over a test storage backend (a simulated disk). Never a production option:
    /// only the crate's tests and the `simulation` feature (the network simulation) have it.
    #[cfg(any(test, feature = "simulation"))]
    #[doc(hidden)]
    pub fn open_backend(
        backend: impl redb::StorageBackend,
        log: Box<dyn LogFile>,
        wrap: &dyn KeyWrap,
        options: StoreOptions,
        space: Box<dyn FreeSpace>,
        open_steps: usize,
    ) -> Result<(Self, Recovered), StoreError> {
        Self::open_db(
            || {
                redb::Builder::new()
                    .set_cache_size(CACHE_BYTES)
                    .create_with_backend(backend)
            },
            log,
            wrap,
            options,
            space,
            open_steps,
        )
    }

    fn open_db(
        create: impl FnOnce() -> Result<Database, redb::DatabaseError>,
        log: Box<dyn LogFile>,
        wrap: &dyn KeyWrap,
        options: StoreOptions,
        space: Box<dyn FreeSpace>,
        open_steps: usize,
    ) -> Result<(Self, Recovered), StoreError> {
        release_reserve_if_full(space.as_ref(), &options);
        let db = create()?;
        let (store_id, applied) = Self::replay_log(&db, log.as_ref())?;
        let (keys, period, pass, oldest_period) = Self::start_epoch(&db, wrap)?;
        let wal = Wal::new(log, store_id, applied, options.log_bytes);
        // KEKs of periods before every live epoch's protect nothing any more.
        wrap.destroy_before(oldest_period)?;
        let (mut recovered, index) = Self::recover(&db)?;
        recovered.epoch = keys.epoch();
        let mut store = Self {
            db,
            keys,
            period,
            gauge: SpaceGauge {
                space: Arc::from(space),
                watermark: options.watermark_bytes,
            },
            options,
            pass,
            written: 0,
            commits: 0,
            wrap: None,
            index,
            log_run: tombs::LOG_RUN,
            merge_step: tombs::LOG_RUN,
            wal,
            #[cfg(test)]
            largest_merge_step: 0,
        };
        store.retake_reserve();
        for _ in 0..open_steps {
            match store.rotate_step(wrap)? {
                Rotation::Pending => {}
                Rotation::Done => break,
                Rotation::LowSpace => {
                    tracing::warn!(
                        watermark = store.options.watermark_bytes,
                        "key store below its free-space watermark: older data-key epochs stay \
                         (their keys are not shredded) until space is freed"
                    );
                    break;
                }
            }
        }
        Ok((store, recovered))
    }

    /// Applies again the batches of the write-ahead log that the last durable commit does not
    /// hold, in one durable transaction, before anything else reads the store. Returns the
    /// store's identity and the last batch it now holds. A store of a schema this version does
    /// not open is left untouched ([`Store::start_epoch`] refuses it).
    fn replay_log(db: &Database, log: &dyn LogFile) -> Result<(u64, u64), StoreError> {
        let mut tx = db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        let (store_id, applied) = {
            let mut meta = tx.open_table(META)?;
            let schema = meta.get("schema")?.map(|v| v.value());
            if schema.is_some_and(|v| !(OLDEST_SCHEMA..=SCHEMA_VERSION).contains(&v)) {
                return Ok((0, 0));
            }
            let existing = meta.get(STORE_ID)?.map(|v| v.value());
            let store_id = match existing {
                Some(id) => id,
                None => {
                    let id = rand::random::<u64>();
                    meta.insert(STORE_ID, id)?;
                    id
                }
            };
            let applied = meta.get(WAL_SEQ)?.map_or(0, |v| v.value());
            (store_id, applied)
        };
        let records = Wal::recover(log, store_id, applied)?;
        let mut last = applied;
        for (seq, payload) in &records {
            for change in wal::changes(payload)? {
                replay_change(&tx, &change)?;
            }
            last = *seq;
        }
        if !records.is_empty() {
            tracing::info!(
                batches = records.len(),
                through = last,
                "key store: batches applied again from the write-ahead log"
            );
            tx.open_table(META)?.insert(WAL_SEQ, last)?;
        }
        tx.commit()?;
        Ok((store_id, last))
    }

    /// The one transaction of an open: a fresh epoch, and a rotation pass if older epochs are
    /// live. Its size does not depend on the size of the store.
    fn start_epoch(
        db: &Database,
        wrap: &dyn KeyWrap,
    ) -> Result<(Keyring, u64, Option<Pass>, u64), StoreError> {
        let mut tx = db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        let new_epoch;
        let mut below;
        {
            let mut meta = tx.open_table(META)?;
            let schema = meta.get("schema")?.map(|v| v.value());
            match schema {
                Some(v) if v > SCHEMA_VERSION => return Err(StoreError::Schema { found: v }),
                Some(v) if v < OLDEST_SCHEMA => {
                    return Err(StoreError::OldSchema {
                        found: v,
                        path: "(storage backend)".into(),
                    });
                }
                _ => {
                    meta.insert("schema", SCHEMA_VERSION)?;
                }
            }
            new_epoch = meta.get("epoch")?.map_or(0, |v| v.value()) + 1;
            meta.insert("epoch", new_epoch)?;
            // Generation counter: bumped at every open; lets an operator (or a TPM NV counter
            // later) detect a store restored from an older copy.
            let generation = meta.get("generation")?.map_or(0, |v| v.value()) + 1;
            meta.insert("generation", generation)?;
            below = meta.get(ROTATE_BELOW)?.map_or(0, |v| v.value());
        }
        // Every table exists from the first open on, so readers never meet a missing one.
        tx.open_table(LINKS)?;
        tx.open_table(BLOCK_META)?;
        tx.open_table(BLOCK_DATA)?;
        tx.open_table(KEYS)?;
        tx.open_table(POOL)?;
        tx.open_table(KEY_EXPIRY)?;
        tx.open_table(tombs::TOMBS)?;
        tx.open_table(tombs::TOMB_RUNS)?;
        tx.open_table(ROTATION)?;
        tx.open_table(DEVICE_IDS)?;
        tx.open_table(NOTICES)?;
        // Older epochs' data keys, to open what is not yet re-encrypted. They never seal again.
        let mut older = Vec::new();
        let period = wrap.current_period();
        let mut oldest_period = period;
        {
            let epochs = tx.open_table(EPOCHS)?;
            for entry in epochs.iter()? {
                let (e, v) = entry?;
                let (e, v) = (e.value(), v.value());
                let mut r = R(v);
                let p = r.u64()?;
                let dek = wrap.unwrap(p, r.bytes()?, &dek_aad(e, p))?;
                older.push(OpeningKey::new(e, &dek));
                oldest_period = oldest_period.min(p);
            }
        }
        let epoch = new_dek(&tx, wrap, new_epoch, period)?;
        let pass = if below != 0 {
            // Resume the pass an earlier run left unfinished, where it stopped.
            let cursor = match tx.open_table(ROTATION)?.get(CURSOR)? {
                Some(v) => Cursor::decode(v.value())?,
                None => Cursor::Blocks(None),
            };
            Some(Pass { below, cursor })
        } else if !older.is_empty() {
            below = new_epoch;
            let pass = Pass {
                below,
                cursor: Cursor::Blocks(None),
            };
            pass.save(&tx)?;
            Some(pass)
        } else {
            None
        };
        tx.commit()?;
        Ok((Keyring::new(epoch, older), period, pass, oldest_period))
    }

    /// What the store holds, for the in-memory state of the node, and the key-ID index.
    fn recover(db: &Database) -> Result<(Recovered, Index), StoreError> {
        use redb::ReadableDatabase;
        let tx = db.begin_read()?;
        let mut rec = Recovered::default();
        let links = tx.open_table(LINKS)?;
        for entry in links.iter()? {
            let (k, v) = entry?;
            let id = LinkId::parse(k.value()).map_err(|_| StoreError::Corrupt("link id"))?;
            rec.links.insert(id, (v.value(), Vec::new()));
        }
        let metas = tx.open_table(BLOCK_META)?;
        for entry in metas.iter()? {
            let (k, v) = entry?;
            let (link, seq) = k.value();
            let id = LinkId::parse(link).map_err(|_| StoreError::Corrupt("link id"))?;
            rec.links
                .entry(id)
                .or_default()
                .1
                .push((seq, decode_block_meta(v.value())?));
        }
        let mut index = Index {
            tombs: tombs::TombIndex::recover(&tx)?,
            ..Index::default()
        };
        let pool = tx.open_table(POOL)?;
        for entry in pool.iter()? {
            let (k, v) = entry?;
            let (id, v) = split_id(v.value())?;
            index.insert(Which::Pool, id, k.value());
            index.next_pool = k.value() + 1;
            rec.pool.push((id, decode_pool_key(v)?.0));
        }
        for entry in tx.open_table(KEYS)?.iter()? {
            let (k, v) = entry?;
            index.insert(Which::Keys, split_id(v.value())?.0, k.value());
            index.next_key = k.value() + 1;
        }
        let ids = tx.open_table(DEVICE_IDS)?;
        for entry in ids.iter()? {
            let (k, v) = entry?;
            let id = LinkId::parse(k.value().0).map_err(|_| StoreError::Corrupt("link id"))?;
            rec.device_ids
                .entry(id)
                .or_default()
                .push(BlockId::from_bytes(v.value()));
        }
        Ok((rec, index))
    }

    /// Re-encrypts up to [`StoreOptions::rotation_batch`] records of epochs older than the
    /// pass's start under the current epoch, in one durable transaction that also records how
    /// far the pass got. The step that finishes a pass deletes the older epochs' wrapped DEKs in
    /// the same transaction, then forgets their keys and destroys the KEKs no live epoch needs.
    ///
    /// Every step leaves the store consistent: a record is sealed under an epoch whose wrapped
    /// DEK is in the store, and a crash between steps resumes the pass at the next open.
    /// Refused (without writing) while free space is below the watermark.
    pub fn rotate_step(&mut self, wrap: &dyn KeyWrap) -> Result<Rotation, StoreError> {
        let Some(mut pass) = self.pass.clone() else {
            return Ok(Rotation::Done);
        };
        if !self.room_to_rotate() {
            return Ok(Rotation::LowSpace);
        }
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        let mut budget = Budget {
            rewrite: self.options.rotation_batch.max(1),
            scan: self.options.rotation_batch.max(1).saturating_mul(16),
        };
        let mut erased = Vec::new();
        let finished = loop {
            let stopped_at = match &pass.cursor {
                Cursor::Blocks(after) => self
                    .rotate_blocks(&tx, pass.below, after.as_ref(), &mut budget)?
                    .map(Cursor::Blocks),
                // A waiting key of an older node whose batch was never confirmed (see
                // [`decode_key_record`]) is erased instead: its confirmation lived in memory.
                Cursor::Keys(after) => self
                    .rotate_ids(&tx, KEYS, *after, &mut budget, &mut erased, |id, v| {
                        let (meta, sealed, confirmed) = decode_key_record(v)?;
                        Ok(if sealed.epoch >= pass.below {
                            Redo::Keep
                        } else if !confirmed {
                            Redo::Erase(meta.expires_at)
                        } else {
                            let sealed = self.reseal(&key_aad(id, &meta), &sealed)?;
                            Redo::Rewrite(encode_key(&meta, &sealed))
                        })
                    })?
                    .map(Cursor::Keys),
                Cursor::Pool(after) => self
                    .rotate_ids(&tx, POOL, *after, &mut budget, &mut erased, |id, v| {
                        let (meta, sealed) = decode_pool_key(v)?;
                        Ok(if sealed.epoch >= pass.below {
                            Redo::Keep
                        } else {
                            let sealed = self.reseal(&pool_aad(id, &meta), &sealed)?;
                            Redo::Rewrite(encode_pool_key(&meta, &sealed))
                        })
                    })?
                    .map(Cursor::Pool),
                Cursor::End => break true,
            };
            match stopped_at {
                Some(cursor) => {
                    pass.cursor = cursor;
                    break false;
                }
                None => pass.cursor = pass.cursor.next_table(),
            }
        };
        let retired = pass.below;
        let mut next = None;
        if finished {
            let mut epochs = tx.open_table(EPOCHS)?;
            let gone: Vec<u64> = epochs
                .range(..retired)?
                .map(|e| e.map(|(k, _)| k.value()))
                .collect::<Result<_, _>>()?;
            for e in gone {
                epochs.remove(e)?;
            }
            if epochs.len()? > 1 {
                // Epochs started while this pass ran (restarts) are older now: retire them next.
                next = Some(Pass {
                    below: self.keys.epoch(),
                    cursor: Cursor::Blocks(None),
                });
            }
        }
        match (finished, &next) {
            (false, _) => pass.save(&tx)?,
            (true, Some(next)) => next.save(&tx)?,
            (true, None) => {
                tx.open_table(META)?.remove(ROTATE_BELOW)?;
                tx.open_table(ROTATION)?.remove(CURSOR)?;
            }
        }
        tx.commit()?;
        self.wal.checkpointed(None);
        for (id, seq) in erased {
            self.index.remove(Which::Keys, id, seq);
        }
        if !finished {
            self.pass = Some(pass);
            return Ok(Rotation::Pending);
        }
        // The wrapped DEKs are gone from the store: forget their keys and destroy the KEKs that
        // no live epoch needs (the real shred, see the module doc).
        self.keys.forget_before(retired);
        self.pass = next;
        wrap.destroy_before(self.oldest_live_period()?)?;
        Ok(if self.pass.is_some() {
            Rotation::Pending
        } else {
            Rotation::Done
        })
    }

    /// Starts a fresh epoch while the store is open: the KEK advances to a new period
    /// ([`KeyWrap::advance`]), a new DEK wrapped under it seals everything from now on, the
    /// current DEK becomes open-only, and a rotation pass (unless one is running, which starts
    /// the next when it ends) re-encrypts the older epochs in steps. One small transaction, like
    /// an open's; nothing is re-encrypted here.
    pub fn start_epoch_live(
        &mut self,
        wrap: &dyn KeyWrap,
        now_ms: u64,
    ) -> Result<KekRotation, StoreError> {
        let period = wrap.advance(now_ms)?;
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        let new_epoch = {
            let mut meta = tx.open_table(META)?;
            let e = meta.get("epoch")?.map_or(0, |v| v.value()) + 1;
            meta.insert("epoch", e)?;
            e
        };
        let epoch = new_dek(&tx, wrap, new_epoch, period)?;
        let pass = match &self.pass {
            Some(_) => None,
            None => {
                let pass = Pass {
                    below: new_epoch,
                    cursor: Cursor::Blocks(None),
                };
                pass.save(&tx)?;
                Some(pass)
            }
        };
        tx.commit()?;
        self.wal.checkpointed(None);
        self.keys.advance(epoch);
        self.period = period;
        if pass.is_some() {
            self.pass = pass;
        }
        Ok(KekRotation {
            epoch: new_epoch,
            period,
            older_epochs: self.keys.older_epochs().count(),
        })
    }

    /// Takes the reserve file again (see [`space`]) if there is room for it above the watermark.
    fn retake_reserve(&self) {
        let want = self.options.reserve_bytes;
        let space = &self.gauge.space;
        let (Ok(available), Ok(reserved)) = (space.available(), space.reserved()) else {
            return;
        };
        let more = want.saturating_sub(reserved);
        if more == 0 || available < self.options.watermark_bytes.saturating_add(more) {
            return;
        }
        if let Err(e) = space.reserve(want) {
            tracing::warn!(error = %e, bytes = want, "cannot allocate the key store's reserve file");
        }
    }

    /// Writes the tombstone log as a run every `n` tombstones instead of [`tombs::LOG_RUN`] (and
    /// merges `2n` key IDs per step), so that tests reach runs and merges.
    #[cfg(test)]
    fn set_tombstone_run(&mut self, n: usize) {
        self.log_run = n.max(1);
        self.merge_step = self.log_run * 2;
    }

    /// Whether older epochs are still being retired.
    pub fn rotation_pending(&self) -> bool {
        self.pass.is_some()
    }

    /// Free bytes of the store's file system, if they can be measured.
    pub fn available_space(&self) -> Option<u64> {
        self.gauge.available()
    }

    /// A handle on the store's free space for other threads (see [`SpaceGauge`]).
    pub fn gauge(&self) -> SpaceGauge {
        self.gauge.clone()
    }

    fn low_space(&self) -> Option<u64> {
        self.gauge.low()
    }

    /// Whether a rotation step fits: free space at the watermark and at least a generous bound
    /// on what one step writes (a few pages per record), whatever the watermark is set to. A
    /// step that failed for lack of space would fail the open that runs it. Unmeasurable space
    /// does not hold rotation back (like ingest, see [`Self::low_space`]).
    fn room_to_rotate(&self) -> bool {
        let step = (self.options.rotation_batch.max(1) as u64)
            .saturating_mul(ROTATION_BYTES_PER_RECORD)
            .saturating_add(1 << 20);
        self.available_space()
            .is_none_or(|a| a >= step.max(self.options.watermark_bytes))
    }

    fn oldest_live_period(&self) -> Result<u64, StoreError> {
        use redb::ReadableDatabase;
        let tx = self.db.begin_read()?;
        let mut oldest = self.period;
        for entry in tx.open_table(EPOCHS)?.iter()? {
            let (_, v) = entry?;
            oldest = oldest.min(R(v.value()).u64()?);
        }
        Ok(oldest)
    }

    /// One step over block data: returns where it stopped, or `None` once the table is done.
    fn rotate_blocks(
        &self,
        tx: &redb::WriteTransaction,
        below: u64,
        after: Option<&(String, u64)>,
        budget: &mut Budget,
    ) -> Result<StepEnd<(String, u64)>, StoreError> {
        let mut data = tx.open_table(BLOCK_DATA)?;
        let metas = tx.open_table(BLOCK_META)?;
        let mut rewrites = Vec::new();
        let mut last = after.cloned();
        let mut stopped = false;
        {
            let range = match after {
                Some((l, s)) => data
                    .range::<(&str, u64)>((Bound::Excluded((l.as_str(), *s)), Bound::Unbounded))?,
                None => data.range::<(&str, u64)>(..)?,
            };
            for entry in range {
                if !budget.take_scan() {
                    stopped = true;
                    break;
                }
                let (k, v) = entry?;
                let (link, seq) = k.value();
                last = Some((link.to_string(), seq));
                let sealed = decode_sealed(v.value())?;
                if sealed.epoch >= below {
                    continue;
                }
                let meta_raw = metas
                    .get((link, seq))?
                    .ok_or(StoreError::Corrupt("block data without meta"))?;
                let meta = decode_block_meta(meta_raw.value())?;
                let sealed = self.reseal(&block_aad(link, seq, meta.id), &sealed)?;
                rewrites.push((link.to_string(), seq, encode_sealed(&sealed)));
                if !budget.take_rewrite() {
                    stopped = true;
                    break;
                }
            }
        }
        for (link, seq, v) in rewrites {
            data.insert((link.as_str(), seq), v.as_slice())?;
        }
        Ok(stopped.then_some(last))
    }

    /// Re-encrypts one sealed value under the current epoch (fresh nonce).
    fn reseal(&self, aad: &[u8], sealed: &Sealed) -> Result<Sealed, StoreError> {
        let plain = self.keys.open(aad, sealed)?;
        Ok(self.keys.seal(aad, &plain)?)
    }

    /// One step over a table of keys by sequence (`keys` or `pool`): `redo` says what becomes
    /// of each record (given its key ID and record). Returns where it stopped (`None` once the
    /// table is done). Only waiting keys are ever erased, so their expiry index is updated here
    /// and their IDs are added to `erased` (for the in-memory index, once committed).
    fn rotate_ids(
        &self,
        tx: &redb::WriteTransaction,
        table: TableDefinition<u64, &[u8]>,
        after: Option<u64>,
        budget: &mut Budget,
        erased_ids: &mut Vec<(KeyId, u64)>,
        mut redo: impl FnMut(KeyId, &[u8]) -> Result<Redo, StoreError>,
    ) -> Result<StepEnd<u64>, StoreError> {
        let mut t = tx.open_table(table)?;
        let mut rewrites = Vec::new();
        let mut erased = Vec::new();
        let mut last = after;
        let mut stopped = false;
        {
            let range = match after {
                Some(a) => t.range::<u64>((Bound::Excluded(a), Bound::Unbounded))?,
                None => t.range::<u64>(..)?,
            };
            for entry in range {
                if !budget.take_scan() {
                    stopped = true;
                    break;
                }
                let (k, v) = entry?;
                let seq = k.value();
                last = Some(seq);
                let (id, record) = split_id(v.value())?;
                match redo(id, record)? {
                    Redo::Keep => continue,
                    Redo::Rewrite(v) => rewrites.push((seq, with_id(id, &v))),
                    Redo::Erase(expiry) => erased.push((expiry, seq, id)),
                }
                if !budget.take_rewrite() {
                    stopped = true;
                    break;
                }
            }
        }
        for (k, v) in rewrites {
            t.insert(k, v.as_slice())?;
        }
        if !erased.is_empty() {
            let mut idx = tx.open_table(KEY_EXPIRY)?;
            for (expiry, seq, id) in erased {
                t.remove(seq)?;
                idx.remove((expiry, *id.as_bytes()))?;
                erased_ids.push((id, seq));
            }
        }
        Ok(stopped.then_some(last))
    }

    /// Begins a write transaction (one per group-commit batch). If free space is below the
    /// watermark, the transaction refuses new key material ([`StoreError::LowSpace`]) and
    /// accepts everything else.
    pub fn begin(&mut self) -> Result<Txn<'_>, StoreError> {
        let low_space = self.low_space();
        let tx = self.db.begin_write()?;
        Ok(Txn {
            tx: LogTx::new(tx, logged),
            wal: &mut self.wal,
            keys: &self.keys,
            low_space: low_space.map(|available| (available, self.options.watermark_bytes)),
            block_cache: HashMap::new(),
            written: 0,
            index: IndexTxn::new(&mut self.index),
        })
    }

    /// Counts of stored records, for status and tests: (blocks, waiting keys, tombstones).
    pub fn counts(&self) -> Result<(u64, u64, u64), StoreError> {
        use redb::ReadableDatabase;
        let tx = self.db.begin_read()?;
        Ok((
            tx.open_table(BLOCK_DATA)?.len()?,
            tx.open_table(KEYS)?.len()?,
            Store::tomb_count(&tx)?,
        ))
    }
}

/// The store's free space and watermark, cheap to clone and to ask from any thread. Ask it before
/// pulling key from a device or starting a relay batch, so that no link key is spent on material
/// the store would refuse; the store checks again when the batch begins.
#[derive(Debug, Clone)]
pub struct SpaceGauge {
    space: Arc<dyn FreeSpace>,
    watermark: u64,
}

impl SpaceGauge {
    /// Free bytes, if they can be measured.
    pub fn available(&self) -> Option<u64> {
        match self.space.available() {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(error = %e, "cannot measure the key store's free space");
                None
            }
        }
    }

    /// The configured watermark in bytes.
    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    /// [`StoreError::LowSpace`] while free space is below the watermark.
    pub fn admit_ingest(&self) -> Result<(), StoreError> {
        match self.low() {
            Some(available) => Err(StoreError::LowSpace {
                available,
                watermark: self.watermark,
            }),
            None => Ok(()),
        }
    }

    /// Free bytes, if below the watermark. Unmeasurable space refuses nothing: the commit is the
    /// last line (a failed commit makes the node restart).
    fn low(&self) -> Option<u64> {
        self.available().filter(|a| *a < self.watermark)
    }
}

/// Before the database opens: on a disk without room for the reserve's worth, give the reserve
/// back, so that the open's commit and the consumption of stored keys fit. Ingest stays refused
/// (free space is below the watermark) until an operator frees space.
fn release_reserve_if_full(space: &dyn FreeSpace, options: &StoreOptions) {
    let (Ok(available), Ok(reserved)) = (space.available(), space.reserved()) else {
        return;
    };
    if reserved == 0 || available >= options.reserve_bytes {
        return;
    }
    match space.release() {
        Ok(()) => tracing::warn!(
            available,
            released = reserved,
            "disk full: released the key store's reserve file so that stored keys can be served; \
             new key material is refused until space is freed"
        ),
        Err(e) => tracing::error!(error = %e, "disk full and the reserve file cannot be released"),
    }
}

/// A fresh random DEK for `epoch`, stored in `tx` wrapped under the KEK of `period`. Its bytes
/// leave memory once wrapped; the returned key seals.
fn new_dek(
    tx: &redb::WriteTransaction,
    wrap: &dyn KeyWrap,
    epoch: u64,
    period: u64,
) -> Result<EpochKey, StoreError> {
    let (key, dek) = EpochKey::generate(epoch)?;
    let wrapped = wrap.wrap(period, &dek, &dek_aad(epoch, period))?;
    drop(dek);
    let mut epochs = tx.open_table(EPOCHS)?;
    let mut w = W::default();
    w.u64(period).bytes(&wrapped);
    epochs.insert(epoch, w.0.as_slice())?;
    Ok(key)
}

/// A rotation pass: re-encrypt every record sealed under an epoch before `below`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pass {
    below: u64,
    cursor: Cursor,
}

impl Pass {
    fn save(&self, tx: &redb::WriteTransaction) -> Result<(), StoreError> {
        tx.open_table(META)?.insert(ROTATE_BELOW, self.below)?;
        tx.open_table(ROTATION)?
            .insert(CURSOR, self.cursor.encode().as_slice())?;
        Ok(())
    }
}

/// Where a pass stands: the table it is in and the last key it visited there.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cursor {
    Blocks(Option<(String, u64)>),
    Keys(Option<u64>),
    Pool(Option<u64>),
    End,
}

impl Cursor {
    fn next_table(&self) -> Self {
        match self {
            Cursor::Blocks(_) => Cursor::Keys(None),
            Cursor::Keys(_) => Cursor::Pool(None),
            Cursor::Pool(_) | Cursor::End => Cursor::End,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut w = W::default();
        match self {
            Cursor::Blocks(None) => w.u8(0).u8(0),
            Cursor::Blocks(Some((l, s))) => w.u8(0).u8(1).str(l).u64(*s),
            Cursor::Keys(k) => w.u8(1).u8(u8::from(k.is_some())).u64(k.unwrap_or(0)),
            Cursor::Pool(k) => w.u8(2).u8(u8::from(k.is_some())).u64(k.unwrap_or(0)),
            Cursor::End => w.u8(3).u8(0),
        };
        w.0
    }

    fn decode(v: &[u8]) -> Result<Self, StoreError> {
        let mut r = R(v);
        let table = r.u8()?;
        let some = r.u8()? != 0;
        let id = |r: &mut R<'_>| -> Result<Option<u64>, StoreError> {
            let seq = r.u64()?;
            Ok(some.then_some(seq))
        };
        Ok(match table {
            0 if some => Cursor::Blocks(Some((r.str()?.to_string(), r.u64()?))),
            0 => Cursor::Blocks(None),
            1 => Cursor::Keys(id(&mut r)?),
            2 => Cursor::Pool(id(&mut r)?),
            3 => Cursor::End,
            _ => return Err(StoreError::Corrupt("rotation cursor")),
        })
    }
}

/// Where one table's part of a rotation step ended: `None` once the table is done, else the last
/// key visited (`Some(None)` if the budget ran out before the first).
type StepEnd<K> = Option<Option<K>>;

/// What a rotation step does with one record.
#[derive(Debug)]
enum Redo {
    /// Sealed under an epoch the pass keeps.
    Keep,
    /// Re-encrypted: the new value.
    Rewrite(Vec<u8>),
    /// Erased; its expiry, for the index.
    Erase(u64),
}

/// What one rotation step may still do: records to rewrite and records to look at.
#[derive(Debug)]
struct Budget {
    rewrite: usize,
    scan: usize,
}

impl Budget {
    fn take_scan(&mut self) -> bool {
        if self.scan == 0 || self.rewrite == 0 {
            return false;
        }
        self.scan -= 1;
        true
    }

    fn take_rewrite(&mut self) -> bool {
        self.rewrite = self.rewrite.saturating_sub(1);
        self.rewrite > 0
    }
}

/// One write transaction. Each operation checks everything before it writes anything, so a
/// refused operation leaves the transaction as it found it.
pub struct Txn<'s> {
    /// The redb transaction, its writes recorded for the log.
    tx: LogTx,
    wal: &'s mut Wal,
    keys: &'s Keyring,
    /// Free bytes and the watermark, if free space was below it when the batch began.
    low_space: Option<(u64, u64)>,
    /// Blocks decrypted in this transaction, so a batch of keys from one block decrypts it once.
    block_cache: HashMap<(LinkId, u64), Secret>,
    /// Bytes of records (table key plus value) written so far, for the writer's metrics.
    written: u64,
    /// The key-ID index, changed with the records.
    index: IndexTxn<'s>,
}

impl std::fmt::Debug for Txn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Txn")
            .field("epoch", &self.keys.epoch())
            .field("low_space", &self.low_space)
            .finish_non_exhaustive()
    }
}

impl KeyStore for Store {
    fn apply(&mut self, ops: Vec<Op>) -> Result<Vec<Result<Outcome, StoreError>>, StoreError> {
        let mut txn = self.begin()?;
        let mut changed = false;
        let outcomes = ops
            .into_iter()
            .map(|op| {
                let writes = op.writes();
                let outcome = op.execute(&mut txn);
                changed |= writes && ops::changed(&outcome);
                outcome
            })
            .collect();
        if !changed {
            // Only reads (the notice outbox) or delivery notices for keys already fetched:
            // nothing to make durable, so the transaction is dropped, not committed. A commit,
            // even of nothing, writes redb's header and free-page records and waits for a sync.
            drop(txn);
            return Ok(outcomes);
        }
        let written = txn.bytes_written();
        txn.commit()?;
        self.written += written;
        self.commits += 1;
        Ok(outcomes)
    }

    fn upkeep(&mut self) {
        // The batches before are committed: their outcomes stand whatever becomes of the upkeep,
        // which changes the in-memory index only once its own transaction committed.
        if let Err(e) = self.maintain_tombstones() {
            tracing::error!(error = %e, "tombstone index upkeep failed; retried after the next commit");
        }
    }

    fn inspect(&mut self, read: &mut dyn FnMut(&mut dyn Tables)) -> Result<(), StoreError> {
        let mut txn = self.begin()?;
        read(&mut txn);
        // Dropped uncommitted: redb aborts the transaction.
        Ok(())
    }

    fn gauge(&self) -> SpaceGauge {
        Store::gauge(self)
    }

    fn bytes_written(&self) -> u64 {
        self.written
    }

    fn commits(&self) -> Option<u64> {
        Some(self.commits)
    }

    fn rotate_kek(&mut self, now: UnixMillis) -> Result<KekRotation, StoreError> {
        let wrap = self.wrap.clone().ok_or(StoreError::NoLiveRotation)?;
        self.start_epoch_live(wrap.as_ref(), now)
    }

    fn rotation_step(&mut self) -> Result<Rotation, StoreError> {
        match self.wrap.clone() {
            Some(wrap) => self.rotate_step(wrap.as_ref()),
            None => Ok(Rotation::Done),
        }
    }
}

impl Txn<'_> {
    /// Bytes of records (table key plus value) this transaction wrote so far: what the store's
    /// `qkd_store_bytes_written_total` counts (the database writes whole pages, somewhat more).
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Commits durably: its record appended to the write-ahead log and synced, then committed
    /// to the database without durability; or, when a checkpoint is due (the log is full, or
    /// the record large), committed to the database durably.
    pub fn commit(self) -> Result<(), StoreError> {
        let (mut tx, redo) = self.tx.into_parts();
        let seq = self.wal.next_seq();
        tx.open_table(META)?.insert(WAL_SEQ, seq)?;
        let plan = match self.wal.plan(redo.bytes().len()) {
            Commit::Log => match self.wal.append(seq, redo.bytes()) {
                Ok(()) => Commit::Log,
                Err(e) => {
                    // A log that cannot take the record (a full disk): the database can still
                    // take the batch durably.
                    tracing::warn!(error = %e, "write-ahead log refused a batch; committing it durably");
                    Commit::Checkpoint
                }
            },
            Commit::Checkpoint => Commit::Checkpoint,
        };
        match plan {
            Commit::Log => {
                tx.set_durability(Durability::None)?;
                tx.commit()?;
            }
            Commit::Checkpoint => {
                tx.set_durability(Durability::Immediate)?;
                tx.commit()?;
                self.wal.checkpointed(Some(seq));
            }
        }
        self.index.commit();
        Ok(())
    }

    /// A record of `table` by key ID (`which` names its index): (sequence, record without the
    /// key ID).
    fn record(
        &self,
        table: TableDefinition<u64, &[u8]>,
        which: Which,
        id: KeyId,
    ) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.find(table, which, id, |seq, record| (seq, record.to_vec()))
    }

    /// The sequence of the record of `table` for key ID `id`, without copying the record.
    fn seq_of(
        &self,
        table: TableDefinition<u64, &[u8]>,
        which: Which,
        id: KeyId,
    ) -> Result<Option<u64>, StoreError> {
        self.find(table, which, id, |seq, _| seq)
    }

    /// `found` of the record of `table` for key ID `id` (its sequence, the record without the
    /// key ID).
    fn find<T>(
        &self,
        table: TableDefinition<u64, &[u8]>,
        which: Which,
        id: KeyId,
        found: impl FnOnce(u64, &[u8]) -> T,
    ) -> Result<Option<T>, StoreError> {
        let mut seqs = self.index.candidates(which, id).peekable();
        if seqs.peek().is_none() {
            return Ok(None);
        }
        let t = self.tx.open_table(table)?;
        // Keys whose IDs share their first 8 bytes are all candidates (see [`index`]).
        for seq in seqs {
            let v = t
                .get(seq)?
                .ok_or(StoreError::Corrupt("key index names no record"))?;
            let (stored, record) = split_id(v.value())?;
            if stored == id {
                return Ok(Some(found(seq, record)));
            }
        }
        Ok(None)
    }

    fn block(&mut self, link: &LinkId, seq: u64) -> Result<&Secret, StoreError> {
        let k = (link.clone(), seq);
        if !self.block_cache.contains_key(&k) {
            let sealed = {
                let data = self.tx.open_table(BLOCK_DATA)?;
                let v = data
                    .get((link.as_str(), seq))?
                    .ok_or(StoreError::Corrupt("block missing"))?;
                decode_sealed(v.value())?
            };
            let meta = {
                let metas = self.tx.open_table(BLOCK_META)?;
                let v = metas
                    .get((link.as_str(), seq))?
                    .ok_or(StoreError::Corrupt("block meta missing"))?;
                decode_block_meta(v.value())?
            };
            let plain = self
                .keys
                .open(&block_aad(link.as_str(), seq, meta.id), &sealed)?;
            self.block_cache.insert(k.clone(), plain);
        }
        self.block_cache
            .get(&k)
            .ok_or(StoreError::Corrupt("block cache"))
    }
}

impl Tables for Txn<'_> {
    fn admit_ingest(&self) -> Result<(), StoreError> {
        match self.low_space {
            Some((available, watermark)) => Err(StoreError::LowSpace {
                available,
                watermark,
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
        let sealed = self
            .keys
            .seal(&block_aad(link.as_str(), seq, meta.id), key)?;
        let data = encode_sealed(&sealed);
        self.tx
            .open_table(BLOCK_DATA)?
            .insert((link.as_str(), seq), data.as_slice())?;
        self.written += (link.as_str().len() + 8 + data.len() + 16) as u64;
        self.put_block_meta(link, seq, meta)?;
        {
            // One ID in, the one a window's length older out: the table stays bounded.
            let mut ids = self.tx.open_table(DEVICE_IDS)?;
            ids.insert((link.as_str(), seq), *meta.id.as_bytes())?;
            if let Some(old) = seq.checked_sub(SEEN_DEVICE_IDS as u64) {
                ids.remove((link.as_str(), old))?;
            }
        }
        let mut links = self.tx.open_table(LINKS)?;
        let next = links
            .get(link.as_str())?
            .map_or(0, |v| v.value())
            .max(seq + 1);
        links.insert(link.as_str(), next)?;
        Ok(())
    }

    fn put_block_meta(
        &mut self,
        link: &LinkId,
        seq: u64,
        meta: &BlockMeta,
    ) -> Result<(), StoreError> {
        let v = encode_block_meta(meta);
        self.tx
            .open_table(BLOCK_META)?
            .insert((link.as_str(), seq), v.as_slice())?;
        self.written += (link.as_str().len() + 8 + v.len()) as u64;
        Ok(())
    }

    fn delete_block(&mut self, link: &LinkId, seq: u64) -> Result<(), StoreError> {
        self.tx
            .open_table(BLOCK_META)?
            .remove((link.as_str(), seq))?;
        self.tx
            .open_table(BLOCK_DATA)?
            .remove((link.as_str(), seq))?;
        self.block_cache.remove(&(link.clone(), seq));
        Ok(())
    }

    fn read_ranges(&mut self, link: &LinkId, ranges: &[Range]) -> Result<Secret, StoreError> {
        tables::read_runs(ranges, |r, to| {
            tables::copy_range(self.block(link, r.block_seq)?, r, to)
        })
    }

    fn key_id_used(&self, id: KeyId) -> Result<bool, StoreError> {
        Ok(self.seq_of(KEYS, Which::Keys, id)?.is_some() || self.tomb_time(id)?.is_some())
    }

    fn put_key(&mut self, id: KeyId, meta: &StoredKey, key: &Secret) -> Result<(), StoreError> {
        self.admit_ingest()?;
        let sealed = self.keys.seal(&key_aad(id, meta), key)?;
        let v = with_id(id, &encode_key(meta, &sealed));
        let seq = match self.seq_of(KEYS, Which::Keys, id)? {
            Some(seq) => seq,
            None => self.index.add(Which::Keys, id),
        };
        self.tx.open_table(KEYS)?.insert(seq, v.as_slice())?;
        self.tx
            .open_table(KEY_EXPIRY)?
            .insert((meta.expires_at, *id.as_bytes()), ())?;
        self.written += (16 + v.len() + 8 + 16) as u64;
        Ok(())
    }

    fn key_meta(&self, id: KeyId) -> Result<Option<StoredKey>, StoreError> {
        let Some((_, v)) = self.record(KEYS, Which::Keys, id)? else {
            return Ok(None);
        };
        let (meta, _, confirmed) = decode_key_record(&v)?;
        Ok(confirmed.then_some(meta))
    }

    fn key_bytes(&self, id: KeyId) -> Result<Option<Secret>, StoreError> {
        let Some((_, v)) = self.record(KEYS, Which::Keys, id)? else {
            return Ok(None);
        };
        let (meta, sealed, confirmed) = decode_key_record(&v)?;
        if !confirmed {
            return Ok(None);
        }
        Ok(Some(self.keys.open(&key_aad(id, &meta), &sealed)?))
    }

    fn update_key_meta(&mut self, id: KeyId, meta: &StoredKey) -> Result<(), StoreError> {
        let (seq, v) = self
            .record(KEYS, Which::Keys, id)?
            .ok_or(StoreError::Corrupt("key vanished"))?;
        let sealed = decode_key(&v)?.1;
        // The AAD binds the SAE names and size, not the fetched flags, so the ciphertext stays.
        let v = with_id(id, &encode_key(meta, &sealed));
        self.tx.open_table(KEYS)?.insert(seq, v.as_slice())?;
        self.written += (8 + v.len()) as u64;
        Ok(())
    }

    fn retire_key(
        &mut self,
        id: KeyId,
        meta: &StoredKey,
        now: UnixMillis,
    ) -> Result<(), StoreError> {
        if let Some(seq) = self.seq_of(KEYS, Which::Keys, id)? {
            self.tx.open_table(KEYS)?.remove(seq)?;
            self.index.remove(Which::Keys, id, seq);
        }
        self.tx
            .open_table(KEY_EXPIRY)?
            .remove((meta.expires_at, *id.as_bytes()))?;
        self.put_tombstone(id, &meta.master, meta.slaves.first().map(|s| &s.0), now)
    }

    fn put_tombstone(
        &mut self,
        id: KeyId,
        master: &SaeId,
        slave: Option<&SaeId>,
        now: UnixMillis,
    ) -> Result<(), StoreError> {
        self.write_tomb(id, master, slave, now)
    }

    fn put_pool_key(&mut self, id: KeyId, meta: &PoolKey, key: &Secret) -> Result<(), StoreError> {
        self.admit_ingest()?;
        let sealed = self.keys.seal(&pool_aad(id, meta), key)?;
        let v = with_id(id, &encode_pool_key(meta, &sealed));
        let seq = match self.seq_of(POOL, Which::Pool, id)? {
            Some(seq) => seq,
            None => self.index.add(Which::Pool, id),
        };
        self.tx.open_table(POOL)?.insert(seq, v.as_slice())?;
        self.written += (8 + v.len()) as u64;
        Ok(())
    }

    fn has_pool_key(&self, id: KeyId) -> Result<bool, StoreError> {
        Ok(self.seq_of(POOL, Which::Pool, id)?.is_some())
    }

    fn take_pool_key(&mut self, id: KeyId) -> Result<Option<(PoolKey, Secret)>, StoreError> {
        let Some((seq, v)) = self.record(POOL, Which::Pool, id)? else {
            return Ok(None);
        };
        let (meta, sealed) = decode_pool_key(&v)?;
        let key = self.keys.open(&pool_aad(id, &meta), &sealed)?;
        self.tx.open_table(POOL)?.remove(seq)?;
        self.index.remove(Which::Pool, id, seq);
        Ok(Some((meta, key)))
    }

    fn tombstone(
        &self,
        id: KeyId,
    ) -> Result<Option<(UnixMillis, SaeId, Option<SaeId>)>, StoreError> {
        self.tomb_record(id)
    }

    fn queue_notice(
        &mut self,
        dest: &NodeId,
        key_ids: &[KeyId],
        delivered_at: UnixMillis,
    ) -> Result<(), StoreError> {
        let mut t = self.tx.open_table(NOTICES)?;
        let seq = t
            .range((dest.as_str(), 0)..=(dest.as_str(), u64::MAX))?
            .next_back()
            .transpose()?
            .map_or(0, |(k, _)| k.value().1 + 1);
        let mut v = Vec::with_capacity(8 + 16 * key_ids.len());
        v.extend_from_slice(&delivered_at.to_be_bytes());
        for id in key_ids {
            v.extend_from_slice(id.as_bytes());
        }
        t.insert((dest.as_str(), seq), v.as_slice())?;
        drop(t);
        self.written += (dest.as_str().len() + 8 + v.len()) as u64;
        Ok(())
    }

    fn queued_notices(
        &self,
        after: Option<&NodeId>,
        limit: usize,
    ) -> Result<Vec<(NodeId, u64, UnixMillis, Vec<KeyId>)>, StoreError> {
        let t = self.tx.open_table(NOTICES)?;
        let mut out = Vec::new();
        // From `after`'s last possible entry on; that entry itself (if any) is skipped below.
        let entries = match after {
            Some(a) => t.range((a.as_str(), u64::MAX)..)?,
            None => t.range::<(&str, u64)>(..)?,
        };
        let mut entries = entries.peekable();
        if let (Some(a), Some(Ok((k, _)))) = (after, entries.peek())
            && k.value().0 == a.as_str()
        {
            entries.next();
        }
        for entry in entries.take(limit) {
            let (k, v) = entry?;
            let (dest, seq) = k.value();
            let dest = NodeId::parse(dest).map_err(|_| StoreError::Corrupt("notice node"))?;
            let v = v.value();
            if v.len() < 8 || !(v.len() - 8).is_multiple_of(16) {
                return Err(StoreError::Corrupt("notice"));
            }
            let mut at = [0u8; 8];
            at.copy_from_slice(&v[..8]);
            let ids = v[8..]
                .chunks_exact(16)
                .map(|c| {
                    let mut b = [0u8; 16];
                    b.copy_from_slice(c);
                    KeyId::from_bytes(b)
                })
                .collect();
            out.push((dest, seq, u64::from_be_bytes(at), ids));
        }
        Ok(out)
    }

    fn drop_notice(&mut self, dest: &NodeId, seq: u64) -> Result<(), StoreError> {
        self.tx.open_table(NOTICES)?.remove((dest.as_str(), seq))?;
        Ok(())
    }

    fn set_key_expiry(
        &mut self,
        id: KeyId,
        meta: &StoredKey,
        expires_at: UnixMillis,
    ) -> Result<(), StoreError> {
        let mut idx = self.tx.open_table(KEY_EXPIRY)?;
        idx.remove((meta.expires_at, *id.as_bytes()))?;
        idx.insert((expires_at, *id.as_bytes()), ())?;
        drop(idx);
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
        let t = self.tx.open_table(KEYS)?;
        let mut out = Vec::new();
        // Short IDs are in key-ID order; keys sharing one (see [`index`]) are sorted here.
        for (_, seqs) in self.index.index.keys.from(after) {
            if out.len() >= limit {
                break;
            }
            let mut group = Vec::new();
            for seq in seqs {
                let v = t
                    .get(seq)?
                    .ok_or(StoreError::Corrupt("key index names no record"))?;
                let (id, record) = split_id(v.value())?;
                if after.is_none_or(|a| id > a) {
                    group.push((id, decode_key(record)?.0));
                }
            }
            group.sort_by_key(|(id, _)| *id);
            out.extend(group.into_iter().take(limit - out.len()));
        }
        Ok(out)
    }

    fn expired_keys(
        &self,
        now: UnixMillis,
        limit: usize,
    ) -> Result<Vec<(KeyId, StoredKey)>, StoreError> {
        let idx = self.tx.open_table(KEY_EXPIRY)?;
        let mut out = Vec::new();
        for entry in idx.range(..=(now, [0xff; 16]))?.take(limit) {
            let (k, _) = entry?;
            let (_, id) = k.value();
            let id = KeyId::from_bytes(id);
            let meta = self
                .key_meta(id)?
                .ok_or(StoreError::Corrupt("expiry index names no key"))?;
            out.push((id, meta));
        }
        Ok(out)
    }

    fn prune_tombstones(&mut self, before: UnixMillis, limit: usize) -> Result<usize, StoreError> {
        self.prune_tombs(before, limit)
    }

    fn stream(&self, id: KeyStreamId) -> Result<Option<StreamRecord>, StoreError> {
        self.stream_record(id)
    }

    fn put_stream(&mut self, record: &StreamRecord) -> Result<(), StoreError> {
        self.put_stream_record(record)
    }

    fn delete_stream(&mut self, id: KeyStreamId) -> Result<(), StoreError> {
        self.delete_stream_record(id)
    }

    fn streams(&self) -> Result<Vec<StreamRecord>, StoreError> {
        self.stream_records()
    }
}

fn block_aad(link: &str, seq: u64, id: BlockId) -> Vec<u8> {
    let mut v = Vec::with_capacity(64);
    enc(&mut v, b"QKMS-store-v1 block");
    enc(&mut v, link.as_bytes());
    v.extend_from_slice(&seq.to_be_bytes());
    enc(&mut v, id.as_bytes());
    v
}

/// AAD of a waiting key (docs/hybrid.md, "At rest"): `enc("QKMS-store-v1") ‖ enc(uuid key_ID) ‖
/// enc(id SAE_master) ‖ enc(id SAE_slave) ‖ u8(role = 1, dec) ‖ … ‖ u32be(size_bits)`; epoch and
/// nonce are appended by the vault.
fn key_aad(id: KeyId, meta: &StoredKey) -> Vec<u8> {
    let mut v = Vec::with_capacity(96);
    enc(&mut v, b"QKMS-store-v1");
    enc(&mut v, id.as_bytes());
    enc(&mut v, meta.master.as_str().as_bytes());
    for (s, _) in &meta.slaves {
        enc(&mut v, s.as_str().as_bytes());
    }
    v.push(1);
    v.extend_from_slice(&meta.size_bits.to_be_bytes());
    v
}

/// AAD of a pool key: like [`key_aad`] with role 0 (the master side, enc).
fn pool_aad(id: KeyId, meta: &PoolKey) -> Vec<u8> {
    let mut v = Vec::with_capacity(96);
    enc(&mut v, b"QKMS-store-v1");
    enc(&mut v, id.as_bytes());
    enc(&mut v, meta.master.as_str().as_bytes());
    for s in &meta.slaves {
        enc(&mut v, s.as_str().as_bytes());
    }
    v.push(0);
    v.extend_from_slice(&meta.size_bits.to_be_bytes());
    v
}

pub(crate) fn encode_pool_key(m: &PoolKey, s: &Sealed) -> Vec<u8> {
    let mut w = W::default();
    w.u8(2).str(m.master.as_str()).u32(m.slaves.len() as u32);
    for s in &m.slaves {
        w.str(s.as_str());
    }
    w.u32(m.size_bits).u64(m.created_at);
    encode_made_under(&mut w, m.made_under.as_ref());
    w.0.extend_from_slice(&encode_sealed(s));
    w.0
}

/// Version 2 records carry what a key was made under: `u8(present) [‖ str policy ‖ str suite]`.
fn encode_made_under(w: &mut W, m: Option<&MadeUnder>) {
    match m {
        None => {
            w.u8(0);
        }
        Some(m) => {
            w.u8(1).str(&m.policy).str(&m.suite);
        }
    }
}

fn decode_made_under(r: &mut R<'_>) -> Result<Option<MadeUnder>, StoreError> {
    Ok(match r.u8()? {
        0 => None,
        1 => Some(MadeUnder {
            policy: r.str()?.to_string(),
            suite: r.str()?.to_string(),
        }),
        _ => return Err(StoreError::Corrupt("made-under flag")),
    })
}

pub(crate) fn decode_pool_key(v: &[u8]) -> Result<(PoolKey, Sealed), StoreError> {
    let mut r = R(v);
    let version = r.u8()?;
    if !(1..=2).contains(&version) {
        return Err(StoreError::Corrupt("pool key version"));
    }
    let master = sae(r.str()?)?;
    let n = r.u32()?;
    // A count read from the record is not trusted to size an allocation: each entry takes at
    // least four bytes, so no honest record holds more than its remaining length allows.
    let mut slaves = Vec::with_capacity((n as usize).min(r.0.len() / 4));
    for _ in 0..n {
        slaves.push(sae(r.str()?)?);
    }
    let size_bits = r.u32()?;
    let created_at = r.u64()?;
    let made_under = if version >= 2 {
        decode_made_under(&mut r)?
    } else {
        None
    };
    let sealed = decode_sealed(r.0)?;
    Ok((
        PoolKey {
            master,
            slaves,
            size_bits,
            created_at,
            made_under,
        },
        sealed,
    ))
}

pub(crate) fn encode_sealed(s: &Sealed) -> Vec<u8> {
    let mut w = W::default();
    w.u64(s.epoch).u64(s.nonce).bytes(&s.ct);
    w.0
}

pub(crate) fn decode_sealed(v: &[u8]) -> Result<Sealed, StoreError> {
    let mut r = R(v);
    Ok(Sealed {
        epoch: r.u64()?,
        nonce: r.u64()?,
        ct: r.bytes()?.to_vec(),
    })
}

pub(crate) fn encode_block_meta(m: &BlockMeta) -> Vec<u8> {
    let mut w = W::default();
    w.u8(1).bytes(m.id.as_bytes()).u32(m.len).u8(match m.state {
        BlockState::Pending => 0,
        BlockState::Available => 1,
    });
    w.u32(m.taken.len() as u32);
    for (s, e) in &m.taken {
        w.u32(*s).u32(*e);
    }
    w.0
}

pub(crate) fn decode_block_meta(v: &[u8]) -> Result<BlockMeta, StoreError> {
    let mut r = R(v);
    if r.u8()? != 1 {
        return Err(StoreError::Corrupt("block meta version"));
    }
    let id = r.bytes()?;
    let id = BlockId::from_bytes(id.try_into().map_err(|_| StoreError::Corrupt("block id"))?);
    let len = r.u32()?;
    let state = match r.u8()? {
        0 => BlockState::Pending,
        1 => BlockState::Available,
        _ => return Err(StoreError::Corrupt("block state")),
    };
    let n = r.u32()?;
    let mut taken = Vec::with_capacity((n as usize).min(r.0.len() / 8));
    for _ in 0..n {
        taken.push((r.u32()?, r.u32()?));
    }
    Ok(BlockMeta {
        id,
        len,
        state,
        taken,
    })
}

/// A record of a table by sequence: `key ID ‖ record`.
fn with_id(id: KeyId, record: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + record.len());
    v.extend_from_slice(id.as_bytes());
    v.extend_from_slice(record);
    v
}

/// The key ID and the record of a value of a table by sequence.
fn split_id(v: &[u8]) -> Result<(KeyId, &[u8]), StoreError> {
    let (id, record) = v
        .split_first_chunk::<16>()
        .ok_or(StoreError::Corrupt("record shorter than its key ID"))?;
    Ok((KeyId::from_bytes(*id), record))
}

fn sae(s: &str) -> Result<SaeId, StoreError> {
    SaeId::parse(s).map_err(|_| StoreError::Corrupt("SAE id"))
}

pub(crate) fn encode_key(m: &StoredKey, s: &Sealed) -> Vec<u8> {
    encode_key_record(m, s, true)
}

/// The record of a waiting key. `confirmed` is always true for keys stored by this version (a
/// destination stores its keys only once their batch is confirmed end to end); the byte stays in
/// the record because older nodes stored keys before confirmation with it at zero.
fn encode_key_record(m: &StoredKey, s: &Sealed, confirmed: bool) -> Vec<u8> {
    let mut w = W::default();
    w.u8(2)
        .bytes(&m.request)
        .str(m.master.as_str())
        .u32(m.slaves.len() as u32);
    for (s, done) in &m.slaves {
        w.str(s.as_str()).u8(u8::from(*done));
    }
    w.u32(m.size_bits).u64(m.expires_at).u8(u8::from(confirmed));
    encode_made_under(&mut w, m.made_under.as_ref());
    w.u8(u8::from(m.pool));
    w.0.extend_from_slice(&encode_sealed(s));
    w.0
}

/// A waiting key's record without its confirmation flag (see [`decode_key_record`]).
pub(crate) fn decode_key(v: &[u8]) -> Result<(StoredKey, Sealed), StoreError> {
    decode_key_record(v).map(|(m, s, _)| (m, s))
}

/// A waiting key's record and whether its batch was confirmed: false only in records of older
/// nodes, which stored a destination's keys before the end-to-end confirmation. Such a key is
/// never served, and the next rotation pass erases it.
pub(crate) fn decode_key_record(v: &[u8]) -> Result<(StoredKey, Sealed, bool), StoreError> {
    let mut r = R(v);
    let version = r.u8()?;
    if !(1..=2).contains(&version) {
        return Err(StoreError::Corrupt("key version"));
    }
    let request: [u8; 16] = r
        .bytes()?
        .try_into()
        .map_err(|_| StoreError::Corrupt("request id"))?;
    let master = sae(r.str()?)?;
    let n = r.u32()?;
    // A count read from the record is not trusted to size an allocation: each entry takes at
    // least four bytes, so no honest record holds more than its remaining length allows.
    let mut slaves = Vec::with_capacity((n as usize).min(r.0.len() / 4));
    for _ in 0..n {
        slaves.push((sae(r.str()?)?, r.u8()? != 0));
    }
    let size_bits = r.u32()?;
    let expires_at = r.u64()?;
    let confirmed = r.u8()? != 0;
    let (made_under, pool) = if version >= 2 {
        (decode_made_under(&mut r)?, r.u8()? != 0)
    } else {
        (None, false)
    };
    let sealed = decode_sealed(r.0)?;
    Ok((
        StoredKey {
            request,
            master,
            slaves,
            size_bits,
            expires_at,
            made_under,
            pool,
        },
        sealed,
        confirmed,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::vault::FileKek;

    fn open(dir: &Path) -> (Store, Recovered) {
        let kek = FileKek::open(&dir.join("keys"), 1_000, 86_400_000).unwrap();
        Store::open(&dir.join("store.redb"), &kek).unwrap()
    }

    fn sae(s: &str) -> SaeId {
        SaeId::parse(s).unwrap()
    }

    fn waiting(expires_at: u64) -> StoredKey {
        StoredKey {
            request: [7; 16],
            master: sae("M"),
            slaves: vec![(sae("S"), false)],
            size_bits: 256,
            expires_at,
            made_under: Some(MadeUnder {
                policy: "QKD+PQ+T".into(),
                suite: "X25519/ML-KEM-768".into(),
            }),
            pool: true,
        }
    }

    #[test]
    fn delivery_notices_queue_in_order_and_move_expiry() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("keys")).unwrap();
        let (mut store, _) = open(dir.path());
        let (b, c) = (NodeId::parse("B").unwrap(), NodeId::parse("C").unwrap());
        let (k1, k2) = (KeyId::random(), KeyId::random());
        let mut tx = store.begin().unwrap();
        tx.queue_notice(&b, &[k1], 10).unwrap();
        tx.queue_notice(&c, &[k2], 11).unwrap();
        tx.queue_notice(&b, &[k1, k2], 12).unwrap();
        let q = tx.queued_notices(None, 10).unwrap();
        assert_eq!(
            q,
            vec![
                (b.clone(), 0, 10, vec![k1]),
                (b.clone(), 1, 12, vec![k1, k2]),
                (c.clone(), 0, 11, vec![k2]),
            ]
        );
        tx.drop_notice(&b, 0).unwrap();
        assert_eq!(tx.queued_notices(None, 10).unwrap().len(), 2);
        // A notice moves a waiting key's expiry, index included.
        tx.put_key(k1, &waiting(1_000), &Secret::copy_from(&[1; 32]))
            .unwrap();
        let meta = tx.key_meta(k1).unwrap().unwrap();
        tx.set_key_expiry(k1, &meta, 500).unwrap();
        assert_eq!(tx.key_meta(k1).unwrap().unwrap().expires_at, 500);
        assert_eq!(tx.expired_keys(499, 10).unwrap().len(), 0);
        assert_eq!(tx.expired_keys(500, 10).unwrap()[0].0, k1);
        assert_eq!(tx.key_bytes(k1).unwrap().unwrap().expose(), &[1; 32]);
    }

    #[test]
    fn records_of_the_first_version_still_decode_with_no_recorded_origin() {
        let sealed = Sealed {
            epoch: 3,
            nonce: 9,
            ct: vec![1, 2, 3],
        };
        // A version 1 pool key and waiting key, as stored before the origin was recorded.
        let mut w = W::default();
        w.u8(1).str("M").u32(1).str("S").u32(256).u64(5);
        w.0.extend_from_slice(&encode_sealed(&sealed));
        let (pool, _) = decode_pool_key(&w.0).unwrap();
        assert_eq!(pool.made_under, None);
        let mut w = W::default();
        w.u8(1).bytes(&[7; 16]).str("M").u32(1).str("S").u8(0);
        w.u32(256).u64(100).u8(1);
        w.0.extend_from_slice(&encode_sealed(&sealed));
        let (key, s) = decode_key(&w.0).unwrap();
        assert_eq!(
            (key.made_under, key.pool, s.ct),
            (None, false, vec![1, 2, 3])
        );
        // Version 2 round-trips what it records.
        let meta = waiting(100);
        let (back, _) = decode_key(&encode_key(&meta, &sealed)).unwrap();
        assert_eq!((back.made_under, back.pool), (meta.made_under, meta.pool));
    }

    /// A live rotation: a fresh epoch under a new KEK period while the store stays open; the
    /// pass re-encrypts what was there in steps, with writes in between; once done, one epoch is
    /// live, every record opens with the same bytes, and the old KEK file is gone.
    #[test]
    fn the_kek_rotates_while_the_store_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        std::fs::create_dir_all(&keys).unwrap();
        let kek_files = || {
            let mut v: Vec<_> = std::fs::read_dir(&keys)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            v.sort();
            v
        };
        let wrap: Arc<dyn KeyWrap> = Arc::new(FileKek::open(&keys, 1_000, 86_400_000).unwrap());
        let opts = StoreOptions {
            rotation_batch: 2,
            ..StoreOptions::default()
        };
        let (mut store, rec) =
            Store::open_rotating(&dir.path().join("store.redb"), wrap, opts).unwrap();
        let before = kek_files();
        assert_eq!(before.len(), 1);
        let ids: Vec<KeyId> = (0..5).map(|_| KeyId::random()).collect();
        let mut tx = store.begin().unwrap();
        for (i, id) in ids.iter().enumerate() {
            tx.put_key(*id, &waiting(100), &Secret::copy_from(&[i as u8; 32]))
                .unwrap();
        }
        tx.commit().unwrap();

        let k = store.rotate_kek(2_000).unwrap();
        assert_eq!((k.epoch, k.older_epochs), (rec.epoch + 1, 1));
        assert_eq!(
            kek_files().len(),
            2,
            "the old KEK stays while an epoch needs it"
        );
        // A write between steps is sealed under the new epoch.
        let late = KeyId::random();
        let mut tx = store.begin().unwrap();
        tx.put_key(late, &waiting(100), &Secret::copy_from(&[9; 32]))
            .unwrap();
        tx.commit().unwrap();
        let mut steps = 0;
        while store.rotation_step().unwrap() == Rotation::Pending {
            steps += 1;
        }
        assert!(steps >= 2, "5 records in steps of 2: {steps}");
        assert_eq!(live_epochs(&store), vec![k.epoch]);
        assert!(record_epochs(&store).iter().all(|e| *e == k.epoch));
        let after = kek_files();
        assert_eq!(after, vec![format!("kek-{}.key", k.period)]);
        assert_ne!(after, before);
        let tx = store.begin().unwrap();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(
                tx.key_bytes(*id).unwrap().unwrap(),
                Secret::copy_from(&[i as u8; 32])
            );
        }
        assert_eq!(
            tx.key_bytes(late).unwrap().unwrap(),
            Secret::copy_from(&[9; 32])
        );
        drop(tx);
        // A store opened without its KeyWrap kept says so; the in-memory model too.
        drop(store);
        let kek = FileKek::open(&keys, 3_000, 86_400_000).unwrap();
        let (mut plain, _) = Store::open(&dir.path().join("store.redb"), &kek).unwrap();
        assert!(matches!(
            plain.rotate_kek(3_000),
            Err(StoreError::NoLiveRotation)
        ));
    }

    #[test]
    fn blocks_keys_and_pool_survive_reopen_under_a_new_epoch() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("keys")).unwrap();
        let link = LinkId::parse("A-B").unwrap();
        let block = BlockMeta {
            id: BlockId::random(),
            len: 64,
            state: BlockState::Available,
            taken: vec![],
        };
        let bytes: Vec<u8> = (0..64).collect();
        let key_id = KeyId::random();
        let pool_id = KeyId::random();
        let pool_meta = PoolKey {
            master: sae("M"),
            slaves: vec![sae("S")],
            size_bits: 256,
            created_at: 5,
            made_under: None,
        };
        let epoch1 = {
            let (mut store, rec) = open(dir.path());
            let mut tx = store.begin().unwrap();
            tx.put_block(&link, 0, &block, &Secret::copy_from(&bytes))
                .unwrap();
            tx.put_key(key_id, &waiting(100), &Secret::copy_from(&[1; 32]))
                .unwrap();
            tx.put_pool_key(pool_id, &pool_meta, &Secret::copy_from(&[2; 32]))
                .unwrap();
            tx.commit().unwrap();
            rec.epoch
        };
        let (mut store, rec) = open(dir.path());
        assert_eq!(rec.epoch, epoch1 + 1, "a fresh epoch at every open");
        assert_eq!(rec.links[&link].1.len(), 1);
        assert_eq!(rec.device_ids[&link], vec![block.id]);
        assert_eq!(rec.pool, vec![(pool_id, pool_meta)]);
        let mut tx = store.begin().unwrap();
        let r = crate::core::pool::Range {
            block_seq: 0,
            offset: 10,
            len: 4,
        };
        assert_eq!(
            tx.read_ranges(&link, &[r]).unwrap().expose(),
            &[10, 11, 12, 13]
        );
        assert_eq!(
            tx.key_bytes(key_id).unwrap().unwrap(),
            Secret::copy_from(&[1; 32])
        );
        assert_eq!(
            tx.take_pool_key(pool_id).unwrap().unwrap().1,
            Secret::copy_from(&[2; 32])
        );
        assert!(tx.take_pool_key(pool_id).unwrap().is_none());
        tx.commit().unwrap();
        // The data file holds no plaintext key bytes.
        let raw = std::fs::read(dir.path().join("store.redb")).unwrap();
        assert!(!raw.windows(32).any(|w| w == [1u8; 32]));
        assert!(!raw.windows(16).any(|w| w == &bytes[16..32]));
    }

    #[test]
    fn expiry_and_tombstones_are_found_by_time() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("keys")).unwrap();
        let (mut store, _) = open(dir.path());
        let ids: Vec<KeyId> = (0..5).map(|_| KeyId::random()).collect();
        let mut tx = store.begin().unwrap();
        for (i, id) in ids.iter().enumerate() {
            tx.put_key(
                *id,
                &waiting(100 * (i as u64 + 1)),
                &Secret::copy_from(&[3; 32]),
            )
            .unwrap();
        }
        let expired = tx.expired_keys(250, 10).unwrap();
        assert_eq!(
            expired.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            ids[..2].to_vec()
        );
        for (id, meta) in &expired {
            tx.retire_key(*id, meta, 1_000).unwrap();
        }
        assert!(tx.expired_keys(250, 10).unwrap().is_empty());
        assert!(
            tx.key_id_used(ids[0]).unwrap(),
            "a tombstone keeps the ID used"
        );
        assert_eq!(tx.tombstone(ids[0]).unwrap().unwrap().0, 1_000);
        assert_eq!(tx.expired_keys(10_000, 10).unwrap().len(), 3);
        assert_eq!(tx.prune_tombstones(1_000, 10).unwrap(), 0);
        assert_eq!(tx.prune_tombstones(1_001, 10).unwrap(), 2);
        assert!(!tx.key_id_used(ids[0]).unwrap());
        tx.commit().unwrap();
    }

    fn open_disk(
        disk: &std::sync::Arc<faulty::Disk>,
        kek: &dyn KeyWrap,
        opts: StoreOptions,
        open_steps: usize,
    ) -> Result<(Store, Recovered), StoreError> {
        Store::open_backend(
            disk.backend(),
            disk.log(),
            kek,
            opts,
            disk.space(),
            open_steps,
        )
    }

    /// Small numbers for a small simulated disk.
    fn small_opts() -> StoreOptions {
        StoreOptions {
            watermark_bytes: 1 << 20,
            reserve_bytes: 512 << 10,
            rotation_batch: 16,
            log_bytes: 256 << 10,
        }
    }

    /// Key IDs, each with the byte its key is filled with.
    type Filled = Vec<(KeyId, u8)>;

    /// Writes pool keys and waiting keys in batches of 32 each until the store refuses or a
    /// commit fails. Returns what committed and the error that stopped it.
    fn fill(store: &mut Store) -> (Filled, Filled, StoreError) {
        let (mut pool, mut waiting_keys) = (Vec::new(), Vec::new());
        for round in 0..10_000u32 {
            let fill = (round % 200) as u8 + 20;
            let batch_pool: Vec<KeyId> = (0..32).map(|_| KeyId::random()).collect();
            let batch_wait: Vec<KeyId> = (0..32).map(|_| KeyId::random()).collect();
            let attempt = (|| -> Result<(), StoreError> {
                let mut tx = store.begin()?;
                for id in &batch_pool {
                    tx.put_pool_key(*id, &pool_meta(), &Secret::copy_from(&[fill; 32]))?;
                }
                for id in &batch_wait {
                    tx.put_key(*id, &waiting(u64::MAX), &Secret::copy_from(&[fill; 32]))?;
                }
                tx.commit()
            })();
            if let Err(e) = attempt {
                return (pool, waiting_keys, e);
            }
            pool.extend(batch_pool.into_iter().map(|id| (id, fill)));
            waiting_keys.extend(batch_wait.into_iter().map(|id| (id, fill)));
        }
        panic!("the store never stopped taking keys");
    }

    fn pool_meta() -> PoolKey {
        PoolKey {
            master: sae("M"),
            slaves: vec![sae("S")],
            size_bits: 256,
            created_at: 5,
            made_under: None,
        }
    }

    /// Consumes 16 pool keys and 16 waiting keys from `from` on, in one commit, checking bytes.
    fn consume(store: &mut Store, pool: &Filled, waiting_keys: &Filled, from: usize) {
        let mut tx = store.begin().unwrap();
        for (id, fill) in &pool[from..from + 16] {
            let (meta, key) = tx.take_pool_key(*id).unwrap().unwrap();
            assert_eq!(key, Secret::copy_from(&[*fill; 32]));
            tx.put_tombstone(*id, &meta.master, meta.slaves.first(), 2_000)
                .unwrap();
        }
        for (id, fill) in &waiting_keys[from..from + 16] {
            let meta = tx.key_meta(*id).unwrap().unwrap();
            assert_eq!(
                tx.key_bytes(*id).unwrap().unwrap(),
                Secret::copy_from(&[*fill; 32])
            );
            tx.retire_key(*id, &meta, 2_000).unwrap();
        }
        tx.commit().expect("consumption commits");
    }

    fn assert_low_space(e: &StoreError) {
        assert!(matches!(e, StoreError::LowSpace { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("low on space") && msg.contains("watermark") && msg.contains("refused"),
            "{msg}"
        );
    }

    /// No run of 32 equal bytes with a value the test keys are filled with (20..220).
    fn assert_no_plaintext(raw: &[u8]) {
        let mut run = 0;
        for w in raw.windows(2) {
            run = if w[0] == w[1] { run + 1 } else { 0 };
            assert!(
                !(run >= 31 && (20..220).contains(&w[0])),
                "plaintext key bytes on disk"
            );
        }
    }

    /// Defect 5: the disk filled (the store stopped at its watermark, then another program took
    /// the rest). A restart opens a fresh epoch without free space in proportion to the store,
    /// and serves the stored keys; ingest resumes once space is freed.
    #[test]
    fn reopens_on_a_full_disk_and_serves_stored_keys() {
        let dir = tempfile::tempdir().unwrap();
        let kek = FileKek::open(dir.path(), 1_000, 86_400_000).unwrap();
        let disk = faulty::Disk::new(8 << 20);
        let opts = small_opts();
        let (mut store, rec) = open_disk(&disk, &kek, opts, usize::MAX).unwrap();
        let first_epoch = rec.epoch;
        assert_eq!(disk.space().reserved().unwrap(), 512 << 10);
        let (pool, waiting_keys, stop) = fill(&mut store);
        assert_low_space(&stop);
        assert_eq!(disk.refused(), 0, "the watermark stopped ingest first");
        assert!(pool.len() > 1000, "filled with {} pool keys", pool.len());
        // Another program takes every free block, and the node restarts.
        disk.set_limit(disk.used());
        drop(store);

        let (mut store, rec) = open_disk(&disk, &kek, opts, usize::MAX)
            .expect("a store on a full disk opens (fresh epoch, no bulk re-encryption)");
        assert_eq!(rec.epoch, first_epoch + 1);
        assert_eq!(rec.pool.len(), pool.len());
        assert_eq!(disk.space().reserved().unwrap(), 0, "reserve released");
        assert!(store.rotation_pending(), "no room to retire the old epoch");
        for chunk in 0..4 {
            consume(&mut store, &pool, &waiting_keys, chunk * 16);
        }
        let mut tx = store.begin().unwrap();
        assert_low_space(
            &tx.put_pool_key(KeyId::random(), &pool_meta(), &Secret::copy_from(&[9; 32]))
                .unwrap_err(),
        );
        drop(tx);
        drop(store);

        // A restart after consuming still works on the full disk.
        let (mut store, rec) = open_disk(&disk, &kek, opts, usize::MAX).unwrap();
        assert_eq!(rec.epoch, first_epoch + 2);
        assert_eq!(rec.pool.len(), pool.len() - 64);
        consume(&mut store, &pool, &waiting_keys, 64);
        {
            let tx = store.begin().unwrap();
            assert!(tx.key_id_used(waiting_keys[0].0).unwrap());
            assert!(tx.key_meta(waiting_keys[0].0).unwrap().is_none());
        }
        drop(store);

        // The operator frees space: the reserve is taken again, older epochs retire, ingest
        // resumes.
        disk.set_limit(disk.used() + (8 << 20));
        let (mut store, rec) = open_disk(&disk, &kek, opts, usize::MAX).unwrap();
        assert_eq!(disk.space().reserved().unwrap(), 512 << 10);
        assert!(!store.rotation_pending());
        assert_eq!(live_epochs(&store), vec![rec.epoch]);
        consume(&mut store, &pool, &waiting_keys, 80);
        let mut tx = store.begin().unwrap();
        tx.put_pool_key(KeyId::random(), &pool_meta(), &Secret::copy_from(&[9; 32]))
            .unwrap();
        tx.commit().unwrap();
        drop(store);
        assert_no_plaintext(&disk.snapshot());
    }

    /// Below the watermark, new key material of every kind is refused with a clear error that
    /// leaves the batch untouched, while reads and consumption commit.
    #[test]
    fn ingest_is_refused_below_the_watermark_and_consumption_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let kek = FileKek::open(dir.path(), 1_000, 86_400_000).unwrap();
        let disk = faulty::Disk::new(16 << 20);
        let opts = StoreOptions {
            watermark_bytes: 2 << 20,
            ..small_opts()
        };
        let (mut store, _) = open_disk(&disk, &kek, opts, usize::MAX).unwrap();
        let link = LinkId::parse("A-B").unwrap();
        let block = BlockMeta {
            id: BlockId::random(),
            len: 64,
            state: BlockState::Available,
            taken: vec![],
        };
        let pool: Filled = (0..32).map(|_| (KeyId::random(), 40)).collect();
        let waiting_keys: Filled = (0..32).map(|_| (KeyId::random(), 41)).collect();
        let mut tx = store.begin().unwrap();
        tx.put_block(&link, 0, &block, &Secret::copy_from(&[42; 64]))
            .unwrap();
        for (id, f) in &pool {
            tx.put_pool_key(*id, &pool_meta(), &Secret::copy_from(&[*f; 32]))
                .unwrap();
        }
        for (id, f) in &waiting_keys {
            tx.put_key(*id, &waiting(u64::MAX), &Secret::copy_from(&[*f; 32]))
                .unwrap();
        }
        tx.commit().unwrap();

        // Free space falls to half the watermark.
        let gauge = store.gauge();
        gauge.admit_ingest().unwrap();
        disk.set_limit(disk.used() + (1 << 20));
        assert_eq!(store.available_space(), Some(1 << 20));
        assert_low_space(&gauge.admit_ingest().unwrap_err());
        let fresh = KeyId::random();
        let mut tx = store.begin().unwrap();
        assert_low_space(
            &tx.put_block(&link, 1, &block, &Secret::copy_from(&[43; 64]))
                .unwrap_err(),
        );
        assert_low_space(
            &tx.put_pool_key(fresh, &pool_meta(), &Secret::copy_from(&[44; 32]))
                .unwrap_err(),
        );
        assert_low_space(
            &tx.put_key(fresh, &waiting(u64::MAX), &Secret::copy_from(&[44; 32]))
                .unwrap_err(),
        );
        assert_low_space(&tx.admit_ingest().unwrap_err());
        // Reads and consumption in the same batch.
        let r = Range {
            block_seq: 0,
            offset: 0,
            len: 8,
        };
        assert_eq!(tx.read_ranges(&link, &[r]).unwrap().expose(), &[42; 8]);
        let mut taken = block.clone();
        taken.taken.push((0, 8));
        tx.put_block_meta(&link, 0, &taken).unwrap();
        tx.commit().unwrap();
        consume(&mut store, &pool, &waiting_keys, 0);
        let mut tx = store.begin().unwrap();
        assert!(
            tx.key_meta(fresh).unwrap().is_none(),
            "nothing refused was written"
        );
        assert!(tx.take_pool_key(fresh).unwrap().is_none());
        drop(tx);
        let (_, _, tombstones) = store.counts().unwrap();
        assert_eq!(tombstones, 32);

        // Space freed: ingest is accepted again.
        disk.set_limit(disk.used() + (4 << 20));
        gauge.admit_ingest().unwrap();
        let mut tx = store.begin().unwrap();
        tx.put_block(&link, 1, &block, &Secret::copy_from(&[43; 64]))
            .unwrap();
        tx.commit().unwrap();
    }

    /// The epochs whose wrapped DEKs are in the store.
    fn live_epochs(store: &Store) -> Vec<u64> {
        use redb::ReadableDatabase;
        let tx = store.db.begin_read().unwrap();
        let t = tx.open_table(EPOCHS).unwrap();
        t.iter().unwrap().map(|e| e.unwrap().0.value()).collect()
    }

    /// The epoch of every sealed record.
    fn record_epochs(store: &Store) -> Vec<u64> {
        use redb::ReadableDatabase;
        let tx = store.db.begin_read().unwrap();
        let mut out = Vec::new();
        for e in tx.open_table(BLOCK_DATA).unwrap().iter().unwrap() {
            out.push(decode_sealed(e.unwrap().1.value()).unwrap().epoch);
        }
        for e in tx.open_table(KEYS).unwrap().iter().unwrap() {
            let v = e.unwrap().1;
            let record = split_id(v.value()).unwrap().1;
            out.push(decode_key(record).unwrap().1.epoch);
        }
        for e in tx.open_table(POOL).unwrap().iter().unwrap() {
            let v = e.unwrap().1;
            let record = split_id(v.value()).unwrap().1;
            out.push(decode_pool_key(record).unwrap().1.epoch);
        }
        out
    }

    /// A rotation pass in bounded steps, with a crash (reopen) after every step: at every point
    /// each record opens under an epoch whose DEK is still in the store, an epoch's DEK is
    /// deleted only once no record uses it, and its KEK period is destroyed only then.
    #[test]
    fn rotation_steps_leave_the_store_consistent_when_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let disk = faulty::Disk::new(64 << 20);
        let opts = StoreOptions {
            rotation_batch: 8,
            ..small_opts()
        };
        let period_ms = 1_000;
        let kek5 = FileKek::open(dir.path(), 5_000, period_ms).unwrap();
        let (mut store, rec) = open_disk(&disk, &kek5, opts, usize::MAX).unwrap();
        let first = rec.epoch;
        let links: Vec<LinkId> = ["A-B", "A-C"]
            .iter()
            .map(|l| LinkId::parse(l).unwrap())
            .collect();
        let blocks: Vec<(LinkId, u64, BlockMeta, u8)> = (0..20u8)
            .map(|i| {
                let meta = BlockMeta {
                    id: BlockId::random(),
                    len: 64,
                    state: BlockState::Available,
                    taken: vec![],
                };
                (
                    links[usize::from(i % 2)].clone(),
                    u64::from(i / 2),
                    meta,
                    100 + i,
                )
            })
            .collect();
        let pool: Filled = (0..30).map(|i| (KeyId::random(), 130 + i)).collect();
        let waiting_keys: Filled = (0..30).map(|i| (KeyId::random(), 170 + i)).collect();
        let unreleased = KeyId::random();
        let mut tx = store.begin().unwrap();
        for (l, seq, meta, f) in &blocks {
            tx.put_block(l, *seq, meta, &Secret::copy_from(&[*f; 64]))
                .unwrap();
        }
        for (id, f) in &pool {
            tx.put_pool_key(*id, &pool_meta(), &Secret::copy_from(&[*f; 32]))
                .unwrap();
        }
        for (id, f) in &waiting_keys {
            tx.put_key(*id, &waiting(u64::MAX), &Secret::copy_from(&[*f; 32]))
                .unwrap();
        }
        // As an older node stored it: before its batch was confirmed.
        tx.put_key(unreleased, &waiting(7), &Secret::copy_from(&[3; 32]))
            .unwrap();
        {
            let (seq, v) = tx.record(KEYS, Which::Keys, unreleased).unwrap().unwrap();
            let sealed = decode_key(&v).unwrap().1;
            let legacy = with_id(unreleased, &encode_key_record(&waiting(7), &sealed, false));
            let mut t = tx.tx.open_table(KEYS).unwrap();
            t.insert(seq, legacy.as_slice()).unwrap();
        }
        assert!(tx.key_meta(unreleased).unwrap().is_none(), "never served");
        assert!(tx.key_bytes(unreleased).unwrap().is_none(), "never served");
        tx.commit().unwrap();
        drop(store);

        let check = |store: &mut Store| {
            let live = live_epochs(store);
            let used = record_epochs(store);
            assert!(
                used.iter().all(|e| live.contains(e)),
                "a record's epoch lost its DEK: live {live:?}, used {used:?}"
            );
            let mut tx = store.begin().unwrap();
            for (l, seq, _, f) in &blocks {
                let r = Range {
                    block_seq: *seq,
                    offset: 0,
                    len: 64,
                };
                assert_eq!(tx.read_ranges(l, &[r]).unwrap().expose(), &[*f; 64]);
            }
            for (id, f) in &waiting_keys {
                assert_eq!(
                    tx.key_bytes(*id).unwrap().unwrap(),
                    Secret::copy_from(&[*f; 32])
                );
            }
            for (id, f) in &pool {
                let (_, key) = tx.take_pool_key(*id).unwrap().unwrap();
                assert_eq!(key, Secret::copy_from(&[*f; 32]));
            }
            // Dropped without commit: nothing consumed.
            drop(tx);
            live
        };

        // A new KEK period; one rotation step per run, then a crash.
        let kek6 = FileKek::open(dir.path(), 6_000, period_ms).unwrap();
        let mut first_retired_at = None;
        for run in 0..40 {
            let (mut store, rec) = open_disk(&disk, &kek6, opts, 1).unwrap();
            let live = check(&mut store);
            // 81 records in steps of 8: a pass takes 11 runs; each run adds an epoch, and the
            // pass that follows retires those.
            assert!(
                live.len() <= 2 * 11 + 2,
                "live epochs stay bounded: {live:?}"
            );
            assert_eq!(*live.last().unwrap(), rec.epoch);
            let kek5_file = dir
                .path()
                .join(format!("kek-{}.key", 5u64 << vault::ROTATION_BITS))
                .exists();
            if live.contains(&first) {
                assert!(kek5_file, "the KEK of a live epoch is kept");
            } else {
                first_retired_at.get_or_insert(run);
                assert!(!kek5_file, "the KEK no live epoch needs is destroyed");
            }
        }
        assert!(first_retired_at.is_some(), "passes progress across crashes");

        // An uninterrupted open finishes: one epoch left, under the current KEK period.
        let (mut store, rec) = open_disk(&disk, &kek6, opts, usize::MAX).unwrap();
        assert!(!store.rotation_pending());
        assert_eq!(check(&mut store), vec![rec.epoch]);
        assert!(record_epochs(&store).iter().all(|e| *e == rec.epoch));
        assert!(store.keys.older_epochs().next().is_none());
        let tx = store.begin().unwrap();
        assert!(
            tx.key_meta(unreleased).unwrap().is_none(),
            "a key never confirmed is erased by the pass"
        );
        drop(tx);
        drop(store);
        assert_no_plaintext(&disk.snapshot());
    }

    /// A store written before keys were kept by sequence (schema 1) is refused, naming its file.
    #[test]
    fn a_store_of_the_previous_schema_is_refused_naming_its_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("keys")).unwrap();
        drop(open(dir.path()));
        let path = dir.path().join("store.redb");
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(META).unwrap().insert("schema", 1).unwrap();
            tx.commit().unwrap();
        }
        let kek = FileKek::open(&dir.path().join("keys"), 1_000, 86_400_000).unwrap();
        let e = Store::open(&path, &kek).unwrap_err();
        assert!(matches!(e, StoreError::OldSchema { found: 1, .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains("schema 1"),
            "{msg}"
        );
    }

    /// Keys stored and consumed in arrival order (pools are first in, first out) touch a few
    /// pages per table and commit, not a page per key: keyed by random key ID, every key was a
    /// page of its own once the store held thousands (issue 8, "Performance").
    #[test]
    fn consuming_keys_in_arrival_order_writes_few_pages_per_key() {
        let disk = faulty::Disk::new(1 << 30);
        let kek_dir = tempfile::tempdir().unwrap();
        let kek = FileKek::open(kek_dir.path(), 1_000, 86_400_000).unwrap();
        let (mut store, _) = open_disk(&disk, &kek, small_opts(), usize::MAX).unwrap();
        let mut pool = std::collections::VecDeque::new();
        let mut waiting_keys = std::collections::VecDeque::new();
        let key = Secret::copy_from(&[9; 32]);
        // Keys arrive with later expiries, as a node stores them.
        let mut expiry = 1_000_000;
        let mut batch = |store: &mut Store,
                         pool: &mut std::collections::VecDeque<KeyId>,
                         waiting_keys: &mut std::collections::VecDeque<KeyId>,
                         take: bool| {
            let mut tx = store.begin().unwrap();
            for _ in 0..32 {
                if take {
                    let id = pool.pop_front().unwrap();
                    let (meta, _) = tx.take_pool_key(id).unwrap().unwrap();
                    tx.put_tombstone(id, &meta.master, meta.slaves.first(), 2_000)
                        .unwrap();
                    let id = waiting_keys.pop_front().unwrap();
                    let meta = tx.key_meta(id).unwrap().unwrap();
                    tx.retire_key(id, &meta, 2_000).unwrap();
                }
                let id = KeyId::random();
                tx.put_pool_key(id, &pool_meta(), &key).unwrap();
                pool.push_back(id);
                let id = KeyId::random();
                expiry += 1;
                tx.put_key(id, &waiting(expiry), &key).unwrap();
                waiting_keys.push_back(id);
            }
            tx.commit().unwrap();
        };
        // Bytes a commit writes (32 pool keys and 32 waiting keys consumed, with their
        // tombstones, and as many stored), with few keys held and then with 16 times more.
        let mut measured = Vec::new();
        for fill in [8, 120] {
            for _ in 0..fill {
                batch(&mut store, &mut pool, &mut waiting_keys, false);
            }
            let before = disk.bytes_written();
            for _ in 0..16 {
                batch(&mut store, &mut pool, &mut waiting_keys, true);
            }
            measured.push((disk.bytes_written() - before) / 16);
        }
        let (small, large) = (measured[0], measured[1]);
        eprintln!("bytes per commit: {small} holding 256 keys of each kind, {large} holding 4,096");
        // Keyed by random key ID, the 192 keys and tombstones a commit touches were each a leaf
        // of its own once the tables held thousands (over 100 pages, 400 KB); by sequence, a few
        // pages per table, growing only with the depth of the trees (118 KB -> 177 KB measured).
        assert!(large < small * 2, "{small} -> {large} bytes per commit");
        assert!(large < 60 * 4096, "{large} bytes per commit");
        // The index survives a reopen in arrival order.
        drop(store);
        let (mut store, rec) = open_disk(&disk, &kek, small_opts(), usize::MAX).unwrap();
        let ids: Vec<KeyId> = rec.pool.iter().map(|(id, _)| *id).collect();
        assert_eq!(
            ids,
            Vec::from(pool.clone()),
            "pool recovered first in, first out"
        );
        let mut tx = store.begin().unwrap();
        let all = tx.keys_after(None, usize::MAX).unwrap();
        let mut want = Vec::from(waiting_keys.clone());
        want.sort();
        assert_eq!(all.iter().map(|(id, _)| *id).collect::<Vec<_>>(), want);
        // Changes of a transaction dropped uncommitted are undone in the index too.
        let first = waiting_keys[0];
        let meta = tx.key_meta(first).unwrap().unwrap();
        tx.retire_key(first, &meta, 3_000).unwrap();
        assert!(tx.take_pool_key(pool[0]).unwrap().is_some());
        drop(tx);
        let mut tx = store.begin().unwrap();
        assert!(tx.key_meta(first).unwrap().is_some());
        assert!(tx.take_pool_key(pool[0]).unwrap().is_some());
    }

    /// A batch that changes nothing (read-only operations, as the delivery-notice outbox's read
    /// often is at low load; a delivery notice for keys already fetched) writes nothing: no
    /// page, no header, no sync, and is not counted as a commit. A batch with a change commits.
    #[test]
    fn a_batch_that_changes_nothing_is_not_committed() {
        let disk = faulty::Disk::new(1 << 30);
        let kek_dir = tempfile::tempdir().unwrap();
        let kek = FileKek::open(kek_dir.path(), 1_000, 86_400_000).unwrap();
        let (mut store, _) = open_disk(&disk, &kek, small_opts(), usize::MAX).unwrap();
        let before = disk.bytes_written();
        let out = store
            .apply(vec![
                ops::QueuedNotices {
                    after: None,
                    limit: 10,
                }
                .into(),
                ops::KeysAfter {
                    after: None,
                    limit: 10,
                }
                .into(),
            ])
            .unwrap();
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|o| o.is_ok()));
        assert_eq!(disk.bytes_written(), before);
        let out = store
            .apply(vec![
                ops::MoveExpiry {
                    expiries: vec![(KeyId::random(), 5)],
                    masters: [sae("M")].into(),
                }
                .into(),
            ])
            .unwrap();
        assert!(matches!(&out[0], Ok(Outcome::MoveExpiry(moved)) if moved.is_empty()));
        assert_eq!(disk.bytes_written(), before);
        // Nor is it counted as a commit (`qkd_store_commits_total`).
        assert_eq!(store.commits(), Some(0));
        store
            .apply(vec![ops::DropNotices { notices: vec![] }.into()])
            .unwrap();
        assert!(disk.bytes_written() > before);
        assert_eq!(store.commits(), Some(1));
    }

    /// Tombstones move from the log into runs, runs merge tier by tier, and every tombstone is
    /// still found (and a pruned one is not) by key ID, before and after a reopen; runs whose
    /// tombstones were all pruned are dropped.
    #[test]
    fn tombstones_in_runs_and_merges_are_found_and_pruned() {
        use self::ops::{Expire, RecordIssued};
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("keys")).unwrap();
        let (mut store, _) = open(dir.path());
        store.set_tombstone_run(4);
        let ids: Vec<KeyId> = (0..120).map(|_| KeyId::random()).collect();
        for (i, chunk) in ids.chunks(3).enumerate() {
            let keys = chunk.iter().map(|id| (*id, sae("M"), sae("S"))).collect();
            store
                .apply(vec![
                    RecordIssued {
                        keys,
                        now: 1_000 + i as u64,
                        notify: vec![],
                    }
                    .into(),
                ])
                .unwrap();
            store.upkeep();
        }
        // One ID used again later: its newer time wins wherever the older entry sits.
        let again = ids[0];
        store
            .apply(vec![
                RecordIssued {
                    keys: vec![(again, sae("M"), sae("T"))],
                    now: 5_000,
                    notify: vec![],
                }
                .into(),
            ])
            .unwrap();
        store.upkeep();
        let runs = store.index.tombs.runs().len();
        assert!(runs >= 2, "{runs} runs");
        assert!(
            store.index.tombs.runs().iter().any(|r| r.tier(4) > 0),
            "runs were merged"
        );
        let check = |store: &mut Store| {
            let tx = store.begin().unwrap();
            for (i, id) in ids.iter().enumerate().skip(1) {
                let (at, master, slave) = tx.tombstone(*id).unwrap().unwrap();
                assert_eq!((at, master), (1_000 + (i / 3) as u64, sae("M")));
                assert_eq!(slave, Some(sae("S")));
                assert!(tx.key_id_used(*id).unwrap());
            }
            assert_eq!(tx.tombstone(again).unwrap().unwrap().0, 5_000);
            assert!(!tx.key_id_used(KeyId::random()).unwrap());
        };
        check(&mut store);
        drop(store);
        let (mut store, _) = open(dir.path());
        check(&mut store);
        // Pruning everything before 1,020 drops the runs holding only those, not the rest.
        store.set_tombstone_run(4);
        store
            .apply(vec![
                Expire {
                    now: 0,
                    prune_before: 1_020,
                    limit: 10_000,
                }
                .into(),
            ])
            .unwrap();
        store.upkeep();
        let tx = store.begin().unwrap();
        for (i, id) in ids.iter().enumerate().skip(1) {
            assert_eq!(tx.tombstone(*id).unwrap().is_some(), i / 3 >= 20, "{i}");
        }
        assert!(tx.tombstone(again).unwrap().is_some());
        drop(tx);
        let oldest_left = 1_020;
        assert!(
            store
                .index
                .tombs
                .runs()
                .iter()
                .all(|r| r.newest() >= oldest_left),
            "stale runs dropped"
        );
    }

    #[test]
    fn rotation_cursor_roundtrips() {
        for c in [
            Cursor::Blocks(None),
            Cursor::Blocks(Some(("A-B".into(), 7))),
            Cursor::Keys(None),
            Cursor::Keys(Some(3)),
            Cursor::Pool(None),
            Cursor::Pool(Some(4)),
            Cursor::End,
        ] {
            assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        }
        assert!(Cursor::decode(&[9, 0]).is_err());
        assert!(Cursor::decode(&[1, 1, 0, 0, 0, 2, 1, 2]).is_err());
    }
}
