//! Every wire shape of the stack lives here, and nothing else does.
//!
//! * [`etsi014`]: the JSON bodies of ETSI GS QKD 014 (status, key request, key container, key
//!   IDs, error). ETSI spellings such as `key_ID` appear only as serde renames.
//! * [`skip`]: the JSON bodies of SKIP (IETF draft-cisco-skip), the routers' key-fetch protocol.
//!   SKIP spellings such as `localSystemID` appear only as serde renames.
//! * [`peer`]: the node-to-node gRPC protocol (`proto/peer.proto`), compiled with `protox`, so no
//!   system `protoc` is needed.
//!
//! This crate holds no logic beyond encoding: validation and policy live in `qkd-kms`.

#![forbid(unsafe_code)]

pub mod etsi014;
pub mod hybrid;
pub mod peer;
pub mod skip;
