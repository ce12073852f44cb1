//! Cache keys as the gateway sees them: the format and what changes them.

use unclip_cache::Cache;

/// The key is `unclip:{namespace}:{kind}:{64 hex}` and does not change between builds.
#[test]
fn key_format_is_stable() {
    let key = Cache::key("sha256-05a44364d00a59c6", "text", &[b"a photo of a cat"]);
    assert_eq!(
        key.to_string(),
        "unclip:sha256-05a44364d00a59c6:text:\
         e5db74791489d1d24db3660c812251413b068d57a49dac104452f6c1e9091709"
    );
    assert_eq!(key.as_str(), key.to_string());
    assert_eq!(key.kind(), "text");
    let hex = key.as_str().rsplit(':').next().unwrap();
    assert_eq!(hex.len(), 64);
    assert!(
        hex.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
}

/// Different inputs give different keys, and the same inputs the same key.
#[test]
fn different_parts_give_different_keys() {
    let a = Cache::key("ns", "prior", &[b"prompt", b"seed=1"]);
    let b = Cache::key("ns", "prior", &[b"prompt", b"seed=2"]);
    assert_ne!(a.as_str(), b.as_str());
    assert_eq!(
        a.as_str(),
        Cache::key("ns", "prior", &[b"prompt", b"seed=1"]).as_str()
    );
}

/// Parts are length-prefixed, so moving a boundary changes the key.
#[test]
fn part_boundaries_matter() {
    let ab_c = Cache::key("ns", "text", &[b"ab", b"c"]);
    let a_bc = Cache::key("ns", "text", &[b"a", b"bc"]);
    assert_ne!(ab_c.as_str(), a_bc.as_str());
}
