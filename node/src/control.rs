//! The control listener: where operators change a running node (`[control]`, docs/operations.md).
//!
//! Always mutual TLS with the node's certificate; a client is admitted only with a management
//! certificate, named by its `urn:qkd:operator:<name>` URI SAN (`qkd_kms::tls::operator_id`),
//! never with an SAE's or a node's certificate, even one the same CA issued. Every request that
//! asks for a change is audited (`control_action`, whether applied, unchanged or refused), and
//! every refused certificate too (`authentication_failure` with `api` `control`).
//!
//! | Request | Action |
//! |---|---|
//! | `GET /v1/whoami` | who the node thinks you are (no change, not audited) |
//! | `POST /v1/links/{link}/drain` | advertise the link down: routes go around it |
//! | `POST /v1/links/{link}/enable` | undo a drain |
//! | `POST /v1/reload[?void_pools=true]` | reload the configuration file (`reload`; 409 when refused) |
//! | `POST /v1/rotate/certs` | re-read every certificate, key and CA file; new handshakes use them (`rotate_certs`; 409 when refused) |
//! | `POST /v1/rotate/kek` | a fresh data-key epoch under a new KEK period (`rotate_kek`; 409 when refused) |
//!
//! Answers are JSON: `{"operator", "action", "subject", "outcome", "detail"}`, or `{"error"}`
//! with 403 (not a management certificate) or 404 (no such link). This module decides nothing
//! about routes: a drain is one call into the key manager, whose relay advertises it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use qkd_kms::manager::KeyManager;
use qkd_kms::relay::topology::LinkAdmin;
use qkd_kms::tls::IdentityError;
use qkd_types::{LinkId, NodeId, OperatorId};
use rustls::ServerConfig;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::audit::{AuditEvent, AuditLog};

/// Time a client has to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the control listener acts on.
#[derive(Debug, Clone)]
pub struct ControlParts {
    /// The key manager (link drains).
    pub manager: KeyManager,
    /// Where every change is recorded.
    pub audit: AuditLog,
    /// This node.
    pub node: NodeId,
    /// The SAE URI SAN prefix: a certificate with it is an SAE's, never an operator's.
    pub sae_uri_prefix: String,
    /// Configuration reloads.
    pub reloader: Arc<crate::reload::Reloader>,
    /// Certificate and KEK rotations.
    pub rotator: Arc<crate::rotate::Rotator>,
}

/// Serves the control listener until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    parts: ControlParts,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "control listener has no address");
            return;
        }
    };
    // Handshakes run in their own tasks (a slow client holds up nobody); finished connections
    // reach the HTTP server through this channel.
    let (tx, rx) = mpsc::channel(64);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let acceptor = tokio::spawn(accept_loop(
        listener,
        TlsAcceptor::from(tls),
        parts.sae_uri_prefix.clone(),
        tx,
        stop_rx,
    ));
    let app = Router::new()
        .route("/v1/whoami", get(whoami))
        .route("/v1/links/{link}/drain", post(drain))
        .route("/v1/links/{link}/enable", post(enable))
        .route("/v1/reload", post(reload))
        .route("/v1/rotate/certs", post(rotate_certs))
        .route("/v1/rotate/kek", post(rotate_kek))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(Arc::new(parts));
    let served = axum::serve(
        TlsListener { rx, local },
        app.into_make_service_with_connect_info::<Peer>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    })
    .await;
    if let Err(e) = served {
        tracing::warn!(error = %e, "control listener stopped");
    }
    acceptor.abort();
}

/// A connected client: its address and what its certificate names.
#[derive(Debug, Clone)]
pub struct Peer {
    addr: SocketAddr,
    operator: Result<OperatorId, IdentityError>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// Connections whose TLS handshake completed, for axum.
#[derive(Debug)]
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, Peer)>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept loop stopped (shutdown): no more connections, ever.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(Peer {
            addr: self.local,
            operator: Err(IdentityError::NoCertificate),
        })
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    sae_uri_prefix: String,
    tx: mpsc::Sender<(TlsStream<TcpStream>, Peer)>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            r = listener.accept() => r,
        };
        let (tcp, addr) = match accepted {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "control listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        let prefix = sae_uri_prefix.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::info!(%addr, error = %e, "control listener: TLS handshake failed");
                    qkd_kms::instruments::handshake_failed("control");
                    return;
                }
                Err(_) => {
                    tracing::info!(%addr, "control listener: TLS handshake timed out");
                    qkd_kms::instruments::handshake_failed("control");
                    return;
                }
            };
            let operator = match tls.get_ref().1.peer_certificates() {
                Some([end_entity, ..]) => qkd_kms::tls::operator_id(end_entity, &prefix),
                _ => Err(IdentityError::NoCertificate),
            };
            let _ = tx.send((tls, Peer { addr, operator })).await;
        });
    }
}

type Ctx = Arc<ControlParts>;

/// The operator of a request, or the answer that refuses it (and its audit record).
fn operator(
    ctx: &ControlParts,
    peer: &Peer,
    action: &'static str,
) -> Result<OperatorId, (StatusCode, axum::Json<serde_json::Value>)> {
    match &peer.operator {
        Ok(op) => Ok(op.clone()),
        Err(e) => {
            let outcome = match e {
                IdentityError::NodeCertificate => "node_certificate",
                IdentityError::SaeCertificate => "sae_certificate",
                _ => "not_operator",
            };
            tracing::warn!(addr = %peer.addr, %action, reason = %e, "control listener: refused a client that is not an operator");
            ctx.audit.record(AuditEvent::AuthenticationFailure {
                api: "control",
                operation: action,
                outcome,
            });
            Err((
                StatusCode::FORBIDDEN,
                axum::Json(json!({
                    "error": format!("not a management certificate: {e}; the control listener admits only certificates with a urn:qkd:operator:<name> URI SAN"),
                })),
            ))
        }
    }
}

async fn whoami(State(ctx): State<Ctx>, ConnectInfo(peer): ConnectInfo<Peer>) -> Response {
    match operator(&ctx, &peer, "whoami") {
        Ok(op) => axum::Json(json!({ "operator": op, "node": ctx.node })).into_response(),
        Err(r) => r.into_response(),
    }
}

async fn drain(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(link): Path<String>,
) -> Response {
    set_link(&ctx, &peer, &link, LinkAdmin::Drained)
}

async fn enable(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(link): Path<String>,
) -> Response {
    set_link(&ctx, &peer, &link, LinkAdmin::Enabled)
}

fn set_link(ctx: &ControlParts, peer: &Peer, link: &str, want: LinkAdmin) -> Response {
    let action = match want {
        LinkAdmin::Drained => "link_drain",
        LinkAdmin::Enabled => "link_enable",
    };
    let op = match operator(ctx, peer, action) {
        Ok(op) => op,
        Err(r) => return r.into_response(),
    };
    let before = LinkId::parse(link)
        .ok()
        .and_then(|id| ctx.manager.set_link_admin(&id, want));
    let (code, outcome, detail) = match before {
        None => (
            StatusCode::NOT_FOUND,
            "refused",
            format!("node {} has no link {link:?}", ctx.node),
        ),
        Some(b) if b == want => (
            StatusCode::OK,
            "unchanged",
            format!("link {link} was already {}", admin_word(want)),
        ),
        Some(_) => (
            StatusCode::OK,
            "applied",
            match want {
                LinkAdmin::Drained => format!(
                    "link {link} drained: advertised down from the next advert on; batches under way finish"
                ),
                LinkAdmin::Enabled => format!("link {link} enabled: advertised up while it is"),
            },
        ),
    };
    tracing::warn!(operator = %op, %action, %link, %outcome, "{detail}");
    // The subject is the operator's text only if it names a link here (no unbounded strings).
    let subject = if before.is_some() {
        link.to_owned()
    } else {
        String::new()
    };
    ctx.audit.record(AuditEvent::ControlAction {
        operator: op.to_string(),
        action,
        subject,
        outcome,
        detail: if before.is_some() {
            detail.clone()
        } else {
            "no such link".into()
        },
    });
    let body = json!({
        "operator": op,
        "action": action,
        "subject": link,
        "outcome": outcome,
        "detail": detail,
    });
    (code, axum::Json(body)).into_response()
}

/// `POST /v1/reload[?void_pools=true]`.
#[derive(Debug, serde::Deserialize)]
struct ReloadQuery {
    /// Void pooled keys the new configuration no longer fits (else such a reload is refused).
    #[serde(default)]
    void_pools: bool,
}

async fn reload(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    query: Result<axum::extract::Query<ReloadQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let op = match operator(&ctx, &peer, "reload") {
        Ok(op) => op,
        Err(r) => return r.into_response(),
    };
    let void_pools = match query {
        Ok(q) => q.void_pools,
        Err(e) => {
            let out = crate::reload::Outcome {
                outcome: "refused",
                detail: format!("bad query (expected void_pools=true|false): {e}"),
            };
            return answer(&op, "reload", out);
        }
    };
    // Audited by the reloader.
    let out = ctx
        .reloader
        .reload(&format!("operator:{op}"), void_pools)
        .await;
    answer(&op, "reload", out)
}

async fn rotate_certs(State(ctx): State<Ctx>, ConnectInfo(peer): ConnectInfo<Peer>) -> Response {
    let op = match operator(&ctx, &peer, "rotate_certs") {
        Ok(op) => op,
        Err(r) => return r.into_response(),
    };
    let r = ctx.rotator.clone();
    let by = op.to_string();
    // Reads files; audited by the rotator.
    let out = blocking(move || r.rotate_certs(&by), "certificate rotation").await;
    answer(&op, "rotate_certs", out)
}

async fn rotate_kek(State(ctx): State<Ctx>, ConnectInfo(peer): ConnectInfo<Peer>) -> Response {
    let op = match operator(&ctx, &peer, "rotate_kek") {
        Ok(op) => op,
        Err(r) => return r.into_response(),
    };
    let out = ctx.rotator.rotate_kek(op.as_str()).await;
    answer(&op, "rotate_kek", out)
}

async fn blocking(
    f: impl FnOnce() -> crate::reload::Outcome + Send + 'static,
    what: &str,
) -> crate::reload::Outcome {
    match tokio::task::spawn_blocking(f).await {
        Ok(out) => out,
        Err(e) => crate::reload::Outcome {
            outcome: "refused",
            detail: format!("{what} failed: {e}"),
        },
    }
}

/// The answer to a node-wide action: 409 when refused.
fn answer(op: &OperatorId, action: &str, out: crate::reload::Outcome) -> Response {
    let code = if out.outcome == "refused" {
        StatusCode::CONFLICT
    } else {
        StatusCode::OK
    };
    let body = json!({
        "operator": op,
        "action": action,
        "subject": "",
        "outcome": out.outcome,
        "detail": out.detail,
    });
    (code, axum::Json(body)).into_response()
}

fn admin_word(a: LinkAdmin) -> &'static str {
    match a {
        LinkAdmin::Drained => "drained",
        LinkAdmin::Enabled => "enabled",
    }
}
