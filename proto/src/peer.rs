//! The node-to-node gRPC protocol (`proto/peer.proto`): messages, client and server stubs.
//!
//! No message of this protocol carries key bytes, so prost's derived `Debug` is safe here.

#![allow(missing_docs, clippy::all)]

tonic::include_proto!("qkd.peer.v1");

/// Encoded file descriptor set, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("peer_descriptor");
