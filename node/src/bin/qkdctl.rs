//! `qkdctl`: the operator's tool. It reads what nodes show on their admin listeners (`status`,
//! `network`, `saes`), changes a node through its control listener with a management certificate
//! (`link drain|enable`, `reload`, `rotate certs|kek`), and checks a configuration offline with the node's own checks
//! (`check`). It never reads a key store and never sees a key byte.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use qkd_node::check;
use qkd_node::config::NodeConfig;
use qkd_node::daemon::{LISTEN_FILE, ListenRecord};
use serde_json::Value;

#[derive(Debug, Parser)]
#[command(
    name = "qkdctl",
    version,
    about = "Operate trusted nodes of the QKD key-management stack"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The local node: links, alarms, routing (from its admin listener).
    ///
    /// Example: qkdctl status --config /etc/qkd/node.toml
    Status {
        #[command(flatten)]
        node: AdminTarget,
        /// Print the node's `/status` JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Every node of a network, from each one's admin listener.
    ///
    /// Example: qkdctl network --network /etc/qkd/network.toml
    Network {
        /// A network file: `[[node]]` entries with `name` and `admin` (host:port).
        #[arg(long)]
        network: Option<PathBuf>,
        /// A node as NAME=HOST:PORT of its admin listener (repeatable; added to --network).
        #[arg(long = "node", value_name = "NAME=ADDR")]
        nodes: Vec<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The SAE pairs served by a node, with their policy, pool and consumption (its 015 view).
    ///
    /// Example: qkdctl saes --config /etc/qkd/node.toml
    Saes {
        #[command(flatten)]
        node: AdminTarget,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Change a link through the node's control listener (mutual TLS, a management certificate).
    #[command(subcommand)]
    Link(LinkCmd),
    /// Make the node reload its configuration file (like SIGHUP). `[alarms]`, SAEs and whom
    /// they pair with, `[[pair]]` protection, `[limits]` and the relay's default policy and suite
    /// apply at once; anything else is refused, naming what needs a restart. A change that
    /// would void pooled keys is refused unless --void-pools is given; one that would strand
    /// keys a master already has, or an open key stream, is refused with what stands in the
    /// way. Check the file first with `qkdctl check`.
    ///
    /// Example: qkdctl reload --config /etc/qkd/node.toml --cert op.crt --key op.key
    Reload {
        #[command(flatten)]
        control: ControlTarget,
        /// Void pooled keys made under the old configuration that the new one no longer fits
        /// (their pairs refill under the new one).
        #[arg(long)]
        void_pools: bool,
    },
    /// Rotate the node's certificates or the store's key-encryption key without a restart
    /// (control listener).
    #[command(subcommand)]
    Rotate(RotateCmd),
    /// Check a configuration file and every file it names, offline (what `qkd-node check` and
    /// `qkd-node run` check before starting).
    ///
    /// Example: qkdctl check /etc/qkd/node.toml
    Check {
        /// The node's TOML configuration.
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum LinkCmd {
    /// Drain a link: the node advertises it down, so routes go around it; batches under way
    /// finish. Not kept across a restart.
    ///
    /// Example: qkdctl link drain A-B --config /etc/qkd/node.toml --cert op.crt --key op.key
    Drain {
        /// The link ID.
        link: String,
        #[command(flatten)]
        control: ControlTarget,
    },
    /// Enable a drained link again.
    Enable {
        /// The link ID.
        link: String,
        #[command(flatten)]
        control: ControlTarget,
    },
}

#[derive(Debug, Subcommand)]
enum RotateCmd {
    /// Make the node re-read every certificate, key and CA file it serves and dials with
    /// ([tls], [grpc], [control]): all are checked first (key matches certificate, valid now,
    /// same urn:qkd:node: identity) and, if all pass, new TLS handshakes use them; connections
    /// already up continue. One bad file refuses the rotation and changes nothing. Move the new
    /// files into place first (mv, never a half-written file).
    ///
    /// Example: qkdctl rotate certs --config /etc/qkd/node.toml --cert op.crt --key op.key
    Certs {
        #[command(flatten)]
        control: ControlTarget,
    },
    /// Start a fresh data-key epoch under a new key-encryption key (a new kek-<period>.key);
    /// stored keys are re-encrypted into it in small steps while the node serves, and older
    /// KEK files are deleted once no epoch needs them.
    ///
    /// Example: qkdctl rotate kek --config /etc/qkd/node.toml --cert op.crt --key op.key
    Kek {
        #[command(flatten)]
        control: ControlTarget,
    },
}

/// Which node's admin listener to ask.
#[derive(Debug, Args)]
struct AdminTarget {
    /// The admin listener (host:port).
    #[arg(long, conflicts_with = "config")]
    admin: Option<String>,
    /// The node's configuration: its `admin_listen` (or the port it recorded, for port 0).
    #[arg(long)]
    config: Option<PathBuf>,
}

/// Which node's control listener, and as whom.
#[derive(Debug, Args)]
struct ControlTarget {
    /// The control listener (host:port).
    #[arg(long, conflicts_with = "config")]
    control: Option<String>,
    /// The node's configuration: its `[control] listen` (or the recorded port) and, unless
    /// --ca is given, the CA that verifies the node (`[tls] ca`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The operator's management certificate (PEM, `urn:qkd:operator:<name>` URI SAN).
    #[arg(long)]
    cert: PathBuf,
    /// Its private key (PEM).
    #[arg(long)]
    key: PathBuf,
    /// The CA certificate that verifies the node (PEM).
    #[arg(long)]
    ca: Option<PathBuf>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Check { config } => {
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let cfg = NodeConfig::load(&config)?;
            check::offline(&cfg)?;
            check::names(&cfg)?;
            print!("{}", check::summary(&config, &cfg));
            Ok(())
        }
        Cmd::Status { node, json } => rt.block_on(async {
            let admin = node.resolve()?;
            let st = get_json(&admin, "/status").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print!("{}", status_table(&st));
            }
            Ok(())
        }),
        Cmd::Network {
            network,
            nodes,
            json,
        } => rt.block_on(async {
            let list = network_nodes(network.as_deref(), &nodes)?;
            let mut out = Vec::new();
            for (name, admin) in &list {
                let st = get_json(admin, "/status").await;
                out.push((name.clone(), admin.clone(), st));
            }
            if json {
                let doc: Vec<Value> = out
                    .iter()
                    .map(|(name, admin, st)| match st {
                        Ok(st) => serde_json::json!({"name": name, "admin": admin, "status": st}),
                        Err(e) => serde_json::json!({"name": name, "admin": admin, "error": format!("{e:#}")}),
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                print!("{}", network_table(&out));
            }
            if out.iter().any(|(_, _, st)| st.is_err()) {
                bail!("some nodes did not answer");
            }
            Ok(())
        }),
        Cmd::Saes { node, json } => rt.block_on(async {
            let admin = node.resolve()?;
            let view = get_json(&admin, "/restconf/data/etsi-qkd-sdn-node:qkd_node").await?;
            let apps = view["etsi-qkd-sdn-node:qkd_node"]["qkd_applications"]["qkd_app"].clone();
            if json {
                println!("{}", serde_json::to_string_pretty(&apps)?);
            } else {
                print!("{}", saes_table(&apps));
            }
            Ok(())
        }),
        Cmd::Link(cmd) => {
            let (link, target, verb) = match cmd {
                LinkCmd::Drain { link, control } => (link, control, "drain"),
                LinkCmd::Enable { link, control } => (link, control, "enable"),
            };
            rt.block_on(control_post(&target, &format!("/v1/links/{link}/{verb}")))
        }
        Cmd::Reload {
            control,
            void_pools,
        } => {
            let path = if void_pools {
                "/v1/reload?void_pools=true"
            } else {
                "/v1/reload"
            };
            rt.block_on(control_post(&control, path))
        }
        Cmd::Rotate(RotateCmd::Certs { control }) => {
            rt.block_on(control_post(&control, "/v1/rotate/certs"))
        }
        Cmd::Rotate(RotateCmd::Kek { control }) => {
            rt.block_on(control_post(&control, "/v1/rotate/kek"))
        }
    }
}

/// POSTs to the control listener; prints the outcome, or fails with the node's reason.
async fn control_post(target: &ControlTarget, path: &str) -> Result<()> {
    let (addr, ca) = target.resolve()?;
    let client = control_client(&target.cert, &target.key, &ca)?;
    let r = client
        .post(format!("https://{addr}{path}"))
        .send()
        .await
        .with_context(|| format!("control listener {addr}"))?;
    let code = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    if !code.is_success() {
        bail!(
            "{addr}: {code}: {}",
            body["error"]
                .as_str()
                .or(body["detail"].as_str())
                .unwrap_or("refused")
        );
    }
    println!(
        "{}: {} ({})",
        body["outcome"].as_str().unwrap_or("?"),
        body["detail"].as_str().unwrap_or(""),
        body["operator"].as_str().unwrap_or("?")
    );
    Ok(())
}

impl AdminTarget {
    fn resolve(&self) -> Result<String> {
        if let Some(a) = &self.admin {
            return Ok(a.clone());
        }
        let Some(path) = &self.config else {
            bail!("say which node: --admin HOST:PORT or --config node.toml");
        };
        let cfg = NodeConfig::load(path)?;
        let want = cfg
            .node
            .admin_listen
            .with_context(|| format!("{}: node.admin_listen is not set", path.display()))?;
        Ok(recorded(&cfg, want, |r| r.admin)?.to_string())
    }
}

impl ControlTarget {
    /// The control address and the CA that verifies the node.
    fn resolve(&self) -> Result<(String, PathBuf)> {
        if let Some(a) = &self.control {
            let ca = self.ca.clone().context("--control needs --ca")?;
            return Ok((a.clone(), ca));
        }
        let Some(path) = &self.config else {
            bail!("say which node: --control HOST:PORT --ca ca.crt, or --config node.toml");
        };
        let cfg = NodeConfig::load(path)?;
        let c = cfg
            .control
            .as_ref()
            .with_context(|| format!("{}: no [control] section", path.display()))?;
        let addr = recorded(&cfg, c.listen, |r| r.control)?;
        Ok((
            addr.to_string(),
            self.ca.clone().unwrap_or_else(|| cfg.tls.ca.clone()),
        ))
    }
}

/// `want`, or for port 0 the address the node recorded at its start.
fn recorded(
    cfg: &NodeConfig,
    want: SocketAddr,
    pick: impl Fn(&ListenRecord) -> Option<SocketAddr>,
) -> Result<SocketAddr> {
    if want.port() != 0 {
        return Ok(want);
    }
    let file = cfg.node.data_dir.join(LISTEN_FILE);
    let bytes = std::fs::read(&file).with_context(|| {
        format!(
            "{}: the port is 0 and the node recorded none (is it running?)",
            file.display()
        )
    })?;
    let record: ListenRecord =
        serde_json::from_slice(&bytes).with_context(|| format!("{}", file.display()))?;
    pick(&record).with_context(|| format!("{}: no such listener recorded", file.display()))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkFile {
    #[serde(default)]
    node: Vec<NetworkNode>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkNode {
    name: String,
    admin: String,
}

fn network_nodes(file: Option<&Path>, extra: &[String]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    if let Some(f) = file {
        let text = std::fs::read_to_string(f).with_context(|| format!("{}", f.display()))?;
        let parsed: NetworkFile =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        out.extend(parsed.node.into_iter().map(|n| (n.name, n.admin)));
    }
    for n in extra {
        let (name, addr) = n
            .split_once('=')
            .with_context(|| format!("--node {n:?}: use NAME=HOST:PORT"))?;
        out.push((name.to_owned(), addr.to_owned()));
    }
    if out.is_empty() {
        bail!("no nodes: give --network FILE or --node NAME=HOST:PORT");
    }
    Ok(out)
}

async fn get_json(admin: &str, path: &str) -> Result<Value> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .build()?;
    let url = format!("http://{admin}{path}");
    let r = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("admin listener {admin}"))?;
    if !r.status().is_success() {
        bail!("{url}: {}", r.status());
    }
    r.json().await.with_context(|| format!("{url}: not JSON"))
}

fn control_client(cert: &Path, key: &Path, ca: &Path) -> Result<reqwest::Client> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("{}", p.display()));
    let mut pem = read(cert)?;
    pem.extend(read(key)?);
    Ok(reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&read(ca)?)
            .with_context(|| format!("{}", ca.display()))?])
        .identity(
            reqwest::Identity::from_pem(&pem)
                .with_context(|| format!("{} and {}", cert.display(), key.display()))?,
        )
        .no_proxy()
        .http1_only()
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// Left-aligned columns.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn link_rows(st: &Value) -> Vec<Vec<String>> {
    st["links"]
        .as_array()
        .map(|ls| {
            ls.iter()
                .map(|l| {
                    vec![
                        text(&l["link"]),
                        text(&l["peer"]),
                        text(&l["state"]),
                        text(&l["admin"]),
                        l["qber"]
                            .as_f64()
                            .map_or("-".into(), |q| format!("{:.2} %", q * 100.0)),
                        l["secret_key_rate_bps"]
                            .as_f64()
                            .map_or("-".into(), |r| format!("{r:.0}")),
                        text(&l["available_bytes"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default()
}

const LINK_HEADER: [&str; 7] = [
    "LINK",
    "PEER",
    "STATE",
    "ADMIN",
    "QBER",
    "SKR bit/s",
    "AVAILABLE B",
];

fn status_table(st: &Value) -> String {
    let mut out = format!(
        "node {} (KME {}){}\n",
        text(&st["node"]),
        text(&st["kme_id"]),
        if st["simulated"] == true {
            ", SIMULATED links"
        } else {
            ""
        }
    );
    out.push_str(&table(&LINK_HEADER, &link_rows(st)));
    let alarms = st["alarms"].as_array().cloned().unwrap_or_default();
    out.push_str(&format!("alarms: {}\n", alarms.len()));
    for a in &alarms {
        out.push_str(&format!(
            "  {} {} {}: {}\n",
            text(&a["severity"]),
            text(&a["alarm"]),
            text(&a["subject"]),
            text(&a["cause"])
        ));
    }
    let usable: Vec<String> = st["routing"]["usable_links"]
        .as_array()
        .map(|v| v.iter().map(text).collect())
        .unwrap_or_default();
    out.push_str(&format!(
        "routing: {} nodes known; usable links: {}\n",
        text(&st["routing"]["known_nodes"]),
        usable.join(" ")
    ));
    out
}

fn network_table(nodes: &[(String, String, Result<Value>)]) -> String {
    let mut rows = Vec::new();
    for (name, admin, st) in nodes {
        rows.push(match st {
            Ok(st) => {
                let links = st["links"].as_array().cloned().unwrap_or_default();
                let up = links.iter().filter(|l| l["state"] == "up").count();
                let drained: Vec<String> = links
                    .iter()
                    .filter(|l| l["admin"] == "drained")
                    .map(|l| text(&l["link"]))
                    .collect();
                vec![
                    name.clone(),
                    admin.clone(),
                    "up".into(),
                    format!("{up}/{}", links.len()),
                    if drained.is_empty() {
                        "-".into()
                    } else {
                        drained.join(",")
                    },
                    st["alarms"].as_array().map_or(0, Vec::len).to_string(),
                    st["routing"]["usable_links"]
                        .as_array()
                        .map_or(0, Vec::len)
                        .to_string(),
                ]
            }
            Err(e) => vec![
                name.clone(),
                admin.clone(),
                format!("UNREACHABLE: {e:#}"),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ],
        });
    }
    table(
        &[
            "NODE",
            "ADMIN",
            "STATE",
            "LINKS UP",
            "DRAINED",
            "ALARMS",
            "USABLE LINKS",
        ],
        &rows,
    )
}

fn saes_table(apps: &Value) -> String {
    let strip = |v: &Value| {
        let s = text(v);
        s.rsplit(':').next().unwrap_or(&s).to_owned()
    };
    let rows: Vec<Vec<String>> = apps
        .as_array()
        .map(|a| {
            a.iter()
                .map(|app| {
                    let pool = &app["qkd-stack:pool"];
                    vec![
                        text(&app["server_app_id"]),
                        app["client_app_id"]
                            .as_array()
                            .map(|c| c.iter().map(text).collect::<Vec<_>>().join(","))
                            .unwrap_or_default(),
                        strip(&app["app_status"]),
                        text(&pool["policy"]),
                        text(&pool["suite"]),
                        text(&pool["ready_keys"]),
                        text(&pool["keys_delivered"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(
        &[
            "MASTER",
            "SLAVE",
            "STATUS",
            "POLICY",
            "SUITE",
            "READY",
            "DELIVERED",
        ],
        &rows,
    )
}
