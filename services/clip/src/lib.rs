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
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tonic::transport::Server;
use unclip_proto::v1::clip_service_server::ClipServiceServer;
use unclip_server::grpc::{self, Health};

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
    let address = listener
        .local_addr()
        .context("reading the listener's address")?;
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Health::new(reporter, SERVICE_NAME);
    health.set(false).await;

    let slot: Arc<OnceLock<Arc<ClipModel>>> = Arc::new(OnceLock::new());
    let limits = Limits {
        max_batch: config.max_batch.max(1),
        max_prompt_bytes: config.max_prompt_bytes,
        image: ImageLimits {
            max_bytes: config.max_image_bytes,
            max_side: config.max_image_side,
        },
    };
    let api = ClipApi::new(Arc::clone(&slot), limits);

    // Load and warm up in the background, so health answers NOT_SERVING meanwhile.
    let failure: Arc<Mutex<Option<anyhow::Error>>> = Arc::default();
    let failed = Arc::new(Notify::new());
    let loader = {
        let (health, failure, failed, config) = (
            health.clone(),
            Arc::clone(&failure),
            Arc::clone(&failed),
            config.clone(),
        );
        tokio::spawn(async move {
            let loaded = async {
                let model = tokio::task::spawn_blocking(move || ClipModel::load(&config))
                    .await
                    .context("the loading task panicked")??;
                model.warm_up().await?;
                anyhow::Ok(model)
            }
            .await;
            match loaded {
                Ok(model) => {
                    let _ = slot.set(Arc::new(model));
                    health.set(true).await;
                    tracing::info!("serving");
                }
                Err(e) => {
                    tracing::error!(cause = format!("{e:#}"), "loading the model failed");
                    *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    failed.notify_one();
                }
            }
        })
    };

    let clip = ClipServiceServer::new(api)
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    // The server stops accepting on `shutdown` (or a failed load) and then waits for the calls
    // in flight, for at most the grace period.
    let stopping = Arc::new(Notify::new());
    let stop = {
        let (health, stopping) = (health.clone(), Arc::clone(&stopping));
        async move {
            tokio::select! {
                _ = shutdown => tracing::info!("shutting down: finishing calls in flight"),
                _ = failed.notified() => {}
            }
            stopping.notify_one();
            health.stop().await;
        }
    };
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    tracing::info!(%address, model = %config.model.display(), "listening");
    let server = Server::builder()
        .add_service(health_service)
        .add_service(grpc::reflection_v1())
        .add_service(grpc::reflection_v1alpha())
        .add_service(clip)
        .serve_with_incoming_shutdown(grpc::incoming(listener), stop);
    tokio::select! {
        served = server => served.context("serving gRPC")?,
        _ = async { stopping.notified().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace_secs = grace.as_secs(), "calls still in flight after the grace period; stopping anyway");
        }
    }
    loader.abort();

    if let Some(e) = failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    tracing::info!("stopped");
    Ok(())
}
