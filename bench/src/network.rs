//! A demo network of real `qkd-node` processes on loopback, laid out by
//! `qkd-node demo --setup-only` in a temporary directory and killed on drop.
//!
//! Owns what every network benchmark needs: starting the nodes, their ETSI 014 and admin
//! addresses (from each node's `data/listen.json`), SAE identities, the operator `/status`
//! counters, and waiting until the background pool refills have finished. It only ever edits
//! the configuration it generated itself (`[relay] batch_keys`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// How to lay out the network.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `qkd-node demo --topology`: `pair`, `chain5`, `demo` or `mesh`.
    pub topology: String,
    /// Constant secret key rate of every simulated link, bit/s.
    pub link_rate_bps: u64,
    /// `--pool-keys`: finished keys kept ready per SAE pair (None: the demo's default).
    pub pool_keys: Option<u32>,
    /// `[relay] batch_keys` written into every node.toml before start (None: as generated).
    pub batch_keys: Option<u32>,
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

/// The node processes and their directory; every node is killed on drop.
#[derive(Debug)]
pub struct Network {
    dir: tempfile::TempDir,
    nodes: Vec<(String, Child)>,
    admin: reqwest::Client,
}

impl Network {
    /// Lays out the network under `parent` (default: the temp directory) and starts every node.
    pub fn start(bin: &Path, parent: Option<&Path>, layout: &Layout) -> Result<Self> {
        let dir = crate::scratch_dir(parent, "qkd-bench-")?;
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
        let names = node_names(&layout.topology)?;
        if let Some(b) = layout.batch_keys {
            for n in &names {
                set_batch_keys(&dir.path().join(n).join("node.toml"), b)?;
            }
        }
        let mut net = Self {
            dir,
            nodes: Vec::new(),
            admin: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()?,
        };
        for node in &names {
            let log = std::fs::File::create(net.dir.path().join(node).join("node.log"))?;
            let child = Command::new(bin)
                .arg("run")
                .arg("--config")
                .arg(net.dir.path().join(node).join("node.toml"))
                .env("QKD_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting node {node}"))?;
            net.nodes.push((node.to_string(), child));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for node in &names {
            while !net.listen_file(node).exists() {
                net.check_alive()?;
                if Instant::now() > deadline {
                    bail!("node {node} did not start:\n{}", tail(&net.log(node)));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(net)
    }

    /// The network's directory (PKI, configurations, stores, logs).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The node names, in start order.
    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|(n, _)| n.clone()).collect()
    }

    /// The process ID of a node (0 if unknown).
    pub fn pid(&self, node: &str) -> u32 {
        self.nodes
            .iter()
            .find(|(n, _)| n == node)
            .map_or(0, |(_, c)| c.id())
    }

    /// (label, pid) of every node and of this process, for CPU snapshots.
    pub fn processes(&self) -> Vec<(String, u32)> {
        let mut v: Vec<(String, u32)> = self
            .nodes
            .iter()
            .map(|(n, c)| (format!("node {n}"), c.id()))
            .collect();
        v.push(("load generator".into(), std::process::id()));
        v
    }

    /// Fails if a node has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        for i in 0..self.nodes.len() {
            if let Some(st) = self.nodes[i].1.try_wait()? {
                let node = self.nodes[i].0.clone();
                bail!("node {node} exited ({st}):\n{}", tail(&self.log(&node)));
            }
        }
        Ok(())
    }

    /// The node's ETSI 014 base URL, ending in `/api/v1/keys/`.
    pub fn base(&self, node: &str) -> Result<String> {
        Ok(format!(
            "https://{}/api/v1/keys/",
            self.listen(node, "etsi")?
        ))
    }

    /// The node's SKIP Key Provider base URL (`https://<addr>`, no trailing slash).
    pub fn skip_base(&self, node: &str) -> Result<String> {
        Ok(format!("https://{}", self.listen(node, "skip")?))
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
            .pool_max_idle_per_host(4)
            .timeout(Duration::from_secs(30))
            .build()?)
    }

    /// The relay counters of every link as seen by `node` (`GET http://<admin>/status`).
    pub async fn counters(&self, node: &str) -> Result<Vec<(String, LinkCounters)>> {
        let url = format!("http://{}/status", self.listen(node, "admin")?);
        let v: serde_json::Value = self.admin.get(&url).send().await?.json().await?;
        let links = v["links"]
            .as_array()
            .ok_or_else(|| anyhow!("{url}: no `links` in {v}"))?;
        let n = |l: &serde_json::Value, k: &str| l[k].as_u64().unwrap_or(0);
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
        let url = format!("{}{slave}/status", self.base(master_node)?);
        let r = master.get(&url).send().await?;
        if !r.status().is_success() {
            bail!("{url}: {}", r.status());
        }
        let v: serde_json::Value = r.json().await?;
        Ok((
            v["stored_key_count"].as_u64().unwrap_or(0),
            v["max_key_count"].as_u64().unwrap_or(0),
        ))
    }

    /// Waits until every pool in `pools` ((master client, master node, slave)) is full and no
    /// relay message crossed any link for a second: the background refills have finished, so
    /// a measurement that follows starts from a quiet network. Returns how long it took.
    pub async fn wait_settled(
        &mut self,
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
                bail!(
                    "pools not full after {timeout:?}: {}\nnode A log:\n{}",
                    levels.join(", "),
                    tail(&self.log("A"))
                );
            }
            if last_print.elapsed() > Duration::from_secs(10) {
                eprintln!("waiting for pools: {}", levels.join(", "));
                last_print = Instant::now();
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    fn listen_file(&self, node: &str) -> PathBuf {
        self.path().join(node).join("data").join("listen.json")
    }

    /// An address (`etsi`, `peer`, `admin`, `skip` or `grpc`) from the node's `listen.json`.
    pub fn listen(&self, node: &str, which: &str) -> Result<String> {
        let file = self.listen_file(node);
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&file)?)?;
        v[which]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no `{which}` address in {}", file.display()))
    }

    /// The node's log (stderr).
    pub fn log(&self, node: &str) -> String {
        std::fs::read_to_string(self.path().join(node).join("node.log")).unwrap_or_default()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for (_, c) in &mut self.nodes {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The `qkd-node` binary: `explicit`, else next to this binary.
pub fn node_bin(explicit: Option<&PathBuf>) -> Result<PathBuf> {
    let bin = match explicit {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the bench binary has no directory")?
            .join("qkd-node"),
    };
    if !bin.is_file() {
        bail!(
            "no qkd-node binary at {} (build it with `cargo build --release -p qkd-node` into the \
             same target directory, or pass --nodes-bin)",
            bin.display()
        );
    }
    Ok(bin)
}

/// The last lines of a log.
pub fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The nodes `qkd-node demo --topology name` lays out.
fn node_names(topology: &str) -> Result<Vec<String>> {
    let n = match topology {
        "pair" => 2,
        "chain5" | "demo" | "mesh" => 5,
        other => bail!("unknown topology {other:?}: use pair, chain5, demo or mesh"),
    };
    Ok(["A", "B", "C", "D", "E"][..n]
        .iter()
        .map(|s| s.to_string())
        .collect())
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
#[allow(clippy::unwrap_used)]
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
    fn topologies_name_their_nodes() {
        assert_eq!(node_names("pair").unwrap(), ["A", "B"]);
        assert_eq!(node_names("chain5").unwrap().len(), 5);
        assert!(node_names("ring").is_err());
    }
}
