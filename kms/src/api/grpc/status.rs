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
//! Messages say what to fix. They never carry key bytes, nor a key ID the request did not name,
//! nor a peer's reason for failing (that goes to the node's log).

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::api::ServiceError;
use crate::api::check::RequestError;
use crate::api::observe::Outcome;

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
}

/// The one mapping from an error to the gRPC status the SAE sees.
pub fn status_of(e: &GrpcError) -> Status {
    use RequestError as R;
    use ServiceError as S;
    let (code, message) = match e {
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

/// The outcome class of an error, for the instrumentation hook ([`crate::api::observe`]).
pub fn outcome_of(e: &GrpcError) -> Outcome {
    match e {
        GrpcError::Request(r) => Outcome::of_request(r),
        GrpcError::Malformed { .. } => Outcome::Invalid,
        GrpcError::Service(s) => Outcome::of_service(s),
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
}
