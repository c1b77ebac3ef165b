//! Typed faults of a real device, each saying who causes it, and the one mapping from a fault to
//! the state of its link ([`DeviceFault::link_state`]).
//!
//! A device adapter (today the ETSI 014 one) reports every failure it can name as a
//! [`DeviceFault`] inside [`crate::DeviceError::Device`]: a timeout, a refused connection, a TLS
//! failure, a device that names another KME, an HTTP status, an answer that is not what the spec
//! defines, a key that fails a check. Operators and the node act on the variant (and on
//! [`DeviceFault::culprit`]), never on the text. No variant carries key bytes or their base64
//! text: key faults name the key's ID and the check it failed.

use std::fmt;

use qkd_types::{BlockId, KmeId, SaeId};
use serde::Serialize;

use crate::LinkState;

/// Who is to act on a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Culprit {
    /// The device: it is down, hung, overloaded, or it answered what the spec forbids.
    Device,
    /// The network between node and device (or a device that is off the air: from the node the
    /// two look the same).
    Network,
    /// The operator: the node's configuration for this device, or the device's registration of
    /// this node (certificates, CA, KME and SAE IDs, key size, TLS versions).
    Operator,
}

/// The device request a fault happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceOp {
    /// ETSI 014 Get status.
    Status,
    /// ETSI 014 Get key (`enc_keys`), at the master end.
    EncKeys,
    /// ETSI 014 Get key with key IDs (`dec_keys`), at the slave end.
    DecKeys,
}

impl fmt::Display for DeviceOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceOp::Status => "status",
            DeviceOp::EncKeys => "enc_keys",
            DeviceOp::DecKeys => "dec_keys",
        })
    }
}

/// What an HTTP status from a device means for the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusClass {
    /// 401 or 403: the device does not accept this node's certificate for this pair.
    Unauthorized,
    /// 400: the device refused the request's content (e.g. a key size it does not serve).
    BadRequest,
    /// 404, 405 or 501 for both request forms: the device serves no such request at this URL.
    NotServed,
    /// 503: the device has no key for the pair right now, or is busy.
    Unavailable,
    /// Any other 5xx: the device failed.
    ServerError,
    /// Anything else that is not 200 (1xx, 3xx, other 4xx).
    Unexpected,
}

impl StatusClass {
    /// The class of an HTTP status code other than 200.
    pub fn of(code: u16) -> Self {
        match code {
            401 | 403 => StatusClass::Unauthorized,
            400 => StatusClass::BadRequest,
            404 | 405 | 501 => StatusClass::NotServed,
            503 => StatusClass::Unavailable,
            500..=599 => StatusClass::ServerError,
            _ => StatusClass::Unexpected,
        }
    }
}

/// Why a TLS handshake with a device failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsFailure {
    /// No TLS version in common: typically a TLS 1.2-only device while this device's
    /// configuration does not opt in to TLS 1.2. Operator.
    ProtocolVersion,
    /// The device's certificate does not chain to the configured CA. Operator (wrong CA) or a
    /// device that is not the one configured.
    UntrustedCertificate,
    /// The device's certificate is not valid for the host name (or `server_name`). Operator.
    WrongName,
    /// The device's certificate has expired or is not yet valid. Device (its operator).
    Expired,
    /// The device refused this node's client certificate. Operator (registration at the device).
    ClientRefused,
    /// Another handshake failure; the text is rustls's description, for operators.
    Other(String),
}

/// Which check a key from a device failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "check", rename_all = "snake_case")]
pub enum KeyCheck {
    /// The key is not standard padded base64.
    NotBase64,
    /// The key has another size than the one agreed.
    WrongSize {
        /// Bits the key has.
        bits: usize,
        /// Bits it must have.
        expected: u32,
    },
    /// The key's ID appears twice in one answer.
    RepeatedInAnswer,
}

/// A failure of a real device, or of the way to it, with everything an operator needs and no
/// key bytes. Each variant says who causes it; [`DeviceFault::culprit`] says it in code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeviceFault {
    /// No answer within the configured timeout. Network, or a hung device.
    #[error("{op}: no answer within the timeout")]
    Timeout {
        /// The request.
        op: DeviceOp,
    },
    /// The TCP connection was refused, reset or could not be made. A device that is down or
    /// rebooting, or the network.
    #[error("{op}: device unreachable: {detail}")]
    Unreachable {
        /// The request.
        op: DeviceOp,
        /// The operating system's words (refused, reset, no route...).
        detail: String,
    },
    /// The TLS handshake failed. Operator or device, by [`TlsFailure`].
    #[error("{op}: TLS handshake failed: {failure:?}")]
    Tls {
        /// The request.
        op: DeviceOp,
        /// Why.
        failure: TlsFailure,
    },
    /// The device names itself another KME than configured: misrouted, replaced, or
    /// misconfigured. Operator (or an attacker's device): its keys are refused.
    #[error("device names itself KME {reported:?}, expected {expected}; refusing its keys")]
    KmeMismatch {
        /// The configured KME ID.
        expected: KmeId,
        /// What the device reported (cut to a sane length).
        reported: String,
    },
    /// The device identifies this node as another SAE: the client certificate or the device's
    /// registration is wrong. Operator.
    #[error(
        "device identifies this node as SAE {reported:?}, expected {expected} (client certificate?)"
    )]
    SaeMismatch {
        /// The configured SAE ID of this node.
        expected: SaeId,
        /// What the device reported (cut to a sane length).
        reported: String,
    },
    /// The device answered with an HTTP status other than 200. Device or operator, by class.
    #[error("{op}: device answered HTTP {code} ({class:?}){}", message.as_ref().map(|m| format!(": {m}")).unwrap_or_default())]
    Status {
        /// The request.
        op: DeviceOp,
        /// The HTTP status code.
        code: u16,
        /// What the code means for the node.
        class: StatusClass,
        /// The `message` of a JSON error body, when there was one (printable, bounded).
        message: Option<String>,
    },
    /// A 200 answer that is not the JSON the spec defines. Device.
    #[error("{op}: malformed answer: {category} error at line {line} column {column}")]
    Malformed {
        /// The request.
        op: DeviceOp,
        /// The JSON parser's category (`syntax`, `data`, `eof`): never the input itself, which
        /// may hold key text.
        category: &'static str,
        /// Where in the answer.
        line: usize,
        /// Where in the answer.
        column: usize,
    },
    /// The answer's body is larger than the configured cap; reading stopped there. Device (broken
    /// or hostile).
    #[error("{op}: answer larger than {limit} bytes; refused unread")]
    BodyTooLarge {
        /// The request.
        op: DeviceOp,
        /// The cap, in bytes.
        limit: usize,
    },
    /// A key failed a check; the whole answer is refused. Device.
    #[error("{op}: refused the device's answer: key {key} {}", match check {
        KeyCheck::NotBase64 => "is not standard padded base64".to_string(),
        KeyCheck::WrongSize { bits, expected } => format!("has {bits} bits, expected {expected}"),
        KeyCheck::RepeatedInAnswer => "appears twice".to_string(),
    })]
    BadKey {
        /// The request.
        op: DeviceOp,
        /// The key's ID.
        key: BlockId,
        /// The check it failed.
        check: KeyCheck,
    },
    /// The device handed out a key ID it had already handed out. Device: its keys cannot be
    /// trusted to be fresh.
    #[error("{op}: refused the device's answer: key {key} was already issued (re-issued ID)")]
    ReissuedId {
        /// The request.
        op: DeviceOp,
        /// The key's ID.
        key: BlockId,
    },
    /// The answer holds more keys than asked, or (dec_keys) other IDs than asked. Device.
    #[error("{op}: refused the device's answer: asked for {asked} keys, got {got} (or other IDs)")]
    WrongKeys {
        /// The request.
        op: DeviceOp,
        /// Keys asked for.
        asked: usize,
        /// Keys in the answer.
        got: usize,
    },
    /// The device does not serve the configured key size. Operator (or a device whose
    /// limits changed).
    #[error(
        "device serves keys of {min} to {max} bits (default {default}), configured {configured}"
    )]
    KeySize {
        /// The configured size.
        configured: u32,
        /// The device's smallest size.
        min: u32,
        /// The device's largest size.
        max: u32,
        /// The device's default size.
        default: u32,
    },
}

impl DeviceFault {
    /// Who is to act on the fault.
    pub fn culprit(&self) -> Culprit {
        match self {
            DeviceFault::Timeout { .. } | DeviceFault::Unreachable { .. } => Culprit::Network,
            DeviceFault::Tls { failure, .. } => match failure {
                TlsFailure::Expired | TlsFailure::Other(_) => Culprit::Device,
                _ => Culprit::Operator,
            },
            DeviceFault::KmeMismatch { .. }
            | DeviceFault::SaeMismatch { .. }
            | DeviceFault::KeySize { .. } => Culprit::Operator,
            DeviceFault::Status { class, .. } => match class {
                StatusClass::Unauthorized | StatusClass::NotServed => Culprit::Operator,
                _ => Culprit::Device,
            },
            DeviceFault::Malformed { .. }
            | DeviceFault::BodyTooLarge { .. }
            | DeviceFault::BadKey { .. }
            | DeviceFault::ReissuedId { .. }
            | DeviceFault::WrongKeys { .. } => Culprit::Device,
        }
    }

    /// True when the device's keys cannot be trusted (it named another KME, or handed out a key
    /// that failed a check): the link is aborted until an operator looks, rather than down.
    pub fn breaks_integrity(&self) -> bool {
        matches!(
            self,
            DeviceFault::KmeMismatch { .. }
                | DeviceFault::BadKey { .. }
                | DeviceFault::ReissuedId { .. }
                | DeviceFault::WrongKeys { .. }
        )
    }

    /// True when the connection to the device failed before any answer: the next request may
    /// reach another device (a replacement), so its identity must be checked again.
    pub fn lost_connection(&self) -> bool {
        matches!(
            self,
            DeviceFault::Timeout { .. } | DeviceFault::Unreachable { .. } | DeviceFault::Tls { .. }
        )
    }

    /// The state of the link while this fault stands: the one place faults map to link state.
    /// Integrity faults abort the link (an operator must investigate, as for a QBER abort);
    /// every other fault marks it down, and it comes back up on its own once the device answers
    /// well again.
    pub fn link_state(&self) -> LinkState {
        let reason = self.to_string();
        if self.breaks_integrity() {
            LinkState::Aborted { reason }
        } else {
            LinkState::Down { reason }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integrity_faults_abort_and_the_rest_mark_the_link_down() {
        let key = BlockId::random();
        let aborted = DeviceFault::ReissuedId {
            op: DeviceOp::EncKeys,
            key,
        };
        assert!(matches!(aborted.link_state(), LinkState::Aborted { .. }));
        assert_eq!(aborted.culprit(), Culprit::Device);
        let down = DeviceFault::Status {
            op: DeviceOp::EncKeys,
            code: 503,
            class: StatusClass::of(503),
            message: None,
        };
        assert!(matches!(down.link_state(), LinkState::Down { .. }));
        assert_eq!(StatusClass::of(401), StatusClass::Unauthorized);
        assert_eq!(StatusClass::of(502), StatusClass::ServerError);
        assert_eq!(StatusClass::of(302), StatusClass::Unexpected);
        let tls = DeviceFault::Tls {
            op: DeviceOp::Status,
            failure: TlsFailure::ProtocolVersion,
        };
        assert_eq!(tls.culprit(), Culprit::Operator);
        assert!(tls.lost_connection() && !tls.breaks_integrity());
        // Messages name the key's ID and the check, nothing of the key.
        let bad = DeviceFault::BadKey {
            op: DeviceOp::DecKeys,
            key,
            check: KeyCheck::WrongSize {
                bits: 248,
                expected: 256,
            },
        };
        let text = bad.to_string();
        assert!(text.contains(&key.to_string()) && text.contains("248 bits, expected 256"));
    }
}
