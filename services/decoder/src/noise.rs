//! Where the sampling loops get their Gaussian noise from.
//!
//! A loop asks for whole-batch draws in one fixed order per stage (see [`crate::sampling`]):
//!
//! 1. the initial latents x_T, **always** — also when the request supplies its own initial noise,
//!    in which case the draw is discarded, so that the later draws of an image do not depend on
//!    whether x_T was given (decoding with `init_noise` equal to the seeded x_T reproduces the
//!    seeded image exactly);
//! 2. per step, in step order: the step's noise when the update needs one (the unCLIP step for
//!    t > 0, DDIM for η > 0 and t > 0), then, when inpainting and the step does not end at the
//!    clean image, the noise that takes the known image to the step's noise level.
//!
//! The service draws from [`SeededNoise`]: image k of a request with seed s uses
//! `NoiseSource::new(s, k, stage)`, so an image is the same whether it was generated alone or in a
//! batch. The parity tests replay diffusers' recorded draws through the same trait.

use ndarray::ArrayD;
use unclip_model_server::ServiceError;
use unclip_sampler::{NoiseSource, NoiseStage, draw_batch};

/// A source of whole-batch standard-normal draws, consumed in the loops' documented order.
pub trait NoiseDraws {
    /// The next draw, of `shape` (`[N, C, H, W]`: one row per image of the batch).
    fn next(&mut self, shape: &[usize]) -> Result<ArrayD<f32>, ServiceError>;
}

/// Seeded noise: one [`NoiseSource`] per image of the batch, all on one stage's stream.
#[derive(Debug, Clone)]
pub struct SeededNoise {
    /// Row k draws from `sources[k]`.
    sources: Vec<NoiseSource>,
}

impl SeededNoise {
    /// Sources for images `0..count` of a request with `seed` (image k uses `seed + k`).
    pub fn new(seed: u64, count: usize, stage: NoiseStage) -> Self {
        let seeds: Vec<u64> = (0..count as u64).map(|k| seed.wrapping_add(k)).collect();
        Self::from_seeds(&seeds, stage)
    }

    /// Sources for images with the given seeds: image k draws from `seeds[k]` (equal seeds give
    /// equal noise).
    pub fn from_seeds(seeds: &[u64], stage: NoiseStage) -> Self {
        Self {
            sources: seeds
                .iter()
                .map(|&seed| NoiseSource::new(seed, 0, stage))
                .collect(),
        }
    }
}

impl NoiseDraws for SeededNoise {
    fn next(&mut self, shape: &[usize]) -> Result<ArrayD<f32>, ServiceError> {
        if shape.first() != Some(&self.sources.len()) {
            return Err(ServiceError::Internal(format!(
                "a noise draw of shape {shape:?} for {} seeded images",
                self.sources.len()
            )));
        }
        Ok(draw_batch(&mut self.sources, &shape[1..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Axis;

    /// Row k of a batch draw is what image k would draw alone with seed + k.
    #[test]
    fn rows_are_per_image_streams() {
        let mut batch = SeededNoise::new(10, 3, NoiseStage::Decoder);
        let a = batch.next(&[3, 3, 2, 2]).unwrap();
        let b = batch.next(&[3, 3, 2, 2]).unwrap();
        for k in 0..3 {
            let mut alone = SeededNoise::new(10 + k as u64, 1, NoiseStage::Decoder);
            assert_eq!(
                alone.next(&[1, 3, 2, 2]).unwrap().index_axis(Axis(0), 0),
                a.index_axis(Axis(0), k)
            );
            assert_eq!(
                alone.next(&[1, 3, 2, 2]).unwrap().index_axis(Axis(0), 0),
                b.index_axis(Axis(0), k)
            );
        }
        assert!(batch.next(&[2, 3]).is_err());
    }

    /// Listed seeds equal the base-seed form, and a repeated seed repeats the noise.
    #[test]
    fn listed_seeds() {
        let mut base = SeededNoise::new(10, 2, NoiseStage::Decoder);
        let mut listed = SeededNoise::from_seeds(&[10, 11], NoiseStage::Decoder);
        assert_eq!(base.next(&[2, 3]).unwrap(), listed.next(&[2, 3]).unwrap());
        let mut same = SeededNoise::from_seeds(&[5, 5], NoiseStage::Decoder);
        let draw = same.next(&[2, 4]).unwrap();
        assert_eq!(draw.index_axis(Axis(0), 0), draw.index_axis(Axis(0), 1));
    }
}
