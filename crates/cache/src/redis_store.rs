//! The Redis backend: every operation bounded by a timeout, and a circuit breaker so that an
//! outage costs at most one timeout per `retry_after` window instead of one per request.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use redis::RedisResult;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;

use crate::CacheError;

/// Settings of the Redis backend ([`crate::Cache::redis`]).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// Where Redis listens, e.g. `redis://127.0.0.1:6379/`. May carry a password; it is
    /// redacted wherever the config is printed.
    pub url: String,
    /// How long an entry lives after it was written (`SET ... PX`); at least 1 ms is used.
    pub ttl: Duration,
    /// Upper bound on one operation, connecting included: a slow Redis turns into a miss
    /// after this long instead of stalling the request.
    pub op_timeout: Duration,
    /// After a failure, Redis is not asked again for this long; operations in that window
    /// are skipped (misses, no-ops) without waiting.
    pub retry_after: Duration,
}

impl RedisConfig {
    /// Default for [`RedisConfig::op_timeout`].
    pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_millis(250);
    /// Default for [`RedisConfig::retry_after`].
    pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

    /// A config for `url` with entries living `ttl`, a 250 ms operation timeout and a 1 s
    /// retry window.
    pub fn new(url: impl Into<String>, ttl: Duration) -> Self {
        Self {
            url: url.into(),
            ttl,
            op_timeout: Self::DEFAULT_OP_TIMEOUT,
            retry_after: Self::DEFAULT_RETRY_AFTER,
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("ttl", &self.ttl)
            .field("op_timeout", &self.op_timeout)
            .field("retry_after", &self.retry_after)
            .finish()
    }
}

/// `url` with the password of its user info, if any, replaced by `***`.
pub(crate) fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let authority_start = scheme_end + 3;
    let authority_end = url[authority_start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| authority_start + i);
    let authority = &url[authority_start..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let Some(colon) = authority[..at].find(':') else {
        return url.to_owned();
    };
    let password_start = authority_start + colon + 1;
    let password_end = authority_start + at;
    format!("{}***{}", &url[..password_start], &url[password_end..])
}

/// A Redis connection behind a timeout and a circuit breaker.
pub(crate) struct RedisStore {
    /// Validated at construction; the connection manager is made from it on first use.
    client: redis::Client,
    /// Created lazily on the first operation, because creating it spawns a task and so needs
    /// a Tokio runtime, which [`crate::Cache::redis`] (a plain fn) may be called without. A
    /// std mutex: it is only held to clone or create the manager, never across an `.await`.
    connection: Mutex<Option<ConnectionManager>>,
    /// The URL with the password redacted, for logs and `Debug`.
    url: String,
    /// Entry lifetime in milliseconds, at least 1 (`PX 0` is an error).
    ttl_ms: u64,
    /// Bound on one operation.
    op_timeout: Duration,
    /// How long the breaker stays open after a failure.
    retry_after: Duration,
    /// When the breaker lets the next probe through; `None` while closed (Redis answering).
    open_until: Mutex<Option<Instant>>,
    /// Whether the last attempted operation succeeded.
    healthy: AtomicBool,
    /// Failed, timed-out and skipped operations.
    errors: AtomicU64,
}

impl RedisStore {
    /// Validates `config.url`; connects nothing.
    pub(crate) fn new(config: &RedisConfig) -> Result<Self, CacheError> {
        let url = redact_url(&config.url);
        let client =
            redis::Client::open(config.url.as_str()).map_err(|e| CacheError::InvalidRedisUrl {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let ttl_ms = u64::try_from(config.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        Ok(Self {
            client,
            connection: Mutex::new(None),
            url,
            ttl_ms,
            op_timeout: config.op_timeout,
            retry_after: config.retry_after,
            open_until: Mutex::new(None),
            healthy: AtomicBool::new(true),
            errors: AtomicU64::new(0),
        })
    }

    /// Whether the last attempted operation succeeded (true before the first).
    pub(crate) fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Failed, timed-out and skipped operations so far.
    pub(crate) fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// The value under `key`; `None` when absent and when Redis failed or was skipped.
    pub(crate) async fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.run("GET", |mut conn| async move {
            // `AsyncCommands` is only used fully qualified: with `AsyncTypedCommands` in scope
            // too, `get` would be ambiguous, and the typed one returns `Option<String>`.
            let value: Option<Vec<u8>> = redis::AsyncCommands::get(&mut conn, key).await?;
            Ok(value)
        })
        .await
        .flatten()
    }

    /// Stores `value` under `key` with the configured TTL; failures are only counted.
    pub(crate) async fn put(&self, key: &str, value: &[u8]) {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value).arg("PX").arg(self.ttl_ms);
        let cmd = &cmd;
        self.run("SET", |mut conn| async move {
            cmd.query_async::<()>(&mut conn).await
        })
        .await;
    }

    /// Deletes `key`; failures are only counted.
    pub(crate) async fn remove(&self, key: &str) {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(key);
        let cmd = &cmd;
        self.run("DEL", |mut conn| async move {
            cmd.query_async::<()>(&mut conn).await
        })
        .await;
    }

    /// Runs one operation through the breaker and the timeout. `None` when it was skipped,
    /// failed or timed out (all counted in `errors`).
    async fn run<T, F, Fut>(&self, op: &'static str, attempt: F) -> Option<T>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        if !self.admit() {
            // The breaker is open: do not touch the network at all.
            self.errors.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(op, "redis cache skipped (circuit open)");
            return None;
        }
        let conn = match self.connection_manager() {
            Ok(conn) => conn,
            Err(e) => {
                self.failed(op, &e);
                return None;
            }
        };
        let attempts = async {
            match attempt(conn.clone()).await {
                // The manager reports a dead connection once, then reconnects in the
                // background; one more try (within the same timeout) awaits that reconnect,
                // so a restarted Redis is used again at the first probe.
                Err(e) if e.is_io_error() || e.is_unrecoverable_error() => {
                    tracing::trace!(op, error = %e, "redis cache retrying once on a new connection");
                    attempt(conn).await
                }
                other => other,
            }
        };
        match tokio::time::timeout(self.op_timeout, attempts).await {
            Ok(Ok(value)) => {
                self.succeeded();
                Some(value)
            }
            Ok(Err(e)) => {
                self.failed(op, &e);
                None
            }
            Err(_) => {
                self.failed(op, &format_args!("timed out after {:?}", self.op_timeout));
                None
            }
        }
    }

    /// Whether an operation may go to Redis now. When the retry window has passed, the caller
    /// becomes the probe and the window is pushed forward, so concurrent requests keep
    /// skipping until the probe has answered.
    fn admit(&self) -> bool {
        let mut open_until = self
            .open_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match *open_until {
            None => true,
            Some(until) => {
                let now = Instant::now();
                if now < until {
                    false
                } else {
                    *open_until = Some(now + self.retry_after);
                    true
                }
            }
        }
    }

    /// The shared connection manager, created (without connecting) on first use.
    fn connection_manager(&self) -> RedisResult<ConnectionManager> {
        let mut slot = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        // No retries inside the manager: the breaker decides when to try again. Its own
        // timeouts match ours so that a hung socket is also dropped on its side.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.op_timeout))
            .set_response_timeout(Some(self.op_timeout))
            .set_number_of_retries(0)
            .set_max_delay(self.op_timeout);
        let conn = ConnectionManager::new_lazy_with_config(self.client.clone(), config)?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Records an answered operation: closes the breaker.
    fn succeeded(&self) {
        *self
            .open_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        if !self.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!(url = %self.url, "redis cache answers again");
        }
    }

    /// Records a failed operation: counts it and opens the breaker for `retry_after`.
    fn failed(&self, op: &'static str, error: &dyn fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self
            .open_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + self.retry_after);
        if self.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                url = %self.url,
                op,
                error = %error,
                retry_after = ?self.retry_after,
                "redis cache unavailable; serving without it"
            );
        } else {
            tracing::debug!(url = %self.url, op, error = %error, "redis cache still unavailable");
        }
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.url)
            .field("ttl_ms", &self.ttl_ms)
            .field("op_timeout", &self.op_timeout)
            .field("retry_after", &self.retry_after)
            .field("healthy", &self.healthy())
            .field("errors", &self.errors())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("redis://user:s3cret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(
            redact_url("redis://:s3cret@host:6379"),
            "redis://:***@host:6379"
        );
        assert_eq!(redact_url("redis://host:6379/"), "redis://host:6379/");
        assert_eq!(redact_url("redis://user@host"), "redis://user@host");
        assert_eq!(redact_url("not a url"), "not a url");
        let config = RedisConfig::new("redis://:s3cret@host/", Duration::from_secs(1));
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn new_uses_the_documented_defaults() {
        let config = RedisConfig::new("redis://127.0.0.1/", Duration::from_secs(60));
        assert_eq!(config.op_timeout, Duration::from_millis(250));
        assert_eq!(config.retry_after, Duration::from_secs(1));
        assert_eq!(config.ttl, Duration::from_secs(60));
    }

    #[test]
    fn malformed_urls_are_configuration_errors() {
        for url in [
            "",
            "not a url",
            "http://127.0.0.1/",
            "redis://127.0.0.1:notaport/",
        ] {
            let config = RedisConfig::new(url, Duration::from_secs(1));
            assert!(RedisStore::new(&config).is_err(), "{url:?} was accepted");
        }
    }

    #[test]
    fn construction_needs_no_runtime_and_no_server() {
        // Port 1 on loopback: nothing listens; nothing is contacted either.
        let config = RedisConfig::new("redis://127.0.0.1:1/", Duration::from_secs(1));
        let store = RedisStore::new(&config).unwrap();
        assert!(store.healthy());
        assert_eq!(store.errors(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_skips_until_the_window_passes_then_lets_one_probe_through() {
        let mut config = RedisConfig::new("redis://127.0.0.1:1/", Duration::from_secs(1));
        config.retry_after = Duration::from_secs(5);
        let store = RedisStore::new(&config).unwrap();
        assert!(store.admit());
        store.failed("GET", &"boom");
        assert!(!store.healthy());
        assert!(!store.admit());
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(!store.admit());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(store.admit(), "the window has passed: one probe");
        assert!(!store.admit(), "only one probe per window");
        store.succeeded();
        assert!(store.healthy());
        assert!(store.admit());
        assert!(store.admit());
    }
}
