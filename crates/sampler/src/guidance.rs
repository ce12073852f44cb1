//! Classifier-free guidance (CFG): combining the unconditional and conditional model outputs.
//!
//! The model is called once on a doubled batch laid out **[uncond; cond]**: rows `0..B` are the
//! unconditional inputs, rows `B..2B` the conditional ones, sample i of each half belonging
//! together (the diffusers order; Karlo used [cond; uncond], which gives the same result). The
//! guided output is `uncond + s·(cond − uncond)` in float32, per sample with its own scale s:
//!
//! * **prior**: over the whole predicted embedding ([`guide_prior`]);
//! * **decoder**: over the ε channels only; the learned-range channels are taken from the
//!   conditional half unchanged ([`guide_decoder`]).
//!
//! The super-resolution stages use no guidance. A scale of 1 returns the conditional output; a
//! scale below 1 is still applied with the formula, as in diffusers.

use ndarray::{ArrayD, ArrayViewD, Axis, Slice, Zip, concatenate};

use crate::batch;
use crate::error::{Result, SamplerError};

/// Builds the doubled model input `[x; x]` (both halves see the same latents).
pub fn duplicate_for_guidance(latents: &ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
    batch::batch_size("latents", latents.shape(), 1)?;
    Ok(concatenate(Axis(0), &[latents.view(), latents.view()])
        .expect("two arrays of one shape always concatenate"))
}

/// Prior guidance: `uncond + s_i·(cond − uncond)` over the full output `[2B, ...]` → `[B, ...]`.
///
/// `scales` has one entry per sample (B), or a single entry used for all.
pub fn guide_prior(model_output: &ArrayViewD<'_, f32>, scales: &[f32]) -> Result<ArrayD<f32>> {
    let channels = model_output.shape().get(1).copied().unwrap_or(0);
    guide(model_output, scales, channels, 1)
}

/// Decoder guidance on `[2B, 2C, ...]` → `[B, 2C, ...]`: channels `0..latent_channels` (ε) are
/// guided, the rest (the learned-range values v) are copied from the conditional half.
///
/// `scales` has one entry per sample (B), or a single entry used for all.
pub fn guide_decoder(
    model_output: &ArrayViewD<'_, f32>,
    scales: &[f32],
    latent_channels: usize,
) -> Result<ArrayD<f32>> {
    guide(model_output, scales, latent_channels, 2)
}

/// Guides channels `0..guided` of axis 1 and copies the rest from the conditional half.
fn guide(
    model_output: &ArrayViewD<'_, f32>,
    scales: &[f32],
    guided: usize,
    min_ndim: usize,
) -> Result<ArrayD<f32>> {
    let doubled = batch::batch_size("model_output", model_output.shape(), min_ndim)?;
    if doubled % 2 != 0 || (model_output.ndim() >= 2 && guided > model_output.shape()[1]) {
        let mut expected = model_output.shape().to_vec();
        expected[0] = doubled + doubled % 2;
        if expected.len() >= 2 {
            expected[1] = expected[1].max(guided);
        }
        return Err(SamplerError::Shape {
            what: "model_output",
            expected: format!("{} ([uncond; cond])", batch::shape_str(&expected)),
            got: model_output.shape().to_vec(),
        });
    }
    let b = doubled / 2;
    if scales.len() != 1 {
        batch::per_sample("guidance scales", scales.len(), b)?;
    }
    if let Some(&bad) = scales.iter().find(|s| !s.is_finite()) {
        return Err(SamplerError::Parameter {
            name: "guidance scale",
            limit: "finite",
            got: bad.to_string(),
        });
    }
    let uncond = model_output.slice_axis(Axis(0), Slice::from(0..b));
    let cond = model_output.slice_axis(Axis(0), Slice::from(b..));
    // Start from the conditional half: this already holds the unguided channels.
    let mut guided_out = cond.to_owned();
    for i in 0..b {
        let s = if scales.len() == 1 {
            scales[0]
        } else {
            scales[i]
        };
        let mut g = guided_out.index_axis_mut(Axis(0), i);
        let u = uncond.index_axis(Axis(0), i);
        let (mut g, u) = if model_output.ndim() >= 2 {
            (
                g.slice_axis_mut(Axis(0), Slice::from(0..guided)),
                u.slice_axis(Axis(0), Slice::from(0..guided)),
            )
        } else {
            (g.view_mut(), u)
        };
        Zip::from(&mut g)
            .and(&u)
            .for_each(|c, &u| *c = u + s * (*c - u));
    }
    Ok(guided_out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array, IxDyn, array};

    #[test]
    fn prior_guidance_formula_and_order() {
        // B = 2, D = 3: rows 0,1 uncond; rows 2,3 cond.
        let out = array![
            [0.0f32, 1.0, 2.0],
            [1.0, 1.0, 1.0],
            [1.0, 1.0, 4.0],
            [3.0, 1.0, 0.0]
        ]
        .into_dyn();
        let g = guide_prior(&out.view(), &[4.0, 1.0]).unwrap();
        assert_eq!(g, array![[4.0f32, 1.0, 10.0], [3.0, 1.0, 0.0]].into_dyn());
        // One scale for all; scale 0 gives the unconditional output.
        let g = guide_prior(&out.view(), &[0.0]).unwrap();
        assert_eq!(g, array![[0.0f32, 1.0, 2.0], [1.0, 1.0, 1.0]].into_dyn());
    }

    #[test]
    fn decoder_guides_epsilon_only_and_keeps_cond_variance() {
        // B = 1, C = 1: channel 0 is ε, channel 1 is v.
        let out = Array::from_shape_vec(
            IxDyn(&[2, 2, 1, 2]),
            vec![
                1.0, 2.0, /* v uncond */ -0.5, -0.5, //
                2.0, 2.0, /* v cond */ 0.25, 0.75,
            ],
        )
        .unwrap();
        let g = guide_decoder(&out.view(), &[8.0], 1).unwrap();
        assert_eq!(g.shape(), &[1, 2, 1, 2]);
        assert_eq!(g.as_slice().unwrap(), &[9.0, 2.0, 0.25, 0.75]);
    }

    #[test]
    fn duplicate_then_guide_roundtrip() {
        let x = array![[1.0f32, -2.0], [0.5, 3.0]].into_dyn();
        let d = duplicate_for_guidance(&x.view()).unwrap();
        assert_eq!(d.shape(), &[4, 2]);
        // Identical halves: any scale returns the input.
        assert_eq!(guide_prior(&d.view(), &[7.5, 2.0]).unwrap(), x);
    }

    #[test]
    fn rejects_bad_inputs() {
        let odd = ArrayD::<f32>::zeros(IxDyn(&[3, 4]));
        assert!(guide_prior(&odd.view(), &[1.0]).is_err());
        let even = ArrayD::<f32>::zeros(IxDyn(&[4, 4]));
        assert!(matches!(
            guide_prior(&even.view(), &[1.0, 2.0, 3.0]),
            Err(SamplerError::BatchLength { .. })
        ));
        assert!(guide_prior(&even.view(), &[f32::NAN]).is_err());
        let dec = ArrayD::<f32>::zeros(IxDyn(&[2, 2, 4, 4]));
        assert!(guide_decoder(&dec.view(), &[1.0], 3).is_err());
        let scalar = ArrayD::<f32>::zeros(IxDyn(&[]));
        assert!(duplicate_for_guidance(&scalar.view()).is_err());
    }
}
