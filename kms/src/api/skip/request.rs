//! The sans-IO request layer of the SKIP front end.
//!
//! [`route`] takes what the HTTP shell saw (method, path, raw query, whether a body was declared)
//! and the caller's SAE ID from its certificate, consults the Key Provider's routes and the key
//! manager's synchronous policy methods, and returns a checked [`Call`] or the [`SkipError`] to
//! answer at once. [`handle`] runs the call and renders the reply.
//!
//! The order of checks is policy (docs/skip.md §4) and must not be rearranged: caller admission
//! (403) → path (404) → method (405) → no body (400) → query syntax (400) → `remoteSystemID`
//! mapped for this caller (400) → `size` / `minentropy` / keyId (400) → pairing (403) → key
//! manager (400 not found, 503, 500). Nothing here does I/O or reads a clock; the only key bytes it
//! touches are those it encodes for a 200 body.

use http::{Method, StatusCode};
use qkd_proto::skip::{self, HexKeyId, HexSecret, SystemId};
use qkd_types::SaeId;

use super::reply::{SkipError, error_reply};
use super::{DEFAULT_ENTROPY_BITS, DEFAULT_KEY_BITS, KeyProvider, MAX_ENTROPY_BITS};
use crate::api::https::Reply;
use crate::api::observe::{Operation, Outcome};
use crate::api::{DecKeysRequest, DeliveredKey, EncKeysRequest, KeyService};

/// A request as the HTTP shell received it, before any interpretation.
#[derive(Debug, Clone, Copy)]
pub struct RawRequest<'a> {
    /// HTTP method.
    pub method: &'a Method,
    /// Path, as sent.
    pub path: &'a str,
    /// Query string without the `?`; `None` if the URL had none.
    pub query: Option<&'a str>,
    /// Whether the request declared a body (a non-zero Content-Length or any Transfer-Encoding).
    pub has_body: bool,
}

/// A request that passed every check of the front end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `GET /capabilities`.
    Capabilities {
        /// The caller.
        caller: SaeId,
    },
    /// `GET /key?remoteSystemID=..&size=..`: one new key, the caller as master.
    NewKey(EncKeysRequest),
    /// `GET /key/<keyId>?remoteSystemID=..`: the key the peer's encryptor got, the caller as slave.
    KeyById(DecKeysRequest),
    /// `GET /entropy?minentropy=..`.
    Entropy {
        /// Bits asked for, a multiple of 8.
        bits: u32,
    },
}

/// Checks a request in policy order; see the module documentation.
pub fn route(
    req: &RawRequest<'_>,
    caller: Option<&SaeId>,
    provider: &KeyProvider,
    service: &dyn KeyService,
) -> Result<Call, SkipError> {
    // 1. Admission before everything, even 404/405: a client that is not one of our encryptors
    //    learns nothing about the request it sent.
    let caller = caller
        .filter(|c| service.admits(c) && provider.serves(c))
        .ok_or(SkipError::Forbidden)?;

    let path = parse_path(req.path, provider)?;
    if req.method != Method::GET {
        return Err(SkipError::MethodNotAllowed);
    }
    if req.has_body {
        return Err(SkipError::HasBody);
    }
    let query = Query::parse(req.query.unwrap_or(""), path.parameters())?;
    match path {
        Path::Capabilities => Ok(Call::Capabilities {
            caller: caller.clone(),
        }),
        Path::Entropy => {
            let bits = query.minentropy.unwrap_or(u64::from(DEFAULT_ENTROPY_BITS));
            if bits == 0 || bits > u64::from(MAX_ENTROPY_BITS) || !bits.is_multiple_of(8) {
                return Err(SkipError::BadMinEntropy {
                    max: MAX_ENTROPY_BITS,
                });
            }
            Ok(Call::Entropy { bits: bits as u32 })
        }
        Path::NewKey => {
            let peer = mapped_peer(&query, caller, provider)?;
            let limits = service.limits(caller, peer);
            let size = query.size.unwrap_or(u64::from(DEFAULT_KEY_BITS));
            if size < u64::from(limits.min_key_size)
                || size > u64::from(limits.max_key_size)
                || !size.is_multiple_of(8)
            {
                return Err(SkipError::BadSize {
                    min: limits.min_key_size,
                    max: limits.max_key_size,
                });
            }
            if !service.may_pair(caller, peer) {
                return Err(SkipError::PairNotAllowed(caller.to_string()));
            }
            Ok(Call::NewKey(EncKeysRequest {
                master: caller.clone(),
                slave: peer.clone(),
                additional_slaves: Vec::new(),
                number: 1,
                size_bits: size as u32,
            }))
        }
        Path::KeyById(text) => {
            let peer = mapped_peer(&query, caller, provider)?;
            let id = HexKeyId::parse(text).map_err(|e| SkipError::BadKeyId(e.to_string()))?;
            Ok(Call::KeyById(DecKeysRequest {
                slave: caller.clone(),
                master: peer.clone(),
                key_ids: vec![id.0],
            }))
        }
    }
}

/// Checks a request, runs it and renders the answer.
pub async fn handle(
    req: &RawRequest<'_>,
    caller: Option<&SaeId>,
    provider: &KeyProvider,
    service: &dyn KeyService,
) -> Reply {
    handle_classified(req, caller, provider, service).await.0
}

/// [`handle`], also saying what was asked and how it ended (for the instrumentation hook).
pub async fn handle_classified(
    req: &RawRequest<'_>,
    caller: Option<&SaeId>,
    provider: &KeyProvider,
    service: &dyn KeyService,
) -> (Reply, Operation, Outcome) {
    let operation = match parse_path(req.path, provider) {
        Ok(Path::Capabilities) => Operation::Status,
        Ok(Path::NewKey) => Operation::EncKeys,
        Ok(Path::KeyById(_)) => Operation::DecKeys,
        Ok(Path::Entropy) => Operation::Entropy,
        Err(_) => Operation::Other,
    };
    let result = match route(req, caller, provider, service) {
        Ok(call) => execute(call, provider, service).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(reply) => (reply, operation, Outcome::Ok),
        Err(e) => (error_reply(&e), operation, e.outcome()),
    }
}

/// Runs a checked call.
pub async fn execute(
    call: Call,
    provider: &KeyProvider,
    service: &dyn KeyService,
) -> Result<Reply, SkipError> {
    match call {
        Call::Capabilities { caller } => Ok(Reply::json(
            StatusCode::OK,
            &capabilities(&caller, provider, service),
        )),
        Call::NewKey(req) => one_key(service.enc_keys(req).await?),
        Call::KeyById(req) => one_key(service.dec_keys(req).await?),
        Call::Entropy { bits } => {
            let source = provider.entropy.as_ref().ok_or(SkipError::NotFound)?;
            let bytes = source
                .take(bits as usize / 8)
                .map_err(|_| SkipError::EntropyUnavailable)?;
            Ok(Reply::json(
                StatusCode::OK,
                &skip::Entropy {
                    random_str: HexSecret::from_secret(&bytes),
                    minentropy: bits,
                },
            ))
        }
    }
}

/// What a caller learns: this Key Provider's ID and the remote Key Providers *it* may name (not
/// every route: the list would leak the topology to every encryptor, draft §8).
fn capabilities(
    caller: &SaeId,
    provider: &KeyProvider,
    service: &dyn KeyService,
) -> skip::Capabilities {
    let algorithm = provider.algorithm.clone().unwrap_or_else(|| {
        let mut policies = provider
            .peers_of(caller)
            .map(|p| service.profile(caller, p).policy);
        let first = policies.next().unwrap_or("QKD");
        if policies.all(|p| p == first) {
            first.to_owned()
        } else {
            // The routes differ; the policy of each pair is in the node's configuration.
            "per-peer".to_owned()
        }
    });
    skip::Capabilities {
        entropy: provider.entropy.is_some(),
        key: true,
        algorithm,
        local_system_id: provider.local.clone(),
        remote_system_ids: provider.remotes_of(caller),
    }
}

/// The single key of a SKIP answer. The key manager returns exactly one for `number = 1` and one
/// key ID; anything else is a bug, answered as an internal error without delivering anything.
fn one_key(mut keys: Vec<DeliveredKey>) -> Result<Reply, SkipError> {
    let key = match (keys.pop(), keys.is_empty()) {
        (Some(key), true) => key,
        _ => return Err(crate::api::ServiceError::Storage.into()),
    };
    Ok(Reply::json(
        StatusCode::OK,
        &skip::Key {
            key_id: HexKeyId(key.id),
            key: HexSecret::from_secret(&key.key),
        },
    ))
}

/// The four SKIP methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path<'a> {
    Capabilities,
    NewKey,
    KeyById(&'a str),
    Entropy,
}

/// The query parameters a method takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parameters {
    None,
    Key,
    KeyById,
    Entropy,
}

impl Path<'_> {
    fn parameters(self) -> Parameters {
        match self {
            Path::Capabilities => Parameters::None,
            Path::NewKey => Parameters::Key,
            Path::KeyById(_) => Parameters::KeyById,
            Path::Entropy => Parameters::Entropy,
        }
    }
}

fn parse_path<'a>(path: &'a str, provider: &KeyProvider) -> Result<Path<'a>, SkipError> {
    match path {
        "/capabilities" => Ok(Path::Capabilities),
        "/key" => Ok(Path::NewKey),
        // Not offered: as if the path did not exist (capabilities say `"entropy": false`).
        "/entropy" if provider.entropy.is_some() => Ok(Path::Entropy),
        _ => match path.strip_prefix("/key/") {
            Some(id) if !id.contains('/') => Ok(Path::KeyById(id)),
            _ => Err(SkipError::NotFound),
        },
    }
}

/// The parsed query: each known parameter at most once.
#[derive(Debug, Default)]
struct Query {
    remote: Option<String>,
    size: Option<u64>,
    minentropy: Option<u64>,
}

impl Query {
    /// Parses `name=value` pairs (percent-decoded; empty pieces skipped). Names are
    /// case-sensitive; a name the method does not take, or one given twice, is refused (a
    /// parameter silently dropped would hide a request the client believes it made).
    fn parse(query: &str, takes: Parameters) -> Result<Self, SkipError> {
        let mut q = Query::default();
        for piece in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
            let value = percent_encoding::percent_decode_str(value)
                .decode_utf8()
                .map_err(|_| SkipError::BadQuery(format!("{name} is not UTF-8")))?
                .into_owned();
            let twice = || SkipError::BadQuery(format!("{name} given twice"));
            match (name, takes) {
                ("remoteSystemID", Parameters::Key | Parameters::KeyById) => {
                    if q.remote.replace(value).is_some() {
                        return Err(twice());
                    }
                }
                ("size", Parameters::Key) => {
                    if q.size.replace(decimal(name, &value)?).is_some() {
                        return Err(twice());
                    }
                }
                ("minentropy", Parameters::Entropy) => {
                    if q.minentropy.replace(decimal(name, &value)?).is_some() {
                        return Err(twice());
                    }
                }
                _ => {
                    let allowed = match takes {
                        Parameters::None => "none",
                        Parameters::Key => "remoteSystemID and size",
                        Parameters::KeyById => "remoteSystemID",
                        Parameters::Entropy => "minentropy",
                    };
                    return Err(SkipError::BadQuery(format!(
                        "unknown parameter {name:?}; this method takes {allowed}"
                    )));
                }
            }
        }
        Ok(q)
    }
}

/// A decimal integer: ASCII digits only, no sign.
fn decimal(name: &str, value: &str) -> Result<u64, SkipError> {
    let bad = || SkipError::BadQuery(format!("{name} must be a decimal integer"));
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    value.parse().map_err(|_| bad())
}

/// The SAE the caller shares keys with through the query's `remoteSystemID`.
fn mapped_peer<'a>(
    query: &Query,
    caller: &SaeId,
    provider: &'a KeyProvider,
) -> Result<&'a SaeId, SkipError> {
    let text = query.remote.as_deref().ok_or(SkipError::MissingRemote)?;
    SystemId::parse(text)
        .ok()
        .and_then(|remote| provider.peer(caller, &remote))
        .ok_or_else(|| SkipError::UnknownRemote(text.to_owned()))
}
