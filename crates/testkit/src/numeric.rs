//! Numeric comparisons of float tensors.

use ndarray::ArrayD;

/// The largest absolute difference of two tensors; their shapes must match.
pub fn max_abs_diff(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Asserts that `got` is within `tolerance` of `want` everywhere (and of the same shape); the
/// message names `what` and the largest difference.
pub fn assert_close(got: &ArrayD<f32>, want: &ArrayD<f32>, tolerance: f32, what: &str) {
    let diff = max_abs_diff(got, want);
    assert!(diff <= tolerance, "{what}: max |diff| {diff} > {tolerance}");
}
