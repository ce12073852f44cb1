//! Shared helpers of the CLIP service's integration tests: a real server on 127.0.0.1:0 with
//! the committed karlo-tiny model, gRPC clients, and the recorded fixtures.
//!
//! The ONNX Runtime library comes from `UNCLIP_ORT_LIBRARY` (read by the service's own flag);
//! the tests refuse to run without it.

#![allow(dead_code)] // each test file uses a different subset

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use ndarray::ArrayD;
use ndarray_npy::NpzReader;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use unclip_clip::Config;
use unclip_proto::v1::clip_service_client::ClipServiceClient;

/// The committed test model.
pub fn karlo_tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/karlo-tiny")
}

/// Client-side message limit, as large as the server's.
pub const MAX_MESSAGE: usize = 64 << 20;

/// A service running in this process.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Fires the shutdown future.
    shutdown: Option<oneshot::Sender<()>>,
    /// `run`'s task.
    handle: JoinHandle<anyhow::Result<()>>,
}

/// The service's configuration for karlo-tiny plus `extra` flags (one intra-op thread: the
/// tests share a small machine).
pub fn config(extra: &[&str]) -> Config {
    assert!(
        std::env::var_os("UNCLIP_ORT_LIBRARY").is_some(),
        "UNCLIP_ORT_LIBRARY is not set: point it at libonnxruntime.so.1.N (N >= 31), e.g. \
         <venv>/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.32.0"
    );
    let model = karlo_tiny();
    let mut args = vec![
        "unclip-clip",
        "--model",
        model.to_str().unwrap(),
        "--intra-threads",
        "1",
    ];
    args.extend_from_slice(extra);
    Config::parse_from(args)
}

impl TestServer {
    /// Starts the service on an ephemeral loopback port (it loads the model in the background).
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
        let handle = tokio::spawn(unclip_clip::run(config, listener, async {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            shutdown: Some(tx),
            handle,
        }
    }

    /// Starts the service and waits until it reports SERVING.
    pub async fn serving(extra: &[&str]) -> Self {
        let server = Self::start(extra).await;
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

    /// A ClipService client with message limits raised like the server's.
    pub async fn clip(&self) -> ClipServiceClient<Channel> {
        ClipServiceClient::new(self.channel().await)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// A health client.
    pub async fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel().await)
    }

    /// The overall health status ("").
    pub async fn status(&self) -> ServingStatus {
        let HealthCheckResponse { status } = self
            .health()
            .await
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        ServingStatus::try_from(status).unwrap()
    }

    /// Follows the health Watch stream until SERVING; panics if the server ends first.
    pub async fn wait_serving(&self) {
        let mut stream = self
            .health()
            .await
            .watch(HealthCheckRequest {
                service: unclip_clip::SERVICE_NAME.into(),
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

/// One recorded fixture case (models/karlo-tiny/fixtures/README.md).
pub struct Fixture {
    /// `<case>.json`.
    pub json: serde_json::Value,
    /// `<case>.npz`.
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
        Fixture { json, npz }
    }

    /// Every full-trace case of index.json ("cases") of `kind` ("text_to_image" or
    /// "image_variation").
    pub fn cases(kind: &str) -> Vec<String> {
        Self::listed("cases", kind)
    }

    /// Every replay case of index.json ("replay_cases": noise draws and `values` only, no model
    /// calls or scheduler steps) of `kind`.
    pub fn replay_cases(kind: &str) -> Vec<String> {
        Self::listed("replay_cases", kind)
    }

    /// The cases of index.json's `list` of `kind`.
    fn listed(list: &str, kind: &str) -> Vec<String> {
        let index: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(karlo_tiny().join("fixtures/index.json")).unwrap(),
        )
        .unwrap();
        index[list]
            .as_array()
            .unwrap_or_else(|| panic!("index.json has no \"{list}\" list"))
            .iter()
            .filter(|c| c["kind"] == kind)
            .map(|c| c["case"].as_str().unwrap().to_string())
            .collect()
    }

    fn key(&self, value: &str) -> String {
        let key = self.json["values"][value]
            .as_str()
            .unwrap_or_else(|| panic!("fixture value {value} is not a plain key"));
        format!("{key}.npy")
    }

    /// A named float32 value.
    pub fn f32(&mut self, value: &str) -> ArrayD<f32> {
        let key = self.key(value);
        self.npz.by_name(&key).unwrap()
    }

    /// A named int64 value.
    pub fn i64(&mut self, value: &str) -> ArrayD<i64> {
        let key = self.key(value);
        self.npz.by_name(&key).unwrap()
    }

    /// A named bool value.
    pub fn bool(&mut self, value: &str) -> ArrayD<bool> {
        let key = self.key(value);
        self.npz.by_name(&key).unwrap()
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

/// Asserts an INVALID_ARGUMENT (or other) status with exactly `message`.
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
