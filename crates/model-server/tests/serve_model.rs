//! `serve_model` with a model that needs no ONNX Runtime: the slot answers UNAVAILABLE until the
//! model has opened and warmed up, `/metrics` then reports readiness and each graph, and a
//! model that fails to open its repository, to load or to warm up is the start-up error,
//! saying which step failed.

use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::service::Routes;
use unclip_model_server::{ModelSlot, ServeArgs, StageModel, serve_model};
use unclip_runtime::{ExecutorStats, ModelRepository};
use unclip_testkit::{karlo_tiny, scrape};

/// A model with one graph, whose opening and warm-up succeed or fail as configured.
#[derive(Debug)]
struct Toy {
    warm_fails: bool,
    /// Reported as its graph's executor having stopped.
    stopped: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Debug, Clone)]
struct ToyConfig {
    repository: PathBuf,
    open_fails: bool,
    warm_fails: bool,
    stopped: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl StageModel for Toy {
    type Config = ToyConfig;

    fn open(config: &ToyConfig, repository: ModelRepository) -> anyhow::Result<Self> {
        if config.open_fails {
            anyhow::bail!("{} has no toy graph", repository.manifest().model_id);
        }
        Ok(Toy {
            warm_fails: config.warm_fails,
            stopped: std::sync::Arc::clone(&config.stopped),
        })
    }

    async fn warm_up(&self) -> anyhow::Result<()> {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if self.warm_fails {
            anyhow::bail!("the warm-up Decode returned NaN");
        }
        Ok(())
    }

    fn graphs(&self) -> Vec<(String, ExecutorStats)> {
        vec![(
            "toy".into(),
            ExecutorStats {
                calls: 3,
                runs: 2,
                rows: 5,
                stopped: self.stopped.load(std::sync::atomic::Ordering::SeqCst),
                run_nanos: 1_500_000_000,
            },
        )]
    }
}

/// The toy model over the real karlo-tiny repository (only its manifest is read).
fn toy(open_fails: bool, warm_fails: bool) -> ToyConfig {
    ToyConfig {
        repository: karlo_tiny(),
        open_fails,
        warm_fails,
        stopped: Default::default(),
    }
}

/// UNAVAILABLE while warming up; then the model, and metrics naming the graph.
#[tokio::test]
async fn slot_fills_after_warm_up_and_metrics_name_the_graphs() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let slot: ModelSlot<Toy> = ModelSlot::new();
    let (stop, stopped) = oneshot::channel::<()>();
    let serve = ServeArgs::default().serve_config("unclip.v1.ToyService");
    let server = tokio::spawn(serve_model(
        karlo_tiny(),
        toy(false, false),
        serve,
        listener,
        Routes::default(),
        slot.clone(),
        async {
            let _ = stopped.await;
        },
    ));

    let e = slot.get().unwrap_err();
    assert_eq!(tonic::Status::from(e).code(), tonic::Code::Unavailable);
    let before = scrape(&addr.to_string()).await;
    assert_eq!(before.value("unclip_stage_ready"), 0.0);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while slot.get().is_err() {
        assert!(tokio::time::Instant::now() < deadline, "never warmed up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = scrape(&addr.to_string()).await;
    after.assert_openmetrics();
    assert_eq!(after.value("unclip_stage_ready"), 1.0);
    assert_eq!(
        after.value("unclip_stage_graph_calls_total{graph=\"toy\"}"),
        3.0
    );
    assert_eq!(
        after.value("unclip_stage_graph_runs_total{graph=\"toy\"}"),
        2.0
    );

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// Opening and warming up fail with their own context and the cause.
#[tokio::test]
async fn failures_say_which_step_failed() {
    let missing = ToyConfig {
        repository: PathBuf::from("/nonexistent/toy"),
        ..toy(false, false)
    };
    for (config, step, cause) in [
        (
            missing,
            "loading the model: opening the model repository /nonexistent/toy",
            "",
        ),
        (
            toy(true, false),
            "loading the model",
            "karlo-tiny has no toy graph",
        ),
        (
            toy(false, true),
            "warming the model up",
            "the warm-up Decode returned NaN",
        ),
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let e = serve_model(
            config.repository.clone(),
            config,
            ServeArgs::default().serve_config("unclip.v1.ToyService"),
            listener,
            Routes::default(),
            ModelSlot::<Toy>::new(),
            std::future::pending(),
        )
        .await
        .unwrap_err();
        let text = format!("{e:#}");
        assert!(text.starts_with(step), "{text}");
        assert!(text.ends_with(cause), "{text}");
    }
}

/// Health tells the truth after start-up: NOT_SERVING while a graph's executor has stopped
/// (and `/metrics` says which), SERVING again once it runs.
#[tokio::test]
async fn a_stopped_executor_is_not_serving() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = toy(false, false);
    let stopped = std::sync::Arc::clone(&config.stopped);
    let (stop, stop_rx) = oneshot::channel::<()>();
    let serve = ServeArgs::default().serve_config("unclip.v1.ToyService");
    let server = tokio::spawn(serve_model(
        karlo_tiny(),
        config,
        serve,
        listener,
        Routes::default(),
        ModelSlot::<Toy>::new(),
        async {
            let _ = stop_rx.await;
        },
    ));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let mut until = async |want: ServingStatus| {
        for _ in 0..500 {
            let status = health
                .check(HealthCheckRequest::default())
                .await
                .unwrap()
                .into_inner()
                .status;
            if status == want as i32 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("health never said {want:?}");
    };
    until(ServingStatus::Serving).await;
    stopped.store(true, std::sync::atomic::Ordering::SeqCst);
    until(ServingStatus::NotServing).await;
    let metrics = scrape(&addr.to_string()).await;
    assert_eq!(
        metrics.value("unclip_stage_graph_stopped{graph=\"toy\"}"),
        1.0
    );
    stopped.store(false, std::sync::atomic::Ordering::SeqCst);
    until(ServingStatus::Serving).await;
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
