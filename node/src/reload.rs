//! Configuration reload without a restart, where safe (SIGHUP or `qkdctl reload`).
//!
//! [`plan`] decides, from the running and the new configuration alone (sans-IO), what changed
//! and whether it may change live:
//!
//! - `[alarms]` (thresholds and timing except `interval_ms`);
//! - the SAEs and whom they pair with (`[[sae]]`, except moving an SAE to another node), the
//!   protection of pairs (`[[pair]]`, `relay.default_policy`, `relay.default_suite`) and the
//!   ETSI limits (`[limits]`). These go to the key manager
//!   ([`qkd_kms::manager::KeyManager::reconfigure`]), which applies them under the rules of a
//!   restart: pooled keys that would no longer fit are voided only if the operator asked for it
//!   (`--void-pools`), and a reload that would strand keys a master already has, or an open key
//!   stream, is refused with what stands in the way.
//!
//! Anything else needs a restart and the reload is refused, naming every key that changed (and
//! the pooled keys a restart would void). [`Reloader`] is the shell: it reads and checks the
//! file (every offline check of `qkd-node check`), applies a plan, and audits every attempt
//! (`config_reload`).

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
    /// The keys that changed (`alarms.qber_max`, `sae`, `pair`, ...); empty if nothing did.
    pub changed: Vec<String>,
    /// The alarm thresholds to apply.
    pub thresholds: crate::alarms::Thresholds,
    /// Whether the key manager's live configuration (SAEs, pairs, limits) changed.
    pub manager: bool,
}

/// Top-level keys whose change goes to the key manager live.
const MANAGER_KEYS: [&str; 3] = ["sae", "pair", "limits"];
/// `[relay]` keys that go to the key manager live.
const RELAY_LIVE: [&str; 2] = ["default_policy", "default_suite"];

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
        "reload refused: {} cannot change without a restart (what reloads live: [alarms] \
         except alarms.interval_ms, [[sae]] except an SAE's node, [[pair]], [limits], \
         relay.default_policy and relay.default_suite); nothing was changed",
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
    let mut manager = false;
    let empty = toml::Table::new();
    let sub = |t: &toml::Table, k: &str| {
        t.get(k)
            .and_then(|v| v.as_table())
            .cloned()
            .unwrap_or_else(|| empty.clone())
    };
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        if a.get(k) == b.get(k) {
            continue;
        }
        match k.as_str() {
            "alarms" | "relay" => {
                let (sa, sb) = (sub(&a, k), sub(&b, k));
                let subkeys: BTreeSet<&String> = sa.keys().chain(sb.keys()).collect();
                for s in subkeys.into_iter().filter(|s| sa.get(*s) != sb.get(*s)) {
                    let name = format!("{k}.{s}");
                    let live = if k == "alarms" {
                        s != "interval_ms"
                    } else {
                        RELAY_LIVE.contains(&s.as_str())
                    };
                    if !live {
                        restart.push(name);
                    } else {
                        manager |= k == "relay";
                        changed.push(name);
                    }
                }
            }
            k if MANAGER_KEYS.contains(&k) => {
                manager = true;
                changed.push(k.to_owned());
            }
            _ => restart.push(k.clone()),
        }
    }
    // An SAE moving to another node takes its keys' home with it: a restart.
    for s in &new.saes {
        if let Some(o) = old.saes.iter().find(|o| o.id == s.id)
            && o.node != s.node
        {
            restart.push(format!("sae {} (node {} -> {})", s.id, o.node, s.node));
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
        manager,
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
    /// Reloads one at a time (a check and its apply must see the same running configuration).
    one: tokio::sync::Mutex<()>,
    manager: KeyManager,
    monitor: Arc<Monitor>,
    telemetry: Arc<crate::telemetry::Telemetry>,
    etsi015: crate::etsi015::SharedSetup,
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

/// The parts of a running node a reload changes.
#[derive(Debug)]
pub struct ReloadParts {
    /// The key manager (SAEs, pairs, limits).
    pub manager: KeyManager,
    /// The monitor (alarm thresholds, pools and `qkd-only` pairs it watches).
    pub monitor: Arc<Monitor>,
    /// Per-pair metric handles.
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    /// The configured part of the ETSI 015 view (its applications).
    pub etsi015: crate::etsi015::SharedSetup,
    /// Where every attempt is recorded.
    pub audit: AuditLog,
}

impl Reloader {
    /// The shell over the configuration the node started with (`text` is its file's text).
    pub fn new(text: String, cfg: NodeConfig, parts: ReloadParts) -> Self {
        Self {
            path: cfg.path.clone(),
            running: Mutex::new((text, cfg)),
            one: Default::default(),
            manager: parts.manager,
            monitor: parts.monitor,
            telemetry: parts.telemetry,
            etsi015: parts.etsi015,
            audit: parts.audit,
        }
    }

    /// Reads, checks and applies the configuration file; `by` says who asked (audited);
    /// `void_pools` lets the reload void pooled keys that no longer fit their pair.
    pub async fn reload(self: &Arc<Self>, by: &str, void_pools: bool) -> Outcome {
        let _one = self.one.lock().await;
        // Reading and checking the files is blocking work.
        let me = self.clone();
        let read = tokio::task::spawn_blocking(move || match std::fs::read_to_string(&me.path) {
            Ok(text) => {
                let r = me.decide(&text);
                (text, r)
            }
            Err(e) => (
                String::new(),
                Err(Refusal::Invalid(format!("{}: {e}", me.path.display()))),
            ),
        })
        .await;
        let (text, result) = match read {
            Ok(r) => r,
            Err(e) => (
                String::new(),
                Err(Refusal::Invalid(format!("the reload failed: {e}"))),
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
            Ok((plan, new)) => match self.apply(&plan, &new, void_pools).await {
                Ok(voided) => {
                    *self.running.lock().unwrap_or_else(|p| p.into_inner()) = (text.clone(), new);
                    let mut detail = format!("applied: {}", plan.changed.join(", "));
                    for v in voided {
                        detail.push_str(&format!(
                            "; voided {} pooled keys of {}->{} ({})",
                            v.keys, v.master, v.slave, v.reason
                        ));
                    }
                    Outcome {
                        outcome: "applied",
                        detail,
                    }
                }
                Err(detail) => Outcome {
                    outcome: "refused",
                    detail,
                },
            },
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

    /// Applies a plan: the key manager first (it may refuse; nothing else has changed then),
    /// then the monitor and the metric handles.
    async fn apply(
        &self,
        plan: &Plan,
        new: &NodeConfig,
        void_pools: bool,
    ) -> Result<Vec<qkd_kms::manager::VoidedKeys>, String> {
        let mut voided = Vec::new();
        if plan.manager {
            // Everything derived first: once the manager has changed, nothing may fail.
            let fail = |e: anyhow::Error| format!("{e:#}");
            let live = crate::daemon::live_config(new).map_err(fail)?;
            let warnings = crate::daemon::qkd_only_pairs(new).map_err(fail)?;
            let started_at = crate::etsi015::current(&self.etsi015).started_at;
            let setup = crate::etsi015::Setup::of(new, started_at).map_err(fail)?;
            voided = self
                .manager
                .reconfigure(live, void_pools)
                .await
                .map_err(|e| format!("reload refused, nothing was changed: {e}"))?;
            *self.etsi015.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(setup);
            for w in &warnings {
                tracing::warn!(saes = ?w.saes, "{}", w.warning);
            }
            let pools = crate::operations::pool_pairs(new);
            self.telemetry
                .add_pairs(&pools, &crate::operations::delivery_pairs(new));
            self.monitor
                .set_pairs(pools, warnings.into_iter().map(|w| w.saes).collect());
        }
        self.monitor.set_thresholds(plan.thresholds.clone());
        Ok(voided)
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

    /// SAEs, pairs, limits and the relay's default policy go to the key manager live; moving
    /// an SAE to another node and the relay's other keys need a restart.
    #[test]
    fn saes_pairs_and_limits_reload_live() {
        let pair =
            format!("{BASE}\n[[pair]]\nsaes = [\"ENC-A\", \"ENC-B\"]\npolicy = \"qkd-only\"\n");
        let p = decide(&pair, 7).unwrap();
        assert_eq!(p.changed, ["pair"]);
        assert!(p.manager);
        let sae = format!("{BASE}\n[[sae]]\nid = \"ENC-C\"\nnode = \"A\"\n");
        let p = decide(&sae, 7).unwrap();
        assert_eq!(
            (p.changed.as_slice(), p.manager),
            (&["sae".to_owned()][..], true)
        );
        let limits = format!("{BASE}\n[limits]\nkey_size = 512\nmax_key_size = 1024\n");
        assert_eq!(decide(&limits, 1).unwrap().changed, ["limits"]);
        let policy = format!("{BASE}\n[relay]\ndefault_policy = \"qkd-only\"\n");
        let p = decide(&policy, 1).unwrap();
        assert_eq!(
            (p.changed.as_slice(), p.manager),
            (&["relay.default_policy".to_owned()][..], true)
        );
        // Alarms alone do not touch the manager.
        let alarms = format!("{BASE}\n[alarms]\nqber_max = 0.05\n");
        assert!(!decide(&alarms, 1).unwrap().manager);

        let moved = BASE.replace(
            "id = \"ENC-B\"\nnode = \"B\"",
            "id = \"ENC-B\"\nnode = \"A\"",
        );
        assert_ne!(moved, BASE);
        let e = decide(&moved, 1).unwrap_err();
        assert!(e.to_string().contains("sae ENC-B (node B -> A)"), "{e}");
        let pool = format!("{BASE}\n[relay]\npool_keys = 9\n");
        let e = decide(&pool, 1).unwrap_err();
        assert!(
            e.to_string().contains("relay.pool_keys cannot change"),
            "{e}"
        );
    }

    /// Beside a change that needs a restart, a pair's policy change is named with its pooled
    /// keys, which a restart voids; without pooled keys it only needs the restart.
    #[test]
    fn a_pair_policy_change_beside_a_restart_names_its_pooled_keys() {
        let base = BASE.replace("127.0.0.2:7000", "127.0.0.2:7001");
        let new =
            format!("{base}\n[[pair]]\nsaes = [\"ENC-A\", \"ENC-B\"]\npolicy = \"qkd-only\"\n");
        let e = decide(&new, 7).unwrap_err();
        let Refusal::NeedsRestart { keys, pooled } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(keys, &["neighbour"]);
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
        let new = format!("{base}\n[limits]\nkey_size = 512\nmax_key_size = 1024\n");
        let Refusal::NeedsRestart { pooled, .. } = decide(&new, 1).unwrap_err() else {
            panic!()
        };
        assert!(pooled[0].to.starts_with("512 bits"), "{pooled:?}");
    }
}
