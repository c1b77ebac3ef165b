//! `qkd-node demo`: a network of trusted nodes on loopback, each a real `qkd-node run` process
//! with its own data directory, embedded store and ETSI 014 endpoint, joined by simulated QKD
//! links. First run generates the test PKI, link seeds and configurations into the data
//! directory; later runs reuse them (and the nodes their recorded ports).
//!
//! Every node with encryptors is also a SKIP Key Provider (`KP_<node>`) with a route for each of its SAEs to
//! each of their peers. Once every node has bound its listeners, the demo writes `demo.json`
//! (atomically) describing the running network, every endpoint of every node included, and
//! prints ready-to-paste `curl` commands for ETSI 014 and SKIP.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use qkd_kms::manager::RelayConfig;
use qkd_kms::pki::DemoPki;
use qkd_simulator::link::SimulatedLink;
use qkd_types::{LinkId, NodeId, SaeId};
use serde::Serialize;

use crate::daemon::{LISTEN_FILE, ListenRecord, seed_path, write_atomic};

/// Schema version of `demo.json`.
pub const DEMO_SCHEMA_VERSION: u32 = 2;
/// Fibre lengths of the demo's links, km (physics model).
const METRO_KM: [f64; 5] = [25.0, 38.0, 31.0, 44.0, 52.0];

/// URI SAN prefix of the demo's SAE certificates.
pub const SAE_PREFIX: &str = "urn:qkd:sae:";

/// Arguments of `qkd-node demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Directory for PKI, configurations, stores and logs (created on first run).
    #[arg(long, default_value = "demo-data")]
    pub data_dir: PathBuf,
    /// Give every simulated link this constant secret key rate, in bit/s, instead of the
    /// physics model (decoy-state BB84 over metro fibre, GHz hardware, lengths of 25 to 52 km:
    /// 2.3 to 4.4 Mbit/s of secret key per link).
    #[arg(long)]
    pub link_rate_bps: Option<u64>,
    /// Write the configuration and exit without starting nodes.
    #[arg(long)]
    pub setup_only: bool,
    /// Network shape: `demo` (chain A-B-C-D-E with a second path B-D), `pair` (A-B), `triangle`
    /// (A-B, B-C, A-C),
    /// `chain5` (A-B-C-D-E), `mesh` (two disjoint paths A-B-E and A-C-D-E) or
    /// `random:<nodes>:<seed>` (nodes N01, N02... in a seeded random mesh of average degree 3,
    /// for growth benchmarks).
    #[arg(long, default_value = "demo")]
    pub topology: String,
    /// Protection of every pair: `qkd+pq` (default), `QKD+PQ`, `pq-only` or `qkd-only`.
    #[arg(long, default_value = "qkd+pq")]
    pub policy: String,
    /// Finished keys each node keeps ready per SAE pair.
    #[arg(long, default_value_t = 1024)]
    pub pool_keys: u32,
}

/// One node of the demo topology.
#[derive(Debug, Clone)]
struct DemoNode {
    id: NodeId,
    ip: Ipv4Addr,
}

/// The demo topology: nodes, links (first node of each pair is the device master), SAEs.
struct Topology {
    nodes: Vec<DemoNode>,
    links: Vec<(LinkId, usize, usize)>,
    saes: Vec<(SaeId, usize, Vec<String>)>,
}

fn topology(name: &str) -> Result<Topology> {
    if let Some(spec) = name.strip_prefix("random:") {
        let (n, seed) = spec
            .split_once(':')
            .and_then(|(n, s)| Some((n.parse().ok()?, s.parse().ok()?)))
            .with_context(|| format!("topology {name:?}: use random:<nodes>:<seed>"))?;
        return random_mesh(n, seed);
    }
    let letters = ["A", "B", "C", "D", "E"];
    let count = match name {
        "pair" => 2,
        "triangle" => 3,
        _ => 5,
    };
    let nodes = letters[..count]
        .iter()
        .enumerate()
        .map(|(i, id)| {
            Ok(DemoNode {
                id: NodeId::parse(id)?,
                ip: Ipv4Addr::new(127, 0, 0, i as u8 + 1),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let edges: &[(usize, usize)] = match name {
        "pair" => &[(0, 1)],
        "triangle" => &[(0, 1), (1, 2), (0, 2)],
        "chain5" => &[(0, 1), (1, 2), (2, 3), (3, 4)],
        "demo" => &[(0, 1), (1, 2), (2, 3), (3, 4), (1, 3)],
        "mesh" => &[(0, 1), (1, 4), (0, 2), (2, 3), (3, 4)],
        other => bail!(
            "unknown topology {other:?}: use demo, pair, triangle, chain5, mesh or random:<nodes>:<seed>"
        ),
    };
    let links = edges
        .iter()
        .map(|&(a, b)| {
            Ok((
                LinkId::parse(&format!("{}-{}", letters[a], letters[b]))?,
                a,
                b,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    // ENC-A1 <-> ENC-B1 and ENC-A2 <-> ENC-B2 may pair (the crossed pairs are refused); on five
    // nodes ENC-A1 <-> ENC-E1 and ENC-C1 <-> ENC-E1 cross several trusted nodes.
    let mut saes = vec![
        (SaeId::parse("ENC-A1")?, 0, vec!["ENC-B1".to_string()]),
        (SaeId::parse("ENC-A2")?, 0, vec!["ENC-B2".to_string()]),
        (SaeId::parse("ENC-B1")?, 1, vec!["ENC-A1".to_string()]),
        (SaeId::parse("ENC-B2")?, 1, vec!["ENC-A2".to_string()]),
    ];
    if count == 5 {
        saes[0]
            .2
            .extend(["ENC-E1".to_string(), "ENC-C1".to_string()]);
        saes.push((
            SaeId::parse("ENC-C1")?,
            2,
            vec!["ENC-E1".to_string(), "ENC-A1".to_string()],
        ));
        saes.push((
            SaeId::parse("ENC-E1")?,
            4,
            vec!["ENC-A1".to_string(), "ENC-C1".to_string()],
        ));
    }
    Ok(Topology { nodes, links, saes })
}

/// Most nodes `random:<nodes>:<seed>` lays out: one loopback address each, 127.0.0.1 up.
const MAX_RANDOM_NODES: usize = 250;

/// `random:<n>:<seed>`: `n` nodes `N01`, `N02`... on 127.0.0.1 up, joined by a seeded random
/// connected mesh of average degree 3 (a random spanning tree, then random extra links; the
/// lower-numbered end of each link is its device master). Encryptors: `ENC-N01` at `N01`, and
/// at the first node (by name) at each hop distance from `N01` one `ENC-<node>` paired with
/// `ENC-N01`, so that every path length of the mesh is exercised once.
fn random_mesh(n: usize, seed: u64) -> Result<Topology> {
    if !(2..=MAX_RANDOM_NODES).contains(&n) {
        bail!("random topology: between 2 and {MAX_RANDOM_NODES} nodes, not {n}");
    }
    let width = n.to_string().len().max(2);
    let nodes = (0..n)
        .map(|i| {
            Ok(DemoNode {
                id: NodeId::parse(&format!("N{:0width$}", i + 1))?,
                ip: Ipv4Addr::new(127, 0, 0, i as u8 + 1),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let edges = random_edges(n, seed);
    let links = edges
        .iter()
        .map(|&(a, b)| {
            Ok((
                LinkId::parse(&format!("{}-{}", nodes[a].id, nodes[b].id))?,
                a,
                b,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    // Hop distances from node 0 (breadth first over the links).
    let mut dist = vec![usize::MAX; n];
    dist[0] = 0;
    let mut queue = std::collections::VecDeque::from([0]);
    while let Some(x) = queue.pop_front() {
        for &(a, b) in &edges {
            let y = if a == x {
                b
            } else if b == x {
                a
            } else {
                continue;
            };
            if dist[y] == usize::MAX {
                dist[y] = dist[x] + 1;
                queue.push_back(y);
            }
        }
    }
    let sae_of = |i: usize| format!("ENC-{}", nodes[i].id);
    let mut saes = vec![(SaeId::parse(&sae_of(0))?, 0, Vec::new())];
    let far = dist.iter().copied().max().unwrap_or(0);
    for d in 1..=far {
        let Some(i) = (0..n).find(|&i| dist[i] == d) else {
            continue;
        };
        saes[0].2.push(sae_of(i));
        saes.push((SaeId::parse(&sae_of(i))?, i, vec![sae_of(0)]));
    }
    Ok(Topology { nodes, links, saes })
}

/// The links of a seeded random connected graph on `n` nodes with `3n/2` links (average
/// degree 3; fewer if the graph is complete first), each as (lower, higher) node index.
fn random_edges(n: usize, seed: u64) -> Vec<(usize, usize)> {
    // SplitMix64: a fixed generator, so that a seed names the same mesh in every version.
    let mut state = seed;
    let mut next = move |bound: usize| {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % bound as u64) as usize
    };
    let mut edges = std::collections::BTreeSet::new();
    for i in 1..n {
        edges.insert((next(i), i));
    }
    let target = (3 * n / 2).min(n * (n - 1) / 2);
    while edges.len() < target {
        let (a, b) = (next(n), next(n));
        if a != b {
            edges.insert((a.min(b), a.max(b)));
        }
    }
    edges.into_iter().collect()
}

/// `demo.json`: what a script or a third-party ETSI 014 client needs to talk to the demo.
#[derive(Debug, Serialize)]
pub struct DemoDescription {
    /// Version of this document's schema.
    pub schema_version: u32,
    /// Every node.
    pub nodes: Vec<DemoNodeOut>,
    /// Every SAE.
    pub saes: Vec<DemoSaeOut>,
    /// SAE pairs allowed to share keys.
    pub allowed_pairs: Vec<[SaeId; 2]>,
    /// Whether the links are simulated (always true for the demo).
    pub simulated_links: bool,
    /// The demo operator's management certificate, for every node's control listener.
    pub operator: DemoCredentials,
}

/// A certificate and its key, as an SAE, an operator or a node presents them.
#[derive(Debug, Serialize)]
pub struct DemoCredentials {
    /// Who the certificate names (SAE ID, operator, node ID).
    pub id: String,
    /// Certificate (PEM).
    pub cert_file: PathBuf,
    /// Private key (PEM).
    pub key_file: PathBuf,
}

/// Every endpoint of a node in `demo.json`: where it is and who may speak to it.
#[derive(Debug, Serialize)]
pub struct DemoEndpoints {
    /// ETSI GS QKD 014 REST (HTTPS, SAE client certificates): base URL of the key API.
    pub etsi014: String,
    /// gRPC key delivery (`host:port`, TLS, SAE client certificates), if served.
    pub grpc: Option<String>,
    /// SKIP Key Provider base URL (HTTPS, SAE client certificates), if served.
    pub skip: Option<String>,
    /// Node-to-node gRPC (`host:port`, mutual TLS with node certificates: `node_cert`).
    pub peer: String,
    /// Operator read-only views (plain HTTP on the admin listener), if served.
    pub admin: Option<DemoAdmin>,
    /// Control listener base URL (HTTPS, management certificates: `operator`), if served;
    /// `GET <url>/v1/whoami`, `POST <url>/v1/links/<link>/drain`...
    pub control: Option<String>,
}

/// The admin listener's views.
#[derive(Debug, Serialize)]
pub struct DemoAdmin {
    /// Status JSON.
    pub status: String,
    /// Active alarms JSON.
    pub alarms: String,
    /// Prometheus metrics.
    pub metrics: String,
    /// Liveness (`ok`).
    pub healthz: String,
    /// Live dashboard for a browser.
    pub dashboard: String,
    /// ETSI GS QKD 015 view of the node (RESTCONF-style JSON).
    pub etsi015: String,
}

/// A node in `demo.json`.
#[derive(Debug, Serialize)]
pub struct DemoNodeOut {
    /// Node ID.
    pub id: NodeId,
    /// KME ID (ETSI `source_KME_ID`).
    pub kme_id: String,
    /// ETSI 014 base URL, host matching the server certificate.
    pub etsi_base_url: String,
    /// gRPC key delivery address (`host:port`, host matching the server certificate), if the
    /// node serves it.
    pub grpc_addr: Option<String>,
    /// CA certificate that verifies the node's server certificate.
    pub ca_file: PathBuf,
    /// Operator status URL.
    pub status_url: Option<String>,
    /// SKIP Key Provider base URL (`GET <url>/capabilities`...).
    pub skip_base_url: Option<String>,
    /// The node's SKIP `localSystemID`.
    pub skip_system_id: Option<String>,
    /// Configuration file.
    pub config_file: PathBuf,
    /// Log file.
    pub log_file: PathBuf,
    /// The node's own certificate (server, and client towards its peers).
    pub node_cert: DemoCredentials,
    /// Every endpoint of the node.
    pub endpoints: DemoEndpoints,
}

/// An SAE in `demo.json`.
#[derive(Debug, Serialize)]
pub struct DemoSaeOut {
    /// SAE ID.
    pub id: SaeId,
    /// Node it is attached to.
    pub node: NodeId,
    /// Client certificate (PEM).
    pub cert_file: PathBuf,
    /// Client private key (PEM).
    pub key_file: PathBuf,
}

/// Writes PKI, seeds and configurations (only what is missing). Returns config paths per node.
fn setup(
    dir: &Path,
    topo: &Topology,
    rate: Option<u64>,
    policy: &str,
    pool_keys: u32,
) -> Result<(DemoPki, Vec<PathBuf>)> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let pki = DemoPki::create(&dir.join("pki"))?;
    let start_ms = qkd_types::Clock::now(&qkd_types::SystemClock);
    let mut configs = Vec::new();
    for link in &topo.links {
        // One seed per link, written into both ends' data directories (never a config file).
        let a = dir.join(topo.nodes[link.1].id.as_str()).join("data");
        let b = dir.join(topo.nodes[link.2].id.as_str()).join("data");
        let (pa, pb) = (seed_path(&a, &link.0), seed_path(&b, &link.0));
        if !(pa.exists() && pb.exists()) {
            let seed = SimulatedLink::generate_seed_hex();
            for p in [&pa, &pb] {
                std::fs::create_dir_all(p.parent().context("seed dir")?)?;
                let _ = std::fs::remove_file(p);
                qkd_kms::durable::write_atomic(
                    p,
                    seed.as_bytes(),
                    qkd_kms::durable::Access::Private,
                )?;
            }
        }
    }
    // Every node's end-to-end signing key, generated here so that every configuration can pin
    // every other node's public key.
    let mut pubs = Vec::new();
    for node in &topo.nodes {
        let key_path = dir
            .join(node.id.as_str())
            .join("data")
            .join("keys")
            .join("signing.key");
        if !key_path.exists() {
            let key = qkd_kms::hybrid::NodeSigningKey::generate(&mut rand::rng())?;
            crate::daemon::write_signing_key(&key_path, &key)?;
            write_atomic(
                &key_path.with_extension("pub"),
                hex::encode(key.public_key().to_bytes()).as_bytes(),
            )?;
        }
        pubs.push(key_path.with_extension("pub"));
    }
    for (i, node) in topo.nodes.iter().enumerate() {
        let ndir = dir.join(node.id.as_str());
        std::fs::create_dir_all(&ndir)?;
        let cfg_path = ndir.join("node.toml");
        configs.push(cfg_path.clone());
        if cfg_path.exists() {
            continue;
        }
        let cert = pki.issue_node(&node.id, IpAddr::V4(node.ip))?;
        let mut t = String::new();
        use std::fmt::Write;
        writeln!(
            t,
            "# Demo node {} (generated by `qkd-node demo`; edit freely).",
            node.id
        )?;
        writeln!(
            t,
            "[node]\nid = \"{}\"\nkme_id = \"KME-{}\"\ndata_dir = \"data\"",
            node.id, node.id
        )?;
        writeln!(
            t,
            "etsi_listen = \"{}:0\"\npeer_listen = \"{}:0\"\nadmin_listen = \"{}:0\"",
            node.ip, node.ip, node.ip
        )?;
        writeln!(
            t,
            "sae_uri_prefix = \"{SAE_PREFIX}\"\nkey_ttl_seconds = 3600\n"
        )?;
        writeln!(
            t,
            "[tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n",
            cert.cert,
            cert.key,
            pki.ca_cert()
        )?;
        writeln!(
            t,
            "# gRPC key delivery (docs/grpc.md), with the [tls] files.\n[grpc]\nlisten = \"{}:0\"\n",
            node.ip
        )?;
        writeln!(
            t,
            "# Operators' changes (docs/operations.md): mutual TLS, management certificates only\n\
             # (pki/operator-demo.crt); the demo CA vouches for them.\n[control]\nlisten = \"{}:0\"\n",
            node.ip
        )?;
        writeln!(
            t,
            "[limits]\nkey_size = 256\nmin_key_size = 64\nmax_key_size = 4096\nmax_key_per_request = 128\n"
        )?;
        writeln!(
            t,
            "[relay]\ndefault_policy = \"{policy}\"\ndefault_suite = \"X25519/ML-KEM-768\"\npool_keys = {pool_keys}\nbatch_keys = {}\n",
            RelayConfig::batch_keys_for(pool_keys)
        )?;
        for (j, other) in topo.nodes.iter().enumerate() {
            if j != i {
                writeln!(
                    t,
                    "[[node_info]]\nid = \"{}\"\nkme_id = \"KME-{}\"\nsigning_public_key = {:?}\n",
                    other.id, other.id, pubs[j]
                )?;
            }
        }
        for (li, (lid, a, b)) in topo.links.iter().enumerate() {
            let (me, other) = if *a == i {
                (true, *b)
            } else if *b == i {
                (false, *a)
            } else {
                continue;
            };
            let peer = &topo.nodes[other];
            writeln!(
                t,
                "[[neighbour]]\nid = \"{}\"\nkme_id = \"KME-{}\"\nlink = \"{lid}\"",
                peer.id, peer.id
            )?;
            writeln!(
                t,
                "peer_addr_file = \"../{}/data/{LISTEN_FILE}\"\n",
                peer.id
            )?;
            writeln!(
                t,
                "[[link]]\nid = \"{lid}\"\npeer = \"{}\"\nrole = \"{}\"",
                peer.id,
                if me { "master" } else { "slave" }
            )?;
            writeln!(
                t,
                "capacity_bytes = {}\n[link.source]\nkind = \"simulated\"\nblock_bits = 524288\nstart_unix_ms = {start_ms}",
                16 << 20
            )?;
            match rate {
                Some(rate) => writeln!(
                    t,
                    "model = {{ kind = \"constant-rate\", bits_per_second = {rate} }}\n"
                )?,
                // Metro fibre lengths, the same at both ends of a link.
                None => writeln!(
                    t,
                    "model = {{ kind = \"decoy-bb84\", length_km = {:.1} }}\n",
                    METRO_KM[li % METRO_KM.len()]
                )?,
            }
        }
        // This node as a SKIP Key Provider, if encryptors are attached to it: each of them
        // reaches each of its peers through the peer node's Key Provider.
        if topo.saes.iter().any(|(_, at, _)| *at == i) {
            writeln!(
                t,
                "[skip]\nlisten = \"{}:0\"\nlocal_system_id = \"{}\"\n",
                node.ip,
                system_id(&node.id)
            )?;
        }
        for (sid, _, peers) in topo.saes.iter().filter(|(_, at, _)| *at == i) {
            for p in peers {
                let Some((_, peer_at, _)) =
                    topo.saes.iter().find(|(s, _, _)| s.as_str() == p.as_str())
                else {
                    continue;
                };
                writeln!(
                    t,
                    "[[skip.route]]\nencryptor = \"{sid}\"\nremote_system_id = \"{}\"\npeer_sae = \"{p}\"\n",
                    system_id(&topo.nodes[*peer_at].id)
                )?;
            }
        }
        for (sid, at, peers) in &topo.saes {
            let peers: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
            writeln!(
                t,
                "[[sae]]\nid = \"{sid}\"\nnode = \"{}\"\npeers = [{}]\n",
                topo.nodes[*at].id,
                peers.join(", ")
            )?;
        }
        write_atomic(&cfg_path, t.as_bytes())?;
    }
    for (sid, _, _) in &topo.saes {
        pki.issue_sae(sid, SAE_PREFIX)?;
    }
    pki.issue_operator(&qkd_types::OperatorId::parse(DEMO_OPERATOR)?)?;
    Ok((pki, configs))
}

/// The operator whose management certificate (`pki/operator-demo.crt`) the demo issues.
pub const DEMO_OPERATOR: &str = "demo";

/// The SKIP `localSystemID` of a demo node: `KP_<node>`.
pub fn system_id(node: &NodeId) -> String {
    format!("KP_{node}")
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> Result<()> {
    let topo = topology(&args.topology)?;
    let (pki, configs) = setup(
        &args.data_dir,
        &topo,
        args.link_rate_bps,
        &args.policy,
        args.pool_keys,
    )?;
    let dir = args.data_dir.canonicalize()?;
    if args.setup_only {
        println!("demo configuration written under {}", dir.display());
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for (node, cfg) in topo.nodes.iter().zip(&configs) {
        let log_path = dir.join(node.id.as_str()).join("node.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let child = tokio::process::Command::new(&exe)
            .arg("run")
            .arg("--config")
            .arg(cfg)
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start node {}", node.id))?;
        children.push((node.clone(), child, log_path));
    }
    // Wait until every node has recorded its bound addresses (or one died).
    let mut listens = Vec::new();
    for (node, child, log) in children.iter_mut() {
        let file = dir.join(node.id.as_str()).join("data").join(LISTEN_FILE);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let started = std::time::SystemTime::now();
        loop {
            let fresh = std::fs::metadata(&file)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= started - Duration::from_secs(1));
            let record = if fresh {
                serde_json::from_slice::<ListenRecord>(&std::fs::read(&file)?).ok()
            } else {
                None
            };
            if let Some(r) = record {
                listens.push(r);
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "node {} exited ({status}) during start; see {}",
                    node.id,
                    log.display()
                );
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "node {} did not come up within 60 s; see {}",
                    node.id,
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let url = |a: SocketAddr| format!("https://{a}/api/v1/keys/");
    let desc = DemoDescription {
        schema_version: DEMO_SCHEMA_VERSION,
        nodes: topo
            .nodes
            .iter()
            .zip(&listens)
            .zip(&configs)
            .map(|((n, l), c)| {
                Ok(DemoNodeOut {
                    id: n.id.clone(),
                    kme_id: format!("KME-{}", n.id),
                    etsi_base_url: url(l.etsi),
                    grpc_addr: l.grpc.map(|a| a.to_string()),
                    ca_file: pki.ca_cert().to_path_buf(),
                    status_url: l.admin.map(|a| format!("http://{a}/status")),
                    skip_base_url: l.skip.map(|a| format!("https://{a}")),
                    skip_system_id: l.skip.map(|_| system_id(&n.id)),
                    config_file: c.clone(),
                    log_file: dir.join(n.id.as_str()).join("node.log"),
                    node_cert: credentials(n.id.as_str(), pki.issue_node(&n.id, IpAddr::V4(n.ip))?),
                    endpoints: endpoints(l),
                })
            })
            .collect::<Result<_>>()?,
        saes: topo
            .saes
            .iter()
            .map(|(s, at, _)| {
                let c = pki.issue_sae(s, SAE_PREFIX)?;
                Ok(DemoSaeOut {
                    id: s.clone(),
                    node: topo.nodes[*at].id.clone(),
                    cert_file: c.cert,
                    key_file: c.key,
                })
            })
            .collect::<Result<_>>()?,
        allowed_pairs: topo
            .saes
            .iter()
            .flat_map(|(s, _, peers)| {
                peers.iter().filter_map(move |p| {
                    SaeId::parse(p)
                        .ok()
                        .filter(|p| s < p)
                        .map(|p| [s.clone(), p])
                })
            })
            .collect(),
        simulated_links: true,
        operator: credentials(
            DEMO_OPERATOR,
            pki.issue_operator(&qkd_types::OperatorId::parse(DEMO_OPERATOR)?)?,
        ),
    };
    let demo_json = dir.join("demo.json");
    write_atomic(&demo_json, &serde_json::to_vec_pretty(&desc)?)?;
    print_next_steps(&desc, &demo_json);

    crate::daemon::wait_for_signal().await;
    println!("stopping the demo nodes...");
    for (_, child, _) in &children {
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
    }
    for (_, child, _) in children.iter_mut() {
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    }
    Ok(())
}

fn credentials(id: &str, c: qkd_kms::pki::IssuedCert) -> DemoCredentials {
    DemoCredentials {
        id: id.to_owned(),
        cert_file: c.cert,
        key_file: c.key,
    }
}

/// Every endpoint a node recorded in its `listen.json`.
fn endpoints(l: &ListenRecord) -> DemoEndpoints {
    DemoEndpoints {
        etsi014: format!("https://{}/api/v1/keys/", l.etsi),
        grpc: l.grpc.map(|a| a.to_string()),
        skip: l.skip.map(|a| format!("https://{a}")),
        peer: l.peer.to_string(),
        admin: l.admin.map(|a| DemoAdmin {
            status: format!("http://{a}/status"),
            alarms: format!("http://{a}/alarms"),
            metrics: format!("http://{a}/metrics"),
            healthz: format!("http://{a}/healthz"),
            dashboard: format!("http://{a}/dashboard/"),
            etsi015: format!("http://{a}{}", crate::etsi015::PATH),
        }),
        control: l.control.map(|a| format!("https://{a}")),
    }
}

/// The `qkd-link` example: `serve` at B as ENC-B1 forwarding to B's admin listener, `listen` at
/// A as ENC-A1, and a `curl` through the tunnel; on free ports of A's and B's addresses. The
/// program is the `qkd-link` beside this binary when there is one.
fn link_example(
    d: &DemoDescription,
    ca: &Path,
    a1: &DemoSaeOut,
    b1: &DemoSaeOut,
) -> Option<[String; 3]> {
    let node = |id: &str| d.nodes.iter().find(|n| n.id.as_str() == id);
    let (na, nb) = (node("A")?, node("B")?);
    let grpc_a: SocketAddr = na.endpoints.grpc.as_deref()?.parse().ok()?;
    let grpc_b: SocketAddr = nb.endpoints.grpc.as_deref()?.parse().ok()?;
    let target = nb
        .endpoints
        .admin
        .as_ref()?
        .healthz
        .strip_prefix("http://")?;
    let target = target.split_once('/')?.0;
    let free = |ip: IpAddr| {
        std::net::TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .ok()
    };
    let (tunnel, local) = (free(grpc_b.ip())?, free(grpc_a.ip())?);
    let exe = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.join("qkd-link")))
        .filter(|p| p.is_file())
        .map_or_else(|| "qkd-link".to_owned(), |p| p.display().to_string());
    let sae = |s: &DemoSaeOut| {
        format!(
            "--ca {} --cert {} --key {}",
            ca.display(),
            s.cert_file.display(),
            s.key_file.display()
        )
    };
    Some([
        format!(
            "{exe} serve --listen {tunnel} --target {target} --node {grpc_b} {} --peer-sae ENC-A1 &",
            sae(b1)
        ),
        format!(
            "{exe} listen --local {local} --remote {tunnel} --node {grpc_a} {} --peer-sae ENC-B1 --rekey-interval 10s &",
            sae(a1)
        ),
        format!("curl -s http://{local}/healthz"),
    ])
}

fn print_next_steps(d: &DemoDescription, json: &Path) {
    let sae = |id: &str| d.saes.iter().find(|s| s.id.as_str() == id);
    let node = |id: &str| d.nodes.iter().find(|n| n.id.as_str() == id);
    let (Some(a1), Some(b1), Some(na), Some(nb)) =
        (sae("ENC-A1"), sae("ENC-B1"), node("A"), node("B"))
    else {
        return;
    };
    let ca = na.ca_file.display();
    println!();
    println!(
        "Demo network running: {} trusted nodes, simulated QKD links (demo keys: never protect real data).",
        d.nodes.len()
    );
    for n in &d.nodes {
        println!(
            "  node {:<3} ETSI 014 {}   gRPC {}   SKIP {} ({})   status {}",
            n.id.as_str(),
            n.etsi_base_url,
            n.grpc_addr.as_deref().unwrap_or("-"),
            n.skip_base_url.as_deref().unwrap_or("-"),
            n.skip_system_id.as_deref().unwrap_or("-"),
            n.status_url.as_deref().unwrap_or("-")
        );
    }
    println!("Description for scripts: {}", json.display());
    println!();
    println!("1. SAE ENC-A1 gets a key at node A for slave ENC-B1 (GET form):");
    println!();
    println!(
        "KEY_ID=$(curl -s --cacert {ca} --cert {} --key {} '{}ENC-B1/enc_keys?number=1&size=256' | tee /dev/stderr | sed -n 's/.*\"key_ID\": *\"\\([^\"]*\\)\".*/\\1/p'); echo; echo key_ID=$KEY_ID",
        a1.cert_file.display(),
        a1.key_file.display(),
        na.etsi_base_url
    );
    println!();
    println!("2. SAE ENC-B1 fetches the same key at node B by its key_ID:");
    println!();
    println!(
        "curl -s --cacert {ca} --cert {} --key {} \"{}ENC-A1/dec_keys?key_ID=$KEY_ID\"; echo",
        b1.cert_file.display(),
        b1.key_file.display(),
        nb.etsi_base_url
    );
    println!();
    println!("   POST forms work too, e.g.:");
    println!(
        "curl -s --cacert {ca} --cert {} --key {} -H 'Content-Type: application/json' -d '{{\"number\":2,\"size\":512}}' {}ENC-B1/enc_keys; echo",
        a1.cert_file.display(),
        a1.key_file.display(),
        na.etsi_base_url
    );
    if let (Some(ga), Some(gb)) = (&na.grpc_addr, &nb.grpc_addr) {
        println!();
        println!(
            "   The same over gRPC (qkd.keys.v1.KeyDelivery, docs/grpc.md; grpcurl shows key bytes base64-encoded):"
        );
        println!(
            "KEY_ID=$(grpcurl -cacert {ca} -cert {} -key {} -d '{{\"slave_sae_id\":\"ENC-B1\",\"number\":1}}' {ga} qkd.keys.v1.KeyDelivery/GetKeys | tee /dev/stderr | sed -n 's/.*\"keyId\": *\"\\([^\"]*\\)\".*/\\1/p'); echo key_ID=$KEY_ID",
            a1.cert_file.display(),
            a1.key_file.display(),
        );
        println!(
            "grpcurl -cacert {ca} -cert {} -key {} -d \"{{\\\"master_sae_id\\\":\\\"ENC-A1\\\",\\\"key_ids\\\":[\\\"$KEY_ID\\\"]}}\" {gb} qkd.keys.v1.KeyDelivery/GetKeysByIds",
            b1.cert_file.display(),
            b1.key_file.display(),
        );
    }
    if let (Some(e1), Some(ne)) = (sae("ENC-E1"), node("E")) {
        println!();
        println!(
            "3. A key relayed across the trusted nodes A-B-(C)-D-E and hybridised end to end (ML-KEM-768 + X25519):"
        );
        println!();
        println!(
            "KEY_ID=$(curl -s --cacert {ca} --cert {} --key {} '{}ENC-E1/enc_keys' | tee /dev/stderr | sed -n 's/.*\"key_ID\": *\"\\([^\"]*\\)\".*/\\1/p'); echo",
            a1.cert_file.display(),
            a1.key_file.display(),
            na.etsi_base_url
        );
        println!(
            "curl -s --cacert {ca} --cert {} --key {} \"{}ENC-A1/dec_keys?key_ID=$KEY_ID\"; echo",
            e1.cert_file.display(),
            e1.key_file.display(),
            ne.etsi_base_url
        );
    }
    if let (Some(skip_a), Some(skip_b)) = (&na.skip_base_url, &nb.skip_base_url) {
        println!();
        println!(
            "SKIP (routers, IETF draft-cisco-skip): ENC-A1 asks its Key Provider at node A for a new key for KP_B, ENC-B1 fetches it at node B by its keyId:"
        );
        println!();
        println!(
            "curl -s --cacert {ca} --cert {} --key {} {skip_a}/capabilities; echo",
            a1.cert_file.display(),
            a1.key_file.display(),
        );
        println!(
            "KEY_ID=$(curl -s --cacert {ca} --cert {} --key {} '{skip_a}/key?remoteSystemID=KP_B&size=256' | tee /dev/stderr | sed -n 's/.*\"keyId\": *\"\\([^\"]*\\)\".*/\\1/p'); echo",
            a1.cert_file.display(),
            a1.key_file.display(),
        );
        println!(
            "curl -s --cacert {ca} --cert {} --key {} \"{skip_b}/key/$KEY_ID?remoteSystemID=KP_A\"; echo",
            b1.cert_file.display(),
            b1.key_file.display(),
        );
    }
    if let Some([serve, listen, through]) = link_example(d, &na.ca_file, a1, b1) {
        println!();
        println!(
            "qkd-link (the reference encryptor, docs/qkd-link.md): a tunnel from site A to node B's status service, keyed by an ENC-A1/ENC-B1 key stream. At site B, then at site A, then through the tunnel:"
        );
        println!();
        println!("{serve}");
        println!("{listen}");
        println!("{through}");
        println!("kill %1 %2   # stops both qkd-link (from the same shell)");
    }
    if let Some(dir) = json.parent() {
        let a = dir.join("A").join("node.toml");
        let pki = dir.join("pki");
        println!();
        println!(
            "Operators (docs/operations.md): node A's status, its SAE pairs, and a drained link the relay routes around:"
        );
        println!();
        println!("qkdctl status --config {}", a.display());
        println!("qkdctl saes --config {}", a.display());
        println!(
            "qkdctl link drain A-B --config {} --cert {} --key {}",
            a.display(),
            pki.join("operator-demo.crt").display(),
            pki.join("operator-demo.key").display()
        );
    }
    println!();
    println!("Press Ctrl-C to stop the network.");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn random_meshes_are_connected_seeded_and_degree_three() {
        for (n, seed) in [(2, 1), (5, 1), (10, 7), (40, 1), (250, 3)] {
            let t = random_mesh(n, seed).unwrap();
            assert_eq!(t.nodes.len(), n);
            assert_eq!(t.links.len(), (3 * n / 2).min(n * (n - 1) / 2));
            // Connected: every node reachable from the first.
            let mut seen = vec![false; n];
            seen[0] = true;
            let mut changed = true;
            while changed {
                changed = false;
                for (_, a, b) in &t.links {
                    if seen[*a] != seen[*b] {
                        seen[*a] = true;
                        seen[*b] = true;
                        changed = true;
                    }
                }
            }
            assert!(
                seen.iter().all(|s| *s),
                "random:{n}:{seed} is not connected"
            );
            // The same seed gives the same mesh; another seed another.
            let again = random_mesh(n, seed).unwrap();
            assert_eq!(
                t.links.iter().map(|l| l.0.clone()).collect::<Vec<_>>(),
                again.links.iter().map(|l| l.0.clone()).collect::<Vec<_>>()
            );
            // ENC-N01 pairs with one encryptor per hop distance, each pairing back.
            assert_eq!(t.saes[0].2.len(), t.saes.len() - 1);
            for (sae, _, peers) in &t.saes[1..] {
                assert_eq!(peers, &vec![t.saes[0].0.to_string()], "{sae}");
            }
        }
        assert_ne!(
            random_edges(40, 1),
            random_edges(40, 2),
            "the seed chooses the mesh"
        );
        assert_eq!(random_mesh(10, 1).unwrap().nodes[9].id.as_str(), "N10");
        assert!(topology("random:1:1").is_err());
        assert!(topology("random:300:1").is_err());
        assert!(topology("random:ten:1").is_err());
        assert!(topology("random:10").is_err());
    }
}
