//! The key-establishment primitives of each suite: ephemeral ECDH (X25519, P-384) and PQ KEMs
//! (ML-KEM from aws-lc-rs; FrodoKEM and Classic McEliece from liboqs under the `oqs` feature),
//! and the static KEM key types both ends pin for suites that need them.
//!
//! Classical ephemeral private keys are drawn from the caller's RNG; ML-KEM and liboqs key
//! generation and encapsulation use their libraries' own DRBG (neither exposes a seeded API).
//! Every shared secret leaves this module inside a [`Secret`].

use aws_lc_rs::{agreement, kem};
use qkd_types::Secret;
use zeroize::Zeroizing;

use super::config::{Classical, PqKem};
use super::error::HybridError;

/// An ephemeral classical key pair, used for exactly one agreement.
pub(crate) struct ClassicalEphemeral {
    key: agreement::PrivateKey,
    public: Vec<u8>,
}

impl std::fmt::Debug for ClassicalEphemeral {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClassicalEphemeral(<SECRET>)")
    }
}

impl ClassicalEphemeral {
    /// Draws a private key from `rng`.
    pub(crate) fn generate<R: rand::CryptoRng + ?Sized>(
        group: Classical,
        rng: &mut R,
    ) -> Result<Self, HybridError> {
        let (alg, len) = match group {
            Classical::X25519 => (&agreement::X25519, 32),
            Classical::P384 => (&agreement::ECDH_P384, 48),
        };
        let mut raw = Zeroizing::new([0u8; 48]);
        // A P-384 scalar drawn uniformly is ≥ n (or 0) with probability < 2^-189; retry then.
        for _ in 0..8 {
            rng.fill_bytes(&mut raw[..len]);
            if let Ok(key) = agreement::PrivateKey::from_private_key(alg, &raw[..len]) {
                let public = key
                    .compute_public_key()
                    .map_err(|_| HybridError::Crypto("ECDH public key"))?
                    .as_ref()
                    .to_vec();
                return Ok(Self { key, public });
            }
        }
        Err(HybridError::Crypto("ECDH key generation"))
    }

    /// Our public key (X25519: 32 bytes; P-384: SEC1 uncompressed, 97 bytes).
    pub(crate) fn public(&self) -> &[u8] {
        &self.public
    }

    /// The shared secret with `peer`. Rejects a P-384 key that is not uncompressed SEC1 or not on
    /// the curve, and an all-zero X25519 result (small-order point).
    pub(crate) fn agree(&self, group: Classical, peer: &[u8]) -> Result<Secret, HybridError> {
        let alg = match group {
            Classical::X25519 => &agreement::X25519,
            Classical::P384 => &agreement::ECDH_P384,
        };
        if peer.len() != group.public_key_len()
            || (group == Classical::P384 && peer.first() != Some(&0x04))
        {
            return Err(HybridError::InvalidPeerKey("epk_T"));
        }
        let ss = agreement::agree(
            &self.key,
            agreement::UnparsedPublicKey::new(alg, peer),
            HybridError::InvalidPeerKey("epk_T"),
            |ss| Ok(Secret::copy_from(ss)),
        )?;
        if ss.len() != group.shared_secret_len() {
            return Err(HybridError::Crypto("ECDH output length"));
        }
        if ss.expose().iter().all(|b| *b == 0) {
            return Err(HybridError::InvalidPeerKey(
                "epk_T (all-zero shared secret)",
            ));
        }
        Ok(ss)
    }
}

/// An ephemeral PQ decapsulation key, used for exactly one decapsulation.
pub(crate) enum PqDecapsulationKey {
    MlKem(kem::DecapsulationKey),
    #[cfg(feature = "oqs")]
    Oqs(super::oqs_kem::OqsSecretKey),
}

impl std::fmt::Debug for PqDecapsulationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PqDecapsulationKey(<SECRET>)")
    }
}

fn ml_kem(k: PqKem) -> Option<&'static kem::Algorithm> {
    match k {
        PqKem::MlKem768 => Some(&kem::ML_KEM_768),
        PqKem::MlKem1024 => Some(&kem::ML_KEM_1024),
        _ => None,
    }
}

/// Generates an ephemeral PQ key pair: (decapsulation key, encapsulation key bytes).
pub(crate) fn pq_generate(k: PqKem) -> Result<(PqDecapsulationKey, Vec<u8>), HybridError> {
    if let Some(alg) = ml_kem(k) {
        let dk = kem::DecapsulationKey::generate(alg)
            .map_err(|_| HybridError::Crypto("ML-KEM keygen"))?;
        let ek = dk
            .encapsulation_key()
            .and_then(|ek| ek.key_bytes().map(|b| b.as_ref().to_vec()))
            .map_err(|_| HybridError::Crypto("ML-KEM encapsulation key"))?;
        return Ok((PqDecapsulationKey::MlKem(dk), ek));
    }
    #[cfg(feature = "oqs")]
    {
        let (sk, pk) = super::oqs_kem::generate(k)?;
        Ok((PqDecapsulationKey::Oqs(sk), pk))
    }
    #[cfg(not(feature = "oqs"))]
    Err(HybridError::Crypto("KEM needs the oqs feature"))
}

/// Encapsulates to a peer's encapsulation key: (ciphertext, shared secret). Rejects a key of
/// the wrong length or one that fails the ML-KEM modulus check.
pub(crate) fn pq_encapsulate(
    k: PqKem,
    ek: &[u8],
    what: &'static str,
) -> Result<(Vec<u8>, Secret), HybridError> {
    if ek.len() != k.public_key_len() {
        return Err(HybridError::InvalidPeerKey(what));
    }
    if let Some(alg) = ml_kem(k) {
        let ek =
            kem::EncapsulationKey::new(alg, ek).map_err(|_| HybridError::InvalidPeerKey(what))?;
        // aws-lc-rs runs the FIPS 203 modulus check here, not in `new`.
        let (ct, ss) = ek
            .encapsulate()
            .map_err(|_| HybridError::InvalidPeerKey(what))?;
        return Ok((ct.as_ref().to_vec(), Secret::copy_from(ss.as_ref())));
    }
    #[cfg(feature = "oqs")]
    {
        super::oqs_kem::encapsulate(k, ek, what)
    }
    #[cfg(not(feature = "oqs"))]
    Err(HybridError::Crypto("KEM needs the oqs feature"))
}

/// Decapsulates a ciphertext of the right length (ML-KEM rejects implicitly: a bad ciphertext
/// yields an unrelated secret, caught by key confirmation).
pub(crate) fn pq_decapsulate(
    k: PqKem,
    dk: &PqDecapsulationKey,
    ct: &[u8],
    what: &'static str,
) -> Result<Secret, HybridError> {
    if ct.len() != k.ciphertext_len() {
        return Err(HybridError::InvalidPeerKey(what));
    }
    match dk {
        PqDecapsulationKey::MlKem(dk) => {
            let ss = dk
                .decapsulate(kem::Ciphertext::from(ct))
                .map_err(|_| HybridError::InvalidPeerKey(what))?;
            Ok(Secret::copy_from(ss.as_ref()))
        }
        #[cfg(feature = "oqs")]
        PqDecapsulationKey::Oqs(sk) => super::oqs_kem::decapsulate(k, sk, ct, what),
    }
}

/// A pinned static KEM public key of a peer (Classic McEliece suites).
#[derive(Clone, PartialEq, Eq)]
pub struct StaticKemPublicKey {
    kem: PqKem,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for StaticKemPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StaticKemPublicKey({:?}, sha384 {})",
            self.kem,
            hex_prefix(&self.fingerprint())
        )
    }
}

impl StaticKemPublicKey {
    /// Wraps public key bytes of `kem` (length checked).
    pub fn new(kem: PqKem, bytes: Vec<u8>) -> Result<Self, HybridError> {
        if bytes.len() != kem.public_key_len() {
            return Err(HybridError::KeyLoad("static KEM public key (length)"));
        }
        Ok(Self { kem, bytes })
    }

    /// The KEM.
    pub fn kem(&self) -> PqKem {
        self.kem
    }

    /// The public key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// SHA-384 of the public key, as bound into `common`.
    pub fn fingerprint(&self) -> [u8; 48] {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA384, &self.bytes);
        let mut out = [0u8; 48];
        out.copy_from_slice(d.as_ref());
        out
    }
}

/// This node's static KEM key pair (Classic McEliece suites). Generation takes 0.1-0.2 s: run it
/// off the async runtime, once, at provisioning.
pub struct StaticKemKeyPair {
    public: StaticKemPublicKey,
    secret: Secret,
}

impl std::fmt::Debug for StaticKemKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticKemKeyPair")
            .field("public", &self.public)
            .field("secret", &self.secret)
            .finish()
    }
}

impl StaticKemKeyPair {
    /// Generates a key pair (liboqs DRBG). Needs the `oqs` feature.
    pub fn generate(kem: PqKem) -> Result<Self, HybridError> {
        #[cfg(feature = "oqs")]
        {
            let (secret, public) = super::oqs_kem::generate_static(kem)?;
            Ok(Self {
                public: StaticKemPublicKey::new(kem, public)?,
                secret,
            })
        }
        #[cfg(not(feature = "oqs"))]
        {
            let _ = kem;
            Err(HybridError::KeyLoad("static KEM keys need the oqs feature"))
        }
    }

    /// Loads a key pair from its public key and raw liboqs secret key bytes.
    pub fn from_parts(public: StaticKemPublicKey, secret: Secret) -> Result<Self, HybridError> {
        #[cfg(feature = "oqs")]
        super::oqs_kem::check_secret_len(public.kem, secret.len())?;
        Ok(Self { public, secret })
    }

    /// The public half, to give to peers out of band.
    pub fn public_key(&self) -> &StaticKemPublicKey {
        &self.public
    }

    /// The raw secret key, for saving it (encrypt it at rest).
    pub fn secret_bytes(&self) -> &Secret {
        &self.secret
    }

    /// Decapsulates a ciphertext sent to this static key.
    pub(crate) fn decapsulate(&self, ct: &[u8], what: &'static str) -> Result<Secret, HybridError> {
        if ct.len() != self.public.kem.ciphertext_len() {
            return Err(HybridError::InvalidPeerKey(what));
        }
        #[cfg(feature = "oqs")]
        {
            super::oqs_kem::decapsulate_static(self.public.kem, &self.secret, ct, what)
        }
        #[cfg(not(feature = "oqs"))]
        Err(HybridError::SuiteUnavailable(
            super::config::Suite::X25519McEliece460896,
        ))
    }
}

pub(crate) fn hex_prefix(b: &[u8]) -> String {
    b.iter().take(8).map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn ecdh_agrees_and_rejects_bad_points() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        for g in [Classical::X25519, Classical::P384] {
            let a = ClassicalEphemeral::generate(g, &mut rng).unwrap();
            let b = ClassicalEphemeral::generate(g, &mut rng).unwrap();
            assert_eq!(a.public().len(), g.public_key_len());
            let s1 = a.agree(g, b.public()).unwrap();
            let s2 = b.agree(g, a.public()).unwrap();
            assert_eq!(s1, s2);
            assert_eq!(s1.len(), g.shared_secret_len());
        }
        let a = ClassicalEphemeral::generate(Classical::X25519, &mut rng).unwrap();
        // Small-order point (all zero): all-zero shared secret must be refused.
        assert!(a.agree(Classical::X25519, &[0u8; 32]).is_err());
        let p = ClassicalEphemeral::generate(Classical::P384, &mut rng).unwrap();
        let mut off = p.public().to_vec();
        off[96] ^= 1; // no longer on the curve
        assert!(p.agree(Classical::P384, &off).is_err());
        let mut compressed = p.public()[..49].to_vec();
        compressed[0] = 0x02;
        assert!(p.agree(Classical::P384, &compressed).is_err());
    }

    #[test]
    fn rfc7748_vector() {
        // RFC 7748 §6.1 shows our X25519 path is plain X25519.
        let a = hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
            .unwrap();
        let b_pub = hex::decode("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
            .unwrap();
        let key = agreement::PrivateKey::from_private_key(&agreement::X25519, &a).unwrap();
        let eph = ClassicalEphemeral {
            public: key.compute_public_key().unwrap().as_ref().to_vec(),
            key,
        };
        let ss = eph.agree(Classical::X25519, &b_pub).unwrap();
        assert_eq!(
            hex::encode(ss.expose()),
            "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
        );
    }

    #[test]
    fn ml_kem_round_trip_and_modulus_check() {
        for k in [PqKem::MlKem768, PqKem::MlKem1024] {
            let (dk, ek) = pq_generate(k).unwrap();
            let (ct, ss) = pq_encapsulate(k, &ek, "ek").unwrap();
            assert_eq!(pq_decapsulate(k, &dk, &ct, "ct").unwrap(), ss);
            // Coefficient 0xFFF ≥ q = 3329 fails the modulus check.
            let mut bad = ek.clone();
            bad[0] = 0xff;
            bad[1] |= 0x0f;
            assert_eq!(
                pq_encapsulate(k, &bad, "ek").unwrap_err(),
                HybridError::InvalidPeerKey("ek")
            );
            assert!(pq_encapsulate(k, &ek[1..], "ek").is_err());
            assert!(pq_decapsulate(k, &dk, &ct[1..], "ct").is_err());
        }
    }
}
