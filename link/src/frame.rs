//! The tunnel's wire format and its cryptography, sans-IO: the handshake's fixed-size hello, the
//! length-prefixed frames, and the per-epoch, per-direction AES-256-GCM keys derived from one
//! key of the stream. No sockets, no clocks: the shell (`tunnel`, `wg`) reads and writes bytes.
//!
//! Frame (all integers big-endian):
//!
//! ```text
//! 0      4         12                      12 + len - 8
//! | len  | epoch   | AES-256-GCM(kind | body) with its 16-byte tag |
//! ```
//!
//! `len` counts the epoch and the sealed part; the 12-byte header (`len`, `epoch`) is the
//! associated data, so neither can be changed unseen. The nonce is 4 zero bytes and a 64-bit
//! counter of the frames sealed in this direction and epoch, never sent: both ends count, so a
//! dropped, repeated or reordered frame fails authentication. Each epoch's keys are new (the
//! stream's key of index `epoch`) and each direction has its own (HKDF with distinct labels), so
//! a key and nonce pair is never used twice.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, KeyType, Salt};
use qkd_types::Secret;

/// First bytes of every tunnel and control connection (version 1 of this format).
pub const MAGIC: &[u8; 8] = b"QKDLINK1";
/// Length of a key-stream ID on the wire: a lowercase UUID string.
pub const KSID_LEN: usize = 36;
/// The opener's hello: [`MAGIC`], then the key-stream ID the peer must join.
pub const HELLO_LEN: usize = MAGIC.len() + KSID_LEN;
/// Bytes of a frame's header (length and epoch), the associated data of its seal.
pub const HEADER_LEN: usize = 12;
/// Largest body of one data frame.
pub const MAX_BODY: usize = 16 * 1024;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Size of each stream key this tunnel asks for (QoS `key_chunk_size`), bytes.
pub const STREAM_KEY_LEN: u32 = 32;
/// Most frames sealed in one direction and epoch: far below the 2^32 invocations NIST SP
/// 800-38D allows a key with 96-bit nonces; a peer that never rekeys hits it and the tunnel
/// closes.
pub const MAX_FRAMES_PER_EPOCH: u64 = 1 << 31;

/// What a frame says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Application bytes.
    Data(Vec<u8>),
    /// The sender seals everything after this frame with the keys of this epoch (a stream index
    /// greater than the current one). Only the opener of the stream sends it.
    Rekey(u64),
    /// The sender has taken the epoch announced by `Rekey` and seals everything after this frame
    /// with its keys.
    RekeyAck(u64),
    /// The sender will send no more data (its side of the service closed its write half).
    End,
}

/// Why a frame or hello was refused. Every variant is caused by the peer or by the network
/// between the two ends (including someone tampering with it).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The connection did not start with this tunnel's hello.
    #[error("not a qkd-link hello (wrong magic or version)")]
    BadHello,
    /// The hello's key-stream ID is not a UUID.
    #[error("the hello's key-stream ID is not a UUID")]
    BadStreamId,
    /// The length field is out of range.
    #[error("frame length {len} out of range (tampered with, or not a qkd-link peer)")]
    BadLength {
        /// The length read.
        len: u32,
    },
    /// The frame names another epoch than the one in force.
    #[error(
        "key index mismatch: frame of epoch {got} while epoch {expected} is in force for this direction"
    )]
    WrongEpoch {
        /// Epoch in the header.
        got: u64,
        /// Epoch in force.
        expected: u64,
    },
    /// The seal did not verify.
    #[error(
        "frame {counter} of epoch {epoch} failed authentication: the ciphertext was tampered with, \
         or the two ends hold different keys"
    )]
    Authentication {
        /// Epoch of the frame.
        epoch: u64,
        /// Its position in the epoch.
        counter: u64,
    },
    /// An authenticated frame of a kind this version does not know (a bug or another version).
    #[error("authenticated frame of unknown kind {0}")]
    UnknownKind(u8),
    /// An authenticated control frame whose body has the wrong size.
    #[error("authenticated control frame of kind {0} with a malformed body")]
    BadBody(u8),
    /// Too many frames in one epoch: the peer did not rekey.
    #[error("{MAX_FRAMES_PER_EPOCH} frames in epoch {epoch} without a rekey")]
    NonceExhausted {
        /// The epoch.
        epoch: u64,
    },
}

/// Which way a frame travels: from the stream's opener (master) to the joiner (slave), or back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Opener to joiner.
    MasterToSlave,
    /// Joiner to opener.
    SlaveToMaster,
}

impl Direction {
    fn label(self) -> &'static [u8] {
        match self {
            Direction::MasterToSlave => b"qkd-link v1 aes-256-gcm master->slave",
            Direction::SlaveToMaster => b"qkd-link v1 aes-256-gcm slave->master",
        }
    }
}

/// The opener's hello.
pub fn hello(ksid: &str) -> Result<[u8; HELLO_LEN], FrameError> {
    if ksid.len() != KSID_LEN || !is_uuid(ksid) {
        return Err(FrameError::BadStreamId);
    }
    let mut h = [0u8; HELLO_LEN];
    h[..MAGIC.len()].copy_from_slice(MAGIC);
    h[MAGIC.len()..].copy_from_slice(ksid.as_bytes());
    Ok(h)
}

/// The key-stream ID of a hello.
pub fn parse_hello(h: &[u8; HELLO_LEN]) -> Result<String, FrameError> {
    if &h[..MAGIC.len()] != MAGIC {
        return Err(FrameError::BadHello);
    }
    let id = std::str::from_utf8(&h[MAGIC.len()..]).map_err(|_| FrameError::BadStreamId)?;
    if !is_uuid(id) {
        return Err(FrameError::BadStreamId);
    }
    Ok(id.to_ascii_lowercase())
}

/// Sealing and opening keys of one epoch at one end.
#[derive(Debug)]
pub struct EpochKeys {
    /// Seals what this end sends.
    pub sealer: Sealer,
    /// Opens what this end receives.
    pub opener: Opener,
}

impl EpochKeys {
    /// Derives the keys of `epoch` from the stream's key of that index: HKDF-SHA-256 with the
    /// stream ID and epoch as salt and one label per direction as info. `master`: whether this
    /// end opened the stream.
    pub fn derive(stream_key: &Secret, ksid: &str, epoch: u64, master: bool) -> EpochKeys {
        let (send, recv) = if master {
            (Direction::MasterToSlave, Direction::SlaveToMaster)
        } else {
            (Direction::SlaveToMaster, Direction::MasterToSlave)
        };
        EpochKeys {
            sealer: Sealer {
                epoch,
                key: aead_key(stream_key, ksid, epoch, send),
                counter: 0,
            },
            opener: Opener {
                epoch,
                key: aead_key(stream_key, ksid, epoch, recv),
                counter: 0,
            },
        }
    }
}

/// The WireGuard preshared key of one epoch: HKDF-SHA-256 of the stream key under its own label,
/// so it is never the key a tunnel would use.
pub fn wireguard_psk(stream_key: &Secret, ksid: &str, epoch: u64) -> Secret {
    let mut psk = Secret::zeroed(32);
    let salt = salt(ksid, epoch);
    let info: &[&[u8]] = &[b"qkd-link v1 wireguard psk"];
    // The stream key goes into HKDF only; the output is written straight into a Secret.
    let prk = Salt::new(HKDF_SHA256, &salt).extract(stream_key.expose());
    // Invariant: 32 bytes is far below HKDF-SHA-256's limit of 255 * 32 bytes, so expanding and
    // filling cannot fail (and a PSK left zero must never be installed).
    #[allow(clippy::expect_used)]
    prk.expand(info, Len(32))
        .and_then(|okm| okm.fill(psk.expose_mut()))
        .expect("HKDF-SHA-256 yields 32 bytes");
    psk
}

/// Seals the frames of one direction in one epoch.
#[derive(Debug)]
pub struct Sealer {
    epoch: u64,
    key: LessSafeKey,
    counter: u64,
}

impl Sealer {
    /// The epoch these keys belong to (the stream index of their key).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The frame carrying `m`, ready to write.
    pub fn seal(&mut self, m: &Message) -> Result<Vec<u8>, FrameError> {
        if self.counter >= MAX_FRAMES_PER_EPOCH {
            return Err(FrameError::NonceExhausted { epoch: self.epoch });
        }
        let control;
        let (kind, body): (u8, &[u8]) = match m {
            Message::Data(b) => (0, b),
            Message::Rekey(e) => {
                control = e.to_be_bytes();
                (1, &control[..])
            }
            Message::RekeyAck(e) => {
                control = e.to_be_bytes();
                (2, &control[..])
            }
            Message::End => (3, &[]),
        };
        let len = 8 + 1 + body.len() + TAG_LEN;
        let mut out = Vec::with_capacity(4 + len);
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.push(kind);
        out.extend_from_slice(body);
        let mut sealed = out.split_off(HEADER_LEN);
        let nonce = nonce(self.counter);
        self.key
            .seal_in_place_append_tag(nonce, Aad::from(&out[..]), &mut sealed)
            // Invariant: sealing fails only for inputs beyond AES-GCM's length limit (64 GiB);
            // a body is at most MAX_BODY.
            .map_err(|_| FrameError::BadLength { len: len as u32 })?;
        self.counter += 1;
        out.extend_from_slice(&sealed);
        Ok(out)
    }
}

/// Opens the frames of one direction in one epoch.
#[derive(Debug)]
pub struct Opener {
    epoch: u64,
    key: LessSafeKey,
    counter: u64,
}

impl Opener {
    /// The epoch these keys belong to.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Opens the frame whose header is `header` and whose sealed part (`len - 8` bytes, as
    /// [`parse_header`] said) is `sealed`.
    pub fn open(
        &mut self,
        header: &[u8; HEADER_LEN],
        mut sealed: Vec<u8>,
    ) -> Result<Message, FrameError> {
        let (_, epoch) = parse_header(header)?;
        if epoch != self.epoch {
            return Err(FrameError::WrongEpoch {
                got: epoch,
                expected: self.epoch,
            });
        }
        if self.counter >= MAX_FRAMES_PER_EPOCH {
            return Err(FrameError::NonceExhausted { epoch });
        }
        let auth = FrameError::Authentication {
            epoch,
            counter: self.counter,
        };
        let plain = self
            .key
            .open_in_place(nonce(self.counter), Aad::from(&header[..]), &mut sealed)
            .map_err(|_| auth)?;
        self.counter += 1;
        let (&kind, body) = plain.split_first().ok_or(FrameError::BadBody(0))?;
        let epoch_of = |b: &[u8]| -> Result<u64, FrameError> {
            let a: [u8; 8] = b.try_into().map_err(|_| FrameError::BadBody(kind))?;
            Ok(u64::from_be_bytes(a))
        };
        match kind {
            0 => Ok(Message::Data(body.to_vec())),
            1 => Ok(Message::Rekey(epoch_of(body)?)),
            2 => Ok(Message::RekeyAck(epoch_of(body)?)),
            3 if body.is_empty() => Ok(Message::End),
            3 => Err(FrameError::BadBody(3)),
            k => Err(FrameError::UnknownKind(k)),
        }
    }
}

/// The length of the sealed part that follows a header, and the header's epoch. Refuses lengths
/// no frame of this version has, before anything is read or allocated for it.
pub fn parse_header(header: &[u8; HEADER_LEN]) -> Result<(usize, u64), FrameError> {
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let min = 8 + 1 + TAG_LEN;
    let max = 8 + 1 + MAX_BODY + TAG_LEN;
    if (len as usize) < min || (len as usize) > max {
        return Err(FrameError::BadLength { len });
    }
    let mut e = [0u8; 8];
    e.copy_from_slice(&header[4..12]);
    Ok((len as usize - 8, u64::from_be_bytes(e)))
}

fn aead_key(stream_key: &Secret, ksid: &str, epoch: u64, dir: Direction) -> LessSafeKey {
    let salt = salt(ksid, epoch);
    let info: &[&[u8]] = &[dir.label()];
    // The stream key goes into HKDF only; the derived key stays inside aws-lc's AEAD context.
    let prk = Salt::new(HKDF_SHA256, &salt).extract(stream_key.expose());
    let okm = prk.expand(info, &AES_256_GCM);
    // Invariant: HKDF-SHA-256 expands to 32 bytes (AES-256's key length) without fail, and a
    // 32-byte OKM is a valid AES-256-GCM key.
    #[allow(clippy::expect_used)]
    let unbound = UnboundKey::from(okm.expect("HKDF-SHA-256 yields 32 bytes"));
    LessSafeKey::new(unbound)
}

fn salt(ksid: &str, epoch: u64) -> Vec<u8> {
    let mut s = b"qkd-link v1".to_vec();
    s.extend_from_slice(ksid.as_bytes());
    s.extend_from_slice(&epoch.to_be_bytes());
    s
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn is_uuid(s: &str) -> bool {
    s.len() == KSID_LEN
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// An HKDF output length.
struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KSID: &str = "550e8400-e29b-41d4-a716-446655440000";

    fn key(b: u8) -> Secret {
        Secret::copy_from(&[b; 32])
    }

    fn split(frame: &[u8]) -> ([u8; HEADER_LEN], Vec<u8>) {
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&frame[..HEADER_LEN]);
        let (len, _) = parse_header(&h).unwrap();
        assert_eq!(frame.len(), HEADER_LEN + len);
        (h, frame[HEADER_LEN..].to_vec())
    }

    #[test]
    fn both_directions_round_trip_and_differ() {
        let mut m = EpochKeys::derive(&key(1), KSID, 0, true);
        let mut s = EpochKeys::derive(&key(1), KSID, 0, false);
        let msgs = [
            Message::Data(b"hello".to_vec()),
            Message::Rekey(7),
            Message::RekeyAck(7),
            Message::End,
            Message::Data(vec![]),
        ];
        for msg in &msgs {
            let f = m.sealer.seal(msg).unwrap();
            let (h, b) = split(&f);
            assert_eq!(&s.opener.open(&h, b).unwrap(), msg);
            let f = s.sealer.seal(msg).unwrap();
            let (h, b) = split(&f);
            assert_eq!(&m.opener.open(&h, b).unwrap(), msg);
        }
        // The same message, counter and epoch seal differently in the two directions.
        let mut m = EpochKeys::derive(&key(1), KSID, 0, true);
        let mut s = EpochKeys::derive(&key(1), KSID, 0, false);
        let a = m.sealer.seal(&Message::Data(b"x".to_vec())).unwrap();
        let b = s.sealer.seal(&Message::Data(b"x".to_vec())).unwrap();
        assert_ne!(a, b);
        // A frame opened by the sender's own opener (reflected back) fails.
        let (h, body) = split(&a);
        assert!(matches!(
            m.opener.open(&h, body),
            Err(FrameError::Authentication { .. })
        ));
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let mut m = EpochKeys::derive(&key(2), KSID, 3, true);
        let f = m.sealer.seal(&Message::Data(b"payload".to_vec())).unwrap();
        for i in 0..f.len() * 8 {
            let mut g = f.clone();
            g[i / 8] ^= 1 << (i % 8);
            let mut s = EpochKeys::derive(&key(2), KSID, 3, false);
            let mut h = [0u8; HEADER_LEN];
            h.copy_from_slice(&g[..HEADER_LEN]);
            let r = match parse_header(&h) {
                Ok((len, _)) if len == g.len() - HEADER_LEN => {
                    s.opener.open(&h, g[HEADER_LEN..].to_vec())
                }
                Ok(_) => continue, // a changed length: the shell reads another frame boundary
                Err(e) => Err(e),
            };
            assert!(r.is_err(), "bit {i} flipped unnoticed");
        }
    }

    #[test]
    fn replayed_reordered_and_wrong_epoch_frames_fail() {
        let mut m = EpochKeys::derive(&key(3), KSID, 0, true);
        let f0 = m.sealer.seal(&Message::Data(b"a".to_vec())).unwrap();
        let f1 = m.sealer.seal(&Message::Data(b"b".to_vec())).unwrap();
        let mut s = EpochKeys::derive(&key(3), KSID, 0, false);
        let (h1, b1) = split(&f1);
        assert!(matches!(
            s.opener.open(&h1, b1),
            Err(FrameError::Authentication { counter: 0, .. })
        ));
        let mut s = EpochKeys::derive(&key(3), KSID, 0, false);
        let (h0, b0) = split(&f0);
        s.opener.open(&h0, b0.clone()).unwrap();
        assert!(s.opener.open(&h0, b0).is_err(), "replay accepted");
        // A frame of epoch 0 where epoch 1 is in force.
        let mut s1 = EpochKeys::derive(&key(3), KSID, 1, false);
        let (h0, b0) = split(&f0);
        assert_eq!(
            s1.opener.open(&h0, b0),
            Err(FrameError::WrongEpoch {
                got: 0,
                expected: 1
            })
        );
        // Another stream key for the same epoch.
        let mut other = EpochKeys::derive(&key(4), KSID, 0, false);
        let (h0, b0) = split(&f0);
        assert!(other.opener.open(&h0, b0).is_err());
    }

    #[test]
    fn hello_and_lengths() {
        let h = hello(KSID).unwrap();
        assert_eq!(parse_hello(&h).unwrap(), KSID);
        assert_eq!(hello("stream-1"), Err(FrameError::BadStreamId));
        let mut bad = h;
        bad[0] = b'X';
        assert_eq!(parse_hello(&bad), Err(FrameError::BadHello));
        let mut hdr = [0u8; HEADER_LEN];
        hdr[..4].copy_from_slice(&(u32::MAX).to_be_bytes());
        assert!(matches!(
            parse_header(&hdr),
            Err(FrameError::BadLength { .. })
        ));
        hdr[..4].copy_from_slice(&3u32.to_be_bytes());
        assert!(parse_header(&hdr).is_err());
    }

    #[test]
    fn psk_is_per_epoch_and_not_a_tunnel_key() {
        let k = key(9);
        let a = wireguard_psk(&k, KSID, 0);
        assert_eq!(a, wireguard_psk(&k, KSID, 0));
        assert_ne!(a, wireguard_psk(&k, KSID, 1));
        assert_ne!(a, k);
        assert_eq!(format!("{a:?}"), "<SECRET 32 bytes>");
    }
}
