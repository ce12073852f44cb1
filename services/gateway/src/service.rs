//! The `unclip.v1.Gateway` handlers: validation and the capability run for unary calls, the
//! same run in a task feeding a stream for the `...Stream` calls, deadlines, counters.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use unclip_proto::v1::gateway_server::Gateway as GatewayService;
use unclip_proto::v1::{
    GatewayInfo, GatewayStats, GenerateRequest, GetInfoRequest, GetStatsRequest, ImagesEvent,
    ImagesResponse, InpaintRequest, InterpolateRequest, ReplicaInfo, TextDiffRequest, VaryRequest,
    images_event,
};
use unclip_replicas::deadline_of;
use unclip_server::ModelSlot;
use unclip_server::metrics::{Labels, Metrics, counters, counters_over, gauges_over, labels};

use crate::error::Result;
use crate::pipeline::{Gateway, Run, generate, inpaint, interpolate, text_diff, vary};
use crate::progress::Reporter;
use crate::stats::RequestStats;

/// The fully qualified service name health reports under.
pub const SERVICE_NAME: &str = "unclip.v1.Gateway";

/// Events buffered per stream before the run waits for the client.
const STREAM_BUFFER: usize = 16;

/// One request of any capability.
#[derive(Debug)]
enum Job {
    Generate(GenerateRequest),
    Vary(VaryRequest),
    Interpolate(InterpolateRequest),
    TextDiff(TextDiffRequest),
    Inpaint(InpaintRequest),
}

impl Job {
    fn name(&self) -> &'static str {
        match self {
            Job::Generate(_) => "generate",
            Job::Vary(_) => "vary",
            Job::Interpolate(_) => "interpolate",
            Job::TextDiff(_) => "text_diff",
            Job::Inpaint(_) => "inpaint",
        }
    }

    fn previews(&self) -> bool {
        match self {
            Job::Generate(r) => r.previews,
            Job::Vary(r) => r.previews,
            Job::Interpolate(r) => r.previews,
            Job::TextDiff(r) => r.previews,
            Job::Inpaint(r) => r.previews,
        }
    }

    async fn run(self, run: Run<'_>) -> Result<ImagesResponse> {
        match self {
            Job::Generate(r) => generate::generate(run, r).await,
            Job::Vary(r) => vary::vary(run, r).await,
            Job::Interpolate(r) => interpolate::interpolate(run, r).await,
            Job::TextDiff(r) => text_diff::text_diff(run, r).await,
            Job::Inpaint(r) => inpaint::inpaint(run, r).await,
        }
    }
}

/// A stream of events.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<ImagesEvent, Status>> + Send>>;

/// The handlers.
#[derive(Debug, Clone)]
pub struct GatewayApi {
    /// Filled once the stages have been checked.
    slot: ModelSlot<Gateway>,
    /// Request counters.
    stats: Arc<RequestStats>,
    /// The deadline of requests whose client set none.
    request_timeout: Duration,
    /// The gateway's own version.
    version: &'static str,
}

impl GatewayApi {
    /// Handlers over a slot the start-up check fills.
    pub fn new(slot: ModelSlot<Gateway>, request_timeout: Duration) -> Self {
        Self {
            slot,
            stats: Arc::default(),
            request_timeout,
            version: env!("CARGO_PKG_VERSION"),
        }
    }

    fn gateway(&self) -> Result<Arc<Gateway>, Status> {
        self.slot.get().map_err(Status::from)
    }

    /// The client's deadline, bounded by the configured request timeout.
    fn deadline<T>(&self, request: &Request<T>) -> Instant {
        let default = Instant::now() + self.request_timeout;
        deadline_of(request).map_or(default, |d| d.min(default))
    }

    async fn unary(&self, deadline: Instant, job: Job) -> Result<Response<ImagesResponse>, Status> {
        let gw = self.gateway()?;
        let name = job.name();
        let started = Instant::now();
        let result = job
            .run(Run::new(&gw, Some(deadline), Reporter::silent()))
            .await
            .map_err(Status::from);
        self.stats.record_result(name, &result, started.elapsed());
        result.map(Response::new)
    }

    fn stream(&self, deadline: Instant, job: Job) -> Result<Response<EventStream>, Status> {
        let gw = self.gateway()?;
        let stats = Arc::clone(&self.stats);
        let (events, receiver) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(async move {
            let name = job.name();
            let started = Instant::now();
            let reporter = Reporter::streaming(events.clone(), job.previews());
            let work = job.run(Run::new(&gw, Some(deadline), reporter));
            // A client that goes away closes the stream: the run is dropped, which cancels its
            // stage call in flight and makes no more.
            tokio::select! {
                result = work => {
                    let result = result.map_err(Status::from);
                    stats.record_result(name, &result, started.elapsed());
                    let last = result.map(|response| ImagesEvent {
                        event: Some(images_event::Event::Result(response)),
                    });
                    let _ = events.send(last).await;
                }
                () = events.closed() => {
                    stats.record(name, "cancelled");
                    tracing::info!(capability = name, "client went away; request dropped");
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

#[tonic::async_trait]
impl GatewayService for GatewayApi {
    async fn generate(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<ImagesResponse>, Status> {
        let deadline = self.deadline(&request);
        self.unary(deadline, Job::Generate(request.into_inner()))
            .await
    }

    type GenerateStreamStream = EventStream;

    async fn generate_stream(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let deadline = self.deadline(&request);
        self.stream(deadline, Job::Generate(request.into_inner()))
    }

    async fn vary(
        &self,
        request: Request<VaryRequest>,
    ) -> Result<Response<ImagesResponse>, Status> {
        let deadline = self.deadline(&request);
        self.unary(deadline, Job::Vary(request.into_inner())).await
    }

    type VaryStreamStream = EventStream;

    async fn vary_stream(
        &self,
        request: Request<VaryRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let deadline = self.deadline(&request);
        self.stream(deadline, Job::Vary(request.into_inner()))
    }

    async fn interpolate(
        &self,
        request: Request<InterpolateRequest>,
    ) -> Result<Response<ImagesResponse>, Status> {
        let deadline = self.deadline(&request);
        self.unary(deadline, Job::Interpolate(request.into_inner()))
            .await
    }

    type InterpolateStreamStream = EventStream;

    async fn interpolate_stream(
        &self,
        request: Request<InterpolateRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let deadline = self.deadline(&request);
        self.stream(deadline, Job::Interpolate(request.into_inner()))
    }

    async fn text_diff(
        &self,
        request: Request<TextDiffRequest>,
    ) -> Result<Response<ImagesResponse>, Status> {
        let deadline = self.deadline(&request);
        self.unary(deadline, Job::TextDiff(request.into_inner()))
            .await
    }

    type TextDiffStreamStream = EventStream;

    async fn text_diff_stream(
        &self,
        request: Request<TextDiffRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let deadline = self.deadline(&request);
        self.stream(deadline, Job::TextDiff(request.into_inner()))
    }

    async fn inpaint(
        &self,
        request: Request<InpaintRequest>,
    ) -> Result<Response<ImagesResponse>, Status> {
        let deadline = self.deadline(&request);
        self.unary(deadline, Job::Inpaint(request.into_inner()))
            .await
    }

    type InpaintStreamStream = EventStream;

    async fn inpaint_stream(
        &self,
        request: Request<InpaintRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let deadline = self.deadline(&request);
        self.stream(deadline, Job::Inpaint(request.into_inner()))
    }

    async fn get_info(
        &self,
        _request: Request<GetInfoRequest>,
    ) -> Result<Response<GatewayInfo>, Status> {
        let gw = self.gateway()?;
        Ok(Response::new(GatewayInfo {
            model: Some(gw.infos.decoder.clone()),
            server_version: self.version.to_string(),
            max_images: gw.limits.max_images,
            max_frames: gw.limits.max_frames,
            max_prompt_chars: gw.limits.max_prompt_chars,
            max_image_bytes: gw.limits.image.max_bytes as u64,
            replicas: replicas(&gw),
            cache_backend: gw.cache.backend().to_string(),
        }))
    }

    async fn get_stats(
        &self,
        _request: Request<GetStatsRequest>,
    ) -> Result<Response<GatewayStats>, Status> {
        let gw = self.gateway()?;
        let cache = gw.cache.stats();
        Ok(Response::new(GatewayStats {
            replicas: replicas(&gw),
            cache_hits: cache.hits,
            cache_misses: cache.misses,
            cache_errors: cache.errors,
            cache_rejected: cache.rejected,
            cache_healthy: cache.healthy,
            cache_backend: cache.backend.to_string(),
            requests: self.stats.snapshot(),
        }))
    }
}

impl GatewayApi {
    /// What `GET /metrics` reports: requests by capability and outcome, the seconds of
    /// successful ones, and, once the stages are connected, every replica's calls, failures,
    /// retries, calls in flight and availability, and the cache's counters.
    pub fn metrics(&self) -> Metrics {
        let (slot, stats) = (self.slot.clone(), Arc::clone(&self.stats));
        Metrics::new(move |registry| {
            let requests = stats.snapshot().into_iter().map(|(key, count)| {
                let (capability, outcome) = key.split_once(' ').unwrap_or((&key, ""));
                (
                    labels([("capability", capability), ("outcome", outcome)]),
                    count,
                )
            });
            counters(
                registry,
                "unclip_gateway_requests",
                "Requests by capability and outcome.",
                requests,
            );
            registry.register(
                "unclip_gateway_request_duration_seconds",
                "Seconds of successful requests, by capability.",
                stats.durations(),
            );
            let Ok(gw) = slot.get() else {
                return;
            };
            let replicas: Vec<(Labels, ReplicaInfo)> = replicas(&gw)
                .into_iter()
                .map(|r| (labels([("stage", &r.stage), ("replica", &r.address)]), r))
                .collect();
            counters_over(
                registry,
                &replicas,
                &[
                    (
                        "unclip_gateway_stage_calls",
                        "Stage calls sent, per replica.",
                        |r| r.calls,
                    ),
                    (
                        "unclip_gateway_stage_failures",
                        "Stage calls that failed, per replica.",
                        |r| r.failures,
                    ),
                    (
                        "unclip_gateway_stage_retries",
                        "Failed stage calls retried on another replica, per replica.",
                        |r| r.retried,
                    ),
                ],
            );
            gauges_over(
                registry,
                &replicas,
                &[
                    (
                        "unclip_gateway_stage_in_flight",
                        "Stage calls in flight, per replica.",
                        |r| r.in_flight as i64,
                    ),
                    (
                        "unclip_gateway_replica_available",
                        "1 when the replica is not backed off.",
                        |r| i64::from(r.available),
                    ),
                ],
            );
            let cache = [(labels([("backend", gw.cache.backend())]), gw.cache.stats())];
            counters_over(
                registry,
                &cache,
                &[
                    (
                        "unclip_gateway_cache_hits",
                        "Cache reads that found a valid entry.",
                        |c| c.hits,
                    ),
                    (
                        "unclip_gateway_cache_misses",
                        "Cache reads that found nothing usable.",
                        |c| c.misses,
                    ),
                    (
                        "unclip_gateway_cache_errors",
                        "Cache operations that failed or timed out.",
                        |c| c.errors,
                    ),
                    (
                        "unclip_gateway_cache_rejected",
                        "Cache entries found but refused.",
                        |c| c.rejected,
                    ),
                ],
            );
            gauges_over(
                registry,
                &cache,
                &[(
                    "unclip_gateway_cache_healthy",
                    "1 when the last cache operation succeeded.",
                    |c| i64::from(c.healthy),
                )],
            );
        })
    }
}

/// Every replica of every stage with its counters.
fn replicas(gw: &Gateway) -> Vec<ReplicaInfo> {
    [&gw.stages.clip, &gw.stages.prior, &gw.stages.decoder]
        .into_iter()
        .flat_map(|set| {
            let stage = set.stage().to_string();
            set.snapshot().into_iter().map(move |r| ReplicaInfo {
                stage: stage.clone(),
                address: r.address,
                available: r.available,
                calls: r.calls,
                failures: r.failures,
                retried: r.retried,
                in_flight: r.in_flight,
            })
        })
        .collect()
}
