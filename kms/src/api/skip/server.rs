//! The HTTPS shell of the SKIP front end, on the shared shell of [`crate::api::https`] (accept
//! loop, TLS handshakes under a deadline, client identity, connection caps, graceful shutdown).
//!
//! One request per connection: every answer carries `Connection: close`, a `Content-Length`
//! (never chunked) and a reason phrase, and the connection closes after it, because known SKIP
//! clients read until the server closes and cut the JSON out of what they read (docs/skip.md §2).
//! A request body is never read: a request that declares one is refused (SKIP requests have
//! none). The `Host` header is neither checked nor trusted (a known client puts its own system ID
//! there). The shell logs methods, paths and status codes, never bodies.

use std::future::Future;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use qkd_types::SaeId;
use tokio::net::TcpListener;

use super::KeyProvider;
use super::request::{RawRequest, handle_classified};
use crate::api::KeyService;
use crate::api::https::{self, Door, ServerLimits};
use crate::api::observe::{Api, ApiObserver, NoObserver};
use crate::tls::SaeIdentityRule;

/// Serves SKIP on `listener` until `shutdown` completes, then stops accepting, lets every
/// in-flight request finish and returns.
///
/// `tls` must require client certificates (see [`crate::tls::server_config`]); the caller's SAE
/// ID is read from the client certificate with `identity`, exactly as for ETSI 014.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    service: Arc<dyn KeyService>,
    provider: KeyProvider,
    identity: SaeIdentityRule,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_observed(
        listener,
        tls,
        service,
        provider,
        identity,
        limits,
        Arc::new(NoObserver),
        shutdown,
    )
    .await
}

/// [`serve`], reporting every answered request to `observer` (API `skip`).
#[allow(clippy::too_many_arguments)] // the shell's inputs, each distinct; as serve plus one
pub async fn serve_observed(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    service: Arc<dyn KeyService>,
    provider: KeyProvider,
    identity: SaeIdentityRule,
    limits: ServerLimits,
    observer: Arc<dyn ApiObserver>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let provider = Arc::new(provider);
    let door = Door {
        name: "SKIP",
        keep_alive: false,
        admits: {
            let service = service.clone();
            let provider = provider.clone();
            Arc::new(move |sae: &SaeId| service.admits(sae) && provider.serves(sae))
        },
        respond: Arc::new(move |req, caller| {
            let service = service.clone();
            let provider = provider.clone();
            let observer = observer.clone();
            Box::pin(async move {
                respond(
                    req,
                    caller.as_ref().as_ref(),
                    &provider,
                    &*service,
                    &*observer,
                )
                .await
            })
        }),
    };
    https::serve(listener, tls, identity, limits, door, shutdown).await
}

async fn respond(
    req: Request<Incoming>,
    caller: Option<&SaeId>,
    provider: &KeyProvider,
    service: &dyn KeyService,
    observer: &dyn ApiObserver,
) -> Response<Full<Bytes>> {
    let (parts, _body) = req.into_parts();
    let headers = &parts.headers;
    let has_body = headers.contains_key(TRANSFER_ENCODING)
        || headers
            .get(CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let raw = RawRequest {
        method: &parts.method,
        path: parts.uri.path(),
        query: parts.uri.query(),
        has_body,
    };
    let (reply, operation, outcome) = handle_classified(&raw, caller, provider, service).await;
    observer.observe(Api::Skip, operation, outcome);
    tracing::debug!(
        method = %parts.method,
        path = parts.uri.path(),
        status = reply.status.as_u16(),
        caller = caller.map(SaeId::as_str),
        host = headers.get(HOST).and_then(|h| h.to_str().ok()),
        "SKIP request"
    );
    reply.into_response(true)
}
