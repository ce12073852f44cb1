//! The request layer seen through real gRPC on 127.0.0.1:0: a gateway served as in production
//! (`crate::serve`) over a CLIP stage that starts every EncodeText and never answers it, so a
//! request stays in flight until its deadline or until its client goes away.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Response, Status};
use unclip_cache::Cache;
use unclip_proto::v1::clip_service_server::{ClipService, ClipServiceServer};
use unclip_proto::v1::gateway_client::GatewayClient;
use unclip_proto::v1::{
    DecoderSettings, EncodeImageRequest, EncodeImageResponse, EncodeTextRequest,
    EncodeTextResponse, GenerateRequest, GetInfoRequest, GetStatsRequest, InpaintRequest,
    InterpolateRequest, ModelInfo, RequestLimits, SamplingDefaults, TextDiffRequest,
    UpsamplerStageInfo, VariationMode, VaryRequest, images_event,
};
use unclip_server::image_input::ImageLimits;

use crate::admission::{Admission, AdmissionArgs, Estimate, Misses, SETTLED};
use crate::error::RETRY_AFTER;
use crate::layer::{Capability, Cost, Permit, Refusal, RequestContext, RequestLayer};
use crate::pipeline::{Gateway, Limits};
use crate::stages::{StageInfos, Stages};
use crate::{Config, Stage};

/// A layer that records what it is asked, refuses when told to, and counts the permits alive.
#[derive(Debug, Default)]
struct Gate {
    seen: Mutex<Vec<RequestContext>>,
    refusal: Mutex<Option<Refusal>>,
    held: Arc<AtomicUsize>,
}

/// One live permit of a [`Gate`].
struct Held(Arc<AtomicUsize>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tonic::async_trait]
impl RequestLayer for Gate {
    async fn admit(&self, request: &RequestContext) -> Result<Permit, Refusal> {
        self.seen.lock().unwrap().push(request.clone());
        if let Some(refusal) = self.refusal.lock().unwrap().clone() {
            return Err(refusal);
        }
        self.held.fetch_add(1, Ordering::SeqCst);
        Ok(Permit::holding(Held(Arc::clone(&self.held))))
    }
}

impl Gate {
    fn refuse(&self, refusal: Option<Refusal>) {
        *self.refusal.lock().unwrap() = refusal;
    }

    fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<RequestContext> {
        self.seen.lock().unwrap().clone()
    }
}

/// A CLIP stage whose EncodeText starts (reported on `started`), never answers, and reports
/// on `dropped` when the gateway gives the call up.
#[derive(Debug, Clone)]
struct StuckClip {
    started: mpsc::UnboundedSender<()>,
    dropped: mpsc::UnboundedSender<()>,
}

/// Sends on drop.
struct OnDrop(mpsc::UnboundedSender<()>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

#[tonic::async_trait]
impl ClipService for StuckClip {
    async fn encode_text(
        &self,
        _request: Request<EncodeTextRequest>,
    ) -> Result<Response<EncodeTextResponse>, Status> {
        let _guard = OnDrop(self.dropped.clone());
        let _ = self.started.send(());
        std::future::pending().await
    }

    async fn encode_image(
        &self,
        _request: Request<EncodeImageRequest>,
    ) -> Result<Response<EncodeImageResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn get_info(
        &self,
        _request: Request<GetInfoRequest>,
    ) -> Result<Response<ModelInfo>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

/// A served gateway with its layer and the stuck stage's reports.
struct Harness {
    client: GatewayClient<Channel>,
    gate: Arc<Gate>,
    started: mpsc::UnboundedReceiver<()>,
    dropped: mpsc::UnboundedReceiver<()>,
    address: SocketAddr,
}

/// A model of 25/25/7 default steps, two upsampler stages and best-of up to 4.
fn infos() -> StageInfos {
    let info = ModelInfo {
        model_id: "stuck".into(),
        version: "sha256-0".into(),
        embedding_dim: 4,
        context_length: 8,
        decoder_image_size: 8,
        upsamplers: vec![
            UpsamplerStageInfo {
                input_size: 8,
                output_size: 16,
            },
            UpsamplerStageInfo {
                input_size: 16,
                output_size: 32,
            },
        ],
        defaults: Some(SamplingDefaults {
            prior_steps: 25,
            decoder_steps: 25,
            upsampler_steps: 7,
            prior_guidance_scale: 4.0,
            decoder_guidance_scale: 8.0,
        }),
        limits: Some(RequestLimits {
            min_steps: 2,
            max_steps: 1000,
            max_best_of: 4,
            ..Default::default()
        }),
        ..Default::default()
    };
    StageInfos {
        clip: info.clone(),
        prior: info.clone(),
        decoder: info,
    }
}

async fn start() -> Harness {
    start_with(Admission::new(AdmissionArgs::default())).await
}

/// [`start`], with `admission` after the gate.
async fn start_with(admission: Admission) -> Harness {
    let (started_tx, started) = mpsc::unbounded_channel();
    let (dropped_tx, dropped) = mpsc::unbounded_channel();
    let clip = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let clip_url = format!("http://{}", clip.local_addr().unwrap());
    let stuck = StuckClip {
        started: started_tx,
        dropped: dropped_tx,
    };
    tokio::spawn(
        Server::builder()
            .add_service(ClipServiceServer::new(stuck))
            .serve_with_incoming(TcpListenerStream::new(clip)),
    );

    let config = Config::from_args([
        "unclip-gateway",
        "--clip",
        &clip_url,
        "--prior",
        &clip_url,
        "--decoder",
        &clip_url,
        "--request-timeout-secs",
        "60",
    ])
    .unwrap();
    let load = {
        let config = config.clone();
        async move {
            Ok(Gateway {
                stages: Stages::unprobed(&config).await?,
                infos: infos(),
                cache: Cache::disabled(),
                limits: Limits {
                    max_images: 10,
                    max_frames: 16,
                    max_prompt_chars: 100,
                    image: ImageLimits {
                        max_bytes: 1 << 20,
                        max_side: 1024,
                    },
                },
            })
        }
    };
    let gate = Arc::new(Gate::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let layer: Arc<dyn RequestLayer> = gate.clone();
    tokio::spawn(async move {
        let ready = tokio::sync::watch::channel(true).1;
        crate::serve(
            &config,
            layer,
            admission,
            listener,
            load,
            ready,
            std::future::pending(),
        )
        .await
    });
    let client = GatewayClient::connect(format!("http://{address}"))
        .await
        .unwrap();
    let harness = Harness {
        client,
        gate,
        started,
        dropped,
        address,
    };
    // Ready once the slot is filled: GetInfo stops answering UNAVAILABLE (the layer admits it).
    for _ in 0..200 {
        match harness.client.clone().get_info(GetInfoRequest {}).await {
            Err(s) if s.code() == Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Ok(_) => break,
            Err(s) => panic!("GetInfo: {s:?}"),
        }
    }
    harness.gate.seen.lock().unwrap().clear();
    harness
}

/// A Generate of 2 images, best of 3, 10 prior steps, the rest the defaults, from `key`.
fn generate(key: &str, timeout: Option<Duration>) -> Request<GenerateRequest> {
    let mut request = Request::new(GenerateRequest {
        prompt: "a red circle".into(),
        num_images: Some(2),
        best_of: Some(3),
        prior_steps: Some(10),
        decoder: Some(DecoderSettings::default()),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    request
}

/// GetStats.
async fn stats(client: &mut GatewayClient<Channel>) -> unclip_proto::v1::GatewayStats {
    client
        .get_stats(GetStatsRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Waits up to 5 s for `gate` to hold `n` permits.
async fn wait_held(gate: &Gate, n: usize) {
    for _ in 0..500 {
        if gate.held() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} permits held, expected {n}", gate.held());
}

/// Waits up to 5 s for a report on `rx`.
async fn report(rx: &mut mpsc::UnboundedReceiver<()>, what: &str) {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no report that the stage call {what}"))
        .unwrap();
}

/// The layer is asked before unary and streaming calls and GetInfo/GetStats, told the caller's
/// token, peer, deadline and the request's cost; its refusal is the call's status (on the
/// call itself for a stream), with the retry hint in the metadata, and nothing reaches a
/// stage.
#[tokio::test]
async fn a_refusal_is_the_answer_on_every_path() {
    let mut h = start().await;
    h.gate.refuse(Some(Refusal::Unauthenticated(
        "missing or unknown API key".into(),
    )));

    let before = tokio::time::Instant::now();
    let status = h
        .client
        .generate(generate("key-1", Some(Duration::from_secs(30))))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), "missing or unknown API key");
    let status = h
        .client
        .generate_stream(generate("key-2", None))
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = h.client.get_info(GetInfoRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    h.gate.refuse(Some(Refusal::ResourceExhausted {
        message: "2 requests in flight, the limit is 2".into(),
        retry_after: Some(Duration::from_millis(1200)),
    }));
    let status = h
        .client
        .generate(generate("key-1", None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(status.message(), "2 requests in flight, the limit is 2");
    assert_eq!(status.metadata().get(RETRY_AFTER).unwrap(), "2");
    let status = h.client.get_stats(GetStatsRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);

    let seen = h.gate.seen();
    let asked: Vec<_> = seen.iter().map(|c| (c.capability, c.streaming)).collect();
    assert_eq!(
        asked,
        [
            (Capability::Generate, false),
            (Capability::Generate, true),
            (Capability::Info, false),
            (Capability::Generate, false),
            (Capability::Stats, false),
        ]
    );
    let first = &seen[0];
    assert_eq!(first.caller.bearer.as_deref(), Some("key-1"));
    assert_eq!(seen[1].caller.bearer.as_deref(), Some("key-2"));
    assert_eq!(seen[2].caller.bearer, None);
    let peer = first.caller.peer.expect("the peer address");
    assert!(peer.ip().is_loopback() && peer != h.address, "{peer}");
    // The client's 30 s, not the 60 s request timeout; without one, the request timeout.
    let deadline = first.caller.deadline.expect("the client's deadline");
    assert!(
        deadline > before + Duration::from_secs(29) && deadline <= before + Duration::from_secs(31)
    );
    assert_eq!(first.deadline, deadline);
    assert_eq!(seen[1].caller.deadline, None);
    assert!(seen[1].deadline > before + Duration::from_secs(59));
    // 2 images × best of 3 × (10 prior + 25 decoder + 2 × 7 upsampler steps).
    let cost = Cost {
        images: 2,
        best_of: 3,
        steps: 49,
    };
    assert_eq!((first.cost, first.cost.units()), (cost, 294));
    assert_eq!(seen[2].cost, Cost::default());

    assert_eq!(h.gate.held(), 0);
    assert!(
        h.started.try_recv().is_err(),
        "a refused request reached a stage"
    );

    // Refusals are counted by their code; GetInfo and GetStats are not counted.
    h.gate.refuse(None);
    let stats = stats(&mut h.client).await;
    assert_eq!(stats.requests["generate unauthenticated"], 2);
    assert_eq!(stats.requests["generate resource_exhausted"], 1);
    assert_eq!(stats.requests.len(), 2, "{:?}", stats.requests);
}

/// An admitted request holds its permit while it runs and gives it back when it ends: at its
/// deadline, and when its client goes away (unary or streaming), which also cancels the
/// stage call in flight.
#[tokio::test]
async fn the_permit_lives_as_long_as_the_request() {
    let mut h = start().await;

    // Unary, to its deadline.
    let call = {
        let mut client = h.client.clone();
        tokio::spawn(async move {
            client
                .generate(generate("k", Some(Duration::from_millis(800))))
                .await
        })
    };
    report(&mut h.started, "started").await;
    assert_eq!(h.gate.held(), 1);
    // The gateway's DEADLINE_EXCEEDED, or the client's own timer (CANCELLED "Timeout
    // expired") when it fires first: both end at the deadline.
    let status = call.await.unwrap().unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    wait_held(&h.gate, 0).await;
    report(&mut h.dropped, "was given up at the deadline").await;

    // Unary, its client gone.
    let call = {
        let mut client = h.client.clone();
        tokio::spawn(async move { client.generate(generate("k", None)).await })
    };
    report(&mut h.started, "started").await;
    assert_eq!(h.gate.held(), 1);
    call.abort();
    wait_held(&h.gate, 0).await;
    report(&mut h.dropped, "was cancelled").await;

    // Streaming, its client gone after the first event.
    let mut stream = h
        .client
        .generate_stream(generate("k", None))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    match first.event {
        Some(images_event::Event::Progress(p)) => {
            assert_eq!(p.stage, Stage::EncodeText.label());
            assert_eq!((p.step, p.total, p.calls_done), (0, 1, 0));
        }
        other => panic!("expected progress, got {other:?}"),
    }
    report(&mut h.started, "started").await;
    assert_eq!(h.gate.held(), 1);
    drop(stream);
    wait_held(&h.gate, 0).await;
    report(&mut h.dropped, "was cancelled").await;

    // Streaming, to its deadline: the stream ends with the status.
    let mut stream = h
        .client
        .generate_stream(generate("k", Some(Duration::from_millis(800))))
        .await
        .unwrap()
        .into_inner();
    let status = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without the error"),
            Err(status) => break status,
        }
    };
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    wait_held(&h.gate, 0).await;

    let stats = stats(&mut h.client).await;
    assert_eq!(
        stats.requests["generate cancelled"], 1,
        "{:?}",
        stats.requests
    );
    assert_eq!(
        h.gate.seen().len(),
        5,
        "4 requests and GetStats, each asked once"
    );
}

/// Every image capability tells the layer its cost, unset fields at the model's defaults
/// (25 prior, 25 decoder and 7 steps for each of 2 upsampler stages), an inversion counted as
/// one more decoder pass.
#[tokio::test]
async fn every_capability_is_costed() {
    let mut h = start().await;
    h.gate
        .refuse(Some(Refusal::PermissionDenied("not in this test".into())));
    let fresh = VaryRequest {
        num_images: Some(3),
        decoder: Some(DecoderSettings {
            decoder_steps: Some(10),
            upsampler_steps: Some(3),
            ..Default::default()
        }),
        ..Default::default()
    };
    let anchored = VaryRequest {
        mode: VariationMode::Anchored as i32,
        ..Default::default()
    };
    let calls = [
        h.client.vary(fresh.clone()).await.map(|_| ()),
        h.client.vary_stream(anchored).await.map(|_| ()),
        h.client
            .interpolate(InterpolateRequest::default())
            .await
            .map(|_| ()),
        h.client
            .text_diff_stream(TextDiffRequest {
                frames: Some(3),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        h.client
            .inpaint(InpaintRequest {
                num_images: Some(2),
                ..Default::default()
            })
            .await
            .map(|_| ()),
    ];
    for call in calls {
        assert_eq!(call.unwrap_err().code(), Code::PermissionDenied);
    }
    let cost = |images, steps| Cost {
        images,
        best_of: 1,
        steps,
    };
    let seen: Vec<_> = h
        .gate
        .seen()
        .into_iter()
        .map(|c| (c.capability, c.streaming, c.cost))
        .collect();
    assert_eq!(
        seen,
        [
            (Capability::Vary, false, cost(3, 10 + 2 * 3)),
            (Capability::Vary, true, cost(1, 2 * 25 + 2 * 7)),
            (Capability::Interpolate, false, cost(5, 25 + 2 * 7)),
            (Capability::TextDiff, true, cost(3, 2 * 25 + 2 * 7)),
            (Capability::Inpaint, false, cost(2, 25 + 25 + 2 * 7)),
        ]
    );
    assert!(h.started.try_recv().is_err());
}

/// Admission control through real gRPC, with one place to run and two to wait, a budget of
/// 1000 units and a starting estimate of 10 ms per unit: a request over the budget is
/// INVALID_ARGUMENT naming its cost; one whose deadline cannot be met given the queue ahead is
/// DEADLINE_EXCEEDED at once (its own deadline has not passed: the message is the gateway's);
/// past the queue a request is RESOURCE_EXHAUSTED with a retry-after hint while the others are
/// still stuck (not a slow timeout); `/metrics` shows the queue; nothing refused reaches a
/// stage; a client that leaves the queue frees its place.
#[tokio::test]
async fn admission_control_over_grpc() {
    let admission = Admission::new(AdmissionArgs {
        max_request_cost: 1000,
        max_concurrent_requests: 1,
        max_queued_requests: 2,
    })
    .with_estimate(Estimate {
        solo: Some(0.01),
        parallelism: 1.0,
        alone: Misses::exact(SETTLED),
        shared: Misses::exact(SETTLED),
    });
    let mut h = start_with(admission.clone()).await;

    // 10 images × best of 3 × 49 steps.
    let mut costly = generate("k", None);
    costly.get_mut().num_images = Some(10);
    let status = h.client.generate(costly).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        status.message(),
        "cost: 10 images × best_of 3 × 49 steps = 1470, over the gateway's limit of 1000 per \
         request"
    );

    // One runs (stuck in the stage), one waits: 294 units each.
    let running = {
        let mut client = h.client.clone();
        tokio::spawn(async move { client.generate(generate("k", None)).await })
    };
    report(&mut h.started, "started").await;
    let waiting = {
        let mut client = h.client.clone();
        tokio::spawn(async move { client.generate(generate("k", None)).await })
    };
    wait_for(|| admission.snapshot().queued == 1).await;

    // 294 units each at 0.01 s (margin 1.06): the waiting one starts when the running one
    // finishes, this one after both, past its 5 s.
    let status = h
        .client
        .generate(generate("k", Some(Duration::from_secs(5))))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().starts_with("the deadline cannot be met"),
        "{status:?}"
    );

    let third = {
        let mut client = h.client.clone();
        tokio::spawn(async move { client.generate_stream(generate("k", None)).await })
    };
    wait_for(|| admission.snapshot().queued == 2).await;
    let status = h.client.generate(generate("k", None)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("1 requests running"),
        "{status:?}"
    );
    // It would start once the running request and both waiting ones have run: 3 × 294 units
    // at 10 ms, margin 1.06, 9.3 s, rounded up.
    assert_eq!(status.metadata().get(RETRY_AFTER).unwrap(), "10");

    let scrape = unclip_testkit::scrape(&h.address.to_string()).await;
    scrape.assert_openmetrics();
    for (series, value) in [
        ("unclip_gateway_requests_in_flight", 1.0),
        ("unclip_gateway_queue_depth", 2.0),
        ("unclip_gateway_shed_total{reason=\"cost\"}", 1.0),
        ("unclip_gateway_shed_total{reason=\"deadline\"}", 1.0),
        ("unclip_gateway_shed_total{reason=\"queue_full\"}", 1.0),
        ("unclip_gateway_queue_wait_seconds_count", 1.0),
    ] {
        assert_eq!(scrape.value(series), value, "{series}");
    }
    assert!(
        h.started.try_recv().is_err(),
        "only the first reached a stage"
    );

    // A client that leaves the queue frees its place.
    third.abort();
    waiting.abort();
    wait_for(|| admission.snapshot().queued == 0).await;
    running.abort();
    report(&mut h.dropped, "was cancelled").await;
    wait_for(|| admission.snapshot().in_flight == 0).await;
    let stats = stats(&mut h.client).await;
    assert_eq!(stats.requests["generate invalid_argument"], 1);
    assert_eq!(stats.requests["generate deadline_exceeded"], 1);
    assert_eq!(stats.requests["generate resource_exhausted"], 1);
}

/// Waits up to 5 s for `condition`.
async fn wait_for(condition: impl Fn() -> bool) {
    for _ in 0..500 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the condition did not come true within 5 s");
}
