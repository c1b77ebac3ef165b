//! FrodoKEM and Classic McEliece through liboqs (`oqs` feature). liboqs returns secret keys and
//! shared secrets in plain `Vec`s; each is moved (not copied) into a [`Secret`] at once, so it is
//! zeroized on drop like every other secret of the hybrid layer.

use oqs::kem::{Algorithm, Kem};
use qkd_types::Secret;
use zeroize::Zeroizing;

use super::config::PqKem;
use super::error::HybridError;

/// An ephemeral liboqs secret key.
pub(crate) struct OqsSecretKey(Secret);

fn kem(k: PqKem) -> Result<Kem, HybridError> {
    let alg = match k {
        PqKem::FrodoKem976Aes => Algorithm::FrodoKem976Aes,
        PqKem::FrodoKem1344Aes => Algorithm::FrodoKem1344Aes,
        PqKem::McEliece460896 => Algorithm::ClassicMcEliece460896,
        PqKem::MlKem768 | PqKem::MlKem1024 => {
            return Err(HybridError::Crypto("ML-KEM is served by aws-lc-rs"));
        }
    };
    oqs::init();
    let kem = Kem::new(alg).map_err(|_| HybridError::Crypto("liboqs KEM not enabled"))?;
    if kem.length_public_key() != k.public_key_len()
        || kem.length_ciphertext() != k.ciphertext_len()
        || kem.length_shared_secret() != k.shared_secret_len()
    {
        return Err(HybridError::Crypto("liboqs sizes differ from the suite's"));
    }
    Ok(kem)
}

fn secret(v: Vec<u8>) -> Secret {
    Secret::new(Zeroizing::new(v))
}

pub(crate) fn generate(k: PqKem) -> Result<(OqsSecretKey, Vec<u8>), HybridError> {
    let (sk, pk) = generate_static(k)?;
    Ok((OqsSecretKey(sk), pk))
}

pub(crate) fn generate_static(k: PqKem) -> Result<(Secret, Vec<u8>), HybridError> {
    let kem = kem(k)?;
    let (pk, sk) = kem
        .keypair()
        .map_err(|_| HybridError::Crypto("liboqs keygen"))?;
    Ok((secret(sk.into_vec()), pk.into_vec()))
}

pub(crate) fn encapsulate(
    k: PqKem,
    ek: &[u8],
    what: &'static str,
) -> Result<(Vec<u8>, Secret), HybridError> {
    let kem = kem(k)?;
    let pk = kem
        .public_key_from_bytes(ek)
        .ok_or(HybridError::InvalidPeerKey(what))?;
    let (ct, ss) = kem
        .encapsulate(pk)
        .map_err(|_| HybridError::InvalidPeerKey(what))?;
    Ok((ct.into_vec(), secret(ss.into_vec())))
}

pub(crate) fn decapsulate(
    k: PqKem,
    sk: &OqsSecretKey,
    ct: &[u8],
    what: &'static str,
) -> Result<Secret, HybridError> {
    decapsulate_static(k, &sk.0, ct, what)
}

pub(crate) fn decapsulate_static(
    k: PqKem,
    sk: &Secret,
    ct: &[u8],
    what: &'static str,
) -> Result<Secret, HybridError> {
    let kem = kem(k)?;
    // Exposed to hand the secret key to liboqs.
    let sk = kem
        .secret_key_from_bytes(sk.expose())
        .ok_or(HybridError::Crypto("liboqs secret key length"))?;
    let ct = kem
        .ciphertext_from_bytes(ct)
        .ok_or(HybridError::InvalidPeerKey(what))?;
    let ss = kem
        .decapsulate(sk, ct)
        .map_err(|_| HybridError::InvalidPeerKey(what))?;
    Ok(secret(ss.into_vec()))
}

pub(crate) fn check_secret_len(k: PqKem, len: usize) -> Result<(), HybridError> {
    if kem(k)?.length_secret_key() != len {
        return Err(HybridError::KeyLoad("static KEM secret key (length)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frodo_round_trips_and_sizes_match() {
        for k in [PqKem::FrodoKem976Aes, PqKem::FrodoKem1344Aes] {
            let (sk, pk) = generate(k).unwrap();
            assert_eq!(pk.len(), k.public_key_len());
            let (ct, ss) = encapsulate(k, &pk, "ek").unwrap();
            assert_eq!(ct.len(), k.ciphertext_len());
            assert_eq!(decapsulate(k, &sk, &ct, "ct").unwrap(), ss);
            assert!(encapsulate(k, &pk[1..], "ek").is_err());
        }
    }
}
