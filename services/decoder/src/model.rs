//! The loaded decoder model and the work behind each RPC: validated job in, response out.
//!
//! Loading (hashing, parsing, session creation) happens once at start-up on a blocking thread.
//! Each request's work runs on one blocking thread too (tokio's blocking pool): the sampling loop
//! is synchronous, its scheduler math can take milliseconds per step at 1024², and its model
//! calls wait on the executors' own threads. The async runtime only awaits the result.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::Context as _;
use ndarray::{Array2, ArrayD, Axis, Ix4, IxDyn, Slice};
use unclip_model_server::{ServiceError, StageModel, Steps};
use unclip_proto::v1::{DecodeResponse, ImageFormat, InvertResponse, Tensor, UpsampleResponse};
use unclip_runtime::{Device, ModelRepository};
use unclip_sampler::{BicubicResizer, NoiseStage};

use crate::conditioning::{ImageConditioning, Unconditional, plan};
use crate::config::Config;
use crate::graphs::Graphs;
use crate::images::encode_pngs;
use crate::noise::SeededNoise;
use crate::request::{Context, DecodeJob, InvertJob, Limits, UpsampleJob};
use crate::sampling::{self, Inpaint, LoopSettings, SamplerKind, Stepper};

/// The decoder, its text projection and the super-resolution cascade, ready to serve.
#[derive(Debug)]
pub struct DecoderModel {
    /// The opened repository (manifest, sizes, tensors).
    repo: ModelRepository,
    /// Where the graphs run.
    device: Device,
    /// The executors.
    graphs: Graphs,
    /// The unconditional half of guidance (learned CFG embedding, encoding of "").
    uncond: Unconditional,
    /// Each stage's bicubic upsampling of its input, weights precomputed.
    resizers: Vec<BicubicResizer>,
}

impl DecoderModel {
    /// The repository.
    pub fn repo(&self) -> &ModelRepository {
        &self.repo
    }

    /// The device the graphs run on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Labels of the loaded components.
    pub fn components(&self) -> Vec<String> {
        let mut c = vec!["text_proj".to_string(), "decoder".to_string()];
        if self.graphs.has_decoder_inpaint() {
            c.push("decoder_inpaint".to_string());
        }
        c.extend((0..self.resizers.len()).map(|i| format!("upsamplers[{i}]")));
        c
    }

    /// Most steps a request may ask for: the shorter of the two training schedules.
    pub fn max_steps(&self) -> u32 {
        let s = &self.repo.manifest().schedulers;
        s.decoder
            .num_train_timesteps
            .min(s.upsampler.num_train_timesteps) as u32
    }

    /// The validation context under `limits`.
    pub fn context(&self, limits: Limits) -> Context<'_> {
        Context {
            repo: &self.repo,
            uncond: &self.uncond,
            limits,
        }
    }

    /// Runs a Decode, reporting its steps to `steps`.
    pub fn decode(
        &self,
        job: DecodeJob,
        cancelled: &AtomicBool,
        steps: &Steps,
    ) -> Result<DecodeResponse, ServiceError> {
        let sizes = self.repo.sizes();
        let stepper = Stepper::new(self.repo.manifest().schedulers.decoder, job.sampler)?;
        let timesteps = stepper.timesteps(job.steps as usize)?;
        let mut graphs = self.graphs.calls(cancelled);
        let cond = sampling::condition(
            &mut graphs,
            plan(
                &job.cond,
                &self.uncond,
                job.guidance_scale,
                sizes.decoder_context_length,
            ),
        )?;
        let mut noise = SeededNoise::from_seeds(&job.seeds, NoiseStage::Decoder);
        let settings = LoopSettings {
            stepper: &stepper,
            timesteps: &timesteps,
            init_noise: job.init_noise.as_ref(),
            inpaint: job.inpaint.as_ref(),
        };
        let images = sampling::decode(
            &mut graphs,
            &cond,
            sizes.decoder_image_size,
            &mut noise,
            &settings,
            &mut |trace| steps.report(trace.index + 1, timesteps.len()),
        )?;
        let (images, samples) = respond(images, job.format)?;
        Ok(DecodeResponse {
            // Filled in by the handler, which holds the request's ComputeMeter.
            compute_seconds: 0.0,
            images,
            samples,
            seeds: job.seeds,
            steps: job.steps as i32,
            guidance_scale: job.guidance_scale,
        })
    }

    /// Runs an Upsample, reporting its steps to `steps`.
    pub fn upsample(
        &self,
        job: UpsampleJob,
        cancelled: &AtomicBool,
        steps: &Steps,
    ) -> Result<UpsampleResponse, ServiceError> {
        let resizer = self
            .resizers
            .get(job.stage)
            .ok_or_else(|| ServiceError::Internal(format!("no upsampler stage {}", job.stage)))?;
        let upscaled = resizer
            .resize(&job.low_res.view())
            .map_err(sampling::internal)?;
        let stepper = Stepper::new(self.repo.manifest().schedulers.upsampler, job.sampler)?;
        let timesteps = stepper.timesteps(job.steps as usize)?;
        let mut noise =
            SeededNoise::from_seeds(&job.seeds, NoiseStage::Upsampler(job.stage as u32));
        let settings = LoopSettings {
            stepper: &stepper,
            timesteps: &timesteps,
            init_noise: job.init_noise.as_ref(),
            inpaint: job.inpaint.as_ref(),
        };
        let images = sampling::upsample(
            &mut self.graphs.calls(cancelled),
            job.stage,
            &upscaled,
            &mut noise,
            &settings,
            &mut |trace| steps.report(trace.index + 1, timesteps.len()),
        )?;
        let (images, samples) = respond(images, job.format)?;
        Ok(UpsampleResponse {
            // Filled in by the handler, which holds the request's ComputeMeter.
            compute_seconds: 0.0,
            images,
            samples,
            seeds: job.seeds,
            steps: job.steps as i32,
        })
    }

    /// Runs an Invert, reporting its steps to `steps`.
    pub fn invert(
        &self,
        job: InvertJob,
        cancelled: &AtomicBool,
        steps: &Steps,
    ) -> Result<InvertResponse, ServiceError> {
        let sizes = self.repo.sizes();
        let stepper = Stepper::new(
            self.repo.manifest().schedulers.decoder,
            SamplerKind::Ddim { eta: 0.0 },
        )?;
        let timesteps = stepper.timesteps(job.steps as usize)?;
        let mut graphs = self.graphs.calls(cancelled);
        let cond = sampling::condition(
            &mut graphs,
            plan(
                &job.cond,
                &self.uncond,
                job.guidance_scale,
                sizes.decoder_context_length,
            ),
        )?;
        let total = timesteps.len();
        let noise = sampling::invert(
            &mut graphs,
            &cond,
            &job.images,
            &timesteps,
            &stepper,
            &mut |k| steps.report(k, total),
        )?;
        Ok(InvertResponse {
            // Filled in by the handler, which holds the request's ComputeMeter.
            compute_seconds: 0.0,
            noise: Some(Tensor::from_array(&noise)),
            steps: job.steps as i32,
        })
    }

    /// One Decode (2 steps, guided) and one Upsample per stage (2 steps) through the whole
    /// request path, checking that the results are finite. Required before SERVING: it also pays
    /// ONNX Runtime's first-run costs. Blocking.
    pub fn warm_up_blocking(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        let never = AtomicBool::new(false);
        let d = self.repo.sizes().embedding_dim;
        let job = DecodeJob {
            cond: ImageConditioning {
                image_embeds: Array2::zeros((1, d)),
                text: self.uncond.empty_text(1),
            },
            seeds: vec![0],
            steps: 2,
            guidance_scale: self.repo.manifest().defaults.decoder_guidance_scale,
            sampler: SamplerKind::Unclip,
            init_noise: None,
            inpaint: None,
            format: ImageFormat::PngAndTensor,
        };
        if self.graphs.has_decoder_inpaint() {
            // A masked Decode runs the inpainting decoder: warm it up (and check it) too.
            let s = self.repo.sizes().decoder_image_size;
            let mut mask = ArrayD::<f32>::ones(IxDyn(&[1, 1, s, s]));
            mask.slice_axis_mut(Axis(3), Slice::from(s / 2..)).fill(0.0);
            let masked = DecodeJob {
                inpaint: Some(Inpaint {
                    known: ArrayD::zeros(IxDyn(&[1, 3, s, s])),
                    mask,
                }),
                format: ImageFormat::Tensor,
                ..job.clone()
            };
            let out = self
                .decode(masked, &never, &Steps::none())
                .map_err(|e| anyhow::anyhow!("warm-up masked Decode failed: {e}"))?
                .samples
                .context("warm-up masked Decode returned no samples")?
                .to_f32_array()?;
            anyhow::ensure!(
                out.iter().all(|v| v.is_finite()),
                "warm-up masked Decode produced non-finite values"
            );
        }
        let decoded = self
            .decode(job, &never, &Steps::none())
            .map_err(|e| anyhow::anyhow!("warm-up Decode failed: {e}"))?;
        let mut low_res = decoded
            .samples
            .context("warm-up Decode returned no samples")?
            .to_f32_array()?;
        anyhow::ensure!(
            low_res.iter().all(|v| v.is_finite()),
            "warm-up Decode produced non-finite values"
        );
        for stage in 0..self.resizers.len() {
            let job = UpsampleJob {
                stage,
                seeds: vec![0; low_res.shape()[0]],
                low_res,
                steps: 2,
                sampler: SamplerKind::Unclip,
                init_noise: None,
                inpaint: None,
                format: ImageFormat::Tensor,
            };
            let out = self
                .upsample(job, &never, &Steps::none())
                .map_err(|e| anyhow::anyhow!("warm-up Upsample (stage {stage}) failed: {e}"))?;
            low_res = out
                .samples
                .context("warm-up Upsample returned no samples")?
                .to_f32_array()?;
            anyhow::ensure!(
                low_res.iter().all(|v| v.is_finite()),
                "warm-up Upsample (stage {stage}) produced non-finite values"
            );
        }
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "warm-up done"
        );
        Ok(())
    }
}

impl StageModel for DecoderModel {
    type Config = Config;

    /// Checks the opened repository, hashes the files this service uses, loads ONNX Runtime
    /// and the sessions, then warms up ([`DecoderModel::warm_up_blocking`]): the decoder's
    /// loops block, so its warm-up belongs here, on the blocking thread, rather than in
    /// [`StageModel::warm_up`]. Blocking.
    fn open(config: &Config, repo: ModelRepository) -> anyhow::Result<Self> {
        let started = Instant::now();
        let mut files = Graphs::files(&repo);
        files.push(&repo.manifest().tensors.file);
        repo.verify_files(files.iter().copied())
            .context("checking the model files")?;
        let env = config.runtime.init_environment()?;
        let graphs = Graphs::load(&repo, &env, &config.runtime.session_config())?;
        let resizers = repo
            .sizes()
            .upsampler_sizes
            .iter()
            .map(|&(i, o)| BicubicResizer::new((i, i), (o, o)))
            .collect::<Result<Vec<_>, _>>()
            .context("preparing the bicubic upsampling")?;
        let tensors = repo.tensors();
        let uncond = Unconditional {
            image_embedding: tensors.decoder_cfg_embedding(),
            text: tensors.uncond_text(),
        };
        tracing::info!(
            model = %repo.manifest().model_id,
            version = %repo.manifest().version,
            device = %config.runtime.device,
            upsampler_stages = resizers.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        let model = Self {
            repo,
            device: config.runtime.device,
            graphs,
            uncond,
            resizers,
        };
        model.warm_up_blocking().context("warming the model up")?;
        Ok(model)
    }

    /// Each graph's executor counters, for `/metrics`.
    fn graphs(&self) -> Vec<(String, unclip_runtime::ExecutorStats)> {
        self.graphs.stats()
    }
}

/// The response's PNGs and/or tensor for `images` `[N, 3, S, S]`.
fn respond(
    images: ArrayD<f32>,
    format: ImageFormat,
) -> Result<(Vec<bytes::Bytes>, Option<Tensor>), ServiceError> {
    let pngs = match format {
        ImageFormat::Tensor => Vec::new(),
        _ => {
            let view = images
                .view()
                .into_dimensionality::<Ix4>()
                .map_err(|e| ServiceError::Internal(format!("result shape: {e}")))?;
            encode_pngs(&view)?
        }
    };
    let tensor = match format {
        ImageFormat::Tensor | ImageFormat::PngAndTensor => Some(Tensor::from_array(&images)),
        _ => None,
    };
    Ok((pngs, tensor))
}
