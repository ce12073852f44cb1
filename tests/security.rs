//! Security end to end, across real processes on the shapes model: mutual TLS between the
//! gateway and every stage, TLS from clients to the gateway (the Rust client, the `unclip`
//! command and the Python client), with certificates made at run time; a running service
//! reloading its certificate (on SIGHUP, and when the files change) without dropping open
//! connections; the certificates `scripts/tls-certs` makes for the deployments, used by real
//! processes; and API keys on the gateway.

use std::path::PathBuf;
use std::time::Duration;

use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use unclip_e2e::{Process, binaries, free_addr, python, rgb, shapes};
use unclip_proto::v1::GenerateRequest;
use unclip_proto::v1::gateway_client::GatewayClient;
use unclip_stack::Stage;
use unclip_testkit::{TestCa, TlsFiles, https_get, tls_channel};

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

/// Health over `channel`: the status, or the error's text.
async fn health(channel: Channel) -> Result<ServingStatus, String> {
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map_err(|e| e.to_string())?;
    Ok(ServingStatus::try_from(answer.into_inner().status).unwrap())
}

/// Health over a new TLS connection to `addr` made with `tls` (`Err` when the handshake or
/// the call fails).
async fn health_over_new_connection(
    addr: std::net::SocketAddr,
    tls: ClientTlsConfig,
) -> Result<ServingStatus, String> {
    let channel = tls_channel(addr, tls).await.map_err(|e| format!("{e:?}"))?;
    health(channel).await
}

/// How a test makes a running service reload its TLS files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reload {
    /// `--reload-check-secs 0`: only SIGHUP reloads.
    Hangup,
    /// `--reload-check-secs 1`: the service notices the new contents by itself.
    Change,
}

/// A prior stage process serving TLS from files of CA 1: its certificate and key are replaced
/// with ones of CA 2 (and, for [`Reload::Hangup`], SIGHUP sent). Then new connections trusting
/// CA 2 are answered and new ones trusting only CA 1 fail, over gRPC and over HTTP/1.1
/// (`/metrics`), while a connection opened before the reload keeps being answered.
async fn reload_certificate(how: Reload) {
    let files = TlsFiles::new();
    let mut args = files.server_args();
    let every = match how {
        Reload::Hangup => "0",
        Reload::Change => "1",
    };
    args.extend(["--reload-check-secs".to_string(), every.to_string()]);
    let mut stage = Process::stage(Stage::Prior, &shapes(), free_addr(), &args);
    stage.wait_serving(Some(files.client_tls())).await;
    let trusts_first = files.client_tls();
    let opened_before = tls_channel(stage.addr, trusts_first.clone()).await.unwrap();
    assert_eq!(
        health(opened_before.clone()).await,
        Ok(ServingStatus::Serving)
    );

    let second = TestCa::new("second CA");
    let pair = second.server("renewed server");
    let trusts_second = ClientTlsConfig::new().ca_certificate(second.certificate());
    assert!(
        health_over_new_connection(stage.addr, trusts_second.clone())
            .await
            .is_err(),
        "a client trusting only CA 2 was answered before the renewal"
    );
    // As a deployment renews them: the key, then the certificate, each replaced atomically.
    files.write("server.key", &pair.key_pem);
    files.write("server.pem", &pair.cert_pem);

    if how == Reload::Hangup {
        // Change checks are off: the new files are not used until the signal.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(
            health_over_new_connection(stage.addr, trusts_first.clone()).await,
            Ok(ServingStatus::Serving),
            "with --reload-check-secs 0 the old certificate stays until SIGHUP"
        );
        stage.signal("HUP");
    }
    let mut renewed = false;
    for _ in 0..300 {
        if health_over_new_connection(stage.addr, trusts_second.clone()).await
            == Ok(ServingStatus::Serving)
        {
            renewed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        renewed,
        "{how:?}: a new connection trusting CA 2 was never answered"
    );
    let refused = health_over_new_connection(stage.addr, trusts_first).await;
    assert!(
        refused.is_err(),
        "{how:?}: a new connection trusting only CA 1 was answered: {refused:?}"
    );
    assert_eq!(
        health(opened_before).await,
        Ok(ServingStatus::Serving),
        "{how:?}: the connection opened before the reload stopped working"
    );
    // The same certificate on the HTTP/1.1 routes of the port.
    let metrics = https_get(stage.addr, "/metrics", &second.pem(), None)
        .await
        .expect("GET /metrics over TLS trusting CA 2");
    metrics.assert_openmetrics();
    assert!(
        metrics.body.contains("unclip_stage_ready"),
        "{}",
        metrics.body
    );
    assert!(
        https_get(stage.addr, "/metrics", &files.ca.pem(), None)
            .await
            .is_err(),
        "{how:?}: an HTTPS client trusting only CA 1 was answered"
    );
    stage.kill().await;
}

/// SIGHUP makes a running stage process load its renewed certificate (change checks off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_stage_reloads_its_certificate_on_sighup() {
    reload_certificate(Reload::Hangup).await;
}

/// A running stage process notices its renewed certificate by itself (`--reload-check-secs 1`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_stage_reloads_its_certificate_when_the_files_change() {
    reload_certificate(Reload::Change).await;
}

/// `scripts/tls-certs` (openssl; the certificates the Compose overlay and the Kubernetes
/// component use) into a temporary folder, with `localhost` added to the stages' names.
fn script_certificates() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(unclip_e2e::root().join("scripts/tls-certs"))
        .arg("--dir")
        .arg(dir.path().join("tls"))
        .args(["--stage-name", "localhost"])
        .output()
        .expect("running scripts/tls-certs");
    assert!(
        output.status.success(),
        "scripts/tls-certs failed (it needs openssl): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    dir
}

/// The certificates `scripts/tls-certs` makes work between real processes as the deployments
/// wire them: three stages with their own certificates requiring the gateway's client
/// certificate, a gateway reaching them by name (`localhost`, as it would `clip` or
/// `unclip-clip`) and serving TLS itself, and a client trusting `ca.crt` generates; a stage
/// refuses a client without the gateway's certificate, and a stage's own certificate cannot
/// stand in for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_of_scripts_tls_certs_work_between_real_processes() {
    let dir = script_certificates();
    let tls = dir.path().join("tls");
    let file = |name: &str| tls.join(name).display().to_string();
    let read = |name: &str| std::fs::read(tls.join(name)).unwrap();
    let ca = Certificate::from_pem(read("ca.crt"));
    let mut stages = Vec::new();
    for stage in [Stage::Clip, Stage::Prior, Stage::Decoder] {
        let name = stage.to_string();
        let args: Vec<String> = vec![
            "--tls-cert".into(),
            file(&format!("{name}.crt")),
            "--tls-key".into(),
            file(&format!("{name}.key")),
            "--tls-client-ca".into(),
            file("ca.crt"),
        ];
        stages.push(Process::stage(stage, &shapes(), free_addr(), &args));
    }
    let as_gateway = |host: &str| {
        ClientTlsConfig::new()
            .ca_certificate(ca.clone())
            .domain_name(host)
            .identity(Identity::from_pem(
                read("gateway-client.crt"),
                read("gateway-client.key"),
            ))
    };
    for stage in &mut stages {
        stage.wait_serving(Some(as_gateway("localhost"))).await;
    }
    // The stage's certificate names its Compose service (clip) and Kubernetes Service too.
    assert_eq!(
        health_over_new_connection(stages[0].addr, as_gateway("clip")).await,
        Ok(ServingStatus::Serving)
    );
    assert_eq!(
        health_over_new_connection(stages[0].addr, as_gateway("unclip-clip")).await,
        Ok(ServingStatus::Serving)
    );
    let without_certificate = ClientTlsConfig::new()
        .ca_certificate(ca.clone())
        .domain_name("localhost");
    assert!(
        health_over_new_connection(stages[1].addr, without_certificate.clone())
            .await
            .is_err(),
        "a stage answered a client without a certificate"
    );
    let stage_as_client =
        without_certificate.identity(Identity::from_pem(read("decoder.crt"), read("decoder.key")));
    assert!(
        health_over_new_connection(stages[1].addr, stage_as_client)
            .await
            .is_err(),
        "a stage answered a client presenting a server certificate"
    );

    let at = |stage: &Process| format!("localhost:{}", stage.addr.port());
    let args: Vec<String> = vec![
        "--clip".into(),
        at(&stages[0]),
        "--prior".into(),
        at(&stages[1]),
        "--decoder".into(),
        at(&stages[2]),
        "--stage-tls-ca".into(),
        file("ca.crt"),
        "--stage-tls-cert".into(),
        file("gateway-client.crt"),
        "--stage-tls-key".into(),
        file("gateway-client.key"),
        "--tls-cert".into(),
        file("gateway.crt"),
        "--tls-key".into(),
        file("gateway.key"),
        "--startup-timeout-secs".into(),
        "60".into(),
    ];
    let mut gateway = Process::spawn(&binaries().gateway, &args, free_addr());
    let client_tls = ClientTlsConfig::new()
        .ca_certificate(ca.clone())
        .domain_name("localhost");
    gateway.wait_serving(Some(client_tls.clone())).await;
    let response = client(tls_channel(gateway.addr, client_tls).await.unwrap())
        .generate(GenerateRequest {
            prompt: PROMPT.into(),
            seed: Some(5),
            ..Default::default()
        })
        .await
        .expect("Generate through the script's certificates")
        .into_inner();
    assert_eq!(response.images.len(), 1);
    assert_eq!(rgb(&response.images[0].png).width(), response.size);
    gateway.kill().await;
    for stage in &mut stages {
        stage.kill().await;
    }
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
