//! The HTTPS shell of the ETSI GS QKD 014 front end: TCP accept loop, TLS handshakes (each in its
//! own task, so a slow client cannot hold up others), HTTP/1.1 with keep-alive (hyper 1), and
//! graceful shutdown that lets in-flight requests finish.
//!
//! The SAE ID is read once per connection from the client certificate, never from the URL.
//! Per request the shell first checks admission (the certificate names an SAE registered at this
//! KME, docs/etsi014.md): an unadmitted caller gets 401 with `Connection: close` before a byte of
//! its body is read. For an admitted caller it reads the whole body (bounded in size and time), so
//! that an error answer never leaves unread bytes on a keep-alive connection, then hands method,
//! path, query, Content-Type and body to the sans-IO layer ([`super::request::handle`]), which
//! keeps every other check in policy order. The shell logs methods, paths and status codes, never
//! bodies, and reports every answered request to the instrumentation hook
//! ([`crate::api::observe`]).
//!
//! Resources are bounded so that no client, not even an admitted one, can starve the others: a
//! total connection cap, a cap per client identity ([`ServerLimits`]), and deadlines for the
//! handshake, the headers and the body. A cap that refuses a client is logged, rate-limited.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{ALLOW, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use qkd_types::SaeId;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::reply::{EtsiError, Reply, error_reply, outcome_of};
use super::request::{Body, RawRequest, handle_classified, operation_of};
use crate::api::KeyService;
use crate::api::check::RequestError;
use crate::api::observe::{Api, ApiObserver, NoObserver, Outcome};
use crate::conn::{CapLog, ClientCaps, SaeClient};
use crate::tls::SaeIdentityRule;

/// Largest request body the front end parses. A Key IDs body of 128 UUIDs is about 7 KiB.
pub const MAX_BODY: usize = 64 * 1024;
/// Largest body the front end reads and discards to keep the connection alive after answering
/// "too large"; anything bigger is answered and the connection closed.
pub const MAX_DISCARD: usize = 1024 * 1024;
/// Time a client has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send a request's body once its headers arrived (a 64 KiB body takes
/// milliseconds on any link an SAE uses).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections served at once; further clients wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 4096;
/// Most connections one client identity (one SAE) may hold at once. An encryptor needs a few;
/// 64 leaves room for connection pools while 64 clients cannot fill [`MAX_CONNECTIONS`].
pub const MAX_CONNECTIONS_PER_CLIENT: usize = 64;

/// Resource limits of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Most connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Most connections one client identity may hold at once; a connection beyond it is closed
    /// right after the handshake. Callers that are not admitted (no SAE, or an SAE not attached
    /// here) share one allowance (they are refused on every request anyway).
    pub max_connections_per_client: usize,
    /// Time a client has to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time a client has to send a request's headers.
    pub header_timeout: Duration,
    /// Time a client has to send a request's body once its headers arrived; then 400 and the
    /// connection is closed.
    pub body_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            max_connections_per_client: MAX_CONNECTIONS_PER_CLIENT,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            header_timeout: HEADER_TIMEOUT,
            body_timeout: BODY_TIMEOUT,
        }
    }
}

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
    serve_observed(
        listener,
        tls,
        service,
        identity,
        limits,
        Arc::new(NoObserver),
        shutdown,
    )
    .await
}

/// [`serve_with`], reporting every answered request to `observer`.
pub async fn serve_observed(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    service: Arc<dyn KeyService>,
    identity: SaeIdentityRule,
    limits: ServerLimits,
    observer: Arc<dyn ApiObserver>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let shared = Arc::new(Shared {
        acceptor: TlsAcceptor::from(tls),
        service,
        identity,
        limits,
        observer,
        caps: ClientCaps::new(limits.max_connections_per_client, "ETSI 014"),
        full: CapLog::new("ETSI 014"),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            // Accept only with a free slot; the permit lives as long as the connection task.
            accepted = accept(&listener, &slots, &shared.full) => match accepted {
                Ok((tcp, peer, permit)) => {
                    connections.spawn(connection(
                        permit,
                        tcp,
                        peer,
                        shared.clone(),
                        stop_rx.clone(),
                    ));
                }
                Err(e) => {
                    // Per-connection failures (reset before accept, EMFILE): back off a little
                    // instead of spinning, and keep serving.
                    tracing::warn!(error = %e, "ETSI 014 accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    // Every receiver is alive until its task ends, so the send reaches all open connections.
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// What every connection of one server shares.
struct Shared {
    acceptor: TlsAcceptor,
    service: Arc<dyn KeyService>,
    identity: SaeIdentityRule,
    limits: ServerLimits,
    /// Told about every answered request.
    observer: Arc<dyn ApiObserver>,
    /// Open connections per client identity.
    caps: Arc<ClientCaps<SaeClient>>,
    /// Warns when every connection slot is in use.
    full: CapLog,
}

async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    full: &CapLog,
) -> io::Result<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    if slots.available_permits() == 0 {
        full.refused(|suppressed| {
            tracing::warn!(
                suppressed,
                "ETSI 014: every connection slot is in use; new clients wait in the listen \
                 backlog ({suppressed} more times since the last warning)"
            );
        });
    }
    // The semaphore is never closed, so acquiring only waits.
    let permit = slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| io::Error::other("connection limit closed"))?;
    let (tcp, peer) = listener.accept().await?;
    Ok((tcp, peer, permit))
}

/// One TCP connection: handshake, identity, then HTTP/1.1 until the client leaves or shutdown.
async fn connection(
    _permit: OwnedSemaphorePermit,
    tcp: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let handshake =
        tokio::time::timeout(shared.limits.handshake_timeout, shared.acceptor.accept(tcp));
    let tls = tokio::select! {
        r = handshake => match r {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "ETSI 014 TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "ETSI 014 TLS handshake timed out");
                return;
            }
        },
        () = stopped(&mut stop) => return,
    };

    // The verifier already checked the chain; here we only read who it names.
    let caller: Option<SaeId> = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
        Some(cert) => match shared.identity.sae_id(cert) {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::info!(%peer, error = %e, "ETSI 014 client certificate names no SAE");
                None
            }
        },
        None => None,
    };
    // Callers that are not admitted are refused on every request; they share one allowance so
    // that certificates for many unregistered names cannot take many.
    let client = SaeClient::of(caller.as_ref(), |id| shared.service.admits(id));
    let Some(_slot) = shared.caps.try_acquire(client) else {
        // Over its cap: close at once (close_notify, briefly) so the slot frees for others.
        let mut tls = tls;
        let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
        return;
    };
    let caller = Arc::new(caller);

    let service = shared.service.clone();
    let observer = shared.observer.clone();
    let body_timeout = shared.limits.body_timeout;
    let svc = service_fn(move |req| {
        let caller = caller.clone();
        let service = service.clone();
        let observer = observer.clone();
        async move {
            Ok::<_, Infallible>(
                respond(
                    req,
                    caller.as_ref().as_ref(),
                    &*service,
                    &*observer,
                    body_timeout,
                )
                .await,
            )
        }
    });
    let conn = http1::Builder::new()
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(shared.limits.header_timeout)
        .serve_connection(TokioIo::new(tls), svc);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = stopped(&mut stop) => {
            // Finishes the request in flight (if any), then closes.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "ETSI 014 connection ended with an error");
    }
}

/// Resolves once shutdown was signalled (or the server is gone), holding no watch guard.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
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
    observer: &dyn ApiObserver,
    body_timeout: Duration,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let operation = operation_of(parts.uri.path());
    // Admission before the body (docs/etsi014.md): a client that is not one of our SAEs gets
    // 401 at once, its body unread, and the connection closes (unread bytes cannot stay on it).
    if !caller.is_some_and(|c| service.admits(c)) {
        log_request(&parts, StatusCode::UNAUTHORIZED, caller);
        observer.observe(Api::Etsi014, operation, Outcome::NotAdmitted);
        return into_response(error_reply(&RequestError::NotAdmitted.into()), true);
    }
    let read = tokio::time::timeout(body_timeout, read_body(&parts, body))
        .await
        .unwrap_or(ReadBody::TimedOut);
    let unread = |e: EtsiError| (error_reply(&e), operation, outcome_of(&e));
    let ((reply, operation, outcome), close) = match &read {
        ReadBody::Failed => (unread(EtsiError::BadBody("incomplete body".into())), true),
        ReadBody::TimedOut => (
            unread(EtsiError::BadBody(format!(
                "body not received within {} s",
                body_timeout.as_secs()
            ))),
            true,
        ),
        ReadBody::Complete(bytes) => (
            handle_classified(&raw(&parts, Body::Complete(bytes)), caller, service).await,
            false,
        ),
        ReadBody::TooLarge { drained } => (
            handle_classified(&raw(&parts, Body::TooLarge), caller, service).await,
            !drained,
        ),
    };
    log_request(&parts, reply.status, caller);
    observer.observe(Api::Etsi014, operation, outcome);
    into_response(reply, close)
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

fn into_response(reply: Reply, close: bool) -> Response<Full<Bytes>> {
    let has_body = reply.body.is_some();
    let mut response = Response::new(Full::new(reply.body.map(Bytes::from).unwrap_or_default()));
    *response.status_mut() = reply.status;
    let headers = response.headers_mut();
    if has_body {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    // Keys must never sit in an intermediary's cache.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(allow) = reply.allow {
        headers.insert(ALLOW, HeaderValue::from_static(allow));
    }
    if close {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}
