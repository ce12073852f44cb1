//! TLS and mutual TLS on the serving skeleton, with certificates made at run time: who is
//! refused and who is answered, HTTP/1.1 `/metrics` over TLS, reloading the files (on change
//! and on SIGHUP) without dropping open connections, the plaintext health-only port, and bad
//! files as one-line start-up errors.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::Routes;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use unclip_server::metrics::{Metrics, counters, labels};
use unclip_server::{ServeArgs, ServeConfig, Slot, serve};
use unclip_testkit::{TestCa, TlsFiles, free_port, https_get, tls_channel};

const SERVICE: &str = "unclip.v1.TestService";

/// A server of health, reflection and `/metrics` under `args` (TLS flags), loaded at once.
struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn start(args: &[String]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            config(args),
            listener,
            Routes::default(),
            Slot::<u32>::new(),
            async { anyhow::Ok(1u32) },
            async {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

fn config(args: &[String]) -> ServeConfig {
    use clap::Parser;
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        serve: ServeArgs,
    }
    let flags = Flags::parse_from(std::iter::once("test".to_string()).chain(args.iter().cloned()));
    flags
        .serve
        .serve_config(SERVICE)
        .with_metrics(Metrics::new(|registry| {
            counters(registry, "unclip_test_up", "Up.", [(labels([]), 1)]);
        }))
}

/// The health check's answer over `channel`, or the error's text.
async fn check(channel: Channel) -> Result<ServingStatus, String> {
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: SERVICE.into(),
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok(ServingStatus::try_from(answer.into_inner().status).unwrap())
}

/// Health over TLS with `tls`, once the server has loaded (`Err` when refused).
async fn check_tls(addr: SocketAddr, tls: ClientTlsConfig) -> Result<ServingStatus, String> {
    let channel = tls_channel(addr, tls).await.map_err(|e| format!("{e:?}"))?;
    check(channel).await
}

/// Health over plaintext.
async fn check_plain(addr: SocketAddr) -> Result<ServingStatus, String> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    check(channel).await
}

/// Waits until health over `tls` says SERVING (the load is instant, the first check may race).
async fn wait_serving(addr: SocketAddr, tls: &ClientTlsConfig) {
    for _ in 0..100 {
        if check_tls(addr, tls.clone()).await == Ok(ServingStatus::Serving) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the TLS server never answered SERVING");
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Mutual TLS: plaintext, a client without the CA, a client without a certificate and a
/// client whose certificate another CA issued are all refused; the client the CA issued is
/// answered, over gRPC and over HTTP/1.1 `/metrics`.
#[tokio::test]
async fn mutual_tls_answers_only_trusted_clients() {
    let files = TlsFiles::new();
    let server = Running::start(&files.mutual_server_args()).await;
    let addr = server.addr;
    wait_serving(addr, &files.mutual_client_tls()).await;

    assert!(check_plain(addr).await.is_err(), "plaintext is refused");
    let no_ca = ClientTlsConfig::new().identity(files.client.identity());
    assert!(
        check_tls(addr, no_ca).await.is_err(),
        "a client that does not trust the server's CA fails"
    );
    assert!(
        check_tls(addr, files.client_tls()).await.is_err(),
        "a client without a certificate is refused"
    );
    let stranger = TestCa::new("another CA").client("stranger");
    let untrusted = files.client_tls().identity(stranger.identity());
    assert!(
        check_tls(addr, untrusted).await.is_err(),
        "a client certificate from another CA is refused"
    );
    assert_eq!(
        check_tls(addr, files.mutual_client_tls()).await,
        Ok(ServingStatus::Serving)
    );

    let metrics = https_get(addr, "/metrics", &files.ca.pem(), Some(&files.client))
        .await
        .unwrap();
    metrics.assert_openmetrics();
    assert_eq!(metrics.value("unclip_test_up_total"), 1.0);
    assert!(
        https_get(addr, "/metrics", &files.ca.pem(), None)
            .await
            .map(|s| s.status)
            .unwrap_or_default()
            .is_empty(),
        "no HTTP answer without a client certificate"
    );
    server.stop().await;
}

/// TLS without a client CA answers any client that trusts the server, and only over TLS.
#[tokio::test]
async fn tls_without_client_certificates() {
    let files = TlsFiles::new();
    let server = Running::start(&files.server_args()).await;
    wait_serving(server.addr, &files.client_tls()).await;
    assert!(check_plain(server.addr).await.is_err());
    assert!(
        check_tls(server.addr, ClientTlsConfig::new())
            .await
            .is_err()
    );
    server.stop().await;
}

/// Replacing the certificate and key: once the change is seen, a new connection gets the new
/// certificate (trusted by a new CA only) while a connection opened before keeps working.
#[tokio::test]
async fn reload_on_change_keeps_open_connections() {
    let files = TlsFiles::new();
    let mut flags = files.server_args();
    flags.extend(args(&["--reload-check-secs", "1"]));
    let server = Running::start(&flags).await;
    wait_serving(server.addr, &files.client_tls()).await;
    let old = tls_channel(server.addr, files.client_tls()).await.unwrap();
    assert_eq!(check(old.clone()).await, Ok(ServingStatus::Serving));

    let next = TestCa::new("next CA");
    let pair = next.server("next server");
    files.write("server.key", &pair.key_pem);
    files.write("server.pem", &pair.cert_pem);
    let trusts_next = ClientTlsConfig::new().ca_certificate(next.certificate());
    let mut seen = false;
    for _ in 0..300 {
        if check_tls(server.addr, trusts_next.clone()).await.is_ok() {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen, "the new certificate was never served");
    assert!(
        check_tls(server.addr, files.client_tls()).await.is_err(),
        "new connections no longer get the old certificate"
    );
    assert_eq!(
        check(old).await,
        Ok(ServingStatus::Serving),
        "the connection opened before the reload still works"
    );
    server.stop().await;
}

/// With change checks off, SIGHUP reloads; bad new files keep the old ones in use.
#[cfg(unix)]
#[tokio::test]
async fn reload_on_sighup_and_bad_files_keep_the_old() {
    // Listening ourselves first: the default action of SIGHUP ends the process.
    let mut own = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).unwrap();
    let hangup = || {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    let files = TlsFiles::new();
    let mut flags = files.server_args();
    flags.extend(args(&["--reload-check-secs", "0"]));
    let server = Running::start(&flags).await;
    wait_serving(server.addr, &files.client_tls()).await;

    // A broken key is not loaded: the server goes on with the old pair.
    files.write("server.key", "not a key");
    hangup();
    own.recv().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        check_tls(server.addr, files.client_tls()).await,
        Ok(ServingStatus::Serving)
    );

    let next = TestCa::new("next CA");
    let pair = next.server("next server");
    files.write("server.key", &pair.key_pem);
    files.write("server.pem", &pair.cert_pem);
    let trusts_next = ClientTlsConfig::new().ca_certificate(next.certificate());
    let mut seen = false;
    for _ in 0..50 {
        hangup();
        own.recv().await;
        if check_tls(server.addr, trusts_next.clone()).await.is_ok() {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen, "SIGHUP never loaded the new certificate");
    server.stop().await;
}

/// `--health-listen` serves health in plaintext beside the TLS port, and stops with it.
#[tokio::test]
async fn plaintext_health_port() {
    let files = TlsFiles::new();
    let port = free_port();
    let mut flags = files.server_args();
    flags.extend(args(&["--health-listen", &format!("127.0.0.1:{port}")]));
    let server = Running::start(&flags).await;
    wait_serving(server.addr, &files.client_tls()).await;
    let health: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(check_plain(health).await, Ok(ServingStatus::Serving));
    server.stop().await;
    assert!(check_plain(health).await.is_err(), "closed after shutdown");
}

/// A missing, malformed or mismatched file ends `serve` at once with one line naming the
/// flag, the file and the problem.
#[tokio::test]
async fn bad_files_are_one_line_startup_errors() {
    let files = TlsFiles::new();
    let other = TestCa::new("other").server("other");
    files.write("other.key", &other.key_pem);
    files.write("garbage.pem", "hello");
    let path = |name: &str| files.path(name).display().to_string();
    let cases = [
        (
            args(&[
                "--tls-cert",
                &path("missing.pem"),
                "--tls-key",
                &path("server.key"),
            ]),
            vec!["--tls-cert", "missing.pem", "cannot read"],
        ),
        (
            args(&[
                "--tls-cert",
                &path("garbage.pem"),
                "--tls-key",
                &path("server.key"),
            ]),
            vec!["--tls-cert", "garbage.pem", "no certificate"],
        ),
        (
            args(&[
                "--tls-cert",
                &path("server.pem"),
                "--tls-key",
                &path("garbage.pem"),
            ]),
            vec!["--tls-key", "garbage.pem", "no private key"],
        ),
        (
            args(&[
                "--tls-cert",
                &path("server.pem"),
                "--tls-key",
                &path("other.key"),
            ]),
            vec!["--tls-cert", "server.pem", "other.key", "does not belong"],
        ),
        (
            args(&[
                "--tls-cert",
                &path("server.pem"),
                "--tls-key",
                &path("server.key"),
                "--tls-client-ca",
                &path("garbage.pem"),
            ]),
            vec!["--tls-client-ca", "garbage.pem", "no certificate"],
        ),
    ];
    for (flags, parts) in cases {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let error = serve(
            config(&flags),
            listener,
            Routes::default(),
            Slot::<u32>::new(),
            async { anyhow::Ok(1u32) },
            std::future::pending(),
        )
        .await
        .unwrap_err();
        let line = format!("{error:#}");
        assert!(!line.contains('\n'), "one line: {line}");
        unclip_testkit::assert_contains(&line, &parts);
    }
}
