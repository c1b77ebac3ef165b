//! A read-only, ETSI GS QKD 015-style view of the node for SDN controllers and operators: the
//! node, its QKD interfaces (one per link end), its links with secret key rate and status, and
//! its applications (SAE pairs) with QoS and consumption, as JSON whose names follow the YANG
//! module `etsi-qkd-sdn-node` (served on the admin listener at
//! `GET /restconf/data/etsi-qkd-sdn-node:qkd_node`).
//!
//! Where the module wants UUIDs, they are UUIDv5 under one fixed namespace ([`NAMESPACE`]) of
//! names built from our identifiers ([`node_uuid`], [`link_uuid`], [`interface_uuid`],
//! [`app_uuid`]), so every node derives the same UUID for the same thing and a restart changes
//! none (docs/operations.md gives the mapping). Our own fields beside the module's carry the
//! `qkd-stack:` prefix, as a YANG augmentation would.
//!
//! [`view`] is a pure function of what the node observed ([`Observed`]); the admin listener
//! gathers the observation. It never sees a key byte or a key ID.

use qkd_kms::manager::LinkLevel;
use qkd_kms::relay::topology::{LinkAdmin, Topology};
use qkd_types::{LinkId, NodeId, SaeId, UnixMillis};
use serde::Serialize;
use uuid::Uuid;

use crate::config::NodeConfig;

/// The namespace of every UUID in the view (UUIDv5). Fixed forever: changing it changes every
/// identifier a controller knows.
pub const NAMESPACE: Uuid = Uuid::from_u128(0x86b6_8adb_0326_42ba_a728_0897_f34e_8743);

/// The RESTCONF path of the view.
pub const PATH: &str = "/restconf/data/etsi-qkd-sdn-node:qkd_node";

/// The media type of the view (RFC 8040).
pub const MEDIA_TYPE: &str = "application/yang-data+json";

/// `qkdn_id` of a node: UUIDv5 of `node:<node ID>`.
pub fn node_uuid(node: &NodeId) -> Uuid {
    Uuid::new_v5(&NAMESPACE, format!("node:{node}").as_bytes())
}

/// `qkdl_id` of a link (the same at both ends): UUIDv5 of `link:<link ID>`.
pub fn link_uuid(link: &LinkId) -> Uuid {
    Uuid::new_v5(&NAMESPACE, format!("link:{link}").as_bytes())
}

/// `qkdi_id` of a node's end of a link: UUIDv5 of `interface:<node ID>/<link ID>`.
pub fn interface_uuid(node: &NodeId, link: &LinkId) -> Uuid {
    Uuid::new_v5(&NAMESPACE, format!("interface:{node}/{link}").as_bytes())
}

/// `app_id` of an SAE pair (the same at both ends): UUIDv5 of `app:<master>-><slave>`.
pub fn app_uuid(master: &SaeId, slave: &SaeId) -> Uuid {
    Uuid::new_v5(&NAMESPACE, format!("app:{master}->{slave}").as_bytes())
}

/// What the view is built from, fixed at start.
#[derive(Debug, Clone)]
pub struct Setup {
    /// This node.
    pub node: NodeId,
    /// When the node started (the start of every application's statistics).
    pub started_at: UnixMillis,
    /// The URI prefix of SAE identities (`server_app_id`, `client_app_id`).
    pub sae_uri_prefix: String,
    /// Key size of pooled keys, bits.
    pub key_size_bits: u32,
    /// Seconds a key is kept for its slave (`app_qos.ttl`).
    pub key_ttl_seconds: u64,
    /// Ready keys a pool is kept at.
    pub pool_keys: u32,
    /// The applications: every SAE pair that may share keys with exactly one SAE attached here.
    pub apps: Vec<AppSetup>,
}

/// The view's configured part as the admin listener reads it; a reload replaces it.
pub type SharedSetup = std::sync::Arc<std::sync::RwLock<std::sync::Arc<Setup>>>;

/// The configured part in force.
pub fn current(shared: &SharedSetup) -> std::sync::Arc<Setup> {
    shared.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// One application: an ordered (master, slave) pair.
#[derive(Debug, Clone)]
pub struct AppSetup {
    /// The master SAE (initiator: `server_app_id`).
    pub master: SaeId,
    /// The slave SAE (`client_app_id`).
    pub slave: SaeId,
    /// The node of the SAE not attached here.
    pub remote_node: NodeId,
    /// Whether the master is attached here (its pool is kept here).
    pub master_here: bool,
    /// The pair's protection policy and suite.
    pub policy: String,
    /// Hybrid suite.
    pub suite: String,
}

impl Setup {
    /// The view's fixed part, from a checked configuration.
    pub fn of(cfg: &NodeConfig, started_at: UnixMillis) -> anyhow::Result<Self> {
        let node_of = |sae: &SaeId| {
            cfg.saes
                .iter()
                .find(|s| &s.id == sae)
                .map(|s| s.node.clone())
        };
        let mut apps = Vec::new();
        for (master, slave) in crate::operations::delivery_pairs(cfg) {
            let (Some(mn), Some(sn)) = (node_of(&master), node_of(&slave)) else {
                continue;
            };
            let master_here = mn == cfg.node.id;
            let entry = cfg
                .pairs
                .iter()
                .find(|p| p.saes.contains(&master) && p.saes.contains(&slave));
            let mode = cfg
                .key_mode(
                    entry.and_then(|p| p.policy.as_deref()),
                    entry.and_then(|p| p.suite.as_deref()),
                )
                .map_err(anyhow::Error::msg)?;
            apps.push(AppSetup {
                remote_node: if master_here { sn } else { mn },
                master,
                slave,
                master_here,
                policy: mode.protection.to_string(),
                suite: mode.suite.to_string(),
            });
        }
        Ok(Self {
            node: cfg.node.id.clone(),
            started_at,
            sae_uri_prefix: cfg.node.sae_uri_prefix.clone(),
            key_size_bits: cfg.limits.key_size,
            key_ttl_seconds: cfg.node.key_ttl_seconds,
            pool_keys: cfg.relay.pool_keys,
            apps,
        })
    }
}

/// What the node observed now.
#[derive(Debug)]
pub struct Observed {
    /// Now.
    pub now: UnixMillis,
    /// Each link's levels and what its source reports.
    pub links: Vec<ObservedLink>,
    /// The link-state database (routes, the far ends' interfaces).
    pub topology: Topology,
    /// Per application (in [`Setup::apps`]' order): keys delivered since start, ready keys.
    pub apps: Vec<(u64, Option<u64>)>,
}

/// One link as observed.
#[derive(Debug)]
pub struct ObservedLink {
    /// Levels, role, operator's choice.
    pub level: LinkLevel,
    /// What the source reports (`None`: no answer).
    pub device: Option<qkd_hardware::LinkStatus>,
    /// Whether the neighbour answers adverts.
    pub peer_reachable: bool,
}

/// The view as a JSON value: `{"etsi-qkd-sdn-node:qkd_node": {...}}`.
pub fn view(setup: &Setup, seen: &Observed) -> serde_json::Value {
    let me = node_uuid(&setup.node);
    let mut interfaces = Vec::new();
    let mut links = Vec::new();
    for l in &seen.links {
        let lv = &l.level;
        let device_up = matches!(
            l.device.as_ref().map(|d| &d.state),
            Some(qkd_hardware::LinkState::Up)
        );
        let aborted = matches!(
            l.device.as_ref().map(|d| &d.state),
            Some(qkd_hardware::LinkState::Aborted { .. })
        );
        let role = match lv.role {
            qkd_hardware::LinkRole::Master => "etsi-qkd-node-types:TRANSMITTER",
            qkd_hardware::LinkRole::Slave => "etsi-qkd-node-types:RECEIVER",
        };
        interfaces.push(Interface {
            qkdi_id: interface_uuid(&setup.node, &lv.link),
            qkdi_model: lv.source_kind.clone(),
            qkdi_att_point: AttPoint {
                device: lv.source_kind.clone(),
                port: lv.link.to_string(),
            },
            qkdi_capabilities: InterfaceCapabilities { role_support: role },
            qkdi_status: match (device_up, aborted) {
                (true, _) => "etsi-qkd-node-types:UP",
                (false, true) => "etsi-qkd-node-types:FAILURE",
                (false, false) => "etsi-qkd-node-types:DOWN",
            },
            link: lv.link.clone(),
        });
        // ACTIVE: producing key towards a reachable neighbour; PASSIVE: not producing, but
        // stored link key is left; OFF: neither.
        let status = if device_up && l.peer_reachable {
            "etsi-qkd-node-types:ACTIVE"
        } else if lv.available_bytes > 0 {
            "etsi-qkd-node-types:PASSIVE"
        } else {
            "etsi-qkd-node-types:OFF"
        };
        let skr = l
            .device
            .as_ref()
            .and_then(|d| d.secret_key_rate_bps)
            .map(|r| r.max(0.0).round() as u64);
        links.push(Link {
            qkdl_id: link_uuid(&lv.link),
            qkdl_enable: lv.admin == LinkAdmin::Enabled,
            qkdl_status: status,
            qkdl_type: "etsi-qkd-node-types:PHYS",
            qkdl_local: End {
                qkdn_id: me,
                qkdi_id: interface_uuid(&setup.node, &lv.link),
            },
            qkdl_remote: End {
                qkdn_id: node_uuid(&lv.peer),
                qkdi_id: interface_uuid(&lv.peer, &lv.link),
            },
            phys_qkd_role: role,
            skr,
            link_id: lv.link.clone(),
            peer: lv.peer.clone(),
            available_bits: lv.available_bytes * 8,
            qber: l.device.as_ref().and_then(|d| d.qber),
            admin: lv.admin,
        });
    }
    let edges = seen.topology.edges();
    let mut apps = Vec::new();
    for (a, (delivered, ready)) in setup.apps.iter().zip(&seen.apps) {
        // The links a new batch of this pair would be relayed over now.
        let backing: Vec<Uuid> = seen
            .topology
            .route(&setup.node, &a.remote_node, 0)
            .map(|path| {
                path.windows(2)
                    .filter_map(|w| edges.get(&(w[0].clone(), w[1].clone())))
                    .map(|e| link_uuid(&e.link))
                    .collect()
            })
            .unwrap_or_default();
        let uri = |s: &SaeId| format!("{}{s}", setup.sae_uri_prefix);
        apps.push(App {
            app_id: app_uuid(&a.master, &a.slave),
            app_status: if backing.is_empty() && a.remote_node != setup.node {
                "etsi-qkd-node-types:DISCONNECTED"
            } else {
                "etsi-qkd-node-types:ON"
            },
            app_type: "etsi-qkd-node-types:CLIENT",
            server_app_id: uri(&a.master),
            client_app_id: vec![uri(&a.slave)],
            app_qos: Qos {
                ttl: setup.key_ttl_seconds,
                clients_shared_path_enable: false,
                clients_shared_keys_required: false,
            },
            app_statistics: Statistics {
                statistics: vec![Stat {
                    start_time: crate::audit::rfc3339(setup.started_at),
                    end_time: crate::audit::rfc3339(seen.now),
                    consumed_bits: delivered.saturating_mul(u64::from(setup.key_size_bits)),
                }],
            },
            backing_qkdl_id: backing,
            local_qkdn_id: me,
            remote_qkdn_id: node_uuid(&a.remote_node),
            pool: Pool {
                master_here: a.master_here,
                ready_keys: *ready,
                target_keys: a.master_here.then_some(setup.pool_keys),
                key_size_bits: setup.key_size_bits,
                keys_delivered: *delivered,
                policy: a.policy.clone(),
                suite: a.suite.clone(),
            },
        });
    }
    let doc = QkdNode {
        qkdn_id: me,
        qkdn_status: "etsi-qkd-node-types:UP",
        qkdn_version: concat!("qkd-stack ", env!("CARGO_PKG_VERSION")),
        qkdn_location_id: setup.node.to_string(),
        qkdn_capabilities: Capabilities {
            link_stats_support: true,
            application_stats_support: true,
            key_relay_mode_enable: true,
        },
        qkd_applications: Apps { qkd_app: apps },
        qkd_interfaces: Interfaces {
            qkd_interface: interfaces,
        },
        qkd_links: Links { qkd_link: links },
        node_id: setup.node.clone(),
    };
    serde_json::json!({ "etsi-qkd-sdn-node:qkd_node": doc })
}

#[derive(Debug, Serialize)]
struct QkdNode {
    qkdn_id: Uuid,
    qkdn_status: &'static str,
    qkdn_version: &'static str,
    qkdn_location_id: String,
    qkdn_capabilities: Capabilities,
    qkd_applications: Apps,
    qkd_interfaces: Interfaces,
    qkd_links: Links,
    #[serde(rename = "qkd-stack:node_id")]
    node_id: NodeId,
}

#[derive(Debug, Serialize)]
struct Capabilities {
    link_stats_support: bool,
    application_stats_support: bool,
    key_relay_mode_enable: bool,
}

#[derive(Debug, Serialize)]
struct Apps {
    qkd_app: Vec<App>,
}

#[derive(Debug, Serialize)]
struct App {
    app_id: Uuid,
    app_status: &'static str,
    app_type: &'static str,
    server_app_id: String,
    client_app_id: Vec<String>,
    app_qos: Qos,
    app_statistics: Statistics,
    backing_qkdl_id: Vec<Uuid>,
    local_qkdn_id: Uuid,
    remote_qkdn_id: Uuid,
    #[serde(rename = "qkd-stack:pool")]
    pool: Pool,
}

#[derive(Debug, Serialize)]
struct Qos {
    /// Seconds a key waits for its slave.
    ttl: u64,
    clients_shared_path_enable: bool,
    clients_shared_keys_required: bool,
}

#[derive(Debug, Serialize)]
struct Statistics {
    statistics: Vec<Stat>,
}

#[derive(Debug, Serialize)]
struct Stat {
    start_time: String,
    end_time: String,
    consumed_bits: u64,
}

#[derive(Debug, Serialize)]
struct Pool {
    master_here: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    ready_keys: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_keys: Option<u32>,
    key_size_bits: u32,
    keys_delivered: u64,
    policy: String,
    suite: String,
}

#[derive(Debug, Serialize)]
struct Interfaces {
    qkd_interface: Vec<Interface>,
}

#[derive(Debug, Serialize)]
struct Interface {
    qkdi_id: Uuid,
    qkdi_model: String,
    qkdi_att_point: AttPoint,
    qkdi_capabilities: InterfaceCapabilities,
    qkdi_status: &'static str,
    #[serde(rename = "qkd-stack:link_id")]
    link: LinkId,
}

#[derive(Debug, Serialize)]
struct AttPoint {
    device: String,
    port: String,
}

#[derive(Debug, Serialize)]
struct InterfaceCapabilities {
    role_support: &'static str,
}

#[derive(Debug, Serialize)]
struct Links {
    qkd_link: Vec<Link>,
}

#[derive(Debug, Serialize)]
struct Link {
    qkdl_id: Uuid,
    qkdl_enable: bool,
    qkdl_status: &'static str,
    qkdl_type: &'static str,
    qkdl_local: End,
    qkdl_remote: End,
    phys_qkd_role: &'static str,
    /// Secret key rate, bit/s, as the device reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    skr: Option<u64>,
    #[serde(rename = "qkd-stack:link_id")]
    link_id: LinkId,
    #[serde(rename = "qkd-stack:peer")]
    peer: NodeId,
    #[serde(rename = "qkd-stack:available_bits")]
    available_bits: u64,
    #[serde(rename = "qkd-stack:qber", skip_serializing_if = "Option::is_none")]
    qber: Option<f64>,
    #[serde(rename = "qkd-stack:admin")]
    admin: LinkAdmin,
}

#[derive(Debug, Serialize)]
struct End {
    qkdn_id: Uuid,
    qkdi_id: Uuid,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The UUIDs are stable (pinned values: a change breaks every controller's references) and
    /// both ends of a link name it, and each other's interface, alike.
    #[test]
    fn uuids_are_stable_and_shared_by_both_ends() {
        let a = NodeId::parse("A").unwrap();
        let b = NodeId::parse("B").unwrap();
        let l = LinkId::parse("A-B").unwrap();
        assert_eq!(
            node_uuid(&a),
            Uuid::new_v5(&NAMESPACE, b"node:A"),
            "UUIDv5 of node:<id>"
        );
        assert_eq!(node_uuid(&a).get_version_num(), 5);
        assert_eq!(
            node_uuid(&a).to_string(),
            Uuid::new_v5(
                &"86b68adb-0326-42ba-a728-0897f34e8743".parse().unwrap(),
                b"node:A"
            )
            .to_string()
        );
        assert_ne!(node_uuid(&a), node_uuid(&b));
        assert_ne!(interface_uuid(&a, &l), interface_uuid(&b, &l));
        assert_ne!(link_uuid(&l), interface_uuid(&a, &l));
        let m = SaeId::parse("ENC-A1").unwrap();
        let s = SaeId::parse("ENC-B1").unwrap();
        assert_ne!(app_uuid(&m, &s), app_uuid(&s, &m));
    }
}
