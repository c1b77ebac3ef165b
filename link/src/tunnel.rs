//! The tunnel shell: one tunnel connection per local connection, one key stream per tunnel.
//!
//! The side that dials (`listen`, site A) opens a key stream at its node and sends the stream's
//! ID in its hello; the side that accepts (`serve`, site B) joins it at its node and answers
//! whether it could. Both then seal epoch 0 with the stream's key of index 0. The opener alone
//! decides when to rekey (every `interval` or `bytes`, counted in both directions): it announces
//! the next index with `Rekey`, seals with the new keys from then on, and the joiner, once it
//! has the key of that index, answers `RekeyAck` and does the same. An index is never used twice
//! (each announced index must exceed the one in force), and a rekey the joiner cannot complete
//! (key not there within the key timeout, index mismatch) or does not acknowledge in time closes
//! the tunnel at both ends with the cause in the report. So does any frame that fails
//! authentication.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use qkd_proto::keys::Qos;
use qkd_proto::keys::key_delivery_client::KeyDeliveryClient;
use qkd_types::Secret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::frame::{self, EpochKeys, HEADER_LEN, HELLO_LEN, MAX_BODY, Message, Opener, Sealer};
use crate::keys::{self, KeyStream, Prefetch};
use crate::report;

/// Expired indices the opener skips in a row before it gives up.
pub const SKIPS: u64 = 16;
/// How long a peer may take to send its hello.
pub(crate) const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the opener checks whether a rekey is due.
const TICK: Duration = Duration::from_millis(50);

/// When to rekey and how long a key may take.
#[derive(Debug, Clone)]
pub struct Rekey {
    /// Rekey after this much time in one epoch (None: never by time).
    pub interval: Option<Duration>,
    /// Rekey after this many application bytes, both directions together (None: never by
    /// volume).
    pub bytes: Option<u64>,
    /// How long a key of the stream may take to come from this end's node; the opener waits
    /// twice this for the joiner's acknowledgement.
    pub key_timeout: Duration,
}

/// What one tunnel did, reported when it closes.
#[derive(Debug, Default)]
pub struct Stats {
    /// The epochs (stream indices) whose keys sealed or opened data or `End` at this end. In a
    /// tunnel that closed cleanly every such frame one end sealed the other opened, so both ends
    /// report the same set. (Control frames are left out: a rekey announced after this end's
    /// `End` may meet a peer that has already finished.)
    pub epochs: Mutex<std::collections::BTreeSet<u64>>,
    /// Application bytes sent into the tunnel.
    pub sent: std::sync::atomic::AtomicU64,
    /// Application bytes received from the tunnel.
    pub received: std::sync::atomic::AtomicU64,
}

impl Stats {
    fn used(&self, epoch: u64) {
        if let Ok(mut e) = self.epochs.lock() {
            e.insert(epoch);
        }
    }
}

/// The opener's side of one tunnel: `local` is a client of the tunnel at this site, `remote` the
/// peer `qkd-link serve`.
pub async fn opener(conn: u64, stream: KeyStream, local: TcpStream, remote: &str, rekey: &Rekey) {
    let stats = Arc::new(Stats::default());
    let r = async {
        let mut tunnel = TcpStream::connect(remote)
            .await
            .with_context(|| format!("connecting to the peer qkd-link at {remote}"))?;
        tunnel.set_nodelay(true)?;
        let k0 = greet(&mut tunnel, &stream, rekey.key_timeout).await?;
        session(&stream, k0, tunnel, local, rekey, &stats).await
    }
    .await;
    stream.close().await;
    report::tunnel_closed(conn, &stream.ksid, true, &stats, r.err());
}

/// The joiner's side of one tunnel accepted from the peer: joins the stream the hello names and
/// forwards to `target`.
pub async fn joiner(
    conn: u64,
    client: KeyDeliveryClient<Channel>,
    mut tunnel: TcpStream,
    peer_sae: &str,
    qos: Qos,
    target: &str,
    rekey: &Rekey,
) {
    let stats = Arc::new(Stats::default());
    let mut ksid = String::new();
    let r = async {
        tunnel.set_nodelay(true)?;
        let connect = async {
            TcpStream::connect(target)
                .await
                .with_context(|| format!("connecting to the target service {target}"))
        };
        let (stream, k0, local) = answer(
            &mut tunnel,
            client,
            peer_sae,
            qos,
            rekey.key_timeout,
            &mut ksid,
            connect,
        )
        .await?;
        report::tunnel_open(conn, &stream.ksid, false);
        let r = session(&stream, k0, tunnel, local, rekey, &stats).await;
        stream.close().await;
        r
    }
    .await;
    report::tunnel_closed(conn, &ksid, false, &stats, r.err());
}

/// The opener's handshake on a fresh connection: the hello with the stream's ID, the joiner's
/// answer, and the key of index 0.
pub(crate) async fn greet(
    tunnel: &mut TcpStream,
    stream: &KeyStream,
    key_timeout: Duration,
) -> Result<Secret> {
    let first = Prefetch::start(stream, 0, 0);
    tunnel.write_all(&frame::hello(&stream.ksid)?).await?;
    read_reply(tunnel, key_timeout + HELLO_TIMEOUT).await?;
    Ok(first.take(Instant::now() + key_timeout).await?.1)
}

/// The joiner's handshake: reads the hello (its stream ID goes to `ksid`), joins the stream,
/// runs `prepare` (connecting to the target), fetches the key of index 0 and answers, with the
/// reason when any step failed.
pub(crate) async fn answer<T>(
    tunnel: &mut TcpStream,
    client: KeyDeliveryClient<Channel>,
    peer_sae: &str,
    qos: Qos,
    key_timeout: Duration,
    ksid: &mut String,
    prepare: impl std::future::Future<Output = Result<T>>,
) -> Result<(KeyStream, Secret, T)> {
    let mut h = [0u8; HELLO_LEN];
    tokio::time::timeout(HELLO_TIMEOUT, tunnel.read_exact(&mut h))
        .await
        .map_err(|_| anyhow!("no hello from the peer within {HELLO_TIMEOUT:?}"))?
        .context("reading the peer's hello")?;
    *ksid = frame::parse_hello(&h)?;
    let stream = match KeyStream::open(client, peer_sae, qos, Some(ksid)).await {
        Ok(s) => s,
        Err(e) => {
            let _ = write_reply(tunnel, Err(&format!("{e:#}"))).await;
            return Err(e);
        }
    };
    let ready = async {
        let t = prepare.await?;
        match tokio::time::timeout(key_timeout, stream.key(0)).await {
            Ok(k) => Ok((k?, t)),
            Err(_) => {
                bail!("key index 0 not available from this end's node within {key_timeout:?}")
            }
        }
    }
    .await;
    match ready {
        Ok((k0, t)) => {
            write_reply(tunnel, Ok(())).await?;
            Ok((stream, k0, t))
        }
        Err(e) => {
            let _ = write_reply(tunnel, Err(&format!("{e:#}"))).await;
            stream.close().await;
            Err(e)
        }
    }
}

/// What the receiving half tells the sending half.
enum Ctl {
    /// Application bytes received (the opener counts them towards a rekey).
    BytesIn(u64),
    /// The peer sent `End`; everything before it was written to the local side.
    PeerEnded,
    /// (joiner) The peer moved to this epoch; acknowledge it, then seal with this sealer.
    PeerRekeyed(u64, Sealer),
    /// (opener) The peer acknowledged this epoch.
    Acked(u64),
    /// The receiving half failed: the tunnel closes with this error.
    Failed(anyhow::Error),
}

async fn session(
    stream: &KeyStream,
    k0: Secret,
    tunnel: TcpStream,
    local: TcpStream,
    rekey: &Rekey,
    stats: &Arc<Stats>,
) -> Result<()> {
    let keys = EpochKeys::derive(&k0, &stream.ksid, 0, stream.master);
    drop(k0);
    let (tr, tw) = tunnel.into_split();
    let (lr, lw) = local.into_split();
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    let (pending_tx, pending_rx) = mpsc::unbounded_channel();
    let receiver = Receiver {
        stream: stream.clone(),
        opener: keys.opener,
        tunnel: tr,
        local: lw,
        ctl: ctl_tx.clone(),
        pending: pending_rx,
        key_timeout: rekey.key_timeout,
        stats: stats.clone(),
    };
    let down = tokio::spawn(async move {
        if let Err(e) = receiver.run().await {
            let _ = ctl_tx.send(Ctl::Failed(e));
        }
    });
    let sender = Sender {
        stream,
        sealer: keys.sealer,
        tunnel: tw,
        local: lr,
        ctl: ctl_rx,
        pending: pending_tx,
        rekey,
        stats,
    };
    let r = sender.run().await;
    down.abort();
    r
}

/// The sending half: local bytes into sealed frames; the opener's rekeys; the joiner's
/// acknowledgements.
struct Sender<'a> {
    stream: &'a KeyStream,
    sealer: Sealer,
    tunnel: OwnedWriteHalf,
    local: OwnedReadHalf,
    ctl: mpsc::UnboundedReceiver<Ctl>,
    pending: mpsc::UnboundedSender<Opener>,
    rekey: &'a Rekey,
    stats: &'a Arc<Stats>,
}

/// Where the sending half is.
#[derive(Debug, Default)]
struct Progress {
    /// The local side closed its write half and `End` was sent.
    local_done: bool,
    /// The peer's `End` arrived.
    peer_ended: bool,
    /// Application bytes, both directions, since the last rekey.
    since_bytes: u64,
    /// (opener) The epoch announced and not acknowledged yet, and when.
    pending: Option<(u64, Instant)>,
    /// (joiner) Application bytes sent in the current epoch.
    epoch_sent: u64,
    /// (joiner) Since when local data has waited for the opener's rekey.
    held: Option<Instant>,
}

impl Sender<'_> {
    async fn run(mut self) -> Result<()> {
        let master = self.stream.master;
        let mut buf = vec![0u8; MAX_BODY];
        let mut p = Progress::default();
        let mut since = Instant::now();
        let mut prefetch = master.then(|| Prefetch::start(self.stream, 1, SKIPS));
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let budget = self.rekey.bytes.unwrap_or(u64::MAX);
        loop {
            if p.local_done && p.peer_ended {
                self.tunnel.shutdown().await.ok();
                return Ok(());
            }
            // The opener sends no more than its byte budget in one epoch: while the previous
            // rekey is unacknowledged, local data waits. The joiner, which cannot rekey, sends
            // at most twice its budget in one epoch and then waits for the opener's rekey.
            let may_read = !p.local_done
                && if master {
                    !(p.pending.is_some() && p.since_bytes >= budget)
                } else {
                    p.epoch_sent < budget.saturating_mul(2)
                };
            if !master && !p.local_done && !may_read {
                let held = *p.held.get_or_insert_with(Instant::now);
                if held.elapsed() > 2 * self.rekey.key_timeout {
                    bail!(
                        "rekey failed: the peer did not rekey within {:?} of {} bytes sent in \
                         one epoch (is its --rekey-bytes set?)",
                        2 * self.rekey.key_timeout,
                        p.epoch_sent
                    );
                }
            }
            // Read no more than fits in the epoch, so that epochs end near the budget.
            let room = if master {
                budget.saturating_sub(p.since_bytes)
            } else {
                budget.saturating_mul(2).saturating_sub(p.epoch_sent)
            };
            let want = room.clamp(1, MAX_BODY as u64) as usize;
            tokio::select! {
                r = self.local.read(&mut buf[..want]), if may_read => {
                    let n = r.context("reading from the local connection")?;
                    if n == 0 {
                        self.send(&Message::End).await?;
                        p.local_done = true;
                    } else {
                        self.send(&Message::Data(buf[..n].to_vec())).await?;
                        self.stats.sent.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                        p.since_bytes += n as u64;
                        p.epoch_sent += n as u64;
                    }
                }
                c = self.ctl.recv() => self.handle(c, &mut p).await?,
                _ = tick.tick() => {}
            }
            if !master {
                continue;
            }
            // Take in what the receiving half said meanwhile (its acknowledgement, the peer's
            // end) before deciding on a rekey.
            while let Ok(c) = self.ctl.try_recv() {
                self.handle(Some(c), &mut p).await?;
            }
            if p.local_done && p.peer_ended {
                continue;
            }
            if let Some((j, at)) = p.pending {
                if at.elapsed() > 2 * self.rekey.key_timeout {
                    bail!(
                        "rekey failed: the peer did not acknowledge epoch {j} within {:?} \
                         (its node did not deliver key index {j}, or it is gone)",
                        2 * self.rekey.key_timeout
                    );
                }
                continue;
            }
            let due = p.since_bytes >= budget
                || self.rekey.interval.is_some_and(|t| since.elapsed() >= t);
            if !due {
                continue;
            }
            let ahead = prefetch.take().context("internal: no key fetched ahead")?;
            let (j, key) = ahead
                .take(Instant::now() + self.rekey.key_timeout)
                .await
                .context("rekey failed")?;
            let keys = EpochKeys::derive(&key, &self.stream.ksid, j, true);
            drop(key);
            // While the key was fetched, the tunnel may have ended: the peer's `End` arrived
            // after this end's, the peer closed, and the receiving half finished cleanly. The
            // rekey is then moot, not a failure.
            if self.pending.send(keys.opener).is_err() {
                if self.both_ended(&mut p).await? {
                    continue;
                }
                bail!("internal: the receiving half is gone");
            }
            if let Err(e) = self.send(&Message::Rekey(j)).await {
                if self.both_ended(&mut p).await? {
                    continue;
                }
                return Err(e);
            }
            self.sealer = keys.sealer;
            p.pending = Some((j, Instant::now()));
            tracing::debug!(epoch = j, "rekeyed");
            p.since_bytes = 0;
            since = Instant::now();
            prefetch = Some(Prefetch::start(self.stream, j + 1, SKIPS));
        }
    }

    /// Takes in everything the receiving half said so far; whether both ends have now ended.
    async fn both_ended(&mut self, p: &mut Progress) -> Result<bool> {
        while let Ok(c) = self.ctl.try_recv() {
            self.handle(Some(c), p).await?;
        }
        Ok(p.local_done && p.peer_ended)
    }

    /// Acts on what the receiving half said.
    async fn handle(&mut self, c: Option<Ctl>, p: &mut Progress) -> Result<()> {
        match c {
            None => bail!("internal: the receiving half ended without a word"),
            Some(Ctl::Failed(e)) => return Err(e),
            Some(Ctl::BytesIn(n)) => p.since_bytes += n,
            Some(Ctl::PeerEnded) => p.peer_ended = true,
            Some(Ctl::PeerRekeyed(j, sealer)) => {
                self.send(&Message::RekeyAck(j)).await?;
                self.sealer = sealer;
                p.epoch_sent = 0;
                p.held = None;
            }
            Some(Ctl::Acked(j)) => {
                if p.pending.map(|p| p.0) != Some(j) {
                    bail!(
                        "key index mismatch: the peer acknowledged epoch {j}, which is not the \
                         one announced"
                    );
                }
                p.pending = None;
            }
        }
        Ok(())
    }

    async fn send(&mut self, m: &Message) -> Result<()> {
        if matches!(m, Message::Data(_) | Message::End) {
            self.stats.used(self.sealer.epoch());
        }
        let f = self.sealer.seal(m)?;
        self.tunnel
            .write_all(&f)
            .await
            .context("writing to the tunnel (the peer closed it; see its report)")
    }
}

/// The receiving half: sealed frames into local bytes; the joiner's side of a rekey; the
/// opener's acknowledgements.
struct Receiver {
    stream: KeyStream,
    opener: Opener,
    tunnel: OwnedReadHalf,
    local: OwnedWriteHalf,
    ctl: mpsc::UnboundedSender<Ctl>,
    pending: mpsc::UnboundedReceiver<Opener>,
    key_timeout: Duration,
    stats: Arc<Stats>,
}

impl Receiver {
    async fn run(mut self) -> Result<()> {
        let master = self.stream.master;
        let mut prefetch = (!master).then(|| Prefetch::start(&self.stream, 1, 0));
        let mut ended = false;
        loop {
            let frame = match read_frame(&mut self.tunnel).await {
                Ok(f) => f,
                // After the peer's `End` no application data can come this way; a connection
                // reset now (the peer closed while this end's late rekey was on the wire)
                // loses nothing, and the sending half fails on its own if it still needs the
                // connection.
                Err(e) if ended => {
                    tracing::debug!("the tunnel failed after the peer's end: {e:#}");
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            let Some((h, body)) = frame else {
                if ended {
                    return Ok(());
                }
                bail!("the peer closed the tunnel without ending it (see its report)")
            };
            let m = self.opener.open(&h, body)?;
            if matches!(m, Message::Data(_) | Message::End) {
                self.stats.used(self.opener.epoch());
            }
            match m {
                Message::Data(b) => {
                    if ended {
                        bail!("protocol: data after the peer's end");
                    }
                    self.local
                        .write_all(&b)
                        .await
                        .context("writing to the local connection")?;
                    let n = b.len() as u64;
                    self.stats
                        .received
                        .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    self.tell(Ctl::BytesIn(n))?;
                }
                Message::End => {
                    self.local.shutdown().await.ok();
                    ended = true;
                    self.tell(Ctl::PeerEnded)?;
                }
                Message::Rekey(j) if !master => {
                    let now = self.opener.epoch();
                    if j <= now {
                        bail!(
                            "key index mismatch: the peer announced epoch {j} while epoch {now} \
                             is in force (indices must increase)"
                        );
                    }
                    let key =
                        keys::announced(&self.stream, prefetch.take(), j, self.key_timeout).await?;
                    let keys = EpochKeys::derive(&key, &self.stream.ksid, j, false);
                    drop(key);
                    self.opener = keys.opener;
                    self.tell(Ctl::PeerRekeyed(j, keys.sealer))?;
                    prefetch = Some(Prefetch::start(&self.stream, j + 1, 0));
                }
                Message::RekeyAck(j) if master => {
                    let next = match self.pending.try_recv() {
                        Ok(o) => o,
                        Err(_) => bail!(
                            "key index mismatch: the peer acknowledged epoch {j}, which was never \
                             announced"
                        ),
                    };
                    if next.epoch() != j {
                        bail!(
                            "key index mismatch: the peer acknowledged epoch {j}, epoch {} was \
                             announced",
                            next.epoch()
                        );
                    }
                    self.opener = next;
                    self.tell(Ctl::Acked(j))?;
                }
                m @ (Message::Rekey(_) | Message::RekeyAck(_)) => {
                    bail!("protocol: {m:?} from the wrong end of the stream")
                }
            }
        }
    }

    fn tell(&self, c: Ctl) -> Result<()> {
        self.ctl
            .send(c)
            .map_err(|_| anyhow!("internal: the sending half is gone"))
    }
}

/// The next frame's header and sealed part; `None` when the peer closed the connection at a
/// frame boundary.
pub(crate) async fn read_frame<R: AsyncReadExt + Unpin>(
    r: &mut R,
) -> Result<Option<([u8; HEADER_LEN], Vec<u8>)>> {
    let mut h = [0u8; HEADER_LEN];
    match r.read_exact(&mut h).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(anyhow!(e).context("reading from the tunnel")),
    }
    let (len, _) = frame::parse_header(&h)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)
        .await
        .context("reading from the tunnel: a frame cut short")?;
    Ok(Some((h, body)))
}

/// The joiner's answer to a hello: status 0 and nothing else, or status 1, a 16-bit length and
/// the reason as UTF-8 (not authenticated: for the opener's report only; the tunnel's security
/// rests on the frames).
pub(crate) async fn write_reply(
    tunnel: &mut TcpStream,
    r: Result<(), &str>,
) -> std::io::Result<()> {
    let mut out = Vec::new();
    match r {
        Ok(()) => out.push(0),
        Err(msg) => {
            let msg = &msg.as_bytes()[..msg.len().min(1024)];
            out.push(1);
            out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
            out.extend_from_slice(msg);
        }
    }
    tunnel.write_all(&out).await
}

pub(crate) async fn read_reply(tunnel: &mut TcpStream, within: Duration) -> Result<()> {
    let r = async {
        let status = tunnel.read_u8().await?;
        if status == 0 {
            return Ok(Ok(()));
        }
        let len = tunnel.read_u16().await? as usize;
        let mut msg = vec![0u8; len.min(1024)];
        tunnel.read_exact(&mut msg).await?;
        Ok::<_, std::io::Error>(Err(String::from_utf8_lossy(&msg).into_owned()))
    };
    match tokio::time::timeout(within, r).await {
        Err(_) => bail!("the peer qkd-link did not answer the hello within {within:?}"),
        Ok(Err(e)) => Err(anyhow!(e).context("the peer qkd-link closed the tunnel at its hello")),
        Ok(Ok(Err(msg))) => bail!("the peer qkd-link refused the tunnel: {msg}"),
        Ok(Ok(Ok(()))) => Ok(()),
    }
}
