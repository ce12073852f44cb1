//! The service's life cycle over real gRPC: health transitions, GetInfo, reflection, graceful
//! shutdown with a call in flight, and start-up failures reported as errors.

mod common;

use clap::Parser;
use common::{Prior, TestServer, synthetic_encoding};
use unclip_prior::Config;
use unclip_proto::v1::PriorSampleRequest;
use unclip_testkit::checks;

unclip_testkit::life_cycle_tests!(Prior);

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
    let info = checks::karlo_tiny_info(&server).await;
    assert_eq!(info.service, "unclip.v1.PriorService");
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

/// A Sample in flight when shutdown starts still completes; afterwards the port is closed.
#[tokio::test]
async fn shutdown_finishes_calls_in_flight() {
    let server = TestServer::serving(&[]).await;
    // 4 prompts × 16 images × 400 guided steps: long enough to be in flight at shutdown.
    let request = PriorSampleRequest {
        text: Some(synthetic_encoding(4, 77, 32)),
        num_images: 16,
        steps: 400,
        ..Default::default()
    };
    let response = checks::shutdown_finishes_calls_in_flight(server, async move |mut client| {
        client.sample(request).await
    })
    .await;
    assert_eq!(response.image_embeds.unwrap().shape, vec![64, 32]);
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
    let serve = config.serve.serve_config("unclip.v1.PriorService");
    assert_eq!(serve.shutdown_grace, std::time::Duration::from_secs(30));
    assert_eq!(serve.drain_delay, std::time::Duration::from_secs(1));
}
