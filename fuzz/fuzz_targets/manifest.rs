//! The model repository's manifest.json: any text is refused with an error or parses into a
//! manifest whose checks (`validate`) answer without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use unclip_runtime::Manifest;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    if let Ok(manifest) = Manifest::parse(text) {
        let _ = manifest.validate();
        let _ = manifest.graphs();
        let _ = manifest.referenced_files();
    }
});
