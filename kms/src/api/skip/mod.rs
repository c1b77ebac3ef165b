//! The SKIP front end (IETF draft-cisco-skip): routers and other encryptors fetch keys from this
//! node acting as their Key Provider, over HTTPS with mutual TLS (docs/skip.md).
//!
//! * [`KeyProvider`]: this node's Key Provider: its `localSystemID`, the routes that map a calling
//!   encryptor and a `remoteSystemID` to an SAE pair, and the entropy source.
//! * [`request`]: the sans-IO layer. It checks a request in the order docs/skip.md fixes and turns
//!   it into a [`Call`] on the [`KeyService`](crate::api::KeyService) (a new key is `enc_keys` at
//!   the initiator's node, a key by ID is `dec_keys` at the responder's), or an error.
//! * [`reply`]: the SKIP errors, their message constants, and the single mapping from errors to
//!   HTTP status codes.
//! * [`server`]: the HTTPS shell, on the shared shell of [`crate::api::https`]: one request per
//!   connection, `Connection: close` after every answer.
//!
//! The caller is identified only by its client certificate, exactly like an ETSI 014 SAE (it is
//! one); nothing in a request (not the `Host` header, not a query parameter) names the caller.
//! This module never logs, stores or returns key bytes other than in the 200 body to the
//! encryptor the key manager delivered them to.

pub mod reply;
pub mod request;
pub mod server;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use qkd_proto::skip::SystemId;
use qkd_types::{SaeId, Secret};
pub use reply::{SkipError, error_reply};
pub use request::{Call, RawRequest, handle, handle_classified, route};
pub use server::{serve, serve_observed};

/// Key size when `GET /key` names none, in bits (the draft's default).
pub const DEFAULT_KEY_BITS: u32 = 256;
/// Entropy when `GET /entropy` names no `minentropy`, in bits (the draft's default).
pub const DEFAULT_ENTROPY_BITS: u32 = 256;
/// Most entropy one request may ask for, in bits. `minentropy` is a multiple of 8 from 8 to this.
pub const MAX_ENTROPY_BITS: u32 = 4096;
/// Longest `algorithm` text every client can hold (the draft: at least 16 bytes).
pub const MAX_ALGORITHM_LEN: usize = 16;

/// One configured route: `encryptor`, calling with `remoteSystemID = remote`, shares keys with the
/// SAE `peer` (attached to the Key Provider `remote`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The calling encryptor, as its client certificate names it.
    pub encryptor: SaeId,
    /// The peer Key Provider's `localSystemID`.
    pub remote: SystemId,
    /// The SAE at that Key Provider whose keys this encryptor shares.
    pub peer: SaeId,
}

/// Why a Key Provider cannot be built from its configuration. Caused by the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Two routes for one encryptor name the same remote Key Provider.
    #[error("route {index}: {encryptor} already has a route to {remote}")]
    DuplicateRoute {
        /// Index of the second route.
        index: usize,
        /// The encryptor.
        encryptor: SaeId,
        /// The remote Key Provider.
        remote: SystemId,
    },
    /// A route's peer is its own encryptor.
    #[error("route {index}: {encryptor} cannot share keys with itself")]
    SelfRoute {
        /// Index of the route.
        index: usize,
        /// The encryptor.
        encryptor: SaeId,
    },
    /// The algorithm text does not fit every client.
    #[error("algorithm is {0} bytes long; at most {MAX_ALGORITHM_LEN} fit every client")]
    AlgorithmTooLong(usize),
    /// No routes: no encryptor could use this Key Provider.
    #[error("no routes: at least one encryptor must be mapped to a remote Key Provider")]
    NoRoutes,
}

/// The OS's CSPRNG could not deliver. Caused by the host (no entropy source available).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the system random number generator failed")]
pub struct EntropyUnavailable;

/// Where `GET /entropy` takes its bytes from.
pub trait EntropySource: Send + Sync + 'static {
    /// `bytes` random bytes, or [`EntropyUnavailable`].
    fn take(&self, bytes: usize) -> Result<Secret, EntropyUnavailable>;
}

/// The operating system's CSPRNG (`getrandom`, through ring's `SystemRandom`).
#[derive(Debug, Default, Clone, Copy)]
pub struct OsEntropy;

impl EntropySource for OsEntropy {
    fn take(&self, bytes: usize) -> Result<Secret, EntropyUnavailable> {
        use ring::rand::SecureRandom;
        let mut out = Secret::zeroed(bytes);
        ring::rand::SystemRandom::new()
            .fill(out.expose_mut())
            .map_err(|_| EntropyUnavailable)?;
        Ok(out)
    }
}

/// This node as a SKIP Key Provider.
#[derive(Clone)]
pub struct KeyProvider {
    /// `localSystemID`.
    local: SystemId,
    /// `algorithm` in capabilities, when the operator fixed it; else it names the policy of the
    /// caller's pairs.
    algorithm: Option<String>,
    /// (encryptor, remote Key Provider) → peer SAE.
    routes: BTreeMap<(SaeId, SystemId), SaeId>,
    /// Where `/entropy` takes its bytes; `None`: `/entropy` is not offered (404).
    entropy: Option<Arc<dyn EntropySource>>,
}

impl std::fmt::Debug for KeyProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyProvider")
            .field("local", &self.local)
            .field("algorithm", &self.algorithm)
            .field("routes", &self.routes)
            .field("entropy", &self.entropy.is_some())
            .finish()
    }
}

impl KeyProvider {
    /// A Key Provider named `local` with these routes, offering `/entropy` from `entropy` if set.
    pub fn new(
        local: SystemId,
        algorithm: Option<String>,
        routes: impl IntoIterator<Item = Route>,
        entropy: Option<Arc<dyn EntropySource>>,
    ) -> Result<Self, ProviderError> {
        if let Some(a) = &algorithm
            && a.len() > MAX_ALGORITHM_LEN
        {
            return Err(ProviderError::AlgorithmTooLong(a.len()));
        }
        let mut map = BTreeMap::new();
        for (index, r) in routes.into_iter().enumerate() {
            if r.encryptor == r.peer {
                return Err(ProviderError::SelfRoute {
                    index,
                    encryptor: r.encryptor,
                });
            }
            let key = (r.encryptor.clone(), r.remote.clone());
            if map.insert(key, r.peer).is_some() {
                return Err(ProviderError::DuplicateRoute {
                    index,
                    encryptor: r.encryptor,
                    remote: r.remote,
                });
            }
        }
        if map.is_empty() {
            return Err(ProviderError::NoRoutes);
        }
        Ok(Self {
            local,
            algorithm,
            routes: map,
            entropy,
        })
    }

    /// This Key Provider's `localSystemID`.
    pub fn local(&self) -> &SystemId {
        &self.local
    }

    /// Whether `sae` has at least one route here (only those may call).
    pub fn serves(&self, sae: &SaeId) -> bool {
        self.routes.keys().any(|(e, _)| e == sae)
    }

    /// The remote Key Providers `sae` may name, in order.
    pub fn remotes_of(&self, sae: &SaeId) -> Vec<SystemId> {
        self.routes
            .keys()
            .filter(|(e, _)| e == sae)
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// The SAE `sae` shares keys with through `remote`, if it has that route.
    pub fn peer(&self, sae: &SaeId, remote: &SystemId) -> Option<&SaeId> {
        self.routes.get(&(sae.clone(), remote.clone()))
    }

    /// The peers of `sae`, in the order of [`KeyProvider::remotes_of`].
    fn peers_of<'a>(&'a self, sae: &'a SaeId) -> impl Iterator<Item = &'a SaeId> + 'a {
        self.routes
            .iter()
            .filter(move |((e, _), _)| e == sae)
            .map(|(_, p)| p)
    }
}
