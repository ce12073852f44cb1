//! The capabilities as sequences of stage calls, and what they share: [`Gateway`] (stages,
//! model description, cache, limits) and [`Run`] (one request: its deadline, its progress, its
//! timings, cached lookups of text encodings, image embeddings and prior samples, and the
//! decoder → upsampler cascade).
//!
//! | module | capability |
//! |---|---|
//! | [`generate`] | text → image |
//! | [`vary`] | variations (fresh or DDIM-anchored) |
//! | [`interpolate`] | slerp between two images' embeddings, one noise for every frame |
//! | [`text_diff`] | an image moved towards a caption from its own inverted noise |
//! | [`inpaint`] | regenerate the masked part of an image |

pub mod generate;
pub mod inpaint;
pub mod interpolate;
pub mod text_diff;
pub mod vary;

use bytes::Bytes;
use ndarray::{Array2, Axis, concatenate};
use tokio::time::Instant;
use unclip_cache::{Cache, CacheKey};
use unclip_proto::v1::{
    DType, DecodeRequest, GeneratedImage, ImageFormat, ImagesResponse, InpaintSpec,
    PriorSampleRequest, Sampler, SamplingOptions, StageTiming, Tensor, TextEncoding,
    UpsampleRequest,
};
use unclip_server::image_input::ImageLimits;

use crate::error::{Error, Result};
use crate::images::{self, KeepMask};
use crate::progress::Reporter;
use crate::stage::Stage;
use crate::stages::{StageInfos, Stages, StepSink};

/// Request limits of the gateway itself (the stages enforce theirs too).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most images per request.
    pub max_images: u32,
    /// Most frames per Interpolate / TextDiff.
    pub max_frames: u32,
    /// Longest prompt, in characters.
    pub max_prompt_chars: u32,
    /// Uploaded images.
    pub image: ImageLimits,
}

/// Everything a request needs, shared by all requests.
#[derive(Debug)]
pub struct Gateway {
    /// The stage services.
    pub stages: Stages,
    /// What they serve.
    pub infos: StageInfos,
    /// The embedding cache.
    pub cache: Cache,
    /// Request limits.
    pub limits: Limits,
}

/// One request in progress.
#[derive(Debug)]
pub struct Run<'a> {
    /// The shared state.
    pub gw: &'a Gateway,
    /// When the client stops waiting.
    pub deadline: Option<Instant>,
    /// Where progress goes.
    pub reporter: Reporter,
    /// Every stage call (or cache hit) so far.
    pub timings: Vec<StageTiming>,
    /// Whether a prompt was cut at the context length.
    pub truncated: bool,
}

/// Resolved decoder and upsampler settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CascadeSettings {
    /// Decoder steps.
    pub decoder_steps: u32,
    /// Steps per upsampler stage.
    pub upsampler_steps: u32,
    /// Decoder guidance scale.
    pub decoder_guidance: f32,
}

/// What the cascade decodes.
#[derive(Debug, Clone)]
pub struct CascadeJob {
    /// Image embeddings `[B, D]`.
    pub image_embeds: Tensor,
    /// Text conditioning (1 or B prompts); `None` = "".
    pub text: Option<TextEncoding>,
    /// Images per embedding.
    pub per_embedding: u32,
    /// The seed of each image (B × per_embedding), for the decoder and every upsampler.
    pub seeds: Vec<u64>,
    /// The update rule of the decoder and its η.
    pub sampler: Sampler,
    /// DDIM η (decoder only).
    pub eta: f32,
    /// Initial decoder noise `[N, 3, S, S]`.
    pub init_noise: Option<Tensor>,
    /// Inpainting: the known image at the output size and what to keep.
    pub inpaint: Option<(image::RgbImage, KeepMask)>,
    /// Steps and guidance.
    pub settings: CascadeSettings,
}

impl CascadeJob {
    /// `image_embeds` decoded one image per embedding with the unCLIP sampler from `seeds`,
    /// conditioned on "", no initial noise, no inpainting.
    pub fn new(image_embeds: Tensor, seeds: Vec<u64>, settings: CascadeSettings) -> Self {
        Self {
            image_embeds,
            text: None,
            per_embedding: 1,
            seeds,
            sampler: Sampler::Unclip,
            eta: 0.0,
            init_noise: None,
            inpaint: None,
            settings,
        }
    }
}

impl<'a> Run<'a> {
    /// A request on `gw`, reporting to `reporter`.
    pub fn new(gw: &'a Gateway, deadline: Option<Instant>, reporter: Reporter) -> Self {
        Self {
            gw,
            deadline,
            reporter,
            timings: Vec::new(),
            truncated: false,
        }
    }

    fn version(&self) -> &str {
        self.gw.infos.version()
    }

    fn embedding_dim(&self) -> i64 {
        i64::from(self.gw.infos.decoder.embedding_dim)
    }

    fn cached(&mut self, stage: Stage) {
        self.timings.push(StageTiming {
            stage: stage.to_string(),
            seconds: 0.0,
            cached: true,
            replica: String::new(),
            compute_seconds: 0.0,
        });
    }

    /// The number of upsampler stages.
    pub fn upsampler_stages(&self) -> u32 {
        self.gw.infos.decoder.upsamplers.len() as u32
    }

    /// One CLIP result: from the cache under `key` when a valid entry is there, else from
    /// `call` (the stage call `stage`, checked, then stored); timed and reported as one call of
    /// `stage` either way.
    async fn clip_cached<M, F, Fut>(
        &mut self,
        key: CacheKey,
        stage: Stage,
        check: impl Fn(&M) -> std::result::Result<(), String> + Copy,
        call: F,
    ) -> Result<M>
    where
        M: prost::Message + Default,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(M, StageTiming)>>,
    {
        let value = match self.gw.cache.get::<M>(&key, check).await {
            Some(hit) => {
                self.cached(stage);
                hit
            }
            None => {
                self.reporter.started(stage, 1).await;
                let (value, timing) = call().await?;
                check(&value).map_err(|e| Error::bad_answer(stage, e))?;
                self.gw.cache.put(&key, &value).await;
                self.timings.push(timing);
                value
            }
        };
        self.reporter.finished(stage, 1).await;
        Ok(value)
    }

    /// The CLIP encoding of one prompt, from the cache or `ClipService.EncodeText`.
    pub async fn text(&mut self, prompt: &str) -> Result<TextEncoding> {
        let key = Cache::key(self.version(), "text", &[prompt.as_bytes()]);
        let (d, l) = (
            self.embedding_dim(),
            i64::from(self.gw.infos.clip.context_length),
        );
        let (stages, deadline) = (&self.gw.stages, self.deadline);
        let encoding = self
            .clip_cached(
                key,
                Stage::EncodeText,
                move |e: &TextEncoding| check_text(e, d, l),
                || stages.encode_text(deadline, vec![prompt.to_string()]),
            )
            .await?;
        self.truncated |= encoding.truncated.first().copied().unwrap_or(false);
        Ok(encoding)
    }

    /// The raw-scale CLIP embedding `[1, D]` of an uploaded image (already checked to decode),
    /// from the cache (keyed by the image's bytes) or `ClipService.EncodeImage`.
    pub async fn image_embedding(&mut self, image: &Bytes) -> Result<Tensor> {
        let key = Cache::key(self.version(), "image", &[image]);
        let d = self.embedding_dim();
        let (stages, deadline) = (&self.gw.stages, self.deadline);
        self.clip_cached(
            key,
            Stage::EncodeImage,
            move |t: &Tensor| check_tensor(t, DType::Float32, &[1, d]),
            || stages.encode_image(deadline, vec![image.clone()]),
        )
        .await
    }

    /// `n` prior samples `[n, D]` for one prompt, row k from seed + k: each row from the cache
    /// when every row is there, otherwise one `PriorService.Sample` for all of them.
    pub async fn prior(&mut self, job: PriorJob<'_>) -> Result<Tensor> {
        let d = self.embedding_dim();
        let keys: Vec<_> = (0..job.n)
            .map(|k| {
                let seed = job.seed.wrapping_add(u64::from(k));
                Cache::key(
                    self.version(),
                    "prior",
                    &[
                        job.prompt.as_bytes(),
                        job.negative_prompt.as_bytes(),
                        &seed.to_le_bytes(),
                        &job.steps.to_le_bytes(),
                        &job.guidance.to_le_bytes(),
                        &job.best_of.to_le_bytes(),
                    ],
                )
            })
            .collect();
        let check = move |t: &Tensor| check_tensor(t, DType::Float32, &[1, d]);
        let mut rows = Vec::with_capacity(keys.len());
        for key in &keys {
            match self.gw.cache.get::<Tensor>(key, check).await {
                Some(row) => rows.push(row),
                None => break,
            }
        }
        const STAGE: Stage = Stage::PriorSample;
        if rows.len() == keys.len() {
            self.cached(STAGE);
            self.reporter.finished(STAGE, job.steps).await;
            return stack_rows(&rows);
        }
        let (gw, deadline) = (self.gw, self.deadline);
        let message = PriorSampleRequest {
            text: Some(job.text.clone()),
            negative: job.negative.cloned(),
            num_images: job.n,
            seed: job.seed,
            steps: job.steps,
            guidance_scale: Some(job.guidance),
            best_of: job.best_of,
        };
        let response = self
            .stepped(STAGE, job.steps, |sink| {
                gw.stages.sample(deadline, message, sink)
            })
            .await?;
        let embeds = response
            .image_embeds
            .ok_or_else(|| Error::bad_answer(STAGE, "no image_embeds"))?;
        check_tensor(&embeds, DType::Float32, &[i64::from(job.n), d])
            .map_err(|e| Error::bad_answer(STAGE, e))?;
        let array = embeds
            .to_f32_array()
            .map_err(|e| Error::bad_answer(STAGE, e))?;
        for (k, key) in keys.iter().enumerate() {
            let row = array.index_axis(Axis(0), k).insert_axis(Axis(0)).to_owned();
            self.gw.cache.put(key, &Tensor::from_array(&row)).await;
        }
        Ok(embeds)
    }

    /// One stage call reported as `stage` of `total` steps: started, every step of the stage's
    /// stream (when this request streams, `call` gets the sink for them), finished; its timing
    /// recorded.
    pub async fn stepped<T, Fut>(
        &mut self,
        stage: Stage,
        total: u32,
        call: impl FnOnce(Option<StepSink>) -> Fut,
    ) -> Result<T>
    where
        Fut: std::future::Future<Output = Result<(T, StageTiming)>>,
    {
        self.reporter.started(stage, total).await;
        let (sink, steps) = self.reporter.step_channel();
        let (value, timing) = self
            .reporter
            .forward_steps(stage, steps, call(sink))
            .await?;
        self.timings.push(timing);
        self.reporter.finished(stage, total).await;
        Ok(value)
    }

    /// Decodes `job` and runs every upsampler stage; returns the final PNGs and their seeds.
    pub async fn cascade(&mut self, job: CascadeJob) -> Result<(Vec<Bytes>, Vec<u64>)> {
        let stages = self.upsampler_stages() as usize;
        let info = &self.gw.infos.decoder;
        let decoder_size = info.decoder_image_size;
        let sizes: Vec<u32> = info.upsamplers.iter().map(|u| u.output_size).collect();
        let previews = self.reporter.wants_previews();
        let format = |last: bool, preview: bool| {
            match (last, preview) {
                (true, _) => ImageFormat::Png,
                (false, true) => ImageFormat::PngAndTensor,
                (false, false) => ImageFormat::Tensor,
            }
        } as i32;
        let inpaint_at = |side: u32| -> Option<InpaintSpec> {
            job.inpaint.as_ref().map(|(known, mask)| {
                let known = if known.width() == side {
                    known.clone()
                } else {
                    image::imageops::resize(
                        known,
                        side,
                        side,
                        image::imageops::FilterType::Triangle,
                    )
                };
                InpaintSpec {
                    samples: Some(Tensor::from_array(&images::to_model_range(&known))),
                    mask: Some(Tensor::from_array(&mask.at(side).to_array())),
                    ..Default::default()
                }
            })
        };

        let settings = job.settings;
        let (gw, deadline) = (self.gw, self.deadline);
        let message = DecodeRequest {
            image_embeds: Some(job.image_embeds.clone()),
            text: job.text.clone(),
            num_images: job.per_embedding,
            seed: 0,
            seeds: job.seeds.clone(),
            sampling: Some(SamplingOptions {
                sampler: job.sampler as i32,
                steps: settings.decoder_steps,
                eta: job.eta,
            }),
            guidance_scale: Some(settings.decoder_guidance),
            init_noise: job.init_noise.clone(),
            inpaint: inpaint_at(decoder_size),
            format: format(stages == 0, previews),
        };
        let decoded = self
            .stepped(Stage::Decode, settings.decoder_steps, |sink| {
                gw.stages.decode(deadline, message, sink)
            })
            .await?;
        if stages > 0 && previews {
            let images = with_seeds(&decoded.images, &decoded.seeds);
            self.reporter
                .preview(Stage::Decode, images, decoder_size)
                .await;
        }
        let n = job.seeds.len();
        let (mut samples, mut pngs) = (decoded.samples, decoded.images);
        let mut last_stage = Stage::Decode;
        for (k, &side) in sizes.iter().enumerate() {
            let last = k + 1 == stages;
            let stage = Stage::Upsample(k as u32);
            let input = samples
                .take()
                .ok_or_else(|| Error::bad_answer(last_stage, "no samples tensor"))?;
            let message = UpsampleRequest {
                stage: k as u32,
                samples: Some(input),
                seed: 0,
                seeds: job.seeds.clone(),
                sampling: Some(SamplingOptions {
                    sampler: Sampler::Unclip as i32,
                    steps: settings.upsampler_steps,
                    eta: 0.0,
                }),
                inpaint: inpaint_at(side),
                format: format(last, previews),
                ..Default::default()
            };
            let up = self
                .stepped(stage, settings.upsampler_steps, |sink| {
                    gw.stages.upsample(deadline, message, sink)
                })
                .await?;
            if !last && previews {
                self.reporter
                    .preview(stage, with_seeds(&up.images, &up.seeds), side)
                    .await;
            }
            (samples, pngs) = (up.samples, up.images);
            last_stage = stage;
        }
        if pngs.len() != n {
            return Err(Error::bad_answer(
                last_stage,
                format!("{} images for {n} requested", pngs.len()),
            ));
        }
        Ok((pngs, job.seeds))
    }

    /// The response: `images` (with `thetas` when frames), and everything the run recorded.
    pub fn respond(
        self,
        pngs: Vec<Bytes>,
        seeds: Vec<u64>,
        thetas: Option<Vec<f32>>,
        seed: u64,
    ) -> ImagesResponse {
        let images = pngs
            .into_iter()
            .zip(seeds)
            .enumerate()
            .map(|(k, (png, seed))| GeneratedImage {
                png,
                seed,
                theta: thetas.as_ref().map_or(0.0, |t| t[k]),
            })
            .collect();
        ImagesResponse {
            images,
            size: self.gw.infos.output_size(),
            seed,
            timings: self.timings,
            model_id: self.gw.infos.decoder.model_id.clone(),
            model_version: self.gw.infos.version().to_string(),
            prompt_truncated: self.truncated,
            animation: Bytes::new(),
            animation_mime_type: String::new(),
        }
    }
}

/// One prior request.
#[derive(Debug, Clone, Copy)]
pub struct PriorJob<'p> {
    /// The prompt (part of the cache key).
    pub prompt: &'p str,
    /// Its encoding.
    pub text: &'p TextEncoding,
    /// The negative prompt, "" for none (part of the cache key).
    pub negative_prompt: &'p str,
    /// Its encoding, when there is one.
    pub negative: Option<&'p TextEncoding>,
    /// How many embeddings.
    pub n: u32,
    /// Base seed.
    pub seed: u64,
    /// Denoising steps (resolved).
    pub steps: u32,
    /// Guidance scale (resolved).
    pub guidance: f32,
    /// Best-of-k, 0 or 1 = off.
    pub best_of: u32,
}

/// PNGs paired with their seeds.
fn with_seeds(pngs: &[Bytes], seeds: &[u64]) -> Vec<GeneratedImage> {
    pngs.iter()
        .zip(seeds)
        .map(|(png, &seed)| GeneratedImage {
            png: png.clone(),
            seed,
            theta: 0.0,
        })
        .collect()
}

/// `[1, D]` rows stacked to `[n, D]`.
fn stack_rows(rows: &[Tensor]) -> Result<Tensor> {
    let arrays: Vec<_> = rows
        .iter()
        .map(|t| t.to_f32_array().map_err(|e| Error::Internal(e.to_string())))
        .collect::<Result<_>>()?;
    let views: Vec<_> = arrays.iter().map(|a| a.view()).collect();
    let stacked = concatenate(Axis(0), &views).map_err(|e| Error::Internal(e.to_string()))?;
    Ok(Tensor::from_array(&stacked))
}

/// A `[B, D]` tensor's rows (the answer of `stage`) as an f32 matrix.
pub fn matrix(stage: Stage, t: &Tensor) -> Result<Array2<f32>> {
    t.to_f32_array()
        .map_err(|e| Error::bad_answer(stage, e))?
        .into_dimensionality()
        .map_err(|e| Error::bad_answer(stage, e))
}

/// Checks a tensor's dtype, shape and byte length (what a cached or answered value must have).
pub fn check_tensor(t: &Tensor, dtype: DType, shape: &[i64]) -> std::result::Result<(), String> {
    if t.dtype != dtype as i32 {
        return Err(format!("dtype {} instead of {dtype:?}", t.dtype));
    }
    if t.shape != shape {
        return Err(format!("shape {:?} instead of {shape:?}", t.shape));
    }
    let elements: i64 = shape.iter().product();
    let size = unclip_proto::tensor::dtype_size(dtype) as i64;
    if t.data.len() as i64 != elements * size {
        return Err(format!(
            "{} bytes instead of {}",
            t.data.len(),
            elements * size
        ));
    }
    Ok(())
}

/// Checks one prompt's CLIP encoding.
fn check_text(e: &TextEncoding, d: i64, l: i64) -> std::result::Result<(), String> {
    let get = |t: &Option<Tensor>, name: &str| t.clone().ok_or_else(|| format!("no {name}"));
    check_tensor(
        &get(&e.text_embeds, "text_embeds")?,
        DType::Float32,
        &[1, d],
    )?;
    check_tensor(
        &get(&e.last_hidden_state, "last_hidden_state")?,
        DType::Float32,
        &[1, l, d],
    )?;
    check_tensor(
        &get(&e.attention_mask, "attention_mask")?,
        DType::Bool,
        &[1, l],
    )?;
    if e.truncated.len() != 1 {
        return Err(format!(
            "{} truncation flags for 1 prompt",
            e.truncated.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn tensor_checks() {
        let t = Tensor::from_array(&array![[1.0f32, 2.0]]);
        assert!(check_tensor(&t, DType::Float32, &[1, 2]).is_ok());
        assert!(check_tensor(&t, DType::Float32, &[2, 1]).is_err());
        assert!(check_tensor(&t, DType::Bool, &[1, 2]).is_err());
        let short = Tensor {
            data: t.data.slice(0..4),
            ..t.clone()
        };
        assert!(check_tensor(&short, DType::Float32, &[1, 2]).is_err());
        let stacked = stack_rows(&[t.clone(), t]).unwrap();
        assert_eq!(stacked.shape, vec![2, 2]);
    }
}
