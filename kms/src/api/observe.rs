//! The one instrumentation hook of the key-delivery front ends: the ETSI 014, gRPC and SKIP front
//! ends report each request they answered as (API, operation, outcome class) to an
//! [`ApiObserver`].
//!
//! The labels are closed enums, so any counter or metric built on them has a bounded label set:
//! no SAE IDs, key IDs, paths or messages, and never key bytes. [`NoObserver`] is the default;
//! [`ApiCounters`] counts per API, operation and outcome and serialises to the JSON the node shows
//! in its `/status` document. Metrics exporters and audit logs implement the trait the same way.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde::ser::SerializeMap;

use super::ServiceError;
use super::check::RequestError;

/// Which front end answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// ETSI GS QKD 014 over HTTPS.
    Etsi014,
    /// The gRPC key delivery service (`qkd.keys.v1.KeyDelivery`).
    Grpc,
    /// SKIP (IETF draft-cisco-skip) over HTTPS, for routers.
    Skip,
}

impl Api {
    /// Every API, in display order.
    pub const ALL: [Api; 3] = [Api::Etsi014, Api::Grpc, Api::Skip];

    /// The label used in `/status` and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Api::Etsi014 => "etsi014",
            Api::Grpc => "grpc",
            Api::Skip => "skip",
        }
    }
}

/// What was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Status of a pair (ETSI Get status; SKIP capabilities).
    Status,
    /// Keys for a slave (ETSI Get key, enc_keys; a SKIP new key).
    EncKeys,
    /// Keys by ID (ETSI Get key with key IDs, dec_keys; a SKIP key by ID).
    DecKeys,
    /// Open or join a key stream (ETSI 004 OPEN_CONNECT).
    OpenStream,
    /// A key of a key stream (ETSI 004 GET_KEY; each key of a StreamKeys call counts once).
    StreamKey,
    /// Close a key stream (ETSI 004 CLOSE).
    CloseStream,
    /// Random bytes from the node's entropy source (SKIP `/entropy`).
    Entropy,
    /// Anything else the front end answered (an unknown path or method).
    Other,
}

impl Operation {
    /// Every operation, in display order.
    pub const ALL: [Operation; 8] = [
        Operation::Status,
        Operation::EncKeys,
        Operation::DecKeys,
        Operation::OpenStream,
        Operation::StreamKey,
        Operation::CloseStream,
        Operation::Entropy,
        Operation::Other,
    ];

    /// The label used in `/status` and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Operation::Status => "status",
            Operation::EncKeys => "enc_keys",
            Operation::DecKeys => "dec_keys",
            Operation::OpenStream => "open_stream",
            Operation::StreamKey => "stream_key",
            Operation::CloseStream => "close_stream",
            Operation::Entropy => "entropy",
            Operation::Other => "other",
        }
    }
}

/// How a request ended, as a class every protocol shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Answered with what was asked.
    Ok,
    /// The caller's certificate names no SAE attached here.
    NotAdmitted,
    /// The caller may not pair with the slave, or is not a slave of the keys.
    NotPermitted,
    /// The request was malformed or out of limits.
    Invalid,
    /// Unknown, expired or already delivered key IDs.
    NotFound,
    /// Not enough key material right now.
    Exhausted,
    /// A peer node could not take part.
    Unavailable,
    /// The node's store failed.
    Internal,
}

impl Outcome {
    /// Every outcome, in display order.
    pub const ALL: [Outcome; 8] = [
        Outcome::Ok,
        Outcome::NotAdmitted,
        Outcome::NotPermitted,
        Outcome::Invalid,
        Outcome::NotFound,
        Outcome::Exhausted,
        Outcome::Unavailable,
        Outcome::Internal,
    ];

    /// The label used in `/status` and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::NotAdmitted => "not_admitted",
            Outcome::NotPermitted => "not_permitted",
            Outcome::Invalid => "invalid",
            Outcome::NotFound => "not_found",
            Outcome::Exhausted => "exhausted",
            Outcome::Unavailable => "unavailable",
            Outcome::Internal => "internal",
        }
    }

    /// The class of a refusal by the shared request checks.
    pub fn of_request(e: &RequestError) -> Self {
        match e {
            RequestError::NotAdmitted => Outcome::NotAdmitted,
            RequestError::NotPermitted => Outcome::NotPermitted,
            _ => Outcome::Invalid,
        }
    }

    /// The class of a key-manager error.
    pub fn of_service(e: &ServiceError) -> Self {
        match e {
            ServiceError::InsufficientKeyMaterial => Outcome::Exhausted,
            ServiceError::KeysNotFound => Outcome::NotFound,
            ServiceError::NotSlave => Outcome::NotPermitted,
            ServiceError::PeerUnavailable(_) => Outcome::Unavailable,
            ServiceError::MixedProfiles => Outcome::Invalid,
            ServiceError::Storage => Outcome::Internal,
        }
    }
}

/// Told about every request a front end answered. Called on the request's task: implementations
/// must be quick and must not block.
pub trait ApiObserver: Send + Sync + std::fmt::Debug + 'static {
    /// One request of `operation` over `api` ended with `outcome`.
    fn observe(&self, api: Api, operation: Operation, outcome: Outcome);
}

/// The default observer: does nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoObserver;

impl ApiObserver for NoObserver {
    fn observe(&self, _: Api, _: Operation, _: Outcome) {}
}

const CELLS: usize = Api::ALL.len() * Operation::ALL.len() * Outcome::ALL.len();

/// Counts requests per API, operation and outcome (a fixed table of atomic counters).
///
/// Serialises as `{"<api>": {"<operation>": {"<outcome>": n, ...}, ...}, ...}` with every label
/// present, so that the document's shape never depends on traffic.
#[derive(Debug)]
pub struct ApiCounters {
    cells: [AtomicU64; CELLS],
}

impl Default for ApiCounters {
    fn default() -> Self {
        Self {
            cells: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl ApiCounters {
    /// All counters at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests counted so far, all labels together.
    pub fn total(&self) -> u64 {
        self.cells.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Requests counted so far for one (API, operation, outcome).
    pub fn count(&self, api: Api, operation: Operation, outcome: Outcome) -> u64 {
        self.cells[index(api, operation, outcome)].load(Ordering::Relaxed)
    }
}

impl ApiObserver for ApiCounters {
    fn observe(&self, api: Api, operation: Operation, outcome: Outcome) {
        self.cells[index(api, operation, outcome)].fetch_add(1, Ordering::Relaxed);
    }
}

impl Serialize for ApiCounters {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut apis = s.serialize_map(Some(Api::ALL.len()))?;
        for api in Api::ALL {
            apis.serialize_entry(api.label(), &PerApi(self, api))?;
        }
        apis.end()
    }
}

struct PerApi<'a>(&'a ApiCounters, Api);

impl Serialize for PerApi<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut ops = s.serialize_map(Some(Operation::ALL.len()))?;
        for op in Operation::ALL {
            let outcomes: serde_json::Map<String, serde_json::Value> = Outcome::ALL
                .iter()
                .map(|o| (o.label().to_owned(), self.0.count(self.1, op, *o).into()))
                .collect();
            ops.serialize_entry(op.label(), &outcomes)?;
        }
        ops.end()
    }
}

fn index(api: Api, operation: Operation, outcome: Outcome) -> usize {
    let a = api as usize;
    let op = operation as usize;
    let o = outcome as usize;
    (a * Operation::ALL.len() + op) * Outcome::ALL.len() + o
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_cell_apart_and_serialises_every_label() {
        let c = ApiCounters::new();
        c.observe(Api::Grpc, Operation::EncKeys, Outcome::Ok);
        c.observe(Api::Grpc, Operation::EncKeys, Outcome::Ok);
        c.observe(Api::Etsi014, Operation::DecKeys, Outcome::NotFound);
        assert_eq!(c.count(Api::Grpc, Operation::EncKeys, Outcome::Ok), 2);
        assert_eq!(c.count(Api::Etsi014, Operation::EncKeys, Outcome::Ok), 0);
        assert_eq!(c.total(), 3);
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["grpc"]["enc_keys"]["ok"], 2);
        assert_eq!(v["etsi014"]["dec_keys"]["not_found"], 1);
        assert_eq!(v["etsi014"]["other"]["internal"], 0);
        // Every (api, operation, outcome) appears, each cell exactly once.
        let n: usize = v
            .as_object()
            .unwrap()
            .values()
            .flat_map(|ops| ops.as_object().unwrap().values())
            .map(|outs| outs.as_object().unwrap().len())
            .sum();
        assert_eq!(n, CELLS);
        let mut seen = std::collections::HashSet::new();
        for a in Api::ALL {
            for op in Operation::ALL {
                for o in Outcome::ALL {
                    assert!(seen.insert(index(a, op, o)));
                }
            }
        }
    }
}
