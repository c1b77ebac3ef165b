//! `qkd-link`: the reference encryptor. An encrypted tunnel for a TCP service between two sites,
//! each side an SAE of its own trusted node, both following one ETSI 004-style gRPC key stream
//! (AES-256-GCM, rekeyed every N seconds or N bytes, failing closed); or, in WireGuard mode, the
//! same stream's keys installed as a WireGuard peer's preshared key.
//!
//! An SAE application like any other: it speaks the node's public gRPC API (`qkd-proto`) and
//! holds key bytes only in `qkd_types::Secret`; it never links the key manager.
//! docs/qkd-link.md has usage, the frame format, the rekey rules and the failure behaviour.

#![forbid(unsafe_code)]

mod config;
mod frame;
mod keys;
mod report;
mod tunnel;
mod wg;

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use tokio::net::{TcpListener, TcpStream};

use crate::config::{Cli, Settings};
use crate::tunnel::Stats;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let settings = match config::resolve(cli.cmd) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("qkd-link: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("qkd-link: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(settings)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("qkd-link: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("QKD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run(s: Settings) -> Result<()> {
    let client = keys::connect(&s.node).await?;
    let qos = keys::qos(
        s.key_rate,
        s.rekey.key_timeout.min(std::time::Duration::from_secs(2)),
    );
    let (addr, flag, opener, far) = match s.cmd {
        config::Role::Listen { local, remote } => (local, "--local", true, remote),
        config::Role::Serve { listen, target } => (listen, "--listen", false, target),
        config::Role::Wg { role, peer } => {
            let interval = s.rekey.interval.unwrap_or(config::WG_INTERVAL); // set: checked by resolve
            return wg::run(
                client,
                &s.peer_sae,
                qos,
                role,
                &peer,
                interval,
                s.rekey.key_timeout,
            )
            .await;
        }
    };
    let listener = bind(&addr, flag, if opener { "listen" } else { "serve" }).await?;
    let tunnels = Arc::new(Tunnels {
        client,
        qos,
        peer: s.peer_sae,
        far,
        rekey: s.rekey,
    });
    accept_forever(listener, move |conn, sock| {
        let t = tunnels.clone();
        async move {
            let (client, qos) = (t.client.clone(), t.qos.clone());
            if !opener {
                tunnel::joiner(conn, client, sock, &t.peer, qos, &t.far, &t.rekey).await;
                return;
            }
            match keys::KeyStream::open(client, &t.peer, qos, None).await {
                Ok(stream) => {
                    report::tunnel_open(conn, &stream.ksid, true);
                    tunnel::opener(conn, stream, sock, &t.far, &t.rekey).await;
                }
                Err(e) => report::tunnel_closed(conn, "", true, &Stats::default(), Some(e)),
            }
        }
    })
    .await
}

/// What every tunnel of one process shares.
struct Tunnels {
    client: qkd_proto::keys::key_delivery_client::KeyDeliveryClient<tonic::transport::Channel>,
    qos: qkd_proto::keys::Qos,
    /// The peer qkd-link's SAE ID.
    peer: String,
    /// Where each tunnel leads: the peer qkd-link (`listen`) or the target service (`serve`).
    far: String,
    rekey: tunnel::Rekey,
}

async fn bind(addr: &str, flag: &str, role: &str) -> Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("{flag} {addr}: cannot bind"))?;
    report::listening(role, listener.local_addr()?);
    Ok(listener)
}

/// Accepts connections for ever, each handled in its own task under a connection number.
async fn accept_forever<F, Fut>(listener: TcpListener, handle: F) -> Result<()>
where
    F: Fn(u64, TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    for conn in 1.. {
        let (sock, from) = listener.accept().await.context("accepting")?;
        tracing::info!(conn, %from, "connection");
        let _ = sock.set_nodelay(true);
        tokio::spawn(handle(conn, sock));
    }
    Ok(())
}
