//! Shared helpers of the stages tests: the three services running in this process through
//! their libraries' `run(config, listener, shutdown)` on 127.0.0.1:0, and the committed models.
//!
//! The ONNX Runtime library comes from `UNCLIP_ORT_LIBRARY` (read by the services' own flag);
//! the tests refuse to run without it.

#![allow(dead_code)] // each test file uses a different subset

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use unclip_stages::{StageClients, StageEndpoints};

/// The committed test model (random weights).
pub fn karlo_tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/karlo-tiny")
}

/// The shapes model, once its manifest exists (it is trained separately).
pub fn shapes() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/shapes");
    dir.join("manifest.json").is_file().then_some(dir)
}

/// Panics with a helpful message unless the ONNX Runtime library is configured.
pub fn require_ort() {
    assert!(
        std::env::var_os("UNCLIP_ORT_LIBRARY").is_some(),
        "UNCLIP_ORT_LIBRARY is not set: point it at libonnxruntime.so.1.N (N >= 31), e.g. \
         <venv>/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.32.0"
    );
}

/// One service running in this process.
struct InProcess {
    /// Where it listens.
    addr: SocketAddr,
    /// Fires its shutdown future.
    shutdown: oneshot::Sender<()>,
    /// Its `run`.
    handle: JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    /// Binds 127.0.0.1:0 and spawns `run(listener, shutdown)`.
    async fn start<F>(run: impl FnOnce(tokio::net::TcpListener, oneshot::Receiver<()>) -> F) -> Self
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, rx) = oneshot::channel();
        let handle = tokio::spawn(run(listener, rx));
        Self {
            addr,
            shutdown,
            handle,
        }
    }
}

/// The clip, prior and decoder services of one model, in this process.
pub struct Stack {
    /// clip, prior, decoder.
    services: [InProcess; 3],
}

/// The arguments every service gets: the model and one intra-op thread (the tests share a
/// small machine).
fn args<'a>(binary: &'a str, model: &'a Path) -> Vec<&'a str> {
    vec![
        binary,
        "--model",
        model.to_str().unwrap(),
        "--intra-threads",
        "1",
    ]
}

impl Stack {
    /// Starts the three services on `model` and waits until all are SERVING.
    pub async fn serving(model: &Path) -> Self {
        require_ort();
        let _ = tracing_subscriber_init();
        let clip = unclip_clip::Config::parse_from(args("unclip-clip", model));
        let prior = unclip_prior::Config::parse_from(args("unclip-prior", model));
        let decoder = unclip_decoder::Config::parse_from(args("unclip-decoder", model));
        let stack = Self {
            services: [
                InProcess::start(|l, rx| {
                    unclip_clip::run(clip, l, async {
                        let _ = rx.await;
                    })
                })
                .await,
                InProcess::start(|l, rx| {
                    unclip_prior::run(prior, l, async {
                        let _ = rx.await;
                    })
                })
                .await,
                InProcess::start(|l, rx| {
                    unclip_decoder::run(decoder, l, async {
                        let _ = rx.await;
                    })
                })
                .await,
            ],
        };
        StageClients::wait_serving(&stack.endpoints(), Duration::from_secs(300))
            .await
            .expect("the services did not become SERVING");
        stack
    }

    /// Where the services listen.
    pub fn endpoints(&self) -> StageEndpoints {
        let [clip, prior, decoder] = &self.services;
        StageEndpoints::new(
            clip.addr.to_string(),
            prior.addr.to_string(),
            decoder.addr.to_string(),
        )
    }

    /// Connected clients.
    pub async fn clients(&self) -> StageClients {
        StageClients::connect(&self.endpoints()).await.unwrap()
    }

    /// Stops the services and checks that each `run` returned Ok.
    pub async fn stop(self) {
        for service in self.services {
            let _ = service.shutdown.send(());
            service
                .handle
                .await
                .expect("a service task panicked")
                .expect("a service failed");
        }
    }
}

/// Logs go through the test harness, so they show only for failing tests.
fn tracing_subscriber_init() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,ort=warn".into()),
        )
        .with_test_writer()
        .try_init()
}

/// The decoded RGB image of a PNG.
pub fn decode_png(png: &[u8]) -> image::RgbImage {
    image::load_from_memory_with_format(png, image::ImageFormat::Png)
        .expect("not a PNG")
        .to_rgb8()
}
