//! The HTTP side of the adapter: one ETSI 014 request at a time, lenient on what devices answer.
//!
//! This module knows the three paths, the GET and POST forms and how devices in the field
//! deviate from the spec (standards.md §1.5, §1.8); it knows nothing of blocks, roles or the
//! window of seen IDs, which live in [`super::source`]. Every answer is classified into a
//! [`RequestError`] by the HTTP status alone, so empty 401 bodies, HTML proxy pages and
//! vendor-specific codes (404 for an unknown key) are understood without parsing them; the JSON
//! `message` is kept for operators when there is one. Key bytes never enter an error.

use std::sync::Mutex;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use qkd_proto::etsi014::{
    DeviceError as ErrorBody, DeviceStatus, KeyContainer, KeyIdEntry, KeyIds,
};
use qkd_types::{KeyId, SaeId};
use reqwest::{Method, StatusCode, Url};
use zeroize::Zeroizing;

use super::config::{ConfigError, DeviceConfig, DeviceLimits};

/// A request body: JSON text (never key bytes: requests carry only sizes and key IDs).
type Body = String;

/// What went wrong with one request. Caused by the device or the network between us.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No answer: connection refused or reset, TLS failure, timeout.
    #[error("{0}")]
    Transport(String),
    /// The device answered with a non-2xx status.
    #[error("HTTP {code}{}", message.as_ref().map(|m| format!(": {m}")).unwrap_or_default())]
    Status {
        /// The HTTP status code.
        code: u16,
        /// The `message` of a JSON error body, when there was one.
        message: Option<String>,
    },
    /// A 200 answer that is not the JSON the spec defines.
    #[error("malformed answer: {0}")]
    Malformed(String),
}

impl RequestError {
    /// The request may have been refused for its form (GET vs POST) rather than its content.
    fn is_form_refusal(&self) -> bool {
        matches!(
            self,
            RequestError::Status {
                code: 404 | 405 | 501,
                ..
            }
        )
    }
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
    http: reqwest::Client,
    /// `<url>/api/v1/keys/`.
    keys_base: Url,
    limits: DeviceLimits,
    /// Preferred forms for enc_keys and dec_keys (POST first, as the spec's main form).
    forms: Mutex<(Form, Form)>,
}

/// Characters escaped in an SAE ID path segment: everything but unreserved ones (RFC 3986).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

impl DeviceClient {
    pub(crate) fn new(config: &DeviceConfig) -> Result<Self, ConfigError> {
        let tls = config.load_tls()?;
        let mut base = config.base_url()?;
        let mut builder = reqwest::Client::builder()
            .tls_backend_preconfigured((*tls).clone())
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
        let http = builder
            .build()
            .map_err(|e| ConfigError::Tls(e.to_string()))?;
        let path = format!("{}/api/v1/keys/", base.path().trim_end_matches('/'));
        base.set_path(&path);
        Ok(Self {
            http,
            keys_base: base,
            limits: config.limits.clone(),
            forms: Mutex::new((Form::Post, Form::Post)),
        })
    }

    /// Get status for the pair (caller, `peer`).
    pub(crate) async fn status(&self, peer: &SaeId) -> Result<DeviceStatus, RequestError> {
        let url = self.url(peer, "status", &[]);
        let body = self.retrying(Method::GET, url, None).await?;
        serde_json::from_slice(&body).map_err(|e| RequestError::Malformed(format!("status: {e}")))
    }

    /// Get key: `number` keys of `size` bits (`None`: the device's default size) for `slave`.
    pub(crate) async fn enc_keys(
        &self,
        slave: &SaeId,
        number: u32,
        size: Option<u32>,
    ) -> Result<KeyContainer, RequestError> {
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
            self.keys_request(form, url, body)
        };
        match attempt(first).await {
            Err(e) if e.is_form_refusal() => {
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
    ) -> Result<KeyContainer, RequestError> {
        let first = self.form(|f| f.1);
        match self.dec_keys_in(first, master, ids).await {
            Err(e) if e.is_form_refusal() => {
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
    ) -> Result<KeyContainer, RequestError> {
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
                let body = serde_json::to_string(&body)
                    .map_err(|e| RequestError::Malformed(e.to_string()))?;
                self.keys_request(form, self.url(master, "dec_keys", &[]), Some(body))
                    .await
            }
            Form::Get => {
                let mut all = KeyContainer {
                    keys: Vec::with_capacity(ids.len()),
                    key_container_extension: None,
                };
                for id in ids {
                    let url = self.url(master, "dec_keys", &[("key_ID", id.to_string())]);
                    let one = self.keys_request(form, url, None).await?;
                    all.keys.extend(one.keys);
                }
                Ok(all)
            }
        }
    }

    async fn keys_request(
        &self,
        form: Form,
        url: Url,
        body: Option<Body>,
    ) -> Result<KeyContainer, RequestError> {
        let method = match form {
            Form::Get => Method::GET,
            Form::Post => Method::POST,
        };
        let bytes = self.retrying(method, url, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            // serde_json's message can quote the input (a string of the wrong type may be a
            // key): only its category and position are kept.
            RequestError::Malformed(format!(
                "key container: {:?} error at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            ))
        })
    }

    /// One request with retries on transport failures (never on an answer from the device).
    async fn retrying(
        &self,
        method: Method,
        url: Url,
        body: Option<Body>,
    ) -> Result<Zeroizing<Vec<u8>>, RequestError> {
        (|| self.once(method.clone(), url.clone(), body.clone()))
            .retry(self.backoff())
            .when(|e| matches!(e, RequestError::Transport(_)))
            .await
    }

    async fn once(
        &self,
        method: Method,
        url: Url,
        body: Option<Body>,
    ) -> Result<Zeroizing<Vec<u8>>, RequestError> {
        let mut req = self
            .http
            .request(method, url)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(body) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let resp = req.send().await.map_err(transport)?;
        let code = resp.status();
        let bytes = wipe_after_copy(resp.bytes().await.map_err(transport)?);
        if code == StatusCode::OK {
            return Ok(bytes);
        }
        Err(RequestError::Status {
            code: code.as_u16(),
            message: ErrorBody::parse_lenient(&bytes).message.map(printable),
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

impl Form {
    fn other(self) -> Self {
        match self {
            Form::Get => Form::Post,
            Form::Post => Form::Get,
        }
    }
}

/// Copies a response body into a buffer zeroized on drop and overwrites the original when this
/// is its only owner: a key container carries key bytes in base64. (Best effort: the HTTP
/// stack's own read buffers are beyond our reach.)
fn wipe_after_copy(body: bytes::Bytes) -> Zeroizing<Vec<u8>> {
    let copy = Zeroizing::new(body.to_vec());
    if let Ok(mut owned) = body.try_into_mut() {
        owned.as_mut().fill(0);
    }
    copy
}

fn transport(e: reqwest::Error) -> RequestError {
    // Walk the source chain: reqwest's own text ("error sending request") hides the cause
    // (refused, reset, certificate unknown) an operator needs.
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    RequestError::Transport(text)
}

/// A device's error message, cut to a sane length and stripped of control characters before it
/// reaches logs. (Device messages never carry key bytes in a conforming device; we do not rely
/// on it for length.)
fn printable(m: String) -> String {
    m.chars().filter(|c| !c.is_control()).take(200).collect()
}
