//! The cache's error type: configuration mistakes only. Outages are never errors; they are
//! counted in [`crate::CacheStats`] and turn into misses.

/// A cache that cannot be built as configured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The Redis URL does not parse (or names something the client refuses, such as `0.0.0.0`).
    #[error("invalid Redis URL {url:?}: {reason}")]
    InvalidRedisUrl {
        /// The URL as given, with any password replaced by `***`.
        url: String,
        /// Why the Redis client refused it.
        reason: String,
    },
}
