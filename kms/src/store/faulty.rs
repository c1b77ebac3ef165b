//! Test-only: a redb storage backend over a simulated disk that runs out of space.
//!
//! The disk holds two files in memory, the database and its write-ahead log, and counts the 4 KiB
//! blocks that have been written, the way a file system allocates a sparse file: growing a file
//! (`set_len`) costs nothing, writing into a block for the first time costs one block, and a
//! write that would take the disk past its limit fails with `ErrorKind::StorageFull` (ENOSPC) and
//! writes nothing. The disk outlives the backend, so dropping a `Database` and opening a new one
//! over the same disk is a restart on a disk that is still full; [`Disk::crash`] is a crash of
//! the machine, which loses every write not yet synced. Never a production option.

use std::collections::BTreeSet;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use super::space::FreeSpace;
use super::wal::LogFile;

/// File-system block size of the simulated disk.
const BLOCK: u64 = 4096;

/// A simulated disk with room for `limit` bytes of written blocks.
#[derive(Debug)]
pub struct Disk {
    state: Mutex<DiskState>,
}

/// The database file and the write-ahead log.
const FILES: usize = 2;
const DB: usize = 0;
const LOG: usize = 1;

#[derive(Debug, Default)]
struct DiskState {
    files: [FileState; FILES],
    limit: u64,
    /// Writes refused for lack of space.
    refused: u64,
    /// Bytes held by the store's reserve file (another file on the same disk).
    reserve: u64,
    /// Bytes the store wrote, in whole blocks (what a file system sends to the disk).
    written: u64,
    /// Bumped by a crash: the backends of the crashed process write nothing any more.
    generation: u64,
}

#[derive(Debug, Default)]
struct FileState {
    bytes: Vec<u8>,
    /// Blocks written at least once since they were last truncated away.
    allocated: BTreeSet<u64>,
    /// What a crash takes back: every change since the file was last synced, oldest first.
    unsynced: Vec<Unsynced>,
}

/// A change not yet synced, with what it replaced.
#[derive(Debug)]
enum Unsynced {
    Write {
        offset: usize,
        old: Vec<u8>,
        new_blocks: Vec<u64>,
    },
    Len {
        old: Vec<u8>,
        old_allocated: BTreeSet<u64>,
    },
}

impl FileState {
    /// Takes back every change since the last sync, newest first.
    fn revert(&mut self) {
        while let Some(u) = self.unsynced.pop() {
            match u {
                Unsynced::Write {
                    offset,
                    old,
                    new_blocks,
                } => {
                    self.bytes[offset..offset + old.len()].copy_from_slice(&old);
                    for b in new_blocks {
                        self.allocated.remove(&b);
                    }
                }
                Unsynced::Len { old, old_allocated } => {
                    self.bytes = old;
                    self.allocated = old_allocated;
                }
            }
        }
    }
}

impl DiskState {
    fn used(&self) -> u64 {
        self.files
            .iter()
            .map(|f| f.allocated.len() as u64)
            .sum::<u64>()
            * BLOCK
            + self.reserve
    }

    fn write(&mut self, file: usize, offset: u64, data: &[u8]) -> io::Result<()> {
        let end = offset + data.len() as u64;
        let blocks = offset / BLOCK..end.div_ceil(BLOCK);
        let new: Vec<u64> = blocks
            .clone()
            .filter(|b| !self.files[file].allocated.contains(b))
            .collect();
        if self.used() + new.len() as u64 * BLOCK > self.limit {
            self.refused += 1;
            return Err(io::Error::from(io::ErrorKind::StorageFull));
        }
        self.written += (blocks.end - blocks.start) * BLOCK;
        let f = &mut self.files[file];
        let start = usize::try_from(offset).map_err(|_| out_of_range())?;
        let end = start + data.len();
        f.allocated.extend(new.iter().copied());
        let old = f.bytes[start..end].to_vec();
        f.unsynced.push(Unsynced::Write {
            offset: start,
            old,
            new_blocks: new,
        });
        f.bytes[start..end].copy_from_slice(data);
        Ok(())
    }

    fn set_len(&mut self, file: usize, len: u64) -> io::Result<()> {
        let n = usize::try_from(len).map_err(|_| out_of_range())?;
        let f = &mut self.files[file];
        f.unsynced.push(Unsynced::Len {
            old: f.bytes.clone(),
            old_allocated: f.allocated.clone(),
        });
        f.bytes.resize(n, 0);
        // Truncation frees the blocks past the end; growth allocates nothing (sparse).
        let first_gone = len.div_ceil(BLOCK);
        f.allocated.retain(|b| *b < first_gone);
        Ok(())
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

    /// A copy of every byte of the database file and of the write-ahead log, for scanning.
    pub fn snapshot(&self) -> Vec<u8> {
        let s = self.state();
        [s.files[DB].bytes.as_slice(), s.files[LOG].bytes.as_slice()].concat()
    }

    /// A crash of the machine: every write since its file was last synced is lost, and what the
    /// crashed process's backends still do (a `Database` dropped later, closing) is discarded.
    pub fn crash(&self) {
        let mut s = self.state();
        for f in &mut s.files {
            f.revert();
        }
        s.generation += 1;
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

    /// A backend over this disk's database file, for one `Database`.
    pub fn backend(self: &Arc<Self>) -> FaultyBackend {
        self.file(DB)
    }

    /// The store's write-ahead log on this disk.
    pub fn log(self: &Arc<Self>) -> Box<dyn LogFile> {
        Box::new(self.file(LOG))
    }

    fn file(self: &Arc<Self>, file: usize) -> FaultyBackend {
        FaultyBackend {
            disk: self.clone(),
            file,
            generation: self.state().generation,
        }
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

/// One file of a [`Disk`], as one process opened it.
#[derive(Debug)]
pub struct FaultyBackend {
    disk: Arc<Disk>,
    file: usize,
    /// The disk's generation when it was opened: after a crash, the old process's writes go
    /// nowhere.
    generation: u64,
}

fn out_of_range() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "read or write past the end")
}

impl FaultyBackend {
    /// The disk's state, and whether this backend's process still runs.
    fn state(&self) -> (MutexGuard<'_, DiskState>, bool) {
        let s = self.disk.state();
        let live = s.generation == self.generation;
        (s, live)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let (s, _) = self.state();
        let start = usize::try_from(offset).map_err(|_| out_of_range())?;
        let src = s.files[self.file]
            .bytes
            .get(start..start + out.len())
            .ok_or_else(out_of_range)?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let (mut s, live) = self.state();
        if live {
            s.files[self.file].unsynced.clear();
        }
        Ok(())
    }
}

impl redb::StorageBackend for FaultyBackend {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.state().0.files[self.file].bytes.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        FaultyBackend::read(self, offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let (mut s, live) = self.state();
        if !live {
            return Ok(());
        }
        s.set_len(self.file, len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.sync()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let (mut s, live) = self.state();
        if !live {
            return Ok(());
        }
        if offset + data.len() as u64 > s.files[self.file].bytes.len() as u64 {
            return Err(out_of_range());
        }
        s.write(self.file, offset, data)
    }
}

impl LogFile for FaultyBackend {
    fn size(&self) -> io::Result<u64> {
        Ok(self.state().0.files[self.file].bytes.len() as u64)
    }

    fn read_at(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        FaultyBackend::read(self, offset, out)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let (mut s, live) = self.state();
        if !live {
            return Ok(());
        }
        let end = offset + data.len() as u64;
        if end > s.files[self.file].bytes.len() as u64 {
            s.set_len(self.file, end)?;
        }
        s.write(self.file, offset, data)
    }

    fn sync(&self) -> io::Result<()> {
        FaultyBackend::sync(self)
    }
}
