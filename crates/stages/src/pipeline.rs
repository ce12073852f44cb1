//! Text-to-image through the stage services: the orchestration a gateway runs per request.
//!
//! 1. `ClipService.EncodeText` of the one prompt.
//! 2. `PriorService.Sample`: `num_images` image embeddings, row k drawn from seed + k.
//! 3. `DecoderService.Decode`: one base image per embedding (so image k again draws from
//!    seed + k), the prompt's encoding shared by every row.
//! 4. `DecoderService.Upsample` for every stage of the cascade (`GetInfo` says how many), each
//!    with the same seed, so image k of a batch equals the image generated alone with seed + k.
//!
//! Between stages the images travel as float tensors (`IMAGE_FORMAT_TENSOR`), not PNGs: the
//! cascade then sees exactly what the reference pipeline feeds it, without 8-bit rounding. Only
//! the last stage answers with PNGs.

use std::time::{Duration, Instant};

use bytes::Bytes;
use unclip_proto::v1::{
    DecodeRequest, EncodeTextRequest, GetInfoRequest, ImageFormat, PriorSampleRequest, Sampler,
    SamplingOptions, Tensor, UpsampleRequest,
};

use crate::clients::StageClients;
use crate::error::{Error, Result};

/// One text-to-image request. Steps of 0 and guidance of `None` mean the model's defaults
/// (the services' `GetInfo` `defaults`).
#[derive(Debug, Clone, PartialEq)]
pub struct TextToImage {
    /// The caption to draw (any UTF-8; the services cut it at 77 tokens and say so).
    pub prompt: String,
    /// How many images, at least 1 (the services' limits cap it, 16 by default).
    pub num_images: u32,
    /// Base seed: image k draws all its noise from seed + k (wrapping).
    pub seed: u64,
    /// Prior denoising steps; 0 = the model's default.
    pub prior_steps: u32,
    /// Decoder denoising steps; 0 = the model's default.
    pub decoder_steps: u32,
    /// Steps of each upsampler stage; 0 = the model's default.
    pub upsampler_steps: u32,
    /// Prior classifier-free guidance scale; `None` = the model's default.
    pub prior_guidance: Option<f32>,
    /// Decoder classifier-free guidance scale; `None` = the model's default.
    pub decoder_guidance: Option<f32>,
}

impl TextToImage {
    /// One image of `prompt` with seed 0 and the model's default settings.
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            num_images: 1,
            seed: 0,
            prior_steps: 0,
            decoder_steps: 0,
            upsampler_steps: 0,
            prior_guidance: None,
            decoder_guidance: None,
        }
    }
}

/// One generated image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedImage {
    /// The encoded 8-bit RGB PNG, `Generated::size` square.
    pub png: Bytes,
    /// The seed it was drawn from (request seed + k): generating with this seed and
    /// `num_images` 1 gives the same image.
    pub seed: u64,
}

/// Wall-clock time of each stage's call, as the client saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StageTimings {
    /// `ClipService.EncodeText`.
    pub encode_text: Duration,
    /// `PriorService.Sample`.
    pub prior: Duration,
    /// `DecoderService.Decode`.
    pub decode: Duration,
    /// `DecoderService.Upsample`, one per stage in order.
    pub upsample: Vec<Duration>,
}

impl StageTimings {
    /// All stages together.
    pub fn total(&self) -> Duration {
        self.encode_text + self.prior + self.decode + self.upsample.iter().sum::<Duration>()
    }
}

/// The settings the services actually used, after defaults were applied.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepsUsed {
    /// Prior steps.
    pub prior_steps: i32,
    /// Prior guidance scale.
    pub prior_guidance: f32,
    /// Decoder steps.
    pub decoder_steps: i32,
    /// Decoder guidance scale.
    pub decoder_guidance: f32,
    /// Steps of each upsampler stage.
    pub upsampler_steps: Vec<i32>,
}

/// The result of [`text_to_image`].
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// The images, image k from seed + k.
    pub images: Vec<GeneratedImage>,
    /// Their side in pixels: the last upsampler's output size (the decoder's image size when
    /// the model has no upsamplers).
    pub size: u32,
    /// Whether the prompt was longer than the text encoder's context and was cut.
    pub truncated: bool,
    /// Time per stage.
    pub timings: StageTimings,
    /// Steps and guidance used.
    pub used: StepsUsed,
}

/// A `map_err` for a failed call named `call`.
fn rpc(call: &'static str) -> impl FnOnce(tonic::Status) -> Error {
    move |status| Error::Rpc { call, status }
}

/// An [`Error::BadResponse`] of `call`.
fn bad(call: &'static str, detail: impl Into<String>) -> Error {
    Error::BadResponse {
        call,
        detail: detail.into(),
    }
}

/// The leading dimension of `tensor`, checked to be `rows`.
fn expect_rows(call: &'static str, tensor: &Tensor, rows: u32) -> Result<()> {
    match tensor.shape.first() {
        Some(&n) if n == i64::from(rows) => Ok(()),
        _ => Err(bad(
            call,
            format!("expected {rows} rows, got shape {:?}", tensor.shape),
        )),
    }
}

/// Draws `request.num_images` images of `request.prompt` through the three services
/// (EncodeText → Sample → Decode → each Upsample stage).
pub async fn text_to_image(clients: &mut StageClients, request: &TextToImage) -> Result<Generated> {
    let n = request.num_images;
    if n == 0 {
        return Err(Error::InvalidRequest(
            "num_images must be at least 1, got 0".into(),
        ));
    }
    // The cascade's length and final size come from the decoder's model.
    let info = clients
        .decoder
        .get_info(GetInfoRequest {})
        .await
        .map_err(rpc("decoder GetInfo"))?
        .into_inner();
    let stages = info.upsamplers.len();
    let size = info
        .upsamplers
        .last()
        .map_or(info.decoder_image_size, |u| u.output_size);
    // Intermediate results stay float tensors; only the final call encodes PNGs.
    let format = |last: bool| {
        if last {
            ImageFormat::Png as i32
        } else {
            ImageFormat::Tensor as i32
        }
    };
    let mut timings = StageTimings::default();
    let mut used = StepsUsed::default();

    // 1. The prompt's CLIP encoding, shared by every image.
    let started = Instant::now();
    let encoding = clients
        .clip
        .encode_text(EncodeTextRequest {
            prompts: vec![request.prompt.clone()],
        })
        .await
        .map_err(rpc("clip EncodeText"))?
        .into_inner()
        .encoding
        .ok_or_else(|| bad("clip EncodeText", "no encoding"))?;
    timings.encode_text = started.elapsed();
    let truncated = encoding.truncated.first().copied().unwrap_or(false);

    // 2. n image embeddings; row k draws from seed + k.
    let started = Instant::now();
    let prior = clients
        .prior
        .sample(PriorSampleRequest {
            text: Some(encoding.clone()),
            num_images: n,
            seed: request.seed,
            steps: request.prior_steps,
            guidance_scale: request.prior_guidance,
            ..Default::default()
        })
        .await
        .map_err(rpc("prior Sample"))?
        .into_inner();
    timings.prior = started.elapsed();
    used.prior_steps = prior.steps;
    used.prior_guidance = prior.guidance_scale;
    let image_embeds = prior
        .image_embeds
        .ok_or_else(|| bad("prior Sample", "no image_embeds"))?;
    expect_rows("prior Sample", &image_embeds, n)?;

    // 3. One base image per embedding, so image k is row k and draws from seed + k too.
    let started = Instant::now();
    let decoded = clients
        .decoder
        .decode(DecodeRequest {
            image_embeds: Some(image_embeds),
            text: Some(encoding),
            num_images: 1,
            seed: request.seed,
            sampling: Some(SamplingOptions {
                sampler: Sampler::Unclip as i32,
                steps: request.decoder_steps,
                ..Default::default()
            }),
            guidance_scale: request.decoder_guidance,
            format: format(stages == 0),
            ..Default::default()
        })
        .await
        .map_err(rpc("decoder Decode"))?
        .into_inner();
    timings.decode = started.elapsed();
    used.decoder_steps = decoded.steps;
    used.decoder_guidance = decoded.guidance_scale;
    let (mut samples, mut pngs, mut seeds) = (decoded.samples, decoded.images, decoded.seeds);

    // 4. Every super-resolution stage, each image again from its own seed.
    for stage in 0..stages {
        let input = samples
            .take()
            .ok_or_else(|| bad("decoder Decode/Upsample", "no samples tensor"))?;
        expect_rows("decoder Decode/Upsample", &input, n)?;
        let started = Instant::now();
        let upsampled = clients
            .decoder
            .upsample(UpsampleRequest {
                stage: stage as u32,
                samples: Some(input),
                seed: request.seed,
                sampling: Some(SamplingOptions {
                    sampler: Sampler::Unclip as i32,
                    steps: request.upsampler_steps,
                    ..Default::default()
                }),
                format: format(stage + 1 == stages),
                ..Default::default()
            })
            .await
            .map_err(rpc("decoder Upsample"))?
            .into_inner();
        timings.upsample.push(started.elapsed());
        used.upsampler_steps.push(upsampled.steps);
        (samples, pngs, seeds) = (upsampled.samples, upsampled.images, upsampled.seeds);
    }

    if pngs.len() != n as usize || seeds.len() != n as usize {
        return Err(bad(
            "decoder",
            format!(
                "{} images and {} seeds for {n} requested",
                pngs.len(),
                seeds.len()
            ),
        ));
    }
    let images = pngs
        .into_iter()
        .zip(seeds)
        .map(|(png, seed)| GeneratedImage { png, seed })
        .collect();
    Ok(Generated {
        images,
        size,
        truncated,
        timings,
        used,
    })
}
