//! Connection caps of the TLS front doors (the ETSI 014 and SKIP ports, served by
//! [`crate::api::https`], the gRPC key delivery port and the node-to-node port): how many connections one client identity may hold at once, and a
//! rate-limited warning whenever a cap refuses a connection; and, for the two gRPC ports, the one
//! accept loop that applies them ([`accept_capped`]).
//!
//! A total cap alone lets one authenticated client take every slot (connections that send headers
//! and then nothing); a per-identity cap leaves room for everyone else. The identity is what the
//! server read from the client certificate after the handshake, so the cap cannot be dodged by
//! opening connections from other addresses. Apart from [`accept_capped`], which accepts sockets and
//! leaves reading identities to its caller, this module holds counters only; it never reads a
//! certificate, or a clock other than for rate-limiting its own log lines.

use std::collections::HashMap;
use std::fmt::Display;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use qkd_types::{Clock, SaeId, SystemClock, UnixMillis};

pub use crate::instruments::Cap;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

/// Counts open connections per client identity and refuses those beyond a cap.
#[derive(Debug)]
pub struct ClientCaps<K: Eq + Hash> {
    /// Most connections per identity.
    per_client: usize,
    /// Open connections per identity; an identity with none has no entry (the map stays as
    /// small as the set of connected clients).
    open: Mutex<HashMap<K, usize>>,
    /// Refusals are logged, but not once per refused connection.
    log: CapLog,
    /// Connections admitted and not yet closed, for the `qkd_connections_open` gauge.
    open_gauge: metrics::Gauge,
}

impl<K: Eq + Hash + Clone + Display> ClientCaps<K> {
    /// Caps every identity at `per_client` connections; `port` names the port in log lines.
    pub fn new(per_client: usize, port: &'static str) -> Arc<Self> {
        Arc::new(Self {
            per_client,
            open: Mutex::new(HashMap::new()),
            log: CapLog::new(port, Cap::PerClient),
            open_gauge: crate::instruments::connections_open(port),
        })
    }

    /// A slot for one more connection of `client`, held until the returned guard drops; `None`
    /// (and a rate-limited warning) if `client` already holds its cap.
    pub fn try_acquire(self: &Arc<Self>, client: K) -> Option<ClientSlot<K>> {
        {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            let n = open.entry(client.clone()).or_insert(0);
            if *n >= self.per_client {
                drop(open);
                self.log.refused(|suppressed| {
                    tracing::warn!(
                        client = %client,
                        cap = self.per_client,
                        suppressed,
                        "{}: client {client} holds its cap of {} connections; refusing more \
                         ({suppressed} other refusals since the last warning)",
                        self.log.port,
                        self.per_client,
                    );
                });
                return None;
            }
            *n += 1;
        }
        self.open_gauge.increment(1.0);
        Some(ClientSlot {
            caps: self.clone(),
            client,
        })
    }

    /// Connections `client` holds now.
    pub fn open(&self, client: &K) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(client).copied().unwrap_or(0)
    }
}

/// One connection's place under its client's cap; dropping it frees the place.
#[derive(Debug)]
pub struct ClientSlot<K: Eq + Hash> {
    caps: Arc<ClientCaps<K>>,
    client: K,
}

impl<K: Eq + Hash> Drop for ClientSlot<K> {
    fn drop(&mut self) {
        self.caps.open_gauge.decrement(1.0);
        let mut open = self.caps.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.client);
            }
        }
    }
}

/// A warning at most every [`CapLog::INTERVAL`], counting the refusals in between (and every
/// refusal in the `qkd_connection_caps_hit_total` counter).
pub struct CapLog {
    port: &'static str,
    clock: Arc<dyn Clock>,
    last: Mutex<Option<UnixMillis>>,
    suppressed: AtomicU64,
    hits: metrics::Counter,
}

impl std::fmt::Debug for CapLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapLog")
            .field("port", &self.port)
            .field("suppressed", &self.suppressed)
            .finish_non_exhaustive()
    }
}

impl CapLog {
    /// Shortest time between two warnings of one cap.
    pub const INTERVAL: Duration = Duration::from_secs(10);

    /// A log for the cap `cap` of `port`, timed by the system clock.
    pub fn new(port: &'static str, cap: Cap) -> Self {
        Self::with_clock(port, cap, Arc::new(SystemClock))
    }

    /// A log for the cap `cap` of `port`, timed by `clock`.
    pub fn with_clock(port: &'static str, cap: Cap, clock: Arc<dyn Clock>) -> Self {
        Self {
            port,
            clock,
            last: Mutex::new(None),
            suppressed: AtomicU64::new(0),
            hits: crate::instruments::caps_hit(port, cap),
        }
    }

    /// Records a refusal; calls `warn` with the number of refusals not logged since the last
    /// warning if the interval has passed, else only counts.
    pub fn refused(&self, warn: impl FnOnce(u64)) {
        self.hits.increment(1);
        let now = self.clock.now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match *last {
            Some(t) if u128::from(now.saturating_sub(t)) < Self::INTERVAL.as_millis() => {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                *last = Some(now);
                warn(self.suppressed.swap(0, Ordering::Relaxed));
            }
        }
    }
}

/// Limits of a gRPC port served through [`accept_capped`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptLimits {
    /// Most connections open at once, handshakes included; further clients wait in the listen
    /// backlog.
    pub max_connections: usize,
    /// Most connections one client identity may hold at once.
    pub max_connections_per_client: usize,
    /// Time a client has to complete the TLS handshake.
    pub handshake_timeout: Duration,
}

/// Accepts TLS connections for a tonic server: each handshake in its own task (a slow or hostile
/// client cannot hold up the others), a total cap taken before accepting, then `identify` names
/// the client from its verified certificate (`None` closes the connection at once) and the
/// per-identity cap admits it or closes it. Admitted connections come out of the returned stream
/// for `Server::serve_with_incoming_shutdown`; the task runs until it is aborted.
pub fn accept_capped<K, F>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    limits: AcceptLimits,
    port: &'static str,
    identify: F,
) -> (
    ReceiverStream<Result<CappedStream<K>, std::io::Error>>,
    JoinHandle<()>,
)
where
    K: Eq + Hash + Clone + Display + Send + Sync + 'static,
    F: Fn(&TlsStream<TcpStream>) -> Option<K> + Send + Sync + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let caps = ClientCaps::<K>::new(limits.max_connections_per_client, port);
    let full = CapLog::new(port, Cap::Total);
    let identify = Arc::new(identify);
    let task = tokio::spawn(async move {
        loop {
            if slots.available_permits() == 0 {
                full.refused(|suppressed| {
                    tracing::warn!(
                        suppressed,
                        "{port}: every connection slot is in use; new clients wait in the \
                         listen backlog ({suppressed} more times since the last warning)"
                    );
                });
            }
            // The slot is taken before accepting and lives as long as the connection.
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let Ok((tcp, _)) = listener.accept().await else {
                // Per-connection failures (reset before accept, EMFILE): back off a little.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, caps, identify) =
                (acceptor.clone(), tx.clone(), caps.clone(), identify.clone());
            tokio::spawn(async move {
                let stream = match tokio::time::timeout(
                    limits.handshake_timeout,
                    acceptor.accept(tcp),
                )
                .await
                {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "{port}: TLS handshake failed");
                        crate::instruments::handshake_failed(port);
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("{port}: TLS handshake timed out");
                        crate::instruments::handshake_failed(port);
                        return;
                    }
                };
                let slot = identify(&stream).and_then(|client| caps.try_acquire(client));
                let Some(slot) = slot else {
                    // Refused: close at once (close_notify, briefly) so the slot frees.
                    let mut stream = stream;
                    let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
                    return;
                };
                let _ = tx
                    .send(Ok(CappedStream {
                        inner: stream,
                        _permit: permit,
                        _slot: slot,
                    }))
                    .await;
            });
        }
    });
    (ReceiverStream::new(rx), task)
}

/// A connection together with its places under the port's caps, freed when the server drops it.
#[derive(Debug)]
pub struct CappedStream<K: Eq + Hash> {
    inner: TlsStream<TcpStream>,
    _permit: OwnedSemaphorePermit,
    _slot: ClientSlot<K>,
}

impl<K: Eq + Hash + Send + Sync + 'static> Connected for CappedStream<K> {
    type ConnectInfo = <TlsStream<TcpStream> as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        // The TLS connection info, so that `Request::peer_certs` keeps working.
        self.inner.connect_info()
    }
}

impl<K: Eq + Hash + Unpin> AsyncRead for CappedStream<K> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<K: Eq + Hash + Unpin> AsyncWrite for CappedStream<K> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Whom an SAE-facing connection's certificate names, for the per-client cap of the ETSI 014,
/// SKIP and gRPC key delivery ports.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SaeClient {
    /// An SAE admitted here.
    Sae(SaeId),
    /// Anyone else (no SAE, or an SAE not attached here): all share one allowance, so that
    /// certificates for many unregistered names cannot take many.
    Unidentified,
}

impl SaeClient {
    /// The cap identity of a caller: its SAE if `admits` says it is attached here.
    pub fn of(caller: Option<&SaeId>, admits: impl FnOnce(&SaeId) -> bool) -> Self {
        match caller {
            Some(id) if admits(id) => SaeClient::Sae(id.clone()),
            _ => SaeClient::Unidentified,
        }
    }
}

impl Display for SaeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SaeClient::Sae(id) => write!(f, "SAE {id}"),
            SaeClient::Unidentified => f.write_str("(callers not admitted here)"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn caps_each_client_and_frees_on_drop() {
        let caps = ClientCaps::new(2, "test");
        let a1 = caps.try_acquire("a".to_string()).unwrap();
        let _a2 = caps.try_acquire("a".to_string()).unwrap();
        assert!(caps.try_acquire("a".to_string()).is_none());
        // Another client is not affected.
        let _b = caps.try_acquire("b".to_string()).unwrap();
        assert_eq!(caps.open(&"a".to_string()), 2);
        drop(a1);
        assert_eq!(caps.open(&"a".to_string()), 1);
        let _a3 = caps.try_acquire("a".to_string()).unwrap();
    }

    #[test]
    fn log_is_rate_limited() {
        let clock = qkd_types::ManualClock::new(1_000);
        let log = CapLog::with_clock("test", Cap::Total, Arc::new(clock.clone()));
        let mut warned = Vec::new();
        for _ in 0..5 {
            log.refused(|n| warned.push(n));
        }
        // One warning; the other four refusals are counted for the next one.
        assert_eq!(warned, vec![0]);
        assert_eq!(log.suppressed.load(Ordering::Relaxed), 4);
        clock.advance(CapLog::INTERVAL.as_millis() as u64 - 1);
        log.refused(|n| warned.push(n));
        assert_eq!(warned, vec![0], "within the interval");
        clock.advance(1);
        log.refused(|n| warned.push(n));
        assert_eq!(
            warned,
            vec![0, 5],
            "the next warning counts what it held back"
        );
    }
}
