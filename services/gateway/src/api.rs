//! [`Core`], the gateway's capabilities independent of any transport: generate, vary,
//! interpolate, text diff and inpaint (unary, or as a [`EventStream`] of progress and preview
//! events ending with the response), GetInfo and GetStats, and the `/metrics` reader.
//!
//! Requests and responses are the `unclip.v1` prost messages (`GenerateRequest`,
//! `ImagesResponse`, `ImagesEvent`, ...). They are the gateway's domain types on purpose: the
//! proto is the one schema of the API, so the gRPC adapter passes them through and an HTTP
//! adapter maps its JSON to and from them, with no second model of the same fields to keep in
//! step. What a transport carries besides the message (credentials, peer, deadline) comes in
//! a [`Caller`]; what can go wrong comes back as an [`Error`], which each adapter maps to its
//! own statuses (`From<Error> for tonic::Status` for gRPC).
//!
//! Every call, in order: the gateway must be ready (UNAVAILABLE while it checks its stages);
//! the [`RequestContext`] is made (the capability, the caller, its deadline bounded by the
//! request timeout, the [`Cost`]); the [`RequestLayer`] admits it or refuses it (the refusal is
//! the answer); the capability runs holding the [`Permit`]; the outcome is counted.
//!
//! Cancellation: dropping a unary call's future, or an [`EventStream`], drops the run, which
//! cancels its stage call in flight and makes no more, and releases the permit.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use unclip_proto::v1::{
    DecoderSettings, GatewayInfo, GatewayStats, GenerateRequest, ImagesEvent, ImagesResponse,
    InpaintRequest, InterpolateRequest, TextDiffRequest, VariationMode, VaryRequest, images_event,
};
use unclip_server::Slot;
use unclip_server::metrics::Metrics;

use crate::error::{Error, Result};
use crate::layer::{AdmitAll, Caller, Capability, Cost, Permit, RequestContext, RequestLayer};
use crate::pipeline::{Gateway, Run, generate, inpaint, interpolate, text_diff, vary};
use crate::progress::Reporter;
use crate::stats::{RequestStats, code_name};

/// Events buffered per stream before the run waits for the client.
const STREAM_BUFFER: usize = 16;

/// A streaming call's events: progress and previews, then the response
/// (`images_event::Event::Result`) or an error, then the end.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<ImagesEvent>> + Send>>;

/// One request of an image capability.
#[derive(Debug, Clone, PartialEq)]
pub enum ImagesRequest {
    /// Text to image.
    Generate(GenerateRequest),
    /// Variations of an image.
    Vary(VaryRequest),
    /// Frames between two images.
    Interpolate(InterpolateRequest),
    /// An image moved towards a caption.
    TextDiff(TextDiffRequest),
    /// The masked part of an image regenerated.
    Inpaint(InpaintRequest),
}

macro_rules! images_request_from {
    ($($variant:ident($message:ty)),*) => {
        $(impl From<$message> for ImagesRequest {
            fn from(request: $message) -> Self {
                ImagesRequest::$variant(request)
            }
        })*
    };
}

images_request_from!(
    Generate(GenerateRequest),
    Vary(VaryRequest),
    Interpolate(InterpolateRequest),
    TextDiff(TextDiffRequest),
    Inpaint(InpaintRequest)
);

impl ImagesRequest {
    /// Which capability.
    pub fn capability(&self) -> Capability {
        match self {
            ImagesRequest::Generate(_) => Capability::Generate,
            ImagesRequest::Vary(_) => Capability::Vary,
            ImagesRequest::Interpolate(_) => Capability::Interpolate,
            ImagesRequest::TextDiff(_) => Capability::TextDiff,
            ImagesRequest::Inpaint(_) => Capability::Inpaint,
        }
    }

    /// Whether a stream of it should carry previews.
    pub fn previews(&self) -> bool {
        match self {
            ImagesRequest::Generate(r) => r.previews,
            ImagesRequest::Vary(r) => r.previews,
            ImagesRequest::Interpolate(r) => r.previews,
            ImagesRequest::TextDiff(r) => r.previews,
            ImagesRequest::Inpaint(r) => r.previews,
        }
    }

    /// Its cost from the fields as sent and `gw`'s defaults for the unset ones. An inversion
    /// counts as one more decoder pass per image.
    ///
    /// Every count is capped at the most its own check will accept (steps at the stage's
    /// limit, images and frames at the gateway's, best_of at the prior's), so that a field out
    /// of range is refused by that check, naming the field, and never by a layer reading an
    /// absurd cost (e.g. `frames: u32::MAX` shed as a deadline that cannot be met).
    pub fn cost(&self, gw: &Gateway) -> Cost {
        let max_steps = |info: &unclip_proto::v1::ModelInfo| {
            info.limits.as_ref().map_or(1000, |l| l.max_steps.max(2))
        };
        let (prior_max, decoder_max) = (max_steps(&gw.infos.prior), max_steps(&gw.infos.decoder));
        let max_best_of = gw
            .infos
            .prior
            .limits
            .as_ref()
            .map_or(1, |l| l.max_best_of.max(1));
        let (max_images, max_frames) = (gw.limits.max_images, gw.limits.max_frames);
        let prior_default = gw.infos.prior.defaults.unwrap_or_default().prior_steps;
        let decoder_defaults = gw.infos.decoder.defaults.unwrap_or_default();
        let upsamplers = gw.infos.decoder.upsamplers.len() as u32;
        // Decoder + every upsampler stage (+ an inversion).
        let cascade = |settings: &Option<DecoderSettings>, inversion: bool| {
            let s = settings.unwrap_or_default();
            let decoder = s
                .decoder_steps
                .unwrap_or(decoder_defaults.decoder_steps)
                .min(decoder_max);
            let upsampler = s
                .upsampler_steps
                .unwrap_or(decoder_defaults.upsampler_steps)
                .min(decoder_max);
            decoder
                .saturating_mul(1 + u32::from(inversion))
                .saturating_add(upsampler.saturating_mul(upsamplers))
        };
        let prior = |steps: Option<u32>| steps.unwrap_or(prior_default).min(prior_max);
        let (images, best_of, steps) = match self {
            ImagesRequest::Generate(r) => (
                r.num_images.unwrap_or(1),
                r.best_of.unwrap_or(0).max(1),
                prior(r.prior_steps).saturating_add(cascade(&r.decoder, false)),
            ),
            ImagesRequest::Vary(r) => {
                let anchored = r.mode == VariationMode::Anchored as i32;
                (r.num_images.unwrap_or(1), 1, cascade(&r.decoder, anchored))
            }
            ImagesRequest::Interpolate(r) => (
                r.frames.unwrap_or(interpolate::DEFAULT_FRAMES),
                1,
                cascade(&r.decoder, false),
            ),
            ImagesRequest::TextDiff(r) => (
                r.frames.unwrap_or(text_diff::DEFAULT_FRAMES),
                1,
                cascade(&r.decoder, true),
            ),
            ImagesRequest::Inpaint(r) => (
                r.num_images.unwrap_or(1),
                1,
                prior(r.prior_steps).saturating_add(cascade(&r.decoder, false)),
            ),
        };
        let limit = if matches!(
            self,
            ImagesRequest::Interpolate(_) | ImagesRequest::TextDiff(_)
        ) {
            max_frames
        } else {
            max_images
        };
        Cost {
            images: images.min(limit.max(1)),
            best_of: best_of.min(max_best_of),
            steps,
        }
    }

    async fn run(self, run: Run<'_>) -> Result<ImagesResponse> {
        match self {
            ImagesRequest::Generate(r) => generate::generate(run, r).await,
            ImagesRequest::Vary(r) => vary::vary(run, r).await,
            ImagesRequest::Interpolate(r) => interpolate::interpolate(run, r).await,
            ImagesRequest::TextDiff(r) => text_diff::text_diff(run, r).await,
            ImagesRequest::Inpaint(r) => inpaint::inpaint(run, r).await,
        }
    }
}

/// The gateway's capabilities, for every transport. Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct Core {
    /// Filled once the stages have been checked.
    slot: Slot<Gateway>,
    /// Admits requests.
    layer: Arc<dyn RequestLayer>,
    /// Request counters.
    stats: Arc<RequestStats>,
    /// The deadline of requests whose caller set none, and the bound of those that did.
    request_timeout: Duration,
    /// The gateway's own version.
    version: &'static str,
    /// More of `/metrics`, from the layers (admission control's queue, API keys' counters).
    more_metrics: Vec<Metrics>,
    /// Whether every stage has an available replica (what gRPC health follows); `None`: ready
    /// as soon as the stages are checked.
    readiness: Option<watch::Receiver<bool>>,
}

/// An admitted request: the state it runs on, its deadline and the permit it holds.
struct Admitted {
    gw: Arc<Gateway>,
    deadline: Instant,
    permit: Permit,
}

impl Core {
    /// The capabilities over a slot the start-up check fills, admitting every request.
    pub fn new(slot: Slot<Gateway>, request_timeout: Duration) -> Self {
        Self {
            slot,
            layer: Arc::new(AdmitAll),
            stats: Arc::default(),
            request_timeout,
            version: env!("CARGO_PKG_VERSION"),
            more_metrics: Vec::new(),
            readiness: None,
        }
    }

    /// The same, ready (see [`Core::ready`]) only while `readiness` holds `true`.
    pub fn with_readiness(self, readiness: watch::Receiver<bool>) -> Self {
        Self {
            readiness: Some(readiness),
            ..self
        }
    }

    /// Whether the gateway can serve now: its stages checked and, with
    /// [`Core::with_readiness`], every stage with an available replica (HTTP's `/readyz`).
    pub fn ready(&self) -> bool {
        self.state().is_some() && self.readiness.as_ref().is_none_or(|ready| *ready.borrow())
    }

    /// The same, asking `layer` before every request.
    pub fn with_layer(self, layer: Arc<dyn RequestLayer>) -> Self {
        Self { layer, ..self }
    }

    /// The same, with `metrics` added to what `/metrics` reports.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.more_metrics.push(metrics);
        self
    }

    /// Runs any image capability to its response.
    pub async fn run(
        &self,
        caller: Caller,
        request: impl Into<ImagesRequest>,
    ) -> Result<ImagesResponse> {
        let request = request.into();
        let capability = request.capability();
        let admitted = self.admit(caller, &request, false).await?;
        let started = Instant::now();
        let run = Run::new(&admitted.gw, Some(admitted.deadline), Reporter::silent());
        let result = request.run(run).await;
        self.stats
            .record_result(capability.name(), &result, started.elapsed());
        if result.is_ok() {
            admitted.permit.succeeded();
        }
        result
    }

    /// Runs any image capability as a stream of its events. A refusal, or a gateway that is not
    /// ready, is the error of this call (no stream is started); once started, the stream ends
    /// with the response or the error. Dropping the stream cancels the run.
    pub async fn run_stream(
        &self,
        caller: Caller,
        request: impl Into<ImagesRequest>,
    ) -> Result<EventStream> {
        let request = request.into();
        let admitted = self.admit(caller, &request, true).await?;
        let stats = Arc::clone(&self.stats);
        let (events, receiver) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(async move {
            let Admitted {
                gw,
                deadline,
                permit,
            } = admitted;
            let name = request.capability().name();
            let started = Instant::now();
            let reporter = Reporter::streaming(events.clone(), request.previews());
            let work = request.run(Run::new(&gw, Some(deadline), reporter));
            // A client that goes away closes the stream: the run is dropped, which cancels its
            // stage call in flight and makes no more.
            let succeeded = tokio::select! {
                result = work => {
                    stats.record_result(name, &result, started.elapsed());
                    let succeeded = result.is_ok();
                    let last = result.map(|response| ImagesEvent {
                        event: Some(images_event::Event::Result(response)),
                    });
                    let _ = events.send(last).await;
                    succeeded
                }
                () = events.closed() => {
                    stats.record(name, "cancelled");
                    tracing::info!(capability = name, "client went away; request dropped");
                    false
                }
            };
            if succeeded {
                permit.succeeded();
            }
        });
        Ok(Box::pin(ReceiverStream::new(receiver)))
    }

    /// What the gateway serves and its limits.
    pub async fn info(&self, caller: Caller) -> Result<GatewayInfo> {
        let (gw, _permit) = self.admit_plain(caller, Capability::Info).await?;
        Ok(GatewayInfo {
            model: Some(gw.infos.decoder.clone()),
            server_version: self.version.to_string(),
            max_images: gw.limits.max_images,
            max_frames: gw.limits.max_frames,
            max_prompt_chars: gw.limits.max_prompt_chars,
            max_image_bytes: gw.limits.image.max_bytes as u64,
            replicas: gw.stages.replicas(),
            cache_backend: gw.cache.backend().to_string(),
        })
    }

    /// Replica, cache and request counters.
    pub async fn stats(&self, caller: Caller) -> Result<GatewayStats> {
        let (gw, _permit) = self.admit_plain(caller, Capability::Stats).await?;
        let cache = gw.cache.stats();
        Ok(GatewayStats {
            replicas: gw.stages.replicas(),
            cache_hits: cache.hits,
            cache_misses: cache.misses,
            cache_errors: cache.errors,
            cache_rejected: cache.rejected,
            cache_healthy: cache.healthy,
            cache_backend: cache.backend.to_string(),
            requests: self.stats.snapshot(),
        })
    }

    /// The checked state (the served model, the limits), or `None` while the stages are being
    /// checked: what a transport reads to describe the API (HTTP's `size` and `/readyz`)
    /// without running a request.
    pub fn state(&self) -> Option<Arc<Gateway>> {
        self.slot.get()
    }

    /// What `GET /metrics` reports (see [`crate::metrics`]).
    pub fn metrics(&self) -> Metrics {
        let base = crate::metrics::metrics(self.slot.clone(), Arc::clone(&self.stats));
        if self.more_metrics.is_empty() {
            return base;
        }
        let more = self.more_metrics.clone();
        Metrics::new(move |registry| {
            base.collect(registry);
            for metrics in &more {
                metrics.collect(registry);
            }
        })
    }

    /// The shared state, or UNAVAILABLE while the stages are being checked.
    fn gateway(&self) -> Result<Arc<Gateway>> {
        self.slot
            .get()
            .ok_or_else(|| Error::Unavailable("the gateway is still checking its stages".into()))
    }

    /// The caller's deadline, bounded by the request timeout.
    fn deadline(&self, caller: &Caller) -> Instant {
        let bound = Instant::now() + self.request_timeout;
        caller.deadline.map_or(bound, |d| d.min(bound))
    }

    /// Asks the layer about an image request; a refusal is counted as its outcome.
    async fn admit(
        &self,
        caller: Caller,
        request: &ImagesRequest,
        streaming: bool,
    ) -> Result<Admitted> {
        let gw = self.gateway()?;
        let context = RequestContext {
            capability: request.capability(),
            streaming,
            deadline: self.deadline(&caller),
            cost: request.cost(&gw),
            caller,
        };
        match self.layer.admit(&context).await {
            Ok(permit) => Ok(Admitted {
                gw,
                deadline: context.deadline,
                permit,
            }),
            Err(refusal) => {
                let error = Error::from(refusal);
                let outcome = code_name(error.code());
                self.stats.record(context.capability.name(), &outcome);
                Err(error)
            }
        }
    }

    /// Asks the layer about GetInfo or GetStats (cost 0; not counted).
    async fn admit_plain(
        &self,
        caller: Caller,
        capability: Capability,
    ) -> Result<(Arc<Gateway>, Permit)> {
        let gw = self.gateway()?;
        let context = RequestContext {
            capability,
            streaming: false,
            deadline: self.deadline(&caller),
            cost: Cost::default(),
            caller,
        };
        let permit = self.layer.admit(&context).await?;
        Ok((gw, permit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Before the stages are checked every capability answers UNAVAILABLE, streaming or not,
    /// and nothing is counted.
    #[tokio::test]
    async fn not_ready_is_unavailable() {
        let core = Core::new(Slot::new(), Duration::from_secs(1));
        let caller = Caller::default();
        let unavailable = |e: Error| assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
        unavailable(
            core.run(caller.clone(), GenerateRequest::default())
                .await
                .unwrap_err(),
        );
        let stream = core
            .run_stream(caller.clone(), InpaintRequest::default())
            .await;
        unavailable(
            stream
                .err()
                .expect("no stream before the stages are checked"),
        );
        unavailable(core.info(caller.clone()).await.unwrap_err());
        unavailable(core.stats(caller).await.unwrap_err());
        assert!(core.stats.snapshot().is_empty());
    }
}
