//! Sans-IO pieces of the trusted-node relay: the network graph as a node learns it and route
//! computation. The relay protocol itself runs in [`crate::manager`].

pub mod topology;
