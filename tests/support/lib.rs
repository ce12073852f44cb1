//! What the end-to-end tests share: the built service binaries, a local stack of them on the
//! shapes model, gateway clients, PNG decoding and the gateway's counters.

use std::path::{Path, PathBuf};
use std::time::Duration;

use image::RgbImage;
use tonic::transport::Channel;
use unclip_proto::v1::gateway_client::GatewayClient;
use unclip_proto::v1::{GatewayStats, GetStatsRequest, ImagesResponse};
use unclip_stack::{LocalStack, LocalStackConfig, RedisMode, ServiceBinaries, StageReplicas};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `models/shapes`.
pub fn shapes() -> PathBuf {
    root().join("models/shapes")
}

/// `models/karlo-tiny`.
pub fn karlo_tiny() -> PathBuf {
    root().join("models/karlo-tiny")
}

/// Panics with set-up instructions unless the ONNX Runtime library is configured.
pub fn require_ort() {
    let configured = ["UNCLIP_ORT_LIBRARY", "ORT_DYLIB_PATH"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|p| Path::new(&p).is_file()));
    assert!(
        configured,
        "set UNCLIP_ORT_LIBRARY to libonnxruntime.so.1.N (scripts/test does: it installs the \
         onnxruntime wheel into .venv)"
    );
}

/// The service and gateway binaries next to this test (`cargo test --workspace` builds them);
/// panics naming the command that builds them otherwise.
pub fn binaries() -> ServiceBinaries {
    let binaries = ServiceBinaries::next_to_current_exe().expect("finding this test's folder");
    for path in [
        &binaries.clip,
        &binaries.prior,
        &binaries.decoder,
        &binaries.gateway,
    ] {
        assert!(
            path.is_file(),
            "{} is not built; run `cargo build --workspace` (or `cargo test --workspace`, \
             which builds every binary) first",
            path.display()
        );
    }
    binaries
}

/// How a test's stack is set up.
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    /// Processes per stage.
    pub replicas: StageReplicas,
    /// Whether to run Redis (a real `redis-server`; required, not optional).
    pub redis: bool,
    /// Extra gateway flags.
    pub gateway_args: Vec<String>,
}

/// The shapes model served by real processes: the stages, the gateway and, when asked, Redis.
pub async fn stack(options: StackOptions) -> LocalStack {
    require_ort();
    let config = LocalStackConfig {
        intra_threads: Some(1),
        replicas: options.replicas,
        gateway: true,
        gateway_args: options.gateway_args,
        redis: if options.redis {
            RedisMode::Required
        } else {
            RedisMode::Off
        },
        ..LocalStackConfig::new(shapes(), binaries())
    };
    LocalStack::start(config)
        .await
        .unwrap_or_else(|e| panic!("starting the local stack: {e}"))
}

/// A client of the stack's gateway, with 64 MiB message limits.
pub async fn gateway(stack: &LocalStack) -> GatewayClient<Channel> {
    let url = stack.gateway_url().expect("the stack runs a gateway");
    let channel = Channel::from_shared(url)
        .expect("a valid URL")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connecting to the gateway");
    GatewayClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// `GET /metrics` of the service at `url` (`http://host:port`, the gRPC address), over plain
/// HTTP/1.1: the status line and the body.
pub async fn scrape(url: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = url.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    socket.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// The gateway's counters.
pub async fn stats(client: &mut GatewayClient<Channel>) -> GatewayStats {
    client
        .get_stats(GetStatsRequest {})
        .await
        .expect("GetStats")
        .into_inner()
}

/// Calls sent to every replica of `stage` ("clip", "prior", "decoder").
pub fn calls(stats: &GatewayStats, stage: &str) -> u64 {
    stats
        .replicas
        .iter()
        .filter(|r| r.stage == stage)
        .map(|r| r.calls)
        .sum()
}

/// The requests counted as `key` ("generate ok", ...).
pub fn requests(stats: &GatewayStats, key: &str) -> u64 {
    stats.requests.get(key).copied().unwrap_or(0)
}

/// Decodes PNG bytes to RGB.
pub fn rgb(png: &[u8]) -> RgbImage {
    image::load_from_memory_with_format(png, image::ImageFormat::Png)
        .expect("a PNG")
        .to_rgb8()
}

/// Encodes an 8-bit image (RGB, RGBA, ...) as PNG.
pub fn png<P>(image: &image::ImageBuffer<P, Vec<u8>>) -> bytes::Bytes
where
    P: image::PixelWithColorType<Subpixel = u8>,
{
    let mut out = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("PNG encoding");
    out.into_inner().into()
}

/// The mean absolute difference of two images' channels, in 0..=255.
pub fn mean_abs_diff(a: &RgbImage, b: &RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let sum: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| u64::from(x.abs_diff(y)))
        .sum();
    sum as f64 / a.as_raw().len() as f64
}

/// The stage names of a response's timings, with "(cached)" after cache hits.
pub fn stages_of(response: &ImagesResponse) -> Vec<String> {
    response
        .timings
        .iter()
        .map(|t| {
            if t.cached {
                format!("{} (cached)", t.stage)
            } else {
                t.stage.clone()
            }
        })
        .collect()
}

/// The Python interpreter of the project's `.venv` (what `scripts/test` sets up), or
/// `UNCLIP_PYTHON`.
pub fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("UNCLIP_PYTHON") {
        return PathBuf::from(python);
    }
    let python = root().join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing; scripts/test creates it (python3 -m venv .venv && .venv/bin/pip install \
         -r tools/requirements-light.txt)",
        python.display()
    );
    python
}
