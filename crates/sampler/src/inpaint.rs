//! RePaint-style inpainting: keep the known pixels on the trajectory, let the model fill the rest.
//!
//! After each denoising step to timestep p, the known region is replaced by the known image noised
//! to the same level p (RePaint, Lugmayr et al. 2022, without resampling jumps):
//!
//! ```text
//! q_sample(x₀, p, z) = √ᾱ_p·x₀ + √(1−ᾱ_p)·z          (x₀ itself for p = −1)
//! x_p ← m·q_sample(x₀_known, p, z) + (1 − m)·x_p
//! ```
//!
//! **Mask convention: m = 1 marks known pixels (kept from the source image), m = 0 marks the
//! region to generate.** Fractional values blend (a feathered edge). The mask broadcasts against
//! the sample, e.g. `[B, 1, H, W]` or `[1, 1, H, W]` for `[B, C, H, W]` latents. Neither
//! diffusers nor Karlo implements unCLIP inpainting; this is the standard training-free recipe.

use ndarray::{ArrayD, ArrayViewD, Axis, Zip};

use crate::batch;
use crate::error::{Result, SamplerError};
use crate::schedule::NoiseSchedule;

/// The forward process: noises clean `x0` to timestep t per sample (t = −1 returns `x0`).
///
/// Same float32 operations as diffusers' `add_noise`: `√ᾱ_t·x₀ + √(1−ᾱ_t)·z`. `noise` has the
/// shape of `x0`.
pub fn q_sample(
    schedule: &NoiseSchedule,
    x0: &ArrayViewD<'_, f32>,
    timesteps: &[i64],
    noise: &ArrayViewD<'_, f32>,
) -> Result<ArrayD<f32>> {
    let b = batch::batch_size("x0", x0.shape(), 1)?;
    batch::same_shape("noise", noise.shape(), x0.shape())?;
    batch::per_sample("timesteps", timesteps.len(), b)?;
    let coeffs = timesteps
        .iter()
        .map(|&t| {
            if t < -1 {
                return Err(SamplerError::Timestep {
                    timestep: t,
                    num_train_timesteps: schedule.num_train_timesteps(),
                });
            }
            let a = schedule.alpha_prod(t)?;
            Ok((a.sqrt(), (1.0 - a).sqrt()))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut out = x0.to_owned();
    for (i, &(sa, sb)) in coeffs.iter().enumerate() {
        if timesteps[i] < 0 {
            continue;
        }
        Zip::from(&mut out.index_axis_mut(Axis(0), i))
            .and(&noise.index_axis(Axis(0), i))
            .for_each(|x, &z| *x = sa * *x + sb * z);
    }
    Ok(out)
}

/// The RePaint combine after a step to `prev_timesteps` (per sample; −1 after the final step):
/// `m·q_sample(known, p, noise) + (1 − m)·sample`, with m = 1 on known pixels.
///
/// `known` (the source image in model range) and `noise` have the shape of `sample`; `mask`
/// broadcasts to it.
pub fn repaint_combine(
    schedule: &NoiseSchedule,
    known: &ArrayViewD<'_, f32>,
    mask: &ArrayViewD<'_, f32>,
    sample: &ArrayViewD<'_, f32>,
    prev_timesteps: &[i64],
    noise: &ArrayViewD<'_, f32>,
) -> Result<ArrayD<f32>> {
    batch::same_shape("known", known.shape(), sample.shape())?;
    let mask = mask
        .broadcast(sample.raw_dim())
        .ok_or_else(|| SamplerError::Shape {
            what: "mask",
            expected: format!(
                "broadcastable to {} (1 = known)",
                batch::shape_str(sample.shape())
            ),
            got: mask.shape().to_vec(),
        })?;
    let mut known_t = q_sample(schedule, known, prev_timesteps, noise)?;
    Zip::from(&mut known_t)
        .and(&mask)
        .and(sample)
        .for_each(|k, &m, &x| *k = m * *k + (1.0 - m) * x);
    Ok(known_t)
}

#[cfg(test)]
#[allow(clippy::excessive_precision)] // reference values are pasted as printed
mod tests {
    use super::*;
    use crate::test_util::{assert_close, pat};
    use ndarray::{Array, IxDyn};

    fn karlo() -> NoiseSchedule {
        NoiseSchedule::squaredcos_cap_v2(1000).unwrap()
    }

    fn arr(shape: &[usize], v: Vec<f32>) -> ArrayD<f32> {
        Array::from_shape_vec(IxDyn(shape), v).unwrap()
    }

    /// Against diffusers' `add_noise` at t = 500.
    #[test]
    fn q_sample_matches_diffusers() {
        let x = arr(&[1, 2, 2, 2], pat(8, 7, 2, 9, 1.0));
        let z = arr(&[1, 2, 2, 2], pat(8, 7, 3, 13, 1.3));
        let q = q_sample(&karlo(), &x.view(), &[500], &z.view()).unwrap();
        #[rustfmt::skip]
        let expected = [-0.81396693, -0.08409464, 0.21745488, 0.94732726, -0.32979152, 0.40008086, 0.70163029, -0.57548845];
        assert_close(q.as_slice().unwrap(), &expected, 1e-6, 0.0);
        // t = −1 is the clean image.
        let q = q_sample(&karlo(), &x.view(), &[-1], &z.view()).unwrap();
        assert_eq!(q, x);
        assert!(q_sample(&karlo(), &x.view(), &[-2], &z.view()).is_err());
        assert!(q_sample(&karlo(), &x.view(), &[1000], &z.view()).is_err());
    }

    #[test]
    fn mask_one_keeps_known_and_zero_keeps_sample() {
        let s = karlo();
        let known = arr(&[1, 1, 1, 4], vec![0.5, -0.5, 0.25, 1.0]);
        let sample = arr(&[1, 1, 1, 4], vec![9.0, 9.0, 9.0, 9.0]);
        let noise = arr(&[1, 1, 1, 4], vec![1.0, -1.0, 0.0, 2.0]);
        let mask = arr(&[1, 1, 1, 4], vec![1.0, 0.0, 1.0, 0.5]);
        // After the final step (p = −1) the known pixels are exactly the source image.
        let out = repaint_combine(
            &s,
            &known.view(),
            &mask.view(),
            &sample.view(),
            &[-1],
            &noise.view(),
        )
        .unwrap();
        assert_eq!(out.as_slice().unwrap(), &[0.5, 9.0, 0.25, 5.0]);
        // Mid-trajectory the known pixels are the noised source image.
        let out = repaint_combine(
            &s,
            &known.view(),
            &mask.view(),
            &sample.view(),
            &[500],
            &noise.view(),
        )
        .unwrap();
        let q = q_sample(&s, &known.view(), &[500], &noise.view()).unwrap();
        assert_eq!(out[[0, 0, 0, 0]], q[[0, 0, 0, 0]]);
        assert_eq!(out[[0, 0, 0, 1]], 9.0);
    }

    #[test]
    fn mask_broadcasts_over_channels_and_batch() {
        let s = karlo();
        let known = ArrayD::<f32>::zeros(IxDyn(&[2, 3, 2, 2]));
        let sample = ArrayD::<f32>::ones(IxDyn(&[2, 3, 2, 2]));
        let noise = ArrayD::<f32>::zeros(IxDyn(&[2, 3, 2, 2]));
        let mask = arr(&[1, 1, 2, 2], vec![1.0, 0.0, 0.0, 1.0]);
        let out = repaint_combine(
            &s,
            &known.view(),
            &mask.view(),
            &sample.view(),
            &[-1, -1],
            &noise.view(),
        )
        .unwrap();
        assert!(out.outer_iter().all(|img| {
            img.outer_iter()
                .all(|ch| ch.iter().copied().eq([0.0, 1.0, 1.0, 0.0]))
        }));
        let bad_mask = ArrayD::<f32>::zeros(IxDyn(&[1, 1, 3, 3]));
        let err = repaint_combine(
            &s,
            &known.view(),
            &bad_mask.view(),
            &sample.view(),
            &[-1, -1],
            &noise.view(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("mask must have shape broadcastable")
        );
    }
}
