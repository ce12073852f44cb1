//! API keys on the gateway (`--api-keys FILE`): a [`RequestLayer`] that admits a request only
//! with `authorization: Bearer KEY` of a key in the file, and holds each key to its own limits
//! (requests in flight, images per minute) before the next layer (admission control) is asked.
//!
//! The file holds one key per line, by name and SHA-256, never the key itself, so it is not a
//! secret that opens the gateway (`unclip api-key new NAME` makes a key and its line):
//!
//! ```text
//! # name   sha256 of the key (64 hex digits)                             limits (optional)
//! team-a   9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 max_concurrent=4 images_per_minute=60
//! ```
//!
//! A presented key is hashed and compared with every hash in constant time (`subtle`); a
//! missing and an unknown key get the same UNAUTHENTICATED message. Over a limit is
//! RESOURCE_EXHAUSTED with `retry-after` (seconds) in the trailers. The file is read again on
//! SIGHUP and when it changes; a bad new file is logged and the keys in use stay. Counters per
//! key name (never the key) are in `/metrics`. Health and reflection are not behind keys;
//! `/metrics` is with `--metrics-require-key`.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use unclip_server::metrics::prometheus_client::registry::Registry;
use unclip_server::metrics::{counters, gauges, labels};

use crate::layer::{Capability, Permit, Refusal, RequestContext, RequestLayer};

/// The one answer to a missing or unknown key: it says nothing about which keys exist.
pub const UNAUTHENTICATED: &str =
    "a valid API key is required: send `authorization: Bearer KEY` (metadata or header)";

/// The retry hint when a key has too many requests in flight (when one ends is unknown).
const BUSY_RETRY: Duration = Duration::from_secs(1);

/// A key file that cannot be used: the file, the line and the problem, in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--api-keys {}{}: {problem}", path.display(), line.map(|n| format!(" line {n}")).unwrap_or_default())]
pub struct KeyFileError {
    /// The file.
    pub path: PathBuf,
    /// The line (from 1), when one is at fault.
    pub line: Option<usize>,
    /// What is wrong.
    pub problem: String,
}

/// One key's limits; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyLimits {
    /// Requests of this key in flight at once.
    pub max_concurrent: Option<NonZeroU32>,
    /// Images (or frames) this key may make per minute, as a token bucket holding a minute's
    /// worth.
    pub images_per_minute: Option<NonZeroU32>,
}

/// One line of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    /// How logs and metrics call the key.
    pub name: String,
    /// SHA-256 of the key.
    pub hash: [u8; 32],
    /// Its limits.
    pub limits: KeyLimits,
}

/// Lower-case hex SHA-256 of `key`, as the file holds it.
pub fn key_hash_hex(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Parses the text of a key file read from `path` (which only labels errors).
pub fn parse(path: &Path, text: &str) -> Result<Vec<KeyEntry>, KeyFileError> {
    let mut entries: Vec<KeyEntry> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let bad = |problem: String| KeyFileError {
            path: path.to_owned(),
            line: Some(index + 1),
            problem,
        };
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut fields = line.split_whitespace();
        let name = fields.next().unwrap_or_default().to_string();
        let valid_name = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid_name {
            return Err(bad(format!(
                "the name {name:?} must be letters, digits, '-', '_' or '.'"
            )));
        }
        let hex = fields
            .next()
            .ok_or_else(|| bad(format!("{name}: no SHA-256 after the name")))?;
        let hash = decode_hash(hex).ok_or_else(|| {
            bad(format!(
                "{name}: the SHA-256 must be 64 hex digits (the hash of the key, not the key)"
            ))
        })?;
        let mut limits = KeyLimits::default();
        for field in fields {
            let (option, value) = field
                .split_once('=')
                .ok_or_else(|| bad(format!("{name}: expected option=value, got {field:?}")))?;
            let number = value.parse::<NonZeroU32>().map_err(|_| {
                bad(format!(
                    "{name}: {option} must be a whole number of at least 1, got {value:?}"
                ))
            })?;
            match option {
                "max_concurrent" => limits.max_concurrent = Some(number),
                "images_per_minute" => limits.images_per_minute = Some(number),
                _ => {
                    return Err(bad(format!(
                        "{name}: unknown option {option:?} (max_concurrent, images_per_minute)"
                    )));
                }
            }
        }
        if entries.iter().any(|e| e.name == name) {
            return Err(bad(format!("the name {name} is given twice")));
        }
        if entries.iter().any(|e| e.hash == hash) {
            return Err(bad(format!("{name}: the same key hash is given twice")));
        }
        entries.push(KeyEntry { name, hash, limits });
    }
    Ok(entries)
}

fn decode_hash(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut hash = [0u8; 32];
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(hash)
}

/// The counters of one key name; they outlive reloads (a counter never goes down).
#[derive(Debug, Default)]
struct KeyCounters {
    /// Requests admitted.
    admitted: AtomicU64,
    /// Requests refused for the key's concurrency limit.
    over_concurrency: AtomicU64,
    /// Requests refused for the key's images-per-minute limit.
    over_rate: AtomicU64,
    /// Images (or frames) of admitted requests.
    images: AtomicU64,
    /// Requests of the key in flight now.
    in_flight: AtomicI64,
}

/// A loaded key: its line and the state its limits need.
struct Key {
    entry: KeyEntry,
    /// Slots of `max_concurrent`.
    slots: Option<Arc<Semaphore>>,
    /// The token bucket of `images_per_minute`.
    bucket: Option<DefaultDirectRateLimiter>,
    counters: Arc<KeyCounters>,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("name", &self.entry.name)
            .field("limits", &self.entry.limits)
            .finish()
    }
}

/// Held by an admitted request: its slot and its place in the in-flight gauge.
struct InFlight {
    _slot: Option<OwnedSemaphorePermit>,
    counters: Arc<KeyCounters>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The keys of a file, reloadable, and their counters.
#[derive(Debug)]
pub struct ApiKeys {
    path: PathBuf,
    keys: ArcSwap<Vec<Arc<Key>>>,
    /// Counters by key name, kept across reloads.
    counters: Mutex<HashMap<String, Arc<KeyCounters>>>,
    /// Requests refused for a missing or unknown key.
    unauthenticated: AtomicU64,
}

impl ApiKeys {
    /// Loads the key file at `path`; a file that cannot be read or parsed is an error naming
    /// it (and the line).
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let keys = Self {
            path: path.to_owned(),
            keys: ArcSwap::from_pointee(Vec::new()),
            counters: Mutex::default(),
            unauthenticated: AtomicU64::new(0),
        };
        keys.reload()?;
        Ok(keys)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file again. Keys whose line is unchanged keep their state (requests in
    /// flight, tokens used); new lines start fresh; removed lines stop working at once. On an
    /// error the keys in use stay.
    pub fn reload(&self) -> Result<usize, KeyFileError> {
        let text = std::fs::read_to_string(&self.path).map_err(|e| KeyFileError {
            path: self.path.clone(),
            line: None,
            problem: format!("cannot read: {e}"),
        })?;
        let entries = parse(&self.path, &text)?;
        let old = self.keys.load_full();
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let keys: Vec<Arc<Key>> = entries
            .into_iter()
            .map(|entry| {
                if let Some(same) = old.iter().find(|k| k.entry == entry) {
                    return Arc::clone(same);
                }
                let counters = Arc::clone(counters.entry(entry.name.clone()).or_default());
                Arc::new(Key {
                    slots: entry
                        .limits
                        .max_concurrent
                        .map(|n| Arc::new(Semaphore::new(n.get() as usize))),
                    bucket: entry
                        .limits
                        .images_per_minute
                        .map(|n| RateLimiter::direct(Quota::per_minute(n))),
                    counters,
                    entry,
                })
            })
            .collect();
        let count = keys.len();
        self.keys.store(Arc::new(keys));
        Ok(count)
    }

    /// [`ApiKeys::reload`], logging the outcome.
    pub fn reload_and_log(&self) {
        match self.reload() {
            Ok(count) => {
                tracing::info!(file = %self.path.display(), keys = count, "API keys reloaded")
            }
            Err(e) => tracing::error!(cause = %e, "API keys not reloaded; keeping the ones in use"),
        }
    }

    /// The key presented as `bearer`, compared by hash in constant time with every key.
    fn find(&self, bearer: Option<&str>) -> Option<Arc<Key>> {
        let hash = Sha256::digest(bearer?.as_bytes());
        let keys = self.keys.load();
        let mut found = None;
        for key in keys.iter() {
            if bool::from(key.entry.hash.ct_eq(hash.as_slice())) {
                found = Some(Arc::clone(key));
            }
        }
        found
    }

    /// Whether `authorization` (a header value) carries a valid key (for `/metrics`).
    pub fn accepts(&self, authorization: Option<&str>) -> bool {
        let bearer = authorization.and_then(crate::layer::Caller::bearer_of);
        self.find(bearer.as_deref()).is_some()
    }

    /// Checks `request`'s key and the key's limits; the permit holds its slot.
    fn check(&self, request: &RequestContext) -> Result<Permit, Refusal> {
        let Some(key) = self.find(request.caller.bearer.as_deref()) else {
            self.unauthenticated.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Unauthenticated(UNAUTHENTICATED.into()));
        };
        let counters = &key.counters;
        // GetInfo and GetStats need a key but use none of its limits.
        if matches!(request.capability, Capability::Info | Capability::Stats) {
            return Ok(Permit::free());
        }
        let slot = match &key.slots {
            None => None,
            Some(slots) => match Arc::clone(slots).try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(_) => {
                    counters.over_concurrency.fetch_add(1, Ordering::Relaxed);
                    let limit = key.entry.limits.max_concurrent.map_or(0, NonZeroU32::get);
                    return Err(Refusal::ResourceExhausted {
                        message: format!(
                            "API key {}: {limit} requests in flight, its limit is {limit}",
                            key.entry.name
                        ),
                        retry_after: Some(BUSY_RETRY),
                    });
                }
            },
        };
        let images = request.cost.images.max(1);
        if let Some(bucket) = &key.bucket {
            let per_minute = key
                .entry
                .limits
                .images_per_minute
                .map_or(0, NonZeroU32::get);
            let refuse = |retry_after: Option<Duration>, message: String| {
                counters.over_rate.fetch_add(1, Ordering::Relaxed);
                Err(Refusal::ResourceExhausted {
                    message,
                    retry_after,
                })
            };
            let n = NonZeroU32::new(images).unwrap_or(NonZeroU32::MIN);
            match bucket.check_n(n) {
                Ok(Ok(())) => {}
                Ok(Err(not_until)) => {
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    return refuse(
                        Some(wait.max(Duration::from_millis(1))),
                        format!(
                            "API key {}: over its {per_minute} images per minute",
                            key.entry.name
                        ),
                    );
                }
                Err(_) => {
                    return refuse(
                        None,
                        format!(
                            "API key {}: {images} images in one request is more than its \
                             {per_minute} images per minute",
                            key.entry.name
                        ),
                    );
                }
            }
        }
        counters.admitted.fetch_add(1, Ordering::Relaxed);
        counters
            .images
            .fetch_add(u64::from(images), Ordering::Relaxed);
        counters.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(Permit::holding(InFlight {
            _slot: slot,
            counters: Arc::clone(counters),
        }))
    }

    /// Registers the per-key counters (labelled by key name, never the key).
    pub fn register(&self, registry: &mut Registry) {
        let rows: Vec<(String, Arc<KeyCounters>)> = self
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(name, c)| (name.clone(), Arc::clone(c)))
            .collect();
        let outcome = |name: &str, outcome: &str, value: u64| {
            (labels([("key", name), ("outcome", outcome)]), value)
        };
        counters(
            registry,
            "unclip_gateway_key_requests",
            "Requests by API key name and outcome of the key's limits (admitted, over_concurrency, over_rate).",
            rows.iter().flat_map(|(name, c)| {
                [
                    outcome(name, "admitted", c.admitted.load(Ordering::Relaxed)),
                    outcome(
                        name,
                        "over_concurrency",
                        c.over_concurrency.load(Ordering::Relaxed),
                    ),
                    outcome(name, "over_rate", c.over_rate.load(Ordering::Relaxed)),
                ]
            }),
        );
        counters(
            registry,
            "unclip_gateway_key_images",
            "Images (or frames) of admitted requests, by API key name.",
            rows.iter()
                .map(|(name, c)| (labels([("key", name)]), c.images.load(Ordering::Relaxed))),
        );
        gauges(
            registry,
            "unclip_gateway_key_in_flight",
            "Requests in flight, by API key name.",
            rows.iter()
                .map(|(name, c)| (labels([("key", name)]), c.in_flight.load(Ordering::Relaxed))),
        );
        counters(
            registry,
            "unclip_gateway_unauthenticated",
            "Requests refused for a missing or unknown API key.",
            [(labels([]), self.unauthenticated.load(Ordering::Relaxed))],
        );
    }
}

/// `GET /metrics` answering only requests with a valid key (`--metrics-require-key`);
/// 401 otherwise.
pub fn metrics_route(keys: Arc<ApiKeys>, metrics: unclip_server::metrics::Metrics) -> axum::Router {
    use axum::http::{StatusCode, header};
    let scrape = move |headers: axum::http::HeaderMap| {
        let allowed = keys.accepts(
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        );
        let text = allowed.then(|| metrics.render());
        async move {
            match text {
                Some(text) => (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, unclip_server::metrics::CONTENT_TYPE)],
                    text,
                ),
                None => (
                    StatusCode::UNAUTHORIZED,
                    [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                    format!("{UNAUTHENTICATED}\n"),
                ),
            }
        }
    };
    axum::Router::new().route("/metrics", axum::routing::get(scrape))
}

/// The key layer: checks the key and its limits, then asks `then` (e.g. admission control)
/// and holds both permits.
#[derive(Debug)]
pub struct KeyLayer {
    /// The keys.
    pub keys: Arc<ApiKeys>,
    /// The layer asked after the key is accepted.
    pub then: Arc<dyn RequestLayer>,
}

#[tonic::async_trait]
impl RequestLayer for KeyLayer {
    async fn admit(&self, request: &RequestContext) -> Result<Permit, Refusal> {
        let key = self.keys.check(request)?;
        let next = self.then.admit(request).await?;
        Ok(Permit::holding((key, next)))
    }
}

#[cfg(test)]
mod tests;
