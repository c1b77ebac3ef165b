//! The slave's fetch (`dec_keys` and its equivalents): which keys it may have, decided from their
//! metadata alone, and what fetching changes.
//!
//! The order of checks is product policy (docs/etsi014.md): all or nothing; existence for this
//! master first (a "not found" answer), then the caller's right to each key (a "not a slave"
//! answer). A key issued at this node to a master attached here, and waiting for its slave at
//! the peer node, exists for the master (its tombstone proves it within its TTL), but its caller
//! here is not its slave.

use qkd_types::{KeyId, SaeId, UnixMillis};

use super::fit::FitContext;
use crate::store::StoredKey;
use crate::store::tables::Tombstone;

/// Why a fetch is refused. Nothing is consumed when it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchRefusal {
    /// A key does not exist for this master (or expired, or no longer fits the configuration,
    /// or was already fetched by this slave).
    NotFound,
    /// A key exists but the caller is not one of its slaves.
    NotSlave,
}

/// A slave's fetch, as the decision needs it.
#[derive(Debug, Clone)]
pub struct Fetch<'a> {
    /// The master SAE named in the request.
    pub master: &'a SaeId,
    /// The calling slave SAE.
    pub slave: &'a SaeId,
    /// Whether the master is attached to this node (so its tombstones are here).
    pub master_here: bool,
    /// How long a delivered key's tombstone proves the key exists.
    pub ttl_ms: u64,
    /// Now.
    pub now: UnixMillis,
}

/// What the store holds for one requested key ID.
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// The waiting key's metadata.
    pub meta: Option<StoredKey>,
    /// Its tombstone (read only where the decision needs it).
    pub tombstone: Option<Tombstone>,
}

/// Whether `fetch` may have the keys whose records are `found` (in request order): their
/// metadata if so. Duplicated IDs are refused by the caller beforehand.
pub fn decide(
    fetch: &Fetch<'_>,
    found: Vec<Found>,
    fit: &FitContext,
) -> Result<Vec<StoredKey>, FetchRefusal> {
    let mut metas = Vec::with_capacity(found.len());
    let mut issued_here = false;
    for f in found {
        match f.meta {
            Some(m)
                if m.master == *fetch.master
                    && m.expires_at > fetch.now
                    && fit.stored_key_fits(&m)
                    && !m.slaves.iter().any(|(s, done)| s == fetch.slave && *done) =>
            {
                metas.push(m)
            }
            Some(_) => return Err(FetchRefusal::NotFound),
            None if fetch.master_here => match f.tombstone {
                Some((at, m, _)) if m == *fetch.master && at + fetch.ttl_ms > fetch.now => {
                    issued_here = true;
                }
                _ => return Err(FetchRefusal::NotFound),
            },
            None => return Err(FetchRefusal::NotFound),
        }
    }
    if issued_here
        || metas
            .iter()
            .any(|m| !m.slaves.iter().any(|(s, _)| s == fetch.slave))
    {
        return Err(FetchRefusal::NotSlave);
    }
    Ok(metas)
}

/// A waiting key after `slave` fetched it: its new metadata, and whether every slave now has it
/// (the key is then erased, leaving a tombstone).
pub fn fetched(mut meta: StoredKey, slave: &SaeId) -> (StoredKey, bool) {
    for s in meta.slaves.iter_mut() {
        if s.0 == *slave {
            s.1 = true;
        }
    }
    let done = meta.slaves.iter().all(|(_, d)| *d);
    (meta, done)
}

/// Whether a request names a key ID twice.
pub fn has_duplicates(ids: &[KeyId]) -> bool {
    ids.iter().enumerate().any(|(i, id)| ids[..i].contains(id))
}
