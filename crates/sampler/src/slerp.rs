//! Spherical interpolation of embeddings and latents, and DALL·E 2's text-diff direction.
//!
//! ```text
//! Ω            = arccos(⟨a/‖a‖, b/‖b‖⟩)
//! slerp(a,b,θ) = sin((1−θ)Ω)/sin Ω · a + sin(θΩ)/sin Ω · b
//! ```
//!
//! Ω comes from the **dot product** of the normalised vectors. (diffusers' community unCLIP
//! interpolation pipelines take the arccos of an elementwise product instead, which is not a
//! slerp; this module does not reproduce that.) When sin Ω is tiny (parallel or antiparallel
//! inputs) the arc is undefined or numerically unstable and the result falls back to the linear
//! interpolation (1−θ)·a + θ·b. The inputs are not normalised before mixing, so slerp between two
//! vectors of equal norm keeps that norm. Any array shape works; it is treated as one flat vector
//! (embeddings `[D]`, or a latent `[C, H, W]` for the paper's x_T interpolation). Arithmetic is
//! float64 internally.
//!
//! Text diffs (the paper's §3.3): z_d = normalize(z_target − z_source) for the CLIP text
//! embeddings of the new and the current caption, then decode slerp(z_image, z_d, θ) with θ
//! rising from 0 to about 0.25–0.5, using the same base noise throughout.

use ndarray::{Array, ArrayView, Dimension, Zip};

use crate::error::{Result, SamplerError};

/// Below this |sin Ω| slerp falls back to linear interpolation.
pub const LERP_FALLBACK_SIN_OMEGA: f64 = 1e-6;

/// The Euclidean norm in float64.
fn norm<D: Dimension>(v: &ArrayView<'_, f32, D>) -> f64 {
    v.iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt()
}

/// Errors unless the norm is positive and finite.
fn checked_norm<D: Dimension>(what: &'static str, v: &ArrayView<'_, f32, D>) -> Result<f64> {
    let n = norm(v);
    if n > 0.0 && n.is_finite() {
        Ok(n)
    } else {
        Err(SamplerError::ZeroNorm { what, norm: n })
    }
}

/// `v/‖v‖`; errors for a zero or non-finite norm.
pub fn normalize<D: Dimension>(v: &ArrayView<'_, f32, D>) -> Result<Array<f32, D>> {
    let n = checked_norm("vector", v)?;
    Ok(v.mapv(|x| (f64::from(x) / n) as f32))
}

/// The angle Ω between `a` and `b` in radians, from the dot product of the normalised vectors.
pub fn angle<D: Dimension>(a: &ArrayView<'_, f32, D>, b: &ArrayView<'_, f32, D>) -> Result<f64> {
    same_shape(a, b)?;
    let (na, nb) = (checked_norm("a", a)?, checked_norm("b", b)?);
    let dot: f64 = Zip::from(a)
        .and(b)
        .fold(0.0, |acc, &x, &y| acc + f64::from(x) * f64::from(y));
    Ok((dot / (na * nb)).clamp(-1.0, 1.0).acos())
}

/// Spherical interpolation from `a` (θ = 0) to `b` (θ = 1); θ outside [0, 1] extrapolates
/// along the same great circle. Falls back to linear interpolation when |sin Ω| is below
/// [`LERP_FALLBACK_SIN_OMEGA`]. Errors for mismatched shapes, zero norms or a non-finite θ.
pub fn slerp<D: Dimension>(
    a: &ArrayView<'_, f32, D>,
    b: &ArrayView<'_, f32, D>,
    theta: f32,
) -> Result<Array<f32, D>> {
    if !theta.is_finite() {
        return Err(SamplerError::Parameter {
            name: "theta",
            limit: "finite",
            got: theta.to_string(),
        });
    }
    let omega = angle(a, b)?;
    let theta = f64::from(theta);
    let sin_omega = omega.sin();
    let (wa, wb) = if sin_omega.abs() < LERP_FALLBACK_SIN_OMEGA {
        (1.0 - theta, theta)
    } else {
        (
            ((1.0 - theta) * omega).sin() / sin_omega,
            (theta * omega).sin() / sin_omega,
        )
    };
    Ok(Zip::from(a)
        .and(b)
        .map_collect(|&x, &y| (wa * f64::from(x) + wb * f64::from(y)) as f32))
}

/// The text-diff direction normalize(z_target − z_source); errors when the two are equal.
pub fn text_diff_direction<D: Dimension>(
    z_target: &ArrayView<'_, f32, D>,
    z_source: &ArrayView<'_, f32, D>,
) -> Result<Array<f32, D>> {
    same_shape(z_target, z_source)?;
    let diff = Zip::from(z_target)
        .and(z_source)
        .map_collect(|&t, &s| f64::from(t) - f64::from(s));
    let n = diff.iter().map(|d| d * d).sum::<f64>().sqrt();
    if !(n > 0.0 && n.is_finite()) {
        return Err(SamplerError::ZeroNorm {
            what: "z_target - z_source",
            norm: n,
        });
    }
    Ok(diff.mapv(|d| (d / n) as f32))
}

/// Errors unless both arrays have one shape.
fn same_shape<D: Dimension>(a: &ArrayView<'_, f32, D>, b: &ArrayView<'_, f32, D>) -> Result<()> {
    crate::batch::same_shape("b", b.shape(), a.shape())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::assert_close;
    use ndarray::{Array1, array};
    use std::f64::consts::FRAC_PI_2;

    fn n(v: &Array1<f32>) -> f64 {
        norm(&v.view())
    }

    #[test]
    fn endpoints_are_the_inputs() {
        let a = array![1.0f32, 2.0, -0.5];
        let b = array![-0.3f32, 0.7, 2.0];
        assert_close(
            slerp(&a.view(), &b.view(), 0.0)
                .unwrap()
                .as_slice()
                .unwrap(),
            a.as_slice().unwrap(),
            1e-6,
            0.0,
        );
        assert_close(
            slerp(&a.view(), &b.view(), 1.0)
                .unwrap()
                .as_slice()
                .unwrap(),
            b.as_slice().unwrap(),
            1e-6,
            0.0,
        );
    }

    #[test]
    fn orthogonal_unit_vectors_follow_the_circle() {
        let a = array![1.0f32, 0.0];
        let b = array![0.0f32, 1.0];
        assert!((angle(&a.view(), &b.view()).unwrap() - FRAC_PI_2).abs() < 1e-12);
        for theta in [0.1f32, 0.25, 0.5, 0.9] {
            let s = slerp(&a.view(), &b.view(), theta).unwrap();
            let phi = f64::from(theta) * FRAC_PI_2;
            assert_close(
                s.as_slice().unwrap(),
                &[phi.cos() as f32, phi.sin() as f32],
                1e-6,
                0.0,
            );
            assert!((n(&s) - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn equal_norms_are_preserved_unlike_lerp() {
        let a = array![3.0f32, 0.0, 4.0];
        let b = array![0.0f32, 5.0, 0.0];
        let mid = slerp(&a.view(), &b.view(), 0.5).unwrap();
        assert!((n(&mid) - 5.0).abs() < 1e-5);
        let lerp_mid = (&a + &b) * 0.5;
        assert!(n(&lerp_mid) < 4.0);
        // Unequal norms: the norm moves between the two (it is not renormalised).
        let c = &b * 2.0;
        let m = n(&slerp(&a.view(), &c.view(), 0.5).unwrap());
        assert!(m > 5.0 && m < 10.0);
    }

    #[test]
    fn not_the_elementwise_variant() {
        // With Ω from a dot product, scaling b does not change the angle.
        let a = array![1.0f32, 1.0, 0.0];
        let b = array![0.0f32, 1.0, 1.0];
        let b10 = &b * 10.0;
        let w = angle(&a.view(), &b.view()).unwrap();
        assert!((w - std::f64::consts::FRAC_PI_3).abs() < 1e-12);
        assert!((angle(&a.view(), &b10.view()).unwrap() - w).abs() < 1e-12);
    }

    #[test]
    fn parallel_and_antiparallel_fall_back_to_lerp() {
        let a = array![1.0f32, 2.0, 3.0];
        let b = array![2.0f32, 4.0, 6.0];
        let s = slerp(&a.view(), &b.view(), 0.25).unwrap();
        assert_close(s.as_slice().unwrap(), &[1.25, 2.5, 3.75], 1e-6, 0.0);
        let c = -&a;
        let s = slerp(&a.view(), &c.view(), 0.5).unwrap();
        assert!(s.iter().all(|v| v.is_finite() && v.abs() < 1e-6));
    }

    #[test]
    fn works_on_latent_shaped_arrays() {
        let a = ndarray::Array3::<f32>::from_shape_fn((2, 2, 2), |(c, h, w)| (c + h + w) as f32);
        let b =
            ndarray::Array3::<f32>::from_shape_fn((2, 2, 2), |(c, h, w)| (c * h + w) as f32 - 1.0);
        let s = slerp(&a.view(), &b.view(), 0.3).unwrap();
        assert_eq!(s.shape(), &[2, 2, 2]);
    }

    #[test]
    fn normalize_and_text_diff() {
        let v = array![3.0f32, 4.0];
        assert_close(
            normalize(&v.view()).unwrap().as_slice().unwrap(),
            &[0.6, 0.8],
            1e-7,
            0.0,
        );
        let z = array![0.0f32, 0.0];
        assert!(matches!(
            normalize(&z.view()),
            Err(SamplerError::ZeroNorm { .. })
        ));
        let target = array![1.0f32, 5.0];
        let source = array![-2.0f32, 1.0];
        let d = text_diff_direction(&target.view(), &source.view()).unwrap();
        assert_close(d.as_slice().unwrap(), &[0.6, 0.8], 1e-7, 0.0);
        assert!(text_diff_direction(&target.view(), &target.view()).is_err());
    }

    #[test]
    fn rejects_bad_inputs() {
        let a = array![1.0f32, 0.0];
        let b = array![1.0f32, 0.0, 0.0];
        assert!(slerp(&a.view(), &b.view(), 0.5).is_err());
        assert!(slerp(&a.view(), &a.view(), f32::NAN).is_err());
        let z = array![0.0f32, 0.0];
        assert!(slerp(&a.view(), &z.view(), 0.5).is_err());
    }
}
