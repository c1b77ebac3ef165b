//! Starts and stops real `qkd-node` processes from a demo layout in a temporary directory, and
//! talks ETSI 014 to them with client certificates.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use qkd_kms::core::pool::{BlockMeta, BlockState};
use qkd_types::{BlockId, Clock};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_qkd-node");

/// Finished keys per SAE pair in test networks (smaller than the demo's, to keep CI light).
pub const POOL: u64 = 256;

/// At most this many test networks run at once: each is several node processes sharing the
/// machine's cores, and relay hops have timeouts.
const MAX_NETWORKS: usize = 2;

static RUNNING: (std::sync::Mutex<usize>, std::sync::Condvar) =
    (std::sync::Mutex::new(0), std::sync::Condvar::new());

/// A slot among the networks allowed to run at once; freed on drop.
pub struct Slot;

impl Slot {
    fn take() -> Slot {
        let (m, cv) = &RUNNING;
        let mut n = m.lock().unwrap_or_else(|p| p.into_inner());
        while *n >= MAX_NETWORKS {
            n = cv.wait(n).unwrap_or_else(|p| p.into_inner());
        }
        *n += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let (m, cv) = &RUNNING;
        *m.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        cv.notify_one();
    }
}

/// A demo network laid out (PKI, configs, seeds) by `qkd-node demo --setup-only`.
pub struct Net {
    pub dir: tempfile::TempDir,
    pub procs: std::sync::Mutex<HashMap<String, Child>>,
    pub clients: HashMap<String, reqwest::Client>,
    _slot: Slot,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Listen {
    pub etsi: std::net::SocketAddr,
    pub peer: std::net::SocketAddr,
    pub admin: Option<std::net::SocketAddr>,
    pub grpc: Option<std::net::SocketAddr>,
    pub skip: Option<std::net::SocketAddr>,
}

impl Net {
    pub fn setup(rate_bps: u64) -> Net {
        Self::setup_topology("pair", rate_bps)
    }

    /// Lays out a demo network of the given topology (`pair`, `chain5`, `mesh`, `demo`).
    pub fn setup_topology(topology: &str, rate_bps: u64) -> Net {
        let slot = Slot::take();
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(BIN)
            .args([
                "demo",
                "--setup-only",
                "--topology",
                topology,
                "--pool-keys",
                &POOL.to_string(),
                "--link-rate-bps",
                &rate_bps.to_string(),
                "--data-dir",
            ])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut net = Net {
            dir,
            procs: Default::default(),
            clients: HashMap::new(),
            _slot: slot,
        };
        // Generous relay deadlines: on a loaded machine a hop that times out wastes its link key
        // and its batch, and many at once can starve a network of progress.
        for node in ["A", "B", "C", "D", "E"] {
            if net.path().join(node).join("node.toml").exists() {
                net.set_relay_option(node, "hop_timeout_ms = 10000");
            }
        }
        for sae in ["ENC-A1", "ENC-A2", "ENC-B1", "ENC-B2", "ENC-C1", "ENC-E1"] {
            if net
                .path()
                .join("pki")
                .join(format!("sae-{sae}.crt"))
                .exists()
            {
                net.clients.insert(sae.into(), net.client(sae));
            }
        }
        net
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().canonicalize().unwrap()
    }

    /// A gRPC key delivery client holding `sae`'s certificate, connected to `node`'s gRPC port.
    pub fn grpc(
        &self,
        sae: &str,
        node: &str,
    ) -> qkd_proto::keys::key_delivery_client::KeyDeliveryClient<tonic::transport::Channel> {
        use std::sync::Arc;
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let addr = self.listen(node).grpc.expect("the node serves gRPC");
        let pki = self.path().join("pki");
        let files = qkd_kms::tls::TlsFiles {
            cert_chain: pki.join(format!("sae-{sae}.crt")),
            key: pki.join(format!("sae-{sae}.key")),
            ca: pki.join("ca.crt"),
        };
        let mut config = qkd_kms::tls::client_config(&files).unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let connect = tower::service_fn(move |_: http::Uri| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        });
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(10))
            .connect_with_connector_lazy(connect);
        qkd_proto::keys::key_delivery_client::KeyDeliveryClient::new(channel)
    }

    fn client(&self, sae: &str) -> reqwest::Client {
        let pki = self.path().join("pki");
        let ca = std::fs::read(pki.join("ca.crt")).unwrap();
        let mut pem = std::fs::read(pki.join(format!("sae-{sae}.crt"))).unwrap();
        pem.extend(std::fs::read(pki.join(format!("sae-{sae}.key"))).unwrap());
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
            .identity(reqwest::Identity::from_pem(&pem).unwrap())
            .pool_max_idle_per_host(64)
            .build()
            .unwrap()
    }

    fn listen_file(&self, node: &str) -> PathBuf {
        self.path().join(node).join("data").join("listen.json")
    }

    /// Starts a node and waits until it has recorded its listeners and answers TLS.
    pub fn start(&self, node: &str) {
        self.start_env(node, &[]);
    }

    /// [`Net::start`] with extra environment variables for the node process.
    pub fn start_env(&self, node: &str, env: &[(&str, &str)]) {
        let before = std::fs::metadata(self.listen_file(node))
            .and_then(|m| m.modified())
            .ok();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path().join(node).join("node.log"))
            .unwrap();
        let child = Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(self.path().join(node).join("node.toml"))
            .env("QKD_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.procs.lock().unwrap().insert(node.into(), child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let m = std::fs::metadata(self.listen_file(node))
                .and_then(|m| m.modified())
                .ok();
            if m.is_some() && m != before {
                break;
            }
            if let Some(st) = self
                .procs
                .lock()
                .unwrap()
                .get_mut(node)
                .unwrap()
                .try_wait()
                .unwrap()
            {
                panic!("node {node} exited: {st}\n{}", self.log(node));
            }
            assert!(
                Instant::now() < deadline,
                "node {node} did not start\n{}",
                self.log(node)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status of a node that has exited on its own (it is forgotten then); `None`
    /// while it runs or when it was not started.
    pub fn exited(&self, node: &str) -> Option<std::process::ExitStatus> {
        let mut procs = self.procs.lock().unwrap();
        let status = procs.get_mut(node)?.try_wait().unwrap()?;
        procs.remove(node);
        Some(status)
    }

    pub fn log(&self, node: &str) -> String {
        std::fs::read_to_string(self.path().join(node).join("node.log")).unwrap_or_default()
    }

    pub fn kill9(&self, node: &str) {
        let child = self.procs.lock().unwrap().remove(node);
        if let Some(mut c) = child {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn base(&self, node: &str) -> String {
        let l: Listen =
            serde_json::from_slice(&std::fs::read(self.listen_file(node)).unwrap()).unwrap();
        format!("https://{}/api/v1/keys/", l.etsi)
    }

    pub fn node_of(sae: &str) -> &'static str {
        ["A", "B", "C", "D", "E"]
            .into_iter()
            .find(|n| sae.starts_with(&format!("ENC-{n}")))
            .unwrap_or("A")
    }

    /// Appends `line` under the `[relay]` table of a node's configuration (before starting it).
    pub fn set_relay_option(&self, node: &str, line: &str) {
        let p = self.path().join(node).join("node.toml");
        let text = std::fs::read_to_string(&p).unwrap();
        let text = text.replacen("[relay]\n", &format!("[relay]\n{line}\n"), 1);
        std::fs::write(&p, text).unwrap();
    }

    /// Rewrites a node's configuration file (before starting it) through its TOML table.
    pub fn edit_config(&self, node: &str, edit: impl FnOnce(&mut toml::Table)) {
        let p = self.path().join(node).join("node.toml");
        let mut table: toml::Table = std::fs::read_to_string(&p).unwrap().parse().unwrap();
        edit(&mut table);
        std::fs::write(&p, toml::to_string(&table).unwrap()).unwrap();
    }

    /// Stops a node with SIGTERM and waits until it has exited.
    pub fn stop(&self, node: &str) {
        let child = self.procs.lock().unwrap().remove(node);
        if let Some(mut c) = child {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            c.wait().unwrap();
        }
    }

    /// The node's recorded addresses.
    pub fn listen(&self, node: &str) -> Listen {
        serde_json::from_slice(&std::fs::read(self.listen_file(node)).unwrap()).unwrap()
    }

    /// The node's operator status document.
    pub async fn status(&self, node: &str) -> serde_json::Value {
        let l: Listen =
            serde_json::from_slice(&std::fs::read(self.listen_file(node)).unwrap()).unwrap();
        let url = format!("http://{}/status", l.admin.unwrap());
        reqwest::Client::new()
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// GET or POST to the node of `caller`; returns status and JSON body (Null when empty).
    pub async fn call(&self, caller: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{}", self.base(Self::node_of(caller)), path);
        let c = &self.clients[caller];
        let req = match body {
            Some(b) => c.post(url).json(&b),
            None => c.get(url),
        };
        match req.send().await {
            Ok(r) => {
                let code = r.status().as_u16();
                let bytes = r.bytes().await.unwrap_or_default();
                (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
            }
            Err(e) => (0, Value::String(e.to_string())),
        }
    }

    /// Like [`Net::call`], trying again on 503 as a client does: keys made on demand are
    /// relayed while the client waits, and on a loaded machine a hop may time out (nothing is
    /// released then). Exponential backoff from 50 ms to 2 s, at most 8 retries.
    pub async fn call_retrying(
        &self,
        caller: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        use backon::{ExponentialBuilder, Retryable};
        let attempt = || async {
            match self.call(caller, path, body.clone()).await {
                (503, v) => Err(v),
                other => Ok(other),
            }
        };
        attempt
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(50))
                    .with_max_delay(Duration::from_secs(2))
                    .with_max_times(8),
            )
            .await
            .unwrap_or_else(|v| (503, v))
    }

    /// Waits until `master`'s node reports at least `n` keys for the pair.
    pub async fn wait_for_keys(&self, master: &str, slave: &str, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (code, st) = self.call(master, &format!("{slave}/status"), None).await;
            if code == 200 && st["stored_key_count"].as_u64().unwrap_or(0) >= n {
                return;
            }
            assert!(Instant::now() < deadline, "no key material: {code} {st}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// What a stopped node's store holds of its only link.
#[derive(Debug)]
pub struct LinkBook {
    /// The sequence number the next block of the link gets.
    pub next_seq: u64,
    /// The blocks still stored, by sequence number (drained blocks are erased).
    pub blocks: BTreeMap<u64, BlockMeta>,
    /// The device key ID of every block the link ever took in, oldest first: the store keeps
    /// the last 65 536, far more than a test takes.
    pub device_ids: Vec<BlockId>,
}

impl Net {
    /// Reads a stopped node's store: the link accounting of its only link.
    pub fn link_book(&self, node: &str) -> LinkBook {
        assert!(
            !self.procs.lock().unwrap().contains_key(node),
            "stop node {node} before reading its store"
        );
        let config: toml::Table = std::fs::read_to_string(self.path().join(node).join("node.toml"))
            .unwrap()
            .parse()
            .unwrap();
        let days = config["node"]
            .get("kek_period_days")
            .and_then(|d| d.as_integer())
            .unwrap_or(1) as u64;
        let data = self.path().join(node).join("data");
        let kek = qkd_kms::store::vault::FileKek::open(
            &data.join("keys"),
            qkd_types::SystemClock.now(),
            days * 86_400_000,
        )
        .unwrap();
        let (_store, mut recovered) =
            qkd_kms::store::Store::open(&data.join("store.redb"), &kek).unwrap();
        assert_eq!(recovered.links.len(), 1, "node {node}: one link");
        let (link, (next_seq, blocks)) = recovered.links.drain().next().unwrap();
        LinkBook {
            next_seq,
            blocks: blocks.into_iter().collect(),
            device_ids: recovered.device_ids.remove(&link).unwrap_or_default(),
        }
    }
}

/// Checks that the two ends of a link agree on it, from their stores (`master` is the
/// allocator's): no device key ID taken in twice at either end; the slave took in the master's
/// blocks in the master's order, and some of them not at all (blocks the master dropped because
/// the slave's device could not deliver them, and blocks it still offers); a block both still
/// hold has the same ID and length at both ends; and no block either still holds is one of
/// those dropped. Returns the dropped blocks' IDs.
pub fn ends_agree(master: &LinkBook, slave: &LinkBook) -> HashSet<BlockId> {
    for (end, book) in [("master", master), ("slave", slave)] {
        let distinct: HashSet<_> = book.device_ids.iter().collect();
        assert_eq!(
            distinct.len(),
            book.device_ids.len(),
            "{end}: a device key ID taken in twice"
        );
    }
    let mut rest = master.device_ids.iter();
    for id in &slave.device_ids {
        assert!(
            rest.any(|m| m == id),
            "the slave took in {id}, which the master never offered (or not in this order)"
        );
    }
    // Blocks the master still offers (pending: never allocated) may not be at the slave yet.
    let offered: HashSet<BlockId> = master
        .blocks
        .values()
        .filter(|b| b.state == BlockState::Pending)
        .map(|b| b.id)
        .collect();
    let held: HashSet<_> = slave.device_ids.iter().copied().collect();
    let dropped: HashSet<BlockId> = master
        .device_ids
        .iter()
        .copied()
        .filter(|id| !held.contains(id) && !offered.contains(id))
        .collect();
    for (seq, m) in &master.blocks {
        if let Some(s) = slave.blocks.get(seq) {
            assert_eq!((m.id, m.len), (s.id, s.len), "block {seq} differs");
        }
    }
    for (end, book) in [("master", master), ("slave", slave)] {
        for (seq, b) in &book.blocks {
            assert!(
                !dropped.contains(&b.id),
                "{end} still holds dropped block {seq} ({})",
                b.id
            );
        }
    }
    assert!(master.next_seq >= slave.next_seq);
    dropped
}

impl Drop for Net {
    fn drop(&mut self) {
        for (_, c) in self.procs.lock().unwrap().iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The keys of a key container as (key_ID, bytes).
pub fn keys(v: &Value) -> Vec<(String, Vec<u8>)> {
    v["keys"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|k| {
                    let id = k["key_ID"].as_str().unwrap().to_string();
                    let b = base64::engine::general_purpose::STANDARD
                        .decode(k["key"].as_str().unwrap())
                        .unwrap();
                    (id, b)
                })
                .collect()
        })
        .unwrap_or_default()
}
