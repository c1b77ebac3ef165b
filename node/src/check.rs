//! Checks of a configuration beyond its TOML: every file it names is read and cross-checked
//! ([`offline`]), and, on request, whether the neighbours' peer ports answer ([`online`]) and
//! whether the QKD devices of ETSI 014 links answer and name the expected KME
//! ([`online_devices`]).
//!
//! `qkd-node run` passes [`offline`] before it touches the data directory, so a bad file never
//! costs a store epoch; `qkd-node check` runs the same function. Reachability is never a
//! precondition of `run` (a link that is down goes down and recovers): only `check --online` asks.
//! Errors name the configuration file, the TOML key and the file that is wrong. Nothing here
//! writes a file, and no key bytes reach an error or a log line.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use qkd_kms::hybrid::{NodeSigningKey, PeerKey};
use qkd_kms::tls::{self, TlsFiles};
use qkd_types::Secret;

use qkd_hardware::etsi014::{ConfigError as DeviceConfigError, Etsi014Source};

use crate::config::{ConfigError, GrpcSection, NodeConfig, SourceSection};
use crate::daemon::{ListenRecord, seed_path};

/// Loads and cross-checks every file the configuration names: the TLS certificate (and that it
/// names this node), its key (and that the two belong together), the CA, this node's signing key
/// if it exists yet (it is generated at first start otherwise), every pinned signing key of
/// `[[node_info]]`, the seed of every simulated link, the CA, client certificate and key of
/// every ETSI 014 device link (the key must match the certificate), the files of the gRPC
/// port if `[grpc]` is configured, and the SIEM collector's CA and the client certificate and key
/// of `[audit.siem]`.
pub fn offline(cfg: &NodeConfig) -> Result<(), ConfigError> {
    let err = |key: &str, file: &Path, what: String| {
        let name = file.display().to_string();
        ConfigError {
            file: cfg.path.clone(),
            key: key.to_owned(),
            // TLS errors name their file already.
            what: if what.contains(&name) {
                what
            } else {
                format!("{name}: {what}")
            },
        }
    };
    let certs = tls::load_certs(&cfg.tls.cert)
        .map_err(|e| err("tls.cert", &cfg.tls.cert, e.to_string()))?;
    let leaf = certs
        .first()
        .ok_or_else(|| err("tls.cert", &cfg.tls.cert, "no certificate".into()))?;
    match tls::node_id(leaf) {
        Ok(id) if id == cfg.node.id => {}
        Ok(id) => {
            return Err(err(
                "tls.cert",
                &cfg.tls.cert,
                format!(
                    "the certificate names node {id}, but node.id is {}",
                    cfg.node.id
                ),
            ));
        }
        Err(e) => {
            return Err(err(
                "tls.cert",
                &cfg.tls.cert,
                format!(
                    "{e}: neighbours identify a node only by its {}{} URI SAN",
                    tls::NODE_URI_PREFIX,
                    cfg.node.id
                ),
            ));
        }
    }
    tls::load_private_key(&cfg.tls.key).map_err(|e| err("tls.key", &cfg.tls.key, e.to_string()))?;
    tls::load_roots(&cfg.tls.ca).map_err(|e| err("tls.ca", &cfg.tls.ca, e.to_string()))?;
    // Building the configurations checks the key against the certificate and the CA as a
    // client verifier, exactly as `run` will.
    let files = tls_files(cfg);
    for result in [
        tls::server_config(&files).map(drop),
        tls::peer_server_config(&files).map(drop),
        tls::peer_client_config(&files).map(drop),
    ] {
        result.map_err(|e| match e {
            tls::TlsError::Config { source, .. } => err(
                "tls.key",
                &cfg.tls.key,
                format!(
                    "does not fit the certificate {}: {source}",
                    cfg.tls.cert.display()
                ),
            ),
            e => err("tls.ca", &cfg.tls.ca, e.to_string()),
        })?;
    }

    if let Some(g) = &cfg.grpc {
        check_grpc_tls(cfg, g)?;
    }
    if let Some(c) = &cfg.control {
        // The certificate and key were read for [tls] above: only the CA can fail here.
        let files = control_tls_files(cfg, c);
        let key = if c.ca.is_some() {
            "control.ca"
        } else {
            "tls.ca"
        };
        tls::server_config(&files).map_err(|e| err(key, &files.ca, e.to_string()))?;
    }
    if let Some(s) = &cfg.audit.siem {
        tls::load_roots(&s.ca).map_err(|e| err("audit.siem.ca", &s.ca, e.to_string()))?;
        if let Some(c) = &s.client_cert {
            tls::load_certs(c).map_err(|e| err("audit.siem.client_cert", c, e.to_string()))?;
        }
        if let Some(k) = &s.client_key {
            tls::load_private_key(k).map_err(|e| err("audit.siem.client_key", k, e.to_string()))?;
        }
        crate::siem::files(s)
            .load()
            .map_err(|e| match (e, &s.client_key) {
                (tls::TlsError::Config { source, .. }, Some(k)) => err(
                    "audit.siem.client_key",
                    k,
                    format!("does not fit audit.siem.client_cert: {source}"),
                ),
                (e, _) => err("audit.siem.ca", &s.ca, e.to_string()),
            })?;
    }
    if cfg.audit.file.is_dir() {
        return Err(err(
            "audit.file",
            &cfg.audit.file,
            "is a directory; name the log file".into(),
        ));
    }

    read_signing_key(&cfg.relay.signing_key)
        .map_err(|e| err("relay.signing_key", &cfg.relay.signing_key, e))?;
    for (i, n) in cfg.nodes.iter().enumerate() {
        if let Some(p) = &n.signing_public_key {
            read_peer_key(p)
                .map_err(|e| err(&format!("node_info[{i}].signing_public_key"), p, e))?;
        }
    }
    for (i, link) in cfg.links.iter().enumerate() {
        match &link.source {
            SourceSection::Simulated { .. } => {
                let p = seed_path(&cfg.node.data_dir, &link.id);
                read_seed(&p).map_err(|e| err(&format!("link[{i}].source"), &p, e))?;
            }
            // The adapter's own offline check: PEM files read, the key matches the
            // certificate, the CA parses, the values make sense.
            SourceSection::Etsi014(dev) => {
                dev.load_tls().map_err(|e| ConfigError {
                    file: cfg.path.clone(),
                    key: format!("link[{i}].source.{}", device_member(&e)),
                    what: e.to_string(),
                })?;
            }
        }
    }
    Ok(())
}

/// Checks that the node's certificate covers what its neighbours dial, as far as this node's
/// configuration shows it (run by `qkd-node check` and `qkdctl check` after [`offline`]):
///
/// * the `urn:qkd:node:<id>` URI SAN, by which neighbours identify it ([`offline`] checks it);
/// * the address of `node.peer_listen`, when it is a specific address: a neighbour without a
///   `server_name` verifies the certificate against the IP it dials, so the certificate must
///   name that IP, or carry a DNS name for neighbours to dial it by (their
///   `neighbour.server_name`; [`summary`] lists them).
///
/// What a neighbour's certificate covers is not in this configuration (it names neighbours by
/// address, not by certificate): `check --online` reports a neighbour whose certificate does
/// not name what this node dials, naming the `[[neighbour]]` field.
///
/// Not part of `run`: an address translated on the way (a neighbour dialling a public address
/// that reaches a private `peer_listen`) is the operator's to know.
pub fn names(cfg: &NodeConfig) -> Result<(), ConfigError> {
    let fail = |what: String| ConfigError {
        file: cfg.path.clone(),
        key: "tls.cert".into(),
        what: format!("{}: {what}", cfg.tls.cert.display()),
    };
    let leaf = tls::load_certs(&cfg.tls.cert)
        .map_err(|e| fail(e.to_string()))?
        .into_iter()
        .next()
        .ok_or_else(|| fail("no certificate".into()))?;
    let ip = cfg.node.peer_listen.ip();
    if ip.is_unspecified() {
        return Ok(());
    }
    let names = tls::dns_and_ip_names(&leaf).map_err(|e| fail(e.to_string()))?;
    if names.contains(&tls::SanName::Ip(ip))
        || names.iter().any(|n| matches!(n, tls::SanName::Dns(_)))
    {
        return Ok(());
    }
    let named = if names.is_empty() {
        "no DNS name or IP address".to_owned()
    } else {
        names
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(fail(format!(
        "the certificate names {named} but not node.peer_listen's address {ip}, and no DNS name \
         neighbours could dial instead: neighbours dial {ip} and would refuse it; issue it with \
         the IP address SAN {ip} (or a DNS name, set as the neighbours' server_name)"
    )))
}

/// The member of a `[link.source]` device section that an adapter configuration error is about.
fn device_member(e: &DeviceConfigError) -> String {
    match e {
        DeviceConfigError::Read { what, .. } | DeviceConfigError::Pem { what, .. } => {
            (*what).to_owned()
        }
        DeviceConfigError::KeyMismatch(_) => "client_key".into(),
        DeviceConfigError::Url { .. } => "url".into(),
        DeviceConfigError::KeyBits(_) => "key_bits".into(),
        DeviceConfigError::Limit(name) => format!("limits.{name}"),
        // Settings rustls refuses as a whole (versions and suites): the section itself.
        DeviceConfigError::Tls(_) => "allow_tls12".into(),
    }
}

/// What `check --online` found for one device link.
#[derive(Debug)]
pub struct DeviceReach {
    /// The link.
    pub link: String,
    /// `Ok(description)` if the device answered and named the expected KME, else why not.
    pub result: Result<String, String>,
}

/// Asks the device of every ETSI 014 link for its status (the adapter's online check): it must
/// answer over mutual TLS, name the expected KME and this node's SAE, and serve a usable key
/// size. No key is requested.
pub async fn online_devices(cfg: &NodeConfig) -> Vec<DeviceReach> {
    let mut out = Vec::new();
    for link in &cfg.links {
        let SourceSection::Etsi014(dev) = &link.source else {
            continue;
        };
        let result = match Etsi014Source::new(dev.clone(), link.role.link_role()) {
            Err(e) => Err(e.to_string()),
            Ok(source) => source
                .check_online()
                .await
                .map(|r| {
                    let stored = r
                        .stored_key_count
                        .map_or_else(|| "not advertised".to_owned(), |n| n.to_string());
                    format!(
                        "{} answers as KME {} (expected); {}-bit keys, {} per request, {stored} \
                         stored",
                        dev.url, r.kme_id, r.key_bits, r.keys_per_request
                    )
                })
                .map_err(|e| format!("{}: {e}", dev.url)),
        };
        out.push(DeviceReach {
            link: link.id.to_string(),
            result,
        });
    }
    out
}

/// The TLS files of the configuration.
pub fn tls_files(cfg: &NodeConfig) -> TlsFiles {
    TlsFiles {
        cert_chain: cfg.tls.cert.clone(),
        key: cfg.tls.key.clone(),
        ca: cfg.tls.ca.clone(),
    }
}

/// The TLS files of the gRPC key delivery port: its own where `[grpc]` names them, else `[tls]`'s.
pub fn grpc_tls_files(cfg: &NodeConfig, g: &GrpcSection) -> TlsFiles {
    TlsFiles {
        cert_chain: g.cert.clone().unwrap_or_else(|| cfg.tls.cert.clone()),
        key: g.key.clone().unwrap_or_else(|| cfg.tls.key.clone()),
        ca: g.ca.clone().unwrap_or_else(|| cfg.tls.ca.clone()),
    }
}

/// What `qkd-node check` and `qkdctl check` print about a configuration that passed
/// [`offline`]: what it configures, in a few lines.
pub fn summary(file: &Path, cfg: &NodeConfig) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: OK (node {}, {} links, {} SAEs; every named file read)",
        file.display(),
        cfg.node.id,
        cfg.links.len(),
        cfg.saes.len()
    );
    let _ = writeln!(
        out,
        "audit log {}{}; metrics {}; alarms: QBER above {:.1} %, pools below {} keys, \
         certificates within {} days of expiry",
        cfg.audit.file.display(),
        cfg.audit
            .siem
            .as_ref()
            .map(|s| format!(", forwarded to {} over TLS", s.address))
            .unwrap_or_default(),
        if cfg.metrics.served(&cfg.node) {
            "at /metrics on the admin listener"
        } else {
            "off"
        },
        cfg.alarms.qber_max * 100.0,
        cfg.alarms.pool_min_keys(&cfg.relay),
        cfg.alarms.certificate_warn_days
    );
    if let Some(line) = peer_names(cfg) {
        let _ = writeln!(out, "{line}");
    }
    if let Some(skip) = &cfg.skip {
        let _ = writeln!(
            out,
            "SKIP Key Provider {} on {}: {} routes",
            skip.local_system_id,
            skip.listen,
            skip.routes.len()
        );
    }
    if let Some(c) = &cfg.control {
        let _ = writeln!(
            out,
            "control listener on {}: management certificates (urn:qkd:operator:) chaining to {}",
            c.listen,
            c.ca.as_deref().unwrap_or(&cfg.tls.ca).display()
        );
    }
    out
}

/// What neighbours may dial this node as: the certificate's names, and whether they include
/// `node.peer_listen`'s address.
fn peer_names(cfg: &NodeConfig) -> Option<String> {
    let leaf = tls::load_certs(&cfg.tls.cert).ok()?.into_iter().next()?;
    let names = tls::dns_and_ip_names(&leaf).ok()?;
    let ip = cfg.node.peer_listen.ip();
    let list = names
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let note = if ip.is_unspecified() {
        String::new()
    } else if names.contains(&tls::SanName::Ip(ip)) {
        format!(" (node.peer_listen's {ip} included)")
    } else {
        format!(
            " (not node.peer_listen's {ip}: neighbours must set server_name to one of the DNS \
             names)"
        )
    };
    Some(format!(
        "peer certificate: urn:qkd:node:{}, {list}{note}",
        cfg.node.id
    ))
}

/// The control listener's TLS files: the node's certificate, the operators' CA.
pub fn control_tls_files(cfg: &NodeConfig, c: &crate::config::ControlSection) -> TlsFiles {
    TlsFiles {
        cert_chain: cfg.tls.cert.clone(),
        key: cfg.tls.key.clone(),
        ca: c.ca.clone().unwrap_or_else(|| cfg.tls.ca.clone()),
    }
}

/// Loads the gRPC port's TLS files and builds its configuration exactly as `run` will; errors
/// name the `[grpc]` key when the file is the port's own, the `[tls]` key otherwise.
fn check_grpc_tls(cfg: &NodeConfig, g: &GrpcSection) -> Result<(), ConfigError> {
    let files = grpc_tls_files(cfg, g);
    let key_of = |own: bool, name: &str| {
        if own {
            format!("grpc.{name}")
        } else {
            format!("tls.{name}")
        }
    };
    let fail = |key: String, file: &Path, e: tls::TlsError| {
        let what = e.to_string();
        let name = file.display().to_string();
        ConfigError {
            file: cfg.path.clone(),
            key,
            what: if what.contains(&name) {
                what
            } else {
                format!("{name}: {what}")
            },
        }
    };
    let (cert_key, key_key, ca_key) = (
        key_of(g.cert.is_some(), "cert"),
        key_of(g.key.is_some(), "key"),
        key_of(g.ca.is_some(), "ca"),
    );
    tls::load_certs(&files.cert_chain).map_err(|e| fail(cert_key, &files.cert_chain, e))?;
    tls::load_private_key(&files.key).map_err(|e| fail(key_key.clone(), &files.key, e))?;
    tls::load_roots(&files.ca).map_err(|e| fail(ca_key.clone(), &files.ca, e))?;
    tls::grpc_server_config(&files)
        .map(drop)
        .map_err(|e| match e {
            tls::TlsError::Config { .. } => fail(key_key, &files.key, e),
            e => fail(ca_key, &files.ca, e),
        })
}

/// This node's signing key, if the file exists (hex of the raw seeds).
pub fn read_signing_key(path: &Path) -> Result<Option<NodeSigningKey>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => zeroize::Zeroizing::new(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read: {e}")),
    };
    let raw = zeroize::Zeroizing::new(
        hex::decode(text.trim()).map_err(|_| "is not a hex-encoded signing key".to_string())?,
    );
    NodeSigningKey::from_raw(Secret::copy_from(&raw))
        .map(Some)
        .map_err(|e| e.to_string())
}

/// A pinned signing public key (hex, as the node writes it beside its signing key).
pub fn read_peer_key(path: &Path) -> Result<PeerKey, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let bytes =
        hex::decode(text.trim()).map_err(|_| "is not a hex-encoded public key".to_string())?;
    PeerKey::from_bytes(&bytes).map_err(|e| e.to_string())
}

/// A simulated link's seed.
pub fn read_seed(path: &Path) -> Result<Secret, String> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| format!("cannot read the link seed: {e}"))?,
    );
    qkd_simulator::link::SimulatedLink::parse_seed(&text).map_err(|e| e.to_string())
}

/// What `check --online` found for one neighbour.
#[derive(Debug)]
pub struct Reach {
    /// The neighbour's node ID.
    pub neighbour: String,
    /// `Ok(description)` if its peer port completed a TLS handshake and named it, else why not.
    pub result: Result<String, String>,
}

/// Tries a TLS handshake with every neighbour's peer port (the same mutual TLS 1.3 with
/// X25519MLKEM768 that the relay uses) and checks that the server's certificate names the
/// neighbour. Nothing is sent after the handshake.
pub async fn online(cfg: &NodeConfig) -> Vec<Reach> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let client = match tls::peer_client_config(&tls_files(cfg)) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            return cfg
                .neighbours
                .iter()
                .map(|n| Reach {
                    neighbour: n.id.to_string(),
                    result: Err(e.to_string()),
                })
                .collect();
        }
    };
    let mut out = Vec::new();
    for (i, n) in cfg.neighbours.iter().enumerate() {
        let addr: Result<SocketAddr, String> = match (n.peer_addr, &n.peer_addr_file) {
            (Some(a), _) => Ok(a),
            (None, Some(f)) => std::fs::read(f)
                .ok()
                .and_then(|b| serde_json::from_slice::<ListenRecord>(&b).ok())
                .map(|r| r.peer)
                .ok_or_else(|| {
                    format!(
                        "{} does not record an address (not started yet?)",
                        f.display()
                    )
                }),
            (None, None) => Err("no address configured".into()),
        };
        let result = match addr {
            Ok(addr) => {
                let name = n
                    .server_name
                    .clone()
                    .unwrap_or_else(|| addr.ip().to_string());
                let field = match (&n.server_name, n.peer_addr) {
                    (Some(_), _) => format!("neighbour[{i}].server_name"),
                    (None, Some(_)) => format!("neighbour[{i}].peer_addr"),
                    (None, None) => format!("neighbour[{i}].peer_addr_file"),
                };
                handshake(addr, &name, client.clone(), &n.id)
                    .await
                    .map_err(|e| match e {
                        Failure::Name(why) => format!(
                            "{why} ({}: {field}: this node dials it as {name:?}; the neighbour's \
                             certificate must name it, or {field} must name what it does)",
                            cfg.path.display()
                        ),
                        Failure::Other(why) => why,
                    })
            }
            Err(e) => Err(e),
        };
        out.push(Reach {
            neighbour: n.id.to_string(),
            result,
        });
    }
    out
}

/// Why a handshake with a neighbour failed.
enum Failure {
    /// Its certificate does not name what this node dials.
    Name(String),
    /// Anything else.
    Other(String),
}

impl From<String> for Failure {
    fn from(why: String) -> Self {
        Failure::Other(why)
    }
}

async fn handshake(
    addr: SocketAddr,
    name: &str,
    client: Arc<rustls::ClientConfig>,
    expect: &qkd_types::NodeId,
) -> Result<String, Failure> {
    const TIMEOUT: Duration = Duration::from_secs(5);
    let server_name = rustls::pki_types::ServerName::try_from(name.to_owned())
        .map_err(|_| format!("invalid server name {name:?}"))?;
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("{addr}: cannot connect: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(client)
            .connect(server_name, tcp)
            .await
            .map_err(|e| {
                use rustls::CertificateError as C;
                let why = format!("{addr}: TLS handshake failed: {e}");
                match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    Some(rustls::Error::InvalidCertificate(
                        C::NotValidForName | C::NotValidForNameContext { .. },
                    )) => Failure::Name(why),
                    _ => Failure::Other(why),
                }
            })?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| format!("{addr}: no server certificate"))?;
        match tls::node_id(leaf) {
            Ok(id) if &id == expect => Ok(format!(
                "{addr}: TLS 1.3 handshake OK, certificate names node {id}"
            )),
            Ok(id) => Err(Failure::Other(format!(
                "{addr}: the certificate names node {id}, expected {expect}"
            ))),
            Err(e) => Err(Failure::Other(format!("{addr}: {e}"))),
        }
    };
    tokio::time::timeout(TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(Failure::Other(format!(
                "{addr}: no answer within {} s",
                TIMEOUT.as_secs()
            )))
        })
}
