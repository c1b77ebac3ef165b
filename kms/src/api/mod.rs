//! The protocol-neutral key-delivery service and its front ends.
//!
//! Every front end ([`etsi014`], the ETSI GS QKD 014 REST API; [`skip`], the SKIP Key Provider
//! for routers; [`grpc`], the ETSI 014 model and ETSI 004 key streams over gRPC) authenticates its caller, parses and
//! checks a request in the order its protocol's policy fixes and calls the one [`KeyService`];
//! ETSI 014 and gRPC report each outcome to the one instrumentation hook ([`observe`]; SKIP does
//! not yet). The two REST front ends
//! share one HTTPS shell ([`https`]); ETSI 014 and gRPC share their request checks ([`check`]).
//! The key manager implements the service; tests may implement it with a fake. The types in
//! this module know nothing of HTTP, gRPC or any protocol's spellings; each front end maps
//! [`ServiceError`] to its own wire status in exactly one place.

pub mod check;
pub mod etsi014;
pub mod grpc;
pub mod https;
pub mod observe;
pub mod skip;

use async_trait::async_trait;
use qkd_types::{KeyId, KeyStreamId, KmeId, SaeId, Secret};

use crate::core::stream::{Qos, StreamError};

/// Size and count limits for keys from one master SAE to one slave SAE (ETSI 014 `Status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyLimits {
    /// Default key size in bits (`key_size`).
    pub key_size: u32,
    /// Smallest key size in bits (`min_key_size`).
    pub min_key_size: u32,
    /// Largest key size in bits (`max_key_size`).
    pub max_key_size: u32,
    /// Most keys in one request (`max_key_per_request`).
    pub max_key_per_request: u32,
    /// Most entries in `additional_slave_SAE_IDs`; 0 means no multicast.
    pub max_sae_id_count: u32,
}

impl Default for KeyLimits {
    /// The defaults of the product policy, and the only place they are written down (the node's
    /// configuration takes its defaults from here): 256-bit keys, 64 to 1024 bits, 128 keys per
    /// request, up to 8 additional slaves (docs/design.md).
    fn default() -> Self {
        Self {
            key_size: 256,
            min_key_size: 64,
            max_key_size: 1024,
            max_key_per_request: 128,
            max_sae_id_count: 8,
        }
    }
}

/// How the keys of one SAE pair are made, as configured: the protection policy and the hybrid
/// suite. Configuration, never negotiated; a request whose pairs differ is refused, never served
/// under one of them (docs/etsi014.md, "one profile per request").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyProfile {
    /// The policy's name (`QKD+PQ+T`, `QKD-only`...).
    pub policy: &'static str,
    /// The hybrid suite's name; empty where the policy uses none.
    pub suite: &'static str,
}

/// What the Get status method reports, besides the IDs and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairStatus {
    /// KME ID of this KME (`source_KME_ID`).
    pub source_kme: KmeId,
    /// KME ID of the KME serving the slave (`target_KME_ID`).
    pub target_kme: KmeId,
    /// Limits of the pair.
    pub limits: KeyLimits,
    /// Keys of the default size that enc_keys could take right now (`stored_key_count`).
    pub stored_key_count: u64,
    /// Capacity of the pair's pool in default-size keys (`max_key_count`).
    pub max_key_count: u64,
}

/// A checked Get key request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncKeysRequest {
    /// The calling SAE, from its certificate.
    pub master: SaeId,
    /// The slave SAE named in the path.
    pub slave: SaeId,
    /// Extra slaves (multicast); each differs from master and slave and from each other.
    pub additional_slaves: Vec<SaeId>,
    /// Number of keys, within the limits.
    pub number: u32,
    /// Key size in bits, a multiple of 8 within the limits.
    pub size_bits: u32,
}

/// A checked Get key with key IDs request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecKeysRequest {
    /// The calling SAE (a slave of the keys), from its certificate.
    pub slave: SaeId,
    /// The master SAE named in the path.
    pub master: SaeId,
    /// The keys asked for, in request order, at least one, no duplicates.
    pub key_ids: Vec<KeyId>,
}

/// A key handed to an SAE.
#[derive(Debug)]
pub struct DeliveredKey {
    /// Its ETSI key_ID.
    pub id: KeyId,
    /// Its bytes.
    pub key: Secret,
}

/// Why the key manager could not serve a checked request. Each maps to one ETSI status in the
/// ETSI front end's single mapping function.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// SAE asked for more key than the pair's pool holds right now (or its quota allows). 503.
    #[error("insufficient key material")]
    InsufficientKeyMaterial,
    /// SAE named a key that does not exist for this master, expired, or was already delivered
    /// to this caller. 400.
    #[error("one or more keys specified are not found on KME")]
    KeysNotFound,
    /// SAE asked for keys it is not a slave of. 401.
    #[error("caller is not a slave of the requested keys")]
    NotSlave,
    /// Peer node or device: the peer KME cannot be reached or refused to agree. 503. The full
    /// cause goes to the node's log; the SAE learns only its class.
    #[error("peer KME unavailable: {0}")]
    PeerUnavailable(Unavailable),
    /// SAE or operator: the pairs of one request differ in policy or suite (front ends refuse
    /// such requests before they reach the key manager; this is the key manager's own guard). 400.
    #[error("the pairs of the request differ in policy or suite")]
    MixedProfiles,
    /// Operator or bug: the store failed; the node is shutting down to recover from disk. 503.
    #[error("key data access error")]
    Storage,
}

/// Why the slave's node cannot take part in making keys now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    /// Both SAEs are attached to this node: no QKD link joins them.
    #[error("both SAEs are attached to this KME")]
    SameNode,
    /// A node on the way did not answer, or refused.
    #[error("a node on the route did not answer or refused")]
    Unreachable,
    /// The end-to-end exchange with the slave's node failed.
    #[error("the end-to-end exchange with the slave's KME failed")]
    EndToEnd,
    /// This configuration cannot serve the request (e.g. additional slaves at several nodes
    /// without a hybrid policy).
    #[error("not supported: {0}")]
    Unsupported(&'static str),
}

/// A checked OpenStream request (ETSI 004 OPEN_CONNECT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenStreamRequest {
    /// The calling SAE, from its certificate.
    pub caller: SaeId,
    /// The SAE at the other end: the slave when opening, the master when joining.
    pub peer: SaeId,
    /// The QoS asked for (zeros: defaults).
    pub qos: Qos,
    /// `None`: open a new stream (the caller is its master); `Some`: join this stream.
    pub join: Option<KeyStreamId>,
}

/// A stream opened or joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedStream {
    /// Its ID, the same at both ends.
    pub id: KeyStreamId,
    /// The QoS granted.
    pub qos: Qos,
    /// Whether the caller is its master.
    pub master: bool,
}

/// Why a key-stream call failed: a decision about the stream, or the key manager's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamFailure {
    /// See [`StreamError`].
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// See [`ServiceError`].
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// What the front ends need from the key manager.
#[async_trait]
pub trait KeyService: Send + Sync + 'static {
    /// Whether `sae` is registered as attached to this KME (only those may call it).
    fn admits(&self, sae: &SaeId) -> bool;

    /// Whether `sae` is registered anywhere in the network.
    fn knows(&self, sae: &SaeId) -> bool;

    /// Limits for keys from `master` to `slave` (the pair's, or this KME's defaults).
    fn limits(&self, master: &SaeId, slave: &SaeId) -> KeyLimits;

    /// Whether `master` may obtain keys shared with `slave`.
    fn may_pair(&self, master: &SaeId, slave: &SaeId) -> bool;

    /// The configured policy and suite of keys from `master` to `slave`.
    fn profile(&self, master: &SaeId, slave: &SaeId) -> KeyProfile;

    /// Get status for an admitted master and a known, permitted slave.
    async fn status(&self, master: &SaeId, slave: &SaeId) -> Result<PairStatus, ServiceError>;

    /// Get key. All keys or none; "consumed" is durable before this returns `Ok`.
    async fn enc_keys(&self, req: EncKeysRequest) -> Result<Vec<DeliveredKey>, ServiceError>;

    /// Get key with key IDs. All keys or none; "delivered" is durable before this returns `Ok`.
    async fn dec_keys(&self, req: DecKeysRequest) -> Result<Vec<DeliveredKey>, ServiceError>;

    /// Opens or joins an ETSI 004 key stream (pairing already checked). "Open" is durable before
    /// this returns `Ok`. A service without key streams refuses it (the default).
    async fn open_stream(&self, _req: OpenStreamRequest) -> Result<OpenedStream, StreamFailure> {
        Err(ServiceError::PeerUnavailable(Unavailable::Unsupported("key streams")).into())
    }

    /// The QoS of a stream `caller` opened here.
    async fn stream_qos(
        &self,
        _caller: &SaeId,
        _stream: KeyStreamId,
    ) -> Result<Qos, StreamFailure> {
        Err(StreamError::UnknownStream.into())
    }

    /// The key at `index` of a stream `caller` opened here, waiting up to the stream's QoS
    /// timeout for a key not reserved yet. "Delivered" is durable before this returns `Ok`.
    async fn stream_key(
        &self,
        _caller: &SaeId,
        _stream: KeyStreamId,
        _index: u64,
    ) -> Result<DeliveredKey, StreamFailure> {
        Err(StreamError::UnknownStream.into())
    }

    /// Closes `caller`'s end of a stream; its keys reserved ahead are erased.
    async fn close_stream(
        &self,
        _caller: &SaeId,
        _stream: KeyStreamId,
    ) -> Result<(), StreamFailure> {
        Err(StreamError::UnknownStream.into())
    }
}
