//! Shared helpers of the decoder service's integration tests: a real server on 127.0.0.1:0 with
//! a committed model, gRPC clients, and the recorded karlo-tiny fixtures.
//!
//! The ONNX Runtime library comes from `UNCLIP_ORT_LIBRARY` (read by the service's own flag);
//! the tests refuse to run without it.

#![allow(dead_code)] // each test file uses a different subset

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use ndarray::{ArrayD, Axis, concatenate};
use ndarray_npy::NpzReader;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use unclip_decoder::Config;
use unclip_proto::v1::decoder_service_client::DecoderServiceClient;
use unclip_runtime::{ModelRepository, SessionConfig, init_environment};

/// The committed test model.
pub fn karlo_tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/karlo-tiny")
}

/// The shapes model, once its manifest exists (it is trained separately); `UNCLIP_SHAPES_MODEL`
/// points the tests at another export of it.
pub fn shapes() -> Option<PathBuf> {
    let dir = std::env::var_os("UNCLIP_SHAPES_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/shapes"));
    dir.join("manifest.json").is_file().then_some(dir)
}

/// Client-side message limit, as large as the server's.
pub const MAX_MESSAGE: usize = 64 << 20;

/// Panics with a helpful message unless the ONNX Runtime library is configured.
pub fn require_ort() {
    assert!(
        std::env::var_os("UNCLIP_ORT_LIBRARY").is_some(),
        "UNCLIP_ORT_LIBRARY is not set: point it at libonnxruntime.so.1.N (N >= 31), e.g. \
         <venv>/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.32.0"
    );
}

/// The graphs of `model` loaded directly (no server), one intra-op thread each.
pub fn load_graphs(model: &Path) -> (ModelRepository, unclip_decoder::graphs::Graphs) {
    require_ort();
    let repo = ModelRepository::open(model).unwrap();
    let env = init_environment(None).unwrap();
    let config = SessionConfig {
        intra_threads: 1,
        ..SessionConfig::default()
    };
    let graphs = unclip_decoder::graphs::Graphs::load(&repo, &env, &config).unwrap();
    (repo, graphs)
}

/// A service running in this process.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Fires the shutdown future.
    shutdown: Option<oneshot::Sender<()>>,
    /// `run`'s task.
    handle: JoinHandle<anyhow::Result<()>>,
}

/// The service's configuration for `model` plus `extra` flags (one intra-op thread: the tests
/// share a small machine).
pub fn config_for(model: &Path, extra: &[&str]) -> Config {
    require_ort();
    let mut args = vec![
        "unclip-decoder",
        "--model",
        model.to_str().unwrap(),
        "--intra-threads",
        "1",
    ];
    args.extend_from_slice(extra);
    Config::parse_from(args)
}

/// The configuration for karlo-tiny plus `extra` flags.
pub fn config(extra: &[&str]) -> Config {
    config_for(&karlo_tiny(), extra)
}

impl TestServer {
    /// Starts the karlo-tiny service on an ephemeral loopback port (it loads in the background).
    pub async fn start(extra: &[&str]) -> Self {
        Self::start_with(config(extra)).await
    }

    /// Starts the service with `config`.
    pub async fn start_with(config: Config) -> Self {
        // Logs go through the test harness, so they show only for failing tests.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| unclip_server::logging::DEFAULT_FILTER.into()),
            )
            .with_test_writer()
            .try_init();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(unclip_decoder::run(config, listener, async {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            shutdown: Some(tx),
            handle,
        }
    }

    /// Starts the karlo-tiny service and waits until it reports SERVING.
    pub async fn serving(extra: &[&str]) -> Self {
        let server = Self::start(extra).await;
        server.wait_serving().await;
        server
    }

    /// Starts the service with `config` and waits until it reports SERVING.
    pub async fn serving_with(config: Config) -> Self {
        let server = Self::start_with(config).await;
        server.wait_serving().await;
        server
    }

    /// A channel to the server.
    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// A DecoderService client with message limits raised like the server's.
    pub async fn decoder(&self) -> DecoderServiceClient<Channel> {
        DecoderServiceClient::new(self.channel().await)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// A health client.
    pub async fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel().await)
    }

    /// The overall health status ("").
    pub async fn status(&self) -> ServingStatus {
        let status = self
            .health()
            .await
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        ServingStatus::try_from(status).unwrap()
    }

    /// Follows the health Watch stream until SERVING; panics if the server ends first.
    pub async fn wait_serving(&self) {
        let mut stream = self
            .health()
            .await
            .watch(HealthCheckRequest {
                service: unclip_decoder::SERVICE_NAME.into(),
            })
            .await
            .unwrap()
            .into_inner();
        loop {
            match stream.message().await {
                Ok(Some(m)) if m.status == ServingStatus::Serving as i32 => return,
                Ok(Some(_)) => continue,
                other => panic!("the health stream ended before SERVING: {other:?}"),
            }
        }
    }

    /// Fires the shutdown future and returns what `run` returned.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.handle.await.expect("the server task panicked")
    }

    /// Waits for `run` to return on its own (e.g. after a failed load).
    pub async fn join(self) -> anyhow::Result<()> {
        self.handle.await.expect("the server task panicked")
    }
}

/// One recorded fixture case (models/karlo-tiny/fixtures/README.md), references resolved.
pub struct Fixture {
    /// `<case>.json`.
    pub json: Value,
    /// Float arrays of `<case>.npz` by key, read on demand.
    f32s: HashMap<String, ArrayD<f32>>,
    /// Bool arrays by key.
    bools: HashMap<String, ArrayD<bool>>,
    /// The npz.
    npz: NpzReader<File>,
}

impl Fixture {
    /// Opens `<case>.json` and `<case>.npz`.
    pub fn open(case: &str) -> Self {
        let dir = karlo_tiny().join("fixtures");
        let json = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{case}.json"))).unwrap(),
        )
        .unwrap();
        let npz = NpzReader::new(File::open(dir.join(format!("{case}.npz"))).unwrap()).unwrap();
        Fixture {
            json,
            f32s: HashMap::new(),
            bools: HashMap::new(),
            npz,
        }
    }

    /// Every full-trace case of index.json ("cases").
    pub fn cases() -> Vec<String> {
        Self::listed("cases")
    }

    /// Every replay case of index.json ("replay_cases": noise draws and `values` only, no model
    /// calls or scheduler steps).
    pub fn replay_cases() -> Vec<String> {
        Self::listed("replay_cases")
    }

    /// The cases of index.json's `list`.
    fn listed(list: &str) -> Vec<String> {
        let index: Value = serde_json::from_str(
            &std::fs::read_to_string(karlo_tiny().join("fixtures/index.json")).unwrap(),
        )
        .unwrap();
        index[list]
            .as_array()
            .unwrap_or_else(|| panic!("index.json has no \"{list}\" list"))
            .iter()
            .map(|c| c["case"].as_str().unwrap().to_string())
            .collect()
    }

    /// The timesteps of `stage` ("prior", "decoder" or "upsampler"), in the order run.
    pub fn timesteps(&self, stage: &str) -> Vec<i64> {
        self.json["timesteps"][stage]
            .as_array()
            .unwrap_or_else(|| panic!("no {stage} timesteps"))
            .iter()
            .map(|t| t.as_i64().unwrap())
            .collect()
    }

    /// A float tensor reference: a key, or `{"concat": [k1, k2], "axis": a}`.
    pub fn f32(&mut self, reference: &Value) -> ArrayD<f32> {
        if let Some(key) = reference.as_str() {
            if !self.f32s.contains_key(key) {
                let a: ArrayD<f32> = self.npz.by_name(&format!("{key}.npy")).unwrap();
                self.f32s.insert(key.to_string(), a);
            }
            return self.f32s[key].clone();
        }
        let parts: Vec<ArrayD<f32>> = reference["concat"]
            .as_array()
            .unwrap_or_else(|| panic!("not a tensor reference: {reference}"))
            .iter()
            .map(|r| self.f32(r))
            .collect();
        let axis = reference["axis"].as_u64().unwrap() as usize;
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        concatenate(Axis(axis), &views).unwrap()
    }

    /// A bool tensor reference (a key).
    pub fn bool(&mut self, reference: &Value) -> ArrayD<bool> {
        let key = reference.as_str().unwrap();
        if !self.bools.contains_key(key) {
            let a: ArrayD<bool> = self.npz.by_name(&format!("{key}.npy")).unwrap();
            self.bools.insert(key.to_string(), a);
        }
        self.bools[key].clone()
    }

    /// A named float value.
    pub fn value(&mut self, name: &str) -> ArrayD<f32> {
        let r = self.json["values"][name].clone();
        self.f32(&r)
    }

    /// A named bool value.
    pub fn value_bool(&mut self, name: &str) -> ArrayD<bool> {
        let r = self.json["values"][name].clone();
        self.bool(&r)
    }

    /// The fixture's kind: "text_to_image" or "image_variation".
    pub fn kind(&self) -> &str {
        self.json["kind"].as_str().unwrap()
    }

    /// The records of `stage` in `list` ("noise" or "scheduler_steps").
    pub fn stage(&self, list: &str, stage: &str) -> Vec<Value> {
        self.json[list]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["stage"] == stage)
            .cloned()
            .collect()
    }

    /// The model calls whose component starts with `prefix`, in call order.
    pub fn calls(&self, prefix: &str) -> Vec<Value> {
        self.json["model_calls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["component"].as_str().unwrap().starts_with(prefix))
            .cloned()
            .collect()
    }

    /// The stage's noise draws, in draw order.
    pub fn noise(&mut self, stage: &str) -> Vec<ArrayD<f32>> {
        self.stage("noise", stage)
            .iter()
            .map(|n| self.f32(&n["tensor"]))
            .collect()
    }
}

/// Largest absolute difference; shapes must match.
pub fn max_abs_diff(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Asserts a status with exactly `code` and `message`.
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    message: &str,
) {
    match result {
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            assert_eq!(status.message(), message);
        }
        Ok(v) => panic!("expected {code:?} \"{message}\", got {v:?}"),
    }
}
