//! `qkd-device-emu`: a simulated QKD link served as a pair of vendor-style ETSI GS QKD 014
//! devices over HTTPS, for testing device adapters, KMEs' clients and `qkd-conform`.
//!
//! ```text
//! qkd-device-emu emu.toml
//! ```
//!
//! The file holds the pair (`[pair]`, see `qkd_simulator::emulator::PairConfig`), the link model
//! (`[model]`, as in scenario files) and one `[[device]]` per end (listen address, PEM files).
//! The emulator prints `device <i> listening on <addr>` for each device and serves until
//! interrupted (Ctrl-C).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Parser;
use qkd_simulator::emulator::{DevicePair, PairConfig, TlsVersions, run, server_tls_versions};
use qkd_simulator::model::LinkModelSpec;
use qkd_types::{Clock, SystemClock};
use serde::Deserialize;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "A QKD device pair speaking ETSI GS QKD 014 over HTTPS (simulated keys)"
)]
struct Args {
    /// The emulator's TOML file.
    config: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    pair: PairConfig,
    model: LinkModelSpec,
    device: Vec<DeviceFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceFile {
    /// `host:port`; port 0 picks a free port (printed at start).
    listen: String,
    /// The device's certificate chain (PEM).
    cert: PathBuf,
    /// Its private key (PEM).
    key: PathBuf,
    /// CA of the SAE client certificates (PEM).
    client_ca: PathBuf,
    /// TLS versions served: `both` (default), `tls12-only` (an older device) or `tls13-only`.
    #[serde(default)]
    tls: TlsVersions,
}

fn read(base: &Path, p: &Path) -> Result<Vec<u8>> {
    let path = base.join(p);
    std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("cannot read {}", args.config.display()))?;
    let file: File = toml::from_str(&text).with_context(|| format!("{}", args.config.display()))?;
    if file.device.len() != 2 {
        bail!(
            "{}: a pair has exactly two [[device]] tables, found {}",
            args.config.display(),
            file.device.len()
        );
    }
    let base = args.config.parent().unwrap_or(Path::new("."));
    let model = file
        .model
        .build()
        .with_context(|| format!("{}: [model]", args.config.display()))?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    eprintln!("simulated keys: for tests and demos, never for protecting data");
    let pair = DevicePair::new(file.pair, model, clock.clone(), clock.now());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for (i, d) in file.device.iter().enumerate() {
        let tls = server_tls_versions(
            &read(base, &d.cert)?,
            &read(base, &d.key)?,
            &read(base, &d.client_ca)?,
            d.tls,
        )
        .with_context(|| format!("device {i}: TLS files"))?;
        let listener = tokio::net::TcpListener::bind(&d.listen)
            .await
            .with_context(|| format!("device {i}: cannot listen on {}", d.listen))?;
        println!("device {i} listening on {}", listener.local_addr()?);
        let mut rx = stop_rx.clone();
        tasks.push(tokio::spawn(run(
            listener,
            tls,
            pair.clone(),
            i,
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        )));
    }
    tokio::signal::ctrl_c().await?;
    let _ = stop_tx.send(true);
    for t in tasks {
        t.await??;
    }
    Ok(())
}
