//! PIL-style bicubic resampling of NCHW float images (the 64 → 256 upsampler input).
//!
//! diffusers upsamples the decoder's output with `F.interpolate(mode="bicubic",
//! align_corners=False, antialias=True)`, which is exactly PIL's `BICUBIC` filter:
//!
//! * Keys' cubic kernel with **a = −0.5** (not the a = −0.75 of OpenCV or torch's plain bicubic);
//! * half-pixel centres: output pixel o samples the input at (o + 0.5)·in/out;
//! * when downsampling by s = in/out > 1 the kernel is stretched by s (support 2s), which is the
//!   antialiasing; when upsampling the support stays 2 taps each side;
//! * taps that fall outside the image are dropped and the remaining weights renormalised to sum 1
//!   (ONNX `exclude_outside=1`), instead of clamping or reflecting the border.
//!
//! The resize is separable: per-axis weights are precomputed once ([`BicubicResizer`]), then
//! applied along the width and then the height, as torch does. Output values can overshoot the
//! input range (ringing); they are not clamped.

use ndarray::{ArrayD, ArrayViewD, IxDyn};

use crate::error::{Result, SamplerError};

/// Keys' cubic convolution parameter used by PIL and antialiased torch bicubic.
const CUBIC_A: f64 = -0.5;

/// The cubic kernel; its support is [−2, 2].
fn cubic(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        ((CUBIC_A + 2.0) * x - (CUBIC_A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * CUBIC_A
    } else {
        0.0
    }
}

/// Precomputed taps of one axis: output i reads inputs `start[i] .. start[i] + count[i]`.
#[derive(Debug, Clone, PartialEq)]
struct AxisWeights {
    /// First input index per output index.
    start: Vec<usize>,
    /// Number of in-range taps per output index.
    count: Vec<usize>,
    /// Row-major `[out_len, taps]`, renormalised to sum 1 per output index.
    weights: Vec<f32>,
    /// Stride of `weights` (the largest tap count).
    taps: usize,
}

impl AxisWeights {
    /// PIL's `precompute_coeffs` for the bicubic filter (float64, as PIL computes it).
    fn bicubic(in_len: usize, out_len: usize) -> Self {
        let scale = in_len as f64 / out_len as f64;
        let filter_scale = scale.max(1.0);
        let support = 2.0 * filter_scale;
        let taps = (support.ceil() as usize) * 2 + 1;
        let mut start = Vec::with_capacity(out_len);
        let mut count = Vec::with_capacity(out_len);
        let mut weights = vec![0.0f32; out_len * taps];
        for o in 0..out_len {
            let center = (o as f64 + 0.5) * scale;
            // `as i64` truncates toward zero like PIL's (int) cast; then clamp to the image.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(in_len as i64) as usize;
            let n = hi.saturating_sub(lo).min(taps);
            let w: Vec<f64> = (0..n)
                .map(|j| cubic(((lo + j) as f64 - center + 0.5) / filter_scale))
                .collect();
            let total: f64 = w.iter().sum();
            for (j, wj) in w.iter().enumerate() {
                let wj = if total != 0.0 { wj / total } else { *wj };
                weights[o * taps + j] = wj as f32;
            }
            start.push(lo);
            count.push(n);
        }
        Self {
            start,
            count,
            weights,
            taps,
        }
    }

    /// The taps of output index `o` as (first input index, weights).
    fn taps_of(&self, o: usize) -> (usize, &[f32]) {
        let w = &self.weights[o * self.taps..o * self.taps + self.count[o]];
        (self.start[o], w)
    }
}

/// A bicubic resize from one (height, width) to another, with the weights precomputed.
#[derive(Debug, Clone, PartialEq)]
pub struct BicubicResizer {
    /// Input (height, width).
    in_size: (usize, usize),
    /// Output (height, width).
    out_size: (usize, usize),
    /// Taps along the height.
    rows: AxisWeights,
    /// Taps along the width.
    cols: AxisWeights,
}

impl BicubicResizer {
    /// Prepares a resize from `in_size` to `out_size`, both (height, width) and non-zero.
    pub fn new(in_size: (usize, usize), out_size: (usize, usize)) -> Result<Self> {
        for (name, v) in [
            ("input height", in_size.0),
            ("input width", in_size.1),
            ("output height", out_size.0),
            ("output width", out_size.1),
        ] {
            if v == 0 {
                return Err(SamplerError::Parameter {
                    name,
                    limit: "at least 1",
                    got: "0".into(),
                });
            }
        }
        Ok(Self {
            in_size,
            out_size,
            rows: AxisWeights::bicubic(in_size.0, out_size.0),
            cols: AxisWeights::bicubic(in_size.1, out_size.1),
        })
    }

    /// The input (height, width) this resizer accepts.
    pub fn in_size(&self) -> (usize, usize) {
        self.in_size
    }

    /// The output (height, width) it produces.
    pub fn out_size(&self) -> (usize, usize) {
        self.out_size
    }

    /// Resizes the last two axes of `x` (e.g. `[B, C, H, W]`); leading axes are kept.
    pub fn resize(&self, x: &ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        let nd = x.ndim();
        let (ih, iw) = self.in_size;
        let (oh, ow) = self.out_size;
        if nd < 2 || x.shape()[nd - 2..] != [ih, iw] {
            return Err(SamplerError::Shape {
                what: "image",
                expected: format!("[..., {ih}, {iw}]"),
                got: x.shape().to_vec(),
            });
        }
        let input = x.as_standard_layout();
        let src = input.as_slice().expect("standard layout is contiguous");
        let planes = src.len() / (ih * iw).max(1);
        let mut out_shape = x.shape().to_vec();
        out_shape[nd - 2] = oh;
        out_shape[nd - 1] = ow;
        let mut out = vec![0.0f32; planes * oh * ow];
        let mut tmp = vec![0.0f32; ih * ow];
        for (plane_in, plane_out) in src.chunks_exact(ih * iw).zip(out.chunks_exact_mut(oh * ow)) {
            // Horizontal pass: [ih, iw] → [ih, ow].
            for (row_in, row_tmp) in plane_in.chunks_exact(iw).zip(tmp.chunks_exact_mut(ow)) {
                for (o, t) in row_tmp.iter_mut().enumerate() {
                    let (lo, w) = self.cols.taps_of(o);
                    *t = w.iter().zip(&row_in[lo..]).map(|(w, v)| w * v).sum();
                }
            }
            // Vertical pass: [ih, ow] → [oh, ow], a weighted sum of whole rows.
            for (o, row_out) in plane_out.chunks_exact_mut(ow).enumerate() {
                let (lo, w) = self.rows.taps_of(o);
                for (j, &wj) in w.iter().enumerate() {
                    let row_in = &tmp[(lo + j) * ow..(lo + j + 1) * ow];
                    for (r, &v) in row_out.iter_mut().zip(row_in) {
                        *r += wj * v;
                    }
                }
            }
        }
        Ok(ArrayD::from_shape_vec(IxDyn(&out_shape), out).expect("shape matches buffer"))
    }
}

/// One-off bicubic resize of the last two axes of `x` to `(out_height, out_width)`.
pub fn resize_bicubic(
    x: &ArrayViewD<'_, f32>,
    out_height: usize,
    out_width: usize,
) -> Result<ArrayD<f32>> {
    let nd = x.ndim();
    if nd < 2 {
        return Err(SamplerError::Shape {
            what: "image",
            expected: "[..., height, width]".into(),
            got: x.shape().to_vec(),
        });
    }
    let in_size = (x.shape()[nd - 2], x.shape()[nd - 1]);
    BicubicResizer::new(in_size, (out_height, out_width))?.resize(x)
}

/// The weights (for tests): output index → (start, weights).
#[cfg(test)]
fn axis_taps(in_len: usize, out_len: usize) -> Vec<(usize, Vec<f32>)> {
    let a = AxisWeights::bicubic(in_len, out_len);
    (0..out_len)
        .map(|o| {
            let (s, w) = a.taps_of(o);
            (s, w.to_vec())
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::excessive_precision)] // reference values are pasted as printed
mod tests {
    use super::*;
    use crate::test_util::assert_close;
    use ndarray::Array;

    /// (i*7 % 13)/13 over a `[1, 1, h, w]` image, as in `reference/gen_reference.py`.
    fn pattern(h: usize, w: usize) -> ArrayD<f32> {
        let v = (0..h * w).map(|i| ((i * 7) % 13) as f32 / 13.0).collect();
        Array::from_shape_vec(IxDyn(&[1, 1, h, w]), v).unwrap()
    }

    /// torch 2.15 `F.interpolate(bicubic, align_corners=False, antialias=True)`, 4×5 → 8×10.
    #[test]
    fn upsampling_matches_torch() {
        let y = resize_bicubic(&pattern(4, 5).view(), 8, 10).unwrap();
        assert_eq!(y.shape(), &[1, 1, 8, 10]);
        #[rustfmt::skip]
        let expected = [
            -0.11638276, 0.06988803, 0.46464717, 0.48331448, 0.09813349, 0.11736424, 0.54100680, 0.56388378, 0.21082011, 0.04425072,
            0.10929087, 0.20561321, 0.40973213, 0.42895937, 0.24894285, 0.27467453, 0.50615442, 0.52752340, 0.35118055, 0.26799220,
            0.58744085, 0.49312294, 0.29319164, 0.31359643, 0.56839496, 0.60802174, 0.43247676, 0.45064166, 0.64859784, 0.74201232,
            0.71470231, 0.61442840, 0.40187353, 0.42926961, 0.71156186, 0.66353196, 0.28517976, 0.30913737, 0.70740193, 0.89532661,
            0.45745546, 0.54931396, 0.74397200, 0.78409046, 0.65598238, 0.41776690, 0.06944393, 0.10841621, 0.50668079, 0.69460553,
            0.24178787, 0.42220038, 0.80454338, 0.84313989, 0.51110631, 0.27878651, 0.14618047, 0.18581489, 0.38377106, 0.47718558,
            0.07913598, 0.24551120, 0.59810299, 0.62196892, 0.29231736, 0.24870597, 0.49113476, 0.51797819, 0.34163538, 0.25844699,
            0.00226244, 0.16207020, 0.50074267, 0.51765770, 0.18900241, 0.23442802, 0.65393454, 0.67474353, 0.32167983, 0.15511045,
        ];
        assert_close(y.as_slice().unwrap(), &expected, 1e-5, 0.0);
    }

    /// Antialiased downsampling, 8×8 → 3×3.
    #[test]
    fn downsampling_matches_torch() {
        let y = resize_bicubic(&pattern(8, 8).view(), 3, 3).unwrap();
        #[rustfmt::skip]
        let expected = [
            0.43942258, 0.46509704, 0.41620293,
            0.47058877, 0.46153846, 0.45248809,
            0.50687402, 0.45797992, 0.48365438,
        ];
        assert_close(y.as_slice().unwrap(), &expected, 1e-5, 0.0);
    }

    /// Down along the height, up along the width: 5×7 → 3×11.
    #[test]
    fn mixed_resize_matches_torch() {
        let y = resize_bicubic(&pattern(5, 7).view(), 3, 11).unwrap();
        #[rustfmt::skip]
        let expected = [
            0.32723740, 0.37286606, 0.42827794, 0.40999204, 0.44081903, 0.50295860, 0.48750460, 0.52779806, 0.62205940, 0.32924563, 0.08372788,
            0.59602249, 0.43615615, 0.29735908, 0.58223861, 0.56803530, 0.36314851, 0.63513678, 0.62402284, 0.21177641, 0.37952435, 0.58568871,
            0.11855593, 0.42090872, 0.71894509, 0.32191581, 0.40899882, 0.80473369, 0.49079990, 0.30535218, 0.42720377, 0.43300197, 0.41903663,
        ];
        assert_close(y.as_slice().unwrap(), &expected, 1e-5, 0.0);
    }

    #[test]
    fn constant_image_stays_constant() {
        let x = ArrayD::from_elem(IxDyn(&[2, 3, 5, 6]), 0.37f32);
        for (oh, ow) in [(20, 24), (2, 3), (5, 6), (7, 1)] {
            let y = resize_bicubic(&x.view(), oh, ow).unwrap();
            assert_eq!(y.shape(), &[2, 3, oh, ow]);
            assert!(y.iter().all(|&v| (v - 0.37).abs() < 1e-6));
        }
    }

    #[test]
    fn linear_ramp_is_exact_in_the_interior() {
        // A cubic with a = −0.5 reproduces linear functions where all four taps are in range.
        let w = 16;
        let x = Array::from_shape_fn(IxDyn(&[1, 1, 1, w]), |i| i[3] as f32);
        let y = resize_bicubic(&x.view(), 1, 2 * w).unwrap();
        for o in 4..2 * w - 4 {
            let centre = (o as f32 + 0.5) / 2.0 - 0.5;
            assert!((y[[0, 0, 0, o]] - centre).abs() < 1e-5, "o={o}");
        }
    }

    #[test]
    fn same_size_is_identity_and_weights_sum_to_one() {
        let x = pattern(4, 5);
        assert_eq!(resize_bicubic(&x.view(), 4, 5).unwrap(), x);
        for (i, o) in [(64, 256), (256, 64), (5, 3), (1, 4)] {
            for (_, w) in axis_taps(i, o) {
                assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn leading_axes_are_independent_and_strides_are_ok() {
        let a = pattern(4, 5);
        let b = a.mapv(|v| 1.0 - v);
        let both = ndarray::concatenate(ndarray::Axis(1), &[a.view(), b.view()]).unwrap();
        let y = resize_bicubic(&both.view(), 6, 3).unwrap();
        let ya = resize_bicubic(&a.view(), 6, 3).unwrap();
        assert_eq!(y.slice(ndarray::s![.., 0..1, .., ..]).into_dyn(), ya);
        // A transposed (non-contiguous) view gives the same result as its contiguous copy.
        let t = both.view().permuted_axes(IxDyn(&[0, 1, 3, 2]));
        let yt = resize_bicubic(&t, 6, 3).unwrap();
        let yc = resize_bicubic(&t.as_standard_layout().view(), 6, 3).unwrap();
        assert_eq!(yt, yc);
    }

    #[test]
    fn rejects_bad_sizes() {
        let x = pattern(4, 5);
        assert!(resize_bicubic(&x.view(), 0, 5).is_err());
        let r = BicubicResizer::new((4, 5), (8, 10)).unwrap();
        assert_eq!((r.in_size(), r.out_size()), ((4, 5), (8, 10)));
        assert!(r.resize(&pattern(5, 4).view()).is_err());
        let v = ArrayD::<f32>::zeros(IxDyn(&[3]));
        assert!(resize_bicubic(&v.view(), 2, 2).is_err());
    }
}
