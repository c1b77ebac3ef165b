//! HTTP plumbing of the tester: one HTTPS client per SAE and raw TLS handshakes for the
//! transport cases. Answers are kept as seen (status, media type, bytes), never interpreted
//! here.
//!
//! An answer's body may be a key container, so it lives in a [`Secret`] (zeroized on drop,
//! `Debug` prints a placeholder); [`Answer::json`] hands out JSON with every key's text wiped
//! and replaced, and [`Answer::keys`] moves each key's text into its own [`Secret`] without
//! leaving a plain copy.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use qkd_types::Secret;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use zeroize::{Zeroize, Zeroizing};

use crate::config::Sae;

/// Characters escaped in an SAE ID path segment: all but RFC 3986 unreserved ones.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A request the tester could not make. Caused by the configuration or the network.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A PEM file is unusable.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// TLS or HTTP client setup failed.
    #[error("client setup: {0}")]
    Setup(String),
}

/// Stands in a key's place in [`Answer::json`].
pub const KEY_PLACEHOLDER: &str = "<KEY>";

/// One answer as seen on the wire.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status; 0 when no HTTP answer came (the error is in `transport`).
    pub status: u16,
    /// The Content-Type header.
    pub content_type: Option<String>,
    /// The body: possibly a key container, hence a secret.
    pub body: Secret,
    /// The transport error, when there was no answer.
    pub transport: Option<String>,
}

impl Clone for Answer {
    fn clone(&self) -> Self {
        Self {
            status: self.status,
            content_type: self.content_type.clone(),
            // Error answers are kept for the cases across the run (they must hold no key; the
            // tester checks exactly that).
            body: self.body.duplicate(),
            transport: self.transport.clone(),
        }
    }
}

/// One key of a key container, as the KME sent it.
#[derive(Debug)]
pub struct SeenKey {
    /// The `key_ID` member as text (empty when absent or not a string; IDs are not secret).
    pub id: String,
    /// The `key` member's base64 text, when it is a string.
    pub text: Option<Secret>,
}

impl SeenKey {
    /// An explicit copy (keys are not `Clone`, so that every copy shows in review).
    pub fn duplicate(&self) -> Self {
        Self {
            id: self.id.clone(),
            text: self.text.as_ref().map(Secret::duplicate),
        }
    }

    /// The key's bytes, if its text is standard padded base64.
    pub fn decode(&self) -> Option<Secret> {
        use base64::Engine as _;
        let text = self.text.as_ref()?;
        let mut bytes = Zeroizing::new(Vec::with_capacity(text.len() / 4 * 3));
        // Exposed to decode it into another secret.
        base64::engine::general_purpose::STANDARD
            .decode_vec(text.expose(), &mut bytes)
            .ok()?;
        Some(Secret::new(bytes))
    }
}

impl Answer {
    /// The body as JSON, if it is, with the text of every key in a key container wiped and
    /// replaced by [`KEY_PLACEHOLDER`].
    pub fn json(&self) -> Option<Value> {
        let mut v = self.parse()?;
        for key in key_members(&mut v) {
            key.zeroize();
            *key = KEY_PLACEHOLDER.into();
        }
        Some(v)
    }

    /// The keys of a key container (member `keys`, or `Keys` as some KMEs spell it), each text
    /// moved into a [`Secret`]; `None` when the body is no key container. The second value says
    /// whether the member was spelled `Keys`.
    pub fn keys(&self) -> Option<(Vec<SeenKey>, bool)> {
        let mut v = self.parse()?;
        let capital = v.get("keys").is_none() && v.get("Keys").is_some();
        let list = v
            .get_mut(if capital { "Keys" } else { "keys" })?
            .as_array_mut()?;
        let keys = list
            .iter_mut()
            .map(|k| SeenKey {
                id: k
                    .get("key_ID")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                text: match k.get_mut("key") {
                    // serde_json allocates each string at its exact size, so the bytes move into
                    // the secret without a copy.
                    Some(Value::String(t)) => {
                        Some(Secret::new(Zeroizing::new(std::mem::take(t).into_bytes())))
                    }
                    _ => None,
                },
            })
            .collect();
        // Whatever key text is left (none: every string was taken) is wiped with `v`.
        for key in key_members(&mut v) {
            key.zeroize();
        }
        Some((keys, capital))
    }

    /// Whether the body contains `needle` (a key's text), for the leak checks.
    pub fn contains(&self, needle: &Secret) -> bool {
        // Exposed to look for the key in an error body; nothing is copied.
        let (hay, needle) = (self.body.expose(), needle.expose());
        !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
    }

    fn parse(&self) -> Option<Value> {
        // Exposed to parse it; key texts are taken out of the result by the callers.
        serde_json::from_slice(self.body.expose()).ok()
    }

    /// A one-line description for reports: status, media type and a bounded, key-free summary.
    pub fn describe(&self) -> String {
        if let Some(t) = &self.transport {
            return format!("no answer: {t}");
        }
        let body = match self.json() {
            Some(v) if is_key_container(&v) => {
                let n = v
                    .get("keys")
                    .or_else(|| v.get("Keys"))
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                format!("key container with {n} keys")
            }
            Some(v) => {
                let s = v.to_string();
                s.chars().take(160).collect()
            }
            None if self.body.is_empty() => "empty body".into(),
            None => format!("{} bytes, not JSON", self.body.len()),
        };
        format!(
            "{} {} {}",
            self.status,
            self.content_type.as_deref().unwrap_or("-"),
            body
        )
    }
}

/// An SAE's connection to its KME.
#[derive(Debug, Clone)]
pub struct SaeClient {
    /// The SAE ID.
    pub id: String,
    http: reqwest::Client,
    /// `<url>/api/v1/keys/`.
    base: String,
    sae: Sae,
    ca: std::path::PathBuf,
    /// `host:port` of the KME.
    pub authority: (String, u16),
}

impl SaeClient {
    /// A client presenting the SAE's certificate and trusting `ca`.
    pub fn new(sae: &Sae, ca: &Path) -> Result<Self, ClientError> {
        let tls = tls_config(ca, Some((&sae.cert, &sae.key)), None)?;
        Self::with_tls(sae, ca, tls)
    }

    /// A client with a given TLS configuration (for the transport cases).
    pub fn with_tls(sae: &Sae, ca: &Path, tls: Arc<ClientConfig>) -> Result<Self, ClientError> {
        let url = reqwest::Url::parse(&sae.url)
            .map_err(|e| ClientError::Setup(format!("{}: {e}", sae.url)))?;
        let host = url
            .host_str()
            .unwrap_or("")
            .trim_matches(['[', ']'])
            .to_owned();
        let port = url.port_or_known_default().unwrap_or(443);
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured((*tls).clone())
            .http1_only()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        Ok(Self {
            id: sae.sae_id.clone(),
            http,
            base: format!("{}/api/v1/keys/", sae.url.trim_end_matches('/')),
            sae: sae.clone(),
            ca: ca.to_owned(),
            authority: (host, port),
        })
    }

    /// The URL of `path` under `/api/v1/keys/`, with `sae` percent-encoded as its first segment.
    pub fn url(&self, sae: &str, rest: &str) -> String {
        format!("{}{}{rest}", self.base, utf8_percent_encode(sae, SEGMENT))
    }

    /// The URL of an arbitrary path on the KME (for 404 cases).
    pub fn raw_url(&self, path: &str) -> String {
        let root = self.base.trim_end_matches("/api/v1/keys/");
        format!("{root}{path}")
    }

    /// Sends a request and records the answer.
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        content_type: Option<&str>,
        body: &str,
    ) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::GET);
        let mut req = self.http.request(method, url);
        if let Some(ct) = content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, ct);
        }
        if !body.is_empty() {
            req = req.body(body.to_owned());
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let content_type = resp
                    .headers()
                    .get(reqwest::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body = match resp.bytes().await {
                    Ok(bytes) => {
                        let copy = Secret::copy_from(&bytes);
                        // The HTTP stack's buffer: overwritten when this is its only owner.
                        if let Ok(mut owned) = bytes.try_into_mut() {
                            owned.as_mut().fill(0);
                        }
                        copy
                    }
                    Err(_) => Secret::zeroed(0),
                };
                Answer {
                    status,
                    content_type,
                    body,
                    transport: None,
                }
            }
            Err(e) => Answer {
                status: 0,
                content_type: None,
                body: Secret::zeroed(0),
                transport: Some(error_chain(&e)),
            },
        }
    }

    /// A TLS handshake offering only `version`, with the SAE's certificate; returns the
    /// negotiated version or why the handshake failed.
    pub async fn handshake(
        &self,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> Result<String, String> {
        let config = tls_config(
            &self.ca,
            Some((&self.sae.cert, &self.sae.key)),
            Some(&[version]),
        )
        .map_err(|e| e.to_string())?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let (host, port) = &self.authority;
        let tcp = tokio::net::TcpStream::connect((host.as_str(), *port))
            .await
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
        let tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
            .await
            .map_err(|_| "handshake timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        Ok(match tls.get_ref().1.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".into(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2".into(),
            other => format!("{other:?}"),
        })
    }
}

/// A TLS client configuration trusting `ca`, with a client certificate when given (TLS 1.2
/// and 1.3 unless `versions` says otherwise).
pub fn tls_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    versions: Option<&[&'static rustls::SupportedProtocolVersion]>,
) -> Result<Arc<ClientConfig>, ClientError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let pem = |p: &Path, e: String| ClientError::Pem {
        path: p.display().to_string(),
        message: e,
    };
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| pem(ca, e.to_string()))? {
        roots
            .add(c.map_err(|e| pem(ca, e.to_string()))?)
            .map_err(|e| pem(ca, e.to_string()))?;
    }
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(
            versions.unwrap_or(&[&rustls::version::TLS13, &rustls::version::TLS12]),
        )
        .map_err(|e| ClientError::Setup(e.to_string()))?
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| pem(cert, e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| pem(cert, e.to_string()))?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem(key, e.to_string()))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| ClientError::Setup(e.to_string()))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Whether a JSON value is a key container (`keys`, or `Keys` as some KMEs spell it).
pub fn is_key_container(v: &Value) -> bool {
    v.get("keys").is_some() || v.get("Keys").is_some()
}

/// The `key` strings of a key container.
fn key_members(v: &mut Value) -> Vec<&mut String> {
    let mut out = Vec::new();
    if let Value::Object(o) = v {
        for (name, list) in o.iter_mut() {
            if name != "keys" && name != "Keys" {
                continue;
            }
            for k in list.as_array_mut().into_iter().flatten() {
                if let Some(Value::String(t)) = k.get_mut("key") {
                    out.push(t);
                }
            }
        }
    }
    out
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn answer(body: &str) -> Answer {
        Answer {
            status: 200,
            content_type: Some("application/json".into()),
            body: Secret::copy_from(body.as_bytes()),
            transport: None,
        }
    }

    #[test]
    fn key_text_leaves_the_body_only_into_secrets() {
        let a = answer(
            r#"{"Keys":[{"key_ID":"0b9f2c9e-67a4-4a2f-9a4e-6f2d3b1c7a10","key":"c2VjcmV0IGtleQ=="},{"key_ID":"x","key":7}]}"#,
        );
        // JSON for the cases: the key text is gone.
        let v = a.json().unwrap();
        assert!(!v.to_string().contains("c2VjcmV0"));
        assert_eq!(v["Keys"][0]["key"], KEY_PLACEHOLDER);
        // Keys: each text in a Secret, compared in constant time, decoded on demand.
        let (keys, capital) = a.keys().unwrap();
        assert!(capital);
        assert_eq!(keys[0].text, Some(Secret::copy_from(b"c2VjcmV0IGtleQ==")));
        assert_eq!(keys[0].decode(), Some(Secret::copy_from(b"secret key")));
        assert!(keys[1].text.is_none() && keys[1].decode().is_none());
        // Nothing of the key in Debug output.
        let debug = format!("{a:?} {keys:?}");
        assert!(
            !debug.contains("c2VjcmV0") && !debug.contains("secret key"),
            "{debug}"
        );
        // Leak search.
        assert!(a.contains(keys[0].text.as_ref().unwrap()));
        assert!(!answer("{}").contains(keys[0].text.as_ref().unwrap()));
        assert!(answer("<html>").keys().is_none());
    }
}
