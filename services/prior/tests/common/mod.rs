//! Shared helpers of the prior service's integration tests: a real server on 127.0.0.1:0 with
//! a committed model, gRPC clients, the recorded fixtures, and text encodings to send.
//!
//! The ONNX Runtime library comes from `UNCLIP_ORT_LIBRARY` (read by the service's own flag);
//! the tests refuse to run without it.

#![allow(dead_code)] // each test file uses a different subset

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use ndarray::{Array2, Array3, ArrayD, Axis};
use ndarray_npy::NpzReader;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use unclip_prior::Config;
use unclip_proto::v1::prior_service_client::PriorServiceClient;
use unclip_proto::v1::{Tensor, TextEncoding};

/// The committed test model with parity fixtures.
pub fn karlo_tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/karlo-tiny")
}

/// The trained shapes model, when its repository is present.
pub fn shapes() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/shapes");
    path.join("manifest.json").is_file().then_some(path)
}

/// A copy of karlo-tiny (graphs symlinked) whose prior clip mean/std are `mean`/`std` instead
/// of karlo-tiny's zeros, with the manifest's hashes and version recomputed: its raw
/// embeddings are then informative (karlo-tiny's own are identically 0).
pub fn karlo_tiny_with_prior_stats(
    mean: impl Fn(usize) -> f32,
    std: impl Fn(usize) -> f32,
) -> tempfile::TempDir {
    use safetensors::{Dtype, SafeTensors, tensor::TensorView};
    use unclip_runtime::repository::{blank_version, compute_version, sha256_file};

    let source = karlo_tiny();
    let dir = tempfile::tempdir().unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("manifest.json")).unwrap())
            .unwrap();
    let tensors_file = manifest["tensors"]["file"].as_str().unwrap().to_string();
    for file in manifest["files"].as_object().unwrap().keys() {
        let target = dir.path().join(file);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        if *file != tensors_file {
            std::os::unix::fs::symlink(source.join(file).canonicalize().unwrap(), &target).unwrap();
        }
    }

    // Rewrite tensors.safetensors with the new statistics.
    let bytes = std::fs::read(source.join(&tensors_file)).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let d = manifest["embedding_dim"].as_u64().unwrap() as usize;
    let stat =
        |f: &dyn Fn(usize) -> f32| -> Vec<u8> { (0..d).flat_map(|i| f(i).to_le_bytes()).collect() };
    let (mean_bytes, std_bytes) = (stat(&mean), stat(&std));
    let mut views = Vec::new();
    for (name, view) in st.iter() {
        let view = match name {
            "prior_clip_mean" => TensorView::new(Dtype::F32, vec![d], &mean_bytes).unwrap(),
            "prior_clip_std" => TensorView::new(Dtype::F32, vec![d], &std_bytes).unwrap(),
            _ => view,
        };
        views.push((name.to_string(), view));
    }
    let out = dir.path().join(&tensors_file);
    std::fs::write(&out, safetensors::serialize(views, None).unwrap()).unwrap();

    // New hash, new version.
    manifest["files"][&tensors_file] = sha256_file(&out).unwrap().into();
    manifest["version"] = "to-be-computed".into();
    let text = serde_json::to_string_pretty(&manifest).unwrap();
    let files: std::collections::BTreeMap<String, String> =
        serde_json::from_value(manifest["files"].clone()).unwrap();
    let version = compute_version(&blank_version(&text, "to-be-computed").unwrap(), &files);
    std::fs::write(
        dir.path().join("manifest.json"),
        text.replace("\"to-be-computed\"", &format!("\"{version}\"")),
    )
    .unwrap();
    dir
}

/// Client-side message limit, as large as the server's.
pub const MAX_MESSAGE: usize = 64 << 20;

/// The ONNX Runtime library must be configured.
pub fn require_ort() {
    assert!(
        std::env::var_os("UNCLIP_ORT_LIBRARY").is_some(),
        "UNCLIP_ORT_LIBRARY is not set: point it at libonnxruntime.so.1.N (N >= 31), e.g. \
         <venv>/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.32.0"
    );
}

/// The service's configuration for `model` plus `extra` flags (one intra-op thread: the tests
/// share a small machine).
pub fn config_for(model: &Path, extra: &[&str]) -> Config {
    require_ort();
    let mut args = vec![
        "unclip-prior",
        "--model",
        model.to_str().unwrap(),
        "--intra-threads",
        "1",
    ];
    args.extend_from_slice(extra);
    Config::parse_from(args)
}

/// The configuration for karlo-tiny.
pub fn config(extra: &[&str]) -> Config {
    config_for(&karlo_tiny(), extra)
}

/// Routes logs through the test harness, so they show only for failing tests.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| unclip_server::logging::DEFAULT_FILTER.into()),
        )
        .with_test_writer()
        .try_init();
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

impl TestServer {
    /// Starts the karlo-tiny service on an ephemeral loopback port (it loads in the background).
    pub async fn start(extra: &[&str]) -> Self {
        Self::start_with(config(extra)).await
    }

    /// Starts the service with `config`.
    pub async fn start_with(config: Config) -> Self {
        init_logs();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(unclip_prior::run(config, listener, async {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            shutdown: Some(tx),
            handle,
        }
    }

    /// Starts karlo-tiny and waits until it reports SERVING.
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

    /// A PriorService client with message limits raised like the server's.
    pub async fn prior(&self) -> PriorServiceClient<Channel> {
        PriorServiceClient::new(self.channel().await)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// A health client.
    pub async fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel().await)
    }

    /// The health status under `service` ("" for the whole server).
    pub async fn status(&self, service: &str) -> ServingStatus {
        let status = self
            .health()
            .await
            .check(HealthCheckRequest {
                service: service.into(),
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
                service: unclip_prior::SERVICE_NAME.into(),
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

    /// A float32 tensor by npz key (`t0007`).
    pub fn f32_key(&mut self, key: &str) -> ArrayD<f32> {
        self.npz.by_name(&format!("{key}.npy")).unwrap()
    }

    /// A bool tensor by npz key.
    pub fn bool_key(&mut self, key: &str) -> ArrayD<bool> {
        self.npz.by_name(&format!("{key}.npy")).unwrap()
    }

    /// A float32 reference: a key, or `{"concat": [k1, k2], "axis": a}`.
    pub fn f32_ref(&mut self, reference: &serde_json::Value) -> ArrayD<f32> {
        match reference {
            serde_json::Value::String(key) => self.f32_key(key),
            serde_json::Value::Object(o) => {
                let axis = o["axis"].as_u64().unwrap() as usize;
                let parts: Vec<ArrayD<f32>> = o["concat"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| self.f32_key(k.as_str().unwrap()))
                    .collect();
                let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
                ndarray::concatenate(Axis(axis), &views).unwrap()
            }
            other => panic!("not a tensor reference: {other}"),
        }
    }

    /// A named float32 value (`values` of the json).
    pub fn f32(&mut self, value: &str) -> ArrayD<f32> {
        let key = self.json["values"][value].as_str().unwrap().to_string();
        self.f32_key(&key)
    }

    /// A named bool value.
    pub fn bool(&mut self, value: &str) -> ArrayD<bool> {
        let key = self.json["values"][value].as_str().unwrap().to_string();
        self.bool_key(&key)
    }

    /// The recorded prompt encodings as the ClipService would send them.
    pub fn prompt_encoding(&mut self) -> TextEncoding {
        TextEncoding {
            text_embeds: Some(Tensor::from_array(&self.f32("prompt_text_embeds"))),
            last_hidden_state: Some(Tensor::from_array(&self.f32("prompt_last_hidden_state"))),
            attention_mask: Some(Tensor::from_array(&self.bool("prompt_attention_mask"))),
            ..Default::default()
        }
    }
}

/// A synthetic but plausible encoding of `b` prompts for a model of width `d`, context `l`:
/// deterministic values, the first `2 + i` tokens of prompt i unmasked.
pub fn synthetic_encoding(b: usize, l: usize, d: usize) -> TextEncoding {
    let embeds = Array2::from_shape_fn((b, d), |(i, j)| ((i * 7 + j * 3) % 11) as f32 / 5.0 - 1.0);
    let hidden = Array3::from_shape_fn((b, l, d), |(i, t, j)| {
        ((i * 13 + t * 5 + j) % 17) as f32 / 8.0 - 1.0
    });
    let mask = Array2::from_shape_fn((b, l), |(i, t)| t < 2 + i);
    TextEncoding {
        text_embeds: Some(Tensor::from_array(&embeds)),
        last_hidden_state: Some(Tensor::from_array(&hidden)),
        attention_mask: Some(Tensor::from_array(&mask)),
        ..Default::default()
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

/// Asserts a status with `code` whose message is exactly `message`.
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
