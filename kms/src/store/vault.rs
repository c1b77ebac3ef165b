//! Encryption at rest: AES-256-GCM under per-epoch data keys (DEKs), wrapped by a key-encryption
//! key (KEK) held behind the [`KeyWrap`] interface.
//!
//! * A fresh DEK epoch starts at every start of the node and never seals anything after the
//!   process ends, so an AES-GCM nonce (a per-epoch counter) is never reused after a crash. Older
//!   epochs' DEKs are kept only as [`OpeningKey`]s, which cannot seal, until no record needs them.
//! * Destroying an epoch's DEK crypto-shreds everything sealed under it. On a copy-on-write store
//!   or an SSD the wrapped DEK may survive on disk, so the shred only becomes real when the KEK
//!   itself is destroyed; hence KEKs live in periods and are rotated. A KEK in a file
//!   ([`FileKek`]) can shred nothing for certain (the file system may keep copies): it is for
//!   development and demos. Production holds the KEK in a TPM or an HSM (PKCS#11) behind the same
//!   trait.
//!
//! This module never writes a DEK or a KEK anywhere except through [`KeyWrap`] and the epoch
//! table, and never logs them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use qkd_types::Secret;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// Length of DEKs and file KEKs in bytes (AES-256).
pub const KEY_LEN: usize = 32;

/// Errors of encryption at rest.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// Operator: the KEK file cannot be read, written or has the wrong size or permissions.
    #[error("key-encryption key {path}: {what}")]
    Kek {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Storage or tampering: a ciphertext or a wrapped key does not authenticate.
    #[error("authentication of stored ciphertext failed (corruption or tampering)")]
    Authentication,
    /// Bug or storage: a record names an epoch whose data key no longer exists.
    #[error("data key of epoch {0} is gone")]
    UnknownEpoch(u64),
    /// Operating system: no randomness.
    #[error("system random number generator failed")]
    Random,
    /// Bug: the per-epoch nonce counter ran out (2^64 seals).
    #[error("nonce space of the epoch exhausted")]
    NoncesExhausted,
}

/// Holds the key-encryption key. Implementations: [`FileKek`] (development), a TPM or an HSM.
pub trait KeyWrap: Send + Sync + fmt::Debug {
    /// Identifier of the KEK period now in force; new DEKs are wrapped under it.
    fn current_period(&self) -> u64;
    /// Wraps `dek` under the KEK of `period`, binding `aad`.
    fn wrap(&self, period: u64, dek: &Secret, aad: &[u8]) -> Result<Vec<u8>, VaultError>;
    /// Unwraps a DEK wrapped under the KEK of `period`.
    fn unwrap(&self, period: u64, wrapped: &[u8], aad: &[u8]) -> Result<Secret, VaultError>;
    /// Destroys the KEK of every period before `period` (crypto-shredding all DEKs under them).
    fn destroy_before(&self, period: u64) -> Result<(), VaultError>;
    /// Starts a new KEK period at `now_ms` (an operator's rotation, without a restart) and
    /// returns it: a fresh KEK, later than every period before; new DEKs are wrapped under it.
    fn advance(&self, now_ms: u64) -> Result<u64, VaultError>;
}

/// Low bits of a KEK period identifier that count rotations within one calendar period: period
/// identifiers are `calendar period << ROTATION_BITS | rotations`, so that an operator's
/// rotation ([`KeyWrap::advance`]) never takes the next calendar period's identifier.
pub const ROTATION_BITS: u32 = 16;

/// A KEK per period in files `kek-<period>.key` (32 random bytes, mode 0600) in one directory.
///
/// The period identifier is `floor(now / period_ms) << ROTATION_BITS`, plus one per rotation
/// ([`KeyWrap::advance`]) within that calendar period; it never goes backwards (an open in a
/// period already rotated uses the newest file). Deleting a file does not erase its bytes from
/// the medium: a file-held KEK shreds nothing for certain. Use it for development and demos only.
#[derive(Debug)]
pub struct FileKek {
    dir: PathBuf,
    period_ms: u64,
    /// The period in force and its KEK; replaced by [`KeyWrap::advance`].
    current: RwLock<(u64, Secret)>,
}

impl FileKek {
    /// Opens (or, for a new period, creates) the KEK of the period `now_ms` falls in, or of the
    /// newest period on file if that is later (a rotation earlier in this calendar period).
    pub fn open(dir: &Path, now_ms: u64, period_ms: u64) -> Result<Self, VaultError> {
        let period_ms = period_ms.max(1);
        let calendar = calendar_period(now_ms, period_ms);
        let period = newest_on_file(dir)?.map_or(calendar, |n| n.max(calendar));
        let current = load_or_create(&kek_path(dir, period))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            period_ms,
            current: RwLock::new((period, current)),
        })
    }

    fn key_for(&self, period: u64) -> Result<Secret, VaultError> {
        {
            let current = self.current.read().unwrap_or_else(|p| p.into_inner());
            if period == current.0 {
                return Ok(current.1.duplicate());
            }
        }
        let path = kek_path(&self.dir, period);
        if !path.exists() {
            return Err(VaultError::Kek {
                path,
                what: "missing (destroyed or never created)".into(),
            });
        }
        load_or_create(&path)
    }
}

fn calendar_period(now_ms: u64, period_ms: u64) -> u64 {
    (now_ms / period_ms) << ROTATION_BITS
}

/// The period of the newest `kek-<period>.key` in `dir`, if any.
fn newest_on_file(dir: &Path) -> Result<Option<u64>, VaultError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(kek_err(dir, e)),
    };
    Ok(entries
        .flatten()
        .filter_map(|e| period_of_file(&e.file_name()))
        .max())
}

fn period_of_file(name: &std::ffi::OsStr) -> Option<u64> {
    name.to_str()?
        .strip_prefix("kek-")?
        .strip_suffix(".key")?
        .parse()
        .ok()
}

fn kek_path(dir: &Path, period: u64) -> PathBuf {
    dir.join(format!("kek-{period}.key"))
}

fn kek_err(path: &Path, what: impl fmt::Display) -> VaultError {
    VaultError::Kek {
        path: path.to_path_buf(),
        what: what.to_string(),
    }
}

fn load_or_create(path: &Path) -> Result<Secret, VaultError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            if bytes.len() != KEY_LEN {
                return Err(kek_err(
                    path,
                    format!("holds {} bytes, expected {KEY_LEN}", bytes.len()),
                ));
            }
            check_private(path)?;
            Ok(Secret::copy_from(&bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = Secret::zeroed(KEY_LEN);
            SystemRandom::new()
                .fill(key.expose_mut())
                .map_err(|_| VaultError::Random)?;
            // Written once, owner-only, then synced: the KEK is the root of all stored keys.
            crate::durable::write_atomic(path, key.expose(), crate::durable::Access::Private)
                .map_err(|e| kek_err(path, e))?;
            Ok(key)
        }
        Err(e) => Err(kek_err(path, e)),
    }
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), VaultError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| kek_err(path, e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(kek_err(
            path,
            format!(
                "is readable by others (mode {:o}); chmod 600 it",
                mode & 0o777
            ),
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), VaultError> {
    Ok(())
}

impl KeyWrap for FileKek {
    fn current_period(&self) -> u64 {
        self.current.read().unwrap_or_else(|p| p.into_inner()).0
    }

    fn wrap(&self, period: u64, dek: &Secret, aad: &[u8]) -> Result<Vec<u8>, VaultError> {
        let kek = self.key_for(period)?;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| VaultError::Random)?;
        // The DEK is exposed only to be encrypted under the KEK.
        // Room for the tag is reserved first, so appending it never reallocates (which would
        // leave an unzeroized copy of the DEK behind); the copy is zeroized whatever happens.
        let mut out = Zeroizing::new(Vec::with_capacity(dek.len() + AES_256_GCM.tag_len()));
        out.extend_from_slice(dek.expose());
        aead_key(&kek)
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut *out,
            )
            .map_err(|_| VaultError::Authentication)?;
        let mut wrapped = nonce.to_vec();
        wrapped.extend_from_slice(&out);
        Ok(wrapped)
    }

    fn unwrap(&self, period: u64, wrapped: &[u8], aad: &[u8]) -> Result<Secret, VaultError> {
        let kek = self.key_for(period)?;
        if wrapped.len() < NONCE_LEN {
            return Err(VaultError::Authentication);
        }
        let (nonce, ct) = wrapped.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| VaultError::Authentication)?;
        let mut buf = Zeroizing::new(ct.to_vec());
        let plain = aead_key(&kek)
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .map_err(|_| VaultError::Authentication)?;
        Ok(Secret::copy_from(plain))
    }

    fn destroy_before(&self, period: u64) -> Result<(), VaultError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| kek_err(&self.dir, e))?;
        for entry in entries.flatten() {
            if period_of_file(&entry.file_name()).is_some_and(|p| p < period) {
                std::fs::remove_file(entry.path()).map_err(|e| kek_err(&entry.path(), e))?;
            }
        }
        Ok(())
    }

    fn advance(&self, now_ms: u64) -> Result<u64, VaultError> {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        let next = calendar_period(now_ms, self.period_ms).max(current.0.saturating_add(1));
        let key = load_or_create(&kek_path(&self.dir, next))?;
        *current = (next, key);
        Ok(next)
    }
}

fn aead_key(key: &Secret) -> LessSafeKey {
    // Invariant: every key handed here is KEY_LEN bytes (DEKs and KEKs are made that way), which
    // is exactly what AES-256 needs, so construction cannot fail.
    #[allow(clippy::expect_used)]
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key.expose()).expect("32-byte AES-256 key"))
}

/// A sealed value: which epoch's DEK, which nonce, and the ciphertext with its tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// DEK epoch.
    pub epoch: u64,
    /// Nonce counter within the epoch.
    pub nonce: u64,
    /// Ciphertext followed by the 16-byte tag.
    pub ct: Vec<u8>,
}

/// The DEK of one epoch, in memory only.
#[derive(Debug)]
pub struct EpochKey {
    epoch: u64,
    key: LessSafeKey,
    next_nonce: AtomicU64,
}

impl EpochKey {
    /// A fresh random DEK for `epoch`, together with its bytes (for wrapping).
    pub fn generate(epoch: u64) -> Result<(Self, Secret), VaultError> {
        let mut dek = Secret::zeroed(KEY_LEN);
        SystemRandom::new()
            .fill(dek.expose_mut())
            .map_err(|_| VaultError::Random)?;
        Ok((Self::from_secret(epoch, &dek), dek))
    }

    fn from_secret(epoch: u64, dek: &Secret) -> Self {
        Self {
            epoch,
            key: aead_key(dek),
            next_nonce: AtomicU64::new(0),
        }
    }

    /// The epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Encrypts `plain`. `aad` must describe the record (identity, epoch, nonce are added here).
    pub fn seal(&self, aad: &[u8], plain: &Secret) -> Result<Sealed, VaultError> {
        let nonce = self.next_nonce.fetch_add(1, Ordering::Relaxed);
        if nonce == u64::MAX {
            return Err(VaultError::NoncesExhausted);
        }
        // Key bytes are exposed only to be encrypted in place into the ciphertext buffer, which
        // has room for the tag, so appending it never reallocates (leaving a plaintext copy);
        // the buffer is zeroized if sealing fails.
        let mut buf = Zeroizing::new(Vec::with_capacity(plain.len() + AES_256_GCM.tag_len()));
        buf.extend_from_slice(plain.expose());
        self.key
            .seal_in_place_append_tag(
                nonce_bytes(nonce),
                Aad::from(full_aad(aad, self.epoch, nonce)),
                &mut *buf,
            )
            .map_err(|_| VaultError::Authentication)?;
        let ct = std::mem::take(&mut *buf);
        Ok(Sealed {
            epoch: self.epoch,
            nonce,
            ct,
        })
    }

    /// Decrypts a value sealed under this epoch.
    pub fn open(&self, aad: &[u8], sealed: &Sealed) -> Result<Secret, VaultError> {
        open_with(&self.key, self.epoch, aad, sealed)
    }
}

/// The DEK of an older epoch, in memory only. It can open what was sealed under it and cannot
/// seal: its nonce counter died with the process that used it.
#[derive(Debug)]
pub struct OpeningKey {
    epoch: u64,
    key: LessSafeKey,
}

impl OpeningKey {
    /// Rebuilds the key of an older epoch from its (unwrapped) DEK.
    pub fn new(epoch: u64, dek: &Secret) -> Self {
        Self {
            epoch,
            key: aead_key(dek),
        }
    }

    /// The epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Decrypts a value sealed under this epoch.
    pub fn open(&self, aad: &[u8], sealed: &Sealed) -> Result<Secret, VaultError> {
        open_with(&self.key, self.epoch, aad, sealed)
    }
}

/// The current epoch's key, which seals, and the older epochs' keys still needed to open records
/// not yet re-encrypted.
#[derive(Debug)]
pub struct Keyring {
    current: EpochKey,
    older: BTreeMap<u64, OpeningKey>,
}

impl Keyring {
    /// A ring sealing under `current` and opening `older` epochs too.
    pub fn new(current: EpochKey, older: impl IntoIterator<Item = OpeningKey>) -> Self {
        Self {
            current,
            older: older.into_iter().map(|k| (k.epoch, k)).collect(),
        }
    }

    /// The current epoch, under which everything is sealed.
    pub fn epoch(&self) -> u64 {
        self.current.epoch
    }

    /// Older epochs whose keys are still held.
    pub fn older_epochs(&self) -> impl Iterator<Item = u64> + '_ {
        self.older.keys().copied()
    }

    /// Seals under the current epoch.
    pub fn seal(&self, aad: &[u8], plain: &Secret) -> Result<Sealed, VaultError> {
        self.current.seal(aad, plain)
    }

    /// Opens a value sealed under the current epoch or an older one still held.
    pub fn open(&self, aad: &[u8], sealed: &Sealed) -> Result<Secret, VaultError> {
        if sealed.epoch == self.current.epoch {
            return self.current.open(aad, sealed);
        }
        self.older
            .get(&sealed.epoch)
            .ok_or(VaultError::UnknownEpoch(sealed.epoch))?
            .open(aad, sealed)
    }

    /// Seals under `next` from now on; the current epoch's key becomes open-only (its records
    /// stay readable until a rotation pass has re-encrypted them).
    pub fn advance(&mut self, next: EpochKey) {
        let old = std::mem::replace(&mut self.current, next);
        self.older.insert(
            old.epoch,
            OpeningKey {
                epoch: old.epoch,
                key: old.key,
            },
        );
    }

    /// Drops the keys of the older epochs before `below`: no record needs them any more.
    pub fn forget_before(&mut self, below: u64) {
        self.older.retain(|e, _| *e >= below);
    }
}

fn open_with(
    key: &LessSafeKey,
    epoch: u64,
    aad: &[u8],
    sealed: &Sealed,
) -> Result<Secret, VaultError> {
    if sealed.epoch != epoch {
        return Err(VaultError::UnknownEpoch(sealed.epoch));
    }
    let mut buf = Zeroizing::new(sealed.ct.clone());
    let plain = key
        .open_in_place(
            nonce_bytes(sealed.nonce),
            Aad::from(full_aad(aad, sealed.epoch, sealed.nonce)),
            &mut buf,
        )
        .map_err(|_| VaultError::Authentication)?;
    Ok(Secret::copy_from(plain))
}

fn nonce_bytes(n: u64) -> Nonce {
    // nonce = u32be(0) ‖ u64be(counter), unique because a DEK never seals after its process.
    let mut b = [0u8; NONCE_LEN];
    b[4..].copy_from_slice(&n.to_be_bytes());
    Nonce::assume_unique_for_key(b)
}

fn full_aad(aad: &[u8], epoch: u64, nonce: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(aad.len() + 16);
    v.extend_from_slice(aad);
    v.extend_from_slice(&epoch.to_be_bytes());
    v.extend_from_slice(&nonce.to_be_bytes());
    v
}

/// AAD of a wrapped DEK: binds it to its epoch and period.
pub fn dek_aad(epoch: u64, period: u64) -> Vec<u8> {
    let mut v = b"QKMS-dek-v1".to_vec();
    v.extend_from_slice(&epoch.to_be_bytes());
    v.extend_from_slice(&period.to_be_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_roundtrip_and_binding() {
        let (k, _) = EpochKey::generate(7).unwrap();
        let secret = Secret::copy_from(b"0123456789abcdef0123456789abcdef");
        let s1 = k.seal(b"rec-1", &secret).unwrap();
        let s2 = k.seal(b"rec-1", &secret).unwrap();
        assert_ne!(s1.nonce, s2.nonce);
        assert_ne!(s1.ct, s2.ct);
        assert_eq!(k.open(b"rec-1", &s1).unwrap(), secret);
        assert!(matches!(
            k.open(b"rec-2", &s1),
            Err(VaultError::Authentication)
        ));
        let mut bad = s1.clone();
        bad.ct[0] ^= 1;
        assert!(k.open(b"rec-1", &bad).is_err());
        let mut moved = s1.clone();
        moved.nonce = s2.nonce;
        assert!(k.open(b"rec-1", &moved).is_err());
        let (other, _) = EpochKey::generate(8).unwrap();
        assert!(matches!(
            other.open(b"rec-1", &s1),
            Err(VaultError::UnknownEpoch(7))
        ));
    }

    #[test]
    fn file_kek_wraps_rotates_and_destroys() {
        let dir = tempfile::tempdir().unwrap();
        let day = 86_400_000;
        let (p5, p6) = (5 << ROTATION_BITS, 6 << ROTATION_BITS);
        let k1 = FileKek::open(dir.path(), 5 * day + 1, day).unwrap();
        assert_eq!(k1.current_period(), p5);
        let dek = Secret::copy_from(&[9u8; 32]);
        let w = k1.wrap(p5, &dek, b"aad").unwrap();
        assert_eq!(k1.unwrap(p5, &w, b"aad").unwrap(), dek);
        assert!(k1.unwrap(p5, &w, b"other").is_err());
        // Same period reopens the same KEK.
        let again = FileKek::open(dir.path(), 5 * day + 2, day).unwrap();
        assert_eq!(again.unwrap(p5, &w, b"aad").unwrap(), dek);
        // Next period: new KEK; the old one still opens until destroyed.
        let k2 = FileKek::open(dir.path(), 6 * day, day).unwrap();
        assert_eq!(k2.unwrap(p5, &w, b"aad").unwrap(), dek);
        k2.destroy_before(p6).unwrap();
        assert!(matches!(
            k2.unwrap(p5, &w, b"aad"),
            Err(VaultError::Kek { .. })
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(format!("kek-{p6}.key")))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    /// An operator's rotation takes a fresh KEK within the calendar period, never the next
    /// period's identifier; a later open keeps the newest; the calendar moves on past it.
    #[test]
    fn file_kek_advances_within_a_period() {
        let dir = tempfile::tempdir().unwrap();
        let day = 86_400_000;
        let p5 = 5 << ROTATION_BITS;
        let k = FileKek::open(dir.path(), 5 * day, day).unwrap();
        let dek = Secret::copy_from(&[7u8; 32]);
        let w = k.wrap(p5, &dek, b"aad").unwrap();
        assert_eq!(k.advance(5 * day + 10).unwrap(), p5 + 1);
        assert_eq!(k.current_period(), p5 + 1);
        assert!(dir.path().join(format!("kek-{}.key", p5 + 1)).exists());
        assert_ne!(k.wrap(p5 + 1, &dek, b"aad").unwrap(), w);
        assert_eq!(
            k.unwrap(p5, &w, b"aad").unwrap(),
            dek,
            "older periods still open"
        );
        let again = FileKek::open(dir.path(), 5 * day + 20, day).unwrap();
        assert_eq!(again.current_period(), p5 + 1, "an open never goes back");
        assert_eq!(k.advance(6 * day).unwrap(), 6 << ROTATION_BITS);
    }

    #[cfg(unix)]
    #[test]
    fn file_kek_refuses_world_readable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let _ = FileKek::open(dir.path(), 0, 1000).unwrap();
        let p = dir.path().join("kek-0.key");
        assert!(p.exists());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = FileKek::open(dir.path(), 0, 1000).unwrap_err().to_string();
        assert!(
            err.contains("kek-0.key") && err.contains("readable by others"),
            "{err}"
        );
    }
}
