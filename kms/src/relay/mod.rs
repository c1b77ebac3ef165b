//! The trusted-node relay protocol as sans-IO state machines (docs/design.md §2). Each takes
//! domain inputs and `now` and returns what to do: messages to send, store operations to
//! commit, answers to give. No tokio, sockets or protobuf types: the wire conversion lives in
//! `peer::wire`, and the shell that runs these machines over the network, the store's
//! writer and timers is [`crate::manager`]'s relay module.
//!
//! * [`topology`]: the network graph as a node learns it, and routes over it;
//! * [`adverts`]: link-state adverts, neighbours' reachability, drained links;
//! * [`pools`]: the pairs' pools of finished keys and their refill decisions;
//! * [`source`]: a batch at its source (route needs, IDs, relayed keys, end-to-end messages);
//! * [`hop`]: the one-time pad and MAC of a hop, multicast sealing;
//! * [`destination`]: a batch at its destination, between its messages, and delivery notices.

pub mod adverts;
pub mod destination;
pub mod hop;
pub mod pools;
pub mod source;
pub mod topology;
