//! Encoded images arriving in requests: PNG/JPEG/WebP bytes to 8-bit RGB, within size limits,
//! with errors worded to follow the field name in an INVALID_ARGUMENT message.

use std::io::Cursor;

use image::{DynamicImage, ImageReader, Limits, RgbImage};

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
    /// Larger than allowed.
    #[error("is larger than the limit of {limit} pixels on a side")]
    TooLarge {
        /// The limit.
        limit: u32,
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

/// Decodes PNG/JPEG/WebP bytes to 8-bit RGB within `limits`.
pub fn decode_rgb(bytes: &[u8], limits: ImageLimits) -> Result<RgbImage, ImageError> {
    decode(bytes, limits).map(|image| image.to_rgb8())
}

/// Decodes PNG/JPEG/WebP bytes within `limits`, keeping their channels (alpha included).
pub fn decode(bytes: &[u8], limits: ImageLimits) -> Result<DynamicImage, ImageError> {
    if bytes.len() > limits.max_bytes {
        return Err(ImageError::TooManyBytes {
            got: bytes.len(),
            limit: limits.max_bytes,
        });
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|_| ImageError::UnknownFormat)?;
    let format = match reader.format() {
        Some(
            f @ (image::ImageFormat::Png | image::ImageFormat::Jpeg | image::ImageFormat::WebP),
        ) => f,
        _ => return Err(ImageError::UnknownFormat),
    };
    let mut decode_limits = Limits::default();
    decode_limits.max_image_width = Some(limits.max_side);
    decode_limits.max_image_height = Some(limits.max_side);
    reader.limits(decode_limits);
    match reader.decode() {
        Ok(image) => Ok(image),
        Err(image::ImageError::Limits(_)) => Err(ImageError::TooLarge {
            limit: limits.max_side,
        }),
        Err(e) => Err(ImageError::Corrupt {
            format: format!("{format:?}").to_uppercase(),
            message: e.to_string(),
        }),
    }
}
