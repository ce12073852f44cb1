//! Uploaded images and masks: any bytes through the services' decoder, within the limits they
//! serve with, either decode to an image no larger than the limit or are refused; never a panic,
//! and never an allocation past the side limit (a huge declared size is refused from the header).
#![no_main]

use libfuzzer_sys::fuzz_target;
use unclip_server::image_input::{ImageLimits, decode, decode_rgb};

const LIMITS: ImageLimits = ImageLimits {
    max_bytes: 1 << 20,
    max_side: 512,
};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(image) = decode(bytes, LIMITS) {
        assert!(image.width() <= LIMITS.max_side && image.height() <= LIMITS.max_side);
        // A mask is read from the alpha channel (or luma) of the decoded image.
        let _ = image.to_luma_alpha8();
    }
    if let Ok(rgb) = decode_rgb(bytes, LIMITS) {
        assert_eq!(rgb.as_raw().len(), rgb.width() as usize * rgb.height() as usize * 3);
    }
});
