//! Free space for the store: the watermark that keeps room for consumption, and a reserve file
//! that a restart on a full disk can give back.
//!
//! redb is copy-on-write: even erasing a key writes new pages before the old ones are freed, so
//! on a file system with no free block at all a commit, however small, fails unless redb happens
//! to reuse pages it had written before; on the fault-injecting disk of the tests a restart's
//! first commit fails in some runs and not in others. So the store
//! * refuses new key material (link blocks, pool keys, keys for slaves) once free space falls
//!   below a configured **watermark**, keeping that room for consumption and rotation; and
//! * holds a **reserve** file next to the store, allocated for real. When the disk was filled by
//!   someone else anyway, the next open releases the reserve so that its own commit and the
//!   consumption of stored keys fit; it is taken again at an open with room for it above the
//!   watermark.
//!
//! This module measures and holds space; the policy lives in [`super::Store`].

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Default watermark: 64 MiB stays free for consumption commits and rotation steps.
pub const DEFAULT_WATERMARK_BYTES: u64 = 64 << 20;
/// Default reserve file: 16 MiB, room for an open and thousands of consumption commits.
pub const DEFAULT_RESERVE_BYTES: u64 = 16 << 20;

/// Measures the free space the store can grow into and holds its reserve.
pub trait FreeSpace: Send + Sync + fmt::Debug {
    /// Bytes an unprivileged writer can still allocate (the reserve not included).
    fn available(&self) -> io::Result<u64>;
    /// Bytes the reserve holds now (0 if there is none).
    fn reserved(&self) -> io::Result<u64>;
    /// Makes the reserve hold `bytes`, allocated on the medium (not a sparse file), durably.
    fn reserve(&self, bytes: u64) -> io::Result<()>;
    /// Gives the whole reserve back to the file system.
    fn release(&self) -> io::Result<()>;
}

/// The file system holding the store: `statvfs` (`f_bavail · f_frsize`) of its directory, and
/// the reserve file `<store>.reserve` beside it.
#[derive(Debug, Clone)]
pub struct FileSystemSpace {
    dir: PathBuf,
    reserve: PathBuf,
}

impl FileSystemSpace {
    /// Space of the file system that holds the store file `store`.
    pub fn for_store(store: &Path) -> Self {
        let dir = match store.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Self {
            dir,
            reserve: store.with_extension("reserve"),
        }
    }
}

impl FreeSpace for FileSystemSpace {
    fn available(&self) -> io::Result<u64> {
        let s = rustix::fs::statvfs(&self.dir)?;
        Ok(s.f_bavail.saturating_mul(s.f_frsize))
    }

    fn reserved(&self) -> io::Result<u64> {
        match std::fs::metadata(&self.reserve) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    fn reserve(&self, bytes: u64) -> io::Result<()> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.reserve)?;
        allocate(&f, bytes)?;
        f.sync_all()?;
        if let Some(dir) = self.reserve.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    fn release(&self) -> io::Result<()> {
        match std::fs::remove_file(&self.reserve) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Allocates the first `bytes` of `f` on the medium: `fallocate` where the file system has it,
/// else by writing them (a sparse `set_len` would reserve nothing).
fn allocate(f: &std::fs::File, bytes: u64) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    match rustix::fs::fallocate(f, rustix::fs::FallocateFlags::empty(), 0, bytes) {
        Ok(()) => return Ok(()),
        Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => {}
        Err(e) => return Err(e.into()),
    }
    use std::io::{Seek, Write};
    let mut f = f;
    f.seek(io::SeekFrom::Start(0))?;
    let chunk = vec![0xa5u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_real_file_system_and_holds_a_reserve() {
        let dir = tempfile::tempdir().unwrap();
        let space = FileSystemSpace::for_store(&dir.path().join("store.redb"));
        assert!(space.available().unwrap() > 0, "the test machine has room");
        assert_eq!(space.reserved().unwrap(), 0);
        space.reserve(1 << 20).unwrap();
        assert_eq!(space.reserved().unwrap(), 1 << 20);
        assert!(dir.path().join("store.reserve").exists());
        space.release().unwrap();
        assert_eq!(space.reserved().unwrap(), 0);
        space.release().unwrap();
        let missing = FileSystemSpace::for_store(&dir.path().join("gone/store.redb"));
        assert!(missing.available().is_err());
    }
}
