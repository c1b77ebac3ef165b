//! Starts and stops real `qkd-node` processes from a demo layout in a temporary directory, and
//! talks ETSI 014 to them with client certificates.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
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
