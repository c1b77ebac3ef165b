//! What a key manager reports as it works, for whoever subscribes: the network simulation's
//! invariant checks, and in a node its metrics (link key consumed per link, keys delivered per
//! pair) and its alarm monitor. Events carry identifiers and metadata only, never key bytes.

use qkd_types::{BlockId, KeyId, LinkId, NodeId, SaeId};

use crate::store::MadeUnder;

/// Which side of a pair a delivery went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `enc_keys`: the master SAE, at the master's node.
    Master,
    /// `dec_keys`: a slave SAE, at its node.
    Slave,
}

/// One thing that happened at a node.
#[derive(Debug)]
pub enum Event<'a> {
    /// Link key was taken for one use (a hop's pad and MAC key) at this node: each run of
    /// bytes by the device's block ID, offset and length. Taken bytes are never taken again.
    LinkKeyTaken {
        /// The link.
        link: &'a LinkId,
        /// (device block ID, offset, length) of every run.
        runs: &'a [(BlockId, u32, u32)],
    },
    /// Keys were handed to an SAE (the answer is about to leave; everything is durable).
    Delivered {
        /// Master or slave side.
        side: Side,
        /// The pair's master.
        master: &'a SaeId,
        /// The slaves the keys were made for.
        slaves: &'a [SaeId],
        /// The keys, with the policy and suite each was made under (`None`: not recorded).
        keys: &'a [(KeyId, Option<MadeUnder>)],
    },
    /// A delivery notice moved the expiry of waiting keys at this (a slave's) node: they are
    /// served until `expires_at` and never after.
    ExpiryMoved {
        /// The keys.
        keys: &'a [KeyId],
        /// Their new expiry (Unix milliseconds).
        expires_at: qkd_types::UnixMillis,
    },
    /// Pool keys at this (their master's) node passed the pool TTL unused and left their pool,
    /// to be discarded: they are never handed out.
    PoolKeysExpired {
        /// The keys.
        keys: &'a [KeyId],
    },
    /// A neighbour stopped answering adverts (its link is now advertised down and routes avoid
    /// it), or answers again.
    Reachability {
        /// The neighbour.
        peer: &'a NodeId,
        /// Whether it answers now.
        reachable: bool,
    },
    /// A relayed batch this node was the destination of was voided: its confirmation never
    /// came in time. Nothing of it was stored.
    BatchVoided {
        /// The node that started it.
        source: &'a NodeId,
        /// Its keys.
        keys: usize,
    },
    /// A neighbour's well-formed message was refused.
    PeerRefused {
        /// The neighbour that sent it.
        from: &'a NodeId,
        /// Why, by name (one of a fixed set: safe as a metric label).
        cause: &'static str,
        /// Whether the refusal means a message was altered or forged on its way (a failed MAC,
        /// signature or end-to-end check): a security event.
        tampering: bool,
    },
}

/// A subscriber to a node's events. Called synchronously where the event happens: keep it cheap
/// and never block.
pub trait Observer: std::fmt::Debug + Send + Sync {
    /// One event.
    fn event(&self, event: &Event<'_>);
}

/// Test seams that put known defects back, so that the network simulation can show that it finds
/// them. Only with the `simulation` feature (never in a node) and only on the thread that sets
/// them; every switch is off unless a test turns it on.
pub mod defects {
    /// Which defects are back.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct Defects {
        /// Defect 1: a request whose pairs differ in policy or suite is made under the first
        /// pair's.
        pub mixed_profiles: bool,
        /// Defect 2: stored keys are served whatever configuration they were made under.
        pub stale_keys: bool,
        /// Defect 4 (the store's half): device key IDs already used on a link are accepted.
        pub reissued_ids: bool,
        /// A key stream's GET_KEY leaves the index undelivered and the key in place, so that
        /// the index is served again (shows that the simulation checks key streams).
        pub stream_redelivery: bool,
    }

    #[cfg(feature = "simulation")]
    thread_local! {
        static DEFECTS: std::cell::Cell<Defects> = const { std::cell::Cell::new(Defects {
            mixed_profiles: false,
            stale_keys: false,
            reissued_ids: false,
            stream_redelivery: false,
        }) };
    }

    /// The defects put back on this thread (none unless the `simulation` feature is on and a
    /// test set them).
    #[inline]
    pub fn active() -> Defects {
        #[cfg(feature = "simulation")]
        {
            DEFECTS.with(|d| d.get())
        }
        #[cfg(not(feature = "simulation"))]
        {
            Defects::default()
        }
    }

    /// Puts defects back on this thread (the simulation runs every node on one thread).
    #[cfg(feature = "simulation")]
    pub fn set(d: Defects) {
        DEFECTS.with(|c| c.set(d));
    }
}
