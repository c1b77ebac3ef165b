//! WireGuard mode: every key of the stream, through its own HKDF label, becomes the preshared key
//! of one WireGuard peer, installed with `wg set <if> peer <pubkey> preshared-key /dev/stdin`
//! and the key in base64 on the command's stdin (never in a file, never in an argument), the
//! way post-quantum key daemons feed WireGuard.
//!
//! The two sites agree on the stream and on each index over a small control connection that
//! uses the tunnel's hello and frames (no data frames): the side that dials opens the stream and
//! announces each rekey, the side that listens joins and acknowledges. The joiner installs a key
//! once it has acknowledged its index, the opener once the acknowledgement arrived; so both
//! install the same keys in the same order. Any failure fails closed: a random preshared key
//! that no peer holds is installed (WireGuard then completes no further handshake with the peer)
//! and the process exits with the cause.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use qkd_proto::keys::Qos;
use qkd_proto::keys::key_delivery_client::KeyDeliveryClient;
use qkd_types::Secret;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tonic::transport::Channel;
use zeroize::Zeroizing;

use crate::frame::{self, EpochKeys, Message};
use crate::keys::{self, KeyStream, Prefetch};
use crate::report;
use crate::tunnel::{self, SKIPS};

/// The WireGuard peer whose preshared key this process keeps fresh.
#[derive(Debug, Clone)]
pub struct WgPeer {
    /// The `wg` program (found on PATH unless a path is given).
    pub command: String,
    /// The interface, e.g. `wg0`.
    pub interface: String,
    /// The peer's public key (base64, as `wg` prints it).
    pub peer: String,
}

impl WgPeer {
    /// Installs `psk` as the peer's preshared key.
    pub async fn install(&self, psk: &Secret) -> Result<()> {
        // The key leaves the process only as base64 on the child's stdin; the text is zeroized.
        let text = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(psk.expose()));
        let mut child = tokio::process::Command::new(&self.command)
            .args(["set", &self.interface, "peer", &self.peer])
            .args(["preshared-key", "/dev/stdin"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("running {} (--wg-command)", self.command))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(text.as_bytes()).await?;
            stdin.write_all(b"\n").await?;
        }
        let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
            .await
            .map_err(|_| {
                anyhow!(
                    "{} set {} did not finish in 10 s",
                    self.command,
                    self.interface
                )
            })??;
        if !out.status.success() {
            bail!(
                "{} set {} peer {} failed ({}): {}",
                self.command,
                self.interface,
                self.peer,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

/// Which end of the control connection this is.
#[derive(Debug, Clone)]
pub enum Role {
    /// Dial the peer's control address; open the stream and drive the rekeys.
    Connect(String),
    /// Accept the peer on this address; join its stream.
    Listen(String),
}

/// Keeps the peer's preshared key fresh until something fails; then installs a random key and
/// returns the cause.
pub async fn run(
    client: KeyDeliveryClient<Channel>,
    peer_sae: &str,
    qos: Qos,
    role: Role,
    wg: &WgPeer,
    interval: Duration,
    key_timeout: Duration,
) -> Result<()> {
    let e = match role {
        Role::Connect(addr) => {
            opener(client, peer_sae, qos, &addr, wg, interval, key_timeout).await
        }
        Role::Listen(addr) => joiner(client, peer_sae, qos, &addr, wg, interval, key_timeout).await,
    };
    let e = match e {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    // Fail closed: a key nobody else holds.
    let mut random = Secret::zeroed(32);
    let installed = match aws_lc_rs::rand::fill(random.expose_mut()) {
        Ok(()) => wg.install(&random).await,
        Err(_) => Err(anyhow!("no randomness")),
    };
    match installed {
        Ok(()) => Err(e.context("a random preshared key was installed (fail closed)")),
        Err(i) => Err(e.context(format!(
            "could not install a random preshared key either: {i:#}"
        ))),
    }
}

async fn opener(
    client: KeyDeliveryClient<Channel>,
    peer_sae: &str,
    qos: Qos,
    addr: &str,
    wg: &WgPeer,
    interval: Duration,
    key_timeout: Duration,
) -> Result<()> {
    let stream = KeyStream::open(client, peer_sae, qos, None).await?;
    report::tunnel_open(0, &stream.ksid, true);
    let r = async {
        let mut conn = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to the peer qkd-link at {addr}"))?;
        let k0 = tunnel::greet(&mut conn, &stream, key_timeout).await?;
        let mut keys = EpochKeys::derive(&k0, &stream.ksid, 0, true);
        wg.install(&frame::wireguard_psk(&k0, &stream.ksid, 0))
            .await?;
        drop(k0);
        report::psk_installed(&stream.ksid, 0);
        let mut prefetch = Prefetch::start(&stream, 1, SKIPS);
        loop {
            let mut probe = [0u8; 1];
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                r = conn.peek(&mut probe) => match r {
                    Ok(0) => bail!("the peer qkd-link closed the control connection (see its report)"),
                    Ok(_) => bail!("protocol: the peer sent a frame nobody asked for"),
                    Err(e) => return Err(anyhow!(e).context("the control connection failed")),
                },
            }
            let (j, key) = prefetch
                .take(Instant::now() + key_timeout)
                .await
                .context("rekey failed")?;
            let (next, psk) = epoch(key, &stream.ksid, j, true);
            send(&mut conn, &mut keys, &Message::Rekey(j)).await?;
            let ack = tokio::time::timeout(2 * key_timeout, tunnel::read_frame(&mut conn))
                .await
                .map_err(|_| {
                    anyhow!(
                        "rekey failed: the peer did not acknowledge index {j} within {:?}",
                        2 * key_timeout
                    )
                })??
                .ok_or_else(|| anyhow!("the peer qkd-link closed the control connection"))?;
            match keys.opener.open(&ack.0, ack.1)? {
                Message::RekeyAck(a) if a == j => {}
                m => bail!("key index mismatch: announced index {j}, the peer answered {m:?}"),
            }
            wg.install(&psk).await?;
            report::psk_installed(&stream.ksid, j);
            keys = next;
            prefetch = Prefetch::start(&stream, j + 1, SKIPS);
        }
    }
    .await;
    stream.close().await;
    r
}

async fn joiner(
    client: KeyDeliveryClient<Channel>,
    peer_sae: &str,
    qos: Qos,
    addr: &str,
    wg: &WgPeer,
    interval: Duration,
    key_timeout: Duration,
) -> Result<()> {
    // The opener announces a key every `interval` (both ends are given the same); silence for
    // twice that and its key's time means it is gone, even if no FIN said so.
    let silence = 2 * interval + 2 * key_timeout;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("--listen {addr}: cannot bind"))?;
    report::listening("wg", listener.local_addr()?);
    let (mut conn, from) = listener.accept().await?;
    tracing::info!(%from, "control connection");
    let mut ksid = String::new();
    let (stream, k0, ()) = tunnel::answer(
        &mut conn,
        client,
        peer_sae,
        qos,
        key_timeout,
        &mut ksid,
        async { Ok(()) },
    )
    .await?;
    report::tunnel_open(0, &stream.ksid, false);
    let r = async {
        let mut keys = EpochKeys::derive(&k0, &stream.ksid, 0, false);
        wg.install(&frame::wireguard_psk(&k0, &stream.ksid, 0))
            .await?;
        drop(k0);
        report::psk_installed(&stream.ksid, 0);
        let mut prefetch = Some(Prefetch::start(&stream, 1, 0));
        loop {
            let Some((h, body)) = tokio::time::timeout(silence, tunnel::read_frame(&mut conn))
                .await
                .map_err(|_| {
                    anyhow!("rekey failed: no key announced by the peer within {silence:?}")
                })??
            else {
                bail!("the peer qkd-link closed the control connection (see its report)");
            };
            let now = keys.opener.epoch();
            let j = match keys.opener.open(&h, body)? {
                Message::Rekey(j) if j > now => j,
                Message::Rekey(j) => bail!(
                    "key index mismatch: the peer announced index {j} while {now} is in force"
                ),
                m => bail!("protocol: {m:?} on the control connection"),
            };
            let key = keys::announced(&stream, prefetch.take(), j, key_timeout).await?;
            let (next, psk) = epoch(key, &stream.ksid, j, false);
            send(&mut conn, &mut keys, &Message::RekeyAck(j)).await?;
            wg.install(&psk).await?;
            report::psk_installed(&stream.ksid, j);
            keys = next;
            prefetch = Some(Prefetch::start(&stream, j + 1, 0));
        }
    }
    .await;
    stream.close().await;
    r
}

/// The control connection's keys and the preshared key of epoch `j`; the stream key is dropped.
fn epoch(key: Secret, ksid: &str, j: u64, master: bool) -> (EpochKeys, Secret) {
    let keys = EpochKeys::derive(&key, ksid, j, master);
    (keys, frame::wireguard_psk(&key, ksid, j))
}

/// Seals `m` in the current epoch and writes it to the control connection.
async fn send(conn: &mut TcpStream, keys: &mut EpochKeys, m: &Message) -> Result<()> {
    conn.write_all(&keys.sealer.seal(m)?)
        .await
        .context("writing to the control connection")
}
