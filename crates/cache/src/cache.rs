//! [`Cache`]: one handle over the configured backend, with the framing, the checks on read
//! and the counters that [`CacheStats`] reports.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::frame;
use crate::memory::{MemoryConfig, MemoryStore};
use crate::redis_store::{RedisConfig, RedisStore};
use crate::{CacheError, CacheKey};

/// A snapshot of a cache's counters, for logs and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// `"none"`, `"memory"` or `"redis"`.
    pub backend: &'static str,
    /// Reads that returned a value.
    pub hits: u64,
    /// Reads that returned nothing: absent, expired, rejected, or the backend failed.
    pub misses: u64,
    /// Backend operations that failed, timed out or were skipped by the circuit breaker
    /// (Redis; always 0 for the other backends).
    pub errors: u64,
    /// Values found but refused: bad frame, wrong kind, bad checksum, undecodable, or
    /// refused by the caller's check. Each is also a miss.
    pub rejected: u64,
    /// Whether the last attempted backend operation succeeded (always true without Redis).
    pub healthy: bool,
}

/// The gateway's embedding cache: framed prost messages in Redis or in process.
///
/// Cheap to clone (one `Arc`); clones share the backend and the counters. No method fails:
/// a broken, slow or absent backend turns reads into misses and writes into no-ops.
#[derive(Clone, Debug)]
pub struct Cache {
    /// Shared by all clones.
    inner: Arc<Inner>,
}

/// What the clones of a [`Cache`] share.
#[derive(Debug)]
struct Inner {
    /// Where the values live.
    store: Store,
    /// Reads that returned a value.
    hits: AtomicU64,
    /// Reads that returned nothing.
    misses: AtomicU64,
    /// Values found but refused.
    rejected: AtomicU64,
    /// Values that could not be framed (a kind over 65535 bytes); Redis counts its own.
    errors: AtomicU64,
}

/// The configured backend.
#[derive(Debug)]
enum Store {
    /// No caching.
    Disabled,
    /// In process.
    Memory(MemoryStore),
    /// In Redis.
    Redis(RedisStore),
}

impl Cache {
    /// A cache that stores nothing: every read is a miss (not counted), writes do nothing.
    pub fn disabled() -> Self {
        Self::with_store(Store::Disabled)
    }

    /// An in-process cache of at most `config.max_bytes` of framed values, each living
    /// `config.ttl`.
    pub fn memory(config: MemoryConfig) -> Self {
        Self::with_store(Store::Memory(MemoryStore::new(config)))
    }

    /// A Redis cache. Connects nothing and never blocks: the connection is made on first
    /// use, and a Redis that is down only shows as misses and [`CacheStats::errors`].
    ///
    /// # Errors
    ///
    /// [`CacheError::InvalidRedisUrl`] when `config.url` is malformed.
    pub fn redis(config: RedisConfig) -> Result<Self, CacheError> {
        Ok(Self::with_store(Store::Redis(RedisStore::new(&config)?)))
    }

    /// Wraps `store` with fresh counters.
    fn with_store(store: Store) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
                errors: AtomicU64::new(0),
            }),
        }
    }

    /// `"none"`, `"memory"` or `"redis"`.
    pub fn backend(&self) -> &'static str {
        match self.inner.store {
            Store::Disabled => "none",
            Store::Memory(_) => "memory",
            Store::Redis(_) => "redis",
        }
    }

    /// The key `unclip:{namespace}:{kind}:{hex}` where `hex` is the SHA-256 (64 lower-case hex
    /// digits) over `parts`, each prefixed by its length as a little-endian `u64`.
    ///
    /// `namespace` is the model version (e.g. `sha256-05a44364d00a59c6`), so a new model never
    /// reads an old model's values; `kind` names what is stored (`text`, `image`, `prior`).
    pub fn key(namespace: &str, kind: &str, parts: &[&[u8]]) -> CacheKey {
        CacheKey::derive(namespace, kind, parts)
    }

    /// The value under `key`, if there is one whose frame is intact, whose kind is the key's,
    /// which decodes as `M` and which `check` accepts. Anything else is a miss; a refused value
    /// is also counted as rejected, logged at debug level and deleted (best effort).
    pub async fn get<M: prost::Message + Default>(
        &self,
        key: &CacheKey,
        check: impl Fn(&M) -> Result<(), String>,
    ) -> Option<M> {
        let raw: Option<Bytes> = match &self.inner.store {
            Store::Disabled => return None,
            Store::Memory(memory) => memory.get(key.as_str()).await,
            Store::Redis(redis) => redis.get(key.as_str()).await.map(Bytes::from),
        };
        let Some(raw) = raw else {
            self.inner.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        match decode(key, &raw, check) {
            Ok(value) => {
                self.inner.hits.fetch_add(1, Ordering::Relaxed);
                Some(value)
            }
            Err(reason) => {
                self.inner.rejected.fetch_add(1, Ordering::Relaxed);
                self.inner.misses.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(key = %key, backend = self.backend(), %reason, "cache entry rejected");
                self.remove(key).await;
                None
            }
        }
    }

    /// Stores `value` under `key`. Never fails: a backend error is counted in
    /// [`CacheStats::errors`] and logged, and the value is simply not cached.
    pub async fn put<M: prost::Message>(&self, key: &CacheKey, value: &M) {
        if matches!(self.inner.store, Store::Disabled) {
            return;
        }
        let framed = frame::encode_with(key.kind(), value.encoded_len(), |out| {
            // A `Vec` grows as needed, so encoding into it cannot run out of room.
            value.encode_raw(out);
        });
        let framed = match framed {
            Ok(framed) => framed,
            Err(e) => {
                self.inner.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(key = %key, error = %e, "cache entry not stored");
                return;
            }
        };
        match &self.inner.store {
            Store::Disabled => {}
            Store::Memory(memory) => memory.put(key.as_str(), framed).await,
            Store::Redis(redis) => redis.put(key.as_str(), &framed).await,
        }
    }

    /// Deletes a refused entry. For Redis the delete runs in the background (still bounded by
    /// the timeout and the breaker) so that the request does not wait for it.
    async fn remove(&self, key: &CacheKey) {
        match &self.inner.store {
            Store::Disabled => {}
            Store::Memory(memory) => memory.remove(key.as_str()).await,
            Store::Redis(redis) => match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    let cache = self.clone();
                    let key = key.as_str().to_owned();
                    runtime.spawn(async move {
                        if let Store::Redis(redis) = &cache.inner.store {
                            redis.remove(&key).await;
                        }
                    });
                }
                // Polled outside Tokio: nowhere to spawn, so delete inline.
                Err(_) => redis.remove(key.as_str()).await,
            },
        }
    }

    /// Applies the in-process backend's pending evictions and expirations now (moka batches
    /// them); does nothing for the other backends. Serving does not need it; it makes the
    /// memory bound observable at once, e.g. in tests.
    pub async fn run_pending_tasks(&self) {
        if let Store::Memory(memory) = &self.inner.store {
            memory.run_pending_tasks().await;
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> CacheStats {
        let inner = &self.inner;
        let (errors, healthy) = match &inner.store {
            Store::Redis(redis) => (redis.errors(), redis.healthy()),
            Store::Disabled | Store::Memory(_) => (0, true),
        };
        CacheStats {
            backend: self.backend(),
            hits: inner.hits.load(Ordering::Relaxed),
            misses: inner.misses.load(Ordering::Relaxed),
            errors: errors + inner.errors.load(Ordering::Relaxed),
            rejected: inner.rejected.load(Ordering::Relaxed),
            healthy,
        }
    }
}

/// Unframes, decodes and checks a stored value; the error says why it was refused.
fn decode<M: prost::Message + Default>(
    key: &CacheKey,
    raw: &[u8],
    check: impl Fn(&M) -> Result<(), String>,
) -> Result<M, String> {
    let payload = frame::decode(key.kind(), raw).map_err(|e| e.to_string())?;
    let value = M::decode(payload).map_err(|e| format!("undecodable payload: {e}"))?;
    check(&value).map_err(|e| format!("refused by check: {e}"))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for the gateway's tensors.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Embedding {
        /// The values.
        #[prost(float, repeated, tag = "1")]
        values: Vec<f32>,
    }

    #[tokio::test]
    async fn disabled_counts_nothing() {
        let cache = Cache::disabled();
        let key = Cache::key("ns", "text", &[b"x"]);
        cache.put(&key, &Embedding { values: vec![1.0] }).await;
        assert_eq!(cache.get::<Embedding>(&key, |_| Ok(())).await, None);
        assert_eq!(
            cache.stats(),
            CacheStats {
                backend: "none",
                healthy: true,
                ..CacheStats::default()
            }
        );
    }

    #[test]
    fn decode_refuses_a_payload_of_another_type() {
        let key = Cache::key("ns", "text", &[b"x"]);
        // Field 1 as a varint where `Embedding` has packed floats: prost refuses it.
        let framed = frame::encode("text", &[0x08, 0x01]).unwrap();
        let reason = decode::<Embedding>(&key, &framed, |_| Ok(())).unwrap_err();
        assert!(reason.starts_with("undecodable payload"), "{reason}");
    }

    #[test]
    fn get_is_send_for_send_checks() {
        fn assert_send<T: Send>(_: &T) {}
        let cache = Cache::disabled();
        let key = Cache::key("ns", "text", &[b"x"]);
        let get = cache.get::<Embedding>(&key, |_| Ok(()));
        assert_send(&get);
        let value = Embedding::default();
        let put = cache.put(&key, &value);
        assert_send(&put);
    }
}
