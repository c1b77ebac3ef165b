//! Link physics as pure functions of their parameters, each documented with its source
//! (simulator/docs/models.md collects the formulas, parameter sets and check values).
//!
//! Nothing here keeps state, touches time or does I/O: the link models in
//! [`crate::physical`] and the CLI are built on top.

pub mod bbm92;
pub mod bounds;
pub mod channel;
pub mod cv;
pub mod cv_finite;
pub mod decoy;
pub mod detector;
pub mod finite;
pub mod mdi;
pub mod optimise;
pub mod postproc;
pub mod sns;
pub mod twinfield;
