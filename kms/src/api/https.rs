//! The HTTPS shell shared by the REST front ends (ETSI 014, SKIP): TCP accept loop under a total
//! connection cap, TLS handshakes (each in its own task and under a deadline, so a slow client
//! cannot hold up others), the caller's SAE ID read once per connection from its client
//! certificate, a cap per client identity, HTTP/1.1 (hyper 1) with a header deadline, and graceful
//! shutdown that lets in-flight requests finish.
//!
//! A front end supplies a [`Door`]: its name for log lines, whether connections stay open between
//! requests, which callers are admitted (for the per-client cap), and the function that answers
//! one request. Everything protocol-specific (admission answers, body handling, status codes)
//! stays in that function; this module never reads a request body or builds an error body.
//! A cap that refuses a client is logged, rate-limited.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::header::{ALLOW, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
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

use crate::conn::{CapLog, ClientCaps, SaeClient};
use crate::tls::SaeIdentityRule;

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

/// The body sent if a reply cannot be serialised (which our types never cause).
const FALLBACK_BODY: &[u8] = br#"{"message":"key data access error"}"#;

/// Resource limits of a server.
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
    /// connection is closed (front ends that read bodies).
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

/// An answer ready for the HTTP shell: a status, an optional JSON body, an optional `Allow`.
/// A 200 body may carry keys, so `Debug` shows only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status code.
    pub status: StatusCode,
    /// JSON body (`application/json`), or none.
    pub body: Option<Vec<u8>>,
    /// Value of the `Allow` header (405 only).
    pub allow: Option<&'static str>,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("status", &self.status)
            .field("body_len", &self.body.as_ref().map(Vec::len))
            .field("allow", &self.allow)
            .finish()
    }
}

impl Reply {
    /// A JSON answer. Serialising our own wire types cannot fail (string keys, no maps with
    /// non-string keys, no failing `Serialize` impls); should it ever, the client gets a 503.
    pub fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self {
                status,
                body: Some(body),
                allow: None,
            },
            Err(_) => Self {
                status: StatusCode::SERVICE_UNAVAILABLE,
                body: Some(FALLBACK_BODY.to_vec()),
                allow: None,
            },
        }
    }

    /// The HTTP response: `Content-Type: application/json` when there is a body,
    /// `Cache-Control: no-store` always (keys must never sit in an intermediary's cache), `Allow`
    /// when set, and `Connection: close` when `close`. hyper adds `Content-Length` (the body is
    /// complete, so never chunked) and the reason phrase.
    pub fn into_response(self, close: bool) -> Response<Full<Bytes>> {
        let has_body = self.body.is_some();
        let mut response = Response::new(Full::new(self.body.map(Bytes::from).unwrap_or_default()));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        if has_body {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(allow) = self.allow {
            headers.insert(ALLOW, HeaderValue::from_static(allow));
        }
        if close {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// Answers one request of a caller (`None`: the certificate names no SAE).
pub type Respond = Arc<
    dyn Fn(Request<Incoming>, Arc<Option<SaeId>>) -> BoxFuture<'static, Response<Full<Bytes>>>
        + Send
        + Sync,
>;

/// What a front end plugs into the shell.
#[derive(Clone)]
pub struct Door {
    /// Names the front end in log lines (`"ETSI 014"`, `"SKIP"`).
    pub name: &'static str,
    /// Whether a connection serves several requests (HTTP/1.1 keep-alive). When false every
    /// response carries `Connection: close` and the connection closes after it.
    pub keep_alive: bool,
    /// Whether an SAE is admitted here: admitted callers get their own per-client cap, all
    /// others share one.
    pub admits: Arc<dyn Fn(&SaeId) -> bool + Send + Sync>,
    /// Answers one request.
    pub respond: Respond,
}

impl std::fmt::Debug for Door {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Door")
            .field("name", &self.name)
            .field("keep_alive", &self.keep_alive)
            .finish_non_exhaustive()
    }
}

/// Serves `door` on `listener` until `shutdown` completes, then stops accepting, lets every
/// in-flight request finish, closes idle connections and returns.
///
/// `tls` must require client certificates (see [`crate::tls::server_config`]); the caller's SAE
/// ID is read from the client certificate with `identity`. Accept errors (e.g. out of file
/// descriptors) are logged and retried; the function returns `Ok` after a clean shutdown.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    identity: SaeIdentityRule,
    limits: ServerLimits,
    door: Door,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let shared = Arc::new(Shared {
        acceptor: TlsAcceptor::from(tls),
        identity,
        limits,
        caps: ClientCaps::new(limits.max_connections_per_client, door.name),
        full: CapLog::new(door.name, crate::conn::Cap::Total),
        door,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            // Accept only with a free slot; the permit lives as long as the connection task.
            accepted = accept(&listener, &slots, &shared) => match accepted {
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
                    tracing::warn!(error = %e, "{} accept failed", shared.door.name);
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
    identity: SaeIdentityRule,
    limits: ServerLimits,
    door: Door,
    /// Open connections per client identity.
    caps: Arc<ClientCaps<SaeClient>>,
    /// Warns when every connection slot is in use.
    full: CapLog,
}

async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    shared: &Shared,
) -> io::Result<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    if slots.available_permits() == 0 {
        shared.full.refused(|suppressed| {
            tracing::warn!(
                suppressed,
                "{}: every connection slot is in use; new clients wait in the listen \
                 backlog ({suppressed} more times since the last warning)",
                shared.door.name
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

/// One TCP connection: handshake, identity, then HTTP/1.1 until the client leaves, the door
/// closes it, or shutdown.
async fn connection(
    _permit: OwnedSemaphorePermit,
    tcp: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let name = shared.door.name;
    let _ = tcp.set_nodelay(true);
    let handshake =
        tokio::time::timeout(shared.limits.handshake_timeout, shared.acceptor.accept(tcp));
    let tls = tokio::select! {
        r = handshake => match r {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "{name} TLS handshake failed");
                crate::instruments::handshake_failed(name);
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "{name} TLS handshake timed out");
                crate::instruments::handshake_failed(name);
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
                tracing::info!(%peer, error = %e, "{name} client certificate names no SAE");
                None
            }
        },
        None => None,
    };
    // Callers that are not admitted are refused on every request; they share one allowance so
    // that certificates for many unregistered names cannot take many.
    let client = SaeClient::of(caller.as_ref(), |id| (shared.door.admits)(id));
    let Some(_slot) = shared.caps.try_acquire(client) else {
        // Over its cap: close at once (close_notify, briefly) so the slot frees for others.
        let mut tls = tls;
        let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
        return;
    };
    let caller = Arc::new(caller);

    let respond = shared.door.respond.clone();
    let svc = service_fn(move |req| {
        let fut = respond(req, caller.clone());
        async move { Ok::<_, Infallible>(fut.await) }
    });
    let conn = http1::Builder::new()
        .keep_alive(shared.door.keep_alive)
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
        tracing::debug!(%peer, error = %e, "{name} connection ended with an error");
    }
}

/// Resolves once shutdown was signalled (or the server is gone), holding no watch guard.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
