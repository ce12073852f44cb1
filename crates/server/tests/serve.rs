//! The serving skeleton without any model: health follows `load`, a failed load is `serve`'s
//! error, shutdown ends health watches, and the slot stays empty until the state is ready.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::service::Routes;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use unclip_proto::v1::clip_service_client::ClipServiceClient;
use unclip_proto::v1::clip_service_server::{ClipService, ClipServiceServer};
use unclip_proto::v1::{
    EncodeImageRequest, EncodeImageResponse, EncodeTextRequest, EncodeTextResponse, GetInfoRequest,
    ModelInfo,
};
use unclip_server::metrics::{Metrics, counters, labels};
use unclip_server::{ServeArgs, ServeConfig, Slot, serve};
use unclip_testkit::{http_get, scrape};

const SERVICE: &str = "unclip.v1.TestService";

/// With a metrics endpoint, so every test also shows gRPC working beside HTTP/1.1.
fn config() -> ServeConfig {
    ServeConfig {
        service: SERVICE,
        drain_delay: Duration::ZERO,
        shutdown_grace: Duration::from_secs(5),
        ..ServeArgs::default()
            .serve_config(SERVICE)
            .with_metrics(Metrics::new(|registry| {
                counters(
                    registry,
                    "unclip_test_loads",
                    "Loads.",
                    [(labels([("kind", "test")]), 1)],
                );
            }))
    }
}

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn status(health: &mut HealthClient<Channel>) -> ServingStatus {
    let response = health
        .check(HealthCheckRequest {
            service: SERVICE.into(),
        })
        .await
        .unwrap();
    ServingStatus::try_from(response.into_inner().status).unwrap()
}

/// NOT_SERVING while `load` runs (the slot is UNAVAILABLE), SERVING once it returned (the
/// slot holds the model); shutdown ends the Watch stream and `serve` returns Ok.
#[tokio::test]
async fn health_follows_load() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let slot: Slot<u32> = Slot::new();
    let (loaded_tx, loaded_rx) = oneshot::channel::<()>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let load = async move {
        let _ = loaded_rx.await;
        anyhow::Ok(7u32)
    };
    let server = tokio::spawn(serve(
        config(),
        listener,
        Routes::default(),
        slot.clone(),
        load,
        async {
            let _ = stop_rx.await;
        },
    ));

    let mut health = HealthClient::new(channel(addr).await);
    assert_eq!(status(&mut health).await, ServingStatus::NotServing);
    assert!(slot.get().is_none(), "empty until the state is ready");

    let mut watch = health
        .watch(HealthCheckRequest {
            service: SERVICE.into(),
        })
        .await
        .unwrap()
        .into_inner();
    loaded_tx.send(()).unwrap();
    loop {
        let m = watch.message().await.unwrap().expect("a status");
        if m.status == ServingStatus::Serving as i32 {
            break;
        }
    }
    assert_eq!(*slot.get().unwrap(), 7);

    // Prometheus scrapes the same port over HTTP/1.1.
    let metrics = scrape(&addr.to_string()).await;
    metrics.assert_openmetrics();
    assert_eq!(metrics.value("unclip_test_loads_total{kind=\"test\"}"), 1.0);

    stop_tx.send(()).unwrap();
    while let Ok(Some(_)) = watch.message().await {}
    server.await.unwrap().unwrap();
}

/// A failed `load` stops the server and is returned.
#[tokio::test]
async fn failed_load_is_the_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let load = async { Err::<u32, _>(anyhow::anyhow!("no such model")) };
    let e = serve(
        config(),
        listener,
        Routes::default(),
        Slot::<u32>::new(),
        load,
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert_eq!(e.to_string(), "no such model");
}

/// After `load`, health follows the readiness signal both ways; extra HTTP routes answer on the
/// gRPC port beside `/metrics`; shutdown still ends health.
#[tokio::test]
async fn health_follows_readiness_and_http_routes_answer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let router = axum::Router::new().route("/hello", axum::routing::get(|| async { "hi" }));
    let server = tokio::spawn(serve(
        config().with_http(router).with_readiness(ready_rx),
        listener,
        Routes::default(),
        Slot::<u32>::new(),
        async { anyhow::Ok(1u32) },
        async {
            let _ = stop_rx.await;
        },
    ));
    let mut health = HealthClient::new(channel(addr).await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: SERVICE.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut next = async || {
        ServingStatus::try_from(watch.message().await.unwrap().expect("a status").status).unwrap()
    };
    assert_eq!(
        next().await,
        ServingStatus::NotServing,
        "loaded but not ready"
    );
    ready_tx.send(true).unwrap();
    assert_eq!(next().await, ServingStatus::Serving);
    ready_tx.send(false).unwrap();
    assert_eq!(next().await, ServingStatus::NotServing, "readiness lost");
    ready_tx.send(true).unwrap();
    assert_eq!(next().await, ServingStatus::Serving);

    let hello = http_get(&addr.to_string(), "/hello").await;
    assert_eq!(
        (hello.status.as_str(), hello.body.as_str()),
        ("HTTP/1.1 200 OK", "hi")
    );
    scrape(&addr.to_string()).await.assert_openmetrics();

    stop_tx.send(()).unwrap();
    // Turning ready again after shutdown must not bring SERVING back.
    let _ = ready_tx.send(true);
    server.await.unwrap().unwrap();
}

/// A CLIP service whose EncodeText reports that it started, then answers when told.
#[derive(Debug, Clone)]
struct Held {
    started: tokio::sync::mpsc::UnboundedSender<()>,
    release: std::sync::Arc<tokio::sync::Notify>,
}

#[tonic::async_trait]
impl ClipService for Held {
    async fn encode_text(
        &self,
        _request: tonic::Request<EncodeTextRequest>,
    ) -> Result<tonic::Response<EncodeTextResponse>, tonic::Status> {
        let _ = self.started.send(());
        self.release.notified().await;
        Ok(tonic::Response::new(EncodeTextResponse::default()))
    }

    async fn encode_image(
        &self,
        _request: tonic::Request<EncodeImageRequest>,
    ) -> Result<tonic::Response<EncodeImageResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }

    async fn get_info(
        &self,
        _request: tonic::Request<GetInfoRequest>,
    ) -> Result<tonic::Response<ModelInfo>, tonic::Status> {
        Ok(tonic::Response::new(ModelInfo::default()))
    }
}

/// The graceful drain: on shutdown health turns NOT_SERVING at once while calls are still
/// served for the drain delay; then new calls are refused with UNAVAILABLE (health checks
/// still answer), the call in flight completes, and `serve` returns Ok.
#[tokio::test]
async fn shutdown_drains() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let service = Held {
        started: started_tx,
        release: std::sync::Arc::clone(&release),
    };
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let config = ServeConfig {
        drain_delay: Duration::from_millis(1500),
        ..config()
    };
    let server = tokio::spawn(serve(
        config,
        listener,
        Routes::new(ClipServiceServer::new(service)),
        Slot::<u32>::new(),
        async { anyhow::Ok(1u32) },
        async {
            let _ = stop_rx.await;
        },
    ));
    let channel = channel(addr).await;
    let mut health = HealthClient::new(channel.clone());
    for _ in 0..500 {
        if status(&mut health).await == ServingStatus::Serving {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut client = ClipServiceClient::new(channel.clone());
    let in_flight = {
        let mut client = client.clone();
        tokio::spawn(async move { client.encode_text(EncodeTextRequest::default()).await })
    };
    started.recv().await.unwrap();

    stop_tx.send(()).unwrap();
    // NOT_SERVING first, while calls are still answered.
    for _ in 0..500 {
        if status(&mut health).await == ServingStatus::NotServing {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status(&mut health).await, ServingStatus::NotServing);
    client
        .get_info(GetInfoRequest {})
        .await
        .expect("still served during the drain delay");

    // After the delay: refused with UNAVAILABLE, the call in flight still running.
    let refused = loop {
        match client.get_info(GetInfoRequest {}).await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(status) => break status,
        }
    };
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        !in_flight.is_finished(),
        "the call in flight is not cut off"
    );
    release.notify_one();
    in_flight
        .await
        .unwrap()
        .expect("the call in flight completes");
    server.await.unwrap().expect("a drained shutdown is Ok");
}
