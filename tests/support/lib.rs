//! What the end-to-end tests share: the built service binaries, a local stack of them on the
//! shapes model, gateway clients and the gateway's counters (the models, PNG and `/metrics`
//! helpers are the test kit's, re-exported).

use std::path::PathBuf;
use std::time::Duration;

use tonic::transport::Channel;
use unclip_proto::v1::gateway_client::GatewayClient;
use unclip_proto::v1::{GatewayStats, GetStatsRequest, ImagesResponse};
use unclip_stack::{LocalStack, LocalStackConfig, RedisMode, ServiceBinaries, StageReplicas};

pub use unclip_testkit::{
    Form, HttpAnswer, HttpRequest, Scrape, SseEvent, karlo_tiny, mean_abs_diff, metric, png,
    require_ort, rgb, root, scrape, shapes,
};

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
        .max_decoding_message_size(unclip_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(unclip_proto::MAX_MESSAGE_BYTES)
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

/// Polls `check` every 50 ms for up to 60 s; panics naming `what` if it never holds.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..1200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within 60 s");
}
