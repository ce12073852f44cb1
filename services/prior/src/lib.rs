//! unclip-prior: the diffusion prior of the unCLIP pipeline (`unclip.v1.PriorService`).
//!
//! * `Sample`: CLIP text encodings (from `ClipService.EncodeText`) → the prior's denoising loop
//!   ([`sampler`]: [uncond; cond] batch, classifier-free guidance when the scale is > 1,
//!   UnclipScheduler steps from the manifest) → CLIP image embeddings in raw scale
//!   (`x·clip_std + clip_mean`), `num_images` per prompt, optionally best-of-k reranked by dot
//!   product with the prompt's text embedding. Image k of a request draws its noise from
//!   seed + k, so any image can be reproduced alone.
//! * `GetInfo`: the model, its sizes and defaults, and this service's limits.
//!
//! [`run`] serves on a listener the caller bound until `shutdown` resolves, through
//! [`unclip_model_server::serve_model()`]: health NOT_SERVING until the model has loaded and a
//! warm-up Sample succeeded, reflection, graceful shutdown. The loop itself is a plain async function over a
//! [`sampler::PriorNetwork`] (the ONNX executor, or a closure in tests) with injectable noise,
//! so it is tested against diffusers' recordings without gRPC (tests/parity.rs).

pub mod config;
pub mod model;
pub mod sampler;
mod service;

use std::future::Future;

use tokio::net::TcpListener;
use tonic::service::Routes;
use unclip_model_server::{ModelSlot, serve_model};
use unclip_proto::v1::prior_service_server::PriorServiceServer;

pub use config::Config;
pub use service::{MAX_GUIDANCE_SCALE, MAX_STEPS, MIN_STEPS, SERVICE_NAME};

use model::PriorModel;
use service::{Limits, PriorApi};

/// Serves `config` on `listener` until `shutdown` resolves (or the model fails to load, which
/// is returned as the error).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let slot: ModelSlot<PriorModel> = ModelSlot::new();
    let limits = Limits {
        max_batch: config.max_batch.max(1),
        max_images_per_input: config.max_images_per_input.max(1),
        max_best_of: config.max_best_of.max(1),
    };
    let server = PriorServiceServer::new(PriorApi::new(slot.clone(), limits))
        .max_decoding_message_size(config.serve.max_message_bytes)
        .max_encoding_message_size(config.serve.max_message_bytes);
    let serve = config.serve.serve_config(SERVICE_NAME);
    serve_model(
        config.model.clone(),
        config,
        serve,
        listener,
        Routes::new(server),
        slot,
        shutdown,
    )
    .await
}
