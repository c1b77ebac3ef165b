//! `qkd-conform`: checks any ETSI GS QKD 014 KME (a key manager or a QKD device's built-in KME)
//! against every rule of the spec, and against the policies this project chose where the spec
//! is silent, reported apart.
//!
//! It needs a master SAE and a slave SAE (certificates and the URLs of their KMEs) and optionally
//! a third SAE at the slave's KME, all in a small TOML file ([`config`]). It announces how many
//! keys it will consume before requesting any, never consumes more than its budget, and has a
//! read-only mode for production devices ([`suite::run`]). Results come as a table or JSON
//! ([`report`]) with an exit status for CI.
//!
//! It depends only on `qkd-proto` and `qkd-types`: it must work against any KME, so it never
//! uses the key manager's internals.

#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod report;
pub mod suite;

pub use config::Config;
pub use report::{Basis, CaseResult, Outcome, Report};
pub use suite::{Plan, RunError, run};
