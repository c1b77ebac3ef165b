//! Integration tests of `qkd-simulator`: published check values, physical bounds, link models
//! through the public API, scenarios and the `qkd-sim` binary.

mod benches;
mod checks;
mod cli;
mod dynamics;
mod emulated_device;
mod euroqci;
mod models;
mod node_feed;
mod passes;
mod plob;
mod rate_detail;
mod satellite;
mod scenarios;
mod timeline;
