//! The ETSI load generator's connections: one keep-alive HTTP/1.1 connection over mutual TLS,
//! driven through hyper's client directly.
//!
//! The load generator shares the machine with the nodes it measures, so every cycle it spends is
//! taken from them. `reqwest` costs per request a URL parse (with IDNA), a connection-pool
//! checkout and its locks, header maps and redirect bookkeeping: 17 % of the generator's samples
//! were in their own code in a profile at 64 clients, and the generator takes about half the CPU
//! per key pair without them (39-56 µs against 81-92 µs, BENCHMARKS.md). Here a request is a
//! path, a `Host` header and one write on a connection the client owns. The nodes get the same
//! requests over the same TLS (the SAE's certificate, the demo CA, rustls on aws-lc-rs), one at a
//! time per connection, keep-alive, `TCP_NODELAY`. Only reqwest's `accept: */*` header and its
//! `http/1.1` ALPN offer are left out; the node requires neither.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;

use crate::etsi::Failure;

/// How long a request may wait for its whole answer.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// One client's connection to one node's ETSI port, presenting one SAE's certificate.
/// Reconnects when the node closed the connection (after an error answer with
/// `Connection: close`, or a restart).
pub(crate) struct H1 {
    connector: tokio_rustls::TlsConnector,
    addr: SocketAddr,
    host: http::HeaderValue,
    send: Option<SendRequest<Empty<Bytes>>>,
}

impl std::fmt::Debug for H1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1").field("addr", &self.addr).finish()
    }
}

impl H1 {
    /// A connection (made at the first request) to `addr` as `sae`, with the certificate and key
    /// `sae-<sae>.crt`/`.key` and the CA `ca.crt` of the demo network's `pki` directory.
    pub(crate) fn new(pki: &Path, sae: &str, addr: SocketAddr) -> Result<Self> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let files = qkd_kms::tls::TlsFiles {
            cert_chain: pki.join(format!("sae-{sae}.crt")),
            key: pki.join(format!("sae-{sae}.key")),
            ca: pki.join("ca.crt"),
        };
        let config = qkd_kms::tls::client_config(&files)
            .with_context(|| format!("TLS client configuration of {sae}"))?;
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            addr,
            host: http::HeaderValue::from_str(&addr.to_string())?,
            send: None,
        })
    }

    async fn connect(&self) -> Result<SendRequest<Empty<Bytes>>, Failure> {
        let failed = |e: &dyn std::fmt::Display| Failure::Transport(format!("{}: {e}", self.addr));
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| failed(&e))?;
        tcp.set_nodelay(true).map_err(|e| failed(&e))?;
        let name = rustls_pki_types::ServerName::IpAddress(self.addr.ip().into());
        let tls = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| failed(&e))?;
        let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| failed(&e))?;
        // Ends when the connection closes; its errors surface at the next request.
        tokio::spawn(conn);
        Ok(send)
    }

    /// GETs `path` (origin form, with its query) and returns the body of a 200; any other answer
    /// is a [`Failure`] (503 as `Unavailable`), as [`crate::etsi`]'s reqwest requests are. A
    /// request unanswered after [`REQUEST_TIMEOUT`] fails in transport (reqwest's timeout here
    /// was the same), so a node that stops answering ends the run instead of hanging it.
    pub(crate) async fn get(&mut self, path: &str) -> Result<Bytes, Failure> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(path)).await {
            Ok(r) => r,
            Err(_) => {
                self.send = None;
                Err(Failure::Transport(format!(
                    "https://{}{path}: no answer in {} s",
                    self.addr,
                    REQUEST_TIMEOUT.as_secs()
                )))
            }
        }
    }

    async fn exchange(&mut self, path: &str) -> Result<Bytes, Failure> {
        let mut send = match self.send.take() {
            Some(mut s) if !s.is_closed() => match s.ready().await {
                Ok(()) => s,
                // The node closed it after the last answer (`Connection: close`), and hyper
                // saw it only now: nothing was sent, so connect again.
                Err(_) => self.connect().await?,
            },
            _ => self.connect().await?,
        };
        let at = || format!("https://{}{path}", self.addr);
        send.ready()
            .await
            .map_err(|e| Failure::Transport(format!("{}: {e}", at())))?;
        let req = http::Request::get(path)
            .header(http::header::HOST, self.host.clone())
            .body(Empty::new())
            .map_err(|e| Failure::Status(format!("{}: {e}", at())))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| Failure::Transport(format!("{}: {e}", at())))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| Failure::Transport(format!("{}: {e}", at())))?
            .to_bytes();
        // Kept for the next request unless this one failed in transport (returned above).
        self.send = Some(send);
        if status != http::StatusCode::OK {
            let msg = format!("{}: {status} {}", at(), String::from_utf8_lossy(&body));
            return Err(if status == http::StatusCode::SERVICE_UNAVAILABLE {
                Failure::Unavailable(msg)
            } else {
                Failure::Status(msg)
            });
        }
        Ok(body)
    }
}
