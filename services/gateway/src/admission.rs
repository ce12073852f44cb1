//! Admission control: a [`RequestLayer`] that bounds what the gateway takes on, so that under
//! overload it answers at once instead of slowly timing out everything.
//!
//! Three checks, in order, each answered at once:
//!
//! 1. **Cost budget** (`--max-request-cost`): a request whose cost (`images × best_of ×
//!    steps`, see [`Cost`]) is over the budget can never be served as it is, so it is refused
//!    with INVALID_ARGUMENT naming the `cost`, its factors and the limit. Not
//!    RESOURCE_EXHAUSTED: retrying the same request would never succeed. The budget is checked
//!    before the request's fields are validated (the layer runs first), so a request with an
//!    out-of-range count may be refused by its cost; 0 turns the budget off.
//! 2. **Slots and queue** (`--max-concurrent-requests`, `--max-queued-requests`): at most that
//!    many requests run; the next ones wait in a FIFO queue of bounded length; past both, the
//!    request is refused with RESOURCE_EXHAUSTED and a `retry-after` hint (the time the queue
//!    ahead is expected to take, at least a second).
//! 3. **Deadline**: if the estimated wait for the queue ahead plus the request's own run would
//!    end after its deadline, it is refused with DEADLINE_EXCEEDED instead of taking a place
//!    (for a request given a free slot, its own run alone, at the pace of the requests it
//!    joins). A request that waits and still reaches its deadline in the queue gets
//!    DEADLINE_EXCEEDED then.
//!
//! The estimate ([`Estimate`]) is learned from the requests that succeeded (and from those
//! that failed after running longer than it said, as a lower bound): an EWMA of the
//! seconds per unit of cost each took, and an EWMA of how many requests ran beside it (the
//! time-average of the requests in flight over its life). Work ahead drains at
//! `parallelism / seconds_per_cost` units per second: the queue's cost is divided by the
//! concurrency actually served in parallel, not summed as if requests ran one by one (which
//! overestimates waits by that factor and sheds requests that would have made it). Until a
//! first success there is no estimate and no request is refused for its deadline.
//!
//! What `/metrics` reports ([`Admission::metrics`]): requests in flight, queue depth, shed
//! requests by reason and the seconds admitted requests waited in the queue.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use tokio::sync::oneshot;
use tokio::time::Instant;
use unclip_server::metrics::prometheus_client::metrics::histogram::{
    Histogram, exponential_buckets,
};
use unclip_server::metrics::prometheus_client::registry::Registry;
use unclip_server::metrics::{Labels, counters, gauges, labels};

use crate::layer::{Capability, Cost, Permit, Refusal, RequestContext, RequestLayer};

/// The weight of a new sample in the EWMAs of [`Estimate`].
const EWMA_WEIGHT: f64 = 0.2;

/// The smallest `retry-after` hint.
const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Admission control flags, flattened into the gateway's `Config`.
#[derive(Debug, Clone, Args)]
pub struct AdmissionArgs {
    /// Largest cost one request may have, in units of images × best_of × steps (every stage's
    /// steps, the model's defaults where unset); a costlier request is refused with
    /// INVALID_ARGUMENT naming its cost and this limit. 0: no budget.
    #[arg(long, env = "UNCLIP_MAX_REQUEST_COST", default_value_t = 0)]
    pub max_request_cost: u64,

    /// Most image requests run at once; more wait in the queue. 0: no limit (and no queue).
    #[arg(long, env = "UNCLIP_MAX_CONCURRENT_REQUESTS", default_value_t = 32)]
    pub max_concurrent_requests: usize,

    /// Most image requests waiting for a place to run (first come, first served); past it a
    /// request is refused at once with RESOURCE_EXHAUSTED and a retry-after hint.
    #[arg(long, env = "UNCLIP_MAX_QUEUED_REQUESTS", default_value_t = 64)]
    pub max_queued_requests: usize,
}

impl Default for AdmissionArgs {
    fn default() -> Self {
        Self {
            max_request_cost: 0,
            max_concurrent_requests: 32,
            max_queued_requests: 64,
        }
    }
}

/// Why a request was shed, as `/metrics` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Shed {
    /// Over the per-request cost budget.
    Cost = 0,
    /// Every slot taken and the queue full.
    QueueFull = 1,
    /// The deadline could not be met given the queue ahead (refused on arrival).
    Deadline = 2,
    /// The deadline passed while waiting in the queue.
    DeadlineInQueue = 3,
}

impl Shed {
    /// Every reason, in label order.
    pub const ALL: [Shed; 4] = [
        Shed::Cost,
        Shed::QueueFull,
        Shed::Deadline,
        Shed::DeadlineInQueue,
    ];

    /// The `reason` label.
    pub fn name(self) -> &'static str {
        match self {
            Shed::Cost => "cost",
            Shed::QueueFull => "queue_full",
            Shed::Deadline => "deadline",
            Shed::DeadlineInQueue => "deadline_in_queue",
        }
    }
}

/// What the layer has learned of how long work takes, from the requests that succeeded.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Estimate {
    /// EWMA of a request's seconds per unit of cost, as it ran beside the others; `None`
    /// before the first success.
    pub seconds_per_cost: Option<f64>,
    /// EWMA of the requests in flight (time-averaged) over each request's life: how many
    /// requests the stages actually serve in parallel.
    pub parallelism: f64,
}

impl Estimate {
    /// Adds a success of `cost` units that took `seconds`, with `parallelism` requests in
    /// flight on average meanwhile.
    fn learn(&mut self, cost: u64, seconds: f64, parallelism: f64) {
        if cost == 0 || !seconds.is_finite() || seconds <= 0.0 {
            return;
        }
        let per_cost = seconds / cost as f64;
        let ewma = |old: f64, new: f64| old + EWMA_WEIGHT * (new - old);
        match self.seconds_per_cost {
            None => {
                self.seconds_per_cost = Some(per_cost);
                self.parallelism = parallelism.max(1.0);
            }
            Some(old) => {
                self.seconds_per_cost = Some(ewma(old, per_cost));
                self.parallelism = ewma(self.parallelism, parallelism.max(1.0));
            }
        }
    }

    /// How long `ahead` units of queued (or remaining) work take to drain when the stages
    /// serve `parallelism` requests at once (at most `slots`), and how long `own` units then
    /// take; `None` without an estimate.
    pub fn wait_and_run(&self, ahead: f64, own: u64, slots: usize) -> Option<(Duration, Duration)> {
        let per_cost = self.seconds_per_cost?;
        let parallel = self.parallelism.clamp(1.0, slots.max(1) as f64);
        let wait = ahead * per_cost / parallel;
        let run = own as f64 * per_cost;
        Some((secs(wait), secs(run)))
    }
}

/// `seconds` as a duration (0 for negative or not finite ones, capped at a day).
fn secs(seconds: f64) -> Duration {
    if seconds.is_finite() && seconds > 0.0 {
        Duration::from_secs_f64(seconds.min(86_400.0))
    } else {
        Duration::ZERO
    }
}

/// A request waiting for a slot.
struct Waiter {
    /// Identifies it for removal.
    id: u64,
    /// Its cost units.
    cost: u64,
    /// Told when a slot is handed to it.
    wake: oneshot::Sender<()>,
}

/// Everything under the lock.
struct State {
    /// Requests holding a slot.
    in_flight: usize,
    /// Their cost units.
    in_flight_cost: u64,
    /// Requests waiting, first come first.
    queue: VecDeque<Waiter>,
    /// Their cost units.
    queued_cost: u64,
    /// The next waiter's id.
    next_id: u64,
    /// `∫ in_flight dt` in request-seconds since the layer was made, up to `area_at`.
    area: f64,
    /// When `area` was last brought up to date.
    area_at: Instant,
    /// What has been learned.
    estimate: Estimate,
}

impl State {
    /// Brings `area` up to now; call before changing `in_flight`.
    fn advance(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.area_at).as_secs_f64();
        self.area += self.in_flight as f64 * dt;
        self.area_at = now;
    }

    /// Work ahead of a new arrival, in cost units: the whole queue and, on average, half of
    /// what is running.
    fn ahead(&self) -> f64 {
        self.queued_cost as f64 + self.in_flight_cost as f64 / 2.0
    }
}

/// The counters `/metrics` reports.
struct Counters {
    /// Shed requests by [`Shed`] reason.
    shed: [AtomicU64; 4],
    /// Seconds admitted requests waited for a slot (0 for those that did not wait).
    queue_wait: Histogram,
}

/// The state of an [`Admission`] layer.
struct Inner {
    /// The limits.
    config: AdmissionArgs,
    /// Slots, queue and estimate.
    state: Mutex<State>,
    /// For `/metrics`.
    counters: Counters,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A snapshot of the layer, for tests and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snapshot {
    /// Requests holding a slot.
    pub in_flight: usize,
    /// Requests waiting.
    pub queued: usize,
    /// What has been learned.
    pub estimate: Estimate,
}

/// A slot held by an admitted request: released on drop, handing it to the next waiter.
struct SlotGuard {
    admission: Arc<Inner>,
    cost: u64,
    /// Learns from a request that did not succeed (see [`Inner::permit`]).
    on_failure: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Some(learn) = self.on_failure.take() {
            learn();
        }
        self.admission.release(self.cost);
    }
}

/// A place in the queue: leaving it (dropped while waiting, e.g. the client went away)
/// removes it, or gives back the slot handed to it if that happened meanwhile.
struct Place {
    admission: Arc<Inner>,
    id: u64,
    cost: u64,
    woken: oneshot::Receiver<()>,
    /// Set once the slot is in a [`SlotGuard`].
    taken: bool,
}

impl Drop for Place {
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        let mut state = self.admission.lock();
        if let Some(i) = state.queue.iter().position(|w| w.id == self.id) {
            state.queue.remove(i);
            state.queued_cost -= self.cost;
            return;
        }
        if self.woken.try_recv().is_ok() {
            // A slot was handed over that nobody will use.
            drop(state);
            self.admission.release(self.cost);
        }
    }
}

/// The admission layer; see the module docs. Cheap to clone: clones share the slots, the
/// queue and the estimate.
#[derive(Debug, Clone)]
pub struct Admission(Arc<Inner>);

impl Admission {
    /// A layer with `config`'s limits.
    pub fn new(config: AdmissionArgs) -> Self {
        Self(Arc::new(Inner {
            config,
            state: Mutex::new(State {
                in_flight: 0,
                in_flight_cost: 0,
                queue: VecDeque::new(),
                queued_cost: 0,
                next_id: 0,
                area: 0.0,
                area_at: Instant::now(),
                estimate: Estimate::default(),
            }),
            counters: Counters {
                shed: Default::default(),
                queue_wait: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            },
        }))
    }

    /// The same, starting from `estimate` instead of learning from nothing (a warm start; tests).
    pub fn with_estimate(self, estimate: Estimate) -> Self {
        self.0.lock().estimate = estimate;
        self
    }

    /// Slots, queue and estimate now.
    pub fn snapshot(&self) -> Snapshot {
        self.0.snapshot()
    }

    /// Requests shed for `reason` so far.
    pub fn shed(&self, reason: Shed) -> u64 {
        self.0.shed(reason)
    }

    /// Registers the layer's metrics into `registry` (at scrape time).
    pub fn metrics(&self, registry: &mut Registry) {
        self.0.metrics(registry)
    }
}

impl Inner {
    /// Slots, queue and estimate now.
    pub fn snapshot(&self) -> Snapshot {
        let state = self.lock();
        Snapshot {
            in_flight: state.in_flight,
            queued: state.queue.len(),
            estimate: state.estimate,
        }
    }

    /// Requests shed for `reason` so far.
    pub fn shed(&self, reason: Shed) -> u64 {
        self.counters.shed[reason as usize].load(Ordering::Relaxed)
    }

    /// Registers the layer's metrics into `registry` (at scrape time).
    pub fn metrics(&self, registry: &mut Registry) {
        let snapshot = self.snapshot();
        gauges(
            registry,
            "unclip_gateway_requests_in_flight",
            "Image requests holding an admission slot.",
            [(Labels::new(), snapshot.in_flight as i64)],
        );
        gauges(
            registry,
            "unclip_gateway_queue_depth",
            "Image requests waiting for an admission slot.",
            [(Labels::new(), snapshot.queued as i64)],
        );
        counters(
            registry,
            "unclip_gateway_shed",
            "Requests refused by admission control, by reason (cost, queue_full, deadline, deadline_in_queue).",
            Shed::ALL
                .iter()
                .map(|r| (labels([("reason", r.name())]), self.shed(*r))),
        );
        registry.register(
            "unclip_gateway_queue_wait_seconds",
            "Seconds admitted requests waited for a slot.",
            self.counters.queue_wait.clone(),
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, reason: Shed) {
        self.counters.shed[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Gives back a slot of `cost` units and hands free slots to the waiters first in line.
    fn release(&self, cost: u64) {
        let mut state = self.lock();
        state.advance(Instant::now());
        state.in_flight -= 1;
        state.in_flight_cost -= cost;
        self.hand_over(&mut state);
    }

    /// Hands free slots to waiters, first come first.
    fn hand_over(&self, state: &mut State) {
        while state.in_flight < self.config.max_concurrent_requests {
            let Some(waiter) = state.queue.pop_front() else {
                return;
            };
            state.queued_cost -= waiter.cost;
            // The waiter removes itself under this lock when it goes, so it is still there.
            if waiter.wake.send(()).is_ok() {
                state.in_flight += 1;
                state.in_flight_cost += waiter.cost;
            }
        }
    }

    /// The permit of a request of `cost` units that holds a slot and starts running now:
    /// gives the slot back when dropped, and learns from the request: from its time if it
    /// succeeds; if it fails or is cancelled after running longer than the estimate said (a
    /// deadline reached on a machine that slowed down), from that time as a lower bound, so
    /// the estimate does not stay optimistic because the slow requests never succeed.
    fn permit(self: &Arc<Self>, cost: u64) -> Permit {
        let started = Instant::now();
        let area_at_start = {
            let mut state = self.lock();
            state.advance(started);
            state.area
        };
        let succeeded = Arc::new(AtomicBool::new(false));
        let learner = Arc::clone(self);
        let learn = move |succeeded: bool| {
            let now = Instant::now();
            let mut state = learner.lock();
            state.advance(now);
            let seconds = now.saturating_duration_since(started).as_secs_f64();
            let expected = state
                .estimate
                .seconds_per_cost
                .map_or(f64::INFINITY, |per_cost| per_cost * cost as f64);
            if seconds > 0.0 && (succeeded || seconds > expected) {
                let parallelism = (state.area - area_at_start) / seconds;
                state.estimate.learn(cost, seconds, parallelism);
            }
        };
        let on_success = {
            let (succeeded, learn) = (Arc::clone(&succeeded), learn.clone());
            move || {
                succeeded.store(true, Ordering::SeqCst);
                learn(true);
            }
        };
        Permit::holding(SlotGuard {
            admission: Arc::clone(self),
            cost,
            on_failure: Some(Box::new(move || {
                if !succeeded.load(Ordering::SeqCst) {
                    learn(false);
                }
            })),
        })
        .on_success(on_success)
    }

    /// Admits `request` (see the module docs).
    async fn admit_request(self: &Arc<Self>, request: &RequestContext) -> Result<Permit, Refusal> {
        let cost = request.cost.units();
        let limit = self.config.max_request_cost;
        if limit > 0 && cost > limit {
            self.count(Shed::Cost);
            let Cost {
                images,
                best_of,
                steps,
            } = request.cost;
            return Err(Refusal::InvalidArgument(format!(
                "cost: {images} images × best_of {best_of} × {steps} steps = {cost}, over the \
                 gateway's limit of {limit} per request"
            )));
        }
        let slots = self.config.max_concurrent_requests;
        if slots == 0 {
            return Ok(Permit::free());
        }
        let arrived = Instant::now();
        let mut place = {
            let mut state = self.lock();
            if state.in_flight < slots && state.queue.is_empty() {
                // A free place: the request runs beside the `in_flight` others, so at
                // `(in_flight + 1) / parallelism` times the learned time (learned with
                // `parallelism` requests at once sharing the stages).
                let estimate = state.estimate;
                if let Some((_, run)) = estimate.wait_and_run(0.0, cost, slots) {
                    let share = (state.in_flight + 1) as f64 / estimate.parallelism.max(1.0);
                    let run = secs(run.as_secs_f64() * share);
                    if arrived + run > request.deadline {
                        drop(state);
                        self.count(Shed::Deadline);
                        let left = request.deadline.saturating_duration_since(arrived);
                        return Err(Refusal::DeadlineExceeded(format!(
                            "the deadline cannot be met: about {} ms to run, {} ms left",
                            run.as_millis(),
                            left.as_millis()
                        )));
                    }
                }
                state.advance(arrived);
                state.in_flight += 1;
                state.in_flight_cost += cost;
                drop(state);
                self.counters.queue_wait.observe(0.0);
                return Ok(self.permit(cost));
            }
            let ahead = state.ahead();
            let estimate = state.estimate.wait_and_run(ahead, cost, slots);
            if state.queue.len() >= self.config.max_queued_requests {
                let retry_after =
                    estimate.map_or(MIN_RETRY_AFTER, |(wait, _)| wait.max(MIN_RETRY_AFTER));
                let (running, queued) = (state.in_flight, state.queue.len());
                drop(state);
                self.count(Shed::QueueFull);
                return Err(Refusal::ResourceExhausted {
                    message: format!(
                        "the gateway is at capacity: {running} requests running (the limit is \
                         {slots}) and {queued} waiting (the limit is {}); retry later",
                        self.config.max_queued_requests
                    ),
                    retry_after: Some(retry_after),
                });
            }
            if let Some((wait, run)) = estimate
                && arrived + wait + run > request.deadline
            {
                drop(state);
                self.count(Shed::Deadline);
                let left = request.deadline.saturating_duration_since(arrived);
                return Err(Refusal::DeadlineExceeded(format!(
                    "the deadline cannot be met: about {} ms of queued work ahead and {} ms to \
                     run, {} ms left",
                    wait.as_millis(),
                    run.as_millis(),
                    left.as_millis()
                )));
            }
            let (wake, woken) = oneshot::channel();
            let id = state.next_id;
            state.next_id += 1;
            state.queue.push_back(Waiter { id, cost, wake });
            state.queued_cost += cost;
            Place {
                admission: Arc::clone(self),
                id,
                cost,
                woken,
                taken: false,
            }
        };
        match tokio::time::timeout_at(request.deadline, &mut place.woken).await {
            Ok(Ok(())) => {
                place.taken = true;
                drop(place);
                self.counters
                    .queue_wait
                    .observe(arrived.elapsed().as_secs_f64());
                Ok(self.permit(cost))
            }
            // The sender is only dropped after a send, or with the layer.
            Ok(Err(_)) => Err(Refusal::Unavailable("the gateway is shutting down".into())),
            Err(_) => {
                drop(place);
                self.count(Shed::DeadlineInQueue);
                Err(Refusal::DeadlineExceeded(format!(
                    "the deadline passed after {} ms waiting for one of {slots} places to run",
                    arrived.elapsed().as_millis()
                )))
            }
        }
    }
}

#[tonic::async_trait]
impl RequestLayer for Admission {
    async fn admit(&self, request: &RequestContext) -> Result<Permit, Refusal> {
        if matches!(request.capability, Capability::Info | Capability::Stats) {
            // No work, never queued.
            return Ok(Permit::free());
        }
        self.0.admit_request(request).await
    }
}

#[cfg(test)]
mod tests;
