//! Seeded standard-normal noise, one independent generator per image and pipeline stage.
//!
//! Image k of a request with seed s draws from seed `s + k` (wrapping), so an image does not
//! depend on how many siblings it was generated with or how it was batched. Within an image, each
//! stage has its own ChaCha8 stream ([`NoiseStage`]), so changing, say, the prior's step count
//! leaves the decoder's and upsamplers' noise unchanged (useful for variations and text diffs,
//! which decode with the same base noise throughout).
//!
//! **Draw order within a stage** (mirroring diffusers, per image):
//! 1. the initial latent x_T (`[D]` for the prior, `[C, H, W]` for the decoder/upsamplers);
//! 2. then one latent-shaped draw for each step with t > 0, in step order (the final t = 0 step
//!    draws nothing).
//!
//! Values fill arrays in row-major (logical) order. torch's generator cannot be reproduced, so
//! parity with Python is checked by replaying recorded draws instead. The stream is pinned by a
//! unit test: upgrading `rand`/`rand_chacha`/`rand_distr` must not silently change images.

use ndarray::{ArrayD, ArrayViewMutD, Axis, IxDyn};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::batch;
use crate::error::Result;

/// The pipeline stage a noise stream belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoiseStage {
    /// The diffusion prior over image embeddings.
    Prior,
    /// The 64×64 decoder.
    Decoder,
    /// Upsampler `i` of the cascade (0 = first).
    Upsampler(u32),
}

impl NoiseStage {
    /// The ChaCha stream id: 0 for the prior, 1 for the decoder, 2 + i for upsampler i.
    pub fn stream_id(self) -> u64 {
        match self {
            NoiseStage::Prior => 0,
            NoiseStage::Decoder => 1,
            NoiseStage::Upsampler(i) => 2 + u64::from(i),
        }
    }
}

/// A seeded standard-normal source for one image and one stage.
#[derive(Debug, Clone)]
pub struct NoiseSource {
    /// ChaCha8 keyed by the image seed, on the stage's stream.
    rng: ChaCha8Rng,
}

impl NoiseSource {
    /// The source for image `image_index` of a request with `request_seed`, at `stage`.
    pub fn new(request_seed: u64, image_index: u64, stage: NoiseStage) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(request_seed.wrapping_add(image_index));
        rng.set_stream(stage.stream_id());
        Self { rng }
    }

    /// One standard-normal f32.
    pub fn next_f32(&mut self) -> f32 {
        StandardNormal.sample(&mut self.rng)
    }

    /// Fills `out` in row-major order.
    pub fn fill(&mut self, mut out: ArrayViewMutD<'_, f32>) {
        out.iter_mut().for_each(|v| *v = self.next_f32());
    }

    /// A fresh array of `shape` filled with standard-normal draws.
    pub fn draw(&mut self, shape: &[usize]) -> ArrayD<f32> {
        let mut a = ArrayD::zeros(IxDyn(shape));
        self.fill(a.view_mut());
        a
    }
}

/// A `[B, ...sample_shape]` batch whose row k is drawn from `sources[k]` (one source per image).
pub fn draw_batch(sources: &mut [NoiseSource], sample_shape: &[usize]) -> ArrayD<f32> {
    let mut shape = vec![sources.len()];
    shape.extend_from_slice(sample_shape);
    let mut out = ArrayD::zeros(IxDyn(&shape));
    for (row, src) in out.outer_iter_mut().zip(sources.iter_mut()) {
        src.fill(row);
    }
    out
}

/// Like [`draw_batch`] but only for the samples with `draw[k] == true` (e.g. t > 0); the other
/// rows are zero and their sources are not advanced, keeping each image's draw order intact when
/// images at different steps share a batch.
pub fn draw_batch_where(
    sources: &mut [NoiseSource],
    sample_shape: &[usize],
    draw: &[bool],
) -> Result<ArrayD<f32>> {
    batch::per_sample("draw", draw.len(), sources.len())?;
    let mut shape = vec![sources.len()];
    shape.extend_from_slice(sample_shape);
    let mut out = ArrayD::zeros(IxDyn(&shape));
    for (k, src) in sources.iter_mut().enumerate() {
        if draw[k] {
            src.fill(out.index_axis_mut(Axis(0), k));
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::excessive_precision)] // reference values are pasted as printed
mod tests {
    use super::*;

    /// Pins the stream: a dependency upgrade that changes it must be deliberate.
    #[test]
    fn stream_is_pinned() {
        let mut s = NoiseSource::new(0, 0, NoiseStage::Prior);
        let got: Vec<f32> = (0..4).map(|_| s.next_f32()).collect();
        assert_eq!(got, PINNED_SEED0_PRIOR);
    }

    const PINNED_SEED0_PRIOR: [f32; 4] = [0.69996077, -0.14406164, 0.30288628, -1.3745139];

    #[test]
    fn same_seed_same_noise_and_stages_differ() {
        let a = NoiseSource::new(42, 0, NoiseStage::Decoder).draw(&[3, 4, 4]);
        let b = NoiseSource::new(42, 0, NoiseStage::Decoder).draw(&[3, 4, 4]);
        assert_eq!(a, b);
        let c = NoiseSource::new(42, 0, NoiseStage::Upsampler(0)).draw(&[3, 4, 4]);
        assert_ne!(a, c);
        // Image k uses seed + k.
        let d = NoiseSource::new(40, 2, NoiseStage::Decoder).draw(&[3, 4, 4]);
        assert_eq!(a, d);
        assert_ne!(
            a,
            NoiseSource::new(42, 1, NoiseStage::Decoder).draw(&[3, 4, 4])
        );
    }

    #[test]
    fn batch_rows_come_from_their_own_sources() {
        let mut sources: Vec<_> = (0..3)
            .map(|k| NoiseSource::new(7, k, NoiseStage::Prior))
            .collect();
        let batch = draw_batch(&mut sources, &[5]);
        assert_eq!(batch.shape(), &[3, 5]);
        for k in 0..3 {
            let alone = NoiseSource::new(7, k as u64, NoiseStage::Prior).draw(&[5]);
            assert_eq!(batch.index_axis(Axis(0), k), alone);
        }
    }

    #[test]
    fn skipped_rows_do_not_advance_their_source() {
        let mut sources = vec![
            NoiseSource::new(1, 0, NoiseStage::Decoder),
            NoiseSource::new(1, 1, NoiseStage::Decoder),
        ];
        let first = draw_batch_where(&mut sources, &[2], &[false, true]).unwrap();
        assert!(first.index_axis(Axis(0), 0).iter().all(|&v| v == 0.0));
        let second = draw_batch_where(&mut sources, &[2], &[true, true]).unwrap();
        let fresh = NoiseSource::new(1, 0, NoiseStage::Decoder).draw(&[2]);
        assert_eq!(second.index_axis(Axis(0), 0), fresh);
        assert!(draw_batch_where(&mut sources, &[2], &[true]).is_err());
    }

    #[test]
    fn draws_look_standard_normal() {
        let x = NoiseSource::new(123, 0, NoiseStage::Prior).draw(&[20_000]);
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = x
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "var {var}");
    }
}
