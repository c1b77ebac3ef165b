//! QKD link and network simulation.
//!
//! Two uses, one model code base:
//! * a **key source** for trusted nodes: [`link::SimulatedLink`] implements the device interface
//!   of `qkd-hardware`, producing identical blocks at both ends of a link at the rate a
//!   [`model::LinkModel`] dictates;
//! * a **research tool**: the models are plain functions of their parameters.
//!
//! Architecture invariant: this crate never depends on `qkd-kms` or `qkd-node`.

#![forbid(unsafe_code)]

pub mod curve;
pub mod faults;
pub mod link;
pub mod model;
pub mod network;
pub mod physical;
pub mod physics;
pub mod plot;
pub mod satellite;
pub mod scenario;
pub mod spec;

/// The examples of README.md, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
