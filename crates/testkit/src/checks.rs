//! The life-cycle checks every stage service passes over real gRPC: health transitions,
//! reflection, `/metrics`, GetInfo's common fields, graceful shutdown with a call in flight, and
//! start-up failures reported as errors.

use std::time::{Duration, Instant};

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::{v1, v1alpha};
use unclip_proto::v1::ModelInfo;

use crate::{Service, TestServer, assert_contains, scrape};

/// Health goes NOT_SERVING → SERVING once the model is loaded and warmed up (never SERVING
/// before), then NOT_SERVING on shutdown; open Watch streams end, so shutdown is prompt (under
/// 10 s). `server` has just been started.
pub async fn health_transitions<S: Service>(server: TestServer<S>) {
    let mut watch = server.watch().await;
    let mut seen = Vec::new();
    while seen.last() != Some(&ServingStatus::Serving) {
        let m = watch
            .message()
            .await
            .unwrap()
            .expect("the stream ended before SERVING");
        seen.push(ServingStatus::try_from(m.status).unwrap());
    }
    assert!(
        seen[..seen.len() - 1]
            .iter()
            .all(|s| *s == ServingStatus::NotServing),
        "statuses before SERVING: {seen:?}"
    );
    assert_eq!(server.status("").await, ServingStatus::Serving);

    let started = Instant::now();
    let stopping = tokio::spawn(server.stop());
    let m = watch
        .message()
        .await
        .unwrap()
        .expect("a status on shutdown");
    assert_eq!(
        ServingStatus::try_from(m.status).unwrap(),
        ServingStatus::NotServing
    );
    assert!(
        matches!(watch.message().await, Ok(None) | Err(_)),
        "the Watch stream must end"
    );
    stopping.await.unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown waited {:?}",
        started.elapsed()
    );
}

/// The first answer of reflection `$version` (`v1` or `v1alpha`) on `$server` to a request
/// of `$kind` about `$subject`.
macro_rules! reflect {
    ($version:ident, $server:expr, $kind:ident($subject:expr)) => {{
        let request = $version::ServerReflectionRequest {
            host: String::new(),
            message_request: Some($version::server_reflection_request::MessageRequest::$kind(
                $subject,
            )),
        };
        $version::server_reflection_client::ServerReflectionClient::new($server.channel().await)
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .unwrap()
            .into_inner()
            .message()
            .await
            .unwrap()
            .expect("a reflection answer")
    }};
}

/// Reflection v1 lists the service, health and reflection; v1alpha finds the file that
/// declares the service.
pub async fn reflection_lists_services<S: Service>(server: &TestServer<S>) {
    let response = reflect!(v1, server, ListServices(String::new()));
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("unexpected reflection response {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        S::NAME,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }

    let response = reflect!(v1alpha, server, FileContainingSymbol(S::NAME.into()));
    assert!(
        matches!(
            response.message_response,
            Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
        ),
        "{response:?}"
    );
}

/// `GET /metrics` on the gRPC port answers OpenMetrics text saying the (serving) stage is
/// ready.
pub async fn metrics_say_ready<S: Service>(server: &TestServer<S>) {
    let metrics = scrape(&server.url()).await;
    metrics.assert_openmetrics();
    assert_eq!(metrics.value("unclip_stage_ready"), 1.0, "{}", metrics.body);
    assert!(
        metrics.body.trim_end().ends_with("# EOF"),
        "{}",
        metrics.body
    );
}

/// On karlo-tiny, serving: [`reflection_lists_services`] and [`metrics_say_ready`].
pub async fn reflection_and_metrics<S: Service>() {
    let server = TestServer::<S>::serving(&[]).await;
    reflection_lists_services(&server).await;
    metrics_say_ready(&server).await;
    server.stop().await.unwrap();
}

/// The service's GetInfo, after checking what every service says of karlo-tiny on the CPU:
/// its id, the manifest's version, the answering service, the device, width 32 and context 77.
pub async fn karlo_tiny_info<S: Service>(server: &TestServer<S>) -> ModelInfo {
    let info = S::get_info(&mut server.client().await)
        .await
        .expect("GetInfo")
        .into_inner();
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(crate::karlo_tiny().join("manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(info.model_id, "karlo-tiny");
    assert_eq!(info.version, manifest["version"].as_str().unwrap());
    assert_eq!(info.service, S::NAME);
    assert_eq!(info.device, "cpu");
    assert_eq!((info.embedding_dim, info.context_length), (32, 77));
    info
}

/// The (input, output) sides of GetInfo's upsampler cascade.
pub fn upsampler_sizes(info: &ModelInfo) -> Vec<(u32, u32)> {
    info.upsamplers
        .iter()
        .map(|u| (u.input_size, u.output_size))
        .collect()
}

/// A call in flight when shutdown starts still completes; afterwards the port is closed.
/// `heavy` makes the call (long enough to be in flight at shutdown) on the client it is given;
/// returns its answer.
///
/// The call and a health check share one connection: the call is polled first, so it takes
/// the connection's first stream; once the later health check has been answered, the server
/// has certainly accepted the call, and only then does shutdown start.
pub async fn shutdown_finishes_calls_in_flight<S, R, F>(server: TestServer<S>, heavy: F) -> R
where
    S: Service,
    F: AsyncFnOnce(S::Client) -> Result<tonic::Response<R>, tonic::Status>,
{
    let addr = server.addr;
    let channel = server.channel().await;
    let mut health = HealthClient::new(channel.clone());
    let (result, stopped) = tokio::join!(heavy(S::client(channel)), async move {
        health
            .check(HealthCheckRequest::default())
            .await
            .expect("the health check before shutdown");
        server.stop().await
    });
    stopped.expect("a graceful shutdown is Ok");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the port must be closed"
    );
    result.expect("the call in flight completes").into_inner()
}

/// A model folder without a manifest stops the server with an error naming it.
pub async fn bad_model_is_a_startup_error<S: Service>() {
    let dir = tempfile::tempdir().unwrap();
    let config = TestServer::<S>::config_for(dir.path(), &[]);
    let message = TestServer::<S>::start_with(config)
        .await
        .startup_error()
        .await;
    assert_contains(
        &message,
        &["opening the model repository", "no manifest.json in"],
    );
}

/// A missing ONNX Runtime library is a start-up error naming the path.
pub async fn missing_runtime_is_a_startup_error<S: Service>() {
    let library = "/nonexistent/libonnxruntime.so.1.32.0";
    let message = TestServer::<S>::start(&["--ort-library", library])
        .await
        .startup_error()
        .await;
    assert_contains(
        &message,
        &[&format!("ONNX Runtime library: {library} does not exist")],
    );
}

/// The life-cycle tests every stage service passes, as `#[tokio::test]`s of the calling test
/// crate, for the [`Service`] given: `health_transitions`, `reflection_lists_services` (with
/// `/metrics`), `bad_model_is_a_startup_error` and `missing_runtime_is_a_startup_error`.
#[macro_export]
macro_rules! life_cycle_tests {
    ($service:ty) => {
        /// Health goes NOT_SERVING → SERVING once the model is loaded and warmed up (never
        /// SERVING before), then NOT_SERVING on shutdown; open Watch streams end so shutdown is
        /// prompt.
        #[::tokio::test]
        async fn health_transitions() {
            let server =
                $crate::TestServer::<$service>::start(&["--shutdown-grace-secs", "20"]).await;
            $crate::checks::health_transitions(server).await;
        }

        /// Reflection (v1 and v1alpha) lists the service, health and reflection; `/metrics`
        /// says the stage is ready.
        #[::tokio::test]
        async fn reflection_lists_services() {
            $crate::checks::reflection_and_metrics::<$service>().await;
        }

        /// A model folder without a manifest stops the server with an error naming it.
        #[::tokio::test]
        async fn bad_model_is_a_startup_error() {
            $crate::checks::bad_model_is_a_startup_error::<$service>().await;
        }

        /// A missing ONNX Runtime library is a start-up error naming it.
        #[::tokio::test]
        async fn missing_runtime_is_a_startup_error() {
            $crate::checks::missing_runtime_is_a_startup_error::<$service>().await;
        }
    };
}
