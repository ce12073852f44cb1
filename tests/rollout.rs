//! Stage replicas as the gateway finds them over time, across real processes: a decoder of
//! another model version, listed or joining later, gets no call and is counted; the gateway is
//! NOT_SERVING while a stage has no available replica and SERVING again when one returns (and
//! its HTTP `/readyz` with it, while `/healthz`, the liveness probe, stays 200); a stage name that
//! resolves to nothing keeps the gateway waiting, NOT_SERVING but alive.

use std::time::Duration;

use tonic::Code;
use unclip_e2e::{
    HttpRequest, Process, another_version, binaries, free_addr, gateway_client, require_ort,
    scrape, shapes, stats, wait_health,
};
use unclip_proto::v1::GenerateRequest;
use unclip_stack::Stage;

/// The gateway's gRPC health service name.
const GATEWAY: &str = "unclip.v1.Gateway";

/// The gateway's `GET /healthz` and `GET /readyz`: their statuses, and `/readyz`'s message.
async fn probes(gateway: &Process) -> (u16, u16, String) {
    let address = gateway.addr.to_string();
    let live = HttpRequest::get("/healthz").send(&address).await;
    let ready = HttpRequest::get("/readyz").send(&address).await;
    let message = ready.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (live.status, ready.status, message)
}

/// A quick Generate of the shapes model.
fn request(seed: u64) -> GenerateRequest {
    GenerateRequest {
        prompt: "a small red circle in the center on a white background".into(),
        seed: Some(seed),
        ..Default::default()
    }
}

/// The gateway binary on a free port over `clip`, `prior` and `decoder` (comma-separated
/// lists), probing every second and re-resolving names every second.
fn gateway(clip: &str, prior: &str, decoder: &str) -> Process {
    let addr = free_addr();
    let args: Vec<String> = [
        "--clip",
        clip,
        "--prior",
        prior,
        "--decoder",
        decoder,
        "--startup-timeout-secs",
        "120",
        "--stage-probe-interval-secs",
        "1",
        "--dns-refresh-secs",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Process::spawn(&binaries().gateway, &args, addr)
}

/// The shapes stages, one process each, waited for until SERVING.
async fn stages() -> [Process; 3] {
    require_ort();
    let model = shapes();
    let started = [Stage::Clip, Stage::Prior, Stage::Decoder]
        .map(|stage| Process::stage(stage, &model, free_addr(), &[]));
    for (stage, process) in [Stage::Clip, Stage::Prior, Stage::Decoder]
        .iter()
        .zip(&started)
    {
        wait_health(
            stage.service_name(),
            &process.url,
            true,
            "a stage",
            Duration::from_secs(120),
        )
        .await;
    }
    started
}

/// The metric series of `body` whose line starts with `prefix` and contains `part`, as values.
fn series(body: &str, prefix: &str, part: &str) -> Vec<f64> {
    body.lines()
        .filter(|l| l.starts_with(prefix) && l.contains(part))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect()
}

/// A decoder of another version of the model, listed by a DNS name and starting after the
/// gateway serves (so it joins later, found by the probes), is refused: no call reaches it,
/// the gateway counts and reports it, and every request is answered by the old version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decoder_of_another_version_gets_no_call() {
    let [clip, prior, decoder] = stages().await;
    let (copy, new_version) = another_version(&shapes());
    let late = free_addr();
    let late_name = format!("localhost:{}", late.port());
    let gw = gateway(
        &clip.url,
        &prior.url,
        &format!("{},{late_name}", decoder.url),
    );
    wait_health(
        GATEWAY,
        &gw.url,
        true,
        "the gateway",
        Duration::from_secs(120),
    )
    .await;

    let _new = Process::stage(Stage::Decoder, copy.path(), late, &[]);
    wait_health(
        Stage::Decoder.service_name(),
        &format!("http://{late}"),
        true,
        "the new decoder",
        Duration::from_secs(120),
    )
    .await;
    // The gateway's probes find it and keep it out.
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let body = scrape(&gw.url).await.body;
        let refusals = series(
            &body,
            "unclip_gateway_replica_refusals_total",
            "stage=\"decoder\"",
        );
        if refusals == [1.0] {
            let refused = series(
                &body,
                "unclip_gateway_replica_refused",
                &format!(":{} (127.0.0.1)", late.port()),
            );
            assert_eq!(refused, [1.0], "{body}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "the new decoder was never refused:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut client = gateway_client(&gw.url).await;
    let old_version = {
        let info = client
            .get_info(unclip_proto::v1::GetInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        info.model.map(|m| m.version).unwrap_or_default()
    };
    assert_ne!(old_version, new_version);
    for seed in 0..4 {
        let response = client.generate(request(seed)).await.unwrap().into_inner();
        assert_eq!(response.model_version, old_version);
        for timing in &response.timings {
            assert!(
                !timing.replica.contains(&format!(":{}", late.port())),
                "{timing:?}"
            );
        }
    }
    let stats = stats(&mut client).await;
    let joined: Vec<_> = stats
        .replicas
        .iter()
        .filter(|r| r.stage == "decoder" && r.address.contains(&format!(":{}", late.port())))
        .collect();
    assert!(!joined.is_empty(), "{:?}", stats.replicas);
    assert!(
        joined.iter().all(|r| r.calls == 0 && !r.available),
        "{joined:?}"
    );
    assert!(
        stats
            .replicas
            .iter()
            .any(|r| r.stage == "decoder" && r.calls >= 4)
    );
}

/// The gateway over one decoder: SERVING; the decoder killed: NOT_SERVING (and `/readyz` 503
/// while `/healthz` stays 200, so Kubernetes takes the pod out of its Service without restarting
/// it), and a request gets UNAVAILABLE; a decoder started again on the same address: SERVING,
/// and requests succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_is_not_serving_while_a_stage_has_no_replica() {
    let [clip, prior, mut decoder] = stages().await;
    let addr: std::net::SocketAddr = decoder.url.trim_start_matches("http://").parse().unwrap();
    let gw = gateway(&clip.url, &prior.url, &decoder.url);
    wait_health(
        GATEWAY,
        &gw.url,
        true,
        "the gateway",
        Duration::from_secs(120),
    )
    .await;
    let mut client = gateway_client(&gw.url).await;
    client.generate(request(1)).await.unwrap();
    assert_eq!(probes(&gw).await, (200, 200, String::new()));

    decoder.kill().await;
    wait_health(
        GATEWAY,
        &gw.url,
        false,
        "the gateway without a decoder",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        probes(&gw).await,
        (200, 503, "a stage has no available replica".into()),
        "/healthz (liveness) stays 200, /readyz follows the stages"
    );
    let status = client.generate(request(2)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    let _back = Process::stage(Stage::Decoder, &shapes(), addr, &[]);
    wait_health(
        GATEWAY,
        &gw.url,
        true,
        "the gateway with its decoder back",
        Duration::from_secs(120),
    )
    .await;
    client.generate(request(3)).await.unwrap();
    assert_eq!(probes(&gw).await, (200, 200, String::new()));
}

/// A decoder name that resolves to nothing: the gateway keeps running, looking it up, and
/// answers NOT_SERVING (it does not exit), with `/readyz` 503 and `/healthz` 200 (alive).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_name_that_resolves_to_nothing_keeps_the_gateway_not_serving() {
    let nothing = format!("http://{}", free_addr());
    let mut gw = gateway(&nothing, &nothing, "http://no-such-host.invalid:50053");
    wait_health(
        GATEWAY,
        &gw.url,
        false,
        "the gateway",
        Duration::from_secs(30),
    )
    .await;
    // Answering health at all means it runs; some lookups later it still does, NOT_SERVING.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let endpoint = tonic::transport::Channel::from_shared(gw.url.clone()).unwrap();
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(endpoint.connect().await.unwrap());
    let answer = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.status,
        tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
    );
    assert_eq!(
        probes(&gw).await,
        (200, 503, "the gateway is still checking its stages".into())
    );
    gw.kill().await;
}
