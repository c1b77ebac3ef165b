//! What the ETSI GS QKD 014 front end answers: the [`Reply`] value, the errors a request can hit
//! ([`EtsiError`]) and the one function, [`error_reply`], that maps every error (front end or key
//! manager) to an HTTP status and an ETSI `Error` body.
//!
//! The ETSI message strings are constants here and nowhere else. No error message may carry key
//! bytes or a `key_ID` the request did not name.

use http::StatusCode;
use qkd_proto::etsi014;
use serde_json::Value;

use qkd_types::SaeId;

pub use crate::api::https::Reply;
use crate::api::{KeyProfile, ServiceError};

/// ETSI 014 §6.4 / product policy: a size outside our multiple-of-8 rule.
pub const MSG_SIZE_NOT_MULTIPLE_OF_8: &str = "size shall be a multiple of 8";
/// ETSI 014 §6.2: an `extension_mandatory` name we do not support.
pub const MSG_MANDATORY_UNSUPPORTED: &str = "not all extension_mandatory parameters are supported";
/// ETSI 014 §6.2: the `details` member name for each unsupported mandatory extension.
pub const DETAIL_MANDATORY_UNSUPPORTED: &str = "extension_mandatory_unsupported";
/// ETSI 014 §6.4: dec_keys could not return one or more of the keys.
pub const MSG_KEYS_NOT_FOUND: &str = "one or more keys specified are not found on KME";
/// Product policy (docs/etsi014.md §6.1): not enough stored key for the request.
pub const MSG_INSUFFICIENT_KEY_MATERIAL: &str = "insufficient key material";
/// ETSI 014 §6 example message, used for store failures.
pub const MSG_KEY_DATA_ACCESS: &str = "key data access error";
/// Product policy (docs/etsi014.md §5): the path slave or an additional slave is not a
/// configured SAE.
pub const MSG_UNKNOWN_SLAVE: &str = "unknown slave_SAE_ID";
/// Product policy (docs/etsi014.md): the pairs of one request differ in policy or suite.
pub const MSG_MIXED_PROFILES: &str =
    "all slaves of a request must share the policy and suite of the pair";
/// The `details` member naming one pair of such a request.
pub const DETAIL_PAIR: &str = "pair";
/// Product policy (docs/etsi014.md §4.1, 503): the peer KME could not take part in the request.
pub const MSG_PEER_UNAVAILABLE: &str = "peer KME unavailable";

/// The `Allow` header value for `…/status`.
pub const ALLOW_STATUS: &str = "GET";
/// The `Allow` header value for `…/enc_keys` and `…/dec_keys`.
pub const ALLOW_KEYS: &str = "GET, POST";

/// Why a request was refused. Every variant is caused by the calling SAE unless it says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtsiError {
    /// SAE: its certificate maps to no SAE attached to this KME, or it may not pair with a slave.
    #[error("unauthorized")]
    Unauthorized,
    /// SAE: the path is not one of the three ETSI 014 methods.
    #[error("not found")]
    NotFound,
    /// SAE: the method is not defined for this path.
    #[error("method not allowed")]
    MethodNotAllowed {
        /// The methods the path allows.
        allow: &'static str,
    },
    /// SAE: the path `slave_SAE_ID` (status, enc_keys) or an additional slave is not configured.
    #[error("unknown slave_SAE_ID")]
    UnknownSlave,
    /// SAE: it named itself as the slave.
    #[error("slave_SAE_ID must differ from the calling SAE")]
    SlaveIsCaller,
    /// SAE: a non-empty body declared a Content-Type other than `application/json`.
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    /// SAE: the body is not a JSON object of the expected shape and types.
    #[error("invalid request body: {0}")]
    BadBody(String),
    /// SAE: the body is larger than the front end reads.
    #[error("request body too large")]
    BodyTooLarge,
    /// SAE: the query string does not fit the GET form of this method.
    #[error("invalid query: {0}")]
    BadQuery(String),
    /// SAE: a GET carried a body.
    #[error("a GET request carries no body; use POST")]
    GetWithBody,
    /// SAE: `number` outside 1..=max_key_per_request.
    #[error("number must be between 1 and {max}")]
    NumberOutOfRange {
        /// `max_key_per_request` of the pair.
        max: u32,
    },
    /// SAE: `size` outside min_key_size..=max_key_size.
    #[error("size must be between {min} and {max} bits")]
    SizeOutOfRange {
        /// `min_key_size` of the pair.
        min: u32,
        /// `max_key_size` of the pair.
        max: u32,
    },
    /// SAE: `size` within the range but not a multiple of 8.
    #[error("size shall be a multiple of 8")]
    SizeNotMultipleOf8,
    /// SAE: more `additional_slave_SAE_IDs` than `max_SAE_ID_count`.
    #[error("additional_slave_SAE_IDs has more than max_SAE_ID_count ({max}) entries")]
    TooManyAdditionalSlaves {
        /// `max_SAE_ID_count` of the pair.
        max: u32,
    },
    /// SAE: an additional slave repeats the master, the slave or another additional slave.
    #[error("additional_slave_SAE_IDs must differ from each other, the master and the slave")]
    DuplicateAdditionalSlave,
    /// SAE or operator: the pairs of the master with the slave and the additional slaves are
    /// configured with different policies or suites, so no one key can serve them all.
    #[error("all slaves of a request must share the policy and suite of the pair")]
    MixedProfiles {
        /// Each pair of the request, with its profile, in request order.
        pairs: Vec<(SaeId, SaeId, KeyProfile)>,
    },
    /// SAE: `key_IDs` is empty.
    #[error("key_IDs must hold at least one key_ID")]
    NoKeyIds,
    /// SAE: a `key_ID` appears twice.
    #[error("key_IDs names a key_ID twice")]
    DuplicateKeyId,
    /// SAE: `extension_mandatory` names extensions this KME does not support.
    #[error("not all extension_mandatory parameters are supported")]
    UnsupportedMandatoryExtensions {
        /// The unsupported names, in request order.
        names: Vec<String>,
    },
    /// Key manager (SAE, peer, operator): see [`ServiceError`].
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// The one mapping from an error to what the SAE sees. 401 has an empty body (the spec's "–");
/// 400 and 503 carry an ETSI `Error`; 404 and 405 carry one too, for clients that log bodies.
pub fn error_reply(err: &EtsiError) -> Reply {
    let (status, message, details): (StatusCode, String, Option<Vec<etsi014::JsonObject>>) =
        match err {
            EtsiError::Unauthorized | EtsiError::Service(ServiceError::NotSlave) => {
                return Reply {
                    status: StatusCode::UNAUTHORIZED,
                    body: None,
                    allow: None,
                };
            }
            EtsiError::NotFound => (StatusCode::NOT_FOUND, "not found".into(), None),
            EtsiError::MethodNotAllowed { allow } => {
                let mut reply = Reply::json(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &etsi014::Error::new(format!("method not allowed; allowed: {allow}")),
                );
                reply.allow = Some(allow);
                return reply;
            }
            EtsiError::UnknownSlave => (StatusCode::BAD_REQUEST, MSG_UNKNOWN_SLAVE.into(), None),
            EtsiError::SizeNotMultipleOf8 => (
                StatusCode::BAD_REQUEST,
                MSG_SIZE_NOT_MULTIPLE_OF_8.into(),
                None,
            ),
            EtsiError::UnsupportedMandatoryExtensions { names } => {
                let details = names
                    .iter()
                    .map(|name| {
                        let mut o = etsi014::JsonObject::new();
                        o.insert(
                            DETAIL_MANDATORY_UNSUPPORTED.into(),
                            Value::String(format!("{name} is not supported")),
                        );
                        o
                    })
                    .collect();
                (
                    StatusCode::BAD_REQUEST,
                    MSG_MANDATORY_UNSUPPORTED.into(),
                    Some(details),
                )
            }
            EtsiError::MixedProfiles { pairs } => {
                let details = pairs
                    .iter()
                    .map(|(master, slave, profile)| {
                        let mut o = etsi014::JsonObject::new();
                        o.insert(
                            DETAIL_PAIR.into(),
                            Value::String(format!(
                                "{master} -> {slave}: policy {}, suite {}",
                                profile.policy,
                                if profile.suite.is_empty() {
                                    "none"
                                } else {
                                    profile.suite
                                }
                            )),
                        );
                        o
                    })
                    .collect();
                (
                    StatusCode::BAD_REQUEST,
                    MSG_MIXED_PROFILES.into(),
                    Some(details),
                )
            }
            EtsiError::Service(ServiceError::MixedProfiles) => {
                (StatusCode::BAD_REQUEST, MSG_MIXED_PROFILES.into(), None)
            }
            EtsiError::Service(ServiceError::KeysNotFound) => {
                (StatusCode::BAD_REQUEST, MSG_KEYS_NOT_FOUND.into(), None)
            }
            EtsiError::Service(ServiceError::InsufficientKeyMaterial) => (
                StatusCode::SERVICE_UNAVAILABLE,
                MSG_INSUFFICIENT_KEY_MATERIAL.into(),
                None,
            ),
            // The peer's reason is for the node's log, not for the SAE.
            EtsiError::Service(ServiceError::PeerUnavailable(_)) => (
                StatusCode::SERVICE_UNAVAILABLE,
                MSG_PEER_UNAVAILABLE.into(),
                None,
            ),
            EtsiError::Service(ServiceError::Storage) => (
                StatusCode::SERVICE_UNAVAILABLE,
                MSG_KEY_DATA_ACCESS.into(),
                None,
            ),
            other @ (EtsiError::SlaveIsCaller
            | EtsiError::UnsupportedMediaType
            | EtsiError::BadBody(_)
            | EtsiError::BodyTooLarge
            | EtsiError::BadQuery(_)
            | EtsiError::GetWithBody
            | EtsiError::NumberOutOfRange { .. }
            | EtsiError::SizeOutOfRange { .. }
            | EtsiError::TooManyAdditionalSlaves { .. }
            | EtsiError::DuplicateAdditionalSlave
            | EtsiError::NoKeyIds
            | EtsiError::DuplicateKeyId) => (StatusCode::BAD_REQUEST, other.to_string(), None),
        };
    Reply::json(status, &etsi014::Error { message, details })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn body(r: &Reply) -> Value {
        serde_json::from_slice(r.body.as_deref().unwrap()).unwrap()
    }

    #[test]
    fn status_codes_and_exact_messages() {
        let cases: Vec<(EtsiError, u16, Option<&str>)> = vec![
            (EtsiError::Unauthorized, 401, None),
            (ServiceError::NotSlave.into(), 401, None),
            (
                EtsiError::SizeNotMultipleOf8,
                400,
                Some(MSG_SIZE_NOT_MULTIPLE_OF_8),
            ),
            (
                ServiceError::KeysNotFound.into(),
                400,
                Some(MSG_KEYS_NOT_FOUND),
            ),
            (
                ServiceError::InsufficientKeyMaterial.into(),
                503,
                Some(MSG_INSUFFICIENT_KEY_MATERIAL),
            ),
            (ServiceError::Storage.into(), 503, Some(MSG_KEY_DATA_ACCESS)),
            (
                ServiceError::PeerUnavailable(crate::api::Unavailable::Unreachable).into(),
                503,
                Some(MSG_PEER_UNAVAILABLE),
            ),
            (EtsiError::UnknownSlave, 400, Some(MSG_UNKNOWN_SLAVE)),
            (EtsiError::NotFound, 404, Some("not found")),
            (
                ServiceError::MixedProfiles.into(),
                400,
                Some(MSG_MIXED_PROFILES),
            ),
        ];
        for (err, code, msg) in cases {
            let r = error_reply(&err);
            assert_eq!(r.status.as_u16(), code, "{err:?}");
            match msg {
                None => assert_eq!(r.body, None),
                Some(m) => assert_eq!(body(&r)["message"], m, "{err:?}"),
            }
        }
    }

    #[test]
    fn mixed_profiles_name_every_pair_of_the_request() {
        let sae = |s: &str| SaeId::parse(s).unwrap();
        let hybrid = KeyProfile {
            policy: "QKD+PQ+T",
            suite: "X25519/ML-KEM-768",
        };
        let qkd_only = KeyProfile {
            policy: "QKD-only",
            suite: "",
        };
        let r = error_reply(&EtsiError::MixedProfiles {
            pairs: vec![
                (sae("ENC-A1"), sae("ENC-B1"), qkd_only),
                (sae("ENC-A1"), sae("ENC-B2"), hybrid),
            ],
        });
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body(&r),
            serde_json::json!({
                "message": MSG_MIXED_PROFILES,
                "details": [
                    {"pair": "ENC-A1 -> ENC-B1: policy QKD-only, suite none"},
                    {"pair": "ENC-A1 -> ENC-B2: policy QKD+PQ+T, suite X25519/ML-KEM-768"}
                ]
            })
        );
    }

    #[test]
    fn mandatory_extension_details_follow_the_spec_example() {
        let r = error_reply(&EtsiError::UnsupportedMandatoryExtensions {
            names: vec!["abc_route_type".into()],
        });
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body(&r),
            serde_json::json!({
                "message": "not all extension_mandatory parameters are supported",
                "details": [{"extension_mandatory_unsupported": "abc_route_type is not supported"}]
            })
        );
    }

    #[test]
    fn method_not_allowed_carries_allow() {
        let r = error_reply(&EtsiError::MethodNotAllowed {
            allow: ALLOW_STATUS,
        });
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.allow, Some("GET"));
    }
}
