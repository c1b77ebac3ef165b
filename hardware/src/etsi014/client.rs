//! The HTTP side of the adapter: one ETSI 014 request at a time, lenient on what devices answer.
//!
//! This module knows the three paths, the GET and POST forms and how devices in the field
//! deviate from the spec (standards.md §1.5, §1.8); it knows nothing of blocks, roles or the
//! window of seen IDs, which live in [`super::source`]. Every failure becomes a typed
//! [`DeviceFault`]: transport failures by their cause (timeout, refused, TLS and why), answers by
//! the HTTP status alone, so empty 401 bodies, HTML proxy pages and vendor-specific codes (404
//! for an unknown key) are understood without parsing them; the JSON `message` is kept for
//! operators when there is one. No answer is read beyond [`DeviceLimits::max_body_bytes`], so a
//! broken or hostile device cannot make the node allocate without bound. Key bytes never enter
//! an error.

use std::sync::{Mutex, RwLock};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use qkd_proto::etsi014::{
    DeviceError as ErrorBody, DeviceStatus, KeyContainer, KeyIdEntry, KeyIds,
};
use qkd_types::{KeyId, SaeId};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::config::{ConfigError, DeviceConfig, DeviceCredentials, DeviceLimits};
use crate::{DeviceFault, DeviceOp, StatusClass, TlsFailure};

/// A request body: JSON text (never key bytes: requests carry only sizes and key IDs).
type Body = String;

/// Most bytes of an error answer read for its `message`; a longer one is dropped unread (the
/// status alone classifies it).
const ERROR_BODY_CAP: usize = 64 * 1024;

/// A Get status answer: the standard members, and the vendor's `status_extension` object (where
/// some devices report QBER and key rate), kept as JSON for the members the configuration names.
#[derive(Debug, Clone)]
pub(crate) struct StatusAnswer {
    pub status: DeviceStatus,
    pub extension: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The request may have been refused for its form (GET vs POST) rather than its content.
fn is_form_refusal(f: &DeviceFault) -> bool {
    matches!(
        f,
        DeviceFault::Status {
            code: 404 | 405 | 501,
            ..
        }
    )
}

/// Which request form a device accepts for a method, learnt from its answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Post,
    Get,
}

/// A connection to one device: an HTTPS client with mutual TLS and what it learnt of the device.
#[derive(Debug)]
pub(crate) struct DeviceClient {
    /// The HTTP client and the credentials it was built with. A certificate rotation replaces
    /// both ([`DeviceClient::install`]); a request takes a clone of the client when it starts,
    /// so it finishes on the connection it began on while the next request opens a new one.
    http: RwLock<Http>,
    /// `<url>/api/v1/keys/`.
    keys_base: Url,
    limits: DeviceLimits,
    /// Preferred forms for enc_keys and dec_keys (POST first, as the spec's main form).
    forms: Mutex<(Form, Form)>,
}

/// An HTTP client with its own connection pool, and the credentials it presents.
#[derive(Debug, Clone)]
pub(crate) struct Http {
    client: reqwest::Client,
    pub(crate) credentials: DeviceCredentials,
}

/// Characters escaped in an SAE ID path segment: everything but unreserved ones (RFC 3986).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

impl DeviceClient {
    pub(crate) fn new(config: &DeviceConfig) -> Result<Self, ConfigError> {
        let (http, mut base) = Http::build(config)?;
        let path = format!("{}/api/v1/keys/", base.path().trim_end_matches('/'));
        base.set_path(&path);
        Ok(Self {
            http: RwLock::new(http),
            keys_base: base,
            limits: config.limits.clone(),
            forms: Mutex::new((Form::Post, Form::Post)),
        })
    }

    /// The client and credentials in use.
    pub(crate) fn http(&self) -> Http {
        self.http.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Uses `next` from the next request on; requests under way finish on their connection,
    /// and the old pool's connections close once the last of them is done.
    pub(crate) fn install(&self, next: Http) {
        *self.http.write().unwrap_or_else(|p| p.into_inner()) = next;
    }

    /// Get status for the pair (caller, `peer`).
    pub(crate) async fn status(&self, peer: &SaeId) -> Result<StatusAnswer, DeviceFault> {
        let op = DeviceOp::Status;
        let url = self.url(peer, "status", &[]);
        let body = self.retrying(op, Method::GET, url, None).await?;
        let value: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| malformed(op, &e))?;
        let status = DeviceStatus::deserialize(&value).map_err(|e| malformed(op, &e))?;
        let extension = match value.get("status_extension") {
            Some(serde_json::Value::Object(m)) => Some(m.clone()),
            _ => None,
        };
        Ok(StatusAnswer { status, extension })
    }

    /// Get key: `number` keys of `size` bits (`None`: the device's default size) for `slave`.
    pub(crate) async fn enc_keys(
        &self,
        slave: &SaeId,
        number: u32,
        size: Option<u32>,
    ) -> Result<KeyContainer, DeviceFault> {
        let first = self.form(|f| f.0);
        let attempt = |form| {
            let (url, body) = match form {
                Form::Get => {
                    let mut q = vec![("number", number.to_string())];
                    if let Some(s) = size {
                        q.push(("size", s.to_string()));
                    }
                    (self.url(slave, "enc_keys", &q), None)
                }
                Form::Post => {
                    let mut o = serde_json::Map::new();
                    o.insert("number".into(), number.into());
                    if let Some(s) = size {
                        o.insert("size".into(), s.into());
                    }
                    (
                        self.url(slave, "enc_keys", &[]),
                        Some(serde_json::Value::Object(o).to_string()),
                    )
                }
            };
            self.keys_request(DeviceOp::EncKeys, form, url, body)
        };
        match attempt(first).await {
            Err(e) if is_form_refusal(&e) => {
                let other = first.other();
                let r = attempt(other).await;
                if r.is_ok() {
                    self.set_form(|f| f.0 = other);
                }
                r
            }
            r => r,
        }
    }

    /// Get key with key IDs: the keys `ids` that `master` obtained. POST, or one GET per ID for
    /// devices that only serve the GET form; the answer holds the keys of every ID or it is an
    /// error.
    pub(crate) async fn dec_keys(
        &self,
        master: &SaeId,
        ids: &[KeyId],
    ) -> Result<KeyContainer, DeviceFault> {
        let first = self.form(|f| f.1);
        match self.dec_keys_in(first, master, ids).await {
            Err(e) if is_form_refusal(&e) => {
                let other = first.other();
                let r = self.dec_keys_in(other, master, ids).await;
                if r.is_ok() {
                    self.set_form(|f| f.1 = other);
                }
                r
            }
            r => r,
        }
    }

    async fn dec_keys_in(
        &self,
        form: Form,
        master: &SaeId,
        ids: &[KeyId],
    ) -> Result<KeyContainer, DeviceFault> {
        match form {
            Form::Post => {
                let body = KeyIds {
                    key_ids: ids
                        .iter()
                        .map(|id| KeyIdEntry {
                            key_id: *id,
                            key_id_extension: None,
                        })
                        .collect(),
                    key_ids_extension: None,
                };
                // Serializing UUIDs into a string cannot fail; were it to, the request is empty
                // and the device refuses it (400), which is reported as such.
                let body = serde_json::to_string(&body).unwrap_or_default();
                let url = self.url(master, "dec_keys", &[]);
                self.keys_request(DeviceOp::DecKeys, form, url, Some(body))
                    .await
            }
            Form::Get => {
                let mut all = KeyContainer {
                    keys: Vec::with_capacity(ids.len()),
                    key_container_extension: None,
                };
                for id in ids {
                    let url = self.url(master, "dec_keys", &[("key_ID", id.to_string())]);
                    let one = self
                        .keys_request(DeviceOp::DecKeys, form, url, None)
                        .await?;
                    all.keys.extend(one.keys);
                }
                Ok(all)
            }
        }
    }

    async fn keys_request(
        &self,
        op: DeviceOp,
        form: Form,
        url: Url,
        body: Option<Body>,
    ) -> Result<KeyContainer, DeviceFault> {
        let method = match form {
            Form::Get => Method::GET,
            Form::Post => Method::POST,
        };
        let bytes = self.retrying(op, method, url, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| malformed(op, &e))
    }

    /// One request with retries when no answer came (never on an answer from the device, nor
    /// on a TLS failure, which a retry does not mend).
    async fn retrying(
        &self,
        op: DeviceOp,
        method: Method,
        url: Url,
        body: Option<Body>,
    ) -> Result<Zeroizing<Vec<u8>>, DeviceFault> {
        (|| self.once(op, method.clone(), url.clone(), body.clone()))
            .retry(self.backoff())
            .when(|e| {
                matches!(
                    e,
                    DeviceFault::Timeout { .. } | DeviceFault::Unreachable { .. }
                )
            })
            .await
    }

    async fn once(
        &self,
        op: DeviceOp,
        method: Method,
        url: Url,
        body: Option<Body>,
    ) -> Result<Zeroizing<Vec<u8>>, DeviceFault> {
        let mut req = self
            .http()
            .client
            .request(method, url)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(body) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let resp = req.send().await.map_err(|e| transport(op, &e))?;
        let code = resp.status();
        if code == StatusCode::OK {
            let limit = self.limits.max_body_bytes;
            return read_capped(resp, limit).await.map_err(|e| match e {
                ReadError::TooLarge => DeviceFault::BodyTooLarge { op, limit },
                ReadError::Transport(e) => transport(op, &e),
            });
        }
        // An error page too large, or cut off, gives no message; its status says enough.
        let message = read_capped(resp, ERROR_BODY_CAP)
            .await
            .ok()
            .and_then(|b| ErrorBody::parse_lenient(&b).message)
            .map(printable);
        let code = code.as_u16();
        Err(DeviceFault::Status {
            op,
            code,
            class: StatusClass::of(code),
            message,
        })
    }

    /// The back-off between attempts: exponential with jitter, bounded by the configured limits.
    pub(crate) fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.limits.min_backoff_ms))
            .with_max_delay(Duration::from_millis(self.limits.max_backoff_ms))
            .with_max_times(self.limits.attempts.saturating_sub(1) as usize)
            .with_jitter()
    }

    fn url(&self, sae: &SaeId, method: &str, query: &[(&str, String)]) -> Url {
        let mut url = self.keys_base.clone();
        let path = format!(
            "{}{}/{method}",
            url.path(),
            utf8_percent_encode(sae.as_str(), SEGMENT)
        );
        url.set_path(&path);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    fn form<T>(&self, f: impl FnOnce(&(Form, Form)) -> T) -> T {
        f(&self.forms.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn set_form(&self, f: impl FnOnce(&mut (Form, Form))) {
        f(&mut self.forms.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Http {
    /// Reads the credentials ([`DeviceConfig::load_credentials`], the offline check) and builds
    /// a client with a fresh connection pool; returns it with the device's base URL.
    pub(crate) fn build(config: &DeviceConfig) -> Result<(Self, Url), ConfigError> {
        let credentials = config.load_credentials()?;
        let mut base = config.base_url()?;
        let mut builder = reqwest::Client::builder()
            .tls_backend_preconfigured((*credentials.config).clone())
            .http1_only()
            .no_proxy()
            .connect_timeout(config.limits.connect_timeout())
            .timeout(config.limits.request_timeout())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(4);
        if let Some(name) = &config.server_name {
            // The device is reached by address but its certificate names `name`: connect to the
            // address, verify the name.
            let ip: std::net::IpAddr = base
                .host_str()
                .and_then(|h| h.trim_matches(['[', ']']).parse().ok())
                .ok_or_else(|| ConfigError::Url {
                    url: config.url.clone(),
                    problem: "server_name needs the URL host to be an IP address".into(),
                })?;
            let port = base.port_or_known_default().unwrap_or(443);
            base.set_host(Some(name)).map_err(|e| ConfigError::Url {
                url: config.url.clone(),
                problem: format!("server_name {name:?}: {e}"),
            })?;
            builder = builder.resolve(name, std::net::SocketAddr::new(ip, port));
        }
        let client = builder
            .build()
            .map_err(|e| ConfigError::Tls(e.to_string()))?;
        Ok((
            Self {
                client,
                credentials,
            },
            base,
        ))
    }
}

impl Form {
    fn other(self) -> Self {
        match self {
            Form::Get => Form::Post,
            Form::Post => Form::Get,
        }
    }
}

/// Why reading an answer stopped.
enum ReadError {
    /// The body is (or announces itself) larger than the cap.
    TooLarge,
    /// The connection failed mid-body.
    Transport(reqwest::Error),
}

/// Reads a body of at most `cap` bytes into a buffer zeroized on drop: a key container carries
/// key bytes in base64. A `Content-Length` above the cap is refused before reading; a body
/// without one (chunked) is read until it passes the cap. Each chunk is overwritten after the
/// copy when this is its only owner, and the buffer grows without leaving copies behind. (Best
/// effort: the HTTP stack's own read buffers are beyond our reach.)
async fn read_capped(
    mut resp: reqwest::Response,
    cap: usize,
) -> Result<Zeroizing<Vec<u8>>, ReadError> {
    let announced = resp.content_length();
    if announced.is_some_and(|n| n > cap as u64) {
        return Err(ReadError::TooLarge);
    }
    // Bounded by the check above.
    let mut out = Zeroizing::new(Vec::with_capacity(announced.unwrap_or(0) as usize));
    while let Some(chunk) = resp.chunk().await.map_err(ReadError::Transport)? {
        let fits = out.len().checked_add(chunk.len()).is_some_and(|n| n <= cap);
        if fits {
            append_zeroizing(&mut out, &chunk, cap);
        }
        if let Ok(mut owned) = chunk.try_into_mut() {
            owned.as_mut().fill(0);
        }
        if !fits {
            return Err(ReadError::TooLarge);
        }
    }
    Ok(out)
}

/// Appends to a zeroizing buffer; when it must grow, the new buffer is allocated (doubling, at
/// most `cap`) and the old one dropped, hence zeroized, instead of being reallocated in place
/// with its old copy left in freed memory.
fn append_zeroizing(out: &mut Zeroizing<Vec<u8>>, data: &[u8], cap: usize) {
    let need = out.len() + data.len();
    if need > out.capacity() {
        let size = need
            .max(out.capacity().saturating_mul(2))
            .min(cap.max(need));
        let mut grown = Zeroizing::new(Vec::with_capacity(size));
        grown.extend_from_slice(out);
        *out = grown;
    }
    out.extend_from_slice(data);
}

/// A JSON answer that does not parse: only serde_json's category and position are kept, never
/// its message, which can quote the input (a string of the wrong type may be a key).
fn malformed(op: DeviceOp, e: &serde_json::Error) -> DeviceFault {
    DeviceFault::Malformed {
        op,
        category: match e.classify() {
            serde_json::error::Category::Io => "io",
            serde_json::error::Category::Syntax => "syntax",
            serde_json::error::Category::Data => "data",
            serde_json::error::Category::Eof => "eof",
        },
        line: e.line(),
        column: e.column(),
    }
}

/// Classifies a request that got no answer: timeout, TLS failure (and why), or unreachable.
fn transport(op: DeviceOp, e: &reqwest::Error) -> DeviceFault {
    if e.is_timeout() {
        return DeviceFault::Timeout { op };
    }
    // Walk the source chain: reqwest's own text ("error sending request") hides the cause.
    // rustls's error sits inside an `io::Error` (possibly inside another), whose `source()`
    // skips it: look inside those too.
    let mut pending: Vec<&(dyn std::error::Error + 'static)> = vec![e];
    while let Some(s) = pending.pop() {
        if let Some(t) = s.downcast_ref::<rustls::Error>() {
            return DeviceFault::Tls {
                op,
                failure: tls_failure(t),
            };
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return DeviceFault::Timeout { op };
            }
            if let Some(inner) = io.get_ref() {
                pending.push(inner);
            }
        }
        if let Some(next) = s.source() {
            pending.push(next);
        }
    }
    // The URL is not secret, but the operator knows it; the causes are what they need.
    let mut detail = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if !detail.is_empty() {
            detail.push_str(": ");
        }
        detail.push_str(&s.to_string());
        source = s.source();
    }
    if detail.is_empty() {
        detail = e.to_string();
    }
    DeviceFault::Unreachable { op, detail }
}

/// What rustls says, in the terms an operator acts on.
fn tls_failure(e: &rustls::Error) -> TlsFailure {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E, PeerIncompatible as P};
    match e {
        E::InvalidCertificate(
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. },
        ) => TlsFailure::Expired,
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            TlsFailure::WrongName
        }
        E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            TlsFailure::UntrustedCertificate
        }
        E::AlertReceived(A::ProtocolVersion)
        | E::PeerIncompatible(
            P::ServerDoesNotSupportTls12Or13
            | P::ServerTlsVersionIsDisabledByOurConfig
            | P::SupportedVersionsExtensionRequired
            | P::Tls12NotOffered
            | P::Tls12NotOfferedOrEnabled,
        ) => TlsFailure::ProtocolVersion,
        E::AlertReceived(
            A::BadCertificate
            | A::UnknownCA
            | A::CertificateRequired
            | A::CertificateUnknown
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::UnsupportedCertificate
            | A::AccessDenied,
        ) => TlsFailure::ClientRefused,
        other => TlsFailure::Other(other.to_string()),
    }
}

/// A device's error message, cut to a sane length and stripped of control characters before it
/// reaches logs. (Device messages never carry key bytes in a conforming device; we do not rely
/// on it for length.)
fn printable(m: String) -> String {
    m.chars().filter(|c| !c.is_control()).take(200).collect()
}
