//! `qkd-link` end to end: real `qkd-link` processes keyed by real `qkd-node` processes across a
//! trusted relay node.

#![allow(clippy::unwrap_used)]

mod harness;
mod link;
