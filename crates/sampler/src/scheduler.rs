//! The unCLIP (DDPM-style) scheduler step, batched with one timestep per sample.
//!
//! A reimplementation of diffusers' `UnCLIPScheduler.step` (0.42.1), float32 operation for
//! operation, so a Rust loop matches diffusers to ~1e-6 per step when fed the same model outputs
//! and noise. For a step t → p (p = prev_timestep, default t − 1; p = −1 means the clean sample):
//!
//! ```text
//! ᾱ_t, ᾱ_p (= 1 if p < 0),  b_t = 1 − ᾱ_t,  b_p = 1 − ᾱ_p
//! β, α  = β[t], α[t]             if p == t − 1   (precomputed)
//!       = 1 − ᾱ_t/ᾱ_p, 1 − β      otherwise       (respaced, as Karlo's SpacedDiffusion)
//! x̂₀    = (x_t − √b_t·ε)/√ᾱ_t    (epsilon)   or   model output   (sample)
//! x̂₀    = clamp(x̂₀, −r, r)        if clip_sample
//! μ     = (√ᾱ_p·β/b_t)·x̂₀ + (√α·b_p/b_t)·x_t
//! σ²    = b_p/b_t·β
//! std   = √max(σ², 1e-20)                                   (fixed_small_log)
//!       = exp(½·(f·ln β + (1−f)·ln σ²)),  f = (v + 1)/2     (learned_range, per element)
//! x_p   = μ + std·z    if t > 0,   else μ (no noise at the final step)
//! ```
//!
//! With `learned_range` the model output has twice the latent channels: the first half is ε (or
//! x₀), the second half is the interpolation value v. The noise z has the latent shape and is
//! supplied by the caller (see [`crate::rng`]); it is ignored for samples with t == 0.
//!
//! Each sample in the batch may be at its own timestep, so requests at different points of their
//! trajectories can share one model call.

use ndarray::{ArrayD, ArrayViewD, Axis, Slice, Zip};
use serde::{Deserialize, Serialize};

use crate::batch;
use crate::error::{Result, SamplerError};
use crate::schedule::{self, DEFAULT_NUM_TRAIN_TIMESTEPS, NoiseSchedule};

/// How the step's noise scale is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VarianceType {
    /// The posterior variance σ² = b_p/b_t·β (prior and super-resolution stages).
    #[default]
    FixedSmallLog,
    /// The model predicts v ∈ [−1, 1] per element, interpolating log-variance between σ² and β
    /// (the decoder; its output has twice the latent channels).
    LearnedRange,
}

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    /// The added noise ε (decoder, super-resolution).
    #[default]
    Epsilon,
    /// The clean sample x₀ directly (the prior).
    Sample,
}

/// The β schedule. unCLIP only ever uses the cosine schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum BetaSchedule {
    /// Nichol & Dhariwal's cosine schedule with β capped at 0.999.
    #[default]
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredcosCapV2,
}

/// A scheduler configuration, in the JSON form of the model manifest and of diffusers'
/// `scheduler_config.json` (unknown keys such as `_class_name` are ignored; missing keys take
/// diffusers' defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    /// Length of the training schedule T (1000 for Karlo).
    pub num_train_timesteps: usize,
    /// Always `squaredcos_cap_v2`; present so manifests round-trip.
    pub beta_schedule: BetaSchedule,
    /// How the noise scale of a step is chosen.
    pub variance_type: VarianceType,
    /// What the model predicts.
    pub prediction_type: PredictionType,
    /// Whether x̂₀ is clamped to ±`clip_sample_range`.
    pub clip_sample: bool,
    /// The clamp bound for x̂₀ (5.0 for the prior: units of normalised-embedding std).
    pub clip_sample_range: f32,
}

impl Default for SchedulerConfig {
    /// diffusers' `UnCLIPScheduler` defaults (which are also the super-resolution settings).
    fn default() -> Self {
        Self {
            num_train_timesteps: DEFAULT_NUM_TRAIN_TIMESTEPS,
            beta_schedule: BetaSchedule::SquaredcosCapV2,
            variance_type: VarianceType::FixedSmallLog,
            prediction_type: PredictionType::Epsilon,
            clip_sample: true,
            clip_sample_range: 1.0,
        }
    }
}

impl SchedulerConfig {
    /// Karlo's prior scheduler: x₀-prediction, fixed small variance, clip ±5.
    pub fn karlo_prior() -> Self {
        Self {
            prediction_type: PredictionType::Sample,
            clip_sample_range: 5.0,
            ..Self::default()
        }
    }

    /// Karlo's decoder scheduler: ε-prediction, learned-range variance, clip ±1.
    pub fn karlo_decoder() -> Self {
        Self {
            variance_type: VarianceType::LearnedRange,
            ..Self::default()
        }
    }

    /// Karlo's super-resolution scheduler: ε-prediction, fixed small variance, clip ±1.
    pub fn karlo_super_res() -> Self {
        Self::default()
    }
}

/// The result of one step over a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutput {
    /// x at the previous (less noisy) timestep, latent shape.
    pub prev_sample: ArrayD<f32>,
    /// The (clipped) prediction of the clean sample x̂₀, latent shape.
    pub pred_original_sample: ArrayD<f32>,
}

/// The scalar coefficients of one step t → p, in float32 exactly as diffusers computes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepCoefficients {
    /// ᾱ_t.
    pub alpha_prod_t: f32,
    /// ᾱ_p (1 for p < 0).
    pub alpha_prod_prev: f32,
    /// The effective β of the (possibly respaced) step.
    pub beta: f32,
    /// The effective α = 1 − β.
    pub alpha: f32,
    /// c_x0 = √ᾱ_p·β/b_t, the weight of x̂₀ in the posterior mean.
    pub pred_original_coeff: f32,
    /// c_xt = √α·b_p/b_t, the weight of x_t in the posterior mean.
    pub current_sample_coeff: f32,
    /// σ² = b_p/b_t·β, the posterior variance (lower end of the learned range).
    pub posterior_variance: f32,
    /// √max(σ², 1e-20), the `fixed_small_log` noise scale (0 when t == 0, where no noise is added).
    pub fixed_small_std: f32,
}

/// The unCLIP scheduler: a configuration plus its noise schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct UnclipScheduler {
    /// The configuration it was built from.
    config: SchedulerConfig,
    /// β, α and ᾱ tables for `config.num_train_timesteps`.
    schedule: NoiseSchedule,
}

impl UnclipScheduler {
    /// Builds the scheduler, validating the configuration.
    pub fn new(config: SchedulerConfig) -> Result<Self> {
        if !(config.clip_sample_range.is_finite() && config.clip_sample_range > 0.0) {
            return Err(SamplerError::Parameter {
                name: "clip_sample_range",
                limit: "finite and > 0",
                got: config.clip_sample_range.to_string(),
            });
        }
        let schedule = NoiseSchedule::squaredcos_cap_v2(config.num_train_timesteps)?;
        Ok(Self { config, schedule })
    }

    /// The configuration.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// The noise schedule (β, α, ᾱ).
    pub fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    /// The inference timesteps for `num_inference_steps` steps (see [`schedule::set_timesteps`]).
    pub fn timesteps(&self, num_inference_steps: usize) -> Result<Vec<i64>> {
        schedule::set_timesteps(self.config.num_train_timesteps, num_inference_steps)
    }

    /// The coefficients of the step t → `prev_timestep` (default t − 1).
    pub fn coefficients(&self, t: i64, prev_timestep: Option<i64>) -> Result<StepCoefficients> {
        let ti = self.schedule.check_timestep(t)?;
        let p = prev_timestep.unwrap_or(t - 1);
        if p < -1 || p >= t {
            return Err(SamplerError::PrevTimestep {
                timestep: t,
                prev: p,
            });
        }
        // Same float32 operations, in the same order, as UnCLIPScheduler.step/_get_variance.
        let alpha_prod_t = self.schedule.alphas_cumprod()[ti];
        let alpha_prod_prev = self.schedule.alpha_prod(p)?;
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_prev = 1.0 - alpha_prod_prev;
        let (beta, alpha) = if p == t - 1 {
            (self.schedule.betas()[ti], self.schedule.alphas()[ti])
        } else {
            let beta = 1.0 - alpha_prod_t / alpha_prod_prev;
            (beta, 1.0 - beta)
        };
        let posterior_variance = beta_prod_prev / beta_prod_t * beta;
        let fixed_small_std = if t > 0 {
            (0.5 * posterior_variance.max(1e-20).ln()).exp()
        } else {
            0.0
        };
        Ok(StepCoefficients {
            alpha_prod_t,
            alpha_prod_prev,
            beta,
            alpha,
            pred_original_coeff: (alpha_prod_prev.sqrt() * beta) / beta_prod_t,
            current_sample_coeff: alpha.sqrt() * beta_prod_prev / beta_prod_t,
            posterior_variance,
            fixed_small_std,
        })
    }

    /// One denoising step for a batch whose samples may each be at their own timestep.
    ///
    /// * `model_output`: `[B, C', ...]` with C' = 2C for `learned_range` (ε or x₀, then v) and
    ///   C' = C otherwise.
    /// * `timesteps`, `prev_timesteps`: one entry per sample; `None` means t − 1.
    /// * `sample`: x_t, `[B, C, ...]`.
    /// * `noise`: standard-normal draws shaped like `sample`; required when any t > 0, and only
    ///   the rows of samples with t > 0 are used.
    pub fn step(
        &self,
        model_output: &ArrayViewD<'_, f32>,
        timesteps: &[i64],
        sample: &ArrayViewD<'_, f32>,
        prev_timesteps: &[Option<i64>],
        noise: Option<&ArrayViewD<'_, f32>>,
    ) -> Result<StepOutput> {
        let b = batch::batch_size("sample", sample.shape(), 2)?;
        let channels = sample.shape()[1];
        let out_channels = match self.config.variance_type {
            VarianceType::FixedSmallLog => channels,
            VarianceType::LearnedRange => 2 * channels,
        };
        let mut expected_out = sample.shape().to_vec();
        expected_out[1] = out_channels;
        batch::same_shape("model_output", model_output.shape(), &expected_out)?;
        batch::per_sample("timesteps", timesteps.len(), b)?;
        batch::per_sample("prev_timesteps", prev_timesteps.len(), b)?;
        if let Some(z) = noise {
            batch::same_shape("noise", z.shape(), sample.shape())?;
        }
        let coeffs = timesteps
            .iter()
            .zip(prev_timesteps)
            .map(|(&t, &p)| self.coefficients(t, p))
            .collect::<Result<Vec<_>>>()?;
        if noise.is_none() && timesteps.iter().any(|&t| t > 0) {
            return Err(SamplerError::MissingNoise {
                reason: "a sample has timestep > 0",
            });
        }

        let mut prev_sample = ArrayD::<f32>::zeros(sample.raw_dim());
        let mut pred_original = ArrayD::<f32>::zeros(sample.raw_dim());
        let clip = self
            .config
            .clip_sample
            .then_some(self.config.clip_sample_range);
        for (i, (&t, c)) in timesteps.iter().zip(&coeffs).enumerate() {
            let x_t = sample.index_axis(Axis(0), i);
            let out_all = model_output.index_axis(Axis(0), i);
            let out = out_all.slice_axis(Axis(0), Slice::from(0..channels));
            let mut x0 = pred_original.index_axis_mut(Axis(0), i);

            // x̂₀ from the model output, then the optional clamp.
            let sqrt_beta_prod_t = (1.0 - c.alpha_prod_t).sqrt();
            let sqrt_alpha_prod_t = c.alpha_prod_t.sqrt();
            let prediction = self.config.prediction_type;
            Zip::from(&mut x0)
                .and(&out)
                .and(&x_t)
                .for_each(|x0, &o, &x| {
                    let v = match prediction {
                        PredictionType::Epsilon => (x - sqrt_beta_prod_t * o) / sqrt_alpha_prod_t,
                        PredictionType::Sample => o,
                    };
                    *x0 = match clip {
                        Some(r) => v.clamp(-r, r),
                        None => v,
                    };
                });

            // Posterior mean.
            let mut prev = prev_sample.index_axis_mut(Axis(0), i);
            let (c0, ct) = (c.pred_original_coeff, c.current_sample_coeff);
            Zip::from(&mut prev)
                .and(&x0)
                .and(&x_t)
                .for_each(|p, &x0, &x| *p = c0 * x0 + ct * x);

            // Noise, except at the final step.
            if t == 0 {
                continue;
            }
            let z = noise
                .expect("noise presence checked above")
                .index_axis(Axis(0), i);
            match self.config.variance_type {
                VarianceType::FixedSmallLog => {
                    let std = c.fixed_small_std;
                    Zip::from(&mut prev).and(&z).for_each(|p, &z| *p += std * z);
                }
                VarianceType::LearnedRange => {
                    let v = out_all.slice_axis(Axis(0), Slice::from(channels..));
                    let min_log = c.posterior_variance.ln();
                    let max_log = c.beta.ln();
                    Zip::from(&mut prev).and(&v).and(&z).for_each(|p, &v, &z| {
                        let frac = (v + 1.0) / 2.0;
                        let log_var = frac * max_log + (1.0 - frac) * min_log;
                        *p += (0.5 * log_var).exp() * z;
                    });
                }
            }
        }
        Ok(StepOutput {
            prev_sample,
            pred_original_sample: pred_original,
        })
    }

    /// [`step`](Self::step) with every sample at the same timestep `t` (diffusers' signature).
    pub fn step_uniform(
        &self,
        model_output: &ArrayViewD<'_, f32>,
        t: i64,
        sample: &ArrayViewD<'_, f32>,
        prev_timestep: Option<i64>,
        noise: Option<&ArrayViewD<'_, f32>>,
    ) -> Result<StepOutput> {
        let b = batch::batch_size("sample", sample.shape(), 2)?;
        self.step(
            model_output,
            &vec![t; b],
            sample,
            &vec![prev_timestep; b],
            noise,
        )
    }
}

#[cfg(test)]
#[allow(clippy::excessive_precision)] // reference values are pasted as printed
mod tests {
    use super::*;
    use crate::test_util::{assert_close, pat};
    use ndarray::{Array, IxDyn, concatenate};

    fn arr(shape: &[usize], v: Vec<f32>) -> ArrayD<f32> {
        Array::from_shape_vec(IxDyn(shape), v).unwrap()
    }

    /// The §4 N = 7 table: β_eff, c_x0, c_xt, fixed-small std (printed to 6 decimals).
    #[test]
    fn n7_coefficient_table() {
        let s = UnclipScheduler::new(SchedulerConfig::karlo_super_res()).unwrap();
        let rows: [(i64, i64, [f32; 4]); 7] = [
            (999, 832, [1.000000, 0.257333, 0.000228, 0.966323]),
            (832, 666, [0.730811, 0.388176, 0.418943, 0.768185]),
            (666, 500, [0.500288, 0.465541, 0.476002, 0.580410]),
            (500, 333, [0.336520, 0.570934, 0.413958, 0.413549]),
            (333, 166, [0.200114, 0.746956, 0.250952, 0.236961]),
            (166, 0, [0.072362, 0.999450, 0.000549, 0.006425]),
            (0, -1, [0.000041, 0.999472, 0.0, 0.0]),
        ];
        let ts = s.timesteps(7).unwrap();
        for (i, (t, p, expected)) in rows.into_iter().enumerate() {
            assert_eq!(ts[i], t);
            let prev = (p >= 0).then_some(p);
            let c = s.coefficients(t, prev).unwrap();
            let got = [
                c.beta,
                c.pred_original_coeff,
                c.current_sample_coeff,
                c.fixed_small_std,
            ];
            assert_close(&got, &expected, 6e-7, 0.0);
        }
        // The float32 artefact: exactly 1 in exact arithmetic.
        let last = s.coefficients(0, None).unwrap();
        assert!((last.pred_original_coeff - 0.999472).abs() < 1e-6);
        assert_eq!(last.beta, s.schedule().betas()[0]);
    }

    #[test]
    fn rejects_bad_timesteps() {
        let s = UnclipScheduler::new(SchedulerConfig::default()).unwrap();
        assert!(matches!(
            s.coefficients(1000, None),
            Err(SamplerError::Timestep { .. })
        ));
        assert!(matches!(
            s.coefficients(-1, None),
            Err(SamplerError::Timestep { .. })
        ));
        assert!(matches!(
            s.coefficients(500, Some(500)),
            Err(SamplerError::PrevTimestep { .. })
        ));
        assert!(matches!(
            s.coefficients(500, Some(-2)),
            Err(SamplerError::PrevTimestep { .. })
        ));
        assert!(s.coefficients(500, Some(-1)).is_ok());
    }

    /// One test input: model output, x_t and noise.
    struct Inputs {
        out: ArrayD<f32>,
        x: ArrayD<f32>,
        z: ArrayD<f32>,
    }

    /// (t, prev_timestep, expected x_prev, expected x̂₀) for an 8-element latent.
    type Case = (i64, Option<i64>, [f32; 8], [f32; 8]);

    /// Runs one single-sample step and compares with diffusers' numbers.
    fn check(
        config: SchedulerConfig,
        inputs: &Inputs,
        t: i64,
        prev: Option<i64>,
        expected_prev: &[f32],
        expected_x0: &[f32],
    ) {
        let s = UnclipScheduler::new(config).unwrap();
        let Inputs { out, x, z } = inputs;
        let r = s
            .step_uniform(&out.view(), t, &x.view(), prev, Some(&z.view()))
            .unwrap();
        assert_close(r.prev_sample.as_slice().unwrap(), expected_prev, 1e-6, 1e-6);
        assert_close(
            r.pred_original_sample.as_slice().unwrap(),
            expected_x0,
            1e-6,
            1e-6,
        );
    }

    /// Prior settings against diffusers (`reference/gen_reference.py`).
    #[test]
    fn prior_steps_match_diffusers() {
        let inputs = Inputs {
            out: arr(&[1, 6], pat(6, 5, 1, 11, 7.0)),
            x: arr(&[1, 6], pat(6, 3, 2, 7, 2.0)),
            z: arr(&[1, 6], pat(6, 7, 3, 13, 1.3)),
        };
        let x0 = [-5.0, 1.4000003, -5.0, 0.0, 5.0, -1.3999999];
        let cfg = SchedulerConfig::karlo_prior();
        #[rustfmt::skip]
        let cases: [(i64, Option<i64>, [f32; 6]); 4] = [
            (999, Some(957), [-0.97616118, 0.95740688, -0.76047105, 1.08152568, 0.10930073, 1.20564425]),
            (42, Some(0), [-4.97513008, 1.40510213, -4.97820711, 0.01140427, 4.95171833, -1.38229311]),
            (0, None, [-4.99736166, 1.39926159, -4.99736166, 0.0, 4.99736166, -1.39926112]),
            (500, None, [-0.72186810, 1.38186717, -1.37328625, 0.72433424, -1.98102570, 0.06680102]),
        ];
        for (t, p, expected) in cases {
            check(cfg, &inputs, t, p, &expected, &x0);
        }
    }

    /// Decoder-shaped inputs: `[1, 2, 2, 2]` latents, `[1, 4, 2, 2]` output (ε then v).
    fn decoder_inputs() -> Inputs {
        let eps = arr(&[1, 2, 2, 2], pat(8, 5, 1, 11, 1.0));
        let v = arr(&[1, 2, 2, 2], pat(8, 3, 1, 5, 1.2));
        let out = concatenate(Axis(1), &[eps.view(), v.view()]).unwrap();
        let x = arr(&[1, 2, 2, 2], pat(8, 7, 2, 9, 1.0));
        let z = arr(&[1, 2, 2, 2], pat(8, 7, 3, 13, 1.3));
        Inputs { out, x, z }
    }

    /// Decoder settings (learned range) against diffusers.
    #[test]
    fn decoder_steps_match_diffusers() {
        let inputs = decoder_inputs();
        let cfg = SchedulerConfig::karlo_decoder();
        #[rustfmt::skip]
        let cases: [Case; 5] = [
            (999, Some(957),
             [-0.58386225, 0.80067521, -0.36688420, 1.14638186, -0.28217411, 1.23178732, 0.06617691, -1.23281431],
             [1.0, -1.0, 1.0, 1.0, -1.0, -1.0, 1.0, 1.0]),
            (500, Some(458),
             [-0.60270596, -0.69230783, 0.64303225, 0.60983187, -0.45014104, -0.34209347, 0.92428887, 0.15175009],
             [0.09981470, -1.0, 1.0, 0.35631302, -1.0, -0.86582881, 0.61281139, 1.0]),
            (42, Some(0),
             [-0.44589719, -0.91301763, 0.82073146, 0.25616992, -0.33916116, -0.72294050, 0.94056344, 0.50369787],
             [-0.43862054, -1.0, 0.83097100, 0.25077212, -0.32942677, -0.73658544, 0.94016480, 0.53300607]),
            (0, None,
             [-0.49460748, -0.99947232, 0.75604343, 0.24987324, -0.25629696, -0.74833494, 0.99435395, 0.50231600],
             [-0.49486861, -1.0, 0.75644261, 0.25000516, -0.25643227, -0.74873006, 0.99487895, 0.50258118]),
            (300, None,
             [-0.52373117, -0.96501309, 0.73420596, 0.29371971, -0.26244086, -0.69764107, 0.99800438, 0.44949746],
             [-0.14621754, -1.0, 1.0, 0.28205273, -0.80441260, -0.74168622, 0.71032298, 0.77304941]),
        ];
        for (t, p, expected_prev, expected_x0) in cases {
            check(cfg, &inputs, t, p, &expected_prev, &expected_x0);
        }
    }

    /// Super-resolution settings (fixed small, ε) against diffusers, with and without clipping.
    #[test]
    fn super_res_steps_match_diffusers() {
        let Inputs { out, x, z } = decoder_inputs();
        let inputs = Inputs {
            out: out.slice_axis(Axis(1), Slice::from(0..2)).to_owned(),
            x,
            z,
        };
        let cfg = SchedulerConfig::karlo_super_res();
        #[rustfmt::skip]
        let cases: [Case; 3] = [
            (999, Some(832),
             [-0.37089020, 0.57991803, -0.16123527, 1.30423999, -0.46676040, 0.99871492, 0.25756148, -0.99877191],
             [1.0, -1.0, 1.0, 1.0, -1.0, -1.0, 1.0, 1.0]),
            (166, Some(0),
             [-0.29993412, -0.99443096, 0.99707782, 0.26652843, -0.54018182, -0.71450567, 0.81489301, 0.62247133],
             [-0.29564553, -1.0, 1.0, 0.25957307, -0.53894871, -0.72284400, 0.81479162, 0.63089639]),
            (0, None,
             [-0.49460748, -0.99947232, 0.75604343, 0.24987324, -0.25629696, -0.74833494, 0.99435395, 0.50231600],
             [-0.49486861, -1.0, 0.75644261, 0.25000516, -0.25643227, -0.74873006, 0.99487895, 0.50258118]),
        ];
        for (t, p, expected_prev, expected_x0) in cases {
            check(cfg, &inputs, t, p, &expected_prev, &expected_x0);
        }
        let no_clip = SchedulerConfig {
            clip_sample: false,
            ..cfg
        };
        #[rustfmt::skip]
        check(no_clip, &inputs, 832, Some(666),
            &[-0.29689580, -1.55316985, 2.57032466, 1.31405079, -2.10594559, -0.15537739, 0.76127505, 0.54812074],
            &[1.06110597, -4.63703537, 6.66964293, 0.97150189, -4.72663927, -2.16347837, 0.88189811, 3.44505858]);
    }

    /// Samples at different timesteps in one batch give the same rows as separate calls.
    #[test]
    fn mixed_timesteps_equal_separate_calls() {
        let s = UnclipScheduler::new(SchedulerConfig::karlo_decoder()).unwrap();
        let Inputs { out, x, z } = decoder_inputs();
        let out2 = concatenate(Axis(0), &[out.view(), out.view(), out.view()]).unwrap();
        let x2 = concatenate(Axis(0), &[x.view(), x.view(), x.view()]).unwrap();
        let z2 = concatenate(Axis(0), &[z.view(), z.view(), z.view()]).unwrap();
        let ts = [999, 0, 500];
        let ps = [Some(957), None, Some(458)];
        let batched = s
            .step(&out2.view(), &ts, &x2.view(), &ps, Some(&z2.view()))
            .unwrap();
        for (i, (&t, &p)) in ts.iter().zip(&ps).enumerate() {
            let single = s
                .step_uniform(&out.view(), t, &x.view(), p, Some(&z.view()))
                .unwrap();
            assert_eq!(
                batched.prev_sample.index_axis(Axis(0), i),
                single.prev_sample.index_axis(Axis(0), 0)
            );
            assert_eq!(
                batched.pred_original_sample.index_axis(Axis(0), i),
                single.pred_original_sample.index_axis(Axis(0), 0)
            );
        }
    }

    #[test]
    fn noise_only_needed_before_the_last_step() {
        let s = UnclipScheduler::new(SchedulerConfig::karlo_super_res()).unwrap();
        let x = arr(&[1, 2, 2, 2], pat(8, 7, 2, 9, 1.0));
        let eps = arr(&[1, 2, 2, 2], pat(8, 5, 1, 11, 1.0));
        assert!(
            s.step_uniform(&eps.view(), 0, &x.view(), None, None)
                .is_ok()
        );
        assert!(matches!(
            s.step_uniform(&eps.view(), 1, &x.view(), None, None),
            Err(SamplerError::MissingNoise { .. })
        ));
    }

    #[test]
    fn rejects_bad_shapes() {
        let dec = UnclipScheduler::new(SchedulerConfig::karlo_decoder()).unwrap();
        let x = ArrayD::<f32>::zeros(IxDyn(&[2, 3, 4, 4]));
        let same = ArrayD::<f32>::zeros(IxDyn(&[2, 3, 4, 4]));
        let z = ArrayD::<f32>::zeros(IxDyn(&[2, 3, 4, 4]));
        // learned_range needs 2C output channels.
        let err = dec
            .step_uniform(&same.view(), 5, &x.view(), None, Some(&z.view()))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "model_output must have shape [2, 6, 4, 4], got [2, 3, 4, 4]"
        );
        let doubled = ArrayD::<f32>::zeros(IxDyn(&[2, 6, 4, 4]));
        let bad_noise = ArrayD::<f32>::zeros(IxDyn(&[1, 3, 4, 4]));
        assert!(
            dec.step_uniform(&doubled.view(), 5, &x.view(), None, Some(&bad_noise.view()))
                .is_err()
        );
        let err = dec
            .step(
                &doubled.view(),
                &[5],
                &x.view(),
                &[None, None],
                Some(&z.view()),
            )
            .unwrap_err();
        assert!(matches!(
            err,
            SamplerError::BatchLength {
                what: "timesteps",
                ..
            }
        ));
        let flat = ArrayD::<f32>::zeros(IxDyn(&[6]));
        assert!(
            dec.step_uniform(&flat.view(), 0, &flat.view(), None, None)
                .is_err()
        );
        let bad = SchedulerConfig {
            clip_sample_range: 0.0,
            ..SchedulerConfig::default()
        };
        assert!(UnclipScheduler::new(bad).is_err());
    }

    /// The manifest's JSON form (snake_case names; extra keys ignored; defaults fill gaps).
    #[test]
    fn config_from_manifest_json() {
        let json = r#"{"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2",
            "variance_type": "fixed_small_log", "prediction_type": "sample",
            "clip_sample": true, "clip_sample_range": 5.0, "_class_name": "UnCLIPScheduler"}"#;
        let cfg: SchedulerConfig = serde_json::from_str(json).unwrap();
        assert_eq!(cfg, SchedulerConfig::karlo_prior());
        let cfg: SchedulerConfig =
            serde_json::from_str(r#"{"variance_type": "learned_range"}"#).unwrap();
        assert_eq!(cfg, SchedulerConfig::karlo_decoder());
        let cfg: SchedulerConfig =
            serde_json::from_str(r#"{"prediction_type": "epsilon"}"#).unwrap();
        assert_eq!(cfg, SchedulerConfig::karlo_super_res());
        assert!(
            serde_json::from_str::<SchedulerConfig>(r#"{"variance_type": "fixed_large"}"#).is_err()
        );
        assert!(serde_json::from_str::<SchedulerConfig>(r#"{"beta_schedule": "linear"}"#).is_err());
        let back = serde_json::to_value(SchedulerConfig::karlo_decoder()).unwrap();
        assert_eq!(back["variance_type"], "learned_range");
        assert_eq!(back["beta_schedule"], "squaredcos_cap_v2");
    }
}
