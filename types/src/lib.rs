//! Shared vocabulary of the stack: domain identifiers ([`SaeId`], [`KmeId`], [`NodeId`], [`LinkId`],
//! [`KeyId`], [`BlockId`]), the single type that holds key bytes ([`Secret`]) and time ([`Clock`]).
//!
//! This crate sits at the bottom of the dependency graph. It must never depend on another crate of
//! the workspace, and it must never give key bytes a way out other than [`Secret::expose`].

#![forbid(unsafe_code)]

mod clock;
mod ids;
mod secret;

pub use clock::{Clock, ManualClock, SystemClock, UnixMillis};
pub use ids::{
    BlockId, IdError, KeyId, KeyStreamId, KmeId, LinkId, MAX_ID_LEN, NodeId, OperatorId, SaeId,
};
pub use secret::Secret;
