//! The sans-IO core of the key manager: decisions without I/O.
//!
//! [`pool::LinkPool`] decides which link bytes back which key and checks what a peer claims;
//! [`fit::misfit`] decides whether a stored key may still be served under the configuration now;
//! [`fetch::decide`] decides a slave's fetch from the keys' metadata.
//! [`stream`] decides ETSI 004 key streams (who may use one, what GET_KEY answers, what to reserve).
//! Callers pass in everything (including time) and persist what it decides; it never touches a
//! file, a socket or a clock, so its tests are deterministic.

pub mod fetch;
pub mod fit;
pub mod pool;
pub mod stream;
