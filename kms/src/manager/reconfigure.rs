//! Changing the manager's configuration while it runs (a reload).
//!
//! What may change live is [`LiveConfig`]: the SAEs and whom they pair with, the ETSI limits, and
//! the protection of pairs. Everything else (identity, links, neighbours, relay timing,
//! end-to-end keys) is fixed while the node runs. The rules are those of a restart, without the
//! restart (docs/design.md, "Keys and configuration"):
//!
//! - A key made under one configuration is never served under another. Pooled keys (and their
//!   copies waiting at the slave's node) of a pair whose key size, policy or suite changes, or
//!   whose SAEs may no longer pair, are voided, but only if the operator asked for it
//!   (`void_pools`); otherwise the reload is refused, naming them.
//! - A reload never strands a key: keys a master already has that wait here for their slave,
//!   and open key streams, of such a pair refuse the reload; it can be tried again once they are
//!   fetched, expired or closed.
//!
//! [`assess`] decides from data alone (the two configurations, the pools, the waiting keys and
//! the streams); [`KeyManager::reconfigure`] gathers that data, applies the decision and swaps
//! the configuration so that no request sees a key of the old configuration under the new one.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use qkd_types::{KeyId, KeyStreamId, SaeId, UnixMillis};

use super::{KeyManager, KeyMode, Live, ManagerConfig, SaeEntry, relay};
use crate::api::KeyLimits;
use crate::core::fit::{FitContext, KeyOrigin, Misfit};
use crate::core::stream::StreamRecord;
use crate::relay::destination::Directory;
use crate::store::{StoreError, StoredKey, ops};

/// The part of the manager's configuration a reload may change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveConfig {
    /// Every SAE of the network.
    pub saes: BTreeMap<SaeId, SaeEntry>,
    /// Key size and count limits for every pair.
    pub limits: KeyLimits,
    /// Protection of the pairs configured explicitly.
    pub pairs: BTreeMap<(SaeId, SaeId), KeyMode>,
    /// Protection of every other pair.
    pub default_mode: KeyMode,
}

impl LiveConfig {
    /// The live part of `cfg`.
    pub fn of(cfg: &ManagerConfig) -> Self {
        Self {
            saes: cfg.saes.clone(),
            limits: cfg.limits,
            pairs: cfg.relay.pairs.clone(),
            default_mode: cfg.relay.default_mode,
        }
    }

    /// `cfg` with this live part.
    fn over(self, cfg: &ManagerConfig) -> ManagerConfig {
        let mut new = cfg.clone();
        new.saes = self.saes;
        new.limits = self.limits;
        new.relay.pairs = self.pairs;
        new.relay.default_mode = self.default_mode;
        new
    }
}

/// Why a reload cannot be applied as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocker {
    /// Pooled keys (here, or copies waiting here) that the new configuration would void; the
    /// operator may ask for that.
    Pooled {
        /// The pair's master.
        master: SaeId,
        /// The slave.
        slave: SaeId,
        /// How many keys.
        keys: u64,
        /// Why they would no longer fit.
        why: String,
    },
    /// Keys their master already has, waiting here for their slave: voiding them would strand
    /// them.
    Waiting {
        /// The master (it has the keys).
        master: SaeId,
        /// The slave they wait for.
        slave: SaeId,
        /// How many keys.
        keys: u64,
        /// Why they would no longer fit.
        why: String,
        /// Seconds until the last of them expires.
        expires_in_s: u64,
    },
    /// An open key stream of a pair the new configuration changes.
    Stream {
        /// The stream.
        id: KeyStreamId,
        /// The SAE that opened it.
        master: SaeId,
        /// The SAE that joins it.
        slave: SaeId,
        /// Why its keys would no longer fit.
        why: String,
    },
}

impl fmt::Display for Blocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Blocker::Pooled {
                master,
                slave,
                keys,
                why,
            } => write!(
                f,
                "pair {master}->{slave} holds {keys} pooled keys that would no longer fit \
                 ({why}): reload with --void-pools to void them"
            ),
            Blocker::Waiting {
                master,
                slave,
                keys,
                why,
                expires_in_s,
            } => write!(
                f,
                "{keys} keys {master} already has wait here for {slave} and would no longer \
                 fit ({why}): voiding them would strand them; reload again once {slave} has \
                 fetched them or they expire (the last in {expires_in_s} s)"
            ),
            Blocker::Stream {
                id,
                master,
                slave,
                why,
            } => write!(
                f,
                "key stream {id} of {master} and {slave} is open and its keys would no longer \
                 fit ({why}): close it first"
            ),
        }
    }
}

/// Why [`KeyManager::reconfigure`] did not apply a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ReconfigureError {
    /// Caused by the new configuration: what stands in its way. Nothing was changed.
    #[error("{}", blockers_text(.0))]
    Refused(Vec<Blocker>),
    /// The store failed while the reload was checked or applied.
    #[error("the key store failed during the reload: {0}")]
    Store(#[from] StoreError),
}

fn blockers_text(b: &[Blocker]) -> String {
    let items: Vec<String> = b.iter().map(Blocker::to_string).collect();
    items.join("; ")
}

/// Keys a reload voids, and why (per pair).
#[derive(Debug, Default)]
pub struct Voids {
    /// Pairs whose pool here is voided whole.
    pub pools: BTreeMap<(SaeId, SaeId), Misfit>,
    /// Copies of pool keys waiting here for their slave, with their metadata.
    pub copies: Vec<(KeyId, StoredKey, Misfit)>,
}

/// What the reload found, as [`assess`] needs it.
#[derive(Debug)]
pub struct Holdings<'a> {
    /// Keys in this node's pools, per pair (master here).
    pub pools: &'a BTreeMap<(SaeId, SaeId), u64>,
    /// Keys waiting here for their slaves.
    pub waiting: &'a [(KeyId, StoredKey)],
    /// Key stream ends held here.
    pub streams: &'a [StreamRecord],
    /// Now.
    pub now: UnixMillis,
}

/// Why a key of `master` for `slaves` would fit under `old` but not under `new`; `None` if it
/// is unaffected (it fits both, or already misfits the old one and is voided anyway).
fn newly_misfit(
    old: (&ManagerConfig, &FitContext),
    new: (&ManagerConfig, &FitContext),
    master: &SaeId,
    slaves: &[SaeId],
    origin: KeyOrigin<'_>,
) -> Option<Misfit> {
    let fits = |(cfg, fit): (&ManagerConfig, &FitContext)| -> Option<Misfit> {
        if slaves.iter().any(|s| !cfg.pairs(master, s)) {
            return Some(Misfit::Unpaired);
        }
        fit.misfit(master, slaves, origin)
    };
    match (fits(old), fits(new)) {
        (None, Some(why)) => Some(why),
        _ => None,
    }
}

/// Why the pool keys of `master` and `slave` here, made under `old`, would not fit `new`.
/// Pool keys are made under the pair's profile and at the default size in force.
pub fn pool_misfit(
    old: (&ManagerConfig, &FitContext),
    new: (&ManagerConfig, &FitContext),
    master: &SaeId,
    slave: &SaeId,
) -> Option<Misfit> {
    let here = |cfg: &ManagerConfig| cfg.saes.get(master).map(|e| &e.node) == Some(&cfg.node);
    if !here(old.0) || !here(new.0) {
        return Some(Misfit::Unpaired);
    }
    let made = crate::relay::destination::made_under(old.0, master, slave);
    let origin = KeyOrigin {
        made_under: Some(&made),
        size_bits: old.0.limits.key_size,
        pool: true,
    };
    newly_misfit(old, new, master, std::slice::from_ref(slave), origin)
}

/// Decides a reload from `old` to `new` given what this node holds: the keys to void, or what
/// stands in the way. Pooled keys are voided only if `void_pools`.
pub fn assess(
    old: (&ManagerConfig, &FitContext),
    new: (&ManagerConfig, &FitContext),
    held: &Holdings<'_>,
    void_pools: bool,
) -> Result<Voids, Vec<Blocker>> {
    let mut voids = Voids::default();
    let mut blockers = Vec::new();
    for ((master, slave), &keys) in held.pools {
        if keys == 0 {
            continue;
        }
        if let Some(why) = pool_misfit(old, new, master, slave) {
            voids.pools.insert((master.clone(), slave.clone()), why);
        }
    }
    // Waiting keys: copies of pool keys not yet handed to their master may be voided; keys a
    // master has may not. A delivery notice moves a key's expiry to `key_ttl` after its master
    // got it, so a pool copy expiring later than that was not handed out (as far as this node
    // knows; a notice still on its way is the one case a voided copy strands a key).
    let mut waiting: BTreeMap<(SaeId, SaeId, String), (u64, UnixMillis)> = BTreeMap::new();
    let notice_horizon = held.now + old.0.key_ttl_ms;
    for (id, meta) in held.waiting {
        let slaves: Vec<SaeId> = meta.slaves.iter().map(|(s, _)| s.clone()).collect();
        let origin = KeyOrigin {
            made_under: meta.made_under.as_ref(),
            size_bits: meta.size_bits,
            pool: meta.pool,
        };
        let Some(why) = newly_misfit(old, new, &meta.master, &slaves, origin) else {
            continue;
        };
        let untouched = meta.slaves.iter().all(|(_, done)| !done);
        if meta.pool && untouched && meta.expires_at > notice_horizon {
            voids.copies.push((*id, meta.clone(), why));
        } else {
            let slave = slaves
                .first()
                .cloned()
                .unwrap_or_else(|| meta.master.clone());
            let e = waiting
                .entry((meta.master.clone(), slave, why.to_string()))
                .or_default();
            e.0 += 1;
            e.1 = e.1.max(meta.expires_at);
        }
    }
    for ((master, slave, why), (keys, until)) in waiting {
        blockers.push(Blocker::Waiting {
            master,
            slave,
            keys,
            why,
            expires_in_s: until.saturating_sub(held.now).div_ceil(1000),
        });
    }
    for s in held.streams {
        // A stream's keys are made under the pair's profile; only the profile and the pairing
        // matter (its chunk size was granted within the limits at open).
        let (om, nm) = (
            old.0.mode(&s.master, &s.slave),
            new.0.mode(&s.master, &s.slave),
        );
        let why = if !new.0.pairs(&s.master, &s.slave) && old.0.pairs(&s.master, &s.slave) {
            Some(Misfit::Unpaired)
        } else if om != nm {
            Some(Misfit::Profile {
                was: format!("{}/{}", om.policy_name(), om.suite_name()),
                now: format!("{}/{}", nm.policy_name(), nm.suite_name()),
            })
        } else {
            None
        };
        if let Some(why) = why {
            blockers.push(Blocker::Stream {
                id: s.id,
                master: s.master.clone(),
                slave: s.slave.clone(),
                why: why.to_string(),
            });
        }
    }
    if !void_pools {
        let mut pooled: BTreeMap<(SaeId, SaeId, String), u64> = BTreeMap::new();
        for (pair, why) in &voids.pools {
            *pooled
                .entry((pair.0.clone(), pair.1.clone(), why.to_string()))
                .or_default() += held.pools.get(pair).copied().unwrap_or(0);
        }
        for (_, meta, why) in &voids.copies {
            let slave = meta.slaves.first().map_or(&meta.master, |s| &s.0).clone();
            *pooled
                .entry((meta.master.clone(), slave, why.to_string()))
                .or_default() += 1;
        }
        let mut p: Vec<Blocker> = pooled
            .into_iter()
            .map(|((master, slave, why), keys)| Blocker::Pooled {
                master,
                slave,
                keys,
                why,
            })
            .collect();
        p.append(&mut blockers);
        blockers = p;
    }
    if blockers.is_empty() {
        Ok(voids)
    } else {
        Err(blockers)
    }
}

impl KeyManager {
    /// Replaces the live part of the configuration: checks what this node holds against the
    /// rules above, voids what the operator allowed (`void_pools`) and swaps the configuration.
    /// Returns the keys voided, per pair and reason. Refused (nothing changed) when a rule
    /// stands in the way.
    pub async fn reconfigure(
        &self,
        live: LiveConfig,
        void_pools: bool,
    ) -> Result<Vec<super::VoidedKeys>, ReconfigureError> {
        const PAGE: usize = 1024;
        let _one = self.inner.reconfiguring.lock().await;
        let old = relay::read(&self.inner.live).cfg.clone();
        let old_fit = self.fit();
        let new = live.over(&old);
        let new_fit = super::fit_context(&new);

        let mut waiting = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .inner
                .writer
                .apply(ops::KeysAfter { after, limit: PAGE })
                .await?;
            let Some(last) = page.last().map(|(id, _)| *id) else {
                break;
            };
            after = Some(last);
            waiting.extend(page);
        }
        let streams = self.inner.writer.apply(ops::Streams {}).await?;
        let now = self.inner.clock.now();
        let pools = self.pools_snapshot();
        let held = Holdings {
            pools: &pools,
            waiting: &waiting,
            streams: &streams,
            now,
        };
        let voids = assess((&old, &old_fit), (&new, &new_fit), &held, void_pools)
            .map_err(ReconfigureError::Refused)?;

        // The swap and the voiding of pools happen under the pools' lock: a request that reads
        // the new configuration finds no pool key of the old one. That voids the pools
        // assessed above, and a refill of another changed pair that landed meanwhile (made
        // under the old configuration: voided, never pooled, like one that lands later, which
        // checks the configuration in force before it pools its keys).
        let (new, new_fit) = (Arc::new(new), Arc::new(new_fit));
        let pool_ids = self.swap_and_drain(
            Live {
                cfg: new.clone(),
                fit: new_fit.clone(),
            },
            |(m, s)| pool_misfit((&old, &old_fit), (&new, &new_fit), m, s),
        );
        let mut voided: BTreeMap<(SaeId, SaeId, String), u64> = BTreeMap::new();
        for (pair, ids, why) in pool_ids {
            let why = &why;
            for _ in &ids {
                self.note_voided(super::Voiding::Reload, &pair.0, &pair.1, why);
            }
            *voided
                .entry((pair.0.clone(), pair.1.clone(), why.to_string()))
                .or_default() += ids.len() as u64;
            for chunk in ids.chunks(PAGE) {
                self.inner
                    .writer
                    .apply(ops::DiscardPoolKeys {
                        ids: chunk.to_vec(),
                    })
                    .await?;
            }
        }
        let mut copies = Vec::new();
        for (id, meta, why) in voids.copies {
            let slave = meta.slaves.first().map_or(&meta.master, |s| &s.0).clone();
            self.note_voided(super::Voiding::Reload, &meta.master, &slave, &why);
            *voided
                .entry((meta.master.clone(), slave, why.to_string()))
                .or_default() += 1;
            copies.push((id, meta));
        }
        for chunk in copies.chunks(PAGE) {
            self.inner
                .writer
                .apply(ops::RetireKeys {
                    keys: chunk.to_vec(),
                    now: self.inner.clock.now(),
                })
                .await?;
        }
        let voided: Vec<super::VoidedKeys> = voided
            .into_iter()
            .map(|((master, slave, reason), keys)| super::VoidedKeys {
                master,
                slave,
                keys,
                reason,
            })
            .collect();
        for v in &voided {
            tracing::warn!(
                master = %v.master,
                slave = %v.slave,
                keys = v.keys,
                reason = %v.reason,
                "reload voided keys made under the previous configuration"
            );
        }
        Ok(voided)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::hybrid::Protection;

    fn sae(s: &str) -> SaeId {
        SaeId::parse(s).unwrap()
    }

    /// Node A with ENC-A (here) and ENC-B (at B), paired.
    fn base() -> ManagerConfig {
        let a = qkd_types::NodeId::parse("A").unwrap();
        let b = qkd_types::NodeId::parse("B").unwrap();
        let entry = |node: &qkd_types::NodeId, peer: &str| SaeEntry {
            node: node.clone(),
            peers: [sae(peer)].into(),
        };
        ManagerConfig {
            node: a.clone(),
            kme: qkd_types::KmeId::parse("KME-A").unwrap(),
            saes: [
                (sae("ENC-A"), entry(&a, "ENC-B")),
                (sae("ENC-B"), entry(&b, "ENC-A")),
            ]
            .into(),
            neighbours: Default::default(),
            limits: KeyLimits::default(),
            key_ttl_ms: 3_600_000,
            peer_timeout: std::time::Duration::from_secs(1),
            tombstone_retention_ms: 1,
            relay: Default::default(),
        }
    }

    fn qkd_only(cfg: &ManagerConfig) -> ManagerConfig {
        let mut c = cfg.clone();
        c.relay.pairs.insert(
            (sae("ENC-A"), sae("ENC-B")),
            KeyMode {
                protection: Protection::QkdOnly,
                suite: Default::default(),
            },
        );
        c
    }

    fn waiting_key(cfg: &ManagerConfig, pool: bool, expires_at: u64) -> (KeyId, StoredKey) {
        (
            KeyId::random(),
            StoredKey {
                request: [0; 16],
                master: sae("ENC-B"),
                slaves: vec![(sae("ENC-A"), false)],
                size_bits: cfg.limits.key_size,
                expires_at,
                made_under: Some(crate::relay::destination::made_under(
                    cfg,
                    &sae("ENC-B"),
                    &sae("ENC-A"),
                )),
                pool,
            },
        )
    }

    fn run(
        old: &ManagerConfig,
        new: &ManagerConfig,
        pooled: u64,
        waiting: &[(KeyId, StoredKey)],
        void_pools: bool,
    ) -> Result<Voids, Vec<Blocker>> {
        let pools = [((sae("ENC-A"), sae("ENC-B")), pooled)].into();
        let held = Holdings {
            pools: &pools,
            waiting,
            streams: &[],
            now: 1_000,
        };
        let (of, nf) = (
            super::super::fit_context(old),
            super::super::fit_context(new),
        );
        assess((old, &of), (new, &nf), &held, void_pools)
    }

    #[test]
    fn an_unchanged_pair_or_an_empty_pool_needs_nothing() {
        let old = base();
        let v = run(&old, &old, 5, &[], false).unwrap();
        assert!(v.pools.is_empty() && v.copies.is_empty());
        // A new SAE paired with nobody here changes no pair.
        let mut new = old.clone();
        new.saes.insert(
            sae("ENC-C"),
            SaeEntry {
                node: old.node.clone(),
                peers: Default::default(),
            },
        );
        assert!(run(&old, &new, 5, &[], false).unwrap().pools.is_empty());
        // A policy change with an empty pool and nothing waiting applies at once.
        assert!(run(&old, &qkd_only(&old), 0, &[], false).is_ok());
    }

    #[test]
    fn pooled_keys_of_a_changed_pair_are_voided_only_on_request() {
        let old = base();
        let new = qkd_only(&old);
        let copy = waiting_key(&old, true, 1_000 + old.key_ttl_ms + 1);
        let e = run(&old, &new, 7, std::slice::from_ref(&copy), false).unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            matches!(&e[0], Blocker::Pooled { keys: 7, master, .. } if master.as_str() == "ENC-A")
        );
        assert!(
            matches!(&e[1], Blocker::Pooled { keys: 1, master, .. } if master.as_str() == "ENC-B")
        );
        assert!(e[0].to_string().contains("--void-pools"), "{}", e[0]);
        let v = run(&old, &new, 7, &[copy], true).unwrap();
        assert_eq!(v.pools.len(), 1);
        assert_eq!(v.copies.len(), 1);
        // A bigger default size voids the pool too; a pair no longer permitted as well.
        let mut bigger = old.clone();
        bigger.limits.key_size = 512;
        bigger.limits.max_key_size = 1024;
        let v = run(&old, &bigger, 3, &[], true).unwrap();
        assert!(matches!(
            v.pools.values().next(),
            Some(Misfit::PoolSize { .. })
        ));
        let mut unpaired = old.clone();
        unpaired.saes.get_mut(&sae("ENC-A")).unwrap().peers.clear();
        let v = run(&old, &unpaired, 3, &[], true).unwrap();
        assert_eq!(v.pools.values().next(), Some(&Misfit::Unpaired));
    }

    #[test]
    fn keys_a_master_has_refuse_the_reload_even_with_void_pools() {
        let old = base();
        let new = qkd_only(&old);
        // Made on demand, or a pool copy whose expiry a delivery notice moved.
        let demand = waiting_key(&old, false, 5_000);
        let noticed = waiting_key(&old, true, 1_000 + old.key_ttl_ms);
        for k in [demand, noticed] {
            let e = run(&old, &new, 0, std::slice::from_ref(&k), true).unwrap_err();
            assert!(
                matches!(&e[..], [Blocker::Waiting { keys: 1, .. }]),
                "{e:?}"
            );
            let text = e[0].to_string();
            assert!(text.contains("strand"), "{text}");
        }
        // A key that no longer fitted before the reload is not the reload's doing.
        let stale = waiting_key(&qkd_only(&old), false, 5_000);
        assert!(run(&old, &new, 0, &[stale], false).is_ok());
    }

    #[test]
    fn an_open_stream_of_a_changed_pair_refuses_the_reload() {
        let old = base();
        let new = qkd_only(&old);
        let qos = crate::core::stream::Qos {
            chunk_bytes: 32,
            ttl_s: 60,
            ..Default::default()
        };
        let open = crate::core::stream::open(
            &sae("ENC-A"),
            &sae("ENC-B"),
            KeyStreamId::random(),
            false,
            qos,
            None,
        );
        let Ok(crate::core::stream::Open::Create(stream)) = open else {
            panic!("{open:?}")
        };
        let pools = BTreeMap::new();
        let held = Holdings {
            pools: &pools,
            waiting: &[],
            streams: std::slice::from_ref(&stream),
            now: 0,
        };
        let (of, nf) = (
            super::super::fit_context(&old),
            super::super::fit_context(&new),
        );
        let e = assess((&old, &of), (&new, &nf), &held, true).unwrap_err();
        assert!(matches!(&e[..], [Blocker::Stream { .. }]), "{e:?}");
        assert!(e[0].to_string().contains("close it first"), "{}", e[0]);
        assert!(assess((&old, &of), (&old, &of), &held, false).is_ok());
    }
}
