//! The node-to-node gRPC service (`qkd.peer.v1.PeerKms`) over mutual TLS: a thin shell that
//! identifies the calling node from its certificate and hands each call to the
//! [`KeyManager`]. [`status_of`] is the one place where key-manager errors become gRPC statuses.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use qkd_proto::peer as pb;
use qkd_proto::peer::peer_kms_client::PeerKmsClient;
use qkd_proto::peer::peer_kms_server::{PeerKms, PeerKmsServer};
use qkd_types::NodeId;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig,
};
use tonic::{Request, Response, Status};

use crate::manager::{KeyManager, PeerError};
use crate::tls::{TlsFiles, node_id};

/// Errors setting up the peer channel. Caused by the operator (files, addresses).
#[derive(Debug, thiserror::Error)]
pub enum PeerSetupError {
    /// A TLS file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// tonic refused the configuration.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, PeerSetupError> {
    std::fs::read(path).map_err(|source| PeerSetupError::Read {
        path: path.to_path_buf(),
        source,
    })
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
        PeerError::Device(_) => Status::failed_precondition(e.to_string()),
        PeerError::Store(_) => Status::unavailable(e.to_string()),
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

/// Serves the peer protocol on `listener` with mutual TLS until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: &TlsFiles,
    manager: KeyManager,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), PeerSetupError> {
    let identity = Identity::from_pem(read(&tls.cert_chain)?, read(&tls.key)?);
    let tls_cfg = ServerTlsConfig::new()
        .identity(identity)
        .client_ca_root(Certificate::from_pem(read(&tls.ca)?));
    Server::builder()
        .tls_config(tls_cfg)?
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .add_service(PeerKmsServer::new(PeerService::new(manager)))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await?;
    Ok(())
}

/// A lazily connecting client of a peer node at `addr`, whose certificate must be valid for
/// `server_name` and chain to our CA.
pub fn client(
    addr: SocketAddr,
    server_name: &str,
    tls: &TlsFiles,
) -> Result<PeerKmsClient<Channel>, PeerSetupError> {
    let tls_cfg = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&tls.ca)?))
        .identity(Identity::from_pem(read(&tls.cert_chain)?, read(&tls.key)?))
        .domain_name(server_name.to_string());
    let channel = Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls_cfg)?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .connect_lazy();
    Ok(PeerKmsClient::new(channel))
}
