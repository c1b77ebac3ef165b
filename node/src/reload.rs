//! Configuration reload without a restart, where safe (SIGHUP or `qkdctl reload`).
//!
//! [`plan`] decides, from the running and the new configuration alone (sans-IO): what may change
//! live is `[alarms]` (thresholds and timing except `interval_ms`); anything else needs a
//! restart and the reload is refused, naming every key that changed. Among those, a change to
//! the key size, policy or suite of a pair whose pool holds keys is named with its pooled keys,
//! which a restart voids and logs (keys are never delivered under a configuration they were not
//! made under). Because links, neighbours, SAEs and pairs never change live, no reload can
//! strand keys in flight. [`Reloader`] is the shell: it reads and checks the file (every offline
//! check of `qkd-node check`), applies a plan, and audits every attempt (`config_reload`).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use qkd_kms::manager::KeyManager;
use qkd_types::SaeId;

use crate::audit::{AuditEvent, AuditLog};
use crate::config::NodeConfig;
use crate::monitor::Monitor;

/// What a reload changes live.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The keys that changed (`alarms.qber_max`, ...); empty if nothing did.
    pub changed: Vec<String>,
    /// The alarm thresholds to apply.
    pub thresholds: crate::alarms::Thresholds,
}

/// Why a reload was refused. Caused by the operator's new configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The file does not parse or fails a check.
    #[error("{0}")]
    Invalid(String),
    /// Keys that cannot change without a restart.
    #[error("{}", restart_text(.keys, .pooled))]
    NeedsRestart {
        /// The changed keys (`node`, `link`, `pair`, `relay.default_policy`, ...).
        keys: Vec<String>,
        /// Pairs whose size, policy or suite would change while their pool holds keys:
        /// (master, slave, pooled keys, from, to).
        pooled: Vec<PooledChange>,
    },
}

/// A pair with pooled keys whose key size, policy or suite the new configuration changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PooledChange {
    /// The pair's master (its pool is here).
    pub master: SaeId,
    /// The slave.
    pub slave: SaeId,
    /// Keys in the pool.
    pub keys: u64,
    /// `<size> bits, <policy>, <suite>` now.
    pub from: String,
    /// ... and in the new configuration.
    pub to: String,
}

fn restart_text(keys: &[String], pooled: &[PooledChange]) -> String {
    let mut s = format!(
        "reload refused: {} cannot change without a restart (only [alarms], except \
         alarms.interval_ms, reloads live); nothing was changed",
        keys.join(", ")
    );
    for p in pooled {
        s.push_str(&format!(
            "; pair {}->{} holds {} pooled keys made under {} that the new configuration \
             would make under {}: a restart voids them and logs it",
            p.master, p.slave, p.keys, p.from, p.to
        ));
    }
    s
}

/// Decides a reload from the running configuration (`old`, from the text `old_text`) and the
/// new one; `pooled` says how many keys a pair's pool holds now.
pub fn plan(
    old_text: &str,
    old: &NodeConfig,
    new_text: &str,
    new: &NodeConfig,
    pooled: impl Fn(&SaeId, &SaeId) -> u64,
) -> Result<Plan, Refusal> {
    let table = |t: &str| {
        t.parse::<toml::Table>()
            .map_err(|e| Refusal::Invalid(e.to_string()))
    };
    let (a, b) = (table(old_text)?, table(new_text)?);
    let mut changed = Vec::new();
    let mut restart = Vec::new();
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        if a.get(k) == b.get(k) {
            continue;
        }
        if k == "alarms" {
            let empty = toml::Table::new();
            let sub = |t: &toml::Table| t.get(k).and_then(|v| v.as_table()).cloned();
            let (sa, sb) = (
                sub(&a).unwrap_or_else(|| empty.clone()),
                sub(&b).unwrap_or(empty),
            );
            let subkeys: BTreeSet<&String> = sa.keys().chain(sb.keys()).collect();
            for s in subkeys.into_iter().filter(|s| sa.get(*s) != sb.get(*s)) {
                let name = format!("alarms.{s}");
                if s == "interval_ms" {
                    restart.push(name);
                } else {
                    changed.push(name);
                }
            }
        } else {
            restart.push(k.clone());
        }
    }
    if !restart.is_empty() {
        let mut pooled_changes = Vec::new();
        for (m, s) in crate::operations::pool_pairs(old) {
            let (Some(from), Some(to)) = (pair_mode(old, &m, &s), pair_mode(new, &m, &s)) else {
                continue;
            };
            let keys = pooled(&m, &s);
            if from != to && keys > 0 {
                pooled_changes.push(PooledChange {
                    master: m,
                    slave: s,
                    keys,
                    from,
                    to,
                });
            }
        }
        return Err(Refusal::NeedsRestart {
            keys: restart,
            pooled: pooled_changes,
        });
    }
    Ok(Plan {
        changed,
        thresholds: crate::operations::thresholds(new),
    })
}

/// `<size> bits, <policy>, <suite>` of a pair (what its pooled keys are made under).
fn pair_mode(cfg: &NodeConfig, a: &SaeId, b: &SaeId) -> Option<String> {
    let entry = cfg
        .pairs
        .iter()
        .find(|p| p.saes.contains(a) && p.saes.contains(b));
    let mode = cfg
        .key_mode(
            entry.and_then(|p| p.policy.as_deref()),
            entry.and_then(|p| p.suite.as_deref()),
        )
        .ok()?;
    Some(format!(
        "{} bits, {}, {}",
        cfg.limits.key_size, mode.protection, mode.suite
    ))
}

/// The reload shell of a running node.
#[derive(Debug)]
pub struct Reloader {
    /// The configuration file.
    path: PathBuf,
    /// The running configuration and its text.
    running: Mutex<(String, NodeConfig)>,
    manager: KeyManager,
    monitor: Arc<Monitor>,
    audit: AuditLog,
}

/// What a reload did (applied or unchanged) or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `applied`, `unchanged` or `refused`.
    pub outcome: &'static str,
    /// For people.
    pub detail: String,
}

impl Reloader {
    /// The shell over the configuration the node started with (`text` is its file's text).
    pub fn new(
        text: String,
        cfg: NodeConfig,
        manager: KeyManager,
        monitor: Arc<Monitor>,
        audit: AuditLog,
    ) -> Self {
        Self {
            path: cfg.path.clone(),
            running: Mutex::new((text, cfg)),
            manager,
            monitor,
            audit,
        }
    }

    /// Reads, checks and applies the configuration file; `by` says who asked (audited).
    pub fn reload(&self, by: &str) -> Outcome {
        let (text, result) = match std::fs::read_to_string(&self.path) {
            Ok(text) => {
                let r = self.decide(&text);
                (text, r)
            }
            Err(e) => (
                String::new(),
                Err(Refusal::Invalid(format!("{}: {e}", self.path.display()))),
            ),
        };
        let out = match result {
            Ok((plan, new)) if plan.changed.is_empty() => {
                *self.running.lock().unwrap_or_else(|p| p.into_inner()) = (text.clone(), new);
                Outcome {
                    outcome: "unchanged",
                    detail: "nothing that reloads live changed".into(),
                }
            }
            Ok((plan, new)) => {
                self.monitor.set_thresholds(plan.thresholds.clone());
                *self.running.lock().unwrap_or_else(|p| p.into_inner()) = (text.clone(), new);
                Outcome {
                    outcome: "applied",
                    detail: format!("applied: {}", plan.changed.join(", ")),
                }
            }
            Err(e) => Outcome {
                outcome: "refused",
                detail: e.to_string(),
            },
        };
        if out.outcome == "refused" {
            tracing::warn!(%by, "configuration reload refused: {}", out.detail);
        } else {
            tracing::info!(%by, outcome = out.outcome, "configuration reload: {}", out.detail);
        }
        self.audit.record(AuditEvent::ConfigReload {
            by: by.to_owned(),
            outcome: out.outcome,
            detail: out.detail.clone(),
            config_sha256: crate::audit::sha256_hex(text.as_bytes()),
        });
        out
    }

    fn decide(&self, text: &str) -> Result<(Plan, NodeConfig), Refusal> {
        let new =
            NodeConfig::parse(&self.path, text).map_err(|e| Refusal::Invalid(e.to_string()))?;
        crate::check::offline(&new).map_err(|e| Refusal::Invalid(e.to_string()))?;
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let (old_text, old) = &*running;
        let plan = plan(old_text, old, text, &new, |m, s| {
            self.manager.pool_level(m, s)
        })?;
        Ok((plan, new))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use crate::config::TEST_CONFIG as BASE;

    fn cfg(text: &str) -> NodeConfig {
        NodeConfig::parse(std::path::Path::new("/etc/qkd/node.toml"), text).unwrap()
    }

    fn decide(new: &str, pooled: u64) -> Result<Plan, Refusal> {
        plan(BASE, &cfg(BASE), new, &cfg(new), |_, _| pooled)
    }

    #[test]
    fn alarms_reload_live_and_the_rest_needs_a_restart() {
        assert_eq!(decide(BASE, 5).unwrap().changed, Vec::<String>::new());
        let new = format!("{BASE}\n[alarms]\nqber_max = 0.05\npool_min_keys = 3\n");
        let p = decide(&new, 5).unwrap();
        assert_eq!(p.changed, ["alarms.pool_min_keys", "alarms.qber_max"]);
        assert_eq!(p.thresholds.qber_max, 0.05);
        assert_eq!(p.thresholds.pool_min_keys, 3);

        let new = format!("{BASE}\n[alarms]\ninterval_ms = 5\n");
        let e = decide(&new, 5).unwrap_err();
        assert!(
            matches!(&e, Refusal::NeedsRestart { keys, pooled } if keys == &["alarms.interval_ms"] && pooled.is_empty()),
            "{e:?}"
        );
        let new = BASE.replace("127.0.0.2:7000", "127.0.0.2:7001");
        let e = decide(&new, 5).unwrap_err();
        assert!(
            e.to_string()
                .contains("neighbour cannot change without a restart"),
            "{e}"
        );
    }

    /// A pair's policy change is named with its pooled keys, which a restart voids; without
    /// pooled keys it only needs the restart.
    #[test]
    fn a_pair_policy_change_names_its_pooled_keys() {
        let new =
            format!("{BASE}\n[[pair]]\nsaes = [\"ENC-A\", \"ENC-B\"]\npolicy = \"qkd-only\"\n");
        let e = decide(&new, 7).unwrap_err();
        let Refusal::NeedsRestart { keys, pooled } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(keys, &["pair"]);
        assert_eq!(pooled.len(), 1);
        assert_eq!((pooled[0].master.as_str(), pooled[0].keys), ("ENC-A", 7));
        assert!(pooled[0].to.contains("QKD-only"), "{:?}", pooled[0]);
        let text = e.to_string();
        assert!(
            text.contains("pair ENC-A->ENC-B holds 7 pooled keys"),
            "{text}"
        );
        let Refusal::NeedsRestart { pooled, .. } = decide(&new, 0).unwrap_err() else {
            panic!()
        };
        assert!(pooled.is_empty());
        let new = format!("{BASE}\n[limits]\nkey_size = 512\nmax_key_size = 1024\n");
        let Refusal::NeedsRestart { pooled, .. } = decide(&new, 1).unwrap_err() else {
            panic!()
        };
        assert!(pooled[0].to.starts_with("512 bits"), "{pooled:?}");
    }
}
