//! The `unclip.v1.ClipService` handlers: request validation, then the model's work.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use unclip_model_server::info::model_info;
use unclip_model_server::text_input::is_blank;
use unclip_model_server::validate::batch_size;
use unclip_model_server::{ModelSlot, ServiceError};
use unclip_proto::v1::clip_service_server::ClipService;
use unclip_proto::v1::{
    EncodeImageRequest, EncodeImageResponse, EncodeTextRequest, EncodeTextResponse, GetInfoRequest,
    ModelInfo, RequestLimits,
};
use unclip_runtime::ComputeMeter;

use crate::model::ClipModel;
use crate::preprocess::ImageLimits;

/// The fully qualified gRPC service name.
pub const SERVICE_NAME: &str = "unclip.v1.ClipService";

/// Request limits, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most prompts or images per request.
    pub max_batch: usize,
    /// Longest prompt, in bytes.
    pub max_prompt_bytes: usize,
    /// Limits on each image.
    pub image: ImageLimits,
}

/// The handlers' shared state: the model once loaded, and the limits.
#[derive(Debug)]
pub struct ClipApi {
    /// Set once loading and warm-up have succeeded; until then calls get UNAVAILABLE.
    model: ModelSlot<ClipModel>,
    /// Request limits.
    limits: Limits,
}

impl ClipApi {
    /// Handlers over a model slot that the loader fills.
    pub fn new(model: ModelSlot<ClipModel>, limits: Limits) -> Self {
        Self { model, limits }
    }

    fn model(&self) -> Result<Arc<ClipModel>, ServiceError> {
        self.model.get()
    }

    fn request_limits(&self) -> RequestLimits {
        RequestLimits {
            max_batch: self.limits.max_batch as u32,
            max_image_bytes: self.limits.image.max_bytes as u64,
            max_image_side: self.limits.image.max_side,
            ..Default::default()
        }
    }
}

#[tonic::async_trait]
impl ClipService for ClipApi {
    #[tracing::instrument(skip_all, fields(prompts))]
    async fn encode_text(
        &self,
        request: Request<EncodeTextRequest>,
    ) -> Result<Response<EncodeTextResponse>, Status> {
        let prompts = request.into_inner().prompts;
        tracing::Span::current().record("prompts", prompts.len());
        batch_size("prompts", "prompts", prompts.len(), self.limits.max_batch)?;
        if let Some((i, p)) = prompts
            .iter()
            .enumerate()
            .find(|(_, p)| p.len() > self.limits.max_prompt_bytes)
        {
            return Err(ServiceError::invalid(
                format!("prompts[{i}]"),
                format!(
                    "is {} bytes long, the limit is {}",
                    p.len(),
                    self.limits.max_prompt_bytes
                ),
            )
            .into());
        }
        // Only white space, control or format characters says nothing, and would tokenise to
        // byte tokens the model never saw: refused, as the gateway refuses it. "" itself is the
        // unconditional prompt (classifier-free guidance's other half) and is encoded.
        if let Some(i) = prompts.iter().position(|p| !p.is_empty() && is_blank(p)) {
            return Err(ServiceError::invalid(
                format!("prompts[{i}]"),
                "is blank (only white space, control or format characters); send \"\" for the \
                 unconditional prompt",
            )
            .into());
        }
        let model = self.model()?;
        let meter = ComputeMeter::new();
        let encoding = meter.measure(model.encode_text(prompts)).await?;
        Ok(Response::new(EncodeTextResponse {
            encoding: Some(encoding),
            compute_seconds: meter.seconds(),
        }))
    }

    #[tracing::instrument(skip_all, fields(images))]
    async fn encode_image(
        &self,
        request: Request<EncodeImageRequest>,
    ) -> Result<Response<EncodeImageResponse>, Status> {
        let images = request.into_inner().images;
        tracing::Span::current().record("images", images.len());
        let model = self.model()?;
        if !model.has_image_encoder() {
            // Checked before the batch so clients learn the real problem first.
            return Err(ServiceError::FailedPrecondition(format!(
                "model {} is served without an image encoder, so EncodeImage is unavailable",
                model.repo().manifest().model_id
            ))
            .into());
        }
        batch_size("images", "images", images.len(), self.limits.max_batch)?;
        let meter = ComputeMeter::new();
        let embeds = meter
            .measure(model.encode_image(images, self.limits.image))
            .await?;
        Ok(Response::new(EncodeImageResponse {
            image_embeds: Some(embeds),
            compute_seconds: meter.seconds(),
        }))
    }

    async fn get_info(
        &self,
        _request: Request<GetInfoRequest>,
    ) -> Result<Response<ModelInfo>, Status> {
        let model = self.model()?;
        Ok(Response::new(model_info(
            model.repo(),
            SERVICE_NAME,
            model.device(),
            &model.components(),
            self.request_limits(),
        )))
    }
}
