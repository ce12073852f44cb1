//! The request-level layer hook every transport shares: [`RequestContext`] (who asks for what,
//! until when, at what cost), [`RequestLayer`] (admits a request or refuses it), [`Permit`] (held
//! for the request's life) and [`Refusal`] (why not, mapped to a status by each transport).
//!
//! [`Core`](crate::api::Core) asks its layer before it runs any capability, with the context the
//! transport filled in (the bearer token, the peer) and the core completed (the capability, the
//! deadline, the cost). The permit it gets back is dropped when the request ends: when the
//! response is made, when a stream sends its last event, or when the client goes away (the
//! unary future or the stream is dropped). A layer that counts requests in flight therefore
//! only needs to count permits: an `OwnedSemaphorePermit` in [`Permit::holding`] is a
//! concurrency limit.
//!
//! The default, [`AdmitAll`], admits everything. API keys, per-key limits and admission control
//! (issue 11) are layers; several compose by [`Chain`], which asks each in turn and holds all
//! their permits in its own. A permit may also carry what to do when the request succeeds
//! ([`Permit::on_success`]): admission control learns how long work takes from successes only.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

/// A capability of the gateway, as a layer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Capability {
    /// `Generate` / `GenerateStream`.
    Generate,
    /// `Vary` / `VaryStream`.
    Vary,
    /// `Interpolate` / `InterpolateStream`.
    Interpolate,
    /// `TextDiff` / `TextDiffStream`.
    TextDiff,
    /// `Inpaint` / `InpaintStream`.
    Inpaint,
    /// `GetInfo`.
    Info,
    /// `GetStats`.
    Stats,
}

impl Capability {
    /// The name in counters, metrics and logs: `generate`, `vary`, `interpolate`, `text_diff`,
    /// `inpaint`, `info`, `stats`.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Generate => "generate",
            Capability::Vary => "vary",
            Capability::Interpolate => "interpolate",
            Capability::TextDiff => "text_diff",
            Capability::Inpaint => "inpaint",
            Capability::Info => "info",
            Capability::Stats => "stats",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a transport knows of the caller: filled in by the adapter (gRPC metadata, HTTP headers,
/// the connection), passed to every [`Core`](crate::api::Core) method.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// The credential presented: the `KEY` of `authorization: Bearer KEY`, as sent. `None` when
    /// the caller sent none.
    pub bearer: Option<String>,
    /// The peer's address, when the transport knows it.
    pub peer: Option<SocketAddr>,
    /// When the caller stops waiting (gRPC `grpc-timeout`, an HTTP header), if it said.
    pub deadline: Option<Instant>,
}

impl Caller {
    /// The token of an `authorization` header value `Bearer KEY` (the scheme in any case, as
    /// RFC 7235 has it); `None` for another scheme or an empty token.
    pub fn bearer_of(authorization: &str) -> Option<String> {
        let (scheme, token) = authorization.trim().split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_string())
    }
}

/// The work a request asks for, in the units of issue 11's budget: `images × best_of × steps`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    /// Images (or frames) the request makes.
    pub images: u32,
    /// Prior candidates per image (best-of-k; 1 without).
    pub best_of: u32,
    /// Denoising steps per image across its stage calls: prior, inversion, decoder and every
    /// upsampler stage, the model's defaults where the request leaves them unset.
    pub steps: u32,
}

impl Cost {
    /// `images × best_of × steps` (saturating); 0 for GetInfo and GetStats.
    pub fn units(&self) -> u64 {
        u64::from(self.images)
            .saturating_mul(u64::from(self.best_of))
            .saturating_mul(u64::from(self.steps))
    }
}

/// Everything a layer is told about one request before it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    /// Which capability.
    pub capability: Capability,
    /// Whether the caller gets a stream of events (the `...Stream` calls, HTTP `stream`).
    pub streaming: bool,
    /// Who asks, as the transport saw it.
    pub caller: Caller,
    /// The request's deadline: the caller's, bounded by the gateway's request timeout.
    pub deadline: Instant,
    /// What it would cost (the fields as sent, before validation).
    pub cost: Cost,
}

/// Why a layer refused a request. Each transport maps it to its own answer (gRPC: the code
/// named; HTTP: 401, 403, 429, 504, 503).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No credential, or one that is not valid. Say nothing about which exist.
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid caller that may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// Over a limit; try again later, after `retry_after` when known.
    #[error("{message}")]
    ResourceExhausted {
        /// What limit.
        message: String,
        /// When trying again can succeed.
        retry_after: Option<Duration>,
    },
    /// The deadline cannot be met (e.g. given the queue ahead).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The gateway cannot take requests now (e.g. draining).
    #[error("{0}")]
    Unavailable(String),
    /// The request can never be admitted as it is (e.g. over the per-request cost budget):
    /// the message starts with the field, as [`Error::Invalid`](crate::Error::Invalid)'s.
    #[error("{0}")]
    InvalidArgument(String),
}

/// What an admitted request holds until it ends; dropping it gives back what it held.
#[derive(Default)]
pub struct Permit {
    /// Whatever the layers want released with the request (semaphore permits, a counter guard),
    /// dropped in order.
    held: Vec<Box<dyn Send + Sync>>,
    /// Run by [`Permit::succeeded`], in order, before `held` is dropped.
    on_success: Vec<Box<dyn FnOnce() + Send + Sync>>,
}

impl Permit {
    /// A permit that holds nothing.
    pub fn free() -> Self {
        Self::default()
    }

    /// A permit that holds `value` until the request ends.
    pub fn holding(value: impl Send + Sync + 'static) -> Self {
        Self {
            held: vec![Box::new(value)],
            on_success: Vec::new(),
        }
    }

    /// The same, running `hook` if the request ends with a response (not an error, not
    /// cancelled): before what the permit holds is released.
    pub fn on_success(mut self, hook: impl FnOnce() + Send + Sync + 'static) -> Self {
        self.on_success.push(Box::new(hook));
        self
    }

    /// The same, also holding everything `other` holds (released after this permit's own).
    pub fn join(mut self, other: Permit) -> Self {
        let Permit {
            held, on_success, ..
        } = other;
        self.held.extend(held);
        self.on_success.extend(on_success);
        self
    }

    /// Ends a request that succeeded: runs the success hooks, then releases what it held.
    /// Dropping the permit instead ends it without them (an error, a cancellation).
    pub fn succeeded(mut self) {
        for hook in std::mem::take(&mut self.on_success) {
            hook();
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("holds", &self.held.len())
            .field("on_success", &self.on_success.len())
            .finish()
    }
}

/// Admits or refuses requests before they run; shared by every transport.
#[tonic::async_trait]
pub trait RequestLayer: Send + Sync + fmt::Debug {
    /// A permit for `request`, held until it ends, or why not. Waiting here (e.g. in a queue)
    /// is allowed; the request's deadline is in the context.
    async fn admit(&self, request: &RequestContext) -> Result<Permit, Refusal>;
}

/// The default layer: admits every request.
#[derive(Debug, Clone, Copy, Default)]
pub struct AdmitAll;

#[tonic::async_trait]
impl RequestLayer for AdmitAll {
    async fn admit(&self, _request: &RequestContext) -> Result<Permit, Refusal> {
        Ok(Permit::free())
    }
}

/// Several layers asked in turn, first to last: the first refusal is the answer (the permits
/// already given are released); otherwise the permit holds all of theirs, released in the
/// same order. Put the cheap checks that say who the caller is (API keys) before the ones that
/// queue (admission control), so an unknown caller never takes a place in the queue.
#[derive(Debug, Clone, Default)]
pub struct Chain {
    /// The layers, in the order they are asked.
    layers: Vec<std::sync::Arc<dyn RequestLayer>>,
}

impl Chain {
    /// No layers: admits everything, as [`AdmitAll`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The same, asking `layer` after the ones already in it.
    pub fn then(mut self, layer: std::sync::Arc<dyn RequestLayer>) -> Self {
        self.layers.push(layer);
        self
    }
}

#[tonic::async_trait]
impl RequestLayer for Chain {
    async fn admit(&self, request: &RequestContext) -> Result<Permit, Refusal> {
        let mut permit = Permit::free();
        for layer in &self.layers {
            permit = permit.join(layer.admit(request).await?);
        }
        Ok(permit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        assert_eq!(Caller::bearer_of("Bearer abc"), Some("abc".into()));
        assert_eq!(Caller::bearer_of("bearer  abc "), Some("abc".into()));
        assert_eq!(Caller::bearer_of("Basic abc"), None);
        assert_eq!(Caller::bearer_of("Bearer "), None);
        assert_eq!(Caller::bearer_of("abc"), None);
    }

    #[test]
    fn costs() {
        let cost = Cost {
            images: 4,
            best_of: 2,
            steps: 100,
        };
        assert_eq!(cost.units(), 800);
        assert_eq!(Cost::default().units(), 0);
        let most = Cost {
            images: u32::MAX,
            best_of: u32::MAX,
            steps: u32::MAX,
        };
        assert_eq!(most.units(), u64::MAX, "saturates, never wraps");
    }

    /// A layer that logs what happens to its permits into a shared journal.
    #[derive(Debug)]
    struct Journal {
        name: &'static str,
        refuse: bool,
        log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    }

    struct Logged(&'static str, std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl Drop for Logged {
        fn drop(&mut self) {
            self.1.lock().unwrap().push(format!("{} released", self.0));
        }
    }

    #[tonic::async_trait]
    impl RequestLayer for Journal {
        async fn admit(&self, _request: &RequestContext) -> Result<Permit, Refusal> {
            self.log
                .lock()
                .unwrap()
                .push(format!("{} asked", self.name));
            if self.refuse {
                return Err(Refusal::Unauthenticated(format!("{} says no", self.name)));
            }
            let (name, log) = (self.name, std::sync::Arc::clone(&self.log));
            let hook_log = std::sync::Arc::clone(&self.log);
            Ok(Permit::holding(Logged(name, log))
                .on_success(move || hook_log.lock().unwrap().push(format!("{name} succeeded"))))
        }
    }

    fn context() -> RequestContext {
        RequestContext {
            capability: Capability::Generate,
            streaming: false,
            caller: Caller::default(),
            deadline: Instant::now(),
            cost: Cost::default(),
        }
    }

    /// A chain asks its layers in order and holds every permit; success hooks run before the
    /// releases; a refusal stops the chain and releases the permits already given.
    #[tokio::test]
    async fn chains_ask_in_order_and_hold_every_permit() {
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let layer = |name, refuse| -> std::sync::Arc<dyn RequestLayer> {
            std::sync::Arc::new(Journal {
                name,
                refuse,
                log: std::sync::Arc::clone(&log),
            })
        };
        let chain = Chain::new()
            .then(layer("keys", false))
            .then(layer("queue", false));
        let permit = chain.admit(&context()).await.unwrap();
        assert_eq!(*log.lock().unwrap(), ["keys asked", "queue asked"]);
        permit.succeeded();
        assert_eq!(
            log.lock().unwrap()[2..],
            [
                "keys succeeded",
                "queue succeeded",
                "keys released",
                "queue released"
            ]
        );

        log.lock().unwrap().clear();
        let chain = Chain::new()
            .then(layer("keys", false))
            .then(layer("queue", true))
            .then(layer("never", false));
        let refusal = chain.admit(&context()).await.unwrap_err();
        assert_eq!(refusal, Refusal::Unauthenticated("queue says no".into()));
        assert_eq!(
            *log.lock().unwrap(),
            ["keys asked", "queue asked", "keys released"]
        );

        log.lock().unwrap().clear();
        drop(
            Chain::new()
                .then(layer("keys", false))
                .admit(&context())
                .await
                .unwrap(),
        );
        assert_eq!(
            *log.lock().unwrap(),
            ["keys asked", "keys released"],
            "no success hook"
        );
        assert!(Chain::new().admit(&context()).await.is_ok());
    }
}
