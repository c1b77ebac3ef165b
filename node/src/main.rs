//! `qkd-node`: the trusted-node daemon, and a demo that runs a network of them on loopback.

#![forbid(unsafe_code)]

use qkd_node::{audit, check, config, daemon, demo};

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use tokio::sync::watch;

#[derive(Debug, Parser)]
#[command(
    name = "qkd-node",
    version,
    about = "Trusted-node daemon of the QKD key-management stack"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run one node from its configuration file.
    ///
    /// Example: qkd-node run --config /etc/qkd/node.toml
    Run {
        /// The node's TOML configuration.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a configuration file and every file it names (certificates, keys, CA, pinned
    /// signing keys, link seeds, device certificates), then exit; `run` performs the same
    /// checks before it starts.
    ///
    /// Example: qkd-node check --config /etc/qkd/node.toml
    Check {
        /// The node's TOML configuration.
        #[arg(long, short)]
        config: PathBuf,
        /// Also try a TLS handshake with every neighbour's peer port, and ask the QKD device of
        /// every ETSI 014 link for its status (it must name the expected KME). Never needed by
        /// `run`: a neighbour or device that is down is retried while the node runs.
        #[arg(long)]
        online: bool,
    },
    /// Start a demo network of trusted nodes on loopback with simulated QKD links, print what to
    /// run next, and keep it running until Ctrl-C.
    ///
    /// Example: qkd-node demo --data-dir demo-data
    Demo(demo::DemoArgs),
    /// Work with audit logs.
    #[command(subcommand)]
    Audit(AuditCmd),
}

#[derive(Debug, Subcommand)]
enum AuditCmd {
    /// Check an audit log's hash chain offline: every record must name the SHA-256 of the one
    /// before it and carry the next sequence number. Exits non-zero naming the first line where
    /// a record was edited, removed or reordered; prints the head hash to compare with the copy
    /// the SIEM received.
    ///
    /// Example: qkd-node audit verify /var/lib/qkd-node/audit.log
    Verify {
        /// The audit log file.
        file: PathBuf,
        /// The hash the last record must have (from the SIEM's copy): finds records removed
        /// from the end.
        #[arg(long)]
        expect_head: Option<String>,
    },
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("QKD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("QKD_LOG_FORMAT").is_ok_and(|v| v == "json");
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Check { config, online } => {
            let cfg = config::NodeConfig::load(&config)?;
            check::offline(&cfg)?;
            check::names(&cfg)?;
            print!("{}", check::summary(&config, &cfg));
            if online {
                let mut down = 0;
                for r in rt.block_on(check::online(&cfg)) {
                    match r.result {
                        Ok(what) => println!("neighbour {}: {what}", r.neighbour),
                        Err(why) => {
                            down += 1;
                            println!("neighbour {}: UNREACHABLE: {why}", r.neighbour);
                        }
                    }
                }
                let mut devices_down = 0;
                for link in &cfg.links {
                    if let config::SourceSection::Simulated { .. } = link.source {
                        println!("link {}: simulated, no device to reach", link.id);
                    }
                }
                for r in rt.block_on(check::online_devices(&cfg)) {
                    match r.result {
                        Ok(what) => println!("link {}: device {what}", r.link),
                        Err(why) => {
                            devices_down += 1;
                            println!("link {}: DEVICE FAILED: {why}", r.link);
                        }
                    }
                }
                if down > 0 || devices_down > 0 {
                    anyhow::bail!(
                        "{down} neighbour(s) unreachable, {devices_down} device(s) failed the \
                         online check"
                    );
                }
            }
            Ok(())
        }
        Cmd::Run { config } => {
            init_logging();
            let cfg = config::NodeConfig::load(&config)?;
            rt.block_on(async move {
                let (tx, rx) = watch::channel(false);
                tokio::spawn(async move {
                    daemon::wait_for_signal().await;
                    let _ = tx.send(true);
                });
                daemon::run(cfg, rx).await
            })
        }
        Cmd::Demo(args) => {
            init_logging();
            rt.block_on(demo::run(args))
        }
        Cmd::Audit(AuditCmd::Verify { file, expect_head }) => {
            let head =
                audit::verify(&file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            if let Some(want) = expect_head
                && !want.eq_ignore_ascii_case(&head.hash)
            {
                anyhow::bail!(
                    "{}: {}",
                    file.display(),
                    audit::VerifyError::Head {
                        found: head.hash,
                        expected: want,
                    }
                );
            }
            println!(
                "{}: OK, {} records, chain intact; head {}",
                file.display(),
                head.next_seq,
                head.hash
            );
            Ok(())
        }
    }
}
