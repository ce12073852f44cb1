//! The gateway's embedding cache: prost messages (CLIP text/image embeddings, prior outputs)
//! stored under keys derived from the model version and the request's inputs, in Redis or in
//! process, such that the cache can never fail or stall a request.
//!
//! | module | what it holds |
//! |---|---|
//! | `cache` | [`Cache`]: the handle, reads with checks, writes, [`CacheStats`] |
//! | `key` | [`CacheKey`]: key derivation |
//! | `frame` | the frame around every stored value |
//! | `memory` | [`MemoryConfig`] and the moka backend |
//! | `redis_store` | [`RedisConfig`] and the Redis backend with its circuit breaker |
//! | `error` | [`CacheError`]: configuration errors only |
//!
//! # Keys
//!
//! `unclip:{namespace}:{kind}:{hex}`: `namespace` is the model version (e.g.
//! `sha256-05a44364d00a59c6`), `kind` what is stored (`text`, `image`, `prior`), `hex` the 64
//! lower-case hex digits of SHA-256 over the input parts, each prefixed by its length as a
//! little-endian `u64` (so `("ab", "c")` and `("a", "bc")` differ). See [`Cache::key`].
//!
//! # Values
//!
//! `b"UNCLIPC1"` ++ kind length (`u16` LE) ++ kind ++ first 16 bytes of SHA-256(payload) ++
//! payload (the prost encoding). A read accepts a value only if the magic, the kind (must be
//! the key's) and the checksum match, the payload decodes, and the caller's check (e.g. dtype
//! and shape of a tensor) passes. Otherwise it is a miss, counted as rejected, logged at debug
//! level and deleted.
//!
//! # Outages
//!
//! Redis is optional. [`Cache::redis`] only validates the URL and connects lazily. Every
//! operation is bounded by [`RedisConfig::op_timeout`]. Any error or timeout is counted in
//! [`CacheStats::errors`], makes the cache unhealthy (a warning when it happens, an info line
//! when Redis answers again) and turns into a miss or a no-op. After a failure Redis is skipped
//! for [`RedisConfig::retry_after`] (skipped operations return at once and count as errors),
//! then one operation probes it: an outage costs at most one timeout per window, not one per
//! request.

mod cache;
mod error;
mod frame;
mod key;
mod memory;
mod redis_store;

pub use cache::{Cache, CacheStats};
pub use error::CacheError;
pub use key::CacheKey;
pub use memory::MemoryConfig;
pub use redis_store::RedisConfig;

/// The value frame's checks, public for the fuzz target `fuzz/fuzz_targets/cache_frame.rs`
/// only; not an API.
#[doc(hidden)]
pub mod fuzzing {
    /// The payload of a well-formed frame of `kind`, or `None`.
    pub fn decode_frame<'a>(kind: &str, bytes: &'a [u8]) -> Option<&'a [u8]> {
        crate::frame::decode(kind, bytes).ok()
    }

    /// `payload` framed as a value of `kind`, or `None` when `kind` is too long.
    pub fn encode_frame(kind: &str, payload: &[u8]) -> Option<Vec<u8>> {
        crate::frame::encode_with(kind, payload.len(), |out| out.extend_from_slice(payload)).ok()
    }
}
