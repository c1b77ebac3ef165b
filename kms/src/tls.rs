//! TLS for the KMS: PEM files to rustls configurations, and peer identities from certificates.
//!
//! Every configuration uses the aws-lc-rs provider with TLS 1.2 and 1.3; its default key-exchange
//! order prefers the hybrid post-quantum group X25519MLKEM768. Servers always demand a client
//! certificate that chains to the configured CA (rustls's `WebPkiClientVerifier`): ETSI GS QKD 014 §4
//! requires the KME to derive the caller's SAE ID from it, and node-to-node gRPC uses the same rule
//! for node IDs.
//!
//! An identity is read from the end-entity certificate only. A node is named by its
//! `urn:qkd:node:<id>` URI SAN and nothing else: a certificate without one names no node, whatever
//! its CN says (an SAE certificate from the same CA must never pass as a neighbour). An SAE is
//! named by the text after a configured prefix in a URI SAN (`urn:qkd:sae:ENC-A` → `ENC-A`), or by
//! the subject CN when no URI SAN carries the prefix (encryptors that can only carry a CN); a
//! certificate with a `urn:qkd:node:` URI SAN is a node's and names no SAE. This module reads
//! files but never logs or returns private-key bytes.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use qkd_types::{IdError, NodeId, OperatorId, SaeId};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

mod live;
pub use live::{Credentials, LiveTls};

/// URI SAN prefix of node certificates: `urn:qkd:node:<node_id>`.
pub const NODE_URI_PREFIX: &str = "urn:qkd:node:";
/// URI SAN prefix of management certificates: `urn:qkd:operator:<name>`.
pub const OPERATOR_URI_PREFIX: &str = "urn:qkd:operator:";

/// The PEM files of one TLS endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, end entity first.
    pub cert_chain: PathBuf,
    /// Private key of the end-entity certificate (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates that peers' certificates must chain to.
    pub ca: PathBuf,
}

/// Why TLS material could not be loaded. Caused by the operator (files, configuration) unless
/// stated otherwise; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Operator: the file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Operator: the file is not well-formed PEM (a section without its end line, bad base64).
    #[error("{path} is not valid PEM: {source}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser objected to.
        source: pem::Error,
    },
    /// Operator: the file holds no PEM certificate.
    #[error("{path} holds no PEM certificate")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// Operator: the file holds no PEM private key.
    #[error("{path} holds no PEM private key")]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// Operator: a CA certificate is not acceptable as a trust anchor.
    #[error("{path}: unusable CA certificate: {source}")]
    BadCa {
        /// The file.
        path: PathBuf,
        /// What rustls objected to.
        source: rustls::Error,
    },
    /// Operator: the client verifier cannot be built from the CA file (e.g. no usable root).
    #[error("{path}: cannot verify clients with these CA certificates: {source}")]
    Verifier {
        /// The CA file.
        path: PathBuf,
        /// What rustls objected to.
        source: rustls::server::VerifierBuilderError,
    },
    /// Operator: the certificate and key do not form a usable pair (mismatch, unsupported type).
    #[error("{cert} with key {key}: {source}")]
    Config {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls objected to.
        source: rustls::Error,
    },
    /// Operator: the certificate does not chain to a CA of the CA file (another CA issued it, a
    /// CA roll-over that has not added the new CA yet, an expired CA).
    #[error("{cert} does not chain to a CA in {ca}: {problem}")]
    Untrusted {
        /// The certificate file.
        cert: PathBuf,
        /// The CA file.
        ca: PathBuf,
        /// What the verification found.
        problem: String,
    },
    /// Bug: the provider rejected TLS 1.2 + 1.3, which aws-lc-rs always supports.
    #[error("TLS provider setup: {0}")]
    Provider(rustls::Error),
}

/// The crypto provider of every configuration: aws-lc-rs, default cipher suites and key-exchange
/// groups (X25519MLKEM768 first).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A server configuration that requires a client certificate chaining to `files.ca`.
///
/// No ALPN protocol is set: the ETSI 014 server speaks HTTP/1.1 only.
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    LiveTls::load(files)?.server()
}

/// The server side of the gRPC key delivery port: the ETSI 014 port's configuration (mutual TLS
/// 1.2 and 1.3, X25519MLKEM768 preferred) with ALPN `h2`, which gRPC requires.
pub fn grpc_server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    LiveTls::load(files)?.grpc_server()
}

/// A client configuration that presents `files.cert_chain` and trusts servers chaining to
/// `files.ca` (tests and tools).
pub fn client_config(files: &TlsFiles) -> Result<ClientConfig, TlsError> {
    LiveTls::load(files)?.client()
}

/// The provider of node-to-node channels: TLS 1.3 with the hybrid X25519MLKEM768 key exchange
/// only, so that a recorded peer channel stays confidential against a quantum adversary.
pub fn hybrid_only_provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        kx_groups: vec![rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768],
        ..rustls::crypto::aws_lc_rs::default_provider()
    })
}

/// The server side of the node-to-node gRPC channel: mutual TLS 1.3, X25519MLKEM768 required,
/// ALPN `h2`.
pub fn peer_server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    LiveTls::load(files)?.peer_server()
}

/// The client side of the node-to-node gRPC channel: the same requirements as
/// [`peer_server_config`].
pub fn peer_client_config(files: &TlsFiles) -> Result<ClientConfig, TlsError> {
    LiveTls::load(files)?.peer_client()
}

const BOTH_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The configurations of each endpoint, over credentials that can be replaced while they serve
/// ([`LiveTls::install`]); the functions above are these over credentials loaded once.
impl LiveTls {
    /// [`server_config`]: the ETSI 014 (and SKIP, control) port.
    pub fn server(self: &Arc<Self>) -> Result<ServerConfig, TlsError> {
        self.server_config(provider(), BOTH_VERSIONS)
    }

    /// [`grpc_server_config`].
    pub fn grpc_server(self: &Arc<Self>) -> Result<ServerConfig, TlsError> {
        let mut cfg = self.server()?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(cfg)
    }

    /// [`client_config`].
    pub fn client(self: &Arc<Self>) -> Result<ClientConfig, TlsError> {
        self.client_config(provider(), BOTH_VERSIONS)
    }

    /// [`peer_server_config`].
    pub fn peer_server(self: &Arc<Self>) -> Result<ServerConfig, TlsError> {
        let mut cfg = self.server_config(hybrid_only_provider(), &[&rustls::version::TLS13])?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(cfg)
    }

    /// [`peer_client_config`].
    pub fn peer_client(self: &Arc<Self>) -> Result<ClientConfig, TlsError> {
        let mut cfg = self.client_config(hybrid_only_provider(), &[&rustls::version::TLS13])?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(cfg)
    }
}

/// Checks that `chain` (end entity first, then the intermediates the file holds) chains to a CA
/// in `roots` at `now`, as a server or as a client certificate (a node's certificate serves
/// both: either purpose suffices here, the handshakes check the one they need).
pub fn chains_to(
    chain: &[CertificateDer<'_>],
    roots: &Arc<RootCertStore>,
    now: qkd_types::UnixMillis,
) -> Result<(), rustls::Error> {
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or(rustls::Error::NoCertificatesPresented)?;
    let now = rustls_pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_millis(now));
    let algorithms = provider().signature_verification_algorithms;
    let parsed = rustls::server::ParsedCertificate::try_from(leaf)?;
    let as_server = rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        roots,
        intermediates,
        now,
        algorithms.all,
    );
    if as_server.is_ok() {
        return Ok(());
    }
    let client = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    match client.verify_client_cert(leaf, intermediates, now) {
        Ok(_) => Ok(()),
        Err(_) => as_server,
    }
}

/// A chain failure in words an operator acts on.
pub fn chain_problem(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
            "no CA in the file issued it (nor the intermediates in the certificate file)".into()
        }
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the certificate or a CA of its chain has expired".into()
        }
        rustls::Error::InvalidCertificate(C::BadSignature) => {
            "a signature in the chain does not verify (another CA of the same name issued it?)"
                .into()
        }
        other => other.to_string(),
    }
}

/// The subject name of a certificate, as text (`CN=node-A`).
pub fn subject(cert: &CertificateDer<'_>) -> Result<String, IdentityError> {
    Ok(parse(cert)?.subject().to_string())
}

/// The issuer name of a certificate, as text.
pub fn issuer(cert: &CertificateDer<'_>) -> Result<String, IdentityError> {
    Ok(parse(cert)?.issuer().to_string())
}

/// The DNS names and IP addresses a certificate's SAN extension names (what a TLS client checks
/// the name it dials against), as text.
pub fn dns_and_ip_names(cert: &CertificateDer<'_>) -> Result<Vec<SanName>, IdentityError> {
    let cert = parse(cert)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| IdentityError::NotX509)?;
    let mut out = Vec::new();
    for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
        match name {
            GeneralName::DNSName(d) => out.push(SanName::Dns((*d).to_owned())),
            GeneralName::IPAddress(b) => match b.len() {
                4 => out.push(SanName::Ip(std::net::IpAddr::from(
                    <[u8; 4]>::try_from(*b).map_err(|_| IdentityError::NotX509)?,
                ))),
                16 => out.push(SanName::Ip(std::net::IpAddr::from(
                    <[u8; 16]>::try_from(*b).map_err(|_| IdentityError::NotX509)?,
                ))),
                _ => return Err(IdentityError::NotX509),
            },
            _ => {}
        }
    }
    Ok(out)
}

/// A DNS name or IP address of a certificate's SAN extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SanName {
    /// A `dNSName` (possibly a wildcard, `*.example`).
    Dns(String),
    /// An `iPAddress`.
    Ip(std::net::IpAddr),
}

impl std::fmt::Display for SanName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SanName::Dns(d) => write!(f, "DNS {d}"),
            SanName::Ip(ip) => write!(f, "IP {ip}"),
        }
    }
}

fn config_error(files: &TlsFiles, source: rustls::Error) -> TlsError {
    TlsError::Config {
        cert: files.cert_chain.clone(),
        key: files.key.clone(),
        source,
    }
}

/// Every PEM certificate in `path`, in file order; at least one.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| pem_error(path, source))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first PEM private key in `path` (PKCS#8, PKCS#1 or SEC1).
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = zeroize::Zeroizing::new(read(path)?);
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|source| match source {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: path.to_owned(),
        },
        source => pem_error(path, source),
    })
}

/// The CA certificates in `path` as a root store.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|source| TlsError::BadCa {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(roots)
}

/// Why no identity could be read from a certificate. Caused by the peer's certificate (and so by
/// whoever issued it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The peer sent no certificate.
    #[error("no client certificate")]
    NoCertificate,
    /// The certificate is not parsable X.509.
    #[error("certificate is not valid X.509")]
    NotX509,
    /// No URI SAN has the prefix and there is no single CN.
    #[error(
        "certificate has no URI SAN with the expected prefix (and, where a CN is accepted, no single common name)"
    )]
    NoIdentity,
    /// An SAE-facing port got a node certificate (a `urn:qkd:node:` URI SAN).
    #[error("certificate is a node certificate (urn:qkd:node: URI SAN)")]
    NodeCertificate,
    /// An SAE-facing port got a management certificate (a `urn:qkd:operator:` URI SAN).
    #[error("certificate is a management certificate (urn:qkd:operator: URI SAN)")]
    OperatorCertificate,
    /// The control port got an SAE certificate (a URI SAN with the SAE prefix).
    #[error("certificate is an SAE certificate, not a management certificate")]
    SaeCertificate,
    /// Several URI SANs with the prefix name different identities.
    #[error("certificate names several identities")]
    Ambiguous,
    /// The identity text is not a valid identifier (empty, over 64 bytes, bad characters).
    #[error("certificate identity is not a valid ID: {0}")]
    Invalid(IdError),
}

/// How the ETSI 014 server reads an SAE ID from a client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaeIdentityRule {
    /// The URI SAN prefix before the SAE ID, e.g. `urn:qkd:sae:`.
    pub uri_prefix: String,
}

impl SaeIdentityRule {
    /// A rule for URI SANs starting with `uri_prefix`.
    pub fn new(uri_prefix: impl Into<String>) -> Self {
        Self {
            uri_prefix: uri_prefix.into(),
        }
    }

    /// The SAE ID of the end-entity certificate of a verified chain. A node certificate (one
    /// with a `urn:qkd:node:` URI SAN) or a management certificate (`urn:qkd:operator:`) is
    /// refused, whatever else it carries.
    pub fn sae_id(&self, end_entity: &CertificateDer<'_>) -> Result<SaeId, IdentityError> {
        let cert = parse(end_entity)?;
        if uri_identity(&cert, NODE_URI_PREFIX)?.is_some() {
            return Err(IdentityError::NodeCertificate);
        }
        if uri_identity(&cert, OPERATOR_URI_PREFIX)?.is_some() {
            return Err(IdentityError::OperatorCertificate);
        }
        let text = match uri_identity(&cert, &self.uri_prefix)? {
            Some(text) => text.to_owned(),
            None => common_name(&cert)?,
        };
        SaeId::parse(&text).map_err(IdentityError::Invalid)
    }
}

/// The node ID of a verified peer node certificate: its URI SAN `urn:qkd:node:<id>`, never the
/// CN. A certificate without that SAN names no node.
pub fn node_id(end_entity: &CertificateDer<'_>) -> Result<NodeId, IdentityError> {
    let cert = parse(end_entity)?;
    let text = uri_identity(&cert, NODE_URI_PREFIX)?.ok_or(IdentityError::NoIdentity)?;
    NodeId::parse(text).map_err(IdentityError::Invalid)
}

/// The operator named by a verified management certificate: its URI SAN
/// `urn:qkd:operator:<name>`, never the CN. A node certificate (`urn:qkd:node:` URI SAN) or an
/// SAE certificate (a URI SAN with `sae_uri_prefix`) is refused even if it also carries an
/// operator SAN: one certificate never holds two roles.
pub fn operator_id(
    end_entity: &CertificateDer<'_>,
    sae_uri_prefix: &str,
) -> Result<OperatorId, IdentityError> {
    let cert = parse(end_entity)?;
    if uri_identity(&cert, NODE_URI_PREFIX)?.is_some() {
        return Err(IdentityError::NodeCertificate);
    }
    if uri_identity(&cert, sae_uri_prefix)?.is_some() {
        return Err(IdentityError::SaeCertificate);
    }
    let text = uri_identity(&cert, OPERATOR_URI_PREFIX)?.ok_or(IdentityError::NoIdentity)?;
    OperatorId::parse(text).map_err(IdentityError::Invalid)
}

/// The end of a certificate's validity (`notAfter`) in Unix milliseconds, for the node's
/// certificate-expiry alarm. `0` for a date before 1970.
pub fn not_after(cert: &CertificateDer<'_>) -> Result<qkd_types::UnixMillis, IdentityError> {
    let cert = parse(cert)?;
    let secs = cert.validity().not_after.timestamp();
    Ok(u64::try_from(secs).unwrap_or(0).saturating_mul(1000))
}

/// The start of a certificate's validity (`notBefore`) in Unix milliseconds; `0` for a date
/// before 1970.
pub fn not_before(cert: &CertificateDer<'_>) -> Result<qkd_types::UnixMillis, IdentityError> {
    let cert = parse(cert)?;
    let secs = cert.validity().not_before.timestamp();
    Ok(u64::try_from(secs).unwrap_or(0).saturating_mul(1000))
}

fn parse<'a>(end_entity: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, IdentityError> {
    X509Certificate::from_der(end_entity)
        .map(|(_, cert)| cert)
        .map_err(|_| IdentityError::NotX509)
}

/// The rest of the URI SAN that starts with `uri_prefix`, if any.
///
/// A URI SAN with the prefix is authoritative: if its remainder is not a valid ID, the caller
/// must not fall back to the CN (the CA stated an identity; silently picking another would be
/// wrong). Several prefixed SANs must agree.
fn uri_identity<'a>(
    cert: &'a X509Certificate<'_>,
    uri_prefix: &str,
) -> Result<Option<&'a str>, IdentityError> {
    let mut found: Option<&str> = None;
    // A SAN extension that does not parse is no identity at all (never a CN fallback).
    let san = cert
        .subject_alternative_name()
        .map_err(|_| IdentityError::NotX509)?;
    if let Some(san) = san {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name
                && let Some(rest) = uri.strip_prefix(uri_prefix)
            {
                match found {
                    Some(prev) if prev != rest => return Err(IdentityError::Ambiguous),
                    _ => found = Some(rest),
                }
            }
        }
    }
    Ok(found)
}

/// The subject's single common name.
fn common_name(cert: &X509Certificate<'_>) -> Result<String, IdentityError> {
    let mut cns = cert.subject().iter_common_name();
    match (cns.next(), cns.next()) {
        (Some(cn), None) => cn
            .as_str()
            .map(str::to_owned)
            .map_err(|_| IdentityError::NoIdentity),
        _ => Err(IdentityError::NoIdentity),
    }
}

fn pem_error(path: &Path, source: pem::Error) -> TlsError {
    TlsError::Pem {
        path: path.to_owned(),
        source,
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}
