//! The prior's denoising loop (unclip.md §1 step 3–4, §3, §4, §11), as a plain async function
//! over a [`PriorNetwork`]: the ONNX executor when serving, a closure in tests (replaying
//! recorded outputs, or wrapping the executor to record what it was given).
//!
//! For N rows (one per embedding to sample) and S steps with timesteps t₀ = 999 > … > 0:
//!
//! ```text
//! x ← noise [N, D]                                   (draw 1 of each row's stream)
//! for each step t → p:
//!     out ← prior([x; x], [t]*2N, [uncond; cond])    (guided: 2N rows, uncond half first)
//!     out ← out_u + s·(out_c − out_u)                (CFG over the whole vector)
//!     x   ← UnclipScheduler.step(out, t, x, p, z)    (z: the next draw, only while t > 0)
//! embedding ← x·clip_std + clip_mean                (raw CLIP image-embedding scale)
//! ```
//!
//! Guidance runs only when s > 1; otherwise the model sees the N conditional rows alone. (In
//! diffusers the doubled batch is built when either the prior's or the decoder's scale is > 1;
//! the prior service cannot know the decoder's scale, so its own scale decides. A prior scale of
//! exactly 1 gives the conditional output either way.) The unconditional branch is CLIP's
//! encoding of "" stored in tensors.safetensors, or a caller's negative prompt.
//!
//! Noise comes from [`PriorNoise`]: one seeded stream per row when serving, or explicit arrays
//! (recorded by diffusers) in tests, consumed in the same order: the initial latents, then one
//! draw per step with t > 0.

use std::collections::VecDeque;
use std::future::Future;

use ndarray::{Array1, Array2, Array3, ArrayView2, Axis, Ix2, concatenate, s};
use unclip_model_server::ServiceError;
use unclip_model_server::validate::TextConditioning;
use unclip_runtime::{ModelRepository, SessionExecutor, TensorData};
use unclip_sampler::{
    NoiseSource, NoiseStage, SchedulerConfig, StepOutput, UnclipScheduler, draw_batch, guide_prior,
};

/// The inputs of one prior model call, by the graph's input names.
#[derive(Debug, Clone, PartialEq)]
pub struct PriorInputs {
    /// The noisy normalised embeddings `[M, D]` (`[x; x]` with guidance).
    pub hidden_states: Array2<f32>,
    /// The training timestep of every row, `[M]`.
    pub timestep: Array1<i64>,
    /// CLIP `text_embeds` `[M, D]`.
    pub proj_embedding: Array2<f32>,
    /// CLIP `last_hidden_state` `[M, L, D]`.
    pub encoder_hidden_states: Array3<f32>,
    /// The text padding mask `[M, L]`.
    pub attention_mask: Array2<bool>,
}

impl PriorInputs {
    /// Named executor inputs.
    pub fn into_named(self) -> unclip_runtime::Inputs {
        vec![
            (
                "hidden_states".into(),
                TensorData::F32(self.hidden_states.into_dyn()),
            ),
            ("timestep".into(), TensorData::I64(self.timestep.into_dyn())),
            (
                "proj_embedding".into(),
                TensorData::F32(self.proj_embedding.into_dyn()),
            ),
            (
                "encoder_hidden_states".into(),
                TensorData::F32(self.encoder_hidden_states.into_dyn()),
            ),
            (
                "attention_mask".into(),
                TensorData::Bool(self.attention_mask.into_dyn()),
            ),
        ]
    }
}

/// The part of every model call that stays fixed over the loop: the text conditioning rows,
/// `[uncond × N; cond]` with guidance or `cond` alone.
#[derive(Debug, Clone, PartialEq)]
pub struct PriorConditioning {
    /// CLIP `text_embeds` `[M, D]`.
    pub proj_embedding: Array2<f32>,
    /// CLIP `last_hidden_state` `[M, L, D]`.
    pub encoder_hidden_states: Array3<f32>,
    /// The text padding mask `[M, L]`.
    pub attention_mask: Array2<bool>,
}

/// The prior network: one call predicts x̂₀ `[M, D]` for every row of [`PriorInputs`].
pub trait PriorNetwork {
    /// Runs one model call.
    fn predict(
        &self,
        inputs: PriorInputs,
    ) -> impl Future<Output = Result<Array2<f32>, ServiceError>> + Send;
}

impl PriorNetwork for SessionExecutor {
    fn predict(
        &self,
        inputs: PriorInputs,
    ) -> impl Future<Output = Result<Array2<f32>, ServiceError>> + Send {
        let rows = inputs.hidden_states.nrows();
        let outputs = self.run(inputs.into_named());
        async move {
            let out = outputs.await?.take_f32("predicted_image_embedding")?;
            let shape = out.shape().to_vec();
            out.into_dimensionality::<Ix2>()
                .ok()
                .filter(|o| o.nrows() == rows)
                .ok_or_else(|| {
                    ServiceError::Internal(format!(
                        "prior: predicted_image_embedding has shape {shape:?}, expected [{rows}, D]"
                    ))
                })
        }
    }
}

/// Any `Fn(PriorInputs) -> Future` is a network (tests replay or record calls this way).
impl<F, Fut> PriorNetwork for F
where
    F: Fn(PriorInputs) -> Fut,
    Fut: Future<Output = Result<Array2<f32>, ServiceError>> + Send,
{
    fn predict(
        &self,
        inputs: PriorInputs,
    ) -> impl Future<Output = Result<Array2<f32>, ServiceError>> + Send {
        self(inputs)
    }
}

/// Where the loop's standard-normal draws come from.
#[derive(Debug, Clone)]
pub enum PriorNoise {
    /// One stream per row (the row's seed on the prior's stream); the serving path.
    Seeded(Vec<NoiseSource>),
    /// Explicit `[N, D]` arrays consumed in order (initial latents, then one per step with
    /// t > 0): replaying draws recorded elsewhere, e.g. by diffusers.
    Explicit(VecDeque<Array2<f32>>),
}

impl PriorNoise {
    /// One stream per row, row r drawing from `seeds[r]`.
    pub fn seeded(seeds: impl IntoIterator<Item = u64>) -> Self {
        PriorNoise::Seeded(
            seeds
                .into_iter()
                .map(|seed| NoiseSource::new(seed, 0, NoiseStage::Prior))
                .collect(),
        )
    }

    /// Explicit draws, in order.
    pub fn explicit(draws: impl IntoIterator<Item = Array2<f32>>) -> Self {
        PriorNoise::Explicit(draws.into_iter().collect())
    }

    /// The next `[rows, dim]` draw.
    fn next(&mut self, rows: usize, dim: usize) -> Result<Array2<f32>, ServiceError> {
        match self {
            PriorNoise::Seeded(sources) => {
                if sources.len() != rows {
                    return Err(ServiceError::Internal(format!(
                        "prior noise: {} seeded streams for {rows} rows",
                        sources.len()
                    )));
                }
                Ok(draw_batch(sources, &[dim])
                    .into_dimensionality()
                    .expect("drawn as [rows, dim]"))
            }
            PriorNoise::Explicit(draws) => {
                let draw = draws.pop_front().ok_or_else(|| {
                    ServiceError::Internal("prior noise: explicit draws exhausted".into())
                })?;
                if draw.dim() != (rows, dim) {
                    return Err(ServiceError::Internal(format!(
                        "prior noise: explicit draw has shape {:?}, expected [{rows}, {dim}]",
                        draw.shape()
                    )));
                }
                Ok(draw)
            }
        }
    }
}

/// The text encoding of the unconditional branch of guidance, for one prompt ("" or a
/// negative prompt); every row's unconditional half uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct UncondEncoding {
    /// `text_embeds` `[D]`.
    pub text_embeds: Array1<f32>,
    /// `last_hidden_state` `[L, D]`.
    pub last_hidden_state: Array2<f32>,
    /// `attention_mask` `[L]`.
    pub attention_mask: Array1<bool>,
}

impl UncondEncoding {
    /// Prompt `row` of a decoded encoding.
    pub fn from_row(text: &TextConditioning, row: usize) -> Self {
        Self {
            text_embeds: text.text_embeds.row(row).to_owned(),
            last_hidden_state: text.last_hidden_state.index_axis(Axis(0), row).to_owned(),
            attention_mask: text.attention_mask.row(row).to_owned(),
        }
    }

    /// As a one-prompt [`TextConditioning`].
    pub fn to_conditioning(&self) -> TextConditioning {
        TextConditioning {
            text_embeds: self.text_embeds.clone().insert_axis(Axis(0)),
            last_hidden_state: self.last_hidden_state.clone().insert_axis(Axis(0)),
            attention_mask: self.attention_mask.clone().insert_axis(Axis(0)),
        }
    }
}

/// How one loop runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PriorSettings {
    /// Denoising steps (≥ 2).
    pub steps: usize,
    /// The classifier-free guidance scale; guidance runs when > 1.
    pub guidance_scale: f32,
}

impl PriorSettings {
    /// Whether the doubled [uncond; cond] batch is run.
    pub fn guided(&self) -> bool {
        self.guidance_scale > 1.0
    }
}

/// The result of a loop.
#[derive(Debug, Clone, PartialEq)]
pub struct PriorOutput {
    /// The final latents `[N, D]`, normalised embedding space (diffusers' `prior_latents`).
    pub latents: Array2<f32>,
    /// `latents·clip_std + clip_mean` `[N, D]`: raw CLIP image embeddings.
    pub image_embeds: Array2<f32>,
}

/// The prior's sampling loop for one model: the scheduler, the encoding of "", the
/// un-normalisation statistics. Immutable; shared by all requests.
#[derive(Debug, Clone)]
pub struct PriorSampler {
    /// The manifest's prior scheduler.
    scheduler: UnclipScheduler,
    /// CLIP("") from tensors.safetensors: the default unconditional branch.
    uncond: UncondEncoding,
    /// `prior_clip_mean` `[D]`.
    clip_mean: Array1<f32>,
    /// `prior_clip_std` `[D]`.
    clip_std: Array1<f32>,
}

fn sampler_error(e: unclip_sampler::SamplerError) -> ServiceError {
    ServiceError::Internal(format!("prior sampler: {e}"))
}

impl PriorSampler {
    /// A sampler from its parts.
    pub fn new(
        scheduler: SchedulerConfig,
        uncond: UncondEncoding,
        clip_mean: Array1<f32>,
        clip_std: Array1<f32>,
    ) -> Result<Self, ServiceError> {
        Ok(Self {
            scheduler: UnclipScheduler::new(scheduler).map_err(sampler_error)?,
            uncond,
            clip_mean,
            clip_std,
        })
    }

    /// The sampler of a repository: its prior scheduler, CLIP("") and clip mean/std.
    pub fn from_repository(repo: &ModelRepository) -> Result<Self, ServiceError> {
        let tensors = repo.tensors();
        let u = tensors.uncond_text();
        Self::new(
            repo.manifest().schedulers.prior,
            UncondEncoding {
                text_embeds: u.text_embeds,
                last_hidden_state: u.last_hidden_state,
                attention_mask: u.attention_mask,
            },
            tensors.prior_clip_mean(),
            tensors.prior_clip_std(),
        )
    }

    /// The encoding of "" used when a request brings no negative prompt.
    pub fn uncond(&self) -> &UncondEncoding {
        &self.uncond
    }

    /// The embedding width D.
    pub fn embedding_dim(&self) -> usize {
        self.clip_mean.len()
    }

    /// The timesteps of an `steps`-step loop (999 … 0).
    pub fn timesteps(&self, steps: usize) -> Result<Vec<i64>, ServiceError> {
        self.scheduler.timesteps(steps).map_err(sampler_error)
    }

    /// The constant part of every model call: `[uncond × N; cond]` (guided) or `cond` alone.
    pub fn conditioning(
        &self,
        text: &TextConditioning,
        negative: Option<&UncondEncoding>,
        guided: bool,
    ) -> PriorConditioning {
        let n = text.len();
        let (proj_embedding, encoder_hidden_states, attention_mask) = if guided {
            let u = negative.unwrap_or(&self.uncond);
            let ue = u
                .text_embeds
                .broadcast((n, u.text_embeds.len()))
                .expect("[D] → [N, D]");
            let (l, d) = u.last_hidden_state.dim();
            let uh = u
                .last_hidden_state
                .broadcast((n, l, d))
                .expect("[L, D] → [N, L, D]");
            let um = u.attention_mask.broadcast((n, l)).expect("[L] → [N, L]");
            (
                concatenate(Axis(0), &[ue, text.text_embeds.view()]).expect("same widths"),
                concatenate(Axis(0), &[uh, text.last_hidden_state.view()]).expect("same L, D"),
                concatenate(Axis(0), &[um, text.attention_mask.view()]).expect("same L"),
            )
        } else {
            (
                text.text_embeds.clone(),
                text.last_hidden_state.clone(),
                text.attention_mask.clone(),
            )
        };
        PriorConditioning {
            proj_embedding,
            encoder_hidden_states,
            attention_mask,
        }
    }

    /// The model call at timestep `t` for `latents` `[N, D]`, given [`Self::conditioning`].
    pub fn model_inputs(
        &self,
        conditioning: &PriorConditioning,
        latents: ArrayView2<'_, f32>,
        t: i64,
        guided: bool,
    ) -> PriorInputs {
        let hidden_states = if guided {
            concatenate(Axis(0), &[latents, latents]).expect("same widths")
        } else {
            latents.to_owned()
        };
        PriorInputs {
            timestep: Array1::from_elem(hidden_states.nrows(), t),
            hidden_states,
            proj_embedding: conditioning.proj_embedding.clone(),
            encoder_hidden_states: conditioning.encoder_hidden_states.clone(),
            attention_mask: conditioning.attention_mask.clone(),
        }
    }

    /// One step of the loop after the model call: guidance (when `guidance_scale` is `Some`,
    /// over a `[2N, D]` output) and the scheduler step t → `prev` from `sample` `[N, D]`
    /// (`noise` is required while t > 0). Returns x_prev and the (clipped) x̂₀.
    pub fn guide_and_step(
        &self,
        model_output: ArrayView2<'_, f32>,
        guidance_scale: Option<f32>,
        t: i64,
        prev: Option<i64>,
        sample: ArrayView2<'_, f32>,
        noise: Option<ArrayView2<'_, f32>>,
    ) -> Result<StepOutput, ServiceError> {
        let guided = match guidance_scale {
            Some(scale) => {
                guide_prior(&model_output.into_dyn(), &[scale]).map_err(sampler_error)?
            }
            None => model_output.to_owned().into_dyn(),
        };
        let noise = noise.map(|z| z.into_dyn());
        self.scheduler
            .step_uniform(&guided.view(), t, &sample.into_dyn(), prev, noise.as_ref())
            .map_err(sampler_error)
    }

    /// `latents·clip_std + clip_mean`, row by row.
    pub fn unnormalize(&self, latents: ArrayView2<'_, f32>) -> Array2<f32> {
        let mut out = latents.to_owned();
        out.rows_mut().into_iter().for_each(|mut row| {
            row.zip_mut_with(&self.clip_std, |x, s| *x *= s);
            row.zip_mut_with(&self.clip_mean, |x, m| *x += m);
        });
        out
    }

    /// Runs the whole loop for the N rows of `text` (one embedding per row). `negative`
    /// replaces the encoding of "" in the unconditional branch.
    pub async fn sample<N: PriorNetwork>(
        &self,
        network: &N,
        text: &TextConditioning,
        negative: Option<&UncondEncoding>,
        settings: PriorSettings,
        noise: &mut PriorNoise,
    ) -> Result<PriorOutput, ServiceError> {
        self.sample_observed(network, text, negative, settings, noise, &mut |_| {})
            .await
    }

    /// [`Self::sample`], calling `on_step(k)` after the k-th step (1-based).
    pub async fn sample_observed<N: PriorNetwork>(
        &self,
        network: &N,
        text: &TextConditioning,
        negative: Option<&UncondEncoding>,
        settings: PriorSettings,
        noise: &mut PriorNoise,
        on_step: &mut (dyn FnMut(usize) + Send),
    ) -> Result<PriorOutput, ServiceError> {
        let (rows, dim) = (text.len(), self.embedding_dim());
        if text.text_embeds.ncols() != dim {
            return Err(ServiceError::Internal(format!(
                "prior: text_embeds width {} differs from clip_mean's {dim}",
                text.text_embeds.ncols()
            )));
        }
        let guided = settings.guided();
        let timesteps = self.timesteps(settings.steps)?;
        let conditioning = self.conditioning(text, negative, guided);

        let mut latents = noise.next(rows, dim)?;
        for (i, &t) in timesteps.iter().enumerate() {
            let prev = timesteps.get(i + 1).copied();
            let inputs = self.model_inputs(&conditioning, latents.view(), t, guided);
            let expected_rows = inputs.hidden_states.nrows();
            let output = network.predict(inputs).await?;
            if output.dim() != (expected_rows, dim) {
                return Err(ServiceError::Internal(format!(
                    "prior: the model returned shape {:?}, expected [{expected_rows}, {dim}]",
                    output.shape()
                )));
            }
            // The final step (t = 0) draws nothing, as in diffusers.
            let z = if t > 0 {
                Some(noise.next(rows, dim)?)
            } else {
                None
            };
            let step = self.guide_and_step(
                output.view(),
                guided.then_some(settings.guidance_scale),
                t,
                prev,
                latents.view(),
                z.as_ref().map(|z| z.view()),
            )?;
            latents = step
                .prev_sample
                .into_dimensionality()
                .expect("the step keeps [N, D]");
            on_step(i + 1);
        }
        let image_embeds = self.unnormalize(latents.view());
        Ok(PriorOutput {
            latents,
            image_embeds,
        })
    }
}

/// Best-of-k reranking (the DALL·E 2 paper): rows come in groups of `best_of` candidates of
/// one embedding; each group keeps the candidate whose embedding has the highest dot product
/// with `text_embeds` (that group's prompt embedding, one row per group). Ties and NaNs keep
/// the earlier candidate. Returns (index within the group, score) per group.
pub fn best_of_k(
    candidates: ArrayView2<'_, f32>,
    text_embeds: ArrayView2<'_, f32>,
    best_of: usize,
) -> Vec<(usize, f32)> {
    let best_of = best_of.max(1);
    candidates
        .axis_chunks_iter(Axis(0), best_of)
        .zip(text_embeds.rows())
        .map(|(group, text)| {
            let mut best = (0, group.row(0).dot(&text));
            for (c, row) in group.rows().into_iter().enumerate().skip(1) {
                let score = row.dot(&text);
                if score > best.1 {
                    best = (c, score);
                }
            }
            best
        })
        .collect()
}

/// Rows `rows` of `text`, in that order (prompt i repeated for each of its embeddings).
pub fn select_rows(text: &TextConditioning, rows: &[usize]) -> TextConditioning {
    TextConditioning {
        text_embeds: text.text_embeds.select(Axis(0), rows),
        last_hidden_state: text.last_hidden_state.select(Axis(0), rows),
        attention_mask: text.attention_mask.select(Axis(0), rows),
    }
}

/// Copies `part` into rows `start..` of `into`.
pub(crate) fn put_rows(into: &mut Array2<f32>, start: usize, part: &Array2<f32>) {
    into.slice_mut(s![start..start + part.nrows(), ..])
        .assign(part);
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use ndarray::array;

    use super::*;

    fn sampler(d: usize, l: usize) -> PriorSampler {
        PriorSampler::new(
            SchedulerConfig::karlo_prior(),
            UncondEncoding {
                text_embeds: Array1::from_elem(d, -1.0),
                last_hidden_state: Array2::from_elem((l, d), -2.0),
                attention_mask: Array1::from_shape_fn(l, |i| i < 2),
            },
            Array1::from_elem(d, 0.5),
            Array1::from_elem(d, 2.0),
        )
        .unwrap()
    }

    fn text(n: usize, d: usize, l: usize) -> TextConditioning {
        TextConditioning {
            text_embeds: Array2::from_shape_fn((n, d), |(i, j)| (i * d + j) as f32),
            last_hidden_state: Array3::from_elem((n, l, d), 3.0),
            attention_mask: Array2::from_elem((n, l), true),
        }
    }

    /// With guidance the model sees [uncond × N; cond] and every row's timestep; without, the
    /// conditional rows alone.
    #[tokio::test]
    async fn assembles_model_calls() {
        let s = sampler(4, 3);
        let calls = Mutex::new(Vec::new());
        let network = |inputs: PriorInputs| {
            let rows = inputs.hidden_states.nrows();
            calls.lock().unwrap().push(inputs);
            async move { Ok(Array2::zeros((rows, 4))) }
        };
        let settings = PriorSettings {
            steps: 3,
            guidance_scale: 4.0,
        };
        let mut noise = PriorNoise::seeded([1, 2]);
        s.sample(&network, &text(2, 4, 3), None, settings, &mut noise)
            .await
            .unwrap();
        let calls = calls.into_inner().unwrap();
        assert_eq!(calls.len(), 3);
        assert_eq!(calls[0].timestep.to_vec(), vec![999; 4]);
        assert_eq!(calls[2].timestep.to_vec(), vec![0; 4]);
        let c = &calls[1];
        assert_eq!(c.proj_embedding.row(0).to_vec(), vec![-1.0; 4]);
        assert_eq!(c.proj_embedding.row(3), text(2, 4, 3).text_embeds.row(1));
        assert_eq!(c.encoder_hidden_states[[1, 2, 3]], -2.0);
        assert_eq!(c.encoder_hidden_states[[2, 2, 3]], 3.0);
        assert_eq!(c.attention_mask.row(0).to_vec(), vec![true, true, false]);
        assert_eq!(c.hidden_states.row(0), c.hidden_states.row(2));

        // A negative prompt replaces "" in the unconditional half.
        let negative = UncondEncoding::from_row(&text(2, 4, 3), 1);
        let cond = s.conditioning(&text(2, 4, 3), Some(&negative), true);
        assert_eq!(cond.proj_embedding.row(0), negative.text_embeds);
        assert_eq!(cond.proj_embedding.row(1), negative.text_embeds);
        assert!(cond.attention_mask.row(0).iter().all(|m| *m));

        let calls = Mutex::new(Vec::new());
        let network = |inputs: PriorInputs| {
            let rows = inputs.hidden_states.nrows();
            calls.lock().unwrap().push(inputs);
            async move { Ok(Array2::zeros((rows, 4))) }
        };
        let settings = PriorSettings {
            steps: 2,
            guidance_scale: 1.0,
        };
        s.sample(
            &network,
            &text(2, 4, 3),
            None,
            settings,
            &mut PriorNoise::seeded([1, 2]),
        )
        .await
        .unwrap();
        let calls = calls.into_inner().unwrap();
        assert_eq!(calls[0].hidden_states.nrows(), 2);
        assert_eq!(calls[0].proj_embedding, text(2, 4, 3).text_embeds);
    }

    /// A model that always predicts x₀ = c ends at c (the last step returns x̂₀·≈1), and the
    /// raw embedding is c·std + mean; rows are independent of their batch.
    #[tokio::test]
    async fn converges_to_the_prediction_and_unnormalises() {
        let s = sampler(4, 3);
        let network = |inputs: PriorInputs| {
            let rows = inputs.hidden_states.nrows();
            async move { Ok(Array2::from_elem((rows, 4), 0.25)) }
        };
        let settings = PriorSettings {
            steps: 5,
            guidance_scale: 3.0,
        };
        let out = s
            .sample(
                &network,
                &text(3, 4, 3),
                None,
                settings,
                &mut PriorNoise::seeded([7, 8, 9]),
            )
            .await
            .unwrap();
        for v in out.latents.iter() {
            assert!((v - 0.25).abs() < 1e-3, "{v}");
        }
        for (x, y) in out.latents.iter().zip(out.image_embeds.iter()) {
            assert_eq!(*y, x * 2.0 + 0.5);
        }
        // Row 1 (seed 8) alone equals row 1 of the batch.
        let alone = s
            .sample(
                &network,
                &select_rows(&text(3, 4, 3), &[1]),
                None,
                settings,
                &mut PriorNoise::seeded([8]),
            )
            .await
            .unwrap();
        assert_eq!(alone.latents.row(0), out.latents.row(1));
    }

    /// Explicit noise is consumed in order and must have the right shape.
    #[tokio::test]
    async fn explicit_noise() {
        let s = sampler(2, 3);
        let network = |inputs: PriorInputs| {
            let x = inputs.hidden_states.clone();
            async move { Ok(x) }
        };
        let settings = PriorSettings {
            steps: 2,
            guidance_scale: 1.0,
        };
        let t = text(1, 2, 3);
        let mut noise = PriorNoise::explicit([array![[1.0, -1.0]], array![[0.0, 0.0]]]);
        let out = s
            .sample(&network, &t, None, settings, &mut noise)
            .await
            .unwrap();
        assert!(out.latents[[0, 0]] > 0.0 && out.latents[[0, 1]] < 0.0);
        let mut short = PriorNoise::explicit([array![[1.0, -1.0]]]);
        let e = s
            .sample(&network, &t, None, settings, &mut short)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("exhausted"), "{e}");
        let mut wrong = PriorNoise::explicit([array![[1.0, -1.0, 0.0]]]);
        assert!(
            s.sample(&network, &t, None, settings, &mut wrong)
                .await
                .is_err()
        );
    }

    /// Best-of-k keeps the highest dot product per group, the first on ties.
    #[test]
    fn reranks_by_dot_product() {
        let candidates = array![
            [1.0, 0.0],
            [0.0, 2.0],
            [0.5, 0.5],
            [1.0, 1.0],
            [1.0, 1.0],
            [0.0, 0.0]
        ];
        let text = array![[0.0, 1.0], [1.0, 1.0]];
        assert_eq!(
            best_of_k(candidates.view(), text.view(), 3),
            vec![(1, 2.0), (0, 2.0)]
        );
        let x_axis = Array2::from_shape_fn((6, 2), |(_, j)| if j == 0 { 1.0 } else { 0.0 });
        assert_eq!(best_of_k(candidates.view(), x_axis.view(), 1)[2], (0, 0.5));
    }
}
