//! The node's TOML configuration: parsing and checking, with errors that name the file, the key
//! and what is wrong. Nothing secret is ever read from here (no key material, no seeds): TLS
//! private keys and link seeds are files the configuration points to.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use qkd_hardware::etsi014::{DeviceConfig, PemSource};
use qkd_kms::api::KeyLimits;
use qkd_kms::api::skip::SystemId;
use qkd_kms::manager::RelayConfig;
use qkd_types::{KmeId, LinkId, NodeId, SaeId};
use serde::Deserialize;
use toml::Spanned;

/// A configuration problem: which file, which key, what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {what}")]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// Dotted path of the offending key (with line and column when the parser knows them).
    pub key: String,
    /// What is wrong.
    pub what: String,
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node.
    pub node: NodeSection,
    /// TLS material (one certificate for the ETSI 014 server and the peer protocol).
    pub tls: TlsSection,
    /// ETSI 014 limits for every pair.
    #[serde(default)]
    pub limits: LimitsSection,
    /// Neighbour nodes.
    #[serde(default, rename = "neighbour")]
    pub neighbours: Vec<NeighbourSection>,
    /// QKD links of this node.
    #[serde(default, rename = "link")]
    pub links: Vec<LinkSection>,
    /// Every SAE of the network and whom it may pair with.
    #[serde(default, rename = "sae")]
    pub saes: Vec<SaeSection>,
    /// Relay, pools and end-to-end protection.
    #[serde(default)]
    pub relay: RelaySection,
    /// Other nodes of the network (beyond neighbours): KME IDs and pinned signing keys.
    #[serde(default, rename = "node_info")]
    pub nodes: Vec<NodeInfoSection>,
    /// Per-pair protection, overriding the relay defaults.
    #[serde(default, rename = "pair")]
    pub pairs: Vec<PairSection>,
    /// The optional gRPC key delivery listener for SAEs (`qkd.keys.v1.KeyDelivery`).
    #[serde(default)]
    pub grpc: Option<GrpcSection>,
    /// The SKIP Key Provider for routers (optional).
    #[serde(default)]
    pub skip: Option<SkipSection>,
    /// Prometheus metrics on the admin listener.
    #[serde(default)]
    pub metrics: MetricsSection,
    /// Alarm thresholds and timing.
    #[serde(default)]
    pub alarms: AlarmsSection,
    /// The audit log and its SIEM forwarding.
    #[serde(default)]
    pub audit: AuditSection,
    /// The control listener for operators (mutual TLS; off unless set).
    #[serde(default)]
    pub control: Option<ControlSection>,
    /// The file this configuration was read from (for error messages).
    #[serde(skip)]
    pub path: PathBuf,
}

/// `[relay]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySection {
    /// Finished keys kept ready per SAE pair (`max_key_count`).
    #[serde(default = "d_pool_keys")]
    pub pool_keys: u32,
    /// Keys per relayed batch (one end-to-end exchange each). Unset: a sixteenth of
    /// `pool_keys`, within 64..=256 ([`RelaySection::batch_keys`]).
    #[serde(default)]
    pub batch_keys: Option<u32>,
    /// Seconds a pool key may wait before it is handed out.
    #[serde(default = "d_pool_ttl")]
    pub pool_ttl_seconds: u64,
    /// Milliseconds allowed per relay hop.
    #[serde(default = "d_hop_timeout")]
    pub hop_timeout_ms: u64,
    /// Protection of pairs without a `[[pair]]` entry: `qkd+pq` (QKD+PQ+T), `QKD+PQ`,
    /// `pq-only` (PQ+T) or `qkd-only` (no protection against trusted nodes).
    #[serde(default = "d_policy")]
    pub default_policy: String,
    /// Hybrid suite of pairs without a `[[pair]]` entry.
    #[serde(default = "d_suite")]
    pub default_suite: String,
    /// This node's long-term signing key (ML-DSA-65 + Ed25519 seeds, hex), relative to the data
    /// directory; generated on first start, its public half written next to it as `.pub`.
    #[serde(default = "d_signing")]
    pub signing_key: PathBuf,
    /// Fault injection for tests only: corrupt every relay message this node sends.
    #[serde(default)]
    pub test_tamper_relay: bool,
}

// Relay defaults live in one place, `RelayConfig::default`.
fn d_pool_keys() -> u32 {
    RelayConfig::default().pool_keys
}
fn d_pool_ttl() -> u64 {
    RelayConfig::default().pool_ttl_ms / 1000
}
fn d_hop_timeout() -> u64 {
    u64::try_from(RelayConfig::default().hop_timeout.as_millis()).unwrap_or(u64::MAX)
}
fn d_policy() -> String {
    "qkd+pq".into()
}
fn d_suite() -> String {
    "X25519/ML-KEM-768".into()
}
fn d_signing() -> PathBuf {
    PathBuf::from("keys/signing.key")
}

impl RelaySection {
    /// Keys per relayed batch: as configured, or the default for the pool's capacity.
    pub fn batch_keys(&self) -> u32 {
        self.batch_keys
            .unwrap_or_else(|| RelayConfig::batch_keys_for(self.pool_keys))
    }
}

impl Default for RelaySection {
    fn default() -> Self {
        Self {
            pool_keys: d_pool_keys(),
            batch_keys: None,
            pool_ttl_seconds: d_pool_ttl(),
            hop_timeout_ms: d_hop_timeout(),
            default_policy: d_policy(),
            default_suite: d_suite(),
            signing_key: d_signing(),
            test_tamper_relay: false,
        }
    }
}

/// `[metrics]`: Prometheus metrics at `GET /metrics` of the admin listener (docs/metrics.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Whether `/metrics` is served. Unset: served whenever `node.admin_listen` is set; `true`
    /// without an admin listener is an error (there would be nowhere to scrape).
    pub enabled: Option<bool>,
}

impl MetricsSection {
    /// Whether this node serves metrics (after the checks of [`NodeConfig::parse`]).
    pub fn served(&self, node: &NodeSection) -> bool {
        self.enabled.unwrap_or(true) && node.admin_listen.is_some()
    }
}

/// `[alarms]`: when alarms raise and clear (docs/operations.md lists every alarm). Every default
/// is in [`AlarmsSection::default`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlarmsSection {
    /// Milliseconds between evaluations (links are asked for their state this often).
    pub interval_ms: u64,
    /// A condition that comes and goes (link down, QBER high, pool low, disk low) must hold
    /// this long before its alarm raises.
    pub raise_after_ms: u64,
    /// ... and be gone this long before its alarm clears.
    pub clear_after_ms: u64,
    /// Seconds without a new occurrence before a counted event's alarm clears (a device
    /// re-issuing key IDs, audit records dropped).
    pub quiet_seconds: u64,
    /// QBER above which `qber_high` raises, as a fraction (0.08 = 8 %).
    pub qber_max: f64,
    /// Ready keys below which a pair's pool raises `pool_low`; by default a quarter of
    /// `relay.pool_keys`.
    pub pool_min_keys: Option<u64>,
    /// Days before a certificate's expiry at which `certificate_expiry` raises.
    pub certificate_warn_days: u64,
}

impl Default for AlarmsSection {
    fn default() -> Self {
        Self {
            interval_ms: 1_000,
            raise_after_ms: 5_000,
            clear_after_ms: 10_000,
            quiet_seconds: 900,
            qber_max: 0.08,
            pool_min_keys: None,
            certificate_warn_days: 30,
        }
    }
}

impl AlarmsSection {
    /// The pool level that raises `pool_low`.
    pub fn pool_min_keys(&self, relay: &RelaySection) -> u64 {
        self.pool_min_keys.unwrap_or(u64::from(relay.pool_keys) / 4)
    }
}

/// `[audit]`: the hash-chained audit log (docs/operations.md, "Audit log").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    /// The log file; relative to `node.data_dir`.
    pub file: PathBuf,
    /// Records waiting to be written at most; beyond it they are dropped and counted (recording
    /// never blocks key delivery).
    pub queue: usize,
    /// Forwarding to a SIEM (optional).
    pub siem: Option<SiemSection>,
}

impl Default for AuditSection {
    fn default() -> Self {
        Self {
            file: PathBuf::from("audit.log"),
            queue: 4096,
            siem: None,
        }
    }
}

/// `[audit.siem]`: RFC 5424 syslog over TLS (RFC 5425) to a collector.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiemSection {
    /// The collector, `host:port` (6514 is the registered syslog-over-TLS port).
    pub address: String,
    /// Name the collector's certificate must be valid for; the host of `address` by default.
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM CA certificate(s) the collector's certificate chains to; relative to this file.
    pub ca: PathBuf,
    /// PEM client certificate chain, if the collector asks for one; set with `client_key`.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Messages held while the collector is away; beyond it they are dropped and counted.
    #[serde(default = "SiemSection::default_queue")]
    pub queue: usize,
    /// Syslog facility, 0..=23 (RFC 5424 §6.2.1); 13 is "log audit".
    #[serde(default = "SiemSection::default_facility")]
    pub facility: u8,
    /// APP-NAME of the messages.
    #[serde(default = "SiemSection::default_app_name")]
    pub app_name: String,
}

impl SiemSection {
    fn default_queue() -> usize {
        10_000
    }
    fn default_facility() -> u8 {
        13
    }
    fn default_app_name() -> String {
        "qkd-node".into()
    }

    /// The name the collector's certificate must be valid for.
    pub fn server_name(&self) -> &str {
        self.server_name.as_deref().unwrap_or_else(|| {
            self.address
                .rsplit_once(':')
                .map_or(self.address.as_str(), |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']')
        })
    }
}

/// `[skip]`: this node as a SKIP Key Provider (docs/skip.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkipSection {
    /// HTTPS listener (mutual TLS with the node's certificate); port 0 as for `etsi_listen`.
    pub listen: SocketAddr,
    /// This Key Provider's `localSystemID`: what encryptors at other sites name as their
    /// `remoteSystemID` to reach keys shared with this node's encryptors.
    pub local_system_id: SystemId,
    /// The `algorithm` text of capabilities (at most 16 bytes); by default the policy name of the
    /// caller's pairs (`QKD+PQ+T`...).
    #[serde(default)]
    pub algorithm: Option<String>,
    /// Whether `GET /entropy` is offered (bytes from the operating system's CSPRNG).
    #[serde(default = "d_true")]
    pub entropy: bool,
    /// (calling encryptor, remote Key Provider) → SAE pair.
    #[serde(default, rename = "route")]
    pub routes: Vec<SkipRouteSection>,
}

fn d_true() -> bool {
    true
}

/// `[[skip.route]]`: when `encryptor` names `remote_system_id`, it shares keys with `peer_sae`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkipRouteSection {
    /// The calling encryptor: an SAE attached to this node, named by its client certificate.
    pub encryptor: Spanned<SaeId>,
    /// The `localSystemID` of the peer's Key Provider (another node's).
    pub remote_system_id: Spanned<SystemId>,
    /// The SAE at that Key Provider; `encryptor` and it must list each other as peers.
    pub peer_sae: Spanned<SaeId>,
}

/// `[[node_info]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeInfoSection {
    /// Node ID.
    pub id: NodeId,
    /// Its KME ID.
    pub kme_id: KmeId,
    /// Its pinned end-to-end signing public key (hex file written by that node), if this node
    /// exchanges hybrid keys with it.
    #[serde(default)]
    pub signing_public_key: Option<PathBuf>,
}

/// `[[pair]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairSection {
    /// The two SAEs (either may be master).
    pub saes: [SaeId; 2],
    /// Protection (see `relay.default_policy`).
    #[serde(default)]
    pub policy: Option<String>,
    /// Hybrid suite.
    #[serde(default)]
    pub suite: Option<String>,
}

impl NodeConfig {
    /// The protection of a pair as configured (pair entry, else the relay defaults).
    pub fn key_mode(
        &self,
        policy: Option<&str>,
        suite: Option<&str>,
    ) -> Result<qkd_kms::manager::KeyMode, String> {
        use qkd_kms::hybrid::{Protection, Suite};
        let protection = Protection::parse(policy.unwrap_or(&self.relay.default_policy))
            .map_err(|e| e.to_string())?;
        let suite =
            Suite::parse(suite.unwrap_or(&self.relay.default_suite)).map_err(|e| e.to_string())?;
        Ok(qkd_kms::manager::KeyMode { protection, suite })
    }
}

/// `[node]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Node ID (also in the node's certificate as `urn:qkd:node:<id>`).
    pub id: NodeId,
    /// KME ID reported to SAEs.
    pub kme_id: KmeId,
    /// Directory of the store, the KEK files, recorded ports and link seeds. Relative paths are
    /// relative to the configuration file.
    pub data_dir: PathBuf,
    /// ETSI 014 HTTPS listener; port 0 picks one at first start and records it.
    pub etsi_listen: SocketAddr,
    /// Node-to-node gRPC listener; port 0 as above.
    pub peer_listen: SocketAddr,
    /// Plain-HTTP operator status listener (loopback only is advised); port 0 as above.
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    /// URI SAN prefix of SAE client certificates; the SAE ID is the rest.
    #[serde(default = "default_prefix")]
    pub sae_uri_prefix: String,
    /// Seconds a key waits for its slave after the master got it.
    #[serde(default = "default_ttl")]
    pub key_ttl_seconds: u64,
    /// Milliseconds to wait for a neighbour's answer.
    #[serde(default = "default_peer_timeout")]
    pub peer_timeout_ms: u64,
    /// Milliseconds between polls of the QKD devices.
    #[serde(default = "default_poll")]
    pub device_poll_ms: u64,
    /// Days a KEK period lasts (file-held KEKs rotate at start once a period has passed).
    #[serde(default = "default_kek_days")]
    pub kek_period_days: u64,
    /// MiB of free disk kept for consuming stored keys: below it the store refuses new key
    /// material (docs/design.md §4.2).
    #[serde(default = "default_store_watermark_mb")]
    pub store_watermark_mb: u64,
    /// Most ETSI 014 connections one SAE may hold at once (the others are closed at once), so
    /// that no client can take every connection of the port.
    #[serde(default = "default_per_client")]
    pub etsi_max_connections_per_client: usize,
}

fn default_per_client() -> usize {
    qkd_kms::api::etsi014::ServerLimits::default().max_connections_per_client
}

fn default_prefix() -> String {
    "urn:qkd:sae:".into()
}
fn default_ttl() -> u64 {
    3600
}
fn default_peer_timeout() -> u64 {
    3000
}
fn default_poll() -> u64 {
    20
}
fn default_kek_days() -> u64 {
    1
}
fn default_store_watermark_mb() -> u64 {
    qkd_kms::store::space::DEFAULT_WATERMARK_BYTES >> 20
}

/// `[tls]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain of this node.
    pub cert: PathBuf,
    /// PEM private key of this node.
    pub key: PathBuf,
    /// PEM CA certificate(s) that SAEs' and neighbours' certificates chain to.
    pub ca: PathBuf,
}

/// `[grpc]`: key delivery to SAEs over gRPC (docs/grpc.md), beside ETSI 014, with the same SAEs,
/// pairs, limits and admission.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcSection {
    /// Listener address; port 0 picks one at first start and records it.
    pub listen: SocketAddr,
    /// PEM certificate chain served on this port; `[tls] cert` when absent. Set with `key`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`; `[tls] key` when absent. Set with `cert`.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// PEM CA certificate(s) that SAE certificates chain to; `[tls] ca` when absent.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Most connections one SAE may hold at once (the others are closed at once).
    #[serde(default = "default_grpc_per_client")]
    pub max_connections_per_client: usize,
}

fn default_grpc_per_client() -> usize {
    qkd_kms::api::grpc::GrpcLimits::default().max_connections_per_client
}

/// `[control]`: the control listener (docs/operations.md), always mutual TLS with the node's
/// `[tls]` certificate, admitting only management certificates (`urn:qkd:operator:<name>` URI
/// SAN) that chain to `ca`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlSection {
    /// Listener address; port 0 picks one at first start and records it.
    pub listen: SocketAddr,
    /// PEM CA certificate(s) that management certificates chain to; `[tls] ca` when absent.
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Default key size in bits.
    #[serde(default = "d_key_size")]
    pub key_size: u32,
    /// Smallest key size in bits.
    #[serde(default = "d_min")]
    pub min_key_size: u32,
    /// Largest key size in bits.
    #[serde(default = "d_max")]
    pub max_key_size: u32,
    /// Most keys per request.
    #[serde(default = "d_per_req")]
    pub max_key_per_request: u32,
    /// Most additional slaves per request (multicast); 0 disables multicast.
    #[serde(default = "d_sae_count")]
    pub max_sae_id_count: u32,
}

// The ETSI limits' defaults live in one place, `KeyLimits::default`.
fn d_sae_count() -> u32 {
    KeyLimits::default().max_sae_id_count
}
fn d_key_size() -> u32 {
    KeyLimits::default().key_size
}
fn d_min() -> u32 {
    KeyLimits::default().min_key_size
}
fn d_max() -> u32 {
    KeyLimits::default().max_key_size
}
fn d_per_req() -> u32 {
    KeyLimits::default().max_key_per_request
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            key_size: d_key_size(),
            min_key_size: d_min(),
            max_key_size: d_max(),
            max_key_per_request: d_per_req(),
            max_sae_id_count: d_sae_count(),
        }
    }
}

/// `[[neighbour]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NeighbourSection {
    /// Its node ID.
    pub id: NodeId,
    /// Its KME ID.
    pub kme_id: KmeId,
    /// The link to it.
    pub link: LinkId,
    /// Its peer-protocol address.
    #[serde(default)]
    pub peer_addr: Option<SocketAddr>,
    /// Or: the `listen.json` file it records its addresses in (same host, demos and tests).
    #[serde(default)]
    pub peer_addr_file: Option<PathBuf>,
    /// Name its certificate must be valid for; defaults to the address's IP.
    #[serde(default)]
    pub server_name: Option<String>,
}

/// `[[link]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSection {
    /// Link ID, the same at both ends.
    pub id: LinkId,
    /// The node at the other end.
    pub peer: NodeId,
    /// This end's device role: `master` (this node allocates the link's key) or `slave`.
    pub role: Role,
    /// Most unallocated link key to hold, in bytes.
    #[serde(default = "d_capacity")]
    pub capacity_bytes: u64,
    /// Where the key comes from.
    pub source: SourceSection,
}

fn d_capacity() -> u64 {
    16 << 20
}

/// Device role in configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Pulls new keys.
    Master,
    /// Fetches keys by ID.
    Slave,
}

impl Role {
    /// The device interface's name for this role.
    pub fn link_role(self) -> qkd_hardware::LinkRole {
        match self {
            Role::Master => qkd_hardware::LinkRole::Master,
            Role::Slave => qkd_hardware::LinkRole::Slave,
        }
    }
}

/// `[link.source]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SourceSection {
    /// A simulated link. Its seed is read from `<data_dir>/sim/<link>.seed` (never from here).
    Simulated {
        /// Bits per block (multiple of 8).
        #[serde(default = "d_block_bits")]
        block_bits: u32,
        /// Unix time (ms) at which both ends started producing key.
        start_unix_ms: u64,
        /// Link model parameters.
        model: qkd_simulator::model::LinkModelSpec,
    },
    /// A QKD device (its built-in KME) over ETSI GS QKD 014: this node is an SAE of its device.
    /// The members are the adapter's [`DeviceConfig`] (docs/devices.md); relative PEM file paths
    /// are relative to the configuration file.
    Etsi014(DeviceConfig),
}

impl SourceSection {
    /// The `kind` as written in the configuration.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceSection::Simulated { .. } => "simulated",
            SourceSection::Etsi014(_) => "etsi014",
        }
    }
}

fn d_block_bits() -> u32 {
    524_288
}

/// `[[sae]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaeSection {
    /// SAE ID.
    pub id: SaeId,
    /// Node it is attached to.
    pub node: NodeId,
    /// SAEs it may share keys with.
    #[serde(default)]
    pub peers: BTreeSet<SaeId>,
}

impl NodeConfig {
    /// Reads, parses and checks a configuration file; relative paths become relative to it.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            key: "(file)".into(),
            what: e.to_string(),
        })?;
        Self::parse(path, &text)
    }

    /// Parses and checks configuration text that came from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let err = |key: &str, what: String| ConfigError {
            file: path.to_path_buf(),
            key: key.into(),
            what,
        };
        let mut cfg: NodeConfig = toml::from_str(text).map_err(|e| {
            let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
            ConfigError {
                file: path.to_path_buf(),
                key: format!("line {line}, column {col}"),
                what: e.message().to_string(),
            }
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut cfg.node.data_dir);
        abs(&mut cfg.tls.cert);
        abs(&mut cfg.tls.key);
        abs(&mut cfg.tls.ca);
        if cfg.relay.signing_key.is_relative() {
            cfg.relay.signing_key = cfg.node.data_dir.join(&cfg.relay.signing_key);
        }
        for n in &mut cfg.nodes {
            if let Some(p) = &mut n.signing_public_key {
                abs(p);
            }
        }
        if let Some(g) = &mut cfg.grpc {
            for p in [&mut g.cert, &mut g.key, &mut g.ca].into_iter().flatten() {
                abs(p);
            }
            if g.cert.is_some() != g.key.is_some() {
                return Err(err(
                    "grpc",
                    "set both cert and key, or neither (then [tls] cert and key serve gRPC too)"
                        .into(),
                ));
            }
            if g.max_connections_per_client == 0 {
                return Err(err(
                    "grpc.max_connections_per_client",
                    "must be positive".into(),
                ));
            }
        }
        if let Some(p) = cfg.control.as_mut().and_then(|c| c.ca.as_mut()) {
            abs(p);
        }
        for n in &mut cfg.neighbours {
            if let Some(p) = &mut n.peer_addr_file {
                abs(p);
            }
        }
        for lk in &mut cfg.links {
            if let SourceSection::Etsi014(dev) = &mut lk.source {
                for pem in [&mut dev.ca, &mut dev.client_cert, &mut dev.client_key] {
                    if let PemSource::File(p) = pem {
                        abs(p);
                    }
                }
            }
        }
        let l = &cfg.limits;
        for (k, v) in [
            ("limits.key_size", l.key_size),
            ("limits.min_key_size", l.min_key_size),
            ("limits.max_key_size", l.max_key_size),
        ] {
            if v == 0 || v % 8 != 0 {
                return Err(err(k, format!("{v} is not a positive multiple of 8")));
            }
        }
        if !(l.min_key_size <= l.key_size && l.key_size <= l.max_key_size) {
            return Err(err(
                "limits",
                "need min_key_size <= key_size <= max_key_size".into(),
            ));
        }
        if l.max_key_per_request == 0 {
            return Err(err(
                "limits.max_key_per_request",
                "must be at least 1".into(),
            ));
        }
        let mut sae_ids = BTreeMap::new();
        for (i, s) in cfg.saes.iter().enumerate() {
            if sae_ids.insert(s.id.clone(), i).is_some() {
                return Err(err(
                    &format!("sae[{i}].id"),
                    format!("SAE {} is registered twice", s.id),
                ));
            }
        }
        for (i, s) in cfg.saes.iter().enumerate() {
            if let Some(p) = s.peers.iter().find(|p| !sae_ids.contains_key(*p)) {
                return Err(err(
                    &format!("sae[{i}].peers"),
                    format!("{p} is not a registered SAE"),
                ));
            }
            if s.peers.contains(&s.id) {
                return Err(err(
                    &format!("sae[{i}].peers"),
                    "an SAE cannot pair with itself".into(),
                ));
            }
            let known = s.node == cfg.node.id
                || cfg.neighbours.iter().any(|n| n.id == s.node)
                || cfg.nodes.iter().any(|n| n.id == s.node);
            if !known {
                return Err(err(
                    &format!("sae[{i}].node"),
                    format!(
                        "{} is neither this node, a neighbour nor a [[node_info]]",
                        s.node
                    ),
                ));
            }
        }
        let mut link_ids = BTreeSet::new();
        for (i, lk) in cfg.links.iter().enumerate() {
            if !link_ids.insert(lk.id.clone()) {
                return Err(err(
                    &format!("link[{i}].id"),
                    format!("link {} is configured twice", lk.id),
                ));
            }
            if !cfg
                .neighbours
                .iter()
                .any(|n| n.id == lk.peer && n.link == lk.id)
            {
                return Err(err(
                    &format!("link[{i}].peer"),
                    format!("no [[neighbour]] {} with link = \"{}\"", lk.peer, lk.id),
                ));
            }
            if lk.capacity_bytes == 0 {
                return Err(err(
                    &format!("link[{i}].capacity_bytes"),
                    "must be positive".into(),
                ));
            }
            match &lk.source {
                SourceSection::Simulated {
                    block_bits, model, ..
                } => {
                    if *block_bits == 0 || block_bits % 8 != 0 {
                        return Err(err(
                            &format!("link[{i}].source.block_bits"),
                            format!("{block_bits} is not a positive multiple of 8"),
                        ));
                    }
                    model
                        .build()
                        .map_err(|e| err(&format!("link[{i}].source.model"), e.to_string()))?;
                }
                // The checks that need no file; the files are read by `check::offline`.
                SourceSection::Etsi014(dev) => {
                    dev.base_url()
                        .map_err(|e| err(&format!("link[{i}].source.url"), e.to_string()))?;
                    if dev.sae_id == dev.peer_sae_id {
                        return Err(err(
                            &format!("link[{i}].source.peer_sae_id"),
                            format!(
                                "{} is also sae_id: the peer is the node at the other end of \
                                 the link",
                                dev.peer_sae_id
                            ),
                        ));
                    }
                }
            }
        }
        for (i, n) in cfg.neighbours.iter().enumerate() {
            if n.peer_addr.is_none() == n.peer_addr_file.is_none() {
                return Err(err(
                    &format!("neighbour[{i}]"),
                    "set exactly one of peer_addr and peer_addr_file".into(),
                ));
            }
            if !link_ids.contains(&n.link) {
                return Err(err(
                    &format!("neighbour[{i}].link"),
                    format!("no [[link]] with id = \"{}\"", n.link),
                ));
            }
        }
        cfg.key_mode(None, None).map_err(|e| err("relay", e))?;
        if cfg.relay.pool_keys == 0 || !(1..=4096).contains(&cfg.relay.batch_keys()) {
            return Err(err(
                "relay",
                "pool_keys must be positive and batch_keys within 1..=4096".into(),
            ));
        }
        // A zero timeout or period makes no sense anywhere; say so rather than run with it.
        for (k, v) in [
            ("node.key_ttl_seconds", cfg.node.key_ttl_seconds),
            ("node.peer_timeout_ms", cfg.node.peer_timeout_ms),
            ("node.device_poll_ms", cfg.node.device_poll_ms),
            ("node.kek_period_days", cfg.node.kek_period_days),
            (
                "node.etsi_max_connections_per_client",
                cfg.node.etsi_max_connections_per_client as u64,
            ),
            ("relay.pool_ttl_seconds", cfg.relay.pool_ttl_seconds),
            ("relay.hop_timeout_ms", cfg.relay.hop_timeout_ms),
        ] {
            if v == 0 {
                return Err(err(k, "must be positive".into()));
            }
        }
        let prefix = &cfg.node.sae_uri_prefix;
        if prefix.is_empty() || qkd_kms::tls::NODE_URI_PREFIX.starts_with(prefix.as_str()) {
            return Err(err(
                "node.sae_uri_prefix",
                format!(
                    "{prefix:?} would read node certificates ({}<id>) as SAEs",
                    qkd_kms::tls::NODE_URI_PREFIX
                ),
            ));
        }
        // One entry per unordered pair: a second one would silently override the first.
        let mut pairs: BTreeMap<(SaeId, SaeId), usize> = BTreeMap::new();
        for (i, p) in cfg.pairs.iter().enumerate() {
            for sae in &p.saes {
                if !sae_ids.contains_key(sae) {
                    return Err(err(
                        &format!("pair[{i}].saes"),
                        format!("{sae} is not a registered SAE"),
                    ));
                }
            }
            let [a, b] = &p.saes;
            if a == b {
                return Err(err(
                    &format!("pair[{i}].saes"),
                    format!("{a} cannot pair with itself"),
                ));
            }
            let may =
                |x: &SaeId, y: &SaeId| cfg.saes.iter().any(|s| &s.id == x && s.peers.contains(y));
            if !(may(a, b) && may(b, a)) {
                return Err(err(
                    &format!("pair[{i}].saes"),
                    format!(
                        "{a} and {b} are not allowed to pair: each [[sae]] must list the other in \
                         its peers"
                    ),
                ));
            }
            let mode = cfg
                .key_mode(p.policy.as_deref(), p.suite.as_deref())
                .map_err(|e| err(&format!("pair[{i}]"), e))?;
            let key = if a <= b {
                (a.clone(), b.clone())
            } else {
                (b.clone(), a.clone())
            };
            if let Some(j) = pairs.insert(key, i) {
                let q = &cfg.pairs[j];
                let earlier = cfg
                    .key_mode(q.policy.as_deref(), q.suite.as_deref())
                    .map_err(|e| err(&format!("pair[{j}]"), e))?;
                let what = if earlier == mode {
                    format!("same pair as pair[{j}] ({a}, {b}); list each pair once")
                } else {
                    format!(
                        "conflicts with pair[{j}]: the pair ({a}, {b}) is configured twice with \
                         different policy or suite"
                    )
                };
                return Err(err(&format!("pair[{i}]"), what));
            }
        }
        // Every batch that crosses nodes is authenticated end to end, whatever the policy
        // (qkd-only batches too: docs/qkd-only.md), so each remote node this node's SAEs pair
        // with needs a pinned signing key.
        for s in cfg.saes.iter().filter(|s| s.node == cfg.node.id) {
            for peer in &s.peers {
                let Some(remote) = cfg.saes.iter().find(|x| &x.id == peer).map(|x| &x.node) else {
                    continue;
                };
                if remote == &cfg.node.id {
                    continue;
                }
                if !cfg
                    .nodes
                    .iter()
                    .any(|n| &n.id == remote && n.signing_public_key.is_some())
                {
                    return Err(err(
                        "node_info",
                        format!(
                            "{} pairs with {peer} at node {remote}, whose end-to-end signing key \
                             is not pinned: add a [[node_info]] with id = \"{remote}\" and its \
                             signing_public_key",
                            s.id
                        ),
                    ));
                }
            }
        }
        if let Some(skip) = &cfg.skip {
            check_skip(&cfg, skip, text).map_err(|(key, what)| err(&key, what))?;
        }
        if cfg.audit.file.is_relative() {
            cfg.audit.file = cfg.node.data_dir.join(&cfg.audit.file);
        }
        if let Some(siem) = &mut cfg.audit.siem {
            for p in [
                Some(&mut siem.ca),
                siem.client_cert.as_mut(),
                siem.client_key.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                abs(p);
            }
        }
        check_operations(&cfg, text).map_err(|(key, what)| err(&key, what))?;
        cfg.path = path.to_path_buf();
        Ok(cfg)
    }
}

/// The rules of `[skip]` (docs/skip.md §3); an error is the key (with its line) and the problem.
fn check_skip(cfg: &NodeConfig, skip: &SkipSection, text: &str) -> Result<(), (String, String)> {
    use qkd_kms::api::skip::MAX_ALGORITHM_LEN;
    if let Some(a) = &skip.algorithm
        && a.len() > MAX_ALGORITHM_LEN
    {
        return Err((
            "skip.algorithm".into(),
            format!(
                "{a:?} is {} bytes; at most {MAX_ALGORITHM_LEN} fit every SKIP client",
                a.len()
            ),
        ));
    }
    let others = [
        ("node.etsi_listen", Some(cfg.node.etsi_listen)),
        ("node.peer_listen", Some(cfg.node.peer_listen)),
        ("node.admin_listen", cfg.node.admin_listen),
        ("grpc.listen", cfg.grpc.as_ref().map(|g| g.listen)),
    ];
    if let Some((name, _)) = others
        .iter()
        .find(|(_, a)| skip.listen.port() != 0 && *a == Some(skip.listen))
    {
        return Err((
            "skip.listen".into(),
            format!(
                "{} is also {name}; give the SKIP listener its own port",
                skip.listen
            ),
        ));
    }
    if skip.routes.is_empty() {
        return Err((
            "skip.route".into(),
            "no [[skip.route]]: map at least one encryptor to a remote Key Provider".into(),
        ));
    }
    let at = |i: usize, field: &str, span: std::ops::Range<usize>| {
        let (line, col) = line_col(text, span.start);
        format!("skip.route[{i}].{field} (line {line}, column {col})")
    };
    let node_of = |sae: &SaeId| cfg.saes.iter().find(|s| &s.id == sae).map(|s| &s.node);
    let mut seen: BTreeMap<(&SaeId, &SystemId), usize> = BTreeMap::new();
    // Every route to one remote Key Provider must reach SAEs of one node.
    let mut remote_node: BTreeMap<&SystemId, (&NodeId, usize)> = BTreeMap::new();
    for (i, r) in skip.routes.iter().enumerate() {
        let (enc, remote, peer) = (
            r.encryptor.get_ref(),
            r.remote_system_id.get_ref(),
            r.peer_sae.get_ref(),
        );
        match node_of(enc) {
            Some(n) if n == &cfg.node.id => {}
            Some(n) => {
                return Err((
                    at(i, "encryptor", r.encryptor.span()),
                    format!(
                        "{enc} is attached to node {n}, not to this node {}",
                        cfg.node.id
                    ),
                ));
            }
            None => {
                return Err((
                    at(i, "encryptor", r.encryptor.span()),
                    format!("{enc} is not a registered SAE (add an [[sae]])"),
                ));
            }
        }
        let Some(peer_node) = node_of(peer) else {
            return Err((
                at(i, "peer_sae", r.peer_sae.span()),
                format!("{peer} is not a registered SAE (add an [[sae]])"),
            ));
        };
        if peer_node == &cfg.node.id {
            return Err((
                at(i, "peer_sae", r.peer_sae.span()),
                format!(
                    "{peer} is attached to this node too; pairs within one node are not served \
                     (every key comes from a QKD link)"
                ),
            ));
        }
        let lists =
            |x: &SaeId, y: &SaeId| cfg.saes.iter().any(|s| &s.id == x && s.peers.contains(y));
        if enc == peer || !(lists(enc, peer) && lists(peer, enc)) {
            return Err((
                at(i, "peer_sae", r.peer_sae.span()),
                format!(
                    "{enc} and {peer} are not allowed to pair: each [[sae]] must list the other in its peers"
                ),
            ));
        }
        if remote == &skip.local_system_id {
            return Err((
                at(i, "remote_system_id", r.remote_system_id.span()),
                format!(
                    "{remote} is this node's own local_system_id, but {peer} is attached to node \
                     {peer_node}"
                ),
            ));
        }
        if let Some(j) = seen.insert((enc, remote), i) {
            return Err((
                at(i, "remote_system_id", r.remote_system_id.span()),
                format!(
                    "{enc} already has a route to {remote} (skip.route[{j}]); one peer per remote Key Provider"
                ),
            ));
        }
        if let Some((n, j)) = remote_node.insert(remote, (peer_node, i))
            && n != peer_node
        {
            return Err((
                at(i, "remote_system_id", r.remote_system_id.span()),
                format!(
                    "{remote} names the Key Provider of node {n} in skip.route[{j}], but {peer} is attached to node {peer_node}"
                ),
            ));
        }
    }
    Ok(())
}

/// The rules of `[metrics]`, `[alarms]` and `[audit]`; an error is the key (with its line when
/// the file sets it) and the problem.
fn check_operations(cfg: &NodeConfig, text: &str) -> Result<(), (String, String)> {
    let at = |table: &str, key: &str| match key_line(text, table, key) {
        Some(line) => format!("{table}.{key} (line {line})"),
        None => format!("{table}.{key}"),
    };
    if cfg.metrics.enabled == Some(true) && cfg.node.admin_listen.is_none() {
        return Err((
            at("metrics", "enabled"),
            "metrics are served on the admin listener: set node.admin_listen".into(),
        ));
    }
    let a = &cfg.alarms;
    if a.interval_ms == 0 {
        return Err((at("alarms", "interval_ms"), "must be positive".into()));
    }
    if !(a.qber_max > 0.0 && a.qber_max <= 0.5) {
        return Err((
            at("alarms", "qber_max"),
            format!(
                "{} is not a QBER threshold: give a fraction in (0, 0.5], e.g. 0.08 for 8 %",
                a.qber_max
            ),
        ));
    }
    if let Some(level) = a.pool_min_keys
        && level > u64::from(cfg.relay.pool_keys)
    {
        return Err((
            at("alarms", "pool_min_keys"),
            format!(
                "{level} is above relay.pool_keys ({}): a pool never holds that many, so the                  alarm would never clear",
                cfg.relay.pool_keys
            ),
        ));
    }
    if a.certificate_warn_days == 0 || a.certificate_warn_days > 3650 {
        return Err((
            at("alarms", "certificate_warn_days"),
            "must be within 1..=3650".into(),
        ));
    }
    if a.quiet_seconds == 0 {
        return Err((at("alarms", "quiet_seconds"), "must be positive".into()));
    }
    if cfg.audit.queue == 0 {
        return Err((at("audit", "queue"), "must be positive".into()));
    }
    if let Some(s) = &cfg.audit.siem {
        let port = s
            .address
            .rsplit_once(':')
            .and_then(|(h, p)| (!h.is_empty()).then_some(p))
            .map(str::parse::<u16>);
        if !matches!(port, Some(Ok(p)) if p > 0) {
            return Err((
                at("audit.siem", "address"),
                format!(
                    "{:?} is not host:port (e.g. \"siem.example:6514\")",
                    s.address
                ),
            ));
        }
        if rustls::pki_types::ServerName::try_from(s.server_name().to_owned()).is_err() {
            return Err((
                at("audit.siem", "server_name"),
                format!("{:?} is not a DNS name or IP address", s.server_name()),
            ));
        }
        if s.client_cert.is_some() != s.client_key.is_some() {
            return Err((
                at("audit.siem", "client_cert"),
                "set both client_cert and client_key, or neither".into(),
            ));
        }
        if s.queue == 0 {
            return Err((at("audit.siem", "queue"), "must be positive".into()));
        }
        if s.facility > 23 {
            return Err((
                at("audit.siem", "facility"),
                format!("{} is not a syslog facility (0..=23)", s.facility),
            ));
        }
        if s.app_name.is_empty()
            || s.app_name.len() > 48
            || !s.app_name.chars().all(|c| c.is_ascii_graphic())
        {
            return Err((
                at("audit.siem", "app_name"),
                "must be 1 to 48 printable ASCII characters without spaces (RFC 5424 APP-NAME)"
                    .into(),
            ));
        }
    }
    Ok(())
}

/// The 1-based line where `key` is set in `[table]`, if the text sets it there.
fn key_line(text: &str, table: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(h) = t.strip_prefix('[') {
            current = h
                .trim_start_matches('[')
                .split(']')
                .next()?
                .trim()
                .to_owned();
            continue;
        }
        if current == table
            && let Some(rest) = t.strip_prefix(key)
            && rest.trim_start().starts_with('=')
        {
            return Some(i + 1);
        }
    }
    None
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |p| before.len() - p - 1)
        + 1;
    (line, col)
}

/// A small valid configuration (node A, one link to B, SAEs ENC-A and ENC-B), for unit tests
/// of this crate.
#[cfg(test)]
pub(crate) const TEST_CONFIG: &str = r#"
[node]
id = "A"
kme_id = "KME-A"
data_dir = "data"
etsi_listen = "127.0.0.1:0"
peer_listen = "127.0.0.1:0"

[tls]
cert = "a.pem"
key = "a.key"
ca = "ca.pem"

[[neighbour]]
id = "B"
kme_id = "KME-B"
link = "A-B"
peer_addr = "127.0.0.2:7000"

[[node_info]]
id = "B"
kme_id = "KME-B"
signing_public_key = "b-signing.pub"

[[link]]
id = "A-B"
peer = "B"
role = "master"
[link.source]
kind = "simulated"
start_unix_ms = 0
model = { kind = "constant-rate", bits_per_second = 1000000 }

[[sae]]
id = "ENC-A"
node = "A"
peers = ["ENC-B"]

[[sae]]
id = "ENC-B"
node = "B"
peers = ["ENC-A"]
"#;

#[cfg(test)]
mod tests {
    use super::*;

    use super::TEST_CONFIG as GOOD;

    fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
        NodeConfig::parse(Path::new("/etc/qkd/node.toml"), text)
    }

    #[test]
    fn a_pair_across_nodes_needs_the_remote_nodes_pinned_signing_key() {
        for policy in ["qkd+pq", "qkd-only", "pq-only"] {
            let text = GOOD.replace("signing_public_key = \"b-signing.pub\"\n", "")
                + &format!("\n[[pair]]\nsaes = [\"ENC-A\", \"ENC-B\"]\npolicy = \"{policy}\"\n");
            let e = parse(&text).unwrap_err();
            assert_eq!(e.key, "node_info", "{policy}: {e}");
            assert!(
                e.what.contains("not pinned") && e.what.contains("node B"),
                "{e}"
            );
        }
    }

    /// The link of GOOD backed by an ETSI 014 device instead of the simulator.
    fn with_device(extra: &str) -> String {
        GOOD.replace(
            "kind = \"simulated\"\nstart_unix_ms = 0\nmodel = { kind = \"constant-rate\", bits_per_second = 1000000 }\n",
            &format!(
                "kind = \"etsi014\"\nurl = \"https://qkd-a.example:8443\"\n\
                 ca = {{ file = \"dev/ca.pem\" }}\nclient_cert = {{ file = \"dev/a.crt\" }}\n\
                 client_key = {{ file = \"/abs/a.key\" }}\nexpected_kme_id = \"IDQ-1\"\n\
                 sae_id = \"node-a\"\npeer_sae_id = 12\n{extra}"
            ),
        )
    }

    #[test]
    fn a_device_link_parses_with_its_pem_paths_made_absolute() {
        let c = parse(&with_device(
            "allow_tls12 = true\n[link.source.limits]\nattempts = 5\n",
        ))
        .unwrap();
        let SourceSection::Etsi014(dev) = &c.links[0].source else {
            panic!("not a device link: {:?}", c.links[0].source);
        };
        assert_eq!(c.links[0].source.kind(), "etsi014");
        let file = |p: &PemSource| match p {
            PemSource::File(p) => p.clone(),
            PemSource::Pem(_) => panic!("inline"),
        };
        assert_eq!(file(&dev.ca), PathBuf::from("/etc/qkd/dev/ca.pem"));
        assert_eq!(file(&dev.client_cert), PathBuf::from("/etc/qkd/dev/a.crt"));
        assert_eq!(file(&dev.client_key), PathBuf::from("/abs/a.key"));
        assert_eq!(dev.peer_sae_id.as_str(), "12");
        assert!(dev.allow_tls12);
        assert_eq!(dev.limits.attempts, 5);
        // The simulator stays the source of existing configurations.
        assert_eq!(parse(GOOD).unwrap().links[0].source.kind(), "simulated");
    }

    #[test]
    fn device_link_errors_name_the_member() {
        let cases = [
            (
                with_device("").replace("https://qkd-a", "http://qkd-a"),
                "link[0].source.url",
                "HTTPS only",
            ),
            (
                with_device("").replace("peer_sae_id = 12", "peer_sae_id = \"node-a\""),
                "link[0].source.peer_sae_id",
                "also sae_id",
            ),
            (with_device("colour = \"red\"\n"), "line", "colour"),
            (
                with_device("").replace("expected_kme_id = \"IDQ-1\"\n", ""),
                "line",
                "expected_kme_id",
            ),
        ];
        for (text, key, what) in cases {
            let e = parse(&text).expect_err(key);
            let s = e.to_string();
            assert!(s.starts_with("/etc/qkd/node.toml: "), "{s}");
            assert!(e.key.contains(key), "key {:?} lacks {key:?} ({s})", e.key);
            assert!(s.contains(what), "{s} lacks {what:?}");
        }
    }

    #[test]
    fn good_config_parses_with_paths_made_absolute() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.node.data_dir, PathBuf::from("/etc/qkd/data"));
        assert_eq!(c.limits.key_size, 256);
        assert_eq!(c.saes.len(), 2);
        assert!(c.grpc.is_none());
    }

    #[test]
    fn grpc_section_is_optional_and_defaults_to_the_tls_files() {
        let c = parse(&(GOOD.to_string() + "\n[grpc]\nlisten = \"127.0.0.1:50051\"\n")).unwrap();
        let g = c.grpc.unwrap();
        assert_eq!(g.listen, "127.0.0.1:50051".parse().unwrap());
        assert_eq!((g.cert, g.key, g.ca), (None, None, None));
        assert_eq!(g.max_connections_per_client, 64);
        let c = parse(
            &(GOOD.to_string()
                + "\n[grpc]\nlisten = \"127.0.0.1:0\"\ncert = \"g.pem\"\nkey = \"g.key\"\n"),
        )
        .unwrap();
        let g = c.grpc.unwrap();
        assert_eq!(g.cert, Some(PathBuf::from("/etc/qkd/g.pem")));
        assert_eq!(g.key, Some(PathBuf::from("/etc/qkd/g.key")));
    }

    /// Defect 7: semantic rules that were missing. Each error names the key and the problem.
    #[test]
    fn semantic_rules_name_the_key() {
        let pair = |a: &str, b: &str, policy: &str| {
            format!("\n[[pair]]\nsaes = [\"{a}\", \"{b}\"]\npolicy = \"{policy}\"\n")
        };
        let extra_sae = "\n[[sae]]\nid = \"ENC-C\"\nnode = \"A\"\npeers = []\n";
        let cases = [
            (
                GOOD.to_string()
                    + &pair("ENC-A", "ENC-B", "qkd+pq")
                    + &pair("ENC-A", "ENC-B", "qkd+pq"),
                "pair[1]",
                "same pair as pair[0]",
            ),
            (
                GOOD.to_string()
                    + &pair("ENC-A", "ENC-B", "qkd+pq")
                    + &pair("ENC-B", "ENC-A", "qkd-only"),
                "pair[1]",
                "conflicts with pair[0]",
            ),
            (
                GOOD.to_string() + &pair("ENC-A", "ENC-A", "qkd+pq"),
                "pair[0].saes",
                "with itself",
            ),
            (
                GOOD.to_string() + extra_sae + &pair("ENC-A", "ENC-C", "qkd+pq"),
                "pair[0].saes",
                "not allowed",
            ),
            (
                GOOD.replace(
                    "peer_listen = \"127.0.0.1:0\"",
                    "peer_listen = \"127.0.0.1:0\"\nkey_ttl_seconds = 0",
                ),
                "node.key_ttl_seconds",
                "must be positive",
            ),
            (
                GOOD.replace(
                    "peer_listen = \"127.0.0.1:0\"",
                    "peer_listen = \"127.0.0.1:0\"\npeer_timeout_ms = 0",
                ),
                "node.peer_timeout_ms",
                "must be positive",
            ),
            (
                GOOD.replace(
                    "peer_listen = \"127.0.0.1:0\"",
                    "peer_listen = \"127.0.0.1:0\"\ndevice_poll_ms = 0",
                ),
                "node.device_poll_ms",
                "must be positive",
            ),
            (
                GOOD.replace(
                    "peer_listen = \"127.0.0.1:0\"",
                    "peer_listen = \"127.0.0.1:0\"\nkek_period_days = 0",
                ),
                "node.kek_period_days",
                "must be positive",
            ),
            (
                GOOD.to_string() + "\n[relay]\nhop_timeout_ms = 0\n",
                "relay.hop_timeout_ms",
                "must be positive",
            ),
            (
                GOOD.to_string() + "\n[relay]\npool_ttl_seconds = 0\n",
                "relay.pool_ttl_seconds",
                "must be positive",
            ),
            (
                GOOD.to_string() + "\n[grpc]\nlisten = \"127.0.0.1:0\"\ncert = \"g.pem\"\n",
                "grpc",
                "set both cert and key",
            ),
            (
                GOOD.to_string()
                    + "\n[grpc]\nlisten = \"127.0.0.1:0\"\nmax_connections_per_client = 0\n",
                "grpc.max_connections_per_client",
                "must be positive",
            ),
            (
                GOOD.to_string() + "\n[grpc]\nlisten = \"localhost:50051\"\n",
                "line 45, column 10",
                "invalid socket address",
            ),
        ];
        for (text, key, what) in cases {
            let e = parse(&text).expect_err(key);
            let s = e.to_string();
            assert!(e.key.contains(key), "key {:?} lacks {key:?} ({s})", e.key);
            assert!(s.contains(what), "{s} lacks {what:?}");
        }
    }

    const SKIP: &str = r#"
[skip]
listen = "127.0.0.1:0"
local_system_id = "KP_A"

[[skip.route]]
encryptor = "ENC-A"
remote_system_id = "KP_B"
peer_sae = "ENC-B"
"#;

    #[test]
    fn batch_keys_default_to_a_sixteenth_of_the_pool_within_bounds() {
        let batch = |relay: &str| {
            parse(&format!("{GOOD}\n[relay]\n{relay}"))
                .map(|c| c.relay.batch_keys())
                .map_err(|e| e.to_string())
        };
        assert_eq!(parse(GOOD).unwrap().relay.batch_keys(), 64);
        assert_eq!(batch("pool_keys = 1024\n"), Ok(64));
        assert_eq!(batch("pool_keys = 100\n"), Ok(64));
        assert_eq!(batch("pool_keys = 2048\n"), Ok(128));
        assert_eq!(batch("pool_keys = 96000\n"), Ok(256));
        // Configured, it stands, whatever the pool.
        assert_eq!(batch("pool_keys = 96000\nbatch_keys = 64\n"), Ok(64));
        assert_eq!(batch("pool_keys = 100\nbatch_keys = 1000\n"), Ok(1000));
        for bad in ["batch_keys = 0\n", "batch_keys = 4097\n"] {
            let e = batch(bad).unwrap_err();
            assert!(e.contains("batch_keys within 1..=4096"), "{bad}: {e}");
        }
    }

    #[test]
    fn skip_section_parses() {
        let c = parse(&(GOOD.to_string() + SKIP)).unwrap();
        let skip = c.skip.unwrap();
        assert_eq!(skip.local_system_id.as_str(), "KP_A");
        assert!(skip.entropy);
        assert_eq!(skip.routes[0].peer_sae.get_ref().as_str(), "ENC-B");
        assert!(parse(GOOD).unwrap().skip.is_none());
    }

    #[test]
    fn operations_sections_default_in_one_place_and_parse() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.audit.file, PathBuf::from("/etc/qkd/data/audit.log"));
        assert!(c.audit.siem.is_none());
        assert_eq!(c.alarms.qber_max, AlarmsSection::default().qber_max);
        assert_eq!(
            c.alarms.pool_min_keys(&c.relay),
            u64::from(c.relay.pool_keys) / 4
        );
        // No admin listener in GOOD: nothing to serve metrics on, and that is no error.
        assert!(!c.metrics.served(&c.node));
        let c = parse(
            &(GOOD.replace(
                "peer_listen = \"127.0.0.1:0\"\n",
                "peer_listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n",
            ) + "\n[alarms]\nqber_max = 0.05\npool_min_keys = 10\n\n[audit]\nfile = \"/var/log/qkd/audit.log\"\n\n[audit.siem]\naddress = \"siem.example:6514\"\nca = \"siem-ca.pem\"\n"),
        )
        .unwrap();
        assert!(c.metrics.served(&c.node));
        assert_eq!(c.alarms.pool_min_keys(&c.relay), 10);
        assert_eq!(c.audit.file, PathBuf::from("/var/log/qkd/audit.log"));
        let siem = c.audit.siem.unwrap();
        assert_eq!(siem.ca, PathBuf::from("/etc/qkd/siem-ca.pem"));
        assert_eq!(siem.server_name(), "siem.example");
        assert_eq!((siem.queue, siem.facility), (10_000, 13));
    }

    /// Every `[metrics]`/`[alarms]`/`[audit]` rule: the error names the file, the field with
    /// its line, and the problem.
    #[test]
    fn operations_errors_name_file_line_and_field() {
        let siem = "\n[audit.siem]\naddress = \"siem.example:6514\"\nca = \"ca.pem\"\n";
        let cases = [
            (
                "\n[metrics]\nenabled = true\n".to_string(),
                "metrics.enabled",
                "admin_listen",
            ),
            (
                "\n[alarms]\nqber_max = 8\n".into(),
                "alarms.qber_max",
                "fraction",
            ),
            (
                "\n[alarms]\ninterval_ms = 0\n".into(),
                "alarms.interval_ms",
                "positive",
            ),
            (
                "\n[alarms]\npool_min_keys = 5000\n".into(),
                "alarms.pool_min_keys",
                "never clear",
            ),
            (
                "\n[alarms]\ncertificate_warn_days = 0\n".into(),
                "alarms.certificate_warn_days",
                "1..=3650",
            ),
            ("\n[audit]\nqueue = 0\n".into(), "audit.queue", "positive"),
            (
                siem.replace("siem.example:6514", "siem.example"),
                "audit.siem.address",
                "host:port",
            ),
            (
                siem.to_string() + "client_cert = \"c.pem\"\n",
                "audit.siem.client_cert",
                "client_key",
            ),
            (
                siem.to_string() + "facility = 24\n",
                "audit.siem.facility",
                "0..=23",
            ),
            (
                siem.to_string() + "app_name = \"qkd node\"\n",
                "audit.siem.app_name",
                "APP-NAME",
            ),
        ];
        for (extra, key, what) in cases {
            let text = GOOD.to_string() + &extra;
            let e = parse(&text).expect_err(key);
            let s = e.to_string();
            assert!(s.starts_with("/etc/qkd/node.toml: "), "{s}");
            assert!(
                e.key.starts_with(key),
                "key {:?} lacks {key:?} ({s})",
                e.key
            );
            let field = key.rsplit('.').next().unwrap();
            let line = text
                .lines()
                .position(|l| l.starts_with(field))
                .map(|i| i + 1);
            if let Some(line) = line {
                assert!(e.key.contains(&format!("(line {line})")), "{s}");
            }
            assert!(s.contains(what), "{s}");
        }
        // Unknown fields are refused with their line, like everywhere else.
        let e = parse(&(GOOD.to_string() + "\n[alarms]\nqber_maxx = 0.1\n")).unwrap_err();
        assert!(e.key.starts_with("line "), "{e}");
    }

    /// Every `[skip]` rule: the error names the file, the field and its line, and the problem.
    #[test]
    fn skip_errors_name_file_line_and_field() {
        let text = GOOD.to_string() + SKIP;
        let extra_sae = "\n[[sae]]\nid = \"ENC-A2\"\nnode = \"A\"\npeers = []\n";
        let cases = [
            (
                text.replace("encryptor = \"ENC-A\"", "encryptor = \"ENC-B\""),
                "skip.route[0].encryptor",
                "attached to node B",
            ),
            (
                text.replace("encryptor = \"ENC-A\"", "encryptor = \"ENC-X\""),
                "skip.route[0].encryptor",
                "not a registered SAE",
            ),
            (
                text.replace("peer_sae = \"ENC-B\"", "peer_sae = \"ENC-X\""),
                "skip.route[0].peer_sae",
                "not a registered SAE",
            ),
            (
                text.replace("encryptor = \"ENC-A\"", "encryptor = \"ENC-A2\"") + extra_sae,
                "skip.route[0].peer_sae",
                "not allowed to pair",
            ),
            (
                text.replace("remote_system_id = \"KP_B\"", "remote_system_id = \"KP_A\""),
                "skip.route[0].remote_system_id",
                "own local_system_id",
            ),
            (
                text.clone()
                    + "\n[[skip.route]]\nencryptor = \"ENC-A\"\nremote_system_id = \"KP_B\"\npeer_sae = \"ENC-B\"\n",
                "skip.route[1].remote_system_id",
                "already has a route",
            ),
            (
                text.replace("peer_sae = \"ENC-B\"", "peer_sae = \"ENC-A2\"")
                    + &extra_sae.replace("peers = []", "peers = [\"ENC-A\"]"),
                "skip.route[0].peer_sae",
                "attached to this node too",
            ),
        ];
        for (text, key, what) in cases {
            let e = parse(&text).expect_err(key);
            let s = e.to_string();
            assert!(s.starts_with("/etc/qkd/node.toml: "), "{s}");
            assert!(
                e.key.starts_with(key),
                "key {:?} lacks {key:?} ({s})",
                e.key
            );
            let field = key.rsplit('.').next().unwrap();
            // The line of the last occurrence of the field (the offending route is the last one).
            let line = text
                .lines()
                .enumerate()
                .filter(|(_, l)| l.starts_with(&format!("{field} =")))
                .map(|(i, _)| i + 1)
                .last()
                .unwrap();
            assert!(
                e.key.contains(&format!("(line {line}, column")),
                "{s} lacks line {line}"
            );
            assert!(s.contains(what), "{s} lacks {what:?}");
        }
        // Syntax and ID errors come from the TOML parser, with line and column.
        for (bad, what) in [
            (
                text.replace("local_system_id = \"KP_A\"", "local_system_id = \"KP A\""),
                "system ID contains ' '",
            ),
            (
                text.replace(
                    "remote_system_id = \"KP_B\"",
                    "remote_system_id = \"KP_B_is_a_very_long_name_indeed_x\"",
                ),
                "at most 32",
            ),
            (
                text.replace(
                    "local_system_id = \"KP_A\"",
                    "local_system_id = \"KP_A\"\ncolour = 1",
                ),
                "unknown field",
            ),
        ] {
            let e = parse(&bad).unwrap_err();
            assert!(e.key.starts_with("line "), "{e}");
            assert!(e.to_string().contains(what), "{e} lacks {what:?}");
        }
        let clash = text
            .replace(
                "listen = \"127.0.0.1:0\"\nlocal_system_id",
                "listen = \"127.0.0.2:7000\"\nlocal_system_id",
            )
            .replace(
                "etsi_listen = \"127.0.0.1:0\"",
                "etsi_listen = \"127.0.0.2:7000\"",
            );
        let e = parse(&clash).unwrap_err();
        assert_eq!(e.key, "skip.listen", "{e}");
        assert!(e.what.contains("node.etsi_listen"), "{e}");
        let long = text.replace(
            "local_system_id = \"KP_A\"",
            "local_system_id = \"KP_A\"\nalgorithm = \"a-very-long-algorithm\"",
        );
        assert_eq!(parse(&long).unwrap_err().key, "skip.algorithm");
    }

    #[test]
    fn errors_name_file_key_and_problem() {
        let cases = [
            (
                GOOD.replace("id = \"ENC-A\"", "id = \"ENC A\""),
                "line",
                "SAE ID contains ' '",
            ),
            (
                GOOD.replace("peers = [\"ENC-B\"]", "peers = [\"ENC-X\"]"),
                "sae[0].peers",
                "ENC-X is not a registered SAE",
            ),
            (
                GOOD.replace("role = \"master\"", "role = \"boss\""),
                "line",
                "unknown variant",
            ),
            (
                GOOD.replace("[limits]", "") + "\n[limits]\nkey_size = 100\n",
                "limits.key_size",
                "not a positive multiple of 8",
            ),
            (
                GOOD.replace("peer_addr = \"127.0.0.2:7000\"", ""),
                "neighbour[0]",
                "exactly one of",
            ),
            (
                GOOD.replace("bits_per_second = 1000000", "bits_per_second = \"fast\""),
                "line",
                "invalid type",
            ),
            (
                GOOD.replace("kme_id = \"KME-A\"", "kme_id = \"KME-A\"\ncolour = \"red\""),
                "line 5",
                "unknown field",
            ),
        ];
        for (text, key, what) in cases {
            let e = parse(&text).unwrap_err();
            let s = e.to_string();
            assert!(s.starts_with("/etc/qkd/node.toml: "), "{s}");
            assert!(e.key.contains(key), "key {:?} lacks {key:?} ({s})", e.key);
            assert!(s.contains(what), "{s} lacks {what:?}");
        }
    }
}
