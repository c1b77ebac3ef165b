//! The ETSI GS QKD 014 front end: SAEs fetch keys here over HTTPS with mutual TLS.
//!
//! * [`request`]: the sans-IO layer. It checks a request in the order product policy fixes and
//!   turns it into a [`Call`] on the [`KeyService`](crate::api::KeyService), or an error.
//! * [`reply`]: the answers, the ETSI message constants, and the single mapping from errors to
//!   HTTP status and ETSI `Error` body.
//! * [`server`]: the HTTPS shell (hyper 1 over tokio-rustls) with graceful shutdown.
//!
//! The caller's SAE ID comes only from its client certificate ([`crate::tls::SaeIdentityRule`]),
//! never from the URL. This module never logs, stores or returns key bytes other than in the 200
//! body to the authenticated SAE the key manager delivered them to.

pub mod reply;
pub mod request;
pub mod server;

pub use reply::{EtsiError, Reply, error_reply, outcome_of};
pub use request::{Body, Call, RawRequest, handle, handle_classified, route};
pub use server::{ServerLimits, serve, serve_observed, serve_with};
