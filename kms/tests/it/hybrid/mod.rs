//! The hybrid layer (`qkd_kms::hybrid`): known-answer vectors and the authenticated exchange.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod exchange;
mod kat;
