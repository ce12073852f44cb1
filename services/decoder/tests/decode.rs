//! Decode, Upsample and Invert over real gRPC against karlo-tiny (and models/shapes):
//! formats, seeds per image, the cascade, DDIM, inversion and inpainting.

mod common;

use common::TestServer;
use ndarray::{Array2, ArrayD, Axis, IxDyn, s};
use tonic::transport::Channel;
use unclip_proto::StepEvent;
use unclip_proto::v1::decoder_service_client::DecoderServiceClient;
use unclip_proto::v1::{
    DecodeRequest, DecodeResponse, ImageFormat, InpaintSpec, InvertRequest, InvertResponse,
    Sampler, SamplingOptions, Tensor, TextEncoding, UpsampleRequest, UpsampleResponse,
};
use unclip_sampler::pixels::{byte_to_signed, signed_to_byte};
use unclip_sampler::{NoiseSource, NoiseStage};
use unclip_testkit::{Fixture, max_abs_diff};

type Client = DecoderServiceClient<Channel>;

/// `rows` deterministic embeddings of width `d` (standard-normal values).
fn embeddings(rows: usize, d: usize, seed: u64) -> Array2<f32> {
    let x = NoiseSource::new(seed, 0, NoiseStage::Prior).draw(&[rows, d]);
    x.into_dimensionality().unwrap()
}

/// The encodings of the two prompts of the batch-2 fixture ("horse", "A red cube …").
fn two_prompts() -> TextEncoding {
    let mut f = Fixture::open("t2i_batch2_seed0_steps2-2-2");
    TextEncoding {
        text_embeds: Some(Tensor::from_array(&f.value("prompt_text_embeds"))),
        last_hidden_state: Some(Tensor::from_array(&f.value("prompt_last_hidden_state"))),
        attention_mask: Some(Tensor::from_array(&f.value_bool("prompt_attention_mask"))),
        ..Default::default()
    }
}

/// Row `i` of every tensor of `text`.
fn text_row(text: &TextEncoding, i: usize) -> TextEncoding {
    let row_f = |t: &Option<Tensor>| {
        let a = t.as_ref().unwrap().to_f32_array().unwrap();
        Some(Tensor::from_array(
            &a.slice_axis(Axis(0), (i..i + 1).into()).to_owned(),
        ))
    };
    let mask = text
        .attention_mask
        .as_ref()
        .unwrap()
        .to_bool_array()
        .unwrap();
    TextEncoding {
        text_embeds: row_f(&text.text_embeds),
        last_hidden_state: row_f(&text.last_hidden_state),
        attention_mask: Some(Tensor::from_array(
            &mask.slice_axis(Axis(0), (i..i + 1).into()).to_owned(),
        )),
        ..Default::default()
    }
}

fn sampling(sampler: Sampler, steps: u32, eta: f32) -> Option<SamplingOptions> {
    Some(SamplingOptions {
        sampler: sampler as i32,
        steps,
        eta,
    })
}

async fn decode(client: &mut Client, request: DecodeRequest) -> DecodeResponse {
    client.decode(request).await.unwrap().into_inner()
}

fn samples(t: &Option<Tensor>) -> ArrayD<f32> {
    t.as_ref()
        .expect("a samples tensor")
        .to_f32_array()
        .unwrap()
}

/// Decodes a PNG into `[3, H, W]` model range.
fn png_to_signed(png: &[u8]) -> ArrayD<f32> {
    let rgb = unclip_testkit::rgb(png);
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    ArrayD::from_shape_fn(IxDyn(&[3, h, w]), |d| {
        byte_to_signed(rgb.get_pixel(d[2] as u32, d[1] as u32)[d[0]])
    })
}

/// Decode returns N = B × num_images images in both formats, the seeds and settings used,
/// the PNGs being the 8-bit rounding of the tensor; Upsample takes them on to 64 px from either
/// form.
#[tokio::test]
async fn decode_then_upsample_both_formats() {
    let server = TestServer::serving(&[]).await;
    let mut client = server.client().await;
    let response = decode(
        &mut client,
        DecodeRequest {
            image_embeds: Some(Tensor::from_array(&embeddings(2, 32, 1))),
            num_images: 2,
            seed: 5,
            sampling: sampling(Sampler::Unspecified, 3, 0.0),
            format: ImageFormat::PngAndTensor as i32,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(response.seeds, vec![5, 6, 7, 8]);
    assert_eq!((response.steps, response.guidance_scale), (3, 8.0));
    let x = samples(&response.samples);
    assert_eq!(x.shape(), &[4, 3, 32, 32]);
    assert!(x.iter().all(|v| (-1.0..=1.0).contains(v)));
    assert_eq!(response.images.len(), 4);
    for (k, png) in response.images.iter().enumerate() {
        let from_png = png_to_signed(png);
        let rounded = x
            .index_axis(Axis(0), k)
            .mapv(|v| byte_to_signed(signed_to_byte(v)));
        assert_eq!(from_png, rounded, "image {k}");
    }

    // Upsample from the tensor and from the PNGs: same noise, inputs 8-bit apart.
    let upsample = |samples: Option<Tensor>, images: Vec<bytes::Bytes>| UpsampleRequest {
        stage: 0,
        images,
        samples,
        seed: 5,
        sampling: sampling(Sampler::Unclip, 2, 0.0),
        format: ImageFormat::PngAndTensor as i32,
        ..Default::default()
    };
    let from_tensor = client
        .upsample(upsample(response.samples.clone(), vec![]))
        .await
        .unwrap()
        .into_inner();
    let from_pngs = client
        .upsample(upsample(None, response.images.clone()))
        .await
        .unwrap()
        .into_inner();
    let a = samples(&from_tensor.samples);
    let b = samples(&from_pngs.samples);
    assert_eq!(a.shape(), &[4, 3, 64, 64]);
    assert_eq!(from_tensor.images.len(), 4);
    assert_eq!(from_tensor.seeds, vec![5, 6, 7, 8]);
    assert_eq!(from_tensor.steps, 2);
    assert_eq!(b.shape(), a.shape());
    assert_eq!(from_pngs.images.len(), 4);

    // TENSOR only: no PNGs; PNG (the default): no tensor.
    let tensor_only = decode(
        &mut client,
        DecodeRequest {
            image_embeds: Some(Tensor::from_array(&embeddings(1, 32, 1))),
            sampling: sampling(Sampler::Unspecified, 2, 0.0),
            format: ImageFormat::Tensor as i32,
            ..Default::default()
        },
    )
    .await;
    assert!(tensor_only.images.is_empty() && tensor_only.samples.is_some());
    let png_only = decode(
        &mut client,
        DecodeRequest {
            image_embeds: Some(Tensor::from_array(&embeddings(1, 32, 1))),
            sampling: sampling(Sampler::Unspecified, 2, 0.0),
            ..Default::default()
        },
    )
    .await;
    assert!(png_only.samples.is_none() && png_only.images.len() == 1);
    server.stop().await.unwrap();
}

/// Image k of a batch (2 embeddings with their own prompts × 2 images) equals image k
/// generated alone with seed + k, for the unCLIP and the DDIM (η > 0) samplers.
#[tokio::test]
async fn image_k_alone_equals_image_k_of_a_batch() {
    let server = TestServer::serving(&[]).await;
    let mut client = server.client().await;
    let embeds = embeddings(2, 32, 2);
    let text = two_prompts();
    for options in [
        sampling(Sampler::Unclip, 3, 0.0),
        sampling(Sampler::Ddim, 3, 0.7),
    ] {
        let batch = samples(
            &decode(
                &mut client,
                DecodeRequest {
                    image_embeds: Some(Tensor::from_array(&embeds)),
                    text: Some(text.clone()),
                    num_images: 2,
                    seed: 40,
                    sampling: options,
                    format: ImageFormat::Tensor as i32,
                    ..Default::default()
                },
            )
            .await
            .samples,
        );
        let mut worst = 0.0f32;
        for k in 0..4 {
            let i = k / 2;
            let alone = samples(
                &decode(
                    &mut client,
                    DecodeRequest {
                        image_embeds: Some(Tensor::from_array(
                            &embeds.slice(s![i..i + 1, ..]).to_owned(),
                        )),
                        text: Some(text_row(&text, i)),
                        seed: 40 + k as u64,
                        sampling: options,
                        format: ImageFormat::Tensor as i32,
                        ..Default::default()
                    },
                )
                .await
                .samples,
            );
            let row = batch.slice_axis(Axis(0), (k..k + 1).into()).to_owned();
            worst = worst.max(max_abs_diff(&alone, &row));
        }
        println!("{options:?}: image k alone vs in the batch: {worst:.1e}");
        // ONNX Runtime may sum in another order at another batch size; the t = 999 step
        // amplifies that (§9.10), the seeds and rows themselves are exact.
        assert!(worst <= 1e-3, "{worst}");

        // The same for Upsample: image k of the batch is image k alone with seed + k.
        let up = |low: &ArrayD<f32>, seed: u64| UpsampleRequest {
            samples: Some(Tensor::from_array(low)),
            seed,
            sampling: options,
            format: ImageFormat::Tensor as i32,
            ..Default::default()
        };
        let together = client.upsample(up(&batch, 70)).await.unwrap().into_inner();
        let together = samples(&together.samples);
        let mut worst = 0.0f32;
        for k in [1, 3] {
            let low = batch.slice_axis(Axis(0), (k..k + 1).into()).to_owned();
            let alone = client
                .upsample(up(&low, 70 + k as u64))
                .await
                .unwrap()
                .into_inner();
            let row = together.slice_axis(Axis(0), (k..k + 1).into()).to_owned();
            worst = worst.max(max_abs_diff(&samples(&alone.samples), &row));
        }
        println!("{options:?}: upsampled image k alone vs in the batch: {worst:.1e}");
        assert!(worst <= 1e-3, "{worst}");
    }
    server.stop().await.unwrap();
}

/// Listed seeds: `seeds = [s, s]` decodes two embeddings from one noise (what interpolations
/// need), equal embeddings then give equal images, and the response echoes the list; a list of
/// the wrong length, or with a base seed too, is refused naming the field.
#[tokio::test]
async fn listed_seeds_share_noise() {
    let server = TestServer::serving(&[]).await;
    let mut client = server.client().await;
    let one = embeddings(1, 32, 9);
    let twice = ndarray::concatenate(Axis(0), &[one.view(), one.view()]).unwrap();
    let request = |embeds: &Array2<f32>, seed: u64, seeds: Vec<u64>| DecodeRequest {
        image_embeds: Some(Tensor::from_array(embeds)),
        seed,
        seeds,
        sampling: sampling(Sampler::Unclip, 3, 0.0),
        format: ImageFormat::Tensor as i32,
        ..Default::default()
    };
    let shared = decode(&mut client, request(&twice, 0, vec![21, 21])).await;
    assert_eq!(shared.seeds, vec![21, 21]);
    let rows = samples(&shared.samples);
    let (a, b) = (
        rows.slice_axis(Axis(0), (0..1).into()).to_owned(),
        rows.slice_axis(Axis(0), (1..2).into()).to_owned(),
    );
    assert!(max_abs_diff(&a, &b) <= 1e-3, "{}", max_abs_diff(&a, &b));
    // The same as the base-seed form with seed 21 for one image.
    let alone = samples(&decode(&mut client, request(&one, 21, vec![])).await.samples);
    assert!(max_abs_diff(&alone, &a) <= 1e-3);
    // The base-seed form of two images differs in its second row.
    let base = samples(
        &decode(&mut client, request(&twice, 21, vec![]))
            .await
            .samples,
    );
    let second = base.slice_axis(Axis(0), (1..2).into()).to_owned();
    assert!(max_abs_diff(&second, &b) > 1e-2);

    for (seed, seeds, field) in [(0, vec![1], "seeds"), (3, vec![1, 2], "seed")] {
        let status = client
            .decode(request(&twice, seed, seeds))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().starts_with(field), "{}", status.message());
    }
    let status = client
        .upsample(UpsampleRequest {
            samples: Some(Tensor::from_array(&rows)),
            seeds: vec![1, 2, 3],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().starts_with("seeds"),
        "{}",
        status.message()
    );
    server.stop().await.unwrap();
}

/// Decoding with `init_noise` equal to the seeded x_T reproduces the seeded image exactly (the
/// seeded draw still happens, so the step noise is unchanged); other noise changes it.
#[tokio::test]
async fn init_noise_replaces_only_the_initial_draw() {
    let server = TestServer::serving(&[]).await;
    let mut client = server.client().await;
    let x_t = NoiseSource::new(9, 0, NoiseStage::Decoder)
        .draw(&[3, 32, 32])
        .insert_axis(Axis(0));
    let request = |init: Option<&ArrayD<f32>>| DecodeRequest {
        image_embeds: Some(Tensor::from_array(&embeddings(1, 32, 3))),
        seed: 9,
        sampling: sampling(Sampler::Unclip, 3, 0.0),
        init_noise: init.map(Tensor::from_array),
        format: ImageFormat::Tensor as i32,
        ..Default::default()
    };
    let seeded = samples(&decode(&mut client, request(None)).await.samples);
    let given = samples(&decode(&mut client, request(Some(&x_t))).await.samples);
    assert_eq!(seeded, given);
    let other = samples(&decode(&mut client, request(Some(&(-&x_t)))).await.samples);
    assert_ne!(seeded, other);

    // Upsample: the same for its own stream.
    let low = Tensor::from_array(&seeded);
    let x_t = NoiseSource::new(9, 0, NoiseStage::Upsampler(0))
        .draw(&[3, 64, 64])
        .insert_axis(Axis(0));
    let up = |init: Option<&ArrayD<f32>>| UpsampleRequest {
        samples: Some(low.clone()),
        seed: 9,
        sampling: sampling(Sampler::Unclip, 2, 0.0),
        init_noise: init.map(Tensor::from_array),
        format: ImageFormat::Tensor as i32,
        ..Default::default()
    };
    let a = client.upsample(up(None)).await.unwrap().into_inner();
    let b = client.upsample(up(Some(&x_t))).await.unwrap().into_inner();
    assert_eq!(samples(&a.samples), samples(&b.samples));
    server.stop().await.unwrap();
}

/// DDIM with η = 0 is deterministic given x_T; η > 0 and the seed change the result.
#[tokio::test]
async fn ddim_sampling() {
    let server = TestServer::serving(&[]).await;
    let mut client = server.client().await;
    let request = |seed: u64, eta: f32| DecodeRequest {
        image_embeds: Some(Tensor::from_array(&embeddings(1, 32, 4))),
        seed,
        sampling: sampling(Sampler::Ddim, 4, eta),
        format: ImageFormat::Tensor as i32,
        ..Default::default()
    };
    let a = samples(&decode(&mut client, request(1, 0.0)).await.samples);
    let b = samples(&decode(&mut client, request(1, 0.0)).await.samples);
    assert_eq!(a, b);
    let c = samples(&decode(&mut client, request(2, 0.0)).await.samples);
    assert_ne!(a, c);
    let d = samples(&decode(&mut client, request(1, 1.0)).await.samples);
    assert_ne!(a, d);
    let unclip = samples(
        &decode(
            &mut client,
            DecodeRequest {
                sampling: sampling(Sampler::Unclip, 4, 0.0),
                ..request(1, 0.0)
            },
        )
        .await
        .samples,
    );
    assert_ne!(a, unclip);
    server.stop().await.unwrap();
}

/// Decodes an image, inverts it under the same embedding, decodes the inverted noise with η = 0
/// DDIM, and returns (max, mean) absolute reconstruction error in model range.
async fn inversion_roundtrip(
    client: &mut Client,
    embeds: &Array2<f32>,
    steps: u32,
    guidance_scale: Option<f32>,
) -> (f32, f32) {
    let image = samples(
        &decode(
            client,
            DecodeRequest {
                image_embeds: Some(Tensor::from_array(embeds)),
                seed: 3,
                sampling: sampling(Sampler::Unclip, 25, 0.0),
                format: ImageFormat::Tensor as i32,
                ..Default::default()
            },
        )
        .await
        .samples,
    );
    let inverted = client
        .invert(InvertRequest {
            samples: Some(Tensor::from_array(&image)),
            image_embeds: Some(Tensor::from_array(embeds)),
            steps,
            guidance_scale,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(inverted.steps, steps as i32);
    let noise = inverted.noise.unwrap();
    assert_eq!(
        noise.shape,
        image.shape().iter().map(|&d| d as i64).collect::<Vec<_>>()
    );
    let back = samples(
        &decode(
            client,
            DecodeRequest {
                image_embeds: Some(Tensor::from_array(embeds)),
                sampling: sampling(Sampler::Ddim, steps, 0.0),
                guidance_scale: Some(guidance_scale.unwrap_or(1.0)),
                init_noise: Some(noise),
                format: ImageFormat::Tensor as i32,
                ..Default::default()
            },
        )
        .await
        .samples,
    );
    let diff = (&back - &image).mapv(f32::abs);
    (
        diff.iter().copied().fold(0.0, f32::max),
        diff.mean().unwrap(),
    )
}

/// Invert over gRPC on karlo-tiny: the noise has the images' shape, is deterministic, depends
/// on the guidance scale, and decodes back through DDIM. karlo-tiny's decoder has random weights
/// and predicts no noise, so nothing is reconstructed here (seen: mean error 0.67 at 25 steps);
/// the printed error is for the record. The reconstruction itself is asserted on a trained model
/// (`shapes_cascade_and_inversion`), and the algebra of the round trip in the unit tests of
/// `sampling`.
#[tokio::test]
async fn inversion_contract() {
    let server = TestServer::serving(&[]).await;
    let mut client = server.client().await;
    let embeds = embeddings(2, 32, 5);
    let images = ArrayD::from_shape_fn(IxDyn(&[2, 3, 32, 32]), |d| {
        byte_to_signed(((d[0] * 90 + d[1] * 40 + d[2] * 7 + d[3]) % 256) as u8)
    });
    let invert = |guidance_scale: Option<f32>| InvertRequest {
        samples: Some(Tensor::from_array(&images)),
        image_embeds: Some(Tensor::from_array(&embeds)),
        text: Some(two_prompts()),
        steps: 10,
        guidance_scale,
        ..Default::default()
    };
    let a = client.invert(invert(None)).await.unwrap().into_inner();
    let b = client.invert(invert(None)).await.unwrap().into_inner();
    let c = client.invert(invert(Some(4.0))).await.unwrap().into_inner();
    let noise = samples(&a.noise);
    assert_eq!(noise.shape(), &[2, 3, 32, 32]);
    assert!(noise.iter().all(|v| v.is_finite()));
    assert_eq!(a.steps, 10);
    assert_eq!(noise, samples(&b.noise));
    assert_ne!(noise, samples(&c.noise));

    let (max, mean) =
        inversion_roundtrip(&mut client, &embeds.slice(s![..1, ..]).to_owned(), 25, None).await;
    println!("karlo-tiny: inversion round trip at 25 steps: max {max:.3}, mean {mean:.4}");
    server.stop().await.unwrap();
}

/// A `[S, S]` BOOL mask keeping the left `keep` columns.
fn left_mask(side: usize, keep: usize) -> ArrayD<bool> {
    ArrayD::from_shape_fn(IxDyn(&[side, side]), |d| d[1] < keep)
}

/// A known image: a smooth pattern in model range.
fn pattern(side: usize) -> ArrayD<f32> {
    ArrayD::from_shape_fn(IxDyn(&[1, 3, side, side]), |d| {
        byte_to_signed(((d[1] * 70 + d[2] * 5 + d[3] * 3) % 256) as u8)
    })
}

/// Inpainting keeps the known pixels (mask 1) exactly, in the tensor and in the PNG, for every
/// sampler, at the decoder and at the upsampler; the rest is generated.
#[tokio::test]
async fn inpainting_keeps_known_pixels() {
    let server = TestServer::serving(&[]).await;
    let mut client = server.client().await;
    for (sampler, eta) in [
        (Sampler::Unclip, 0.0),
        (Sampler::Ddim, 0.0),
        (Sampler::Ddim, 1.0),
    ] {
        let known = pattern(32);
        let response = decode(
            &mut client,
            DecodeRequest {
                image_embeds: Some(Tensor::from_array(&embeddings(1, 32, 6))),
                num_images: 2,
                seed: 11,
                sampling: sampling(sampler, 4, eta),
                inpaint: Some(InpaintSpec {
                    samples: Some(Tensor::from_array(&known)),
                    mask: Some(Tensor::from_array(&left_mask(32, 12))),
                    ..Default::default()
                }),
                format: ImageFormat::PngAndTensor as i32,
                ..Default::default()
            },
        )
        .await;
        let x = samples(&response.samples);
        for k in 0..2 {
            let got = x.slice(s![k, .., .., ..12]);
            assert_eq!(
                got,
                known.slice(s![0, .., .., ..12]),
                "{sampler:?} image {k}"
            );
            let png = png_to_signed(&response.images[k]);
            assert_eq!(
                png.slice(s![.., .., ..12]),
                known.slice(s![0, .., .., ..12])
            );
            assert_ne!(
                x.slice(s![k, .., .., 12..]),
                known.slice(s![0, .., .., 12..])
            );
        }
    }

    // At the upsampler, with the known image as a PNG and a float mask [1, 1, S, S].
    let known = pattern(64);
    let png = {
        let rgb = image::RgbImage::from_fn(64, 64, |x, y| {
            image::Rgb(std::array::from_fn(|c| {
                signed_to_byte(known[[0, c, y as usize, x as usize]])
            }))
        });
        let mut bytes = Vec::new();
        rgb.write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
        bytes
    };
    let mask = ArrayD::from_shape_fn(
        IxDyn(&[1, 1, 64, 64]),
        |d| {
            if d[2] < 20 { 1.0f32 } else { 0.0 }
        },
    );
    let response = client
        .upsample(UpsampleRequest {
            samples: Some(Tensor::from_array(&pattern(32))),
            seed: 1,
            sampling: sampling(Sampler::Unclip, 3, 0.0),
            inpaint: Some(InpaintSpec {
                image: png.into(),
                mask: Some(Tensor::from_array(&mask)),
                ..Default::default()
            }),
            format: ImageFormat::Tensor as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let x = samples(&response.samples);
    assert_eq!(
        x.slice(s![0, .., ..20, ..]),
        known.slice(s![0, .., ..20, ..])
    );
    assert_ne!(
        x.slice(s![0, .., 20.., ..]),
        known.slice(s![0, .., 20.., ..])
    );
    server.stop().await.unwrap();
}

/// The shapes model: the whole cascade 32 → 64 → 128 and an
/// inversion round trip of a decoded image under an embedding near the dataset mean: inverted
/// then decoded with η = 0 DDIM, the image comes back, more closely with more steps.
#[tokio::test]
async fn shapes_cascade_and_inversion() {
    let model = unclip_testkit::shapes();
    let server = TestServer::serving_with(TestServer::config_for(&model, &[])).await;
    let mut client = server.client().await;
    let info = client
        .get_info(unclip_proto::v1::GetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let d = info.embedding_dim as usize;
    let repo = unclip_runtime::ModelRepository::open(&model).unwrap();
    let mean = repo.tensors().prior_clip_mean();
    let std = repo.tensors().prior_clip_std();
    let z = embeddings(1, d, 8);
    let embeds = Array2::from_shape_fn((1, d), |(_, j)| mean[j] + 0.5 * std[j] * z[[0, j]]);

    let mut x = samples(
        &decode(
            &mut client,
            DecodeRequest {
                image_embeds: Some(Tensor::from_array(&embeds)),
                seed: 1,
                format: ImageFormat::Tensor as i32,
                ..Default::default()
            },
        )
        .await
        .samples,
    );
    for (stage, up) in info.upsamplers.iter().enumerate() {
        assert_eq!(x.shape()[2], up.input_size as usize);
        let r = client
            .upsample(UpsampleRequest {
                stage: stage as u32,
                samples: Some(Tensor::from_array(&x)),
                seed: 1,
                format: ImageFormat::PngAndTensor as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        x = samples(&r.samples);
        assert_eq!(x.shape()[2], up.output_size as usize);
    }
    // Seen on partly trained exports (decoder at 2,000 and 3,750 of 6,000 steps): mean 0.022 and
    // 0.041 at 25 steps (a few pixels flip: max 0.27, 1.19), 0.007 and 0.006 at 100 steps (max
    // 0.08, 0.13).
    let mut means = Vec::new();
    for steps in [25, 100] {
        let (max, mean) = inversion_roundtrip(&mut client, &embeds, steps, None).await;
        println!("shapes: inversion round trip at {steps} steps: max {max:.3}, mean {mean:.4}");
        means.push(mean);
    }
    assert!(
        means[0] < 0.1,
        "mean reconstruction error at 25 steps: {means:?}"
    );
    assert!(
        means[1] < 0.02 && means[1] < means[0],
        "mean reconstruction error at 100 steps: {means:?}"
    );
    server.stop().await.unwrap();
}

/// Reads a `...Stream` to its end: the (step, total) of every progress event, then the result,
/// which must come last.
async fn drain<E: StepEvent>(mut stream: tonic::Streaming<E>) -> (Vec<(u32, u32)>, E::Result) {
    let (mut steps, mut result) = (Vec::new(), None);
    while let Some(event) = stream.message().await.unwrap() {
        assert!(result.is_none(), "nothing follows the result");
        match event.into_parts().expect("an event") {
            Ok(r) => result = Some(r),
            Err(p) => steps.push((p.step, p.total)),
        }
    }
    (steps, result.expect("a result"))
}

/// Progress only moves forward, always out of `total`, and ends at `total`.
fn check_steps(what: &str, steps: &[(u32, u32)], total: u32) {
    assert!(steps.iter().all(|&(_, t)| t == total), "{what}: {steps:?}");
    assert!(
        steps.windows(2).all(|w| w[0].0 < w[1].0),
        "{what}: {steps:?}"
    );
    assert_eq!(steps.last(), Some(&(total, total)), "{what}: {steps:?}");
}

/// DecodeStream, UpsampleStream and InvertStream report their steps, then answer exactly what
/// the unary RPCs answer; a bad request ends the stream with the unary RPC's status.
#[tokio::test]
async fn streams_report_steps_then_the_same_answer() {
    let server = TestServer::serving(&[]).await;
    let mut client = server.client().await;

    let request = DecodeRequest {
        image_embeds: Some(Tensor::from_array(&embeddings(2, 32, 3))),
        seed: 9,
        sampling: sampling(Sampler::Unclip, 6, 0.0),
        format: ImageFormat::PngAndTensor as i32,
        ..Default::default()
    };
    let unary = decode(&mut client, request.clone()).await;
    let stream = client.decode_stream(request).await.unwrap().into_inner();
    let (steps, streamed) = drain(stream).await;
    check_steps("decode", &steps, 6);
    // compute_seconds is a measurement, different on every call.
    assert_eq!(
        DecodeResponse {
            compute_seconds: 0.0,
            ..streamed
        },
        DecodeResponse {
            compute_seconds: 0.0,
            ..unary.clone()
        }
    );

    let request = UpsampleRequest {
        stage: 0,
        samples: unary.samples.clone(),
        seed: 9,
        sampling: sampling(Sampler::Unclip, 3, 0.0),
        ..Default::default()
    };
    let unary_up = client.upsample(request.clone()).await.unwrap().into_inner();
    let stream = client.upsample_stream(request).await.unwrap().into_inner();
    let (steps, streamed) = drain(stream).await;
    check_steps("upsample", &steps, 3);
    assert_eq!(
        UpsampleResponse {
            compute_seconds: 0.0,
            ..streamed
        },
        UpsampleResponse {
            compute_seconds: 0.0,
            ..unary_up.clone()
        }
    );

    let request = InvertRequest {
        samples: unary.samples.clone(),
        image_embeds: Some(Tensor::from_array(&embeddings(2, 32, 3))),
        steps: 5,
        ..Default::default()
    };
    let unary_inv = client.invert(request.clone()).await.unwrap().into_inner();
    let stream = client.invert_stream(request).await.unwrap().into_inner();
    let (steps, streamed) = drain(stream).await;
    check_steps("invert", &steps, 5);
    assert_eq!(
        InvertResponse {
            compute_seconds: 0.0,
            ..streamed
        },
        InvertResponse {
            compute_seconds: 0.0,
            ..unary_inv.clone()
        }
    );

    // Refused like Decode: the stream's status is the unary call's.
    let bad = DecodeRequest {
        sampling: sampling(Sampler::Unclip, 1, 0.0),
        ..Default::default()
    };
    let unary_status = client.decode(bad.clone()).await.unwrap_err();
    let stream_status = match client.decode_stream(bad).await {
        Ok(response) => response.into_inner().message().await.unwrap_err(),
        Err(status) => status,
    };
    assert_eq!(stream_status.code(), tonic::Code::InvalidArgument);
    assert_eq!(stream_status.message(), unary_status.message());
    server.stop().await.unwrap();
}
