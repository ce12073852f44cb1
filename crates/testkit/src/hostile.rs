//! Crafted hostile files, made at run time so that no test carries a binary blob: PNGs that
//! declare huge sides or whose compressed data inflates far past the image (decompression
//! bombs), JPEG and WebP headers that lie about their size, and truncated images.
//!
//! The deflate streams are written by hand (one fixed-Huffman block of back-references, 13 bits
//! per 258 zero bytes), so a gigabyte-inflating stream costs a few megabytes and no compression
//! time.

use std::io::Cursor;

use image::{ImageFormat, RgbImage};

/// A grey 8-bit PNG that declares `width` × `height` pixels and whose one IDAT chunk is a zlib
/// stream inflating to `inflated_bytes` zero bytes (an image's worth is `height * (width + 1)`:
/// a filter byte and `width` samples per row). Either a huge declared size over little data, or
/// a small image over a huge stream, is a decompression bomb.
pub fn png_bomb(width: u32, height: u32, inflated_bytes: u64) -> Vec<u8> {
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    // Bit depth 8, colour type 0 (grey), deflate, adaptive filtering, no interlace.
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", &zlib_zeros(inflated_bytes));
    chunk(&mut png, b"IEND", &[]);
    png
}

/// A grey PNG of `side` × `side` zero pixels whose data is exactly the image, compressed
/// about a thousandfold: a valid image that is tiny on the wire and large in memory.
pub fn png_zeros(side: u32) -> Vec<u8> {
    png_bomb(side, side, u64::from(side) * (u64::from(side) + 1))
}

/// A PNG with a zTXt text chunk whose compressed text inflates to `inflated_bytes` zero bytes,
/// before an otherwise valid 8 × 8 image.
pub fn png_text_bomb(inflated_bytes: u64) -> Vec<u8> {
    let valid = png_zeros(8);
    // Insert after the signature (8 bytes) and IHDR (4 + 4 + 13 + 4 bytes).
    let (head, tail) = valid.split_at(8 + 25);
    let mut text = b"Comment\0\0".to_vec();
    text.extend_from_slice(&zlib_zeros(inflated_bytes));
    let mut png = head.to_vec();
    chunk(&mut png, b"zTXt", &text);
    png.extend_from_slice(tail);
    png
}

/// A baseline JPEG of 16 × 16 pixels whose frame header (SOF0) is rewritten to declare
/// `width` × `height` (each at most 65535).
pub fn jpeg_declaring(width: u16, height: u16) -> Vec<u8> {
    let mut jpeg = encode(ImageFormat::Jpeg);
    let sof = jpeg
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("a baseline JPEG has an SOF0 marker");
    // FF C0, length (2), precision (1), height (2), width (2).
    jpeg[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    jpeg
}

/// A lossless WebP of 16 × 16 pixels whose VP8L header is rewritten to declare `width` ×
/// `height` (each 1..=16383: image-webp reads a 16384 side as 0).
pub fn webp_declaring(width: u32, height: u32) -> Vec<u8> {
    assert!((1..16384).contains(&width) && (1..16384).contains(&height));
    let mut webp = encode(ImageFormat::WebP);
    let vp8l = webp
        .windows(4)
        .position(|w| w == b"VP8L")
        .expect("a lossless WebP has a VP8L chunk");
    // "VP8L", chunk size (4), signature 0x2F, then 14 bits width - 1, 14 bits height - 1,
    // 1 bit alpha, 3 bits version, little-endian.
    let at = vp8l + 9;
    let old = u32::from_le_bytes(webp[at..at + 4].try_into().expect("four bytes"));
    let packed = (old & 0xF000_0000) | ((height - 1) << 14) | (width - 1);
    webp[at..at + 4].copy_from_slice(&packed.to_le_bytes());
    webp
}

/// A valid 16 × 16 image in `format`, cut to its first `keep` bytes.
pub fn truncated(format: ImageFormat, keep: usize) -> Vec<u8> {
    let mut bytes = encode(format);
    bytes.truncate(keep);
    bytes
}

/// A 16 × 16 colour gradient in `format`.
pub fn encode(format: ImageFormat) -> Vec<u8> {
    let image = RgbImage::from_fn(16, 16, |x, y| image::Rgb([x as u8 * 16, y as u8 * 16, 128]));
    let mut out = Cursor::new(Vec::new());
    image
        .write_to(&mut out, format)
        .expect("encoding a test image");
    out.into_inner()
}

/// Appends a PNG chunk: length, type, data, CRC-32 of type and data.
fn chunk(png: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    let length = u32::try_from(data.len()).expect("a chunk below 4 GiB");
    png.extend_from_slice(&length.to_be_bytes());
    let start = png.len();
    png.extend_from_slice(kind);
    png.extend_from_slice(data);
    let crc = crc32(&png[start..]);
    png.extend_from_slice(&crc.to_be_bytes());
}

/// CRC-32 (ISO-HDLC, what PNG uses).
fn crc32(bytes: &[u8]) -> u32 {
    let table: Vec<u32> = (0..256u32)
        .map(|n| {
            (0..8).fold(n, |c, _| {
                if c & 1 == 1 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                }
            })
        })
        .collect();
    !bytes.iter().fold(!0u32, |c, &b| {
        table[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8)
    })
}

/// A zlib stream of `n` zero bytes: one fixed-Huffman deflate block of a literal 0 and
/// back-references of length 258 at distance 1, then literals for the rest.
fn zlib_zeros(n: u64) -> Vec<u8> {
    let mut bits = BitWriter::default();
    // BFINAL = 1, BTYPE = 01 (fixed Huffman codes).
    bits.put(1, 1);
    bits.put(1, 2);
    let mut left = n;
    if left > 0 {
        // Literal 0: code 0x30, 8 bits.
        bits.huffman(0x30, 8);
        left -= 1;
    }
    // Length 258: code 285 = 0xC5, 8 bits, no extra bits; distance 1: code 0, 5 bits. Eight
    // of them are 13 whole bytes, so after two groups the bytes of the second repeat.
    let back_reference = |bits: &mut BitWriter| {
        bits.huffman(0xC5, 8);
        bits.huffman(0, 5);
    };
    let mut units = left / 258;
    left %= 258;
    if units >= 16 {
        (0..8).for_each(|_| back_reference(&mut bits));
        let start = bits.bytes.len();
        (0..8).for_each(|_| back_reference(&mut bits));
        let group = bits.bytes[start..].to_vec();
        let groups = (units - 16) / 8;
        bits.bytes.reserve((groups * 13) as usize);
        (0..groups).for_each(|_| bits.bytes.extend_from_slice(&group));
        units -= 16 + groups * 8;
    }
    (0..units).for_each(|_| back_reference(&mut bits));
    for _ in 0..left {
        bits.huffman(0x30, 8);
    }
    // End of block: code 256, 7 zero bits.
    bits.huffman(0, 7);
    let mut out = vec![0x78, 0x01];
    out.extend_from_slice(&bits.finish());
    // Adler-32 of n zeros: a stays 1, b adds 1 per byte.
    let adler = (((n % 65521) as u32) << 16) | 1;
    out.extend_from_slice(&adler.to_be_bytes());
    out
}

/// Deflate's bit order: values least significant bit first, Huffman codes most significant
/// bit first.
#[derive(Debug, Default)]
struct BitWriter {
    bytes: Vec<u8>,
    current: u32,
    used: u32,
}

impl BitWriter {
    /// `count` bits of `value`, least significant first.
    fn put(&mut self, value: u32, count: u32) {
        for i in 0..count {
            self.current |= ((value >> i) & 1) << self.used;
            self.used += 1;
            if self.used == 8 {
                self.bytes.push(self.current as u8);
                self.current = 0;
                self.used = 0;
            }
        }
    }

    /// A Huffman code of `length` bits, most significant first.
    fn huffman(&mut self, code: u32, length: u32) {
        let reversed = code.reverse_bits() >> (32 - length);
        self.put(reversed, length);
    }

    fn finish(mut self) -> Vec<u8> {
        if self.used > 0 {
            self.bytes.push(self.current as u8);
        }
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-made PNGs are valid: the image crate reads back what they declare.
    #[test]
    fn crafted_pngs_decode() {
        let image = image::load_from_memory(&png_zeros(40)).expect("a valid PNG");
        assert_eq!((image.width(), image.height()), (40, 40));
        assert!(image.to_luma8().pixels().all(|p| p[0] == 0));
        let small = png_bomb(3, 2, 8);
        assert_eq!(image::load_from_memory(&small).unwrap().width(), 3);
        // About 13 bits per 258 inflated bytes.
        assert!(png_bomb(64, 64, 1 << 30).len() < 7 << 20);
    }

    /// The rewritten headers declare the asked sizes.
    #[test]
    fn rewritten_headers() {
        let dims = |bytes: &[u8]| {
            image::ImageReader::new(Cursor::new(bytes))
                .with_guessed_format()
                .unwrap()
                .into_dimensions()
                .unwrap()
        };
        assert_eq!(dims(&jpeg_declaring(60000, 50000)), (60000, 50000));
        assert_eq!(dims(&webp_declaring(16000, 9000)), (16000, 9000));
        assert_eq!(dims(&png_bomb(60000, 60000, 100)), (60000, 60000));
    }
}
