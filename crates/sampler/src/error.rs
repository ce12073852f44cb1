//! The one error type of this crate.
//!
//! Every public function validates its inputs (shapes, batch lengths, timesteps, parameters) and
//! returns a [`SamplerError`] instead of panicking, so a malformed request can be answered with an
//! error rather than taking a serving thread down. Messages name the offending field and the limit.

use thiserror::Error;

/// Why a sampler function refused its inputs.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SamplerError {
    /// An array does not have the shape the function needs.
    #[error("{what} must have shape {expected}, got {got:?}")]
    Shape {
        /// Which argument is wrong, e.g. `"model_output"`.
        what: &'static str,
        /// The expected shape, in words, e.g. `"[2, 3, 64, 64]"` or `"[batch, channels, ...]"`.
        expected: String,
        /// The shape that was passed.
        got: Vec<usize>,
    },
    /// A per-sample list (timesteps, guidance scales, noise sources) has the wrong length.
    #[error("{what} must have one entry per batch sample ({expected}), got {got}")]
    BatchLength {
        /// Which argument is wrong, e.g. `"timesteps"`.
        what: &'static str,
        /// The batch size.
        expected: usize,
        /// The length that was passed.
        got: usize,
    },
    /// A timestep outside `0..num_train_timesteps`.
    #[error("timestep must be in 0..{num_train_timesteps}, got {timestep}")]
    Timestep {
        /// The timestep that was passed.
        timestep: i64,
        /// The schedule length.
        num_train_timesteps: usize,
    },
    /// A previous (target) timestep that is not below the current one, or below -1.
    #[error("prev_timestep must be in -1..{timestep} for timestep {timestep}, got {prev}")]
    PrevTimestep {
        /// The current timestep.
        timestep: i64,
        /// The previous timestep that was passed.
        prev: i64,
    },
    /// A DDIM inversion target that is not above the source timestep or past the schedule.
    #[error("inversion target must be in {from}+1..{num_train_timesteps}, got {to}")]
    InversionTimestep {
        /// The source timestep (-1 means the clean image).
        from: i64,
        /// The target timestep that was passed.
        to: i64,
        /// The schedule length.
        num_train_timesteps: usize,
    },
    /// A number of inference steps the respacing rule cannot produce.
    #[error("num_inference_steps must be in 2..={num_train_timesteps}, got {steps}")]
    StepCount {
        /// The requested number of steps.
        steps: usize,
        /// The schedule length.
        num_train_timesteps: usize,
    },
    /// A step needs noise (some sample has t > 0, or η > 0) but none was given.
    #[error("noise is required: {reason}")]
    MissingNoise {
        /// Why the noise is needed.
        reason: &'static str,
    },
    /// A vector that must be normalised has zero or non-finite norm.
    #[error("{what} has zero or non-finite norm ({norm})")]
    ZeroNorm {
        /// Which argument, e.g. `"z_target - z_source"`.
        what: &'static str,
        /// The norm that was found.
        norm: f64,
    },
    /// A scalar parameter out of its allowed range.
    #[error("{name} must be {limit}, got {got}")]
    Parameter {
        /// The parameter's name, e.g. `"eta"`.
        name: &'static str,
        /// The allowed range, in words, e.g. `"in 0..=1"`.
        limit: &'static str,
        /// The value that was passed, formatted.
        got: String,
    },
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, SamplerError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_field_and_the_limit() {
        let e = SamplerError::Timestep {
            timestep: 1000,
            num_train_timesteps: 1000,
        };
        assert_eq!(e.to_string(), "timestep must be in 0..1000, got 1000");
        let e = SamplerError::Parameter {
            name: "eta",
            limit: "in 0..=1",
            got: "1.5".into(),
        };
        assert_eq!(e.to_string(), "eta must be in 0..=1, got 1.5");
    }
}
