//! The node tests' view of the multi-node harness (`qkd_testnet::net`): real `qkd-node`
//! processes from a demo layout in a temporary directory, spoken to over ETSI 014 with client
//! certificates. [`Net`] fixes the binary to the one cargo built for these tests; every method
//! of `qkd_testnet::Net` is reached through it.

use std::ops::Deref;

pub use qkd_testnet::{POOL, keys};

pub const BIN: &str = env!("CARGO_BIN_EXE_qkd-node");

/// A demo network laid out (PKI, configs, seeds) by `qkd-node demo --setup-only`; its nodes are
/// killed on drop.
pub struct Net(qkd_testnet::Net);

impl Net {
    /// Two nodes `A` and `B` joined by one link of `rate_bps`.
    pub fn setup(rate_bps: u64) -> Net {
        Self::setup_topology("pair", rate_bps)
    }

    /// Lays out a demo network of the given topology (`pair`, `chain5`, `mesh`, `demo`).
    pub fn setup_topology(topology: &str, rate_bps: u64) -> Net {
        Net(qkd_testnet::Net::setup(BIN.as_ref(), topology, rate_bps))
    }

    /// The node of a demo SAE (`ENC-A1` is at `A`).
    #[allow(dead_code)] // the harness's API: no test names a node by its SAE today
    pub fn node_of(sae: &str) -> &'static str {
        qkd_testnet::Net::node_of(sae)
    }
}

impl Deref for Net {
    type Target = qkd_testnet::Net;

    fn deref(&self) -> &qkd_testnet::Net {
        &self.0
    }
}
