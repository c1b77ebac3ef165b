//! Deployments for the ETSI 014 conformance suite: real HTTPS servers with mutual TLS on
//! 127.0.0.1 port 0, certificates from the demo PKI in a temporary directory, a reqwest client per
//! SAE and raw TLS connections for what reqwest cannot express.
//!
//! The table in `kms/tests/it/etsi014.rs` only talks to a [`Fixture`]: which KME an SAE's requests go to
//! (`home`), and the client holding that SAE's certificate. [`Fixture::fake`] runs one KME backed
//! by the in-memory [`FakeKeys`]. [`Fixture::two_nodes`] runs the real key manager as two trusted
//! nodes in this process, wired as the node daemon wires them. Nothing in the table or in `check()`
//! assumes a single KME; it assumes this registration:
//!
//! * A attached to the KME `home["A"]`; B and C attached to `home["B"]` (`home["C"]` must equal
//!   `home["B"]`, the KME where dec_keys is asked); R registered in the network but attached to
//!   another KME than `home["R"]`; U registered nowhere; NODE presents a node certificate;
//!   NODE-A presents a node certificate whose node ID and CN are `A`;
//! * A may pair with B (pool of fewer than 128 × 1024 bits, so that `number 128, size 1024` is
//!   beyond it, and at least 64 default-size keys), A may not pair with C or R;
//! * default limits (256-bit keys, 64 to 1024 bits, 128 keys per request, `max_SAE_ID_count` 0).

// Handles, trait objects and TLS streams: nothing a test would print.
#![allow(missing_debug_implementations)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use qkd_hardware::LinkRole;
use qkd_kms::api::etsi014::{self, ServerLimits};
use qkd_kms::api::{KeyLimits, KeyService};
use qkd_kms::hybrid::{LocalIdentity, NodeSigningKey, PeerPublicKeys, PinnedPeers};
use qkd_kms::manager::{
    E2eKeys, KeyManager, LinkSetup, ManagerConfig, NeighbourEntry, RelayConfig, SaeEntry,
};
use qkd_kms::peer::{self, PeerSetupError};
use qkd_kms::pki::DemoPki;
use qkd_kms::store::Store;
use qkd_kms::store::vault::FileKek;
use qkd_kms::tls::{self, SaeIdentityRule, TlsFiles};
use qkd_kms::writer::Writer;
use qkd_simulator::link::{SimLinkConfig, SimulatedLink};
use qkd_simulator::model::ConstantRate;
use qkd_types::{Clock, KmeId, LinkId, NodeId, SaeId, SystemClock};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::fake::{FakeConfig, FakeKeys};

/// URI SAN prefix of SAE certificates in the suite.
pub const SAE_PREFIX: &str = "urn:qkd:sae:";

/// SAEs that hold a certificate from the suite's CA. A, B, C are attached; R is registered at
/// another KME; U is registered nowhere; NODE presents a node certificate (its CN is a node ID).
pub const SAES: [&str; 5] = ["A", "B", "C", "R", "U"];

/// One running KME.
pub struct Kme {
    /// `https://127.0.0.1:<port>`.
    pub base: String,
    /// Its socket address.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

/// A deployment under test.
pub struct Fixture {
    _dir: tempfile::TempDir,
    /// The KMEs.
    pub kmes: Vec<Kme>,
    /// Index into `kmes` of the KME each SAE (and "NODE") sends its requests to.
    pub home: HashMap<&'static str, usize>,
    clients: HashMap<&'static str, reqwest::Client>,
    tls: HashMap<&'static str, Arc<ClientConfig>>,
    files: HashMap<&'static str, TlsFiles>,
    /// A client whose certificate comes from a CA the KMEs do not trust.
    pub untrusted: Arc<ClientConfig>,
    /// What runs behind the KMEs besides their ETSI servers (real nodes only).
    nodes: Option<Nodes>,
    /// The key service behind each KME, in `kmes` order (for other front ends over the same
    /// keys).
    pub services: Vec<Arc<dyn KeyService>>,
    /// The deployment's PKI (for the certificates of other front ends).
    pub pki: DemoPki,
}

/// The parts of real nodes other than their ETSI 014 servers.
struct Nodes {
    /// Tells the node-to-node gRPC servers to stop.
    stop: watch::Sender<bool>,
    /// The node-to-node gRPC servers.
    peers: Vec<JoinHandle<Result<(), PeerSetupError>>>,
    /// Each key manager's recovery, then its ingest and expiry loops; they never end by
    /// themselves, so they are aborted.
    background: Vec<JoinHandle<()>>,
}

/// Two-node deployment: capacity of the link's key pool in bytes (room for several batches).
const POOL_BYTES: u64 = 65_536;
/// Finished keys kept per SAE pair: 100 × 256 bits, fewer than the 128 × 1024 bits the table
/// asks for to get a 503, and at least the 64 keys it needs.
const POOL_KEYS: u32 = 100;
/// Block size of the simulated link; divides the pool, so that the pool refills to capacity.
const BLOCK_BITS: u32 = 8192;
/// Secret key rate of the simulated link: refills the whole pool in under 10 ms.
const LINK_BPS: u64 = 10_000_000;
/// How often the allocator polls its device.
const DEVICE_POLL: Duration = Duration::from_millis(10);
/// Default-size keys A→B must hold before the table starts (the contract's minimum).
const MIN_STORED_KEYS: u64 = 64;

impl Fixture {
    /// One KME (`KME-1`) backed by the in-memory fake; A, B, C attached, R remote.
    /// Pools: A→B 64 Kibit, B→A 64 Kibit, C→B 16 Kibit; A may not pair with C.
    pub async fn fake() -> Self {
        Self::fake_with(|fake| fake).await
    }

    /// Like [`Fixture::fake`], with the service wrapped by `wrap` (e.g. to slow it down).
    pub async fn fake_with(wrap: impl FnOnce(Arc<FakeKeys>) -> Arc<dyn KeyService>) -> Self {
        Self::fake_with_limits(wrap, ServerLimits::default()).await
    }

    /// Like [`Fixture::fake`], with the server's resource limits set to `limits`.
    pub async fn fake_limited(limits: ServerLimits) -> Self {
        Self::fake_with_limits(|fake| fake, limits).await
    }

    async fn fake_with_limits(
        wrap: impl FnOnce(Arc<FakeKeys>) -> Arc<dyn KeyService>,
        limits: ServerLimits,
    ) -> Self {
        let fake = Arc::new(FakeKeys::new(FakeConfig {
            kme: "KME-1",
            attached: vec!["A", "B", "C"],
            remote: vec!["R"],
            pairs: vec![("A", "B", 65536), ("B", "A", 65536), ("C", "B", 16384)],
        }));
        let service = wrap(fake);
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = DemoPki::create(dir.path()).expect("demo PKI");
        let kme = start_kme_with(&pki, "kme-1", service.clone(), limits).await;
        let mut fx = Self::with_clients(dir, pki, vec![kme]);
        fx.services = vec![service];
        for sae in SAES.iter().chain(&["NODE", "NODE-A"]) {
            fx.home.insert(sae, 0);
        }
        fx
    }

    /// The real key manager as two trusted nodes, wired as `qkd_node::daemon` wires one node:
    /// each has its own redb store, they agree on keys over gRPC with mutual TLS, and a simulated
    /// link joins them (node 1 is the device master, hence the allocator). A is attached to
    /// node 1; B and C to node 2; R to a node 3 that is not running; U is registered nowhere.
    /// Pool A→B: [`POOL_BYTES`], refilled continuously. Returns once A→B holds at least
    /// [`MIN_STORED_KEYS`] keys.
    pub async fn two_nodes() -> Self {
        // tonic builds its TLS configurations from the process-wide provider.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = DemoPki::create(dir.path()).expect("demo PKI");
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let node = |s: &str| NodeId::parse(s).expect("valid");
        let sae = |s: &str| SaeId::parse(s).expect("valid");
        let peers = |list: &[&str]| list.iter().map(|s| sae(s)).collect::<BTreeSet<_>>();
        let ids = [node("n1"), node("n2")];
        let kme_ids = [
            KmeId::parse("KME-1").expect("valid"),
            KmeId::parse("KME-2").expect("valid"),
        ];
        let roles = [LinkRole::Master, LinkRole::Slave];
        let link = LinkId::parse("n1-n2").expect("valid");
        let saes = BTreeMap::from([
            (
                sae("A"),
                SaeEntry {
                    node: ids[0].clone(),
                    peers: peers(&["B"]),
                },
            ),
            (
                sae("B"),
                SaeEntry {
                    node: ids[1].clone(),
                    peers: peers(&["A"]),
                },
            ),
            (
                sae("C"),
                SaeEntry {
                    node: ids[1].clone(),
                    peers: peers(&[]),
                },
            ),
            (
                sae("R"),
                SaeEntry {
                    node: node("n3"),
                    peers: peers(&[]),
                },
            ),
        ]);
        let seed = SimulatedLink::parse_seed(&SimulatedLink::generate_seed_hex()).expect("seed");
        // End-to-end identities: each node pins the other's signing key.
        let mut signing: Vec<NodeSigningKey> = (0..2)
            .map(|_| NodeSigningKey::generate(&mut rand::rng()).expect("signing key"))
            .collect();
        let mut pinned: Vec<Option<PinnedPeers>> = (0..2)
            .map(|i| {
                let mut p = PinnedPeers::new();
                p.insert(
                    PeerPublicKeys::new(kme_ids[1 - i].clone(), vec![signing[1 - i].public_key()])
                        .expect("peer key"),
                );
                Some(p)
            })
            .collect();
        let start = clock.now();

        // Both peer listeners first: each node's client needs the other's address.
        let mut listeners = Vec::new();
        for _ in &ids {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.expect("bind"));
        }
        let addrs: Vec<SocketAddr> = listeners
            .iter()
            .map(|l| l.local_addr().expect("local addr"))
            .collect();
        let (stop, stopped) = watch::channel(false);
        let mut managers = Vec::new();
        let mut nodes = Nodes {
            stop,
            peers: Vec::new(),
            background: Vec::new(),
        };
        for (i, listener) in listeners.into_iter().enumerate() {
            let other = 1 - i;
            let data = dir.path().join(ids[i].as_str());
            let key_dir = data.join("keys");
            std::fs::create_dir_all(&key_dir).expect("data directory");
            let kek = FileKek::open(&key_dir, clock.now(), 86_400_000).expect("KEK");
            let (store, recovered) = Store::open(&data.join("store.redb"), &kek).expect("store");
            let tls = pki
                .issue_node(&ids[i], [127, 0, 0, 1].into())
                .expect("node cert")
                .tls_files(pki.ca_cert());
            let tls = qkd_kms::tls::LiveTls::load(&tls).expect("node TLS files");
            let source = SimulatedLink::new(
                SimLinkConfig {
                    link: link.clone(),
                    role: roles[i],
                    block_bits: BLOCK_BITS,
                    start,
                },
                &seed,
                Box::new(ConstantRate::new(LINK_BPS)),
                clock.clone(),
            )
            .expect("simulated link");
            let setup = LinkSetup {
                id: link.clone(),
                peer: ids[other].clone(),
                source: Arc::new(source),
                capacity_bytes: POOL_BYTES,
                client: peer::client(addrs[other], "127.0.0.1", &tls).expect("peer client"),
            };
            let config = ManagerConfig {
                node: ids[i].clone(),
                kme: kme_ids[i].clone(),
                saes: saes.clone(),
                neighbours: BTreeMap::from([(
                    ids[other].clone(),
                    NeighbourEntry {
                        kme: kme_ids[other].clone(),
                        link: link.clone(),
                    },
                )]),
                // The table's contract: default limits without multicast.
                limits: KeyLimits {
                    max_sae_id_count: 0,
                    ..KeyLimits::default()
                },
                key_ttl_ms: 3_600_000,
                peer_timeout: Duration::from_secs(3),
                tombstone_retention_ms: 30 * 86_400_000,
                relay: RelayConfig {
                    pool_keys: POOL_KEYS,
                    batch_keys: 50,
                    e2e: Arc::new(E2eKeys {
                        local: Some(LocalIdentity::new(kme_ids[i].clone(), signing.remove(0))),
                        peers: pinned[i].take().expect("pinned peers"),
                        replay: Default::default(),
                    }),
                    ..RelayConfig::default()
                },
            };
            let manager = KeyManager::new(
                config,
                clock.clone(),
                Writer::spawn(store),
                vec![setup],
                recovered,
            );
            nodes.peers.push(tokio::spawn({
                let m = manager.clone();
                let mut stopped = stopped.clone();
                async move {
                    let stop = async move {
                        let _ = stopped.wait_for(|v| *v).await;
                    };
                    peer::serve(listener, &tls, m, stop).await
                }
            }));
            nodes.background.push(tokio::spawn({
                let m = manager.clone();
                async move {
                    m.run_background(DEVICE_POLL).await;
                }
            }));
            managers.push(manager);
        }

        let mut kmes = Vec::new();
        for (id, m) in ids.iter().zip(&managers) {
            kmes.push(start_kme(&pki, id.as_str(), Arc::new(m.clone())).await);
        }
        let mut fx = Self::with_clients(dir, pki, kmes);
        fx.nodes = Some(nodes);
        fx.services = managers
            .iter()
            .map(|m| Arc::new(m.clone()) as Arc<dyn KeyService>)
            .collect();
        for (who, kme) in [
            ("A", 0),
            ("B", 1),
            ("C", 1),
            ("R", 0),
            ("U", 0),
            ("NODE", 0),
            ("NODE-A", 0),
        ] {
            fx.home.insert(who, kme);
        }

        // The link fills the pool within milliseconds; wait for it, but not forever.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let status = managers[0]
                .status(&sae("A"), &sae("B"))
                .await
                .expect("status");
            if status.stored_key_count >= MIN_STORED_KEYS {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "pool A→B still holds {} keys after 30 s",
                status.stored_key_count
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        fx
    }

    /// A deployment of `kmes` (started with [`start_server`] on `pki`) with a client per SAE.
    pub fn with_clients(dir: tempfile::TempDir, pki: DemoPki, kmes: Vec<Kme>) -> Self {
        let ca = pki.ca_cert().to_owned();
        let mut clients = HashMap::new();
        let mut configs = HashMap::new();
        let mut files = HashMap::new();
        for sae in SAES {
            let issued = pki
                .issue_sae(&SaeId::parse(sae).expect("valid"), SAE_PREFIX)
                .expect("SAE cert");
            let config = Arc::new(tls::client_config(&issued.tls_files(&ca)).expect("client TLS"));
            clients.insert(sae, http_client(&config));
            configs.insert(sae, config);
            files.insert(sae, issued.tls_files(&ca));
        }
        // A node certificate used as a client certificate: trusted, but names no SAE here.
        let node = pki
            .issue_node(
                &NodeId::parse("kme-1").expect("valid"),
                [127, 0, 0, 1].into(),
            )
            .expect("node cert");
        let config = Arc::new(tls::client_config(&node.tls_files(&ca)).expect("client TLS"));
        clients.insert("NODE", http_client(&config));
        configs.insert("NODE", config);
        // A node certificate whose node ID (and CN) is the ID of the attached SAE A.
        let node_a = pki
            .issue_node(&NodeId::parse("A").expect("valid"), [127, 0, 0, 1].into())
            .expect("node cert");
        let config = Arc::new(tls::client_config(&node_a.tls_files(&ca)).expect("client TLS"));
        clients.insert("NODE-A", http_client(&config));
        configs.insert("NODE-A", config);

        let other_dir = dir.path().join("untrusted");
        let other = DemoPki::create(&other_dir).expect("second PKI");
        let foreign = other
            .issue_sae(&SaeId::parse("A").expect("valid"), SAE_PREFIX)
            .expect("foreign cert");
        // Trusts our servers (our CA) but presents a certificate of the other CA.
        let untrusted = Arc::new(
            tls::client_config(&TlsFiles {
                cert_chain: foreign.cert,
                key: foreign.key,
                ca: ca.clone(),
            })
            .expect("client TLS"),
        );
        Self {
            _dir: dir,
            kmes,
            home: HashMap::new(),
            clients,
            tls: configs,
            files,
            untrusted,
            nodes: None,
            services: Vec::new(),
            pki,
        }
    }

    /// Full URL of `path_and_query` at the KME `sae` talks to.
    pub fn url(&self, sae: &str, path_and_query: &str) -> String {
        format!("{}{}", self.kmes[self.home[sae]].base, path_and_query)
    }

    /// The HTTP client holding `sae`'s certificate.
    pub fn client(&self, sae: &str) -> &reqwest::Client {
        &self.clients[sae]
    }

    /// The certificate, key and CA files of `sae` (one of [`SAES`]).
    pub fn files(&self, sae: &str) -> TlsFiles {
        self.files[sae].clone()
    }

    /// The TLS client configuration holding `sae`'s certificate (one of [`SAES`], `NODE`,
    /// `NODE-A`).
    pub fn tls(&self, sae: &str) -> Arc<ClientConfig> {
        self.tls[sae].clone()
    }

    /// Real nodes only: stops both node-to-node servers, so that neither node can reach the
    /// other any more (the key managers and the SAE-facing servers keep running).
    pub fn stop_peers(&self) {
        if let Some(nodes) = &self.nodes {
            let _ = nodes.stop.send(true);
        }
    }

    /// A raw TLS connection from `sae` to its KME.
    pub async fn raw(&self, sae: &str) -> std::io::Result<RawConn> {
        RawConn::connect(self.kmes[self.home[sae]].addr, self.tls[sae].clone()).await
    }

    /// Stops every KME and checks that each shut down cleanly and promptly, even with idle
    /// keep-alive connections still open in the clients' pools; then, for real nodes, stops their
    /// background loops and their node-to-node servers, which must shut down cleanly too.
    pub async fn stop(mut self) {
        for kme in &mut self.kmes {
            if let Some(stop) = kme.stop.take() {
                let _ = stop.send(());
            }
        }
        for kme in self.kmes.drain(..) {
            let result = tokio::time::timeout(Duration::from_secs(10), kme.task)
                .await
                .expect("server shut down within 10 s")
                .expect("server task did not panic");
            result.expect("serve returned Ok");
        }
        if let Some(nodes) = self.nodes.take() {
            nodes.background.iter().for_each(JoinHandle::abort);
            let _ = nodes.stop.send(true);
            for task in nodes.peers {
                let result = tokio::time::timeout(Duration::from_secs(10), task)
                    .await
                    .expect("peer server shut down within 10 s")
                    .expect("peer server task did not panic");
                result.expect("peer serve returned Ok");
            }
        }
    }
}

/// Starts one ETSI 014 server for `service` with a node certificate for 127.0.0.1.
pub async fn start_kme(pki: &DemoPki, node: &str, service: Arc<dyn KeyService>) -> Kme {
    start_kme_with(pki, node, service, ServerLimits::default()).await
}

/// Like [`start_kme`], with explicit server limits.
pub async fn start_kme_with(
    pki: &DemoPki,
    node: &str,
    service: Arc<dyn KeyService>,
    limits: ServerLimits,
) -> Kme {
    start_server(pki, node, |listener, config, stopped| {
        tokio::spawn(etsi014::serve_with(
            listener,
            config,
            service,
            SaeIdentityRule::new(SAE_PREFIX),
            limits,
            stopped,
        ))
    })
    .await
}

/// Binds 127.0.0.1 port 0 and starts a server there with `spawn`, given the listener, a server
/// TLS configuration with a node certificate for 127.0.0.1, and the future that resolves when
/// the fixture stops the server.
pub async fn start_server(
    pki: &DemoPki,
    node: &str,
    spawn: impl FnOnce(
        TcpListener,
        Arc<rustls::ServerConfig>,
        futures::future::BoxFuture<'static, ()>,
    ) -> JoinHandle<std::io::Result<()>>,
) -> Kme {
    let issued = pki
        .issue_node(&NodeId::parse(node).expect("valid"), [127, 0, 0, 1].into())
        .expect("node cert");
    let config = tls::server_config(&issued.tls_files(pki.ca_cert())).expect("server TLS");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = spawn(
        listener,
        Arc::new(config),
        Box::pin(async {
            let _ = stopped.await;
        }),
    );
    Kme {
        base: format!("https://{addr}"),
        addr,
        stop: Some(stop),
        task,
    }
}

/// The invariant every refused request keeps: the pool did not shrink (`<`, not `!=`: a real
/// deployment may refill it from its link meanwhile), and `key`, a key the request named, is still
/// there for its slave, byte for byte (`refetch` fetches it).
pub async fn check_nothing_consumed<
    K: PartialEq,
    F: std::future::Future<Output = Result<K, String>>,
>(
    before: u64,
    after: u64,
    key: Option<(String, K)>,
    refetch: impl FnOnce(String) -> F,
) -> Result<(), String> {
    if after < before {
        return Err(format!("refused request consumed key: {before} → {after}"));
    }
    if let Some((id, bytes)) = key {
        let fetched = refetch(id)
            .await
            .map_err(|e| format!("key burnt by a refused request: {e}"))?;
        if fetched != bytes {
            return Err("slave got different bytes".into());
        }
    }
    Ok(())
}

fn http_client(config: &Arc<ClientConfig>) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured((**config).clone())
        .http1_only()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(20))
        .build()
        .expect("reqwest client")
}

/// One TLS connection on which the test writes raw HTTP/1.1 requests.
pub struct RawConn {
    stream: TlsStream<TcpStream>,
    buf: Vec<u8>,
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// First header with this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl RawConn {
    /// Connects and completes the TLS handshake.
    pub async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> std::io::Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::IpAddress(addr.ip().into());
        let mut stream = TlsConnector::from(config).connect(name, tcp).await?;
        // With TLS 1.3 a rejected client certificate surfaces on the first read, not in connect.
        stream.flush().await?;
        Ok(Self {
            stream,
            buf: Vec::new(),
        })
    }

    /// Sends `head` (request line and headers, without the blank line) and `body`, with a
    /// Content-Length, and reads one response.
    pub async fn send(&mut self, head: &str, body: &[u8]) -> std::io::Result<RawResponse> {
        let mut req = format!(
            "{head}\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        self.stream.write_all(&req).await?;
        self.stream.flush().await?;
        self.read_response().await
    }

    /// Sends `head` (request line and headers, without the blank line) with a Content-Length of
    /// `content_length` and the blank line, but no body.
    pub async fn send_head(&mut self, head: &str, content_length: usize) -> std::io::Result<()> {
        let req = format!("{head}\r\nHost: 127.0.0.1\r\nContent-Length: {content_length}\r\n\r\n");
        self.stream.write_all(req.as_bytes()).await?;
        self.stream.flush().await
    }

    /// Writes `bytes` as they are.
    pub async fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Reads until the server closes the connection, as clients that rely on the close do;
    /// fails if it stays open for 20 s (a closing server closes at once).
    pub async fn read_to_close(&mut self) -> std::io::Result<Vec<u8>> {
        let mut out = std::mem::take(&mut self.buf);
        let read = self.stream.read_to_end(&mut out);
        match tokio::time::timeout(Duration::from_secs(20), read).await {
            Ok(Ok(_)) => Ok(out),
            // A peer that closes without close_notify still closed.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(out),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }

    /// Reads one response.
    pub async fn response(&mut self) -> std::io::Result<RawResponse> {
        self.read_response().await
    }

    async fn read_response(&mut self) -> std::io::Result<RawResponse> {
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            self.fill().await?;
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec()).map_err(|_| bad("head"))?;
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("status line"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let start = head_end + 4;
        while self.buf.len() < start + len {
            self.fill().await?;
        }
        let body = self.buf[start..start + len].to_vec();
        self.buf.drain(..start + len);
        Ok(RawResponse {
            status,
            headers,
            body,
        })
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// The negotiated TLS version and key-exchange group, e.g. `("TLSv1_3", "X25519MLKEM768")`.
    pub fn negotiated(&self) -> (String, String) {
        let conn = self.stream.get_ref().1;
        (
            format!("{:?}", conn.protocol_version()),
            format!(
                "{:?}",
                conn.negotiated_key_exchange_group().map(|g| g.name())
            ),
        )
    }

    /// Whether the server has closed the connection (reads EOF or an error within 10 s: a closed
    /// socket answers at once, so the generous wait costs nothing on a loaded machine).
    pub async fn is_closed(&mut self) -> bool {
        let mut chunk = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}
