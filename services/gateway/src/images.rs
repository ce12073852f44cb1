//! Pixels the gateway handles itself: uploaded images brought to a stage's size, inpainting
//! masks at every resolution of the cascade, and the animated PNG of a text diff.

use std::io::Cursor;

use image::imageops::{self, FilterType};
use image::{DynamicImage, GenericImageView, RgbImage};
use ndarray::Array4;
use unclip_sampler::pixels::byte_to_signed;
use unclip_server::image_input::{self, ImageLimits};

use crate::error::{Error, Result};

/// Runs `work` (decoding, resizing, encoding: CPU work of milliseconds to seconds) on the
/// blocking pool, so the async workers keep answering other requests meanwhile.
pub async fn off_the_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Internal(format!("image work failed: {e}")))?
}

/// [`decode`] on the blocking pool.
pub async fn decode_upload(
    field: &'static str,
    bytes: &bytes::Bytes,
    limits: ImageLimits,
) -> Result<DynamicImage> {
    let bytes = bytes.clone();
    off_the_runtime(move || decode(field, &bytes, limits)).await
}

/// Decodes an uploaded image (`field` names it in errors) within `limits`.
pub fn decode(field: &str, bytes: &[u8], limits: ImageLimits) -> Result<DynamicImage> {
    if bytes.is_empty() {
        return Err(Error::invalid(
            field,
            "is required (PNG, JPEG or WebP bytes)",
        ));
    }
    image_input::decode(bytes, limits).map_err(|e| Error::invalid(field, e))
}

/// The largest centered square of `image`.
pub fn center_square(image: &DynamicImage) -> DynamicImage {
    let (w, h) = image.dimensions();
    let side = w.min(h);
    image.crop_imm((w - side) / 2, (h - side) / 2, side, side)
}

/// `image` center-cropped to a square and resized to `side` (Catmull-Rom bicubic; unchanged when
/// it already is `side` square), as 8-bit RGB.
pub fn square_rgb(image: &DynamicImage, side: u32) -> RgbImage {
    let square = center_square(image);
    if square.dimensions() == (side, side) {
        square.to_rgb8()
    } else {
        imageops::resize(&square.to_rgb8(), side, side, FilterType::CatmullRom)
    }
}

/// An RGB image as a `[1, 3, H, W]` tensor in model range [-1, 1].
pub fn to_model_range(image: &RgbImage) -> Array4<f32> {
    let (w, h) = image.dimensions();
    Array4::from_shape_fn((1, 3, h as usize, w as usize), |(_, c, y, x)| {
        byte_to_signed(image.get_pixel(x as u32, y as u32)[c])
    })
}

/// An inpainting mask at the output size: `true` = keep the pixel, `false` = regenerate it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepMask {
    /// Side in pixels.
    side: u32,
    /// Row-major, `side * side`.
    keep: Vec<bool>,
}

impl KeepMask {
    /// Reads the uploaded mask (`field`), which must have the image's width and height: with an
    /// alpha channel, transparent pixels (alpha < 128) are regenerated; without one, white pixels
    /// (luma >= 128). Cropped and resized (nearest) like the image to `side`.
    pub fn from_upload(
        field: &str,
        mask: &DynamicImage,
        image_dims: (u32, u32),
        side: u32,
    ) -> Result<Self> {
        if mask.dimensions() != image_dims {
            return Err(Error::invalid(
                field,
                format!(
                    "must be {}x{} pixels like the image, got {}x{}",
                    image_dims.0,
                    image_dims.1,
                    mask.width(),
                    mask.height()
                ),
            ));
        }
        let square = center_square(mask);
        let regenerate: Vec<bool> = if mask.color().has_alpha() {
            let rgba = square.to_rgba8();
            let small = imageops::resize(&rgba, side, side, FilterType::Nearest);
            small.pixels().map(|p| p[3] < 128).collect()
        } else {
            let luma = square.to_luma8();
            let small = imageops::resize(&luma, side, side, FilterType::Nearest);
            small.pixels().map(|p| p[0] >= 128).collect()
        };
        if !regenerate.iter().any(|&r| r) {
            return Err(Error::invalid(
                field,
                "marks nothing to regenerate (use white, or transparent pixels with an alpha \
                 channel, for the area to redraw)",
            ));
        }
        Ok(Self {
            side,
            keep: regenerate.into_iter().map(|r| !r).collect(),
        })
    }

    /// The mask at `side` (a divisor of the output size, or anything smaller): a pixel is kept
    /// only when every output pixel it covers is kept, so generated areas never shrink.
    pub fn at(&self, side: u32) -> Self {
        if side == self.side {
            return self.clone();
        }
        let scale = f64::from(self.side) / f64::from(side);
        let mut keep = Vec::with_capacity((side * side) as usize);
        for y in 0..side {
            for x in 0..side {
                let (y0, y1) = span(y, scale, self.side);
                let (x0, x1) = span(x, scale, self.side);
                let all =
                    (y0..y1).all(|yy| (x0..x1).all(|xx| self.keep[(yy * self.side + xx) as usize]));
                keep.push(all);
            }
        }
        Self { side, keep }
    }

    /// Side in pixels.
    pub fn side(&self) -> u32 {
        self.side
    }

    /// Whether pixel (x, y) is kept.
    pub fn keeps(&self, x: u32, y: u32) -> bool {
        self.keep[(y * self.side + x) as usize]
    }

    /// As the decoder's FLOAT32 `[1, 1, S, S]` mask (1 = keep).
    pub fn to_array(&self) -> Array4<f32> {
        let s = self.side as usize;
        Array4::from_shape_fn(
            (1, 1, s, s),
            |(_, _, y, x)| {
                if self.keep[y * s + x] { 1.0 } else { 0.0 }
            },
        )
    }
}

/// The output pixels `[start, end)` covered by pixel `i` at a scale of `scale` output pixels per
/// pixel.
fn span(i: u32, scale: f64, limit: u32) -> (u32, u32) {
    let start = (f64::from(i) * scale).floor() as u32;
    let end = ((f64::from(i + 1) * scale).ceil() as u32).clamp(start + 1, limit);
    (start.min(limit - 1), end)
}

/// The frames (PNG bytes, all one size) as one looping animated PNG, `delay_ms` per frame.
pub fn animated_png(frames: &[bytes::Bytes], delay_ms: u32) -> Result<Vec<u8>> {
    let decoded: Vec<RgbImage> = frames
        .iter()
        .map(|png| {
            image::load_from_memory_with_format(png, image::ImageFormat::Png)
                .map(|i| i.to_rgb8())
                .map_err(|e| Error::Internal(format!("a frame is not a PNG: {e}")))
        })
        .collect::<Result<_>>()?;
    let first = decoded
        .first()
        .ok_or_else(|| Error::Internal("an animation needs frames".into()))?;
    let (w, h) = first.dimensions();
    let png_error = |e: png::EncodingError| Error::Internal(format!("APNG encoding: {e}"));
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(Cursor::new(&mut out), w, h);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder
            .set_animated(decoded.len() as u32, 0)
            .map_err(png_error)?;
        let delay = u16::try_from(delay_ms).unwrap_or(u16::MAX);
        encoder.set_frame_delay(delay, 1000).map_err(png_error)?;
        let mut writer = encoder.write_header().map_err(png_error)?;
        for frame in &decoded {
            if frame.dimensions() != (w, h) {
                return Err(Error::Internal("frames of different sizes".into()));
            }
            writer.write_image_data(frame.as_raw()).map_err(png_error)?;
        }
        writer.finish().map_err(png_error)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma, Rgba, RgbaImage};
    use ndarray::ArrayView4;
    use unclip_sampler::pixels::signed_to_byte;

    /// Row `row` of a `[N, 3, H, W]` model-range batch as 8-bit RGB.
    fn from_model_range(batch: &ArrayView4<'_, f32>, row: usize) -> RgbImage {
        let (h, w) = (batch.shape()[2], batch.shape()[3]);
        RgbImage::from_fn(w as u32, h as u32, |x, y| {
            image::Rgb(std::array::from_fn(|c| {
                signed_to_byte(batch[[row, c, y as usize, x as usize]])
            }))
        })
    }

    /// Encodes 8-bit RGB as PNG.
    fn png(image: &RgbImage) -> Result<bytes::Bytes> {
        let mut out = Cursor::new(Vec::new());
        image
            .write_to(&mut out, image::ImageFormat::Png)
            .map_err(|e| Error::Internal(format!("PNG encoding: {e}")))?;
        Ok(out.into_inner().into())
    }

    fn limits() -> ImageLimits {
        ImageLimits {
            max_bytes: 1 << 20,
            max_side: 1024,
        }
    }

    #[test]
    fn not_an_image_names_the_field() {
        let e = decode("image", b"hello", limits()).unwrap_err();
        assert_eq!(e.to_string(), "image: is not a PNG, JPEG or WebP image");
        let e = decode("mask", b"", limits()).unwrap_err();
        assert!(e.to_string().starts_with("mask: is required"), "{e}");
    }

    #[test]
    fn square_crop_and_resize() {
        let wide = DynamicImage::ImageRgb8(RgbImage::from_fn(40, 20, |x, _| {
            image::Rgb([if (10..30).contains(&x) { 0 } else { 255 }, 0, 0])
        }));
        // The center square is x in 10..30: all black.
        let sq = square_rgb(&wide, 8);
        assert_eq!(sq.dimensions(), (8, 8));
        assert!(sq.pixels().all(|p| p[0] == 0));
        let t = to_model_range(&sq);
        assert_eq!(t.shape(), &[1, 3, 8, 8]);
        assert_eq!(t[[0, 0, 0, 0]], -1.0);
        assert_eq!(from_model_range(&t.view(), 0), sq);
    }

    #[test]
    fn masks_from_luma_and_alpha() {
        // White right half = regenerate.
        let luma = DynamicImage::ImageLuma8(GrayImage::from_fn(8, 8, |x, _| {
            Luma([if x >= 4 { 255 } else { 0 }])
        }));
        let m = KeepMask::from_upload("mask", &luma, (8, 8), 8).unwrap();
        assert!(m.keeps(0, 0) && m.keeps(3, 7) && !m.keeps(4, 0) && !m.keeps(7, 7));
        // Transparent right half = regenerate, whatever the colour.
        let rgba = DynamicImage::ImageRgba8(RgbaImage::from_fn(8, 8, |x, _| {
            Rgba([255, 255, 255, if x >= 4 { 0 } else { 255 }])
        }));
        assert_eq!(KeepMask::from_upload("mask", &rgba, (8, 8), 8).unwrap(), m);
        // Wrong size, and nothing to regenerate, are refused.
        let e = KeepMask::from_upload("mask", &luma, (9, 8), 8).unwrap_err();
        assert_eq!(
            e.to_string(),
            "mask: must be 9x8 pixels like the image, got 8x8"
        );
        let black = DynamicImage::ImageLuma8(GrayImage::new(8, 8));
        assert!(KeepMask::from_upload("mask", &black, (8, 8), 8).is_err());
    }

    #[test]
    fn smaller_masks_keep_only_fully_kept_blocks() {
        // Regenerate only pixel (5, 0) at 8x8.
        let luma = DynamicImage::ImageLuma8(GrayImage::from_fn(8, 8, |x, y| {
            Luma([if (x, y) == (5, 0) { 255 } else { 0 }])
        }));
        let m = KeepMask::from_upload("mask", &luma, (8, 8), 8).unwrap();
        let half = m.at(4);
        assert_eq!(half.side(), 4);
        assert!(!half.keeps(2, 0));
        assert_eq!(half.to_array().iter().filter(|&&v| v == 0.0).count(), 1);
        let quarter = m.at(2);
        assert!(!quarter.keeps(1, 0) && quarter.keeps(0, 0) && quarter.keeps(1, 1));
    }

    #[test]
    fn apng_has_every_frame() {
        let frames: Vec<bytes::Bytes> = (0..3u8)
            .map(|i| png(&RgbImage::from_pixel(4, 4, image::Rgb([i * 80, 0, 0]))).unwrap())
            .collect();
        let apng = animated_png(&frames, 250).unwrap();
        let decoder = png::Decoder::new(Cursor::new(apng));
        let reader = decoder.read_info().unwrap();
        let control = reader.info().animation_control().unwrap();
        assert_eq!(control.num_frames, 3);
        assert_eq!(control.num_plays, 0);
    }
}
