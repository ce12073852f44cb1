//! Real gRPC over loopback: fake CLIP replicas, each served on its own Tokio runtime so that
//! shutting the runtime down kills it like a process (its connections close mid-call).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status};
use unclip_proto::v1::clip_service_client::ClipServiceClient;
use unclip_proto::v1::clip_service_server::{ClipService, ClipServiceServer};
use unclip_proto::v1::{
    EncodeImageRequest, EncodeImageResponse, EncodeTextRequest, EncodeTextResponse, GetInfoRequest,
    ModelInfo,
};
use unclip_replicas::{
    Probe, ReplicaConfig, ReplicaError, ReplicaSet, ReplicaStats, Verdict, deadline_of, request,
};

/// What a fake replica saw of a GetInfo request.
#[derive(Debug, Clone)]
struct Seen {
    /// The raw `grpc-timeout` header.
    grpc_timeout: Option<String>,
    /// The time left until `deadline_of(request)`, measured on arrival.
    left: Option<Duration>,
}

/// A CLIP service that only says who it is. EncodeText understands a few prompts:
/// "sleep N" sleeps N ms, "invalid" is refused with INVALID_ARGUMENT.
struct Fake {
    name: String,
    /// Answers EncodeText with RESOURCE_EXHAUSTED, like a service whose queue is full.
    busy: bool,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Gets the replica's name when an EncodeText starts.
    started: Option<mpsc::UnboundedSender<String>>,
}

#[tonic::async_trait]
impl ClipService for Fake {
    async fn encode_text(
        &self,
        request: Request<EncodeTextRequest>,
    ) -> Result<Response<EncodeTextResponse>, Status> {
        if let Some(started) = &self.started {
            let _ = started.send(self.name.clone());
        }
        if self.busy {
            return Err(Status::resource_exhausted("queue full"));
        }
        let prompt = request.into_inner().prompts.concat();
        if prompt == "invalid" {
            return Err(Status::invalid_argument("prompt is invalid"));
        }
        if let Some(ms) = prompt.strip_prefix("sleep ") {
            let ms: u64 = ms
                .parse()
                .map_err(|_| Status::invalid_argument("sleep N"))?;
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        Ok(Response::new(EncodeTextResponse::default()))
    }

    async fn encode_image(
        &self,
        _request: Request<EncodeImageRequest>,
    ) -> Result<Response<EncodeImageResponse>, Status> {
        Err(Status::failed_precondition("no image encoder"))
    }

    async fn get_info(
        &self,
        request: Request<GetInfoRequest>,
    ) -> Result<Response<ModelInfo>, Status> {
        let grpc_timeout = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let left = deadline_of(&request).map(|d| d.saturating_duration_since(Instant::now()));
        self.seen.lock().unwrap().push(Seen { grpc_timeout, left });
        Ok(Response::new(ModelInfo {
            model_id: self.name.clone(),
            ..ModelInfo::default()
        }))
    }
}

/// A fake replica served on 127.0.0.1 by a runtime of its own.
struct Replica {
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Replica {
    fn start(name: &str) -> Self {
        Self::start_with(name, false, None)
    }

    fn start_with(name: &str, busy: bool, started: Option<mpsc::UnboundedSender<String>>) -> Self {
        Self::start_at(name, "127.0.0.1:0", busy, started)
    }

    /// A replica on `addr` (e.g. the port of one killed before, to stand for its restart).
    fn start_at(
        name: &str,
        addr: &str,
        busy: bool,
        started: Option<mpsc::UnboundedSender<String>>,
    ) -> Self {
        // A killed replica's runtime lets go of its port in the background: try again.
        let mut tries = 0;
        let listener = loop {
            match std::net::TcpListener::bind(addr) {
                Ok(listener) => break listener,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 250 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("binding {addr}: {e}"),
            }
        };
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let fake = Fake {
            name: name.to_owned(),
            busy,
            seen: Arc::clone(&seen),
            started,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            tonic::transport::Server::builder()
                .add_service(ClipServiceServer::new(fake))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
        });
        Self {
            addr,
            runtime: Some(runtime),
            seen,
        }
    }

    /// `http://127.0.0.1:PORT`, the replica's display name in a set.
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kills the replica: every task of its runtime, connections included, is dropped.
    fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback address with nothing listening.
fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// Backoff long enough that a failed replica stays backed off for the whole test.
fn config() -> ReplicaConfig {
    ReplicaConfig {
        backoff_min: Duration::from_secs(60),
        backoff_max: Duration::from_secs(60),
        ..ReplicaConfig::default()
    }
}

async fn get_info(
    set: &ReplicaSet,
    deadline: Option<Instant>,
) -> Result<unclip_replicas::Answered<ModelInfo>, Status> {
    set.call("clip.GetInfo", deadline, |channel, timeout| async move {
        ClipServiceClient::new(channel)
            .get_info(request(GetInfoRequest {}, timeout))
            .await
    })
    .await
}

async fn encode_text(
    set: &ReplicaSet,
    prompt: &str,
) -> Result<unclip_replicas::Answered<EncodeTextResponse>, Status> {
    let prompt = prompt.to_owned();
    set.call("clip.EncodeText", None, move |channel, timeout| {
        let prompt = prompt.clone();
        async move {
            let message = EncodeTextRequest {
                prompts: vec![prompt],
            };
            ClipServiceClient::new(channel)
                .encode_text(request(message, timeout))
                .await
        }
    })
    .await
}

fn stats_of<'a>(stats: &'a [ReplicaStats], replica: &Replica) -> &'a ReplicaStats {
    stats
        .iter()
        .find(|s| s.address == replica.url())
        .expect("replica in snapshot")
}

/// Sequential calls alternate between two idle replicas.
#[tokio::test]
async fn sequential_calls_are_balanced() {
    let a = Replica::start("a");
    let b = Replica::start("b");
    let set = ReplicaSet::new("clip", &[a.url(), b.url()], config())
        .await
        .unwrap();
    let mut answered_by = Vec::new();
    for _ in 0..10 {
        let answered = get_info(&set, None).await.unwrap();
        assert_eq!(answered.attempts, 1);
        answered_by.push(answered.value.model_id);
    }
    let on_a = answered_by.iter().filter(|n| *n == "a").count();
    let on_b = answered_by.iter().filter(|n| *n == "b").count();
    assert_eq!(on_a + on_b, 10);
    assert!(on_a >= 3 && on_b >= 3, "{answered_by:?}");

    let stats = set.snapshot();
    assert_eq!(stats_of(&stats, &a).calls, on_a as u64);
    assert_eq!(stats_of(&stats, &b).calls, on_b as u64);
    assert!(
        stats
            .iter()
            .all(|s| s.available && s.failures == 0 && s.in_flight == 0)
    );
}

/// A replica with nothing listening is skipped after its first failure; every call succeeds.
#[tokio::test]
async fn dead_replica_is_retried_elsewhere_and_backed_off() {
    let a = Replica::start("a");
    let dead = closed_port();
    let set = ReplicaSet::new("clip", &[dead.clone(), a.url()], config())
        .await
        .unwrap();
    let mut retries = 0;
    for _ in 0..6 {
        let answered = get_info(&set, None).await.unwrap();
        assert_eq!(answered.value.model_id, "a");
        assert_eq!(answered.replica, a.url());
        retries += answered.attempts - 1;
    }
    assert!(retries >= 1);
    let stats = set.snapshot();
    let dead_stats = stats.iter().find(|s| s.address == dead).unwrap();
    assert!(!dead_stats.available, "{dead_stats:?}");
    assert!(dead_stats.retried > 0, "{dead_stats:?}");
    assert_eq!(dead_stats.retried, dead_stats.failures);
    assert!(stats_of(&stats, &a).available);
}

/// With every replica down, the call fails with UNAVAILABLE after `max_attempts`, naming
/// the method and how many replicas were tried.
#[tokio::test]
async fn all_replicas_down_returns_the_last_status() {
    let set = ReplicaSet::new("clip", &[closed_port(), closed_port()], config())
        .await
        .unwrap();
    let status = get_info(&set, None).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("clip.GetInfo failed on 2 replicas in 3 attempts: "),
        "{status:?}"
    );
    let stats = set.snapshot();
    assert_eq!(stats.iter().map(|s| s.calls).sum::<u64>(), 3);
    assert!(stats.iter().all(|s| !s.available));
}

/// A replica killed while serving a call: the call is finished by the other replica.
#[tokio::test]
async fn replica_killed_mid_call_is_retried() {
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let mut a = Replica::start_with("a", false, Some(started_tx.clone()));
    let mut b = Replica::start_with("b", false, Some(started_tx));
    let set = ReplicaSet::new("clip", &[a.url(), b.url()], config())
        .await
        .unwrap();

    let call = {
        let set = set.clone();
        tokio::spawn(async move { encode_text(&set, "sleep 300").await })
    };
    // Kill whichever replica got the call, while it sleeps.
    let first = started_rx.recv().await.unwrap();
    let (victim, survivor) = if first == "a" {
        (&mut a, &b)
    } else {
        (&mut b, &a)
    };
    let victim_url = victim.url();
    victim.kill();

    let answered = call.await.unwrap().expect("the survivor answers");
    assert_eq!(answered.attempts, 2);
    assert_eq!(answered.replica, survivor.url());
    let stats = set.snapshot();
    let victim_stats = stats.iter().find(|s| s.address == victim_url).unwrap();
    assert_eq!(victim_stats.retried, 1);
    assert!(!victim_stats.available);
    assert!(stats.iter().all(|s| s.in_flight == 0));
}

/// A full queue is tried elsewhere, without backing the replica off.
#[tokio::test]
async fn resource_exhausted_moves_on_without_backoff() {
    let busy = Replica::start_with("busy", true, None);
    let idle = Replica::start("idle");
    // A short busy backoff before the retry.
    let config = ReplicaConfig {
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(10),
        ..ReplicaConfig::default()
    };
    let set = ReplicaSet::new("clip", &[busy.url(), idle.url()], config)
        .await
        .unwrap();
    for _ in 0..4 {
        let answered = encode_text(&set, "hello").await.unwrap();
        assert_eq!(answered.replica, idle.url());
    }
    let stats = set.snapshot();
    let busy_stats = stats_of(&stats, &busy);
    assert!(busy_stats.available);
    assert!(busy_stats.retried >= 1);
}

/// The service's own refusals are returned at once, unchanged.
#[tokio::test]
async fn invalid_argument_is_not_retried() {
    let a = Replica::start("a");
    let b = Replica::start("b");
    let set = ReplicaSet::new("clip", &[a.url(), b.url()], config())
        .await
        .unwrap();
    let status = encode_text(&set, "invalid").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "prompt is invalid");
    let stats = set.snapshot();
    assert_eq!(stats.iter().map(|s| s.calls).sum::<u64>(), 1);
    assert_eq!(stats.iter().map(|s| s.failures).sum::<u64>(), 1);
    assert_eq!(stats.iter().map(|s| s.retried).sum::<u64>(), 0);
    assert!(stats.iter().all(|s| s.available));
}

/// A busy replica (a call in flight) is passed over for an idle one.
#[tokio::test]
async fn least_loaded_replica_is_chosen() {
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let a = Replica::start_with("a", false, Some(started_tx.clone()));
    let b = Replica::start_with("b", false, Some(started_tx));
    let set = ReplicaSet::new("clip", &[a.url(), b.url()], config())
        .await
        .unwrap();
    let slow = {
        let set = set.clone();
        tokio::spawn(async move { encode_text(&set, "sleep 500").await })
    };
    let busy = started_rx.recv().await.unwrap();
    for _ in 0..4 {
        let answered = get_info(&set, None).await.unwrap();
        assert_ne!(answered.value.model_id, busy);
    }
    let loaded: Vec<u64> = set.snapshot().iter().map(|s| s.in_flight).collect();
    assert_eq!(loaded.iter().sum::<u64>(), 1, "{loaded:?}");
    slow.await.unwrap().unwrap();
    assert!(set.snapshot().iter().all(|s| s.in_flight == 0));
}

/// The caller's deadline reaches the replica as `grpc-timeout`, no larger than the time left.
#[tokio::test]
async fn deadline_reaches_the_server() {
    let a = Replica::start("a");
    let set = ReplicaSet::new("clip", &[a.url()], config()).await.unwrap();
    let budget = Duration::from_secs(5);
    let deadline = Instant::now() + budget;
    get_info(&set, Some(deadline)).await.unwrap();
    let seen = a.seen.lock().unwrap()[0].clone();
    let header = seen.grpc_timeout.expect("grpc-timeout header");
    let timeout = unclip_replicas::parse_grpc_timeout(&header).unwrap();
    assert!(timeout <= budget && timeout > Duration::ZERO, "{header}");
    let left = seen.left.expect("deadline_of on the server");
    assert!(left <= timeout, "{left:?} > {timeout:?}");

    // Without a deadline, no header.
    get_info(&set, None).await.unwrap();
    let seen = a.seen.lock().unwrap()[1].clone();
    assert!(seen.grpc_timeout.is_none() && seen.left.is_none());
}

/// A deadline already passed fails before any attempt.
#[tokio::test]
async fn passed_deadline_makes_no_call() {
    let a = Replica::start("a");
    let set = ReplicaSet::new("clip", &[a.url()], config()).await.unwrap();
    let mut attempts = 0;
    let status = set
        .call("clip.GetInfo", Some(Instant::now()), |channel, timeout| {
            attempts += 1;
            async move {
                ClipServiceClient::new(channel)
                    .get_info(request(GetInfoRequest {}, timeout))
                    .await
            }
        })
        .await
        .unwrap_err();
    assert_eq!(attempts, 0);
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert!(status.message().contains("clip.GetInfo"), "{status:?}");
    assert!(status.message().contains("clip stage"), "{status:?}");
    assert_eq!(set.snapshot()[0].calls, 0);
}

/// A deadline that runs out during the call gives DEADLINE_EXCEEDED, not a retry.
#[tokio::test]
async fn deadline_running_out_mid_call() {
    let a = Replica::start("a");
    let b = Replica::start("b");
    let set = ReplicaSet::new("clip", &[a.url(), b.url()], config())
        .await
        .unwrap();
    let status = set
        .call(
            "clip.EncodeText",
            Some(Instant::now() + Duration::from_millis(100)),
            |channel, timeout| async move {
                let message = EncodeTextRequest {
                    prompts: vec!["sleep 5000".into()],
                };
                ClipServiceClient::new(channel)
                    .encode_text(request(message, timeout))
                    .await
            },
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let stats = set.snapshot();
    assert_eq!(stats.iter().map(|s| s.calls).sum::<u64>(), 1);
    assert!(stats.iter().all(|s| s.available && s.in_flight == 0));
}

/// `localhost:PORT` resolves (to 127.0.0.1 at least) and calls reach the server.
#[tokio::test]
async fn dns_names_become_replicas() {
    let a = Replica::start("a");
    let address = format!("localhost:{}", a.addr.port());
    let set = ReplicaSet::new("clip", &[address], config()).await.unwrap();
    let names: Vec<String> = set.channels().into_iter().map(|(name, _)| name).collect();
    let expected = format!("http://localhost:{} (127.0.0.1)", a.addr.port());
    assert!(names.contains(&expected), "{names:?}");
    for _ in 0..4 {
        let answered = get_info(&set, None).await.unwrap();
        assert_eq!(answered.value.model_id, "a");
        assert_eq!(answered.replica, expected);
    }
    assert_eq!(set.stage(), "clip");
}

/// Without DNS refresh, a name that does not resolve fails `new`, naming the address.
#[tokio::test]
async fn unresolvable_name_is_an_error() {
    let config = ReplicaConfig {
        dns_refresh: Duration::ZERO,
        ..config()
    };
    let error = ReplicaSet::new("decoder", &["no-such-host.invalid:1".to_owned()], config)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ReplicaError::Unresolved { .. } | ReplicaError::ResolvesToNothing { .. }
        ),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("no-such-host.invalid"),
        "{error}"
    );
}

/// Bad and empty address lists fail `new`; a replica down at start does not.
#[tokio::test]
async fn construction_errors() {
    let error = ReplicaSet::new("prior", &[], config()).await.unwrap_err();
    assert!(matches!(error, ReplicaError::NoAddress { .. }), "{error:?}");
    let error = ReplicaSet::new("prior", &["prior:port".to_owned()], config())
        .await
        .unwrap_err();
    assert!(
        matches!(error, ReplicaError::BadAddress { .. }),
        "{error:?}"
    );
    let set = ReplicaSet::new("prior", &ReplicaSet::parse_list(&closed_port()), config())
        .await
        .unwrap();
    assert_eq!(set.channels().len(), 1);
    assert!(format!("{set:?}").contains("prior"));
}

/// The set can be shared across tasks and its calls spawned (tonic handlers need `Send`).
#[test]
fn set_and_calls_are_send() {
    fn send_sync<T: Send + Sync + Clone + std::fmt::Debug>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<ReplicaSet>();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let set = runtime
        .block_on(ReplicaSet::new("clip", &[closed_port()], config()))
        .unwrap();
    let call = get_info(&set, None);
    send(&call);
    drop(call);
}

/// Re-resolving an unchanged name keeps the same replicas (no duplicates, counters kept).
#[tokio::test]
async fn dns_refresh_keeps_unchanged_replicas() {
    let a = Replica::start("a");
    let address = format!("localhost:{}", a.addr.port());
    let config = ReplicaConfig {
        dns_refresh: Duration::from_millis(10),
        ..config()
    };
    let set = ReplicaSet::new("clip", &[address], config).await.unwrap();
    let before: Vec<String> = set.snapshot().into_iter().map(|s| s.address).collect();
    get_info(&set, None).await.unwrap();
    // Let several refreshes run.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = set.snapshot();
    let names: Vec<&str> = after.iter().map(|s| s.address.as_str()).collect();
    assert_eq!(names, before, "replicas changed");
    assert!(after.iter().map(|s| s.calls).sum::<u64>() >= 1);
    get_info(&set, None).await.unwrap();
}

/// With DNS refresh, a name that resolves to nothing is not an error: the set starts empty,
/// keeps resolving, reports no replica available, and calls get UNAVAILABLE saying so.
#[tokio::test]
async fn a_name_that_resolves_to_nothing_is_looked_up_again() {
    let config = ReplicaConfig {
        dns_refresh: Duration::from_millis(20),
        ..config()
    };
    let set = ReplicaSet::new("decoder", &["no-such-host.invalid:1".to_owned()], config)
        .await
        .unwrap();
    assert!(set.snapshot().is_empty());
    assert_eq!(*set.available().borrow(), 0);
    // Several lookups later, still nothing and still no error.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = get_info(&set, None).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("has no replica"), "{status:?}");
}

/// A probe standing for the gateway's: GetInfo, ready when the model id starts with
/// `expected` (the fakes' model id is their name, e.g. "v1-a"), refused otherwise,
/// not serving when GetInfo fails.
fn version_probe(expected: &'static str) -> Arc<dyn Probe> {
    Arc::new(move |channel| async move {
        match ClipServiceClient::new(channel)
            .get_info(GetInfoRequest {})
            .await
        {
            Ok(info) if info.get_ref().model_id.starts_with(expected) => Verdict::Ready,
            Ok(info) => Verdict::Refused(format!(
                "serves {} (expected {expected})",
                info.get_ref().model_id
            )),
            Err(status) => Verdict::NotServing(status.message().to_owned()),
        }
    })
}

/// Probes every 20 ms, with the long backoff of [`config`].
fn probing() -> ReplicaConfig {
    ReplicaConfig {
        probe_interval: Duration::from_millis(20),
        dns_refresh: Duration::from_millis(20),
        ..config()
    }
}

/// Polls `check` every 10 ms for up to 10 s.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A listed replica serving another version is kept out: it gets no call, is counted and
/// reported refused, and the other replica takes every call.
#[tokio::test]
async fn a_listed_replica_of_another_version_gets_no_call() {
    let old = Replica::start("v1-a");
    let new = Replica::start("v2-b");
    let set = ReplicaSet::probed(
        "clip",
        &[old.url(), new.url()],
        probing(),
        version_probe("v1"),
    )
    .await
    .unwrap();
    set.probe_now().await;
    for _ in 0..6 {
        let answered = get_info(&set, None).await.unwrap();
        assert_eq!(answered.value.model_id, "v1-a");
    }
    let stats = set.snapshot();
    let refused = stats_of(&stats, &new);
    assert_eq!(refused.calls, 0);
    assert!(!refused.available);
    assert!(
        refused
            .refused
            .as_deref()
            .is_some_and(|r| r.contains("serves v2-b")),
        "{refused:?}"
    );
    assert_eq!(stats_of(&stats, &old).calls, 6);
    // Counted once, however often it is probed again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(set.refusals(), 1);
    assert_eq!(*set.available().borrow(), 1);
}

/// A replica never probed successfully gets no call: with only a replica of another version,
/// calls fail with UNAVAILABLE naming it, and the set reports none available.
#[tokio::test]
async fn only_replicas_of_another_version_means_unavailable() {
    let new = Replica::start("v2-b");
    let set = ReplicaSet::probed("clip", &[new.url()], probing(), version_probe("v1"))
        .await
        .unwrap();
    set.probe_now().await;
    let status = get_info(&set, None).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("kept out"), "{status:?}");
    assert!(status.message().contains("serves v2-b"), "{status:?}");
    assert_eq!(set.snapshot()[0].calls, 0);
    assert_eq!(*set.available().borrow(), 0);
}

/// A replica that appears later behind a DNS name (here: a server starting on the port a
/// `localhost` name points to) gets no call while it serves another version; once the
/// replica there is rolled to the expected version, the next probe admits it and it takes
/// calls.
#[tokio::test]
async fn a_replica_that_joins_later_is_probed_before_its_first_call() {
    let old = Replica::start("v1-a");
    let port = closed_port().rsplit(':').next().unwrap().to_owned();
    let name = format!("localhost:{port}");
    let set = ReplicaSet::probed("clip", &[old.url(), name], probing(), version_probe("v1"))
        .await
        .unwrap();
    set.probe_now().await;
    assert_eq!(*set.available().borrow(), 1);

    // Another version comes up there: probed, refused, never called.
    let mut wrong = Replica::start_at("v2-b", &format!("127.0.0.1:{port}"), false, None);
    until("the new replica to be refused", || set.refusals() == 1).await;
    for _ in 0..6 {
        let answered = get_info(&set, None).await.unwrap();
        assert_eq!(answered.value.model_id, "v1-a");
    }
    let joined = |set: &ReplicaSet| {
        set.snapshot()
            .into_iter()
            .find(|s| s.address.contains(&format!(":{port} (127.0.0.1)")))
            .expect("the localhost replica is listed")
    };
    assert_eq!(joined(&set).calls, 0);

    // Rolled to the expected version: admitted, and it takes calls.
    wrong.kill();
    let _right = Replica::start_at("v1-b", &format!("127.0.0.1:{port}"), false, None);
    until("the rolled replica to be admitted", || {
        joined(&set).available
    })
    .await;
    let mut answered_by = std::collections::BTreeSet::new();
    for _ in 0..6 {
        answered_by.insert(get_info(&set, None).await.unwrap().value.model_id);
    }
    assert!(answered_by.contains("v1-b"), "{answered_by:?}");
    assert!(!answered_by.contains("v2-b"), "{answered_by:?}");
}

/// `available` follows the replicas: 1 while the only replica serves, 0 once it is killed,
/// 1 again when it comes back.
#[tokio::test]
async fn available_follows_the_replicas() {
    let mut only = Replica::start("v1-a");
    let addr = only.addr.to_string();
    let set = ReplicaSet::probed("clip", &[only.url()], probing(), version_probe("v1"))
        .await
        .unwrap();
    set.probe_now().await;
    let available = set.available();
    assert_eq!(*available.borrow(), 1);
    only.kill();
    until("no replica available", || *available.borrow() == 0).await;
    let _back = Replica::start_at("v1-a", &addr, false, None);
    until("the replica back", || *available.borrow() == 1).await;
    assert_eq!(get_info(&set, None).await.unwrap().value.model_id, "v1-a");
}

/// What a fake call saw: the (virtual) instant of each attempt.
type Attempts = Arc<Mutex<Vec<Instant>>>;

/// A call whose first `busy` attempts answer RESOURCE_EXHAUSTED (no network: the channel is
/// not used), recording when each attempt started.
async fn busy_call(
    set: &ReplicaSet,
    busy: usize,
    deadline: Option<Instant>,
    attempts: &Attempts,
) -> Result<unclip_replicas::Answered<()>, Status> {
    set.call("clip.EncodeText", deadline, |_channel, _timeout| {
        let attempts = Arc::clone(attempts);
        async move {
            let mut attempts = attempts.lock().unwrap();
            attempts.push(Instant::now());
            if attempts.len() <= busy {
                Err(Status::resource_exhausted("queue full"))
            } else {
                Ok(Response::new(()))
            }
        }
    })
    .await
}

/// Busy backoff: 100 ms doubling, at most 1 s.
fn busy_config() -> ReplicaConfig {
    ReplicaConfig {
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        ..ReplicaConfig::default()
    }
}

/// A RESOURCE_EXHAUSTED is retried after a jittered backoff that grows with each one: the
/// first retry waits 50..=100 ms, the second 100..=200 ms (virtual time).
#[tokio::test(start_paused = true)]
async fn resource_exhausted_is_retried_after_a_jittered_backoff() {
    let set = ReplicaSet::new("clip", &[closed_port()], busy_config())
        .await
        .unwrap();
    for _ in 0..5 {
        let attempts = Attempts::default();
        let answered = busy_call(&set, 2, None, &attempts).await.unwrap();
        assert_eq!(answered.attempts, 3);
        let at = attempts.lock().unwrap().clone();
        let (first, second) = (at[1] - at[0], at[2] - at[1]);
        assert!(
            first >= Duration::from_millis(50) && first <= Duration::from_millis(100),
            "{first:?}"
        );
        assert!(
            second >= Duration::from_millis(100) && second <= Duration::from_millis(200),
            "{second:?}"
        );
    }
}

/// A backoff that would pass the deadline is not waited: the RESOURCE_EXHAUSTED comes back at
/// once, after one attempt, saying there was no time left.
#[tokio::test(start_paused = true)]
async fn resource_exhausted_backoff_is_bounded_by_the_deadline() {
    let set = ReplicaSet::new("clip", &[closed_port()], busy_config())
        .await
        .unwrap();
    let attempts = Attempts::default();
    let start = Instant::now();
    let deadline = start + Duration::from_millis(40);
    let status = busy_call(&set, 5, Some(deadline), &attempts)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("no time left"), "{status:?}");
    assert_eq!(attempts.lock().unwrap().len(), 1);
    assert!(Instant::now() < deadline);
}
