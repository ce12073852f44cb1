//! Uploaded images and masks: any bytes through the services' header check and decoder, within
//! the limits they serve with. The header check (`dimensions`) either refuses the bytes or
//! reports a format and a size within the limits; decoding succeeds only on bytes the header
//! check accepted, and yields exactly the size the header declared; never a panic, and never an
//! allocation past the side limit (a huge declared size is refused from the header).
#![no_main]

use libfuzzer_sys::fuzz_target;
use unclip_server::image_input::{ImageLimits, decode, decode_rgb, dimensions};

const LIMITS: ImageLimits = ImageLimits {
    max_bytes: 1 << 20,
    max_side: 512,
};

fuzz_target!(|bytes: &[u8]| {
    let header = dimensions(bytes, LIMITS);
    if let Ok((_, width, height)) = header {
        assert!((1..=LIMITS.max_side).contains(&width) && (1..=LIMITS.max_side).contains(&height));
    }
    if let Ok(image) = decode(bytes, LIMITS) {
        let Ok((_, width, height)) = header else {
            panic!("decoded bytes the header check refused: {header:?}");
        };
        assert_eq!((image.width(), image.height()), (width, height));
        // A mask is read from the alpha channel (or luma) of the decoded image.
        let _ = image.to_luma_alpha8();
    }
    if let Ok(rgb) = decode_rgb(bytes, LIMITS) {
        assert!(header.is_ok());
        assert_eq!(
            rgb.as_raw().len(),
            rgb.width() as usize * rgb.height() as usize * 3
        );
    }
});
