//! Shape checks shared by the batched functions (private).
//!
//! Batched arrays put the sample index on axis 0. Per-sample lists (timesteps, scales) must have
//! one entry per sample; these helpers turn a mismatch into a [`SamplerError`].

use crate::error::{Result, SamplerError};

/// Formats a shape as `[a, b, c]` for error messages.
pub(crate) fn shape_str(shape: &[usize]) -> String {
    let parts: Vec<String> = shape.iter().map(usize::to_string).collect();
    format!("[{}]", parts.join(", "))
}

/// Returns the batch size (axis 0) of an array that must have at least `min_ndim` axes.
pub(crate) fn batch_size(what: &'static str, shape: &[usize], min_ndim: usize) -> Result<usize> {
    if shape.len() < min_ndim || shape.is_empty() {
        let expected = if min_ndim >= 2 {
            "[batch, channels, ...]"
        } else {
            "[batch, ...]"
        };
        return Err(SamplerError::Shape {
            what,
            expected: expected.into(),
            got: shape.to_vec(),
        });
    }
    Ok(shape[0])
}

/// Errors unless `shape == expected`.
pub(crate) fn same_shape(what: &'static str, shape: &[usize], expected: &[usize]) -> Result<()> {
    if shape == expected {
        Ok(())
    } else {
        Err(SamplerError::Shape {
            what,
            expected: shape_str(expected),
            got: shape.to_vec(),
        })
    }
}

/// Errors unless a per-sample list has one entry per batch sample.
pub(crate) fn per_sample(what: &'static str, len: usize, batch: usize) -> Result<()> {
    if len == batch {
        Ok(())
    } else {
        Err(SamplerError::BatchLength {
            what,
            expected: batch,
            got: len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks() {
        assert_eq!(shape_str(&[2, 3]), "[2, 3]");
        assert_eq!(batch_size("x", &[4, 3], 2), Ok(4));
        assert!(batch_size("x", &[4], 2).is_err());
        assert!(batch_size("x", &[], 1).is_err());
        assert!(same_shape("x", &[1, 2], &[1, 2]).is_ok());
        assert!(same_shape("x", &[1, 2], &[2, 1]).is_err());
        assert!(per_sample("t", 2, 3).is_err());
    }
}
