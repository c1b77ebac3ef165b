//! The key stream this end follows: a gRPC client of its node's `qkd.keys.v1.KeyDelivery` port,
//! as an SAE (mutual TLS with the SAE's certificate), opening or joining one ETSI 004-style
//! stream and fetching its keys by index. Key bytes leave the response straight into a
//! [`Secret`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use qkd_proto::keys as pb;
use qkd_proto::keys::key_delivery_client::KeyDeliveryClient;
use qkd_types::Secret;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_types::StatusExt;
use zeroize::Zeroizing;

use crate::frame::STREAM_KEY_LEN;

/// How to reach this end's node, as its SAE.
#[derive(Debug, Clone)]
pub struct NodeAccess {
    /// The node's gRPC key delivery address (`host:port`).
    pub addr: String,
    /// TLS server name of the node (default: the host of `addr`).
    pub server_name: Option<String>,
    /// CA certificate (PEM) that verifies the node.
    pub ca: PathBuf,
    /// This SAE's certificate chain (PEM).
    pub cert: PathBuf,
    /// This SAE's private key (PEM).
    pub key: PathBuf,
}

/// A key of the stream could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The index expired (its TTL ran out, or its reservation was void) at this end's node.
    #[error("key index {index} expired at this end's node")]
    Expired {
        /// The index.
        index: u64,
    },
    /// The node refused the request for another reason.
    #[error("key index {index}: the node refused: {code:?}: {message}")]
    Refused {
        /// The index.
        index: u64,
        /// gRPC status code.
        code: Code,
        /// The node's message (never key bytes).
        message: String,
    },
}

/// Connects to the node's gRPC port with the SAE's certificate.
pub async fn connect(node: &NodeAccess) -> Result<KeyDeliveryClient<Channel>> {
    let read = |p: &PathBuf, what: &str| {
        std::fs::read(p).with_context(|| format!("{what} {}: cannot read", p.display()))
    };
    let ca = read(&node.ca, "--ca")?;
    let cert = read(&node.cert, "--cert")?;
    let key = Zeroizing::new(read(&node.key, "--key")?);
    let host = match &node.server_name {
        Some(n) => n.clone(),
        None => node
            .addr
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_string())
            .with_context(|| format!("--node {}: not host:port", node.addr))?,
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key.as_slice()))
        .domain_name(host);
    let channel = Endpoint::from_shared(format!("https://{}", node.addr))
        .with_context(|| format!("--node {}: not an address", node.addr))?
        .tls_config(tls)
        .with_context(|| format!("TLS configuration for --node {}", node.addr))?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("connecting to the node's gRPC port {}", node.addr))?;
    Ok(KeyDeliveryClient::new(channel))
}

/// The QoS both ends ask for: 32-byte keys, `keys_per_s` of them reserved ahead, a
/// `wait` the node may hold a `GetStreamKey` for a key not reserved yet.
pub fn qos(keys_per_s: u32, wait: Duration) -> pb::Qos {
    pb::Qos {
        key_chunk_size: STREAM_KEY_LEN,
        max_bps: keys_per_s.saturating_mul(STREAM_KEY_LEN * 8),
        timeout: wait.as_millis().min(10_000) as u32,
        ..Default::default()
    }
}

/// One end of an open key stream.
#[derive(Debug, Clone)]
pub struct KeyStream {
    client: KeyDeliveryClient<Channel>,
    /// The key-stream ID (lowercase UUID).
    pub ksid: String,
    /// Whether this end opened the stream.
    pub master: bool,
}

impl KeyStream {
    /// Opens a new stream towards `peer` (this end becomes its master) or, with `join`, joins
    /// the stream the peer opened.
    pub async fn open(
        mut client: KeyDeliveryClient<Channel>,
        peer: &str,
        qos: pb::Qos,
        join: Option<&str>,
    ) -> Result<KeyStream> {
        let r = client
            .open_stream(pb::OpenStreamRequest {
                peer_sae_id: peer.into(),
                qos: Some(qos),
                key_stream_id: join.map(str::to_owned),
            })
            .await
            .map_err(|s| {
                anyhow::anyhow!(
                    "{} key stream with {peer}: {:?}: {}",
                    if join.is_some() { "joining" } else { "opening" },
                    s.code(),
                    s.message()
                )
            })?
            .into_inner();
        if join.is_some() == r.master {
            bail!(
                "the node answered OpenStream with the wrong role (master = {})",
                r.master
            );
        }
        Ok(KeyStream {
            client,
            ksid: r.key_stream_id,
            master: r.master,
        })
    }

    /// The key of `index`, waiting (as the node's retry hint says) while it is not reserved
    /// yet. Runs until it has the key or a definite refusal: callers bound it with a timeout.
    pub async fn key(&self, index: u64) -> Result<Secret, KeyError> {
        let mut client = self.client.clone();
        loop {
            let r = client
                .get_stream_key(pb::GetStreamKeyRequest {
                    key_stream_id: self.ksid.clone(),
                    index,
                })
                .await;
            match r {
                Ok(r) => {
                    let mut r = r.into_inner();
                    let Some(key) = r.key.as_mut() else {
                        return Err(KeyError::Refused {
                            index,
                            code: Code::Internal,
                            message: "an answer without a key".into(),
                        });
                    };
                    if r.index != index || key.key.len() != STREAM_KEY_LEN as usize {
                        return Err(KeyError::Refused {
                            index,
                            code: Code::Internal,
                            message: format!(
                                "an answer for index {} with {} key bytes",
                                r.index,
                                key.key.len()
                            ),
                        });
                    }
                    // The key moves out of the message (which zeroizes what is left on drop).
                    return Ok(Secret::new(Zeroizing::new(std::mem::take(&mut key.key))));
                }
                Err(s) if s.code() == Code::ResourceExhausted => {
                    let hint = s
                        .get_details_retry_info()
                        .and_then(|r| r.retry_delay)
                        .unwrap_or(Duration::from_secs(1));
                    // Poll more often than the hint: a rekey waits on this key.
                    tokio::time::sleep(hint.min(Duration::from_millis(200))).await;
                }
                Err(s) => {
                    let reason = s.get_details_error_info().map(|i| i.reason);
                    if s.code() == Code::NotFound && reason.as_deref() == Some("INDEX_EXPIRED") {
                        return Err(KeyError::Expired { index });
                    }
                    return Err(KeyError::Refused {
                        index,
                        code: s.code(),
                        message: s.message().to_string(),
                    });
                }
            }
        }
    }

    /// The first key from `index` on that has not expired, trying at most `skips` expired
    /// indices (only the opener chooses indices; the joiner fetches what it is told).
    pub async fn next_key(&self, index: u64, skips: u64) -> Result<(u64, Secret), KeyError> {
        let mut i = index;
        loop {
            match self.key(i).await {
                Ok(k) => return Ok((i, k)),
                Err(KeyError::Expired { .. }) if i < index + skips => i += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Closes this end of the stream (best effort: its keys expire anyway).
    pub async fn close(&self) {
        let mut client = self.client.clone();
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            client.close_stream(pb::CloseStreamRequest {
                key_stream_id: self.ksid.clone(),
            }),
        )
        .await;
        match r {
            Ok(Ok(_)) => {}
            Ok(Err(s)) => tracing::warn!(ksid = %self.ksid, "closing the key stream: {s:?}"),
            Err(_) => tracing::warn!(ksid = %self.ksid, "closing the key stream timed out"),
        }
    }
}

/// A key fetched ahead in the background: spawned when an epoch begins, awaited (with a
/// deadline) when the next one is due.
#[derive(Debug)]
pub struct Prefetch {
    /// The first index asked for.
    pub from: u64,
    handle: tokio::task::JoinHandle<Result<(u64, Secret), KeyError>>,
}

impl Prefetch {
    /// Starts fetching the first usable key from `from` (`skips` expired indices at most).
    pub fn start(stream: &KeyStream, from: u64, skips: u64) -> Prefetch {
        let s = stream.clone();
        Prefetch {
            from,
            handle: tokio::spawn(async move { s.next_key(from, skips).await }),
        }
    }

    /// The key, if it comes before `deadline`.
    pub async fn take(mut self, deadline: Instant) -> Result<(u64, Secret)> {
        match tokio::time::timeout_at(deadline, &mut self.handle).await {
            Ok(Ok(r)) => Ok(r?),
            Ok(Err(e)) => bail!("fetching key index {}: {e}", self.from),
            Err(_) => {
                self.handle.abort();
                bail!(
                    "key index {} not available from this end's node in time (key timeout)",
                    self.from
                )
            }
        }
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// The key of an index the opener announced: the one fetched ahead when it is that index, else
/// fetched now; within `within`.
pub async fn announced(
    stream: &KeyStream,
    ahead: Option<Prefetch>,
    index: u64,
    within: Duration,
) -> Result<Secret> {
    let deadline = Instant::now() + within;
    match ahead {
        Some(p) if p.from == index => Ok(p.take(deadline).await?.1),
        _ => match tokio::time::timeout_at(deadline, stream.key(index)).await {
            Ok(k) => Ok(k?),
            Err(_) => {
                bail!("key index {index} not available from this end's node within {within:?}")
            }
        },
    }
}
