//! The durable key store, on redb.
//!
//! What it holds (see `docs/design.md` for the invariants):
//! * per link, the blocks of link key (bytes sealed under the current epoch's data key) and which
//!   of their bytes are taken;
//! * keys waiting for their slave SAE (`dec_keys`), sealed, with master, slaves and expiry;
//! * tombstones of delivered keys: key ID, SAE pair and time only, never key bytes or hashes;
//! * finished keys in the pools of SAE pairs whose master is attached here (sealed);
//! * the wrapped data keys of live epochs.
//!
//! Every change goes through one [`Txn`], committed with `Durability::Immediate` by the group
//! commit writer ([`crate::writer`]). A commit error is fatal: the node exits and recovers from
//! disk; nothing is retried from memory.
//!
//! At every open the store starts a fresh epoch, re-encrypts every surviving secret under it and
//! destroys the older epochs' data keys, so a data key never outlives its process (no AES-GCM
//! nonce reuse after a crash) and old ciphertext becomes undecryptable.

mod codec;
#[cfg(test)]
mod faulty;
pub mod vault;

use std::collections::HashMap;
use std::path::Path;

use qkd_types::{BlockId, KeyId, LinkId, SaeId, Secret, UnixMillis};
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};

use self::codec::{R, W, enc};
use self::vault::{EpochKey, KeyWrap, Sealed, VaultError, dek_aad};
use crate::core::pool::{BlockMeta, BlockState, Range};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const EPOCHS: TableDefinition<u64, &[u8]> = TableDefinition::new("epochs");
const LINKS: TableDefinition<&str, u64> = TableDefinition::new("links");
const BLOCK_META: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("block_meta");
const BLOCK_DATA: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("block_data");
const KEYS: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("keys");
const TOMBSTONES: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("tombstones");
const POOL: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("pool");
/// Waiting keys ordered by expiry, so expiry is a range scan over only what expires.
const KEY_EXPIRY: TableDefinition<(u64, [u8; 16]), ()> = TableDefinition::new("key_expiry");
/// Tombstones ordered by time, so pruning is a range scan over only what is pruned.
const TOMB_TIME: TableDefinition<(u64, [u8; 16]), ()> = TableDefinition::new("tombstone_time");

/// Schema version written into `meta`.
const SCHEMA_VERSION: u64 = 1;

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
    /// Operator: the store was written by a newer version.
    #[error("key store schema {found} is newer than this program's {SCHEMA_VERSION}")]
    Schema {
        /// Version found on disk.
        found: u64,
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
    /// Whether the slave may fetch it: false while its batch awaits end-to-end confirmation.
    pub released: bool,
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
}

/// The durable store. Owned by the writer thread; readers use [`Store::read_key_meta`].
#[derive(Debug)]
pub struct Store {
    db: Database,
    epoch: EpochKey,
}

impl Store {
    /// Opens (or creates) the store at `path`, starts a fresh epoch and re-encrypts surviving
    /// secrets under it.
    pub fn open(path: &Path, wrap: &dyn KeyWrap) -> Result<(Self, Recovered), StoreError> {
        let db = Database::create(path)?;
        let (epoch, recovered) = Self::start_epoch(&db, wrap)?;
        Ok((Self { db, epoch }, recovered))
    }

    /// Opens a store over a test storage backend (a simulated disk).
    #[cfg(test)]
    pub(crate) fn open_backend(
        backend: impl redb::StorageBackend,
        wrap: &dyn KeyWrap,
    ) -> Result<(Self, Recovered), StoreError> {
        let db = redb::Builder::new().create_with_backend(backend)?;
        let (epoch, recovered) = Self::start_epoch(&db, wrap)?;
        Ok((Self { db, epoch }, recovered))
    }

    fn start_epoch(db: &Database, wrap: &dyn KeyWrap) -> Result<(EpochKey, Recovered), StoreError> {
        let mut tx = db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        let mut rec = Recovered::default();
        let new_epoch;
        {
            let mut meta = tx.open_table(META)?;
            let schema = meta.get("schema")?.map(|v| v.value());
            match schema {
                Some(v) if v > SCHEMA_VERSION => return Err(StoreError::Schema { found: v }),
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
        }
        // Old epochs' data keys, for re-encryption.
        let mut old: HashMap<u64, EpochKey> = HashMap::new();
        {
            let epochs = tx.open_table(EPOCHS)?;
            for entry in epochs.iter()? {
                let (e, v) = entry?;
                let (e, v) = (e.value(), v.value());
                let mut r = R(v);
                let period = r.u64()?;
                let dek = wrap.unwrap(period, r.bytes()?, &dek_aad(e, period))?;
                old.insert(e, EpochKey::from_secret(e, &dek));
            }
        }
        let (epoch, dek) = EpochKey::generate(new_epoch)?;
        let period = wrap.current_period();
        let wrapped = wrap.wrap(period, &dek, &dek_aad(new_epoch, period))?;
        drop(dek);
        {
            let mut epochs = tx.open_table(EPOCHS)?;
            let mut w = W::default();
            w.u64(period).bytes(&wrapped);
            epochs.insert(new_epoch, w.0.as_slice())?;
        }
        // Re-encrypt block data.
        {
            let mut data = tx.open_table(BLOCK_DATA)?;
            let metas = tx.open_table(BLOCK_META)?;
            let mut rewrites = Vec::new();
            for entry in data.iter()? {
                let (k, v) = entry?;
                let (link, seq) = k.value();
                let sealed = decode_sealed(v.value())?;
                let meta_raw = metas
                    .get((link, seq))?
                    .ok_or(StoreError::Corrupt("block data without meta"))?;
                let meta = decode_block_meta(meta_raw.value())?;
                let key = old
                    .get(&sealed.epoch)
                    .ok_or(VaultError::UnknownEpoch(sealed.epoch))?;
                let aad = block_aad(link, seq, meta.id);
                let plain = key.open(&aad, &sealed)?;
                rewrites.push((
                    link.to_string(),
                    seq,
                    encode_sealed(&epoch.seal(&aad, &plain)?),
                ));
            }
            for (link, seq, v) in rewrites {
                data.insert((link.as_str(), seq), v.as_slice())?;
            }
        }
        // Re-encrypt waiting keys.
        let mut dropped_expiry = Vec::new();
        {
            let mut keys = tx.open_table(KEYS)?;
            let mut rewrites = Vec::new();
            for entry in keys.iter()? {
                let (k, v) = entry?;
                let id = KeyId::from_bytes(k.value());
                let (meta, sealed) = decode_key(v.value())?;
                let key = old
                    .get(&sealed.epoch)
                    .ok_or(VaultError::UnknownEpoch(sealed.epoch))?;
                if !meta.released {
                    // Its batch's end-to-end confirmation lived in memory and is gone: the
                    // slave never gets this key.
                    rewrites.push((k.value(), None));
                    dropped_expiry.push((meta.expires_at, k.value()));
                    continue;
                }
                let aad = key_aad(id, &meta);
                let plain = key.open(&aad, &sealed)?;
                rewrites.push((
                    k.value(),
                    Some(encode_key(&meta, &epoch.seal(&aad, &plain)?)),
                ));
            }
            for (k, v) in rewrites {
                match v {
                    Some(v) => {
                        keys.insert(k, v.as_slice())?;
                    }
                    None => {
                        keys.remove(k)?;
                    }
                }
            }
        }
        {
            let mut idx = tx.open_table(KEY_EXPIRY)?;
            for k in dropped_expiry {
                idx.remove(k)?;
            }
        }
        // Re-encrypt pool keys and list them.
        {
            let mut pool = tx.open_table(POOL)?;
            let mut rewrites = Vec::new();
            for entry in pool.iter()? {
                let (k, v) = entry?;
                let id = KeyId::from_bytes(k.value());
                let (meta, sealed) = decode_pool_key(v.value())?;
                let key = old
                    .get(&sealed.epoch)
                    .ok_or(VaultError::UnknownEpoch(sealed.epoch))?;
                let aad = pool_aad(id, &meta);
                let plain = key.open(&aad, &sealed)?;
                rewrites.push((
                    k.value(),
                    encode_pool_key(&meta, &epoch.seal(&aad, &plain)?),
                ));
                rec.pool.push((id, meta));
            }
            for (k, v) in rewrites {
                pool.insert(k, v.as_slice())?;
            }
        }
        {
            let mut epochs = tx.open_table(EPOCHS)?;
            for e in old.keys() {
                epochs.remove(*e)?;
            }
        }
        // Recovery view.
        {
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
        }
        rec.epoch = new_epoch;
        tx.commit()?;
        // Every older epoch's key is gone from the store; KEKs of older periods protect nothing
        // any more and can be destroyed.
        wrap.destroy_before(period)?;
        Ok((epoch, rec))
    }

    /// Begins a write transaction (one per group-commit batch).
    pub fn begin(&mut self) -> Result<Txn<'_>, StoreError> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        Ok(Txn {
            tx,
            epoch: &self.epoch,
            block_cache: HashMap::new(),
        })
    }

    /// Counts of stored records, for status and tests: (blocks, waiting keys, tombstones).
    pub fn counts(&self) -> Result<(u64, u64, u64), StoreError> {
        use redb::ReadableDatabase;
        let tx = self.db.begin_read()?;
        Ok((
            tx.open_table(BLOCK_DATA)?.len()?,
            tx.open_table(KEYS)?.len()?,
            tx.open_table(TOMBSTONES)?.len()?,
        ))
    }
}

/// One write transaction. Each operation checks everything before it writes anything, so a
/// refused operation leaves the transaction as it found it.
pub struct Txn<'s> {
    tx: redb::WriteTransaction,
    epoch: &'s EpochKey,
    /// Blocks decrypted in this transaction, so a batch of keys from one block decrypts it once.
    block_cache: HashMap<(LinkId, u64), Secret>,
}

impl std::fmt::Debug for Txn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Txn")
            .field("epoch", &self.epoch.epoch())
            .finish_non_exhaustive()
    }
}

impl Txn<'_> {
    /// Commits durably.
    pub fn commit(self) -> Result<(), StoreError> {
        self.tx.commit()?;
        Ok(())
    }

    /// Stores a new block of link key and bumps the link's next sequence number.
    pub fn put_block(
        &mut self,
        link: &LinkId,
        seq: u64,
        meta: &BlockMeta,
        key: &Secret,
    ) -> Result<(), StoreError> {
        let sealed = self
            .epoch
            .seal(&block_aad(link.as_str(), seq, meta.id), key)?;
        self.tx
            .open_table(BLOCK_DATA)?
            .insert((link.as_str(), seq), encode_sealed(&sealed).as_slice())?;
        self.put_block_meta(link, seq, meta)?;
        let mut links = self.tx.open_table(LINKS)?;
        let next = links
            .get(link.as_str())?
            .map_or(0, |v| v.value())
            .max(seq + 1);
        links.insert(link.as_str(), next)?;
        Ok(())
    }

    /// Rewrites a block's metadata (state, taken ranges).
    pub fn put_block_meta(
        &mut self,
        link: &LinkId,
        seq: u64,
        meta: &BlockMeta,
    ) -> Result<(), StoreError> {
        self.tx
            .open_table(BLOCK_META)?
            .insert((link.as_str(), seq), encode_block_meta(meta).as_slice())?;
        Ok(())
    }

    /// Erases a block (drained or released).
    pub fn delete_block(&mut self, link: &LinkId, seq: u64) -> Result<(), StoreError> {
        self.tx
            .open_table(BLOCK_META)?
            .remove((link.as_str(), seq))?;
        self.tx
            .open_table(BLOCK_DATA)?
            .remove((link.as_str(), seq))?;
        self.block_cache.remove(&(link.clone(), seq));
        Ok(())
    }

    /// Reads the link bytes of `ranges`, concatenated.
    pub fn read_ranges(&mut self, link: &LinkId, ranges: &[Range]) -> Result<Secret, StoreError> {
        let total: usize = ranges.iter().map(|r| r.len as usize).sum();
        let mut out = Secret::zeroed(total);
        let mut pos = 0;
        for r in ranges {
            let block = self.block(link, r.block_seq)?;
            let bytes = block
                .expose()
                .get(r.offset as usize..(r.offset + r.len) as usize)
                .ok_or(StoreError::Corrupt("range outside stored block"))?;
            // Link bytes are copied into the key being assembled; both are secrets.
            out.expose_mut()[pos..pos + bytes.len()].copy_from_slice(bytes);
            pos += bytes.len();
        }
        Ok(out)
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
                .epoch
                .open(&block_aad(link.as_str(), seq, meta.id), &sealed)?;
            self.block_cache.insert(k.clone(), plain);
        }
        self.block_cache
            .get(&k)
            .ok_or(StoreError::Corrupt("block cache"))
    }

    /// Whether a key ID is in use or was ever delivered (waiting key or tombstone).
    pub fn key_id_used(&self, id: KeyId) -> Result<bool, StoreError> {
        Ok(self.tx.open_table(KEYS)?.get(*id.as_bytes())?.is_some()
            || self
                .tx
                .open_table(TOMBSTONES)?
                .get(*id.as_bytes())?
                .is_some())
    }

    /// Stores a key for its slave SAE(s).
    pub fn put_key(&mut self, id: KeyId, meta: &StoredKey, key: &Secret) -> Result<(), StoreError> {
        let sealed = self.epoch.seal(&key_aad(id, meta), key)?;
        self.tx
            .open_table(KEYS)?
            .insert(*id.as_bytes(), encode_key(meta, &sealed).as_slice())?;
        self.tx
            .open_table(KEY_EXPIRY)?
            .insert((meta.expires_at, *id.as_bytes()), ())?;
        Ok(())
    }

    /// A waiting key's metadata.
    pub fn key_meta(&self, id: KeyId) -> Result<Option<StoredKey>, StoreError> {
        let t = self.tx.open_table(KEYS)?;
        let v = t.get(*id.as_bytes())?;
        v.map(|v| decode_key(v.value()).map(|(m, _)| m)).transpose()
    }

    /// A waiting key's bytes.
    pub fn key_bytes(&self, id: KeyId) -> Result<Option<Secret>, StoreError> {
        let t = self.tx.open_table(KEYS)?;
        let Some(v) = t.get(*id.as_bytes())? else {
            return Ok(None);
        };
        let (meta, sealed) = decode_key(v.value())?;
        Ok(Some(self.epoch.open(&key_aad(id, &meta), &sealed)?))
    }

    /// Updates a waiting key's metadata (a slave fetched it) without touching its bytes.
    pub fn update_key_meta(&mut self, id: KeyId, meta: &StoredKey) -> Result<(), StoreError> {
        let mut t = self.tx.open_table(KEYS)?;
        let sealed = {
            let v = t
                .get(*id.as_bytes())?
                .ok_or(StoreError::Corrupt("key vanished"))?;
            decode_key(v.value())?.1
        };
        // The AAD binds the SAE names and size, not the fetched flags, so the ciphertext stays.
        t.insert(*id.as_bytes(), encode_key(meta, &sealed).as_slice())?;
        Ok(())
    }

    /// Erases a waiting key, leaving a tombstone (ID, pair, time; no key material).
    pub fn retire_key(
        &mut self,
        id: KeyId,
        meta: &StoredKey,
        now: UnixMillis,
    ) -> Result<(), StoreError> {
        self.tx.open_table(KEYS)?.remove(*id.as_bytes())?;
        self.tx
            .open_table(KEY_EXPIRY)?
            .remove((meta.expires_at, *id.as_bytes()))?;
        self.put_tombstone(id, &meta.master, meta.slaves.first().map(|s| &s.0), now)
    }

    /// Records that a key ID was used (delivered or erased), without any key material.
    pub fn put_tombstone(
        &mut self,
        id: KeyId,
        master: &SaeId,
        slave: Option<&SaeId>,
        now: UnixMillis,
    ) -> Result<(), StoreError> {
        let mut w = W::default();
        w.u8(1)
            .u64(now)
            .str(master.as_str())
            .str(slave.map_or("", |s| s.as_str()));
        let old = self
            .tx
            .open_table(TOMBSTONES)?
            .insert(*id.as_bytes(), w.0.as_slice())?
            .map(|v| v.value().to_vec());
        if let Some(old) = old {
            let mut r = R(&old);
            r.u8()?;
            self.tx
                .open_table(TOMB_TIME)?
                .remove((r.u64()?, *id.as_bytes()))?;
        }
        self.tx
            .open_table(TOMB_TIME)?
            .insert((now, *id.as_bytes()), ())?;
        Ok(())
    }

    /// Stores a finished key in its pair's pool (master side).
    pub fn put_pool_key(
        &mut self,
        id: KeyId,
        meta: &PoolKey,
        key: &Secret,
    ) -> Result<(), StoreError> {
        let sealed = self.epoch.seal(&pool_aad(id, meta), key)?;
        self.tx
            .open_table(POOL)?
            .insert(*id.as_bytes(), encode_pool_key(meta, &sealed).as_slice())?;
        Ok(())
    }

    /// Removes a key from its pool and returns it (to deliver or to discard).
    pub fn take_pool_key(&mut self, id: KeyId) -> Result<Option<(PoolKey, Secret)>, StoreError> {
        let mut t = self.tx.open_table(POOL)?;
        let Some((meta, sealed)) = t
            .remove(*id.as_bytes())?
            .map(|v| decode_pool_key(v.value()))
            .transpose()?
        else {
            return Ok(None);
        };
        let key = self.epoch.open(&pool_aad(id, &meta), &sealed)?;
        Ok(Some((meta, key)))
    }

    /// The tombstone of a key ID: when it was written, the master and the first slave.
    pub fn tombstone(
        &self,
        id: KeyId,
    ) -> Result<Option<(UnixMillis, SaeId, Option<SaeId>)>, StoreError> {
        let t = self.tx.open_table(TOMBSTONES)?;
        let Some(v) = t.get(*id.as_bytes())? else {
            return Ok(None);
        };
        let mut r = R(v.value());
        r.u8()?;
        let at = r.u64()?;
        let master = sae(r.str()?)?;
        let slave = match r.str()? {
            "" => None,
            s => Some(sae(s)?),
        };
        Ok(Some((at, master, slave)))
    }

    /// Waiting keys whose expiry is at or before `now` (at most `limit`).
    pub fn expired_keys(
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

    /// Erases tombstones written before `before` (at most `limit`); they only guard against
    /// key-ID reuse and answer a master asking for its own keys within their TTL.
    pub fn prune_tombstones(
        &mut self,
        before: UnixMillis,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let old: Vec<(u64, [u8; 16])> = {
            let idx = self.tx.open_table(TOMB_TIME)?;
            let mut v = Vec::new();
            for entry in idx.range(..(before, [0u8; 16]))?.take(limit) {
                v.push(entry?.0.value());
            }
            v
        };
        let mut idx = self.tx.open_table(TOMB_TIME)?;
        let mut t = self.tx.open_table(TOMBSTONES)?;
        for k in &old {
            idx.remove(*k)?;
            t.remove(k.1)?;
        }
        Ok(old.len())
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

/// AAD of a waiting key (crypto.md §4.3): `enc("QKMS-store-v1") ‖ enc(uuid key_ID) ‖
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

fn encode_pool_key(m: &PoolKey, s: &Sealed) -> Vec<u8> {
    let mut w = W::default();
    w.u8(1).str(m.master.as_str()).u32(m.slaves.len() as u32);
    for s in &m.slaves {
        w.str(s.as_str());
    }
    w.u32(m.size_bits).u64(m.created_at);
    w.0.extend_from_slice(&encode_sealed(s));
    w.0
}

fn decode_pool_key(v: &[u8]) -> Result<(PoolKey, Sealed), StoreError> {
    let mut r = R(v);
    if r.u8()? != 1 {
        return Err(StoreError::Corrupt("pool key version"));
    }
    let master = sae(r.str()?)?;
    let n = r.u32()?;
    let mut slaves = Vec::with_capacity(n as usize);
    for _ in 0..n {
        slaves.push(sae(r.str()?)?);
    }
    let size_bits = r.u32()?;
    let created_at = r.u64()?;
    let sealed = decode_sealed(r.0)?;
    Ok((
        PoolKey {
            master,
            slaves,
            size_bits,
            created_at,
        },
        sealed,
    ))
}

fn encode_sealed(s: &Sealed) -> Vec<u8> {
    let mut w = W::default();
    w.u64(s.epoch).u64(s.nonce).bytes(&s.ct);
    w.0
}

fn decode_sealed(v: &[u8]) -> Result<Sealed, StoreError> {
    let mut r = R(v);
    Ok(Sealed {
        epoch: r.u64()?,
        nonce: r.u64()?,
        ct: r.bytes()?.to_vec(),
    })
}

fn encode_block_meta(m: &BlockMeta) -> Vec<u8> {
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

fn decode_block_meta(v: &[u8]) -> Result<BlockMeta, StoreError> {
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
    let mut taken = Vec::with_capacity(n as usize);
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

fn sae(s: &str) -> Result<SaeId, StoreError> {
    SaeId::parse(s).map_err(|_| StoreError::Corrupt("SAE id"))
}

fn encode_key(m: &StoredKey, s: &Sealed) -> Vec<u8> {
    let mut w = W::default();
    w.u8(1)
        .bytes(&m.request)
        .str(m.master.as_str())
        .u32(m.slaves.len() as u32);
    for (s, done) in &m.slaves {
        w.str(s.as_str()).u8(u8::from(*done));
    }
    w.u32(m.size_bits)
        .u64(m.expires_at)
        .u8(u8::from(m.released));
    w.0.extend_from_slice(&encode_sealed(s));
    w.0
}

fn decode_key(v: &[u8]) -> Result<(StoredKey, Sealed), StoreError> {
    let mut r = R(v);
    if r.u8()? != 1 {
        return Err(StoreError::Corrupt("key version"));
    }
    let request: [u8; 16] = r
        .bytes()?
        .try_into()
        .map_err(|_| StoreError::Corrupt("request id"))?;
    let master = sae(r.str()?)?;
    let n = r.u32()?;
    let mut slaves = Vec::with_capacity(n as usize);
    for _ in 0..n {
        slaves.push((sae(r.str()?)?, r.u8()? != 0));
    }
    let size_bits = r.u32()?;
    let expires_at = r.u64()?;
    let released = r.u8()? != 0;
    let sealed = decode_sealed(r.0)?;
    Ok((
        StoredKey {
            request,
            master,
            slaves,
            size_bits,
            expires_at,
            released,
        },
        sealed,
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
            released: true,
        }
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

    /// Key IDs, each with the byte its key is filled with.
    type Filled = Vec<(KeyId, u8)>;

    /// Writes pool keys and waiting keys in batches until the disk refuses a write. Returns what
    /// committed: pool key IDs and waiting key IDs, each with the byte its key is filled with.
    fn fill_until_full(store: &mut Store) -> (Filled, Filled) {
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
            if attempt.is_err() {
                return (pool, waiting_keys);
            }
            pool.extend(batch_pool.into_iter().map(|id| (id, fill)));
            waiting_keys.extend(batch_wait.into_iter().map(|id| (id, fill)));
        }
        panic!("the simulated disk never filled");
    }

    fn pool_meta() -> PoolKey {
        PoolKey {
            master: sae("M"),
            slaves: vec![sae("S")],
            size_bits: 256,
            created_at: 5,
        }
    }

    /// Defect 5: after the disk filled, the node must restart (a new epoch) and serve the keys
    /// it holds, without free space in proportion to the store.
    #[test]
    fn reopens_on_a_full_disk_and_serves_stored_keys() {
        let dir = tempfile::tempdir().unwrap();
        let kek = FileKek::open(dir.path(), 1_000, 86_400_000).unwrap();
        let disk = faulty::Disk::new(4 << 20);
        let (mut store, rec) = Store::open_backend(disk.backend(), &kek).unwrap();
        let first_epoch = rec.epoch;
        let (pool, waiting_keys) = fill_until_full(&mut store);
        drop(store);
        assert!(disk.refused() > 0, "the disk refused a write");
        assert!(pool.len() > 1000, "filled with {} pool keys", pool.len());

        // Restart on the same, still full disk.
        let (mut store, rec) = Store::open_backend(disk.backend(), &kek)
            .expect("a store on a full disk opens (fresh epoch, no bulk re-encryption)");
        assert_eq!(rec.epoch, first_epoch + 1);
        assert_eq!(rec.pool.len(), pool.len());

        // Consumption commits: pool keys delivered at the master's node, waiting keys fetched by
        // the slave, each with its tombstone.
        for chunk in 0..4 {
            let mut tx = store.begin().unwrap();
            for (id, fill) in &pool[chunk * 16..(chunk + 1) * 16] {
                let (meta, key) = tx.take_pool_key(*id).unwrap().unwrap();
                assert_eq!(key, Secret::copy_from(&[*fill; 32]));
                tx.put_tombstone(*id, &meta.master, meta.slaves.first(), 2_000)
                    .unwrap();
            }
            for (id, fill) in &waiting_keys[chunk * 16..(chunk + 1) * 16] {
                let meta = tx.key_meta(*id).unwrap().unwrap();
                assert_eq!(
                    tx.key_bytes(*id).unwrap().unwrap(),
                    Secret::copy_from(&[*fill; 32])
                );
                tx.retire_key(*id, &meta, 2_000).unwrap();
            }
            tx.commit().expect("consumption commits on a full disk");
        }
        drop(store);

        // And once more: a restart after consuming still works on the full disk.
        let (mut store, rec) = Store::open_backend(disk.backend(), &kek).unwrap();
        assert_eq!(rec.epoch, first_epoch + 2);
        assert_eq!(rec.pool.len(), pool.len() - 64);
        let tx = store.begin().unwrap();
        assert!(tx.key_id_used(waiting_keys[0].0).unwrap());
        assert!(tx.key_meta(waiting_keys[0].0).unwrap().is_none());
        let (id, fill) = waiting_keys[100];
        assert_eq!(
            tx.key_bytes(id).unwrap().unwrap(),
            Secret::copy_from(&[fill; 32])
        );
    }
}
