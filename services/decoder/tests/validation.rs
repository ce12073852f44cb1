//! Bad requests get INVALID_ARGUMENT naming the field and the limit, and the service stays
//! healthy and keeps answering.

mod common;

use common::TestServer;
use ndarray::{Array2, Array3, ArrayD, IxDyn};
use tonic::Code;
use unclip_proto::v1::{
    DecodeRequest, DecodeResponse, ImageFormat, InpaintSpec, InvertRequest, SamplingOptions,
    Tensor, TextEncoding, UpsampleRequest,
};
use unclip_sampler::pixels::byte_to_signed;
use unclip_testkit::assert_status;

const INVALID: Code = Code::InvalidArgument;

fn embeds(rows: usize, d: usize) -> Option<Tensor> {
    Some(Tensor::from_array(&Array2::<f32>::from_elem(
        (rows, d),
        0.1,
    )))
}

fn decode_request() -> DecodeRequest {
    DecodeRequest {
        image_embeds: embeds(1, 32),
        sampling: Some(SamplingOptions {
            steps: 2,
            ..Default::default()
        }),
        format: ImageFormat::Tensor as i32,
        ..Default::default()
    }
}

fn text(rows: usize, l: usize, d: usize) -> TextEncoding {
    TextEncoding {
        text_embeds: Some(Tensor::from_array(&Array2::<f32>::zeros((rows, d)))),
        last_hidden_state: Some(Tensor::from_array(&Array3::<f32>::zeros((rows, l, d)))),
        attention_mask: Some(Tensor::from_array(&Array2::from_elem((rows, l), true))),
        ..Default::default()
    }
}

fn png(width: u32, height: u32) -> bytes::Bytes {
    unclip_testkit::png(&image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([x as u8, y as u8, 7])
    }))
}

fn low_res(n: usize, side: usize) -> Option<Tensor> {
    Some(Tensor::from_array(&ArrayD::from_shape_fn(
        IxDyn(&[n, 3, side, side]),
        |d| byte_to_signed((d[2] * 8 + d[3]) as u8),
    )))
}

/// Every limit of Decode, named; afterwards the service is SERVING and answers.
#[tokio::test]
async fn decode_refusals() {
    let server = TestServer::serving(&["--max-batch", "4", "--max-images-per-input", "3"]).await;
    let mut client = server.client().await;
    let call = |r: DecodeRequest| {
        let mut client = client.clone();
        async move { client.decode(r).await.map(|r| r.into_inner()) }
    };
    let nan = {
        let mut e = Array2::<f32>::zeros((1, 32));
        e[[0, 3]] = f32::NAN;
        Some(Tensor::from_array(&e))
    };
    let cases: Vec<(DecodeRequest, &str)> = vec![
        (
            DecodeRequest {
                image_embeds: None,
                ..decode_request()
            },
            "image_embeds: is required",
        ),
        (
            DecodeRequest {
                image_embeds: embeds(1, 16),
                ..decode_request()
            },
            "image_embeds: must have shape [batch, 32], got [1, 16]",
        ),
        (
            DecodeRequest {
                image_embeds: nan,
                ..decode_request()
            },
            "image_embeds: must be finite, element 3 is NaN",
        ),
        (
            DecodeRequest {
                image_embeds: embeds(0, 32),
                ..decode_request()
            },
            "image_embeds: must hold 1..=4 embeddings, got 0",
        ),
        (
            DecodeRequest {
                image_embeds: embeds(5, 32),
                ..decode_request()
            },
            "image_embeds: must hold 1..=4 embeddings, got 5",
        ),
        (
            DecodeRequest {
                num_images: 4,
                ..decode_request()
            },
            "num_images: must be 1..=3 (0 for 1), got 4",
        ),
        (
            DecodeRequest {
                image_embeds: embeds(2, 32),
                num_images: 3,
                ..decode_request()
            },
            "num_images: 2 embeddings x 3 images is 6 images, the limit per call is 4",
        ),
        (
            DecodeRequest {
                sampling: Some(SamplingOptions {
                    steps: 1,
                    ..Default::default()
                }),
                ..decode_request()
            },
            "sampling.steps: must be 2..=1000 (0 for the default 25), got 1",
        ),
        (
            DecodeRequest {
                sampling: Some(SamplingOptions {
                    steps: 1001,
                    ..Default::default()
                }),
                ..decode_request()
            },
            "sampling.steps: must be 2..=1000 (0 for the default 25), got 1001",
        ),
        (
            DecodeRequest {
                sampling: Some(SamplingOptions {
                    steps: 2,
                    eta: 0.5,
                    ..Default::default()
                }),
                ..decode_request()
            },
            "sampling.eta: must be 0 unless sampler is SAMPLER_DDIM, got 0.5",
        ),
        (
            DecodeRequest {
                sampling: Some(SamplingOptions {
                    sampler: 2,
                    steps: 2,
                    eta: 1.5,
                }),
                ..decode_request()
            },
            "sampling.eta: must be a finite number in 0..=1, got 1.5",
        ),
        (
            DecodeRequest {
                sampling: Some(SamplingOptions {
                    sampler: 7,
                    steps: 2,
                    eta: 0.0,
                }),
                ..decode_request()
            },
            "sampling.sampler: 7 is not a Sampler value",
        ),
        (
            DecodeRequest {
                guidance_scale: Some(f32::INFINITY),
                ..decode_request()
            },
            "guidance_scale: must be a finite number in 0..=100 (unset for the default 8), got inf",
        ),
        (
            DecodeRequest {
                image_embeds: embeds(3, 32),
                text: Some(text(2, 77, 32)),
                ..decode_request()
            },
            "text.text_embeds: must hold 1 prompt or 3 (one per image embedding), got 2",
        ),
        (
            DecodeRequest {
                text: Some(text(1, 76, 32)),
                ..decode_request()
            },
            "text.last_hidden_state: must have shape [1, 77, 32], got [1, 76, 32]",
        ),
        (
            DecodeRequest {
                num_images: 2,
                init_noise: low_res(1, 32),
                ..decode_request()
            },
            "init_noise: must have shape [2, 3, 32, 32], got [1, 3, 32, 32]",
        ),
        (
            DecodeRequest {
                inpaint: Some(InpaintSpec {
                    samples: low_res(1, 32),
                    mask: Some(Tensor::from_array(&Array2::from_elem((64, 64), true))),
                    ..Default::default()
                }),
                ..decode_request()
            },
            "inpaint.mask: must have shape [32, 32] or [1, 1, 32, 32], got [64, 64]",
        ),
        (
            DecodeRequest {
                inpaint: Some(InpaintSpec {
                    samples: low_res(1, 32),
                    mask: Some(Tensor::from_array(&Array2::<f32>::from_elem((32, 32), 2.0))),
                    ..Default::default()
                }),
                ..decode_request()
            },
            "inpaint.mask: values must be in 0..=1 (1 = keep), element 0 is 2",
        ),
        (
            DecodeRequest {
                inpaint: Some(InpaintSpec {
                    samples: low_res(1, 32),
                    ..Default::default()
                }),
                ..decode_request()
            },
            "inpaint.mask: is required",
        ),
        (
            DecodeRequest {
                inpaint: Some(InpaintSpec {
                    mask: Some(Tensor::from_array(&Array2::from_elem((32, 32), true))),
                    ..Default::default()
                }),
                ..decode_request()
            },
            "inpaint.image: set exactly one of image and samples",
        ),
        (
            DecodeRequest {
                inpaint: Some(InpaintSpec {
                    image: bytes::Bytes::from_static(b"GIF89a"),
                    mask: Some(Tensor::from_array(&Array2::from_elem((32, 32), true))),
                    ..Default::default()
                }),
                ..decode_request()
            },
            "inpaint.image: is not a PNG, JPEG or WebP image",
        ),
        (
            DecodeRequest {
                format: 9,
                ..decode_request()
            },
            "format: 9 is not an ImageFormat value",
        ),
    ];
    for (request, message) in cases {
        assert_status(call(request).await, INVALID, message);
    }
    let ok: DecodeResponse = call(decode_request()).await.unwrap();
    assert!(ok.samples.is_some());
    assert_eq!(
        server.status("").await,
        unclip_testkit::ServingStatus::Serving
    );
    client.decode(decode_request()).await.unwrap();
    server.stop().await.unwrap();
}

/// Every limit of Upsample and Invert, named; afterwards the service still answers.
#[tokio::test]
async fn upsample_and_invert_refusals() {
    let server = TestServer::serving(&["--max-batch", "4"]).await;
    let client = server.client().await;
    let upsample = |r: UpsampleRequest| {
        let mut client = client.clone();
        async move { client.upsample(r).await.map(|r| r.into_inner()) }
    };
    let base = || UpsampleRequest {
        samples: low_res(1, 32),
        sampling: Some(SamplingOptions {
            steps: 2,
            ..Default::default()
        }),
        format: ImageFormat::Tensor as i32,
        ..Default::default()
    };
    let cases: Vec<(UpsampleRequest, &str)> = vec![
        (
            UpsampleRequest { stage: 1, ..base() },
            "stage: must be below 1 (the model has 1 upsampler stage), got 1",
        ),
        (
            UpsampleRequest {
                samples: None,
                images: vec![png(48, 40)],
                ..base()
            },
            "images[0]: must be 32x32 pixels (upsamplers[0].input_size), got 48x40",
        ),
        (
            UpsampleRequest {
                samples: None,
                images: vec![
                    png(32, 32),
                    bytes::Bytes::from_static(b"\x89PNG\r\n\x1a\nbroken"),
                ],
                ..base()
            },
            "images[1]: could not be decoded as PNG: unexpected end of file",
        ),
        (
            UpsampleRequest {
                samples: None,
                images: vec![bytes::Bytes::from_static(b"hello")],
                ..base()
            },
            "images[0]: is not a PNG, JPEG or WebP image",
        ),
        (
            UpsampleRequest {
                samples: None,
                ..base()
            },
            "images: must hold 1..=4 images (or set samples), got 0",
        ),
        (
            UpsampleRequest {
                images: vec![png(32, 32)],
                ..base()
            },
            "images: set exactly one of images and samples, got both",
        ),
        (
            UpsampleRequest {
                samples: low_res(1, 64),
                ..base()
            },
            "samples: must have shape [batch, 3, 32, 32], got [1, 3, 64, 64]",
        ),
        (
            UpsampleRequest {
                samples: low_res(5, 32),
                ..base()
            },
            "samples: must hold 1..=4 images, got 5",
        ),
        (
            UpsampleRequest {
                samples: low_res(2, 32),
                inpaint: Some(InpaintSpec {
                    samples: low_res(1, 64),
                    mask: Some(Tensor::from_array(&Array2::from_elem((32, 32), true))),
                    ..Default::default()
                }),
                ..base()
            },
            "inpaint.mask: must have shape [64, 64] or [1, 1, 64, 64] or [2, 1, 64, 64], got [32, 32]",
        ),
        (
            UpsampleRequest {
                samples: low_res(2, 32),
                inpaint: Some(InpaintSpec {
                    samples: low_res(3, 64),
                    mask: Some(Tensor::from_array(&Array2::from_elem((64, 64), true))),
                    ..Default::default()
                }),
                ..base()
            },
            "inpaint.samples: must hold 1 or 2 images, got 3",
        ),
    ];
    for (request, message) in cases {
        assert_status(upsample(request).await, INVALID, message);
    }

    let invert = |r: InvertRequest| {
        let mut client = client.clone();
        async move { client.invert(r).await.map(|r| r.into_inner()) }
    };
    let base = || InvertRequest {
        samples: low_res(1, 32),
        image_embeds: embeds(1, 32),
        steps: 2,
        ..Default::default()
    };
    let cases: Vec<(InvertRequest, &str)> = vec![
        (
            InvertRequest {
                image_embeds: embeds(2, 32),
                ..base()
            },
            "image_embeds: must have shape [1, 32], got [2, 32]",
        ),
        (
            InvertRequest {
                steps: 5000,
                ..base()
            },
            "steps: must be 2..=1000 (0 for the default 25), got 5000",
        ),
        (
            InvertRequest {
                samples: None,
                images: vec![png(64, 64)],
                ..base()
            },
            "images[0]: must be 32x32 pixels (decoder_image_size), got 64x64",
        ),
        (
            InvertRequest {
                guidance_scale: Some(-1.0),
                ..base()
            },
            "guidance_scale: must be a finite number in 0..=100 (unset for the default 1), got -1",
        ),
    ];
    for (request, message) in cases {
        assert_status(invert(request).await, INVALID, message);
    }

    upsample(base_upsample()).await.unwrap();
    invert(base()).await.unwrap();
    assert_eq!(
        server.status("").await,
        unclip_testkit::ServingStatus::Serving
    );
    server.stop().await.unwrap();
}

fn base_upsample() -> UpsampleRequest {
    UpsampleRequest {
        samples: low_res(1, 32),
        sampling: Some(SamplingOptions {
            steps: 2,
            ..Default::default()
        }),
        format: ImageFormat::Tensor as i32,
        ..Default::default()
    }
}

/// Messages sized for 1024×1024 images get through (tonic's default limit is 4 MiB): a 12 MiB
/// float tensor reaches validation, which names the size problem.
#[tokio::test]
async fn megapixel_messages_reach_validation() {
    let server = TestServer::serving(&[]).await;
    let mut client = server.client().await;
    let result = client
        .upsample(UpsampleRequest {
            samples: low_res(1, 1024),
            ..base_upsample()
        })
        .await;
    assert_status(
        result,
        INVALID,
        "samples: must have shape [batch, 3, 32, 32], got [1, 3, 1024, 1024]",
    );
    server.stop().await.unwrap();
}
