//! Test-only: a redb storage backend over a simulated disk that runs out of space.
//!
//! The disk holds the database bytes in memory and counts the 4 KiB blocks that have been
//! written, the way a file system allocates a sparse file: growing the file (`set_len`) costs
//! nothing, writing into a block for the first time costs one block, and a write that would take
//! the disk past its limit fails with `ErrorKind::StorageFull` (ENOSPC) and writes nothing. The
//! disk outlives the backend, so dropping a `Database` and opening a new one over the same disk
//! is a crash and restart on a disk that is still full. Never a production option.

use std::collections::BTreeSet;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use super::space::FreeSpace;

/// File-system block size of the simulated disk.
const BLOCK: u64 = 4096;

/// A simulated disk with room for `limit` bytes of written blocks.
#[derive(Debug)]
pub struct Disk {
    state: Mutex<DiskState>,
}

#[derive(Debug, Default)]
struct DiskState {
    bytes: Vec<u8>,
    /// Blocks written at least once since they were last truncated away.
    allocated: BTreeSet<u64>,
    limit: u64,
    /// Writes refused for lack of space.
    refused: u64,
    /// Bytes held by the store's reserve file (another file on the same disk).
    reserve: u64,
    /// Bytes the database wrote, in whole blocks (what a file system sends to the disk).
    written: u64,
}

impl DiskState {
    fn used(&self) -> u64 {
        self.allocated.len() as u64 * BLOCK + self.reserve
    }
}

impl Disk {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(DiskState {
                limit,
                ..DiskState::default()
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, DiskState> {
        // A panic while holding the lock only happens in a failing test.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes the disk can still allocate.
    pub fn available(&self) -> u64 {
        let s = self.state();
        s.limit.saturating_sub(s.used())
    }

    /// Bytes allocated so far, by the database file and the reserve.
    pub fn used(&self) -> u64 {
        self.state().used()
    }

    /// Changes the size of the disk (another program filled or freed it).
    pub fn set_limit(&self, limit: u64) {
        self.state().limit = limit;
    }

    /// A copy of every byte of the database file, for scanning.
    pub fn snapshot(&self) -> Vec<u8> {
        self.state().bytes.clone()
    }

    /// The free-space probe of this disk, for the store.
    pub fn space(self: &Arc<Self>) -> Box<dyn FreeSpace> {
        Box::new(DiskSpace(self.clone()))
    }

    /// Bytes written so far, counted in whole 4 KiB blocks: the store's write amplification.
    pub fn bytes_written(&self) -> u64 {
        self.state().written
    }

    /// How many writes were refused with ENOSPC.
    pub fn refused(&self) -> u64 {
        self.state().refused
    }

    /// A backend over this disk, for one `Database`.
    pub fn backend(self: &Arc<Self>) -> FaultyBackend {
        FaultyBackend(self.clone())
    }
}

/// The store's view of a [`Disk`]'s free space.
#[derive(Debug)]
struct DiskSpace(Arc<Disk>);

impl FreeSpace for DiskSpace {
    fn available(&self) -> io::Result<u64> {
        Ok(self.0.available())
    }

    fn reserved(&self) -> io::Result<u64> {
        Ok(self.0.state().reserve)
    }

    fn reserve(&self, bytes: u64) -> io::Result<()> {
        let mut s = self.0.state();
        let more = bytes.saturating_sub(s.reserve);
        if s.used() + more > s.limit {
            s.refused += 1;
            return Err(io::Error::from(io::ErrorKind::StorageFull));
        }
        s.reserve = s.reserve.max(bytes);
        Ok(())
    }

    fn release(&self) -> io::Result<()> {
        self.0.state().reserve = 0;
        Ok(())
    }
}

/// The redb side of a [`Disk`].
#[derive(Debug)]
pub struct FaultyBackend(Arc<Disk>);

fn out_of_range() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "read or write past the end")
}

impl redb::StorageBackend for FaultyBackend {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.0.state().bytes.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let s = self.0.state();
        let start = usize::try_from(offset).map_err(|_| out_of_range())?;
        let src = s
            .bytes
            .get(start..start + out.len())
            .ok_or_else(out_of_range)?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut s = self.0.state();
        let n = usize::try_from(len).map_err(|_| out_of_range())?;
        s.bytes.resize(n, 0);
        // Truncation frees the blocks past the end; growth allocates nothing (sparse).
        let first_gone = len.div_ceil(BLOCK);
        s.allocated.retain(|b| *b < first_gone);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut s = self.0.state();
        let end = offset + data.len() as u64;
        if end > s.bytes.len() as u64 {
            return Err(out_of_range());
        }
        let blocks = offset / BLOCK..end.div_ceil(BLOCK);
        let new = blocks.clone().filter(|b| !s.allocated.contains(b)).count() as u64;
        if s.used() + new * BLOCK > s.limit {
            s.refused += 1;
            return Err(io::Error::from(io::ErrorKind::StorageFull));
        }
        s.written += (blocks.end - blocks.start) * BLOCK;
        s.allocated.extend(blocks);
        let start = offset as usize;
        s.bytes[start..start + data.len()].copy_from_slice(data);
        Ok(())
    }
}
