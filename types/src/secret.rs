//! The one type that holds key bytes.
//!
//! [`Secret`] zeroizes its bytes on drop, prints `<SECRET>` under `Debug`, implements neither
//! `Display` nor `Serialize` nor `Clone`, and compares in constant time. The only way to read the
//! bytes is [`Secret::expose`]; every call site says in a comment why it needs them.

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

/// Key bytes of any length (link key, a delivered key, a data-encryption key).
///
/// The bytes live in one heap allocation that never grows, so no stale copy is left behind by a
/// reallocation (see [`Secret::new`] for buffers handed in); they are overwritten with zeros when
/// the value is dropped.
pub struct Secret(Box<[u8]>);

impl Secret {
    /// Takes ownership of `bytes`, leaving no unzeroed copy behind.
    ///
    /// A buffer whose capacity equals its length is moved into the secret as it is. Otherwise
    /// `into_boxed_slice` would shrink it by reallocating, and the allocator would free the old
    /// buffer with the bytes still in it; so the bytes are copied into an exact-size allocation
    /// instead, and the whole old buffer, spare capacity included, is zeroized as `bytes` drops.
    pub fn new(bytes: Zeroizing<Vec<u8>>) -> Self {
        let mut bytes = bytes;
        if bytes.len() == bytes.capacity() {
            // No reallocation: the boxed slice keeps the vector's allocation.
            Self(std::mem::take(&mut *bytes).into_boxed_slice())
        } else {
            Self::copy_from(&bytes)
        }
    }

    /// Copies `bytes` into a new secret (one exact-size allocation). The caller remains
    /// responsible for its own copy.
    pub fn copy_from(bytes: &[u8]) -> Self {
        Self(Box::from(bytes))
    }

    /// A secret of `len` zero bytes, to be filled through [`Secret::expose_mut`].
    pub fn zeroed(len: usize) -> Self {
        Self(vec![0u8; len].into_boxed_slice())
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the secret holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The key bytes. This is the only way out: each caller states, in a comment, why it needs
    /// them (encryption at rest, the wire towards an authenticated SAE, a one-time pad...).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Mutable access to the key bytes, for filling a secret in place (RNG, decryption, XOR).
    pub fn expose_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }

    /// A copy of `len` bytes starting at `offset`, or `None` if the range is out of bounds.
    pub fn slice(&self, offset: usize, len: usize) -> Option<Secret> {
        let end = offset.checked_add(len)?;
        self.0.get(offset..end).map(Secret::copy_from)
    }

    /// An explicit copy. Not `Clone`, so that every duplicate of key bytes is visible in review.
    pub fn duplicate(&self) -> Secret {
        Secret::copy_from(&self.0)
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<SECRET {} bytes>", self.0.len())
    }
}

impl PartialEq for Secret {
    /// Constant-time in the contents (the length is not secret).
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len() && bool::from(self.0.ct_eq(&other.0))
    }
}

impl Eq for Secret {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_bytes() {
        let s = Secret::copy_from(&[0xde, 0xad, 0xbe, 0xef]);
        let d = format!("{s:?}");
        assert_eq!(d, "<SECRET 4 bytes>");
        assert!(!d.contains("de") && !d.contains("222"));
    }

    #[test]
    fn equality_and_slices() {
        let s = Secret::copy_from(&[1, 2, 3, 4, 5]);
        assert_eq!(s.slice(1, 3).unwrap(), Secret::copy_from(&[2, 3, 4]));
        assert!(s.slice(4, 2).is_none());
        assert!(s.slice(usize::MAX, 2).is_none());
        assert_ne!(s, Secret::copy_from(&[1, 2, 3, 4, 6]));
        assert_ne!(s, Secret::copy_from(&[1, 2, 3, 4]));
    }

    #[test]
    fn new_takes_buffer() {
        let s = Secret::new(Zeroizing::new(vec![7u8; 32]));
        assert_eq!(s.len(), 32);
        assert_eq!(s.expose()[0], 7);
    }

    /// An exact-size buffer is moved, not copied: the secret holds the caller's allocation.
    #[test]
    fn new_moves_an_exact_buffer() {
        let mut v = Vec::with_capacity(32);
        v.extend_from_slice(&[9u8; 32]);
        assert_eq!(v.capacity(), 32);
        let ptr = v.as_ptr();
        let s = Secret::new(Zeroizing::new(v));
        assert_eq!(s.expose().as_ptr(), ptr);
    }

    /// A buffer with spare capacity is copied (never shrunk in place by a reallocation that
    /// frees the old bytes unzeroed), and the old buffer is zeroized on drop by `Zeroizing`.
    /// Whether freed memory was zeroed cannot be observed from safe code; this checks the path.
    #[test]
    fn new_copies_a_buffer_with_spare_capacity() {
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(&[5u8; 40]);
        let ptr = v.as_ptr();
        let s = Secret::new(Zeroizing::new(v));
        assert_eq!(s.expose(), &[5u8; 40][..]);
        assert_ne!(s.expose().as_ptr(), ptr);
    }
}
