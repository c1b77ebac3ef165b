//! The metric handles the key manager records through (the `metrics` facade; the node installs
//! the Prometheus recorder and renders it, docs/metrics.md lists every name).
//!
//! Each component registers its handles once, when it is built, so that recording on a hot path
//! is an atomic operation on a handle: never a name lookup, never a label string allocated per
//! request. Labels come only from closed sets (port names, results) fixed in this crate. Nothing
//! here ever sees a key byte. Without an installed recorder (unit tests, the network simulation)
//! every handle does nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};

/// Metric names recorded by this crate (the node documents them in docs/metrics.md).
pub mod names {
    /// Histogram: seconds from the start of a store transaction to its durable commit.
    pub const STORE_COMMIT_SECONDS: &str = "qkd_store_commit_duration_seconds";
    /// Counter: batches of store operations committed durably (a batch that changed nothing is
    /// dropped, not committed, and not counted).
    pub const STORE_COMMITS: &str = "qkd_store_commits_total";
    /// Counter: store commits that failed (the node stops and recovers from disk).
    pub const STORE_COMMIT_FAILURES: &str = "qkd_store_commit_failures_total";
    /// Counter: bytes of records (keys and sealed values) written into the store.
    pub const STORE_BYTES_WRITTEN: &str = "qkd_store_bytes_written_total";
    /// Histogram: seconds one relayed batch took, from route choice to both ends' commit;
    /// label `result` (`ok`, `error`).
    pub const RELAY_BATCH_SECONDS: &str = "qkd_relay_batch_duration_seconds";
    /// Counter: keys made by relayed batches that succeeded.
    pub const RELAY_KEYS: &str = "qkd_relay_keys_made_total";
    /// Gauge: connections open now; label `port`.
    pub const CONNECTIONS_OPEN: &str = "qkd_connections_open";
    /// Counter: connections refused by a cap; labels `port`, `cap` (`per_client`, `total`).
    pub const CAPS_HIT: &str = "qkd_connection_caps_hit_total";
    /// Counter: TLS handshakes that failed or timed out (a client certificate the CA does not
    /// vouch for, a wrong protocol, a client too slow); label `port`.
    pub const HANDSHAKE_FAILURES: &str = "qkd_tls_handshake_failures_total";
}

/// The port labels, in the order of [`handshake_failures`]' counts.
pub const PORTS: [&str; 5] = ["etsi014", "skip", "grpc", "peer", "control"];

/// Failed handshakes per port since the process started (indexes of [`PORTS`]), readable, so
/// that the node can audit them in aggregate: a handshake failure has no authenticated client
/// to name, and one record per failed connection would let anyone flood the audit trail.
static HANDSHAKE_FAILURES: [AtomicU64; PORTS.len()] = [
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
];

/// Counts one failed or timed-out TLS handshake on `port` (a front end's name).
pub fn handshake_failed(port: &'static str) {
    let label = port_label(port);
    if let Some(i) = PORTS.iter().position(|p| *p == label) {
        HANDSHAKE_FAILURES[i].fetch_add(1, Ordering::Relaxed);
    }
    // Registered at the failure: rare, and never on the key-delivery path.
    metrics::counter!(names::HANDSHAKE_FAILURES, "port" => label).increment(1);
}

/// Failed TLS handshakes on each port of [`PORTS`] since the process started.
pub fn handshake_failures() -> [u64; PORTS.len()] {
    std::array::from_fn(|i| HANDSHAKE_FAILURES[i].load(Ordering::Relaxed))
}

/// The store writer's instruments.
#[derive(Clone)]
pub struct StoreInstruments {
    commit_seconds: Histogram,
    commits: Counter,
    failures: Counter,
    bytes: Counter,
}

impl StoreInstruments {
    /// Registers the handles with the installed recorder (no-ops without one).
    pub fn register() -> Self {
        Self {
            commit_seconds: metrics::histogram!(names::STORE_COMMIT_SECONDS),
            commits: metrics::counter!(names::STORE_COMMITS),
            failures: metrics::counter!(names::STORE_COMMIT_FAILURES),
            bytes: metrics::counter!(names::STORE_BYTES_WRITTEN),
        }
    }

    /// One batch done: committed durably in `took` (`None`: it changed nothing and was
    /// dropped), and `bytes` record bytes written with it.
    pub fn committed(&self, took: Option<Duration>, bytes: u64) {
        if let Some(took) = took {
            self.commit_seconds.record(took.as_secs_f64());
            self.commits.increment(1);
        }
        self.bytes.increment(bytes);
    }

    /// One failed commit.
    pub fn failed(&self) {
        self.failures.increment(1);
    }
}

impl std::fmt::Debug for StoreInstruments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreInstruments").finish_non_exhaustive()
    }
}

/// The relay's instruments.
#[derive(Clone)]
pub struct RelayInstruments {
    ok: Histogram,
    error: Histogram,
    keys: Counter,
}

impl RelayInstruments {
    /// Registers the handles with the installed recorder (no-ops without one).
    pub fn register() -> Self {
        Self {
            ok: metrics::histogram!(names::RELAY_BATCH_SECONDS, "result" => "ok"),
            error: metrics::histogram!(names::RELAY_BATCH_SECONDS, "result" => "error"),
            keys: metrics::counter!(names::RELAY_KEYS),
        }
    }

    /// One batch of `keys` keys ended (`ok`: committed at both ends) after `took`.
    pub fn batch(&self, ok: bool, took: Duration, keys: usize) {
        if ok {
            self.ok.record(took.as_secs_f64());
            self.keys.increment(keys as u64);
        } else {
            self.error.record(took.as_secs_f64());
        }
    }
}

impl std::fmt::Debug for RelayInstruments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayInstruments").finish_non_exhaustive()
    }
}

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// One client identity held its cap of connections.
    PerClient,
    /// The port held its cap of connections (handshakes included).
    Total,
}

impl Cap {
    /// The `cap` label.
    pub fn label(self) -> &'static str {
        match self {
            Cap::PerClient => "per_client",
            Cap::Total => "total",
        }
    }
}

/// The open-connection gauge of one port.
pub fn connections_open(port: &'static str) -> Gauge {
    metrics::gauge!(names::CONNECTIONS_OPEN, "port" => port_label(port))
}

/// The refusal counter of one cap of one port.
pub fn caps_hit(port: &'static str, cap: Cap) -> Counter {
    metrics::counter!(names::CAPS_HIT, "port" => port_label(port), "cap" => cap.label())
}

/// Port names as the log lines spell them ("ETSI 014", "peer port") become label values in
/// snake case (`etsi014`, `peer`), a closed set fixed by the front ends.
pub fn port_label(port: &'static str) -> &'static str {
    match port {
        "ETSI 014" => "etsi014",
        "SKIP" => "skip",
        "peer port" => "peer",
        p if p.starts_with("gRPC") => "grpc",
        p => p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_handshakes_are_counted_under_their_port_label() {
        let before = handshake_failures();
        handshake_failed("control");
        handshake_failed("gRPC key delivery");
        handshake_failed("no such port");
        let after = handshake_failures();
        let grew = |label: &str| {
            let i = PORTS.iter().position(|p| *p == label).unwrap_or(usize::MAX);
            after[i] - before[i]
        };
        // Other tests of this binary may count failures of their own meanwhile: at least ours.
        assert!(grew("control") >= 1);
        assert!(grew("grpc") >= 1);
        assert_eq!(port_label("no such port"), "no such port");
        assert!(!PORTS.contains(&"no such port"));
    }
}
