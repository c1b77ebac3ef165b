//! The ETSI GS QKD 014 client adapter: a QKD device (its built-in KME) as a [`crate::KeySource`].
//!
//! Real QKD devices (ID Quantique, Toshiba and others) hand out their key over ETSI 014, so a
//! trusted node is an ETSI 014 *client* (an SAE) of each of its devices. This module owns that
//! client: mutual TLS (TLS 1.3, and TLS 1.2 for a device whose configuration opts in;
//! aws-lc-rs), the check of the device's KME ID before any key request, tolerance of the ways
//! devices in the field deviate from the spec (reference standards.md §1.2, §1.5, §1.8), strict
//! checks of every key it passes on, a cap on the size of every answer, timeouts, retries with
//! back-off, typed faults ([`crate::DeviceFault`]) and a link state that follows the device, and
//! the link's QBER and key rate (reported by the device, or measured).
//!
//! * [`config`]: [`DeviceConfig`], embeddable in the node's TOML, and its offline check;
//! * `client`: the HTTP requests, GET and POST forms, fault classification, the body cap;
//! * `source`: [`Etsi014Source`], the [`crate::KeySource`] implementation.
//!
//! It must never log or put into an error a key or its base64 text; wire shapes come from
//! `qkd-proto`.

mod client;
pub mod config;
mod source;

pub use config::{
    ConfigError, DeviceConfig, DeviceCredentials, DeviceLimits, PemSource, StatusMetrics,
};
pub use source::{CheckError, DeviceTls, Etsi014Source, OnlineReport};
