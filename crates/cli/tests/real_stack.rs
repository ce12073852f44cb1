//! `unclip` end to end with the real service binaries and gateway on models/shapes, which must
//! have been built next to this test (`cargo build -p unclip-clip -p unclip-prior
//! -p unclip-decoder -p unclip-gateway`, or `cargo test --workspace`): `unclip stack` with two
//! decoder replicas serves `generate` and `stats` and stops cleanly on SIGTERM; `--local` runs a
//! generate with previews and a text diff, each around one command.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use unclip_stack::{ServiceBinaries, Stage};

/// The shapes model, once every binary is built and ONNX Runtime is configured (else the test
/// fails, saying what is missing).
fn ready() -> PathBuf {
    let binaries = ServiceBinaries::next_to_current_exe().unwrap();
    let missing: Vec<_> = Stage::ALL
        .iter()
        .map(|&s| binaries.get(s).to_path_buf())
        .chain([binaries.gateway.clone()])
        .filter(|p| !p.is_file())
        .collect();
    assert!(
        missing.is_empty(),
        "not built: {missing:?}; run `cargo build --workspace` (or `cargo test --workspace`, \
         which builds every binary) first"
    );
    unclip_testkit::require_ort();
    unclip_testkit::shapes()
}

/// `unclip` with the test environment's variables that would change its behaviour removed.
fn unclip(dir: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_unclip"));
    command
        .current_dir(dir)
        .env_remove("UNCLIP_LOCAL_MODEL")
        .env_remove("UNCLIP_GATEWAY")
        .env_remove("UNCLIP_MODEL")
        .args(["--intra-threads", "1"]);
    command
}

/// `unclip --local MODEL ARGS...` in `dir`, run to its end.
async fn local(dir: &Path, model: &Path, args: &[&str]) -> Output {
    unclip(dir)
        .arg("--local")
        .arg(model)
        .args(args)
        .output()
        .await
        .unwrap()
}

/// stdout, after checking that the command succeeded.
fn succeeded(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{:?}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Whether `path` holds a PNG.
fn is_png(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|bytes| bytes.starts_with(b"\x89PNG\r\n\x1a\n"))
}

/// The width a PNG's header gives.
fn png_width(path: &Path) -> u32 {
    assert!(is_png(path), "{} is not a PNG", path.display());
    let bytes = std::fs::read(path).unwrap();
    u32::from_be_bytes(bytes[16..20].try_into().unwrap())
}

/// `unclip stack` runs until SIGTERM; the listen-info file says where its gateway is, which
/// serves `generate` and reports both decoder replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stack_serves_until_sigterm() {
    let model = ready();
    let dir = tempfile::tempdir().unwrap();
    let info = dir.path().join("listen.info");
    let mut stack = unclip(dir.path())
        .arg("stack")
        .arg("--model")
        .arg(&model)
        .args(["--decoder-replicas", "2", "--quiet", "--listen-info"])
        .arg(&info)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // Scripts wait for the file; so does this test.
    let started = Instant::now();
    while !info.is_file() {
        if let Some(status) = stack.try_wait().unwrap() {
            let output = stack.wait_with_output().await.unwrap();
            panic!(
                "unclip stack exited ({status}): {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        assert!(started.elapsed() < Duration::from_secs(180), "no {info:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = std::fs::read_to_string(&info).unwrap();
    let gateway = text
        .lines()
        .find_map(|l| l.strip_prefix("gateway="))
        .unwrap_or_else(|| panic!("{text}"))
        .to_string();
    assert!(gateway.starts_with("http://127.0.0.1:"), "{text}");
    let decoders = text
        .lines()
        .find_map(|l| l.strip_prefix("decoder="))
        .unwrap();
    assert_eq!(decoders.split(',').count(), 2, "{text}");

    let output = unclip(dir.path())
        .args(["--gateway", &gateway, "generate", "a red circle", "-n", "2"])
        .args(["--seed", "5", "--out", "circle.png"])
        .output()
        .await
        .unwrap();
    let stdout = succeeded(&output);
    assert!(stdout.contains("circle-1.png"), "{stdout}");
    assert!(stdout.contains("seed 5: 2 images in"), "{stdout}");
    assert!(is_png(&dir.path().join("circle-0.png")));
    assert!(is_png(&dir.path().join("circle-1.png")));

    let output = unclip(dir.path())
        .args(["--gateway", &gateway, "stats"])
        .output()
        .await
        .unwrap();
    let stdout = succeeded(&output);
    assert_eq!(stdout.matches("\n  decoder ").count(), 2, "{stdout}");

    // SIGTERM: everything stops, the file goes, the status is 0.
    let pid = stack.id().unwrap() as i32;
    // SAFETY: kill has no memory-safety preconditions; `pid` is our unreaped child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let output = tokio::time::timeout(Duration::from_secs(60), stack.wait_with_output())
        .await
        .expect("unclip stack did not stop after SIGTERM")
        .unwrap();
    let stdout = succeeded(&output);
    assert!(stdout.contains(&format!("gateway {gateway}")), "{stdout}");
    assert!(!info.exists());
    let port = gateway.rsplit(':').next().unwrap();
    assert!(
        std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err(),
        "the gateway still listens"
    );
}

/// `--local` starts the stack for one command and stops it: `generate --previews` writes the
/// decoder's base image first, then the image; `diff` writes frames and the animation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_runs_one_command() {
    let model = ready();
    let dir = tempfile::tempdir().unwrap();
    let generate = ["generate", "a red circle", "--seed", "1", "--out", "in.png"];
    let output = local(
        dir.path(),
        &model,
        &[&generate[..], &["--previews"]].concat(),
    )
    .await;
    let stdout = succeeded(&output);
    // The decoder's base image arrived as a preview before the final one: 32 px, not 128.
    let preview = dir.path().join("in.decoder.png");
    assert!(
        stdout.contains("in.decoder.png (32×32, seed 1) [decoder.decode preview]"),
        "{stdout}"
    );
    assert!(
        stdout.find("in.decoder.png") < stdout.find("wrote in.png"),
        "{stdout}"
    );
    assert_eq!(png_width(&preview), 32);
    assert_eq!(png_width(&dir.path().join("in.png")), 128);
    let diff = [
        "--redis",
        "diff",
        "in.png",
        "--from",
        "a red circle",
        "--to",
        "a blue square",
    ];
    let settings = ["--frames", "2", "--seed", "3", "--decoder-steps", "5"];
    let output = local(dir.path(), &model, &[&diff[..], &settings].concat()).await;
    let stdout = succeeded(&output);
    assert!(stdout.contains("diff-1.png"), "{stdout}");
    assert!(stdout.contains("theta 0.500"), "{stdout}");
    assert!(is_png(&dir.path().join("diff-0.png")));
    assert!(is_png(&dir.path().join("diff.apng")));
}

/// Two steps in every stage: quick requests for the bench tests.
const TWO_STEPS: [&str; 6] = [
    "--prior-steps",
    "2",
    "--decoder-steps",
    "2",
    "--upsampler-steps",
    "2",
];

/// `bench --stream` sends GenerateStream with previews and reads each stream to its result:
/// the same report, every image and stage call counted from the streamed results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_streams_when_asked() {
    let model = ready();
    let dir = tempfile::tempdir().unwrap();
    let bench = [
        "bench",
        "--json",
        "--stream",
        "--requests",
        "2",
        "--warmup",
        "0",
        "--num-images",
        "2",
    ];
    let output = local(dir.path(), &model, &[&bench[..], &TWO_STEPS].concat()).await;
    let stdout = succeeded(&output);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["requests"], 2, "{report}");
    assert_eq!(report["failures"], 0, "{report}");
    assert_eq!(report["images"], 4, "{report}");
    assert_eq!(
        report["stages"]["decoder.upsample[1]"]["calls"], 2,
        "{report}"
    );

    let output = unclip(dir.path())
        .args(["bench", "--stream", "--rate", "1"])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--stream") && stderr.contains("--rate"),
        "{stderr}"
    );
}

/// `bench` sends its requests through a local stack and reports them as JSON: every request
/// answered, every stage call counted, latencies ordered; a bad count is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_every_request() {
    let model = ready();
    let dir = tempfile::tempdir().unwrap();
    let bench = [
        "bench",
        "--json",
        "--requests",
        "3",
        "--warmup",
        "1",
        "--concurrency",
        "2",
        "--num-images",
        "2",
        "--prompt",
        "a small red circle in the center on a white background",
    ];
    let output = local(dir.path(), &model, &[&bench[..], &TWO_STEPS].concat()).await;
    let stdout = succeeded(&output);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        report["model"]
            .as_str()
            .unwrap()
            .starts_with("shapes sha256-"),
        "{report}"
    );
    assert_eq!(report["requests"], 3);
    assert_eq!(report["failures"], 0);
    assert_eq!(report["images"], 6);
    assert_eq!(report["concurrency"], 2);
    for stage in [
        "prior.sample",
        "decoder.decode",
        "decoder.upsample[0]",
        "decoder.upsample[1]",
    ] {
        assert_eq!(report["stages"][stage]["calls"], 3, "{stage}: {report}");
    }
    // One prompt, encoded by the warm-up request: the measured ones find it in the cache.
    let text = &report["stages"]["clip.encode_text"];
    assert_eq!(
        (&text["calls"], &text["cached"]),
        (&0.into(), &3.into()),
        "{report}"
    );
    let latency = &report["latency_ms"];
    let ms = |k: &str| latency[k].as_f64().unwrap();
    assert!(
        0.0 < ms("p50") && ms("p50") <= ms("p90") && ms("p90") <= ms("max"),
        "{report}"
    );

    let output = unclip(dir.path())
        .args(["bench", "--requests", "0"])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("must be a whole number of 1 or more"),
        "{stderr}"
    );
}
