//! Pure sampler math for unCLIP (DALL·E 2's text-to-image system): everything between model calls.
//!
//! No ONNX, no I/O, no async: plain functions and small structs over `ndarray` float32 arrays,
//! each validated and returning [`Result`]. The numbers follow diffusers 0.42.1 (the reference the
//! served models were exported from) operation for operation where that is observable, and are
//! unit-tested against values produced by diffusers and torch (`reference/gen_reference.py`).
//!
//! | module | what |
//! |---|---|
//! | [`schedule`] | the cosine β/ᾱ tables in diffusers' float32, and the timestep respacing |
//! | [`scheduler`] | the unCLIP (DDPM-style) step, one timestep per batch sample |
//! | [`guidance`] | classifier-free guidance for the prior and the decoder |
//! | [`ddim`] | DDIM sampling with η and DDIM inversion (the paper's bipartite latents) |
//! | [`inpaint`] | forward noising and the RePaint masked combine |
//! | [`slerp`](mod@slerp) | true slerp, normalisation, the text-diff direction |
//! | [`resize`] | PIL-style antialiased bicubic resize (the upsampler's conditioning image) |
//! | [`pixels`] | bytes ↔ [−1, 1] floats, HWC ↔ NCHW |
//! | [`rng`] | seeded standard-normal noise per image and stage |
//!
//! Batched arrays put the sample on axis 0; per-sample lists (timesteps, guidance scales) have one
//! entry per sample, so requests at different steps can share one model call.

mod batch;
pub mod ddim;
pub mod error;
pub mod guidance;
pub mod inpaint;
pub mod pixels;
pub mod resize;
pub mod rng;
pub mod schedule;
pub mod scheduler;
pub mod slerp;
#[cfg(test)]
mod test_util;

pub use ddim::{DdimParams, DdimScheduler, inversion_pairs};
pub use error::{Result, SamplerError};
pub use guidance::{duplicate_for_guidance, guide_decoder, guide_prior};
pub use inpaint::{q_sample, repaint_combine};
pub use resize::{BicubicResizer, resize_bicubic};
pub use rng::{NoiseSource, NoiseStage, draw_batch, draw_batch_where};
pub use schedule::{NoiseSchedule, set_timesteps, step_pairs};
pub use scheduler::{
    BetaSchedule, PredictionType, SchedulerConfig, StepCoefficients, StepOutput, UnclipScheduler,
    VarianceType,
};
pub use slerp::{normalize, slerp, text_diff_direction};
