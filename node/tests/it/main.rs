//! Integration tests of the node daemon: real `qkd-node` processes on 127.0.0.x, real TLS, real
//! gRPC, real on-disk stores.

#![allow(clippy::unwrap_used)]

mod cert_names;
mod check;
mod conform;
mod control;
mod dashboard;
mod defects;
mod demo;
mod deps;
mod devices;
mod etsi015;
mod failpoints;
mod fuzz_corpus;
mod grpc;
mod harness;
mod network;
mod operators;
mod packaging;
mod relay;
mod rotation;
mod rotation_clients;
mod skip;
mod status;
mod streams;
