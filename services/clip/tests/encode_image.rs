//! EncodeImage over real gRPC: parity with the image embedding diffusers recorded for the
//! variation fixture, format handling, and refusal of bad images.

mod common;

use std::io::Cursor;

use common::TestServer;
use image::{ImageFormat, RgbImage, RgbaImage};
use ndarray::{ArrayD, Axis};
use tonic::Code;
use unclip_proto::v1::EncodeImageRequest;
use unclip_testkit::{Fixture, assert_status, karlo_tiny, max_abs_diff};

async fn encode(server: &TestServer, images: Vec<Vec<u8>>) -> Result<ArrayD<f32>, tonic::Status> {
    let response = server
        .client()
        .await
        .encode_image(EncodeImageRequest {
            images: images.into_iter().map(Into::into).collect(),
        })
        .await?;
    Ok(response
        .into_inner()
        .image_embeds
        .expect("embeddings")
        .to_f32_array()
        .unwrap())
}

fn variation_png() -> Vec<u8> {
    std::fs::read(karlo_tiny().join("fixtures/variation_input.png")).unwrap()
}

fn encoded(image: &image::DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), format)
        .unwrap();
    bytes
}

/// A noise image of the given size (deterministic).
fn noise(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let v = x
            .wrapping_mul(2654435761)
            .wrapping_add(y.wrapping_mul(40503))
            >> 8;
        image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
    })
}

/// The variation fixture's PNG embeds to the recorded image embedding (within 1e-5).
#[tokio::test]
async fn matches_recorded_embedding() {
    let server = TestServer::serving(&[]).await;
    let mut fixture = Fixture::open("variation_seed0_steps2-2");
    assert_eq!(fixture.json["settings"]["image"], "variation_input.png");
    let got = encode(&server, vec![variation_png()]).await.unwrap();
    let want = fixture.value("image_embeddings");
    let d = max_abs_diff(&got, &want);
    assert!(d <= 1e-5, "image_embeds differ by {d}");
    server.stop().await.unwrap();
}

/// The same pixels as PNG, lossless WebP and RGBA PNG (alpha dropped) embed identically; a
/// JPEG of them embeds to a finite vector; rows keep request order.
#[tokio::test]
async fn formats_and_batches() {
    let server = TestServer::serving(&[]).await;
    let png = variation_png();
    let rgb = image::load_from_memory(&png).unwrap();
    let webp = encoded(&rgb, ImageFormat::WebP);
    let rgba = RgbaImage::from_fn(rgb.width(), rgb.height(), |x, y| {
        let p = rgb.as_rgb8().unwrap().get_pixel(x, y);
        image::Rgba([p[0], p[1], p[2], (x * 5) as u8])
    });
    let rgba_png = encoded(&image::DynamicImage::ImageRgba8(rgba), ImageFormat::Png);
    let jpeg = encoded(&rgb, ImageFormat::Jpeg);
    let other = encoded(
        &image::DynamicImage::ImageRgb8(noise(64, 64)),
        ImageFormat::Png,
    );

    let got = encode(&server, vec![png.clone(), webp, rgba_png, jpeg, other])
        .await
        .unwrap();
    assert_eq!(got.shape(), &[5, 32]);
    let row = |i: usize| got.index_axis(Axis(0), i).to_owned();
    assert_eq!(row(1), row(0), "WebP");
    assert_eq!(row(2), row(0), "RGBA PNG");
    assert!(row(3).iter().all(|v| v.is_finite()));
    assert_ne!(row(4), row(0));
    let single = encode(&server, vec![png]).await.unwrap();
    assert!(max_abs_diff(&single, &row(0).insert_axis(Axis(0)).into_dyn()) <= 1e-6);
    server.stop().await.unwrap();
}

/// Two 1024×1024 images in one request (more than gRPC's default 4 MiB) are accepted.
#[tokio::test]
async fn large_images_fit_the_message_limits() {
    let server = TestServer::serving(&[]).await;
    let big = encoded(
        &image::DynamicImage::ImageRgb8(noise(1024, 1024)),
        ImageFormat::Png,
    );
    assert!(
        big.len() * 2 > 4 << 20,
        "the request must exceed 4 MiB, it is {} bytes",
        big.len() * 2
    );
    let got = encode(&server, vec![big.clone(), big]).await.unwrap();
    assert_eq!(got.shape(), &[2, 32]);
    assert_eq!(got.index_axis(Axis(0), 0), got.index_axis(Axis(0), 1));
    server.stop().await.unwrap();
}

/// Each bad image gets INVALID_ARGUMENT naming it and the limit; the service stays SERVING.
#[tokio::test]
async fn refuses_bad_images() {
    let server = TestServer::serving(&[
        "--max-batch",
        "3",
        "--max-image-bytes",
        "10000",
        "--max-image-side",
        "100",
    ])
    .await;
    let png = variation_png();
    assert!(
        png.len() < 10000,
        "the fixture PNG must be under the byte limit"
    );
    assert_status(
        encode(&server, vec![]).await,
        Code::InvalidArgument,
        "images: must hold 1..=3 images, got 0",
    );
    assert_status(
        encode(&server, vec![png.clone(); 4]).await,
        Code::InvalidArgument,
        "images: must hold 1..=3 images, got 4",
    );
    assert_status(
        encode(&server, vec![png.clone(), b"GIF89a not supported".to_vec()]).await,
        Code::InvalidArgument,
        "images[1]: is not a PNG, JPEG or WebP image",
    );
    let truncated = png[..png.len() / 2].to_vec();
    let status = encode(&server, vec![truncated]).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("images[0]: could not be decoded as PNG: "),
        "{}",
        status.message()
    );
    let wide = encoded(
        &image::DynamicImage::ImageRgb8(RgbImage::new(101, 10)),
        ImageFormat::Png,
    );
    assert_status(
        encode(&server, vec![wide]).await,
        Code::InvalidArgument,
        "images[0]: declares 101x10 pixels, the limit is 100 on a side",
    );
    let heavy = encoded(
        &image::DynamicImage::ImageRgb8(noise(90, 90)),
        ImageFormat::Png,
    );
    assert_status(
        encode(&server, vec![png.clone(), png.clone(), heavy.clone()]).await,
        Code::InvalidArgument,
        &format!("images[2]: is {} bytes, the limit is 10000", heavy.len()),
    );
    assert_eq!(
        server.status("").await,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    assert_eq!(encode(&server, vec![png]).await.unwrap().shape(), &[1, 32]);
    server.stop().await.unwrap();
}

/// Without an image encoder (here: disabled by flag) EncodeImage is FAILED_PRECONDITION, even
/// for an empty batch, and EncodeText still works.
#[tokio::test]
async fn text_only_has_no_image_encoder() {
    let server = TestServer::serving(&["--text-only"]).await;
    let message =
        "model karlo-tiny is served without an image encoder, so EncodeImage is unavailable";
    assert_status(
        encode(&server, vec![variation_png()]).await,
        Code::FailedPrecondition,
        message,
    );
    assert_status(
        encode(&server, vec![]).await,
        Code::FailedPrecondition,
        message,
    );
    let info = server
        .client()
        .await
        .get_info(unclip_proto::v1::GetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.components, vec!["text_encoder"]);
    server.stop().await.unwrap();
}
