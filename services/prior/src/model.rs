//! The loaded prior of one model repository, and the work behind `Sample`: expanding prompts
//! into rows (images × best-of candidates), seeding each row, running the loop in chunks, and
//! reranking.
//!
//! Loading (blocking: hashing, parsing, session creation) happens once at start-up on a
//! blocking thread. Per request the graph runs on its executor's own thread; the loop's own
//! arithmetic (guidance, scheduler steps, noise) is O(rows × D) per step, microseconds, so it
//! stays on the async task.

use std::time::Instant;

use anyhow::Context;
use ndarray::{Array2, Axis};
use unclip_model_server::validate::TextConditioning;
use unclip_model_server::{ServiceError, StageModel, Steps};
use unclip_runtime::{Device, ExecutorStats, ModelRepository, SessionExecutor};

use crate::config::Config;
use crate::sampler::{
    PriorNoise, PriorSampler, PriorSettings, UncondEncoding, best_of_k, put_rows, select_rows,
};

/// One validated Sample request.
#[derive(Debug, Clone)]
pub struct SampleJob {
    /// The B prompts' encodings.
    pub text: TextConditioning,
    /// The unconditional branch instead of "" (a negative prompt).
    pub negative: Option<UncondEncoding>,
    /// Embeddings per prompt (≥ 1).
    pub num_images: usize,
    /// Candidates per embedding (≥ 1; 1 = no reranking).
    pub best_of: usize,
    /// The request's base seed.
    pub seed: u64,
    /// Steps and guidance.
    pub settings: PriorSettings,
}

/// What `Sample` returns.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleResult {
    /// `[B × num_images, D]`, raw CLIP scale, prompt-major.
    pub image_embeds: Array2<f32>,
    /// The seed each row's noise came from.
    pub seeds: Vec<u64>,
    /// Each row's rerank score (dot product with its prompt's text_embeds); empty without
    /// reranking.
    pub scores: Vec<f32>,
}

/// The seed of candidate `candidate` of image `image` (the row index k) of a request with
/// `seed`: seed + k + candidate·2³², wrapping. Candidate 0 is the image without reranking.
pub fn row_seed(seed: u64, image: u64, candidate: u64) -> u64 {
    seed.wrapping_add(image).wrapping_add(candidate << 32)
}

/// The prior, ready to serve.
#[derive(Debug)]
pub struct PriorModel {
    /// The opened repository (manifest, sizes, tensors).
    repo: ModelRepository,
    /// Where the graph runs.
    device: Device,
    /// The loop: scheduler, CLIP(""), clip mean/std.
    sampler: PriorSampler,
    /// The prior graph.
    prior: SessionExecutor,
    /// Most rows per model call (twice this with guidance).
    max_rows_per_call: usize,
}

impl PriorModel {
    /// The repository.
    pub fn repo(&self) -> &ModelRepository {
        &self.repo
    }

    /// The device the graph runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Labels of the loaded components.
    pub fn components(&self) -> Vec<&'static str> {
        vec!["prior"]
    }

    /// Runs a validated request: B × num_images × best_of rows, each with its own seed, in
    /// chunks of at most `max_rows_per_call`, then keeps the best candidate of each image.
    /// `steps` hears of every step of every chunk.
    pub async fn sample(
        &self,
        job: SampleJob,
        steps: &Steps,
    ) -> Result<SampleResult, ServiceError> {
        let (b, images, best_of) = (job.text.len(), job.num_images, job.best_of.max(1));
        let per_prompt = images * best_of;
        let total = b * per_prompt;
        // Row r = (k · best_of + c) for image k = i · num_images + j of prompt i.
        let prompt_of_row: Vec<usize> = (0..total).map(|r| r / per_prompt).collect();
        let seeds: Vec<u64> = (0..total)
            .map(|r| row_seed(job.seed, (r / best_of) as u64, (r % best_of) as u64))
            .collect();

        let dim = self.sampler.embedding_dim();
        let mut embeds = Array2::<f32>::zeros((total, dim));
        let loop_steps = job.settings.steps;
        let all_steps = total.div_ceil(self.max_rows_per_call) * loop_steps;
        for (chunk, start) in (0..total).step_by(self.max_rows_per_call).enumerate() {
            let end = (start + self.max_rows_per_call).min(total);
            let text = select_rows(&job.text, &prompt_of_row[start..end]);
            let mut noise = PriorNoise::seeded(seeds[start..end].iter().copied());
            let out = self
                .sampler
                .sample_observed(
                    &self.prior,
                    &text,
                    job.negative.as_ref(),
                    job.settings,
                    &mut noise,
                    &mut |k| steps.report(chunk * loop_steps + k, all_steps),
                )
                .await?;
            put_rows(&mut embeds, start, &out.image_embeds);
        }

        if best_of == 1 {
            return Ok(SampleResult {
                image_embeds: embeds,
                seeds,
                scores: Vec::new(),
            });
        }
        let image_prompts: Vec<usize> = (0..b * images).map(|k| k / images).collect();
        let text_per_image = job.text.text_embeds.select(Axis(0), &image_prompts);
        let picks = best_of_k(embeds.view(), text_per_image.view(), best_of);
        let kept: Vec<usize> = picks
            .iter()
            .enumerate()
            .map(|(k, (c, _))| k * best_of + c)
            .collect();
        Ok(SampleResult {
            image_embeds: embeds.select(Axis(0), &kept),
            seeds: kept.iter().map(|&r| seeds[r]).collect(),
            scores: picks.iter().map(|(_, score)| *score).collect(),
        })
    }
}

impl StageModel for PriorModel {
    type Config = Config;

    /// Checks the opened repository, hashes the files this service uses, loads ONNX Runtime
    /// and the prior session. Blocking.
    fn open(config: &Config, repo: ModelRepository) -> anyhow::Result<Self> {
        let started = Instant::now();
        let manifest = repo.manifest();
        // Hash exactly what this service reads, so it serves what the version names.
        repo.verify_files([
            manifest.tensors.file.as_str(),
            manifest.components.prior.file.as_str(),
        ])
        .context("checking the model files")?;
        let sampler = PriorSampler::from_repository(&repo)
            .map_err(|e| anyhow::anyhow!("building the prior sampler: {e}"))?;
        let env = config.runtime.init_environment()?;
        let prior = repo.load_executor(
            &env,
            "prior",
            &manifest.components.prior,
            &config.runtime.session_config(),
        )?;
        tracing::info!(
            model = %manifest.model_id,
            version = %manifest.version,
            device = %config.runtime.device,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        Ok(Self {
            device: config.runtime.device,
            repo,
            sampler,
            prior,
            max_rows_per_call: config.max_rows_per_call.max(1),
        })
    }

    /// Samples one embedding for the prompt "" (guided, 2 steps, best of 2) through the whole
    /// Sample path and checks it is finite. Required before SERVING.
    async fn warm_up(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        let job = SampleJob {
            text: self.sampler.uncond().to_conditioning(),
            negative: None,
            num_images: 1,
            best_of: 2,
            seed: 0,
            settings: PriorSettings {
                steps: 2,
                guidance_scale: 4.0,
            },
        };
        let result = self
            .sample(job, &Steps::none())
            .await
            .map_err(|e| anyhow::anyhow!("warm-up Sample failed: {e}"))?;
        anyhow::ensure!(
            result.image_embeds.dim() == (1, self.repo.sizes().embedding_dim)
                && result.image_embeds.iter().all(|v| v.is_finite()),
            "warm-up Sample returned a non-finite or misshapen embedding"
        );
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "warm-up done"
        );
        Ok(())
    }

    /// The graph's executor counters, for `/metrics`.
    fn graphs(&self) -> Vec<(String, ExecutorStats)> {
        vec![("prior".to_string(), self.prior.stats())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Candidate 0 is the plain image seed; candidates live 2³² apart; seeds wrap.
    #[test]
    fn seeds() {
        assert_eq!(row_seed(10, 3, 0), 13);
        assert_eq!(row_seed(10, 3, 2), 13 + (2 << 32));
        assert_eq!(row_seed(u64::MAX, 1, 0), 0);
    }
}
