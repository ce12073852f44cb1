//! The Redis backend against a real `redis-server`: round trips, TTL, refused values, and
//! above all that an outage never fails or stalls a request.
//!
//! These tests fail (not skip) when `redis-server` is missing: `apt-get install redis-server`.

mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use common::{Embedding, expect_shape};
use unclip_cache::{Cache, CacheError, RedisConfig};
use unclip_testkit::{RedisServer, free_port};

/// Sanity bound on any cache call during an outage (the timeout is 250 ms; this is not a
/// benchmark, it catches hangs).
const QUICK: Duration = Duration::from_secs(2);

fn redis_cache(url: String, ttl: Duration, retry_after: Duration) -> Cache {
    let mut config = RedisConfig::new(url, ttl);
    config.retry_after = retry_after;
    Cache::redis(config).expect("valid URL")
}

/// Awaits `fut`, failing the test if it takes longer than [`QUICK`].
async fn quickly<T>(what: &str, fut: impl Future<Output = T>) -> T {
    let start = Instant::now();
    let out = fut.await;
    let took = start.elapsed();
    assert!(took < QUICK, "{what} took {took:?}");
    out
}

/// Polls `EXISTS key` until it is 0 (the delete of a refused entry runs in the background).
async fn wait_until_deleted(server: &RedisServer, key: &str) {
    let mut conn = server.connection().await;
    let deadline = Instant::now() + QUICK;
    loop {
        let exists: bool = redis::cmd("EXISTS")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if !exists {
            return;
        }
        assert!(Instant::now() < deadline, "{key} was not deleted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A stored message comes back equal; hits and misses are counted; the stored value is framed.
#[tokio::test]
async fn round_trip_counts_hits_and_misses() {
    let server = RedisServer::start();
    let cache = redis_cache(
        server.url(),
        Duration::from_secs(60),
        Duration::from_secs(1),
    );
    assert_eq!(cache.backend(), "redis");
    let key = Cache::key("v1", "text", &[b"a cat"]);
    let value = Embedding::new(8, 3);

    assert_eq!(cache.get(&key, expect_shape(&[1, 8])).await, None);
    cache.put(&key, &value).await;
    assert_eq!(cache.get(&key, expect_shape(&[1, 8])).await, Some(value));
    let other = Cache::key("v1", "text", &[b"a dog"]);
    assert_eq!(cache.get(&other, expect_shape(&[1, 8])).await, None);

    let stats = cache.stats();
    assert_eq!(
        (stats.hits, stats.misses, stats.errors, stats.rejected),
        (1, 2, 0, 0)
    );
    assert!(stats.healthy);

    let mut conn = server.connection().await;
    let raw: Vec<u8> = redis::cmd("GET")
        .arg(key.as_str())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(raw.starts_with(b"UNCLIPC1\x04\x00text"));
}

/// Entries are written with a millisecond TTL and are gone after it.
#[tokio::test]
async fn entries_expire() {
    let server = RedisServer::start();
    let cache = redis_cache(server.url(), Duration::from_secs(1), Duration::from_secs(1));
    let key = Cache::key("v1", "prior", &[b"a cat", b"seed=7"]);
    cache.put(&key, &Embedding::new(4, 0)).await;

    let mut conn = server.connection().await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(key.as_str())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((1..=1000).contains(&pttl), "PTTL {pttl}");

    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(cache.get(&key, expect_shape(&[1, 4])).await, None);
}

/// Garbage stored under a key is a miss, counted as rejected, and deleted.
#[tokio::test]
async fn corrupt_value_is_rejected_and_deleted() {
    let server = RedisServer::start();
    let cache = redis_cache(
        server.url(),
        Duration::from_secs(60),
        Duration::from_secs(1),
    );
    let key = Cache::key("v1", "text", &[b"a cat"]);
    let mut conn = server.connection().await;

    // Not a frame at all.
    let _: () = redis::cmd("SET")
        .arg(key.as_str())
        .arg(b"not a frame".as_slice())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(cache.get(&key, expect_shape(&[1, 8])).await, None);
    wait_until_deleted(&server, key.as_str()).await;

    // A real frame with one payload bit flipped.
    cache.put(&key, &Embedding::new(8, 1)).await;
    let mut raw: Vec<u8> = redis::cmd("GET")
        .arg(key.as_str())
        .query_async(&mut conn)
        .await
        .unwrap();
    *raw.last_mut().unwrap() ^= 1;
    let _: () = redis::cmd("SET")
        .arg(key.as_str())
        .arg(raw)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(cache.get(&key, expect_shape(&[1, 8])).await, None);
    wait_until_deleted(&server, key.as_str()).await;

    let stats = cache.stats();
    assert_eq!(
        (stats.hits, stats.misses, stats.rejected, stats.errors),
        (0, 2, 2, 0)
    );
    assert!(stats.healthy);
}

/// A value written for another kind (e.g. an image embedding found under a text key) is refused.
#[tokio::test]
async fn kind_mismatch_is_rejected() {
    let server = RedisServer::start();
    let cache = redis_cache(
        server.url(),
        Duration::from_secs(60),
        Duration::from_secs(1),
    );
    let image = Cache::key("v1", "image", &[b"same bytes"]);
    let text = Cache::key("v1", "text", &[b"same bytes"]);
    cache.put(&image, &Embedding::new(8, 1)).await;

    let mut conn = server.connection().await;
    let raw: Vec<u8> = redis::cmd("GET")
        .arg(image.as_str())
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(text.as_str())
        .arg(raw)
        .query_async(&mut conn)
        .await
        .unwrap();

    assert_eq!(cache.get(&text, expect_shape(&[1, 8])).await, None);
    assert_eq!(cache.stats().rejected, 1);
    wait_until_deleted(&server, text.as_str()).await;
    // The original is untouched.
    assert!(cache.get(&image, expect_shape(&[1, 8])).await.is_some());
}

/// A value the caller's check refuses is rejected and deleted from Redis too.
#[tokio::test]
async fn refused_by_check_is_rejected() {
    let server = RedisServer::start();
    let cache = redis_cache(
        server.url(),
        Duration::from_secs(60),
        Duration::from_secs(1),
    );
    let key = Cache::key("v1", "text", &[b"a cat"]);
    cache.put(&key, &Embedding::new(8, 1)).await;
    assert_eq!(cache.get(&key, expect_shape(&[1, 16])).await, None);
    let stats = cache.stats();
    assert_eq!((stats.misses, stats.rejected), (1, 1));
    wait_until_deleted(&server, key.as_str()).await;
}

/// Killing Redis turns reads into misses and writes into no-ops, quickly; within the retry
/// window Redis is not asked at all; nothing panics.
#[tokio::test]
async fn outage_is_a_quick_miss() {
    let mut server = RedisServer::start();
    let cache = redis_cache(
        server.url(),
        Duration::from_secs(60),
        Duration::from_secs(30),
    );
    let key = Cache::key("v1", "text", &[b"a cat"]);
    cache.put(&key, &Embedding::new(8, 1)).await;
    assert!(cache.get(&key, expect_shape(&[1, 8])).await.is_some());

    server.kill();
    let got = quickly("get during outage", cache.get(&key, expect_shape(&[1, 8]))).await;
    assert_eq!(got, None);
    let stats = cache.stats();
    assert!(!stats.healthy);
    assert_eq!(stats.errors, 1);

    // The breaker is open for 30 s: these return at once and never touch the network.
    for i in 0..20u64 {
        quickly("put during outage", cache.put(&key, &Embedding::new(8, 2))).await;
        let got = quickly("get during outage", cache.get(&key, expect_shape(&[1, 8]))).await;
        assert_eq!(got, None);
        assert_eq!(cache.stats().errors, 1 + 2 * (i + 1));
    }
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.rejected), (1, 21, 0));
    assert!(!stats.healthy);
}

/// A hung Redis (stopped, connections open, no answers) costs one `op_timeout`, then the
/// breaker skips it; once it answers again the cache is healthy again.
#[tokio::test]
async fn hung_server_costs_one_timeout_per_window() {
    let retry_after = Duration::from_millis(500);
    let server = RedisServer::start();
    let cache = redis_cache(server.url(), Duration::from_secs(60), retry_after);
    let key = Cache::key("v1", "text", &[b"a cat"]);
    let value = Embedding::new(8, 1);
    cache.put(&key, &value).await;

    server.signal("STOP");
    let start = Instant::now();
    let got = quickly(
        "get from a hung server",
        cache.get(&key, expect_shape(&[1, 8])),
    )
    .await;
    assert_eq!(got, None);
    assert!(
        start.elapsed() >= RedisConfig::DEFAULT_OP_TIMEOUT,
        "a miss before the timeout: {:?}",
        start.elapsed()
    );
    let skipped = Instant::now();
    for _ in 0..10 {
        assert_eq!(cache.get(&key, expect_shape(&[1, 8])).await, None);
    }
    assert!(
        skipped.elapsed() < RedisConfig::DEFAULT_OP_TIMEOUT,
        "skips waited"
    );
    let stats = cache.stats();
    assert_eq!((stats.errors, stats.misses), (11, 11));
    assert!(!stats.healthy);

    server.signal("CONT");
    tokio::time::sleep(retry_after).await;
    assert_eq!(
        quickly("get after resume", cache.get(&key, expect_shape(&[1, 8]))).await,
        Some(value)
    );
    assert!(cache.stats().healthy);
}

/// After a restart on the same port the cache is used again, within about one retry window.
#[tokio::test]
async fn recovers_after_restart() {
    let retry_after = Duration::from_millis(300);
    let mut server = RedisServer::start();
    let port = server.port();
    let cache = redis_cache(server.url(), Duration::from_secs(60), retry_after);
    let key = Cache::key("v1", "text", &[b"a cat"]);
    let value = Embedding::new(8, 1);

    cache.put(&key, &value).await;
    assert!(cache.get(&key, expect_shape(&[1, 8])).await.is_some());
    server.kill();
    quickly("put during outage", cache.put(&key, &value)).await;
    assert!(!cache.stats().healthy);

    let server = RedisServer::start_on(port);
    tokio::time::sleep(retry_after).await;
    // The first operation after the window probes Redis (and reconnects).
    quickly("put after restart", cache.put(&key, &value)).await;
    assert!(cache.stats().healthy, "{:?}", cache.stats());
    assert_eq!(cache.get(&key, expect_shape(&[1, 8])).await, Some(value));
    drop(server);
}

/// A cache for a port where nothing listens works, as misses, from the first request.
#[tokio::test]
async fn nothing_listening_is_a_miss_from_the_start() {
    let url = format!("redis://127.0.0.1:{}/", free_port());
    let cache = redis_cache(url, Duration::from_secs(60), Duration::from_secs(30));
    assert!(cache.stats().healthy, "healthy until something was tried");
    let key = Cache::key("v1", "text", &[b"a cat"]);

    let got = quickly("first get", cache.get(&key, expect_shape(&[1, 8]))).await;
    assert_eq!(got, None);
    quickly("first put", cache.put(&key, &Embedding::new(8, 1))).await;
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.errors), (0, 1, 2));
    assert!(!stats.healthy);
}

/// Building a Redis cache needs neither a server nor a Tokio runtime; only a bad URL fails.
#[test]
fn construction_is_lazy_and_only_validates_the_url() {
    let url = format!("redis://127.0.0.1:{}/", free_port());
    let cache = Cache::redis(RedisConfig::new(url, Duration::from_secs(1))).unwrap();
    assert_eq!(cache.backend(), "redis");

    let err = Cache::redis(RedisConfig::new(
        "redis://:hunter2@127.0.0.1:notaport/",
        Duration::from_secs(1),
    ))
    .unwrap_err();
    assert!(matches!(err, CacheError::InvalidRedisUrl { .. }));
    assert!(!err.to_string().contains("hunter2"), "{err}");
}
