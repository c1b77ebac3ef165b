//! The dashboard on the admin listener: one page (HTML, CSS and JavaScript committed in
//! `node/dashboard/` and embedded here), a JSON snapshot of what it shows, and a live feed of
//! those snapshots as server-sent events.
//!
//! * `GET /dashboard` redirects to `dashboard/`, the page; its assets and feed are relative to
//!   it (`dashboard.css`, `dashboard.js`, `events`, `state`), so that the page works unchanged
//!   behind a reverse proxy that mounts the listener under a prefix.
//! * `GET /dashboard/state` answers one snapshot (JSON); `GET /dashboard/events` streams one every
//!   [`FEED_PERIOD`], at most [`MAX_FEEDS`] streams at once (503 beyond).
//!
//! A snapshot is the network as this node's link-state database knows it (every node and link,
//! not just this node's), this node's links with their recent QBER and key rate ([`History`],
//! bounded, sampled by the monitor), the pools of the pairs whose master is here, and the active
//! alarms. It is built from memory only (no device is asked), so that viewers cost the node
//! little. It never holds a key byte or a key ID: levels, rates and identifiers only.
//!
//! Every answer carries a strict Content-Security-Policy: the page loads its own script and
//! style and nothing else, connects only back to this listener, and may not be framed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use qkd_hardware::LinkState;
use qkd_kms::manager::KeyManager;
use qkd_kms::relay::topology::Topology;
use qkd_types::{LinkId, NodeId, SaeId, UnixMillis};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::IntervalStream;

use crate::alarms::Alarm;
use crate::monitor::Monitor;

/// How often the live feed sends a snapshot: the bound on what one viewer costs.
pub const FEED_PERIOD: Duration = Duration::from_secs(1);
/// Live feeds served at once; a viewer beyond gets 503 and its browser retries.
pub const MAX_FEEDS: usize = 16;
/// Samples kept per link: two minutes at one a second.
pub const HISTORY_LEN: usize = 120;
/// Shortest spacing of two samples of a link (the monitor may observe more often).
pub const SAMPLE_SPACING_MS: u64 = 1_000;

/// The Content-Security-Policy of every dashboard answer: own script, style and feed only; no
/// inline script or style, no plugins, no forms, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                       img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
                       form-action 'none'; frame-ancestors 'none'";

const PAGE: &str = include_str!("../dashboard/index.html");
const STYLE: &str = include_str!("../dashboard/dashboard.css");
const SCRIPT: &str = include_str!("../dashboard/dashboard.js");

/// One observation of a link by the monitor.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// When it was observed.
    pub at: UnixMillis,
    /// The state the source reported (down if it did not answer).
    pub state: LinkState,
    /// QBER, if the source reports it.
    pub qber: Option<f64>,
    /// Secret key rate in bit/s, if the source reports it.
    pub rate_bps: Option<f64>,
}

/// The recent readings of this node's links: the latest one of each, and a bounded series of
/// samples at least [`SAMPLE_SPACING_MS`] apart, at most [`HISTORY_LEN`] per link.
#[derive(Debug, Default)]
pub struct History {
    links: BTreeMap<LinkId, (Reading, VecDeque<Sample>)>,
}

/// One point of a sparkline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
struct Sample {
    /// Unix ms.
    t: UnixMillis,
    qber: Option<f64>,
    rate_bps: Option<f64>,
}

impl History {
    /// Records a reading of `link`; it becomes a sample if the last one is old enough.
    pub fn record(&mut self, link: &LinkId, reading: Reading) {
        let sample = Sample {
            t: reading.at,
            qber: reading.qber,
            rate_bps: reading.rate_bps,
        };
        let (latest, series) = self
            .links
            .entry(link.clone())
            .or_insert_with(|| (reading.clone(), VecDeque::with_capacity(HISTORY_LEN)));
        *latest = reading;
        if series
            .back()
            .is_some_and(|s| sample.t < s.t.saturating_add(SAMPLE_SPACING_MS))
        {
            return;
        }
        if series.len() == HISTORY_LEN {
            series.pop_front();
        }
        series.push_back(sample);
    }

    fn latest(&self, link: &LinkId) -> Option<&Reading> {
        self.links.get(link).map(|(r, _)| r)
    }

    fn series(&self, link: &LinkId) -> Vec<Sample> {
        self.links
            .get(link)
            .map(|(_, s)| s.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// What the dashboard shows, as sent to the page.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    node: NodeId,
    kme_id: String,
    /// True if any link of this node is simulated.
    simulated: bool,
    /// When the snapshot was taken (Unix ms).
    at: UnixMillis,
    /// How often the feed sends one (ms).
    period_ms: u64,
    thresholds: ThresholdsOut,
    /// Every node this node knows of: configured, advertising, or named by an advert.
    nodes: Vec<NodeOut>,
    /// Every link this node knows of.
    links: Vec<LinkOut>,
    /// The pools of the pairs whose master is attached here.
    pools: Vec<PoolOut>,
    /// Active alarms.
    alarms: Vec<Alarm>,
}

#[derive(Debug, Serialize)]
struct ThresholdsOut {
    qber_max: f64,
    pool_min_keys: u64,
}

/// A node on the map.
#[derive(Debug, Serialize, PartialEq)]
struct NodeOut {
    id: NodeId,
    /// `self` (this node), `up` (its advert is held) or `unreachable` (known, no advert).
    state: &'static str,
}

/// A link on the map, with this node's readings if it is one of its own.
#[derive(Debug, Serialize, PartialEq)]
struct LinkOut {
    id: LinkId,
    /// Its two ends (sorted).
    ends: [NodeId; 2],
    /// `up` (both ends advertise it up), `down`, `aborted` (this node's device stopped it) or
    /// `unknown` (one end unheard).
    state: &'static str,
    /// Why it is not up, when known.
    reason: Option<String>,
    /// Whether this node is one of its ends.
    local: bool,
    /// Unallocated link key, bits (the larger of the ends' reports).
    available_bits: Option<u64>,
    qber: Option<f64>,
    rate_bps: Option<f64>,
    /// Recent samples (this node's links only).
    history: Vec<Sample>,
}

#[derive(Debug, Serialize)]
struct PoolOut {
    master: SaeId,
    slave: SaeId,
    keys: u64,
    capacity: u64,
}

/// One end's report of a link, from its advert.
#[derive(Debug, Clone, Copy)]
struct EndReport {
    up: bool,
    available_bytes: u64,
}

/// The map: nodes and links as the link-state database, the configuration and this node's own
/// readings show them.
fn network(
    me: &NodeId,
    configured: impl IntoIterator<Item = NodeId>,
    topology: &Topology,
    local: &[(LinkId, NodeId)],
    history: &History,
) -> (Vec<NodeOut>, Vec<LinkOut>) {
    let advertised: BTreeSet<NodeId> = topology.adverts().map(|a| a.origin.clone()).collect();
    let mut known: BTreeSet<NodeId> = configured.into_iter().collect();
    known.insert(me.clone());
    // Link → (its ends, what each advertising end says).
    let mut links: BTreeMap<LinkId, ([NodeId; 2], BTreeMap<NodeId, EndReport>)> = BTreeMap::new();
    for advert in topology.adverts() {
        known.insert(advert.origin.clone());
        for l in &advert.links {
            known.insert(l.peer.clone());
            let ends = sorted(advert.origin.clone(), l.peer.clone());
            links
                .entry(l.link.clone())
                .or_insert((ends, BTreeMap::new()))
                .1
                .insert(
                    advert.origin.clone(),
                    EndReport {
                        up: l.up,
                        available_bytes: l.available_bytes,
                    },
                );
        }
    }
    for (link, peer) in local {
        known.insert(peer.clone());
        links
            .entry(link.clone())
            .or_insert((sorted(me.clone(), peer.clone()), BTreeMap::new()));
    }
    let nodes = known
        .into_iter()
        .map(|id| NodeOut {
            state: if &id == me {
                "self"
            } else if advertised.contains(&id) {
                "up"
            } else {
                "unreachable"
            },
            id,
        })
        .collect();
    let links = links
        .into_iter()
        .map(|(id, (ends, reports))| {
            let (mut state, mut reason) = match (reports.get(&ends[0]), reports.get(&ends[1])) {
                (Some(a), Some(b)) if a.up && b.up => ("up", None),
                (Some(a), Some(b)) => {
                    let who: Vec<&str> = [(a, &ends[0]), (b, &ends[1])]
                        .iter()
                        .filter(|(r, _)| !r.up)
                        .map(|(_, n)| n.as_str())
                        .collect();
                    let verb = if who.len() > 1 {
                        "advertise"
                    } else {
                        "advertises"
                    };
                    (
                        "down",
                        Some(format!("{} {verb} it down", who.join(" and "))),
                    )
                }
                (Some(r), None) | (None, Some(r)) if !r.up => {
                    let n = if reports.contains_key(&ends[0]) {
                        &ends[0]
                    } else {
                        &ends[1]
                    };
                    ("down", Some(format!("{n} advertises it down")))
                }
                _ => {
                    let unheard: Vec<&str> = ends
                        .iter()
                        .filter(|n| !reports.contains_key(*n))
                        .map(NodeId::as_str)
                        .collect();
                    (
                        "unknown",
                        Some(format!("no advert from {}", unheard.join(" or "))),
                    )
                }
            };
            let is_local = ends.contains(me);
            let reading = history.latest(&id).filter(|_| is_local);
            match reading.map(|r| &r.state) {
                Some(LinkState::Down { reason: r }) => (state, reason) = ("down", Some(r.clone())),
                Some(LinkState::Aborted { reason: r }) => {
                    (state, reason) = ("aborted", Some(r.clone()));
                }
                // The device is up but this node advertises the link down: the peer is silent.
                Some(LinkState::Up) if reports.get(me).is_some_and(|r| !r.up) => {
                    let peer = if &ends[0] == me { &ends[1] } else { &ends[0] };
                    reason = Some(format!(
                        "the device is up, but node {peer} does not answer this node"
                    ));
                }
                _ => {}
            }
            LinkOut {
                available_bits: reports
                    .values()
                    .map(|r| r.available_bytes.saturating_mul(8))
                    .max(),
                qber: reading.and_then(|r| r.qber),
                rate_bps: reading.and_then(|r| r.rate_bps),
                history: if is_local {
                    history.series(&id)
                } else {
                    Vec::new()
                },
                local: is_local,
                ends,
                state,
                reason,
                id,
            }
        })
        .collect();
    (nodes, links)
}

fn sorted(a: NodeId, b: NodeId) -> [NodeId; 2] {
    if a <= b { [a, b] } else { [b, a] }
}

/// What the dashboard's endpoints read.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The key manager (levels, link-state database, configuration).
    pub manager: KeyManager,
    /// The monitor (alarms, readings, pools, thresholds).
    pub monitor: Arc<Monitor>,
    /// Permits for live feeds.
    feeds: Arc<Semaphore>,
}

impl Ctx {
    /// The dashboard of this manager and monitor.
    pub fn new(manager: KeyManager, monitor: Arc<Monitor>) -> Self {
        Self {
            manager,
            monitor,
            feeds: Arc::new(Semaphore::new(MAX_FEEDS)),
        }
    }

    /// A snapshot now.
    pub fn snapshot(&self) -> Snapshot {
        let cfg = self.manager.config();
        let levels = self.manager.link_levels();
        let local: Vec<(LinkId, NodeId)> = levels
            .iter()
            .map(|l| (l.link.clone(), l.peer.clone()))
            .collect();
        let configured = cfg
            .relay
            .kme_ids
            .keys()
            .chain(cfg.neighbours.keys())
            .cloned()
            .collect::<Vec<_>>();
        let (nodes, links) = self
            .monitor
            .with_history(|h| network(&cfg.node, configured, &self.manager.topology(), &local, h));
        let limits = self.monitor.thresholds();
        Snapshot {
            node: cfg.node.clone(),
            kme_id: cfg.kme.to_string(),
            simulated: levels.iter().any(|l| l.simulated),
            at: self.monitor.now(),
            period_ms: FEED_PERIOD.as_millis() as u64,
            thresholds: ThresholdsOut {
                qber_max: limits.qber_max,
                pool_min_keys: limits.pool_min_keys,
            },
            nodes,
            links,
            pools: self
                .monitor
                .pools()
                .iter()
                .map(|(m, s)| PoolOut {
                    master: m.clone(),
                    slave: s.clone(),
                    keys: self.manager.pool_level(m, s),
                    capacity: u64::from(cfg.relay.pool_keys),
                })
                .collect(),
            alarms: self.monitor.active(),
        }
    }
}

/// The dashboard's routes, with their state.
pub fn router(ctx: Ctx) -> Router {
    Router::new()
        .route("/dashboard", get(|| async { redirect_to_page() }))
        .route(
            "/dashboard/",
            get(|| async { asset("text/html; charset=utf-8", PAGE) }),
        )
        .route(
            "/dashboard/dashboard.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route(
            "/dashboard/dashboard.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route("/dashboard/state", get(state))
        .route("/dashboard/events", get(events))
        .with_state(ctx)
}

/// A response with the dashboard's security headers.
fn secured(status: StatusCode, content_type: &'static str, body: impl Into<String>) -> Response {
    let mut r = (status, body.into()).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    add_security_headers(h);
    r
}

fn add_security_headers(h: &mut axum::http::HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// `/dashboard` → `dashboard/`, relative, so that a proxy's prefix is kept.
fn redirect_to_page() -> Response {
    let mut r = secured(StatusCode::PERMANENT_REDIRECT, "text/plain", "");
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static("dashboard/"));
    r
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    secured(StatusCode::OK, content_type, body)
}

fn snapshot_json(ctx: &Ctx) -> String {
    serde_json::to_string(&ctx.snapshot()).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

async fn state(State(ctx): State<Ctx>) -> Response {
    secured(StatusCode::OK, "application/json", snapshot_json(&ctx))
}

async fn events(State(ctx): State<Ctx>) -> Response {
    let Ok(permit) = ctx.feeds.clone().try_acquire_owned() else {
        let mut r = secured(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("at most {MAX_FEEDS} live feeds at once\n"),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return r;
    };
    let mut tick = tokio::time::interval(FEED_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let stream = IntervalStream::new(tick).map(move |_| {
        // The permit lives as long as the stream: dropped when the viewer goes.
        let _held = &permit;
        Ok::<_, std::convert::Infallible>(
            Event::default().event("snapshot").data(snapshot_json(&ctx)),
        )
    });
    let mut r = Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response();
    let h = r.headers_mut();
    add_security_headers(h);
    // Reverse proxies (nginx) must pass events on as they come.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use qkd_kms::relay::topology::{LinkAdvert, NodeAdvert};

    fn id(s: &str) -> NodeId {
        NodeId::parse(s).unwrap()
    }

    fn link(s: &str) -> LinkId {
        LinkId::parse(s).unwrap()
    }

    fn advert(origin: &str, seq: u64, links: &[(&str, &str, bool)]) -> NodeAdvert {
        NodeAdvert {
            origin: id(origin),
            seq,
            links: links
                .iter()
                .map(|(l, peer, up)| LinkAdvert {
                    link: link(l),
                    peer: id(peer),
                    up: *up,
                    available_bytes: 100,
                    secret_key_rate_bps: None,
                })
                .collect(),
        }
    }

    fn reading(at: u64, state: LinkState) -> Reading {
        Reading {
            at,
            state,
            qber: Some(0.01),
            rate_bps: Some(1e6),
        }
    }

    #[test]
    fn history_is_bounded_and_spaced() {
        let mut h = History::default();
        let l = link("A-B");
        for i in 0..(HISTORY_LEN as u64 * 4) {
            // Four readings a second: one sample a second.
            h.record(&l, reading(i * 250, LinkState::Up));
        }
        let s = h.series(&l);
        assert_eq!(s.len(), HISTORY_LEN);
        assert!(s.windows(2).all(|w| w[1].t - w[0].t == SAMPLE_SPACING_MS));
        assert_eq!(h.latest(&l).unwrap().at, (HISTORY_LEN as u64 * 4 - 1) * 250);
    }

    #[test]
    fn the_map_shows_the_whole_network_and_each_link_state() {
        // A triangle A, B, C and D configured but silent; C says C-A is down; B's advert of
        // B-D has no answer from D.
        let mut t = Topology::new();
        t.update(advert("A", 1, &[("A-B", "B", true), ("A-C", "C", true)]), 0);
        t.update(
            advert(
                "B",
                1,
                &[("A-B", "A", true), ("B-C", "C", true), ("B-D", "D", true)],
            ),
            0,
        );
        t.update(
            advert("C", 1, &[("A-C", "A", false), ("B-C", "B", true)]),
            0,
        );
        let mut h = History::default();
        h.record(&link("A-B"), reading(0, LinkState::Up));
        let local = [(link("A-B"), id("B")), (link("A-C"), id("C"))];
        let (nodes, links) = network(&id("A"), [id("E")], &t, &local, &h);
        let states: Vec<(&str, &str)> = nodes.iter().map(|n| (n.id.as_str(), n.state)).collect();
        assert_eq!(
            states,
            [
                ("A", "self"),
                ("B", "up"),
                ("C", "up"),
                ("D", "unreachable"),
                ("E", "unreachable")
            ]
        );
        let states: Vec<(&str, &str, bool)> = links
            .iter()
            .map(|l| (l.id.as_str(), l.state, l.local))
            .collect();
        assert_eq!(
            states,
            [
                ("A-B", "up", true),
                ("A-C", "down", true),
                ("B-C", "up", false),
                ("B-D", "unknown", false)
            ]
        );
        assert_eq!(links[1].reason.as_deref(), Some("C advertises it down"));
        assert_eq!(links[0].history.len(), 1);
        assert!(links[2].history.is_empty() && links[2].qber.is_none());

        // This node's device reports A-B down: the map says so at once, with the reason.
        h.record(
            &link("A-B"),
            reading(
                5,
                LinkState::Down {
                    reason: "fibre cut".into(),
                },
            ),
        );
        let (_, links) = network(&id("A"), [], &t, &local, &h);
        assert_eq!(links[0].state, "down");
        assert_eq!(links[0].reason.as_deref(), Some("fibre cut"));

        // The device is up again, but A advertises A-B down: B has stopped answering.
        h.record(&link("A-B"), reading(2_000, LinkState::Up));
        t.update(
            advert("A", 2, &[("A-B", "B", false), ("A-C", "C", true)]),
            0,
        );
        let (_, links) = network(&id("A"), [], &t, &local, &h);
        assert_eq!(links[0].state, "down");
        assert!(
            links[0]
                .reason
                .as_deref()
                .unwrap()
                .contains("node B does not answer"),
            "{:?}",
            links[0].reason
        );
    }

    #[test]
    fn the_csp_allows_nothing_from_elsewhere() {
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(CSP.contains(directive), "{directive}");
        }
        assert!(!CSP.contains("unsafe") && !CSP.contains("http"));
        // The page loads nothing from another origin and has no inline script or style.
        for asset in [PAGE, STYLE, SCRIPT] {
            // The SVG namespace is a name, not a fetch.
            let asset = asset.replace("\"http://www.w3.org/2000/svg\"", "");
            assert!(!asset.contains("http://") && !asset.contains("https://"));
            assert!(!asset.contains("//cdn") && !asset.contains("@import"));
        }
        assert!(!PAGE.contains("<script>") && !PAGE.contains("style="));
    }
}
