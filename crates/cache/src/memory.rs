//! The in-process backend: a moka cache bounded by the bytes of the framed values it holds.

use std::time::Duration;

use bytes::Bytes;

/// Settings of the in-process backend ([`crate::Cache::memory`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Upper bound on the summed size of the stored (framed) values, in bytes; the least
    /// useful entries are evicted beyond it. Keys are not counted.
    pub max_bytes: u64,
    /// How long an entry lives after it was written.
    pub ttl: Duration,
}

/// A moka cache of framed values, weighed by their length.
#[derive(Clone, Debug)]
pub(crate) struct MemoryStore {
    /// The entries; moka is internally synchronised and cheap to clone.
    entries: moka::future::Cache<String, Bytes>,
}

impl MemoryStore {
    /// An empty store with `config`'s bounds.
    pub(crate) fn new(config: MemoryConfig) -> Self {
        let entries = moka::future::Cache::builder()
            .max_capacity(config.max_bytes)
            // moka weighs in u32; a value over 4 GiB would not fit any sane bound anyway.
            .weigher(|_key: &String, value: &Bytes| u32::try_from(value.len()).unwrap_or(u32::MAX))
            .time_to_live(config.ttl)
            .build();
        Self { entries }
    }

    /// The framed value under `key`, if present and not expired.
    pub(crate) async fn get(&self, key: &str) -> Option<Bytes> {
        self.entries.get(key).await
    }

    /// Stores a framed value under `key`, replacing any older one.
    pub(crate) async fn put(&self, key: &str, value: Vec<u8>) {
        self.entries
            .insert(key.to_owned(), Bytes::from(value))
            .await;
    }

    /// Drops the entry under `key`, if any.
    pub(crate) async fn remove(&self, key: &str) {
        self.entries.invalidate(key).await;
    }

    /// Applies pending evictions and expirations now (moka otherwise batches them).
    pub(crate) async fn run_pending_tasks(&self) {
        self.entries.run_pending_tasks().await;
    }
}
