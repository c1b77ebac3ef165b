//! Integration tests of `qkd-conform`: the suite against the emulated device pair of
//! `qkd-simulator` over real TLS, plain and with each vendor quirk, and the binary's output and
//! exit status. (The run against our own KMS, with real `qkd-node` processes, lives in the node's
//! tests, where the daemon's binary is built.)

mod emulator;
