//! The cryptography of one relay hop and of multicast sealing, as pure functions: a hop's
//! relayed keys travel XOR a fresh run of link key exactly as long (one-time pad), with an
//! HMAC-SHA-256 tag keyed by [`AUTH_LEN`] further bytes of fresh link key (docs/design.md §2).
//! Which link bytes a hop uses, and their durable take, are the shell's; these functions only
//! combine bytes they are given.

use qkd_types::{KeyId, LinkId, Secret};
use ring::hmac;
use subtle::ConstantTimeEq;

use crate::core::pool::Range;

/// Bytes of link key keying the MAC of one hop message.
pub const AUTH_LEN: u32 = 32;

/// Ranges with contiguous neighbours in one block joined, to compare two descriptions of the
/// same bytes. Offsets and lengths come from a peer: a sum that would overflow joins nothing.
pub fn merged(ranges: &[Range]) -> Vec<Range> {
    let mut out: Vec<Range> = Vec::with_capacity(ranges.len());
    for r in ranges {
        let joined = out
            .last_mut()
            .filter(|l| l.block_seq == r.block_seq && l.offset.checked_add(l.len) == Some(r.offset))
            .and_then(|l| l.len.checked_add(r.len).map(|len| l.len = len));
        if joined.is_none() {
            out.push(*r);
        }
    }
    out
}

/// Splits ranges after `n` bytes: (the pad's ranges, the MAC key's).
pub fn split_ranges(ranges: &[Range], n: u32) -> (Vec<Range>, Vec<Range>) {
    let mut first = Vec::new();
    let mut second = Vec::new();
    let mut left = n;
    for r in ranges {
        if left >= r.len {
            first.push(*r);
            left -= r.len;
        } else if left == 0 {
            second.push(*r);
        } else {
            first.push(Range { len: left, ..*r });
            second.push(Range {
                offset: r.offset + left,
                len: r.len - left,
                ..*r
            });
            left = 0;
        }
    }
    (first, second)
}

/// The hop's ciphertext: `payload XOR link[..payload.len()]` (safe to send: the pad is used
/// once). `link` holds the pad and then the MAC key.
pub fn encrypt(payload: &Secret, link: &Secret) -> Vec<u8> {
    payload
        .expose()
        .iter()
        .zip(link.expose())
        .map(|(x, y)| x ^ y)
        .collect()
}

/// The relayed keys back from a hop's ciphertext (`link` as for [`encrypt`]); `None` if the
/// link bytes are too short.
pub fn decrypt(ciphertext: &[u8], link: &Secret) -> Option<Secret> {
    let pad = link.expose().get(..ciphertext.len())?;
    let mut payload = Secret::zeroed(ciphertext.len());
    for ((out, c), p) in payload.expose_mut().iter_mut().zip(ciphertext).zip(pad) {
        *out = c ^ p;
    }
    Some(payload)
}

/// The tag of a hop message: HMAC-SHA-256 under the MAC key (the link bytes after the first
/// `pad_len`) over `authenticated`, the message's encoding with an empty tag.
pub fn tag(link: &Secret, pad_len: usize, authenticated: &[u8]) -> Option<Vec<u8>> {
    // The MAC key is exposed only to key the HMAC of this one message.
    let key = link.expose().get(pad_len..)?;
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    Some(hmac::sign(&k, authenticated).as_ref().to_vec())
}

/// Whether `tag` authenticates `authenticated` (constant time).
pub fn verify(link: &Secret, pad_len: usize, authenticated: &[u8], tag_got: &[u8]) -> bool {
    tag(link, pad_len, authenticated)
        .is_some_and(|t| t.len() == tag_got.len() && bool::from(t.ct_eq(tag_got)))
}

/// Link bytes this node (a link's allocator) chose for neighbours' hops, kept from the
/// allocation until the hop's message arrives. The bytes were read when they were taken (a
/// drained block is erased at once); each allocation is claimed at most once, and only by a
/// message naming the same hop, link and bytes. The oldest are forgotten beyond a bound (their
/// bytes stay taken: unused link key is never handed out again).
#[derive(Debug)]
pub struct HopAllocations {
    held: std::collections::VecDeque<HopAllocation>,
    cap: usize,
}

#[derive(Debug)]
struct HopAllocation {
    hop_id: [u8; 16],
    link: LinkId,
    ranges: Vec<Range>,
    bytes: Secret,
}

impl HopAllocations {
    /// Keeps at most `cap` allocations.
    pub fn new(cap: usize) -> Self {
        Self {
            held: std::collections::VecDeque::new(),
            cap,
        }
    }

    /// The ranges already allocated for a hop (an allocation is idempotent per hop ID: a
    /// retried request gets the same answer).
    pub fn answered(&self, hop_id: &[u8; 16]) -> Option<Vec<Range>> {
        self.held
            .iter()
            .find(|a| &a.hop_id == hop_id)
            .map(|a| a.ranges.clone())
    }

    /// Keeps the bytes allocated for a hop.
    pub fn hold(&mut self, hop_id: [u8; 16], link: LinkId, ranges: Vec<Range>, bytes: Secret) {
        self.held.push_back(HopAllocation {
            hop_id,
            link,
            ranges,
            bytes,
        });
        while self.held.len() > self.cap {
            self.held.pop_front();
        }
    }

    /// The bytes of the allocation the hop's message names (same hop, link and bytes, however
    /// the ranges are split), removed: `None` if there is none.
    pub fn claim(&mut self, hop_id: &[u8; 16], link: &LinkId, ranges: &[Range]) -> Option<Secret> {
        let want = merged(ranges);
        let pos = self
            .held
            .iter()
            .position(|a| &a.hop_id == hop_id && &a.link == link && merged(&a.ranges) == want)?;
        self.held.remove(pos).map(|a| a.bytes)
    }

    /// Allocations held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// Why sealing a multicast key failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sealing a multicast key failed")]
pub struct SealError;

/// Seals one multicast key under a wrap key used for nothing else (so a zero nonce is unique).
pub fn seal_multicast(
    wrap: &Secret,
    id: KeyId,
    relay_id: &[u8; 16],
    key: &Secret,
) -> Result<Vec<u8>, SealError> {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    // The wrap key is exposed only to key AES-GCM; the multicast key only to be encrypted.
    let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, wrap.expose()).map_err(|_| SealError)?);
    // The plaintext copy is zeroized whatever happens; once sealed in place it is ciphertext.
    // Room for the tag is reserved first, so appending it never reallocates (which would leave
    // an unzeroized copy of the plaintext behind).
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(key.len() + AES_256_GCM.tag_len()));
    buf.extend_from_slice(key.expose());
    k.seal_in_place_append_tag(
        Nonce::assume_unique_for_key([0; 12]),
        Aad::from(multicast_aad(id, relay_id)),
        &mut *buf,
    )
    .map_err(|_| SealError)?;
    Ok(std::mem::take(&mut *buf))
}

/// Opens a multicast key sealed by [`seal_multicast`]; `None` if it does not authenticate.
pub fn open_multicast(
    wrap: &Secret,
    id: KeyId,
    relay_id: &[u8; 16],
    sealed: &[u8],
) -> Option<Secret> {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, wrap.expose()).ok()?);
    let mut buf = zeroize::Zeroizing::new(sealed.to_vec());
    let plain = k
        .open_in_place(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::from(multicast_aad(id, relay_id)),
            &mut buf,
        )
        .ok()?;
    Some(Secret::copy_from(plain))
}

fn multicast_aad(id: KeyId, relay_id: &[u8; 16]) -> Vec<u8> {
    let mut v = b"QKMS-multicast-v1".to_vec();
    v.extend_from_slice(id.as_bytes());
    v.extend_from_slice(relay_id);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(block_seq: u64, offset: u32, len: u32) -> Range {
        Range {
            block_seq,
            offset,
            len,
        }
    }

    #[test]
    fn ranges_split_after_the_pad_and_merge_back() {
        let all = [r(1, 0, 10), r(2, 0, 40)];
        let (pad, auth) = split_ranges(&all, 18);
        assert_eq!(pad, vec![r(1, 0, 10), r(2, 0, 8)]);
        assert_eq!(auth, vec![r(2, 8, 32)]);
        let mut again = pad.clone();
        again.extend(auth);
        assert_eq!(merged(&again), merged(&all));
        assert_eq!(merged(&[r(1, 0, u32::MAX), r(1, u32::MAX, 1)]).len(), 2);
    }

    #[test]
    fn a_hop_decrypts_what_it_encrypts_and_any_flipped_bit_fails_the_tag() {
        let payload = Secret::copy_from(&[7u8; 64]);
        let link = Secret::copy_from(&(0..96u8).collect::<Vec<_>>());
        let c = encrypt(&payload, &link);
        assert_ne!(c, payload.expose());
        assert_eq!(decrypt(&c, &link).unwrap().expose(), payload.expose());
        let t = tag(&link, 64, &c).unwrap();
        assert!(verify(&link, 64, &c, &t));
        for i in 0..c.len() {
            let mut bad = c.clone();
            bad[i] ^= 1;
            assert!(!verify(&link, 64, &bad, &t));
        }
        assert!(!verify(&link, 64, &c, &t[..31]));
        // Another MAC key (the next run of link bytes) does not verify either.
        let other = Secret::copy_from(&(1..97u8).collect::<Vec<_>>());
        assert!(!verify(&other, 64, &c, &t));
        assert!(decrypt(&[0u8; 97], &link).is_none());
    }

    #[test]
    fn a_hop_allocation_is_answered_again_claimed_once_and_only_as_allocated() {
        let link = LinkId::parse("A-B").unwrap();
        let other = LinkId::parse("A-C").unwrap();
        let mut h = HopAllocations::new(2);
        h.hold(
            [1; 16],
            link.clone(),
            vec![r(3, 0, 64)],
            Secret::copy_from(&[7; 64]),
        );
        assert_eq!(h.answered(&[1; 16]), Some(vec![r(3, 0, 64)]));
        assert_eq!(h.answered(&[2; 16]), None);
        // Another link, other bytes or another hop: nothing.
        assert!(h.claim(&[1; 16], &other, &[r(3, 0, 64)]).is_none());
        assert!(h.claim(&[1; 16], &link, &[r(3, 0, 63)]).is_none());
        assert!(h.claim(&[2; 16], &link, &[r(3, 0, 64)]).is_none());
        // The same bytes split differently (pad, then MAC key) claim it, once.
        let got = h
            .claim(&[1; 16], &link, &[r(3, 0, 32), r(3, 32, 32)])
            .unwrap();
        assert_eq!(got.expose(), &[7; 64]);
        assert!(h.claim(&[1; 16], &link, &[r(3, 0, 64)]).is_none());
        assert!(h.is_empty());
        // Beyond the bound the oldest are forgotten.
        for i in 0..3u8 {
            h.hold(
                [i; 16],
                link.clone(),
                vec![r(4, u32::from(i), 1)],
                Secret::copy_from(&[i]),
            );
        }
        assert_eq!(h.len(), 2);
        assert_eq!(h.answered(&[0; 16]), None);
        assert!(h.answered(&[2; 16]).is_some());
    }

    #[test]
    fn a_multicast_key_opens_only_under_its_wrap_id_and_batch() {
        let wrap = Secret::copy_from(&[3u8; 32]);
        let key = Secret::copy_from(&[9u8; 64]);
        let id = KeyId::random();
        let sealed = seal_multicast(&wrap, id, &[1; 16], &key).unwrap();
        assert_eq!(
            open_multicast(&wrap, id, &[1; 16], &sealed)
                .unwrap()
                .expose(),
            key.expose()
        );
        assert!(open_multicast(&wrap, KeyId::random(), &[1; 16], &sealed).is_none());
        assert!(open_multicast(&wrap, id, &[2; 16], &sealed).is_none());
        assert!(open_multicast(&Secret::copy_from(&[4u8; 32]), id, &[1; 16], &sealed).is_none());
    }
}
