//! The multi-node harnesses of the tests and benchmarks, in one internal crate (never published,
//! never linked by the node).
//!
//! * [`net`] - a network of real `qkd-node` processes on 127.0.0.x laid out by
//!   `qkd-node demo --setup-only`: the node integration tests' `Net` and `qkd-bench`'s networks.
//! * [`link`] - a running `qkd-link` (the reference encryptor) and its JSON report lines.
//! * [`etsi_fixture`] - real key managers and ETSI 014 servers in one process, either one KME
//!   over the in-memory [`fake::FakeKeys`] or two trusted nodes joined by a simulated link: the
//!   deployments of the key manager's conformance, gRPC and SKIP suites.
//!
//! The test CA of the device tests lives in its own crate (`qkd-testnet-pki`, rcgen only) so
//! that the simulator's tests can use it without the key manager.
//!
//! Everything here panics or returns `anyhow` errors: it is test and benchmark support, and a
//! broken set-up is a failed run.

#![forbid(unsafe_code)]
// Test support: a set-up step that fails is reported at once as a failed test.
#![allow(clippy::unwrap_used)]

pub mod etsi_fixture;
pub mod fake;
pub mod link;
pub mod net;

pub use link::LinkProc;
pub use net::{
    Layout, LinkCounters, Listen, Net, POOL, bin_beside, keys, node_bin, node_bin_beside,
    scratch_dir, sibling_bin, tail,
};
