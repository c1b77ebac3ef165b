//! Operator status over plain HTTP on a loopback listener: `GET /status` answers JSON with the
//! node's identity and, per link, its state, QBER, key rate, pool levels and whether its keys are
//! simulated. Never any key bytes. `GET /healthz` answers `ok`.

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use qkd_kms::manager::KeyManager;
use qkd_types::NodeId;
use serde::Serialize;
use tokio::net::TcpListener;

#[derive(Debug, Serialize)]
struct NodeStatus {
    node: NodeId,
    kme_id: String,
    /// True if any link is simulated: this node must not protect real data.
    simulated: bool,
    links: Vec<LinkStatusOut>,
    /// Keys erased at start because their pair's key size, policy or suite changed.
    voided_at_start: Vec<qkd_kms::manager::VoidedKeys>,
    /// Delivery notices (master's node to slaves' nodes) since start.
    delivery_notices: qkd_kms::manager::NoticeStats,
}

#[derive(Debug, Serialize)]
struct LinkStatusOut {
    #[serde(flatten)]
    level: qkd_kms::manager::LinkLevel,
    #[serde(flatten)]
    device: Option<qkd_hardware::LinkStatus>,
}

/// The status document.
pub async fn status_json(manager: &KeyManager, node: &NodeId) -> String {
    let mut links = Vec::new();
    for level in manager.link_levels() {
        let device = match manager.source(&level.link) {
            Some(s) => Some(s.status().await),
            None => None,
        };
        links.push(LinkStatusOut { level, device });
    }
    let doc = NodeStatus {
        node: node.clone(),
        kme_id: manager.config().kme.to_string(),
        simulated: links.iter().any(|l| l.level.simulated),
        links,
        voided_at_start: manager.voided_at_start(),
        delivery_notices: manager.notice_stats(),
    };
    serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// Serves the status endpoint until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    manager: KeyManager,
    node: NodeId,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return,
            a = listener.accept() => a,
        };
        let Ok((tcp, _)) = accepted else { continue };
        let manager = manager.clone();
        let node = node.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let manager = manager.clone();
                let node = node.clone();
                async move {
                    let (code, ctype, body) = match req.uri().path() {
                        "/status" => (
                            StatusCode::OK,
                            "application/json",
                            status_json(&manager, &node).await,
                        ),
                        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
                        _ => (
                            StatusCode::NOT_FOUND,
                            "text/plain",
                            "not found\n".to_string(),
                        ),
                    };
                    let mut resp = Response::new(Full::new(Bytes::from(body)));
                    *resp.status_mut() = code;
                    resp.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static(ctype),
                    );
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
