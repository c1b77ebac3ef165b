//! SIEM forwarding: every audit record as an RFC 5424 syslog message whose MSG is the record's
//! JSON line, sent over TLS to a configured collector with RFC 5425 octet-counting framing
//! (`MSG-LEN SP SYSLOG-MSG`).
//!
//! The forwarder never blocks its caller: [`Forwarder::line`] formats the message and puts it on
//! a bounded queue; a full queue drops the message and counts it (the audit file still holds the
//! record, and the `audit_dropped` alarm fires). One task owns the connection: it connects,
//! sends the queue in order, removes a message only once it was written, and on any error closes
//! the connection and reconnects with exponential backoff (0.25 s doubling to 30 s), so a
//! collector that is away receives what queued meanwhile when it is back, up to the queue's
//! size. A collector that closes the connection is noticed while idle too.
//!
//! The TLS credentials (the collector's CA, the node's client certificate and key) are read from
//! their files at start and again at a certificate rotation ([`Forwarder::reload_tls`],
//! [`Forwarder::install_tls`]): an install closes the connection between two messages and
//! reconnects at once with the new credentials, losing nothing queued.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qkd_kms::tls::{self, Credentials, LiveTls, TlsError, TlsFiles};
use rustls::RootCertStore;

use qkd_types::UnixMillis;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, watch};

use crate::audit::{AuditEvent, LineSink, rfc3339};

/// Shortest wait before reconnecting.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// Longest wait before reconnecting.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Time allowed to connect and finish the TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to forward.
#[derive(Debug, Clone)]
pub struct SiemTarget {
    /// Collector address (`host:port`, resolved at every connection attempt).
    pub address: String,
    /// Name the collector's certificate must be valid for.
    pub server_name: rustls::pki_types::ServerName<'static>,
    /// The TLS files: the collector's CA, and a client certificate if configured.
    pub files: SiemFiles,
    /// Messages held at most while the collector is away.
    pub queue: usize,
    /// Syslog facility (RFC 5424 §6.2.1; 13 = log audit).
    pub facility: u8,
    /// HOSTNAME of the messages (the node ID).
    pub hostname: String,
    /// APP-NAME of the messages.
    pub app_name: String,
}

/// The TLS files of the connection to the collector.
#[derive(Debug, Clone)]
pub struct SiemFiles {
    /// CA certificates the collector's certificate must chain to.
    pub ca: PathBuf,
    /// The node's client certificate chain and its key, if the collector asks for one.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// The TLS client credentials for the collector, loaded and checked.
#[derive(Debug)]
pub struct SiemTls {
    /// The client configuration (a fresh session store: nothing is resumed across a rotation).
    config: Arc<rustls::ClientConfig>,
    /// The client certificate, key and CA, if a client certificate is configured.
    client: Option<Arc<Credentials>>,
    /// The collector's CA certificates.
    roots: Arc<RootCertStore>,
}

/// The TLS files `[audit.siem]` names.
pub fn files(s: &crate::config::SiemSection) -> SiemFiles {
    SiemFiles {
        ca: s.ca.clone(),
        client: s.client_cert.clone().zip(s.client_key.clone()),
    }
}

impl SiemFiles {
    /// Reads and checks the files: PEM well-formed, the key matches the certificate, the CA
    /// usable. Every error names its file.
    pub fn load(&self) -> Result<SiemTls, TlsError> {
        match &self.client {
            Some((cert, key)) => {
                let live = LiveTls::load(&TlsFiles {
                    cert_chain: cert.clone(),
                    key: key.clone(),
                    ca: self.ca.clone(),
                })?;
                let creds = live.current();
                Ok(SiemTls {
                    config: Arc::new(live.client()?),
                    roots: creds.roots().clone(),
                    client: Some(creds),
                })
            }
            None => {
                let roots = Arc::new(tls::load_roots(&self.ca)?);
                let config = rustls::ClientConfig::builder_with_provider(tls::provider())
                    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                    .map_err(TlsError::Provider)?
                    .with_root_certificates(roots.clone())
                    .with_no_client_auth();
                Ok(SiemTls {
                    config: Arc::new(config),
                    client: None,
                    roots,
                })
            }
        }
    }
}

impl SiemTls {
    /// The client certificate, key and CA files' contents, if a client certificate is
    /// configured.
    pub fn client(&self) -> Option<&Credentials> {
        self.client.as_deref()
    }

    /// The collector's CA certificates.
    pub fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }
}

/// Counts of the forwarder (for metrics and the `audit_dropped` alarm).
#[derive(Debug, Default)]
pub struct SiemStats {
    /// Messages written to the collector.
    pub sent: AtomicU64,
    /// Messages dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Connections made.
    pub connections: AtomicU64,
    /// Whether a connection is up now.
    pub connected: AtomicBool,
}

/// The forwarder: a bounded queue and the task that drains it.
#[derive(Debug)]
pub struct Forwarder {
    target: SiemTarget,
    /// The credentials in use; a rotation sends new ones, and the task reconnects.
    tls: watch::Sender<Arc<SiemTls>>,
    queue: Mutex<VecDeque<Vec<u8>>>,
    wake: Notify,
    stats: SiemStats,
}

impl Forwarder {
    /// A forwarder to `target`, its TLS files read and checked; run [`Forwarder::run`] to send.
    pub fn new(target: SiemTarget) -> Result<Arc<Self>, TlsError> {
        let tls = watch::Sender::new(Arc::new(target.files.load()?));
        Ok(Arc::new(Self {
            target,
            tls,
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            stats: SiemStats::default(),
        }))
    }

    /// The TLS files.
    pub fn files(&self) -> &SiemFiles {
        &self.target.files
    }

    /// The credentials in use.
    pub fn current_tls(&self) -> Arc<SiemTls> {
        self.tls.borrow().clone()
    }

    /// Re-reads and checks the TLS files ([`SiemFiles::load`]); nothing changes yet.
    pub fn reload_tls(&self) -> Result<SiemTls, TlsError> {
        self.target.files.load()
    }

    /// Uses `next` from now on: the connection closes after the message being written, and
    /// the task reconnects at once with the new credentials.
    pub fn install_tls(&self, next: SiemTls) {
        self.tls.send_replace(Arc::new(next));
    }

    /// The counts.
    pub fn stats(&self) -> &SiemStats {
        &self.stats
    }

    /// Queues one framed message; drops and counts it if the queue is full. Never blocks.
    pub fn push(&self, framed: Vec<u8>) {
        {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.len() >= self.target.queue {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            q.push_back(framed);
        }
        self.wake.notify_one();
    }

    /// Messages waiting.
    pub fn queued(&self) -> usize {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Sends until `stop` turns true and then, for at most `drain` longer, until the queue is
    /// empty; reconnects with backoff on every failure.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>, drain: Duration) {
        let mut backoff = BACKOFF_MIN;
        let mut failing = false;
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            if *stop.borrow() {
                let d = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + drain);
                if self.queued() == 0 || tokio::time::Instant::now() >= d {
                    return;
                }
            }
            let mut rotated = self.tls.subscribe();
            let tls = rotated.borrow_and_update().config.clone();
            match self.connect(tls).await {
                Ok(stream) => {
                    self.stats.connections.fetch_add(1, Ordering::Relaxed);
                    self.stats.connected.store(true, Ordering::Relaxed);
                    if failing {
                        tracing::info!(collector = %self.target.address, "SIEM forwarding resumed");
                    }
                    backoff = BACKOFF_MIN;
                    let r = self.pump(stream, &mut stop, &mut rotated).await;
                    self.stats.connected.store(false, Ordering::Relaxed);
                    match r {
                        Ok(Ended::Stopped) => return,
                        Ok(Ended::Rotated) => {
                            tracing::info!(collector = %self.target.address, "SIEM credentials rotated; reconnecting with them");
                            failing = false;
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(collector = %self.target.address, error = %e, "SIEM connection lost; reconnecting");
                            failing = true;
                        }
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(collector = %self.target.address, error = %e, "cannot reach the SIEM collector; audit records queue until it answers");
                        failing = true;
                    } else {
                        tracing::debug!(collector = %self.target.address, error = %e, "SIEM collector still unreachable");
                    }
                }
            }
            if *stop.borrow() && deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn connect(
        &self,
        tls: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let t = &self.target;
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(&t.address).await?;
            let _ = tcp.set_nodelay(true);
            tokio_rustls::TlsConnector::from(tls)
                .connect(t.server_name.clone(), tcp)
                .await
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
    }

    /// Writes the queue in order; returns once stopped with nothing left to send, or once the
    /// credentials were rotated (between two messages).
    async fn pump(
        &self,
        mut stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        stop: &mut watch::Receiver<bool>,
        rotated: &mut watch::Receiver<Arc<SiemTls>>,
    ) -> std::io::Result<Ended> {
        let mut scratch = [0u8; 512];
        loop {
            if rotated.has_changed().unwrap_or(false) {
                let _ = stream.shutdown().await;
                return Ok(Ended::Rotated);
            }
            let next = self
                .queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .front()
                .cloned();
            match next {
                Some(frame) => {
                    stream.write_all(&frame).await?;
                    stream.flush().await?;
                    // This task is the only consumer: the front is still the frame just sent.
                    self.queue
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .pop_front();
                    self.stats.sent.fetch_add(1, Ordering::Relaxed);
                }
                None if *stop.borrow() => {
                    let _ = stream.shutdown().await;
                    return Ok(Ended::Stopped);
                }
                None => {
                    tokio::select! {
                        () = self.wake.notified() => {}
                        _ = stop.changed() => {}
                        // (`changed` marks the new credentials seen: act on them here.)
                        _ = rotated.changed() => {
                            let _ = stream.shutdown().await;
                            return Ok(Ended::Rotated);
                        }
                        r = stream.read(&mut scratch) => match r {
                            // A collector sends nothing; end of stream or an error means it left.
                            Ok(0) => return Err(std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                "the collector closed the connection",
                            )),
                            Ok(_) => {}
                            Err(e) => return Err(e),
                        },
                    }
                }
            }
        }
    }
}

/// Why a connection's pump ended without an error.
enum Ended {
    /// Stopped, the queue sent.
    Stopped,
    /// The credentials were rotated: reconnect with them.
    Rotated,
}

impl LineSink for Forwarder {
    fn line(&self, line: &str, event: &AuditEvent, time: UnixMillis) {
        let t = &self.target;
        let msg = syslog_message(
            t.facility,
            event.syslog_severity(),
            time,
            &t.hostname,
            &t.app_name,
            std::process::id(),
            event.name(),
            line,
        );
        self.push(frame(msg.as_bytes()));
    }
}

/// An RFC 5424 message: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG`, no structured
/// data, the JSON record as MSG (MSG-ANY: no BOM, so collectors parse the JSON as it is). Header
/// fields are cut to their RFC lengths and anything but printable US-ASCII becomes `_`.
#[allow(clippy::too_many_arguments)]
pub fn syslog_message(
    facility: u8,
    severity: u8,
    time: UnixMillis,
    hostname: &str,
    app_name: &str,
    procid: u32,
    msgid: &str,
    msg: &str,
) -> String {
    let pri = u16::from(facility.min(23)) * 8 + u16::from(severity.min(7));
    format!(
        "<{pri}>1 {} {} {} {procid} {} - {msg}",
        rfc3339(time),
        header_field(hostname, 255),
        header_field(app_name, 48),
        header_field(msgid, 32),
    )
}

/// RFC 5425 octet counting: the message's length in octets, a space, the message.
pub fn frame(msg: &[u8]) -> Vec<u8> {
    let mut out = format!("{} ", msg.len()).into_bytes();
    out.extend_from_slice(msg);
    out
}

fn header_field(s: &str, max: usize) -> String {
    let v: String = s
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .take(max)
        .collect();
    if v.is_empty() { "-".into() } else { v }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::alarms::{Alarm, AlarmKind, Severity};
    use tokio::io::AsyncBufReadExt;

    #[test]
    fn messages_follow_rfc5424_and_frames_count_octets() {
        let m = syslog_message(
            13,
            2,
            0,
            "node A",
            "qkd-node",
            42,
            "alarm_raised",
            "{\"a\":1}",
        );
        assert_eq!(
            m,
            "<106>1 1970-01-01T00:00:00.000Z node_A qkd-node 42 alarm_raised - {\"a\":1}"
        );
        let f = frame("é1".as_bytes());
        assert_eq!(f, b"3 \xc3\xa91");
        assert_eq!(header_field("", 10), "-");
        assert_eq!(header_field(&"x".repeat(40), 32).len(), 32);
    }

    /// A test collector: a real TLS listener on 127.0.0.1 that parses octet-counted frames.
    struct Collector {
        addr: std::net::SocketAddr,
        frames: tokio::sync::mpsc::UnboundedReceiver<String>,
        /// Tells the current connection to close.
        kick: Arc<Notify>,
        ca: tempfile::NamedTempFile,
    }

    async fn collector() -> Collector {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["siem.test".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let mut ca_file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut ca_file, ca.pem().as_bytes()).unwrap();
        let server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, frames) = tokio::sync::mpsc::unbounded_channel();
        let kick = Arc::new(Notify::new());
        let k = kick.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let Ok(tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut r = tokio::io::BufReader::new(tls);
                loop {
                    // MSG-LEN SP SYSLOG-MSG, read exactly as RFC 5425 §4.3 frames it.
                    let mut len = Vec::new();
                    let read = tokio::select! {
                        r = r.read_until(b' ', &mut len) => r,
                        () = k.notified() => break,
                    };
                    if read.unwrap_or(0) == 0 {
                        break;
                    }
                    let n: usize = std::str::from_utf8(&len[..len.len() - 1])
                        .unwrap()
                        .parse()
                        .unwrap();
                    let mut msg = vec![0; n];
                    r.read_exact(&mut msg).await.unwrap();
                    tx.send(String::from_utf8(msg).unwrap()).unwrap();
                }
            }
        });
        Collector {
            addr,
            frames,
            kick,
            ca: ca_file,
        }
    }

    fn target(c: &Collector, queue: usize) -> SiemTarget {
        SiemTarget {
            address: c.addr.to_string(),
            server_name: rustls::pki_types::ServerName::try_from("siem.test").unwrap(),
            files: SiemFiles {
                ca: c.ca.path().to_path_buf(),
                client: None,
            },
            queue,
            facility: 13,
            hostname: "A".into(),
            app_name: "qkd-node".into(),
        }
    }

    fn raised(n: usize) -> AuditEvent {
        AuditEvent::AlarmRaised {
            alarm: Alarm {
                kind: AlarmKind::PoolLow,
                subject: format!("S{n}"),
                severity: Severity::Major,
                cause: format!("pool {n} low"),
                raised_at: 0,
            },
        }
    }

    async fn next(c: &mut Collector) -> String {
        tokio::time::timeout(Duration::from_secs(30), c.frames.recv())
            .await
            .expect("the collector received a message")
            .unwrap()
    }

    #[tokio::test]
    async fn records_reach_a_tls_collector_in_order_across_reconnects() {
        let mut c = collector().await;
        let fwd = Forwarder::new(target(&c, 100)).unwrap();
        let (stop_tx, stop) = watch::channel(false);
        let task = tokio::spawn(fwd.clone().run(stop, Duration::from_secs(5)));
        let mut head = crate::audit::ChainHead::genesis();
        let node = qkd_types::NodeId::parse("A").unwrap();
        let mut lines = Vec::new();
        for i in 0..3 {
            let e = raised(i);
            let line = head.append(&node, 1_000, &e);
            fwd.line(&line, &e, 1_000);
            lines.push(line);
        }
        for line in &lines {
            let m = next(&mut c).await;
            // <PRI> = 13 * 8 + 3 (major -> error).
            assert!(
                m.starts_with("<107>1 1970-01-01T00:00:01.000Z A qkd-node "),
                "{m}"
            );
            let (header, json) = m.split_once(" - ").unwrap();
            assert!(header.ends_with(" alarm_raised"), "{header}");
            assert_eq!(json, line);
            let v: serde_json::Value = serde_json::from_str(json).unwrap();
            assert_eq!(v["event"], "alarm_raised");
        }
        // The collector drops the connection: the forwarder reconnects and goes on.
        c.kick.notify_one();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while fwd.stats().connections.load(Ordering::Relaxed) < 2 {
            let e = raised(99);
            fwd.line("{\"probe\":1}", &e, 2_000);
            assert!(tokio::time::Instant::now() < deadline, "no reconnection");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let e = raised(7);
        fwd.line("{\"after\":\"reconnect\"}", &e, 3_000);
        loop {
            let m = next(&mut c).await;
            if m.ends_with("{\"after\":\"reconnect\"}") {
                break;
            }
        }
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }

    /// An install of new credentials closes the idle connection and reconnects at once (no
    /// backoff), and what is queued meanwhile arrives in order.
    #[tokio::test]
    async fn an_install_reconnects_at_once_and_loses_nothing() {
        let mut c = collector().await;
        let fwd = Forwarder::new(target(&c, 100)).unwrap();
        let (stop_tx, stop) = watch::channel(false);
        let task = tokio::spawn(fwd.clone().run(stop, Duration::from_secs(5)));
        let e = raised(1);
        fwd.line("{\"n\":1}", &e, 1_000);
        assert!(next(&mut c).await.ends_with("{\"n\":1}"));
        fwd.install_tls(fwd.reload_tls().unwrap());
        fwd.line("{\"n\":2}", &e, 1_000);
        fwd.line("{\"n\":3}", &e, 1_000);
        assert!(next(&mut c).await.ends_with("{\"n\":2}"));
        assert!(next(&mut c).await.ends_with("{\"n\":3}"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while fwd.stats().connections.load(Ordering::Relaxed) < 2 {
            assert!(tokio::time::Instant::now() < deadline, "no reconnection");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_blocking() {
        // Nobody listens at this address: everything queues, the rest is dropped at once.
        let c = collector().await;
        let mut t = target(&c, 5);
        let unused = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        t.address = unused.local_addr().unwrap().to_string();
        drop(unused);
        let fwd = Forwarder::new(t).unwrap();
        let (stop_tx, stop) = watch::channel(false);
        let task = tokio::spawn(fwd.clone().run(stop, Duration::from_millis(100)));
        for i in 0..1000 {
            let e = raised(i);
            fwd.line("{}", &e, 0);
        }
        assert_eq!(fwd.queued(), 5);
        assert_eq!(fwd.stats().dropped.load(Ordering::Relaxed), 995);
        assert_eq!(fwd.stats().sent.load(Ordering::Relaxed), 0);
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .unwrap()
            .unwrap();
    }
}
