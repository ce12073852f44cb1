//! The service's life cycle over real gRPC: health transitions, GetInfo, reflection, graceful
//! shutdown with a call in flight, and start-up failures reported as errors.

mod common;

use std::time::{Duration, Instant};

use clap::Parser;
use common::{TestServer, karlo_tiny, synthetic_encoding};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use unclip_prior::Config;
use unclip_proto::v1::{GetInfoRequest, PriorSampleRequest};

/// Health goes NOT_SERVING → SERVING once the model is loaded and a warm-up Sample passed
/// (never SERVING before), then NOT_SERVING on shutdown; open Watch streams end.
#[tokio::test]
async fn health_transitions() {
    let server = TestServer::start(&[]).await;
    let mut watch = server
        .health()
        .await
        .watch(HealthCheckRequest {
            service: unclip_prior::SERVICE_NAME.into(),
        })
        .await
        .unwrap()
        .into_inner();
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
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// GetInfo describes karlo-tiny, its defaults, the prior component and the configured limits.
#[tokio::test]
async fn get_info() {
    let server = TestServer::serving(&[
        "--max-batch",
        "8",
        "--max-images-per-input",
        "5",
        "--max-best-of",
        "4",
    ])
    .await;
    let info = server
        .prior()
        .await
        .get_info(GetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(karlo_tiny().join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(info.model_id, "karlo-tiny");
    assert_eq!(info.version, manifest["version"].as_str().unwrap());
    assert_eq!(info.service, "unclip.v1.PriorService");
    assert_eq!(info.device, "cpu");
    assert_eq!((info.embedding_dim, info.context_length), (32, 77));
    assert_eq!(info.components, vec!["prior"]);
    let d = info.defaults.unwrap();
    assert_eq!((d.prior_steps, d.prior_guidance_scale), (25, 4.0));
    let l = info.limits.unwrap();
    assert_eq!(
        (l.max_batch, l.max_images_per_input, l.max_best_of),
        (8, 5, 4)
    );
    assert_eq!((l.min_steps, l.max_steps), (2, 1000));
    server.stop().await.unwrap();
}

/// Reflection (v1 and v1alpha) lists the prior, health and reflection services.
#[tokio::test]
async fn reflection_lists_services() {
    use tonic_reflection::pb::{v1, v1alpha};
    let server = TestServer::serving(&[]).await;

    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut client =
        v1::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let response = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("unexpected reflection response {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "unclip.v1.PriorService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }

    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "unclip.v1.PriorService".into(),
            ),
        ),
    };
    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let response = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            response.message_response,
            Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
        ),
        "{response:?}"
    );
    server.stop().await.unwrap();
}

/// A Sample in flight when shutdown starts still completes; afterwards the port is closed.
#[tokio::test]
async fn shutdown_finishes_calls_in_flight() {
    let server = TestServer::serving(&[]).await;
    let client = server.prior().await;
    // 4 prompts × 16 images × 400 guided steps: long enough to be in flight at shutdown.
    let request = PriorSampleRequest {
        text: Some(synthetic_encoding(4, 77, 32)),
        num_images: 16,
        steps: 400,
        ..Default::default()
    };
    let addr = server.addr;
    let (mut heavy_client, mut barrier_client) = (client.clone(), client.clone());
    // join! polls the heavy call first, so it takes the first stream of the shared connection;
    // once the later GetInfo has been answered, the server has accepted the heavy call.
    let (heavy, stopped) = tokio::join!(heavy_client.sample(request), async move {
        barrier_client.get_info(GetInfoRequest {}).await.unwrap();
        server.stop().await
    });
    let embeds = heavy
        .expect("the call in flight completes")
        .into_inner()
        .image_embeds
        .unwrap();
    assert_eq!(embeds.shape, vec![64, 32]);
    stopped.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the port must be closed"
    );
}

/// A model folder without a manifest, or a missing ONNX Runtime library, stops the server with
/// an error naming the problem.
#[tokio::test]
async fn startup_failures_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(&[]);
    config.model = dir.path().to_path_buf();
    let e = TestServer::start_with(config)
        .await
        .join()
        .await
        .unwrap_err();
    let message = format!("{e:#}");
    assert!(
        message.contains("opening the model repository"),
        "{message}"
    );
    assert!(message.contains("no manifest.json in"), "{message}");

    let e = TestServer::start(&["--ort-library", "/nonexistent/libonnxruntime.so.1.32.0"])
        .await
        .join()
        .await
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("/nonexistent/libonnxruntime.so.1.32.0 does not exist"),
        "{e:#}"
    );
}

/// Flags parse with their defaults.
#[test]
fn flags() {
    let config = Config::try_parse_from(["unclip-prior", "--model", "m"]).unwrap();
    assert_eq!(config.listen.port(), 50052);
    assert_eq!(
        (
            config.max_batch,
            config.max_images_per_input,
            config.max_best_of
        ),
        (64, 16, 8)
    );
    assert_eq!(config.max_rows_per_call, 64);
    assert_eq!(config.serve.max_message_bytes, 64 << 20);
    assert_eq!(config.serve.shutdown_grace_secs, 30);
}
