//! The in-process backend: round trips, misses, TTL, the byte bound and refused values.
//!
//! moka keeps its own clock, so TTL tests sleep for real instead of pausing Tokio's.

mod common;

use std::time::Duration;

use common::{Embedding, expect_shape};
use unclip_cache::{Cache, CacheStats, MemoryConfig};

fn memory(max_bytes: u64, ttl: Duration) -> Cache {
    Cache::memory(MemoryConfig { max_bytes, ttl })
}

/// A stored message comes back equal, and hits and misses are counted.
#[tokio::test]
async fn round_trip_and_miss_on_another_key() {
    let cache = memory(1 << 20, Duration::from_secs(60));
    assert_eq!(cache.backend(), "memory");
    let key = Cache::key("v1", "text", &[b"a cat"]);
    let other = Cache::key("v1", "text", &[b"a dog"]);
    let value = Embedding::new(8, 1);

    assert_eq!(cache.get(&key, expect_shape(&[1, 8])).await, None);
    cache.put(&key, &value).await;
    assert_eq!(cache.get(&key, expect_shape(&[1, 8])).await, Some(value));
    assert_eq!(cache.get(&other, expect_shape(&[1, 8])).await, None);
    assert_eq!(
        cache.stats(),
        CacheStats {
            backend: "memory",
            hits: 1,
            misses: 2,
            errors: 0,
            rejected: 0,
            healthy: true,
        }
    );
}

/// The same inputs under another model version are not shared.
#[tokio::test]
async fn namespaces_are_separate() {
    let cache = memory(1 << 20, Duration::from_secs(60));
    cache
        .put(&Cache::key("v1", "text", &[b"x"]), &Embedding::new(4, 0))
        .await;
    let v2 = Cache::key("v2", "text", &[b"x"]);
    assert_eq!(cache.get(&v2, expect_shape(&[1, 4])).await, None);
}

/// Entries are gone once their TTL has passed.
#[tokio::test]
async fn entries_expire() {
    let cache = memory(1 << 20, Duration::from_millis(200));
    let key = Cache::key("v1", "image", &[b"png bytes"]);
    cache.put(&key, &Embedding::new(4, 2)).await;
    assert!(cache.get(&key, expect_shape(&[1, 4])).await.is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    cache.run_pending_tasks().await;
    assert_eq!(cache.get(&key, expect_shape(&[1, 4])).await, None);
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses), (1, 1));
}

/// The summed size of the stored values stays within `max_bytes`.
#[tokio::test]
async fn byte_bound_evicts() {
    // Each framed value is a little over 1 KiB, so at most 9 fit in 10 000 bytes.
    let cache = memory(10_000, Duration::from_secs(60));
    let keys: Vec<_> = (0..40u8)
        .map(|i| Cache::key("v1", "text", &[&[i]]))
        .collect();
    for (i, key) in keys.iter().enumerate() {
        cache.put(key, &Embedding::new(256, i as u8)).await;
    }
    cache.run_pending_tasks().await;
    let mut kept = 0;
    for key in &keys {
        if cache.get(key, expect_shape(&[1, 256])).await.is_some() {
            kept += 1;
        }
    }
    assert!((1..=9).contains(&kept), "{kept} of 40 entries kept");
}

/// A value the caller's check refuses is a miss, counted as rejected, and deleted.
#[tokio::test]
async fn refused_by_check_is_rejected_and_deleted() {
    let cache = memory(1 << 20, Duration::from_secs(60));
    let key = Cache::key("v1", "text", &[b"a cat"]);
    cache.put(&key, &Embedding::new(8, 1)).await;

    // The caller now expects another shape (e.g. a different projection width).
    assert_eq!(cache.get(&key, expect_shape(&[1, 16])).await, None);
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.rejected), (0, 1, 1));

    // Deleted: even an accepting check finds nothing now.
    assert_eq!(cache.get(&key, expect_shape(&[1, 8])).await, None);
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.rejected), (0, 2, 1));
}

/// A value stored as another message type fails to decode or fails the check.
#[tokio::test]
async fn other_message_type_is_rejected() {
    /// A message whose field 1 is a string, where `Embedding` has packed int64s.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Caption {
        #[prost(string, tag = "1")]
        text: String,
    }
    let cache = memory(1 << 20, Duration::from_secs(60));
    let key = Cache::key("v1", "text", &[b"a cat"]);
    cache
        .put(
            &key,
            &Caption {
                text: "\u{7f}".repeat(3),
            },
        )
        .await;
    assert_eq!(cache.get(&key, expect_shape(&[1, 8])).await, None);
    assert_eq!(cache.stats().rejected, 1);
}

/// The disabled cache misses without counting and stores nothing.
#[tokio::test]
async fn disabled_cache_is_inert() {
    let cache = Cache::disabled();
    assert_eq!(cache.backend(), "none");
    let key = Cache::key("v1", "text", &[b"a cat"]);
    cache.put(&key, &Embedding::new(8, 1)).await;
    assert_eq!(cache.get(&key, expect_shape(&[1, 8])).await, None);
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.errors), (0, 0, 0));
    assert!(stats.healthy);
}

/// Clones share entries and counters.
#[tokio::test]
async fn clones_share_everything() {
    let cache = memory(1 << 20, Duration::from_secs(60));
    let clone = cache.clone();
    let key = Cache::key("v1", "text", &[b"a cat"]);
    cache.put(&key, &Embedding::new(8, 1)).await;
    assert!(clone.get(&key, expect_shape(&[1, 8])).await.is_some());
    assert_eq!(cache.stats().hits, 1);
}
