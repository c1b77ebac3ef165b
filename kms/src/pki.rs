//! Demo PKI (work in progress).
