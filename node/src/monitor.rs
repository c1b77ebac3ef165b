//! The monitor: the daemon's shell around the alarm evaluator. Every `alarms.interval_ms` (and
//! soon after the engine reports a delivery) it observes the node (each link's device status,
//! the pools, the store's space and health, the certificates' expiry, the audit counts), feeds
//! the observation to [`alarms::Evaluator`], and turns each transition into a log line, an
//! audit record and the `qkd_alarm_active` metric; `/status` and `/alarms` show what is active.
//! It also refreshes the gauges that mirror state, and keeps the recent readings of each link
//! that the dashboard draws (bounded: [`crate::dashboard::History`]).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qkd_hardware::LinkState;
use qkd_kms::api::observe::{Api, ApiCounters, ApiObserver, Operation, Outcome};
use qkd_kms::manager::KeyManager;
use qkd_types::{Clock, SaeId, UnixMillis};
use tokio::sync::{Notify, watch};

use crate::alarms::{
    Alarm, CertObs, Evaluator, LinkCondition, LinkObs, Observed, PoolObs, StoreObs, Thresholds,
    Transition,
};
use crate::audit::{AuditEvent, AuditLog};
use crate::dashboard::{History, Reading};
use crate::siem::Forwarder;
use crate::telemetry::{AuditCounts, LinkReading, Telemetry};

/// How long one link's device may take to report its status.
const DEVICE_STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// Shortest time between two evaluations woken by engine events.
const MIN_GAP: Duration = Duration::from_millis(100);

/// What the monitor watches and where it reports.
#[derive(Debug)]
pub struct Monitor {
    manager: KeyManager,
    clock: Arc<dyn Clock>,
    telemetry: Arc<Telemetry>,
    api: Arc<ApiCounters>,
    audit: AuditLog,
    siem: Option<Arc<Forwarder>>,
    /// Pairs whose pool is here: (master attached here, slave elsewhere). Replaced by a reload.
    pools: Mutex<Vec<(SaeId, SaeId)>>,
    /// Pairs of this node's SAEs configured `qkd-only`. Replaced by a reload.
    qkd_only: Mutex<Vec<[SaeId; 2]>>,
    /// (configuration name, end of validity) of the node's certificates, read at start and
    /// updated by a certificate rotation ([`Monitor::set_certificate`]).
    certificates: Mutex<Vec<(String, UnixMillis)>>,
    evaluator: Mutex<Evaluator>,
    active: Mutex<Vec<Alarm>>,
    /// Woken by engine events (see [`crate::telemetry::EngineMetrics`]).
    wake: Arc<Notify>,
    /// Failed TLS handshakes per port already audited.
    handshakes_audited: Mutex<[u64; qkd_kms::instruments::PORTS.len()]>,
    /// The thresholds the evaluator holds the observations to (shown on the dashboard).
    thresholds: Thresholds,
    /// Recent readings of each link, for the dashboard.
    history: Mutex<History>,
}

/// What the monitor is built from.
#[derive(Debug)]
pub struct MonitorParts {
    /// The key manager.
    pub manager: KeyManager,
    /// The clock alarms are timed by.
    pub clock: Arc<dyn Clock>,
    /// Metric handles.
    pub telemetry: Arc<Telemetry>,
    /// The API counters.
    pub api: Arc<ApiCounters>,
    /// The audit log.
    pub audit: AuditLog,
    /// The SIEM forwarder, if configured.
    pub siem: Option<Arc<Forwarder>>,
    /// Pairs whose pool is here.
    pub pools: Vec<(SaeId, SaeId)>,
    /// Pairs configured `qkd-only`.
    pub qkd_only: Vec<[SaeId; 2]>,
    /// Certificates and their expiry.
    pub certificates: Vec<(String, UnixMillis)>,
    /// Thresholds.
    pub thresholds: Thresholds,
    /// The engine's nudge.
    pub wake: Arc<Notify>,
}

impl Monitor {
    /// A monitor with no alarm active yet.
    pub fn new(p: MonitorParts) -> Arc<Self> {
        for (name, not_after) in &p.certificates {
            p.telemetry.certificate(name, *not_after);
        }
        Arc::new(Self {
            manager: p.manager,
            clock: p.clock,
            telemetry: p.telemetry,
            api: p.api,
            audit: p.audit,
            siem: p.siem,
            pools: Mutex::new(p.pools),
            qkd_only: Mutex::new(p.qkd_only),
            certificates: Mutex::new(p.certificates),
            evaluator: Mutex::new(Evaluator::new(p.thresholds.clone())),
            thresholds: p.thresholds,
            history: Mutex::default(),
            active: Mutex::default(),
            wake: p.wake,
            handshakes_audited: Mutex::new(qkd_kms::instruments::handshake_failures()),
        })
    }

    /// The alarms active now.
    pub fn active(&self) -> Vec<Alarm> {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs `f` over the recent readings of the links.
    pub fn with_history<R>(&self, f: impl FnOnce(&History) -> R) -> R {
        f(&self.history.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The thresholds alarms are raised at.
    pub fn thresholds(&self) -> &Thresholds {
        &self.thresholds
    }

    /// The pairs whose pool is here: (master attached here, slave elsewhere).
    pub fn pools(&self) -> Vec<(SaeId, SaeId)> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The pairs of this node's SAEs configured `qkd-only`.
    pub fn qkd_only(&self) -> Vec<[SaeId; 2]> {
        self.qkd_only
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A reload changed the pairs: those whose pool is here, and those configured `qkd-only`
    /// (their standing alarm follows at the next evaluation).
    pub fn set_pairs(&self, pools: Vec<(SaeId, SaeId)>, qkd_only: Vec<[SaeId; 2]>) {
        *self.pools.lock().unwrap_or_else(|p| p.into_inner()) = pools;
        *self.qkd_only.lock().unwrap_or_else(|p| p.into_inner()) = qkd_only;
    }

    /// The time on the monitor's clock.
    pub fn now(&self) -> UnixMillis {
        self.clock.now()
    }

    /// Refreshes the gauges that mirror state (before a scrape).
    pub fn refresh_metrics(&self) {
        self.telemetry.refresh(&self.manager, &self.api);
        self.telemetry.audit(self.audit_counts());
    }

    /// Evaluates every `interval`, and at most every [`MIN_GAP`] when woken, until `stop`.
    pub async fn run(self: Arc<Self>, interval: Duration, mut stop: watch::Receiver<bool>) {
        loop {
            self.tick(false).await;
            let woken = tokio::select! {
                () = tokio::time::sleep(interval) => false,
                () = self.wake.notified() => true,
                _ = stop.wait_for(|v| *v) => return,
            };
            if woken {
                tokio::time::sleep(MIN_GAP).await;
            }
        }
    }

    /// The new end of validity of the certificate `name` (`tls.cert`, ...) after a rotation, for
    /// the metrics at once and the `certificate_expiry` alarm from the next evaluation on.
    pub fn set_certificate(&self, name: &str, not_after: UnixMillis) {
        let mut certs = self.certificates.lock().unwrap_or_else(|p| p.into_inner());
        match certs.iter_mut().find(|(n, _)| n == name) {
            Some(entry) => entry.1 = not_after,
            None => certs.push((name.to_owned(), not_after)),
        }
        self.telemetry.certificate(name, not_after);
    }

    /// New alarm thresholds, from the next evaluation on (a configuration reload).
    pub fn set_thresholds(&self, thresholds: crate::alarms::Thresholds) {
        self.evaluator
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_limits(thresholds);
    }

    /// One observation and evaluation; `store_failed` when the store just failed.
    pub async fn tick(&self, store_failed: bool) {
        let obs = self.observe(store_failed).await;
        let now = self.clock.now();
        let transitions = self
            .evaluator
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .evaluate(&obs, now);
        let active = self
            .evaluator
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .active();
        *self.active.lock().unwrap_or_else(|p| p.into_inner()) = active.clone();
        for t in transitions {
            match t {
                Transition::Raise(alarm) => {
                    tracing::warn!(alarm = alarm.kind.label(), subject = %alarm.subject, severity = ?alarm.severity, "ALARM raised: {}", alarm.cause);
                    self.telemetry.alarm(&alarm, true, &active);
                    self.audit.record(AuditEvent::AlarmRaised { alarm });
                }
                Transition::Clear { alarm, cause, .. } => {
                    tracing::info!(alarm = alarm.kind.label(), subject = %alarm.subject, "alarm cleared: {cause}");
                    self.telemetry.alarm(&alarm, false, &active);
                    self.audit.record(AuditEvent::AlarmCleared {
                        alarm,
                        cleared_because: cause,
                    });
                }
            }
        }
        self.audit_handshakes();
        self.refresh_metrics();
        self.telemetry.upkeep();
    }

    /// One audit record per port whose failed TLS handshakes grew since the last evaluation.
    fn audit_handshakes(&self) {
        let now = qkd_kms::instruments::handshake_failures();
        let mut seen = self
            .handshakes_audited
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (i, port) in qkd_kms::instruments::PORTS.iter().enumerate() {
            if now[i] > seen[i] {
                tracing::info!(port, count = now[i] - seen[i], "TLS handshakes failed");
                self.audit.record(AuditEvent::TlsHandshakesFailed {
                    port,
                    count: now[i] - seen[i],
                    total: now[i],
                });
            }
        }
        *seen = now;
    }

    async fn observe(&self, store_failed: bool) -> Observed {
        let mut links = Vec::new();
        for level in self.manager.link_levels() {
            let status = match self.manager.source(&level.link) {
                Some(s) => tokio::time::timeout(DEVICE_STATUS_TIMEOUT, s.status())
                    .await
                    .ok(),
                None => None,
            };
            let status = status.unwrap_or_else(|| qkd_hardware::LinkStatus {
                state: LinkState::Down {
                    reason: format!(
                        "the device did not report its status within {} s",
                        DEVICE_STATUS_TIMEOUT.as_secs()
                    ),
                },
                qber: None,
                secret_key_rate_bps: Some(0.0),
            });
            self.history
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(
                    &level.link,
                    Reading {
                        at: self.clock.now(),
                        state: status.state.clone(),
                        qber: status.qber,
                        rate_bps: status.secret_key_rate_bps,
                    },
                );
            let (state, condition) = match status.state {
                LinkState::Up => (0, LinkCondition::Up),
                LinkState::Down { reason } => (1, LinkCondition::Down(reason)),
                LinkState::Aborted { reason } => (2, LinkCondition::Aborted(reason)),
            };
            let (qber, rate) = (status.qber, status.secret_key_rate_bps);
            self.telemetry.link_reading(&LinkReading {
                level: level.clone(),
                state,
                qber,
                rate_bps: rate,
            });
            links.push(LinkObs {
                link: level.link.clone(),
                state: condition,
                qber,
                reissued_ids: level.device_reissued_ids,
            });
        }
        let pools = self
            .pools()
            .iter()
            .map(|(m, s)| PoolObs {
                master: m.clone(),
                slave: s.clone(),
                keys: self.manager.pool_level(m, s),
            })
            .collect();
        let space = self.manager.store_space();
        let (free, watermark) = (space.available(), space.watermark());
        self.telemetry.store_space(free, watermark);
        let counts = self.audit_counts();
        let mut audit_dropped = vec![("log", counts.dropped_log)];
        if self.siem.is_some() {
            audit_dropped.push(("siem", counts.dropped_siem));
        }
        Observed {
            links,
            pools,
            certificates: self
                .certificates
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(name, not_after)| CertObs {
                    name: name.clone(),
                    not_after: *not_after,
                })
                .collect(),
            store: StoreObs {
                failed: store_failed,
                free_bytes: free,
                watermark_bytes: watermark,
            },
            qkd_only: self.qkd_only(),
            audit_dropped,
        }
    }

    fn audit_counts(&self) -> AuditCounts {
        let a = self.audit.stats();
        let (dropped_siem, siem_connected, siem_sent) = match &self.siem {
            Some(f) => {
                let s = f.stats();
                (
                    s.dropped.load(Ordering::Relaxed),
                    s.connected.load(Ordering::Relaxed),
                    s.sent.load(Ordering::Relaxed),
                )
            }
            None => (0, false, 0),
        };
        AuditCounts {
            written: a.written.load(Ordering::Relaxed),
            dropped_log: a.dropped.load(Ordering::Relaxed),
            dropped_siem,
            siem_connected,
            siem_sent,
        }
    }
}

/// The key-delivery APIs' one observer in the node: counts every request (for `/status` and
/// `qkd_api_requests_total`) and audits refusals of who the caller is or what it may have. Never
/// blocks (the audit queue drops when full) and allocates nothing for requests that succeed.
#[derive(Debug)]
pub struct AuditingObserver {
    counters: Arc<ApiCounters>,
    audit: AuditLog,
}

impl AuditingObserver {
    /// Counts into `counters`, audits into `audit`.
    pub fn new(counters: Arc<ApiCounters>, audit: AuditLog) -> Self {
        Self { counters, audit }
    }
}

impl ApiObserver for AuditingObserver {
    fn observe(&self, api: Api, operation: Operation, outcome: Outcome) {
        self.counters.observe(api, operation, outcome);
        let (api, operation, label) = (api.label(), operation.label(), outcome.label());
        match outcome {
            Outcome::NotAdmitted => self.audit.record(AuditEvent::AuthenticationFailure {
                api,
                operation,
                outcome: label,
            }),
            Outcome::NotPermitted => self.audit.record(AuditEvent::AuthorisationRefusal {
                api,
                operation,
                outcome: label,
            }),
            _ => {}
        }
    }
}
