//! The sampling loops: the base decoder, one super-resolution stage, and DDIM inversion.
//!
//! Each loop is a plain synchronous function over a graph trait ([`DecoderGraphs`],
//! [`UpsamplerGraphs`]) and a noise source ([`NoiseDraws`]), so the parity tests can replay
//! diffusers' recorded model outputs and noise through exactly the code the service runs. The
//! service runs them on a blocking thread with the ONNX executors behind the traits.
//!
//! **Base decoder** ([`decode`], diffusers' `UnCLIPPipeline` steps 5–8):
//!
//! 1. text projection once ([`condition`]): `[uncond; cond]` inputs with the learned CFG image
//!    embedding prepended ([`crate::conditioning`]);
//! 2. x_T: `[N, 3, H, H]` drawn (or given);
//! 3. per timestep t → p: the decoder on `[x; x]` (or `x` without guidance) with a `[M]` int64
//!    timestep, guidance on the ε channels only with the variance channels from the conditional
//!    half ([`guided_output`]), then the update ([`Stepper`]): the unCLIP step (learned-range
//!    variance from the manifest) or DDIM with η (x̂₀ clipped and ε re-derived from it);
//! 4. inpainting (optional): the known pixels re-imposed after every step, noised to level p;
//!    when the repository has a `decoder_inpaint` graph ([`DecoderGraphs::has_inpaint_decoder`]),
//!    every step runs it instead of the decoder, with GLIDE's extra inputs (the known image times
//!    the mask, and the mask) for both halves of guidance;
//! 5. clamp to [−1, 1].
//!
//! **Super-resolution stage** ([`upsample`], steps 9–10): the caller upsamples the low-resolution
//! images with the PIL-style bicubic kernel; per step the model sees `[x, upscaled]` concatenated
//! on the channel axis, the stage's `last` graph on the final step and `first` on all others; no
//! guidance; the upsampler scheduler (fixed-small-log). The result is not clamped.
//!
//! **DDIM inversion** ([`invert`]): the DDIM sampling steps run backwards from the clean image to
//! x_T, the decoder's (optionally guided) ε evaluated at the less noisy end of each step.
//!
//! Noise is drawn in the order documented in [`crate::noise`].

use ndarray::{Array1, Array2, ArrayD, Axis, Slice, concatenate};
use unclip_model_server::ServiceError;
use unclip_sampler::{
    DdimParams, DdimScheduler, NoiseSchedule, SamplerError, SchedulerConfig, StepOutput,
    UnclipScheduler, duplicate_for_guidance, guide_decoder, inversion_pairs, repaint_combine,
    step_pairs,
};

use crate::conditioning::{ConditioningPlan, DecoderConditioning, TextProjInputs, TextProjOutputs};
use crate::noise::NoiseDraws;

/// Latent channels of every image stage (RGB).
pub const LATENT_CHANNELS: usize = 3;

/// A sampler error inside a loop: the request was validated, so this is a bug.
pub(crate) fn internal(e: SamplerError) -> ServiceError {
    ServiceError::Internal(format!("sampler: {e}"))
}

/// One decoder call's inputs, named as the graph names them.
#[derive(Debug, Clone, Copy)]
pub struct DecoderCall<'a> {
    /// `sample` `[M, 3, H, H]`: the latents, doubled as `[x; x]` when guiding.
    pub sample: &'a ArrayD<f32>,
    /// `timestep` `[M]`, one training timestep per row.
    pub timestep: &'a Array1<i64>,
    /// `encoder_hidden_states` `[M, N_ctx, C]`.
    pub encoder_hidden_states: &'a ArrayD<f32>,
    /// `class_labels` `[M, T]`.
    pub class_labels: &'a ArrayD<f32>,
    /// `attention_mask` `[M, N_ctx]`.
    pub attention_mask: &'a Array2<bool>,
    /// The inpainting decoder's extra inputs; `None` runs the plain decoder.
    pub inpaint: Option<InpaintInputs<'a>>,
}

/// The `decoder_inpaint` graph's inputs beyond the decoder's, doubled like `sample`.
#[derive(Debug, Clone, Copy)]
pub struct InpaintInputs<'a> {
    /// `masked_image` `[M, 3, H, H]`: the known image times the mask (0 where generated).
    pub masked_image: &'a ArrayD<f32>,
    /// `mask` `[M, 1, H, H]`: 1 = known, 0 = generate.
    pub mask: &'a ArrayD<f32>,
}

/// The base decoder's graphs as the loops call them.
pub trait DecoderGraphs {
    /// Runs text_proj.onnx.
    fn text_proj(&mut self, inputs: &TextProjInputs) -> Result<TextProjOutputs, ServiceError>;
    /// Runs decoder.onnx (or, when `call.inpaint` is set, the inpainting decoder) and returns
    /// `out_sample` `[M, 6, H, H]`.
    fn decoder(&mut self, call: DecoderCall<'_>) -> Result<ArrayD<f32>, ServiceError>;
    /// Whether an inpainting decoder is loaded (masked Decode calls then run it).
    fn has_inpaint_decoder(&self) -> bool {
        false
    }
}

/// Which of a super-resolution stage's two graphs a step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpsamplerGraph {
    /// Every step but the last.
    First,
    /// The final step (fine-tuned for it in Karlo).
    Last,
}

/// The super-resolution graphs as the loops call them.
pub trait UpsamplerGraphs {
    /// Runs stage `stage`'s `graph` on `sample` `[N, 6, S, S]` and returns ε `[N, 3, S, S]`.
    fn upsampler(
        &mut self,
        stage: usize,
        graph: UpsamplerGraph,
        sample: &ArrayD<f32>,
        timestep: &Array1<i64>,
    ) -> Result<ArrayD<f32>, ServiceError>;
}

/// The update rule after each model call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerKind {
    /// diffusers' UnCLIPScheduler (ancestral; the stage's variance type from the manifest).
    Unclip,
    /// DDIM with stochasticity η ∈ [0, 1] (0 = deterministic).
    Ddim {
        /// η.
        eta: f32,
    },
}

/// One stage's update rule: the unCLIP scheduler from the manifest, or DDIM on its ᾱ table.
#[derive(Debug, Clone)]
pub struct Stepper {
    /// Which rule [`Stepper::step`] applies.
    kind: SamplerKind,
    /// The stage's unCLIP scheduler (its schedule also serves DDIM and inpainting).
    unclip: UnclipScheduler,
    /// DDIM on the same schedule, clipping x̂₀ as the stage's config does.
    ddim: DdimScheduler,
}

impl Stepper {
    /// The rule `kind` for a stage configured by `config`.
    pub fn new(config: SchedulerConfig, kind: SamplerKind) -> Result<Self, ServiceError> {
        let unclip = UnclipScheduler::new(config).map_err(internal)?;
        let eta = match kind {
            SamplerKind::Unclip => 0.0,
            SamplerKind::Ddim { eta } => eta,
        };
        // With clipping, ε is re-derived from the clipped x̂₀ (GLIDE's and improved-diffusion's
        // `ddim_sample`), which keeps every step consistent with its x̂₀ and lets `invert`
        // mirror it exactly.
        let params = DdimParams {
            eta,
            clip_sample_range: config.clip_sample.then_some(config.clip_sample_range),
            use_clipped_model_output: config.clip_sample,
        };
        let ddim = DdimScheduler::new(unclip.schedule().clone(), params)
            .map_err(|e| ServiceError::invalid("sampling.eta", e))?;
        Ok(Self { kind, unclip, ddim })
    }

    /// The update rule.
    pub fn kind(&self) -> SamplerKind {
        self.kind
    }

    /// The stage's noise schedule.
    pub fn schedule(&self) -> &NoiseSchedule {
        self.unclip.schedule()
    }

    /// The respaced timesteps for `steps` steps (999 … 0), for both update rules.
    pub fn timesteps(&self, steps: usize) -> Result<Vec<i64>, ServiceError> {
        self.unclip.timesteps(steps).map_err(internal)
    }

    /// Whether the step t → p draws noise.
    pub fn needs_noise(&self, t: i64, p: i64) -> bool {
        match self.kind {
            SamplerKind::Unclip => t > 0,
            SamplerKind::Ddim { eta } => eta > 0.0 && p >= 0,
        }
    }

    /// One update t → p (p = −1: to the clean image) of a whole batch at one timestep.
    ///
    /// `model_output` is what the stage's scheduler takes: `[N, 6, …]` (ε, then the learned-range
    /// values) for the decoder, `[N, 3, …]` ε for the upsamplers. DDIM reads the ε channels only.
    pub fn step(
        &self,
        model_output: &ArrayD<f32>,
        t: i64,
        p: i64,
        sample: &ArrayD<f32>,
        noise: Option<&ArrayD<f32>>,
    ) -> Result<StepOutput, ServiceError> {
        let n = sample.shape().first().copied().unwrap_or(0);
        let noise = noise.map(|z| z.view());
        match self.kind {
            SamplerKind::Unclip => {
                // diffusers passes the next timestep, and None (meaning t − 1) on the last step.
                let prev = (p >= 0).then_some(p);
                self.unclip.step(
                    &model_output.view(),
                    &vec![t; n],
                    &sample.view(),
                    &vec![prev; n],
                    noise.as_ref(),
                )
            }
            SamplerKind::Ddim { eta } => {
                let channels = sample.shape().get(1).copied().unwrap_or(0);
                let eps = model_output.slice_axis(Axis(1), Slice::from(0..channels));
                // σ is 0 on the step to the clean image, which draws nothing (see
                // `needs_noise`); the DDIM step still wants a noise array whenever η > 0.
                let zeros;
                let noise = match noise {
                    None if eta > 0.0 => {
                        zeros = ArrayD::zeros(sample.raw_dim());
                        Some(zeros.view())
                    }
                    other => other,
                };
                self.ddim.step(
                    &eps,
                    &vec![t; n],
                    &sample.view(),
                    &vec![p; n],
                    noise.as_ref(),
                )
            }
        }
        .map_err(internal)
    }
}

/// Masked sampling: the known image and where it is known.
#[derive(Debug, Clone, PartialEq)]
pub struct Inpaint {
    /// The known image `[N, 3, S, S]` in model range [−1, 1].
    pub known: ArrayD<f32>,
    /// `[1 or N, 1, S, S]` in [0, 1]: 1 = keep the known pixel, 0 = generate.
    pub mask: ArrayD<f32>,
}

/// Per-request loop settings shared by every stage.
#[derive(Debug, Clone, Copy)]
pub struct LoopSettings<'a> {
    /// The update rule.
    pub stepper: &'a Stepper,
    /// The timesteps, first (999) to last (0).
    pub timesteps: &'a [i64],
    /// x_T to use instead of the drawn one (which is still drawn, see [`crate::noise`]).
    pub init_noise: Option<&'a ArrayD<f32>>,
    /// Masked sampling, if requested.
    pub inpaint: Option<&'a Inpaint>,
}

/// What a loop reports after each step (for tests, and for debugging).
#[derive(Debug, Clone, Copy)]
pub struct StepTrace<'a> {
    /// The step's index within the stage.
    pub index: usize,
    /// Its timestep t.
    pub timestep: i64,
    /// The timestep it goes to (−1: the clean image).
    pub prev_timestep: i64,
    /// x_t (not doubled).
    pub sample: &'a ArrayD<f32>,
    /// What the update consumed: the guided decoder output `[N, 6, …]`, or the upsampler's ε.
    pub model_output: &'a ArrayD<f32>,
    /// The step's noise, when it drew one.
    pub noise: Option<&'a ArrayD<f32>>,
    /// The scheduler's x_p and x̂₀ (before inpainting).
    pub output: &'a StepOutput,
    /// x_p after inpainting (the next step's x_t).
    pub prev_sample: &'a ArrayD<f32>,
}

/// A step observer that ignores every step.
pub fn ignore_steps(_: &StepTrace<'_>) {}

/// Runs the text projection once and assembles the decoder's per-call conditioning.
pub fn condition(
    graphs: &mut impl DecoderGraphs,
    plan: ConditioningPlan,
) -> Result<DecoderConditioning, ServiceError> {
    let out = graphs.text_proj(&plan.text_proj)?;
    Ok(DecoderConditioning {
        encoder_hidden_states: out.encoder_hidden_states,
        class_labels: out.additive_clip_time_embeddings,
        attention_mask: plan.attention_mask,
        guidance: plan.guidance,
    })
}

/// The decoder output the update consumes: with guidance, `u + s·(c − u)` on the ε channels
/// and the conditional half's variance channels (`[2N, 6, …]` → `[N, 6, …]`); without, as is.
pub fn guided_output(raw: ArrayD<f32>, guidance: Option<f32>) -> Result<ArrayD<f32>, ServiceError> {
    match guidance {
        Some(scale) => guide_decoder(&raw.view(), &[scale], LATENT_CHANNELS).map_err(internal),
        None => Ok(raw),
    }
}

/// The inpainting decoder's `(masked_image, mask)` for `n` images, doubled when guiding (the
/// unconditional half sees the same known image, as in GLIDE).
pub fn inpaint_inputs(
    inpaint: &Inpaint,
    n: usize,
    guided: bool,
) -> Result<(ArrayD<f32>, ArrayD<f32>), ServiceError> {
    let s = inpaint.known.shape();
    let mask_shape = [n, 1, s[2], s[3]];
    let mask = inpaint
        .mask
        .broadcast(mask_shape.as_slice())
        .ok_or_else(|| {
            ServiceError::Internal(format!(
                "inpainting mask of shape {:?} for {n} images",
                inpaint.mask.shape()
            ))
        })?
        .to_owned();
    let masked = &inpaint.known * &mask;
    if !guided {
        return Ok((masked, mask));
    }
    Ok((
        duplicate_for_guidance(&masked.view()).map_err(internal)?,
        duplicate_for_guidance(&mask.view()).map_err(internal)?,
    ))
}

/// Runs the decoder on the latents `x` at timestep `t`: doubled when guiding, then guided.
/// `inpaint` (already doubled) selects the inpainting decoder.
fn decoder_output(
    graphs: &mut impl DecoderGraphs,
    cond: &DecoderConditioning,
    x: &ArrayD<f32>,
    t: i64,
    inpaint: Option<&(ArrayD<f32>, ArrayD<f32>)>,
) -> Result<ArrayD<f32>, ServiceError> {
    let sample = match cond.guidance {
        Some(_) => duplicate_for_guidance(&x.view()).map_err(internal)?,
        None => x.clone(),
    };
    let timestep = Array1::from_elem(cond.model_batch(), t);
    let raw = graphs.decoder(DecoderCall {
        sample: &sample,
        timestep: &timestep,
        encoder_hidden_states: &cond.encoder_hidden_states,
        class_labels: &cond.class_labels,
        attention_mask: &cond.attention_mask,
        inpaint: inpaint.map(|(masked_image, mask)| InpaintInputs { masked_image, mask }),
    })?;
    guided_output(raw, cond.guidance)
}

/// x_T: always drawn (keeping the noise order), replaced by `init` when one is given.
fn initial_latents(
    noise: &mut impl NoiseDraws,
    shape: &[usize],
    init: Option<&ArrayD<f32>>,
) -> Result<ArrayD<f32>, ServiceError> {
    let drawn = noise.next(shape)?;
    match init {
        Some(x) if x.shape() == shape => Ok(x.clone()),
        Some(x) => Err(ServiceError::Internal(format!(
            "initial noise of shape {:?} for latents {shape:?}",
            x.shape()
        ))),
        None => Ok(drawn),
    }
}

/// The denoising loop shared by every stage: `model(i, t, x)` gives the update's model output.
fn denoise(
    mut x: ArrayD<f32>,
    settings: &LoopSettings<'_>,
    noise: &mut impl NoiseDraws,
    mut model: impl FnMut(usize, i64, &ArrayD<f32>) -> Result<ArrayD<f32>, ServiceError>,
    observer: &mut dyn FnMut(&StepTrace<'_>),
) -> Result<ArrayD<f32>, ServiceError> {
    let stepper = settings.stepper;
    let schedule = stepper.schedule();
    let shape = x.shape().to_vec();
    for (index, (t, p)) in step_pairs(settings.timesteps).into_iter().enumerate() {
        let model_output = model(index, t, &x)?;
        let step_noise = if stepper.needs_noise(t, p) {
            Some(noise.next(&shape)?)
        } else {
            None
        };
        let output = stepper.step(&model_output, t, p, &x, step_noise.as_ref())?;
        let inpainted = match settings.inpaint {
            Some(inpaint) => {
                // q_sample(known, −1) is the known image itself: no noise on the last step.
                let known_noise = if p >= 0 {
                    noise.next(&shape)?
                } else {
                    ArrayD::zeros(shape.as_slice())
                };
                repaint_combine(
                    schedule,
                    &inpaint.known.view(),
                    &inpaint.mask.view(),
                    &output.prev_sample.view(),
                    &vec![p; shape[0]],
                    &known_noise.view(),
                )
                .map_err(internal)
                .map(Some)?
            }
            None => None,
        };
        let prev_sample = inpainted.as_ref().unwrap_or(&output.prev_sample);
        observer(&StepTrace {
            index,
            timestep: t,
            prev_timestep: p,
            sample: &x,
            model_output: &model_output,
            noise: step_noise.as_ref(),
            output: &output,
            prev_sample,
        });
        x = inpainted.unwrap_or(output.prev_sample);
    }
    Ok(x)
}

/// The base decoder loop for `cond.images()` images of `image_size`², clamped to [−1, 1].
pub fn decode(
    graphs: &mut impl DecoderGraphs,
    cond: &DecoderConditioning,
    image_size: usize,
    noise: &mut impl NoiseDraws,
    settings: &LoopSettings<'_>,
    observer: &mut dyn FnMut(&StepTrace<'_>),
) -> Result<ArrayD<f32>, ServiceError> {
    let shape = [cond.images(), LATENT_CHANNELS, image_size, image_size];
    let x = initial_latents(noise, &shape, settings.init_noise)?;
    // With an inpainting decoder the model sees the known image too; the known pixels are still
    // re-imposed after every step (below, in `denoise`), so they come back exactly.
    let inpaint = match settings.inpaint {
        Some(inpaint) if graphs.has_inpaint_decoder() => Some(inpaint_inputs(
            inpaint,
            cond.images(),
            cond.guidance.is_some(),
        )?),
        _ => None,
    };
    let x = denoise(
        x,
        settings,
        noise,
        |_, t, x| decoder_output(graphs, cond, x, t, inpaint.as_ref()),
        observer,
    )?;
    Ok(x.mapv_into(|v| v.clamp(-1.0, 1.0)))
}

/// One super-resolution stage over `upscaled` (`[N, 3, S, S]`, the bicubic-upsampled low-res
/// images). Not clamped.
pub fn upsample(
    graphs: &mut impl UpsamplerGraphs,
    stage: usize,
    upscaled: &ArrayD<f32>,
    noise: &mut impl NoiseDraws,
    settings: &LoopSettings<'_>,
    observer: &mut dyn FnMut(&StepTrace<'_>),
) -> Result<ArrayD<f32>, ServiceError> {
    let x = initial_latents(noise, upscaled.shape(), settings.init_noise)?;
    let last = settings.timesteps.len().saturating_sub(1);
    denoise(
        x,
        settings,
        noise,
        |index, t, x| {
            let sample = concatenate(Axis(1), &[x.view(), upscaled.view()])
                .map_err(|e| ServiceError::Internal(format!("upsampler input: {e}")))?;
            let graph = if index == last {
                UpsamplerGraph::Last
            } else {
                UpsamplerGraph::First
            };
            let timestep = Array1::from_elem(sample.shape()[0], t);
            graphs.upsampler(stage, graph, &sample, &timestep)
        },
        observer,
    )
}

/// DDIM inversion of `image` (`[N, 3, H, H]`, model range) into the x_T that η = 0 DDIM sampling
/// with `stepper` over the same `timesteps` (and conditioning) decodes back to it approximately.
///
/// The steps are the sampling steps reversed; each evaluates the decoder's ε at the less noisy
/// end (the standard approximation, see `unclip_sampler::ddim`). When the stage clips x̂₀, the
/// inversion clips it too and re-derives ε from the clipped x̂₀, mirroring the sampling step
/// (`use_clipped_model_output`), as improved-diffusion's `ddim_reverse_sample` does: without
/// that symmetry a step whose x̂₀ leaves [−1, 1] (any step from t ≈ 999, where ε errors are
/// multiplied by 2·10⁴) cannot be undone.
pub fn invert(
    graphs: &mut impl DecoderGraphs,
    cond: &DecoderConditioning,
    image: &ArrayD<f32>,
    timesteps: &[i64],
    stepper: &Stepper,
    on_step: &mut dyn FnMut(usize),
) -> Result<ArrayD<f32>, ServiceError> {
    // The stage's own DDIM settings at η = 0: where sampling clips x̂₀ and re-derives ε, so
    // does the inversion step.
    let params = DdimParams {
        eta: 0.0,
        ..*stepper.ddim.params()
    };
    let ddim = DdimScheduler::new(stepper.schedule().clone(), params).map_err(internal)?;
    let n = image.shape()[0];
    let mut x = image.clone();
    for (k, (from, to, model_t)) in inversion_pairs(timesteps).into_iter().enumerate() {
        let out = decoder_output(graphs, cond, &x, model_t, None)?;
        let eps = out.slice_axis(Axis(1), Slice::from(0..LATENT_CHANNELS));
        x = ddim
            .invert_step(&eps, &vec![from; n], &x.view(), &vec![to; n])
            .map_err(internal)?;
        on_step(k + 1);
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditioning::{ImageConditioning, Unconditional, plan};
    use ndarray::{Array3, IxDyn, array};
    use unclip_model_server::validate::TextConditioning;
    use unclip_runtime::UncondText;

    /// A fake decoder: ε = 0.1·x on the conditional rows and 0 on the unconditional ones,
    /// variance channels 0; counts calls and checks the shapes it is given.
    #[derive(Default)]
    struct Fake {
        calls: Vec<(Vec<usize>, Vec<i64>)>,
        /// Whether decoder batches are `[uncond; cond]`.
        guided: bool,
    }

    impl DecoderGraphs for Fake {
        fn text_proj(&mut self, inputs: &TextProjInputs) -> Result<TextProjOutputs, ServiceError> {
            let m = inputs.image_embeddings.nrows();
            Ok(TextProjOutputs {
                encoder_hidden_states: ArrayD::zeros(IxDyn(&[m, 5, 4])),
                additive_clip_time_embeddings: ArrayD::zeros(IxDyn(&[m, 4])),
            })
        }

        fn decoder(&mut self, call: DecoderCall<'_>) -> Result<ArrayD<f32>, ServiceError> {
            let shape = call.sample.shape().to_vec();
            self.calls.push((shape.clone(), call.timestep.to_vec()));
            let mut out = ArrayD::zeros(IxDyn(&[shape[0], 6, shape[2], shape[3]]));
            let m = shape[0];
            for row in 0..m {
                if self.guided && row < m / 2 {
                    continue;
                }
                let x = call.sample.index_axis(Axis(0), row);
                out.index_axis_mut(Axis(0), row)
                    .slice_axis_mut(Axis(0), Slice::from(0..3))
                    .assign(&x.mapv(|v| 0.1 * v));
            }
            Ok(out)
        }
    }

    impl UpsamplerGraphs for Fake {
        fn upsampler(
            &mut self,
            stage: usize,
            graph: UpsamplerGraph,
            sample: &ArrayD<f32>,
            timestep: &Array1<i64>,
        ) -> Result<ArrayD<f32>, ServiceError> {
            assert_eq!(stage, 0);
            let last = graph == UpsamplerGraph::Last;
            assert_eq!(
                last,
                timestep[0] == 0,
                "last graph exactly on the final step"
            );
            self.calls
                .push((sample.shape().to_vec(), timestep.to_vec()));
            Ok(sample
                .slice_axis(Axis(1), Slice::from(0..3))
                .mapv(|v| 0.05 * v))
        }
    }

    /// Fixed noise: every draw is a constant.
    struct Const(f32, usize);

    impl NoiseDraws for Const {
        fn next(&mut self, shape: &[usize]) -> Result<ArrayD<f32>, ServiceError> {
            self.1 += 1;
            Ok(ArrayD::from_elem(IxDyn(shape), self.0))
        }
    }

    fn conditioning(fake: &mut Fake, n: usize, scale: f32) -> DecoderConditioning {
        let uncond = Unconditional {
            image_embedding: array![0.0, 0.0],
            text: UncondText {
                input_ids: array![1, 2, 0],
                attention_mask: array![true, true, false],
                text_embeds: array![0.0, 0.0],
                last_hidden_state: Array2::zeros((3, 2)),
            },
        };
        let cond = ImageConditioning {
            image_embeds: Array2::ones((n, 2)),
            text: TextConditioning {
                text_embeds: Array2::ones((n, 2)),
                last_hidden_state: Array3::ones((n, 3, 2)),
                attention_mask: Array2::from_elem((n, 3), true),
            },
        };
        let cond = condition(fake, plan(&cond, &uncond, scale, 5)).unwrap();
        fake.guided = cond.guidance.is_some();
        cond
    }

    /// The decoder loop doubles the batch when guiding, feeds one timestep per row, draws
    /// x_T plus one noise per step with t > 0, and clamps the result.
    #[test]
    fn decoder_loop_shapes_and_draws() {
        let mut fake = Fake::default();
        let cond = conditioning(&mut fake, 2, 4.0);
        let stepper = Stepper::new(SchedulerConfig::karlo_decoder(), SamplerKind::Unclip).unwrap();
        let timesteps = stepper.timesteps(3).unwrap();
        let mut noise = Const(0.5, 0);
        let settings = LoopSettings {
            stepper: &stepper,
            timesteps: &timesteps,
            init_noise: None,
            inpaint: None,
        };
        let mut seen = Vec::new();
        let out = decode(&mut fake, &cond, 4, &mut noise, &settings, &mut |s| {
            seen.push((s.timestep, s.prev_timestep, s.noise.is_some()))
        })
        .unwrap();
        assert_eq!(out.shape(), &[2, 3, 4, 4]);
        assert!(out.iter().all(|v| (-1.0..=1.0).contains(v)));
        assert_eq!(noise.1, 1 + 2);
        assert_eq!(seen, vec![(999, 500, true), (500, 0, true), (0, -1, false)]);
        assert_eq!(fake.calls.len(), 3);
        assert!(fake.calls.iter().all(|(shape, ts)| shape == &[4, 3, 4, 4]
            && ts.len() == 4
            && ts.iter().all(|&t| t == ts[0])));

        // Without guidance the batch is not doubled; η = 0 DDIM draws only x_T.
        let mut fake = Fake::default();
        let cond = conditioning(&mut fake, 2, 1.0);
        let ddim = Stepper::new(
            SchedulerConfig::karlo_decoder(),
            SamplerKind::Ddim { eta: 0.0 },
        )
        .unwrap();
        let mut noise = Const(0.5, 0);
        let settings = LoopSettings {
            stepper: &ddim,
            ..settings
        };
        decode(
            &mut fake,
            &cond,
            4,
            &mut noise,
            &settings,
            &mut ignore_steps,
        )
        .unwrap();
        assert_eq!(noise.1, 1);
        assert!(fake.calls.iter().all(|(shape, _)| shape[0] == 2));
    }

    /// The ideal ε for data x₀ ~ N(μ, s²) per pixel: E[ε | x_t] at the call's timestep.
    struct GaussianEps {
        schedule: NoiseSchedule,
        /// A model error added to ε: `error·(−1)^(pixel index)`.
        error: f32,
    }

    impl DecoderGraphs for GaussianEps {
        fn text_proj(&mut self, i: &TextProjInputs) -> Result<TextProjOutputs, ServiceError> {
            Fake::default().text_proj(i)
        }
        fn decoder(&mut self, call: DecoderCall<'_>) -> Result<ArrayD<f32>, ServiceError> {
            let (mu, s2) = (0.1f64, 0.09f64);
            let a = f64::from(self.schedule.alpha_prod(call.timestep[0]).unwrap());
            let s = call.sample.shape();
            Ok(ArrayD::from_shape_fn(IxDyn(&[s[0], 6, s[2], s[3]]), |d| {
                if d[1] >= 3 {
                    return 0.0;
                }
                let x = f64::from(call.sample[[d[0], d[1], d[2], d[3]]]);
                let sign = if (d[1] + d[2] + d[3]) % 2 == 0 {
                    1.0
                } else {
                    -1.0
                };
                ((1.0 - a).sqrt() * (x - a.sqrt() * mu) / (a * s2 + 1.0 - a)) as f32
                    + sign * self.error
            }))
        }
    }

    /// Why inversion clips like sampling: with the ideal ε of Gaussian data both reconstruct the
    /// image, but with ε off by 1e-3 the first sampling step from t = 999 (ᾱ = 2.4e-9) multiplies
    /// the error by 2·10⁴. Without clipping that ruins the round trip (seen: 0.42); with x̂₀
    /// clipped and ε re-derived on both sides it stays bounded (seen: 0.075, as with exact ε).
    #[test]
    fn symmetric_clipping_makes_inversion_robust() {
        let mut fake = Fake::default();
        let cond = conditioning(&mut fake, 1, 1.0);
        let image = ArrayD::from_shape_fn(IxDyn(&[1, 3, 4, 4]), |d| {
            0.1 + 0.15 * (d[3] as f32 - 1.5) - 0.1 * (d[1] as f32 - 1.0)
        });
        let roundtrip = |clip: bool, error: f32| {
            let config = SchedulerConfig {
                clip_sample: clip,
                ..SchedulerConfig::karlo_decoder()
            };
            let stepper = Stepper::new(config, SamplerKind::Ddim { eta: 0.0 }).unwrap();
            let mut model = GaussianEps {
                schedule: stepper.schedule().clone(),
                error,
            };
            let timesteps = stepper.timesteps(25).unwrap();
            let x_t = invert(&mut model, &cond, &image, &timesteps, &stepper, &mut |_| {}).unwrap();
            let settings = LoopSettings {
                stepper: &stepper,
                timesteps: &timesteps,
                init_noise: Some(&x_t),
                inpaint: None,
            };
            let back = decode(
                &mut model,
                &cond,
                4,
                &mut Const(0.0, 0),
                &settings,
                &mut ignore_steps,
            )
            .unwrap();
            back.iter()
                .zip(&image)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max)
        };
        let exact = roundtrip(true, 0.0);
        let clipped = roundtrip(true, 1e-3);
        let unclipped = roundtrip(false, 1e-3);
        assert!(exact < 0.06, "exact ε: {exact}");
        assert!(clipped < 0.1, "clipped, ε off by 1e-3: {clipped}");
        assert!(unclipped > 0.3, "unclipped, ε off by 1e-3: {unclipped}");
    }

    /// Inpainting: known pixels (mask 1) are exactly the known image at the end.
    #[test]
    fn inpainting_keeps_known_pixels() {
        let mut fake = Fake::default();
        let cond = conditioning(&mut fake, 1, 3.0);
        let stepper = Stepper::new(SchedulerConfig::karlo_decoder(), SamplerKind::Unclip).unwrap();
        let timesteps = stepper.timesteps(4).unwrap();
        let known = ArrayD::from_shape_fn(IxDyn(&[1, 3, 4, 4]), |d| {
            (d[1] as f32 - 1.0) * 0.3 + d[3] as f32 * 0.1
        });
        let mut mask = ArrayD::zeros(IxDyn(&[1, 1, 4, 4]));
        mask.slice_axis_mut(Axis(3), Slice::from(0..2)).fill(1.0);
        let inpaint = Inpaint {
            known: known.clone(),
            mask,
        };
        let mut noise = Const(0.7, 0);
        let settings = LoopSettings {
            stepper: &stepper,
            timesteps: &timesteps,
            init_noise: None,
            inpaint: Some(&inpaint),
        };
        let out = decode(
            &mut fake,
            &cond,
            4,
            &mut noise,
            &settings,
            &mut ignore_steps,
        )
        .unwrap();
        // x_T, then per step: the step noise (t > 0) and the known-image noise (p ≥ 0).
        assert_eq!(noise.1, 1 + 3 + 3);
        let keep = Slice::from(0..2);
        assert_eq!(
            out.slice_axis(Axis(3), keep),
            known.slice_axis(Axis(3), keep)
        );
        assert_ne!(
            out.slice_axis(Axis(3), Slice::from(2..4)),
            known.slice_axis(Axis(3), Slice::from(2..4))
        );
    }

    /// A fake with an inpainting decoder: records what each call's extra inputs were.
    #[derive(Default)]
    struct FakeInpaint {
        inner: Fake,
        /// Per call: (masked_image, mask), or None for a plain decoder call.
        extra: Vec<Option<(ArrayD<f32>, ArrayD<f32>)>>,
    }

    impl DecoderGraphs for FakeInpaint {
        fn text_proj(&mut self, inputs: &TextProjInputs) -> Result<TextProjOutputs, ServiceError> {
            self.inner.text_proj(inputs)
        }
        fn decoder(&mut self, call: DecoderCall<'_>) -> Result<ArrayD<f32>, ServiceError> {
            self.extra.push(
                call.inpaint
                    .map(|i| (i.masked_image.clone(), i.mask.clone())),
            );
            self.inner.decoder(call)
        }
        fn has_inpaint_decoder(&self) -> bool {
            true
        }
    }

    /// With an inpainting decoder, a masked decode feeds it the known image times the mask and
    /// the mask at every step, doubled for guidance (both halves see the same known image), and
    /// still returns the kept pixels exactly; an unmasked decode never passes them.
    #[test]
    fn inpainting_decoder_gets_masked_image_and_mask() {
        let mut fake = FakeInpaint::default();
        let cond = conditioning(&mut fake.inner, 2, 3.0);
        let stepper = Stepper::new(SchedulerConfig::karlo_decoder(), SamplerKind::Unclip).unwrap();
        let timesteps = stepper.timesteps(3).unwrap();
        let known = ArrayD::from_shape_fn(IxDyn(&[2, 3, 4, 4]), |d| {
            0.1 * d[0] as f32 + 0.2 * d[1] as f32 - 0.05 * d[3] as f32
        });
        let mut mask = ArrayD::zeros(IxDyn(&[1, 1, 4, 4]));
        mask.slice_axis_mut(Axis(3), Slice::from(0..2)).fill(1.0);
        let inpaint = Inpaint {
            known: known.clone(),
            mask,
        };
        let settings = LoopSettings {
            stepper: &stepper,
            timesteps: &timesteps,
            init_noise: None,
            inpaint: Some(&inpaint),
        };
        let out = decode(
            &mut fake,
            &cond,
            4,
            &mut Const(0.3, 0),
            &settings,
            &mut ignore_steps,
        )
        .unwrap();
        assert_eq!(fake.extra.len(), 3);
        for extra in &fake.extra {
            let (masked, mask) = extra
                .as_ref()
                .expect("every step runs the inpainting decoder");
            assert_eq!(masked.shape(), &[4, 3, 4, 4]);
            assert_eq!(mask.shape(), &[4, 1, 4, 4]);
            for row in 0..4 {
                // [uncond; cond]: rows k and k + 2 belong to image k.
                let image = row % 2;
                let m = mask.index_axis(Axis(0), row);
                assert!(
                    m.slice_axis(Axis(2), Slice::from(0..2))
                        .iter()
                        .all(|&v| v == 1.0)
                );
                assert!(
                    m.slice_axis(Axis(2), Slice::from(2..4))
                        .iter()
                        .all(|&v| v == 0.0)
                );
                let x = masked.index_axis(Axis(0), row);
                assert_eq!(
                    x.slice_axis(Axis(2), Slice::from(0..2)),
                    known
                        .index_axis(Axis(0), image)
                        .slice_axis(Axis(2), Slice::from(0..2))
                );
                assert!(
                    x.slice_axis(Axis(2), Slice::from(2..4))
                        .iter()
                        .all(|&v| v == 0.0)
                );
            }
        }
        let keep = Slice::from(0..2);
        assert_eq!(
            out.slice_axis(Axis(3), keep),
            known.slice_axis(Axis(3), keep)
        );

        // Unmasked: the plain decoder.
        let mut fake = FakeInpaint::default();
        let cond = conditioning(&mut fake.inner, 1, 3.0);
        let settings = LoopSettings {
            inpaint: None,
            ..settings
        };
        decode(
            &mut fake,
            &cond,
            4,
            &mut Const(0.3, 0),
            &settings,
            &mut ignore_steps,
        )
        .unwrap();
        assert!(fake.extra.iter().all(Option::is_none));
    }

    /// The upsampler loop concatenates [x, upscaled] and runs `last` on the final step only.
    #[test]
    fn upsampler_loop_uses_last_graph_on_final_step() {
        let mut fake = Fake::default();
        let stepper =
            Stepper::new(SchedulerConfig::karlo_super_res(), SamplerKind::Unclip).unwrap();
        let timesteps = stepper.timesteps(4).unwrap();
        let upscaled = ArrayD::from_elem(IxDyn(&[2, 3, 8, 8]), 0.25);
        let mut noise = Const(0.1, 0);
        let settings = LoopSettings {
            stepper: &stepper,
            timesteps: &timesteps,
            init_noise: None,
            inpaint: None,
        };
        let out = upsample(
            &mut fake,
            0,
            &upscaled,
            &mut noise,
            &settings,
            &mut ignore_steps,
        )
        .unwrap();
        assert_eq!(out.shape(), &[2, 3, 8, 8]);
        assert_eq!(fake.calls.len(), 4);
        assert!(fake.calls.iter().all(|(s, _)| s == &[2, 6, 8, 8]));
    }

    /// A given x_T replaces the drawn one, but the draw still happens (same later noise).
    #[test]
    fn init_noise_replaces_the_first_draw() {
        let mut fake = Fake::default();
        let cond = conditioning(&mut fake, 1, 1.0);
        let stepper = Stepper::new(SchedulerConfig::karlo_decoder(), SamplerKind::Unclip).unwrap();
        let timesteps = stepper.timesteps(2).unwrap();
        let run = |init: Option<&ArrayD<f32>>, fake: &mut Fake| {
            let mut noise = Const(0.3, 0);
            let settings = LoopSettings {
                stepper: &stepper,
                timesteps: &timesteps,
                init_noise: init,
                inpaint: None,
            };
            let out = decode(fake, &cond, 4, &mut noise, &settings, &mut ignore_steps).unwrap();
            (out, noise.1)
        };
        let same = ArrayD::from_elem(IxDyn(&[1, 3, 4, 4]), 0.3);
        let other = ArrayD::from_elem(IxDyn(&[1, 3, 4, 4]), -0.3);
        let (a, draws_a) = run(None, &mut fake);
        let (b, draws_b) = run(Some(&same), &mut fake);
        let (c, _) = run(Some(&other), &mut fake);
        assert_eq!(a, b);
        assert_eq!(draws_a, draws_b);
        assert_ne!(a, c);
    }

    /// With a decoder whose ε does not depend on x, inversion then η = 0 DDIM sampling without
    /// clipping is exact up to rounding.
    #[test]
    fn inversion_roundtrip_with_constant_epsilon() {
        struct ConstEps;
        impl DecoderGraphs for ConstEps {
            fn text_proj(&mut self, i: &TextProjInputs) -> Result<TextProjOutputs, ServiceError> {
                Fake::default().text_proj(i)
            }
            fn decoder(&mut self, call: DecoderCall<'_>) -> Result<ArrayD<f32>, ServiceError> {
                let s = call.sample.shape();
                Ok(ArrayD::from_shape_fn(IxDyn(&[s[0], 6, s[2], s[3]]), |d| {
                    if d[1] < 3 {
                        0.2 * d[2] as f32 - 0.3
                    } else {
                        0.0
                    }
                }))
            }
        }
        let mut fake = Fake::default();
        let cond = conditioning(&mut fake, 1, 1.0);
        let config = SchedulerConfig {
            clip_sample: false,
            ..SchedulerConfig::karlo_decoder()
        };
        let stepper = Stepper::new(config, SamplerKind::Ddim { eta: 0.0 }).unwrap();
        let timesteps = stepper.timesteps(10).unwrap();
        let image = ArrayD::from_shape_fn(IxDyn(&[1, 3, 4, 4]), |d| {
            0.1 * d[3] as f32 - 0.2 * d[1] as f32
        });
        let x_t = invert(
            &mut ConstEps,
            &cond,
            &image,
            &timesteps,
            &stepper,
            &mut |_| {},
        )
        .unwrap();
        let settings = LoopSettings {
            stepper: &stepper,
            timesteps: &timesteps,
            init_noise: Some(&x_t),
            inpaint: None,
        };
        let back = decode(
            &mut ConstEps,
            &cond,
            4,
            &mut Const(0.0, 0),
            &settings,
            &mut ignore_steps,
        )
        .unwrap();
        let err = back
            .iter()
            .zip(&image)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(err < 1e-3, "round trip error {err}");
    }
}
