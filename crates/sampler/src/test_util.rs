//! Helpers shared by the unit tests: a float32 input pattern that the Python reference generator
//! (`reference/gen_reference.py`) rebuilds bit for bit, and closeness assertions.

/// `(((i*a + b) % m) / (m-1) * 2 - 1) * scale` for `i in 0..n`, every operation in f32.
pub(crate) fn pat(n: usize, a: usize, b: usize, m: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * a + b) % m) as f32 / (m - 1) as f32 * 2.0 - 1.0) * scale)
        .collect()
}

/// Asserts `|actual - expected| <= atol + rtol * |expected|` elementwise.
#[track_caller]
pub(crate) fn assert_close(actual: &[f32], expected: &[f32], atol: f32, rtol: f32) {
    assert_eq!(actual.len(), expected.len(), "length differs");
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let tol = atol + rtol * e.abs();
        assert!(
            (a - e).abs() <= tol,
            "element {i}: got {a}, expected {e} (diff {}, tol {tol})",
            (a - e).abs()
        );
    }
}
