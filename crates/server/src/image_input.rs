//! Encoded images arriving in requests: PNG/JPEG/WebP bytes to 8-bit RGB, within size limits,
//! with errors worded to follow the field name in an INVALID_ARGUMENT message. The header is read
//! before anything is decoded, so a decompression bomb (a small file declaring a huge image) is
//! refused at the cost of reading a few bytes, and decoding runs under a memory limit.

use std::io::Cursor;

use image::error::LimitErrorKind;
use image::{DynamicImage, ImageFormat, ImageReader, Limits, RgbImage};

/// Limits on incoming encoded images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest encoded size in bytes.
    pub max_bytes: usize,
    /// Largest width or height in pixels.
    pub max_side: u32,
}

/// Why an image was refused (reported as INVALID_ARGUMENT on its field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// More bytes than allowed.
    #[error("is {got} bytes, the limit is {limit}")]
    TooManyBytes {
        /// The image's length.
        got: usize,
        /// The limit.
        limit: usize,
    },
    /// Not a format we decode.
    #[error("is not a PNG, JPEG or WebP image")]
    UnknownFormat,
    /// Its header declares a side larger than allowed (refused before any pixel is decoded).
    #[error("declares {width}x{height} pixels, the limit is {limit} on a side")]
    TooLarge {
        /// The declared width.
        width: u32,
        /// The declared height.
        height: u32,
        /// The limit.
        limit: u32,
    },
    /// Its header declares no pixels.
    #[error("declares {width}x{height} pixels, an image needs at least 1x1")]
    Empty {
        /// The declared width.
        width: u32,
        /// The declared height.
        height: u32,
    },
    /// Within the side limit, but decoding it would take more memory than an 8-bit RGBA image
    /// at the limit (e.g. 16-bit samples at the largest side).
    #[error("would take more than {limit} bytes to decode")]
    TooMuchMemory {
        /// The memory limit in bytes.
        limit: u64,
    },
    /// Recognised but undecodable.
    #[error("could not be decoded as {format}: {message}")]
    Corrupt {
        /// The sniffed format.
        format: String,
        /// The decoder's complaint.
        message: String,
    },
    /// Decoded, but not the size the call needs.
    #[error("must be {expected}x{expected} pixels ({what}), got {width}x{height}")]
    Size {
        /// The required side.
        expected: usize,
        /// Where the requirement comes from, e.g. `upsamplers[0].input_size`.
        what: String,
        /// The image's width.
        width: u32,
        /// The image's height.
        height: u32,
    },
}

impl ImageLimits {
    /// The most memory a decoder may allocate: an 8-bit RGBA image of `max_side` squared (at
    /// least 1 MiB, for the decoders' own tables).
    pub fn max_alloc(&self) -> u64 {
        let side = u64::from(self.max_side);
        (side * side * 4).max(1 << 20)
    }
}

/// Decodes PNG/JPEG/WebP bytes to 8-bit RGB within `limits`.
pub fn decode_rgb(bytes: &[u8], limits: ImageLimits) -> Result<RgbImage, ImageError> {
    decode(bytes, limits).map(|image| image.to_rgb8())
}

/// The format and declared width and height of PNG/JPEG/WebP bytes, read from the header only
/// (no pixel is decoded), checked against `limits`: too many bytes, an unknown format, a side
/// of 0 or a side over the limit are refused here.
pub fn dimensions(
    bytes: &[u8],
    limits: ImageLimits,
) -> Result<(ImageFormat, u32, u32), ImageError> {
    if bytes.len() > limits.max_bytes {
        return Err(ImageError::TooManyBytes {
            got: bytes.len(),
            limit: limits.max_bytes,
        });
    }
    let format = sniff(bytes)?;
    let (width, height) = reader(bytes, format)
        .into_dimensions()
        .map_err(|e| corrupt(format, &e))?;
    if width > limits.max_side || height > limits.max_side {
        return Err(ImageError::TooLarge {
            width,
            height,
            limit: limits.max_side,
        });
    }
    if width == 0 || height == 0 {
        return Err(ImageError::Empty { width, height });
    }
    Ok((format, width, height))
}

/// Decodes PNG/JPEG/WebP bytes within `limits`, keeping their channels (alpha included). The
/// header is read first ([`dimensions`]), so a huge declared size is refused before anything
/// is allocated; the decoder then runs with the side limit and [`ImageLimits::max_alloc`], so
/// compressed data that inflates past what the header declares cannot take more memory either.
pub fn decode(bytes: &[u8], limits: ImageLimits) -> Result<DynamicImage, ImageError> {
    let (format, width, height) = dimensions(bytes, limits)?;
    let mut decode_limits = Limits::default();
    decode_limits.max_image_width = Some(limits.max_side);
    decode_limits.max_image_height = Some(limits.max_side);
    decode_limits.max_alloc = Some(limits.max_alloc());
    let mut reader = reader(bytes, format);
    reader.limits(decode_limits);
    match reader.decode() {
        Ok(image) => Ok(image),
        Err(image::ImageError::Limits(e)) => match e.kind() {
            LimitErrorKind::DimensionError => Err(ImageError::TooLarge {
                width,
                height,
                limit: limits.max_side,
            }),
            _ => Err(ImageError::TooMuchMemory {
                limit: limits.max_alloc(),
            }),
        },
        Err(e) => Err(corrupt(format, &e)),
    }
}

/// The format of `bytes` from their first bytes; only PNG, JPEG and WebP are accepted.
fn sniff(bytes: &[u8]) -> Result<ImageFormat, ImageError> {
    match image::guess_format(bytes) {
        Ok(f @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP)) => Ok(f),
        _ => Err(ImageError::UnknownFormat),
    }
}

/// A reader of `bytes` as `format`.
fn reader(bytes: &[u8], format: ImageFormat) -> ImageReader<Cursor<&[u8]>> {
    ImageReader::with_format(Cursor::new(bytes), format)
}

/// The decoder's complaint about `format` bytes.
fn corrupt(format: ImageFormat, e: &image::ImageError) -> ImageError {
    ImageError::Corrupt {
        format: format!("{format:?}").to_uppercase(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use unclip_testkit::hostile;

    const LIMITS: ImageLimits = ImageLimits {
        max_bytes: 16 << 20,
        max_side: 512,
    };

    /// Headers that declare more than the side limit are refused from the header, in every
    /// format, with the declared size in the message.
    #[test]
    fn huge_declared_sides_are_refused_from_the_header() {
        let png = hostile::png_bomb(60000, 60000, 1000);
        let e = decode(&png, LIMITS).unwrap_err();
        assert_eq!(
            e.to_string(),
            "declares 60000x60000 pixels, the limit is 512 on a side"
        );
        for bytes in [
            hostile::jpeg_declaring(60000, 50000),
            hostile::webp_declaring(16000, 9000),
            hostile::png_bomb(1, 513, 600),
        ] {
            let e = decode(&bytes, LIMITS).unwrap_err();
            assert!(matches!(e, ImageError::TooLarge { .. }), "{e:?}");
        }
        assert!(matches!(
            dimensions(&hostile::png_zeros(513), LIMITS),
            Err(ImageError::TooLarge { .. })
        ));
    }

    /// A zlib stream that inflates to a gigabyte behind a 64 x 64 header yields the image (the
    /// decoder reads what the header declares and no more) or a refusal, never a gigabyte.
    #[test]
    fn zlib_bombs_stop_at_the_declared_size() {
        let bomb = hostile::png_bomb(64, 64, 1 << 30);
        match decode(&bomb, LIMITS) {
            Ok(image) => assert_eq!((image.width(), image.height()), (64, 64)),
            Err(e) => assert!(matches!(e, ImageError::Corrupt { .. }), "{e:?}"),
        }
        // A compressed text chunk is kept as it came and never inflated; here its compressed
        // bytes alone are past the memory limit of 1 MiB.
        let text = hostile::png_text_bomb(1 << 30);
        match decode(&text, LIMITS) {
            Ok(image) => assert_eq!((image.width(), image.height()), (8, 8)),
            Err(e) => assert!(matches!(e, ImageError::TooMuchMemory { .. }), "{e:?}"),
        }
        // A valid image at the side limit, a thousandfold compressed, decodes.
        let zeros = decode(&hostile::png_zeros(512), LIMITS).unwrap();
        assert_eq!(zeros.width(), 512);
    }

    /// Truncated files and empty images are refused as what they are.
    #[test]
    fn truncated_and_empty_images() {
        for format in [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::WebP] {
            let full = hostile::encode(format).len();
            for keep in [full / 2, 30] {
                let e = decode(&hostile::truncated(format, keep), LIMITS).unwrap_err();
                assert!(
                    matches!(e, ImageError::Corrupt { .. }),
                    "{format:?} cut to {keep}: {e:?}"
                );
            }
        }
        let e = decode(&hostile::png_bomb(0, 0, 0), LIMITS).unwrap_err();
        assert!(
            matches!(e, ImageError::Empty { .. } | ImageError::Corrupt { .. }),
            "{e:?}"
        );
        assert_eq!(decode(b"", LIMITS).unwrap_err(), ImageError::UnknownFormat);
        assert_eq!(
            decode(b"GIF89a", LIMITS).unwrap_err(),
            ImageError::UnknownFormat
        );
    }
}
