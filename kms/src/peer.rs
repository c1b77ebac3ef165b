//! The node-to-node gRPC service (`qkd.peer.v1.PeerKms`) over mutual TLS: a thin shell that
//! identifies the calling node from its certificate (its `urn:qkd:node:` URI SAN, nothing else)
//! and hands each call to the [`KeyManager`]. [`status_of`] is the one place where key-manager
//! errors become gRPC statuses. The port is capped in total and per node ([`PeerLimits`]).

pub(crate) mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use qkd_proto::peer as pb;
use qkd_proto::peer::peer_kms_client::PeerKmsClient;
use qkd_proto::peer::peer_kms_server::{PeerKms, PeerKmsServer};
use qkd_types::NodeId;
use std::sync::Arc;

use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status};

use crate::conn::{AcceptLimits, accept_capped};
use crate::manager::{KeyManager, PeerError};
use crate::tls::{LiveTls, node_id};

/// Errors setting up the peer channel. Caused by the operator (files, addresses).
#[derive(Debug, thiserror::Error)]
pub enum PeerSetupError {
    /// tonic refused the configuration.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The TLS material is unusable.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The configured server name is not a DNS name or IP address.
    #[error("invalid server name {0:?}")]
    ServerName(String),
}

/// The one mapping from key-manager errors to gRPC statuses.
pub fn status_of(e: &PeerError) -> Status {
    match e {
        PeerError::UnknownLink(_) => Status::not_found(e.to_string()),
        PeerError::Malformed(_) => Status::invalid_argument(e.to_string()),
        PeerError::Refused(_) => Status::permission_denied(e.to_string()),
        PeerError::Voided => Status::failed_precondition(e.to_string()),
        PeerError::Exhausted => Status::resource_exhausted(e.to_string()),
        // A device that cannot deliver the offered blocks: the allocator discards them.
        // A device that is down for now: the allocator keeps the blocks and offers them again.
        PeerError::Device(crate::manager::DeviceFault::Device(d))
            if matches!(d.link_state(), Some(qkd_hardware::LinkState::Down { .. })) =>
        {
            Status::unavailable(e.to_string())
        }
        // A device that cannot deliver the offered blocks (or delivered unusable ones): the
        // allocator discards them, and this end skips their sequence numbers.
        PeerError::Device(_) => Status::failed_precondition(e.to_string()),
        // A later hop failed: this relay is fine, the path is not.
        PeerError::Onward(_) => Status::aborted(e.to_string()),
        PeerError::Store(_) => Status::unavailable(e.to_string()),
        PeerError::LowSpace(_) => Status::resource_exhausted(e.to_string()),
    }
}

/// One neighbour as the key manager calls it: the five calls of `qkd.peer.v1.PeerKms`, each with
/// the time the caller allows. Over the network it is [`PeerKmsClient`] (mutual TLS, gRPC); the
/// deterministic network simulation plugs in its own, which delays, drops, duplicates and
/// partitions calls. Errors are gRPC statuses as [`status_of`] makes them at the callee.
#[tonic::async_trait]
pub trait PeerLink: std::fmt::Debug + Send + Sync {
    /// `OfferBlocks`.
    async fn offer_blocks(
        &self,
        req: pb::OfferBlocksRequest,
        timeout: Duration,
    ) -> Result<pb::OfferBlocksReply, Status>;
    /// `Advertise`.
    async fn advertise(
        &self,
        req: pb::AdvertiseRequest,
        timeout: Duration,
    ) -> Result<pb::AdvertiseReply, Status>;
    /// `RelayAllocate`.
    async fn relay_allocate(
        &self,
        req: pb::RelayAllocateRequest,
        timeout: Duration,
    ) -> Result<pb::RelayAllocateReply, Status>;
    /// `Relay`.
    async fn relay(
        &self,
        req: pb::RelayRequest,
        timeout: Duration,
    ) -> Result<pb::RelayReply, Status>;
    /// `Forward`.
    async fn forward(
        &self,
        req: pb::ForwardRequest,
        timeout: Duration,
    ) -> Result<pb::ForwardReply, Status>;
}

fn timed<T>(msg: T, timeout: Duration) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(timeout);
    r
}

#[tonic::async_trait]
impl PeerLink for PeerKmsClient<Channel> {
    async fn offer_blocks(
        &self,
        req: pb::OfferBlocksRequest,
        timeout: Duration,
    ) -> Result<pb::OfferBlocksReply, Status> {
        let mut c = self.clone();
        PeerKmsClient::offer_blocks(&mut c, timed(req, timeout))
            .await
            .map(Response::into_inner)
    }
    async fn advertise(
        &self,
        req: pb::AdvertiseRequest,
        timeout: Duration,
    ) -> Result<pb::AdvertiseReply, Status> {
        let mut c = self.clone();
        PeerKmsClient::advertise(&mut c, timed(req, timeout))
            .await
            .map(Response::into_inner)
    }
    async fn relay_allocate(
        &self,
        req: pb::RelayAllocateRequest,
        timeout: Duration,
    ) -> Result<pb::RelayAllocateReply, Status> {
        let mut c = self.clone();
        PeerKmsClient::relay_allocate(&mut c, timed(req, timeout))
            .await
            .map(Response::into_inner)
    }
    async fn relay(
        &self,
        req: pb::RelayRequest,
        timeout: Duration,
    ) -> Result<pb::RelayReply, Status> {
        let mut c = self.clone();
        PeerKmsClient::relay(&mut c, timed(req, timeout))
            .await
            .map(Response::into_inner)
    }
    async fn forward(
        &self,
        req: pb::ForwardRequest,
        timeout: Duration,
    ) -> Result<pb::ForwardReply, Status> {
        let mut c = self.clone();
        PeerKmsClient::forward(&mut c, timed(req, timeout))
            .await
            .map(Response::into_inner)
    }
}

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct PeerService {
    manager: KeyManager,
}

impl PeerService {
    /// Wraps the key manager.
    pub fn new(manager: KeyManager) -> Self {
        Self { manager }
    }
}

/// The calling node, from the client certificate the TLS layer verified.
fn caller<T>(req: &Request<T>) -> Result<NodeId, Status> {
    let certs = req
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    node_id(leaf)
        .map_err(|e| Status::unauthenticated(format!("client certificate names no node: {e}")))
}

#[tonic::async_trait]
impl PeerKms for PeerService {
    async fn offer_blocks(
        &self,
        req: Request<pb::OfferBlocksRequest>,
    ) -> Result<Response<pb::OfferBlocksReply>, Status> {
        let from = caller(&req)?;
        self.manager
            .on_offer(&from, req.into_inner())
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(pb::OfferBlocksReply {}))
    }

    async fn advertise(
        &self,
        req: Request<pb::AdvertiseRequest>,
    ) -> Result<Response<pb::AdvertiseReply>, Status> {
        let from = caller(&req)?;
        self.manager
            .on_advertise(&from, req.into_inner())
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(pb::AdvertiseReply {}))
    }

    async fn relay_allocate(
        &self,
        req: Request<pb::RelayAllocateRequest>,
    ) -> Result<Response<pb::RelayAllocateReply>, Status> {
        let from = caller(&req)?;
        self.manager
            .on_relay_allocate(&from, req.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| status_of(&e))
    }

    async fn relay(
        &self,
        req: Request<pb::RelayRequest>,
    ) -> Result<Response<pb::RelayReply>, Status> {
        let from = caller(&req)?;
        self.manager
            .on_relay(&from, req.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| status_of(&e))
    }

    async fn forward(
        &self,
        req: Request<pb::ForwardRequest>,
    ) -> Result<Response<pb::ForwardReply>, Status> {
        let from = caller(&req)?;
        self.manager
            .on_forward(&from, req.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| status_of(&e))
    }
}

/// Resource limits of the node-to-node port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerLimits {
    /// Most connections open at once, handshakes included; further clients wait in the listen
    /// backlog.
    pub max_connections: usize,
    /// Most connections one node may hold at once. A neighbour multiplexes every call over one
    /// HTTP/2 connection; a few more cover reconnects.
    pub max_connections_per_node: usize,
    /// Time a client has to complete the TLS handshake.
    pub handshake_timeout: Duration,
}

impl Default for PeerLimits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            max_connections_per_node: 8,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves the peer protocol on `listener` with mutual TLS 1.3 and the hybrid X25519MLKEM768 key
/// exchange (required: classical-only clients fail the handshake) until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: &Arc<LiveTls>,
    manager: KeyManager,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), PeerSetupError> {
    serve_with(listener, tls, manager, PeerLimits::default(), shutdown).await
}

/// [`serve`] with explicit limits. A connection whose certificate names no node (no
/// `urn:qkd:node:` URI SAN) is closed right after the handshake, as is one beyond its node's cap.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    tls: &Arc<LiveTls>,
    manager: KeyManager,
    limits: PeerLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), PeerSetupError> {
    let acceptor = TlsAcceptor::from(Arc::new(tls.peer_server()?));
    let accept_limits = AcceptLimits {
        max_connections: limits.max_connections,
        max_connections_per_client: limits.max_connections_per_node,
        handshake_timeout: limits.handshake_timeout,
    };
    let (incoming, accept) =
        accept_capped(listener, acceptor, accept_limits, "peer port", |stream| {
            let node = match stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
            {
                Some(leaf) => node_id(leaf),
                None => Err(crate::tls::IdentityError::NoCertificate),
            };
            node.map_err(|e| {
                tracing::info!(error = %e, "peer port: client certificate names no node; closed");
            })
            .ok()
        });
    let result = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .add_service(PeerKmsServer::new(PeerService::new(manager)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    accept.abort();
    result?;
    Ok(())
}

/// A lazily connecting client of a peer node at `addr`, whose certificate must be valid for
/// `server_name` and chain to our CA; mutual TLS 1.3 with X25519MLKEM768 only.
pub fn client(
    addr: SocketAddr,
    server_name: &str,
    tls: &Arc<LiveTls>,
) -> Result<Arc<dyn PeerLink>, PeerSetupError> {
    let connector = TlsConnector::from(Arc::new(tls.peer_client()?));
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|_| PeerSetupError::ServerName(server_name.to_string()))?;
    let connect = tower::service_fn(move |_: http::Uri| {
        let connector = connector.clone();
        let name = name.clone();
        async move {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .connect_with_connector_lazy(connect);
    Ok(Arc::new(PeerKmsClient::new(channel)))
}
