//! A network of real `qkd-node` processes on 127.0.0.x, laid out by `qkd-node demo --setup-only`
//! in a temporary directory and killed on drop.
//!
//! Owns what every multi-process test and network benchmark needs: laying the network out,
//! starting, stopping and killing nodes, their recorded addresses (each node's
//! `data/listen.json`), clients holding the SAEs' certificates, the operator `/status` document
//! and its relay counters, and waiting until background pool refills have finished. It edits
//! only the configuration it generated itself.
//!
//! Two flavours of the same calls: the fallible ones (`try_*`, [`Net::launch`], the counters)
//! for the benchmarks, which report what went wrong; the panicking ones ([`Net::setup`],
//! [`Net::start`], [`Net::call`]...) for tests, where a broken set-up is a failed test.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use serde_json::Value;

/// Finished keys per SAE pair in test networks (smaller than the demo's, to keep CI light).
pub const POOL: u64 = 256;

/// How long a node may take to record its listeners after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How to lay out a network.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `qkd-node demo --topology`: `pair`, `chain5`, `demo`, `mesh` or `random:<N>:<seed>`.
    pub topology: String,
    /// Constant secret key rate of every simulated link, bit/s.
    pub link_rate_bps: u64,
    /// `--pool-keys`: finished keys kept ready per SAE pair (None: the demo's default).
    pub pool_keys: Option<u32>,
    /// `[relay] batch_keys` written into every node.toml before start (None: as generated).
    pub batch_keys: Option<u32>,
    /// `QKD_LOG` of every node (`info` in tests; `warn` keeps logging out of measurements).
    pub log_level: String,
}

/// Per-link relay counters of a node's `/status`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct LinkCounters {
    pub relay_messages: u64,
    pub relay_keys: u64,
    pub relay_pad_bytes: u64,
    pub relay_auth_bytes: u64,
    pub available_bytes: u64,
    pub stored_bytes: u64,
}

/// The addresses a node recorded in `data/listen.json`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Listen {
    pub etsi: std::net::SocketAddr,
    pub peer: std::net::SocketAddr,
    pub admin: Option<std::net::SocketAddr>,
    pub grpc: Option<std::net::SocketAddr>,
    pub skip: Option<std::net::SocketAddr>,
    #[serde(default)]
    pub control: Option<std::net::SocketAddr>,
}

/// A laid-out network, its running node processes and a client per SAE.
#[derive(Debug)]
pub struct Net {
    /// PKI, configurations, stores and logs; removed on drop.
    pub dir: tempfile::TempDir,
    /// The running nodes by name; killed on drop.
    pub procs: Mutex<HashMap<String, Child>>,
    /// An ETSI 014 client per SAE, holding its certificate (keys: SAE IDs).
    pub clients: HashMap<String, reqwest::Client>,
    /// The `qkd-node` binary.
    bin: PathBuf,
    /// `QKD_LOG` of every node.
    log_level: String,
    /// Every node, in name order.
    names: Vec<String>,
    /// Plain HTTP client for the admin listeners.
    admin: reqwest::Client,
    _slot: Slot,
}

impl Net {
    /// Test set-up: lays out `topology` with [`POOL`] keys per pair and generous relay
    /// deadlines, with a client for every SAE; starts nothing. Panics on failure.
    pub fn setup(bin: &Path, topology: &str, rate_bps: u64) -> Net {
        let layout = Layout {
            topology: topology.into(),
            link_rate_bps: rate_bps,
            pool_keys: Some(POOL as u32),
            batch_keys: None,
            log_level: "info".into(),
        };
        let net = Self::launch(bin, None, &layout).unwrap_or_else(|e| panic!("{e:#}"));
        // Generous relay deadlines: on a loaded machine a hop that times out wastes its link key
        // and its batch, and many at once can starve a network of progress.
        for node in net.names() {
            net.set_relay_option(&node, "hop_timeout_ms = 10000");
        }
        net
    }

    /// Lays out the network under `parent` (default: the temp directory); starts nothing.
    /// Waits first for a slot among the networks allowed to run at once in this process.
    pub fn launch(bin: &Path, parent: Option<&Path>, layout: &Layout) -> Result<Net> {
        let slot = Slot::take();
        let dir = scratch_dir(parent, "qkd-net-")?;
        let mut cmd = Command::new(bin);
        cmd.args(["demo", "--setup-only", "--topology", &layout.topology])
            .arg("--link-rate-bps")
            .arg(layout.link_rate_bps.to_string())
            .arg("--data-dir")
            .arg(dir.path());
        if let Some(n) = layout.pool_keys {
            cmd.arg("--pool-keys").arg(n.to_string());
        }
        let out = cmd
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        if !out.status.success() {
            bail!(
                "qkd-node demo --setup-only failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let names = node_names(dir.path())?;
        if let Some(b) = layout.batch_keys {
            for n in &names {
                set_batch_keys(&dir.path().join(n).join("node.toml"), b)?;
            }
        }
        let mut net = Net {
            dir,
            procs: Default::default(),
            clients: HashMap::new(),
            bin: bin.to_path_buf(),
            log_level: layout.log_level.clone(),
            names,
            admin: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()?,
            _slot: slot,
        };
        for sae in sae_names(&net.path().join("pki"))? {
            let client = net.sae_client(&sae)?;
            net.clients.insert(sae, client);
        }
        Ok(net)
    }

    /// Starts every node at once and waits until each has recorded its listeners.
    pub fn start_all(&self) -> Result<()> {
        let mut before = Vec::new();
        for node in &self.names {
            before.push(self.listen_mtime(node));
            self.spawn(node, &[])?;
        }
        for (node, before) in self.names.iter().zip(before) {
            self.wait_listening(node, before)?;
        }
        Ok(())
    }

    /// Starts a node and waits until it has recorded its listeners.
    pub fn try_start(&self, node: &str) -> Result<()> {
        self.try_start_env(node, &[])
    }

    /// [`Net::try_start`] with extra environment variables for the node process.
    pub fn try_start_env(&self, node: &str, env: &[(&str, &str)]) -> Result<()> {
        let before = self.listen_mtime(node);
        self.spawn(node, env)?;
        self.wait_listening(node, before)
    }

    /// Starts a node and waits until it has recorded its listeners. Panics on failure.
    pub fn start(&self, node: &str) {
        self.try_start(node).unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// [`Net::start`] with extra environment variables for the node process.
    pub fn start_env(&self, node: &str, env: &[(&str, &str)]) {
        self.try_start_env(node, env)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// The exit status of a node that has exited on its own (it is forgotten then); `None`
    /// while it runs or when it was not started.
    pub fn exited(&self, node: &str) -> Option<std::process::ExitStatus> {
        let mut procs = lock(&self.procs);
        let status = procs.get_mut(node)?.try_wait().ok()??;
        procs.remove(node);
        Some(status)
    }

    /// Stops a node with SIGTERM and waits until it has exited.
    pub fn stop(&self, node: &str) {
        let child = lock(&self.procs).remove(node);
        if let Some(mut c) = child {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }

    /// Kills a node with SIGKILL and waits until it has gone.
    pub fn kill9(&self, node: &str) {
        let child = lock(&self.procs).remove(node);
        if let Some(mut c) = child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Fails if a running node has exited.
    pub fn check_alive(&self) -> Result<()> {
        let mut procs = lock(&self.procs);
        for (node, c) in procs.iter_mut() {
            if let Some(st) = c.try_wait()? {
                bail!("node {node} exited ({st}):\n{}", tail(&self.log(node)));
            }
        }
        Ok(())
    }

    /// The network's directory (PKI, configurations, stores, logs).
    pub fn path(&self) -> PathBuf {
        self.dir
            .path()
            .canonicalize()
            .unwrap_or_else(|_| self.dir.path().to_path_buf())
    }

    /// Every node, in name order.
    pub fn names(&self) -> Vec<String> {
        self.names.clone()
    }

    /// The process ID of a running node (0 if it is not running).
    pub fn pid(&self, node: &str) -> u32 {
        lock(&self.procs).get(node).map_or(0, |c| c.id())
    }

    /// (label, pid) of every running node and of this process, for CPU snapshots.
    pub fn processes(&self) -> Vec<(String, u32)> {
        let procs = lock(&self.procs);
        let mut v: Vec<(String, u32)> = self
            .names
            .iter()
            .filter_map(|n| procs.get(n).map(|c| (format!("node {n}"), c.id())))
            .collect();
        v.push(("load generator".into(), std::process::id()));
        v
    }

    /// The node's log (its stderr).
    pub fn log(&self, node: &str) -> String {
        std::fs::read_to_string(self.path().join(node).join("node.log")).unwrap_or_default()
    }

    /// The node's recorded addresses.
    pub fn try_listen(&self, node: &str) -> Result<Listen> {
        let file = self.listen_file(node);
        let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", file.display()))
    }

    /// The node's recorded addresses. Panics if it has none.
    pub fn listen(&self, node: &str) -> Listen {
        self.try_listen(node).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The node's ETSI 014 base URL, ending in `/api/v1/keys/`.
    pub fn try_base(&self, node: &str) -> Result<String> {
        Ok(format!(
            "https://{}/api/v1/keys/",
            self.try_listen(node)?.etsi
        ))
    }

    /// The node's ETSI 014 base URL. Panics if the node recorded no addresses.
    pub fn base(&self, node: &str) -> String {
        self.try_base(node).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The node's SKIP Key Provider base URL (`https://<addr>`, no trailing slash).
    pub fn skip_base(&self, node: &str) -> Result<String> {
        let skip = self
            .try_listen(node)?
            .skip
            .ok_or_else(|| anyhow!("node {node} serves no SKIP"))?;
        Ok(format!("https://{skip}"))
    }

    /// The CA certificate that verifies every node.
    pub fn ca(&self) -> Result<Vec<u8>> {
        Ok(std::fs::read(self.path().join("pki").join("ca.crt"))?)
    }

    /// An HTTPS client presenting the SAE's certificate, trusting only the demo CA.
    pub fn sae_client(&self, sae: &str) -> Result<reqwest::Client> {
        let pki = self.path().join("pki");
        let mut pem = std::fs::read(pki.join(format!("sae-{sae}.crt")))?;
        pem.extend(std::fs::read(pki.join(format!("sae-{sae}.key")))?);
        Ok(reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&self.ca()?)?])
            .identity(reqwest::Identity::from_pem(&pem)?)
            .no_proxy()
            .http1_only()
            .pool_max_idle_per_host(64)
            .timeout(Duration::from_secs(60))
            .build()?)
    }

    /// A gRPC key delivery client holding `sae`'s certificate, connected to `node`'s gRPC port.
    /// Panics if the node serves no gRPC.
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
        let mut config = qkd_kms::tls::client_config(&files).unwrap_or_else(|e| panic!("{e}"));
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let connect = tower::service_fn(move |_: http::Uri| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                // As tonic's own connector does: without it, a call's HEADERS and DATA frames
                // (two small writes) wait on the server's delayed ACK, 40 ms per call.
                tcp.set_nodelay(true)?;
                let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        });
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap_or_else(|e| panic!("{e}"))
            .connect_timeout(Duration::from_secs(10))
            .connect_with_connector_lazy(connect);
        qkd_proto::keys::key_delivery_client::KeyDeliveryClient::new(channel)
    }

    /// Appends `line` under the `[relay]` table of a node's configuration (before starting it).
    pub fn set_relay_option(&self, node: &str, line: &str) {
        let p = self.path().join(node).join("node.toml");
        let text = read(&p);
        let text = text.replacen("[relay]\n", &format!("[relay]\n{line}\n"), 1);
        write(&p, &text);
    }

    /// Rewrites a node's configuration file (before starting it) through its TOML table.
    pub fn edit_config(&self, node: &str, edit: impl FnOnce(&mut toml::Table)) {
        let p = self.path().join(node).join("node.toml");
        let mut table: toml::Table = read(&p)
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        edit(&mut table);
        let text = toml::to_string(&table).unwrap_or_else(|e| panic!("{e}"));
        write(&p, &text);
    }

    /// The node's operator status document (`GET http://<admin>/status`).
    pub async fn try_status(&self, node: &str) -> Result<Value> {
        let admin = self
            .try_listen(node)?
            .admin
            .ok_or_else(|| anyhow!("node {node} has no admin listener"))?;
        let url = format!("http://{admin}/status");
        let r = self.admin.get(&url).send().await?;
        r.json().await.with_context(|| url)
    }

    /// The node's operator status document. Panics on failure.
    pub async fn status(&self, node: &str) -> Value {
        self.try_status(node)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The relay counters of every link as seen by `node`.
    pub async fn counters(&self, node: &str) -> Result<Vec<(String, LinkCounters)>> {
        let v = self.try_status(node).await?;
        let links = v["links"]
            .as_array()
            .ok_or_else(|| anyhow!("node {node}: no `links` in {v}"))?;
        let n = |l: &Value, k: &str| l[k].as_u64().unwrap_or(0);
        Ok(links
            .iter()
            .map(|l| {
                (
                    l["link"].as_str().unwrap_or("?").to_string(),
                    LinkCounters {
                        relay_messages: n(l, "relay_messages"),
                        relay_keys: n(l, "relay_keys"),
                        relay_pad_bytes: n(l, "relay_pad_bytes"),
                        relay_auth_bytes: n(l, "relay_auth_bytes"),
                        available_bytes: n(l, "available_bytes"),
                        stored_bytes: n(l, "stored_bytes"),
                    },
                )
            })
            .collect())
    }

    /// Every link once, with its counters as seen by its first-named end (e.g. A for `A-B`):
    /// each end counts every relay message over the link, in both directions.
    pub async fn link_counters(&self) -> Result<Vec<(String, LinkCounters)>> {
        let mut out = Vec::new();
        for node in self.names() {
            for (link, c) in self.counters(&node).await? {
                if link.split('-').next() == Some(node.as_str()) {
                    out.push((link, c));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The pool level of a pair (`stored_key_count` of ETSI `status`, asked by the master) and
    /// its target (`max_key_count`).
    pub async fn pool_level(
        &self,
        master: &reqwest::Client,
        master_node: &str,
        slave: &str,
    ) -> Result<(u64, u64)> {
        let url = format!("{}{slave}/status", self.try_base(master_node)?);
        let r = master.get(&url).send().await?;
        if !r.status().is_success() {
            bail!("{url}: {}", r.status());
        }
        let v: Value = r.json().await?;
        Ok((
            v["stored_key_count"].as_u64().unwrap_or(0),
            v["max_key_count"].as_u64().unwrap_or(0),
        ))
    }

    /// Waits until every pool in `pools` ((master client, master node, slave)) is full and no
    /// relay message crossed any link for a second: the background refills have finished, so
    /// a measurement that follows starts from a quiet network. Returns how long it took.
    pub async fn wait_settled(
        &self,
        pools: &[(reqwest::Client, String, String)],
        timeout: Duration,
    ) -> Result<Duration> {
        let t0 = Instant::now();
        let mut last_messages = u64::MAX;
        let mut last_print = Instant::now();
        loop {
            self.check_alive()?;
            let mut full = true;
            let mut levels = Vec::new();
            for (c, node, slave) in pools {
                let (have, target) = self.pool_level(c, node, slave).await.unwrap_or((0, 1));
                full &= have >= target;
                levels.push(format!("{node}->{slave} {have}/{target}"));
            }
            let mut messages = 0;
            for node in self.names() {
                messages += self
                    .counters(&node)
                    .await?
                    .iter()
                    .map(|(_, c)| c.relay_messages)
                    .sum::<u64>();
            }
            if full && messages == last_messages {
                return Ok(t0.elapsed());
            }
            last_messages = messages;
            if t0.elapsed() > timeout {
                let first = pools.first().map_or("A", |p| p.1.as_str());
                bail!(
                    "pools not full after {timeout:?}: {}\nnode {first} log:\n{}",
                    levels.join(", "),
                    tail(&self.log(first))
                );
            }
            if last_print.elapsed() > Duration::from_secs(10) {
                eprintln!("waiting for pools: {}", levels.join(", "));
                last_print = Instant::now();
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// The node of a demo SAE (`ENC-A1` is at `A`; unknown names map to `A`).
    pub fn node_of(sae: &str) -> &'static str {
        ["A", "B", "C", "D", "E"]
            .into_iter()
            .find(|n| sae.starts_with(&format!("ENC-{n}")))
            .unwrap_or("A")
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

    /// Waits until `master`'s node reports at least `n` keys for the pair. Panics after 90 s.
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

    fn listen_file(&self, node: &str) -> PathBuf {
        self.path().join(node).join("data").join("listen.json")
    }

    fn listen_mtime(&self, node: &str) -> Option<std::time::SystemTime> {
        std::fs::metadata(self.listen_file(node))
            .and_then(|m| m.modified())
            .ok()
    }

    /// Starts a node's process, its stderr appended to `<node>/node.log`.
    fn spawn(&self, node: &str, env: &[(&str, &str)]) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path().join(node).join("node.log"))?;
        let child = Command::new(&self.bin)
            .arg("run")
            .arg("--config")
            .arg(self.path().join(node).join("node.toml"))
            .env("QKD_LOG", &self.log_level)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting node {node} ({})", self.bin.display()))?;
        lock(&self.procs).insert(node.into(), child);
        Ok(())
    }

    /// Waits until the node's `listen.json` is newer than `before` (it has bound every
    /// listener), or fails if the node exits or takes longer than [`START_TIMEOUT`].
    fn wait_listening(&self, node: &str, before: Option<std::time::SystemTime>) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let m = self.listen_mtime(node);
            if m.is_some() && m != before {
                return Ok(());
            }
            let exited = match lock(&self.procs).get_mut(node) {
                Some(c) => c.try_wait()?,
                None => bail!("node {node} is not running"),
            };
            if let Some(st) = exited {
                bail!("node {node} exited: {st}\n{}", self.log(node));
            }
            if Instant::now() > deadline {
                bail!("node {node} did not start\n{}", tail(&self.log(node)));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for (_, c) in lock(&self.procs).iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The keys of an ETSI 014 key container as (key_ID, bytes). Panics on a malformed container.
pub fn keys(v: &Value) -> Vec<(String, Vec<u8>)> {
    v["keys"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|k| {
                    let id = k["key_ID"].as_str().unwrap_or_else(|| panic!("{k}"));
                    let b = base64::engine::general_purpose::STANDARD
                        .decode(k["key"].as_str().unwrap_or_else(|| panic!("{k}")))
                        .unwrap_or_else(|e| panic!("{k}: {e}"));
                    (id.to_string(), b)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The `qkd-node` binary: `explicit`, else next to the running binary.
pub fn node_bin(explicit: Option<&PathBuf>) -> Result<PathBuf> {
    sibling_bin(explicit, "qkd-node", "--nodes-bin")
}

/// The binary `name` of this workspace: `explicit`, else next to the running binary; `flag`
/// names the option that gives it in the error.
pub fn sibling_bin(explicit: Option<&PathBuf>, name: &str, flag: &str) -> Result<PathBuf> {
    let bin = match explicit {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the running binary has no directory")?
            .join(name),
    };
    if !bin.is_file() {
        bail!(
            "no {name} binary at {} (build it with `cargo build --release -p {name}` into the \
             same target directory, or pass {flag})",
            bin.display()
        );
    }
    Ok(bin)
}

/// The `qkd-node` binary in the same target directory and profile as `exe` (a binary cargo built
/// for the calling test, its `CARGO_BIN_EXE_*`), built when missing ([`bin_beside`]).
pub fn node_bin_beside(exe: &Path) -> PathBuf {
    bin_beside(exe, "qkd-node", "qkd-node")
}

/// The binary `bin` of `package` in the same target directory and profile as `exe`. `cargo test
/// --workspace` builds it with the same features as the test; a test of one package alone does
/// not build another package's binary, so it is built here when missing. Building it
/// unconditionally would select other features than the outer build and rebuild it every time.
/// Panics on failure.
pub fn bin_beside(exe: &Path, package: &str, bin: &str) -> PathBuf {
    let profile_dir = exe.parent().expect("a binary in a profile directory");
    let path = profile_dir.join(bin);
    if path.is_file() {
        return path;
    }
    let target_dir = profile_dir
        .parent()
        .expect("a profile directory in a target directory");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "-p", package, "--bin", bin, "--target-dir"])
        .arg(target_dir);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let out = cmd.output().expect("running cargo");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(path.is_file(), "no {}", path.display());
    path
}

/// The last lines of a log.
pub fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A fresh temporary directory in `parent` (default: the system temp directory), removed on drop.
pub fn scratch_dir(parent: Option<&Path>, prefix: &str) -> std::io::Result<tempfile::TempDir> {
    let mut b = tempfile::Builder::new();
    b.prefix(prefix);
    match parent {
        Some(d) => b.tempdir_in(d),
        None => b.tempdir(),
    }
}

/// At most this many networks run at once in one process: each is several node processes
/// sharing the machine's cores, and relay hops have timeouts.
const MAX_NETWORKS: usize = 2;

static RUNNING: (Mutex<usize>, std::sync::Condvar) = (Mutex::new(0), std::sync::Condvar::new());

/// A slot among the networks allowed to run at once; freed on drop.
#[derive(Debug)]
struct Slot;

impl Slot {
    fn take() -> Slot {
        let (m, cv) = &RUNNING;
        let mut n = lock(m);
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
        *lock(m) -= 1;
        cv.notify_one();
    }
}

/// Locks a mutex; a panic elsewhere while it was held leaves the data usable here.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn write(p: &Path, text: &str) {
    std::fs::write(p, text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
}

/// The nodes `qkd-node demo --setup-only` laid out in `dir`: every directory with a node.toml,
/// in name order.
fn node_names(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.path().join("node.toml").is_file() {
            names.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    if names.is_empty() {
        bail!("no node configurations under {}", dir.display());
    }
    Ok(names)
}

/// The SAEs the demo PKI issued certificates for (`pki/sae-<id>.crt`).
fn sae_names(pki: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(pki)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if let Some(id) = name
            .strip_prefix("sae-")
            .and_then(|s| s.strip_suffix(".crt"))
        {
            names.push(id.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Rewrites the `batch_keys` line of a generated node.toml.
fn set_batch_keys(path: &Path, batch: u32) -> Result<()> {
    let text = std::fs::read_to_string(path)?;
    let mut found = false;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("batch_keys") {
                found = true;
                format!("batch_keys = {batch}")
            } else {
                l.to_string()
            }
        })
        .collect();
    if !found {
        bail!("no `batch_keys` line in {}", path.display());
    }
    std::fs::write(path, out.join("\n") + "\n")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_keys_line_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.toml");
        std::fs::write(&p, "[relay]\npool_keys = 1024\nbatch_keys = 64\n").unwrap();
        set_batch_keys(&p, 512).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "[relay]\npool_keys = 1024\nbatch_keys = 512\n"
        );
        std::fs::write(&p, "[relay]\n").unwrap();
        assert!(set_batch_keys(&p, 512).is_err());
    }

    #[test]
    fn nodes_and_saes_are_read_from_the_layout() {
        let dir = tempfile::tempdir().unwrap();
        assert!(node_names(dir.path()).is_err());
        for n in ["B", "A", "pki"] {
            std::fs::create_dir(dir.path().join(n)).unwrap();
        }
        for n in ["B", "A"] {
            std::fs::write(dir.path().join(n).join("node.toml"), "").unwrap();
        }
        assert_eq!(node_names(dir.path()).unwrap(), ["A", "B"]);
        for f in [
            "ca.crt",
            "sae-ENC-B1.crt",
            "sae-ENC-B1.key",
            "sae-ENC-A1.crt",
        ] {
            std::fs::write(dir.path().join("pki").join(f), "").unwrap();
        }
        assert_eq!(
            sae_names(&dir.path().join("pki")).unwrap(),
            ["ENC-A1", "ENC-B1"]
        );
    }
}
