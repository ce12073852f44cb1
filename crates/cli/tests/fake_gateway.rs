//! The `unclip` binary against a fake gateway in this process (127.0.0.1:0): streamed progress
//! and results become files named as documented, statuses print as `CODE: message`, missing
//! inputs and unreachable gateways fail with clear messages, and the deadline is sent and kept.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::process::Output;

use tokio_stream::Stream;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};
use unclip_proto::v1::gateway_server::{Gateway, GatewayServer};
use unclip_proto::v1::{
    GatewayInfo, GatewayStats, GenerateRequest, GeneratedImage, GetInfoRequest, GetStatsRequest,
    ImagesEvent, ImagesResponse, InpaintRequest, InterpolateRequest, Progress, ReplicaInfo,
    StageTiming, TextDiffRequest, VaryRequest, images_event,
};

/// The stream type of every streaming method.
type EventStream = Pin<Box<dyn Stream<Item = Result<ImagesEvent, Status>> + Send>>;

/// A gateway that answers from the request alone: image k's PNG bytes are "image k", seeds
/// count up from the request's (default 42), and the model id says whether a deadline came.
struct FakeGateway;

/// The events of a call that makes `count` images (frames when `frames`).
fn events<T>(request: &Request<T>, seed: Option<u64>, count: u32, frames: bool) -> EventStream {
    let seed = seed.unwrap_or(42);
    let progress = |stage: &str, calls_done| ImagesEvent {
        event: Some(images_event::Event::Progress(Progress {
            stage: stage.into(),
            step: 1,
            total: 2,
            calls_done,
            calls_total: 2,
        })),
    };
    let images = (0..count)
        .map(|k| GeneratedImage {
            png: format!("image {k}").into_bytes().into(),
            seed: if frames { seed } else { seed + u64::from(k) },
            theta: if frames {
                k as f32 / (count - 1) as f32
            } else {
                0.0
            },
        })
        .collect();
    let deadline = request.metadata().get("grpc-timeout").is_some();
    let result = ImagesResponse {
        images,
        size: 64,
        seed,
        timings: vec![StageTiming {
            stage: "decoder.decode".into(),
            seconds: 0.5,
            cached: false,
            replica: "http://127.0.0.1:1".into(),
            compute_seconds: 0.4,
        }],
        model_id: if deadline {
            "with-deadline"
        } else {
            "no-deadline"
        }
        .into(),
        model_version: "sha256-0".into(),
        prompt_truncated: false,
        animation: if frames {
            bytes::Bytes::from_static(b"apng")
        } else {
            bytes::Bytes::new()
        },
        animation_mime_type: if frames { "image/apng" } else { "" }.into(),
    };
    let events = vec![
        Ok(progress("clip.encode_text", 0)),
        Ok(progress("decoder.decode", 1)),
        Ok(ImagesEvent {
            event: Some(images_event::Event::Result(result)),
        }),
    ];
    Box::pin(tokio_stream::iter(events))
}

/// The gateway's check of `num_images`, as the real one words it.
fn check_count(num_images: Option<u32>) -> Result<u32, Status> {
    match num_images.unwrap_or(1) {
        n @ 1..=10 => Ok(n),
        n => Err(Status::invalid_argument(format!(
            "num_images: must be 1..=10, got {n}"
        ))),
    }
}

#[tonic::async_trait]
impl Gateway for FakeGateway {
    type GenerateStreamStream = EventStream;
    type VaryStreamStream = EventStream;
    type InterpolateStreamStream = EventStream;
    type TextDiffStreamStream = EventStream;
    type InpaintStreamStream = EventStream;

    async fn generate(
        &self,
        _: Request<GenerateRequest>,
    ) -> Result<Response<ImagesResponse>, Status> {
        Err(Status::unimplemented("the CLI streams"))
    }

    async fn generate_stream(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let count = check_count(request.get_ref().num_images)?;
        let seed = request.get_ref().seed;
        Ok(Response::new(events(&request, seed, count, false)))
    }

    async fn vary(&self, _: Request<VaryRequest>) -> Result<Response<ImagesResponse>, Status> {
        Err(Status::unimplemented("the CLI streams"))
    }

    async fn vary_stream(
        &self,
        request: Request<VaryRequest>,
    ) -> Result<Response<EventStream>, Status> {
        assert_eq!(&request.get_ref().image[..], b"input image");
        let count = check_count(request.get_ref().num_images)?;
        let seed = request.get_ref().seed;
        Ok(Response::new(events(&request, seed, count, false)))
    }

    async fn interpolate(
        &self,
        _: Request<InterpolateRequest>,
    ) -> Result<Response<ImagesResponse>, Status> {
        Err(Status::unimplemented("the CLI streams"))
    }

    async fn interpolate_stream(
        &self,
        request: Request<InterpolateRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let frames = request.get_ref().frames.unwrap_or(5);
        let seed = request.get_ref().seed;
        Ok(Response::new(events(&request, seed, frames, true)))
    }

    async fn text_diff(
        &self,
        _: Request<TextDiffRequest>,
    ) -> Result<Response<ImagesResponse>, Status> {
        Err(Status::unimplemented("the CLI streams"))
    }

    async fn text_diff_stream(
        &self,
        request: Request<TextDiffRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let frames = request.get_ref().frames.unwrap_or(5);
        let seed = request.get_ref().seed;
        Ok(Response::new(events(&request, seed, frames, true)))
    }

    async fn inpaint(
        &self,
        _: Request<InpaintRequest>,
    ) -> Result<Response<ImagesResponse>, Status> {
        Err(Status::unimplemented("the CLI streams"))
    }

    /// Never answers: the client's deadline has to end it.
    async fn inpaint_stream(
        &self,
        _: Request<InpaintRequest>,
    ) -> Result<Response<EventStream>, Status> {
        Ok(Response::new(Box::pin(tokio_stream::pending())))
    }

    async fn get_info(&self, _: Request<GetInfoRequest>) -> Result<Response<GatewayInfo>, Status> {
        Ok(Response::new(GatewayInfo {
            server_version: "9.9.9".into(),
            max_images: 10,
            max_frames: 16,
            cache_backend: "memory".into(),
            replicas: vec![replica()],
            ..Default::default()
        }))
    }

    async fn get_stats(
        &self,
        _: Request<GetStatsRequest>,
    ) -> Result<Response<GatewayStats>, Status> {
        Ok(Response::new(GatewayStats {
            replicas: vec![replica()],
            cache_hits: 5,
            cache_backend: "memory".into(),
            cache_healthy: true,
            requests: [("generate ok".to_string(), 3)].into(),
            ..Default::default()
        }))
    }
}

/// The one replica the fake reports.
fn replica() -> ReplicaInfo {
    ReplicaInfo {
        stage: "decoder".into(),
        address: "http://127.0.0.1:1".into(),
        available: true,
        calls: 7,
        ..Default::default()
    }
}

/// Serves the fake gateway on a free loopback port for the rest of the test.
async fn serve() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(GatewayServer::new(FakeGateway))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

/// Runs `unclip ARGS` in `dir` against the gateway at `addr`.
async fn unclip(dir: &Path, addr: Option<SocketAddr>, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_unclip"));
    command
        .current_dir(dir)
        .args(args)
        .env_remove("UNCLIP_LOCAL_MODEL")
        .env_remove("UNCLIP_GATEWAY")
        .env_remove("UNCLIP_TIMEOUT_SECS")
        .env_remove("UNCLIP_MODEL");
    if let Some(addr) = addr {
        command.arg("--gateway").arg(addr.to_string());
    }
    command.output().await.unwrap()
}

/// stdout and stderr as text, after checking the exit status and that nothing panicked.
fn texts(output: &Output, code: i32) -> (String, String) {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(code), "{stdout}{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    (stdout, stderr)
}

/// `generate` and `vary` write one file per image with its seed, and a summary.
#[tokio::test]
async fn images_are_written_and_named() {
    let addr = serve().await;
    let dir = tempfile::tempdir().unwrap();
    let output = unclip(
        dir.path(),
        Some(addr),
        &[
            "generate",
            "a red cube",
            "-n",
            "3",
            "--seed",
            "7",
            "--verbose",
        ],
    )
    .await;
    let (stdout, _) = texts(&output, 0);
    for k in 0..3 {
        let png = std::fs::read(dir.path().join(format!("out-{k}.png"))).unwrap();
        assert_eq!(png, format!("image {k}").as_bytes());
        assert!(
            stdout.contains(&format!("out-{k}.png (64×64, seed {})", 7 + k)),
            "{stdout}"
        );
    }
    // The deadline travelled as grpc-timeout; --verbose shows the model and the timings.
    assert!(
        stdout.contains("model with-deadline (sha256-0)"),
        "{stdout}"
    );
    assert!(stdout.contains("decoder.decode"), "{stdout}");
    assert!(
        stdout
            .lines()
            .last()
            .unwrap()
            .starts_with("seed 7: 3 images in "),
        "{stdout}"
    );

    std::fs::write(dir.path().join("in.png"), b"input image").unwrap();
    let output = unclip(
        dir.path(),
        Some(addr),
        &["vary", "in.png", "--out", "v.png"],
    )
    .await;
    let (stdout, _) = texts(&output, 0);
    assert_eq!(std::fs::read(dir.path().join("v.png")).unwrap(), b"image 0");
    assert!(stdout.contains("v.png (64×64, seed 42)"), "{stdout}");
}

/// `diff` writes the frames with their thetas and the animation next to them; `interpolate`
/// the frames.
#[tokio::test]
async fn frames_and_animation() {
    let addr = serve().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.png"), b"input image").unwrap();
    let args = [
        "diff",
        "in.png",
        "--from",
        "a cat",
        "--to",
        "a dog",
        "--frames",
        "3",
        "--out",
        "d/diff.png",
    ];
    std::fs::create_dir(dir.path().join("d")).unwrap();
    let output = unclip(dir.path(), Some(addr), &args).await;
    let (stdout, _) = texts(&output, 0);
    assert_eq!(
        std::fs::read(dir.path().join("d/diff-2.png")).unwrap(),
        b"image 2"
    );
    assert_eq!(
        std::fs::read(dir.path().join("d/diff.apng")).unwrap(),
        b"apng"
    );
    assert!(
        stdout.contains("diff-1.png (64×64, seed 42, theta 0.500)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("diff.apng (animation, 3 frames)"),
        "{stdout}"
    );
    assert!(stdout.contains("seed 42: 3 frames in"), "{stdout}");

    let output = unclip(
        dir.path(),
        Some(addr),
        &[
            "interpolate",
            "in.png",
            "in.png",
            "--frames",
            "2",
            "--quiet",
        ],
    )
    .await;
    texts(&output, 0);
    assert_eq!(
        std::fs::read(dir.path().join("frames-1.png")).unwrap(),
        b"image 1"
    );
}

/// Statuses print as `error: CODE: message`, nothing else; a missing input, a missing output
/// folder and an unreachable gateway are named; the deadline ends a call that never answers.
#[tokio::test]
async fn failures_read_clearly() {
    let addr = serve().await;
    let dir = tempfile::tempdir().unwrap();
    let output = unclip(
        dir.path(),
        Some(addr),
        &["generate", "x", "--num-images", "0"],
    )
    .await;
    let (_, stderr) = texts(&output, 1);
    assert_eq!(
        stderr,
        "error: INVALID_ARGUMENT: num_images: must be 1..=10, got 0\n"
    );

    let output = unclip(dir.path(), Some(addr), &["vary", "missing.png"]).await;
    let (_, stderr) = texts(&output, 1);
    assert!(
        stderr.starts_with("error: cannot read the image missing.png: "),
        "{stderr}"
    );
    std::fs::write(dir.path().join("in.png"), b"input image").unwrap();
    let output = unclip(
        dir.path(),
        Some(addr),
        &["inpaint", "in.png", "mask.png", "x"],
    )
    .await;
    let (_, stderr) = texts(&output, 1);
    assert!(stderr.contains("cannot read the mask mask.png"), "{stderr}");
    let output = unclip(
        dir.path(),
        Some(addr),
        &["generate", "x", "--out", "no/x.png"],
    )
    .await;
    let (_, stderr) = texts(&output, 1);
    assert!(
        stderr.contains("the output folder no does not exist"),
        "{stderr}"
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let output = unclip(dir.path(), Some(closed), &["info"]).await;
    let (_, stderr) = texts(&output, 1);
    assert!(
        stderr.contains(&format!("cannot connect to the gateway at http://{closed}")),
        "{stderr}"
    );

    let output = unclip(
        dir.path(),
        Some(addr),
        &["inpaint", "in.png", "in.png", "x", "--timeout", "1"],
    )
    .await;
    let (_, stderr) = texts(&output, 1);
    assert!(stderr.starts_with("error: DEADLINE_EXCEEDED: "), "{stderr}");
}

/// `info` and `stats` summarise the gateway.
#[tokio::test]
async fn info_and_stats() {
    let addr = serve().await;
    let dir = tempfile::tempdir().unwrap();
    let (stdout, _) = texts(&unclip(dir.path(), Some(addr), &["info"]).await, 0);
    assert!(stdout.starts_with("gateway 9.9.9\n"), "{stdout}");
    assert!(stdout.contains("limits: 10 images, 16 frames"), "{stdout}");
    assert!(
        stdout.contains("decoder http://127.0.0.1:1  available"),
        "{stdout}"
    );
    let (stdout, _) = texts(&unclip(dir.path(), Some(addr), &["stats"]).await, 0);
    assert!(
        stdout.contains("cache: memory (healthy): 5 hits"),
        "{stdout}"
    );
    assert!(stdout.contains("generate ok  3"), "{stdout}");
    assert!(
        stdout.contains("calls 7, failures 0, retried 0"),
        "{stdout}"
    );
}

/// `stack` without a model, or with a missing one, fails before starting anything.
#[tokio::test]
async fn stack_needs_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let output = unclip(dir.path(), None, &["stack"]).await;
    let (_, stderr) = texts(&output, 1);
    assert!(stderr.contains("--model is needed"), "{stderr}");
    let output = unclip(dir.path(), None, &["stack", "--model", "/nonexistent"]).await;
    let (_, stderr) = texts(&output, 1);
    assert!(
        stderr.contains("/nonexistent is not a model repository"),
        "{stderr}"
    );
}
