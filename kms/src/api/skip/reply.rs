//! What the SKIP front end answers on error: [`SkipError`] and the one function,
//! [`error_reply`], that maps every error (front end or key manager) to an HTTP status and a
//! short JSON `{"message": ...}` body (the draft defines no error body; clients ignore it,
//! operators read it).
//!
//! Status codes (docs/skip.md §4): 400 for anything the request got wrong, a key that is not
//! found (never existed, expired, already delivered, or not this caller's) included, as the draft
//! says; 403 for a caller that is not an encryptor of this Key Provider or a pair that may not
//! share keys; 404 for an unknown path (and `/entropy` when not offered); 405 for a method other
//! than GET; 500 for an internal error reading or erasing the key; 503 when no key or entropy can
//! be had right now. No message carries key bytes.

use http::StatusCode;
use qkd_proto::skip;

use crate::api::ServiceError;
use crate::api::https::Reply;
use crate::api::observe::Outcome;

/// The draft §4.3: a key that cannot be returned, for whatever reason (the same answer for all,
/// so that a caller learns nothing about keys that are not its own).
pub const MSG_KEY_NOT_FOUND: &str =
    "key not found: unknown, expired, already delivered, or not shared with this encryptor";
/// Not enough key for the pair right now.
pub const MSG_INSUFFICIENT_KEY_MATERIAL: &str = "insufficient key material; retry later";
/// The peer Key Provider could not take part.
pub const MSG_PEER_UNAVAILABLE: &str = "peer Key Provider unavailable; retry later";
/// The store failed while reading or erasing the key.
pub const MSG_INTERNAL: &str = "internal error while reading or erasing the key";
/// The OS random number generator failed.
pub const MSG_ENTROPY_UNAVAILABLE: &str = "entropy source unavailable; retry later";
/// The caller's certificate names no encryptor of this Key Provider.
pub const MSG_FORBIDDEN: &str =
    "the client certificate names no encryptor configured at this Key Provider";
/// The value of `Allow` on 405.
pub const ALLOW: &str = "GET";

/// Why a request was refused. Every variant is caused by the calling encryptor unless it says
/// otherwise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkipError {
    /// Its certificate names no encryptor with a route here. 403.
    #[error("the client certificate names no encryptor configured at this Key Provider")]
    Forbidden,
    /// Operator: the route maps the caller to an SAE it may not pair with. 403.
    #[error("{0} is not allowed to share keys with the SAE this remoteSystemID maps to")]
    PairNotAllowed(String),
    /// The path is not a SKIP method (or `/entropy` is not offered). 404.
    #[error("not found; SKIP paths are /capabilities, /key, /key/<keyId> and /entropy")]
    NotFound,
    /// A method other than GET. 405.
    #[error("method not allowed; SKIP uses GET only")]
    MethodNotAllowed,
    /// The request declared a body. 400.
    #[error("SKIP requests carry no body")]
    HasBody,
    /// The query does not fit the method. 400.
    #[error("invalid query: {0}")]
    BadQuery(String),
    /// `remoteSystemID` is missing. 400.
    #[error("remoteSystemID is required")]
    MissingRemote,
    /// `remoteSystemID` names no Key Provider this caller is mapped to. 400.
    #[error("remoteSystemID {0:?} is not a peer Key Provider of this encryptor; see /capabilities")]
    UnknownRemote(String),
    /// `size` outside the pair's range or not a multiple of 8. 400.
    #[error("size must be a multiple of 8 between {min} and {max} bits")]
    BadSize {
        /// Smallest size of the pair.
        min: u32,
        /// Largest size of the pair.
        max: u32,
    },
    /// `minentropy` outside 8..=MAX or not a multiple of 8. 400.
    #[error("minentropy must be a multiple of 8 between 8 and {max} bits")]
    BadMinEntropy {
        /// Largest value.
        max: u32,
    },
    /// The keyId is not 32 hex digits. 400.
    #[error("malformed keyId: {0}")]
    BadKeyId(String),
    /// Host: the OS random number generator failed. 503.
    #[error("entropy source unavailable")]
    EntropyUnavailable,
    /// Key manager (encryptor, peer, operator): see [`ServiceError`].
    #[error(transparent)]
    Service(#[from] ServiceError),
}

impl SkipError {
    /// The outcome class the instrumentation hook counts ([`crate::api::observe`]).
    pub fn outcome(&self) -> Outcome {
        match self {
            SkipError::Forbidden => Outcome::NotAdmitted,
            SkipError::PairNotAllowed(_) => Outcome::NotPermitted,
            SkipError::NotFound
            | SkipError::MethodNotAllowed
            | SkipError::HasBody
            | SkipError::BadQuery(_)
            | SkipError::MissingRemote
            | SkipError::UnknownRemote(_)
            | SkipError::BadSize { .. }
            | SkipError::BadMinEntropy { .. }
            | SkipError::BadKeyId(_) => Outcome::Invalid,
            SkipError::EntropyUnavailable => Outcome::Internal,
            SkipError::Service(e) => Outcome::of_service(e),
        }
    }
}

/// The one mapping from an error to what the encryptor sees.
pub fn error_reply(err: &SkipError) -> Reply {
    let (status, message) = match err {
        SkipError::Forbidden => (StatusCode::FORBIDDEN, MSG_FORBIDDEN.to_owned()),
        e @ SkipError::PairNotAllowed(_) => (StatusCode::FORBIDDEN, e.to_string()),
        e @ SkipError::NotFound => (StatusCode::NOT_FOUND, e.to_string()),
        e @ SkipError::MethodNotAllowed => {
            let mut reply = Reply::json(
                StatusCode::METHOD_NOT_ALLOWED,
                &skip::Error {
                    message: e.to_string(),
                },
            );
            reply.allow = Some(ALLOW);
            return reply;
        }
        // Not found, not this caller's: one answer (draft §4.3), the key kept for its owner.
        SkipError::Service(ServiceError::KeysNotFound | ServiceError::NotSlave) => {
            (StatusCode::BAD_REQUEST, MSG_KEY_NOT_FOUND.to_owned())
        }
        SkipError::Service(ServiceError::InsufficientKeyMaterial) => (
            StatusCode::SERVICE_UNAVAILABLE,
            MSG_INSUFFICIENT_KEY_MATERIAL.to_owned(),
        ),
        // The peer's reason is for the node's log, not for the encryptor.
        SkipError::Service(ServiceError::PeerUnavailable(_)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            MSG_PEER_UNAVAILABLE.to_owned(),
        ),
        // One slave per SKIP key, so mixed profiles can only be a bug.
        SkipError::Service(ServiceError::Storage | ServiceError::MixedProfiles) => {
            (StatusCode::INTERNAL_SERVER_ERROR, MSG_INTERNAL.to_owned())
        }
        SkipError::EntropyUnavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            MSG_ENTROPY_UNAVAILABLE.to_owned(),
        ),
        e @ (SkipError::HasBody
        | SkipError::BadQuery(_)
        | SkipError::MissingRemote
        | SkipError::UnknownRemote(_)
        | SkipError::BadSize { .. }
        | SkipError::BadMinEntropy { .. }
        | SkipError::BadKeyId(_)) => (StatusCode::BAD_REQUEST, e.to_string()),
    };
    Reply::json(status, &skip::Error { message })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_its_status() {
        let cases: Vec<(SkipError, u16)> = vec![
            (SkipError::Forbidden, 403),
            (SkipError::PairNotAllowed("ENC-A1".into()), 403),
            (SkipError::NotFound, 404),
            (SkipError::MethodNotAllowed, 405),
            (SkipError::HasBody, 400),
            (SkipError::BadQuery("x".into()), 400),
            (SkipError::MissingRemote, 400),
            (SkipError::UnknownRemote("KP_X".into()), 400),
            (SkipError::BadSize { min: 64, max: 1024 }, 400),
            (SkipError::BadMinEntropy { max: 4096 }, 400),
            (SkipError::BadKeyId("x".into()), 400),
            (ServiceError::KeysNotFound.into(), 400),
            (ServiceError::NotSlave.into(), 400),
            (ServiceError::InsufficientKeyMaterial.into(), 503),
            (
                ServiceError::PeerUnavailable(crate::api::Unavailable::Unreachable).into(),
                503,
            ),
            (SkipError::EntropyUnavailable, 503),
            (ServiceError::Storage.into(), 500),
            (ServiceError::MixedProfiles.into(), 500),
        ];
        for (err, code) in cases {
            let r = error_reply(&err);
            assert_eq!(r.status.as_u16(), code, "{err:?}");
            let body: skip::Error = serde_json::from_slice(r.body.as_deref().unwrap()).unwrap();
            assert!(!body.message.is_empty());
            assert_eq!(r.allow.is_some(), code == 405);
        }
    }

    #[test]
    fn not_found_and_not_yours_answer_alike() {
        assert_eq!(
            error_reply(&ServiceError::KeysNotFound.into()),
            error_reply(&ServiceError::NotSlave.into())
        );
    }
}
