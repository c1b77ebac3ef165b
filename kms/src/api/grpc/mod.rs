//! The gRPC key delivery front end (`qkd.keys.v1.KeyDelivery`, `proto/keys.proto`): the data
//! model and the authorisation of ETSI GS QKD 014 over typed, unary gRPC calls, and key streams
//! in the style of ETSI GS QKD 004 (open or join, the key at an index, a server-streaming cadence
//! with back-pressure, close; docs/grpc.md §7) on the same identity, permissions and mapping.
//!
//! * [`request`]: the sans-IO layer. It turns each protobuf request into a checked call on the
//!   [`KeyService`](crate::api::KeyService) through the shared checks of [`crate::api::check`], in
//!   the same order as the ETSI 014 front end, or into a [`GrpcError`].
//! * [`status`]: the errors and the single mapping from errors to gRPC status ([`status_of`]).
//! * [`server`]: the shell: mutual TLS on the ETSI port's rustls configuration with ALPN `h2`,
//!   connection caps per SAE, the SAE identity from the client certificate, and the standard
//!   health and reflection services on the same listener.
//!
//! The caller's SAE ID comes only from its client certificate, never from a request field. Key
//! bytes leave this module only in `GetKeysResponse` and `GetStreamKeyResponse` (both through
//! `Key::from_secret`) to the SAE the key manager delivered them to; no status message, log line or metric carries them.

pub mod request;
pub mod server;
pub mod status;

pub use server::{GrpcLimits, GrpcSetupError, KeyDeliveryService, serve};
pub use status::{GrpcError, RETRY_DELAY, status_of};
