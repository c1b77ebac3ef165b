//! The trusted-node daemon: binds its listeners (reusing the ports recorded at first start),
//! opens the store, starts the links, the key manager, the node-to-node gRPC service, the ETSI
//! 014 server, the SKIP Key Provider and the gRPC key delivery server (each if configured), the
//! admin listener (status, alarms, metrics), the alarm monitor and the audit log, and runs until
//! told to stop or until the store fails (then it exits so that it recovers from disk at the
//! next start).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use qkd_hardware::KeySource;
use qkd_hardware::etsi014::Etsi014Source;
use qkd_kms::api::etsi014::ServerLimits;
use qkd_kms::api::grpc::GrpcLimits;
use qkd_kms::api::observe::{ApiCounters, ApiObserver};
use qkd_kms::api::skip::{EntropySource, KeyProvider, OsEntropy, Route};
use qkd_kms::api::{KeyLimits, KeyService};
use qkd_kms::durable::Access;
use qkd_kms::manager::{
    E2eKeys, KeyManager, LinkSetup, LiveConfig, ManagerConfig, NeighbourEntry, RelayConfig,
    SaeEntry,
};
use qkd_kms::store::vault::FileKek;
use qkd_kms::store::{Store, StoreOptions};
use qkd_kms::tls::{LiveTls, SaeIdentityRule, TlsFiles};
use qkd_kms::writer::Writer;
use qkd_simulator::link::{SimLinkConfig, SimulatedLink};
use qkd_types::{Clock, SystemClock};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{NodeConfig, SourceSection};
use crate::monitor::{AuditingObserver, Monitor, MonitorParts};
use crate::operations::{self, Operations};
use crate::status::PairWarning;
use crate::telemetry::EngineMetrics;
use crate::{check, status};

/// Addresses a node listens on, recorded in `<data_dir>/listen.json` once all are bound.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ListenRecord {
    /// Schema version of this file.
    pub version: u32,
    /// ETSI 014 HTTPS address.
    pub etsi: SocketAddr,
    /// Node-to-node gRPC address.
    pub peer: SocketAddr,
    /// Operator status address, if enabled.
    pub admin: Option<SocketAddr>,
    /// gRPC key delivery address, if enabled (absent in records of earlier versions).
    #[serde(default)]
    pub grpc: Option<SocketAddr>,
    /// SKIP Key Provider address, if enabled.
    #[serde(default)]
    pub skip: Option<SocketAddr>,
    /// Control listener address, if enabled.
    #[serde(default)]
    pub control: Option<SocketAddr>,
}

/// Name of the listen record in the data directory.
pub const LISTEN_FILE: &str = "listen.json";

/// Writes a public file (a record, a configuration, a public key) atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    qkd_kms::durable::write_atomic(path, bytes, Access::Public)
}

/// Binds `want`, or, when its port is 0 and an earlier start recorded a port for the same IP,
/// that port, so a restarted node serves on the same addresses as before.
///
/// SO_REUSEADDR is set, so that a port whose previous owner was just killed (connections in
/// TIME_WAIT) can be bound again; if the port is still in use (the old process not yet reaped),
/// binding is retried briefly with exponential backoff (about 6 s in all) before giving up.
async fn bind(want: SocketAddr, recorded: Option<SocketAddr>, what: &str) -> Result<TcpListener> {
    use backon::{ExponentialBuilder, Retryable};
    let addr = match recorded {
        Some(r) if want.port() == 0 && r.ip() == want.ip() => r,
        _ => want,
    };
    let attempt = || async move { bind_reusable(addr) };
    attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(50))
                .with_max_delay(Duration::from_secs(1))
                .with_max_times(10),
        )
        .when(|e: &std::io::Error| e.kind() == std::io::ErrorKind::AddrInUse)
        .notify(|e, after| {
            tracing::info!(%addr, error = %e, retry_in = ?after, "{what} address in use; retrying");
        })
        .await
        .with_context(|| format!("cannot bind the {what} listener to {addr}"))
}

fn bind_reusable(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// The SAE pairs with an SAE attached to this node that are configured `qkd-only` (by a
/// `[[pair]]` entry or by `relay.default_policy`), each with the warning the operator must see.
pub fn qkd_only_pairs(cfg: &NodeConfig) -> Result<Vec<PairWarning>> {
    use qkd_kms::hybrid::Protection;
    let mut out = Vec::new();
    for a in &cfg.saes {
        for b in cfg.saes.iter().filter(|b| a.id < b.id) {
            let allowed = a.peers.contains(&b.id) && b.peers.contains(&a.id);
            let local = a.node == cfg.node.id || b.node == cfg.node.id;
            if !allowed || !local {
                continue;
            }
            let entry = cfg
                .pairs
                .iter()
                .find(|p| p.saes.contains(&a.id) && p.saes.contains(&b.id));
            let mode = cfg
                .key_mode(
                    entry.and_then(|p| p.policy.as_deref()),
                    entry.and_then(|p| p.suite.as_deref()),
                )
                .map_err(anyhow::Error::msg)?;
            if mode.protection == Protection::QkdOnly {
                out.push(PairWarning::qkd_only(a.id.clone(), b.id.clone()));
            }
        }
    }
    Ok(out)
}

/// Runs the node until `shutdown` flips to true. Returns an error for a fatal store failure.
///
/// Every offline check of `qkd-node check` passes first ([`check::offline`]): a bad file fails
/// the start before the data directory is touched.
pub async fn run(cfg: NodeConfig, mut shutdown: watch::Receiver<bool>) -> Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    check::offline(&cfg)?;
    let warnings = qkd_only_pairs(&cfg)?;
    for w in &warnings {
        tracing::warn!(saes = ?w.saes, "{}", w.warning);
    }
    let data = cfg.node.data_dir.clone();
    std::fs::create_dir_all(&data)
        .with_context(|| format!("cannot create data directory {}", data.display()))?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    // Before the store and the manager: their metric handles must reach the recorder, and the
    // start is the audit log's first record.
    let qkd_only: Vec<[qkd_types::SaeId; 2]> = warnings.iter().map(|w| w.saes.clone()).collect();
    let ops = Operations::start(&cfg, clock.clone(), &qkd_only).await?;

    let recorded: Option<ListenRecord> = std::fs::read(data.join(LISTEN_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let etsi_l = bind(
        cfg.node.etsi_listen,
        recorded.as_ref().map(|r| r.etsi),
        "ETSI 014",
    )
    .await?;
    let peer_l = bind(
        cfg.node.peer_listen,
        recorded.as_ref().map(|r| r.peer),
        "peer",
    )
    .await?;
    let admin_l = match cfg.node.admin_listen {
        Some(a) => Some(bind(a, recorded.as_ref().and_then(|r| r.admin), "admin").await?),
        None => None,
    };
    let grpc_l = match &cfg.grpc {
        Some(g) => Some(bind(g.listen, recorded.as_ref().and_then(|r| r.grpc), "gRPC").await?),
        None => None,
    };
    let skip_l = match &cfg.skip {
        Some(s) => Some(bind(s.listen, recorded.as_ref().and_then(|r| r.skip), "SKIP").await?),
        None => None,
    };
    let control_l = match &cfg.control {
        Some(c) => Some(
            bind(
                c.listen,
                recorded.as_ref().and_then(|r| r.control),
                "control",
            )
            .await?,
        ),
        None => None,
    };

    // Every listener is bound (connections wait in the backlog until the servers start): record
    // the addresses, for restarts and for neighbours and demos on the same host.
    let etsi_addr = etsi_l.local_addr()?;
    let peer_addr = peer_l.local_addr()?;
    let admin_addr = admin_l.as_ref().map(|l| l.local_addr()).transpose()?;
    let grpc_addr = grpc_l.as_ref().map(|l| l.local_addr()).transpose()?;
    let skip_addr = skip_l.as_ref().map(|l| l.local_addr()).transpose()?;
    let control_addr = control_l.as_ref().map(|l| l.local_addr()).transpose()?;
    let record = ListenRecord {
        version: 1,
        etsi: etsi_addr,
        peer: peer_addr,
        admin: admin_addr,
        grpc: grpc_addr,
        skip: skip_addr,
        control: control_addr,
    };
    write_atomic(
        &data.join(LISTEN_FILE),
        &serde_json::to_vec_pretty(&record)?,
    )?;

    // Store and encryption at rest.
    let key_dir = data.join("keys");
    std::fs::create_dir_all(&key_dir)?;
    restrict_dir(&key_dir)?;
    let kek = Arc::new(
        FileKek::open(
            &key_dir,
            clock.now(),
            cfg.node.kek_period_days.max(1) * 86_400_000,
        )
        .context("cannot open the key-encryption key")?,
    );
    let store_options = StoreOptions {
        watermark_bytes: cfg.node.store_watermark_mb.saturating_mul(1 << 20),
        ..StoreOptions::default()
    };
    let (store, recovered) = Store::open_rotating(&data.join("store.redb"), kek, store_options)
        .context("cannot open the key store")?;
    tracing::info!(
        epoch = recovered.epoch,
        "key store open; fresh data-key epoch started"
    );
    let writer = Writer::spawn(store);
    let store_writer = writer.clone();

    // TLS credentials, each set of files loaded once and replaceable live (`qkdctl rotate
    // certs`): the node's own ([tls]) for ETSI 014, SKIP, the peer listener and the peer client.
    let tls_files = check::tls_files(&cfg);
    let tls = LiveTls::load(&tls_files).context("TLS files ([tls])")?;
    let mut endpoints = vec![crate::rotate::Endpoint {
        used_by: "[tls] (ETSI 014, SKIP, peers)".into(),
        watched_as: Some("tls.cert".into()),
        tls: tls.clone(),
    }];
    let mut live_tls = |files: TlsFiles, used_by: &str, watched_as: Option<&str>| -> Result<_> {
        if let Some(e) = endpoints.iter().find(|e| *e.tls.files() == files) {
            return Ok(e.tls.clone());
        }
        let live = LiveTls::load(&files).with_context(|| format!("TLS files ({used_by})"))?;
        endpoints.push(crate::rotate::Endpoint {
            used_by: used_by.into(),
            watched_as: watched_as.map(str::to_owned),
            tls: live.clone(),
        });
        Ok(live)
    };
    let grpc_tls = match &cfg.grpc {
        Some(g) => Some(live_tls(
            check::grpc_tls_files(&cfg, g),
            "[grpc]",
            g.cert.is_some().then_some("grpc.cert"),
        )?),
        None => None,
    };
    let control_tls = match &cfg.control {
        Some(c) => Some(live_tls(
            check::control_tls_files(&cfg, c),
            "[control]",
            None,
        )?),
        None => None,
    };

    // Links.
    let mut setups = Vec::new();
    let mut neighbours = std::collections::BTreeMap::new();
    for n in &cfg.neighbours {
        neighbours.insert(
            n.id.clone(),
            NeighbourEntry {
                kme: n.kme_id.clone(),
                link: n.link.clone(),
            },
        );
    }
    let mut sources = Vec::new();
    for link in &cfg.links {
        let source = make_source(&data, link, clock.clone())?;
        sources.push((link.id.clone(), source.clone()));
        let info = source.info();
        if info.simulated {
            tracing::warn!(link = %link.id, "link {} is SIMULATED: its keys are for demos and tests, never for protecting data", link.id);
        }
        let n = cfg
            .neighbours
            .iter()
            .find(|n| n.id == link.peer)
            .context("link without neighbour")?;
        let addr = resolve_peer(n.peer_addr, n.peer_addr_file.as_deref(), &mut shutdown).await?;
        let name = n
            .server_name
            .clone()
            .unwrap_or_else(|| addr.ip().to_string());
        let client = qkd_kms::peer::client(addr, &name, &tls)?;
        setups.push(LinkSetup {
            id: link.id.clone(),
            peer: link.peer.clone(),
            source,
            capacity_bytes: link.capacity_bytes,
            client,
        });
    }

    let live = live_config(&cfg)?;
    let mcfg = ManagerConfig {
        node: cfg.node.id.clone(),
        kme: cfg.node.kme_id.clone(),
        saes: live.saes.clone(),
        neighbours,
        limits: live.limits,
        key_ttl_ms: cfg.node.key_ttl_seconds * 1000,
        peer_timeout: Duration::from_millis(cfg.node.peer_timeout_ms),
        // Tombstones answer a master asking for its own keys (within the key TTL) and keep key IDs
        // unique while their keys could still be around: pool TTL plus key TTL covers both.
        tombstone_retention_ms: (cfg.relay.pool_ttl_seconds + cfg.node.key_ttl_seconds) * 1000,
        relay: relay_config(&cfg, &live)?,
    };
    let manager = KeyManager::new(mcfg, clock.clone(), writer, setups, recovered);
    let wake = Arc::new(tokio::sync::Notify::new());
    manager.observe(Arc::new(EngineMetrics::new(
        ops.telemetry.clone(),
        wake.clone(),
    )));
    // Before anything is served: keys made under an earlier configuration are erased.
    manager
        .void_stale_keys()
        .await
        .context("cannot void keys made under an earlier configuration")?;

    // Servers.
    let stop = {
        let s = shutdown.clone();
        move || {
            let mut s = s.clone();
            async move {
                let _ = s.wait_for(|v| *v).await;
            }
        }
    };
    let server_cfg = Arc::new(tls.server().context("ETSI 014 TLS configuration")?);
    let service: Arc<dyn KeyService> = Arc::new(manager.clone());
    // One instrumentation hook for the ETSI 014 and gRPC front ends: `/status` and the metrics
    // show its counts, the audit log its refusals.
    let counters = Arc::new(ApiCounters::new());
    let observer: Arc<dyn ApiObserver> =
        Arc::new(AuditingObserver::new(counters.clone(), ops.audit.clone()));
    let monitor = Monitor::new(MonitorParts {
        manager: manager.clone(),
        clock: clock.clone(),
        telemetry: ops.telemetry.clone(),
        api: counters.clone(),
        audit: ops.audit.clone(),
        siem: ops.siem.clone(),
        pools: operations::pool_pairs(&cfg),
        qkd_only,
        certificates: operations::certificates(&cfg),
        thresholds: operations::thresholds(&cfg),
        wake,
    });
    // The first evaluation before anything is served: standing conditions (a `qkd-only` pair,
    // a certificate near expiry) are raised at once.
    monitor.tick(false).await;
    let monitor_task = tokio::spawn(monitor.clone().run(
        Duration::from_millis(cfg.alarms.interval_ms),
        shutdown.clone(),
    ));
    let limits = ServerLimits {
        max_connections_per_client: cfg.node.etsi_max_connections_per_client,
        ..ServerLimits::default()
    };
    let identity = SaeIdentityRule::new(cfg.node.sae_uri_prefix.clone());
    let skip_task = match (skip_l, &cfg.skip) {
        (Some(listener), Some(section)) => Some(tokio::spawn(qkd_kms::api::skip::serve_observed(
            listener,
            server_cfg.clone(),
            service.clone(),
            key_provider(section)?,
            identity.clone(),
            limits,
            observer.clone(),
            stop(),
        ))),
        _ => None,
    };
    let etsi_task = tokio::spawn(qkd_kms::api::etsi014::serve_observed(
        etsi_l,
        server_cfg,
        service.clone(),
        identity.clone(),
        limits,
        observer.clone(),
        stop(),
    ));
    let grpc_task = match (grpc_l, &cfg.grpc, &grpc_tls) {
        (Some(l), Some(g), Some(live)) => {
            let tls = live.grpc_server().context("gRPC TLS configuration")?;
            let limits = GrpcLimits {
                max_connections_per_client: g.max_connections_per_client,
                ..GrpcLimits::default()
            };
            Some(tokio::spawn(qkd_kms::api::grpc::serve(
                l,
                Arc::new(tls),
                service,
                identity,
                limits,
                observer.clone(),
                stop(),
            )))
        }
        _ => None,
    };
    let peer_task = tokio::spawn({
        let m = manager.clone();
        let tls = tls.clone();
        let st = stop();
        async move { qkd_kms::peer::serve(peer_l, &tls, m, st).await }
    });
    let etsi015: crate::etsi015::SharedSetup = Arc::new(std::sync::RwLock::new(Arc::new(
        crate::etsi015::Setup::of(&cfg, clock.now())?,
    )));
    let admin_task = admin_l.map(|l| {
        tokio::spawn(status::serve(
            l,
            manager.clone(),
            status::AdminParts {
                node: cfg.node.id.clone(),
                api_requests: counters.clone(),
                monitor: monitor.clone(),
                telemetry: ops.telemetry.clone(),
                etsi015: etsi015.clone(),
                clock: clock.clone(),
            },
            stop(),
        ))
    });

    // Reloads (SIGHUP, the control listener) start from the text the node started with.
    let config_text = std::fs::read_to_string(&cfg.path)
        .with_context(|| format!("cannot read {}", cfg.path.display()))?;
    let reloader = Arc::new(crate::reload::Reloader::new(
        config_text,
        cfg.clone(),
        crate::reload::ReloadParts {
            manager: manager.clone(),
            monitor: monitor.clone(),
            telemetry: ops.telemetry.clone(),
            etsi015: etsi015.clone(),
            audit: ops.audit.clone(),
        },
    ));
    let rotator = Arc::new(
        crate::rotate::Rotator::new(
            endpoints,
            store_writer,
            monitor.clone(),
            clock.clone(),
            ops.audit.clone(),
        )
        .with_clients(ops.siem.clone(), sources),
    );
    let hup_task = tokio::spawn(reload_on_sighup(reloader.clone(), shutdown.clone()));
    let control_task = match (control_l, &control_tls) {
        (Some(l), Some(live)) => {
            let tls = live
                .server()
                .context("control listener TLS configuration")?;
            Some(tokio::spawn(crate::control::serve(
                l,
                Arc::new(tls),
                crate::control::ControlParts {
                    manager: manager.clone(),
                    audit: ops.audit.clone(),
                    node: cfg.node.id.clone(),
                    sae_uri_prefix: cfg.node.sae_uri_prefix.clone(),
                    reloader: reloader.clone(),
                    rotator: rotator.clone(),
                },
                stop(),
            )))
        }
        _ => None,
    };

    tracing::info!(node = %cfg.node.id, etsi = %etsi_addr, peer = %peer_addr, admin = ?admin_addr, skip = ?skip_addr, grpc = ?grpc_addr, control = ?control_addr, "node serving");

    let bg = {
        let m = manager.clone();
        let poll = Duration::from_millis(cfg.node.device_poll_ms.max(1));
        tokio::spawn(async move {
            m.run_background(poll).await;
        })
    };

    let fatal = tokio::select! {
        _ = shutdown.wait_for(|v| *v) => false,
        () = manager.fatal() => true,
    };
    bg.abort();
    if fatal {
        // The store failure is raised, recorded and forwarded before the node exits.
        monitor_task.abort();
        monitor.tick(true).await;
        ops.stop("key store commit failed").await;
        bail!("key store commit failed; exiting so that the next start recovers from disk");
    }
    tracing::info!("shutting down: finishing in-flight requests");
    let _ = etsi_task.await;
    if let Some(t) = grpc_task
        && let Ok(Err(e)) = t.await
    {
        tracing::warn!(error = %e, "gRPC key delivery server stopped with an error");
    }
    let _ = peer_task.await;
    if let Some(t) = admin_task {
        let _ = t.await;
    }
    if let Some(t) = skip_task {
        let _ = t.await;
    }
    if let Some(t) = control_task {
        let _ = t.await;
    }
    hup_task.abort();
    let _ = monitor_task.await;
    ops.stop("shutdown requested").await;
    Ok(())
}

/// The SKIP Key Provider of `[skip]` (already checked by the configuration's parser).
fn key_provider(section: &crate::config::SkipSection) -> Result<KeyProvider> {
    let routes = section.routes.iter().map(|r| Route {
        encryptor: r.encryptor.get_ref().clone(),
        remote: r.remote_system_id.get_ref().clone(),
        peer: r.peer_sae.get_ref().clone(),
    });
    let entropy: Option<Arc<dyn EntropySource>> = section
        .entropy
        .then(|| Arc::new(OsEntropy) as Arc<dyn EntropySource>);
    KeyProvider::new(
        section.local_system_id.clone(),
        section.algorithm.clone(),
        routes,
        entropy,
    )
    .context("[skip]")
}

/// Relay settings, pair protection and the end-to-end identity (generated on first start).
/// The part of the key manager's configuration a reload may change, from the node's.
pub fn live_config(cfg: &NodeConfig) -> Result<LiveConfig> {
    let saes = cfg
        .saes
        .iter()
        .map(|s| {
            (
                s.id.clone(),
                SaeEntry {
                    node: s.node.clone(),
                    peers: s.peers.clone(),
                },
            )
        })
        .collect();
    let mut pairs = std::collections::BTreeMap::new();
    for p in &cfg.pairs {
        let mode = cfg
            .key_mode(p.policy.as_deref(), p.suite.as_deref())
            .map_err(anyhow::Error::msg)?;
        let [a, b] = p.saes.clone();
        pairs.insert(if a <= b { (a, b) } else { (b, a) }, mode);
    }
    Ok(LiveConfig {
        saes,
        limits: KeyLimits {
            key_size: cfg.limits.key_size,
            min_key_size: cfg.limits.min_key_size,
            max_key_size: cfg.limits.max_key_size,
            max_key_per_request: cfg.limits.max_key_per_request,
            max_sae_id_count: cfg.limits.max_sae_id_count,
        },
        pairs,
        default_mode: cfg.key_mode(None, None).map_err(anyhow::Error::msg)?,
    })
}

fn relay_config(cfg: &NodeConfig, live: &LiveConfig) -> Result<RelayConfig> {
    use qkd_kms::hybrid::{LocalIdentity, NodeSigningKey, PeerPublicKeys, PinnedPeers};
    let path = &cfg.relay.signing_key;
    let signing = match check::read_signing_key(path)
        .map_err(|e| anyhow::anyhow!("signing key {}: {e}", path.display()))?
    {
        Some(key) => key,
        None => {
            let key = NodeSigningKey::generate(&mut rand::rng())?;
            write_signing_key(path, &key)?;
            tracing::info!(file = %path.display(), "generated this node's end-to-end signing key");
            key
        }
    };
    let public = signing.public_key();
    write_atomic(
        &path.with_extension("pub"),
        hex::encode(public.to_bytes()).as_bytes(),
    )?;
    let mut peers = PinnedPeers::new();
    let mut kme_ids = std::collections::BTreeMap::new();
    for n in &cfg.neighbours {
        kme_ids.insert(n.id.clone(), n.kme_id.clone());
    }
    for n in &cfg.nodes {
        kme_ids.insert(n.id.clone(), n.kme_id.clone());
        if let Some(p) = &n.signing_public_key {
            let key = check::read_peer_key(p)
                .map_err(|e| anyhow::anyhow!("node_info {}: {}: {e}", n.id, p.display()))?;
            peers.insert(PeerPublicKeys::new(n.kme_id.clone(), vec![key])?);
        }
    }
    Ok(RelayConfig {
        kme_ids,
        pool_keys: cfg.relay.pool_keys,
        batch_keys: cfg.relay.batch_keys(),
        pool_ttl_ms: cfg.relay.pool_ttl_seconds * 1000,
        hop_timeout: Duration::from_millis(cfg.relay.hop_timeout_ms),
        advert_interval: Duration::from_millis(300),
        pairs: live.pairs.clone(),
        default_mode: live.default_mode,
        tamper_relay: cfg.relay.test_tamper_relay,
        e2e: Arc::new(E2eKeys {
            local: Some(LocalIdentity::new(cfg.node.kme_id.clone(), signing)),
            peers,
            replay: Default::default(),
        }),
    })
}

/// Writes a new signing key file, owner-only.
pub fn write_signing_key(path: &Path, key: &qkd_kms::hybrid::NodeSigningKey) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let raw = key.to_raw()?;
    // The seed is written once, hex-encoded, to a file only the node's user can read.
    let text = zeroize::Zeroizing::new(hex::encode(raw.expose()));
    qkd_kms::durable::write_atomic(path, text.as_bytes(), Access::Private)?;
    Ok(())
}

fn make_source(
    data: &Path,
    link: &crate::config::LinkSection,
    clock: Arc<dyn Clock>,
) -> Result<Arc<dyn KeySource>> {
    match &link.source {
        SourceSection::Simulated {
            block_bits,
            start_unix_ms,
            model,
        } => {
            let seed_path = seed_path(data, &link.id);
            let seed = check::read_seed(&seed_path).map_err(|e| {
                anyhow::anyhow!("simulated link {}: {}: {e}", link.id, seed_path.display())
            })?;
            let cfg = SimLinkConfig {
                link: link.id.clone(),
                role: link.role.link_role(),
                block_bits: *block_bits,
                start: *start_unix_ms,
            };
            // The simulated device keeps its place in the key stream beside its seed, so a
            // restarted node never receives the same link key twice.
            let position = seed_path.with_extension("position");
            let sim = SimulatedLink::new(cfg, &seed, model.build()?, clock)?
                .with_position_file(position.clone())
                .with_context(|| format!("simulated link position file {}", position.display()))?;
            Ok(Arc::new(sim))
        }
        // Never contacts the device: an unreachable device leaves the link down (the key
        // manager's ingest retries it), never the node unstarted.
        SourceSection::Etsi014(dev) => {
            let source = Etsi014Source::with_clock(dev.clone(), link.role.link_role(), clock)
                .with_context(|| format!("link {}: device {}", link.id, dev.url))?;
            tracing::info!(link = %link.id, device = %dev.url, role = ?link.role, "link takes key from an ETSI 014 device");
            Ok(Arc::new(source))
        }
    }
}

/// Where a simulated link's seed lives in a data directory.
pub fn seed_path(data: &Path, link: &qkd_types::LinkId) -> PathBuf {
    data.join("sim").join(format!("{link}.seed"))
}

async fn resolve_peer(
    addr: Option<SocketAddr>,
    file: Option<&Path>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<SocketAddr> {
    if let Some(a) = addr {
        return Ok(a);
    }
    let file = file.context("neighbour without address")?;
    // The neighbour records its address once it has bound its listeners; wait for that (bounded).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let record = std::fs::read(file)
            .ok()
            .and_then(|b| serde_json::from_slice::<ListenRecord>(&b).ok());
        if let Some(r) = record {
            return Ok(r.peer);
        }
        if tokio::time::Instant::now() > deadline || *shutdown.borrow() {
            bail!("neighbour address file {} did not appear", file.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(unix)]
fn restrict_dir(p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

#[cfg(not(unix))]
fn restrict_dir(_p: &Path) -> Result<()> {
    Ok(())
}

/// Reloads the configuration at every SIGHUP until `shutdown`.
async fn reload_on_sighup(
    reloader: Arc<crate::reload::Reloader>,
    mut shutdown: watch::Receiver<bool>,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: reload only through the control listener");
            return;
        };
        loop {
            let got = tokio::select! {
                _ = shutdown.wait_for(|v| *v) => None,
                r = hup.recv() => r,
            };
            if got.is_none() {
                return;
            }
            // A signal never voids pools: that takes `qkdctl reload --void-pools`.
            reloader.reload("signal", false).await;
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (reloader, shutdown.wait_for(|v| *v).await);
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
