//! The audit log: security events as an append-only file of JSON lines, each naming the SHA-256
//! of the line before it, so that an edited, removed or reordered line breaks the chain and
//! [`verify`] (`qkd-node audit verify <file>`) says where.
//!
//! What is recorded: the configuration at start, alarms raised and cleared, authentication
//! failures and authorisation refusals of the key-delivery APIs and the control listener, every
//! operator action through the control listener, records dropped, and the stop.
//! Records hold identifiers, labels and causes; never a key byte, never a key ID (a refusal names
//! the API, operation and outcome class, which is what [`qkd_kms::api::observe`] reports).
//!
//! Recording never blocks the caller: [`AuditLog::record`] puts the event on a bounded queue
//! (a full queue drops it and counts the drop; the next record written says how many were lost,
//! and the `audit_dropped` alarm fires). One task appends and syncs each batch, then hands every
//! line to the SIEM forwarder (`siem.rs`), which has its own bounded queue.
//!
//! A hash chain without a secret shows tampering only relative to a copy kept elsewhere: the
//! SIEM receives every record, and `verify` prints the head hash to compare with it. A chain
//! continues across restarts (the first record after a start names the last one before it).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use qkd_types::{NodeId, UnixMillis};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::alarms::{Alarm, Severity};

/// `prev` of the first record of a file.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One security event.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuditEvent {
    /// The node started with this configuration.
    Start {
        /// `qkd-node` version.
        version: &'static str,
        /// The configuration file.
        config_file: String,
        /// SHA-256 of its text, to match it with the file under change control.
        config_sha256: String,
        /// What it configures (identifiers, addresses, policies; it holds no secrets).
        config: serde_json::Value,
        /// What checking the existing log found at start (`ok`, or where its chain breaks).
        previous_chain: String,
    },
    /// The node stops.
    Stop {
        /// Why.
        reason: String,
    },
    /// An alarm was raised.
    AlarmRaised {
        /// Kind, subject, severity, cause.
        #[serde(flatten)]
        alarm: Alarm,
    },
    /// An alarm cleared.
    AlarmCleared {
        /// The alarm as it was raised.
        #[serde(flatten)]
        alarm: Alarm,
        /// Why it cleared.
        cleared_because: String,
    },
    /// A client's certificate named no SAE attached here (the request was refused).
    AuthenticationFailure {
        /// `etsi014`, `grpc`.
        api: &'static str,
        /// What was asked.
        operation: &'static str,
        /// The outcome class.
        outcome: &'static str,
    },
    /// An SAE asked for something it may not have (another pair's keys, keys it is not the slave
    /// of).
    AuthorisationRefusal {
        /// `etsi014`, `grpc`.
        api: &'static str,
        /// What was asked.
        operation: &'static str,
        /// The outcome class.
        outcome: &'static str,
    },
    /// TLS handshakes failed on a port since the last such record (a client certificate the CA
    /// does not vouch for, a wrong protocol, a client too slow): counted per evaluation, not
    /// per connection, so that nobody can flood the audit trail.
    TlsHandshakesFailed {
        /// `etsi014`, `skip`, `grpc`, `peer`, `control`.
        port: &'static str,
        /// How many since the last record.
        count: u64,
        /// How many since start.
        total: u64,
    },
    /// An operator asked for a change through the control listener (done or not).
    ControlAction {
        /// The operator, from the `urn:qkd:operator:` URI SAN of the management certificate.
        operator: String,
        /// `link_drain`, `link_enable`, `reload`.
        action: &'static str,
        /// What it acts on (a link ID; empty for the node itself).
        subject: String,
        /// `applied`, `unchanged` (already so) or `refused`.
        outcome: &'static str,
        /// What happened, for people.
        detail: String,
    },
    /// The node was asked to reload its configuration file (applied or refused).
    ConfigReload {
        /// Who asked: `signal` (SIGHUP) or `operator:<name>` (the control listener).
        by: String,
        /// `applied`, `unchanged` or `refused`.
        outcome: &'static str,
        /// What changed, or why it was refused.
        detail: String,
        /// SHA-256 of the file's text as read.
        config_sha256: String,
    },
    /// Records that never reached the log because its queue was full.
    RecordsDropped {
        /// How many since the last record.
        count: u64,
    },
}

impl AuditEvent {
    /// The event's name (also the syslog MSGID).
    pub fn name(&self) -> &'static str {
        match self {
            AuditEvent::Start { .. } => "start",
            AuditEvent::Stop { .. } => "stop",
            AuditEvent::AlarmRaised { .. } => "alarm_raised",
            AuditEvent::AlarmCleared { .. } => "alarm_cleared",
            AuditEvent::AuthenticationFailure { .. } => "authentication_failure",
            AuditEvent::AuthorisationRefusal { .. } => "authorisation_refusal",
            AuditEvent::TlsHandshakesFailed { .. } => "tls_handshakes_failed",
            AuditEvent::RecordsDropped { .. } => "records_dropped",
            AuditEvent::ControlAction { .. } => "control_action",
            AuditEvent::ConfigReload { .. } => "config_reload",
        }
    }

    /// RFC 5424 severity (0 emergency .. 7 debug).
    pub fn syslog_severity(&self) -> u8 {
        match self {
            AuditEvent::AlarmRaised { alarm } => match alarm.severity {
                Severity::Critical => 2,
                Severity::Major => 3,
                Severity::Minor | Severity::Warning => 4,
            },
            AuditEvent::RecordsDropped { .. } => 3,
            AuditEvent::AuthenticationFailure { .. }
            | AuditEvent::AuthorisationRefusal { .. }
            | AuditEvent::TlsHandshakesFailed { .. } => 4,
            AuditEvent::ControlAction { outcome, .. }
            | AuditEvent::ConfigReload { outcome, .. }
                if *outcome == "refused" =>
            {
                4
            }
            AuditEvent::AlarmCleared { .. }
            | AuditEvent::ControlAction { .. }
            | AuditEvent::ConfigReload { .. }
            | AuditEvent::Start { .. }
            | AuditEvent::Stop { .. } => 5,
        }
    }
}

/// One line of the log.
#[derive(Debug, Serialize)]
struct Record<'a> {
    seq: u64,
    time: String,
    node: &'a NodeId,
    #[serde(flatten)]
    event: &'a AuditEvent,
    prev: &'a str,
}

/// Where the chain stands: the next sequence number and the hash of the last line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    /// Sequence number of the next record.
    pub next_seq: u64,
    /// SHA-256 (hex) of the last line, [`GENESIS`] for an empty file.
    pub hash: String,
}

impl ChainHead {
    /// An empty log.
    pub fn genesis() -> Self {
        Self {
            next_seq: 0,
            hash: GENESIS.into(),
        }
    }

    /// The line of `event` at `time` chained to this head; advances the head past it.
    pub fn append(&mut self, node: &NodeId, time: UnixMillis, event: &AuditEvent) -> String {
        let record = Record {
            seq: self.next_seq,
            time: rfc3339(time),
            node,
            event,
            prev: &self.hash,
        };
        // Serialising plain data to a string cannot fail (no maps with non-string keys).
        let line = serde_json::to_string(&record).unwrap_or_else(|e| {
            format!(
                r#"{{"seq":{},"error":"unserialisable record: {e}"}}"#,
                self.next_seq
            )
        });
        self.next_seq += 1;
        self.hash = sha256_hex(line.as_bytes());
        line
    }
}

/// Why a log does not verify; each names the 1-based line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// Operator: the file cannot be read.
    #[error("{0}")]
    Io(String),
    /// Someone edited the file: a line is not a JSON record.
    #[error("line {line}: not an audit record ({what})")]
    NotARecord {
        /// The line.
        line: usize,
        /// What is wrong.
        what: String,
    },
    /// A line was edited, removed or moved: its `prev` is not the hash of the line before.
    #[error(
        "line {line}: chain broken: its prev is {found}, but the line before it hashes to \
         {expected} (a record was edited, removed or reordered here)"
    )]
    Broken {
        /// The line.
        line: usize,
        /// Its `prev`.
        found: String,
        /// The hash of the line before.
        expected: String,
    },
    /// A line was removed or moved: its sequence number does not follow.
    #[error(
        "line {line}: sequence number {found}, expected {expected} (a record is missing or moved)"
    )]
    Sequence {
        /// The line.
        line: usize,
        /// Its `seq`.
        found: u64,
        /// The one expected.
        expected: u64,
    },
    /// The chain's last record differs from the head hash kept elsewhere (the SIEM's copy).
    #[error(
        "the last record hashes to {found}, not to the expected head {expected} (records were removed from the end, or the file is another log)"
    )]
    Head {
        /// Hash of the last line.
        found: String,
        /// The hash expected.
        expected: String,
    },
}

/// Checks a log file's chain; returns its head (records and the last line's hash).
pub fn verify(path: &Path) -> Result<ChainHead, VerifyError> {
    let file = std::fs::File::open(path)
        .map_err(|e| VerifyError::Io(format!("{}: {e}", path.display())))?;
    verify_lines(std::io::BufReader::new(file).lines())
}

/// [`verify`] over lines.
pub fn verify_lines(
    lines: impl Iterator<Item = std::io::Result<String>>,
) -> Result<ChainHead, VerifyError> {
    let mut head = ChainHead::genesis();
    for (i, line) in lines.enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| VerifyError::Io(format!("line {n}: {e}")))?;
        let v: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| VerifyError::NotARecord {
                line: n,
                what: e.to_string(),
            })?;
        let prev = v["prev"].as_str().ok_or_else(|| VerifyError::NotARecord {
            line: n,
            what: "no prev".into(),
        })?;
        let seq = v["seq"].as_u64().ok_or_else(|| VerifyError::NotARecord {
            line: n,
            what: "no seq".into(),
        })?;
        if prev != head.hash {
            return Err(VerifyError::Broken {
                line: n,
                found: prev.to_owned(),
                expected: head.hash,
            });
        }
        if seq != head.next_seq {
            return Err(VerifyError::Sequence {
                line: n,
                found: seq,
                expected: head.next_seq,
            });
        }
        head.next_seq += 1;
        head.hash = sha256_hex(line.as_bytes());
    }
    Ok(head)
}

/// The recording side: cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<AuditEvent>,
    stats: Arc<AuditStats>,
}

/// Counts of the log (read by the monitor for metrics and the `audit_dropped` alarm).
#[derive(Debug, Default)]
pub struct AuditStats {
    /// Events accepted onto the queue.
    pub queued: AtomicU64,
    /// Events whose line could not be written (a write or sync error).
    pub lost: AtomicU64,
    /// Records written to the file.
    pub written: AtomicU64,
    /// Events dropped because the log's queue was full.
    pub dropped: AtomicU64,
    /// Write or sync errors of the file.
    pub write_errors: AtomicU64,
}

impl AuditLog {
    /// Queues `event`; if the queue is full the event is dropped and counted (never blocks).
    pub fn record(&self, event: AuditEvent) {
        // Counted before the send, so that `flushed` never sees a written record unqueued.
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.try_send(event).is_err() {
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues `event`, waiting for room (for the start and stop records, off any hot path).
    pub async fn record_wait(&self, event: AuditEvent) {
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(event).await.is_err() {
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits until every event queued so far was written (or failed to be), at most `limit`.
    pub async fn flushed(&self, limit: std::time::Duration) {
        let s = &self.stats;
        let deadline = tokio::time::Instant::now() + limit;
        while s.written.load(Ordering::Relaxed) + s.lost.load(Ordering::Relaxed)
            < s.queued.load(Ordering::Relaxed)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// The counts.
    pub fn stats(&self) -> &AuditStats {
        &self.stats
    }
}

/// Where a written line goes next (the SIEM forwarder), never blocking.
pub trait LineSink: Send + Sync + std::fmt::Debug {
    /// One record line and its event.
    fn line(&self, line: &str, event: &AuditEvent, time: UnixMillis);
}

/// Opens (or creates) the log at `path`, checks the chain it holds and continues it.
/// Returns the handle, the writer task's future (run it until the handle's last clone is
/// dropped) and what the check found (`ok`, or the error).
pub fn open(
    path: &Path,
    node: NodeId,
    queue: usize,
    clock: Arc<dyn qkd_types::Clock>,
    sink: Option<Arc<dyn LineSink>>,
) -> std::io::Result<(
    AuditLog,
    impl std::future::Future<Output = ()> + Send + 'static,
    String,
)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let (head, found) = match verify(path) {
        Ok(head) => (head, "ok".to_owned()),
        Err(VerifyError::Io(_)) if !path.exists() => (ChainHead::genesis(), "ok".to_owned()),
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "the audit log's chain is broken; continuing it from its last line");
            (resume_after_break(path)?, e.to_string())
        }
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    restrict(path)?;
    let (tx, rx) = mpsc::channel(queue.max(1));
    let stats = Arc::new(AuditStats::default());
    let task = writer(
        rx,
        file,
        path.to_path_buf(),
        head,
        node,
        clock,
        sink,
        stats.clone(),
    );
    Ok((AuditLog { tx, stats }, task, found))
}

/// The head after the last line of a log whose chain is broken: a new record names the last
/// line as it is now, so the break stays visible at its place and the rest still chains.
fn resume_after_break(path: &Path) -> std::io::Result<ChainHead> {
    let file = std::fs::File::open(path)?;
    let mut last: Option<String> = None;
    let mut count = 0u64;
    for line in std::io::BufReader::new(file).lines() {
        last = Some(line?);
        count += 1;
    }
    let next_seq = last
        .as_deref()
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .and_then(|v| v["seq"].as_u64())
        .map_or(count, |s| s + 1);
    Ok(ChainHead {
        next_seq,
        hash: last.map_or(GENESIS.into(), |l| sha256_hex(l.as_bytes())),
    })
}

#[allow(clippy::too_many_arguments)]
async fn writer(
    mut rx: mpsc::Receiver<AuditEvent>,
    file: std::fs::File,
    path: PathBuf,
    mut head: ChainHead,
    node: NodeId,
    clock: Arc<dyn qkd_types::Clock>,
    sink: Option<Arc<dyn LineSink>>,
    stats: Arc<AuditStats>,
) {
    let mut file = std::io::BufWriter::new(file);
    let mut reported_drops = 0u64;
    let mut batch = Vec::new();
    let mut open = true;
    while open {
        open = rx.recv_many(&mut batch, 256).await > 0;
        let now = clock.now();
        let dropped = stats.dropped.load(Ordering::Relaxed);
        if dropped > reported_drops {
            batch.insert(
                0,
                AuditEvent::RecordsDropped {
                    count: dropped - reported_drops,
                },
            );
            reported_drops = dropped;
        }
        if batch.is_empty() {
            continue;
        }
        // A drop notice is the writer's own record, not one of the queued events.
        let own = usize::from(matches!(
            batch.first(),
            Some(AuditEvent::RecordsDropped { .. })
        ));
        let mut lines = Vec::with_capacity(batch.len());
        for event in batch.drain(..) {
            let line = head.append(&node, now, &event);
            lines.push((line, event));
        }
        let written = (|| -> std::io::Result<()> {
            for (line, _) in &lines {
                file.write_all(line.as_bytes())?;
                file.write_all(b"\n")?;
            }
            file.flush()?;
            file.get_ref().sync_data()
        })();
        match written {
            Ok(()) => {
                stats
                    .written
                    .fetch_add((lines.len() - own) as u64, Ordering::Relaxed);
            }
            Err(e) => {
                stats.write_errors.fetch_add(1, Ordering::Relaxed);
                stats
                    .lost
                    .fetch_add((lines.len() - own) as u64, Ordering::Relaxed);
                tracing::error!(file = %path.display(), error = %e, "cannot write the audit log");
            }
        }
        if let Some(sink) = &sink {
            for (line, event) in &lines {
                sink.line(line, event, now);
            }
        }
    }
}

#[cfg(unix)]
fn restrict(p: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))
}

#[cfg(not(unix))]
fn restrict(_p: &Path) -> std::io::Result<()> {
    Ok(())
}

/// SHA-256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// Unix milliseconds as an RFC 3339 UTC timestamp with milliseconds
/// (`2026-12-05T00:11:26.123Z`), the form RFC 5424 also takes.
pub fn rfc3339(ms: UnixMillis) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm), for non-negative days.
    let z = days as i64 + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::alarms::AlarmKind;

    fn node() -> NodeId {
        NodeId::parse("A").unwrap()
    }

    fn events() -> Vec<AuditEvent> {
        vec![
            AuditEvent::Stop {
                reason: "first".into(),
            },
            AuditEvent::AlarmRaised {
                alarm: Alarm {
                    kind: AlarmKind::LinkDown,
                    subject: "A-B".into(),
                    severity: Severity::Critical,
                    cause: "link A-B is down: fibre cut".into(),
                    raised_at: 5,
                },
            },
            AuditEvent::AuthorisationRefusal {
                api: "etsi014",
                operation: "dec_keys",
                outcome: "not_permitted",
            },
            AuditEvent::RecordsDropped { count: 2 },
        ]
    }

    fn chain() -> Vec<String> {
        let mut head = ChainHead::genesis();
        events()
            .iter()
            .enumerate()
            .map(|(i, e)| head.append(&node(), 1_000 * i as u64, e))
            .collect()
    }

    fn check(lines: &[String]) -> Result<ChainHead, VerifyError> {
        verify_lines(lines.iter().map(|l| Ok(l.clone())))
    }

    #[test]
    fn records_chain_and_verify() {
        let lines = chain();
        let head = check(&lines).unwrap();
        assert_eq!(head.next_seq, 4);
        assert_eq!(head.hash, sha256_hex(lines[3].as_bytes()));
        let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(first["prev"], GENESIS);
        assert_eq!(first["event"], "stop");
        assert_eq!(first["node"], "A");
        assert_eq!(first["time"], "1970-01-01T00:00:00.000Z");
        let alarm: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(alarm["alarm"], "link_down");
        assert_eq!(alarm["severity"], "critical");
        assert_eq!(alarm["subject"], "A-B");
        assert!(check(&[]).is_ok());
    }

    #[test]
    fn a_tampered_line_is_found() {
        let mut lines = chain();
        lines[1] = lines[1].replace("fibre cut", "maintenance");
        assert!(
            matches!(check(&lines), Err(VerifyError::Broken { line: 3, .. })),
            "{:?}",
            check(&lines)
        );
        // Even a change of one space in the JSON.
        let mut lines = chain();
        lines[2] = lines[2].replacen(',', ", ", 1);
        assert!(matches!(
            check(&lines),
            Err(VerifyError::Broken { line: 4, .. })
        ));
    }

    #[test]
    fn a_removed_or_reordered_line_is_found() {
        let mut lines = chain();
        lines.remove(1);
        assert!(matches!(
            check(&lines),
            Err(VerifyError::Broken { line: 2, .. })
        ));
        let mut lines = chain();
        lines.swap(1, 2);
        assert!(matches!(
            check(&lines),
            Err(VerifyError::Broken { line: 2, .. })
        ));
        // A removed first line: the new first line does not start the chain.
        let mut lines = chain();
        lines.remove(0);
        assert!(matches!(
            check(&lines),
            Err(VerifyError::Broken { line: 1, .. })
        ));
        // A line that is not JSON at all.
        let mut lines = chain();
        lines[2] = "garbage".into();
        assert!(matches!(
            check(&lines),
            Err(VerifyError::NotARecord { line: 3, .. })
        ));
    }

    #[test]
    fn a_rewritten_sequence_is_found() {
        // An attacker who rehashes the chain after removing a record must also renumber it.
        let mut head = ChainHead::genesis();
        let mut lines = Vec::new();
        for (i, e) in events().iter().enumerate() {
            if i == 1 {
                head.next_seq += 1; // the removed record's number is skipped
                continue;
            }
            lines.push(head.append(&node(), 0, e));
        }
        assert!(matches!(
            check(&lines),
            Err(VerifyError::Sequence {
                line: 2,
                found: 2,
                expected: 1
            })
        ));
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000 + 1), "2000-02-29T00:00:00.001Z");
        assert_eq!(rfc3339(1_796_429_486_123), "2026-12-05T00:11:26.123Z");
    }

    #[tokio::test]
    async fn the_log_continues_its_chain_across_restarts_and_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit").join("audit.log");
        let clock: Arc<dyn qkd_types::Clock> = Arc::new(qkd_types::SystemClock);
        for run in 0..2 {
            let (log, task, found) = open(&path, node(), 4, clock.clone(), None).unwrap();
            assert_eq!(found, "ok");
            let t = tokio::spawn(task);
            for e in events() {
                log.record_wait(e).await;
            }
            // Far more than the queue holds, without waiting: some are dropped, none blocks.
            for _ in 0..1000 {
                log.record(AuditEvent::Stop {
                    reason: format!("run {run}"),
                });
            }
            let dropped = log.stats().dropped.load(Ordering::Relaxed);
            drop(log);
            t.await.unwrap();
            let head = verify(&path).unwrap();
            assert!(head.next_seq >= 4 * (run + 1), "{head:?}");
            if dropped > 0 {
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(text.contains("records_dropped"), "{text}");
            }
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
