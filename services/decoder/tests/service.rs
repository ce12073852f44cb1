//! The service's life cycle over real gRPC: health transitions, GetInfo, reflection, graceful
//! shutdown with a call in flight, cancellation, and start-up failures reported as errors.

mod common;

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use clap::Parser;
use common::{TestServer, karlo_tiny, load_graphs};
use ndarray::{Array1, Array2, ArrayD, IxDyn};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use unclip_decoder::Config;
use unclip_decoder::sampling::{UpsamplerGraph, UpsamplerGraphs};
use unclip_proto::v1::{DecodeRequest, GetInfoRequest, ImageFormat, SamplingOptions, Tensor};
use unclip_server::ServiceError;

/// Health goes NOT_SERVING → SERVING once the model is loaded and a warm-up Decode and
/// Upsample succeeded (never SERVING before), then NOT_SERVING on shutdown; open Watch streams
/// end so shutdown is prompt.
#[tokio::test]
async fn health_transitions() {
    let server = TestServer::start(&["--shutdown-grace-secs", "20"]).await;
    let mut health = server.health().await;
    let mut watch = health
        .watch(HealthCheckRequest {
            service: unclip_decoder::SERVICE_NAME.into(),
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
    assert_eq!(server.status().await, ServingStatus::Serving);

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

/// Before the model is ready, calls are UNAVAILABLE rather than queued.
#[tokio::test]
async fn calls_before_serving_are_unavailable() {
    let server = TestServer::start(&[]).await;
    let mut client = server.decoder().await;
    // The model cannot have loaded yet: loading hashes files and builds four sessions.
    match client.get_info(GetInfoRequest {}).await {
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::Unavailable);
            assert_eq!(status.message(), "the model is still loading");
        }
        Ok(_) => assert_eq!(server.status().await, ServingStatus::Serving),
    }
    server.wait_serving().await;
    server.stop().await.unwrap();
}

/// GetInfo describes karlo-tiny, the decoder's components, its defaults and limits.
#[tokio::test]
async fn get_info() {
    let server = TestServer::serving(&["--max-batch", "8", "--max-images-per-input", "4"]).await;
    let info = server
        .decoder()
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
    assert_eq!(info.service, "unclip.v1.DecoderService");
    assert_eq!(info.device, "cpu");
    assert_eq!((info.embedding_dim, info.context_length), (32, 77));
    assert_eq!(info.decoder_image_size, 32);
    assert_eq!(info.upsamplers.len(), 1);
    assert_eq!(
        (
            info.upsamplers[0].input_size,
            info.upsamplers[0].output_size
        ),
        (32, 64)
    );
    assert_eq!(
        info.components,
        vec!["text_proj", "decoder", "upsamplers[0]"]
    );
    let d = info.defaults.unwrap();
    assert_eq!((d.decoder_steps, d.upsampler_steps), (25, 7));
    assert_eq!(d.decoder_guidance_scale, 8.0);
    let l = info.limits.unwrap();
    assert_eq!((l.max_batch, l.max_images_per_input), (8, 4));
    assert_eq!((l.min_steps, l.max_steps), (2, 1000));
    assert_eq!((l.max_image_bytes, l.max_image_side), (16 << 20, 4096));
    server.stop().await.unwrap();
}

/// Reflection (v1 and v1alpha) lists the decoder, health and reflection services.
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
    let mut stream = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("unexpected reflection response {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "unclip.v1.DecoderService",
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
                "unclip.v1.DecoderService".into(),
            ),
        ),
    };
    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let mut stream = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    assert!(
        matches!(
            response.message_response,
            Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
        ),
        "{response:?}"
    );
    server.stop().await.unwrap();
}

/// A Decode in flight when shutdown starts still completes; afterwards the port is closed.
#[tokio::test]
async fn shutdown_finishes_calls_in_flight() {
    let server = TestServer::serving(&[]).await;
    let client = server.decoder().await;
    let request = DecodeRequest {
        image_embeds: Some(Tensor::from_array(&Array2::<f32>::zeros((2, 32)))),
        sampling: Some(SamplingOptions {
            steps: 12,
            ..Default::default()
        }),
        format: ImageFormat::Tensor as i32,
        ..Default::default()
    };
    let addr = server.addr;
    let mut heavy_client = client.clone();
    let mut barrier_client = client.clone();
    // join! polls the heavy call first, so it takes the first stream of the shared connection;
    // once the later GetInfo has been answered, the server has certainly accepted the heavy
    // call's stream, and shutdown must let it finish.
    let (heavy, stopped) = tokio::join!(heavy_client.decode(request), async move {
        barrier_client.get_info(GetInfoRequest {}).await.unwrap();
        server.stop().await
    });
    let samples = heavy
        .expect("the call in flight completes")
        .into_inner()
        .samples
        .unwrap();
    assert_eq!(samples.shape, vec![2, 3, 32, 32]);
    stopped.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the port must be closed"
    );
}

/// A request whose client has gone stops at its next model call.
#[test]
fn cancelled_requests_stop_at_the_next_model_call() {
    let (_repo, graphs) = load_graphs(&karlo_tiny());
    let cancelled = AtomicBool::new(true);
    let mut calls = graphs.calls(&cancelled);
    let sample = ArrayD::zeros(IxDyn(&[1, 6, 64, 64]));
    let e = calls
        .upsampler(
            0,
            UpsamplerGraph::First,
            &sample,
            &Array1::from_elem(1, 999),
        )
        .unwrap_err();
    assert!(matches!(e, ServiceError::Unavailable(_)), "{e}");
    let running = AtomicBool::new(false);
    let out = graphs
        .calls(&running)
        .upsampler(0, UpsamplerGraph::Last, &sample, &Array1::from_elem(1, 0))
        .unwrap();
    assert_eq!(out.shape(), &[1, 3, 64, 64]);
}

/// A model folder without a manifest stops the server with an error naming it.
#[tokio::test]
async fn bad_model_is_a_startup_error() {
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
}

/// A missing ONNX Runtime library is a start-up error with a clear message.
#[tokio::test]
async fn missing_runtime_is_a_startup_error() {
    let e = TestServer::start(&["--ort-library", "/nonexistent/libonnxruntime.so.1.32.0"])
        .await
        .join()
        .await
        .unwrap_err();
    assert!(
        format!("{e:#}")
            .contains("ONNX Runtime library: /nonexistent/libonnxruntime.so.1.32.0 does not exist"),
        "{e:#}"
    );
}

/// Flags with environment fallbacks parse, with the documented defaults.
#[test]
fn flags() {
    let config = Config::try_parse_from([
        "unclip-decoder",
        "--model",
        "m",
        "--device",
        "cuda:1",
        "--max-batch",
        "4",
    ])
    .unwrap();
    assert_eq!(config.runtime.device.to_string(), "cuda:1");
    assert_eq!(config.max_batch, 4);
    assert_eq!(config.max_images_per_input, 16);
    assert_eq!(config.listen.to_string(), "127.0.0.1:50053");
    assert_eq!(config.serve.max_message_bytes, 64 << 20);
    assert!(Config::try_parse_from(["unclip-decoder"]).is_err());
}
