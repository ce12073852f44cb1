//! The loaded CLIP encoders of one model repository, and the work behind each RPC.
//!
//! Loading (blocking: hashing, parsing, session creation) happens once at start-up on a
//! blocking thread. Per request, CPU work that can take milliseconds (tokenising a batch,
//! decoding and resizing images) runs on tokio's blocking pool, and the graphs run on their
//! executors' own threads, so the async runtime only ever awaits.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use ndarray::{Array4, ArrayD, Axis};
use unclip_model_server::{ServiceError, StageModel};
use unclip_proto::v1::{Tensor, TextEncoding};
use unclip_runtime::{Device, ExecutorStats, ModelRepository, SessionExecutor, TensorData};

use crate::config::Config;
use crate::preprocess::{ClipPreprocessor, ImageLimits, decode_rgb};
use crate::tokenize::PromptTokenizer;

/// The image side of the service: preprocessing and the vision tower.
#[derive(Debug)]
struct ImageEncoder {
    /// The manifest's preprocessing.
    preprocessor: Arc<ClipPreprocessor>,
    /// The image_encoder graph.
    executor: SessionExecutor,
}

/// CLIP text (and optionally image) encoders, ready to serve.
#[derive(Debug)]
pub struct ClipModel {
    /// The opened repository (manifest, sizes, tensors).
    repo: ModelRepository,
    /// Where the graphs run.
    device: Device,
    /// tokenizer.json, shared with blocking tasks.
    tokenizer: Arc<PromptTokenizer>,
    /// The text_encoder graph.
    text_encoder: SessionExecutor,
    /// The image encoder, when the model has one and it was not disabled.
    image: Option<ImageEncoder>,
}

/// Largest absolute difference between two arrays of one shape.
fn max_abs_diff(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

impl ClipModel {
    /// The repository.
    pub fn repo(&self) -> &ModelRepository {
        &self.repo
    }

    /// The device the graphs run on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Whether EncodeImage can be served.
    pub fn has_image_encoder(&self) -> bool {
        self.image.is_some()
    }

    /// Labels of the loaded components.
    pub fn components(&self) -> Vec<&'static str> {
        let mut c = vec!["text_encoder"];
        if self.image.is_some() {
            c.push("image_encoder");
        }
        c
    }

    /// Tokenises and encodes `prompts` (already validated).
    pub async fn encode_text(&self, prompts: Vec<String>) -> Result<TextEncoding, ServiceError> {
        let tokenizer = Arc::clone(&self.tokenizer);
        let tokens = tokio::task::spawn_blocking(move || tokenizer.encode(&prompts))
            .await
            .map_err(|e| ServiceError::Internal(format!("tokenizer task failed: {e}")))?
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let mut outputs = self
            .text_encoder
            .run(vec![(
                "input_ids".into(),
                TensorData::I64(tokens.input_ids.clone().into_dyn()),
            )])
            .await?;
        let text_embeds = outputs.take_f32("text_embeds")?;
        let last_hidden_state = outputs.take_f32("last_hidden_state")?;
        Ok(TextEncoding {
            text_embeds: Some(Tensor::from_array(&text_embeds)),
            last_hidden_state: Some(Tensor::from_array(&last_hidden_state)),
            attention_mask: Some(Tensor::from_array(&tokens.attention_mask)),
            input_ids: Some(Tensor::from_array(&tokens.input_ids)),
            truncated: tokens.truncated,
            token_counts: tokens.token_counts,
        })
    }

    /// Decodes, preprocesses and encodes `images` (count already validated). Each image's
    /// problems are reported as `images[i]`.
    pub async fn encode_image(
        &self,
        images: Vec<Bytes>,
        limits: ImageLimits,
    ) -> Result<Tensor, ServiceError> {
        let image = self.image.as_ref().ok_or_else(|| {
            ServiceError::FailedPrecondition(format!(
                "model {} is served without an image encoder, so EncodeImage is unavailable",
                self.repo.manifest().model_id
            ))
        })?;
        let preprocessor = Arc::clone(&image.preprocessor);
        let pixel_values = tokio::task::spawn_blocking(move || {
            let s = preprocessor.size();
            let mut batch = Array4::<f32>::zeros((images.len(), 3, s, s));
            for (i, bytes) in images.iter().enumerate() {
                let rgb = decode_rgb(bytes, limits)
                    .map_err(|e| ServiceError::invalid(format!("images[{i}]"), e))?;
                preprocessor.apply(&rgb, batch.index_axis_mut(Axis(0), i));
            }
            Ok::<_, ServiceError>(batch)
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("image decoding task failed: {e}")))??;
        let mut outputs = image
            .executor
            .run(vec![(
                "pixel_values".into(),
                TensorData::F32(pixel_values.into_dyn()),
            )])
            .await?;
        let embeds = outputs.take_f32("image_embeds")?;
        Ok(Tensor::from_array(&embeds))
    }
}

impl StageModel for ClipModel {
    type Config = Config;

    /// Checks the opened repository, hashes the files this service uses, loads ONNX Runtime
    /// and the encoder sessions. Blocking.
    fn open(config: &Config, repo: ModelRepository) -> anyhow::Result<Self> {
        let started = Instant::now();
        let manifest = repo.manifest();
        let image_spec = manifest
            .components
            .image_encoder
            .as_ref()
            .filter(|_| !config.text_only);

        // Hash exactly what this service reads, so it serves what the version names.
        let mut files = vec![
            manifest.text.tokenizer.as_str(),
            manifest.tensors.file.as_str(),
            manifest.components.text_encoder.file.as_str(),
        ];
        if let Some(spec) = image_spec {
            files.push(&spec.file);
        }
        repo.verify_files(files.iter().copied())
            .context("checking the model files")?;

        let env = config.runtime.init_environment()?;
        let session_config = config.runtime.session_config();
        let tokenizer =
            PromptTokenizer::from_file(&repo.tokenizer_path(), repo.sizes().context_length)?;
        let text_encoder = repo.load_executor(
            &env,
            "text_encoder",
            &manifest.components.text_encoder,
            &session_config,
        )?;
        let image = match image_spec {
            Some(spec) => Some(ImageEncoder {
                preprocessor: Arc::new(ClipPreprocessor::new(
                    manifest
                        .image_preprocess
                        .as_ref()
                        .expect("validated: an image encoder comes with image_preprocess"),
                )),
                executor: repo.load_executor(&env, "image_encoder", spec, &session_config)?,
            }),
            None => None,
        };
        tracing::info!(
            model = %manifest.model_id,
            version = %manifest.version,
            device = %config.runtime.device,
            image_encoder = image.is_some(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        Ok(Self {
            device: config.runtime.device,
            repo,
            tokenizer: Arc::new(tokenizer),
            text_encoder,
            image,
        })
    }

    /// Encodes "" through the whole EncodeText path and compares it with the encoding
    /// recorded in tensors.safetensors; runs the image encoder once. Required before SERVING.
    async fn warm_up(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        let encoding = self
            .encode_text(vec![String::new()])
            .await
            .map_err(|e| anyhow::anyhow!("warm-up EncodeText failed: {e}"))?;
        let uncond = self.repo.tensors().uncond_text();
        let embeds = encoding
            .text_embeds
            .as_ref()
            .context("warm-up: no text_embeds")?
            .to_f32_array()?;
        let ids = encoding
            .input_ids
            .as_ref()
            .context("warm-up: no input_ids")?
            .to_array::<i64>()?;
        anyhow::ensure!(
            ids.index_axis(Axis(0), 0) == uncond.input_ids.view().into_dyn(),
            "warm-up: the tokenizer's ids for \"\" differ from uncond_input_ids in {}",
            self.repo.manifest().tensors.file
        );
        let diff = max_abs_diff(
            &embeds,
            &uncond.text_embeds.clone().insert_axis(Axis(0)).into_dyn(),
        );
        if diff > 1e-3 {
            tracing::warn!(
                max_abs_diff = diff,
                "the text encoder's encoding of \"\" differs from the one recorded in the \
                 model repository (expected on reduced-precision devices only)"
            );
        }
        if let Some(image) = &self.image {
            image.executor.warm_up().await?;
        }
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            uncond_max_abs_diff = diff,
            "warm-up done"
        );
        Ok(())
    }

    /// Each graph's executor counters, for `/metrics`.
    fn graphs(&self) -> Vec<(String, ExecutorStats)> {
        let mut stats = vec![("text_encoder".to_string(), self.text_encoder.stats())];
        if let Some(image) = &self.image {
            stats.push(("image_encoder".to_string(), image.executor.stats()));
        }
        stats
    }
}
