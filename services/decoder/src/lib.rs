//! unclip-decoder: the decoder service of the unCLIP pipeline (`unclip.v1.DecoderService`).
//!
//! * `Decode`: CLIP image embeddings (+ the prompts' CLIP text encodings) → base images
//!   (decoder_image_size², 64 px for Karlo): text projection with the learned CFG embedding,
//!   guided decoder loop, clamp. Sampler: diffusers' unCLIP scheduler (default) or DDIM with η;
//!   optional initial noise (e.g. from `Invert`) and inpainting.
//! * `Upsample`: one super-resolution stage: PIL-style bicubic upsampling of the low-resolution
//!   images, then the super-resolution loop (no guidance, `last` graph on the final step).
//! * `Invert`: DDIM inversion of base images into the x_T that η = 0 DDIM decodes back to them.
//! * `GetInfo`: the model, its sizes and defaults, and this service's limits.
//!
//! | module | what |
//! |---|---|
//! | [`conditioning`] | text projection inputs (`[uncond; cond]`, CFG prepend), decoder mask |
//! | [`sampling`] | the loops as plain functions over graph and noise traits |
//! | [`noise`] | seeded per-image noise, in the loops' draw order |
//! | [`graphs`] | the ONNX executors behind the loops' traits |
//! | `request` | request validation into typed jobs |
//! | `model` | loading, warm-up, and each RPC's work |
//! | `service` | the gRPC handlers |
//!
//! [`run`] serves on a listener the caller bound until `shutdown` resolves, through
//! [`unclip_model_server::serve_model()`]: NOT_SERVING while the model loads, SERVING only
//! after a warm-up Decode and Upsample (every stage) succeeded, graceful shutdown finishing
//! calls in flight.

pub mod conditioning;
pub mod config;
pub mod graphs;
mod images;
mod model;
pub mod noise;
mod request;
pub mod sampling;
mod service;

use std::future::Future;

use tokio::net::TcpListener;
use tonic::service::Routes;
use unclip_model_server::{ModelSlot, serve_model};
use unclip_proto::v1::decoder_service_server::DecoderServiceServer;

pub use config::Config;
pub use service::SERVICE_NAME;

use images::ImageLimits;
use model::DecoderModel;
use request::Limits;
use service::DecoderApi;

/// Serves `config` on `listener` until `shutdown` resolves (or the model fails to load, which
/// is returned as the error).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let slot: ModelSlot<DecoderModel> = ModelSlot::new();
    let limits = Limits {
        max_batch: config.max_batch.max(1),
        max_images_per_input: config.max_images_per_input.max(1),
        // Replaced by the model's schedule length per request.
        max_steps: 0,
        image: ImageLimits {
            max_bytes: config.max_image_bytes,
            max_side: config.max_image_side,
        },
    };
    let server = DecoderServiceServer::new(DecoderApi::new(slot.clone(), limits))
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
