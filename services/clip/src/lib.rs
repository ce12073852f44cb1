//! unclip-clip: the CLIP service of the unCLIP pipeline (`unclip.v1.ClipService`).
//!
//! * `EncodeText`: prompts → tokenised with the model's tokenizer.json → text_encoder →
//!   `text_embeds [B, D]`, `last_hidden_state [B, 77, D]`, `attention_mask [B, 77]`, and per
//!   prompt whether it was truncated at 77 tokens. This is what the prior and the decoder
//!   condition on.
//! * `EncodeImage`: PNG/JPEG/WebP → the manifest's CLIP preprocessing → image_encoder →
//!   `image_embeds [B, D]` (raw scale: the decoder's input for image variations).
//! * `GetInfo`: the model, its sizes and defaults, and this service's limits.
//!
//! [`run`] serves on a listener the caller bound, until `shutdown` resolves; the binary passes
//! SIGTERM/Ctrl-C, tests pass a oneshot. The server answers health checks at once, NOT_SERVING
//! while the model loads in the background; it turns SERVING only after a warm-up EncodeText
//! (of "", compared with the repository's recorded encoding) succeeded. If loading fails, the
//! server stops and `run` returns the error. On shutdown it reports NOT_SERVING, stops
//! accepting connections and finishes the calls in flight.

pub mod config;
mod model;
mod preprocess;
mod service;
mod tokenize;

use std::future::Future;

use tokio::net::TcpListener;
use tonic::service::Routes;
use unclip_model_server::{ModelSlot, serve_model};
use unclip_proto::v1::clip_service_server::ClipServiceServer;

pub use config::Config;
pub use service::SERVICE_NAME;

use model::ClipModel;
use preprocess::ImageLimits;
use service::{ClipApi, Limits};

/// Serves `config` on `listener` until `shutdown` resolves (or the model fails to load, which
/// is returned as the error).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let slot: ModelSlot<ClipModel> = ModelSlot::new();
    let limits = Limits {
        max_batch: config.max_batch.max(1),
        max_prompt_bytes: config.max_prompt_bytes,
        image: ImageLimits {
            max_bytes: config.max_image_bytes,
            max_side: config.max_image_side,
        },
    };
    let server = ClipServiceServer::new(ClipApi::new(slot.clone(), limits))
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
