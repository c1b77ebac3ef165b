//! A demo and test PKI: one CA, a server certificate per node, a client certificate per SAE,
//! written as PEM files into one directory.
//!
//! It exists so that the demo network and the tests run mutual TLS without an operator-provided
//! PKI. It is idempotent: files already present are reused, so a restarted demo keeps its
//! certificates and SAEs keep working. Private keys are written with mode 0600 (unix), through a
//! temporary file and a rename ([`crate::durable`]) so that a crash never leaves half a key. Production deployments
//! bring their own certificates; nothing else in the stack depends on this module.
//!
//! File layout in the directory: `ca.crt`/`ca.key`, `node-<id>.crt`/`.key`, `sae-<id>.crt`/`.key`,
//! `operator-<name>.crt`/`.key`.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use qkd_types::{NodeId, OperatorId, SaeId};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::durable::{Access, write_atomic};
use crate::tls::{NODE_URI_PREFIX, OPERATOR_URI_PREFIX, TlsFiles};

/// Common name of the demo CA.
const CA_COMMON_NAME: &str = "QKD stack demo CA";

/// Paths of one issued certificate and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8, mode 0600).
    pub key: PathBuf,
}

impl IssuedCert {
    /// The files a TLS endpoint needs, with `ca` as the trust anchor.
    pub fn tls_files(&self, ca: &Path) -> TlsFiles {
        TlsFiles {
            cert_chain: self.cert.clone(),
            key: self.key.clone(),
            ca: ca.to_owned(),
        }
    }
}

/// Why the demo PKI failed. Caused by the operator (directory, files) or, for
/// [`PkiError::Generate`], by a bug or an unusable name.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Operator: a file or the directory cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Operator: the CA certificate exists without its key (or the other way round).
    #[error("{present} exists but {missing} does not; remove both to make a new CA")]
    HalfCa {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// Operator: `load` found no CA in the directory.
    #[error("no demo CA in {0} (ca.crt and ca.key)")]
    NoCa(PathBuf),
    /// Operator or bug: a key file is not a usable PEM key, or a certificate cannot be made.
    #[error("{path}: {source}")]
    Generate {
        /// The file being read or made.
        path: PathBuf,
        /// What rcgen objected to.
        source: rcgen::Error,
    },
}

/// The demo CA, loaded or created in a directory.
#[derive(Debug)]
pub struct DemoPki {
    dir: PathBuf,
    ca_cert: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl DemoPki {
    /// Opens the PKI in `dir`, creating the directory and the CA on first use.
    pub fn create(dir: &Path) -> Result<Self, PkiError> {
        fs::create_dir_all(dir).map_err(|source| PkiError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let (cert, key) = ca_paths(dir);
        if !cert.exists() && !key.exists() {
            let key_pair = KeyPair::generate().map_err(|source| PkiError::Generate {
                path: key.clone(),
                source,
            })?;
            let ca = ca_params()
                .self_signed(&key_pair)
                .map_err(|source| PkiError::Generate {
                    path: cert.clone(),
                    source,
                })?;
            write_private(&key, key_pair.serialize_pem().as_bytes())?;
            write_public(&cert, ca.pem().as_bytes())?;
        }
        Self::load(dir)
    }

    /// Opens an existing PKI in `dir`.
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let (cert, key) = ca_paths(dir);
        match (cert.exists(), key.exists()) {
            (true, true) => {}
            (false, false) => return Err(PkiError::NoCa(dir.to_owned())),
            (true, false) => {
                return Err(PkiError::HalfCa {
                    present: cert,
                    missing: key,
                });
            }
            (false, true) => {
                return Err(PkiError::HalfCa {
                    present: key,
                    missing: cert,
                });
            }
        }
        let pem = zeroize::Zeroizing::new(read(&key)?);
        let key_pair = KeyPair::from_pem(&pem).map_err(|source| PkiError::Generate {
            path: key.clone(),
            source,
        })?;
        // The issuer only needs the CA's subject name and key: certificates signed with the same
        // name and key chain to the `ca.crt` on disk.
        Ok(Self {
            dir: dir.to_owned(),
            ca_cert: cert,
            issuer: Issuer::new(ca_params(), key_pair),
        })
    }

    /// The CA certificate (the trust anchor for servers and clients).
    pub fn ca_cert(&self) -> &Path {
        &self.ca_cert
    }

    /// The server certificate of a node: SAN DNS `localhost` and `ip`, URI `urn:qkd:node:<id>`,
    /// EKU server and client auth (so that the node also uses it as its gRPC client certificate).
    /// Reuses existing files.
    pub fn issue_node(&self, node: &NodeId, ip: IpAddr) -> Result<IssuedCert, PkiError> {
        let paths = self.paths("node", node.as_str());
        self.issue(&paths, node.as_str(), |params| {
            params.subject_alt_names = vec![
                SanType::DnsName(ia5("localhost")?),
                SanType::IpAddress(ip),
                SanType::URI(ia5(&format!("{NODE_URI_PREFIX}{node}"))?),
            ];
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            Ok(())
        })?;
        Ok(paths)
    }

    /// The client certificate of an SAE: URI SAN `<uri_prefix><id>`, CN `<id>`, EKU client auth.
    /// Reuses existing files.
    pub fn issue_sae(&self, sae: &SaeId, uri_prefix: &str) -> Result<IssuedCert, PkiError> {
        let paths = self.paths("sae", sae.as_str());
        self.issue(&paths, sae.as_str(), |params| {
            params.subject_alt_names = vec![SanType::URI(ia5(&format!("{uri_prefix}{sae}"))?)];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            Ok(())
        })?;
        Ok(paths)
    }

    /// The management certificate of an operator: URI SAN `urn:qkd:operator:<name>`, CN
    /// `<name>`, EKU client auth; what the control listener admits. Reuses existing files.
    pub fn issue_operator(&self, operator: &OperatorId) -> Result<IssuedCert, PkiError> {
        let paths = self.paths("operator", operator.as_str());
        self.issue(&paths, operator.as_str(), |params| {
            params.subject_alt_names = vec![SanType::URI(ia5(&format!(
                "{OPERATOR_URI_PREFIX}{operator}"
            ))?)];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            Ok(())
        })?;
        Ok(paths)
    }

    fn paths(&self, kind: &str, id: &str) -> IssuedCert {
        IssuedCert {
            cert: self.dir.join(format!("{kind}-{id}.crt")),
            key: self.dir.join(format!("{kind}-{id}.key")),
        }
    }

    fn issue(
        &self,
        paths: &IssuedCert,
        common_name: &str,
        fill: impl FnOnce(&mut CertificateParams) -> Result<(), rcgen::Error>,
    ) -> Result<(), PkiError> {
        if paths.cert.exists() && paths.key.exists() {
            return Ok(());
        }
        let generate = |source| PkiError::Generate {
            path: paths.cert.clone(),
            source,
        };
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        // ECDSA keys: signatures only (TLS 1.2 ECDHE and TLS 1.3 need nothing else).
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        fill(&mut params).map_err(generate)?;
        let key_pair = KeyPair::generate().map_err(generate)?;
        let cert = params
            .signed_by(&key_pair, &self.issuer)
            .map_err(generate)?;
        write_private(&paths.key, key_pair.serialize_pem().as_bytes())?;
        write_public(&paths.cert, cert.pem().as_bytes())?;
        Ok(())
    }
}

fn ca_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("ca.crt"), dir.join("ca.key"))
}

/// The CA's parameters; also rebuilt on load to act as issuer (same name, same key).
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn ia5(s: &str) -> Result<rcgen::string::Ia5String, rcgen::Error> {
    rcgen::string::Ia5String::try_from(s)
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_owned(),
        source,
    })
}

fn write_public(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    write(path, contents, Access::Public)
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    write(path, contents, Access::Private)
}

fn write(path: &Path, contents: &[u8], access: Access) -> Result<(), PkiError> {
    write_atomic(path, contents, access).map_err(|source| PkiError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::tls::{self, IdentityError, SaeIdentityRule};

    #[test]
    fn issues_reuses_and_maps_identities() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DemoPki::create(dir.path()).unwrap();
        let node = NodeId::parse("node-a").unwrap();
        let sae = SaeId::parse("ENC-A").unwrap();
        let n = pki.issue_node(&node, "127.0.0.2".parse().unwrap()).unwrap();
        let s = pki.issue_sae(&sae, "urn:qkd:sae:").unwrap();

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for key in [&n.key, &s.key, &dir.path().join("ca.key")] {
                let mode = fs::metadata(key).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{key:?}");
            }
        }

        // Idempotent: a second PKI over the same directory reuses every file.
        let before = fs::read(&s.cert).unwrap();
        let ca_before = fs::read(pki.ca_cert()).unwrap();
        let again = DemoPki::create(dir.path()).unwrap();
        assert_eq!(again.issue_sae(&sae, "urn:qkd:sae:").unwrap(), s);
        assert_eq!(fs::read(&s.cert).unwrap(), before);
        assert_eq!(fs::read(again.ca_cert()).unwrap(), ca_before);

        // A certificate issued after reloading still chains to the same CA file.
        let other = again
            .issue_sae(&SaeId::parse("ENC-B").unwrap(), "urn:qkd:sae:")
            .unwrap();
        tls::server_config(&n.tls_files(pki.ca_cert())).unwrap();
        tls::client_config(&other.tls_files(pki.ca_cert())).unwrap();

        let rule = SaeIdentityRule::new("urn:qkd:sae:");
        let sae_cert = &tls::load_certs(&s.cert).unwrap()[0];
        assert_eq!(rule.sae_id(sae_cert).unwrap(), sae);
        let node_cert = &tls::load_certs(&n.cert).unwrap()[0];
        assert_eq!(tls::node_id(node_cert).unwrap(), node);
        // Under another prefix the SAE certificate falls back to its CN.
        let cn_rule = SaeIdentityRule::new("urn:other:");
        assert_eq!(cn_rule.sae_id(sae_cert).unwrap(), sae);
        assert_eq!(
            rule.sae_id(&rustls_pki_types::CertificateDer::from(vec![1, 2, 3])),
            Err(IdentityError::NotX509)
        );
    }

    /// The control listener's rule: an operator certificate names its operator; an SAE's or a
    /// node's never does, not even by its CN.
    #[test]
    fn only_operator_certificates_name_an_operator() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DemoPki::create(dir.path()).unwrap();
        let demo = qkd_types::OperatorId::parse("demo").unwrap();
        let op = pki.issue_operator(&demo).unwrap();
        let sae = pki
            .issue_sae(&SaeId::parse("demo").unwrap(), "urn:qkd:sae:")
            .unwrap();
        let node = pki
            .issue_node(
                &NodeId::parse("demo").unwrap(),
                "127.0.0.1".parse().unwrap(),
            )
            .unwrap();
        let first = |p: &IssuedCert| tls::load_certs(&p.cert).unwrap().remove(0);
        assert_eq!(tls::operator_id(&first(&op), "urn:qkd:sae:"), Ok(demo));
        assert_eq!(
            tls::operator_id(&first(&sae), "urn:qkd:sae:"),
            Err(IdentityError::SaeCertificate)
        );
        assert_eq!(
            tls::operator_id(&first(&node), "urn:qkd:sae:"),
            Err(IdentityError::NodeCertificate)
        );
        // Under another SAE prefix the SAE certificate still names no operator (no CN fallback).
        assert_eq!(
            tls::operator_id(&first(&sae), "urn:other:"),
            Err(IdentityError::NoIdentity)
        );
        // Nor does an operator certificate name an SAE on an SAE port, not even by its CN.
        assert_eq!(
            SaeIdentityRule::new("urn:qkd:sae:").sae_id(&first(&op)),
            Err(IdentityError::OperatorCertificate)
        );
    }

    #[test]
    fn long_uri_identity_is_refused_without_cn_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DemoPki::create(dir.path()).unwrap();
        // The CN is a valid ID, the URI remainder (65 bytes) is not: no fallback.
        let paths = pki.paths("sae", "long");
        pki.issue(&paths, "long", |p| {
            p.subject_alt_names = vec![SanType::URI(ia5(&format!(
                "urn:qkd:sae:{}",
                "x".repeat(65)
            ))?)];
            Ok(())
        })
        .unwrap();
        let cert = &tls::load_certs(&paths.cert).unwrap()[0];
        assert!(matches!(
            SaeIdentityRule::new("urn:qkd:sae:").sae_id(cert),
            Err(IdentityError::Invalid(_))
        ));
    }

    /// Defect 8: on the peer port only the `urn:qkd:node:` URI SAN names a node. An SAE
    /// certificate from the same CA whose CN equals a neighbour's node ID must not pass as it.
    #[test]
    fn peer_identity_needs_the_node_uri_san() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DemoPki::create(dir.path()).unwrap();
        let sae = pki
            .issue_sae(&SaeId::parse("n2").unwrap(), "urn:qkd:sae:")
            .unwrap();
        let cert = &tls::load_certs(&sae.cert).unwrap()[0];
        assert_eq!(tls::node_id(cert), Err(IdentityError::NoIdentity));

        // A CN-only certificate names no node either.
        let paths = pki.paths("other", "cn-only");
        pki.issue(&paths, "n2", |_| Ok(())).unwrap();
        let cert = &tls::load_certs(&paths.cert).unwrap()[0];
        assert_eq!(tls::node_id(cert), Err(IdentityError::NoIdentity));

        // The node's own certificate still does.
        let node = NodeId::parse("n2").unwrap();
        let n = pki.issue_node(&node, "127.0.0.1".parse().unwrap()).unwrap();
        let cert = &tls::load_certs(&n.cert).unwrap()[0];
        assert_eq!(tls::node_id(cert).unwrap(), node);
    }

    /// Defect 8: on the ETSI port a certificate carrying a `urn:qkd:node:` URI SAN is refused,
    /// even when its CN (or another URI SAN) names a registered SAE; the CN fallback stays for
    /// SAE certificates without any URI SAN.
    #[test]
    fn sae_identity_refuses_node_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DemoPki::create(dir.path()).unwrap();
        let rule = SaeIdentityRule::new("urn:qkd:sae:");
        let n = pki
            .issue_node(
                &NodeId::parse("ENC-A").unwrap(),
                "127.0.0.1".parse().unwrap(),
            )
            .unwrap();
        let cert = &tls::load_certs(&n.cert).unwrap()[0];
        assert_eq!(rule.sae_id(cert), Err(IdentityError::NodeCertificate));

        // Both an SAE URI and a node URI: still a node certificate.
        let paths = pki.paths("other", "both");
        pki.issue(&paths, "ENC-A", |p| {
            p.subject_alt_names = vec![
                SanType::URI(ia5("urn:qkd:sae:ENC-A")?),
                SanType::URI(ia5("urn:qkd:node:ENC-A")?),
            ];
            Ok(())
        })
        .unwrap();
        let cert = &tls::load_certs(&paths.cert).unwrap()[0];
        assert_eq!(rule.sae_id(cert), Err(IdentityError::NodeCertificate));

        // An encryptor that can only carry a CN is still an SAE.
        let paths = pki.paths("other", "cn-only");
        pki.issue(&paths, "ENC-A", |_| Ok(())).unwrap();
        let cert = &tls::load_certs(&paths.cert).unwrap()[0];
        assert_eq!(rule.sae_id(cert).unwrap(), SaeId::parse("ENC-A").unwrap());
    }

    #[test]
    fn load_refuses_a_missing_or_half_ca() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(DemoPki::load(dir.path()), Err(PkiError::NoCa(_))));
        fs::write(dir.path().join("ca.crt"), "x").unwrap();
        assert!(matches!(
            DemoPki::create(dir.path()),
            Err(PkiError::HalfCa { .. })
        ));
    }
}
