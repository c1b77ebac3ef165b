//! Whether a stored key may still be served under the configuration in force.
//!
//! A key is made under its pair's policy and suite, and a pool key at the pair's default size.
//! Configuration can change between two starts of a node; a key made under one configuration is
//! never served under another (docs/design.md, "Keys and configuration"). This module decides,
//! from a key's recorded metadata and the configuration now, whether the key still fits, and if
//! not, why. It is a pure function: the key manager voids what does not fit at start, and checks
//! again before every delivery.

use std::collections::BTreeMap;
use std::fmt;

use qkd_types::SaeId;

use crate::api::{KeyLimits, KeyProfile};
use crate::store::{MadeUnder, StoredKey};

/// What a key recorded about how it was made.
#[derive(Debug, Clone, Copy)]
pub struct KeyOrigin<'a> {
    /// The policy and suite it was made under (`None`: stored before they were recorded).
    pub made_under: Option<&'a MadeUnder>,
    /// Its size in bits.
    pub size_bits: u32,
    /// Made to fill the pair's pool, at the default size of that time.
    pub pool: bool,
}

/// Why a key no longer fits its pair's configuration.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Misfit {
    /// Stored by a version that did not record the policy and suite.
    Unrecorded,
    /// The two SAEs may no longer share keys (a reload removed one, or their pairing).
    Unpaired,
    /// The pair's policy or suite changed.
    Profile {
        /// What the key was made under: `policy/suite`.
        was: String,
        /// What the pair is configured with now.
        now: String,
    },
    /// A pool key of the old default size.
    PoolSize {
        /// The key's size.
        was: u32,
        /// The default size now.
        now: u32,
    },
    /// A key of a size outside the pair's limits now.
    SizeLimits {
        /// The key's size.
        was: u32,
        /// Smallest size now.
        min: u32,
        /// Largest size now.
        max: u32,
    },
}

impl fmt::Display for Misfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Misfit::Unrecorded => f.write_str("made before policy and suite were recorded"),
            Misfit::Unpaired => f.write_str("the SAEs may no longer share keys"),
            Misfit::Profile { was, now } => write!(f, "made under {was}, pair now {now}"),
            Misfit::PoolSize { was, now } => {
                write!(f, "pool key of {was} bits, default key size now {now}")
            }
            Misfit::SizeLimits { was, min, max } => {
                write!(f, "key of {was} bits, pair limits now {min} to {max}")
            }
        }
    }
}

/// Whether a key with `origin`, shared by pairs whose profiles are now `profiles`, may still be
/// served under `limits`; the first reason it may not otherwise.
pub fn misfit(
    origin: KeyOrigin<'_>,
    profiles: impl IntoIterator<Item = KeyProfile>,
    limits: &KeyLimits,
) -> Option<Misfit> {
    let Some(made) = origin.made_under else {
        return Some(Misfit::Unrecorded);
    };
    for p in profiles {
        if made.policy != p.policy || made.suite != p.suite {
            return Some(Misfit::Profile {
                was: format!("{}/{}", made.policy, made.suite),
                now: format!("{}/{}", p.policy, p.suite),
            });
        }
    }
    if origin.pool && origin.size_bits != limits.key_size {
        return Some(Misfit::PoolSize {
            was: origin.size_bits,
            now: limits.key_size,
        });
    }
    if origin.size_bits < limits.min_key_size || origin.size_bits > limits.max_key_size {
        return Some(Misfit::SizeLimits {
            was: origin.size_bits,
            min: limits.min_key_size,
            max: limits.max_key_size,
        });
    }
    None
}

/// The configuration keys are held against: every configured pair's profile, the default one and
/// the size limits. Built once from the node's configuration; store operations that serve keys
/// carry it (shared), so that "does this key still fit?" is decided from data alone.
#[derive(Debug, Clone)]
pub struct FitContext {
    /// Profiles of the pairs configured explicitly, by (lesser SAE, greater SAE).
    pairs: BTreeMap<(SaeId, SaeId), KeyProfile>,
    /// Profile of every other pair.
    default: KeyProfile,
    /// Size limits now.
    limits: KeyLimits,
}

impl FitContext {
    /// A context from the pairs configured explicitly (in either order), the default profile and
    /// the size limits.
    pub fn new(
        pairs: impl IntoIterator<Item = ((SaeId, SaeId), KeyProfile)>,
        default: KeyProfile,
        limits: KeyLimits,
    ) -> Self {
        let pairs = pairs
            .into_iter()
            .map(|((a, b), p)| (if a <= b { (a, b) } else { (b, a) }, p))
            .collect();
        Self {
            pairs,
            default,
            limits,
        }
    }

    /// The profile of the pair of `a` and `b` (in either order).
    pub fn profile(&self, a: &SaeId, b: &SaeId) -> KeyProfile {
        let key = if a <= b {
            (a.clone(), b.clone())
        } else {
            (b.clone(), a.clone())
        };
        self.pairs.get(&key).copied().unwrap_or(self.default)
    }

    /// Why a key with `origin` shared by `master` and `slaves` no longer fits, if it does not.
    pub fn misfit(
        &self,
        master: &SaeId,
        slaves: &[SaeId],
        origin: KeyOrigin<'_>,
    ) -> Option<Misfit> {
        // Test-only switch of the network simulation (defect 2 put back); never set otherwise.
        if crate::events::defects::active().stale_keys {
            return None;
        }
        misfit(
            origin,
            slaves.iter().map(|s| self.profile(master, s)),
            &self.limits,
        )
    }

    /// Whether a waiting key may still be served.
    pub fn stored_key_fits(&self, m: &StoredKey) -> bool {
        let slaves: Vec<SaeId> = m.slaves.iter().map(|(s, _)| s.clone()).collect();
        let origin = KeyOrigin {
            made_under: m.made_under.as_ref(),
            size_bits: m.size_bits,
            pool: m.pool,
        };
        self.misfit(&m.master, &slaves, origin).is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: KeyProfile = KeyProfile {
        policy: "QKD+PQ+T",
        suite: "X25519/ML-KEM-768",
    };
    const QKD_ONLY: KeyProfile = KeyProfile {
        policy: "QKD-only",
        suite: "",
    };

    fn made(p: KeyProfile) -> MadeUnder {
        MadeUnder {
            policy: p.policy.into(),
            suite: p.suite.into(),
        }
    }

    fn origin(m: Option<&MadeUnder>, size_bits: u32, pool: bool) -> KeyOrigin<'_> {
        KeyOrigin {
            made_under: m,
            size_bits,
            pool,
        }
    }

    #[test]
    fn a_key_fits_only_the_configuration_it_was_made_under() {
        let limits = KeyLimits::default();
        let h = made(HYBRID);
        assert_eq!(misfit(origin(Some(&h), 256, true), [HYBRID], &limits), None);
        assert_eq!(
            misfit(origin(Some(&h), 512, false), [HYBRID], &limits),
            None
        );
        assert!(matches!(
            misfit(origin(Some(&h), 256, true), [QKD_ONLY], &limits),
            Some(Misfit::Profile { .. })
        ));
        // Every pair the key serves must still be configured alike.
        assert!(matches!(
            misfit(origin(Some(&h), 256, false), [HYBRID, QKD_ONLY], &limits),
            Some(Misfit::Profile { .. })
        ));
        assert_eq!(
            misfit(origin(None, 256, true), [HYBRID], &limits),
            Some(Misfit::Unrecorded)
        );
    }

    #[test]
    fn pool_keys_must_have_the_default_size_and_others_fit_the_limits() {
        let h = made(HYBRID);
        let limits = KeyLimits {
            key_size: 512,
            ..KeyLimits::default()
        };
        assert_eq!(
            misfit(origin(Some(&h), 256, true), [HYBRID], &limits),
            Some(Misfit::PoolSize { was: 256, now: 512 })
        );
        assert_eq!(
            misfit(origin(Some(&h), 256, false), [HYBRID], &limits),
            None
        );
        let narrow = KeyLimits {
            max_key_size: 512,
            ..limits
        };
        assert_eq!(
            misfit(origin(Some(&h), 1024, false), [HYBRID], &narrow),
            Some(Misfit::SizeLimits {
                was: 1024,
                min: 64,
                max: 512
            })
        );
    }
}
