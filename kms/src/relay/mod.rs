//! Sans-IO pieces of the trusted-node relay: the network graph as a node learns it and route
//! computation ([`topology`]), and the pairs' pools of finished keys with their refill decisions
//! ([`pools`]). The rest of the relay protocol still runs in [`crate::manager`].

pub mod pools;
pub mod topology;
