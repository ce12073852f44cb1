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
    Form, HttpAnswer, HttpRequest, Scrape, SseEvent, another_version, karlo_tiny, mean_abs_diff,
    metric, png, require_ort, rgb, root, scrape, shapes,
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
    gateway_client(&stack.gateway_url().expect("the stack runs a gateway")).await
}

/// A client of the gateway at `url`, with 64 MiB message limits.
pub async fn gateway_client(url: &str) -> GatewayClient<Channel> {
    let url = url.to_string();
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

/// A service binary run as a child process of a test (its output goes to the test's), killed
/// when dropped.
#[derive(Debug)]
pub struct Process {
    /// The child; `None` once killed.
    child: Option<tokio::process::Child>,
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// `http://ADDR`.
    pub url: String,
}

impl Process {
    /// Runs `binary --listen ADDR args...`.
    pub fn spawn(binary: &std::path::Path, args: &[String], addr: std::net::SocketAddr) -> Self {
        let child = tokio::process::Command::new(binary)
            .arg("--listen")
            .arg(addr.to_string())
            .args(args)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        Self {
            child: Some(child),
            addr,
            url: format!("http://{addr}"),
        }
    }

    /// A replica of `stage` serving `model` on `addr` with one intra-op thread, and `args`.
    pub fn stage(
        stage: unclip_stack::Stage,
        model: &std::path::Path,
        addr: std::net::SocketAddr,
        args: &[String],
    ) -> Self {
        require_ort();
        let mut all = vec![
            "--model".to_string(),
            model.display().to_string(),
            "--intra-threads".to_string(),
            "1".to_string(),
        ];
        all.extend_from_slice(args);
        Self::spawn(binaries().get(stage), &all, addr)
    }

    /// SIGKILLs it and waits for it to end.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("killing a child process");
        }
    }

    /// Waits until health over `tls` (`None`: plaintext) says SERVING under "", for at most
    /// three minutes; panics if the process exits first.
    pub async fn wait_serving(&mut self, tls: Option<tonic::transport::ClientTlsConfig>) {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_client::HealthClient;
        let scheme = if tls.is_some() { "https" } else { "http" };
        for _ in 0..1800 {
            let child = self.child.as_mut().expect("a running process");
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the process exited before serving: {status}");
            }
            let mut endpoint =
                tonic::transport::Endpoint::from_shared(format!("{scheme}://{}", self.addr))
                    .unwrap();
            if let Some(tls) = tls.clone() {
                endpoint = endpoint.tls_config(tls).unwrap();
            }
            if let Ok(channel) = endpoint.connect().await {
                let answer = HealthClient::new(channel)
                    .check(HealthCheckRequest::default())
                    .await;
                if answer.is_ok_and(|a| a.into_inner().status == 1) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{} never served", self.addr);
    }

    /// Sends `signal` (e.g. "HUP") to the process.
    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("a running process");
        let pid = child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

/// Whether the service `service` (e.g. `unclip.v1.Gateway`) at `url` answers SERVING, asked
/// every 100 ms until it answers `serving` or `timeout` passes (then panics naming `what`).
pub async fn wait_health(
    service: &'static str,
    url: &str,
    serving: bool,
    what: &str,
    timeout: Duration,
) {
    let endpoint = Channel::from_shared(url.to_string())
        .expect("a valid URL")
        .connect_timeout(Duration::from_secs(2));
    let mut probe = unclip_stack::HealthProbe::for_service(service, endpoint);
    let end = tokio::time::Instant::now() + timeout;
    while probe.is_serving().await != serving {
        assert!(
            tokio::time::Instant::now() < end,
            "{what}: {url} did not turn {} within {timeout:?}",
            if serving { "SERVING" } else { "NOT_SERVING" }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A free loopback address (bound, then released).
pub fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
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
