//! [`ReplicaSet`]: the replicas of one stage service, the choice of a replica for each
//! attempt, retries on another replica, backoff, counters, DNS refresh and probing.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::address::{self, Target};
use crate::probe::PROBE_TIMEOUT;
use crate::{Probe, ReplicaConfig, ReplicaError, Verdict};

/// HTTP/2 PING interval on every channel: a replica that vanished without closing its
/// connections (host down, network cut) is noticed between calls, not on the next call.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a PING may go unanswered before the connection is dropped.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How soon a DNS name that resolves to no replica is looked up again (or the DNS refresh
/// period, when shorter).
const EMPTY_RETRY: Duration = Duration::from_secs(1);

/// The replicas of one stage service (clip, prior or decoder), called through
/// [`call`](Self::call). Cheap to clone: clones share the replicas, their counters and the
/// DNS refresh task, which ends when the last clone is dropped.
#[derive(Clone)]
pub struct ReplicaSet {
    inner: Arc<Inner>,
}

/// What the clones of a [`ReplicaSet`] share.
struct Inner {
    /// Label for logs and messages: "clip", "prior", "decoder".
    stage: String,
    config: ReplicaConfig,
    /// The addresses as configured; [`Replica::target`] indexes this.
    targets: Vec<Target>,
    /// The current replicas. A std mutex: it is never held across an `.await`.
    state: Mutex<State>,
    /// What a replica must pass before its first call; `None` admits every replica.
    probe: Option<Arc<dyn Probe>>,
    /// Wakes the probe task early: a replica was added or failed.
    wake: Arc<Notify>,
    /// How many replicas are available (admitted, serving, not backed off... see
    /// [`ReplicaSet::available`]).
    available: watch::Sender<usize>,
    /// Times a probe found a replica serving something else (transitions into refused).
    refusals: AtomicU64,
    /// Dropped with the last clone, which stops the DNS refresh and probe tasks at once (the
    /// tasks only hold a `Weak`, so they cannot keep the set alive).
    stop: watch::Sender<()>,
}

/// The replica list and the round-robin cursor.
struct State {
    replicas: Vec<Arc<Replica>>,
    /// Where the next search for the least loaded replica starts, so that ties rotate.
    cursor: usize,
}

/// One replica: one socket address, one lazily connected channel, its counters.
struct Replica {
    /// Display name: "http://10.0.0.7:50053" or "http://decoder.svc:50053 (10.0.0.7)".
    name: String,
    /// Index of the configured address it came from (DNS refresh replaces per target).
    target: usize,
    addr: SocketAddr,
    channel: Channel,
    calls: AtomicU64,
    failures: AtomicU64,
    retried: AtomicU64,
    in_flight: AtomicU64,
    health: Mutex<Health>,
    /// What the latest probe found.
    probed: Mutex<Probed>,
}

/// Whether a replica passed its probe.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Admission {
    /// Not probed successfully yet: no call.
    Pending,
    /// Passed a probe (the right model): may receive calls.
    Admitted,
    /// Serves something else, the reason given: no call.
    Refused(String),
}

/// The state probes keep of a replica.
#[derive(Debug, Clone)]
struct Probed {
    admission: Admission,
    /// The latest probe found it serving (and no call has failed on it since).
    serving: bool,
}

/// Backoff state of a replica.
#[derive(Default)]
struct Health {
    /// Failures in a row that meant "could not do the work"; a success resets it.
    consecutive_failures: u32,
    /// When the latest counted failure happened: failures of attempts that started before
    /// it are the same outage seen by concurrent calls and do not double the backoff again.
    last_failure: Option<Instant>,
    /// Skipped by [`ReplicaSet::call`] until then (unless every replica is).
    backed_off_until: Option<Instant>,
}

/// A successful [`ReplicaSet::call`]: the response message and how it was obtained.
#[derive(Debug, Clone)]
pub struct Answered<T> {
    /// The response message.
    pub value: T,
    /// Display name of the replica that answered.
    pub replica: String,
    /// Attempts made, this one included (1 when no retry was needed).
    pub attempts: u32,
    /// Time from the start of the call to the answer, retries included.
    pub elapsed: Duration,
}

/// Counters of one replica, for the gateway's stats and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStats {
    /// Display name of the replica.
    pub address: String,
    /// Takes calls now: admitted by its probe (if the set has one), serving when last probed,
    /// and not backed off after failing to do the work.
    pub available: bool,
    /// Kept out by its probe because it serves something else (the reason), e.g. another
    /// model version. `None` otherwise.
    pub refused: Option<String>,
    /// Attempts sent to it.
    pub calls: u64,
    /// Attempts that ended in an error, whatever the code.
    pub failures: u64,
    /// Failed attempts that were then retried on another replica.
    pub retried: u64,
    /// Attempts on it right now.
    pub in_flight: u64,
}

/// What a failed attempt means for the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The replica could not do the work (down, unreachable, killed mid-call): back it off
    /// and retry elsewhere.
    Unavailable,
    /// The replica's queue is full: retry on a less loaded one, without backing it off.
    Busy,
    /// The answer of the service (bad argument, deadline, ...): return it unchanged.
    Final,
}

/// Lowercase fragments of the messages tonic, hyper and h2 give transport failures, which
/// arrive as UNKNOWN, INTERNAL or CANCELLED rather than UNAVAILABLE (a replica killed
/// mid-call resets its connections).
const TRANSPORT_MARKERS: &[&str] = &[
    "transport error",
    "h2 protocol error",
    "error trying to connect",
    "tcp connect error",
    "connection reset",
    "connection refused",
    "connection closed",
    "connection error",
    "broken pipe",
    "stream closed",
    "stream error",
    // hyper: the request was queued on a connection that closed before sending it (a draining
    // replica's GOAWAY), so the replica never started the work.
    "operation was canceled",
];

/// Sorts a failed attempt's status into retry or not.
fn classify(status: &Status) -> Failure {
    match status.code() {
        Code::Unavailable => Failure::Unavailable,
        Code::ResourceExhausted => Failure::Busy,
        Code::Unknown | Code::Internal | Code::Cancelled => {
            let message = status.message().to_ascii_lowercase();
            if TRANSPORT_MARKERS.iter().any(|m| message.contains(m)) {
                Failure::Unavailable
            } else {
                Failure::Final
            }
        }
        _ => Failure::Final,
    }
}

/// Counts an attempt in flight on a replica for as long as it lives, so the gauge goes
/// down even when the caller drops the call's future mid-attempt.
struct InFlight(Arc<Replica>);

impl InFlight {
    fn start(replica: &Arc<Replica>) -> Self {
        replica.calls.fetch_add(1, Ordering::Relaxed);
        replica.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(replica))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Replica {
    fn new(
        target: &Target,
        index: usize,
        addr: SocketAddr,
        config: &ReplicaConfig,
        probed: bool,
    ) -> Result<Self, tonic::transport::Error> {
        // Connect to the resolved address, but keep the configured host name as the
        // requests' origin (`:authority`).
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))?;
        if let Some(tls) = &config.tls {
            // The certificate must name the configured host, not the resolved address.
            endpoint = endpoint.tls_config(tls.config_for(target.uri.host().unwrap_or("")))?;
        }
        let channel = endpoint
            .origin(target.uri.clone())
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .connect_lazy();
        Ok(Self {
            name: target.replica_name(addr),
            target: index,
            addr,
            channel,
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            health: Mutex::new(Health::default()),
            probed: Mutex::new(Probed {
                admission: if probed {
                    Admission::Pending
                } else {
                    Admission::Admitted
                },
                serving: !probed,
            }),
        })
    }

    fn probed(&self) -> MutexGuard<'_, Probed> {
        self.probed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// (admitted, serving) now.
    fn admitted_serving(&self) -> (bool, bool) {
        let probed = self.probed();
        (probed.admission == Admission::Admitted, probed.serving)
    }

    /// Admitted, serving and not backed off at `now`.
    fn available(&self, now: Instant) -> bool {
        self.admitted_serving() == (true, true) && self.backed_off(now).is_none()
    }

    fn health(&self) -> MutexGuard<'_, Health> {
        // The guarded data stays consistent even if a holder panicked.
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When its backoff ends, if it is backed off at `now`.
    fn backed_off(&self, now: Instant) -> Option<Instant> {
        self.health().backed_off_until.filter(|&until| until > now)
    }

    fn succeeded(&self) {
        *self.health() = Health::default();
    }

    /// Applies a probe's verdict; `true` when it newly refused the replica.
    fn apply(&self, verdict: Verdict, stage: &str) -> bool {
        let mut probed = self.probed();
        let before = probed.clone();
        let mut newly_refused = false;
        match verdict {
            Verdict::Ready => {
                probed.admission = Admission::Admitted;
                probed.serving = true;
                if before.admission != Admission::Admitted || !before.serving {
                    tracing::info!(stage, replica = %self.name, "replica available");
                    // It answers again: no need to wait out a backoff from before.
                    *self.health() = Health::default();
                }
            }
            Verdict::NotServing(reason) => {
                probed.serving = false;
                if before.serving {
                    tracing::warn!(stage, replica = %self.name, reason, "replica not serving");
                } else {
                    tracing::debug!(stage, replica = %self.name, reason, "replica not serving yet");
                }
            }
            Verdict::Refused(reason) => {
                probed.serving = false;
                if before.admission != Admission::Refused(reason.clone()) {
                    tracing::warn!(stage, replica = %self.name, reason, "replica kept out");
                    newly_refused = true;
                }
                probed.admission = Admission::Refused(reason);
            }
        }
        newly_refused
    }

    /// Backs the replica off after an attempt started at `started` could not be served.
    fn could_not_serve(&self, started: Instant, config: &ReplicaConfig) {
        let now = Instant::now();
        let mut health = self.health();
        if health.last_failure.is_some_and(|last| started < last) {
            return;
        }
        health.consecutive_failures = health.consecutive_failures.saturating_add(1);
        health.last_failure = Some(now);
        health.backed_off_until = Some(now + config.backoff(health.consecutive_failures));
    }

    fn stats(&self, now: Instant) -> ReplicaStats {
        let refused = match &self.probed().admission {
            Admission::Refused(reason) => Some(reason.clone()),
            _ => None,
        };
        ReplicaStats {
            address: self.name.clone(),
            available: self.available(now),
            refused,
            calls: self.calls.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
        }
    }
}

impl ReplicaSet {
    /// Builds the replicas of `stage` ("clip", "prior", "decoder": a label for logs and
    /// messages) from `addresses`: URLs (`http://host:port`) or bare `host:port` (which get
    /// `http://`). Every replica may receive calls at once (see [`probed`](Self::probed) for
    /// a set that checks them first).
    ///
    /// An IP address is one replica, named by its URL. A DNS name is resolved with
    /// [`tokio::net::lookup_host`] and every distinct address it resolves to becomes a
    /// replica, named e.g. `http://decoder.svc:50053 (10.0.0.7)`. Channels connect lazily
    /// (with `connect_timeout`, `TCP_NODELAY` and HTTP/2 keep-alive), so a replica that is
    /// down now does not fail `new`. When [`ReplicaConfig::dns_refresh`] is not zero and some
    /// address is a DNS name, a background task resolves the names again at that period,
    /// adding new addresses and dropping vanished ones (calls in flight on a dropped replica
    /// finish); a failed lookup keeps the replicas it had. A name that resolves to nothing
    /// (yet) is then not an error: it is looked up again every second until it resolves, and
    /// calls meanwhile get UNAVAILABLE. The task ends when the last clone of the set is
    /// dropped.
    ///
    /// Must be called inside a Tokio runtime.
    pub async fn new(
        stage: &str,
        addresses: &[String],
        config: ReplicaConfig,
    ) -> Result<Self, ReplicaError> {
        Self::build(stage, addresses, config, None).await
    }

    /// As [`new`](Self::new), but a replica receives calls only once `probe` found it
    /// [`Verdict::Ready`], however it was found (listed, resolved at start or added by DNS
    /// refresh later). Every replica is probed again every
    /// [`ReplicaConfig::probe_interval`], a new one and one whose call just failed in
    /// transport at once; each probe is bounded by [`PROBE_TIMEOUT`].
    ///
    /// - [`Verdict::Refused`] (serves another model version, say) keeps the replica out
    ///   until a later probe finds it ready; it is logged and counted
    ///   ([`refusals`](Self::refusals), [`ReplicaStats::refused`]).
    /// - [`Verdict::NotServing`] takes it out of the rotation; an admitted replica stays a
    ///   last resort when no replica is serving, so a probe lost under load does not refuse
    ///   calls outright.
    ///
    /// [`available`](Self::available) follows how many replicas take calls. The first probes
    /// run in the background; [`probe_now`](Self::probe_now) waits for a round.
    pub async fn probed(
        stage: &str,
        addresses: &[String],
        config: ReplicaConfig,
        probe: Arc<dyn Probe>,
    ) -> Result<Self, ReplicaError> {
        Self::build(stage, addresses, config, Some(probe)).await
    }

    async fn build(
        stage: &str,
        addresses: &[String],
        config: ReplicaConfig,
        probe: Option<Arc<dyn Probe>>,
    ) -> Result<Self, ReplicaError> {
        let targets = addresses
            .iter()
            .filter(|a| !a.trim().is_empty())
            .map(|a| Target::parse(stage, a))
            .collect::<Result<Vec<_>, _>>()?;
        if targets.is_empty() {
            return Err(ReplicaError::NoAddress {
                stage: stage.to_owned(),
            });
        }
        let refresh = !config.dns_refresh.is_zero() && targets.iter().any(Target::is_name);
        let mut replicas = Vec::new();
        for (index, target) in targets.iter().enumerate() {
            let addrs = match target.resolve(stage).await {
                Ok(addrs) => addrs,
                // Resolved again by the refresh task until it resolves.
                Err(e) if refresh => {
                    tracing::warn!(stage, error = %e, "no replica yet; resolving again every second");
                    continue;
                }
                Err(e) => return Err(e),
            };
            for addr in addrs {
                let replica =
                    Replica::new(target, index, addr, &config, probe.is_some()).map_err(|e| {
                        ReplicaError::BadAddress {
                            stage: stage.to_owned(),
                            address: target.url.clone(),
                            reason: format!("resolved address {addr} is not usable: {e}"),
                        }
                    })?;
                replicas.push(Arc::new(replica));
            }
        }
        tracing::info!(
            stage,
            replicas = ?replicas.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            "replica set ready"
        );

        let (stop, _) = watch::channel(());
        let probing = probe.is_some();
        let inner = Arc::new(Inner {
            stage: stage.to_owned(),
            config,
            targets,
            state: Mutex::new(State {
                replicas,
                cursor: 0,
            }),
            probe,
            wake: Arc::new(Notify::new()),
            available: watch::channel(0).0,
            refusals: AtomicU64::new(0),
            stop,
        });
        inner.count_available();
        if refresh {
            tokio::spawn(refresh_loop(
                Arc::downgrade(&inner),
                inner.stop.subscribe(),
                inner.config.dns_refresh,
            ));
        }
        if probing {
            tokio::spawn(probe_loop(
                Arc::downgrade(&inner),
                inner.stop.subscribe(),
                inner.config.probe_interval,
            ));
        }
        Ok(Self { inner })
    }

    /// Probes every replica now and applies the verdicts (a no-op without a probe).
    pub async fn probe_now(&self) {
        self.inner.probe_round().await;
    }

    /// How many replicas take calls (admitted by the probe and serving when last probed, or
    /// since a call failed on it in transport), updated as probes, failures and DNS refresh
    /// change it. Without a probe every replica counts.
    pub fn available(&self) -> watch::Receiver<usize> {
        self.inner.available.subscribe()
    }

    /// Times a probe found a replica serving something else ([`Verdict::Refused`]), counted
    /// once each time a replica turns refused.
    pub fn refusals(&self) -> u64 {
        self.inner.refusals.load(Ordering::Relaxed)
    }

    /// Splits a comma-separated flag value (`"a:1, http://b:2"`) into addresses, trimming
    /// each and dropping empty ones.
    pub fn parse_list(value: &str) -> Vec<String> {
        address::parse_list(value)
    }

    /// The stage label given to [`new`](Self::new).
    pub fn stage(&self) -> &str {
        &self.inner.stage
    }

    /// Makes one call on some replica, retrying on another when a replica cannot do the work.
    ///
    /// `f(channel, timeout)` makes one attempt on the channel of the chosen replica;
    /// `timeout` is the time left until `deadline` (`None` without a deadline), which `f`
    /// puts on its request (see [`request`](crate::request)) so the replica knows it too.
    /// `method` names the call in errors and logs (e.g. "decoder.Decode").
    ///
    /// Only for idempotent calls: an attempt that failed in transport may have run on the
    /// replica anyway, and is run again elsewhere. The stage calls qualify because they are
    /// deterministic (seeded).
    ///
    /// - Each attempt goes to the replica with the fewest calls in flight among those not
    ///   backed off and not yet tried by this call (ties rotate round-robin); when every
    ///   candidate is backed off, to the one whose backoff ends first.
    /// - UNAVAILABLE, and UNKNOWN / INTERNAL / CANCELLED with a transport failure's message
    ///   (connection reset or refused, broken pipe, stream closed, ...) back the replica
    ///   off and are retried; RESOURCE_EXHAUSTED is retried without backing the replica off,
    ///   after [`ReplicaConfig::busy_backoff`] (jittered, growing with each full queue this
    ///   call meets); when that wait would pass the deadline the RESOURCE_EXHAUSTED is
    ///   returned at once. Any other status is returned at once, unchanged. After `max_attempts` failed attempts the
    ///   last status is returned with "`method` failed on N replicas: " before its message.
    /// - With a deadline, the time left is checked before each attempt and bounds each
    ///   attempt; running out returns DEADLINE_EXCEEDED.
    /// - Dropping the returned future drops the attempt in flight (tonic resets its stream).
    pub async fn call<T, F, Fut>(
        &self,
        method: &'static str,
        deadline: Option<Instant>,
        mut f: F,
    ) -> Result<Answered<T>, Status>
    where
        F: FnMut(Channel, Option<Duration>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let inner = &self.inner;
        let stage = inner.stage.as_str();
        let started = Instant::now();
        let max_attempts = inner.config.max_attempts.max(1);
        let mut tried: Vec<Arc<Replica>> = Vec::new();
        let mut last: Option<Status> = None;
        let mut busy = 0u32;

        for attempt in 1..=max_attempts {
            // The time left, checked before every attempt.
            let left = match deadline {
                None => None,
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(out_of_time(method, stage, attempt - 1, last.as_ref()));
                    }
                    Some(deadline - now)
                }
            };
            let Some(replica) = inner.pick(&tried) else {
                return Err(inner.none_available(method));
            };

            let attempt_started = Instant::now();
            let guard = InFlight::start(&replica);
            let pending = f(replica.channel.clone(), left);
            let result = match left {
                None => pending.await,
                // A guard in case `f` did not put the timeout on its request.
                Some(left) => match tokio::time::timeout(left, pending).await {
                    Ok(result) => result,
                    Err(_) => return Err(out_of_time(method, stage, attempt, None)),
                },
            };
            drop(guard);

            let status = match result {
                Ok(response) => {
                    replica.succeeded();
                    return Ok(Answered {
                        value: response.into_inner(),
                        replica: replica.name.clone(),
                        attempts: attempt,
                        elapsed: started.elapsed(),
                    });
                }
                Err(status) => status,
            };
            replica.failures.fetch_add(1, Ordering::Relaxed);
            match classify(&status) {
                Failure::Final => {
                    // tonic reports its own expiry of the request's grpc-timeout as
                    // CANCELLED "Timeout expired"; past the deadline it is ours.
                    if status.code() == Code::Cancelled
                        && deadline.is_some_and(|d| Instant::now() >= d)
                    {
                        return Err(out_of_time(method, stage, attempt, Some(&status)));
                    }
                    return Err(status);
                }
                Failure::Unavailable => {
                    replica.could_not_serve(attempt_started, &inner.config);
                    inner.failed_in_transport(&replica);
                }
                Failure::Busy if attempt < max_attempts => {
                    busy += 1;
                    let wait = inner.config.busy_backoff(busy);
                    if deadline.is_some_and(|d| Instant::now() + wait >= d) {
                        tracing::warn!(stage, method, replica = %replica.name, attempt,
                            "queue full; no time left before the deadline to retry");
                        return Err(Status::with_details_and_metadata(
                            status.code(),
                            format!(
                                "{method}: {} (no time left before the deadline to retry)",
                                status.message()
                            ),
                            bytes::Bytes::copy_from_slice(status.details()),
                            status.metadata().clone(),
                        ));
                    }
                    tracing::debug!(stage, method, replica = %replica.name, ?wait, "queue full; backing off");
                    tokio::time::sleep(wait).await;
                }
                Failure::Busy => {}
            }
            if attempt < max_attempts {
                replica.retried.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    stage,
                    method,
                    replica = %replica.name,
                    code = ?status.code(),
                    message = status.message(),
                    attempt,
                    "retrying on another replica"
                );
            }
            if !tried.iter().any(|t| Arc::ptr_eq(t, &replica)) {
                tried.push(replica);
            }
            last = Some(status);
        }

        // Every attempt failed: the last status, saying how many replicas were tried.
        let last = last.unwrap_or_else(|| Status::unavailable("no attempt was made"));
        let replicas = tried.len();
        let plural = if replicas == 1 { "replica" } else { "replicas" };
        let prefix = if replicas as u32 == max_attempts {
            format!("{method} failed on {replicas} {plural}")
        } else {
            format!("{method} failed on {replicas} {plural} in {max_attempts} attempts")
        };
        tracing::warn!(stage, method, code = ?last.code(), message = last.message(), "{prefix}");
        Err(Status::with_details_and_metadata(
            last.code(),
            format!("{prefix}: {}", last.message()),
            bytes::Bytes::copy_from_slice(last.details()),
            last.metadata().clone(),
        ))
    }

    /// The counters of every current replica.
    pub fn snapshot(&self) -> Vec<ReplicaStats> {
        let now = Instant::now();
        self.inner
            .state()
            .replicas
            .iter()
            .map(|r| r.stats(now))
            .collect()
    }

    /// Every current replica's display name and channel (e.g. to ask each for GetInfo at
    /// start-up and check model versions).
    pub fn channels(&self) -> Vec<(String, Channel)> {
        self.inner
            .state()
            .replicas
            .iter()
            .map(|r| (r.name.clone(), r.channel.clone()))
            .collect()
    }
}

impl fmt::Debug for ReplicaSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .inner
            .state()
            .replicas
            .iter()
            .map(|r| r.name.clone())
            .collect();
        f.debug_struct("ReplicaSet")
            .field("stage", &self.inner.stage)
            .field("replicas", &names)
            .field("config", &self.inner.config)
            .finish()
    }
}

/// DEADLINE_EXCEEDED for `method`, after `attempts` attempts.
fn out_of_time(method: &str, stage: &str, attempts: u32, last: Option<&Status>) -> Status {
    let mut message = if attempts == 0 {
        format!("{method}: the deadline passed before calling the {stage} stage")
    } else {
        format!(
            "{method}: the deadline passed while calling the {stage} stage ({attempts} attempts)"
        )
    };
    if let Some(last) = last {
        message.push_str(&format!(
            "; last error: {:?}: {}",
            last.code(),
            last.message()
        ));
    }
    Status::deadline_exceeded(message)
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The replica for the next attempt of a call that already tried `tried`, among the
    /// admitted ones.
    fn pick(&self, tried: &[Arc<Replica>]) -> Option<Arc<Replica>> {
        let now = Instant::now();
        let mut state = self.state();
        let n = state.replicas.len();
        // (admitted, serving) of each replica, read once.
        let probed: Vec<(bool, bool)> = state
            .replicas
            .iter()
            .map(|r| r.admitted_serving())
            .collect();
        let was_tried = |r: &Arc<Replica>| tried.iter().any(|t| Arc::ptr_eq(t, r));
        // Prefer replicas this call has not tried; once all have been, any will do.
        let fresh_left = (0..n).any(|i| probed[i].0 && !was_tried(&state.replicas[i]));
        let eligible = |i: usize| probed[i].0 && (!fresh_left || !was_tried(&state.replicas[i]));

        // Least in flight among the serving ones not backed off, scanning from the cursor so
        // that ties go round-robin.
        let mut best: Option<(usize, u64)> = None;
        for k in 0..n {
            let i = (state.cursor + k) % n;
            let r = &state.replicas[i];
            if !eligible(i) || !probed[i].1 || r.backed_off(now).is_some() {
                continue;
            }
            let load = r.in_flight.load(Ordering::Relaxed);
            if best.is_none_or(|(_, least)| load < least) {
                best = Some((i, load));
            }
        }
        // None: a serving one whose backoff ends first, else one not serving when last probed
        // (its probe may have been lost), never one not admitted.
        let chosen = match best {
            Some((i, _)) => i,
            None => (0..n)
                .filter(|&i| eligible(i))
                .min_by_key(|&i| (!probed[i].1, state.replicas[i].backed_off(now)))?,
        };
        state.cursor = (chosen + 1) % n;
        Some(Arc::clone(&state.replicas[chosen]))
    }

    /// UNAVAILABLE for a call that found no admitted replica, saying why.
    fn none_available(&self, method: &str) -> Status {
        let stage = &self.stage;
        let state = self.state();
        let refused: Vec<String> = state
            .replicas
            .iter()
            .filter_map(|r| match &r.probed().admission {
                Admission::Refused(reason) => Some(format!("{}: {reason}", r.name)),
                _ => None,
            })
            .collect();
        let message = if state.replicas.is_empty() {
            format!("{method}: the {stage} stage has no replica")
        } else if refused.is_empty() {
            format!("{method}: no {stage} replica has passed its probe yet")
        } else {
            format!(
                "{method}: no {stage} replica is available; kept out: {}",
                refused.join("; ")
            )
        };
        Status::unavailable(message)
    }

    /// A call on `replica` failed in transport: it may have gone or been replaced, so it is
    /// out of the rotation until probed again, which happens at once.
    fn failed_in_transport(&self, replica: &Replica) {
        if self.probe.is_none() {
            return;
        }
        replica.probed().serving = false;
        self.count_available();
        self.wake.notify_one();
    }

    /// Publishes how many replicas are admitted and serving now (a backoff, which ends by
    /// itself, does not count against a replica here).
    fn count_available(&self) {
        let count = self
            .state()
            .replicas
            .iter()
            .filter(|r| r.admitted_serving() == (true, true))
            .count();
        self.available.send_if_modified(|old| {
            let changed = *old != count;
            *old = count;
            changed
        });
    }

    /// Probes every current replica concurrently and applies the verdicts.
    async fn probe_round(&self) {
        let Some(probe) = &self.probe else { return };
        let replicas: Vec<Arc<Replica>> = self.state().replicas.clone();
        let mut probes = JoinSet::new();
        for (i, replica) in replicas.iter().enumerate() {
            let pending = probe.probe(replica.channel.clone());
            probes.spawn(async move {
                let verdict = tokio::time::timeout(PROBE_TIMEOUT, pending)
                    .await
                    .unwrap_or_else(|_| {
                        Verdict::NotServing(format!(
                            "no answer to the probe within {PROBE_TIMEOUT:?}"
                        ))
                    });
                (i, verdict)
            });
        }
        while let Some(done) = probes.join_next().await {
            let Ok((i, verdict)) = done else { continue };
            if replicas[i].apply(verdict, &self.stage) {
                self.refusals.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count_available();
    }

    /// Whether some DNS name has no replica now (it is then looked up again sooner).
    fn name_without_replica(&self) -> bool {
        let state = self.state();
        self.targets
            .iter()
            .enumerate()
            .any(|(index, t)| t.is_name() && !state.replicas.iter().any(|r| r.target == index))
    }

    /// Resolves the DNS names again and updates the replica list.
    async fn refresh(&self) {
        let mut added = false;
        for (index, target) in self.targets.iter().enumerate() {
            if !target.is_name() {
                continue;
            }
            let addrs = match target.resolve(&self.stage).await {
                Ok(addrs) => addrs,
                Err(e) => {
                    tracing::warn!(stage = %self.stage, error = %e, "DNS refresh failed; keeping the replicas");
                    continue;
                }
            };
            let mut state = self.state();
            let before = state.replicas.len();
            state.replicas.retain(|r| {
                let keep = r.target != index || addrs.contains(&r.addr);
                if !keep {
                    tracing::info!(stage = %self.stage, replica = %r.name, "replica dropped: its address no longer resolves");
                }
                keep
            });
            for &addr in &addrs {
                let known = state
                    .replicas
                    .iter()
                    .any(|r| r.target == index && r.addr == addr);
                if known {
                    continue;
                }
                match Replica::new(target, index, addr, &self.config, self.probe.is_some()) {
                    Ok(replica) => {
                        tracing::info!(stage = %self.stage, replica = %replica.name, "replica added");
                        state.replicas.push(Arc::new(replica));
                        added = true;
                    }
                    Err(e) => {
                        tracing::warn!(stage = %self.stage, %addr, error = %e, "resolved address not usable");
                    }
                }
            }
            if state.replicas.len() != before {
                let n = state.replicas.len().max(1);
                state.cursor %= n;
            }
        }
        self.count_available();
        if added {
            // New replicas take no call before their first probe.
            self.wake.notify_one();
        }
    }
}

/// Resolves the set's DNS names every `every` (every second at most while a name has no
/// replica) until `stop` closes (its sender is dropped with the set).
async fn refresh_loop(set: Weak<Inner>, mut stop: watch::Receiver<()>, every: Duration) {
    loop {
        let wait = match set.upgrade() {
            Some(inner) if inner.name_without_replica() => every.min(EMPTY_RETRY),
            Some(_) => every,
            None => return,
        };
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let Some(inner) = set.upgrade() else { return };
        inner.refresh().await;
    }
}

/// Probes the set's replicas at once, then every `every` and whenever woken (a replica added
/// or failed), until `stop` closes. `every` zero probes only when woken.
async fn probe_loop(set: Weak<Inner>, mut stop: watch::Receiver<()>, every: Duration) {
    loop {
        {
            let Some(inner) = set.upgrade() else { return };
            inner.probe_round().await;
        }
        let Some(wake) = set.upgrade().map(|inner| Arc::clone(&inner.wake)) else {
            return;
        };
        let tick = async {
            if every.is_zero() {
                std::future::pending::<()>().await;
            } else {
                tokio::time::sleep(every).await;
            }
        };
        // Only the `Weak` is held while waiting, so the set can be dropped meanwhile.
        tokio::select! {
            _ = stop.changed() => return,
            _ = wake.notified() => {}
            _ = tick => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_failures_are_retried() {
        let cases = [
            (Status::unavailable("anything"), Failure::Unavailable),
            (
                Status::unknown("transport error: connection reset"),
                Failure::Unavailable,
            ),
            (
                Status::internal("h2 protocol error: stream closed"),
                Failure::Unavailable,
            ),
            (
                Status::cancelled("operation was canceled: connection closed"),
                Failure::Unavailable,
            ),
            (
                Status::cancelled("operation was canceled"),
                Failure::Unavailable,
            ),
            (Status::resource_exhausted("queue full"), Failure::Busy),
            (Status::invalid_argument("bad prompt"), Failure::Final),
            (Status::internal("model failed"), Failure::Final),
            (Status::cancelled("Timeout expired"), Failure::Final),
            (Status::deadline_exceeded("late"), Failure::Final),
            (
                Status::failed_precondition("connection refused"),
                Failure::Final,
            ),
        ];
        for (status, expected) in cases {
            assert_eq!(classify(&status), expected, "{status:?}");
        }
    }
}
