//! The `unclip.v1.PriorService` handlers: request validation, then the model's work.
//!
//! Every check happens before any model call and answers INVALID_ARGUMENT naming the field and
//! its limit, so a bad request never reaches the graph and the service stays healthy.

use tonic::{Request, Response, Status};
use unclip_model_server::info::model_info;
use unclip_model_server::validate::{self, text_encoding};
use unclip_model_server::{EventStream, ModelSlot, ServiceError, Steps, stream_request};
use unclip_proto::v1::prior_service_server::PriorService;
use unclip_proto::v1::{
    GetInfoRequest, ModelInfo, PriorSampleEvent, PriorSampleRequest, PriorSampleResponse,
    RequestLimits, Tensor,
};
use unclip_runtime::ComputeMeter;

use crate::model::{PriorModel, SampleJob};
use crate::sampler::{PriorSettings, UncondEncoding};

/// The fully qualified gRPC service name.
pub const SERVICE_NAME: &str = "unclip.v1.PriorService";

/// Fewest steps: the unCLIP respacing cannot make 1.
pub const MIN_STEPS: u32 = 2;
/// Most steps: the training schedule's length.
pub const MAX_STEPS: u32 = 1000;
/// Largest guidance scale accepted.
pub const MAX_GUIDANCE_SCALE: f32 = 100.0;

/// Request limits, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most prompts per request.
    pub max_batch: usize,
    /// Most embeddings per prompt.
    pub max_images_per_input: u32,
    /// Largest best_of.
    pub max_best_of: u32,
}

/// The handlers' shared state: the model once loaded, and the limits.
#[derive(Debug, Clone)]
pub struct PriorApi {
    /// Filled once loading and warm-up have succeeded; until then calls get UNAVAILABLE.
    model: ModelSlot<PriorModel>,
    /// Request limits.
    limits: Limits,
}

impl PriorApi {
    /// Handlers over a model slot that the loader fills.
    pub fn new(model: ModelSlot<PriorModel>, limits: Limits) -> Self {
        Self { model, limits }
    }

    fn request_limits(&self) -> RequestLimits {
        RequestLimits {
            max_batch: self.limits.max_batch as u32,
            max_images_per_input: self.limits.max_images_per_input,
            min_steps: MIN_STEPS,
            max_steps: MAX_STEPS,
            max_best_of: self.limits.max_best_of,
            ..Default::default()
        }
    }

    /// Checks `request` against the model and the limits and applies the defaults.
    fn validate(
        &self,
        model: &PriorModel,
        request: &PriorSampleRequest,
    ) -> Result<SampleJob, ServiceError> {
        let sizes = model.repo().sizes();
        let defaults = &model.repo().manifest().defaults;
        let text = text_encoding(
            "text",
            validate::required("text", request.text.as_ref())?,
            sizes,
            self.limits.max_batch,
        )?;
        let negative = match &request.negative {
            Some(n) => Some(UncondEncoding::from_row(
                &text_encoding("negative", n, sizes, 1)?,
                0,
            )),
            None => None,
        };
        let max_images = self.limits.max_images_per_input;
        if !(1..=max_images).contains(&request.num_images) {
            return Err(ServiceError::invalid(
                "num_images",
                format!("must be 1..={max_images}, got {}", request.num_images),
            ));
        }
        let max_best_of = self.limits.max_best_of.max(1);
        if request.best_of > max_best_of {
            return Err(ServiceError::invalid(
                "best_of",
                format!(
                    "must be 0..={max_best_of} (0 or 1: no reranking), got {}",
                    request.best_of
                ),
            ));
        }
        let steps = validate::steps(
            "steps",
            request.steps,
            defaults.prior_steps,
            MIN_STEPS,
            MAX_STEPS,
        )?;
        let guidance_scale = validate::guidance_scale(
            "guidance_scale",
            request.guidance_scale,
            defaults.prior_guidance_scale,
            MAX_GUIDANCE_SCALE,
        )?;
        Ok(SampleJob {
            text,
            negative,
            num_images: request.num_images as usize,
            best_of: request.best_of.max(1) as usize,
            seed: request.seed,
            settings: PriorSettings {
                steps: steps as usize,
                guidance_scale,
            },
        })
    }
    /// Validates `request` and runs it, reporting its steps to `steps`.
    async fn run(
        &self,
        request: &PriorSampleRequest,
        steps: &Steps,
    ) -> Result<PriorSampleResponse, ServiceError> {
        let model = self.model.get()?;
        let job = self.validate(&model, request)?;
        let span = tracing::Span::current();
        span.record("num_images", job.num_images);
        span.record("best_of", job.best_of);
        span.record("steps", job.settings.steps);
        let settings = job.settings;
        let meter = ComputeMeter::new();
        let result = meter.measure(model.sample(job, steps)).await?;
        Ok(PriorSampleResponse {
            compute_seconds: meter.seconds(),
            image_embeds: Some(Tensor::from_array(&result.image_embeds)),
            seeds: result.seeds,
            scores: result.scores,
            steps: settings.steps as i32,
            guidance_scale: settings.guidance_scale,
        })
    }
}

#[tonic::async_trait]
impl PriorService for PriorApi {
    #[tracing::instrument(skip_all, fields(num_images, best_of, steps))]
    async fn sample(
        &self,
        request: Request<PriorSampleRequest>,
    ) -> Result<Response<PriorSampleResponse>, Status> {
        let response = self.run(request.get_ref(), &Steps::none()).await?;
        Ok(Response::new(response))
    }

    type SampleStreamStream = EventStream<PriorSampleEvent>;

    #[tracing::instrument(skip_all, fields(num_images, best_of, steps))]
    async fn sample_stream(
        &self,
        request: Request<PriorSampleRequest>,
    ) -> Result<Response<Self::SampleStreamStream>, Status> {
        let api = self.clone();
        Ok(stream_request(request, move |request, steps| async move {
            api.run(&request, &steps).await
        }))
    }

    async fn get_info(
        &self,
        _request: Request<GetInfoRequest>,
    ) -> Result<Response<ModelInfo>, Status> {
        let model = self.model.get()?;
        Ok(Response::new(model_info(
            model.repo(),
            SERVICE_NAME,
            model.device(),
            &model.components(),
            self.request_limits(),
        )))
    }
}
