//! unclip-gateway: the unCLIP capabilities over the stage services (`unclip.v1.Gateway`).
//!
//! Other services call the gateway; the gateway calls the clip, prior and decoder services.
//!
//! | module | what |
//! |---|---|
//! | [`config`] | flags (`--clip`, `--prior`, `--decoder` replica lists, `--redis-url`, limits) |
//! | [`api`] | [`Core`]: the capabilities for every transport, over the proto's request and response types, progress as a stream |
//! | [`layer`] | the request-level hook every transport shares: [`RequestContext`], [`RequestLayer`], [`Permit`], [`Chain`] |
//! | [`keys`] | API keys (`--api-keys`): the key layer, per-key limits and counters, before any other layer |
//! | [`admission`] | [`Admission`]: the cost budget, bounded slots and queue, deadline-aware shedding |
//! | [`service`] | the gRPC adapter: metadata and deadline → [`Core`] → status |
//! | [`http`] | the HTTP adapter (OpenAI's Images API shape, on the gRPC port): JSON and forms → [`Core`] → JSON or SSE |
//! | [`stage`] | [`Stage`], the one label of each stage call in timings, progress, errors and metrics |
//! | [`stages`] | typed, timed stage calls through balanced, retried replica sets; the start-up model check |
//! | [`pipeline`] | the capabilities: generate, vary, interpolate, text diff, inpaint, and the cached lookups they share |
//! | [`images`] | uploads to stage sizes, inpainting masks per resolution, the text diff's APNG |
//! | [`progress`] | progress and preview events of the streaming calls |
//! | [`validate`] | request checks: INVALID_ARGUMENT naming the field |
//! | [`stats`] | request counters for GetStats |
//! | [`metrics`] | what `GET /metrics` reports |
//! | [`web`] | the web page at `GET /` (embedded HTML, CSS and JavaScript) that tries every capability |
//!
//! Start-up ([`run`]): health answers NOT_SERVING while the gateway waits for every stage's
//! addresses to resolve (a DNS name that resolves to nothing is looked up again, without end),
//! asks every replica of every stage for GetInfo (waiting for ones still loading) and checks
//! that all serve one model version (or, with `--model-version`, leaves out the others); a
//! mismatch ends the process with an error naming each replica's model. From then on every
//! replica, however found, is probed (health and model version) before its first call and
//! every `--stage-probe-interval-secs`, and health is SERVING while every stage has an
//! available replica of that version, NOT_SERVING otherwise.
//!
//! The cache ([`unclip_cache`]) holds text encodings (per prompt), image embeddings (per uploaded
//! image's bytes) and prior samples (per prompt, negative prompt, seed, steps, guidance and
//! best-of), under keys that carry the model version. Redis when `--redis-url` is given, else a
//! bounded in-process cache. A cache that fails or is slow is skipped, never an error.

pub mod admission;
pub mod api;
pub mod config;
pub mod error;
pub mod http;
pub mod images;
pub mod keys;
pub mod layer;
pub mod metrics;
pub mod pipeline;
pub mod progress;
pub mod service;
pub mod stage;
pub mod stages;
pub mod stats;
pub mod validate;
pub mod web;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::Routes;
use unclip_cache::{Cache, MemoryConfig, RedisConfig};
use unclip_proto::v1::gateway_server::GatewayServer;
use unclip_server::Slot;
use unclip_server::image_input::ImageLimits;

pub use admission::{Admission, AdmissionArgs};
pub use api::Core;
pub use config::Config;
pub use error::{Error, Result};
pub use layer::{
    AdmitAll, Caller, Capability, Chain, Cost, Permit, Refusal, RequestContext, RequestLayer,
};
pub use pipeline::Gateway;
pub use service::SERVICE_NAME;
pub use stage::Stage;

use pipeline::Limits;
use service::GatewayApi;
use stages::Stages;

/// Serves `config` on `listener` until `shutdown` resolves, or until the start-up check of the
/// stages fails (returned as the error), with admission control (`config.admission`).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with_layer(config, Arc::new(AdmitAll), listener, shutdown).await
}

/// As [`run`], asking `layer` before every request, before admission control (so a caller
/// `layer` refuses never takes a place in the queue).
pub async fn run_with_layer(
    config: Config,
    layer: Arc<dyn RequestLayer>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (ready, readiness) = watch::channel(false);
    // A bad stage TLS file stops the start here, with one line naming it.
    config.stage_tls()?;
    let load = {
        let config = config.clone();
        async move { connect(&config, ready).await }
    };
    let admission = Admission::new(config.admission.clone());
    serve(
        &config, layer, admission, listener, load, readiness, shutdown,
    )
    .await
}

/// Serves the gateway whose state `load` makes, asking `layer` and then `admission` before
/// every request.
async fn serve(
    config: &Config,
    layer: Arc<dyn RequestLayer>,
    admission: Admission,
    listener: TcpListener,
    load: impl Future<Output = anyhow::Result<Gateway>> + Send + 'static,
    readiness: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // With --api-keys the key layer runs first, then `layer`; a bad file stops the start here.
    let keys = match &config.api_keys {
        Some(path) => Some(Arc::new(keys::ApiKeys::load(path)?)),
        None => None,
    };
    let layer: Arc<dyn RequestLayer> = match &keys {
        Some(keys) => Arc::new(keys::KeyLayer {
            keys: Arc::clone(keys),
            then: layer,
        }),
        None => layer,
    };
    let slot: Slot<Gateway> = Slot::new();
    let layer = Chain::new().then(layer).then(Arc::new(admission.clone()));
    let mut core = Core::new(slot.clone(), config.request_timeout())
        .with_layer(Arc::new(layer))
        .with_readiness(readiness.clone())
        .with_metrics(unclip_server::metrics::Metrics::new(move |registry| {
            admission.metrics(registry)
        }));
    if let Some(keys) = &keys {
        let registered = Arc::clone(keys);
        core = core.with_metrics(unclip_server::metrics::Metrics::new(move |registry| {
            registered.register(registry)
        }));
    }
    let http = http::router(core.clone(), http::HttpConfig::from_config(config));
    let api = GatewayApi::new(core);
    let metrics = api.metrics();
    let mut serve_config = config.serve.serve_config(SERVICE_NAME);
    let mut reloader = None;
    if let Some(keys) = &keys {
        let reloaded = Arc::clone(keys);
        reloader = Some(tokio::spawn(unclip_server::reload::watch_files(
            vec![keys.path().to_owned()],
            Duration::from_secs(config.serve.reload_check_secs),
            move || reloaded.reload_and_log(),
        )));
    }
    serve_config = match (&keys, config.metrics_require_key) {
        (Some(keys), true) => {
            serve_config.with_http(keys::metrics_route(Arc::clone(keys), metrics))
        }
        _ => serve_config.with_metrics(metrics),
    };
    let server = GatewayServer::new(api)
        .max_decoding_message_size(config.serve.max_message_bytes)
        .max_encoding_message_size(config.serve.max_message_bytes);
    let served = unclip_server::serve(
        serve_config
            .with_http(http.merge(web::router()))
            .with_readiness(readiness),
        listener,
        Routes::new(server),
        slot,
        load,
        shutdown,
    )
    .await;
    reloader.inspect(|task| task.abort());
    served
}

/// The cache `config` asks for.
pub fn cache(config: &Config) -> anyhow::Result<Cache> {
    let ttl = config.cache_ttl();
    Ok(match &config.redis_url {
        Some(url) => {
            let redis = RedisConfig {
                op_timeout: Duration::from_millis(config.cache_timeout_ms.max(1)),
                ..RedisConfig::new(url.clone(), ttl)
            };
            Cache::redis(redis).map_err(|e| anyhow::anyhow!("--redis-url: {e}"))?
        }
        None if config.cache_memory_mb == 0 => Cache::disabled(),
        None => Cache::memory(MemoryConfig {
            max_bytes: config.cache_memory_mb << 20,
            ttl,
        }),
    })
}

/// Connects the stages, checks them, and builds the shared state; `ready` then follows
/// whether every stage has an available replica.
async fn connect(config: &Config, ready: watch::Sender<bool>) -> anyhow::Result<Gateway> {
    let cache = cache(config)?;
    let stages = Stages::new(config).await?;
    stages.resolved().await;
    let infos = stages
        .check(
            Duration::from_secs(config.startup_timeout_secs),
            config.model_version.as_deref().filter(|v| !v.is_empty()),
        )
        .await?;
    stages.admit(stages::ModelKey::of(&infos.decoder)).await;
    stages.readiness(ready);
    tracing::info!(
        model = %infos.decoder.model_id,
        version = %infos.version(),
        cache = cache.backend(),
        "every stage serves the same model"
    );
    Ok(Gateway {
        stages,
        infos,
        cache,
        limits: Limits {
            max_images: config.max_images.max(1),
            max_frames: config.max_frames.max(2),
            max_prompt_chars: config.max_prompt_chars.max(1),
            image: ImageLimits {
                max_bytes: usize::try_from(config.max_image_bytes).unwrap_or(usize::MAX),
                max_side: config.max_image_side,
            },
        },
    })
}
