//! A running `qkd-link` process (the reference encryptor) keyed by a node of a [`Net`]: started
//! with an SAE's certificate, its JSON report lines collected as they come, killed on drop. The
//! link tests and `qkd-bench link` drive it.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::Net;

/// A running `qkd-link`.
#[derive(Debug)]
pub struct LinkProc {
    child: Child,
    events: Arc<Mutex<Vec<Value>>>,
    log: PathBuf,
}

impl LinkProc {
    /// Starts `bin <args>` as SAE `sae` of `node` in `net` (its gRPC address, the demo CA and
    /// the SAE's certificate and key are added), with extra environment; stderr goes to a log in
    /// the network's directory.
    pub fn start(
        bin: &Path,
        net: &Net,
        node: &str,
        sae: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<LinkProc> {
        let pki = net.path().join("pki");
        let grpc = net
            .try_listen(node)?
            .grpc
            .ok_or_else(|| anyhow!("node {node} serves no gRPC"))?;
        let role = args.first().copied().unwrap_or("link");
        let log = net.path().join(format!("link-{sae}-{role}.log"));
        let mut child = Command::new(bin)
            .args(args)
            .arg("--node")
            .arg(grpc.to_string())
            .arg("--ca")
            .arg(pki.join("ca.crt"))
            .arg("--cert")
            .arg(pki.join(format!("sae-{sae}.crt")))
            .arg("--key")
            .arg(pki.join(format!("sae-{sae}.key")))
            .env("QKD_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().context("no stdout")?;
        let sink = events.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let v = serde_json::from_str(&line)
                    .unwrap_or_else(|e| Value::String(format!("not JSON: {line:?}: {e}")));
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(v);
            }
        });
        Ok(LinkProc { child, events, log })
    }

    /// The first report line `pred` accepts, waiting up to `within` for it; fails if the process
    /// exits first.
    pub async fn wait_for(
        &mut self,
        what: &str,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let t0 = Instant::now();
        loop {
            if let Some(v) = self.find(&pred) {
                return Ok(v);
            }
            if let Some(st) = self.child.try_wait()? {
                // Let the reader thread take in what the process printed last.
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Some(v) = self.find(&pred) {
                    return Ok(v);
                }
                bail!("qkd-link exited ({st}) before {what}:\n{}", self.log());
            }
            if t0.elapsed() > within {
                bail!(
                    "no {what} after {within:?}: {:?}\n{}",
                    self.events.lock().unwrap_or_else(|p| p.into_inner()),
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The address it reported listening on.
    pub async fn addr(&mut self, within: Duration) -> Result<String> {
        let v = self
            .wait_for("listening", within, |v| v["event"] == "listening")
            .await?;
        v["addr"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no address in {v}"))
    }

    /// The report of tunnel `conn` closing.
    pub async fn closed(&mut self, conn: u64, within: Duration) -> Result<Value> {
        self.wait_for(&format!("tunnel {conn} closing"), within, |v| {
            v["event"] == "tunnel_closed" && v["conn"] == conn
        })
        .await
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn find(&self, pred: &impl Fn(&Value) -> bool) -> Option<Value> {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        events.iter().find(|v| pred(v)).cloned()
    }
}

impl Drop for LinkProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
