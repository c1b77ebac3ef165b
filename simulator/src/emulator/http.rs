//! The HTTPS shell of an emulated device: TLS with client certificates, HTTP/1.1, outages.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use qkd_types::SaeId;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::state::{DevicePair, Outage, Request};

/// URI SAN prefix that names an SAE in a client certificate.
const SAE_URI_PREFIX: &str = "urn:qkd:sae:";

/// Largest request body read, in bytes.
const MAX_BODY: usize = 1 << 20;

/// Serves device `device` (0 or 1) of `pair` on `listener` until `shutdown` completes; then
/// closes every connection at once, as a device that restarts does.
pub async fn run(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    pair: DevicePair,
    device: usize,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // A failed accept (e.g. too many open files) concerns one connection only.
                Err(_) => continue,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        if pair.outage(device) == Outage::Refuse {
            drop(tcp);
            continue;
        }
        let acceptor = acceptor.clone();
        let pair = pair.clone();
        conns.spawn(async move {
            let Ok(Ok(stream)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let caller = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| sae_of(c));
            let service = service_fn(move |req| {
                let pair = pair.clone();
                let caller = caller.clone();
                async move { Ok::<_, Infallible>(answer(&pair, device, caller, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
    conns.shutdown().await;
    Ok(())
}

/// A TLS server configuration for an emulated device: its certificate chain and key (PEM) and
/// the CA its clients' certificates must chain to. TLS 1.2 and 1.3, aws-lc-rs.
pub fn server_tls(
    chain_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: &[u8],
) -> Result<Arc<ServerConfig>, rustls::Error> {
    server_tls_versions(chain_pem, key_pem, client_ca_pem, TlsVersions::Both)
}

/// Which TLS versions an emulated device speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsVersions {
    /// TLS 1.3 and 1.2, as most devices.
    #[default]
    Both,
    /// TLS 1.2 only, as older devices in the field: a client must opt in to TLS 1.2.
    Tls12Only,
    /// TLS 1.3 only.
    Tls13Only,
}

impl TlsVersions {
    fn list(self) -> Vec<&'static rustls::SupportedProtocolVersion> {
        match self {
            TlsVersions::Both => vec![&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersions::Tls12Only => vec![&rustls::version::TLS12],
            TlsVersions::Tls13Only => vec![&rustls::version::TLS13],
        }
    }
}

/// [`server_tls`] speaking only the given TLS versions.
pub fn server_tls_versions(
    chain_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: &[u8],
    versions: TlsVersions,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let bad = |e: rustls_pki_types::pem::Error| rustls::Error::General(e.to_string());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(client_ca_pem) {
        roots.add(ca.map_err(bad)?)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(bad)?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions.list())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

async fn answer(
    pair: &DevicePair,
    device: usize,
    caller: Option<SaeId>,
    req: hyper::Request<Incoming>,
) -> hyper::Response<Full<Bytes>> {
    if pair.outage(device) == Outage::Hang {
        std::future::pending::<()>().await;
    }
    let (parts, body) = req.into_parts();
    // Read the whole body before answering, so that an error keeps the connection usable.
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let r = pair.handle(
        device,
        &Request {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query(),
            body: &body,
            caller,
        },
    );
    let mut resp = hyper::Response::builder()
        .status(r.status)
        .header(hyper::header::CONTENT_TYPE, r.content_type);
    if let Some(allow) = r.allow {
        resp = resp.header(hyper::header::ALLOW, allow);
    }
    resp.body(Full::new(Bytes::from(r.body)))
        .unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new())))
}

/// The SAE ID a client certificate names: the text after [`SAE_URI_PREFIX`] in a URI SAN, else
/// the subject CN.
fn sae_of(cert: &CertificateDer<'_>) -> Option<SaeId> {
    let (_, x509) = X509Certificate::from_der(cert.as_ref()).ok()?;
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name
                && let Some(id) = uri.strip_prefix(SAE_URI_PREFIX)
            {
                return SaeId::parse(id).ok();
            }
        }
    }
    let cn = x509.subject().iter_common_name().next()?.as_str().ok()?;
    SaeId::parse(cn).ok()
}
