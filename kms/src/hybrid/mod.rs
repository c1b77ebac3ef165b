//! End-to-end hybrid keys: the QKMS-HYB-v1 combiner and its authenticated exchange
//! (docs/hybrid.md), sans-IO.
//!
//! Every key delivered across trusted relay nodes is
//! `K_i = HKDF-SHA-384(salt = "QKMS-HYB-v1", IKM = k_QKD_i ‖ ss_T ‖ ss_PQ, info = SHA-384(enc(info_i)
//! ‖ enc(MA) ‖ enc(MB)), L = size/8)`: the relayed QKD key (known to every trusted node on the
//! path) combined with an ML-KEM (or FrodoKEM / Classic McEliece, `oqs` feature) and an X25519
//! (or P-384) exchange run **end to end** between the source KME (A) and the destination KME (B),
//! signed with ML-DSA-65 + Ed25519 and confirmed both ways. A compromised trusted node must then
//! also break the PQ KEM *and* the ECDH; a harvest-now quantum adversary must also break QKD.
//!
//! This module owns: [`config`] (suites and policies, parsed from configuration, never
//! negotiated), [`combiner`] (the exact bytes; pure functions, checked by known-answer vectors in
//! `kms/tests/vectors/`), [`identity`] (long-term signing keys and pinned peer keys) and
//! [`exchange`] (the four-message state machines). It must never do I/O, persist anything, read
//! a clock, or let key bytes out other than in [`Secret`](qkd_types::Secret): ephemeral keys,
//! shared secrets and PRKs live only inside the state machines and are zeroized on drop.
//! The wire shapes are `qkd_proto::hybrid`.
//!
//! `QKD-only` ([`Protection::QkdOnly`]) is outside this module on purpose: it gives **no**
//! protection against trusted relay nodes, which know every relayed key.
//!
//! # Example: two in-memory KMEs agree on a batch of keys
//!
//! ```
//! use qkd_kms::hybrid::{
//!     Context, Initiator, KeySlot, LocalIdentity, MemoryReplayGuard, NodeSigningKey,
//!     PinnedPeers, Policy, ReceivedInit, Suite,
//! };
//! use qkd_types::{KeyId, KmeId, SaeId, Secret};
//!
//! let mut rng = rand::rng();
//! let kme_a = KmeId::parse("kme-paris")?;
//! let kme_b = KmeId::parse("kme-berlin")?;
//! // Provisioned out of band: each KME's signing keys, and each pins the other's public keys.
//! let a = LocalIdentity::new(kme_a.clone(), NodeSigningKey::generate(&mut rng)?);
//! let b = LocalIdentity::new(kme_b.clone(), NodeSigningKey::generate(&mut rng)?);
//! let mut pinned_at_b = PinnedPeers::new();
//! pinned_at_b.insert(a.public_keys()?);
//! let a_pins_b = b.public_keys()?;
//!
//! // Both ends hold the same relayed QKD key (from the trusted-node relay) for each slot.
//! let relay_id = KeyId::random();
//! let k_qkd = [0x42u8; 32];
//! let slots = vec![KeySlot { key_id: KeyId::random(), relay_key_id: Some(relay_id) }];
//! let context = Context {
//!     suite: Suite::X25519MlKem768,
//!     policy: Policy::QkdPqT,
//!     kme_a: kme_a.clone(),
//!     kme_b: kme_b.clone(),
//!     sae_master: SaeId::parse("sae-1")?,
//!     sae_slaves: vec![SaeId::parse("sae-2")?],
//!     size_bits: 256,
//! };
//!
//! // 1. A -> B
//! let (initiator, m1) = Initiator::start(
//!     &a, &a_pins_b, context, slots, vec![Secret::copy_from(&k_qkd)], &mut rng)?;
//! // 2. B -> A: B checks m1 against *its own* configuration for this pair.
//! let received = ReceivedInit::parse(&m1)?;
//! let verified = received.verify(&b, &pinned_at_b, Suite::X25519MlKem768, Policy::QkdPqT)?;
//! let mut replay = MemoryReplayGuard::default(); // a real B persists (KME_A, nonce_A)
//! let (responder, m2) =
//!     verified.respond(&b, vec![Secret::copy_from(&k_qkd)], &mut replay, &mut rng)?;
//! // 3. A -> B
//! let (awaiting_ack, m3) = initiator.handle_reply(&a, &m2)?;
//! // 4. B -> A, once B committed its keys.
//! let (keys_b, pending) = responder.handle_confirm(&m3)?;
//! let m4 = pending.ack();
//! let keys_a = awaiting_ack.handle_ack(&m4)?;
//!
//! assert_eq!(keys_a[0].key, keys_b[0].key); // constant-time comparison of two Secrets
//! assert_eq!(keys_a[0].key.len(), 32);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod combiner;
pub mod config;
pub mod error;
pub mod exchange;
pub mod identity;
pub mod kem;
#[cfg(feature = "oqs")]
mod oqs_kem;

pub use combiner::{Batch, Context, HybridKey, KeySlot, SharedSecrets};
pub use config::{Classical, ConfigParseError, Policy, PqKem, Protection, Suite};
pub use error::{Culprit, HybridError};
pub use exchange::{
    AwaitingAck, Initiator, MemoryReplayGuard, PendingAck, ReceivedInit, ReplayGuard, Responder,
    VerifiedInit, WindowReplayGuard,
};
pub use identity::{LocalIdentity, NodeSigningKey, PeerKey, PeerPublicKeys, PinnedPeers};
pub use kem::{StaticKemKeyPair, StaticKemPublicKey};
