//! [`serve_model`]: how a stage service serves its model, on top of [`unclip_server::serve`].
//!
//! A stage's model implements [`StageModel`] (open from the service's config, warm up, report
//! its graphs); the service builds its tonic server around a [`ModelSlot`] and hands both to
//! [`serve_model`], which opens the model on a blocking thread, warms it up, fills the slot,
//! turns health SERVING and serves `/metrics` with every graph's counters.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::Routes;
use unclip_runtime::{ExecutorStats, ModelRepository};
use unclip_server::{ServeConfig, Slot};

use crate::error::ServiceError;
use crate::metrics::graph_metrics;

/// A model a stage service serves.
pub trait StageModel: Sized + Send + Sync + 'static {
    /// The service's configuration, which says where the model is and how it runs.
    type Config: Send + 'static;

    /// Opens the model from its repository (already opened: manifest read and checked): hashes
    /// the files the service reads, creates the ONNX Runtime sessions. Blocking;
    /// [`serve_model`] runs it on a blocking thread.
    fn open(config: &Self::Config, repository: ModelRepository) -> anyhow::Result<Self>;

    /// One real call through every graph, so that SERVING means "answers". A model whose
    /// calls block may warm up at the end of [`StageModel::open`] instead and keep this
    /// default, which does nothing.
    fn warm_up(&self) -> impl Future<Output = anyhow::Result<()>> + Send {
        async { Ok(()) }
    }

    /// Each graph's executor counters, for `/metrics`.
    fn graphs(&self) -> Vec<(String, ExecutorStats)>;
}

/// Where a stage's handlers find the model: [`Slot`] whose empty state is the RPC error
/// UNAVAILABLE "the model is still loading". Cheap to clone; every clone sees the same model.
#[derive(Debug)]
pub struct ModelSlot<M>(Slot<M>);

impl<M> Clone for ModelSlot<M> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<M> Default for ModelSlot<M> {
    fn default() -> Self {
        Self(Slot::new())
    }
}

impl<M> ModelSlot<M> {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    /// The model, or UNAVAILABLE "the model is still loading".
    pub fn get(&self) -> Result<Arc<M>, ServiceError> {
        self.0
            .get()
            .ok_or_else(|| ServiceError::Unavailable("the model is still loading".into()))
    }

    /// Fills the slot (the first call wins). [`serve_model`] does this once the model has
    /// warmed up; tests of handlers may do it directly.
    pub fn set(&self, model: M) {
        self.0.set(model);
    }
}

/// Serves `routes` (the service's tonic server over `slot`, message limits applied) on
/// `listener` until `shutdown` resolves, with the model in `repository` opened under `config`: NOT_SERVING while the model
/// opens ([`StageModel::open`], on a blocking thread) and warms up ([`StageModel::warm_up`]),
/// SERVING after, and NOT_SERVING again while a graph's executor has stopped
/// ([`ExecutorStats::stopped`], unless `serve` already follows a readiness of its own);
/// `/metrics` with `unclip_stage_ready` and each graph's counters. A model
/// that fails to open or warm up stops the server and is the error returned.
pub async fn serve_model<M: StageModel>(
    repository: PathBuf,
    config: M::Config,
    serve: ServeConfig,
    listener: TcpListener,
    routes: Routes,
    slot: ModelSlot<M>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tracing::info!(model = %repository.display(), "starting");
    let load = async move {
        let model = tokio::task::spawn_blocking(move || {
            let opened = ModelRepository::open(&repository).with_context(|| {
                format!("opening the model repository {}", repository.display())
            })?;
            M::open(&config, opened)
        })
        .await
        .map_err(|e| anyhow::anyhow!("the loading task panicked: {e}"))?
        .context("loading the model")?;
        model.warm_up().await.context("warming the model up")?;
        Ok(model)
    };
    let serve = serve.with_metrics(graph_metrics(slot.clone()));
    let (ready, readiness) = watch::channel(true);
    let watcher = tokio::spawn(watch_executors(slot.clone(), ready));
    let serve = if serve.readiness.is_none() {
        serve.with_readiness(readiness)
    } else {
        serve
    };
    let served = unclip_server::serve(serve, listener, routes, slot.0, load, shutdown).await;
    watcher.abort();
    served
}

/// How often [`watch_executors`] looks at the executors.
const EXECUTOR_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Health that tells the truth: `ready` says `false` while any graph's executor thread has
/// stopped (its session answers no more), `true` otherwise. Looks every
/// [`EXECUTOR_CHECK_INTERVAL`] once the model is loaded.
async fn watch_executors<M: StageModel>(slot: ModelSlot<M>, ready: watch::Sender<bool>) {
    let mut interval = tokio::time::interval(EXECUTOR_CHECK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Ok(model) = slot.get() else {
            continue;
        };
        let stopped: Vec<String> = model
            .graphs()
            .into_iter()
            .filter(|(_, stats)| stats.stopped)
            .map(|(graph, _)| graph)
            .collect();
        let now_ready = stopped.is_empty();
        if *ready.borrow() != now_ready {
            if now_ready {
                tracing::info!("every graph's executor is running again");
            } else {
                tracing::error!(graphs = ?stopped, "a graph's executor has stopped; health NOT_SERVING");
            }
        }
        ready.send_if_modified(|r| std::mem::replace(r, now_ready) != now_ready);
    }
}
