//! A vendor-style QKD device pair: one simulated link served as two ETSI GS QKD 014 KMEs.
//!
//! Real QKD devices come in pairs, one at each end of a fibre; each has a built-in KME that
//! hands the key both devices share to its local SAE over ETSI 014. [`DevicePair`] is such a
//! pair: one key stream produced at the rate of a [`LinkModel`], two devices (0 and 1), each
//! served over HTTPS with mutual TLS by [`run`]. A key that an SAE at device 0 gets with
//! `enc_keys` (naming the SAE at device 1) waits in the pair until that SAE fetches it from
//! device 1 with `dec_keys`, and the other way round.
//!
//! The pair can misbehave on purpose, as devices in the field do: [`Quirk`]s are deviations from
//! the spec that a client must tolerate (reference standards.md §1.5, §1.8), [`Fault`]s are
//! answers a client must refuse (malformed or re-issued keys, oversized answers), and
//! [`Outage`]s take one device off the air. A device may speak TLS 1.2 only
//! ([`TlsVersions::Tls12Only`]), as older devices do. Get status reports the link model's QBER
//! and key rate in `status_extension` ([`QBER_MEMBER`], [`KEY_RATE_MEMBER`]), as vendors'
//! devices do in their own members. A restart is [`run`] stopped and started again on the same address; keys
//! waiting for the peer survive it unless [`DevicePair::lose_pending`] says otherwise.
//!
//! This module uses `qkd-proto`'s wire types and its own small server (hyper over
//! tokio-rustls); it never uses `qkd-kms`. It sits behind the cargo feature `emulator`, so a
//! node linking the simulator does not link an HTTPS server.
//!
//! Callers are identified as our KME identifies them: the text after `urn:qkd:sae:` in a URI
//! SAN of the client certificate, else its subject CN.

mod http;
mod state;

pub use http::{TlsVersions, run, server_tls, server_tls_versions};
pub use state::{
    DevicePair, Fault, KEY_RATE_MEMBER, OVERSIZED_ANSWER_BYTES, Outage, PairConfig, QBER_MEMBER,
    Quirk,
};

#[cfg(doc)]
use crate::model::LinkModel;
