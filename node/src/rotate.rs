//! Rotation without a restart: the node's certificates and the store's key-encryption key
//! (`qkdctl rotate certs|kek`, through the control listener).
//!
//! **Certificates.** Every TLS endpoint the node serves or dials with holds its credentials in a
//! [`LiveTls`] (ETSI 014 and SKIP, the peer listener and the client identity for peers, gRPC,
//! the control listener). [`Rotator::rotate_certs`] re-reads every endpoint's certificate, key and
//! CA file, checks all of them ([`check`]: well-formed, key matches certificate, valid now, the
//! same `urn:qkd:node:` identity), and only if every one passes installs them all: new
//! handshakes present the new certificate and trust the new CA file; connections already up
//! continue. One bad file refuses the whole rotation, naming the file, and changes nothing.
//! The SIEM client and the device client certificates are not rotated live (a restart does).
//!
//! **KEK.** [`Rotator::rotate_kek`] asks the store writer for a fresh data-key epoch under a new
//! KEK period ([`qkd_kms::writer::Writer::rotate_kek`]); the older epochs are re-encrypted in
//! bounded steps between batches and their KEK files deleted once no epoch needs them.
//!
//! Both are audited (`control_action`, actions `rotate_certs` and `rotate_kek`) whatever the
//! outcome. This module never reads or logs key bytes: private keys go from file to rustls.

use std::sync::{Arc, Mutex};

use qkd_kms::tls::{self, Credentials, LiveTls};
use qkd_kms::writer::Writer;
use qkd_types::{Clock, NodeId, UnixMillis};

use crate::audit::{AuditEvent, AuditLog, rfc3339};
use crate::monitor::Monitor;
use crate::reload::Outcome;

/// One set of TLS files the node uses, and what uses it.
#[derive(Debug)]
pub struct Endpoint {
    /// What uses it, for people (`[tls] (ETSI 014, peers)`, `[grpc]`, `[control]`).
    pub used_by: String,
    /// The `certificate_expiry` name of its certificate (`tls.cert`, `grpc.cert`), if watched.
    pub watched_as: Option<String>,
    /// The live credentials.
    pub tls: Arc<LiveTls>,
}

/// The rotation shell of a running node.
#[derive(Debug)]
pub struct Rotator {
    endpoints: Vec<Endpoint>,
    writer: Writer,
    monitor: Arc<Monitor>,
    clock: Arc<dyn Clock>,
    audit: AuditLog,
    /// One rotation at a time: two operators racing never interleave their checks and swaps.
    busy: Mutex<()>,
}

impl Rotator {
    /// The shell over `endpoints` (distinct TLS file sets) and the store `writer`.
    pub fn new(
        endpoints: Vec<Endpoint>,
        writer: Writer,
        monitor: Arc<Monitor>,
        clock: Arc<dyn Clock>,
        audit: AuditLog,
    ) -> Self {
        Self {
            endpoints,
            writer,
            monitor,
            clock,
            audit,
            busy: Mutex::new(()),
        }
    }

    /// Re-reads, checks and (if all pass) installs every endpoint's credentials; `operator`
    /// asked (audited). Blocking: reads files.
    pub fn rotate_certs(&self, operator: &str) -> Outcome {
        let _busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.clock.now();
        let checked: Result<Vec<Credentials>, String> = self
            .endpoints
            .iter()
            .map(|e| check(e, now).map_err(|why| format!("{}: {why}", e.used_by)))
            .collect();
        let out = match checked {
            Err(why) => Outcome {
                outcome: "refused",
                detail: format!("certificate rotation refused, nothing was changed: {why}"),
            },
            Ok(next) => {
                let mut done = Vec::new();
                for (e, creds) in self.endpoints.iter().zip(next) {
                    let leaf = creds.end_entity();
                    let expiry = tls::not_after(leaf).unwrap_or(0);
                    if let Some(name) = &e.watched_as {
                        self.monitor.set_certificate(name, expiry);
                    }
                    done.push(format!(
                        "{} ({}, valid until {})",
                        e.used_by,
                        e.tls.files().cert_chain.display(),
                        rfc3339(expiry)
                    ));
                    e.tls.install(creds);
                }
                Outcome {
                    outcome: "applied",
                    detail: format!(
                        "new TLS handshakes use the certificates and CA files now on disk: {}; \
                         connections already up continue",
                        done.join("; ")
                    ),
                }
            }
        };
        self.record(operator, "rotate_certs", &out);
        out
    }

    /// Starts a fresh data-key epoch under a new KEK period, without stopping key delivery;
    /// `operator` asked (audited).
    pub async fn rotate_kek(&self, operator: &str) -> Outcome {
        let out = match self.writer.rotate_kek(self.clock.now()).await {
            Ok(k) => Outcome {
                outcome: "applied",
                detail: format!(
                    "data-key epoch {} started under KEK period {}; {} older epoch(s) are \
                     re-encrypted into it in steps, then their KEK files are deleted",
                    k.epoch, k.period, k.older_epochs
                ),
            },
            Err(e) => Outcome {
                outcome: "refused",
                detail: format!("KEK rotation failed, nothing was changed: {e}"),
            },
        };
        self.record(operator, "rotate_kek", &out);
        out
    }

    fn record(&self, operator: &str, action: &'static str, out: &Outcome) {
        if out.outcome == "refused" {
            tracing::warn!(%operator, %action, "{}", out.detail);
        } else {
            tracing::warn!(%operator, %action, outcome = out.outcome, "{}", out.detail);
        }
        self.audit.record(AuditEvent::ControlAction {
            operator: operator.to_owned(),
            action,
            subject: String::new(),
            outcome: out.outcome,
            detail: out.detail.clone(),
        });
    }
}

/// Loads `e`'s files and checks them against the credentials in force at `now`: well-formed,
/// key matching certificate, valid now, and naming the same node (`urn:qkd:node:` URI SAN) as
/// before (or none, if the running one names none).
pub fn check(e: &Endpoint, now: UnixMillis) -> Result<Credentials, String> {
    let next = Credentials::load(e.tls.files()).map_err(|err| err.to_string())?;
    let file = e.tls.files().cert_chain.display();
    let leaf = next.end_entity();
    let (from, until) = match (tls::not_before(leaf), tls::not_after(leaf)) {
        (Ok(f), Ok(u)) => (f, u),
        _ => return Err(format!("{file}: the certificate is not valid X.509")),
    };
    if until <= now {
        return Err(format!(
            "{file}: the certificate expired at {}",
            rfc3339(until)
        ));
    }
    if from > now {
        return Err(format!(
            "{file}: the certificate is not valid before {}",
            rfc3339(from)
        ));
    }
    let was = tls::node_id(e.tls.current().end_entity()).ok();
    let is = tls::node_id(leaf).ok();
    if was != is {
        let name = |n: &Option<NodeId>| {
            n.as_ref()
                .map_or("no node".to_owned(), |n| format!("node {n}"))
        };
        return Err(format!(
            "{file}: the certificate names {} (urn:qkd:node: URI SAN) but the running one names \
             {}: a rotation never changes the node's identity",
            name(&is),
            name(&was)
        ));
    }
    Ok(next)
}
