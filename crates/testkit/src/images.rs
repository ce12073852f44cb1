//! PNG decoding and encoding, and comparing images.

use image::RgbImage;

/// Decodes PNG bytes to RGB; panics if they are not a PNG.
pub fn rgb(png: &[u8]) -> RgbImage {
    image::load_from_memory_with_format(png, image::ImageFormat::Png)
        .expect("a PNG")
        .to_rgb8()
}

/// Encodes an 8-bit image (RGB, RGBA, ...) as PNG.
pub fn png<P>(image: &image::ImageBuffer<P, Vec<u8>>) -> bytes::Bytes
where
    P: image::PixelWithColorType<Subpixel = u8>,
{
    let mut out = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("PNG encoding");
    out.into_inner().into()
}

/// The mean absolute difference of two images' channels, in 0..=255.
pub fn mean_abs_diff(a: &RgbImage, b: &RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let sum: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| u64::from(x.abs_diff(y)))
        .sum();
    sum as f64 / a.as_raw().len() as f64
}
