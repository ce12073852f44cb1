//! The `unclip.v1.DecoderService` handlers: validation and the model's work, both on a blocking
//! thread, with the request cancelled (its loop stopped at the next model call) if the client
//! goes away.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tonic::{Request, Response, Status};
use unclip_model_server::info::model_info;
use unclip_model_server::{EventStream, ModelSlot, ServiceError, Steps, stream_request};
use unclip_proto::v1::decoder_service_server::DecoderService;
use unclip_proto::v1::{
    DecodeEvent, DecodeRequest, DecodeResponse, GetInfoRequest, InvertEvent, InvertRequest,
    InvertResponse, ModelInfo, RequestLimits, UpsampleEvent, UpsampleRequest, UpsampleResponse,
};
use unclip_runtime::ComputeMeter;

use crate::model::DecoderModel;
use crate::request::{Limits, MIN_STEPS};

/// The fully qualified gRPC service name.
pub const SERVICE_NAME: &str = "unclip.v1.DecoderService";

/// The handlers' shared state: the model once loaded, and the limits.
#[derive(Debug, Clone)]
pub struct DecoderApi {
    /// Filled once loading and warm-up have succeeded; until then calls get UNAVAILABLE.
    slot: ModelSlot<DecoderModel>,
    /// Request limits from the configuration (`max_steps` is taken from the model).
    limits: Limits,
}

/// Sets the flag when dropped: tonic drops a handler's future when its client goes away.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl DecoderApi {
    /// Handlers over a model slot that the loader fills.
    pub fn new(slot: ModelSlot<DecoderModel>, limits: Limits) -> Self {
        Self { slot, limits }
    }

    /// Runs `work` with the model on a blocking thread; also returns the seconds its graph
    /// runs spent inside ONNX Runtime.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&DecoderModel, Limits, &AtomicBool) -> Result<T, ServiceError>
        + Send
        + 'static,
    ) -> Result<(T, f64), ServiceError> {
        let model = self.slot.get()?;
        let limits = Limits {
            max_steps: model.max_steps(),
            ..self.limits
        };
        let cancelled = Arc::new(AtomicBool::new(false));
        let _guard = CancelOnDrop(Arc::clone(&cancelled));
        let meter = ComputeMeter::new();
        let seconds = meter.clone();
        let result = tokio::task::spawn_blocking(move || {
            let _metered = meter.enter();
            work(&model, limits, &cancelled)
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("the request's task failed: {e}")))??;
        Ok((result, seconds.seconds()))
    }

    /// A Decode, its steps reported to `steps`.
    async fn decode_with(
        &self,
        request: DecodeRequest,
        steps: Steps,
    ) -> Result<DecodeResponse, ServiceError> {
        self.blocking(move |model, limits, cancelled| {
            let job = model.context(limits).decode(&request)?;
            tracing::debug!(
                images = job.cond.image_embeds.nrows(),
                steps = job.steps,
                sampler = ?job.sampler,
                "decoding"
            );
            model.decode(job, cancelled, &steps)
        })
        .await
        .map(|(response, compute_seconds)| DecodeResponse {
            compute_seconds,
            ..response
        })
    }

    /// An Upsample, its steps reported to `steps`.
    async fn upsample_with(
        &self,
        request: UpsampleRequest,
        steps: Steps,
    ) -> Result<UpsampleResponse, ServiceError> {
        self.blocking(move |model, limits, cancelled| {
            let job = model.context(limits).upsample(&request)?;
            tracing::debug!(
                stage = job.stage,
                images = job.low_res.shape()[0],
                steps = job.steps,
                "upsampling"
            );
            model.upsample(job, cancelled, &steps)
        })
        .await
        .map(|(response, compute_seconds)| UpsampleResponse {
            compute_seconds,
            ..response
        })
    }

    /// An Invert, its steps reported to `steps`.
    async fn invert_with(
        &self,
        request: InvertRequest,
        steps: Steps,
    ) -> Result<InvertResponse, ServiceError> {
        self.blocking(move |model, limits, cancelled| {
            let job = model.context(limits).invert(&request)?;
            model.invert(job, cancelled, &steps)
        })
        .await
        .map(|(response, compute_seconds)| InvertResponse {
            compute_seconds,
            ..response
        })
    }
}

#[tonic::async_trait]
impl DecoderService for DecoderApi {
    #[tracing::instrument(skip_all)]
    async fn decode(
        &self,
        request: Request<DecodeRequest>,
    ) -> Result<Response<DecodeResponse>, Status> {
        let response = self
            .decode_with(request.into_inner(), Steps::none())
            .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all)]
    async fn upsample(
        &self,
        request: Request<UpsampleRequest>,
    ) -> Result<Response<UpsampleResponse>, Status> {
        let response = self
            .upsample_with(request.into_inner(), Steps::none())
            .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all)]
    async fn invert(
        &self,
        request: Request<InvertRequest>,
    ) -> Result<Response<InvertResponse>, Status> {
        let response = self
            .invert_with(request.into_inner(), Steps::none())
            .await?;
        Ok(Response::new(response))
    }

    type DecodeStreamStream = EventStream<DecodeEvent>;

    #[tracing::instrument(skip_all)]
    async fn decode_stream(
        &self,
        request: Request<DecodeRequest>,
    ) -> Result<Response<Self::DecodeStreamStream>, Status> {
        let api = self.clone();
        Ok(stream_request(request, move |request, steps| async move {
            api.decode_with(request, steps).await
        }))
    }

    type UpsampleStreamStream = EventStream<UpsampleEvent>;

    #[tracing::instrument(skip_all)]
    async fn upsample_stream(
        &self,
        request: Request<UpsampleRequest>,
    ) -> Result<Response<Self::UpsampleStreamStream>, Status> {
        let api = self.clone();
        Ok(stream_request(request, move |request, steps| async move {
            api.upsample_with(request, steps).await
        }))
    }

    type InvertStreamStream = EventStream<InvertEvent>;

    #[tracing::instrument(skip_all)]
    async fn invert_stream(
        &self,
        request: Request<InvertRequest>,
    ) -> Result<Response<Self::InvertStreamStream>, Status> {
        let api = self.clone();
        Ok(stream_request(request, move |request, steps| async move {
            api.invert_with(request, steps).await
        }))
    }

    async fn get_info(
        &self,
        _request: Request<GetInfoRequest>,
    ) -> Result<Response<ModelInfo>, Status> {
        let model = self.slot.get()?;
        let components = model.components();
        let components: Vec<&str> = components.iter().map(String::as_str).collect();
        let limits = RequestLimits {
            max_batch: self.limits.max_batch as u32,
            max_images_per_input: self.limits.max_images_per_input as u32,
            min_steps: MIN_STEPS,
            max_steps: model.max_steps(),
            max_image_bytes: self.limits.image.max_bytes as u64,
            max_image_side: self.limits.image.max_side,
            max_best_of: 0,
        };
        Ok(Response::new(model_info(
            model.repo(),
            SERVICE_NAME,
            model.device(),
            &components,
            limits,
        )))
    }
}
