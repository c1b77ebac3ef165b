//! Key management: the durable key store, the node-to-node agreement on which link key backs
//! which delivered key, and the key-delivery front ends: the ETSI GS QKD 014 server and the gRPC
//! key delivery service for SAEs, and the SKIP Key Provider for routers.
//!
//! The logic is sans-IO where it decides anything (allocation of link key, key life cycle,
//! request checks); the servers and the store writer are thin shells around it. The relay itself
//! is still sequenced by the async `manager` (its sans-IO rewrite is pending); the deterministic
//! network simulation (`netsim/`) runs it as it is. This crate never reads configuration
//! files (that is the node's job) and never logs, prints or returns key bytes outside [`Secret`].
//!
//! [`Secret`]: qkd_types::Secret

#![forbid(unsafe_code)]

/// A test-only crash point (module `failpoint`, which exists only with the `failpoints`
/// feature); expands to nothing without that feature.
macro_rules! failpoint {
    ($point:literal) => {
        #[cfg(feature = "failpoints")]
        $crate::failpoint::hit($point);
    };
}

pub mod api;
pub mod conn;
pub mod core;
pub mod durable;
pub mod events;
#[cfg(feature = "failpoints")]
pub mod failpoint;
#[doc(hidden)]
pub mod fuzzing;
pub mod hybrid;
pub mod instruments;
pub mod manager;
pub mod peer;
pub mod pki;
pub mod relay;
pub mod store;
pub mod tls;
pub mod writer;
