//! The one error type of the hybrid layer. Every variant says who causes it; [`Culprit`] makes
//! that machine-readable so the I/O shell can map errors to its wire in one place.

use super::config::{Policy, Suite};

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Culprit {
    /// The remote KME (or anyone on the path between us: a relay node, an attacker).
    Peer,
    /// Our own configuration (operator): suites, policies, pinned keys, identities.
    Config,
    /// The local caller of this module broke a documented precondition.
    Caller,
    /// A failure inside the crypto library or an invariant of this module: a bug.
    Bug,
}

/// Errors of the hybrid combiner and of the authenticated exchange. No key is ever released
/// when one of these is returned, and all ephemeral secrets of the exchange are dropped
/// (zeroized) with the state machine that returned it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HybridError {
    /// Peer: the exchange names a suite other than the one configured for this pair.
    #[error("suite mismatch: configured {configured}, exchange carries {received:?}")]
    SuiteMismatch {
        /// Ours.
        configured: Suite,
        /// What the peer sent (verbatim, possibly not a suite name at all).
        received: String,
    },
    /// Peer: the exchange names a policy other than the one configured for this pair.
    #[error("policy mismatch: configured {configured}, exchange carries {received:?}")]
    PolicyMismatch {
        /// Ours.
        configured: Policy,
        /// What the peer sent.
        received: String,
    },
    /// Peer: the exchange names a KME that is not this node as the responder, or not the
    /// pinned peer as the initiator.
    #[error("identity mismatch: {0}")]
    WrongIdentity(&'static str),
    /// Peer (or config): no pinned public keys for the KME the exchange claims to come from.
    #[error("KME {0} is not a configured hybrid peer")]
    UnknownPeer(String),
    /// Peer: a message field is missing, has the wrong length or cannot be decoded.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// Peer: a hybrid signature (ML-DSA-65 and Ed25519, both required) does not verify under
    /// any pinned key of the peer.
    #[error("signature {0} does not verify")]
    BadSignature(&'static str),
    /// Peer: a key-confirmation tag does not match (tampering, or the ends do not hold the same
    /// relayed QKD keys).
    #[error("key confirmation tag {0} does not match")]
    BadTag(&'static str),
    /// Peer: a public key or ciphertext is invalid (fails the ML-KEM modulus check, not on the
    /// curve, all-zero X25519 result...).
    #[error("invalid {0} from peer")]
    InvalidPeerKey(&'static str),
    /// Peer: the message belongs to another exchange (its exchange ID differs from ours).
    #[error("message of another exchange")]
    WrongExchange,
    /// Peer: `(KME_A, nonce_A)` was seen before (replay), as reported by the caller's
    /// [`ReplayGuard`](super::exchange::ReplayGuard).
    #[error("replayed exchange (KME_A, nonce_A already seen)")]
    Replay,
    /// Config or caller: the policy needs a relayed QKD key for each output key and one is
    /// missing or not 32 bytes (fail closed), or one is given where the policy takes none.
    #[error("QKD key components: {0}")]
    QkdKeys(&'static str),
    /// Config: the suite needs static KEM keys at both ends and one is missing (never one-sided).
    #[error("the suite needs pinned static KEM keys at both ends: {0}")]
    StaticKeys(&'static str),
    /// Config: the suite is not built in (needs the `oqs` feature).
    #[error("suite {0} is not available in this build (needs the `oqs` cargo feature)")]
    SuiteUnavailable(Suite),
    /// Caller or peer: `size_bits` is 0, not a multiple of 8, or above 12,240 bytes.
    #[error("invalid key size {0} bits (multiple of 8, 8..=97,920)")]
    BadSize(u32),
    /// Caller or peer: the batch is empty, too large, has duplicate key IDs or SAE IDs.
    #[error("invalid batch: {0}")]
    BadBatch(&'static str),
    /// Caller: a shared secret handed to the combiner has the wrong length for the suite.
    #[error("shared secret {0} has the wrong length for the suite")]
    SecretLength(&'static str),
    /// Caller or config: a long-term key cannot be loaded (wrong format or length).
    #[error("cannot load {0}")]
    KeyLoad(&'static str),
    /// Bug: the crypto library failed where it should not.
    #[error("crypto library failure in {0}")]
    Crypto(&'static str),
}

impl HybridError {
    /// Who caused the error.
    pub fn culprit(&self) -> Culprit {
        use HybridError::*;
        match self {
            SuiteMismatch { .. }
            | PolicyMismatch { .. }
            | WrongIdentity(_)
            | UnknownPeer(_)
            | Malformed(_)
            | BadSignature(_)
            | BadTag(_)
            | InvalidPeerKey(_)
            | WrongExchange
            | Replay => Culprit::Peer,
            StaticKeys(_) | SuiteUnavailable(_) | KeyLoad(_) => Culprit::Config,
            QkdKeys(_) | BadSize(_) | BadBatch(_) | SecretLength(_) => Culprit::Caller,
            Crypto(_) => Culprit::Bug,
        }
    }
}
