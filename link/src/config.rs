//! Command line and configuration file. Every setting is a flag, and the same setting may come
//! from a TOML file (`--config`; keys are the flags' names with `_` for `-`; relative paths are
//! relative to the file); a flag wins over the file. Errors name the flag or the file and key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use qkd_types::SaeId;

use crate::keys::NodeAccess;
use crate::tunnel::Rekey;
use crate::wg::{self, WgPeer};

/// Default rekey interval of the tunnel.
const INTERVAL: Duration = Duration::from_secs(60);
/// Default rekey interval in WireGuard mode: WireGuard's own session rekeying period.
pub const WG_INTERVAL: Duration = Duration::from_secs(120);
/// Default volume between rekeys: 1 GiB.
const BYTES: u64 = 1 << 30;
/// Default time a key may take to come from the node.
const KEY_TIMEOUT: Duration = Duration::from_secs(10);
/// Default keys per second the stream reserves ahead for.
const KEY_RATE: u32 = 10;

/// `qkd-link`: an AES-256-GCM tunnel (or WireGuard preshared keys) keyed by a QKD key stream.
#[derive(Debug, clap::Parser)]
#[command(name = "qkd-link", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// The three roles.
#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Site A: accept local clients on --local and carry each through its own tunnel to the peer
    /// qkd-link at --remote (this end opens the key streams).
    Listen {
        #[command(flatten)]
        common: Common,
        /// Address local clients connect to (host:port; port 0 picks one, reported on stdout).
        #[arg(long)]
        local: Option<String>,
        /// The peer `qkd-link serve` (host:port).
        #[arg(long)]
        remote: Option<String>,
    },
    /// Site B: accept tunnels on --listen (this end joins their key streams) and forward each to
    /// the TCP service at --target.
    Serve {
        #[command(flatten)]
        common: Common,
        /// Address the peer qkd-link connects to (host:port; port 0 picks one).
        #[arg(long)]
        listen: Option<String>,
        /// The TCP service the tunnel leads to (host:port).
        #[arg(long)]
        target: Option<String>,
    },
    /// WireGuard mode: install each key of the stream as a WireGuard peer's preshared key
    /// (`wg set <if> peer <key> preshared-key /dev/stdin`), rekeying every --rekey-interval.
    Wg {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        wg: WgFlags,
    },
}

/// Settings of WireGuard mode.
#[derive(Debug, clap::Args)]
pub struct WgFlags {
    /// The WireGuard interface (e.g. wg0).
    #[arg(long)]
    interface: Option<String>,
    /// The WireGuard peer's public key (base64).
    #[arg(long)]
    peer: Option<String>,
    /// Dial the peer qkd-link's control address (this end opens the stream).
    #[arg(long)]
    connect: Option<String>,
    /// Accept the peer qkd-link's control connection here (this end joins the stream).
    #[arg(long)]
    listen: Option<String>,
    /// The `wg` program (default: `wg` on PATH).
    #[arg(long)]
    wg_command: Option<String>,
}

/// Settings of every role.
#[derive(Debug, clap::Args)]
pub struct Common {
    /// TOML file with any of these settings (keys: the flags' names with `_`); flags win.
    #[arg(long)]
    config: Option<PathBuf>,
    /// This site's node: its gRPC key delivery address (host:port).
    #[arg(long)]
    node: Option<String>,
    /// TLS name of the node's certificate (default: the host of --node).
    #[arg(long)]
    node_name: Option<String>,
    /// CA certificate (PEM) that verifies the node.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// This SAE's certificate (PEM), as registered at the node.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// This SAE's private key (PEM).
    #[arg(long)]
    key: Option<PathBuf>,
    /// The SAE ID of the other site's qkd-link.
    #[arg(long)]
    peer_sae: Option<String>,
    /// Rekey after this long in one epoch (e.g. 500ms, 30s, 2m; `off`). Default 60s (tunnel),
    /// 120s (WireGuard).
    #[arg(long)]
    rekey_interval: Option<String>,
    /// Rekey after this many bytes through the tunnel, both directions together (0: off).
    /// Default 1 GiB.
    #[arg(long)]
    rekey_bytes: Option<u64>,
    /// How long a key of the stream may take to come from the node before a rekey fails.
    /// Default 10s.
    #[arg(long)]
    key_timeout: Option<String>,
    /// Keys per second the node reserves ahead for this stream (QoS max_bps / 256). Default 10.
    #[arg(long)]
    key_rate: Option<u32>,
}

/// The same settings from a file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node: Option<String>,
    node_name: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    peer_sae: Option<String>,
    rekey_interval: Option<String>,
    rekey_bytes: Option<u64>,
    key_timeout: Option<String>,
    key_rate: Option<u32>,
    local: Option<String>,
    remote: Option<String>,
    listen: Option<String>,
    target: Option<String>,
    interface: Option<String>,
    peer: Option<String>,
    connect: Option<String>,
    wg_command: Option<String>,
}

/// Everything a run needs, checked.
#[derive(Debug)]
pub struct Settings {
    pub node: NodeAccess,
    pub peer_sae: String,
    pub rekey: Rekey,
    pub key_rate: u32,
    pub cmd: Role,
}

/// What this process does.
#[derive(Debug)]
pub enum Role {
    Listen { local: String, remote: String },
    Serve { listen: String, target: String },
    Wg { role: wg::Role, peer: WgPeer },
}

/// Merges flags over the file and checks every value.
pub fn resolve(cmd: Cmd) -> Result<Settings> {
    let (common, role_flags) = match cmd {
        Cmd::Listen {
            common,
            local,
            remote,
        } => (common, RoleFlags::Listen { local, remote }),
        Cmd::Serve {
            common,
            listen,
            target,
        } => (common, RoleFlags::Serve { listen, target }),
        Cmd::Wg { common, wg } => (common, RoleFlags::Wg(wg)),
    };
    let (file, src) = match &common.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("--config {}", p.display()))?;
            let f: FileConfig =
                toml::from_str(&text).with_context(|| format!("{}", p.display()))?;
            (f, Source::File(p.clone()))
        }
        None => (FileConfig::default(), Source::Flags),
    };
    let path = |flag: Option<PathBuf>, from_file: Option<PathBuf>, name: &str| -> Result<PathBuf> {
        match (flag, from_file) {
            (Some(p), _) => Ok(p),
            (None, Some(p)) => Ok(src.relative(p)),
            (None, None) => bail!("missing {}", src.name(name)),
        }
    };
    let need = |flag: Option<String>, from_file: Option<String>, name: &str| -> Result<String> {
        flag.or(from_file)
            .with_context(|| format!("missing {}", src.name(name)))
    };
    let node = NodeAccess {
        addr: need(common.node, file.node, "node")?,
        server_name: common.node_name.or(file.node_name),
        ca: path(common.ca, file.ca, "ca")?,
        cert: path(common.cert, file.cert, "cert")?,
        key: path(common.key, file.key, "key")?,
    };
    let peer_sae = need(common.peer_sae, file.peer_sae, "peer_sae")?;
    SaeId::parse(&peer_sae).with_context(|| format!("{}: {peer_sae:?}", src.name("peer_sae")))?;
    let default_interval = match role_flags {
        RoleFlags::Wg(_) => WG_INTERVAL,
        _ => INTERVAL,
    };
    let interval = match common.rekey_interval.or(file.rekey_interval) {
        None => Some(default_interval),
        Some(t) => optional_duration(&t).with_context(|| src.name("rekey_interval"))?,
    };
    let bytes = match common.rekey_bytes.or(file.rekey_bytes) {
        None => Some(BYTES),
        Some(0) => None,
        Some(b) => Some(b),
    };
    let key_timeout = match common.key_timeout.or(file.key_timeout) {
        None => KEY_TIMEOUT,
        Some(t) => optional_duration(&t)
            .with_context(|| src.name("key_timeout"))?
            .with_context(|| format!("{}: must be a duration", src.name("key_timeout")))?,
    };
    let key_rate = common.key_rate.or(file.key_rate).unwrap_or(KEY_RATE);
    if !(1..=1000).contains(&key_rate) {
        bail!(
            "{}: between 1 and 1000 keys per second",
            src.name("key_rate")
        );
    }
    let cmd = match role_flags {
        RoleFlags::Listen { local, remote } => Role::Listen {
            local: need(local, file.local, "local")?,
            remote: need(remote, file.remote, "remote")?,
        },
        RoleFlags::Serve { listen, target } => Role::Serve {
            listen: need(listen, file.listen, "listen")?,
            target: need(target, file.target, "target")?,
        },
        RoleFlags::Wg(WgFlags {
            interface,
            peer,
            connect,
            listen,
            wg_command,
        }) => {
            let role = match (connect.or(file.connect), listen.or(file.listen)) {
                (Some(c), None) => wg::Role::Connect(c),
                (None, Some(l)) => wg::Role::Listen(l),
                _ => bail!(
                    "give exactly one of {} and {}",
                    src.name("connect"),
                    src.name("listen")
                ),
            };
            if interval.is_none() {
                bail!("{}: WireGuard mode needs one", src.name("rekey_interval"));
            }
            Role::Wg {
                role,
                peer: WgPeer {
                    command: wg_command
                        .or(file.wg_command)
                        .unwrap_or_else(|| "wg".into()),
                    interface: need(interface, file.interface, "interface")?,
                    peer: need(peer, file.peer, "peer")?,
                },
            }
        }
    };
    Ok(Settings {
        node,
        peer_sae,
        rekey: Rekey {
            interval,
            bytes,
            key_timeout,
        },
        key_rate,
        cmd,
    })
}

enum RoleFlags {
    Listen {
        local: Option<String>,
        remote: Option<String>,
    },
    Serve {
        listen: Option<String>,
        target: Option<String>,
    },
    Wg(WgFlags),
}

/// Where settings come from, to name them in errors.
enum Source {
    Flags,
    File(PathBuf),
}

impl Source {
    /// `--flag-name`, or `--flag-name (or key in file.toml)`.
    fn name(&self, key: &str) -> String {
        let flag = format!("--{}", key.replace('_', "-"));
        match self {
            Source::Flags => flag,
            Source::File(p) => format!("{flag} (or `{key}` in {})", p.display()),
        }
    }

    fn relative(&self, p: PathBuf) -> PathBuf {
        match self {
            Source::File(f) if p.is_relative() => f.parent().unwrap_or(Path::new(".")).join(p),
            _ => p,
        }
    }
}

/// `250ms`, `30s`, `2m`, or a number of seconds; `off` (or 0) for none.
fn optional_duration(text: &str) -> Result<Option<Duration>> {
    let t = text.trim();
    if t == "off" {
        return Ok(None);
    }
    let (num, unit) = match t.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: f64 = num
        .parse()
        .with_context(|| format!("{text:?} is not a duration (use 500ms, 30s, 2m or off)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => bail!("{text:?}: unknown unit {unit:?} (use ms, s or m)"),
    };
    if !secs.is_finite() || secs > 86_400.0 {
        bail!("{text:?}: at most a day");
    }
    Ok((secs > 0.0).then(|| Duration::from_secs_f64(secs)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn durations() {
        assert_eq!(
            optional_duration("250ms").unwrap(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            optional_duration("2").unwrap(),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            optional_duration("2m").unwrap(),
            Some(Duration::from_secs(120))
        );
        assert_eq!(optional_duration("off").unwrap(), None);
        assert!(optional_duration("5x").is_err());
        assert!(optional_duration("fast").is_err());
    }

    #[test]
    fn errors_name_the_flag_or_the_file_key() {
        let cli = Cli::try_parse_from(["qkd-link", "listen", "--node", "127.0.0.1:1"]).unwrap();
        let e = format!("{:#}", resolve(cli.cmd).unwrap_err());
        assert!(e.contains("missing --ca"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("link.toml");
        std::fs::write(
            &file,
            "node = \"127.0.0.1:1\"\nca = \"ca.crt\"\ncert = \"a.crt\"\nkey = \"a.key\"\n\
             peer_sae = \"ENC-B1\"\nlocal = \"127.0.0.1:0\"\nrekey_interval = \"soon\"\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let cli = Cli::try_parse_from(["qkd-link", "listen", "--config", f]).unwrap();
        let e = format!("{:#}", resolve(cli.cmd).unwrap_err());
        assert!(
            e.contains("`rekey_interval` in") && e.contains("link.toml"),
            "{e}"
        );

        // A flag wins over the file; relative paths are the file's.
        let cli = Cli::try_parse_from([
            "qkd-link",
            "listen",
            "--config",
            f,
            "--rekey-interval",
            "1s",
            "--remote",
            "127.0.0.1:2",
        ])
        .unwrap();
        let s = resolve(cli.cmd).unwrap();
        assert_eq!(s.rekey.interval, Some(Duration::from_secs(1)));
        assert_eq!(s.node.ca, dir.path().join("ca.crt"));

        std::fs::write(&file, "node = \"x\"\nnodes = 1\n").unwrap();
        let cli = Cli::try_parse_from(["qkd-link", "serve", "--config", f]).unwrap();
        let e = format!("{:#}", resolve(cli.cmd).unwrap_err());
        assert!(e.contains("link.toml") && e.contains("nodes"), "{e}");
    }
}
