//! Smoke runs of every benchmark, tiny, so that none of them can rot.

#![allow(clippy::unwrap_used)]

mod smoke;
