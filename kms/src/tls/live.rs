//! TLS credentials that can be replaced while the node serves (certificate and CA rotation).
//!
//! A [`LiveTls`] holds one endpoint's certificate, key and trusted CAs behind a lock. The
//! rustls configurations it builds never hold them directly: their certificate resolver and
//! peer verifier ask the [`LiveTls`] at each **new** handshake, so [`LiveTls::install`] takes
//! effect for the next connection while connections already up continue undisturbed.
//! [`Credentials::load`] checks everything (PEM, key matches certificate, usable CA) before
//! anything is installed, so a bad file changes nothing.
//!
//! Session resumption goes through stores the [`LiveTls`] replaces at each install: a session
//! resumed from before a swap would skip the certificates (the client's and the server's) and
//! the CA check, so after a swap every connection starts with a full handshake once.
//!
//! The verifiers offer no CA hints (an empty `certificate_authorities` list): hints would have
//! to outlive a swap, and a client with one certificate sends it whatever the hints say.

use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, ResolvesClientCert, Resumption,
    Tls12ClientSessionValue, Tls13ClientSessionValue, WebPkiServerVerifier,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions,
    WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, NamedGroup, RootCertStore,
    ServerConfig, SignatureScheme,
};

use super::{TlsError, TlsFiles, config_error, load_certs, load_private_key, load_roots};

/// The certificate, key and trusted CAs of one endpoint, loaded and checked.
#[derive(Debug)]
pub struct Credentials {
    certified: Arc<CertifiedKey>,
    /// The CA file's certificates, for [`Credentials::verify_chain`].
    roots: Arc<RootCertStore>,
    /// The files, for errors.
    files: TlsFiles,
    client_verifier: Arc<dyn ClientCertVerifier>,
    server_verifier: Arc<WebPkiServerVerifier>,
}

impl Credentials {
    /// Reads `files` and checks them: PEM well-formed, the key matches the end-entity
    /// certificate, the CA file yields a verifier. Every error names the file.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let provider = super::provider();
        let roots = Arc::new(load_roots(&files.ca)?);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|source| TlsError::Verifier {
                    path: files.ca.clone(),
                    source,
                })?;
        let server_verifier =
            WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|source| TlsError::Verifier {
                    path: files.ca.clone(),
                    source,
                })?;
        let chain = load_certs(&files.cert_chain)?;
        let key = load_private_key(&files.key)?;
        let certified = CertifiedKey::from_der(chain, key, &provider)
            .map_err(|source| config_error(files, source))?;
        Ok(Self {
            certified: Arc::new(certified),
            roots,
            files: files.clone(),
            client_verifier,
            server_verifier,
        })
    }

    /// The end-entity certificate presented.
    pub fn end_entity(&self) -> &CertificateDer<'static> {
        // Invariant: `load_certs` returns at least one certificate, and `CertifiedKey` keeps
        // the chain as given.
        &self.certified.cert[0]
    }

    /// The certificate chain presented, end entity first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }

    /// The CA file's certificates.
    pub fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }

    /// Checks that the certificate chains (through the intermediates its file holds) to a CA of
    /// the CA file at `now` ([`super::chains_to`]); the error names both files.
    pub fn verify_chain(&self, now: qkd_types::UnixMillis) -> Result<(), TlsError> {
        super::chains_to(self.chain(), &self.roots, now).map_err(|e| TlsError::Untrusted {
            cert: self.files.cert_chain.clone(),
            ca: self.files.ca.clone(),
            problem: super::chain_problem(&e),
        })
    }
}

/// One endpoint's credentials, replaceable while it serves (see the module doc).
#[derive(Debug)]
pub struct LiveTls {
    files: TlsFiles,
    current: RwLock<Arc<Credentials>>,
    /// Sessions clients of this endpoint may resume; replaced at each install.
    server_sessions: RwLock<Arc<ServerSessionMemoryCache>>,
    /// Sessions this endpoint may resume as a client; replaced at each install.
    client_sessions: RwLock<Arc<ClientSessionMemoryCache>>,
}

/// Sessions kept per endpoint and side, as rustls's default configurations keep.
const SESSIONS: usize = 256;

impl LiveTls {
    /// Loads `files` ([`Credentials::load`]).
    pub fn load(files: &TlsFiles) -> Result<Arc<Self>, TlsError> {
        let current = Credentials::load(files)?;
        Ok(Arc::new(Self {
            files: files.clone(),
            current: RwLock::new(Arc::new(current)),
            server_sessions: RwLock::new(ServerSessionMemoryCache::new(SESSIONS)),
            client_sessions: RwLock::new(Arc::new(ClientSessionMemoryCache::new(SESSIONS))),
        }))
    }

    /// The files it was loaded from (and reloads from).
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The credentials new handshakes use now.
    pub fn current(&self) -> Arc<Credentials> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Uses `next` for every handshake from now on; connections already up keep theirs, and no
    /// session from before is resumed.
    pub fn install(&self, next: Credentials) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        *self
            .server_sessions
            .write()
            .unwrap_or_else(|p| p.into_inner()) = ServerSessionMemoryCache::new(SESSIONS);
        *self
            .client_sessions
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(ClientSessionMemoryCache::new(SESSIONS));
    }

    fn server_sessions(&self) -> Arc<ServerSessionMemoryCache> {
        self.server_sessions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn client_sessions(&self) -> Arc<ClientSessionMemoryCache> {
        self.client_sessions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A server configuration requiring a client certificate that chains to the current CAs,
    /// presenting the current certificate.
    pub fn server_config(
        self: &Arc<Self>,
        provider: Arc<CryptoProvider>,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<ServerConfig, TlsError> {
        let mut cfg = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(TlsError::Provider)?
            .with_client_cert_verifier(Arc::new(Live(self.clone())))
            .with_cert_resolver(Arc::new(Live(self.clone())));
        cfg.session_storage = Arc::new(Live(self.clone()));
        Ok(cfg)
    }

    /// A client configuration presenting the current certificate and trusting servers that
    /// chain to the current CAs.
    pub fn client_config(
        self: &Arc<Self>,
        provider: Arc<CryptoProvider>,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<ClientConfig, TlsError> {
        let mut cfg = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(TlsError::Provider)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Live(self.clone())))
            .with_client_cert_resolver(Arc::new(Live(self.clone())));
        cfg.resumption = Resumption::store(Arc::new(Live(self.clone())));
        Ok(cfg)
    }
}

/// The resolver and verifier of configurations built by a [`LiveTls`]: each call asks it for
/// the credentials in force.
#[derive(Debug)]
struct Live(Arc<LiveTls>);

impl ResolvesServerCert for Live {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified.clone())
    }
}

impl ResolvesClientCert for Live {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ClientCertVerifier for Live {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .current()
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

impl ServerCertVerifier for Live {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.current().server_verifier.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

impl StoresServerSessions for Live {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.0.server_sessions().put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.server_sessions().get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.server_sessions().take(key)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

impl ClientSessionStore for Live {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.0.client_sessions().set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.0.client_sessions().kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.0
            .client_sessions()
            .set_tls12_session(server_name, value);
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.0.client_sessions().tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.0.client_sessions().remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        self.0
            .client_sessions()
            .insert_tls13_ticket(server_name, value);
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.0.client_sessions().take_tls13_ticket(server_name)
    }
}

// Handshake signatures are checked with the provider's algorithms, which are what the WebPKI
// verifiers use: they do not depend on the credentials, so no swap can change them.

fn algorithms() -> rustls::crypto::WebPkiSupportedAlgorithms {
    super::provider().signature_verification_algorithms
}

fn tls12(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms())
}

fn tls13(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use qkd_types::{NodeId, SaeId};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;
    use crate::pki::{DemoPki, IssuedCert};

    /// A handshake over an in-memory pipe: the certificate the server presented, or the
    /// server's refusal.
    async fn handshake(
        server: &Arc<ServerConfig>,
        client: ClientConfig,
    ) -> Result<Vec<u8>, std::io::Error> {
        Ok(connect(server, client).await?.0)
    }

    /// [`handshake`], and whether the session was resumed.
    async fn connect(
        server: &Arc<ServerConfig>,
        client: ClientConfig,
    ) -> Result<(Vec<u8>, bool), std::io::Error> {
        let (c, s) = tokio::io::duplex(1 << 16);
        let accept = TlsAcceptor::from(server.clone()).accept(s);
        let connect = TlsConnector::from(Arc::new(client))
            .connect(ServerName::try_from("127.0.0.1").unwrap(), c);
        let (served, client) = tokio::join!(accept, connect);
        // One byte from the server: the client reads the session tickets sent before it, so a
        // later connection with the same configuration may resume.
        let (mut served, mut client) = (served?, client?);
        served.write_all(b"x").await?;
        served.flush().await?;
        let mut byte = [0u8; 1];
        client.read_exact(&mut byte).await?;
        let conn = client.get_ref().1;
        Ok((
            conn.peer_certificates().unwrap()[0].to_vec(),
            conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
        ))
    }

    fn copy(issued: &IssuedCert, to: &TlsFiles) {
        std::fs::copy(&issued.cert, &to.cert_chain).unwrap();
        std::fs::copy(&issued.key, &to.key).unwrap();
    }

    fn der(path: &Path) -> Vec<u8> {
        load_certs(path).unwrap()[0].to_vec()
    }

    /// A swap changes the certificate new handshakes present, and a CA appended to the CA file
    /// is trusted from the swap on (a CA roll-over without a restart); a bad file is refused
    /// before anything changes.
    #[tokio::test]
    async fn a_swap_rotates_the_certificate_and_rolls_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (
            DemoPki::create(&dir.path().join("old")).unwrap(),
            DemoPki::create(&dir.path().join("new")).unwrap(),
        );
        let node = NodeId::parse("A").unwrap();
        let sae = SaeId::parse("S").unwrap();
        let ip = [127, 0, 0, 1].into();
        let (a_old, a_new) = (
            old.issue_node(&node, ip).unwrap(),
            new.issue_node(&node, ip).unwrap(),
        );
        let (s_old, s_new) = (
            old.issue_sae(&sae, "urn:qkd:sae:").unwrap(),
            new.issue_sae(&sae, "urn:qkd:sae:").unwrap(),
        );
        let both = dir.path().join("both.pem");
        let mut pem = std::fs::read(old.ca_cert()).unwrap();
        pem.extend(std::fs::read(new.ca_cert()).unwrap());
        std::fs::write(&both, pem).unwrap();
        let files = TlsFiles {
            cert_chain: dir.path().join("server.crt"),
            key: dir.path().join("server.key"),
            ca: dir.path().join("ca.pem"),
        };
        copy(&a_old, &files);
        std::fs::copy(old.ca_cert(), &files.ca).unwrap();
        let live = LiveTls::load(&files).unwrap();
        let server = Arc::new(live.server().unwrap());
        let client = |s: &IssuedCert| super::super::client_config(&s.tls_files(&both)).unwrap();

        assert_eq!(
            handshake(&server, client(&s_old)).await.unwrap(),
            der(&a_old.cert)
        );
        assert!(
            handshake(&server, client(&s_new)).await.is_err(),
            "a client of the new CA before the roll-over"
        );

        // A key that does not fit the certificate: refused, naming both files.
        std::fs::copy(&a_new.cert, &files.cert_chain).unwrap();
        let err = Credentials::load(&files).unwrap_err().to_string();
        assert!(
            err.contains("server.crt") && err.contains("server.key"),
            "{err}"
        );

        copy(&a_new, &files);
        std::fs::copy(&both, &files.ca).unwrap();
        live.install(Credentials::load(&files).unwrap());
        assert_eq!(
            handshake(&server, client(&s_new)).await.unwrap(),
            der(&a_new.cert)
        );
        assert_eq!(
            handshake(&server, client(&s_old)).await.unwrap(),
            der(&a_new.cert),
            "the old CA is still trusted while it is in the CA file"
        );
    }

    /// A client that resumed its session across a swap would skip both certificates: after a
    /// swap, the same client configuration gets a full handshake and the new certificate; and a
    /// certificate of another CA fails the chain check, naming both files.
    #[tokio::test]
    async fn no_session_is_resumed_across_a_swap_and_the_chain_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let [pki, next, other] =
            ["pki", "next", "other"].map(|d| DemoPki::create(&dir.path().join(d)).unwrap());
        let node = NodeId::parse("A").unwrap();
        let ip = [127, 0, 0, 1].into();
        let (a1, a2, stranger) = (
            pki.issue_node(&node, ip).unwrap(),
            next.issue_node(&node, ip).unwrap(),
            other.issue_node(&node, ip).unwrap(),
        );
        let sae = pki
            .issue_sae(&SaeId::parse("S").unwrap(), "urn:qkd:sae:")
            .unwrap();
        // Both CAs trusted on both sides (a roll-over under way).
        let both = dir.path().join("both.pem");
        let mut pem = std::fs::read(pki.ca_cert()).unwrap();
        pem.extend(std::fs::read(next.ca_cert()).unwrap());
        std::fs::write(&both, pem).unwrap();
        let files = TlsFiles {
            cert_chain: dir.path().join("server.crt"),
            key: dir.path().join("server.key"),
            ca: both.clone(),
        };
        copy(&a1, &files);
        let live = LiveTls::load(&files).unwrap();
        live.current().verify_chain(1_800_000_000_000).unwrap();
        let server = Arc::new(live.server().unwrap());
        let client = super::super::client_config(&sae.tls_files(&both)).unwrap();
        assert_eq!(
            handshake(&server, client.clone()).await.unwrap(),
            der(&a1.cert)
        );
        // The second connection resumes (same configuration, same session stores).
        assert_eq!(
            connect(&server, client.clone()).await.unwrap(),
            (der(&a1.cert), true)
        );
        copy(&a2, &files);
        live.install(Credentials::load(&files).unwrap());
        assert_eq!(
            connect(&server, client.clone()).await.unwrap(),
            (der(&a2.cert), false),
            "a session from before the swap was resumed"
        );

        copy(&stranger, &files);
        let err = Credentials::load(&files)
            .unwrap()
            .verify_chain(1_800_000_000_000)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("server.crt")
                && err.contains("both.pem")
                && err.contains("does not chain to a CA in")
                && err.contains("another CA of the same name"),
            "{err}"
        );
    }
}
