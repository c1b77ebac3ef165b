//! The admin listener: operator status over plain HTTP on a loopback listener (axum).
//!
//! * `GET /status` answers JSON with the node's identity, per link its source kind (`simulated`,
//!   `etsi014`), state, QBER, key rate as the source reports them, pool levels and whether its
//!   keys are simulated, the configuration warnings an operator must see (SAE pairs configured
//!   `qkd-only`), the active alarms, the requests each key-delivery API answered, per operation
//!   and outcome class (`api_requests`), and the node's view of the network from its link-state
//!   database (`routing`: origins known, links usable for routes).
//! * `GET /alarms` answers the active alarms (JSON array).
//! * `GET /restconf/data/etsi-qkd-sdn-node:qkd_node` answers the ETSI GS QKD 015-style view
//!   (`etsi015`).
//! * `GET /metrics` answers the Prometheus text exposition (docs/metrics.md), if metrics are on.
//! * `GET /healthz` answers `ok` while the node serves.
//! * `GET /dashboard` and below: the operators' web page and its live feed
//!   ([`crate::dashboard`]).
//!
//! Never any key bytes, and no SAE IDs or key IDs in the counters.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use qkd_kms::api::observe::ApiCounters;
use qkd_kms::manager::KeyManager;
use qkd_types::{NodeId, SaeId};

use crate::monitor::Monitor;
use crate::telemetry::Telemetry;
use serde::Serialize;
use tokio::net::TcpListener;

/// How long `/status` waits for one link's source to report (a device is asked over the
/// network).
const DEVICE_STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A configuration warning shown at start and in `/status`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PairWarning {
    /// The two SAEs of the pair.
    pub saes: [SaeId; 2],
    /// What the operator must know.
    pub warning: String,
}

impl PairWarning {
    /// The warning for a pair configured `qkd-only`.
    pub fn qkd_only(a: SaeId, b: SaeId) -> Self {
        let warning = format!(
            "pair ({a}, {b}) is configured qkd-only: end-to-end PQ protection is OFF for this \
             pair; every trusted node on its path can read its keys"
        );
        Self {
            saes: [a, b],
            warning,
        }
    }
}

#[derive(Debug, Serialize)]
struct NodeStatus {
    node: NodeId,
    kme_id: String,
    /// True if any link is simulated: this node must not protect real data.
    simulated: bool,
    links: Vec<LinkStatusOut>,
    /// Keys erased at start because their pair's key size, policy or suite changed.
    voided_at_start: Vec<qkd_kms::manager::VoidedKeys>,
    /// Keys voided since start by reloads that changed their pair (`qkdctl reload --void-pools`).
    voided_by_reload: Vec<qkd_kms::manager::VoidedKeys>,
    /// Delivery notices (master's node to slaves' nodes) since start.
    delivery_notices: qkd_kms::manager::NoticeStats,
    /// Pairs of this node's SAEs configured `qkd-only`.
    warnings: Vec<PairWarning>,
    /// Alarms active now.
    alarms: Vec<crate::alarms::Alarm>,
    /// Requests answered since start, per key-delivery API, operation and outcome.
    api_requests: serde_json::Value,
    /// The network as this node's link-state database sees it now.
    routing: RoutingOut,
}

/// The node's view of the network: what its routes are computed over.
#[derive(Debug, Serialize)]
struct RoutingOut {
    /// Nodes whose link-state advert this node holds (itself included).
    known_nodes: usize,
    /// Links both ends advertise as up (each once, by link ID): the graph routes use.
    usable_links: std::collections::BTreeSet<qkd_types::LinkId>,
}

impl RoutingOut {
    fn of(topology: &qkd_kms::relay::topology::Topology) -> Self {
        Self {
            known_nodes: topology.adverts().count(),
            usable_links: topology.edges().into_values().map(|e| e.link).collect(),
        }
    }
}

#[derive(Debug, Serialize)]
struct LinkStatusOut {
    #[serde(flatten)]
    level: qkd_kms::manager::LinkLevel,
    #[serde(flatten)]
    device: Option<qkd_hardware::LinkStatus>,
}

/// What the endpoint reads.
#[derive(Debug, Clone)]
struct Ctx {
    manager: KeyManager,
    node: NodeId,
    api_requests: Arc<ApiCounters>,
    monitor: Arc<Monitor>,
    telemetry: Arc<Telemetry>,
    etsi015: crate::etsi015::SharedSetup,
    clock: Arc<dyn qkd_types::Clock>,
}

/// What a link's source reports now; a device that does not answer within
/// [`DEVICE_STATUS_TIMEOUT`] counts as down (a real device is asked over the network: a hung one
/// must not hang the page).
pub async fn device_status(
    manager: &KeyManager,
    link: &qkd_types::LinkId,
) -> Option<qkd_hardware::LinkStatus> {
    let source = manager.source(link)?;
    Some(
        tokio::time::timeout(DEVICE_STATUS_TIMEOUT, source.status())
            .await
            .unwrap_or_else(|_| qkd_hardware::LinkStatus {
                state: qkd_hardware::LinkState::Down {
                    reason: format!(
                        "the device did not answer its status within {} s",
                        DEVICE_STATUS_TIMEOUT.as_secs()
                    ),
                },
                qber: None,
                secret_key_rate_bps: Some(0.0),
            }),
    )
}

/// The status document.
async fn status_json(ctx: &Ctx) -> String {
    let mut links = Vec::new();
    for level in ctx.manager.link_levels() {
        let device = device_status(&ctx.manager, &level.link).await;
        links.push(LinkStatusOut { level, device });
    }
    let doc = NodeStatus {
        node: ctx.node.clone(),
        kme_id: ctx.manager.config().kme.to_string(),
        simulated: links.iter().any(|l| l.level.simulated),
        links,
        voided_at_start: ctx.manager.voided_at_start(),
        voided_by_reload: ctx.manager.voided_by_reload(),
        delivery_notices: ctx.manager.notice_stats(),
        warnings: ctx
            .monitor
            .qkd_only()
            .into_iter()
            .map(|[a, b]| PairWarning::qkd_only(a, b))
            .collect(),
        alarms: ctx.monitor.active(),
        api_requests: serde_json::to_value(ctx.api_requests.as_ref())
            .unwrap_or(serde_json::Value::Null),
        routing: RoutingOut::of(&ctx.manager.topology()),
    };
    serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// What the admin listener shows beyond the manager's own state.
#[derive(Debug)]
pub struct AdminParts {
    /// This node.
    pub node: NodeId,
    /// Requests answered per API, operation and outcome.
    pub api_requests: Arc<ApiCounters>,
    /// Alarms.
    pub monitor: Arc<Monitor>,
    /// Metrics.
    pub telemetry: Arc<Telemetry>,
    /// The configured part of the ETSI 015 view (a reload replaces it).
    pub etsi015: crate::etsi015::SharedSetup,
    /// The node's clock.
    pub clock: Arc<dyn qkd_types::Clock>,
}

/// Serves the admin endpoints until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    manager: KeyManager,
    parts: AdminParts,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let dashboard = crate::dashboard::Ctx::new(manager.clone(), parts.monitor.clone());
    let ctx = Ctx {
        manager,
        node: parts.node,
        api_requests: parts.api_requests,
        monitor: parts.monitor,
        telemetry: parts.telemetry,
        etsi015: parts.etsi015,
        clock: parts.clock,
    };
    let app = Router::new()
        .route("/status", get(status))
        .route("/alarms", get(alarms))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(crate::etsi015::PATH, get(etsi015))
        .with_state(ctx)
        .merge(crate::dashboard::router(dashboard))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") });
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::warn!(error = %e, "status endpoint stopped");
    }
}

async fn status(State(ctx): State<Ctx>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        status_json(&ctx).await,
    )
}

async fn etsi015(State(ctx): State<Ctx>) -> impl IntoResponse {
    use crate::etsi015::{MEDIA_TYPE, Observed, ObservedLink, view};
    let mut links = Vec::new();
    for level in ctx.manager.link_levels() {
        let device = device_status(&ctx.manager, &level.link).await;
        let peer_reachable = ctx.manager.neighbour_reachable(&level.peer);
        links.push(ObservedLink {
            level,
            device,
            peer_reachable,
        });
    }
    let setup = crate::etsi015::current(&ctx.etsi015);
    let setup = &*setup;
    let apps = setup
        .apps
        .iter()
        .map(|a| {
            let delivered = ctx.telemetry.keys_delivered(&a.master, &a.slave);
            let ready = a
                .master_here
                .then(|| ctx.manager.pool_level(&a.master, &a.slave));
            (delivered, ready)
        })
        .collect();
    let seen = Observed {
        now: ctx.clock.now(),
        links,
        topology: ctx.manager.topology(),
        apps,
    };
    (
        [(header::CONTENT_TYPE, MEDIA_TYPE)],
        serde_json::to_string_pretty(&view(setup, &seen))
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")),
    )
}

async fn alarms(State(ctx): State<Ctx>) -> impl IntoResponse {
    axum::Json(ctx.monitor.active())
}

async fn metrics(State(ctx): State<Ctx>) -> axum::response::Response {
    ctx.monitor.refresh_metrics();
    match ctx.telemetry.render() {
        Some(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "metrics are off ([metrics] enabled = false)\n",
        )
            .into_response(),
    }
}
