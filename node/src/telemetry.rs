//! Prometheus metrics of the node, rendered at `GET /metrics` on the admin listener (the
//! exporter's own HTTP server is never started). docs/metrics.md documents every name in
//! [`METRICS`]; a test keeps the two in step.
//!
//! Every label value comes from the configuration or a closed set: link IDs, configured SAE
//! pairs, API/operation/outcome labels, port names, alarm kinds with configured subjects,
//! certificate names. Handles are registered once here; the request path only increments atomics
//! (the API counters of [`qkd_kms::api::observe`], the engine's events through
//! [`EngineMetrics`]); gauges that mirror state (links, pools, store space) are set when the
//! monitor evaluates and when a scrape comes. No key byte, key ID or SAE-supplied string ever
//! becomes a label or a value.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{Counter, Gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use qkd_kms::api::observe::{Api, ApiCounters, Operation, Outcome};
use qkd_kms::events::{Event, Observer};
use qkd_kms::manager::{KeyManager, LinkLevel};
use qkd_types::{LinkId, SaeId};

use crate::alarms::{Alarm, AlarmId, Severity};

/// (name, type, labels, meaning) of every metric the node exports, the crate's included.
pub const METRICS: &[(&str, &str, &str, &str)] = &[
    (
        "qkd_node_info",
        "gauge",
        "node, kme_id, version",
        "Always 1; identifies the node.",
    ),
    (
        "qkd_link_up",
        "gauge",
        "link",
        "1 while the link's device reports it up, else 0.",
    ),
    (
        "qkd_link_state",
        "gauge",
        "link, state",
        "1 for the link's current state (up, down, aborted), 0 for the others.",
    ),
    (
        "qkd_link_simulated",
        "gauge",
        "link",
        "1 if the link's key is simulated (never protect data with it).",
    ),
    (
        "qkd_link_qber",
        "gauge",
        "link",
        "Quantum bit error rate the device reports, as a fraction; NaN when it reports none.",
    ),
    (
        "qkd_link_secret_key_rate_bps",
        "gauge",
        "link",
        "Secret key rate the device reports (or the node measured), bit/s.",
    ),
    (
        "qkd_link_key_generated_bits_total",
        "counter",
        "link",
        "Link key taken from this end's device and stored since start, bits.",
    ),
    (
        "qkd_link_key_consumed_bits_total",
        "counter",
        "link",
        "Link key allocated for use (one-time pads and MAC keys of relay hops) since start, bits; counted at the link's allocator (the device master end).",
    ),
    (
        "qkd_link_key_stored_bits",
        "gauge",
        "link",
        "Unallocated link key stored now, bits (including blocks the peer has not confirmed yet).",
    ),
    (
        "qkd_link_key_available_bits",
        "gauge",
        "link",
        "Unallocated link key usable now, bits.",
    ),
    (
        "qkd_link_key_capacity_bits",
        "gauge",
        "link",
        "Most unallocated link key held at once (link.capacity_bytes), bits.",
    ),
    (
        "qkd_link_device_reissued_ids_total",
        "counter",
        "link",
        "Device key IDs refused since start because they were already used on the link.",
    ),
    (
        "qkd_pair_pool_keys",
        "gauge",
        "master, slave",
        "Ready keys in the pool of a pair whose master is attached here.",
    ),
    (
        "qkd_pair_keys_delivered_total",
        "counter",
        "master, slave",
        "Keys handed to the SAE of the pair attached here (enc_keys to the master, dec_keys to the slave) since start.",
    ),
    (
        "qkd_api_requests_total",
        "counter",
        "api, operation, outcome",
        "Key-delivery requests answered since start; outcome is a status class (ok, not_admitted, not_permitted, invalid, not_found, exhausted, unavailable, internal): errors are outcome!=\"ok\".",
    ),
    (
        "qkd_relay_batch_duration_seconds",
        "histogram",
        "result",
        "Time of one relayed batch from route choice to the commit at both ends; result ok or error.",
    ),
    (
        "qkd_relay_keys_made_total",
        "counter",
        "",
        "Keys made by relayed batches that succeeded.",
    ),
    (
        "qkd_store_commit_duration_seconds",
        "histogram",
        "",
        "Time from the start of a store write transaction to its durable commit.",
    ),
    (
        "qkd_store_commits_total",
        "counter",
        "",
        "Batches of store operations committed durably (the group commit). A batch that changed nothing is dropped, not committed, and not counted; nor are the tombstone upkeep's and rotation's own transactions.",
    ),
    (
        "qkd_store_commit_failures_total",
        "counter",
        "",
        "Store commits that failed (the node then stops and recovers from disk).",
    ),
    (
        "qkd_store_bytes_written_total",
        "counter",
        "",
        "Bytes of records (table keys and sealed values) written into the store; the database writes whole pages, somewhat more.",
    ),
    (
        "qkd_store_free_bytes",
        "gauge",
        "",
        "Free bytes on the store's file system.",
    ),
    (
        "qkd_store_watermark_bytes",
        "gauge",
        "",
        "Free space below which the store refuses new key material.",
    ),
    (
        "qkd_connections_open",
        "gauge",
        "port",
        "Connections admitted and open now (etsi014, skip, grpc, peer).",
    ),
    (
        "qkd_connection_caps_hit_total",
        "counter",
        "port, cap",
        "Connections refused or held back by a cap: per_client (one identity's cap) or total (every slot in use).",
    ),
    (
        "qkd_tls_handshake_failures_total",
        "counter",
        "port",
        "TLS handshakes that failed or timed out (a client certificate the CA does not vouch for, a wrong protocol, a client too slow).",
    ),
    (
        "qkd_peer_refusals_total",
        "counter",
        "cause, tampering",
        "Neighbours' messages refused, by cause; tampering=true when a MAC, seal, signature or end-to-end check failed (a message altered or forged on its way).",
    ),
    (
        "qkd_relay_batches_voided_total",
        "counter",
        "",
        "Relayed batches voided at this node (their destination) because their end-to-end confirmation never came.",
    ),
    (
        "qkd_neighbour_reachable",
        "gauge",
        "peer",
        "0 once a neighbour missed several adverts in a row (its link is advertised down), 1 when it answers again; a series appears at the first change.",
    ),
    (
        "qkd_certificate_expiry_timestamp_seconds",
        "gauge",
        "certificate",
        "End of validity of the node's certificates (tls.cert, grpc.cert, audit.siem.client_cert, link.<id>.source.client_cert for each ETSI 014 device link), Unix seconds.",
    ),
    (
        "qkd_alarm_active",
        "gauge",
        "alarm, subject, severity",
        "1 while the alarm is active, 0 once it cleared (a series appears when an alarm first raises).",
    ),
    (
        "qkd_alarms_active",
        "gauge",
        "severity",
        "Active alarms per severity.",
    ),
    (
        "qkd_audit_records_total",
        "counter",
        "",
        "Records written to the audit log since start.",
    ),
    (
        "qkd_audit_dropped_total",
        "counter",
        "stage",
        "Audit records dropped because a queue was full: log (never written) or siem (written, not forwarded).",
    ),
    (
        "qkd_siem_connected",
        "gauge",
        "",
        "1 while a connection to the SIEM collector is up.",
    ),
    (
        "qkd_siem_messages_sent_total",
        "counter",
        "",
        "Syslog messages written to the SIEM collector.",
    ),
];

/// Bucket bounds (seconds) of the latency histograms: 1 ms to 30 s.
const BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
];

/// The node's metrics: the recorder's handle and every handle registered from configuration.
pub struct Telemetry {
    handle: Option<PrometheusHandle>,
    links: BTreeMap<LinkId, LinkHandles>,
    /// Pools of pairs whose master is attached here: master → slave → gauge. A reload adds
    /// the pairs it adds ([`Telemetry::add_pairs`]); a removed pair's gauge falls to zero.
    pools: std::sync::RwLock<PairMap<Gauge>>,
    /// Delivered keys per (master, slave) pair with an SAE attached here: the metric, and the
    /// same count readable for the ETSI 015 view's consumption.
    delivered: std::sync::RwLock<PairMap<(Counter, AtomicU64)>>,
    api: Vec<(Api, Operation, Outcome, Counter)>,
    store_free: Gauge,
    store_watermark: Gauge,
    certificates: Mutex<BTreeMap<String, Gauge>>,
    alarms: Mutex<BTreeMap<AlarmId, Gauge>>,
    alarms_by_severity: [Gauge; 4],
    audit_written: Counter,
    audit_dropped_log: Counter,
    audit_dropped_siem: Counter,
    siem_connected: Gauge,
    siem_sent: Counter,
}

type PairMap<T> = BTreeMap<SaeId, BTreeMap<SaeId, T>>;

fn pool_gauge(m: &SaeId, s: &SaeId) -> Gauge {
    metrics::gauge!("qkd_pair_pool_keys", "master" => m.to_string(), "slave" => s.to_string())
}

fn delivered_counter(m: &SaeId, s: &SaeId) -> (Counter, AtomicU64) {
    (
        metrics::counter!("qkd_pair_keys_delivered_total", "master" => m.to_string(), "slave" => s.to_string()),
        AtomicU64::new(0),
    )
}

struct LinkHandles {
    up: Gauge,
    state: [Gauge; 3],
    simulated: Gauge,
    qber: Gauge,
    rate: Gauge,
    generated: Counter,
    consumed: Counter,
    stored: Gauge,
    available: Gauge,
    capacity: Gauge,
    reissued: Counter,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("rendering", &self.handle.is_some())
            .field("links", &self.links.len())
            .finish_non_exhaustive()
    }
}

/// What identifies the node in `qkd_node_info`.
#[derive(Debug, Clone)]
pub struct NodeLabels {
    /// Node ID.
    pub node: String,
    /// KME ID.
    pub kme_id: String,
}

/// A link as a gauge reads it: up/down/aborted, QBER and rate from its device.
#[derive(Debug, Clone)]
pub struct LinkReading {
    /// The manager's view (levels and counters).
    pub level: LinkLevel,
    /// 0 up, 1 down, 2 aborted.
    pub state: usize,
    /// QBER, if reported.
    pub qber: Option<f64>,
    /// Secret key rate, if reported.
    pub rate_bps: Option<f64>,
}

/// Audit and SIEM counts, read at each refresh.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuditCounts {
    /// Records written.
    pub written: u64,
    /// Dropped before the log.
    pub dropped_log: u64,
    /// Dropped before the SIEM.
    pub dropped_siem: u64,
    /// SIEM connected now.
    pub siem_connected: bool,
    /// Messages sent to the SIEM.
    pub siem_sent: u64,
}

impl Telemetry {
    /// Installs the Prometheus recorder as the process's global recorder (when `render` is
    /// true; else every handle does nothing) and registers the handles of `links` and `pairs`
    /// (master, slave). Must run before the store writer and the key manager are built, so
    /// that their handles reach the recorder.
    pub fn install(
        render: bool,
        node: &NodeLabels,
        links: &[LinkId],
        pools: &[(SaeId, SaeId)],
        delivered: &[(SaeId, SaeId)],
    ) -> anyhow::Result<Self> {
        let handle = if render {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder)
                .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
            describe();
            Some(handle)
        } else {
            None
        };
        metrics::gauge!("qkd_node_info", "node" => node.node.clone(), "kme_id" => node.kme_id.clone(), "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        let links = links
            .iter()
            .map(|l| {
                let name = l.to_string();
                let g = |metric: &'static str| metrics::gauge!(metric, "link" => name.clone());
                let c = |metric: &'static str| metrics::counter!(metric, "link" => name.clone());
                let state = ["up", "down", "aborted"].map(
                    |s| metrics::gauge!("qkd_link_state", "link" => name.clone(), "state" => s),
                );
                (
                    l.clone(),
                    LinkHandles {
                        up: g("qkd_link_up"),
                        state,
                        simulated: g("qkd_link_simulated"),
                        qber: g("qkd_link_qber"),
                        rate: g("qkd_link_secret_key_rate_bps"),
                        generated: c("qkd_link_key_generated_bits_total"),
                        consumed: c("qkd_link_key_consumed_bits_total"),
                        stored: g("qkd_link_key_stored_bits"),
                        available: g("qkd_link_key_available_bits"),
                        capacity: g("qkd_link_key_capacity_bits"),
                        reissued: c("qkd_link_device_reissued_ids_total"),
                    },
                )
            })
            .collect();
        let mut pool_map: PairMap<Gauge> = BTreeMap::new();
        for (m, s) in pools {
            pool_map
                .entry(m.clone())
                .or_default()
                .insert(s.clone(), pool_gauge(m, s));
        }
        let mut delivered_map: PairMap<(Counter, AtomicU64)> = BTreeMap::new();
        for (m, s) in delivered {
            delivered_map
                .entry(m.clone())
                .or_default()
                .insert(s.clone(), delivered_counter(m, s));
        }
        let mut api = Vec::new();
        for a in Api::ALL {
            for op in Operation::ALL {
                for o in Outcome::ALL {
                    let c = metrics::counter!("qkd_api_requests_total", "api" => a.label(), "operation" => op.label(), "outcome" => o.label());
                    api.push((a, op, o, c));
                }
            }
        }
        let sev = |s: &'static str| metrics::gauge!("qkd_alarms_active", "severity" => s);
        Ok(Self {
            handle,
            links,
            pools: std::sync::RwLock::new(pool_map),
            delivered: std::sync::RwLock::new(delivered_map),
            api,
            store_free: metrics::gauge!("qkd_store_free_bytes"),
            store_watermark: metrics::gauge!("qkd_store_watermark_bytes"),
            certificates: Mutex::default(),
            alarms: Mutex::default(),
            alarms_by_severity: [sev("critical"), sev("major"), sev("minor"), sev("warning")],
            audit_written: metrics::counter!("qkd_audit_records_total"),
            audit_dropped_log: metrics::counter!("qkd_audit_dropped_total", "stage" => "log"),
            audit_dropped_siem: metrics::counter!("qkd_audit_dropped_total", "stage" => "siem"),
            siem_connected: metrics::gauge!("qkd_siem_connected"),
            siem_sent: metrics::counter!("qkd_siem_messages_sent_total"),
        })
    }

    /// Registers the handles of pairs a reload added (pairs already known keep theirs, and
    /// their counts).
    pub fn add_pairs(&self, pools: &[(SaeId, SaeId)], delivered: &[(SaeId, SaeId)]) {
        let mut p = self.pools.write().unwrap_or_else(|e| e.into_inner());
        for (m, s) in pools {
            p.entry(m.clone())
                .or_default()
                .entry(s.clone())
                .or_insert_with(|| pool_gauge(m, s));
        }
        let mut d = self.delivered.write().unwrap_or_else(|e| e.into_inner());
        for (m, s) in delivered {
            d.entry(m.clone())
                .or_default()
                .entry(s.clone())
                .or_insert_with(|| delivered_counter(m, s));
        }
    }

    /// Keys delivered since start to the pair (`master`, `slave`), at either end here.
    pub fn keys_delivered(&self, master: &SaeId, slave: &SaeId) -> u64 {
        self.delivered
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(master)
            .and_then(|m| m.get(slave))
            .map_or(0, |(_, n)| n.load(Ordering::Relaxed))
    }

    /// The text exposition of every metric, or `None` if metrics are not served.
    pub fn render(&self) -> Option<String> {
        self.handle.as_ref().map(PrometheusHandle::render)
    }

    /// Drains the histograms' internal buffers (call now and then; the monitor does).
    pub fn upkeep(&self) {
        if let Some(h) = &self.handle {
            h.run_upkeep();
        }
    }

    /// Sets the gauges and counters that mirror the manager's state and the API counts.
    pub fn refresh(&self, manager: &KeyManager, api: &ApiCounters) {
        for level in manager.link_levels() {
            if let Some(h) = self.links.get(&level.link) {
                h.generated
                    .absolute(level.generated_bytes.saturating_mul(8));
                h.stored.set(level.stored_bytes as f64 * 8.0);
                h.available.set(level.available_bytes as f64 * 8.0);
                h.capacity.set(level.capacity_bytes as f64 * 8.0);
                h.reissued.absolute(level.device_reissued_ids);
                h.simulated.set(if level.simulated { 1.0 } else { 0.0 });
            }
        }
        for (master, slaves) in self.pools.read().unwrap_or_else(|e| e.into_inner()).iter() {
            for (slave, gauge) in slaves {
                gauge.set(manager.pool_level(master, slave) as f64);
            }
        }
        for (a, op, o, c) in &self.api {
            c.absolute(api.count(*a, *op, *o));
        }
    }

    /// Sets a link's device-reported state, QBER and rate.
    pub fn link_reading(&self, r: &LinkReading) {
        let Some(h) = self.links.get(&r.level.link) else {
            return;
        };
        h.up.set(if r.state == 0 { 1.0 } else { 0.0 });
        for (i, g) in h.state.iter().enumerate() {
            g.set(if i == r.state { 1.0 } else { 0.0 });
        }
        h.qber.set(r.qber.unwrap_or(f64::NAN));
        h.rate.set(r.rate_bps.unwrap_or(0.0));
    }

    /// Sets the store's free space and watermark.
    pub fn store_space(&self, free: Option<u64>, watermark: u64) {
        if let Some(f) = free {
            self.store_free.set(f as f64);
        }
        self.store_watermark.set(watermark as f64);
    }

    /// Sets a certificate's expiry (Unix ms).
    pub fn certificate(&self, name: &str, not_after_ms: u64) {
        let mut certs = self.certificates.lock().unwrap_or_else(|p| p.into_inner());
        certs
            .entry(name.to_owned())
            .or_insert_with(|| {
                metrics::gauge!("qkd_certificate_expiry_timestamp_seconds", "certificate" => name.to_owned())
            })
            .set((not_after_ms / 1000) as f64);
    }

    /// Reflects an alarm's state (registered on its first raise: the subject comes from the
    /// configuration) and the count of active alarms.
    pub fn alarm(&self, alarm: &Alarm, active: bool, all: &[Alarm]) {
        let id = AlarmId {
            kind: alarm.kind,
            subject: alarm.subject.clone(),
        };
        let mut gauges = self.alarms.lock().unwrap_or_else(|p| p.into_inner());
        gauges
            .entry(id)
            .or_insert_with(|| {
                metrics::gauge!(
                    "qkd_alarm_active",
                    "alarm" => alarm.kind.label(),
                    "subject" => alarm.subject.clone(),
                    "severity" => severity_label(alarm.severity)
                )
            })
            .set(if active { 1.0 } else { 0.0 });
        for (i, s) in [
            Severity::Critical,
            Severity::Major,
            Severity::Minor,
            Severity::Warning,
        ]
        .iter()
        .enumerate()
        {
            self.alarms_by_severity[i].set(all.iter().filter(|a| a.severity == *s).count() as f64);
        }
    }

    /// Sets the audit and SIEM counts.
    pub fn audit(&self, c: AuditCounts) {
        self.audit_written.absolute(c.written);
        self.audit_dropped_log.absolute(c.dropped_log);
        self.audit_dropped_siem.absolute(c.dropped_siem);
        self.siem_connected
            .set(if c.siem_connected { 1.0 } else { 0.0 });
        self.siem_sent.absolute(c.siem_sent);
    }
}

fn severity_label(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "critical",
        Severity::Major => "major",
        Severity::Minor => "minor",
        Severity::Warning => "warning",
    }
}

fn describe() {
    for (name, kind, _, help) in METRICS {
        match *kind {
            "counter" => metrics::describe_counter!(*name, *help),
            "histogram" => metrics::describe_histogram!(*name, metrics::Unit::Seconds, *help),
            _ => metrics::describe_gauge!(*name, *help),
        }
    }
}

/// The engine's events as metrics: link key consumed per link, keys delivered per pair; and a
/// nudge to the monitor when pools change. Called on the engine's tasks: map lookups by
/// reference and atomic increments only.
pub struct EngineMetrics {
    telemetry: Arc<Telemetry>,
    wake: Arc<tokio::sync::Notify>,
}

impl EngineMetrics {
    /// Counts into `telemetry`'s handles and wakes the monitor through `wake`.
    pub fn new(telemetry: Arc<Telemetry>, wake: Arc<tokio::sync::Notify>) -> Self {
        Self { telemetry, wake }
    }
}

impl std::fmt::Debug for EngineMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineMetrics").finish_non_exhaustive()
    }
}

impl Observer for EngineMetrics {
    fn event(&self, event: &Event<'_>) {
        match event {
            Event::LinkKeyTaken { link, runs } => {
                if let Some(h) = self.telemetry.links.get(*link) {
                    let bytes: u64 = runs.iter().map(|(_, _, len)| u64::from(*len)).sum();
                    h.consumed.increment(bytes * 8);
                }
            }
            Event::Delivered {
                master,
                slaves,
                keys,
                ..
            } => {
                let delivered = self
                    .telemetry
                    .delivered
                    .read()
                    .unwrap_or_else(|e| e.into_inner());
                if let Some(by_slave) = delivered.get(*master) {
                    for s in slaves.iter() {
                        if let Some((c, n)) = by_slave.get(s) {
                            c.increment(keys.len() as u64);
                            n.fetch_add(keys.len() as u64, Ordering::Relaxed);
                        }
                    }
                }
                self.wake.notify_one();
            }
            Event::PeerRefused {
                cause, tampering, ..
            } => peer_refused(cause, *tampering),
            Event::BatchVoided { .. } => batch_voided(),
            Event::Reachability { peer, reachable } => neighbour_reachable(peer, *reachable),
            Event::ExpiryMoved { .. } | Event::PoolKeysExpired { .. } => {}
        }
    }
}

/// Counts a neighbour's refused message (causes are a fixed set of names).
fn peer_refused(cause: &'static str, tampering: bool) {
    let tampering = if tampering { "true" } else { "false" };
    metrics::counter!("qkd_peer_refusals_total", "cause" => cause, "tampering" => tampering)
        .increment(1);
}

/// Counts a batch voided at its destination.
fn batch_voided() {
    metrics::counter!("qkd_relay_batches_voided_total").increment(1);
}

/// Sets a neighbour's reachability (neighbours are configured: a bounded label set).
fn neighbour_reachable(peer: &qkd_types::NodeId, reachable: bool) {
    metrics::gauge!("qkd_neighbour_reachable", "peer" => peer.to_string()).set(if reachable {
        1.0
    } else {
        0.0
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::alarms::AlarmKind;

    /// The rendered families are exactly [`METRICS`], with the types it says, and
    /// docs/metrics.md documents each with the same type and labels. (The one test in this
    /// binary that installs the global recorder.)
    #[test]
    fn every_exported_metric_is_listed_and_documented() {
        let link = LinkId::parse("A-B").unwrap();
        let (a, b) = (
            SaeId::parse("ENC-A").unwrap(),
            SaeId::parse("ENC-B").unwrap(),
        );
        let t = Telemetry::install(
            true,
            &NodeLabels {
                node: "A".into(),
                kme_id: "KME-A".into(),
            },
            std::slice::from_ref(&link),
            &[(a.clone(), b.clone())],
            &[(a.clone(), b.clone()), (b.clone(), a.clone())],
        )
        .unwrap();
        // Touch every handle family once, the kms crate's included.
        qkd_kms::instruments::StoreInstruments::register()
            .committed(Some(std::time::Duration::from_millis(3)), 100);
        qkd_kms::instruments::RelayInstruments::register().batch(
            true,
            std::time::Duration::from_millis(30),
            64,
        );
        qkd_kms::instruments::connections_open("ETSI 014").increment(1.0);
        qkd_kms::instruments::caps_hit("ETSI 014", qkd_kms::instruments::Cap::PerClient)
            .increment(1);
        qkd_kms::instruments::handshake_failed("ETSI 014");
        peer_refused("hop_authentication", true);
        batch_voided();
        neighbour_reachable(&qkd_types::NodeId::parse("B").unwrap(), false);
        t.certificate("tls.cert", 1_000_000);
        let alarm = Alarm {
            kind: AlarmKind::LinkDown,
            subject: "A-B".into(),
            severity: Severity::Critical,
            cause: "x".into(),
            raised_at: 0,
        };
        t.alarm(&alarm, true, std::slice::from_ref(&alarm));
        t.store_space(Some(1 << 30), 64 << 20);
        t.audit(AuditCounts::default());
        t.upkeep();
        let text = t.render().unwrap();
        let mut rendered = std::collections::BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                rendered.insert(name.to_owned(), kind.to_owned());
            }
        }
        let listed: std::collections::BTreeMap<String, String> = METRICS
            .iter()
            .map(|(n, k, _, _)| ((*n).to_owned(), (*k).to_owned()))
            .collect();
        assert_eq!(rendered, listed, "{text}");
        assert_eq!(
            text.matches("# HELP ").count(),
            METRICS.len(),
            "every metric has its help"
        );
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md"))
                .unwrap();
        for (name, kind, labels, _) in METRICS {
            let labels = if labels.is_empty() { "-" } else { labels };
            let row = format!("| `{name}` | {kind} | {labels} |");
            assert!(doc.contains(&row), "docs/metrics.md lacks {row}");
        }
        assert_eq!(
            doc.matches("| `qkd_").count(),
            METRICS.len(),
            "docs/metrics.md lists a metric the node does not export"
        );
    }

    /// The runbook says what to do for every alarm.
    #[test]
    fn every_alarm_is_in_the_runbook() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/operations.md"
        ))
        .unwrap();
        for kind in AlarmKind::ALL {
            assert!(
                doc.contains(&format!("### `{}`", kind.label())),
                "docs/operations.md lacks a section for {}",
                kind.label()
            );
        }
    }
}
