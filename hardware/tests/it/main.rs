//! The ETSI 014 adapter against a tiny hostile device: a TLS server on 127.0.0.1 (port 0) that
//! answers Get status properly and then misbehaves in one chosen way. Each failure must come
//! back as its typed fault. (The well-behaved and quirky devices are the simulator's emulator,
//! tested in `qkd-simulator`'s `emulated_device` tests.)

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] functions

mod hostile;
