//! The gRPC key delivery front end against the real key manager (two trusted nodes in this
//! process, each with its own redb store, agreeing over the node-to-node gRPC port), over real
//! mutual TLS and HTTP/2, with the deployment of the ETSI 014 suite (`qkd_testnet::etsi_fixture`): A is
//! attached to node 1, B and C to node 2; A may pair with B only; R is attached elsewhere, U is
//! registered nowhere, NODE and NODE-A present node certificates.

#![allow(clippy::unwrap_used)]

use std::error::Error as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use qkd_kms::api::KeyService;
use qkd_kms::api::grpc::{self, GrpcLimits, GrpcSetupError};
use qkd_kms::api::observe::{Api, ApiCounters, Operation, Outcome};
use qkd_kms::tls::{self, SaeIdentityRule};
use qkd_proto::keys as pb;
use qkd_proto::keys::key_delivery_client::KeyDeliveryClient;
use qkd_types::{KeyId, NodeId};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use qkd_testnet::etsi_fixture::{Fixture, SAE_PREFIX};

/// One running gRPC key delivery server.
struct GrpcKme {
    addr: SocketAddr,
    counters: Arc<ApiCounters>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), GrpcSetupError>>,
}

impl GrpcKme {
    async fn start(fx: &Fixture, kme: usize, limits: GrpcLimits) -> Self {
        let issued = fx
            .pki
            .issue_node(
                &NodeId::parse(&format!("grpc-{kme}")).unwrap(),
                [127, 0, 0, 1].into(),
            )
            .unwrap();
        let config = tls::grpc_server_config(&issued.tls_files(fx.pki.ca_cert())).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(ApiCounters::new());
        let (stop, stopped) = oneshot::channel::<()>();
        let service: Arc<dyn KeyService> = fx.services[kme].clone();
        let task = tokio::spawn(grpc::serve(
            listener,
            Arc::new(config),
            service,
            SaeIdentityRule::new(SAE_PREFIX),
            limits,
            counters.clone(),
            async {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            counters,
            stop: Some(stop),
            task,
        }
    }

    /// Stops the server and checks that it shut down cleanly.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("gRPC server shut down within 10 s")
            .expect("gRPC server task did not panic")
            .expect("gRPC serve returned Ok");
    }
}

/// A channel to `addr` over mutual TLS with `config`'s certificate, ALPN h2.
fn channel(addr: SocketAddr, config: &ClientConfig) -> Channel {
    let mut config = config.clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = TlsConnector::from(Arc::new(config));
    let connect = tower::service_fn(move |_: http::Uri| {
        let connector = connector.clone();
        async move {
            let tcp = TcpStream::connect(addr).await?;
            let name = ServerName::IpAddress(addr.ip().into());
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(10))
        .connect_with_connector_lazy(connect)
}

fn client(fx: &Fixture, who: &str, kme: &GrpcKme) -> KeyDeliveryClient<Channel> {
    KeyDeliveryClient::new(channel(kme.addr, &fx.tls(who)))
}

fn get_keys(slave: &str, number: Option<u32>, size: Option<u32>) -> pb::GetKeysRequest {
    pb::GetKeysRequest {
        slave_sae_id: slave.into(),
        number,
        size,
        additional_slave_sae_ids: Vec::new(),
    }
}

fn by_ids(master: &str, ids: &[String]) -> pb::GetKeysByIdsRequest {
    pb::GetKeysByIdsRequest {
        master_sae_id: master.into(),
        key_ids: ids.to_vec(),
    }
}

/// The status of a refused call, with its message checked for what must never be in it.
fn refused<T: std::fmt::Debug>(r: Result<tonic::Response<T>, Status>, code: Code) -> Status {
    let s = r.expect_err("the call must be refused");
    assert_eq!(s.code(), code, "{s:?}");
    assert!(!s.message().is_empty(), "{s:?}");
    s
}

/// Every row of the status mapping (docs/grpc.md) against the real key manager, then the
/// exchange itself: the master gets keys at node 1, the slave fetches the same bytes at node 2
/// once, a second fetch is NOT_FOUND, and a third SAE can read neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_mapping_and_consume_once_over_real_nodes() {
    let fx = Fixture::two_nodes().await;
    let n1 = GrpcKme::start(&fx, 0, GrpcLimits::default()).await;
    let n2 = GrpcKme::start(&fx, 1, GrpcLimits::default()).await;
    let mut a = client(&fx, "A", &n1);
    let mut b = client(&fx, "B", &n2);
    let mut c = client(&fx, "C", &n2);

    // UNAUTHENTICATED: a certificate that names no SAE attached here, whatever the request.
    for who in ["U", "R", "NODE", "NODE-A"] {
        let mut x = client(&fx, who, &n1);
        let s = refused(
            x.get_keys(get_keys("B", None, None)).await,
            Code::Unauthenticated,
        );
        assert!(s.message().contains("certificate"), "{s:?}");
        refused(
            x.get_status(pb::GetStatusRequest {
                slave_sae_id: "B".into(),
            })
            .await,
            Code::Unauthenticated,
        );
        refused(
            x.get_keys_by_ids(by_ids("A", &["not a uuid".into()])).await,
            Code::Unauthenticated,
        );
    }
    // B is attached to node 2, not node 1.
    refused(
        client(&fx, "B", &n1)
            .get_keys(get_keys("A", None, None))
            .await,
        Code::Unauthenticated,
    );

    // PERMISSION_DENIED: A may not pair with C.
    refused(
        a.get_keys(get_keys("C", None, None)).await,
        Code::PermissionDenied,
    );
    refused(
        a.get_status(pb::GetStatusRequest {
            slave_sae_id: "C".into(),
        })
        .await,
        Code::PermissionDenied,
    );

    // INVALID_ARGUMENT: values, unknown slave, the caller as its own slave, bad key IDs.
    for req in [
        get_keys("B", Some(0), None),
        get_keys("B", Some(129), None),
        get_keys("B", None, Some(100)),
        get_keys("B", None, Some(2048)),
        get_keys("Q", None, None),
        get_keys("A", None, None),
        pb::GetKeysRequest {
            additional_slave_sae_ids: vec!["C".into()],
            ..get_keys("B", None, None)
        },
    ] {
        refused(a.get_keys(req).await, Code::InvalidArgument);
    }
    let s = refused(
        a.get_keys(get_keys("B", None, Some(100))).await,
        Code::InvalidArgument,
    );
    assert_eq!(s.message(), "size shall be a multiple of 8");
    let s = refused(
        b.get_keys_by_ids(by_ids("A", &[KeyId::random().to_string(), "x".into()]))
            .await,
        Code::InvalidArgument,
    );
    assert!(s.message().starts_with("key_ids[1]"), "{s:?}");
    refused(
        b.get_keys_by_ids(by_ids("A", &[])).await,
        Code::InvalidArgument,
    );

    // A request beyond the port's message limit never reaches the checks.
    let huge: Vec<String> = (0..2000).map(|_| KeyId::random().to_string()).collect();
    refused(
        b.get_keys_by_ids(by_ids("A", &huge)).await,
        Code::OutOfRange,
    );

    // NOT_FOUND: a key ID nobody issued.
    refused(
        b.get_keys_by_ids(by_ids("A", &[KeyId::random().to_string()]))
            .await,
        Code::NotFound,
    );

    // RESOURCE_EXHAUSTED with RetryInfo: more than the pair's pool, nothing consumed.
    let before = a
        .get_status(pb::GetStatusRequest {
            slave_sae_id: "B".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (before.source_kme_id.as_str(), before.target_kme_id.as_str()),
        ("KME-1", "KME-2")
    );
    assert_eq!(
        (before.master_sae_id.as_str(), before.slave_sae_id.as_str()),
        ("A", "B")
    );
    assert_eq!(before.key_size, 256);
    let s = refused(
        a.get_keys(get_keys("B", Some(128), Some(1024))).await,
        Code::ResourceExhausted,
    );
    let retry = s.get_details_retry_info().expect("RetryInfo detail");
    assert_eq!(retry.retry_delay, Some(grpc::RETRY_DELAY));

    // The exchange: A gets 3 keys at node 1, B fetches the same bytes at node 2 by their IDs.
    let got = a
        .get_keys(get_keys("B", Some(3), None))
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|k| k.key.len() == 32));
    let ids: Vec<String> = got.iter().map(|k| k.key_id.clone()).collect();
    assert!(ids.iter().all(|id| KeyId::parse(id).is_ok()));
    // No key bytes in Debug output.
    let shown = format!("{got:?}");
    assert!(shown.contains("<SECRET 32 bytes>"), "{shown}");

    // C (attached to node 2, not a slave of these keys) cannot read them, and burns nothing.
    refused(
        c.get_keys_by_ids(by_ids("A", &ids)).await,
        Code::PermissionDenied,
    );
    // The master cannot fetch its own keys as a slave either (it is not attached to node 2).
    refused(
        client(&fx, "A", &n2)
            .get_keys_by_ids(by_ids("A", &ids))
            .await,
        Code::Unauthenticated,
    );

    // Keys asked for under another master than the one that obtained them are not found.
    refused(b.get_keys_by_ids(by_ids("R", &ids)).await, Code::NotFound);
    let back = b
        .get_keys_by_ids(by_ids("A", &ids))
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(back.len(), 3);
    for (x, y) in got.iter().zip(&back) {
        assert_eq!(x.key_id, y.key_id);
        assert_eq!(x.key, y.key);
    }
    // Consume-once: the second fetch of any of them is NOT_FOUND.
    let s = refused(
        b.get_keys_by_ids(by_ids("A", &ids[1..2])).await,
        Code::NotFound,
    );
    assert!(!s.message().contains(&ids[1]), "{s:?}");

    // The counters saw every call, by API, operation and outcome, and nothing else.
    let count = |k: &GrpcKme, op, o| k.counters.count(Api::Grpc, op, o);
    assert_eq!(count(&n1, Operation::EncKeys, Outcome::Ok), 1);
    assert_eq!(count(&n1, Operation::EncKeys, Outcome::Exhausted), 1);
    assert_eq!(count(&n1, Operation::EncKeys, Outcome::NotPermitted), 1);
    assert_eq!(count(&n1, Operation::EncKeys, Outcome::NotAdmitted), 5);
    assert_eq!(count(&n2, Operation::DecKeys, Outcome::Ok), 1);
    assert_eq!(count(&n2, Operation::DecKeys, Outcome::NotPermitted), 1);
    assert_eq!(count(&n2, Operation::DecKeys, Outcome::NotFound), 3);
    assert_eq!(
        count(&n2, Operation::EncKeys, Outcome::Ok) + count(&n1, Operation::DecKeys, Outcome::Ok),
        0
    );
    assert_eq!(
        n1.counters
            .count(Api::Etsi014, Operation::EncKeys, Outcome::Ok),
        0
    );

    n1.stop().await;
    n2.stop().await;
    fx.stop().await;
}

/// UNAVAILABLE: keys of a non-default size are relayed on demand, which needs the peer node; with
/// both node-to-node servers stopped the master's node cannot reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_peer_node_is_unavailable() {
    let fx = Fixture::two_nodes().await;
    let n1 = GrpcKme::start(&fx, 0, GrpcLimits::default()).await;
    let mut a = client(&fx, "A", &n1);
    fx.stop_peers();
    let s = refused(
        a.get_keys(get_keys("B", Some(1), Some(512))).await,
        Code::Unavailable,
    );
    assert_eq!(s.message(), "peer KME unavailable; retry later");
    assert_eq!(
        n1.counters
            .count(Api::Grpc, Operation::EncKeys, Outcome::Unavailable),
        1
    );
    n1.stop().await;
    fx.stop().await;
}

/// Health answers SERVING for the key delivery service and overall; reflection lists the
/// services of this port (and not the node-to-node protocol).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_on_the_same_port() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let fx = Fixture::fake().await;
    let n1 = GrpcKme::start(&fx, 0, GrpcLimits::default()).await;
    // A load balancer's certificate chains to the CA but names no SAE attached here.
    let ch = channel(n1.addr, &fx.tls("NODE"));
    let mut health = HealthClient::new(ch.clone());
    for service in ["", "qkd.keys.v1.KeyDelivery"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "qkd.peer.v1.PeerKms".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    let mut reflection = ServerReflectionClient::new(ch);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().expect("one reply");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply {reply:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "qkd.keys.v1.KeyDelivery"
        ]
    );
    n1.stop().await;
    fx.stop().await;
}

/// The per-SAE connection cap of the ETSI port applies here too: a connection beyond it is
/// closed after the handshake, while another SAE still gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_per_sae() {
    let fx = Fixture::fake().await;
    let n1 = GrpcKme::start(
        &fx,
        0,
        GrpcLimits {
            max_connections_per_client: 1,
            ..GrpcLimits::default()
        },
    )
    .await;
    let status = |slave: &str| pb::GetStatusRequest {
        slave_sae_id: slave.into(),
    };
    // The first connection of A holds A's only slot for as long as it is open.
    let mut a1 = client(&fx, "A", &n1);
    a1.get_status(status("B")).await.unwrap();
    let mut a2 = client(&fx, "A", &n1);
    // The server closes it right after the handshake: the call fails in the transport (tonic
    // reports a closed connection as UNAVAILABLE, UNKNOWN or CANCELLED depending on timing).
    let s = a2.get_status(status("B")).await.unwrap_err();
    assert!(
        [Code::Unavailable, Code::Unknown, Code::Cancelled].contains(&s.code()),
        "{s:?}"
    );
    assert!(
        s.source().is_some() || s.code() == Code::Unavailable,
        "{s:?}"
    );
    // Another SAE is not affected.
    let mut c = client(&fx, "C", &n1);
    c.get_status(status("B")).await.unwrap();
    // A's first connection still works.
    a1.get_status(status("B")).await.unwrap();
    drop((a1, a2, c));
    n1.stop().await;
    fx.stop().await;
}

/// Item 4: the ETSI 014 server and the gRPC server report to one observer, each request once,
/// classed by API, operation and outcome (the admission refusal the ETSI shell answers before
/// reading a body included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_front_ends_report_to_one_observer() {
    use qkd_kms::api::etsi014::{self, ServerLimits};

    let fx = Fixture::fake().await;
    let n1 = GrpcKme::start(&fx, 0, GrpcLimits::default()).await;
    // An ETSI 014 server over the same keys, reporting to the gRPC server's counters.
    let issued = fx
        .pki
        .issue_node(
            &NodeId::parse("etsi-observed").unwrap(),
            [127, 0, 0, 1].into(),
        )
        .unwrap();
    let config = tls::server_config(&issued.tls_files(fx.pki.ca_cert())).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("https://{}/api/v1/keys/", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let etsi = tokio::spawn(etsi014::serve_observed(
        listener,
        Arc::new(config),
        fx.services[0].clone(),
        SaeIdentityRule::new(SAE_PREFIX),
        ServerLimits::default(),
        n1.counters.clone(),
        async {
            let _ = stopped.await;
        },
    ));

    let get = |who: &str, path: &str| fx.client(who).get(format!("{base}{path}")).send();
    assert_eq!(get("U", "B/enc_keys").await.unwrap().status(), 401);
    assert_eq!(get("A", "B/status").await.unwrap().status(), 200);
    assert_eq!(get("A", "B/enc_keys?number=0").await.unwrap().status(), 400);
    assert_eq!(get("A", "B/nowhere").await.unwrap().status(), 404);
    let unknown = format!("A/dec_keys?key_ID={}", KeyId::random());
    assert_eq!(get("B", &unknown).await.unwrap().status(), 400);
    client(&fx, "A", &n1)
        .get_status(pb::GetStatusRequest {
            slave_sae_id: "B".into(),
        })
        .await
        .unwrap();

    let c = &n1.counters;
    let etsi_count = |op, o| c.count(Api::Etsi014, op, o);
    assert_eq!(etsi_count(Operation::EncKeys, Outcome::NotAdmitted), 1);
    assert_eq!(etsi_count(Operation::Status, Outcome::Ok), 1);
    assert_eq!(etsi_count(Operation::EncKeys, Outcome::Invalid), 1);
    assert_eq!(etsi_count(Operation::Other, Outcome::Invalid), 1);
    assert_eq!(etsi_count(Operation::DecKeys, Outcome::NotFound), 1);
    assert_eq!(c.count(Api::Grpc, Operation::Status, Outcome::Ok), 1);
    // Nothing else was counted: six requests in all.
    assert_eq!(c.total(), 6);

    let _ = stop.send(());
    etsi.await.unwrap().unwrap();
    n1.stop().await;
    fx.stop().await;
}

/// Shutdown: a load balancer watching health sees `NOT_SERVING`, and a `Watch` stream (which
/// never ends by itself) holds `serve` no longer than its grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_turns_health_not_serving_and_does_not_wait_for_open_streams() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let fx = Fixture::fake().await;
    let n1 = GrpcKme::start(
        &fx,
        0,
        GrpcLimits {
            shutdown_grace: Duration::from_secs(1),
            ..GrpcLimits::default()
        },
    )
    .await;
    let mut health = HealthClient::new(channel(n1.addr, &fx.tls("A")));
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "qkd.keys.v1.KeyDelivery".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);

    // `stop` fails the test unless serve returns (within 10 s) with Ok.
    let stopping = tokio::spawn(n1.stop());
    let next = watch.message().await.unwrap().expect("a status update");
    assert_eq!(next.status(), ServingStatus::NotServing);
    stopping.await.unwrap();
    drop(watch);
    fx.stop().await;
}
