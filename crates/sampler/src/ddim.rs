//! DDIM sampling and DDIM inversion for ε-prediction models (the paper's bipartite latents).
//!
//! DALL·E 2 represents an image by (z_i, x_T), where x_T is found by running DDIM *backwards*
//! (inversion) through the decoder; decoding (z_i, x_T) with DDIM at η = 0 reconstructs the image,
//! and η > 0 gives variations centred on it. diffusers and Karlo have neither; this module provides
//! both on the same ᾱ table and respaced timesteps as the unCLIP scheduler
//! ([`crate::schedule::set_timesteps`], with ᾱ_{−1} = 1 for the clean image).
//!
//! **Sampling step** t → p (diffusers' `DDIMScheduler.step`, float32 in its operation order):
//!
//! ```text
//! x̂₀  = (x_t − √(1−ᾱ_t)·ε)/√ᾱ_t,   clamped to ±r when clipping is on
//! σ   = η·√((1−ᾱ_p)/(1−ᾱ_t) · (1 − ᾱ_t/ᾱ_p))
//! ε'  = ε,  or (x_t − √ᾱ_t·x̂₀)/√(1−ᾱ_t) with `use_clipped_model_output`
//! x_p = √ᾱ_p·x̂₀ + √(1−ᾱ_p−σ²)·ε' + σ·z           (z only when η > 0)
//! ```
//!
//! **Inversion step** s → u with u > s (s = −1 is the clean image):
//!
//! ```text
//! x̂₀  = (x_s − √(1−ᾱ_s)·ε)/√ᾱ_s
//! x_u = √ᾱ_u·x̂₀ + √(1−ᾱ_u)·ε
//! ```
//!
//! This is the η = 0 step solved the other way round: with the same ε, `invert_step(s → u)` and
//! then `step(u → s)` return x_s up to rounding. The ε a model gives at x_s stands in for the
//! (unknown) ε at x_u, which is the usual DDIM-inversion approximation; evaluate the model at
//! timestep `max(s, 0)` (see [`inversion_pairs`]). With `clip_sample_range` *and*
//! `use_clipped_model_output` set, the inversion step clips x̂₀ and re-derives ε from it exactly as
//! the sampling step does (improved-diffusion's `ddim_reverse_sample`), so that the two stay
//! mirror images even where x̂₀ leaves the range (any step from t ≈ T, where ε errors are
//! multiplied by 1/√ᾱ); otherwise it never clips. Nothing is clipped from the clean image (s = −1).

use ndarray::{ArrayD, ArrayViewD, Axis, Zip};

use crate::batch;
use crate::error::{Result, SamplerError};
use crate::schedule::NoiseSchedule;
use crate::scheduler::StepOutput;

/// DDIM settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DdimParams {
    /// η ∈ [0, 1]: 0 is deterministic, 1 has DDPM's posterior variance.
    pub eta: f32,
    /// Clamp bound for x̂₀ (`Some(1.0)` for images); `None` disables clipping.
    pub clip_sample_range: Option<f32>,
    /// Re-derive ε from the clipped x̂₀ (GLIDE's habit), so the step stays consistent with x̂₀.
    pub use_clipped_model_output: bool,
}

impl Default for DdimParams {
    /// Deterministic (η = 0), clipping to ±1, diffusers' default of not re-deriving ε.
    fn default() -> Self {
        Self {
            eta: 0.0,
            clip_sample_range: Some(1.0),
            use_clipped_model_output: false,
        }
    }
}

/// A DDIM sampler over a noise schedule, for ε-prediction models.
#[derive(Debug, Clone, PartialEq)]
pub struct DdimScheduler {
    /// The ᾱ table (shared with the unCLIP scheduler of the same stage).
    schedule: NoiseSchedule,
    /// η and clipping.
    params: DdimParams,
}

impl DdimScheduler {
    /// Builds a DDIM sampler, validating η and the clip range.
    pub fn new(schedule: NoiseSchedule, params: DdimParams) -> Result<Self> {
        if !(0.0..=1.0).contains(&params.eta) {
            return Err(SamplerError::Parameter {
                name: "eta",
                limit: "in 0..=1",
                got: params.eta.to_string(),
            });
        }
        if let Some(r) = params.clip_sample_range
            && !(r.is_finite() && r > 0.0)
        {
            return Err(SamplerError::Parameter {
                name: "clip_sample_range",
                limit: "finite and > 0",
                got: r.to_string(),
            });
        }
        Ok(Self { schedule, params })
    }

    /// The noise schedule.
    pub fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    /// The settings.
    pub fn params(&self) -> &DdimParams {
        &self.params
    }

    /// One DDIM step t → p per sample (p = −1 for the last step).
    ///
    /// `eps` and `sample` are `[B, ...]` of one shape; `noise` (same shape) is required when
    /// η > 0 and ignored otherwise.
    pub fn step(
        &self,
        eps: &ArrayViewD<'_, f32>,
        timesteps: &[i64],
        sample: &ArrayViewD<'_, f32>,
        prev_timesteps: &[i64],
        noise: Option<&ArrayViewD<'_, f32>>,
    ) -> Result<StepOutput> {
        let b = batch::batch_size("sample", sample.shape(), 1)?;
        batch::same_shape("eps", eps.shape(), sample.shape())?;
        batch::per_sample("timesteps", timesteps.len(), b)?;
        batch::per_sample("prev_timesteps", prev_timesteps.len(), b)?;
        if let Some(z) = noise {
            batch::same_shape("noise", z.shape(), sample.shape())?;
        }
        let eta = self.params.eta;
        let noise = match noise {
            _ if eta == 0.0 => None,
            Some(z) => Some(z),
            None => {
                return Err(SamplerError::MissingNoise {
                    reason: "DDIM with eta > 0",
                });
            }
        };
        let mut alphas = Vec::with_capacity(b);
        for (&t, &p) in timesteps.iter().zip(prev_timesteps) {
            self.schedule.check_timestep(t)?;
            let a_t = self.schedule.alpha_prod(t)?;
            if p < -1 || p >= t {
                return Err(SamplerError::PrevTimestep {
                    timestep: t,
                    prev: p,
                });
            }
            alphas.push((a_t, self.schedule.alpha_prod(p)?));
        }

        let mut prev_sample = ArrayD::<f32>::zeros(sample.raw_dim());
        let mut pred_original = ArrayD::<f32>::zeros(sample.raw_dim());
        let clip = self.params.clip_sample_range;
        let clipped_eps = self.params.use_clipped_model_output;
        for (i, &(a_t, a_p)) in alphas.iter().enumerate() {
            let beta_prod_t = 1.0 - a_t;
            let beta_prod_prev = 1.0 - a_p;
            let (sqrt_a_t, sqrt_b_t, sqrt_a_p) = (a_t.sqrt(), beta_prod_t.sqrt(), a_p.sqrt());
            let variance = (beta_prod_prev / beta_prod_t) * (1.0 - a_t / a_p);
            let std = eta * variance.sqrt();
            // (1 − ᾱ_p − σ²) is ≥ 0 for η ≤ 1 in exact arithmetic; guard float32 rounding.
            let dir_coeff = (1.0 - a_p - std * std).max(0.0).sqrt();

            let x_t = sample.index_axis(Axis(0), i);
            let e = eps.index_axis(Axis(0), i);
            let mut x0 = pred_original.index_axis_mut(Axis(0), i);
            let mut prev = prev_sample.index_axis_mut(Axis(0), i);
            Zip::from(&mut x0)
                .and(&mut prev)
                .and(&x_t)
                .and(&e)
                .for_each(|x0, prev, &x, &e| {
                    let raw = (x - sqrt_b_t * e) / sqrt_a_t;
                    *x0 = match clip {
                        Some(r) => raw.clamp(-r, r),
                        None => raw,
                    };
                    let e = if clipped_eps {
                        (x - sqrt_a_t * *x0) / sqrt_b_t
                    } else {
                        e
                    };
                    *prev = sqrt_a_p * *x0 + dir_coeff * e;
                });
            if let Some(z) = noise {
                let z = z.index_axis(Axis(0), i);
                Zip::from(&mut prev).and(&z).for_each(|p, &z| *p += std * z);
            }
        }
        Ok(StepOutput {
            prev_sample,
            pred_original_sample: pred_original,
        })
    }

    /// One DDIM inversion step s → u per sample (u > s; s = −1 is the clean image), moving
    /// `sample` towards noise with the model's ε evaluated at x_s.
    pub fn invert_step(
        &self,
        eps: &ArrayViewD<'_, f32>,
        from_timesteps: &[i64],
        sample: &ArrayViewD<'_, f32>,
        to_timesteps: &[i64],
    ) -> Result<ArrayD<f32>> {
        let b = batch::batch_size("sample", sample.shape(), 1)?;
        batch::same_shape("eps", eps.shape(), sample.shape())?;
        batch::per_sample("from_timesteps", from_timesteps.len(), b)?;
        batch::per_sample("to_timesteps", to_timesteps.len(), b)?;
        let n = self.schedule.num_train_timesteps();
        let clip_range = self
            .params
            .clip_sample_range
            .filter(|_| self.params.use_clipped_model_output);
        let mut out = ArrayD::<f32>::zeros(sample.raw_dim());
        for (i, (&s, &u)) in from_timesteps.iter().zip(to_timesteps).enumerate() {
            if s < -1 || u <= s || u >= n as i64 {
                return Err(SamplerError::InversionTimestep {
                    from: s,
                    to: u,
                    num_train_timesteps: n,
                });
            }
            let (a_s, a_u) = (self.schedule.alpha_prod(s)?, self.schedule.alpha_prod(u)?);
            let (sqrt_a_s, sqrt_b_s) = (a_s.sqrt(), (1.0 - a_s).sqrt());
            let (sqrt_a_u, sqrt_b_u) = (a_u.sqrt(), (1.0 - a_u).sqrt());
            let clip = clip_range.filter(|_| s >= 0);
            let mut o = out.index_axis_mut(Axis(0), i);
            Zip::from(&mut o)
                .and(&sample.index_axis(Axis(0), i))
                .and(&eps.index_axis(Axis(0), i))
                .for_each(|o, &x, &e| {
                    let x0 = (x - sqrt_b_s * e) / sqrt_a_s;
                    let (x0, e) = match clip {
                        Some(r) => {
                            let x0 = x0.clamp(-r, r);
                            (x0, (x - sqrt_a_s * x0) / sqrt_b_s)
                        }
                        None => (x0, e),
                    };
                    *o = sqrt_a_u * x0 + sqrt_b_u * e;
                });
        }
        Ok(out)
    }
}

/// The inversion schedule that mirrors a sampling schedule: for sampling timesteps
/// `[t_0 = T−1, …, t_{N−1} = 0]` (steps t_i → t_{i+1}, last → −1) it returns
/// `(from, to, model_timestep)` triples `(−1, 0, 0), (0, t_{N−2}, 0), …, (t_1, t_0, t_1)`: the
/// sampling steps reversed, with the model evaluated at `max(from, 0)`.
pub fn inversion_pairs(sampling_timesteps: &[i64]) -> Vec<(i64, i64, i64)> {
    crate::schedule::step_pairs(sampling_timesteps)
        .into_iter()
        .rev()
        .map(|(t, p)| (p, t, p.max(0)))
        .collect()
}

#[cfg(test)]
#[allow(clippy::excessive_precision)] // reference values are pasted as printed
mod tests {
    use super::*;
    use crate::schedule::{NoiseSchedule, set_timesteps, step_pairs};
    use crate::test_util::{assert_close, pat};
    use ndarray::{Array, IxDyn};

    fn karlo() -> NoiseSchedule {
        NoiseSchedule::squaredcos_cap_v2(1000).unwrap()
    }

    fn arr(v: Vec<f32>) -> ArrayD<f32> {
        Array::from_shape_vec(IxDyn(&[1, 2, 2, 2]), v).unwrap()
    }

    /// (t, η, use_clipped_model_output, expected x_prev, expected x̂₀); prev is t − 40.
    type DdimCase = (i64, f32, bool, [f32; 8], [f32; 8]);

    /// Against diffusers' DDIMScheduler (cosine betas, clip ±1, set_alpha_to_one).
    #[test]
    fn steps_match_diffusers() {
        let eps = arr(pat(8, 5, 1, 11, 1.0));
        let x = arr(pat(8, 7, 2, 9, 1.0));
        let z = arr(pat(8, 7, 3, 13, 1.3));
        #[rustfmt::skip]
        let cases: [DdimCase; 4] = [
            (999, 0.0, false,
             [-0.73614848, 0.13731390, -0.93576002, 0.06229767, 0.93576002, -0.26190919, 0.86074370, -0.33692536],
             [1.0, -1.0, 1.0, 1.0, -1.0, -1.0, 1.0, 1.0]),
            (999, 0.5, false,
             [-0.95354569, 0.54306251, -1.01829147, 0.60291207, 0.69392282, 0.41357094, 0.75377226, -0.93217689],
             [1.0, -1.0, 1.0, 1.0, -1.0, -1.0, 1.0, 1.0]),
            (500, 1.0, true,
             [-0.60090387, -0.71936405, 0.64866626, 0.60528857, -0.43927965, -0.35461557, 0.92759454, 0.17002106],
             [0.09981470, -1.0, 1.0, 0.35631302, -1.0, -0.86582881, 0.61281139, 1.0]),
            (39, 0.0, false,
             [-0.44225129, -1.0, 0.82593429, 0.25068152, -0.32457122, -0.73726660, 0.94361430, 0.53091890],
             [-0.44225129, -1.0, 0.82593429, 0.25068152, -0.32457122, -0.73726660, 0.94361430, 0.53091890]),
        ];
        for (t, eta, clipped, expected_prev, expected_x0) in cases {
            let params = DdimParams {
                eta,
                clip_sample_range: Some(1.0),
                use_clipped_model_output: clipped,
            };
            let d = DdimScheduler::new(karlo(), params).unwrap();
            let r = d
                .step(&eps.view(), &[t], &x.view(), &[t - 40], Some(&z.view()))
                .unwrap();
            assert_close(
                r.prev_sample.as_slice().unwrap(),
                &expected_prev,
                1e-6,
                1e-6,
            );
            assert_close(
                r.pred_original_sample.as_slice().unwrap(),
                &expected_x0,
                1e-6,
                1e-6,
            );
        }
    }

    /// With a fixed ε, inversion s → u followed by the η = 0 step u → s is the identity.
    #[test]
    fn inversion_is_the_inverse_of_a_deterministic_step() {
        let params = DdimParams {
            clip_sample_range: None,
            ..DdimParams::default()
        };
        let d = DdimScheduler::new(karlo(), params).unwrap();
        let eps = arr(pat(8, 5, 1, 11, 1.0));
        let x = arr(pat(8, 7, 2, 9, 0.8));
        for (s, u) in [(-1, 0), (0, 42), (458, 500), (916, 957)] {
            let up = d.invert_step(&eps.view(), &[s], &x.view(), &[u]).unwrap();
            let back = d.step(&eps.view(), &[u], &up.view(), &[s], None).unwrap();
            assert_close(
                back.prev_sample.as_slice().unwrap(),
                x.as_slice().unwrap(),
                2e-5,
                0.0,
            );
        }
    }

    /// The ideal ε for data ~ N(μ, s²) per coordinate: E[ε | x_t].
    fn gaussian_eps(x: &ArrayD<f32>, a: f32, mu: f32, s2: f32) -> ArrayD<f32> {
        let (a, mu, s2) = (f64::from(a), f64::from(mu), f64::from(s2));
        x.mapv(|x| {
            let x = f64::from(x);
            ((1.0 - a).sqrt() * (x - a.sqrt() * mu) / (a * s2 + 1.0 - a)) as f32
        })
    }

    /// Inverts `x0` (data ~ N(0.1, 0.3²)) with the ideal ε through `steps` DDIM steps, samples
    /// back with η = 0, and returns the largest reconstruction error.
    fn roundtrip_error(steps: usize) -> f32 {
        let schedule = karlo();
        let params = DdimParams {
            clip_sample_range: None,
            ..DdimParams::default()
        };
        let d = DdimScheduler::new(schedule.clone(), params).unwrap();
        let (mu, s2) = (0.1f32, 0.09f32);
        let x0 = arr(pat(8, 7, 2, 9, 0.5)).mapv(|v| v + mu);
        let timesteps = set_timesteps(1000, steps).unwrap();

        let mut x = x0.clone();
        for (from, to, model_t) in inversion_pairs(&timesteps) {
            let eps = gaussian_eps(&x, schedule.alpha_prod(model_t).unwrap(), mu, s2);
            x = d
                .invert_step(&eps.view(), &[from], &x.view(), &[to])
                .unwrap();
        }
        // x_T is (nearly) unit-variance noise, no longer the image.
        assert!(x.iter().any(|&v| v.abs() > 0.8));
        for (t, p) in step_pairs(&timesteps) {
            let eps = gaussian_eps(&x, schedule.alpha_prod(t).unwrap(), mu, s2);
            x = d
                .step(&eps.view(), &[t], &x.view(), &[p], None)
                .unwrap()
                .prev_sample;
        }
        x.iter()
            .zip(&x0)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    }

    /// Inversion followed by η = 0 sampling approximately reconstructs the input, and the error
    /// shrinks with the step count (the inversion's ε-at-x_s approximation is first order).
    #[test]
    fn inversion_then_sampling_reconstructs() {
        let e100 = roundtrip_error(100);
        let e250 = roundtrip_error(250);
        assert!(e100 < 0.03, "error {e100} at 100 steps");
        assert!(
            e250 < e100 / 2.0,
            "error {e250} at 250 steps vs {e100} at 100"
        );
    }

    #[test]
    fn inversion_pairs_mirror_sampling() {
        assert_eq!(
            inversion_pairs(&[999, 500, 0]),
            vec![(-1, 0, 0), (0, 500, 0), (500, 999, 500)]
        );
    }

    #[test]
    fn validates_inputs() {
        let bad = DdimParams {
            eta: 1.5,
            ..DdimParams::default()
        };
        assert!(DdimScheduler::new(karlo(), bad).is_err());
        let bad = DdimParams {
            clip_sample_range: Some(-1.0),
            ..DdimParams::default()
        };
        assert!(DdimScheduler::new(karlo(), bad).is_err());
        let noisy = DdimParams {
            eta: 0.5,
            ..DdimParams::default()
        };
        let d = DdimScheduler::new(karlo(), noisy).unwrap();
        let x = arr(pat(8, 7, 2, 9, 1.0));
        assert!(matches!(
            d.step(&x.view(), &[500], &x.view(), &[458], None),
            Err(SamplerError::MissingNoise { .. })
        ));
        assert!(
            d.step(&x.view(), &[500], &x.view(), &[500], Some(&x.view()))
                .is_err()
        );
        assert!(
            d.step(&x.view(), &[1000], &x.view(), &[0], Some(&x.view()))
                .is_err()
        );
        assert!(d.invert_step(&x.view(), &[500], &x.view(), &[500]).is_err());
        assert!(
            d.invert_step(&x.view(), &[500], &x.view(), &[1000])
                .is_err()
        );
        assert!(d.invert_step(&x.view(), &[-2], &x.view(), &[0]).is_err());
    }
}
