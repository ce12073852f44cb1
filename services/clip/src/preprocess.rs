//! Images to CLIP `pixel_values`: decoding with limits, then the manifest's preprocessing
//! exactly as the reference (transformers' `CLIPImageProcessor`, PIL backend) computes it.
//!
//! 1. Decode PNG/JPEG/WebP (format sniffed from the bytes) and convert to 8-bit RGB (alpha is
//!    dropped, as PIL's `convert("RGB")` does).
//! 2. Resize so the shorter side is S: the longer side becomes ⌊S·long/short⌋. PIL resizes
//!    8-bit images with its **fixed-point** bicubic (Keys a = −0.5, antialiased when shrinking,
//!    22-bit coefficients, a horizontal pass rounded to 8 bits, then a vertical pass). Resizing
//!    in float and rounding once, as `unclip_sampler::resize` does for the upsampler's float
//!    images, is not the same: on the variation fixture's noise image it differs on a fifth of
//!    the values, by up to 12 levels (mostly where PIL clamps its 8-bit intermediate row). So
//!    PIL's integer algorithm is reproduced here step for step (`libImaging/Resample.c`), and
//!    matches the recorded `pixel_values` exactly.
//! 3. Crop S × S from the centre (offsets rounded down).
//! 4. `v = f32(f64(x) · rescale)`, then `(v − mean) / std` in float32, as numpy does there.

use image::RgbImage;
use ndarray::{Array3, ArrayViewMut3};
use unclip_runtime::manifest::ImagePreprocess;

/// PIL's fixed-point precision for 8-bit resampling: 32 − 8 − 2 bits.
const PRECISION_BITS: u32 = 22;

/// Keys' cubic with a = −0.5, PIL's `bicubic_filter`; support [−2, 2].
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// PIL's per-axis taps: for output i, inputs `start[i] .. start[i] + count[i]` with 22-bit
/// fixed-point weights `kk[i * ksize ..]`.
#[derive(Debug)]
struct Taps {
    /// Weights per output index, `ksize` slots each.
    kk: Vec<i32>,
    /// First input index per output index.
    start: Vec<usize>,
    /// In-range taps per output index.
    count: Vec<usize>,
    /// Slots per output index.
    ksize: usize,
}

impl Taps {
    /// `precompute_coeffs` followed by `normalize_coeffs_8bpc`.
    fn new(in_size: usize, out_size: usize) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = 2.0 * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let mut kk = vec![0i32; out_size * ksize];
        let mut start = Vec::with_capacity(out_size);
        let mut count = Vec::with_capacity(out_size);
        let mut weights = vec![0f64; ksize];
        for xx in 0..out_size {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C's (int) cast truncates toward zero, as `as` does; then clamp to the image.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
            let n = xmax.max(0) as usize;
            let mut total = 0.0;
            for (x, w) in weights.iter_mut().enumerate().take(n) {
                *w = bicubic((x as f64 + xmin as f64 - center + 0.5) * ss);
                total += *w;
            }
            for (x, w) in weights.iter().enumerate().take(n) {
                let w = if total != 0.0 { w / total } else { *w };
                let fixed = w * f64::from(1u32 << PRECISION_BITS);
                kk[xx * ksize + x] = if w < 0.0 {
                    (-0.5 + fixed) as i32
                } else {
                    (0.5 + fixed) as i32
                };
            }
            start.push(xmin as usize);
            count.push(n);
        }
        Taps {
            kk,
            start,
            count,
            ksize,
        }
    }

    fn of(&self, i: usize) -> (usize, &[i32]) {
        (
            self.start[i],
            &self.kk[i * self.ksize..i * self.ksize + self.count[i]],
        )
    }
}

/// PIL's `clip8`: a rounded fixed-point sum back to a byte.
fn clip8(sum: i64) -> u8 {
    if sum >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if sum <= 0 {
        0
    } else {
        (sum >> PRECISION_BITS) as u8
    }
}

/// PIL's `Image.resize(size, BICUBIC)` of an 8-bit RGB image, `[H, W, 3]` in and out.
fn resize_rgb8(input: &Array3<u8>, out_h: usize, out_w: usize) -> Array3<u8> {
    let (in_h, in_w, channels) = input.dim();
    if (in_h, in_w) == (out_h, out_w) {
        return input.clone();
    }
    let rounding = 1i64 << (PRECISION_BITS - 1);
    let horizontal = Taps::new(in_w, out_w);
    let vertical = Taps::new(in_h, out_h);

    // Horizontal pass over only the rows the vertical pass reads, as PIL does.
    let (image, row_offset) = if out_w != in_w {
        let first = vertical.start[0];
        let last = vertical.start[out_h - 1] + vertical.count[out_h - 1];
        let mut temp = Array3::<u8>::zeros((last - first, out_w, channels));
        for y in first..last {
            for xx in 0..out_w {
                let (xmin, k) = horizontal.of(xx);
                for c in 0..channels {
                    let mut sum = rounding;
                    for (x, w) in k.iter().enumerate() {
                        sum += i64::from(input[[y, xmin + x, c]]) * i64::from(*w);
                    }
                    temp[[y - first, xx, c]] = clip8(sum);
                }
            }
        }
        (temp, first)
    } else {
        (input.clone(), 0)
    };
    if out_h == in_h {
        return image;
    }
    let mut out = Array3::<u8>::zeros((out_h, out_w, channels));
    for yy in 0..out_h {
        let (ymin, k) = vertical.of(yy);
        let ymin = ymin - row_offset;
        for xx in 0..out_w {
            for c in 0..channels {
                let mut sum = rounding;
                for (y, w) in k.iter().enumerate() {
                    sum += i64::from(image[[ymin + y, xx, c]]) * i64::from(*w);
                }
                out[[yy, xx, c]] = clip8(sum);
            }
        }
    }
    out
}

pub use unclip_model_server::image_input::{ImageLimits, decode_rgb};

/// The manifest's CLIP preprocessing, ready to apply.
#[derive(Debug, Clone)]
pub struct ClipPreprocessor {
    /// Output side S.
    size: usize,
    /// 8-bit value → [0, 1] factor (float64, as numpy multiplies).
    rescale: f64,
    /// Per-channel mean, float32.
    mean: [f32; 3],
    /// Per-channel std, float32.
    std: [f32; 3],
}

impl ClipPreprocessor {
    /// From the manifest's `image_preprocess`.
    pub fn new(spec: &ImagePreprocess) -> Self {
        Self {
            size: spec.size,
            rescale: spec.rescale,
            mean: spec.mean.map(|v| v as f32),
            std: spec.std.map(|v| v as f32),
        }
    }

    /// Output side S.
    pub fn size(&self) -> usize {
        self.size
    }

    /// One image to `[3, S, S]` pixel values, written into `out`.
    pub fn apply(&self, image: &RgbImage, mut out: ArrayViewMut3<'_, f32>) {
        let (w, h) = (image.width() as usize, image.height() as usize);
        let s = self.size;
        // transformers' get_resize_output_image_size: the long side is int(S * long / short).
        let (new_h, new_w) = if w <= h {
            (((s as f64) * h as f64 / w as f64) as usize, s)
        } else {
            (s, ((s as f64) * w as f64 / h as f64) as usize)
        };
        let pixels = Array3::from_shape_vec((h, w, 3), image.as_raw().clone())
            .expect("an RgbImage holds h*w*3 bytes");
        let resized = resize_rgb8(&pixels, new_h, new_w);
        let top = (new_h - s) / 2;
        let left = (new_w - s) / 2;
        for c in 0..3 {
            for y in 0..s {
                for x in 0..s {
                    let v = (f64::from(resized[[top + y, left + x, c]]) * self.rescale) as f32;
                    out[[c, y, x]] = (v - self.mean[c]) / self.std[c];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    use unclip_model_server::image_input::ImageError;

    /// Fixed-point weights of each output sum to 1.0 in 22-bit fixed point (within rounding),
    /// as PIL's do, both when shrinking and when enlarging.
    #[test]
    fn taps_are_normalised() {
        for (i, o) in [(48, 38), (40, 32), (32, 64), (1000, 224)] {
            let t = Taps::new(i, o);
            for k in 0..o {
                let sum: i64 = t.of(k).1.iter().map(|w| i64::from(*w)).sum();
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= 8,
                    "{i}->{o} at {k}: {sum}"
                );
            }
        }
    }

    /// A constant image stays constant through resize and crop.
    #[test]
    fn constant_image() {
        let img = RgbImage::from_pixel(50, 30, image::Rgb([10, 128, 250]));
        let pre = ClipPreprocessor {
            size: 16,
            rescale: 1.0 / 255.0,
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        let mut out = Array3::zeros((3, 16, 16));
        pre.apply(&img, out.view_mut());
        for (c, v) in [10.0f32, 128.0, 250.0].iter().enumerate() {
            let want = (f64::from(*v) / 255.0) as f32;
            assert!(
                out.index_axis(ndarray::Axis(0), c)
                    .iter()
                    .all(|x| *x == want)
            );
        }
    }

    /// The variation fixture's PNG preprocesses to exactly the `pixel_values` that
    /// transformers' CLIPImageProcessor (PIL backend) gave diffusers.
    #[test]
    fn matches_recorded_pixel_values() {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../models/karlo-tiny/fixtures");
        let case: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixtures.join("variation_seed0_steps2-2.json")).unwrap(),
        )
        .unwrap();
        let key = case["values"]["pixel_values"].as_str().unwrap();
        let mut npz = ndarray_npy::NpzReader::new(
            std::fs::File::open(fixtures.join("variation_seed0_steps2-2.npz")).unwrap(),
        )
        .unwrap();
        let want: ndarray::Array4<f32> = npz.by_name(&format!("{key}.npy")).unwrap();

        let bytes = std::fs::read(fixtures.join("variation_input.png")).unwrap();
        let limits = ImageLimits {
            max_bytes: 1 << 20,
            max_side: 4096,
        };
        let rgb = decode_rgb(&bytes, limits).unwrap();
        assert_eq!(rgb.dimensions(), (48, 40));
        let repo = unclip_runtime::ModelRepository::open(fixtures.join("..")).unwrap();
        let pre = ClipPreprocessor::new(repo.manifest().image_preprocess.as_ref().unwrap());
        let mut got = Array3::zeros((3, 32, 32));
        pre.apply(&rgb, got.view_mut());
        let want = want.index_axis(ndarray::Axis(0), 0);
        let max = got
            .iter()
            .zip(want.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert_eq!(max, 0.0, "pixel_values differ by up to {max}");
    }

    /// Bytes that are no image, or too many, are refused with the reason.
    #[test]
    fn decode_errors() {
        let limits = ImageLimits {
            max_bytes: 100,
            max_side: 8,
        };
        assert_eq!(
            decode_rgb(b"hello", limits).unwrap_err(),
            ImageError::UnknownFormat
        );
        assert_eq!(
            decode_rgb(&[0u8; 101], limits).unwrap_err(),
            ImageError::TooManyBytes {
                got: 101,
                limit: 100
            }
        );
        let mut png = Vec::new();
        RgbImage::new(9, 2)
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let limits = ImageLimits {
            max_bytes: 1 << 20,
            max_side: 8,
        };
        assert_eq!(
            decode_rgb(&png, limits).unwrap_err(),
            ImageError::TooLarge {
                width: 9,
                height: 2,
                limit: 8
            }
        );
        let limits = ImageLimits {
            max_bytes: 1 << 20,
            max_side: 64,
        };
        let e = decode_rgb(&png[..png.len() / 2], limits).unwrap_err();
        assert!(
            matches!(e, ImageError::Corrupt { ref format, .. } if format == "PNG"),
            "{e:?}"
        );
    }
}
