//! The node tests' view of the multi-node harness (`qkd_testnet::net`): real `qkd-node`
//! processes from a demo layout in a temporary directory, spoken to over ETSI 014 with client
//! certificates. [`Net`] fixes the binary to the one cargo built for these tests; every method
//! of `qkd_testnet::Net` is reached through it.

use std::collections::{BTreeMap, HashSet};
use std::ops::Deref;

use qkd_kms::core::pool::{BlockMeta, BlockState};
use qkd_types::{BlockId, Clock};

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
/// What a stopped node's store holds of its only link.
#[derive(Debug)]
pub struct LinkBook {
    /// The sequence number the next block of the link gets.
    pub next_seq: u64,
    /// The blocks still stored, by sequence number (drained blocks are erased).
    pub blocks: BTreeMap<u64, BlockMeta>,
    /// The device key ID of every block the link ever took in, oldest first: the store keeps
    /// the last 65 536, far more than a test takes.
    pub device_ids: Vec<BlockId>,
}

impl Net {
    /// Reads a stopped node's store: the link accounting of its only link.
    pub fn link_book(&self, node: &str) -> LinkBook {
        assert!(
            !self
                .procs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(node),
            "stop node {node} before reading its store"
        );
        let config: toml::Table = std::fs::read_to_string(self.path().join(node).join("node.toml"))
            .unwrap()
            .parse()
            .unwrap();
        let days = config["node"]
            .get("kek_period_days")
            .and_then(|d| d.as_integer())
            .unwrap_or(1) as u64;
        let data = self.path().join(node).join("data");
        let kek = qkd_kms::store::vault::FileKek::open(
            &data.join("keys"),
            qkd_types::SystemClock.now(),
            days * 86_400_000,
        )
        .unwrap();
        let (_store, mut recovered) =
            qkd_kms::store::Store::open(&data.join("store.redb"), &kek).unwrap();
        assert_eq!(recovered.links.len(), 1, "node {node}: one link");
        let (link, (next_seq, blocks)) = recovered.links.drain().next().unwrap();
        LinkBook {
            next_seq,
            blocks: blocks.into_iter().collect(),
            device_ids: recovered.device_ids.remove(&link).unwrap_or_default(),
        }
    }
}

/// Checks that the two ends of a link agree on it, from their stores (`master` is the
/// allocator's): no device key ID taken in twice at either end; the slave took in the master's
/// blocks in the master's order, and some of them not at all (blocks the master dropped because
/// the slave's device could not deliver them, and blocks it still offers); a block both still
/// hold has the same ID and length at both ends; and no block either still holds is one of
/// those dropped. Returns the dropped blocks' IDs.
pub fn ends_agree(master: &LinkBook, slave: &LinkBook) -> HashSet<BlockId> {
    for (end, book) in [("master", master), ("slave", slave)] {
        let distinct: HashSet<_> = book.device_ids.iter().collect();
        assert_eq!(
            distinct.len(),
            book.device_ids.len(),
            "{end}: a device key ID taken in twice"
        );
    }
    let mut rest = master.device_ids.iter();
    for id in &slave.device_ids {
        assert!(
            rest.any(|m| m == id),
            "the slave took in {id}, which the master never offered (or not in this order)"
        );
    }
    // Blocks the master still offers (pending: never allocated) may not be at the slave yet.
    let offered: HashSet<BlockId> = master
        .blocks
        .values()
        .filter(|b| b.state == BlockState::Pending)
        .map(|b| b.id)
        .collect();
    let held: HashSet<_> = slave.device_ids.iter().copied().collect();
    let dropped: HashSet<BlockId> = master
        .device_ids
        .iter()
        .copied()
        .filter(|id| !held.contains(id) && !offered.contains(id))
        .collect();
    for (seq, m) in &master.blocks {
        if let Some(s) = slave.blocks.get(seq) {
            assert_eq!((m.id, m.len), (s.id, s.len), "block {seq} differs");
        }
    }
    for (end, book) in [("master", master), ("slave", slave)] {
        for (seq, b) in &book.blocks {
            assert!(
                !dropped.contains(&b.id),
                "{end} still holds dropped block {seq} ({})",
                b.id
            );
        }
    }
    assert!(master.next_seq >= slave.next_seq);
    dropped
}
