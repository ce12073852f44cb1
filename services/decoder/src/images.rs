//! Images on the wire: decoding PNG/JPEG/WebP requests into model-range tensors, and encoding
//! results as 8-bit PNGs.
//!
//! In: bytes → 8-bit RGB (alpha dropped) → `x = v/255·2 − 1`, `[3, S, S]`. Out:
//! `round(clamp(x·0.5 + 0.5, 0, 1)·255)` (ties to even), what the unCLIP pipeline's `numpy_to_pil`
//! does. The two are inverse on every byte value, so a PNG round trip of an 8-bit image is exact.

use bytes::Bytes;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder};
use ndarray::{Array3, Array4, ArrayView3, ArrayView4, Axis};
use unclip_model_server::ServiceError;
use unclip_sampler::pixels::{hwc_bytes_to_nchw, nchw_to_hwc_bytes};

pub use unclip_model_server::image_input::{ImageError, ImageLimits, decode_rgb, dimensions};

/// Decodes one image (field `field`) that must be `side`² pixels into `[3, side, side]` model
/// range. `what` names where `side` comes from. The size is checked from the header first, so
/// an image of the wrong size is refused before any of it is decoded.
pub fn decode_image(
    field: &str,
    bytes: &[u8],
    side: usize,
    what: &str,
    limits: ImageLimits,
) -> Result<Array3<f32>, ServiceError> {
    let check_size = |width: u32, height: u32| {
        if width as usize == side && height as usize == side {
            return Ok(());
        }
        Err(ServiceError::invalid(
            field,
            ImageError::Size {
                expected: side,
                what: what.to_string(),
                width,
                height,
            },
        ))
    };
    let (_, width, height) =
        dimensions(bytes, limits).map_err(|e| ServiceError::invalid(field, e))?;
    check_size(width, height)?;
    let rgb = decode_rgb(bytes, limits).map_err(|e| ServiceError::invalid(field, e))?;
    check_size(rgb.width(), rgb.height())?;
    let hwc = ArrayView3::from_shape((side, side, 3), rgb.as_raw())
        .expect("an RGB image is height x width x 3 bytes");
    Ok(hwc_bytes_to_nchw(&hwc).index_axis_move(Axis(0), 0))
}

/// Decodes `images` (reported as `field[i]`), each `side`² pixels, into a `[N, 3, side, side]`
/// model-range batch.
pub fn decode_batch(
    field: &str,
    images: &[Bytes],
    side: usize,
    what: &str,
    limits: ImageLimits,
) -> Result<Array4<f32>, ServiceError> {
    let mut batch = Array4::<f32>::zeros((images.len(), 3, side, side));
    for (i, bytes) in images.iter().enumerate() {
        let image = decode_image(&format!("{field}[{i}]"), bytes, side, what, limits)?;
        batch.index_axis_mut(Axis(0), i).assign(&image);
    }
    Ok(batch)
}

/// Encodes each image of a `[N, 3, H, W]` model-range batch as an RGB PNG.
pub fn encode_pngs(batch: &ArrayView4<'_, f32>) -> Result<Vec<Bytes>, ServiceError> {
    let (n, _, h, w) = batch.dim();
    (0..n)
        .map(|k| {
            let hwc = nchw_to_hwc_bytes(batch, k)
                .map_err(|e| ServiceError::Internal(format!("image {k}: {e}")))?;
            let raw: Vec<u8> = hwc.iter().copied().collect();
            let mut png = Vec::new();
            // Fast compression: these images are small or transient, and encoding runs per call.
            PngEncoder::new_with_quality(&mut png, CompressionType::Fast, FilterType::Adaptive)
                .write_image(&raw, w as u32, h as u32, ExtendedColorType::Rgb8)
                .map_err(|e| ServiceError::Internal(format!("encoding image {k} as PNG: {e}")))?;
            Ok(Bytes::from(png))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array;
    use unclip_sampler::pixels::byte_to_signed;

    const LIMITS: ImageLimits = ImageLimits {
        max_bytes: 1 << 20,
        max_side: 64,
    };

    /// Every byte value survives PNG encode → decode exactly, in the right layout.
    #[test]
    fn png_roundtrip_is_exact() {
        let x = Array::from_shape_fn((2, 3, 4, 5), |(n, c, h, w)| {
            byte_to_signed(((n * 61 + c * 17 + h * 5 + w * 41) % 256) as u8)
        });
        let pngs = encode_pngs(&x.view()).unwrap();
        assert_eq!(pngs.len(), 2);
        let rgb = decode_rgb(&pngs[1], LIMITS).unwrap();
        assert_eq!((rgb.width(), rgb.height()), (5, 4));
        let square = Array::from_shape_fn((1, 3, 4, 4), |(_, c, h, w)| {
            byte_to_signed((c * 80 + h * 9 + w) as u8)
        });
        let back = decode_batch(
            "images",
            &encode_pngs(&square.view()).unwrap(),
            4,
            "test",
            LIMITS,
        )
        .unwrap();
        assert_eq!(back, square);
    }

    /// Refusals name the image and the limit.
    #[test]
    fn refusals() {
        let e = decode_batch("images", &[Bytes::from_static(b"nope")], 4, "t", LIMITS).unwrap_err();
        assert_eq!(e.to_string(), "images[0]: is not a PNG, JPEG or WebP image");
        let x = Array4::<f32>::zeros((1, 3, 8, 4));
        let png = encode_pngs(&x.view()).unwrap();
        let e = decode_batch("images", &png, 4, "decoder_image_size", LIMITS).unwrap_err();
        assert_eq!(
            e.to_string(),
            "images[0]: must be 4x4 pixels (decoder_image_size), got 4x8"
        );
        let small = ImageLimits {
            max_bytes: 10,
            ..LIMITS
        };
        assert!(matches!(
            decode_rgb(&png[0], small),
            Err(ImageError::TooManyBytes { .. })
        ));
        let mut truncated = png[0].to_vec();
        truncated.truncate(40);
        assert!(matches!(
            decode_rgb(&truncated, LIMITS),
            Err(ImageError::Corrupt { .. })
        ));
    }
}
