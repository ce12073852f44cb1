//! Security end to end, across real processes on the shapes model: mutual TLS between the
//! gateway and every stage, TLS from clients to the gateway (the Rust client, the `unclip`
//! command and the Python client), with certificates made at run time; and API keys on the
//! gateway.

use std::path::PathBuf;

use tonic::Code;
use tonic::transport::Channel;
use unclip_e2e::{Process, binaries, free_addr, python, rgb, shapes};
use unclip_proto::v1::GenerateRequest;
use unclip_proto::v1::gateway_client::GatewayClient;
use unclip_stack::Stage;
use unclip_testkit::{TestCa, TlsFiles, tls_channel};

const PROMPT: &str = "a small red circle in the top left on a white background";

/// The three stages requiring client certificates from the files' CA, and a gateway that
/// presents one to them and serves TLS itself; every process SERVING.
async fn mutual_tls_stack(files: &TlsFiles, gateway_args: &[String]) -> (Vec<Process>, Process) {
    let bins = binaries();
    let mut stages = Vec::new();
    for stage in [Stage::Clip, Stage::Prior, Stage::Decoder] {
        stages.push(Process::stage(
            stage,
            &shapes(),
            free_addr(),
            &files.mutual_server_args(),
        ));
    }
    for stage in &mut stages {
        stage.wait_serving(Some(files.mutual_client_tls())).await;
    }
    let path = |name: &str| files.path(name).display().to_string();
    let mut args = vec![
        "--clip".to_string(),
        stages[0].addr.to_string(),
        "--prior".into(),
        stages[1].addr.to_string(),
        "--decoder".into(),
        stages[2].addr.to_string(),
        "--stage-tls-ca".into(),
        path("ca.pem"),
        "--stage-tls-cert".into(),
        path("client.pem"),
        "--stage-tls-key".into(),
        path("client.key"),
        "--startup-timeout-secs".into(),
        "60".into(),
    ];
    args.extend(files.server_args());
    args.extend_from_slice(gateway_args);
    let mut gateway = Process::spawn(&bins.gateway, &args, free_addr());
    gateway.wait_serving(Some(files.client_tls())).await;
    (stages, gateway)
}

fn client(channel: Channel) -> GatewayClient<Channel> {
    GatewayClient::new(channel)
        .max_decoding_message_size(unclip_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(unclip_proto::MAX_MESSAGE_BYTES)
}

/// The `unclip` binary beside the services.
fn unclip() -> PathBuf {
    let path = binaries().gateway.with_file_name("unclip");
    assert!(
        path.is_file(),
        "{} is not built; run `cargo build --workspace --bins`",
        path.display()
    );
    path
}

/// The gateway reaches its stages over mutual TLS and generates an image for a TLS client; a
/// stage refuses a client whose certificate another CA issued; a plaintext client of the
/// gateway is refused; `unclip --ca` and the Python client with `--ca` generate too, and
/// `unclip` without `--ca` fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_between_gateway_and_stages() {
    let files = TlsFiles::new();
    let (stages, gateway) = mutual_tls_stack(&files, &[]).await;

    let mut tls = client(tls_channel(gateway.addr, files.client_tls()).await.unwrap());
    let response = tls
        .generate(GenerateRequest {
            prompt: PROMPT.into(),
            seed: Some(3),
            ..Default::default()
        })
        .await
        .expect("Generate over TLS through mutual-TLS stages")
        .into_inner();
    assert_eq!(response.images.len(), 1);
    let image = rgb(&response.images[0].png);
    assert_eq!(image.width(), response.size);

    // A stage answers only clients its CA issued a certificate to.
    let stranger = TestCa::new("stranger CA").client("stranger");
    let refused = match tls_channel(
        stages[0].addr,
        files.client_tls().identity(stranger.identity()),
    )
    .await
    {
        Err(_) => true,
        Ok(channel) => tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .is_err(),
    };
    assert!(refused, "a stage answered a certificate of another CA");

    // Plaintext to the TLS gateway fails.
    let plain = Channel::from_shared(format!("http://{}", gateway.addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        let status = client(channel)
            .get_info(unclip_proto::v1::GetInfoRequest {})
            .await
            .unwrap_err();
        assert_ne!(status.code(), Code::Ok);
    }

    // The CLI: with --ca it generates; without, it cannot connect.
    let out = tempfile::tempdir().unwrap();
    let png = out.path().join("tls.png");
    let address = format!("localhost:{}", gateway.addr.port());
    let ca = files.path("ca.pem");
    let run = |with_ca: bool| {
        let mut command = tokio::process::Command::new(unclip());
        command
            .args([
                "generate",
                PROMPT,
                "--quiet",
                "--seed",
                "3",
                "--gateway",
                &address,
            ])
            .arg("--out")
            .arg(&png)
            .env_remove("UNCLIP_LOCAL_MODEL");
        if with_ca {
            command.arg("--ca").arg(&ca);
        }
        command.output()
    };
    let output = run(true).await.unwrap();
    assert!(
        output.status.success(),
        "unclip --ca failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        rgb(&std::fs::read(&png).unwrap()).into_raw(),
        image.into_raw(),
        "the CLI's image over TLS is the same seed's image"
    );
    let output = run(false).await.unwrap();
    assert!(!output.status.success(), "unclip without --ca connected");

    // The Python client with --ca.
    let output = tokio::process::Command::new(python())
        .arg(unclip_e2e::root().join("tests/python/gateway_client.py"))
        .args(["--gateway", &address])
        .arg("--ca")
        .arg(&ca)
        .output()
        .await
        .expect("running the Python client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the Python client over TLS failed");
    assert!(stdout.contains("python client: all checks passed"));
}

/// A gateway whose stage CA file is not a certificate exits at start-up with one line naming
/// the flag and the file.
#[tokio::test]
async fn bad_stage_ca_is_a_startup_error() {
    let files = TlsFiles::new();
    let bad = files.write("bad.pem", "not a certificate");
    let output = tokio::process::Command::new(binaries().gateway)
        .args(["--listen", "127.0.0.1:0", "--stage-tls-ca"])
        .arg(&bad)
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains("--stage-tls-ca"))
        .unwrap_or_else(|| panic!("no line names the flag: {stderr}"));
    unclip_testkit::assert_contains(line, &["bad.pem", "no certificate"]);
}

/// `unclip api-key new` makes a key and its line; once the line is in the gateway's key file
/// (picked up without a restart), `unclip --api-key`, the Python client with `--api-key` and
/// the `openai` SDK over HTTP (a wrong key: AuthenticationError)
/// generate, and a call without the key is UNAUTHENTICATED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "# no keys yet\n").unwrap();
    let stack = unclip_e2e::stack(unclip_e2e::StackOptions {
        gateway_args: vec![
            "--api-keys".into(),
            keys.display().to_string(),
            "--reload-check-secs".into(),
            "1".into(),
        ],
        ..Default::default()
    })
    .await;
    let url = stack.gateway_url().unwrap();

    let made = std::process::Command::new(unclip())
        .args(["api-key", "new", "e2e", "--max-concurrent", "2"])
        .output()
        .unwrap();
    assert!(made.status.success());
    let stdout = String::from_utf8_lossy(&made.stdout);
    let field = |label: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(label))
            .unwrap_or_else(|| panic!("no {label} in {stdout}"))
            .trim()
            .to_string()
    };
    let (key, line) = (field("key:"), field("line:"));
    assert!(
        line.starts_with("e2e ") && line.ends_with(" max_concurrent=2"),
        "{line}"
    );
    assert!(!line.contains(&key), "the line holds the hash, not the key");

    let out = dir.path().join("keyed.png");
    let generate = |key: Option<&str>| {
        let mut command = std::process::Command::new(unclip());
        command
            .args(["generate", PROMPT, "--quiet", "--gateway", &url])
            .arg("--out")
            .arg(&out)
            .env_remove("UNCLIP_LOCAL_MODEL")
            .env_remove("UNCLIP_API_KEY");
        if let Some(key) = key {
            command.args(["--api-key", key]);
        }
        command.output().unwrap()
    };
    let refused = generate(Some(&key));
    assert!(
        !refused.status.success(),
        "a key not yet in the file worked"
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("UNAUTHENTICATED"));

    std::fs::write(&keys, format!("# one key\n{line}\n")).unwrap();
    let mut accepted = false;
    for _ in 0..100 {
        if generate(Some(&key)).status.success() {
            accepted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        accepted,
        "the key was never accepted after the file changed"
    );
    assert!(rgb(&std::fs::read(&out).unwrap()).width() > 0);
    let without = generate(None);
    assert!(!without.status.success());
    assert!(String::from_utf8_lossy(&without.stderr).contains("UNAUTHENTICATED"));

    let output = tokio::process::Command::new(python())
        .arg(unclip_e2e::root().join("tests/python/gateway_client.py"))
        .args([
            "--gateway",
            url.trim_start_matches("http://"),
            "--api-key",
            &key,
        ])
        .output()
        .await
        .expect("running the Python client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "the Python client with --api-key failed"
    );

    // The same key on the HTTP API, through the official `openai` SDK: every call works with
    // it, and a wrong key is the SDK's AuthenticationError (401).
    let output = tokio::process::Command::new(python())
        .arg(unclip_e2e::root().join("tests/python/openai_client.py"))
        .args([
            "--base-url",
            &format!("{url}/v1"),
            "--api-key",
            &key,
            "--expect-auth",
        ])
        .output()
        .await
        .expect("running the openai SDK client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "the openai SDK with the key failed"
    );
    assert!(
        stdout.contains("no key: AuthenticationError 401"),
        "{stdout}"
    );
    assert!(
        stdout.contains("openai client: all checks passed"),
        "{stdout}"
    );
    stack.shutdown().await.unwrap();
}
