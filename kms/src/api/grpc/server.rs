//! The shell of the gRPC key delivery front end: TLS accept loop with connection caps
//! ([`crate::conn::accept_capped`]), tonic with HTTP/2, the `KeyDelivery` service, and the standard
//! `grpc.health.v1.Health` and `grpc.reflection.v1` (and `v1alpha`) services on the same listener.
//!
//! Admission follows the ETSI 014 port exactly: the TLS configuration demands a client
//! certificate that chains to the node's CA; the SAE ID is read from it with the same
//! [`SaeIdentityRule`] (a `urn:qkd:node:` certificate names no SAE); each admitted SAE may hold at
//! most [`GrpcLimits::max_connections_per_client`] connections and every caller that is not
//! admitted shares one such allowance. Health and reflection carry no key data and answer any
//! client whose certificate the TLS layer accepted (a load balancer's, for instance); every
//! `KeyDelivery` call from a caller that is not admitted gets `UNAUTHENTICATED`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use qkd_proto::keys as pb;
use qkd_proto::keys::key_delivery_server::{KeyDelivery, KeyDeliveryServer};
use qkd_types::SaeId;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use super::request;
use super::status::{GrpcError, outcome_of, status_of};
use crate::api::observe::{Api, ApiObserver, Operation, Outcome};
use crate::api::{DeliveredKey, KeyService};
use crate::conn::{AcceptLimits, SaeClient, accept_capped};
use crate::core::stream::Cadence;
use crate::tls::SaeIdentityRule;

/// Resource limits of the gRPC key delivery port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcLimits {
    /// Most connections open at once, handshakes included; further clients wait in the listen
    /// backlog.
    pub max_connections: usize,
    /// Most connections one SAE may hold at once (HTTP/2 multiplexes its calls over one); a
    /// connection beyond it is closed right after the handshake. Callers that are not admitted
    /// share one allowance.
    pub max_connections_per_client: usize,
    /// Time a client has to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// Largest request message decoded; a GetKeysByIds of 128 key IDs is about 5 KiB.
    pub max_request_bytes: usize,
    /// Most calls in flight on one connection (HTTP/2 streams); together with the per-SAE
    /// connection cap it bounds what one SAE can have the key manager work on at once.
    pub max_concurrent_streams: u32,
    /// How long shutdown waits for calls in flight before it closes the remaining connections
    /// (a health `Watch` stream, for one, never ends by itself).
    pub shutdown_grace: Duration,
}

impl Default for GrpcLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_connections_per_client: 64,
            handshake_timeout: Duration::from_secs(10),
            max_request_bytes: 64 * 1024,
            max_concurrent_streams: 64,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Errors setting up the gRPC key delivery server. Caused by a bug (descriptor sets are compiled
/// in) or by the operator (the listener).
#[derive(Debug, thiserror::Error)]
pub enum GrpcSetupError {
    /// tonic refused the configuration or the listener failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Bug: a compiled-in descriptor set does not decode.
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// The `KeyDelivery` service over a [`KeyService`].
#[derive(Clone)]
pub struct KeyDeliveryService {
    service: Arc<dyn KeyService>,
    identity: SaeIdentityRule,
    observer: Arc<dyn ApiObserver>,
}

impl std::fmt::Debug for KeyDeliveryService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyDeliveryService")
            .field("identity", &self.identity)
            .field("observer", &self.observer)
            .finish_non_exhaustive()
    }
}

impl KeyDeliveryService {
    /// The service for `service`, reading SAE IDs with `identity` and reporting every call to
    /// `observer`.
    pub fn new(
        service: Arc<dyn KeyService>,
        identity: SaeIdentityRule,
        observer: Arc<dyn ApiObserver>,
    ) -> Self {
        Self {
            service,
            identity,
            observer,
        }
    }

    /// The caller's SAE ID from the client certificate the TLS layer verified, if it names one.
    fn caller<T>(&self, req: &Request<T>) -> Option<SaeId> {
        let certs = req.peer_certs()?;
        let leaf = certs.first()?;
        self.identity
            .sae_id(leaf)
            .map_err(|e| tracing::debug!(error = %e, "gRPC client certificate names no SAE"))
            .ok()
    }

    /// Reports the call and maps its error to the wire.
    fn finish<T>(
        &self,
        op: Operation,
        result: Result<T, GrpcError>,
    ) -> Result<Response<T>, Status> {
        match result {
            Ok(v) => {
                self.observer.observe(Api::Grpc, op, Outcome::Ok);
                Ok(Response::new(v))
            }
            Err(e) => {
                if let GrpcError::Service(s) = &e {
                    tracing::debug!(error = %s, operation = op.label(), "gRPC key delivery refused");
                }
                self.observer.observe(Api::Grpc, op, outcome_of(&e));
                Err(status_of(&e))
            }
        }
    }
}

#[tonic::async_trait]
impl KeyDelivery for KeyDeliveryService {
    async fn get_status(
        &self,
        req: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let caller = self.caller(&req);
        let result = async {
            let (master, slave) = request::status(caller.as_ref(), req.get_ref(), &*self.service)?;
            let s = self.service.status(&master, &slave).await?;
            Ok(pb::GetStatusResponse {
                source_kme_id: s.source_kme.to_string(),
                target_kme_id: s.target_kme.to_string(),
                master_sae_id: master.to_string(),
                slave_sae_id: slave.to_string(),
                key_size: s.limits.key_size,
                stored_key_count: s.stored_key_count,
                max_key_count: s.max_key_count,
                max_key_per_request: s.limits.max_key_per_request,
                max_key_size: s.limits.max_key_size,
                min_key_size: s.limits.min_key_size,
                max_sae_id_count: s.limits.max_sae_id_count,
            })
        }
        .await;
        self.finish(Operation::Status, result)
    }

    async fn get_keys(
        &self,
        req: Request<pb::GetKeysRequest>,
    ) -> Result<Response<pb::GetKeysResponse>, Status> {
        let caller = self.caller(&req);
        let result = async {
            let call = request::get_keys(caller.as_ref(), req.get_ref(), &*self.service)?;
            Ok(container(self.service.enc_keys(call).await?))
        }
        .await;
        self.finish(Operation::EncKeys, result)
    }

    async fn get_keys_by_ids(
        &self,
        req: Request<pb::GetKeysByIdsRequest>,
    ) -> Result<Response<pb::GetKeysResponse>, Status> {
        let caller = self.caller(&req);
        let result = async {
            let call = request::get_keys_by_ids(caller.as_ref(), req.get_ref(), &*self.service)?;
            Ok(container(self.service.dec_keys(call).await?))
        }
        .await;
        self.finish(Operation::DecKeys, result)
    }

    async fn open_stream(
        &self,
        req: Request<pb::OpenStreamRequest>,
    ) -> Result<Response<pb::OpenStreamResponse>, Status> {
        let caller = self.caller(&req);
        let result = async {
            let call = request::open_stream(caller.as_ref(), req.get_ref(), &*self.service)?;
            let opened = self.service.open_stream(call).await?;
            Ok(pb::OpenStreamResponse {
                status: pb::Etsi004Status::Successful.into(),
                key_stream_id: opened.id.to_string(),
                qos: Some(request::qos_message(&opened.qos)),
                master: opened.master,
            })
        }
        .await;
        self.finish(Operation::OpenStream, result)
    }

    async fn get_stream_key(
        &self,
        req: Request<pb::GetStreamKeyRequest>,
    ) -> Result<Response<pb::GetStreamKeyResponse>, Status> {
        let caller = self.caller(&req);
        let index = req.get_ref().index;
        let result = async {
            let (caller, stream) = request::stream_call(
                caller.as_ref(),
                &req.get_ref().key_stream_id,
                &*self.service,
            )?;
            let key = self.service.stream_key(&caller, stream, index).await?;
            Ok(stream_key(index, &key))
        }
        .await;
        self.finish(Operation::StreamKey, result)
    }

    type StreamKeysStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::GetStreamKeyResponse, Status>>;

    async fn stream_keys(
        &self,
        req: Request<pb::StreamKeysRequest>,
    ) -> Result<Response<Self::StreamKeysStream>, Status> {
        let caller = self.caller(&req);
        let r = req.get_ref();
        let (from, count) = (r.from_index, r.count);
        let opened = async {
            let (caller, stream) =
                request::stream_call(caller.as_ref(), &r.key_stream_id, &*self.service)?;
            let qos = self.service.stream_qos(&caller, stream).await?;
            Ok((caller, stream, qos))
        }
        .await;
        let (caller, stream, qos) = match opened {
            Ok(v) => v,
            Err(e) => return self.finish(Operation::StreamKey, Err(e)),
        };
        // One message in the channel at most: the next key is consumed only once the previous
        // one has been taken by the transport, so a slow reader holds the producer back instead
        // of keys piling up (HTTP/2 flow control then holds the transport back).
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let me = self.clone();
        tokio::spawn(async move {
            let cadence = Cadence::of(&qos);
            // When the previous key was due (the cadence's grid).
            let mut due: Option<tokio::time::Instant> = None;
            let end = count.map(|n| from.saturating_add(n));
            let mut index = from;
            while end.is_none_or(|e| index < e) {
                let Ok(permit) = tx.reserve().await else {
                    return; // the caller went away
                };
                let now = tokio::time::Instant::now();
                let next = due.map_or(now, |d| cadence.next_due(d, now));
                tokio::time::sleep_until(next).await;
                due = Some(next);
                let got = me.service.stream_key(&caller, stream, index).await;
                match me.finish(
                    Operation::StreamKey,
                    got.map(|k| stream_key(index, &k)).map_err(GrpcError::from),
                ) {
                    Ok(msg) => permit.send(Ok(msg.into_inner())),
                    Err(status) => {
                        permit.send(Err(status));
                        return;
                    }
                }
                index += 1;
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn close_stream(
        &self,
        req: Request<pb::CloseStreamRequest>,
    ) -> Result<Response<pb::CloseStreamResponse>, Status> {
        let caller = self.caller(&req);
        let result = async {
            let (caller, stream) = request::stream_call(
                caller.as_ref(),
                &req.get_ref().key_stream_id,
                &*self.service,
            )?;
            self.service.close_stream(&caller, stream).await?;
            Ok(pb::CloseStreamResponse {
                status: pb::Etsi004Status::Successful.into(),
            })
        }
        .await;
        self.finish(Operation::CloseStream, result)
    }
}

/// The wire form of one key of a stream.
fn stream_key(index: u64, key: &DeliveredKey) -> pb::GetStreamKeyResponse {
    pb::GetStreamKeyResponse {
        status: pb::Etsi004Status::Successful.into(),
        index,
        key: Some(pb::Key::from_secret(key.id.to_string(), &key.key)),
    }
}

fn container(keys: Vec<DeliveredKey>) -> pb::GetKeysResponse {
    pb::GetKeysResponse {
        keys: keys
            .iter()
            .map(|k| pb::Key::from_secret(k.id.to_string(), &k.key))
            .collect(),
    }
}

/// Serves `KeyDelivery`, health and reflection on `listener` until `shutdown` resolves; then
/// health turns `NOT_SERVING`, in-flight calls get [`GrpcLimits::shutdown_grace`] to finish, and
/// the function returns even if some (a health `Watch` stream) are still open; the connection
/// tasks of such calls end with the process.
///
/// `tls` must require client certificates and offer ALPN `h2` (see
/// [`crate::tls::grpc_server_config`]).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    service: Arc<dyn KeyService>,
    identity: SaeIdentityRule,
    limits: GrpcLimits,
    observer: Arc<dyn ApiObserver>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), GrpcSetupError> {
    const PORT: &str = "gRPC key delivery";
    // Our service, health, and the google.rpc error details (so that tools can decode the
    // RetryInfo of RESOURCE_EXHAUSTED).
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<KeyDeliveryServer<KeyDeliveryService>>()
        .await;

    let admits = service.clone();
    let rule = identity.clone();
    let (incoming, accept) = accept_capped(
        listener,
        TlsAcceptor::from(tls),
        AcceptLimits {
            max_connections: limits.max_connections,
            max_connections_per_client: limits.max_connections_per_client,
            handshake_timeout: limits.handshake_timeout,
        },
        PORT,
        move |stream| {
            let leaf = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first());
            let caller = leaf.and_then(|leaf| match rule.sae_id(leaf) {
                Ok(id) => Some(id),
                Err(e) => {
                    tracing::info!(error = %e, "{PORT}: client certificate names no SAE");
                    None
                }
            });
            Some(SaeClient::of(caller.as_ref(), |id| admits.admits(id)))
        },
    );
    let delivery = KeyDeliveryServer::new(KeyDeliveryService::new(service, identity, observer))
        .max_decoding_message_size(limits.max_request_bytes);
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let server = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .max_concurrent_streams(limits.max_concurrent_streams)
        .add_service(delivery)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = drain_rx.await;
        });
    tokio::pin!(server);
    let result = tokio::select! {
        r = &mut server => r,
        () = shutdown => {
            // Load balancers watching health drain this node while in-flight calls finish.
            health
                .set_not_serving::<KeyDeliveryServer<KeyDeliveryService>>()
                .await;
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            let _ = drain_tx.send(());
            match tokio::time::timeout(limits.shutdown_grace, &mut server).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::info!(
                        "{PORT}: calls still open after the shutdown grace period; not waiting"
                    );
                    Ok(())
                }
            }
        }
    };
    accept.abort();
    result?;
    Ok(())
}
