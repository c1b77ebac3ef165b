//! TLS configuration (work in progress).
