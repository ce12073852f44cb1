//! Cache keys: the model version, the kind of value and a SHA-256 digest of the inputs.

use std::fmt;

use sha2::{Digest, Sha256};

/// The key of one cached value, e.g. `unclip:sha256-05a44364d00a59c6:text:<64 hex>`.
///
/// Built by [`crate::Cache::key`]. It keeps the kind apart so that a value can be checked on
/// read against the kind it was written as.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The full key string, as stored in the backend.
    key: String,
    /// The kind segment (`text`, `image`, `prior`, ...), written into each value's frame.
    kind: String,
}

impl CacheKey {
    /// Derives `unclip:{namespace}:{kind}:{hex}` where `hex` is the SHA-256 over `parts`, each
    /// prefixed by its length as a little-endian `u64` (so `("ab", "c")` and `("a", "bc")` differ).
    pub(crate) fn derive(namespace: &str, kind: &str, parts: &[&[u8]]) -> Self {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        let digest = hasher.finalize();
        let mut key = format!("unclip:{namespace}:{kind}:");
        key.push_str(&hex(&digest));
        Self {
            key,
            kind: kind.to_owned(),
        }
    }

    /// The key string as stored in the backend.
    pub fn as_str(&self) -> &str {
        &self.key
    }

    /// The kind of value this key names (`text`, `image`, `prior`, ...).
    pub fn kind(&self) -> &str {
        &self.kind
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)
    }
}

/// Lower-case hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0x0f)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_is_stable() {
        let key = CacheKey::derive("sha256-05a44364d00a59c6", "text", &[b"a photo of a cat"]);
        // SHA-256 of 16u64 LE ++ "a photo of a cat", computed independently with Python's hashlib.
        assert_eq!(
            key.as_str(),
            "unclip:sha256-05a44364d00a59c6:text:e5db74791489d1d24db3660c812251413b068d57a49dac104452f6c1e9091709"
        );
        assert_eq!(key.kind(), "text");
        assert_eq!(key.to_string(), key.as_str());
    }

    #[test]
    fn no_parts_hashes_the_empty_input() {
        let key = CacheKey::derive("ns", "prior", &[]);
        assert_eq!(
            key.as_str(),
            "unclip:ns:prior:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn parts_are_length_prefixed() {
        let ab_c = CacheKey::derive("ns", "text", &[b"ab", b"c"]);
        let a_bc = CacheKey::derive("ns", "text", &[b"a", b"bc"]);
        let abc = CacheKey::derive("ns", "text", &[b"abc"]);
        assert_ne!(ab_c, a_bc);
        assert_ne!(ab_c, abc);
        assert_ne!(a_bc, abc);
    }

    #[test]
    fn every_segment_matters() {
        let base = CacheKey::derive("ns", "text", &[b"x"]);
        assert_ne!(base, CacheKey::derive("ns", "text", &[b"y"]));
        assert_ne!(base, CacheKey::derive("ns2", "text", &[b"x"]));
        assert_ne!(base, CacheKey::derive("ns", "image", &[b"x"]));
        assert_eq!(base, CacheKey::derive("ns", "text", &[b"x"]));
    }

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }
}
