//! Conversions between 8-bit RGB images and the models' [−1, 1] float range.
//!
//! * In: `x = v/255·2 − 1` (diffusers' image processor), so 0 ↦ −1 and 255 ↦ 1.
//! * Out: `round(clamp(x·0.5 + 0.5, 0, 1)·255)` with half-to-even rounding, in float32 — what
//!   the unCLIP pipeline (`image * 0.5 + 0.5`, `clamp(0, 1)`) and `numpy_to_pil`
//!   (`(images * 255).round()`) do.
//!
//! The two are inverse on all 256 byte values. Layout helpers convert between an image's
//! `[H, W, C]` bytes and the models' `[1, C, H, W]` floats.

use ndarray::{Array3, Array4, ArrayD, ArrayView3, ArrayView4, ArrayViewD, Axis};

use crate::error::{Result, SamplerError};

/// One byte to the model range [−1, 1].
pub fn byte_to_signed(v: u8) -> f32 {
    f32::from(v) / 255.0 * 2.0 - 1.0
}

/// One model-range value to a byte: `round(clamp(x·0.5 + 0.5, 0, 1)·255)`, ties to even.
/// NaN maps to 0.
pub fn signed_to_byte(x: f32) -> u8 {
    let unit = (x * 0.5 + 0.5).clamp(0.0, 1.0);
    // `as u8` saturates and maps NaN to 0.
    (unit * 255.0).round_ties_even() as u8
}

/// Elementwise [`byte_to_signed`] over any shape.
pub fn bytes_to_signed(x: &ArrayViewD<'_, u8>) -> ArrayD<f32> {
    x.mapv(byte_to_signed)
}

/// Elementwise [`signed_to_byte`] over any shape.
pub fn signed_to_bytes(x: &ArrayViewD<'_, f32>) -> ArrayD<u8> {
    x.mapv(signed_to_byte)
}

/// An `[H, W, C]` byte image to a `[1, C, H, W]` model-range batch of one.
pub fn hwc_bytes_to_nchw(image: &ArrayView3<'_, u8>) -> Array4<f32> {
    image
        .mapv(byte_to_signed)
        .permuted_axes([2, 0, 1])
        .as_standard_layout()
        .into_owned()
        .insert_axis(Axis(0))
}

/// Sample `index` of an `[B, C, H, W]` model-range batch to an `[H, W, C]` byte image.
pub fn nchw_to_hwc_bytes(batch: &ArrayView4<'_, f32>, index: usize) -> Result<Array3<u8>> {
    if index >= batch.shape()[0] {
        return Err(SamplerError::Parameter {
            name: "image index",
            limit: "below the batch size",
            got: format!("{index} (batch {})", batch.shape()[0]),
        });
    }
    Ok(batch
        .index_axis(Axis(0), index)
        .permuted_axes([1, 2, 0])
        .mapv(signed_to_byte))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array;

    #[test]
    fn endpoints_and_roundtrip_of_every_byte() {
        assert_eq!(byte_to_signed(0), -1.0);
        assert_eq!(byte_to_signed(255), 1.0);
        for v in 0..=255u8 {
            assert_eq!(signed_to_byte(byte_to_signed(v)), v);
        }
    }

    #[test]
    fn output_clamps_and_rounds_half_to_even() {
        assert_eq!(signed_to_byte(-3.0), 0);
        assert_eq!(signed_to_byte(1.5), 255);
        assert_eq!(signed_to_byte(f32::NAN), 0);
        assert_eq!(signed_to_byte(0.0), 128); // 127.5 rounds to even
        // Exact halves k + 0.5 round to the even neighbour (numpy), not away from zero.
        let mut seen = 0;
        for k in 0..255u32 {
            let unit = (2 * k + 1) as f32 / 510.0;
            let x = unit * 2.0 - 1.0;
            if (x * 0.5 + 0.5).clamp(0.0, 1.0) * 255.0 == k as f32 + 0.5 {
                let even = if k % 2 == 0 { k } else { k + 1 };
                assert_eq!(u32::from(signed_to_byte(x)), even, "k = {k}");
                seen += 1;
            }
        }
        assert!(seen > 10, "only {seen} exact halves");
    }

    #[test]
    fn layout_roundtrip() {
        let img = Array::from_shape_fn((2, 3, 3), |(h, w, c)| (h * 100 + w * 10 + c) as u8);
        let x = hwc_bytes_to_nchw(&img.view());
        assert_eq!(x.shape(), &[1, 3, 2, 3]);
        assert_eq!(x[[0, 2, 1, 0]], byte_to_signed(102));
        assert_eq!(nchw_to_hwc_bytes(&x.view(), 0).unwrap(), img);
        assert!(nchw_to_hwc_bytes(&x.view(), 1).is_err());
        let d = bytes_to_signed(&img.view().into_dyn());
        assert_eq!(signed_to_bytes(&d.view()), img.into_dyn());
    }
}
