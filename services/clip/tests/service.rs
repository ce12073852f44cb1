//! The service's life cycle over real gRPC: health transitions, GetInfo, reflection, graceful
//! shutdown with a call in flight, and start-up failures reported as errors.

mod common;

use std::time::{Duration, Instant};

use clap::Parser;
use common::{TestServer, karlo_tiny};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use unclip_clip::Config;
use unclip_proto::v1::{EncodeImageRequest, GetInfoRequest};

/// Health goes NOT_SERVING → SERVING once the model is loaded and warmed up (never SERVING
/// before), then NOT_SERVING on shutdown; open Watch streams end so shutdown is prompt.
#[tokio::test]
async fn health_transitions() {
    let server = TestServer::start(&["--shutdown-grace-secs", "20"]).await;
    let mut health = server.health().await;
    let mut watch = health
        .watch(HealthCheckRequest {
            service: unclip_clip::SERVICE_NAME.into(),
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

/// GetInfo describes karlo-tiny, its defaults and the configured limits.
#[tokio::test]
async fn get_info() {
    let server = TestServer::serving(&["--max-batch", "8"]).await;
    let info = server
        .clip()
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
    assert_eq!(info.service, "unclip.v1.ClipService");
    assert_eq!(info.device, "cpu");
    assert_eq!((info.embedding_dim, info.context_length), (32, 77));
    assert_eq!((info.clip_image_size, info.decoder_image_size), (32, 32));
    assert_eq!(info.upsamplers.len(), 1);
    assert_eq!(
        (
            info.upsamplers[0].input_size,
            info.upsamplers[0].output_size
        ),
        (32, 64)
    );
    assert_eq!(info.components, vec!["text_encoder", "image_encoder"]);
    let d = info.defaults.unwrap();
    assert_eq!(
        (d.prior_steps, d.decoder_steps, d.upsampler_steps),
        (25, 25, 7)
    );
    assert_eq!(
        (d.prior_guidance_scale, d.decoder_guidance_scale),
        (4.0, 8.0)
    );
    let l = info.limits.unwrap();
    assert_eq!(l.max_batch, 8);
    assert_eq!((l.max_image_bytes, l.max_image_side), (16 << 20, 4096));
    server.stop().await.unwrap();
}

/// Reflection (v1 and v1alpha) lists the CLIP, health and reflection services.
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
        "unclip.v1.ClipService",
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
                "unclip.v1.ClipService".into(),
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

/// A call in flight when shutdown starts still completes; afterwards the port is closed.
#[tokio::test]
async fn shutdown_finishes_calls_in_flight() {
    let server = TestServer::serving(&[]).await;
    let client = server.clip().await;
    let image = {
        let rgb = image::RgbImage::from_fn(1024, 1024, |x, y| {
            let v = x
                .wrapping_mul(2654435761)
                .wrapping_add(y.wrapping_mul(40503))
                >> 8;
            image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
        });
        let mut bytes = Vec::new();
        rgb.write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
        bytes
    };
    let request = EncodeImageRequest {
        images: vec![image.into(); 4],
    };
    let addr = server.addr;
    let mut heavy_client = client.clone();
    let mut barrier_client = client.clone();
    // join! polls the heavy call first, so it takes the first stream of the shared connection;
    // once the later GetInfo has been answered, the server has certainly accepted the heavy
    // call's stream, and shutdown must let it finish.
    let (heavy, stopped) = tokio::join!(heavy_client.encode_image(request), async move {
        barrier_client.get_info(GetInfoRequest {}).await.unwrap();
        server.stop().await
    });
    let embeds = heavy
        .expect("the call in flight completes")
        .into_inner()
        .image_embeds
        .unwrap();
    assert_eq!(embeds.shape, vec![4, 32]);
    stopped.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the port must be closed"
    );
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

/// A missing ONNX Runtime library and an unusable CUDA device are start-up errors with clear
/// messages (no panic, no silent CPU fall-back).
#[tokio::test]
async fn runtime_problems_are_startup_errors() {
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

    let server = TestServer::start(&["--device", "cuda:0"]).await;
    match server.join().await {
        Ok(()) => unreachable!("run only returns Ok after shutdown"),
        Err(e) => {
            let message = format!("{e:#}");
            assert!(message.contains("cuda:0"), "{message}");
        }
    }
}

/// Flags with environment fallbacks parse; a bad device is refused with the accepted forms.
#[test]
fn flags() {
    let config = Config::try_parse_from([
        "unclip-clip",
        "--model",
        "m",
        "--device",
        "cuda:1",
        "--intra-threads",
        "4",
    ])
    .unwrap();
    assert_eq!(config.runtime.device.to_string(), "cuda:1");
    assert_eq!(config.runtime.intra_threads, 4);
    assert_eq!(config.max_batch, 64);
    let e = Config::try_parse_from(["unclip-clip", "--model", "m", "--device", "gpu"]).unwrap_err();
    assert!(
        e.to_string().contains("expected cpu, cuda or cuda:N"),
        "{e}"
    );
}
