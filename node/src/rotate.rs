//! Rotation without a restart: the node's certificates and the store's key-encryption key
//! (`qkdctl rotate certs|kek`, through the control listener).
//!
//! **Certificates.** Every TLS endpoint the node serves or dials with holds its credentials in a
//! [`LiveTls`] (ETSI 014 and SKIP, the peer listener and the client identity for peers, gRPC,
//! the control listener); the SIEM forwarder and each ETSI 014 device adapter hold theirs
//! likewise ([`Forwarder::install_tls`],
//! [`qkd_hardware::etsi014::Etsi014Source::install_tls`]).
//! [`Rotator::rotate_certs`] re-reads every one's certificate, key and CA file, checks all of
//! them ([`check`], [`check_client`]: well-formed, key matches certificate, valid now, the same
//! `urn:qkd:node:` identity, and chaining to a CA the node holds), and only if every one passes
//! installs them all: new handshakes present the new certificate and trust the new CA file;
//! connections already up continue (the SIEM connection is closed between two messages and
//! reopened at once; a device request under way finishes on its connection). One bad file
//! refuses the whole rotation, naming the file, and changes nothing.
//!
//! **The chain rule** ([`chains`]). Every new certificate must chain to a CA of its endpoint's
//! CA file (`[grpc] ca`, `[audit.siem] ca`, a device link's `ca`) or of the node's `[tls] ca`,
//! as they are on disk at the rotation, so a CA roll-over adds the new CA to the CA file first
//! (docs/operations.md, "Rotate certificates"). When the running certificate chains to neither
//! (its CA is one the node does not hold), the new one must at least name the same issuer. The
//! SIEM and device client certificates must also keep their subject: a rotation never changes
//! who the node is there.
//!
//! **KEK.** [`Rotator::rotate_kek`] asks the store writer for a fresh data-key epoch under a new
//! KEK period ([`qkd_kms::writer::Writer::rotate_kek`]); the older epochs are re-encrypted in
//! bounded steps between batches and their KEK files deleted once no epoch needs them.
//!
//! Both are audited (`control_action`, actions `rotate_certs` and `rotate_kek`) whatever the
//! outcome. This module never reads or logs key bytes: private keys go from file to rustls.

use std::sync::{Arc, Mutex};

use qkd_hardware::KeySource;
use qkd_hardware::etsi014::{DeviceTls, PemSource};
use qkd_kms::tls::{self, Credentials, LiveTls};
use qkd_kms::writer::Writer;
use qkd_types::{Clock, LinkId, NodeId, UnixMillis};
use rustls::pki_types::CertificateDer;

use crate::audit::{AuditEvent, AuditLog, rfc3339};
use crate::monitor::Monitor;
use crate::reload::Outcome;
use crate::siem::{Forwarder, SiemTls};

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
    /// The node's own endpoints; the first is `[tls]`, whose CA file is the node's CA.
    endpoints: Vec<Endpoint>,
    /// The SIEM forwarder, if `[audit.siem]` is configured.
    siem: Option<Arc<Forwarder>>,
    /// Every link's key source; those backed by an ETSI 014 device are rotated.
    devices: Vec<(LinkId, Arc<dyn KeySource>)>,
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
            siem: None,
            devices: Vec::new(),
            writer,
            monitor,
            clock,
            audit,
            busy: Mutex::new(()),
        }
    }

    /// Also rotates the SIEM forwarder's credentials and those of the links' ETSI 014 devices.
    pub fn with_clients(
        mut self,
        siem: Option<Arc<Forwarder>>,
        devices: Vec<(LinkId, Arc<dyn KeySource>)>,
    ) -> Self {
        self.siem = siem;
        self.devices = devices;
        self
    }

    /// Re-reads, checks and (if all pass) installs every endpoint's credentials; `operator`
    /// asked (audited). Blocking: reads files.
    pub fn rotate_certs(&self, operator: &str) -> Outcome {
        let _busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.clock.now();
        let out = match self.check_all(now) {
            Err(why) => Outcome {
                outcome: "refused",
                detail: format!("certificate rotation refused, nothing was changed: {why}"),
            },
            Ok(next) => Outcome {
                outcome: "applied",
                detail: format!(
                    "new TLS handshakes use the certificates and CA files now on disk: {}; \
                     connections already up continue",
                    self.install_all(next).join("; ")
                ),
            },
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

    /// Loads and checks everything; the first failure, naming what uses it and the file.
    fn check_all(&self, now: UnixMillis) -> Result<Next, String> {
        // `[tls]` first: its CA file, as the rotation will install it, is the node's CA (a
        // roll-over adds the new CA to it first).
        let mut node: Vec<Credentials> = Vec::new();
        let mut node_ca: Option<Anchor> = None;
        for e in &self.endpoints {
            let next =
                check(e, node_ca.as_ref(), now).map_err(|why| format!("{}: {why}", e.used_by))?;
            if node_ca.is_none() {
                node_ca = Some(Anchor {
                    file: e.tls.files().ca.display().to_string(),
                    roots: next.roots().clone(),
                });
            }
            node.push(next);
        }
        let siem = match &self.siem {
            None => None,
            Some(f) => {
                let next = f.reload_tls().map_err(|e| format!("[audit.siem]: {e}"))?;
                if let (Some(creds), Some(running), Some((cert, _))) =
                    (next.client(), f.current_tls().client(), &f.files().client)
                {
                    let mut anchors = vec![Anchor {
                        file: f.files().ca.display().to_string(),
                        roots: next.roots().clone(),
                    }];
                    anchors.extend(node_ca.clone());
                    check_client(
                        Replacement {
                            file: &cert.display().to_string(),
                            chain: creds.chain(),
                            running: running.chain(),
                        },
                        &anchors,
                        now,
                    )
                    .map_err(|why| format!("[audit.siem]: {why}"))?;
                }
                Some((f.clone(), next))
            }
        };
        let mut devices = Vec::new();
        for (link, source) in &self.devices {
            let Some(dev) = source.as_etsi014() else {
                continue;
            };
            let used_by = format!("link {link} device");
            let next = dev
                .reload_tls()
                .map_err(|e| format!("{used_by}: link.{link}.source: {e}"))?;
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(next.ca().iter().cloned());
            let mut anchors = vec![Anchor {
                file: dev.config().ca.describe(),
                roots: Arc::new(roots),
            }];
            anchors.extend(node_ca.clone());
            check_client(
                Replacement {
                    file: &dev.config().client_cert.describe(),
                    chain: next.chain(),
                    running: &dev.client_chain(),
                },
                &anchors,
                now,
            )
            .map_err(|why| format!("{used_by}: {why}"))?;
            devices.push((link.clone(), source.clone(), next));
        }
        Ok(Next {
            node,
            siem,
            devices,
        })
    }

    /// Installs what [`Rotator::check_all`] returned; what was installed, for people.
    fn install_all(&self, next: Next) -> Vec<String> {
        let mut done = Vec::new();
        for (e, creds) in self.endpoints.iter().zip(next.node) {
            let expiry = tls::not_after(creds.end_entity()).unwrap_or(0);
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
        if let Some((f, tls)) = next.siem {
            match (tls.client(), &f.files().client) {
                (Some(creds), Some((cert, _))) => {
                    let expiry = tls::not_after(creds.end_entity()).unwrap_or(0);
                    self.monitor
                        .set_certificate("audit.siem.client_cert", expiry);
                    done.push(format!(
                        "[audit.siem] ({}, valid until {}; reconnecting)",
                        cert.display(),
                        rfc3339(expiry)
                    ));
                }
                _ => done.push(format!(
                    "[audit.siem] (CA {}; reconnecting)",
                    f.files().ca.display()
                )),
            }
            f.install_tls(tls);
        }
        for (link, source, tls) in next.devices {
            let Some(dev) = source.as_etsi014() else {
                continue;
            };
            let expiry = tls
                .chain()
                .first()
                .and_then(|leaf| tls::not_after(leaf).ok())
                .unwrap_or(0);
            if let PemSource::File(_) = &dev.config().client_cert {
                self.monitor
                    .set_certificate(&format!("link.{link}.source.client_cert"), expiry);
            }
            done.push(format!(
                "link {link} device ({}, valid until {}; from its next request)",
                dev.config().client_cert.describe(),
                rfc3339(expiry)
            ));
            dev.install_tls(tls);
        }
        done
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
/// key matching certificate, valid now, naming the same node (`urn:qkd:node:` URI SAN) as
/// before (or none, if the running one names none), and chaining to a CA of the endpoint's CA
/// file as it is on disk now or of `node_ca` ([`chains`]).
pub fn check(
    e: &Endpoint,
    node_ca: Option<&Anchor>,
    now: UnixMillis,
) -> Result<Credentials, String> {
    let next = Credentials::load(e.tls.files()).map_err(|err| err.to_string())?;
    let file = e.tls.files().cert_chain.display().to_string();
    let leaf = next.end_entity();
    valid_now(&file, leaf, now)?;
    let running = e.tls.current();
    same_node(&file, leaf, running.end_entity())?;
    let mut anchors = vec![Anchor {
        file: e.tls.files().ca.display().to_string(),
        roots: next.roots().clone(),
    }];
    anchors.extend(node_ca.filter(|a| a.file != anchors[0].file).cloned());
    chains(
        Replacement {
            file: &file,
            chain: next.chain(),
            running: running.chain(),
        },
        &anchors,
        now,
    )?;
    Ok(next)
}

/// A CA file a client certificate may chain to.
#[derive(Debug, Clone)]
pub struct Anchor {
    /// The file, for errors.
    pub file: String,
    /// Its certificates.
    pub roots: Arc<rustls::RootCertStore>,
}

/// A certificate chain about to replace the running one.
#[derive(Debug, Clone, Copy)]
pub struct Replacement<'a> {
    /// The certificate file, for errors.
    pub file: &'a str,
    /// The new chain, end entity first.
    pub chain: &'a [CertificateDer<'static>],
    /// The running chain.
    pub running: &'a [CertificateDer<'static>],
}

impl<'a> Replacement<'a> {
    /// The two end-entity certificates, new and running.
    fn leaves(&self) -> Result<(&'a CertificateDer<'static>, &'a CertificateDer<'static>), String> {
        match (self.chain.first(), self.running.first()) {
            (Some(leaf), Some(was)) => Ok((leaf, was)),
            _ => Err(format!("{}: no certificate", self.file)),
        }
    }
}

/// Checks a client certificate the node presents elsewhere (to its SIEM collector, a QKD
/// device) before it replaces the running one: valid now, the same node identity and subject
/// as the running one, and [`chains`] to one of `anchors`.
pub fn check_client(r: Replacement<'_>, anchors: &[Anchor], now: UnixMillis) -> Result<(), String> {
    let file = r.file;
    let (leaf, was) = r.leaves()?;
    valid_now(file, leaf, now)?;
    same_node(file, leaf, was)?;
    let (subject, was_subject) = (tls::subject(leaf), tls::subject(was));
    if subject != was_subject {
        return Err(format!(
            "{file}: the certificate's subject is {} but the running one's is {}: a rotation \
             never changes who the node is to the other side",
            subject.unwrap_or_default(),
            was_subject.unwrap_or_default()
        ));
    }
    chains(r, anchors, now)
}

/// The chain rule: the new chain chains to a CA of one of `anchors` at `now`, or, if the
/// running chain chains to none of them (its CA is one the node does not hold), names the same
/// issuer.
pub fn chains(r: Replacement<'_>, anchors: &[Anchor], now: UnixMillis) -> Result<(), String> {
    let Replacement {
        file,
        chain,
        running,
    } = r;
    let (leaf, was) = r.leaves()?;
    if anchors
        .iter()
        .any(|a| tls::chains_to(chain, &a.roots, now).is_ok())
    {
        return Ok(());
    }
    let files = anchors
        .iter()
        .map(|a| a.file.as_str())
        .collect::<Vec<_>>()
        .join(" or ");
    if anchors
        .iter()
        .any(|a| tls::chains_to(running, &a.roots, now).is_ok())
    {
        let problem = anchors
            .first()
            .and_then(|a| tls::chains_to(chain, &a.roots, now).err())
            .map(|e| tls::chain_problem(&e))
            .unwrap_or_default();
        return Err(format!(
            "{file} does not chain to a CA in {files} (the running certificate does): {problem}"
        ));
    }
    // The running certificate's CA is not one the node holds: the issuer name is all there is
    // to compare.
    let (issuer, was_issuer) = (tls::issuer(leaf), tls::issuer(was));
    if issuer != was_issuer {
        return Err(format!(
            "{file}: the certificate is issued by {} but the running one by {} (a CA in neither \
             {files}); add the new CA to one of them first",
            issuer.unwrap_or_default(),
            was_issuer.unwrap_or_default()
        ));
    }
    Ok(())
}

/// The certificate is within its validity at `now`.
fn valid_now(file: &str, leaf: &CertificateDer<'_>, now: UnixMillis) -> Result<(), String> {
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
    Ok(())
}

/// The certificate names the same node (`urn:qkd:node:` URI SAN) as `running`, or none if it
/// names none.
fn same_node(
    file: &str,
    leaf: &CertificateDer<'_>,
    running: &CertificateDer<'_>,
) -> Result<(), String> {
    let was = tls::node_id(running).ok();
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
    Ok(())
}

/// Everything a rotation installs, checked.
struct Next {
    node: Vec<Credentials>,
    siem: Option<(Arc<Forwarder>, SiemTls)>,
    devices: Vec<(LinkId, Arc<dyn KeySource>, DeviceTls)>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use qkd_testnet_pki::TestCa;
    use rustls::pki_types::pem::PemObject;

    use super::*;

    /// 2030-01-01, inside the test certificates' validity.
    const NOW: UnixMillis = 1_893_456_000_000;

    fn chain(pem: &str) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .map(Result::unwrap)
            .collect()
    }

    fn anchor(ca: &TestCa) -> Anchor {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(chain(&ca.pem));
        Anchor {
            file: "ca.pem".into(),
            roots: Arc::new(roots),
        }
    }

    fn check(new: &str, running: &str, anchors: &[Anchor]) -> Result<(), String> {
        let (new, running) = (chain(new), chain(running));
        check_client(
            Replacement {
                file: "client.crt",
                chain: &new,
                running: &running,
            },
            anchors,
            NOW,
        )
    }

    /// The chain rule and the subject rule of a client certificate's rotation.
    #[test]
    fn a_client_certificate_keeps_its_subject_and_chains_to_a_ca_the_node_holds() {
        let (held, vendor, stranger) = (
            TestCa::new("held CA"),
            TestCa::new("vendor CA"),
            TestCa::new("stranger CA"),
        );
        let anchors = [anchor(&held)];
        let running = held.client("node-a").0;
        check(&held.client("node-a").0, &running, &anchors).unwrap();
        let e = check(&stranger.client("node-a").0, &running, &anchors).unwrap_err();
        assert!(
            e.starts_with(
                "client.crt does not chain to a CA in ca.pem (the running certificate does)"
            ),
            "{e}"
        );
        let e = check(&held.client("node-b").0, &running, &anchors).unwrap_err();
        assert!(
            e.contains("subject is CN=node-b but the running one's is CN=node-a"),
            "{e}"
        );

        // A running certificate from a CA the node does not hold: the same issuer name is all
        // that can be checked.
        let running = vendor.client("node-a").0;
        check(&vendor.client("node-a").0, &running, &anchors).unwrap();
        check(&held.client("node-a").0, &running, &anchors).unwrap();
        let e = check(&stranger.client("node-a").0, &running, &anchors).unwrap_err();
        assert!(
            e.contains("issued by CN=stranger CA but the running one by CN=vendor CA"),
            "{e}"
        );
    }
}
