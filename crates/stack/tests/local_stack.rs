//! `LocalStack` with child processes: its error paths with stand-in scripts (missing model or
//! binary, a service that dies, one that never serves and is stopped), and, with the service
//! binaries built next to this test (`scripts/test` builds them first), a real stack with the
//! gateway that generates and stops cleanly, and a stack with replicas and Redis whose processes
//! are killed and restarted.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use unclip_proto::v1::GenerateRequest;
use unclip_proto::v1::gateway_client::GatewayClient;
use unclip_stack::{
    Error, LocalProcess, LocalStack, LocalStackConfig, ProcessExit, RedisMode, ServiceBinaries,
    Stage,
};

/// The committed test model (random weights).
fn karlo_tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/karlo-tiny")
}

/// Panics with a helpful message unless the ONNX Runtime library is configured.
fn require_ort() {
    assert!(
        std::env::var_os("UNCLIP_ORT_LIBRARY").is_some(),
        "UNCLIP_ORT_LIBRARY is not set: point it at libonnxruntime.so.1.N (N >= 31), e.g. \
         <venv>/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.32.0"
    );
}

/// Writes an executable shell script `name` with `body` into `dir`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A stack config of karlo-tiny whose three services are all `binary`.
fn config_of(binary: &Path) -> LocalStackConfig {
    let binaries = ServiceBinaries {
        clip: binary.to_path_buf(),
        prior: binary.to_path_buf(),
        decoder: binary.to_path_buf(),
        gateway: binary.to_path_buf(),
    };
    LocalStackConfig {
        startup_timeout: Duration::from_millis(500),
        stop_timeout: Duration::from_secs(5),
        ..LocalStackConfig::new(karlo_tiny(), binaries)
    }
}

/// The error paths: each names what failed, carries the service's last output, and leaves no
/// process behind.
#[tokio::test]
async fn start_up_failures_are_reported_and_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let dies = script(
        dir.path(),
        "dies",
        "echo \"starting with $*\"\necho 'error: loading the model failed: boom' >&2\nexit 3",
    );
    let pids = dir.path().join("pids");
    let hangs = script(
        dir.path(),
        "hangs",
        &format!(
            "echo $$ >> {}\necho 'loading...'\nwhile :; do sleep 0.05; done",
            pids.display()
        ),
    );

    // No model repository.
    let mut config = config_of(&dies);
    config.model = dir.path().join("no-model");
    let err = LocalStack::start(config).await.unwrap_err();
    assert!(matches!(err, Error::ModelNotFound(_)), "{err:?}");
    assert!(err.to_string().contains("has no manifest.json"), "{err}");

    // No binary.
    let err = LocalStack::start(config_of(&dir.path().join("missing")))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::BinaryNotFound {
                stage: Stage::Clip,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("cargo build --release -p unclip-clip"),
        "{err}"
    );

    // A service that exits: its status and output (both pipes) are in the error.
    let err = LocalStack::start(config_of(&dies)).await.unwrap_err();
    let Error::Exited { status, output, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(status.code(), Some(3));
    assert!(
        output.contains("loading the model failed: boom"),
        "{output}"
    );
    assert!(output.contains("--listen 127.0.0.1:"), "{output}");
    println!("{err}");

    // Services that never serve: a timeout with their output, and all three are stopped.
    let err = LocalStack::start(config_of(&hangs)).await.unwrap_err();
    let Error::NotServing { output, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(output.contains("loading..."), "{output}");
    let pids = std::fs::read_to_string(&pids).unwrap();
    assert_eq!(pids.lines().count(), 3, "{pids}");
    for pid in pids.lines() {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} still exists after the failed start"
        );
    }
}

/// The service binaries next to this test, if they have been built.
fn built_binaries() -> Option<ServiceBinaries> {
    let binaries = ServiceBinaries::next_to_current_exe().unwrap();
    let built = Stage::ALL.iter().all(|&s| binaries.get(s).is_file());
    if !built {
        eprintln!(
            "skipped: the service binaries are not built next to this test ({}); \
             `cargo test --workspace` builds them",
            binaries.clip.display()
        );
    }
    built.then_some(binaries)
}

/// The real binaries: a stack on karlo-tiny with the gateway in front generates through the
/// gateway, and every process stops cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_binaries_serve_and_stop() {
    let Some(binaries) = built_binaries() else {
        return;
    };
    require_ort();
    let config = LocalStackConfig {
        intra_threads: Some(1),
        gateway: true,
        ..LocalStackConfig::new(karlo_tiny(), binaries)
    };
    let stack = LocalStack::start(config).await.unwrap();
    let url = stack.gateway_url().expect("a gateway was asked for");
    let mut gateway = GatewayClient::connect(url).await.unwrap();
    let response = gateway
        .generate(GenerateRequest {
            prompt: "a red cube".into(),
            num_images: Some(2),
            seed: Some(3),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.images.len(), 2);
    for image in &response.images {
        let decoded = image::load_from_memory(&image.png).unwrap();
        assert_eq!(
            (decoded.width(), decoded.height()),
            (response.size, response.size)
        );
    }
    drop(gateway);
    let exits = stack.shutdown().await.unwrap();
    assert_eq!(exits.len(), 4, "{exits:?}");
    assert!(exits.iter().all(|e| e.status.success()), "{exits:?}");
}

/// Replicas, Redis and the gateway's command line with the real stage binaries: a stand-in
/// gateway that exits shows the flags it got (every replica URL, Redis, the extra args) in the
/// error; without a gateway, a replica and Redis are killed, Redis restarts, and the shutdown
/// reports the killed replica as clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_redis_and_gateway_flags() {
    let Some(binaries) = built_binaries() else {
        return;
    };
    require_ort();
    let dir = tempfile::tempdir().unwrap();
    let gateway = script(dir.path(), "gateway", "echo \"gateway $*\"\nexit 3");
    let config = LocalStackConfig {
        intra_threads: Some(1),
        replicas: "decoder=2".parse().unwrap(),
        redis: RedisMode::IfInstalled,
        gateway: true,
        gateway_args: vec!["--extra".to_string()],
        binaries: ServiceBinaries {
            gateway,
            ..binaries.clone()
        },
        ..LocalStackConfig::new(karlo_tiny(), binaries.clone())
    };
    let redis = which_redis();
    let err = LocalStack::start(config.clone()).await.unwrap_err();
    let Error::ProcessExited {
        process: LocalProcess::Gateway,
        output,
        ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert!(
        output.contains("--decoder http://127.0.0.1:") && output.contains(",http://127.0.0.1:"),
        "{output}"
    );
    assert!(output.contains("--listen 127.0.0.1:"), "{output}");
    assert!(output.trim_end().ends_with("--extra"), "{output}");
    assert_eq!(
        output.contains("--redis-url redis://127.0.0.1:"),
        redis,
        "{output}"
    );

    let mut stack = LocalStack::start(LocalStackConfig {
        gateway: false,
        ..config
    })
    .await
    .unwrap();
    assert_eq!(stack.stage_urls(Stage::Decoder).len(), 2);
    assert_eq!(stack.stage_urls(Stage::Clip), [stack.endpoints().clip]);
    assert_eq!(stack.gateway_url(), None);
    assert_eq!(stack.redis_url().is_some(), redis);
    let err = stack.kill_replica(Stage::Decoder, 2).await.unwrap_err();
    assert!(err.to_string().contains("no replica 2"), "{err}");
    stack.kill_replica(Stage::Decoder, 1).await.unwrap();
    if redis {
        stack.kill_redis().await.unwrap();
        stack.restart_redis().await.unwrap();
    }
    let exits = stack.shutdown().await.unwrap();
    assert_eq!(exits.len(), 4 + usize::from(redis), "{exits:?}");
    assert!(exits.iter().all(ProcessExit::is_clean), "{exits:?}");
    let killed: Vec<_> = exits.iter().filter(|e| e.killed).collect();
    assert_eq!(killed.len(), 1, "{exits:?}");
    assert_eq!(
        killed[0].process,
        LocalProcess::Stage {
            stage: Stage::Decoder,
            replica: 1
        }
    );
}

/// Whether redis-server is on PATH (the stack then runs it with `RedisMode::IfInstalled`).
fn which_redis() -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join("redis-server").is_file())
    })
}
