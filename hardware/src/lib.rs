//! The device interface: what a trusted node needs from a QKD link end, whatever produces the key.
//!
//! A key source is one end of a QKD link. Both ends of a link see identical key blocks, each with
//! a [`BlockId`], in the same order. The interface is shaped after real QKD devices, which are
//! themselves ETSI GS QKD 014 KMEs:
//!
//! * the **master** end ([`LinkRole::Master`]) pulls new blocks ([`KeySource::next_blocks`], which
//!   for a device is its `enc_keys`);
//! * the **slave** end ([`LinkRole::Slave`]) can only fetch blocks by ID
//!   ([`KeySource::blocks_by_id`], a device's `dec_keys`), once the master's node has told it
//!   those IDs over the node-to-node channel.
//!
//! The simulator (`qkd-simulator`) and the hardware adapters implement this trait; the key manager
//! and the node daemon see nothing else, so a simulated link and a real device are interchangeable
//! without touching them.
//!
//! Adapters (feature `etsi014`): `etsi014` takes key from a real QKD device over ETSI GS QKD 014.
//! Their failures are typed [`DeviceFault`]s ([`fault`]), each naming who causes it and mapped to
//! a [`LinkState`] in one place.
//!
//! This crate must never depend on the key manager or the node, and never log key bytes.

#![forbid(unsafe_code)]

#[cfg(feature = "etsi014")]
pub mod etsi014;
pub mod fault;

pub use fault::{Culprit, DeviceFault, DeviceOp, KeyCheck, StatusClass, TlsFailure};

use std::fmt;

use async_trait::async_trait;
use qkd_types::{BlockId, Secret};
use serde::Serialize;

/// Which end of a link a source is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkRole {
    /// Pulls new blocks from the device and announces their IDs to the peer node.
    Master,
    /// Fetches by ID the blocks its peer announced.
    Slave,
}

impl LinkRole {
    /// The role of the other end.
    pub fn opposite(self) -> Self {
        match self {
            LinkRole::Master => LinkRole::Slave,
            LinkRole::Slave => LinkRole::Master,
        }
    }
}

/// One block of link key, identical at both ends.
#[derive(Debug)]
pub struct KeyBlock {
    /// Identifier of the block, the same at both ends.
    pub id: BlockId,
    /// The key bytes.
    pub key: Secret,
}

/// Whether a link produces key.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LinkState {
    /// Producing key (possibly slowly: a block may still be filling).
    Up,
    /// Not producing key: fibre cut, device outage, maintenance, no satellite pass...
    Down {
        /// Why, in words for an operator.
        reason: String,
    },
    /// Key generation stopped by the protocol itself, e.g. QBER above its threshold (possible
    /// eavesdropping). Distinct from `Down` because an operator must investigate it.
    Aborted {
        /// Why, in words for an operator.
        reason: String,
    },
}

/// A snapshot of a link end, as its source reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkStatus {
    /// Up, down or aborted.
    #[serde(flatten)]
    pub state: LinkState,
    /// Quantum bit error rate (0..=1), where the source reports it; a real device may not.
    pub qber: Option<f64>,
    /// Secret key rate in bit/s, where the source reports it.
    pub secret_key_rate_bps: Option<f64>,
}

/// What a source is, for logs and status pages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceInfo {
    /// Kind of source, e.g. `"simulated"` or `"etsi014"`.
    pub kind: String,
    /// True when the keys are simulated: fit for demos and tests, never for protecting data.
    pub simulated: bool,
    /// This end's role.
    pub role: LinkRole,
}

/// Errors from a key source. Variants say who causes them.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Bug in the caller: asked a slave end for new blocks, or a master end for blocks by ID.
    #[error("operation needs the {needed:?} end of the link, but this end is {actual:?}")]
    WrongRole {
        /// Role the operation needs.
        needed: LinkRole,
        /// Role of this end.
        actual: LinkRole,
    },
    /// Device or peer: the block is unknown to this end (never produced, or already fetched).
    #[error("block {0} is not known to this link end")]
    UnknownBlock(BlockId),
    /// A real device (or the way to it) failed, in a way the adapter can name: timeout,
    /// refused connection, TLS, identity, HTTP status, a malformed answer or key. The fault
    /// says who causes it and what it means for the link ([`DeviceFault::link_state`]).
    #[error(transparent)]
    Device(#[from] DeviceFault),
    /// A simulated link is down or aborted, for the reason its model gives. (Real devices
    /// report [`DeviceError::Device`] instead.)
    #[error("link unavailable: {0}")]
    Unavailable(String),
    /// Bug: a source's own state is unusable (e.g. a poisoned lock). Never a device's answer:
    /// those are [`DeviceError::Device`].
    #[error("device transport: {0}")]
    Transport(String),
}

impl DeviceError {
    /// The state of the link while this error stands, for sources that report errors through
    /// their status. `None` for errors that say nothing about the link (a caller's bug, an
    /// unknown block).
    pub fn link_state(&self) -> Option<LinkState> {
        match self {
            DeviceError::Device(f) => Some(f.link_state()),
            DeviceError::Unavailable(reason) | DeviceError::Transport(reason) => {
                Some(LinkState::Down {
                    reason: reason.clone(),
                })
            }
            DeviceError::WrongRole { .. } | DeviceError::UnknownBlock(_) => None,
        }
    }
}

/// One end of a QKD link.
///
/// Implementations must be cheap to call repeatedly; the node polls [`KeySource::next_blocks`].
#[async_trait]
pub trait KeySource: Send + Sync + fmt::Debug {
    /// What this source is.
    fn info(&self) -> SourceInfo;

    /// Current state, QBER and rate as far as the source knows them.
    async fn status(&self) -> LinkStatus;

    /// Master end: up to `max_blocks` new blocks, oldest first, each returned exactly once. An
    /// empty vector means no block is ready yet. A slave end answers [`DeviceError::WrongRole`].
    async fn next_blocks(&self, max_blocks: usize) -> Result<Vec<KeyBlock>, DeviceError>;

    /// Slave end: the blocks with these IDs, in the order asked, each returned at most once. A
    /// master end answers [`DeviceError::WrongRole`].
    async fn blocks_by_id(&self, ids: &[BlockId]) -> Result<Vec<KeyBlock>, DeviceError>;

    /// The ETSI 014 adapter behind this source, if it is one: the node rotates the client
    /// certificate it presents to the device ([`etsi014::Etsi014Source::install_tls`]).
    #[cfg(feature = "etsi014")]
    fn as_etsi014(&self) -> Option<&etsi014::Etsi014Source> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_link_state_through_their_fault() {
        let fault = DeviceFault::BadKey {
            op: DeviceOp::EncKeys,
            key: BlockId::random(),
            check: KeyCheck::NotBase64,
        };
        let err = DeviceError::from(fault.clone());
        assert_eq!(err.link_state(), Some(fault.link_state()));
        assert!(matches!(err.link_state(), Some(LinkState::Aborted { .. })));
        assert_eq!(err.to_string(), fault.to_string());
        let down = DeviceError::Unavailable("fibre cut".into());
        assert_eq!(
            down.link_state(),
            Some(LinkState::Down {
                reason: "fibre cut".into()
            })
        );
        assert_eq!(
            DeviceError::UnknownBlock(BlockId::random()).link_state(),
            None
        );
        let bug = DeviceError::WrongRole {
            needed: LinkRole::Master,
            actual: LinkRole::Slave,
        };
        assert_eq!(bug.link_state(), None);
    }
}
