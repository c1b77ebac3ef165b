//! A throw-away certificate authority for tests: a CA, device server certificates for
//! 127.0.0.1/`localhost`, and client certificates whose CN is the caller's ID (an SAE ID at a
//! device or at a KME), all PEM.
//!
//! It depends on `rcgen` alone, so that the simulator's tests can use it without pulling in the
//! key manager or the node (**Architecture Invariant:** `simulator` never depends on `kms` or
//! `node`, not even in its tests). Never use it outside tests: its keys live in memory only and
//! its certificates carry no revocation information.

#![forbid(unsafe_code)]
// Test support: a certificate that cannot be made is a broken test set-up, reported at once.
#![allow(clippy::unwrap_used)]

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A CA and the certificates it issues.
pub struct TestCa {
    /// The CA certificate, PEM.
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    /// A fresh CA named `common_name`, allowed to issue end-entity certificates only.
    pub fn new(common_name: &str) -> Self {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// (certificate PEM, key PEM) of a server (a QKD device) valid for 127.0.0.1 and
    /// `localhost`.
    pub fn device(&self) -> (String, String) {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        self.issue(params)
    }

    /// (certificate PEM, key PEM) of a client whose CN is `id` (how an SAE, or a node at its
    /// device, is named by a CN-only certificate).
    pub fn client(&self, id: &str) -> (String, String) {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, id);
        self.issue(params)
    }

    fn issue(&self, params: CertificateParams) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_pem_certificates_and_keys() {
        let ca = TestCa::new("unit test CA");
        assert!(ca.pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let (cert, key) = ca.device();
        assert!(cert.contains("BEGIN CERTIFICATE") && key.contains("PRIVATE KEY"));
        let (a, _) = ca.client("ENC-A1");
        let (b, _) = ca.client("ENC-A1");
        assert_ne!(a, b, "every certificate has its own key");
    }
}
