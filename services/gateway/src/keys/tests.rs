//! API keys over real gRPC on 127.0.0.1:0: a gateway served as in production (`crate::serve`)
//! with `--api-keys`, over a CLIP stage that starts every EncodeText and never answers it, so
//! an admitted Generate stays in flight (and its start proves it was admitted).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use unclip_cache::Cache;
use unclip_proto::v1::clip_service_server::{ClipService, ClipServiceServer};
use unclip_proto::v1::gateway_client::GatewayClient;
use unclip_proto::v1::{
    EncodeImageRequest, EncodeImageResponse, EncodeTextRequest, EncodeTextResponse,
    GenerateRequest, GetInfoRequest, ModelInfo, RequestLimits, SamplingDefaults,
};
use unclip_server::image_input::ImageLimits;

use super::*;
use crate::Config;
use crate::error::RETRY_AFTER;
use crate::layer::AdmitAll;
use crate::pipeline::{Gateway, Limits};
use crate::stages::{StageInfos, Stages};

/// A CLIP stage whose EncodeText reports its start and never answers.
#[derive(Debug, Clone)]
struct StuckClip {
    started: mpsc::UnboundedSender<()>,
}

#[tonic::async_trait]
impl ClipService for StuckClip {
    async fn encode_text(
        &self,
        _request: Request<EncodeTextRequest>,
    ) -> Result<Response<EncodeTextResponse>, Status> {
        let _ = self.started.send(());
        std::future::pending().await
    }

    async fn encode_image(
        &self,
        _request: Request<EncodeImageRequest>,
    ) -> Result<Response<EncodeImageResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn get_info(
        &self,
        _request: Request<GetInfoRequest>,
    ) -> Result<Response<ModelInfo>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

fn infos() -> StageInfos {
    let info = ModelInfo {
        model_id: "stuck".into(),
        version: "sha256-0".into(),
        embedding_dim: 4,
        context_length: 8,
        decoder_image_size: 8,
        defaults: Some(SamplingDefaults {
            prior_steps: 2,
            decoder_steps: 2,
            upsampler_steps: 2,
            prior_guidance_scale: 4.0,
            decoder_guidance_scale: 8.0,
        }),
        limits: Some(RequestLimits {
            min_steps: 2,
            max_steps: 1000,
            max_best_of: 4,
            ..Default::default()
        }),
        ..Default::default()
    };
    StageInfos {
        clip: info.clone(),
        prior: info.clone(),
        decoder: info,
    }
}

/// A served gateway with a key file.
struct Harness {
    client: GatewayClient<Channel>,
    address: SocketAddr,
    started: mpsc::UnboundedReceiver<()>,
    dir: tempfile::TempDir,
}

impl Harness {
    fn keys_path(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    /// Replaces the key file (atomically, as a deployment would).
    fn write_keys(&self, text: &str) {
        let temporary = self.dir.path().join("keys.tmp");
        std::fs::write(&temporary, text).unwrap();
        std::fs::rename(&temporary, self.keys_path()).unwrap();
    }

    /// Waits up to 5 s for an EncodeText to start (the request was admitted).
    async fn admitted(&mut self) {
        tokio::time::timeout(Duration::from_secs(5), self.started.recv())
            .await
            .expect("the request was not admitted")
            .unwrap();
    }
}

/// The file line of `key` named `name` with `limits` (e.g. "max_concurrent=1").
fn line(name: &str, key: &str, limits: &str) -> String {
    format!("{name} {} {limits}\n", key_hash_hex(key))
}

async fn start(keys: &str, extra: &[&str]) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys");
    std::fs::write(&path, keys).unwrap();
    let (started_tx, started) = mpsc::unbounded_channel();
    let clip = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let clip_url = format!("http://{}", clip.local_addr().unwrap());
    tokio::spawn(
        Server::builder()
            .add_service(ClipServiceServer::new(StuckClip {
                started: started_tx,
            }))
            .serve_with_incoming(TcpListenerStream::new(clip)),
    );
    let mut args = vec![
        "unclip-gateway",
        "--clip",
        &clip_url,
        "--prior",
        &clip_url,
        "--decoder",
        &clip_url,
        "--api-keys",
        path.to_str().unwrap(),
        "--reload-check-secs",
        "1",
    ];
    args.extend_from_slice(extra);
    let config = Config::from_args(args).unwrap();
    let load = {
        let config = config.clone();
        async move {
            Ok(Gateway {
                stages: Stages::unprobed(&config).await?,
                infos: infos(),
                cache: Cache::disabled(),
                limits: Limits {
                    max_images: 10,
                    max_frames: 16,
                    max_prompt_chars: 100,
                    image: ImageLimits {
                        max_bytes: 1 << 20,
                        max_side: 1024,
                    },
                },
            })
        }
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        crate::serve(
            &config,
            Arc::new(AdmitAll),
            crate::admission::Admission::new(Default::default()),
            listener,
            load,
            tokio::sync::watch::channel(true).1,
            std::future::pending(),
        )
        .await
    });
    let channel = Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let client = GatewayClient::new(channel.clone());
    // Serving once health says so (health needs no key).
    let mut health = HealthClient::new(channel);
    for _ in 0..500 {
        let answer = health.check(HealthCheckRequest::default()).await;
        if answer.is_ok_and(|a| a.into_inner().status == 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Harness {
        client,
        address,
        started,
        dir,
    }
}

/// `message` with `authorization: Bearer key` when `key` is given, and `timeout`.
fn with_key<T>(message: T, key: Option<&str>, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(key) = key {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    request.set_timeout(timeout);
    request
}

fn generate(images: u32) -> GenerateRequest {
    GenerateRequest {
        prompt: "a red circle".into(),
        num_images: Some(images),
        ..Default::default()
    }
}

async fn info(h: &Harness, key: Option<&str>) -> Result<(), Status> {
    h.client
        .clone()
        .get_info(with_key(GetInfoRequest {}, key, Duration::from_secs(5)))
        .await
        .map(|_| ())
}

/// Comments and blank lines are skipped, limits are read, and each bad line is an error
/// naming the file and the line.
#[test]
fn parses_key_files() {
    let path = Path::new("/etc/unclip/keys");
    let text = format!(
        "# keys\n\n{}{}",
        line(
            "a",
            "key-a",
            "max_concurrent=2 images_per_minute=60 # team a"
        ),
        line("b.2", "key-b", "")
    );
    let entries = parse(path, &text).unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].name, "a");
    assert_eq!(entries[0].limits.max_concurrent, NonZeroU32::new(2));
    assert_eq!(entries[0].limits.images_per_minute, NonZeroU32::new(60));
    assert_eq!(entries[1].limits, KeyLimits::default());
    let hash = key_hash_hex("k");
    let cases = [
        ("a\n".to_string(), "line 1: a: no SHA-256"),
        (
            "a key-itself\n".to_string(),
            "line 1: a: the SHA-256 must be 64 hex digits",
        ),
        (
            format!("a {hash} max_concurrent=0\n"),
            "line 1: a: max_concurrent must be",
        ),
        (
            format!("a {hash} burst=3\n"),
            "line 1: a: unknown option \"burst\"",
        ),
        (
            format!("# x\na {hash}\na {}\n", key_hash_hex("j")),
            "line 3: the name a is given twice",
        ),
        (
            format!("a {hash}\nb {hash}\n"),
            "line 2: b: the same key hash is given twice",
        ),
        (format!("a/b {hash}\n"), "line 1: the name \"a/b\" must be"),
    ];
    for (text, expected) in cases {
        let e = parse(path, &text).unwrap_err().to_string();
        assert!(e.starts_with("--api-keys /etc/unclip/keys "), "{e}");
        assert!(e.contains(expected), "{e:?} lacks {expected:?}");
    }
}

/// No key and a wrong key get the same UNAUTHENTICATED answer; the right key is admitted;
/// health needs no key; the counters are labelled by key name and never show the key.
#[tokio::test]
async fn keys_are_required_and_counted() {
    let h = start(&line("team-a", "secret-a", ""), &[]).await;
    let missing = info(&h, None).await.unwrap_err();
    let wrong = info(&h, Some("secret-b")).await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert_eq!(missing.message(), UNAUTHENTICATED);
    assert_eq!(
        (wrong.code(), wrong.message()),
        (missing.code(), missing.message())
    );
    let status = h
        .client
        .clone()
        .generate(with_key(
            generate(1),
            Some("secret-b"),
            Duration::from_secs(5),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    info(&h, Some("secret-a")).await.unwrap();

    let metrics = unclip_testkit::scrape(&h.address.to_string()).await;
    metrics.assert_openmetrics();
    assert_eq!(metrics.value("unclip_gateway_unauthenticated_total"), 3.0);
    assert!(!metrics.body.contains("secret-a"));
    assert!(!metrics.body.contains(&key_hash_hex("secret-a")));
}

/// Removing a key's line stops it and adding a line starts one, without a restart.
#[tokio::test]
async fn reload_adds_and_removes_keys() {
    let h = start(&line("old", "old-key", ""), &[]).await;
    info(&h, Some("old-key")).await.unwrap();
    assert_eq!(
        info(&h, Some("new-key")).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    h.write_keys(&format!("# rotated\n{}", line("new", "new-key", "")));
    let mut seen = false;
    for _ in 0..200 {
        if info(&h, Some("new-key")).await.is_ok() {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen, "the new key was never accepted");
    assert_eq!(
        info(&h, Some("old-key")).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    // A broken file is not loaded: the keys in use stay.
    h.write_keys("new not-a-hash\n");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    info(&h, Some("new-key")).await.unwrap();
}

/// A key at its concurrency limit is refused with RESOURCE_EXHAUSTED and a retry hint while
/// another key is not; the slot comes back when the request ends.
#[tokio::test]
async fn per_key_concurrency() {
    let keys = line("one", "key-one", "max_concurrent=1") + &line("other", "key-other", "");
    let mut h = start(&keys, &[]).await;
    let mut client = h.client.clone();
    let first = tokio::spawn(async move {
        client
            .generate(with_key(
                generate(1),
                Some("key-one"),
                Duration::from_secs(60),
            ))
            .await
    });
    h.admitted().await;
    let status = h
        .client
        .clone()
        .generate(with_key(
            generate(1),
            Some("key-one"),
            Duration::from_secs(5),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_contains(status.message(), &["one", "limit is 1"]);
    assert_eq!(status.metadata().get(RETRY_AFTER).unwrap(), "1");

    // Another key is not held back by this one's limit.
    let mut client = h.client.clone();
    let other = tokio::spawn(async move {
        client
            .generate(with_key(
                generate(1),
                Some("key-other"),
                Duration::from_secs(60),
            ))
            .await
    });
    h.admitted().await;

    let metrics = unclip_testkit::scrape(&h.address.to_string()).await;
    assert_eq!(
        metrics
            .value("unclip_gateway_key_requests_total{key=\"one\",outcome=\"over_concurrency\"}"),
        1.0
    );
    assert_eq!(
        metrics.value("unclip_gateway_key_in_flight{key=\"one\"}"),
        1.0
    );
    assert_eq!(
        metrics.value("unclip_gateway_key_in_flight{key=\"other\"}"),
        1.0
    );

    // The client gives up the first request: its slot is free again.
    first.abort();
    other.abort();
    let mut admitted = false;
    for _ in 0..200 {
        let mut client = h.client.clone();
        let again = tokio::spawn(async move {
            client
                .generate(with_key(
                    generate(1),
                    Some("key-one"),
                    Duration::from_secs(60),
                ))
                .await
        });
        match tokio::time::timeout(Duration::from_millis(200), h.started.recv()).await {
            Ok(_) => {
                admitted = true;
                again.abort();
                break;
            }
            Err(_) => {
                let status = again.await.unwrap().unwrap_err();
                assert_eq!(status.code(), Code::ResourceExhausted);
            }
        }
    }
    assert!(admitted, "the slot never came back");
}

/// Images per minute: a request within the bucket is admitted, the next that does not fit
/// is refused with a retry hint, and one larger than a minute's worth is refused outright.
#[tokio::test]
async fn per_key_images_per_minute() {
    let mut h = start(&line("slow", "key-slow", "images_per_minute=3"), &[]).await;
    let mut client = h.client.clone();
    let first = tokio::spawn(async move {
        client
            .generate(with_key(
                generate(2),
                Some("key-slow"),
                Duration::from_secs(60),
            ))
            .await
    });
    h.admitted().await;
    let status = h
        .client
        .clone()
        .generate(with_key(
            generate(2),
            Some("key-slow"),
            Duration::from_secs(5),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_contains(status.message(), &["slow", "3 images per minute"]);
    let retry: u64 = status
        .metadata()
        .get(RETRY_AFTER)
        .expect("a retry hint")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "retry-after {retry}");

    let status = h
        .client
        .clone()
        .generate(with_key(
            generate(4),
            Some("key-slow"),
            Duration::from_secs(5),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_contains(status.message(), &["4 images in one request"]);
    assert!(status.metadata().get(RETRY_AFTER).is_none());

    let metrics = unclip_testkit::scrape(&h.address.to_string()).await;
    assert_eq!(
        metrics.value("unclip_gateway_key_requests_total{key=\"slow\",outcome=\"over_rate\"}"),
        2.0
    );
    assert_eq!(
        metrics.value("unclip_gateway_key_requests_total{key=\"slow\",outcome=\"admitted\"}"),
        1.0
    );
    assert_eq!(
        metrics.value("unclip_gateway_key_images_total{key=\"slow\"}"),
        2.0
    );
    first.abort();
}

/// With --metrics-require-key, `/metrics` answers 401 without a valid key and the metrics
/// with one.
#[tokio::test]
async fn metrics_behind_a_key() {
    let h = start(&line("ops", "ops-key", ""), &["--metrics-require-key"]).await;
    let address = h.address.to_string();
    let refused = unclip_testkit::http_get(&address, "/metrics").await;
    assert_eq!(refused.status, "HTTP/1.1 401 Unauthorized");
    let wrong =
        unclip_testkit::http_get_with(&address, "/metrics", &[("authorization", "Bearer nope")])
            .await;
    assert_eq!(wrong.status, "HTTP/1.1 401 Unauthorized");
    let metrics =
        unclip_testkit::http_get_with(&address, "/metrics", &[("authorization", "Bearer ops-key")])
            .await;
    metrics.assert_openmetrics();
    assert!(
        metrics
            .body
            .contains("unclip_gateway_unauthenticated_total")
    );
}

/// A key file that cannot be read or parsed stops the start with one line naming it.
#[tokio::test]
async fn bad_key_file_is_a_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys");
    std::fs::write(&path, "team-a 1234\n").unwrap();
    let config =
        Config::from_args(["unclip-gateway", "--api-keys", path.to_str().unwrap()]).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = crate::serve(
        &config,
        Arc::new(AdmitAll),
        crate::admission::Admission::new(Default::default()),
        listener,
        async { anyhow::bail!("not reached") },
        tokio::sync::watch::channel(true).1,
        std::future::pending(),
    )
    .await
    .unwrap_err();
    let text = format!("{e:#}");
    assert!(!text.contains('\n'), "{text}");
    assert_contains(
        &text,
        &["--api-keys", "keys line 1", "team-a", "64 hex digits"],
    );
}

fn assert_contains(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "{part:?} is not in {text:?}");
    }
}
