//! The one way this stack writes a file that must survive a crash whole: a temporary sibling,
//! created with its final permissions, written and synced, then renamed over the target, and the
//! directory synced so that the rename is durable too. A crash leaves either the old file or the
//! new one, never half of one, and a private file is never readable by others, not even briefly.
//!
//! Used for certificates and keys of the demo PKI, signing keys, link seeds, recorded listen
//! addresses and generated configurations. It never logs the contents it writes.

use std::fs;
use std::io::Write;
use std::path::Path;

/// Who may read the written file (unix permissions; ignored elsewhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Owner read-write only (0600): private keys, seeds.
    Private,
    /// Owner read-write, everyone read (0644): certificates, public keys, records.
    Public,
}

/// Writes `bytes` to `path` atomically and durably (see the module documentation).
pub fn write_atomic(path: &Path, bytes: &[u8], access: Access) -> std::io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    // A leftover from a crash may carry other permissions; the mode only applies to a new file.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(match access {
            Access::Private => 0o600,
            Access::Public => 0o644,
        });
    }
    #[cfg(not(unix))]
    let _ = access;
    {
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_files_with_their_modes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"one", Access::Public).unwrap();
        // A leftover temporary file from a crash is replaced, not reused.
        fs::write(dir.path().join("f.tmp"), b"stale").unwrap();
        write_atomic(&p, b"two", Access::Private).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert!(!dir.path().join("f.tmp").exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
