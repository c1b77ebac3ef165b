//! QKD link and network simulation.
//!
//! Two uses, one model code base:
//! * a **key source** for trusted nodes: [`link::SimulatedLink`] implements the device interface
//!   of `qkd-hardware`, producing identical blocks at both ends of a link at the rate a
//!   [`model::LinkModel`] dictates;
//! * a **research tool**: the models are plain functions of their parameters, and the
//!   `qkd-sim` binary (feature `cli`, on by default) is a thin shell over them.
//!
//! Map of the crate, from the physics up:
//!
//! * [`physics`]: pure functions with their sources: channel and detectors, PLOB/TGW bounds,
//!   decoy BB84 (asymptotic), finite-key BB84 (Lim 2014, Rusca 2018), GG02 CV-QKD, twin-field,
//!   post-processing costs;
//! * [`satellite`]: orbit geometry, link budget, passes, day/night, the XOR relay;
//!   [`passtrack`]: passes from a measured loss table, an elevation track or a TLE, with sifted
//!   and secret key per pass and the rates over it; `tle` (feature `tle`): SGP4 orbits from TLEs;
//! * [`faults`]: cuts, outages, maintenance, intercept-resend, random cuts;
//! * [`physical`]: [`model::LinkModel`]s built from the physics (finite blocks, aborts with a
//!   reason, outages; key per satellite pass);
//! * [`spec`]: [`model::LinkModelSpec`], the configuration form of every model, checked;
//! * [`curve`]: key-rate sweeps with the bounds alongside; [`detail`]: what lies behind each
//!   point (parameters, estimator values, the bound of the protocol's family);
//! * [`scenario`] and [`network`]: scenario files and accelerated, deterministic network runs
//!   with trusted-node paths; `plot` (feature `plot`): PNG/SVG output with a bundled font;
//! * [`dynamics`]: time-resolved runs with key buffers per link, demand per pair and hop-by-hop
//!   relaying, the effect of cuts and attacks against an event-free baseline.
//!
//! Features: `cli` (default) builds the `qkd-sim` binary and turns on `output` (CSV files of
//! network runs), `plot` and `tle` (SGP4 orbits); `parquet` adds Parquet output of network runs
//! (`parquet_out`). A trusted node takes the crate with `default-features = false`:
//! physics, link models and scenarios only, without plotters, the font or csv.
//! * `emulator` (feature `emulator`): a link served as a pair of vendor-style ETSI GS QKD 014
//!   devices over HTTPS, with switchable quirks, faults and outages, for testing device adapters
//!   and KME conformance tools.
//!
//! Nothing here reads the wall clock: [`link::SimulatedLink`] takes an injected
//! [`qkd_types::Clock`], and simulations run on explicit times. All randomness is seeded (fibre
//! cuts, cloud cover), except [`link::SimulatedLink::generate_seed_hex`], which draws a fresh
//! link seed on purpose. Key bytes exist only in [`qkd_types::Secret`].
//!
//! **Architecture invariant:** this crate never depends on `qkd-kms` or `qkd-node`.

#![forbid(unsafe_code)]

pub mod curve;
pub mod detail;
pub mod dynamics;
#[cfg(feature = "emulator")]
pub mod emulator;
pub mod faults;
pub mod link;
pub mod model;
pub mod network;
#[cfg(feature = "parquet")]
pub mod parquet_out;
pub mod passtrack;
pub mod physical;
pub mod physics;
#[cfg(feature = "plot")]
pub mod plot;
pub mod satellite;
pub mod scenario;
pub mod spec;
#[cfg(feature = "tle")]
pub mod tle;

/// The examples of README.md, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
