//! The HTTPS shell of the ETSI GS QKD 014 front end, on the shared shell of
//! [`crate::api::https`] (accept loop, TLS handshakes, client identity, connection caps,
//! deadlines, graceful shutdown), with HTTP/1.1 keep-alive.
//!
//! The SAE ID is read once per connection from the client certificate, never from the URL.
//! Per request the shell first checks admission (the certificate names an SAE registered at this
//! KME, docs/etsi014.md): an unadmitted caller gets 401 with `Connection: close` before a byte of
//! its body is read. For an admitted caller it reads the whole body (bounded in size and time), so
//! that an error answer never leaves unread bytes on a keep-alive connection, then hands method,
//! path, query, Content-Type and body to the sans-IO layer ([`super::request::handle`]), which
//! keeps every other check in policy order. The shell logs methods, paths and status codes, never
//! bodies.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use qkd_types::SaeId;
use tokio::net::TcpListener;

use super::reply::{EtsiError, error_reply};
use super::request::{Body, RawRequest, handle};
use crate::api::KeyService;
use crate::api::https::{self, Door};
pub use crate::api::https::{
    BODY_TIMEOUT, HANDSHAKE_TIMEOUT, HEADER_TIMEOUT, MAX_CONNECTIONS, MAX_CONNECTIONS_PER_CLIENT,
    ServerLimits,
};
use crate::tls::SaeIdentityRule;

/// Largest request body the front end parses. A Key IDs body of 128 UUIDs is about 7 KiB.
pub const MAX_BODY: usize = 64 * 1024;
/// Largest body the front end reads and discards to keep the connection alive after answering
/// "too large"; anything bigger is answered and the connection closed.
pub const MAX_DISCARD: usize = 1024 * 1024;

/// Serves ETSI GS QKD 014 on `listener` until `shutdown` completes, then stops accepting, lets
/// every in-flight request finish, closes idle connections and returns.
///
/// `tls` must require client certificates (see [`crate::tls::server_config`]); the caller's SAE
/// ID is read from the client certificate with `identity`. Accept errors (e.g. out of file
/// descriptors) are logged and retried; the function returns `Ok` after a clean shutdown.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    service: Arc<dyn KeyService>,
    identity: SaeIdentityRule,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_with(
        listener,
        tls,
        service,
        identity,
        ServerLimits::default(),
        shutdown,
    )
    .await
}

/// [`serve`] with explicit limits.
pub async fn serve_with(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    service: Arc<dyn KeyService>,
    identity: SaeIdentityRule,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let body_timeout = limits.body_timeout;
    let door = Door {
        name: "ETSI 014",
        keep_alive: true,
        admits: {
            let service = service.clone();
            Arc::new(move |sae: &SaeId| service.admits(sae))
        },
        respond: Arc::new(move |req, caller| {
            let service = service.clone();
            Box::pin(async move {
                respond(req, caller.as_ref().as_ref(), &*service, body_timeout).await
            })
        }),
    };
    https::serve(listener, tls, identity, limits, door, shutdown).await
}

/// What reading a request body gave.
enum ReadBody {
    /// The whole body, within [`MAX_BODY`].
    Complete(Bytes),
    /// Too large; `drained` says whether every byte was read (so keep-alive can continue).
    TooLarge { drained: bool },
    /// The client broke off mid-body.
    Failed,
    /// The body did not arrive within the deadline.
    TimedOut,
}

async fn read_body(parts: &http::request::Parts, mut body: Incoming) -> ReadBody {
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_DISCARD as u64) {
        return ReadBody::TooLarge { drained: false };
    }
    let mut buf = BytesMut::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return ReadBody::Failed;
        };
        if let Ok(data) = frame.into_data() {
            total = total.saturating_add(data.len());
            if total > MAX_DISCARD {
                return ReadBody::TooLarge { drained: false };
            }
            if total <= MAX_BODY {
                buf.extend_from_slice(&data);
            }
        }
    }
    if total > MAX_BODY {
        ReadBody::TooLarge { drained: true }
    } else {
        ReadBody::Complete(buf.freeze())
    }
}

async fn respond(
    req: Request<Incoming>,
    caller: Option<&SaeId>,
    service: &dyn KeyService,
    body_timeout: Duration,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    // Admission before the body (docs/etsi014.md): a client that is not one of our SAEs gets
    // 401 at once, its body unread, and the connection closes (unread bytes cannot stay on it).
    if !caller.is_some_and(|c| service.admits(c)) {
        log_request(&parts, StatusCode::UNAUTHORIZED, caller);
        return error_reply(&EtsiError::Unauthorized).into_response(true);
    }
    let read = tokio::time::timeout(body_timeout, read_body(&parts, body))
        .await
        .unwrap_or(ReadBody::TimedOut);
    let (reply, close) = match &read {
        ReadBody::Failed => (
            error_reply(&EtsiError::BadBody("incomplete body".into())),
            true,
        ),
        ReadBody::TimedOut => (
            error_reply(&EtsiError::BadBody(format!(
                "body not received within {} s",
                body_timeout.as_secs()
            ))),
            true,
        ),
        ReadBody::Complete(bytes) => (
            handle(&raw(&parts, Body::Complete(bytes)), caller, service).await,
            false,
        ),
        ReadBody::TooLarge { drained } => (
            handle(&raw(&parts, Body::TooLarge), caller, service).await,
            !drained,
        ),
    };
    log_request(&parts, reply.status, caller);
    reply.into_response(close)
}

fn log_request(parts: &http::request::Parts, status: StatusCode, caller: Option<&SaeId>) {
    tracing::debug!(
        method = %parts.method,
        path = parts.uri.path(),
        status = status.as_u16(),
        caller = caller.map(SaeId::as_str),
        "ETSI 014 request"
    );
}

fn raw<'a>(parts: &'a http::request::Parts, body: Body<'a>) -> RawRequest<'a> {
    RawRequest {
        method: &parts.method,
        path: parts.uri.path(),
        query: parts.uri.query(),
        content_type: parts.headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes),
        body,
    }
}
