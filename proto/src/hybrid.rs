//! The end-to-end hybrid key exchange messages (`proto/hybrid.proto`), relayed verbatim between
//! the source and destination KMEs. Logic and checks live in `qkd_kms::hybrid`.
//!
//! No message of this protocol carries key bytes (public keys, ciphertexts, signatures, MACs
//! and IDs only), so prost's derived `Debug` is safe here.

#![allow(missing_docs, clippy::all)]

tonic::include_proto!("qkd.hybrid.v1");
