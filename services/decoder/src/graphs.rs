//! The service's ONNX graphs behind the loops' traits.
//!
//! [`Graphs`] owns one [`SessionExecutor`] per graph (text_proj, decoder, the optional inpainting
//! decoder, and each upsampler
//! stage's `first` and `last`; a stage whose `last` names the same file as `first` shares one
//! session). The loops are synchronous and run on a blocking thread, so [`GraphCalls`] submits each
//! call with `run_blocking`: the graph itself still runs on its executor's own thread, behind the
//! executor's bounded queue. Between calls it checks the request's cancellation flag, so a loop
//! whose client has gone stops at the next model call.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ndarray::{Array1, ArrayD};
use unclip_model_server::ServiceError;
use unclip_runtime::{
    Environment, ExecutorStats, ModelRepository, Outputs, SessionConfig, SessionExecutor,
    TensorData,
};

use crate::conditioning::{TextProjInputs, TextProjOutputs};
use crate::sampling::{DecoderCall, DecoderGraphs, UpsamplerGraph, UpsamplerGraphs};

/// One super-resolution stage's two graphs.
#[derive(Debug)]
struct StageGraphs {
    /// Every step but the last.
    first: Arc<SessionExecutor>,
    /// The last step (the same executor as `first` when the manifest names one file).
    last: Arc<SessionExecutor>,
}

/// The loaded graphs of the decoder service.
#[derive(Debug)]
pub struct Graphs {
    /// text_proj.onnx.
    text_proj: SessionExecutor,
    /// decoder.onnx.
    decoder: SessionExecutor,
    /// The optional `decoder_inpaint` graph, which masked Decode calls run instead.
    decoder_inpaint: Option<SessionExecutor>,
    /// The cascade, in order.
    upsamplers: Vec<StageGraphs>,
}

impl Graphs {
    /// Each graph's executor counters (an upsampler stage with one file for both steps counts
    /// once, as `upsamplers[i]`).
    pub fn stats(&self) -> Vec<(String, ExecutorStats)> {
        let mut stats = vec![
            ("text_proj".to_string(), self.text_proj.stats()),
            ("decoder".to_string(), self.decoder.stats()),
        ];
        if let Some(inpaint) = &self.decoder_inpaint {
            stats.push(("decoder_inpaint".to_string(), inpaint.stats()));
        }
        for (i, stage) in self.upsamplers.iter().enumerate() {
            if Arc::ptr_eq(&stage.first, &stage.last) {
                stats.push((format!("upsamplers[{i}]"), stage.first.stats()));
            } else {
                stats.push((format!("upsamplers[{i}].first"), stage.first.stats()));
                stats.push((format!("upsamplers[{i}].last"), stage.last.stats()));
            }
        }
        stats
    }

    /// Loads every graph the service runs.
    pub fn load(
        repo: &ModelRepository,
        env: &Environment,
        config: &SessionConfig,
    ) -> unclip_runtime::Result<Self> {
        let c = &repo.manifest().components;
        let text_proj = repo.load_executor(env, "text_proj", &c.text_proj, config)?;
        let decoder = repo.load_executor(env, "decoder", &c.decoder, config)?;
        let decoder_inpaint = c
            .decoder_inpaint
            .as_ref()
            .map(|spec| repo.load_executor(env, "decoder_inpaint", spec, config))
            .transpose()?;
        let mut upsamplers = Vec::with_capacity(c.upsamplers.len());
        for (i, stage) in c.upsamplers.iter().enumerate() {
            let first = Arc::new(repo.load_executor(
                env,
                &format!("upsamplers[{i}].first"),
                &stage.first,
                config,
            )?);
            let last = if stage.last == stage.first {
                Arc::clone(&first)
            } else {
                Arc::new(repo.load_executor(
                    env,
                    &format!("upsamplers[{i}].last"),
                    &stage.last,
                    config,
                )?)
            };
            upsamplers.push(StageGraphs { first, last });
        }
        Ok(Self {
            text_proj,
            decoder,
            decoder_inpaint,
            upsamplers,
        })
    }

    /// Whether the repository's `decoder_inpaint` graph is loaded.
    pub fn has_decoder_inpaint(&self) -> bool {
        self.decoder_inpaint.is_some()
    }

    /// The files these graphs are loaded from (for hashing before loading).
    pub fn files(repo: &ModelRepository) -> Vec<&str> {
        let c = &repo.manifest().components;
        let mut files = vec![c.text_proj.file.as_str(), c.decoder.file.as_str()];
        files.extend(c.decoder_inpaint.as_ref().map(|spec| spec.file.as_str()));
        for stage in &c.upsamplers {
            files.push(&stage.first.file);
            files.push(&stage.last.file);
        }
        files.dedup();
        files
    }

    /// The graphs as the loops call them, for one request.
    pub fn calls<'a>(&'a self, cancelled: &'a AtomicBool) -> GraphCalls<'a> {
        GraphCalls {
            graphs: self,
            cancelled,
        }
    }
}

/// [`Graphs`] bound to one request's cancellation flag; implements the loops' traits.
#[derive(Debug, Clone, Copy)]
pub struct GraphCalls<'a> {
    /// The executors.
    graphs: &'a Graphs,
    /// Set when the request's client has gone away.
    cancelled: &'a AtomicBool,
}

impl GraphCalls<'_> {
    /// Runs `executor` on `inputs` from this (blocking) thread, unless the request was cancelled.
    fn run(
        &self,
        executor: &SessionExecutor,
        inputs: Vec<(&str, TensorData)>,
    ) -> Result<Outputs, ServiceError> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(ServiceError::Unavailable(
                "the request was cancelled".into(),
            ));
        }
        let inputs = inputs
            .into_iter()
            .map(|(name, value)| (name.to_string(), value))
            .collect();
        Ok(executor.run_blocking(inputs)?)
    }
}

impl DecoderGraphs for GraphCalls<'_> {
    fn text_proj(&mut self, inputs: &TextProjInputs) -> Result<TextProjOutputs, ServiceError> {
        let mut out = self.run(
            &self.graphs.text_proj,
            vec![
                (
                    "image_embeddings",
                    TensorData::F32(inputs.image_embeddings.clone().into_dyn()),
                ),
                (
                    "prompt_embeds",
                    TensorData::F32(inputs.prompt_embeds.clone().into_dyn()),
                ),
                (
                    "text_encoder_hidden_states",
                    TensorData::F32(inputs.text_encoder_hidden_states.clone().into_dyn()),
                ),
            ],
        )?;
        Ok(TextProjOutputs {
            encoder_hidden_states: out.take_f32("encoder_hidden_states")?,
            additive_clip_time_embeddings: out.take_f32("additive_clip_time_embeddings")?,
        })
    }

    fn decoder(&mut self, call: DecoderCall<'_>) -> Result<ArrayD<f32>, ServiceError> {
        let executor = match (&call.inpaint, &self.graphs.decoder_inpaint) {
            (None, _) => &self.graphs.decoder,
            (Some(_), Some(inpaint)) => inpaint,
            (Some(_), None) => {
                return Err(ServiceError::Internal(
                    "an inpainting decoder call, but no decoder_inpaint graph is loaded".into(),
                ));
            }
        };
        let mut inputs = vec![
            ("sample", TensorData::F32(call.sample.clone())),
            (
                "timestep",
                TensorData::I64(call.timestep.clone().into_dyn()),
            ),
            (
                "encoder_hidden_states",
                TensorData::F32(call.encoder_hidden_states.clone()),
            ),
            ("class_labels", TensorData::F32(call.class_labels.clone())),
            (
                "attention_mask",
                TensorData::Bool(call.attention_mask.clone().into_dyn()),
            ),
        ];
        if let Some(inpaint) = call.inpaint {
            inputs.push((
                "masked_image",
                TensorData::F32(inpaint.masked_image.clone()),
            ));
            inputs.push(("mask", TensorData::F32(inpaint.mask.clone())));
        }
        let mut out = self.run(executor, inputs)?;
        Ok(out.take_f32("out_sample")?)
    }

    fn has_inpaint_decoder(&self) -> bool {
        self.graphs.decoder_inpaint.is_some()
    }
}

impl UpsamplerGraphs for GraphCalls<'_> {
    fn upsampler(
        &mut self,
        stage: usize,
        graph: UpsamplerGraph,
        sample: &ArrayD<f32>,
        timestep: &Array1<i64>,
    ) -> Result<ArrayD<f32>, ServiceError> {
        let stage_graphs = self.graphs.upsamplers.get(stage).ok_or_else(|| {
            ServiceError::Internal(format!("no upsampler stage {stage} is loaded"))
        })?;
        let executor = match graph {
            UpsamplerGraph::First => &stage_graphs.first,
            UpsamplerGraph::Last => &stage_graphs.last,
        };
        let mut out = self.run(
            executor,
            vec![
                ("sample", TensorData::F32(sample.clone())),
                ("timestep", TensorData::I64(timestep.clone().into_dyn())),
            ],
        )?;
        Ok(out.take_f32("out_sample")?)
    }
}
