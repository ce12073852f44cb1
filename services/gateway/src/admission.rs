//! Admission control: a [`RequestLayer`] that bounds what the gateway takes on, so that under
//! overload it answers at once instead of slowly timing out everything, and the requests it
//! does take finish within their deadlines.
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
//!    request is refused with RESOURCE_EXHAUSTED and a `retry-after` hint (when the requests
//!    ahead of it are expected to have started, at least a second).
//! 3. **Deadlines**: a request starts at once only if, by the model below, it would finish
//!    before its deadline *and* every request already running or waiting that would have met
//!    its deadline still would with it beside them (a newcomer slows the others down).
//!    Otherwise it waits for a place, if it would still finish in time starting when one of
//!    those running finishes; if not, it is refused with DEADLINE_EXCEEDED at once, taking no
//!    place. A request that waits and still reaches its deadline in the queue gets
//!    DEADLINE_EXCEEDED then. A slot given back goes to the first waiter; further free slots
//!    go to waiters only while the first fits by the same rule.
//!
//! The model ([`Estimate`], in `schedule.rs`) is processor sharing: a request needs `cost ×
//! solo` seconds of work, and with `n` in flight each progresses at `min(1, parallelism / n)`
//! of its solo pace. `solo` is learned from requests that ran alone, `parallelism` from those
//! that shared, both as EWMAs over the requests that succeeded (and, as a lower bound, those
//! that failed after running longer than the model said, so that the estimate does not stay
//! optimistic when the slow requests never succeed); every prediction is stretched by a
//! margin, the worst ratio of needed to modelled work among the last 64 finished requests
//! (kept apart for requests that ran alone and those that shared: sharing varies more). Before a first finished request there is no
//! estimate and no request is refused for its deadline.
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

mod schedule;

pub use schedule::{Estimate, History, Misses, SETTLED};

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

/// `seconds` as a duration (0 for negative or not finite ones, capped at a day).
fn secs(seconds: f64) -> Duration {
    if seconds.is_finite() && seconds > 0.0 {
        Duration::from_secs_f64(seconds.min(86_400.0))
    } else {
        Duration::ZERO
    }
}

/// A request holding a slot.
struct Running {
    /// Identifies it for removal.
    id: u64,
    /// Its cost units.
    cost: u64,
    /// Its deadline.
    deadline: Instant,
    /// How long it has run with how many others.
    history: History,
}

/// A request waiting for a slot.
struct Waiter {
    /// Identifies it for removal (and its slot, once handed one).
    id: u64,
    /// Its cost units.
    cost: u64,
    /// Its deadline.
    deadline: Instant,
    /// Told when a slot is handed to it.
    wake: oneshot::Sender<()>,
}

/// Everything under the lock.
struct State {
    /// Requests holding a slot.
    running: Vec<Running>,
    /// Requests waiting, first come first.
    queue: VecDeque<Waiter>,
    /// The next request's id.
    next_id: u64,
    /// When the running requests' histories were last brought up to date.
    at: Instant,
    /// What has been learned.
    estimate: Estimate,
}

/// When a request would start and finish, as the model predicts.
#[derive(Debug, Clone, Copy)]
struct Times {
    start: Instant,
    finish: Instant,
}

impl State {
    /// Brings the running requests' histories up to `now`; call before changing `running`.
    fn advance(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        let in_flight = self.running.len();
        for running in &mut self.running {
            running.history.add(in_flight, dt);
        }
        self.at = self.at.max(now);
    }

    fn start(&mut self, id: u64, cost: u64, deadline: Instant) {
        self.running.push(Running {
            id,
            cost,
            deadline,
            history: History::default(),
        });
    }

    /// The predicted times of every running request, then every queued one, with `started`
    /// (cost) running too and `appended` (cost) queued last; `None` without an estimate.
    fn plan(
        &self,
        now: Instant,
        started: Option<u64>,
        appended: Option<u64>,
    ) -> Option<Vec<Times>> {
        let estimate = &self.estimate;
        // The queue starts one for one as those running finish, so the most in flight is
        // those running (at least one, once the queue starts).
        let most = (self.running.len() + usize::from(started.is_some())).max(1);
        let margin = estimate.margin(most);
        let mut running = Vec::with_capacity(self.running.len() + 1);
        for r in &self.running {
            running.push(estimate.work_left(r.cost, &r.history, margin)?);
        }
        if let Some(cost) = started {
            running.push(estimate.work(cost, margin)?);
        }
        let mut queued = Vec::with_capacity(self.queue.len() + 1);
        for w in &self.queue {
            queued.push(estimate.work(w.cost, margin)?);
        }
        if let Some(cost) = appended {
            queued.push(estimate.work(cost, margin)?);
        }
        let at = |seconds: f64| now + secs(seconds);
        Some(
            estimate
                .schedule(&running, &queued)
                .into_iter()
                .map(|(start, finish)| Times {
                    start: at(start),
                    finish: at(finish),
                })
                .collect(),
        )
    }

    /// The deadlines in [`State::plan`]'s order (without the extra request).
    fn deadlines(&self) -> impl Iterator<Item = Instant> + '_ {
        self.running
            .iter()
            .map(|r| r.deadline)
            .chain(self.queue.iter().map(|w| w.deadline))
    }

    /// Whether a request of `cost` units due at `deadline` may start now, beside those
    /// running: it would meet its deadline, and every request already admitted that would
    /// meet its deadline without it still would. `true` without an estimate (nothing to go on).
    fn fits_now(&self, now: Instant, cost: u64, deadline: Instant) -> bool {
        let Some(with) = self.plan(now, Some(cost), None) else {
            return true;
        };
        let n = self.running.len();
        // `with` holds the newcomer at index n, between the running and the queued.
        if with[n].finish > deadline {
            return false;
        }
        let others = with[..n].iter().chain(&with[n + 1..]);
        let late: Vec<bool> = others
            .zip(self.deadlines())
            .map(|(times, deadline)| times.finish > deadline)
            .collect();
        if !late.contains(&true) {
            return true;
        }
        // Somebody would be late: only a problem if they would not be anyway.
        let Some(without) = self.plan(now, None, None) else {
            return true;
        };
        without
            .iter()
            .zip(self.deadlines())
            .zip(late)
            .all(|((times, deadline), late)| !late || times.finish > deadline)
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

/// A slot held by an admitted request: released on drop, handing it to the next waiter, and
/// learning from the request (see [`Inner::release`]).
struct SlotGuard {
    admission: Arc<Inner>,
    id: u64,
    /// Set by the permit's success hook.
    succeeded: Arc<AtomicBool>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let succeeded = self.succeeded.load(Ordering::SeqCst);
        self.admission.release(self.id, Some(succeeded));
    }
}

/// A place in the queue: leaving it (dropped while waiting, e.g. the client went away)
/// removes it, or gives back the slot handed to it if that happened meanwhile.
struct Place {
    admission: Arc<Inner>,
    id: u64,
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
            return;
        }
        if self.woken.try_recv().is_ok() {
            // A slot was handed over that nobody will use.
            drop(state);
            self.admission.release(self.id, None);
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
                running: Vec::new(),
                queue: VecDeque::new(),
                next_id: 0,
                at: Instant::now(),
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
            in_flight: state.running.len(),
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

    /// Gives back the slot of request `id` and hands it to the first waiter. `outcome`: whether
    /// it succeeded (`None`: it never ran). A success teaches the estimate; so does a failure
    /// or cancellation after running longer than the estimate said (a deadline reached on a
    /// machine that slowed down), as a lower bound, so that the estimate does not stay
    /// optimistic because the slow requests never succeed.
    fn release(&self, id: u64, outcome: Option<bool>) {
        let mut state = self.lock();
        state.advance(Instant::now());
        let Some(i) = state.running.iter().position(|r| r.id == id) else {
            return;
        };
        let done = state.running.swap_remove(i);
        if let Some(succeeded) = outcome
            && (succeeded || state.estimate.overran(done.cost, &done.history))
        {
            state.estimate.learn(done.cost, &done.history);
        }
        self.hand_over(&mut state, 1);
    }

    /// Hands free slots to waiters, first come first: `replacing` of them at once (slots just
    /// given back: the number in flight returns to what it was), more only while the first
    /// waiter fits beside those running ([`State::fits_now`]); with nothing running, the first
    /// always starts.
    fn hand_over(&self, state: &mut State, mut replacing: usize) {
        let now = Instant::now();
        while state.running.len() < self.config.max_concurrent_requests {
            let Some(first) = state.queue.front() else {
                return;
            };
            let fits = replacing > 0
                || state.running.is_empty()
                || state.fits_now(now, first.cost, first.deadline);
            if !fits {
                return;
            }
            replacing = replacing.saturating_sub(1);
            let waiter = state.queue.pop_front().expect("a first waiter");
            // The waiter removes itself under this lock when it goes, so it is still there.
            if waiter.wake.send(()).is_ok() {
                state.start(waiter.id, waiter.cost, waiter.deadline);
            }
        }
    }

    /// The permit of request `id`, which holds a slot.
    fn permit(self: &Arc<Self>, id: u64) -> Permit {
        let succeeded = Arc::new(AtomicBool::new(false));
        let hook = Arc::clone(&succeeded);
        Permit::holding(SlotGuard {
            admission: Arc::clone(self),
            id,
            succeeded,
        })
        .on_success(move || hook.store(true, Ordering::SeqCst))
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
        let deadline = request.deadline;
        let mut place = {
            let mut state = self.lock();
            state.advance(arrived);
            let id = state.next_id;
            state.next_id += 1;
            if state.running.len() < slots
                && state.queue.is_empty()
                && state.fits_now(arrived, cost, deadline)
            {
                state.start(id, cost, deadline);
                drop(state);
                self.counters.queue_wait.observe(0.0);
                return Ok(self.permit(id));
            }
            // Wait for a place: it starts when one of those running finishes.
            let plan = state.plan(arrived, None, Some(cost));
            let times = plan.as_ref().and_then(|plan| plan.last().copied());
            if state.queue.len() >= self.config.max_queued_requests {
                let retry_after = times.map_or(MIN_RETRY_AFTER, |t| {
                    t.start
                        .saturating_duration_since(arrived)
                        .max(MIN_RETRY_AFTER)
                });
                let (running, queued) = (state.running.len(), state.queue.len());
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
            if let Some(times) = times
                && times.finish > deadline
            {
                drop(state);
                self.count(Shed::Deadline);
                let wait = times.start.saturating_duration_since(arrived);
                let run = times.finish.saturating_duration_since(times.start);
                let left = deadline.saturating_duration_since(arrived);
                let message = if wait.is_zero() {
                    format!(
                        "the deadline cannot be met: about {} ms to run, {} ms left",
                        run.as_millis(),
                        left.as_millis()
                    )
                } else {
                    format!(
                        "the deadline cannot be met: about {} ms until a place is free and {} \
                         ms to run, {} ms left",
                        wait.as_millis(),
                        run.as_millis(),
                        left.as_millis()
                    )
                };
                return Err(Refusal::DeadlineExceeded(message));
            }
            let (wake, woken) = oneshot::channel();
            state.queue.push_back(Waiter {
                id,
                cost,
                deadline,
                wake,
            });
            Place {
                admission: Arc::clone(self),
                id,
                woken,
                taken: false,
            }
        };
        match tokio::time::timeout_at(deadline, &mut place.woken).await {
            Ok(Ok(())) => {
                place.taken = true;
                let id = place.id;
                drop(place);
                self.counters
                    .queue_wait
                    .observe(arrived.elapsed().as_secs_f64());
                Ok(self.permit(id))
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
