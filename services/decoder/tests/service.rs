//! The service's life cycle over real gRPC: health transitions, GetInfo, reflection, graceful
//! shutdown with a call in flight, cancellation, and start-up failures reported as errors.

mod common;

use std::sync::atomic::AtomicBool;

use clap::Parser;
use common::{Decoder, TestServer, load_graphs};
use ndarray::{Array1, Array2, ArrayD, IxDyn};
use unclip_decoder::Config;
use unclip_decoder::sampling::{UpsamplerGraph, UpsamplerGraphs};
use unclip_model_server::ServiceError;
use unclip_proto::v1::{DecodeRequest, GetInfoRequest, ImageFormat, SamplingOptions, Tensor};
use unclip_testkit::{ServingStatus, checks, karlo_tiny};

unclip_testkit::life_cycle_tests!(Decoder);

/// Before the model is ready, calls are UNAVAILABLE rather than queued.
#[tokio::test]
async fn calls_before_serving_are_unavailable() {
    let server = TestServer::start(&[]).await;
    let mut client = server.client().await;
    // The model cannot have loaded yet: loading hashes files and builds four sessions.
    match client.get_info(GetInfoRequest {}).await {
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::Unavailable);
            assert_eq!(status.message(), "the model is still loading");
        }
        Ok(_) => assert_eq!(server.status("").await, ServingStatus::Serving),
    }
    server.wait_serving().await;
    server.stop().await.unwrap();
}

/// GetInfo describes karlo-tiny, the decoder's components, its defaults and limits.
#[tokio::test]
async fn get_info() {
    let server = TestServer::serving(&["--max-batch", "8", "--max-images-per-input", "4"]).await;
    let info = checks::karlo_tiny_info(&server).await;
    assert_eq!(info.service, "unclip.v1.DecoderService");
    assert_eq!(info.decoder_image_size, 32);
    assert_eq!(checks::upsampler_sizes(&info), vec![(32, 64)]);
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

/// A Decode in flight when shutdown starts still completes; afterwards the port is closed.
#[tokio::test]
async fn shutdown_finishes_calls_in_flight() {
    let server = TestServer::serving(&[]).await;
    let request = DecodeRequest {
        image_embeds: Some(Tensor::from_array(&Array2::<f32>::zeros((2, 32)))),
        sampling: Some(SamplingOptions {
            steps: 12,
            ..Default::default()
        }),
        format: ImageFormat::Tensor as i32,
        ..Default::default()
    };
    let response = checks::shutdown_finishes_calls_in_flight(server, async move |mut client| {
        client.decode(request).await
    })
    .await;
    assert_eq!(response.samples.unwrap().shape, vec![2, 3, 32, 32]);
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
