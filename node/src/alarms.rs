//! Alarms: a pure evaluator that takes what the node observed (links, pools, certificates, the
//! store, configuration, the audit trail) and the time, and returns the alarms to raise and to
//! clear, each with a cause an operator can act on.
//!
//! It owns no I/O and reads no clock: the daemon's monitor (`monitor.rs`) feeds it periodically
//! and whenever the engine reports something, and turns its transitions into log lines, audit
//! records, `/status` entries and the `qkd_alarm_active` metric. The same observations always
//! give the same transitions, which is what its tests check.
//!
//! Conditions that come and go with the weather (a link down, QBER high, a pool low, the disk
//! low) must hold for `raise_after_ms` before they raise and be gone for `clear_after_ms` before
//! they clear, so that a flapping link does not page anyone twice a second. Conditions that are
//! facts (a store commit failed, a certificate near expiry, a `qkd-only` pair) raise at once.
//! Counted events (a device re-issuing key IDs, audit records dropped) raise when the count
//! grows and clear after `quiet_ms` without growth. Subjects come only from the configuration
//! (link IDs, configured pairs, certificate names), so the set of possible alarms is bounded.

use std::collections::{BTreeMap, BTreeSet};

use qkd_types::{LinkId, SaeId, UnixMillis};
use serde::Serialize;

/// What an alarm is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmKind {
    /// A QKD link is down or aborted (its device says so).
    LinkDown,
    /// A link's QBER is above the configured threshold: possible eavesdropping.
    QberHigh,
    /// A pair's pool holds fewer ready keys than the configured level.
    PoolLow,
    /// A certificate of the node expires within the warning period (or has expired).
    CertificateExpiry,
    /// The key store failed a commit (the node stops and recovers from disk).
    StoreFailed,
    /// Free disk space is below the store's watermark: new key material is refused.
    DiskLow,
    /// A QKD device re-issued key IDs already used on its link.
    DeviceReissuedIds,
    /// A pair is configured `qkd-only`: every trusted node on its path can read its keys.
    QkdOnlyPair,
    /// Audit records were dropped (the audit queue or the SIEM queue was full).
    AuditDropped,
}

impl AlarmKind {
    /// Every kind, in display order (the tests check that the runbook covers each).
    #[cfg(test)]
    pub const ALL: [AlarmKind; 9] = [
        AlarmKind::LinkDown,
        AlarmKind::QberHigh,
        AlarmKind::PoolLow,
        AlarmKind::CertificateExpiry,
        AlarmKind::StoreFailed,
        AlarmKind::DiskLow,
        AlarmKind::DeviceReissuedIds,
        AlarmKind::QkdOnlyPair,
        AlarmKind::AuditDropped,
    ];

    /// The label used in `/status`, metrics and audit records.
    pub fn label(self) -> &'static str {
        match self {
            AlarmKind::LinkDown => "link_down",
            AlarmKind::QberHigh => "qber_high",
            AlarmKind::PoolLow => "pool_low",
            AlarmKind::CertificateExpiry => "certificate_expiry",
            AlarmKind::StoreFailed => "store_failed",
            AlarmKind::DiskLow => "disk_low",
            AlarmKind::DeviceReissuedIds => "device_reissued_ids",
            AlarmKind::QkdOnlyPair => "qkd_only_pair",
            AlarmKind::AuditDropped => "audit_dropped",
        }
    }

    /// How bad it is.
    pub fn severity(self) -> Severity {
        match self {
            AlarmKind::LinkDown
            | AlarmKind::QberHigh
            | AlarmKind::StoreFailed
            | AlarmKind::DeviceReissuedIds => Severity::Critical,
            AlarmKind::PoolLow | AlarmKind::DiskLow | AlarmKind::AuditDropped => Severity::Major,
            AlarmKind::CertificateExpiry => Severity::Minor,
            AlarmKind::QkdOnlyPair => Severity::Warning,
        }
    }

    /// Whether the condition must persist (`raise_after_ms`) before it raises and stay away
    /// (`clear_after_ms`) before it clears.
    fn debounced(self) -> bool {
        matches!(
            self,
            AlarmKind::LinkDown | AlarmKind::QberHigh | AlarmKind::PoolLow | AlarmKind::DiskLow
        )
    }
}

/// Severity, as in ITU-T X.733 (and mapped to syslog severities by the SIEM forwarder).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Service is lost or key may be compromised; act now.
    Critical,
    /// Service degrades soon unless someone acts.
    Major,
    /// Act within days.
    Minor,
    /// A standing condition the operator chose, shown so it is never forgotten.
    Warning,
}

/// One alarm: its kind and what it is about (a link ID, a pair, a certificate name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct AlarmId {
    /// The kind.
    pub kind: AlarmKind,
    /// What it is about, from the configuration only.
    pub subject: String,
}

/// An active alarm.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alarm {
    /// The kind (`alarm`) and subject.
    #[serde(rename = "alarm")]
    pub kind: AlarmKind,
    /// What it is about.
    pub subject: String,
    /// Its severity.
    pub severity: Severity,
    /// Why it was raised.
    pub cause: String,
    /// When it was raised (Unix ms).
    pub raised_at: UnixMillis,
}

/// A change of an alarm's state.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// A new alarm.
    Raise(Alarm),
    /// An alarm that no longer holds, and why it cleared.
    Clear {
        /// The alarm as it was raised.
        alarm: Alarm,
        /// When it cleared.
        at: UnixMillis,
        /// Why it cleared.
        cause: String,
    },
}

/// What the node observed at one moment.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Every configured link.
    pub links: Vec<LinkObs>,
    /// Every pool whose master is attached here.
    pub pools: Vec<PoolObs>,
    /// The node's certificates.
    pub certificates: Vec<CertObs>,
    /// The key store.
    pub store: StoreObs,
    /// Pairs of this node's SAEs configured `qkd-only`.
    pub qkd_only: Vec<[SaeId; 2]>,
    /// Audit records dropped since start, per stage (`log`, `siem`).
    pub audit_dropped: Vec<(&'static str, u64)>,
}

/// One link as observed.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkObs {
    /// The link.
    pub link: LinkId,
    /// Up, or down/aborted with the device's reason.
    pub state: LinkCondition,
    /// QBER as the device reports it.
    pub qber: Option<f64>,
    /// Device key IDs refused since start because they were re-issued.
    pub reissued_ids: u64,
}

/// A link's state as its device reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkCondition {
    /// Producing key.
    Up,
    /// Not producing key (reason).
    Down(String),
    /// Key generation aborted (reason).
    Aborted(String),
}

/// One pair's pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolObs {
    /// The pair's master.
    pub master: SaeId,
    /// The pair's slave.
    pub slave: SaeId,
    /// Ready keys.
    pub keys: u64,
}

/// One certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertObs {
    /// Its name in the configuration (`tls.cert`, `grpc.cert`, `audit.siem.client_cert`).
    pub name: String,
    /// End of validity (Unix ms).
    pub not_after: UnixMillis,
}

/// The store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreObs {
    /// A commit failed.
    pub failed: bool,
    /// Free bytes of its file system, if measurable.
    pub free_bytes: Option<u64>,
    /// The configured watermark.
    pub watermark_bytes: u64,
}

/// Thresholds and timing, from `[alarms]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// QBER above this raises `qber_high` (a fraction, 0.08 = 8 %).
    pub qber_max: f64,
    /// A pool with fewer ready keys raises `pool_low`.
    pub pool_min_keys: u64,
    /// A certificate expiring within this many ms raises `certificate_expiry`.
    pub certificate_warn_ms: u64,
    /// How long a debounced condition must hold before it raises.
    pub raise_after_ms: u64,
    /// How long a debounced condition must be gone before it clears.
    pub clear_after_ms: u64,
    /// How long a counted event must not recur before its alarm clears.
    pub quiet_ms: u64,
}

/// The evaluator: the alarms' state between observations.
#[derive(Debug)]
pub struct Evaluator {
    limits: Thresholds,
    tracks: BTreeMap<AlarmId, Track>,
    /// Counted events: last count seen and when it last grew.
    counts: BTreeMap<AlarmId, (u64, Option<UnixMillis>)>,
}

#[derive(Debug, Default)]
struct Track {
    bad_since: Option<UnixMillis>,
    good_since: Option<UnixMillis>,
    active: Option<Alarm>,
}

/// One subject's condition now: the cause if it holds, else why it is fine.
struct Condition {
    bad: Option<String>,
    fine: String,
}

impl Evaluator {
    /// An evaluator with no alarm active.
    pub fn new(limits: Thresholds) -> Self {
        Self {
            limits,
            tracks: BTreeMap::new(),
            counts: BTreeMap::new(),
        }
    }

    /// New thresholds (a configuration reload): active alarms stay until the new ones clear
    /// them.
    pub fn set_limits(&mut self, limits: Thresholds) {
        self.limits = limits;
    }

    /// The alarms active now, by kind and subject.
    pub fn active(&self) -> Vec<Alarm> {
        self.tracks
            .values()
            .filter_map(|t| t.active.clone())
            .collect()
    }

    /// Evaluates one observation at `now`: the alarms raised and cleared by it, raises first
    /// in (kind, subject) order.
    pub fn evaluate(&mut self, obs: &Observed, now: UnixMillis) -> Vec<Transition> {
        let conditions = self.conditions(obs, now);
        let ids: BTreeSet<AlarmId> = conditions
            .keys()
            .chain(self.tracks.keys())
            .cloned()
            .collect();
        let mut raised = Vec::new();
        let mut cleared = Vec::new();
        for id in ids {
            let (bad, fine) = match conditions.get(&id) {
                Some(c) => (c.bad.clone(), c.fine.clone()),
                None => (None, "no longer configured".to_owned()),
            };
            let (raise_after, clear_after) = if id.kind.debounced() {
                (self.limits.raise_after_ms, self.limits.clear_after_ms)
            } else {
                (0, 0)
            };
            let track = self.tracks.entry(id.clone()).or_default();
            match bad {
                Some(cause) => {
                    track.good_since = None;
                    let since = *track.bad_since.get_or_insert(now);
                    if track.active.is_none() && now.saturating_sub(since) >= raise_after {
                        let alarm = Alarm {
                            kind: id.kind,
                            subject: id.subject.clone(),
                            severity: id.kind.severity(),
                            cause,
                            raised_at: now,
                        };
                        track.active = Some(alarm.clone());
                        raised.push(Transition::Raise(alarm));
                    }
                }
                None => {
                    track.bad_since = None;
                    if track.active.is_some() {
                        let since = *track.good_since.get_or_insert(now);
                        if now.saturating_sub(since) >= clear_after
                            && let Some(alarm) = track.active.take()
                        {
                            track.good_since = None;
                            cleared.push(Transition::Clear {
                                alarm,
                                at: now,
                                cause: fine,
                            });
                        }
                    }
                }
            }
        }
        // Forget subjects with nothing pending, so the map holds only live state.
        self.tracks
            .retain(|_, t| t.active.is_some() || t.bad_since.is_some());
        raised.extend(cleared);
        raised
    }

    fn conditions(&mut self, obs: &Observed, now: UnixMillis) -> BTreeMap<AlarmId, Condition> {
        let l = self.limits.clone();
        let mut out = BTreeMap::new();
        let id = |kind, subject: String| AlarmId { kind, subject };
        for link in &obs.links {
            let name = link.link.to_string();
            let down = match &link.state {
                LinkCondition::Up => None,
                LinkCondition::Down(r) => Some(format!("link {name} is down: {r}")),
                LinkCondition::Aborted(r) => {
                    Some(format!("link {name} aborted key generation: {r}"))
                }
            };
            out.insert(
                id(AlarmKind::LinkDown, name.clone()),
                Condition {
                    bad: down,
                    fine: format!("link {name} is up again"),
                },
            );
            let qber = link.qber.filter(|q| *q > l.qber_max).map(|q| {
                format!(
                    "QBER {:.2} % on link {name} is above the threshold {:.2} %: possible \
                     eavesdropping (intercept-resend raises the QBER); the link yields no \
                     secure key while it lasts",
                    q * 100.0,
                    l.qber_max * 100.0
                )
            });
            out.insert(
                id(AlarmKind::QberHigh, name.clone()),
                Condition {
                    bad: qber,
                    fine: match link.qber {
                        Some(q) => format!(
                            "QBER {:.2} % on link {name} is back under the threshold {:.2} %",
                            q * 100.0,
                            l.qber_max * 100.0
                        ),
                        None => format!("link {name} reports no QBER above the threshold"),
                    },
                },
            );
            let reissued = id(AlarmKind::DeviceReissuedIds, name.clone());
            let cause = self.counted(&reissued, link.reissued_ids, now).map(|grew| {
                format!(
                    "the QKD device of link {name} re-issued {grew} key ID(s) already used on \
                     the link ({} since start); they were refused: check the device",
                    link.reissued_ids
                )
            });
            out.insert(
                reissued,
                Condition {
                    bad: cause,
                    fine: format!(
                        "no re-issued key IDs on link {name} for {} s",
                        self.limits.quiet_ms / 1000
                    ),
                },
            );
        }
        for p in &obs.pools {
            let subject = format!("{}->{}", p.master, p.slave);
            out.insert(
                id(AlarmKind::PoolLow, subject),
                Condition {
                    bad: (p.keys < l.pool_min_keys).then(|| {
                        format!(
                            "pool of pair ({} master, {} slave) holds {} ready keys, below the \
                             configured level of {}",
                            p.master, p.slave, p.keys, l.pool_min_keys
                        )
                    }),
                    fine: format!(
                        "pool of pair ({} master, {} slave) holds {} ready keys again (level {})",
                        p.master, p.slave, p.keys, l.pool_min_keys
                    ),
                },
            );
        }
        for c in &obs.certificates {
            let left = c.not_after.saturating_sub(now);
            let bad = if c.not_after <= now {
                Some(format!(
                    "certificate {} expired at {}",
                    c.name,
                    crate::audit::rfc3339(c.not_after)
                ))
            } else if left < l.certificate_warn_ms {
                Some(format!(
                    "certificate {} expires at {} (in {} days); renew it",
                    c.name,
                    crate::audit::rfc3339(c.not_after),
                    left / 86_400_000
                ))
            } else {
                None
            };
            out.insert(
                id(AlarmKind::CertificateExpiry, c.name.clone()),
                Condition {
                    bad,
                    fine: format!(
                        "certificate {} is valid until {}",
                        c.name,
                        crate::audit::rfc3339(c.not_after)
                    ),
                },
            );
        }
        out.insert(
            id(AlarmKind::StoreFailed, "store".into()),
            Condition {
                bad: obs.store.failed.then(|| {
                    "the key store failed a commit: the node stops serving and recovers from \
                     disk at its next start"
                        .to_owned()
                }),
                fine: "the key store commits again".into(),
            },
        );
        let mib = |b: u64| b >> 20;
        let low = obs
            .store
            .free_bytes
            .filter(|f| *f < obs.store.watermark_bytes);
        out.insert(
            id(AlarmKind::DiskLow, "store".into()),
            Condition {
                bad: low.map(|f| {
                    format!(
                        "{} MiB free on the key store's file system, below its watermark of {} \
                         MiB: no new key material is stored (stored keys are still served)",
                        mib(f),
                        mib(obs.store.watermark_bytes)
                    )
                }),
                fine: format!(
                    "free space on the key store's file system is above its watermark of {} MiB",
                    mib(obs.store.watermark_bytes)
                ),
            },
        );
        for [a, b] in &obs.qkd_only {
            out.insert(
                id(AlarmKind::QkdOnlyPair, format!("{a},{b}")),
                Condition {
                    bad: Some(format!(
                        "pair ({a}, {b}) is configured qkd-only: end-to-end PQ protection is \
                         OFF; every trusted node on its path can read its keys"
                    )),
                    fine: format!("pair ({a}, {b}) is no longer configured qkd-only"),
                },
            );
        }
        for (stage, dropped) in &obs.audit_dropped {
            let aid = id(AlarmKind::AuditDropped, (*stage).to_owned());
            let cause = self.counted(&aid, *dropped, now).map(|grew| {
                format!(
                    "{grew} audit record(s) dropped at the {stage} stage ({dropped} since \
                     start): its queue was full"
                )
            });
            out.insert(
                aid,
                Condition {
                    bad: cause,
                    fine: format!(
                        "no audit records dropped at the {stage} stage for {} s",
                        self.limits.quiet_ms / 1000
                    ),
                },
            );
        }
        out
    }

    /// For a counted event: `Some(growth since the last increase)` while the count grew within
    /// the quiet period, else `None`.
    fn counted(&mut self, id: &AlarmId, count: u64, now: UnixMillis) -> Option<u64> {
        let quiet = self.limits.quiet_ms;
        let (last, grew_at) = self.counts.entry(id.clone()).or_insert((0, None));
        let growth = count.saturating_sub(*last);
        if count > *last {
            *grew_at = Some(now);
        }
        *last = count;
        match grew_at {
            Some(t) if now.saturating_sub(*t) < quiet || growth > 0 => Some(growth.max(1)),
            _ => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn limits() -> Thresholds {
        Thresholds {
            qber_max: 0.08,
            pool_min_keys: 10,
            certificate_warn_ms: 30 * 86_400_000,
            raise_after_ms: 5_000,
            clear_after_ms: 5_000,
            quiet_ms: 60_000,
        }
    }

    fn link(state: LinkCondition, qber: Option<f64>, reissued: u64) -> Observed {
        Observed {
            links: vec![LinkObs {
                link: LinkId::parse("A-B").unwrap(),
                state,
                qber,
                reissued_ids: reissued,
            }],
            ..Observed::default()
        }
    }

    fn kinds(t: &[Transition]) -> Vec<(&'static str, &'static str, String)> {
        t.iter()
            .map(|t| match t {
                Transition::Raise(a) => ("raise", a.kind.label(), a.subject.clone()),
                Transition::Clear { alarm, .. } => {
                    ("clear", alarm.kind.label(), alarm.subject.clone())
                }
            })
            .collect()
    }

    /// Table-driven: each case is a series of (time, observation) steps and the transitions
    /// expected at each step.
    #[allow(clippy::type_complexity)]
    fn check(steps: &[(UnixMillis, Observed, &[(&str, &str, &str)])]) {
        let mut ev = Evaluator::new(limits());
        for (i, (now, obs, want)) in steps.iter().enumerate() {
            let got = kinds(&ev.evaluate(obs, *now));
            let want: Vec<(&str, &str, String)> = want
                .iter()
                .map(|(a, b, c)| (*a, *b, (*c).to_owned()))
                .collect();
            assert_eq!(got, want, "step {i} at {now}");
        }
    }

    #[test]
    fn link_down_raises_after_the_hold_time_and_clears_after_it() {
        let down = || link(LinkCondition::Down("fibre cut".into()), None, 0);
        let up = || link(LinkCondition::Up, Some(0.02), 0);
        check(&[
            (0, up(), &[]),
            (1_000, down(), &[]),
            (5_999, down(), &[]),
            (6_000, down(), &[("raise", "link_down", "A-B")]),
            (7_000, down(), &[]),
            (8_000, up(), &[]),
            (12_999, up(), &[]),
            (13_000, up(), &[("clear", "link_down", "A-B")]),
            (20_000, up(), &[]),
        ]);
    }

    #[test]
    fn a_flapping_link_raises_nothing_and_a_blip_does_not_clear() {
        let down = || link(LinkCondition::Aborted("QBER too high".into()), None, 0);
        let up = || link(LinkCondition::Up, None, 0);
        check(&[
            (0, down(), &[]),
            (4_000, up(), &[]),
            (5_000, down(), &[]),
            (9_000, up(), &[]),
            (10_000, down(), &[]),
            (15_000, down(), &[("raise", "link_down", "A-B")]),
            (16_000, up(), &[]),
            (17_000, down(), &[]),
            (30_000, up(), &[]),
            (35_000, up(), &[("clear", "link_down", "A-B")]),
        ]);
    }

    #[test]
    fn qber_above_threshold_raises_with_its_value_and_clears() {
        let mut ev = Evaluator::new(limits());
        let high = link(LinkCondition::Up, Some(0.12), 0);
        assert!(ev.evaluate(&high, 0).is_empty());
        let t = ev.evaluate(&high, 5_000);
        let Transition::Raise(a) = &t[0] else {
            panic!("{t:?}")
        };
        assert_eq!(a.kind, AlarmKind::QberHigh);
        assert_eq!(a.severity, Severity::Critical);
        assert!(
            a.cause.contains("12.00 %") && a.cause.contains("8.00 %"),
            "{}",
            a.cause
        );
        assert!(a.cause.contains("eavesdropping"), "{}", a.cause);
        // Exactly at the threshold is not above it.
        let at = link(LinkCondition::Up, Some(0.08), 0);
        assert!(ev.evaluate(&at, 6_000).is_empty());
        let t = ev.evaluate(&at, 11_000);
        assert!(
            matches!(&t[..], [Transition::Clear { cause, .. }] if cause.contains("back under")),
            "{t:?}"
        );
        assert!(ev.active().is_empty());
    }

    #[test]
    fn pool_alarm_fires_below_the_level_and_clears_at_it() {
        let pool = |keys| Observed {
            pools: vec![PoolObs {
                master: SaeId::parse("ENC-A1").unwrap(),
                slave: SaeId::parse("ENC-B1").unwrap(),
                keys,
            }],
            ..Observed::default()
        };
        check(&[
            (0, pool(0), &[]),
            (5_000, pool(3), &[("raise", "pool_low", "ENC-A1->ENC-B1")]),
            (6_000, pool(10), &[]),
            (11_000, pool(64), &[("clear", "pool_low", "ENC-A1->ENC-B1")]),
        ]);
    }

    #[test]
    fn facts_raise_at_once_and_vanishing_subjects_clear() {
        let a = SaeId::parse("ENC-A1").unwrap();
        let b = SaeId::parse("ENC-B1").unwrap();
        let day = 86_400_000;
        let obs = |not_after, failed, qkd_only: bool| Observed {
            certificates: vec![CertObs {
                name: "tls.cert".into(),
                not_after,
            }],
            store: StoreObs {
                failed,
                free_bytes: Some(1 << 30),
                watermark_bytes: 64 << 20,
            },
            qkd_only: if qkd_only {
                vec![[a.clone(), b.clone()]]
            } else {
                vec![]
            },
            ..Observed::default()
        };
        check(&[
            (0, obs(100 * day, false, false), &[]),
            (
                80 * day,
                obs(100 * day, true, true),
                &[
                    ("raise", "certificate_expiry", "tls.cert"),
                    ("raise", "store_failed", "store"),
                    ("raise", "qkd_only_pair", "ENC-A1,ENC-B1"),
                ],
            ),
            (
                80 * day + 1,
                obs(400 * day, false, false),
                &[
                    ("clear", "certificate_expiry", "tls.cert"),
                    ("clear", "store_failed", "store"),
                    ("clear", "qkd_only_pair", "ENC-A1,ENC-B1"),
                ],
            ),
        ]);
        let mut ev = Evaluator::new(limits());
        let t = ev.evaluate(&obs(day, false, false), 2 * day);
        let Transition::Raise(alarm) = &t[0] else {
            panic!("{t:?}")
        };
        assert!(
            alarm.cause.contains("expired at 1970-01-02T00:00:00"),
            "{}",
            alarm.cause
        );
    }

    #[test]
    fn disk_below_watermark_is_debounced() {
        let obs = |free| Observed {
            store: StoreObs {
                failed: false,
                free_bytes: Some(free),
                watermark_bytes: 64 << 20,
            },
            ..Observed::default()
        };
        check(&[
            (0, obs(10 << 20), &[]),
            (5_000, obs(10 << 20), &[("raise", "disk_low", "store")]),
            (6_000, obs(1 << 30), &[]),
            (11_000, obs(1 << 30), &[("clear", "disk_low", "store")]),
        ]);
        let mut ev = Evaluator::new(limits());
        ev.evaluate(&obs(10 << 20), 0);
        let t = ev.evaluate(&obs(10 << 20), 5_000);
        let Transition::Raise(a) = &t[0] else {
            panic!("{t:?}")
        };
        assert!(
            a.cause.contains("10 MiB free") && a.cause.contains("64 MiB"),
            "{}",
            a.cause
        );
    }

    #[test]
    fn counted_events_raise_on_growth_and_clear_after_a_quiet_period() {
        let n = |k| link(LinkCondition::Up, None, k);
        check(&[
            (0, n(0), &[]),
            (1_000, n(3), &[("raise", "device_reissued_ids", "A-B")]),
            (30_000, n(3), &[]),
            (50_000, n(4), &[]),
            (109_999, n(4), &[]),
            (110_000, n(4), &[("clear", "device_reissued_ids", "A-B")]),
            (120_000, n(5), &[("raise", "device_reissued_ids", "A-B")]),
        ]);
        let dropped = |k| Observed {
            audit_dropped: vec![("siem", k)],
            ..Observed::default()
        };
        check(&[
            (0, dropped(0), &[]),
            (1, dropped(7), &[("raise", "audit_dropped", "siem")]),
            (60_001, dropped(7), &[("clear", "audit_dropped", "siem")]),
        ]);
    }

    #[test]
    fn the_same_condition_raises_once() {
        let mut ev = Evaluator::new(limits());
        let down = link(LinkCondition::Down("x".into()), None, 0);
        let mut raised = 0;
        for t in (0..100_000).step_by(500) {
            raised += ev.evaluate(&down, t).len();
        }
        assert_eq!(raised, 1);
        assert_eq!(ev.active().len(), 1);
    }
}
