//! The service's life cycle over real gRPC: health transitions, GetInfo, reflection, graceful
//! shutdown with a call in flight, and start-up failures reported as errors.

mod common;

use clap::Parser;
use common::{Clip, TestServer};
use unclip_clip::Config;
use unclip_proto::v1::EncodeImageRequest;
use unclip_testkit::checks;

unclip_testkit::life_cycle_tests!(Clip);

/// GetInfo describes karlo-tiny, its defaults and the configured limits.
#[tokio::test]
async fn get_info() {
    let server = TestServer::serving(&["--max-batch", "8"]).await;
    let info = checks::karlo_tiny_info(&server).await;
    assert_eq!(info.service, "unclip.v1.ClipService");
    assert_eq!((info.clip_image_size, info.decoder_image_size), (32, 32));
    assert_eq!(checks::upsampler_sizes(&info), vec![(32, 64)]);
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

/// A call in flight when shutdown starts still completes; afterwards the port is closed.
#[tokio::test]
async fn shutdown_finishes_calls_in_flight() {
    let server = TestServer::serving(&[]).await;
    let image = {
        let rgb = image::RgbImage::from_fn(1024, 1024, |x, y| {
            let v = x
                .wrapping_mul(2654435761)
                .wrapping_add(y.wrapping_mul(40503))
                >> 8;
            image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
        });
        unclip_testkit::png(&rgb)
    };
    let request = EncodeImageRequest {
        images: vec![image; 4],
    };
    let response = checks::shutdown_finishes_calls_in_flight(server, async move |mut client| {
        client.encode_image(request).await
    })
    .await;
    assert_eq!(response.image_embeds.unwrap().shape, vec![4, 32]);
}

/// An unusable CUDA device is a start-up error with a clear message (no panic, no silent CPU
/// fall-back).
#[tokio::test]
async fn cuda_problems_are_startup_errors() {
    let message = TestServer::start(&["--device", "cuda:0"])
        .await
        .startup_error()
        .await;
    assert!(message.contains("cuda:0"), "{message}");
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
