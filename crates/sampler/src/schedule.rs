//! The `squaredcos_cap_v2` noise schedule and the unCLIP timestep respacing.
//!
//! Everything here reproduces diffusers' `UnCLIPScheduler` bit for bit, because its float32
//! rounding is visible in the results (the final step's x̂₀ coefficient is 0.99947, not 1):
//!
//! * β_i = min(1 − ᾱ((i+1)/T) / ᾱ(i/T), 0.999) with ᾱ(u) = cos²(((u + 0.008)/1.008)·π/2),
//!   computed in float64 (Python floats) and then rounded to float32 (`torch.tensor(…, float32)`).
//! * α_i = 1 − β_i in float32.
//! * ᾱ_t = cumprod(α) as torch computes it on the CPU: the running product is accumulated in
//!   **float64** and each prefix is rounded to float32. A plain float32 running product differs in
//!   991 of 1000 entries (by up to 4.8e-7).
//! * Inference timesteps: round(k·(T−1)/(N−1)) for k = 0…N−1 with numpy's half-to-even rounding,
//!   reversed, so they always run from T−1 down to 0.

use crate::error::{Result, SamplerError};

/// The schedule length every Karlo / unCLIP stage was trained with.
pub const DEFAULT_NUM_TRAIN_TIMESTEPS: usize = 1000;

/// The cap on β that keeps the last step finite (only β_{T−1} reaches it for T = 1000).
const MAX_BETA: f64 = 0.999;

/// A diffusion noise schedule: β, α = 1 − β and ᾱ = ∏α, indexed by training timestep.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    /// β_t, float32 as diffusers stores it.
    betas: Vec<f32>,
    /// α_t = 1 − β_t, float32.
    alphas: Vec<f32>,
    /// ᾱ_t = α_0·…·α_t, float64 accumulation rounded per entry (torch CPU cumprod).
    alphas_cumprod: Vec<f32>,
}

impl NoiseSchedule {
    /// Builds the `squaredcos_cap_v2` (cosine) schedule with `num_train_timesteps` steps, exactly as
    /// diffusers' `betas_for_alpha_bar` + `UnCLIPScheduler.__init__` do.
    pub fn squaredcos_cap_v2(num_train_timesteps: usize) -> Result<Self> {
        if num_train_timesteps < 2 {
            return Err(SamplerError::Parameter {
                name: "num_train_timesteps",
                limit: "at least 2",
                got: num_train_timesteps.to_string(),
            });
        }
        let alpha_bar = |u: f64| {
            let c = ((u + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos();
            c * c
        };
        let total = num_train_timesteps as f64;
        let betas: Vec<f32> = (0..num_train_timesteps)
            .map(|i| {
                let t1 = i as f64 / total;
                let t2 = (i + 1) as f64 / total;
                (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(MAX_BETA) as f32
            })
            .collect();
        let alphas: Vec<f32> = betas.iter().map(|&b| 1.0 - b).collect();
        // torch's CPU cumprod keeps the running product in the accumulation type (double for
        // float) and rounds each prefix on store; reproduce that, not a float32 running product.
        let mut running = 1.0f64;
        let alphas_cumprod = alphas
            .iter()
            .map(|&a| {
                running *= f64::from(a);
                running as f32
            })
            .collect();
        Ok(Self {
            betas,
            alphas,
            alphas_cumprod,
        })
    }

    /// The number of training timesteps T; valid timesteps are `0..T`.
    pub fn num_train_timesteps(&self) -> usize {
        self.betas.len()
    }

    /// β_t for every training timestep.
    pub fn betas(&self) -> &[f32] {
        &self.betas
    }

    /// α_t = 1 − β_t for every training timestep.
    pub fn alphas(&self) -> &[f32] {
        &self.alphas
    }

    /// ᾱ_t for every training timestep.
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// Checks that `t` is a training timestep and returns it as an index.
    pub fn check_timestep(&self, t: i64) -> Result<usize> {
        usize::try_from(t)
            .ok()
            .filter(|&i| i < self.betas.len())
            .ok_or(SamplerError::Timestep {
                timestep: t,
                num_train_timesteps: self.betas.len(),
            })
    }

    /// ᾱ_t, with the convention of diffusers' schedulers that any t < 0 (the clean image, "one
    /// step past the end") has ᾱ = 1. Errors for t ≥ T.
    pub fn alpha_prod(&self, t: i64) -> Result<f32> {
        if t < 0 {
            Ok(1.0)
        } else {
            Ok(self.alphas_cumprod[self.check_timestep(t)?])
        }
    }
}

/// The unCLIP inference timesteps for `num_inference_steps` steps, first (T−1) to last (0).
///
/// Mirrors `UnCLIPScheduler.set_timesteps`: ratio r = (T−1)/(N−1) in float64, timesteps
/// round(k·r) (half to even) for k = 0…N−1, reversed. N must be in `2..=T` (N = 1 divides by zero in
/// diffusers; N > T would repeat timesteps).
pub fn set_timesteps(num_train_timesteps: usize, num_inference_steps: usize) -> Result<Vec<i64>> {
    if num_inference_steps < 2 || num_inference_steps > num_train_timesteps {
        return Err(SamplerError::StepCount {
            steps: num_inference_steps,
            num_train_timesteps,
        });
    }
    let ratio = (num_train_timesteps - 1) as f64 / (num_inference_steps - 1) as f64;
    Ok((0..num_inference_steps)
        .rev()
        .map(|k| (k as f64 * ratio).round_ties_even() as i64)
        .collect())
}

/// Pairs each timestep with the one the step goes to: `(t_i, t_{i+1})`, and `(t_last, -1)` at
/// the end (−1 = the clean sample, ᾱ = 1). This is what the diffusers pipelines pass as
/// `prev_timestep` (they pass `None` on the last step, which means t − 1 = −1 there).
pub fn step_pairs(timesteps: &[i64]) -> Vec<(i64, i64)> {
    timesteps
        .iter()
        .enumerate()
        .map(|(i, &t)| (t, timesteps.get(i + 1).copied().unwrap_or(-1)))
        .collect()
}

#[cfg(test)]
#[allow(clippy::excessive_precision)] // reference values are pasted as printed
mod tests {
    use super::*;
    use crate::test_util::assert_close;

    fn karlo() -> NoiseSchedule {
        NoiseSchedule::squaredcos_cap_v2(DEFAULT_NUM_TRAIN_TIMESTEPS).unwrap()
    }

    /// The §4 reference values (printed to 7 significant digits).
    #[test]
    fn reference_betas_and_alpha_bars() {
        let s = karlo();
        let rel = |a: f32, e: f32| ((a - e) / e).abs();
        assert!(rel(s.betas()[0], 4.128422e-5) < 1e-6);
        assert!(rel(s.betas()[1], 4.614175e-5) < 1e-6);
        assert!(rel(s.betas()[998], 0.749999) < 1e-6);
        assert_eq!(s.betas()[999], 0.999);
        assert!(rel(s.alphas_cumprod()[0], 0.9999587) < 1e-7);
        assert!(rel(s.alphas_cumprod()[500], 0.4922850) < 1e-6);
        assert!(rel(s.alphas_cumprod()[999], 2.428735e-9) < 1e-6);
        // Only the last beta is capped.
        assert_eq!(s.betas().iter().filter(|&&b| b >= 0.999).count(), 1);
        // ᾱ(0) ≠ 1, so ᾱ_0 = 1 − β_0 exactly.
        assert_eq!(s.alphas_cumprod()[0], 1.0 - s.betas()[0]);
    }

    /// Bit-exact against diffusers 0.42.1 / torch 2.15 (`reference/gen_reference.py`).
    #[test]
    fn matches_diffusers_float32_tables_exactly() {
        let s = karlo();
        let idx = [0, 1, 2, 10, 100, 250, 500, 750, 900, 998, 999];
        let betas = [
            4.128422369831242e-05,
            4.614175122696906e-05,
            5.099948248243891e-05,
            8.987136243376881e-05,
            0.0005318991607055068,
            0.0013272239593788981,
            0.003155691549181938,
            0.007579122669994831,
            0.019741855561733246,
            0.7499994039535522,
            0.9990000128746033,
        ];
        let acp = [
            0.9999586939811707,
            0.9999125599861145,
            0.9998615384101868,
            0.9992788434028625,
            0.9715756177902222,
            0.8458880186080933,
            0.4922850430011749,
            0.14317865669727325,
            0.023616107180714607,
            2.428766265438753e-06,
            2.4287349909002387e-09,
        ];
        let got_b: Vec<f32> = idx.iter().map(|&i| s.betas()[i]).collect();
        let got_a: Vec<f32> = idx.iter().map(|&i| s.alphas_cumprod()[i]).collect();
        let exp_b: Vec<f32> = betas.iter().map(|&v: &f64| v as f32).collect();
        let exp_a: Vec<f32> = acp.iter().map(|&v: &f64| v as f32).collect();
        assert_eq!(got_b, exp_b);
        assert_eq!(got_a, exp_a);
    }

    #[test]
    fn alpha_prod_convention() {
        let s = karlo();
        assert_eq!(s.alpha_prod(-1).unwrap(), 1.0);
        assert_eq!(s.alpha_prod(0).unwrap(), s.alphas_cumprod()[0]);
        assert!(matches!(
            s.alpha_prod(1000),
            Err(SamplerError::Timestep { timestep: 1000, .. })
        ));
        assert!(NoiseSchedule::squaredcos_cap_v2(1).is_err());
    }

    #[test]
    fn reference_timestep_tables() {
        assert_eq!(set_timesteps(1000, 2).unwrap(), vec![999, 0]);
        assert_eq!(
            set_timesteps(1000, 7).unwrap(),
            vec![999, 832, 666, 500, 333, 166, 0]
        );
        assert_eq!(
            set_timesteps(1000, 25).unwrap(),
            vec![
                999, 957, 916, 874, 832, 791, 749, 708, 666, 624, 583, 541, 500, 458, 416, 375,
                333, 291, 250, 208, 166, 125, 83, 42, 0
            ]
        );
        assert_eq!(
            set_timesteps(1000, 50).unwrap(),
            vec![
                999, 979, 958, 938, 917, 897, 877, 856, 836, 816, 795, 775, 754, 734, 714, 693,
                673, 652, 632, 612, 591, 571, 550, 530, 510, 489, 469, 449, 428, 408, 387, 367,
                347, 326, 306, 285, 265, 245, 224, 204, 183, 163, 143, 122, 102, 82, 61, 41, 20, 0
            ]
        );
        // From diffusers as well (reference/gen_reference.py).
        assert_eq!(set_timesteps(1000, 3).unwrap(), vec![999, 500, 0]);
        let t64 = set_timesteps(1000, 64).unwrap();
        assert_eq!(t64[..6], [999, 983, 967, 951, 936, 920]);
        assert_eq!(t64[58..], [79, 63, 48, 32, 16, 0]);
        let t1000 = set_timesteps(1000, 1000).unwrap();
        assert!(t1000.iter().rev().copied().eq(0..1000));
    }

    #[test]
    fn rejects_unsupported_step_counts() {
        for n in [0, 1, 1001] {
            assert_eq!(
                set_timesteps(1000, n),
                Err(SamplerError::StepCount {
                    steps: n,
                    num_train_timesteps: 1000
                })
            );
        }
    }

    #[test]
    fn step_pairs_end_at_minus_one() {
        assert_eq!(
            step_pairs(&[999, 500, 0]),
            vec![(999, 500), (500, 0), (0, -1)]
        );
        assert!(step_pairs(&[]).is_empty());
    }

    #[test]
    fn alpha_bar_is_decreasing() {
        let s = karlo();
        let a = s.alphas_cumprod();
        assert!(a.windows(2).all(|w| w[1] < w[0]));
        assert_close(&[a[0]], &[0.9999587], 1e-7, 0.0);
    }
}
