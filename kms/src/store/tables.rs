//! The store's records, one method per primitive read or write, inside one transaction.
//!
//! Two implementations: [`super::Txn`] (redb, sealed at rest) and [`super::mem`] (in memory, the
//! model). The store operations ([`super::ops`]) are written once over this trait, so both stores
//! run the same decisions and differ only in how a record is kept.
//!
//! Every write checks what it needs before it changes anything, so an operation refused half way
//! leaves the transaction as it found it.

use qkd_types::{KeyId, KeyStreamId, LinkId, NodeId, SaeId, Secret, UnixMillis};

use super::{PoolKey, StoreError, StoredKey};
use crate::core::pool::{BlockMeta, Range};
use crate::core::stream::StreamRecord;

/// A tombstone: when the key ID was used, its master and its first slave.
pub type Tombstone = (UnixMillis, SaeId, Option<SaeId>);

/// A queued delivery notice: (destination, sequence, delivered_at, key IDs).
pub type QueuedNotice = (NodeId, u64, UnixMillis, Vec<KeyId>);

/// The records of the key store, read and written inside one transaction.
pub trait Tables {
    /// Refuses new key material while free space is below the watermark (see
    /// [`super::space`]); the check comes before any write, so a refused operation leaves the
    /// transaction untouched.
    fn admit_ingest(&self) -> Result<(), StoreError>;

    /// Stores a new block of link key and bumps the link's next sequence number. New key
    /// material: refused below the watermark.
    fn put_block(
        &mut self,
        link: &LinkId,
        seq: u64,
        meta: &BlockMeta,
        key: &Secret,
    ) -> Result<(), StoreError>;

    /// Rewrites a block's metadata (state, taken ranges).
    fn put_block_meta(
        &mut self,
        link: &LinkId,
        seq: u64,
        meta: &BlockMeta,
    ) -> Result<(), StoreError>;

    /// Erases a block (drained or released).
    fn delete_block(&mut self, link: &LinkId, seq: u64) -> Result<(), StoreError>;

    /// Reads the link bytes of `ranges`, concatenated.
    fn read_ranges(&mut self, link: &LinkId, ranges: &[Range]) -> Result<Secret, StoreError>;

    /// Whether a key ID is in use or was ever delivered (waiting key or tombstone).
    fn key_id_used(&self, id: KeyId) -> Result<bool, StoreError>;

    /// Stores a key for its slave SAE(s). New key material: refused below the watermark.
    fn put_key(&mut self, id: KeyId, meta: &StoredKey, key: &Secret) -> Result<(), StoreError>;

    /// A waiting key's metadata; `None` also for a key an older node stored unconfirmed (never
    /// served).
    fn key_meta(&self, id: KeyId) -> Result<Option<StoredKey>, StoreError>;

    /// A waiting key's bytes; `None` also for a key an older node stored unconfirmed.
    fn key_bytes(&self, id: KeyId) -> Result<Option<Secret>, StoreError>;

    /// Updates a waiting key's metadata (a slave fetched it) without touching its bytes.
    fn update_key_meta(&mut self, id: KeyId, meta: &StoredKey) -> Result<(), StoreError>;

    /// Erases a waiting key, leaving a tombstone (ID, pair, time; no key material).
    fn retire_key(
        &mut self,
        id: KeyId,
        meta: &StoredKey,
        now: UnixMillis,
    ) -> Result<(), StoreError>;

    /// Records that a key ID was used (delivered or erased), without any key material.
    fn put_tombstone(
        &mut self,
        id: KeyId,
        master: &SaeId,
        slave: Option<&SaeId>,
        now: UnixMillis,
    ) -> Result<(), StoreError>;

    /// Stores a finished key in its pair's pool (master side). New key material: refused below
    /// the watermark.
    fn put_pool_key(&mut self, id: KeyId, meta: &PoolKey, key: &Secret) -> Result<(), StoreError>;

    /// Removes a key from its pool and returns it (to deliver or to discard).
    fn take_pool_key(&mut self, id: KeyId) -> Result<Option<(PoolKey, Secret)>, StoreError>;

    /// Whether a key is in its pool (read only: an operation checks before it takes).
    fn has_pool_key(&self, id: KeyId) -> Result<bool, StoreError>;

    /// The tombstone of a key ID.
    fn tombstone(&self, id: KeyId) -> Result<Option<Tombstone>, StoreError>;

    /// Queues a delivery notice for `dest` (the node of the keys' slaves): the keys were
    /// delivered to their master at `delivered_at`.
    fn queue_notice(
        &mut self,
        dest: &NodeId,
        key_ids: &[KeyId],
        delivered_at: UnixMillis,
    ) -> Result<(), StoreError>;

    /// Up to `limit` queued delivery notices in (destination, sequence) order, oldest first per
    /// destination, of the destinations after `after` (all of them if `None`).
    fn queued_notices(
        &self,
        after: Option<&NodeId>,
        limit: usize,
    ) -> Result<Vec<QueuedNotice>, StoreError>;

    /// Drops a queued delivery notice (sent, or no longer useful).
    fn drop_notice(&mut self, dest: &NodeId, seq: u64) -> Result<(), StoreError>;

    /// Moves a waiting key's expiry (a delivery notice arrived), keeping the expiry index true.
    fn set_key_expiry(
        &mut self,
        id: KeyId,
        meta: &StoredKey,
        expires_at: UnixMillis,
    ) -> Result<(), StoreError>;

    /// Waiting keys in key-ID order, starting after `after` (at most `limit`): a bounded scan.
    fn keys_after(
        &self,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<(KeyId, StoredKey)>, StoreError>;

    /// Waiting keys whose expiry is at or before `now` (at most `limit`), earliest first.
    fn expired_keys(
        &self,
        now: UnixMillis,
        limit: usize,
    ) -> Result<Vec<(KeyId, StoredKey)>, StoreError>;

    /// Erases tombstones written before `before` (at most `limit`, oldest first); they only
    /// guard against key-ID reuse and answer a master asking for its own keys within their TTL.
    fn prune_tombstones(&mut self, before: UnixMillis, limit: usize) -> Result<usize, StoreError>;

    /// The record of a key stream's end held here.
    fn stream(&self, id: KeyStreamId) -> Result<Option<StreamRecord>, StoreError>;

    /// Stores (or replaces) the record of a key stream's end.
    fn put_stream(&mut self, record: &StreamRecord) -> Result<(), StoreError>;

    /// Erases the record of a key stream's end (closed, or never joined and expired).
    fn delete_stream(&mut self, id: KeyStreamId) -> Result<(), StoreError>;

    /// Every key stream record held here.
    fn streams(&self) -> Result<Vec<StreamRecord>, StoreError>;
}

/// The link bytes of `ranges`, concatenated: `copy` fills each range's part of the output.
pub(super) fn read_runs(
    ranges: &[Range],
    mut copy: impl FnMut(&Range, &mut [u8]) -> Result<(), StoreError>,
) -> Result<Secret, StoreError> {
    let total: usize = ranges.iter().map(|r| r.len as usize).sum();
    let mut out = Secret::zeroed(total);
    let mut pos = 0;
    for r in ranges {
        let len = r.len as usize;
        copy(r, &mut out.expose_mut()[pos..pos + len])?;
        pos += len;
    }
    Ok(out)
}

/// Copies range `r` of the bytes of its block into `to` (exactly as long).
pub(super) fn copy_range(block: &Secret, r: &Range, to: &mut [u8]) -> Result<(), StoreError> {
    let bytes = block
        .expose()
        .get(r.offset as usize..(r.offset + r.len) as usize)
        .ok_or(StoreError::Corrupt("range outside stored block"))?;
    // Link bytes are copied into the key being assembled; both are secrets.
    to.copy_from_slice(bytes);
    Ok(())
}
