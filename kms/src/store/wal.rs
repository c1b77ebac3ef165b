//! The store's write-ahead log: what makes a batch durable between checkpoints.
//!
//! A batch of operations ([`super::ops`]) changes rows of the store's tables. Committing it to
//! redb durably rewrites every page on the path to each changed row, the table tree and the
//! free-page records, then syncs twice: tens of pages per commit, whatever the batch carries.
//! Instead, the batch's row changes (its *redo record*: table, insert or remove, key bytes,
//! value bytes, exactly as written to redb) are appended to this log and synced, and the redb
//! transaction is committed with `Durability::None` (kept in memory, visible to the next
//! transaction). Every so often (when the log is full, when a record is large, and at every
//! maintenance, rotation or epoch transaction) a commit is `Durability::Immediate`: a
//! *checkpoint*, after which the log starts again from its beginning.
//!
//! Each redb commit records in `meta` the sequence number of its batch (`wal_seq`), so the last
//! durable commit says which batches it holds. At open, the records that follow it in the log
//! (same store, consecutive sequence numbers, intact checksum) are applied again, in order, in
//! one transaction: the store is then exactly what the last answered batch left, whatever a crash
//! lost of redb's non-durable commits. A record whose write was torn by the crash fails its
//! checksum and ends the log; its batch was never answered, because a batch is answered only
//! after its record is synced.
//!
//! What the log holds is what redb holds: records sealed under the store's data keys, key IDs,
//! tombstones; never key bytes in clear. Stale records stay in the file until overwritten, as
//! freed pages stay in the database file, and become unreadable with their epoch's data key.
//!
//! Layout of a record: `magic u32 ‖ length u32 ‖ store u64 ‖ sequence u64 ‖ payload ‖ crc32`,
//! big-endian, the CRC over everything before it. `store` is a random number drawn when the
//! store was created (`meta` `store_id`), so a log left beside a store moved aside is never
//! applied to a new one.

use std::cell::RefCell;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use redb::{Key, Table, TableDefinition, TableHandle, Value, WriteTransaction};

use super::StoreError;

/// First bytes of every record.
const MAGIC: u32 = 0x5157_4c31; // "QWL1"
/// Bytes of a record's header (magic, length, store, sequence).
const HEADER: usize = 4 + 4 + 8 + 8;
/// Bytes of a record's trailer (CRC).
const TRAILER: usize = 4;
/// Appends write whole blocks of this size, at offsets that are multiples of it.
const BLOCK: usize = 4096;

/// Bytes of log the store fills before it checkpoints ([`super::StoreOptions::log_bytes`]).
pub const DEFAULT_LOG_BYTES: u64 = 8 << 20;
/// A batch whose record would be larger than this (several link-key blocks at once) is committed
/// durably instead: its pages are mostly new, so logging it would write its bytes twice for
/// little. A block or a refill of a few hundred keys is logged.
const MAX_RECORD: usize = 256 << 10;

/// A file the log is written to: the real file, or a test's simulated disk.
pub trait LogFile: Send + fmt::Debug {
    /// Bytes in the file.
    fn size(&self) -> io::Result<u64>;
    /// Reads `out.len()` bytes at `offset`.
    fn read_at(&self, offset: u64, out: &mut [u8]) -> io::Result<()>;
    /// Writes `data` at `offset`, growing the file if needed.
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes what was written durable (`fdatasync`).
    fn sync(&self) -> io::Result<()>;
}

/// The log as a file beside the store (`store.wal` for `store.redb`), readable by its owner only.
///
/// Written with `O_DIRECT` where the file system allows it: an append then writes exactly the
/// 4 KiB blocks its record touches. Through the page cache, a small write dirties a whole cached
/// folio, which recent kernels make up to 2 MiB for a file read or written in large pieces, and
/// `fdatasync` writes all of it: measured here, 2 MiB per sync for a 200-byte append.
#[derive(Debug)]
pub struct FileLog {
    file: File,
    /// Opened with `O_DIRECT`: reads and writes in whole aligned blocks.
    direct: bool,
    /// A 4 KiB-aligned staging buffer for direct I/O (found inside a larger allocation).
    scratch: std::sync::Mutex<Vec<u8>>,
}

impl FileLog {
    /// Opens (or creates) the log at `path`.
    pub fn open(path: &Path) -> io::Result<Self> {
        let open = |flags: i32| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(flags)
                .open(path)
        };
        let (file, direct) = match open(rustix::fs::OFlags::DIRECT.bits() as i32) {
            Ok(f) => (f, true),
            // Some file systems (older tmpfs, some overlays) refuse O_DIRECT.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                (open(0)?, false)
            }
            Err(e) => return Err(e),
        };
        Ok(Self {
            file,
            direct,
            scratch: std::sync::Mutex::default(),
        })
    }
}

impl LogFile for FileLog {
    fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_at(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        if !self.direct {
            return self.file.read_exact_at(out, offset);
        }
        // Direct reads are whole aligned blocks into aligned memory: read the blocks around
        // the range, then copy it out (only at open).
        let block = BLOCK as u64;
        let start = offset - offset % block;
        let end = (offset + out.len() as u64).div_ceil(block) * block;
        let mut scratch = Vec::new();
        let buf = aligned(&mut scratch, (end - start) as usize);
        let mut got = 0;
        while got < buf.len() {
            match self.file.read_at(&mut buf[got..], start + got as u64)? {
                0 => break,
                n => got += n,
            }
        }
        let from = (offset - start) as usize;
        if from + out.len() > got {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        out.copy_from_slice(&buf[from..from + out.len()]);
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if !self.direct {
            return self.file.write_all_at(data, offset);
        }
        if !offset.is_multiple_of(BLOCK as u64) || !data.len().is_multiple_of(BLOCK) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a direct write of the log is not in whole blocks",
            ));
        }
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let buf = aligned(&mut scratch, data.len());
        buf.copy_from_slice(data);
        self.file.write_all_at(buf, offset)
    }

    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// `len` bytes of `scratch` at a 4 KiB-aligned address (what direct I/O needs), growing it.
fn aligned(scratch: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if scratch.len() < len + BLOCK {
        scratch.resize(len + BLOCK, 0);
    }
    let at = scratch.as_ptr().align_offset(BLOCK);
    &mut scratch[at..at + len]
}

fn io_err(what: &str, e: io::Error) -> StoreError {
    StoreError::Db(format!("write-ahead log: {what}: {e}"))
}

/// The log of one open store: where the next record goes and which sequence it carries.
#[derive(Debug)]
pub(super) struct Wal {
    file: Box<dyn LogFile>,
    store: u64,
    /// Where the next record is written.
    offset: u64,
    /// The bytes of the block `offset` is in, before `offset`: written again with the next
    /// record, since appends write whole blocks.
    tail: Vec<u8>,
    /// Bytes of records before a checkpoint is due; 0 turns the log off (every commit durable).
    capacity: u64,
    /// The sequence of the last batch committed (logged or durable).
    last: u64,
}

/// How a batch is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Commit {
    /// Append its record to the log, sync it, commit to redb without durability.
    Log,
    /// Commit to redb durably; the log starts again.
    Checkpoint,
}

impl Wal {
    /// The log `file` of store `store`, whose last durable commit holds batch `applied`; the
    /// file is grown to `capacity` bytes now (zeros), so that appending never changes its size
    /// and a sync writes data only. If it cannot be grown (a full disk), records are appended
    /// as far as they fit, and a batch that does not fit is a checkpoint.
    pub(super) fn new(file: Box<dyn LogFile>, store: u64, applied: u64, capacity: u64) -> Self {
        if capacity > 0 {
            match file.size() {
                Ok(len) if len < capacity => {
                    let zeros = vec![0u8; 256 * BLOCK];
                    let mut at = len;
                    while at < capacity {
                        let n = (capacity - at).min(zeros.len() as u64);
                        if let Err(e) = file.write_at(at, &zeros[..n as usize]) {
                            tracing::warn!(error = %e, "write-ahead log not grown to its size");
                            break;
                        }
                        at += n;
                    }
                    if let Err(e) = file.sync() {
                        tracing::warn!(error = %e, "write-ahead log not synced after growing");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "write-ahead log size unknown"),
            }
        }
        Self {
            file,
            store,
            offset: 0,
            tail: Vec::new(),
            capacity,
            last: applied,
        }
    }

    /// The records after batch `applied` of store `store`, in order: from the start of the file,
    /// past the records the database already holds, those with consecutive sequences from
    /// `applied + 1`, up to the first that is not intact or not next. Records of an earlier
    /// round further on are older than `applied` (a checkpoint came after them), so they can
    /// never pass for the next one.
    pub(super) fn recover(
        file: &dyn LogFile,
        store: u64,
        applied: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let len = file.size().map_err(|e| io_err("size", e))?;
        // Read in pieces, as far as records go: the file is mostly zeros or old rounds.
        let mut window = Window {
            file,
            len,
            base: 0,
            bytes: Vec::new(),
        };
        let mut out = Vec::new();
        let mut at = 0u64;
        let mut want = applied + 1;
        loop {
            if !window.cover(at, HEADER)? {
                break;
            }
            let body = window.record_len(at);
            if !window.cover(at, HEADER + body + TRAILER)? {
                break;
            }
            let Some((seq, payload, next)) =
                parse(&window.bytes, (at - window.base) as usize, store)
            else {
                break;
            };
            if seq > applied {
                if seq != want {
                    break;
                }
                out.push((seq, payload.to_vec()));
                want += 1;
            }
            at = window.base + next as u64;
            window.forget_before(at);
        }
        Ok(out)
    }

    /// The sequence the next batch carries.
    pub(super) fn next_seq(&self) -> u64 {
        self.last + 1
    }

    /// How the next batch, of a `len`-byte record, is made durable.
    pub(super) fn plan(&self, len: usize) -> Commit {
        let block = BLOCK as u64;
        let end = (self.offset + (HEADER + len + TRAILER) as u64).div_ceil(block) * block;
        if self.capacity == 0 || len > MAX_RECORD || end > self.capacity {
            Commit::Checkpoint
        } else {
            Commit::Log
        }
    }

    /// Appends batch `seq`'s record and syncs it. On an error nothing may be answered: the
    /// caller commits the batch durably instead, or fails.
    pub(super) fn append(&mut self, seq: u64, payload: &[u8]) -> Result<(), StoreError> {
        debug_assert_eq!(seq, self.last + 1);
        let record = encode(self.store, seq, payload);
        // Whole blocks: what the block holds before the record, the record, zeros after it
        // (which also clear what an earlier round left there).
        let start = self.offset - self.tail.len() as u64;
        let before = self.tail.len();
        let mut blocks = std::mem::take(&mut self.tail);
        blocks.extend_from_slice(&record);
        let used = blocks.len();
        blocks.resize(used.div_ceil(BLOCK) * BLOCK, 0);
        let written = self
            .file
            .write_at(start, &blocks)
            .and_then(|()| self.file.sync());
        if let Err(e) = written {
            blocks.truncate(before);
            self.tail = blocks;
            return Err(io_err("write", e));
        }
        let partial = used % BLOCK;
        self.tail = blocks[used - partial..used].to_vec();
        self.offset += record.len() as u64;
        self.last = seq;
        Ok(())
    }

    /// Batch `seq` (or, with `None`, a transaction outside the batches) was committed durably:
    /// everything logged so far is in the database, and the log starts again.
    pub(super) fn checkpointed(&mut self, seq: Option<u64>) {
        if let Some(seq) = seq {
            self.last = seq;
        }
        self.offset = 0;
        self.tail.clear();
    }
}

fn encode(store: u64, seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(HEADER + payload.len() + TRAILER);
    r.extend_from_slice(&MAGIC.to_be_bytes());
    r.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    r.extend_from_slice(&store.to_be_bytes());
    r.extend_from_slice(&seq.to_be_bytes());
    r.extend_from_slice(payload);
    let crc = crc32fast::hash(&r);
    r.extend_from_slice(&crc.to_be_bytes());
    r
}

/// What [`Wal::recover`] has read of the file: `bytes` from offset `base`.
struct Window<'f> {
    file: &'f dyn LogFile,
    len: u64,
    base: u64,
    bytes: Vec<u8>,
}

impl Window<'_> {
    /// Reads on until `n` bytes from `at` are held; false if the file ends first.
    fn cover(&mut self, at: u64, n: usize) -> Result<bool, StoreError> {
        const PIECE: u64 = 256 << 10;
        let want = at + n as u64;
        while self.base + (self.bytes.len() as u64) < want {
            let end = self.base + self.bytes.len() as u64;
            if end >= self.len {
                return Ok(false);
            }
            let take = PIECE.min(self.len - end) as usize;
            let old = self.bytes.len();
            self.bytes.resize(old + take, 0);
            self.file
                .read_at(end, &mut self.bytes[old..])
                .map_err(|e| io_err("read", e))?;
        }
        Ok(true)
    }

    /// The payload length the header at `at` claims (the header is held; it may be garbage,
    /// bounded so a bad one never makes the read go past a record's largest size).
    fn record_len(&self, at: u64) -> usize {
        let i = (at - self.base) as usize + 4;
        let n = u32::from_be_bytes(self.bytes[i..i + 4].try_into().unwrap_or_default()) as usize;
        n.min(MAX_RECORD + 1)
    }

    /// Drops what lies before `at` once it is a piece's worth.
    fn forget_before(&mut self, at: u64) {
        let done = (at - self.base) as usize;
        if done >= 256 << 10 {
            self.bytes.drain(..done);
            self.base = at;
        }
    }
}

/// The record at `at`, if one of store `store` is intact there: (sequence, payload, next offset).
fn parse(bytes: &[u8], at: usize, store: u64) -> Option<(u64, &[u8], usize)> {
    let head = bytes.get(at..at.checked_add(HEADER)?)?;
    let word = |i: usize| u32::from_be_bytes(head[i..i + 4].try_into().unwrap_or_default());
    let long = |i: usize| u64::from_be_bytes(head[i..i + 8].try_into().unwrap_or_default());
    if word(0) != MAGIC || long(8) != store {
        return None;
    }
    let len = word(4) as usize;
    let end = at.checked_add(HEADER)?.checked_add(len)?;
    let body = bytes.get(at..end)?;
    let crc = bytes.get(end..end.checked_add(TRAILER)?)?;
    if crc32fast::hash(body).to_be_bytes() != crc {
        return None;
    }
    Some((long(16), &body[HEADER..], end + TRAILER))
}

/// The row changes of one transaction, as they were made: `table u8 ‖ op u8 ‖ key ‖ value`
/// (each `u32` length-prefixed; no value for a removal).
#[derive(Debug, Default)]
pub(super) struct Redo(Vec<u8>);

const INSERT: u8 = 1;
const REMOVE: u8 = 2;

impl Redo {
    pub(super) fn bytes(&self) -> &[u8] {
        &self.0
    }

    fn push(&mut self, table: u8, op: u8, key: &[u8], value: Option<&[u8]>) {
        self.0.push(table);
        self.0.push(op);
        self.0.extend_from_slice(&(key.len() as u32).to_be_bytes());
        self.0.extend_from_slice(key);
        if let Some(v) = value {
            self.0.extend_from_slice(&(v.len() as u32).to_be_bytes());
            self.0.extend_from_slice(v);
        }
    }
}

/// One row change of a redo record.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Change<'a> {
    pub table: u8,
    pub key: &'a [u8],
    /// `None` removes the row.
    pub value: Option<&'a [u8]>,
}

/// The row changes of a redo record's payload, in order.
pub(super) fn changes(mut p: &[u8]) -> Result<Vec<Change<'_>>, StoreError> {
    fn take<'a>(p: &mut &'a [u8], n: usize) -> Result<&'a [u8], StoreError> {
        if p.len() < n {
            return Err(StoreError::Corrupt("write-ahead log record truncated"));
        }
        let (a, b) = p.split_at(n);
        *p = b;
        Ok(a)
    }
    fn sized<'a>(p: &mut &'a [u8]) -> Result<&'a [u8], StoreError> {
        let n = u32::from_be_bytes(take(p, 4)?.try_into().unwrap_or_default()) as usize;
        take(p, n)
    }
    let mut out = Vec::new();
    while !p.is_empty() {
        let head = take(&mut p, 2)?;
        let key = sized(&mut p)?;
        let value = match head[1] {
            INSERT => Some(sized(&mut p)?),
            REMOVE => None,
            _ => return Err(StoreError::Corrupt("write-ahead log operation")),
        };
        out.push(Change {
            table: head[0],
            key,
            value,
        });
    }
    Ok(out)
}

/// A write transaction whose row changes are recorded for the log as they are made.
pub(super) struct LogTx {
    pub(super) tx: WriteTransaction,
    redo: RefCell<Redo>,
    /// Table number by name (see [`super::LOGGED`]).
    number: fn(&str) -> Option<u8>,
}

impl LogTx {
    pub(super) fn new(tx: WriteTransaction, number: fn(&str) -> Option<u8>) -> Self {
        Self {
            tx,
            redo: RefCell::default(),
            number,
        }
    }

    /// Opens `def` for reading and for recorded writes. Only the tables the log numbers may be
    /// written in a batch; others (tombstone runs) are only read.
    pub(super) fn open_table<K: Key + 'static, V: Value + 'static>(
        &self,
        def: TableDefinition<K, V>,
    ) -> Result<Logged<'_, K, V>, StoreError> {
        let table = (self.number)(def.name());
        Ok(Logged {
            inner: self.tx.open_table(def)?,
            redo: &self.redo,
            table,
        })
    }

    /// The transaction and the changes recorded.
    pub(super) fn into_parts(self) -> (WriteTransaction, Redo) {
        (self.tx, self.redo.into_inner())
    }
}

/// A table of a [`LogTx`]: reads as the redb table, writes recorded.
pub(super) struct Logged<'t, K: Key + 'static, V: Value + 'static> {
    inner: Table<'t, K, V>,
    redo: &'t RefCell<Redo>,
    /// The log's number of the table; `None` for a table a batch only reads.
    table: Option<u8>,
}

/// A batch wrote a table the log does not number: a bug, refused before anything is written.
fn unlogged() -> StoreError {
    StoreError::Corrupt("a batch wrote a table the write-ahead log does not know")
}

impl<'t, K: Key + 'static, V: Value + 'static> Logged<'t, K, V> {
    pub(super) fn insert<'k, 'v>(
        &mut self,
        key: impl std::borrow::Borrow<K::SelfType<'k>>,
        value: impl std::borrow::Borrow<V::SelfType<'v>>,
    ) -> Result<(), StoreError> {
        let (key, value) = (key.borrow(), value.borrow());
        let table = self.table.ok_or_else(unlogged)?;
        self.redo.borrow_mut().push(
            table,
            INSERT,
            K::as_bytes(key).as_ref(),
            Some(V::as_bytes(value).as_ref()),
        );
        self.inner.insert(key, value)?;
        Ok(())
    }

    pub(super) fn remove<'k>(
        &mut self,
        key: impl std::borrow::Borrow<K::SelfType<'k>>,
    ) -> Result<(), StoreError> {
        let key = key.borrow();
        let table = self.table.ok_or_else(unlogged)?;
        self.redo
            .borrow_mut()
            .push(table, REMOVE, K::as_bytes(key).as_ref(), None);
        self.inner.remove(key)?;
        Ok(())
    }
}

impl<'t, K: Key + 'static, V: Value + 'static> std::ops::Deref for Logged<'t, K, V> {
    type Target = Table<'t, K, V>;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

/// Applies one row change to table `def` of `tx`.
pub(super) fn replay<K: Key + 'static, V: Value + 'static>(
    tx: &WriteTransaction,
    def: TableDefinition<K, V>,
    change: &Change<'_>,
) -> Result<(), StoreError> {
    let fits = |width: Option<usize>, b: &[u8]| width.is_none_or(|w| w == b.len());
    if !fits(K::fixed_width(), change.key) {
        return Err(StoreError::Corrupt("write-ahead log key width"));
    }
    let mut t = tx.open_table(def)?;
    match change.value {
        Some(v) => {
            if !fits(V::fixed_width(), v) {
                return Err(StoreError::Corrupt("write-ahead log value width"));
            }
            t.insert(K::from_bytes(change.key), V::from_bytes(v))?;
        }
        None => {
            t.remove(K::from_bytes(change.key))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A log file in memory.
    #[derive(Debug, Default)]
    struct Mem(Mutex<Vec<u8>>);

    impl LogFile for &'static Mem {
        fn size(&self) -> io::Result<u64> {
            Ok(self.0.lock().unwrap().len() as u64)
        }
        fn read_at(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
            let b = self.0.lock().unwrap();
            out.copy_from_slice(&b[offset as usize..offset as usize + out.len()]);
            Ok(())
        }
        fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            let mut b = self.0.lock().unwrap();
            let end = offset as usize + data.len();
            if b.len() < end {
                b.resize(end, 0);
            }
            b[offset as usize..end].copy_from_slice(data);
            Ok(())
        }
        fn sync(&self) -> io::Result<()> {
            Ok(())
        }
    }

    fn mem() -> &'static Mem {
        Box::leak(Box::default())
    }

    fn seqs(file: &'static Mem, store: u64, applied: u64) -> Vec<u64> {
        Wal::recover(&file, store, applied)
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect()
    }

    #[test]
    fn recovery_takes_the_consecutive_records_after_the_durable_batch() {
        let file = mem();
        let mut wal = Wal::new(Box::new(file), 7, 10, 4096);
        for seq in 11..=14 {
            wal.append(seq, &[seq as u8; 40]).unwrap();
        }
        assert_eq!(seqs(file, 7, 10), [11, 12, 13, 14]);
        // Batch 12 reached the database durably: only what follows is applied again.
        assert_eq!(seqs(file, 7, 12), [13, 14]);
        assert_eq!(seqs(file, 7, 14), Vec::<u64>::new());
        // Another store's log is never applied.
        assert_eq!(seqs(file, 8, 10), Vec::<u64>::new());
        let back = Wal::recover(&file, 7, 13).unwrap();
        assert_eq!(back, vec![(14, vec![14u8; 40])]);
    }

    #[test]
    fn after_a_checkpoint_stale_records_further_on_are_never_applied() {
        let file = mem();
        let mut wal = Wal::new(Box::new(file), 7, 0, 4096);
        for seq in 1..=5 {
            wal.append(seq, &[1u8; 100]).unwrap();
        }
        // Batch 6 checkpoints; 7 is written over the start of batch 1's record.
        wal.checkpointed(Some(6));
        wal.append(7, &[2u8; 10]).unwrap();
        assert_eq!(seqs(file, 7, 6), [7]);
        // A crash right after the checkpoint, before 7: the old records are all durable.
        let file2 = mem();
        let mut wal2 = Wal::new(Box::new(file2), 7, 0, 4096);
        for seq in 1..=5 {
            wal2.append(seq, &[1u8; 100]).unwrap();
        }
        wal2.checkpointed(Some(6));
        assert_eq!(seqs(file2, 7, 6), Vec::<u64>::new());
    }

    /// Records past the first piece read are found too (recovery reads the file in pieces).
    #[test]
    fn recovery_reads_past_its_first_piece() {
        let file = mem();
        let mut wal = Wal::new(Box::new(file), 7, 0, 4 << 20);
        for seq in 1..=300 {
            wal.append(seq, &vec![seq as u8; 3000 + seq as usize])
                .unwrap();
        }
        let back = Wal::recover(&file, 7, 0).unwrap();
        assert_eq!(back.len(), 300);
        for (seq, payload) in back {
            assert_eq!(payload.len(), 3000 + seq as usize);
            assert!(payload.iter().all(|b| *b == seq as u8));
        }
    }

    #[test]
    fn a_torn_record_ends_the_log() {
        let file = mem();
        let mut wal = Wal::new(Box::new(file), 7, 0, 4096);
        for seq in 1..=3 {
            wal.append(seq, &[9u8; 64]).unwrap();
        }
        // Flip one byte of record 2's payload: it and everything after it are dropped.
        let at = (HEADER + 64 + TRAILER + HEADER + 5) as u64;
        let mut b = [0u8; 1];
        file.read_at(at, &mut b).unwrap();
        file.write_at(at, &[b[0] ^ 1]).unwrap();
        assert_eq!(seqs(file, 7, 0), [1]);
    }

    #[test]
    fn large_records_and_a_full_log_are_checkpoints() {
        let wal = Wal::new(Box::new(mem()), 1, 0, 2 * BLOCK as u64);
        assert_eq!(wal.plan(100), Commit::Log);
        assert_eq!(wal.plan(2 * BLOCK), Commit::Checkpoint);
        assert_eq!(wal.plan(MAX_RECORD + 1), Commit::Checkpoint);
        let off = Wal::new(Box::new(mem()), 1, 0, 0);
        assert_eq!(off.plan(1), Commit::Checkpoint);
    }

    /// The real file: records appended in whole blocks (directly where the file system allows
    /// it) are read back by a fresh open, across block boundaries and after a wrap.
    #[test]
    fn the_file_log_reads_back_what_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.wal");
        let mut wal = Wal::new(Box::new(FileLog::open(&path).unwrap()), 3, 0, 64 << 10);
        let sizes = [10usize, 3000, 5000, 100, 9000, 1];
        for (i, n) in sizes.iter().enumerate() {
            wal.append(i as u64 + 1, &vec![i as u8; *n]).unwrap();
        }
        assert_eq!(FileLog::open(&path).unwrap().size().unwrap(), 64 << 10);
        let back = Wal::recover(&FileLog::open(&path).unwrap(), 3, 0).unwrap();
        assert_eq!(back.len(), sizes.len());
        for (i, (seq, payload)) in back.iter().enumerate() {
            assert_eq!((*seq, payload.len()), (i as u64 + 1, sizes[i]));
            assert!(payload.iter().all(|b| *b == i as u8));
        }
        // A checkpoint, then one record over the start: only it follows the checkpoint.
        wal.checkpointed(Some(7));
        wal.append(8, b"after").unwrap();
        let back = Wal::recover(&FileLog::open(&path).unwrap(), 3, 7).unwrap();
        assert_eq!(back, vec![(8, b"after".to_vec())]);
    }

    #[test]
    fn a_redo_record_decodes_to_its_changes() {
        let mut r = Redo::default();
        r.push(3, INSERT, b"key", Some(b"value"));
        r.push(4, REMOVE, &[1, 2], None);
        assert_eq!(
            changes(r.bytes()).unwrap(),
            vec![
                Change {
                    table: 3,
                    key: b"key",
                    value: Some(b"value")
                },
                Change {
                    table: 4,
                    key: &[1, 2],
                    value: None
                },
            ]
        );
        assert!(changes(&r.bytes()[..r.bytes().len() - 1]).is_err());
    }
}
