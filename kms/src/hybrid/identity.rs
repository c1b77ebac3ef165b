//! Long-term end-to-end identities (docs/hybrid.md, "Exchange"): each KME's own ML-DSA-65 + Ed25519 key
//! pair, provisioned out of band (deliberately not the TLS PKI), and the public keys each KME
//! pins for its peers (at most two per peer, for rotation). `HSig(m) = enc(ML-DSA-65.Sign(m)) ‖
//! enc(Ed25519.Sign(m))` is valid only if **both** signatures verify under the **same** pinned
//! key pair.

use std::collections::BTreeMap;

use aws_lc_rs::signature::{
    self, Ed25519KeyPair, KeyPair, ML_DSA_65, ML_DSA_65_SIGNING, PqdsaKeyPair,
};
use qkd_types::{KmeId, Secret};
use zeroize::Zeroizing;

use super::combiner::enc;
use super::error::HybridError;
use super::kem::{StaticKemKeyPair, StaticKemPublicKey, hex_prefix};

/// ML-DSA-65 public key length.
pub const ML_DSA_65_PUBLIC_KEY_LEN: usize = 1952;
/// ML-DSA-65 signature length.
pub const ML_DSA_65_SIGNATURE_LEN: usize = 3309;
/// Ed25519 public key length.
pub const ED25519_PUBLIC_KEY_LEN: usize = 32;
/// Length of [`NodeSigningKey::to_raw`]: ML-DSA-65 seed ‖ Ed25519 seed.
pub const RAW_SIGNING_KEY_LEN: usize = 64;
/// Length of [`PeerKey::to_bytes`]: ML-DSA-65 public key ‖ Ed25519 public key.
pub const PEER_KEY_LEN: usize = ML_DSA_65_PUBLIC_KEY_LEN + ED25519_PUBLIC_KEY_LEN;
/// Most pinned key pairs per peer (old and new, during a rotation).
pub const MAX_KEYS_PER_PEER: usize = 2;

/// A KME's long-term signing keys: ML-DSA-65 and Ed25519.
pub struct NodeSigningKey {
    mldsa: PqdsaKeyPair,
    ed25519: Ed25519KeyPair,
    /// The 64 seed bytes, when known (generated or loaded raw); PKCS#8-loaded keys have none.
    seeds: Option<Secret>,
}

impl std::fmt::Debug for NodeSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeSigningKey({:?}, <SECRET>)", self.public_key())
    }
}

impl NodeSigningKey {
    /// Generates a key pair from 64 bytes of `rng`.
    pub fn generate<R: rand::CryptoRng + ?Sized>(rng: &mut R) -> Result<Self, HybridError> {
        let mut seeds = Secret::zeroed(RAW_SIGNING_KEY_LEN);
        rng.fill_bytes(seeds.expose_mut());
        Self::from_raw(seeds)
    }

    /// Loads the raw form: 32-byte ML-DSA-65 seed (FIPS 204 ξ) ‖ 32-byte Ed25519 seed.
    pub fn from_raw(seeds: Secret) -> Result<Self, HybridError> {
        if seeds.len() != RAW_SIGNING_KEY_LEN {
            return Err(HybridError::KeyLoad("raw signing key (must be 64 bytes)"));
        }
        // Exposed to expand the seeds into key pairs.
        let (m, e) = seeds.expose().split_at(32);
        let mldsa = PqdsaKeyPair::from_seed(&ML_DSA_65_SIGNING, m)
            .map_err(|_| HybridError::KeyLoad("ML-DSA-65 seed"))?;
        let ed25519 = Ed25519KeyPair::from_seed_unchecked(e)
            .map_err(|_| HybridError::KeyLoad("Ed25519 seed"))?;
        Ok(Self {
            mldsa,
            ed25519,
            seeds: Some(seeds),
        })
    }

    /// The raw form (64 seed bytes), for saving; fails for keys loaded from PKCS#8.
    pub fn to_raw(&self) -> Result<Secret, HybridError> {
        self.seeds
            .as_ref()
            .map(Secret::duplicate)
            .ok_or(HybridError::KeyLoad("raw form of a PKCS#8-loaded key"))
    }

    /// Loads two PKCS#8 documents (DER): ML-DSA-65 (seed or expanded form) and Ed25519 (v1 or
    /// v2).
    pub fn from_pkcs8(mldsa: &[u8], ed25519: &[u8]) -> Result<Self, HybridError> {
        Ok(Self {
            mldsa: PqdsaKeyPair::from_pkcs8(&ML_DSA_65_SIGNING, mldsa)
                .map_err(|_| HybridError::KeyLoad("ML-DSA-65 PKCS#8"))?,
            ed25519: Ed25519KeyPair::from_pkcs8(ed25519)
                .map_err(|_| HybridError::KeyLoad("Ed25519 PKCS#8"))?,
            seeds: None,
        })
    }

    /// The two PKCS#8 documents (DER), ML-DSA-65 then Ed25519, for saving.
    pub fn to_pkcs8(&self) -> Result<(Secret, Secret), HybridError> {
        let m = self
            .mldsa
            .to_pkcs8v1()
            .map_err(|_| HybridError::KeyLoad("ML-DSA-65 PKCS#8 export"))?;
        let e = self
            .ed25519
            .to_pkcs8()
            .map_err(|_| HybridError::KeyLoad("Ed25519 PKCS#8 export"))?;
        Ok((Secret::copy_from(m.as_ref()), Secret::copy_from(e.as_ref())))
    }

    /// The public keys, to pin at peers.
    pub fn public_key(&self) -> PeerKey {
        let mut ed = [0u8; ED25519_PUBLIC_KEY_LEN];
        ed.copy_from_slice(self.ed25519.public_key().as_ref());
        PeerKey {
            mldsa: self.mldsa.public_key().as_ref().to_vec(),
            ed25519: ed,
        }
    }

    /// `HSig(m) = enc(ML-DSA-65.Sign(m)) ‖ enc(Ed25519.Sign(m))`.
    pub(crate) fn sign(&self, m: &[u8]) -> Result<Vec<u8>, HybridError> {
        let mut sig = Zeroizing::new(vec![0u8; ML_DSA_65_SIGNATURE_LEN]);
        let n = self
            .mldsa
            .sign(m, &mut sig)
            .map_err(|_| HybridError::Crypto("ML-DSA-65 sign"))?;
        let ed = self.ed25519.sign(m);
        let mut out = Vec::with_capacity(n + 64 + 8);
        enc(&mut out, &sig[..n]);
        enc(&mut out, ed.as_ref());
        Ok(out)
    }
}

/// One pinned public key pair of a peer: ML-DSA-65 and Ed25519.
#[derive(Clone, PartialEq, Eq)]
pub struct PeerKey {
    mldsa: Vec<u8>,
    ed25519: [u8; ED25519_PUBLIC_KEY_LEN],
}

impl std::fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PeerKey(sha384 {})", hex_prefix(&self.fingerprint()))
    }
}

impl PeerKey {
    /// Parses `ML-DSA-65 public key (1952 B) ‖ Ed25519 public key (32 B)`.
    pub fn from_bytes(b: &[u8]) -> Result<Self, HybridError> {
        if b.len() != PEER_KEY_LEN {
            return Err(HybridError::KeyLoad("peer public key (must be 1984 bytes)"));
        }
        let (m, e) = b.split_at(ML_DSA_65_PUBLIC_KEY_LEN);
        let mut ed = [0u8; ED25519_PUBLIC_KEY_LEN];
        ed.copy_from_slice(e);
        let key = Self {
            mldsa: m.to_vec(),
            ed25519: ed,
        };
        signature::UnparsedPublicKey::new(&ML_DSA_65, &key.mldsa)
            .parse()
            .map_err(|_| HybridError::KeyLoad("ML-DSA-65 public key"))?;
        signature::UnparsedPublicKey::new(&signature::ED25519, &key.ed25519)
            .parse()
            .map_err(|_| HybridError::KeyLoad("Ed25519 public key"))?;
        Ok(key)
    }

    /// The encoding [`PeerKey::from_bytes`] reads.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.mldsa.clone();
        out.extend_from_slice(&self.ed25519);
        out
    }

    /// SHA-384 of [`PeerKey::to_bytes`], for operators comparing keys out of band.
    pub fn fingerprint(&self) -> [u8; 48] {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA384, &self.to_bytes());
        let mut out = [0u8; 48];
        out.copy_from_slice(d.as_ref());
        out
    }

    fn verify(&self, m: &[u8], mldsa_sig: &[u8], ed_sig: &[u8]) -> bool {
        // Both are checked, whatever the first result, so timing does not tell which failed.
        let a = signature::UnparsedPublicKey::new(&ML_DSA_65, &self.mldsa)
            .verify(m, mldsa_sig)
            .is_ok();
        let b = signature::UnparsedPublicKey::new(&signature::ED25519, &self.ed25519)
            .verify(m, ed_sig)
            .is_ok();
        a & b
    }
}

/// What a KME pins for one peer: its KME ID, one or two signing key pairs, and its static KEM
/// public key if the pair's suite uses one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPublicKeys {
    kme: KmeId,
    keys: Vec<PeerKey>,
    static_kem: Option<StaticKemPublicKey>,
}

impl PeerPublicKeys {
    /// Pins `keys` (one, or two during a rotation) for `kme`.
    pub fn new(kme: KmeId, keys: Vec<PeerKey>) -> Result<Self, HybridError> {
        if keys.is_empty() || keys.len() > MAX_KEYS_PER_PEER {
            return Err(HybridError::KeyLoad("pinned keys per peer (1 or 2)"));
        }
        Ok(Self {
            kme,
            keys,
            static_kem: None,
        })
    }

    /// Also pins the peer's static KEM public key.
    pub fn with_static_kem(mut self, key: StaticKemPublicKey) -> Self {
        self.static_kem = Some(key);
        self
    }

    /// The peer.
    pub fn kme(&self) -> &KmeId {
        &self.kme
    }

    /// Its pinned signing keys.
    pub fn keys(&self) -> &[PeerKey] {
        &self.keys
    }

    /// Its pinned static KEM public key.
    pub fn static_kem(&self) -> Option<&StaticKemPublicKey> {
        self.static_kem.as_ref()
    }

    /// Verifies `HSig` over `m` against each pinned key pair; both halves must verify under the
    /// same pair. The encoding is strict (exact lengths, no trailing bytes).
    pub(crate) fn verify(
        &self,
        m: &[u8],
        hsig: &[u8],
        which: &'static str,
    ) -> Result<(), HybridError> {
        let (mldsa_sig, ed_sig) = split_hsig(hsig).ok_or(HybridError::Malformed(which))?;
        let mut ok = false;
        for k in &self.keys {
            ok |= k.verify(m, mldsa_sig, ed_sig);
        }
        if ok {
            Ok(())
        } else {
            Err(HybridError::BadSignature(which))
        }
    }
}

/// The peers a KME pins, by KME ID.
#[derive(Debug, Clone, Default)]
pub struct PinnedPeers {
    peers: BTreeMap<KmeId, PeerPublicKeys>,
}

impl PinnedPeers {
    /// No peers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a peer.
    pub fn insert(&mut self, peer: PeerPublicKeys) {
        self.peers.insert(peer.kme.clone(), peer);
    }

    /// A peer's pinned keys.
    pub fn get(&self, kme: &KmeId) -> Option<&PeerPublicKeys> {
        self.peers.get(kme)
    }
}

/// This KME's own end-to-end identity: its ID, its signing keys and, for suites that need one,
/// its static KEM key pair.
#[derive(Debug)]
pub struct LocalIdentity {
    kme: KmeId,
    signing: NodeSigningKey,
    static_kem: Option<StaticKemKeyPair>,
}

impl LocalIdentity {
    /// An identity without a static KEM key.
    pub fn new(kme: KmeId, signing: NodeSigningKey) -> Self {
        Self {
            kme,
            signing,
            static_kem: None,
        }
    }

    /// Adds this node's static KEM key pair.
    pub fn with_static_kem(mut self, key: StaticKemKeyPair) -> Self {
        self.static_kem = Some(key);
        self
    }

    /// This KME's ID.
    pub fn kme(&self) -> &KmeId {
        &self.kme
    }

    /// The signing keys.
    pub fn signing(&self) -> &NodeSigningKey {
        &self.signing
    }

    /// The static KEM key pair, if any.
    pub fn static_kem(&self) -> Option<&StaticKemKeyPair> {
        self.static_kem.as_ref()
    }

    /// What peers must pin for this node.
    pub fn public_keys(&self) -> Result<PeerPublicKeys, HybridError> {
        let p = PeerPublicKeys::new(self.kme.clone(), vec![self.signing.public_key()])?;
        Ok(match &self.static_kem {
            Some(s) => p.with_static_kem(s.public_key().clone()),
            None => p,
        })
    }
}

fn split_hsig(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let (l1, rest) = b.split_first_chunk::<4>()?;
    let l1 = u32::from_be_bytes(*l1) as usize;
    if l1 != ML_DSA_65_SIGNATURE_LEN || rest.len() < l1 {
        return None;
    }
    let (s1, rest) = rest.split_at(l1);
    let (l2, s2) = rest.split_first_chunk::<4>()?;
    if u32::from_be_bytes(*l2) as usize != 64 || s2.len() != 64 {
        return None;
    }
    Some((s1, s2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn key(seed: u64) -> NodeSigningKey {
        NodeSigningKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed)).unwrap()
    }

    #[test]
    fn sign_verify_and_rotation() {
        let old = key(1);
        let new = key(2);
        let other = key(3);
        let kme = KmeId::parse("kme-a").unwrap();
        let pinned =
            PeerPublicKeys::new(kme.clone(), vec![old.public_key(), new.public_key()]).unwrap();
        for k in [&old, &new] {
            let s = k.sign(b"m").unwrap();
            pinned.verify(b"m", &s, "sig").unwrap();
            assert!(pinned.verify(b"n", &s, "sig").is_err());
        }
        let s = other.sign(b"m").unwrap();
        assert_eq!(
            pinned.verify(b"m", &s, "sig"),
            Err(HybridError::BadSignature("sig"))
        );
        assert!(
            PeerPublicKeys::new(
                kme,
                vec![old.public_key(), new.public_key(), other.public_key()]
            )
            .is_err()
        );
    }

    #[test]
    fn both_halves_must_verify_under_one_pair() {
        let a = key(1);
        let b = key(2);
        let pinned = PeerPublicKeys::new(
            KmeId::parse("x").unwrap(),
            vec![a.public_key(), b.public_key()],
        )
        .unwrap();
        let sa = a.sign(b"m").unwrap();
        let sb = b.sign(b"m").unwrap();
        // ML-DSA half of a, Ed25519 half of b: each verifies alone, but not as one pair.
        let (ma, _) = split_hsig(&sa).unwrap();
        let (_, eb) = split_hsig(&sb).unwrap();
        let mut mixed = Vec::new();
        enc(&mut mixed, ma);
        enc(&mut mixed, eb);
        assert!(pinned.verify(b"m", &mixed, "sig").is_err());
        // One half broken.
        let mut broken = sa.clone();
        let last = broken.len() - 1;
        broken[last] ^= 1;
        assert!(pinned.verify(b"m", &broken, "sig").is_err());
        broken = sa.clone();
        broken[10] ^= 1;
        assert!(pinned.verify(b"m", &broken, "sig").is_err());
        assert!(pinned.verify(b"m", &sa[..sa.len() - 1], "sig").is_err());
    }

    #[test]
    fn save_and_load() {
        let k = key(7);
        let raw = k.to_raw().unwrap();
        let k2 = NodeSigningKey::from_raw(raw).unwrap();
        assert_eq!(k.public_key(), k2.public_key());
        let (m, e) = k.to_pkcs8().unwrap();
        let k3 = NodeSigningKey::from_pkcs8(m.expose(), e.expose()).unwrap();
        assert_eq!(k.public_key(), k3.public_key());
        assert!(k3.to_raw().is_err());
        let pk = PeerKey::from_bytes(&k.public_key().to_bytes()).unwrap();
        assert_eq!(pk, k.public_key());
        assert!(PeerKey::from_bytes(&[0u8; 10]).is_err());
        assert!(NodeSigningKey::from_raw(Secret::zeroed(63)).is_err());
        assert!(!format!("{k:?}").contains(&hex::encode(&k.to_raw().unwrap().expose()[..8])));
    }
}
