//! Wiring of what operators see and keep: the metrics recorder, the audit log with its SIEM
//! forwarder, and the facts the monitor needs from the configuration (pairs, certificates,
//! thresholds). The daemon calls [`Operations::start`] before it opens the store, so that every
//! metric handle reaches the recorder and the start of the node is the audit log's first record.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use qkd_types::{Clock, SaeId, UnixMillis};
use serde_json::json;
use tokio::sync::watch;

use crate::alarms::Thresholds;
use crate::audit::{AuditEvent, AuditLog, sha256_hex};
use crate::config::{NodeConfig, SourceSection};
use crate::siem::{Forwarder, SiemTarget};
use crate::telemetry::{NodeLabels, Telemetry};
use qkd_hardware::etsi014::PemSource;

/// How long the SIEM forwarder may keep sending at shutdown.
const SIEM_DRAIN: Duration = Duration::from_secs(3);
/// How long the audit log may take to write its last records at shutdown.
const AUDIT_FLUSH: Duration = Duration::from_secs(5);

/// The running operations side.
#[derive(Debug)]
pub struct Operations {
    /// Metric handles.
    pub telemetry: Arc<Telemetry>,
    /// The audit log.
    pub audit: AuditLog,
    /// The SIEM forwarder, if configured.
    pub siem: Option<Arc<Forwarder>>,
    audit_task: tokio::task::JoinHandle<()>,
    siem_task: Option<(tokio::task::JoinHandle<()>, watch::Sender<bool>)>,
}

impl Operations {
    /// Installs the metrics recorder, opens the audit log (checking the chain it holds), starts
    /// the SIEM forwarder, and records the start with the configuration.
    pub async fn start(
        cfg: &NodeConfig,
        clock: Arc<dyn Clock>,
        qkd_only: &[[SaeId; 2]],
    ) -> Result<Self> {
        let links: Vec<_> = cfg.links.iter().map(|l| l.id.clone()).collect();
        let telemetry = Arc::new(Telemetry::install(
            cfg.metrics.served(&cfg.node),
            &NodeLabels {
                node: cfg.node.id.to_string(),
                kme_id: cfg.node.kme_id.to_string(),
            },
            &links,
            &pool_pairs(cfg),
            &delivery_pairs(cfg),
        )?);
        let siem = match &cfg.audit.siem {
            Some(s) => Some(
                Forwarder::new(SiemTarget {
                    address: s.address.clone(),
                    server_name: rustls::pki_types::ServerName::try_from(
                        s.server_name().to_owned(),
                    )
                    .context("audit.siem.server_name")?,
                    files: crate::siem::files(s),
                    queue: s.queue,
                    facility: s.facility,
                    hostname: cfg.node.id.to_string(),
                    app_name: s.app_name.clone(),
                })
                .context("[audit.siem] TLS configuration")?,
            ),
            None => None,
        };
        let sink = siem.clone().map(|f| f as Arc<dyn crate::audit::LineSink>);
        let (audit, task, previous_chain) = crate::audit::open(
            &cfg.audit.file,
            cfg.node.id.clone(),
            cfg.audit.queue,
            clock,
            sink,
        )
        .with_context(|| format!("cannot open the audit log {}", cfg.audit.file.display()))?;
        let audit_task = tokio::spawn(task);
        let siem_task = siem.as_ref().map(|f| {
            let (tx, rx) = watch::channel(false);
            (tokio::spawn(f.clone().run(rx, SIEM_DRAIN)), tx)
        });
        let text = std::fs::read(&cfg.path).unwrap_or_default();
        audit
            .record_wait(AuditEvent::Start {
                version: env!("CARGO_PKG_VERSION"),
                config_file: cfg.path.display().to_string(),
                config_sha256: sha256_hex(&text),
                config: summary(cfg, qkd_only),
                previous_chain,
            })
            .await;
        Ok(Self {
            telemetry,
            audit,
            siem,
            audit_task,
            siem_task,
        })
    }

    /// Records the stop, waits (bounded) for the log to write it and for the SIEM to take it.
    pub async fn stop(self, reason: &str) {
        self.audit
            .record_wait(AuditEvent::Stop {
                reason: reason.to_owned(),
            })
            .await;
        self.audit.flushed(AUDIT_FLUSH).await;
        self.audit_task.abort();
        if let Some((task, stop)) = self.siem_task {
            let _ = stop.send(true);
            let _ = tokio::time::timeout(SIEM_DRAIN * 2, task).await;
        }
    }
}

/// The alarm thresholds of `[alarms]`.
pub fn thresholds(cfg: &NodeConfig) -> Thresholds {
    let a = &cfg.alarms;
    Thresholds {
        qber_max: a.qber_max,
        pool_min_keys: a.pool_min_keys(&cfg.relay),
        certificate_warn_ms: a.certificate_warn_days.saturating_mul(86_400_000),
        raise_after_ms: a.raise_after_ms,
        clear_after_ms: a.clear_after_ms,
        quiet_ms: a.quiet_seconds.saturating_mul(1000),
    }
}

/// Pairs whose pool is kept here: master attached here, slave at another node, allowed.
pub fn pool_pairs(cfg: &NodeConfig) -> Vec<(SaeId, SaeId)> {
    let here = attached_here(cfg);
    delivery_pairs(cfg)
        .into_iter()
        .filter(|(m, _)| here.contains(m))
        .collect()
}

/// Pairs whose keys are delivered here to one of them: ordered (master, slave) pairs that may
/// share keys, with exactly one of the two attached here. In the order of `[[sae]]` (masters,
/// then their slaves).
///
/// Linear in the SAEs and their peers: a node with 1,000 SAE pairs took more than a minute to
/// start when every SAE was compared with every other and each of those looked up both ends
/// again (BENCHMARKS.md, issue 12).
pub fn delivery_pairs(cfg: &NodeConfig) -> Vec<(SaeId, SaeId)> {
    let mut entries: HashMap<&SaeId, Vec<usize>> = HashMap::new();
    for (i, s) in cfg.saes.iter().enumerate() {
        entries.entry(&s.id).or_default().push(i);
    }
    let here = attached_here(cfg);
    let mut out = Vec::new();
    for a in &cfg.saes {
        // The entries named by a's peers, in configuration order (each allowed by a).
        let mut slaves: Vec<usize> = a
            .peers
            .iter()
            .filter_map(|p| entries.get(p))
            .flatten()
            .copied()
            .collect();
        slaves.sort_unstable();
        slaves.dedup();
        for b in slaves.into_iter().map(|i| &cfg.saes[i]) {
            let allowed = b.peers.contains(&a.id);
            let one_here = here.contains(&a.id) != here.contains(&b.id);
            if a.id != b.id && allowed && one_here {
                out.push((a.id.clone(), b.id.clone()));
            }
        }
    }
    out
}

/// The SAEs attached to this node.
fn attached_here(cfg: &NodeConfig) -> HashSet<&SaeId> {
    cfg.saes
        .iter()
        .filter(|s| s.node == cfg.node.id)
        .map(|s| &s.id)
        .collect()
}

/// (configuration name, end of validity) of each certificate the node presents.
pub fn certificates(cfg: &NodeConfig) -> Vec<(String, UnixMillis)> {
    let mut files = vec![("tls.cert".to_owned(), cfg.tls.cert.clone())];
    if let Some(c) = cfg.grpc.as_ref().and_then(|g| g.cert.clone()) {
        files.push(("grpc.cert".to_owned(), c));
    }
    if let Some(c) = cfg.audit.siem.as_ref().and_then(|s| s.client_cert.clone()) {
        files.push(("audit.siem.client_cert".to_owned(), c));
    }
    // The node's client certificates at its QKD devices (one per configured link: bounded).
    for lk in &cfg.links {
        if let SourceSection::Etsi014(dev) = &lk.source
            && let PemSource::File(path) = &dev.client_cert
        {
            files.push((format!("link.{}.source.client_cert", lk.id), path.clone()));
        }
    }
    files
        .into_iter()
        .filter_map(|(name, path)| {
            let leaf = qkd_kms::tls::load_certs(&path).ok()?.into_iter().next()?;
            match qkd_kms::tls::not_after(&leaf) {
                Ok(t) => Some((name, t)),
                Err(e) => {
                    tracing::warn!(certificate = %name, file = %path.display(), error = %e, "cannot read the certificate's expiry");
                    None
                }
            }
        })
        .collect()
}

/// What the configuration sets, for the audit log's start record: identifiers, addresses,
/// policies and thresholds; file names but never file contents (no key, no seed).
fn summary(cfg: &NodeConfig, qkd_only: &[[SaeId; 2]]) -> serde_json::Value {
    json!({
        "node": cfg.node.id.to_string(),
        "kme_id": cfg.node.kme_id.to_string(),
        "listen": {
            "etsi014": cfg.node.etsi_listen.to_string(),
            "peer": cfg.node.peer_listen.to_string(),
            "admin": cfg.node.admin_listen.map(|a| a.to_string()),
            "grpc": cfg.grpc.as_ref().map(|g| g.listen.to_string()),
            "skip": cfg.skip.as_ref().map(|s| s.listen.to_string()),
        },
        "tls": {
            "cert": cfg.tls.cert.display().to_string(),
            "ca": cfg.tls.ca.display().to_string(),
        },
        "links": cfg.links.iter().map(|l| json!({
            "id": l.id.to_string(),
            "peer": l.peer.to_string(),
            "role": format!("{:?}", l.role).to_lowercase(),
            "source": l.source.kind(),
            "capacity_bytes": l.capacity_bytes,
        })).collect::<Vec<_>>(),
        "saes": cfg.saes.iter().map(|s| json!({
            "id": s.id.to_string(),
            "node": s.node.to_string(),
            "peers": s.peers.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "pairs": cfg.pairs.iter().map(|p| json!({
            "saes": [p.saes[0].to_string(), p.saes[1].to_string()],
            "policy": p.policy,
            "suite": p.suite,
        })).collect::<Vec<_>>(),
        "qkd_only_pairs": qkd_only.iter().map(|[a, b]| [a.to_string(), b.to_string()]).collect::<Vec<_>>(),
        "relay": {
            "pool_keys": cfg.relay.pool_keys,
            "batch_keys": cfg.relay.batch_keys(),
            "default_policy": cfg.relay.default_policy,
            "default_suite": cfg.relay.default_suite,
        },
        "limits": {
            "key_size": cfg.limits.key_size,
            "min_key_size": cfg.limits.min_key_size,
            "max_key_size": cfg.limits.max_key_size,
            "max_key_per_request": cfg.limits.max_key_per_request,
        },
        "metrics": cfg.metrics.served(&cfg.node),
        "alarms": {
            "qber_max": cfg.alarms.qber_max,
            "pool_min_keys": cfg.alarms.pool_min_keys(&cfg.relay),
            "certificate_warn_days": cfg.alarms.certificate_warn_days,
            "raise_after_ms": cfg.alarms.raise_after_ms,
            "clear_after_ms": cfg.alarms.clear_after_ms,
        },
        "audit": {
            "file": cfg.audit.file.display().to_string(),
            "siem": cfg.audit.siem.as_ref().map(|s| s.address.clone()),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TEST_CONFIG;

    fn certificate(dir: &std::path::Path, name: &str, not_after: (i32, u8, u8)) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["node.test".to_owned()]).expect("params");
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let cert = params.self_signed(&key).expect("certificate");
        std::fs::write(dir.join(name), cert.pem()).expect("write");
    }

    /// The indexed pairs are exactly those of the definition (every SAE against every other),
    /// in the same order, with one-sided peers and a pair with both ends here.
    #[test]
    fn delivery_and_pool_pairs_follow_the_definition() {
        let extra = "\n[[sae]]\nid = \"ENC-A2\"\nnode = \"A\"\npeers = [\"ENC-C\", \"ENC-B\", \"ENC-A\"]\n\
                     \n[[sae]]\nid = \"ENC-C\"\nnode = \"B\"\npeers = [\"ENC-A2\", \"ENC-A\"]\n\
                     \n[[sae]]\nid = \"ENC-B2\"\nnode = \"B\"\npeers = [\"ENC-A2\"]\n";
        let text = TEST_CONFIG
            .replace("peers = [\"ENC-A\"]\n", "peers = [\"ENC-A\", \"ENC-A2\"]\n")
            .replace("peers = [\"ENC-B\"]\n", "peers = [\"ENC-B\", \"ENC-A2\"]\n")
            + extra;
        let cfg =
            NodeConfig::parse(std::path::Path::new("node.toml"), &text).expect("configuration");
        let here = |x: &SaeId| cfg.saes.iter().any(|s| &s.id == x && s.node == cfg.node.id);
        let mut naive = Vec::new();
        for a in &cfg.saes {
            for b in &cfg.saes {
                let allowed = a.peers.contains(&b.id) && b.peers.contains(&a.id);
                if a.id != b.id && allowed && here(&a.id) != here(&b.id) {
                    naive.push((a.id.clone(), b.id.clone()));
                }
            }
        }
        assert_eq!(delivery_pairs(&cfg), naive);
        let names: Vec<String> = pool_pairs(&cfg)
            .iter()
            .map(|(m, s)| format!("{m}>{s}"))
            .collect();
        assert_eq!(names, ["ENC-A>ENC-B", "ENC-A2>ENC-B", "ENC-A2>ENC-C"]);
    }

    /// The certificates whose expiry is watched include the node's client certificate at each
    /// ETSI 014 device, named after its link.
    #[test]
    fn device_client_certificates_are_watched_by_link() {
        let dir = tempfile::tempdir().expect("temporary directory");
        certificate(dir.path(), "a.pem", (2031, 1, 1));
        certificate(dir.path(), "dev-a.crt", (2030, 6, 1));
        let text = TEST_CONFIG.replace(
            "kind = \"simulated\"\nstart_unix_ms = 0\nmodel = { kind = \"constant-rate\", bits_per_second = 1000000 }\n",
            "kind = \"etsi014\"\nurl = \"https://qkd-a.example:8443\"\n\
             ca = { file = \"dev-ca.pem\" }\nclient_cert = { file = \"dev-a.crt\" }\n\
             client_key = { file = \"dev-a.key\" }\nexpected_kme_id = \"IDQ-1\"\n\
             sae_id = \"node-a\"\npeer_sae_id = 12\n",
        );
        let cfg = NodeConfig::parse(&dir.path().join("node.toml"), &text).expect("configuration");
        let watched = certificates(&cfg);
        let names: Vec<&str> = watched.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["tls.cert", "link.A-B.source.client_cert"],
            "{watched:?}"
        );
        // 2030-06-01T00:00:00Z and 2031-01-01T00:00:00Z, in Unix milliseconds.
        assert_eq!(watched[1].1, 1_906_502_400_000);
        assert_eq!(watched[0].1, 1_924_992_000_000);
    }
}
