//! The errors of the gRPC key delivery front end and the one function, [`status_of`], that maps
//! each of them (request checks and key manager alike) to a gRPC status.
//!
//! | Outcome | gRPC status |
//! |---|---|
//! | admission refused (certificate names no SAE attached here) | `UNAUTHENTICATED` |
//! | not permitted (pairing, not a slave of the keys) | `PERMISSION_DENIED` |
//! | malformed or out-of-limit request, unknown slave, mixed profiles | `INVALID_ARGUMENT` |
//! | unknown, expired or already delivered key IDs | `NOT_FOUND` |
//! | not enough key material | `RESOURCE_EXHAUSTED` with `google.rpc.RetryInfo` |
//! | peer node unreachable; store failure (the node restarts) | `UNAVAILABLE` |
//!
//! Key streams (ETSI 004) add, each with a `google.rpc.ErrorInfo` (domain [`ETSI004_DOMAIN`])
//! whose `reason` names the case and whose metadata `status` carries the 004 status where 004
//! has one:
//!
//! | Outcome | gRPC status | 004 status |
//! |---|---|---|
//! | no such stream open for the caller here | `NOT_FOUND` | - |
//! | the stream belongs to other SAEs | `PERMISSION_DENIED` | - |
//! | stream ID already in use | `ALREADY_EXISTS` | 5 |
//! | QoS not met (counter-proposal in the metadata); joined with another key size | `INVALID_ARGUMENT` | 7 |
//! | both SAEs at this node | `UNAVAILABLE` | 4 |
//! | index not reserved (yet) | `RESOURCE_EXHAUSTED` with `RetryInfo` | 2 |
//! | index expired (TTL) or its reservation void | `NOT_FOUND` | 6 |
//! | index already delivered to this SAE, or delivered or expired | `NOT_FOUND` | - |
//!
//! Messages say what to fix. They never carry key bytes, nor a key ID the request did not name,
//! nor a peer's reason for failing (that goes to the node's log).

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use std::collections::HashMap;

use crate::api::check::RequestError;
use crate::api::observe::Outcome;
use crate::api::{ServiceError, StreamFailure};
use crate::core::stream::StreamError;

/// The `google.rpc.ErrorInfo` domain of key-stream errors.
pub const ETSI004_DOMAIN: &str = "etsi004.qkd";

/// The retry delay sent with `RESOURCE_EXHAUSTED`: the pools of a pair refill continuously in
/// the background, so a client that waits this long usually finds key again.
pub const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Why a gRPC request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrpcError {
    /// SAE (or operator): a protocol-neutral check refused the request.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// SAE: a field does not parse (a key ID that is not a UUID, an SAE ID with bad characters).
    #[error("{field}: {problem}")]
    Malformed {
        /// The field, as named in `keys.proto` (with its index for repeated fields).
        field: String,
        /// What is wrong with it.
        problem: String,
    },
    /// Key manager (SAE, peer, operator): see [`ServiceError`].
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// Key streams (SAE, or scarce key): see [`StreamError`].
    #[error(transparent)]
    Stream(#[from] StreamError),
}

impl From<StreamFailure> for GrpcError {
    fn from(e: StreamFailure) -> Self {
        match e {
            StreamFailure::Stream(e) => GrpcError::Stream(e),
            StreamFailure::Service(e) => GrpcError::Service(e),
        }
    }
}

/// The one mapping from an error to the gRPC status the SAE sees.
pub fn status_of(e: &GrpcError) -> Status {
    use RequestError as R;
    use ServiceError as S;
    let (code, message) = match e {
        GrpcError::Stream(s) => return stream_status(s),
        GrpcError::Request(R::NotAdmitted) => (
            Code::Unauthenticated,
            "the client certificate names no SAE attached to this KME; call with the \
             certificate of an SAE registered at this node"
                .to_owned(),
        ),
        GrpcError::Request(R::NotPermitted) => (
            Code::PermissionDenied,
            "the caller may not share keys with the requested slave SAE (or an additional \
             slave); ask the operator to pair them"
                .to_owned(),
        ),
        GrpcError::Request(R::UnknownSlave) => (
            Code::InvalidArgument,
            "unknown slave SAE ID: name an SAE registered in the network".to_owned(),
        ),
        GrpcError::Request(R::MixedProfiles { pairs }) => {
            let list: Vec<String> = pairs
                .iter()
                .map(|(m, s, p)| {
                    let suite = if p.suite.is_empty() { "none" } else { p.suite };
                    format!("{m} -> {s}: policy {}, suite {suite}", p.policy)
                })
                .collect();
            (
                Code::InvalidArgument,
                format!(
                    "all slaves of a request must share the policy and suite of the pair; \
                     request them separately ({})",
                    list.join("; ")
                ),
            )
        }
        GrpcError::Request(
            other @ (R::SlaveIsCaller
            | R::NumberOutOfRange { .. }
            | R::SizeOutOfRange { .. }
            | R::SizeNotMultipleOf8
            | R::TooManyAdditionalSlaves { .. }
            | R::DuplicateAdditionalSlave
            | R::NoKeyIds
            | R::DuplicateKeyId
            | R::UnsupportedMandatoryExtensions { .. }),
        ) => (Code::InvalidArgument, other.to_string()),
        GrpcError::Malformed { .. } => (Code::InvalidArgument, e.to_string()),
        GrpcError::Service(S::MixedProfiles) => (
            Code::InvalidArgument,
            "all slaves of a request must share the policy and suite of the pair; request them \
             separately"
                .to_owned(),
        ),
        GrpcError::Service(S::KeysNotFound) => (
            Code::NotFound,
            "one or more keys specified are not found on KME: unknown, expired, already \
             delivered to this SAE, or obtained by another master than master_sae_id"
                .to_owned(),
        ),
        GrpcError::Service(S::NotSlave) => (
            Code::PermissionDenied,
            "the caller is not a slave of every requested key".to_owned(),
        ),
        GrpcError::Service(S::InsufficientKeyMaterial) => {
            let message = format!(
                "insufficient key material for this request; retry after {} s, or ask for fewer \
                 or smaller keys (GetStatus says how many are stored)",
                RETRY_DELAY.as_secs()
            );
            return Status::with_error_details(
                Code::ResourceExhausted,
                message,
                ErrorDetails::with_retry_info(Some(RETRY_DELAY)),
            );
        }
        // The peer's reason is for the node's log, not for the SAE.
        GrpcError::Service(S::PeerUnavailable(_)) => (
            Code::Unavailable,
            "peer KME unavailable; retry later".to_owned(),
        ),
        GrpcError::Service(S::Storage) => (
            Code::Unavailable,
            "key data access error; the node restarts to recover, retry later".to_owned(),
        ),
    };
    Status::new(code, message)
}

/// The status of a key-stream error, with its `ErrorInfo` (and `RetryInfo` when key is scarce).
fn stream_status(e: &StreamError) -> Status {
    use StreamError as E;
    let mut meta: HashMap<String, String> = HashMap::new();
    let (code, reason, etsi, message) = match e {
        E::UnknownStream => (
            Code::NotFound,
            "STREAM_NOT_FOUND",
            None,
            "no key stream with this key_stream_id is open for the caller at this KME; open \
             (or join) it first"
                .to_owned(),
        ),
        E::NotYours => (
            Code::PermissionDenied,
            "STREAM_OF_ANOTHER_SAE",
            None,
            "the key stream belongs to other SAEs".to_owned(),
        ),
        E::InUse => (
            Code::AlreadyExists,
            "KSID_IN_USE",
            Some(5),
            "the caller already has this key stream open; close it first, or use it".to_owned(),
        ),
        E::QosNotMet { counter } => {
            for (k, v) in [
                ("key_chunk_size", counter.chunk_bytes),
                ("max_bps", counter.max_bps),
                ("min_bps", counter.min_bps),
                ("timeout", counter.timeout_ms),
                ("ttl", counter.ttl_s),
            ] {
                meta.insert(k.to_owned(), v.to_string());
            }
            (
                Code::InvalidArgument,
                "QOS_NOT_MET",
                Some(7),
                format!(
                    "the QoS cannot be met; this KME can grant key_chunk_size {} bytes, max_bps \
                     {}, min_bps {}, timeout {} ms, ttl {} s (also in the ErrorInfo metadata)",
                    counter.chunk_bytes,
                    counter.max_bps,
                    counter.min_bps,
                    counter.timeout_ms,
                    counter.ttl_s
                ),
            )
        }
        E::ChunkMismatch { bytes } => {
            meta.insert("key_chunk_size".to_owned(), bytes.to_string());
            (
                Code::InvalidArgument,
                "QOS_NOT_MET",
                Some(7),
                format!("{e}; open again with key_chunk_size {bytes}"),
            )
        }
        E::SameNode => (
            Code::Unavailable,
            "NO_QKD_CONNECTION",
            Some(4),
            format!("{e}; key streams join SAEs at different nodes"),
        ),
        E::NotYet => {
            meta.insert("status".to_owned(), "2".to_owned());
            let message = format!(
                "the key of this index is not available yet (key is scarce, or the caller runs \
                 ahead of its stream); retry after {} s",
                RETRY_DELAY.as_secs()
            );
            let mut details = ErrorDetails::new();
            details.set_retry_info(Some(RETRY_DELAY)).set_error_info(
                "INSUFFICIENT_KEY",
                ETSI004_DOMAIN,
                meta,
            );
            return Status::with_error_details(Code::ResourceExhausted, message, details);
        }
        E::Expired => (
            Code::NotFound,
            "INDEX_EXPIRED",
            Some(6),
            "the key of this index expired (its TTL ran out) or was never reserved, at both \
             ends; go on with a later index"
                .to_owned(),
        ),
        E::AlreadyDelivered => (
            Code::NotFound,
            "INDEX_ALREADY_DELIVERED",
            None,
            "the key of this index was already delivered to the caller".to_owned(),
        ),
        E::Gone => (
            Code::NotFound,
            "INDEX_GONE",
            None,
            "the key of this index was delivered or expired".to_owned(),
        ),
    };
    if let Some(s) = etsi {
        meta.insert("status".to_owned(), u32::to_string(&s));
    }
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, ETSI004_DOMAIN, meta),
    )
}

/// The outcome class of an error, for the instrumentation hook ([`crate::api::observe`]).
pub fn outcome_of(e: &GrpcError) -> Outcome {
    match e {
        GrpcError::Request(r) => Outcome::of_request(r),
        GrpcError::Malformed { .. } => Outcome::Invalid,
        GrpcError::Service(s) => Outcome::of_service(s),
        GrpcError::Stream(s) => match s {
            StreamError::NotYet => Outcome::Exhausted,
            StreamError::NotYours => Outcome::NotPermitted,
            StreamError::SameNode => Outcome::Unavailable,
            StreamError::InUse
            | StreamError::QosNotMet { .. }
            | StreamError::ChunkMismatch { .. } => Outcome::Invalid,
            StreamError::UnknownStream
            | StreamError::Expired
            | StreamError::AlreadyDelivered
            | StreamError::Gone => Outcome::NotFound,
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_its_code_and_exhaustion_carries_retry_info() {
        let cases: Vec<(GrpcError, Code)> = vec![
            (RequestError::NotAdmitted.into(), Code::Unauthenticated),
            (RequestError::NotPermitted.into(), Code::PermissionDenied),
            (ServiceError::NotSlave.into(), Code::PermissionDenied),
            (RequestError::UnknownSlave.into(), Code::InvalidArgument),
            (
                RequestError::NumberOutOfRange { max: 128 }.into(),
                Code::InvalidArgument,
            ),
            (
                GrpcError::Malformed {
                    field: "key_ids[0]".into(),
                    problem: "not a UUID".into(),
                },
                Code::InvalidArgument,
            ),
            (ServiceError::KeysNotFound.into(), Code::NotFound),
            (
                ServiceError::InsufficientKeyMaterial.into(),
                Code::ResourceExhausted,
            ),
            (
                ServiceError::PeerUnavailable(crate::api::Unavailable::Unreachable).into(),
                Code::Unavailable,
            ),
        ];
        for (e, code) in cases {
            let s = status_of(&e);
            assert_eq!(s.code(), code, "{e:?}");
            assert!(!s.message().contains("10.0.0.9"), "{}", s.message());
            let retry = s.get_details_retry_info();
            assert_eq!(retry.is_some(), code == Code::ResourceExhausted, "{e:?}");
        }
        let s = status_of(&ServiceError::InsufficientKeyMaterial.into());
        assert_eq!(
            s.get_details_retry_info().unwrap().retry_delay,
            Some(RETRY_DELAY)
        );
    }

    #[test]
    fn every_stream_outcome_has_its_code_and_004_status() {
        use crate::core::stream::Qos;
        let cases: Vec<(StreamError, Code, &str, Option<&str>)> = vec![
            (
                StreamError::UnknownStream,
                Code::NotFound,
                "STREAM_NOT_FOUND",
                None,
            ),
            (
                StreamError::NotYours,
                Code::PermissionDenied,
                "STREAM_OF_ANOTHER_SAE",
                None,
            ),
            (
                StreamError::InUse,
                Code::AlreadyExists,
                "KSID_IN_USE",
                Some("5"),
            ),
            (
                StreamError::QosNotMet {
                    counter: Qos {
                        chunk_bytes: 128,
                        ..Qos::default()
                    },
                },
                Code::InvalidArgument,
                "QOS_NOT_MET",
                Some("7"),
            ),
            (
                StreamError::ChunkMismatch { bytes: 32 },
                Code::InvalidArgument,
                "QOS_NOT_MET",
                Some("7"),
            ),
            (
                StreamError::SameNode,
                Code::Unavailable,
                "NO_QKD_CONNECTION",
                Some("4"),
            ),
            (
                StreamError::NotYet,
                Code::ResourceExhausted,
                "INSUFFICIENT_KEY",
                Some("2"),
            ),
            (
                StreamError::Expired,
                Code::NotFound,
                "INDEX_EXPIRED",
                Some("6"),
            ),
            (
                StreamError::AlreadyDelivered,
                Code::NotFound,
                "INDEX_ALREADY_DELIVERED",
                None,
            ),
            (StreamError::Gone, Code::NotFound, "INDEX_GONE", None),
        ];
        for (e, code, reason, etsi) in cases {
            let s = status_of(&e.clone().into());
            assert_eq!(s.code(), code, "{e:?}");
            let info = s.get_details_error_info().unwrap();
            assert_eq!(info.reason, reason);
            assert_eq!(info.domain, ETSI004_DOMAIN);
            assert_eq!(
                info.metadata.get("status").map(String::as_str),
                etsi,
                "{e:?}"
            );
            assert_eq!(
                s.get_details_retry_info().is_some(),
                code == Code::ResourceExhausted
            );
        }
        let s = status_of(
            &StreamError::QosNotMet {
                counter: Qos {
                    chunk_bytes: 128,
                    ..Qos::default()
                },
            }
            .into(),
        );
        let info = s.get_details_error_info().unwrap();
        assert_eq!(info.metadata["key_chunk_size"], "128");
    }
}
