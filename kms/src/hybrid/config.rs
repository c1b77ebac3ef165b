//! What an operator configures per (KME pair, SAE pair): the [`Suite`] and the [`Policy`], or the
//! explicit [`Protection::QkdOnly`] exception. Both are parsed from configuration strings and are
//! never negotiated: each end compares what the exchange carries with its own configuration and
//! aborts on any difference.

use std::fmt;
use std::str::FromStr;

/// Why a configuration string is not a suite or a policy. Caused by the operator (configuration).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigParseError {
    /// Not one of the suite names this build knows.
    #[error("unknown hybrid suite {got:?}; this build accepts: {accepted}")]
    UnknownSuite {
        /// The string found in the configuration.
        got: String,
        /// The accepted names, comma-separated.
        accepted: String,
    },
    /// A suite that exists but needs the `oqs` cargo feature, which this build lacks.
    #[error("hybrid suite {0:?} needs a build with the `oqs` cargo feature")]
    SuiteNeedsOqs(String),
    /// Not one of the policy names.
    #[error(
        "unknown hybrid policy {0:?}; accepted: \"QKD+PQ+T\" (alias \"qkd+pq\"), \"QKD+PQ\", \"PQ+T\" (alias \"pq-only\"), \"QKD-only\" (alias \"qkd-only\", no protection against trusted nodes)"
    )]
    UnknownPolicy(String),
}

/// The classical (elliptic-curve Diffie-Hellman) half of a suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Classical {
    /// X25519 (RFC 7748): 32-byte public keys and shared secret.
    X25519,
    /// ECDH over NIST P-384: 97-byte SEC1 uncompressed public keys, 48-byte shared secret
    /// (the x-coordinate).
    P384,
}

/// A post-quantum KEM used by a suite (ephemeral or static).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PqKem {
    /// ML-KEM-768 (FIPS 203), aws-lc-rs.
    MlKem768,
    /// ML-KEM-1024 (FIPS 203), aws-lc-rs.
    MlKem1024,
    /// FrodoKEM-976-AES, liboqs (`oqs` feature).
    FrodoKem976Aes,
    /// FrodoKEM-1344-AES, liboqs (`oqs` feature).
    FrodoKem1344Aes,
    /// Classic McEliece 460896, liboqs (`oqs` feature); static keys only (keygen ≈ 0.1-0.2 s).
    McEliece460896,
}

impl PqKem {
    /// Encapsulation (public) key length in bytes.
    pub const fn public_key_len(self) -> usize {
        match self {
            PqKem::MlKem768 => 1184,
            PqKem::MlKem1024 => 1568,
            PqKem::FrodoKem976Aes => 15_632,
            PqKem::FrodoKem1344Aes => 21_520,
            PqKem::McEliece460896 => 524_160,
        }
    }

    /// Ciphertext length in bytes.
    pub const fn ciphertext_len(self) -> usize {
        match self {
            PqKem::MlKem768 => 1088,
            PqKem::MlKem1024 => 1568,
            PqKem::FrodoKem976Aes => 15_744,
            PqKem::FrodoKem1344Aes => 21_632,
            PqKem::McEliece460896 => 156,
        }
    }

    /// Shared-secret length in bytes.
    pub const fn shared_secret_len(self) -> usize {
        match self {
            PqKem::FrodoKem976Aes => 24,
            _ => 32,
        }
    }
}

impl Classical {
    /// Public key length in bytes.
    pub const fn public_key_len(self) -> usize {
        match self {
            Classical::X25519 => 32,
            Classical::P384 => 97,
        }
    }

    /// Shared-secret length in bytes.
    pub const fn shared_secret_len(self) -> usize {
        match self {
            Classical::X25519 => 32,
            Classical::P384 => 48,
        }
    }
}

/// A hybrid suite: which classical group, which ephemeral PQ KEM and, for the Classic McEliece
/// suite, which static KEM both ends pin for each other. The ASCII name is bound into every
/// derived key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Suite {
    /// `X25519/ML-KEM-768`: the default (BSI minimum).
    #[default]
    X25519MlKem768,
    /// `X25519/ML-KEM-1024` (ANSSI level V).
    X25519MlKem1024,
    /// `P-384/ML-KEM-1024`.
    P384MlKem1024,
    /// `X25519/FrodoKEM-976-AES` (`oqs` feature).
    X25519Frodo976Aes,
    /// `X25519/FrodoKEM-1344-AES` (`oqs` feature).
    X25519Frodo1344Aes,
    /// `X25519/Classic-McEliece-460896` (`oqs` feature): ephemeral X25519 and ML-KEM-768 for
    /// forward secrecy, plus mutual *static* Classic McEliece encapsulations to keys each end pins
    /// for the other (docs/hybrid.md, "Exchange", "mutual static KEM"). Never one-sided.
    X25519McEliece460896,
}

impl Suite {
    /// Every suite, whether or not this build can run it.
    pub const ALL: [Suite; 6] = [
        Suite::X25519MlKem768,
        Suite::X25519MlKem1024,
        Suite::P384MlKem1024,
        Suite::X25519Frodo976Aes,
        Suite::X25519Frodo1344Aes,
        Suite::X25519McEliece460896,
    ];

    /// The exact ASCII name, as configured and as bound into the derived keys.
    pub const fn name(self) -> &'static str {
        match self {
            Suite::X25519MlKem768 => "X25519/ML-KEM-768",
            Suite::X25519MlKem1024 => "X25519/ML-KEM-1024",
            Suite::P384MlKem1024 => "P-384/ML-KEM-1024",
            Suite::X25519Frodo976Aes => "X25519/FrodoKEM-976-AES",
            Suite::X25519Frodo1344Aes => "X25519/FrodoKEM-1344-AES",
            Suite::X25519McEliece460896 => "X25519/Classic-McEliece-460896",
        }
    }

    /// The classical group.
    pub const fn classical(self) -> Classical {
        match self {
            Suite::P384MlKem1024 => Classical::P384,
            _ => Classical::X25519,
        }
    }

    /// The ephemeral PQ KEM (A generates, B encapsulates).
    pub const fn ephemeral_kem(self) -> PqKem {
        match self {
            Suite::X25519MlKem768 | Suite::X25519McEliece460896 => PqKem::MlKem768,
            Suite::X25519MlKem1024 | Suite::P384MlKem1024 => PqKem::MlKem1024,
            Suite::X25519Frodo976Aes => PqKem::FrodoKem976Aes,
            Suite::X25519Frodo1344Aes => PqKem::FrodoKem1344Aes,
        }
    }

    /// The static KEM both ends must pin for each other, if the suite uses one.
    pub const fn static_kem(self) -> Option<PqKem> {
        match self {
            Suite::X25519McEliece460896 => Some(PqKem::McEliece460896),
            _ => None,
        }
    }

    /// Whether the suite needs liboqs (the `oqs` cargo feature).
    pub const fn needs_oqs(self) -> bool {
        matches!(
            self,
            Suite::X25519Frodo976Aes | Suite::X25519Frodo1344Aes | Suite::X25519McEliece460896
        )
    }

    /// Whether this build can run the suite.
    pub const fn is_available(self) -> bool {
        !self.needs_oqs() || cfg!(feature = "oqs")
    }

    /// Parses a configured suite name (exact, case-sensitive ASCII).
    pub fn parse(s: &str) -> Result<Self, ConfigParseError> {
        let suite = Suite::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| ConfigParseError::UnknownSuite {
                got: s.to_owned(),
                accepted: Suite::ALL
                    .into_iter()
                    .filter(|x| x.is_available())
                    .map(Suite::name)
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        if !suite.is_available() {
            return Err(ConfigParseError::SuiteNeedsOqs(s.to_owned()));
        }
        Ok(suite)
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Suite {
    type Err = ConfigParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Which secrets enter the combiner (docs/hybrid.md, "Combiner"): a closed set. The relayed QKD key is
/// `QKD`, the post-quantum KEM `PQ`, the classical Diffie-Hellman `T`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Policy {
    /// `QKD+PQ+T`: relayed QKD key, PQ KEM and classical ECDH. The default.
    #[default]
    QkdPqT,
    /// `QKD+PQ`: relayed QKD key and PQ KEM; no classical exchange is run.
    QkdPq,
    /// `PQ+T`: PQ KEM and classical ECDH, for pairs with no QKD path; no relayed key.
    PqT,
}

impl Policy {
    /// Every policy.
    pub const ALL: [Policy; 3] = [Policy::QkdPqT, Policy::QkdPq, Policy::PqT];

    /// The exact ASCII name bound into the derived keys.
    pub const fn name(self) -> &'static str {
        match self {
            Policy::QkdPqT => "QKD+PQ+T",
            Policy::QkdPq => "QKD+PQ",
            Policy::PqT => "PQ+T",
        }
    }

    /// Whether a relayed QKD key is required for each output key.
    pub const fn uses_qkd(self) -> bool {
        matches!(self, Policy::QkdPqT | Policy::QkdPq)
    }

    /// Whether the classical exchange runs and enters the combiner.
    pub const fn uses_classical(self) -> bool {
        matches!(self, Policy::QkdPqT | Policy::PqT)
    }

    /// Parses the exact canonical name (`"QKD+PQ+T"`, `"QKD+PQ"`, `"PQ+T"`), as carried in an
    /// exchange. Configuration files go through [`Protection::parse`], which also knows aliases.
    pub fn parse(s: &str) -> Result<Self, ConfigParseError> {
        Policy::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| ConfigParseError::UnknownPolicy(s.to_owned()))
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What protects the keys of one SAE pair: a hybrid [`Policy`] (the combiner and the
/// authenticated exchange), or the explicit `QKD-only` exception.
///
/// `QkdOnly` is **not** a QKMS-HYB mode and never a fallback: the delivered key is the relayed
/// QKD key itself, which **every trusted node on the path knows**. It gives no protection against
/// a compromised trusted node. The combiner and the exchange refuse to run for it (their types
/// take a [`Policy`], which has no such value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protection {
    /// Hybrid key derivation under this policy.
    Hybrid(Policy),
    /// Relayed QKD key only, configured explicitly; no protection against trusted nodes.
    QkdOnly,
}

impl Default for Protection {
    fn default() -> Self {
        Protection::Hybrid(Policy::default())
    }
}

impl Protection {
    /// Parses a configuration value. Accepted (case-sensitive): the canonical policy names
    /// `"QKD+PQ+T"`, `"QKD+PQ"`, `"PQ+T"`, `"QKD-only"`, and the issue-tracker aliases `"qkd+pq"`
    /// (= `QKD+PQ+T`, note: *with* the classical exchange), `"pq-only"` (= `PQ+T`) and
    /// `"qkd-only"`.
    pub fn parse(s: &str) -> Result<Self, ConfigParseError> {
        match s {
            "qkd+pq" => Ok(Protection::Hybrid(Policy::QkdPqT)),
            "pq-only" => Ok(Protection::Hybrid(Policy::PqT)),
            "QKD-only" | "qkd-only" => Ok(Protection::QkdOnly),
            _ => Policy::parse(s).map(Protection::Hybrid),
        }
    }

    /// The canonical configuration name.
    pub const fn name(self) -> &'static str {
        match self {
            Protection::Hybrid(p) => p.name(),
            Protection::QkdOnly => "QKD-only",
        }
    }

    /// The hybrid policy, or `None` for `QKD-only`.
    pub const fn policy(self) -> Option<Policy> {
        match self {
            Protection::Hybrid(p) => Some(p),
            Protection::QkdOnly => None,
        }
    }
}

impl fmt::Display for Protection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Protection {
    type Err = ConfigParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suite_names_round_trip() {
        for s in Suite::ALL.into_iter().filter(|s| s.is_available()) {
            assert_eq!(Suite::parse(s.name()), Ok(s));
            assert_eq!(s.to_string(), s.name());
        }
        assert_eq!(Suite::default().name(), "X25519/ML-KEM-768");
    }

    #[test]
    fn suite_errors_are_clear() {
        let e = Suite::parse("x25519/ml-kem-768").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("X25519/ML-KEM-768"), "{msg}");
        assert!(Suite::parse("X25519/ML-KEM-768 ").is_err());
        if !cfg!(feature = "oqs") {
            assert_eq!(
                Suite::parse("X25519/FrodoKEM-976-AES"),
                Err(ConfigParseError::SuiteNeedsOqs(
                    "X25519/FrodoKEM-976-AES".into()
                ))
            );
        }
    }

    #[test]
    fn policies_closed_set() {
        for p in Policy::ALL {
            assert_eq!(Policy::parse(p.name()), Ok(p));
            assert_eq!(Protection::parse(p.name()), Ok(Protection::Hybrid(p)));
        }
        assert!(Policy::parse("QKD").is_err());
        assert!(Policy::parse("QKD-only").is_err());
        assert!(Policy::parse("qkd+pq+t").is_err());
        assert_eq!(
            Protection::parse("qkd+pq"),
            Ok(Protection::Hybrid(Policy::QkdPqT))
        );
        assert_eq!(
            Protection::parse("pq-only"),
            Ok(Protection::Hybrid(Policy::PqT))
        );
        assert_eq!(Protection::parse("qkd-only"), Ok(Protection::QkdOnly));
        assert_eq!(Protection::QkdOnly.policy(), None);
        assert!(Protection::parse("").is_err());
        assert_eq!(Protection::default(), Protection::Hybrid(Policy::QkdPqT));
    }

    #[test]
    fn sizes_match_aws_lc() {
        use aws_lc_rs::kem;
        for (kem, alg) in [
            (PqKem::MlKem768, &kem::ML_KEM_768),
            (PqKem::MlKem1024, &kem::ML_KEM_1024),
        ] {
            let dk = kem::DecapsulationKey::generate(alg).unwrap();
            let ek = dk.encapsulation_key().unwrap();
            assert_eq!(ek.key_bytes().unwrap().as_ref().len(), kem.public_key_len());
            let (ct, ss) = ek.encapsulate().unwrap();
            assert_eq!(ct.as_ref().len(), kem.ciphertext_len());
            assert_eq!(ss.as_ref().len(), kem.shared_secret_len());
        }
    }
}
