//! The gateway under faults, across real processes: Redis killed and restarted mid-run, a stage
//! replica killed mid-request, the client's deadline reaching the stages, a cancelled stream
//! stopping its stage work, and stages serving different models refused at start-up.

use std::time::Duration;

use tonic::Code;
use unclip_e2e::{StackOptions, calls, gateway, karlo_tiny, requests, stack, stats};
use unclip_proto::v1::{DecoderSettings, GenerateRequest, images_event};
use unclip_stack::{Stage, StageReplicas};

/// The prompt the tests repeat to hit the cache.
const RED_CIRCLE: &str = "a small red circle in the center on a white background";

fn request(prompt: &str, seed: u64) -> GenerateRequest {
    GenerateRequest {
        prompt: prompt.into(),
        seed: Some(seed),
        ..Default::default()
    }
}

/// Polls `check` every 50 ms for up to 20 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..400 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within 20 s");
}

/// Redis dies between requests and while one is in flight: no request fails, the gateway
/// counts cache errors and reports the cache unhealthy; once Redis is back the cache is used
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_never_fails_a_request() {
    let mut stack = stack(StackOptions {
        redis: true,
        ..Default::default()
    })
    .await;
    let mut client = gateway(&stack).await;
    client.generate(request(RED_CIRCLE, 1)).await.unwrap();
    assert!(stats(&mut client).await.cache_healthy);

    // One request in flight while Redis is killed, then more while it is down.
    let in_flight = {
        let mut client = client.clone();
        tokio::spawn(async move {
            client
                .generate(request(
                    "a large green square in the center on a gray background",
                    2,
                ))
                .await
        })
    };
    stack.kill_redis().await.unwrap();
    in_flight
        .await
        .unwrap()
        .expect("the request in flight succeeds");
    for seed in 3..6 {
        let prompt =
            format!("a small yellow triangle in the top right on a white background {seed}");
        client.generate(request(&prompt, seed)).await.unwrap();
    }
    // A repeated prompt still works (from the stages now).
    client.generate(request(RED_CIRCLE, 1)).await.unwrap();
    let down = stats(&mut client).await;
    assert!(down.cache_errors > 0, "{down:?}");
    assert!(!down.cache_healthy);
    assert!(requests(&down, "generate ok") >= 6);

    // Back: after the retry window the cache answers again.
    stack.restart_redis().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    client.generate(request(RED_CIRCLE, 7)).await.unwrap();
    let before = stats(&mut client).await;
    client.generate(request(RED_CIRCLE, 7)).await.unwrap();
    let after = stats(&mut client).await;
    assert!(after.cache_healthy, "{after:?}");
    assert_eq!(
        calls(&after, "prior"),
        calls(&before, "prior"),
        "served from Redis again"
    );
    stack.shutdown().await.unwrap();
}

/// Two decoder replicas; one is SIGKILLed while both are decoding. Every request still
/// succeeds: the calls on the dead replica are retried on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_request_fails_nothing() {
    let mut stack = stack(StackOptions {
        replicas: StageReplicas {
            decoder: 2,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let mut client = gateway(&stack).await;
    let (started_tx, mut started_rx) = tokio::sync::mpsc::channel(16);
    let mut tasks = Vec::new();
    for seed in 0..4u64 {
        let mut client = client.clone();
        let started = started_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = client
                .generate_stream(GenerateRequest {
                    num_images: Some(2),
                    decoder: Some(DecoderSettings {
                        decoder_steps: Some(50),
                        ..Default::default()
                    }),
                    ..request(
                        "a large blue circle in the center on a white background",
                        seed,
                    )
                })
                .await?
                .into_inner();
            let mut result = None;
            while let Some(event) = stream.message().await? {
                match event.event {
                    Some(images_event::Event::Progress(p))
                        if p.stage == "decoder.decode" && p.step == 0 =>
                    {
                        let _ = started.send(()).await;
                    }
                    Some(images_event::Event::Result(r)) => result = Some(r),
                    _ => {}
                }
            }
            Ok::<_, tonic::Status>(result.expect("a result"))
        }));
    }
    // Once two decodes are running, both replicas are busy (calls go to the least loaded).
    started_rx.recv().await.unwrap();
    started_rx.recv().await.unwrap();
    stack.kill_replica(Stage::Decoder, 0).await.unwrap();
    for task in tasks {
        let response = task.await.unwrap().expect("no request fails");
        assert_eq!(response.images.len(), 2);
    }
    let counts = stats(&mut client).await;
    let decoders: Vec<_> = counts
        .replicas
        .iter()
        .filter(|r| r.stage == "decoder")
        .collect();
    assert_eq!(decoders.len(), 2);
    let retried: u64 = decoders.iter().map(|r| r.retried).sum();
    assert!(retried >= 1, "{decoders:?}");
    assert!(
        !decoders[0].available || decoders[0].failures > 0,
        "{decoders:?}"
    );
    // Later requests go to the survivor.
    client
        .generate(request(
            "a small red square in the center on a white background",
            9,
        ))
        .await
        .unwrap();
    stack.shutdown().await.unwrap();
}

/// A short client deadline ends the request with DEADLINE_EXCEEDED and its stage calls with
/// it; a cancelled stream is dropped and its stage call cancelled. Nothing stays in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_and_cancellation_stop_stage_work() {
    let stack = stack(StackOptions::default()).await;
    let mut client = gateway(&stack).await;
    let slow = || GenerateRequest {
        num_images: Some(4),
        decoder: Some(DecoderSettings {
            decoder_steps: Some(400),
            ..Default::default()
        }),
        ..request("a large red circle in the center on a white background", 3)
    };

    // Long enough for CLIP and the prior even on a loaded machine (debug builds, tests in
    // parallel: 1.5 s was not always), far too short for 4 × 400 decoder steps, so the deadline
    // passes during the decoder call.
    let mut timed = tonic::Request::new(slow());
    timed.set_timeout(Duration::from_secs(5));
    let status = client.generate(timed).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    eventually("the decoder call ends", || {
        let mut client = client.clone();
        async move {
            let s = stats(&mut client).await;
            s.replicas.iter().all(|r| r.in_flight == 0) && calls(&s, "decoder") >= 1
        }
    })
    .await;

    // Cancel a stream once the decoder has started.
    let mut stream = client.generate_stream(slow()).await.unwrap().into_inner();
    loop {
        let event = stream
            .message()
            .await
            .unwrap()
            .expect("events before the result");
        if let Some(images_event::Event::Progress(p)) = event.event
            && p.stage == "decoder.decode"
        {
            break;
        }
    }
    drop(stream);
    eventually("the cancelled request is dropped", || {
        let mut client = client.clone();
        async move {
            let s = stats(&mut client).await;
            requests(&s, "generate cancelled") == 1 && s.replicas.iter().all(|r| r.in_flight == 0)
        }
    })
    .await;

    // The stack is free again: a quick request is answered.
    let quick = GenerateRequest {
        decoder: Some(DecoderSettings {
            decoder_steps: Some(2),
            upsampler_steps: Some(2),
            ..Default::default()
        }),
        prior_steps: Some(2),
        ..request(RED_CIRCLE, 4)
    };
    client.generate(quick).await.unwrap();
    stack.shutdown().await.unwrap();
}

/// A gateway whose CLIP service loaded another model refuses to start and names both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_with_different_models_are_refused() {
    let stack = unclip_e2e::stack(StackOptions::default()).await;
    // A CLIP service of karlo-tiny, in process on an ephemeral port.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let clip_addr = listener.local_addr().unwrap();
    let clip_config = <unclip_clip::Config as clap::Parser>::try_parse_from([
        "unclip-clip",
        "--model",
        karlo_tiny().to_str().unwrap(),
        "--intra-threads",
        "1",
    ])
    .unwrap();
    let (stop_clip, clip_stopped) = tokio::sync::oneshot::channel::<()>();
    let clip = tokio::spawn(unclip_clip::run(clip_config, listener, async {
        let _ = clip_stopped.await;
    }));

    let prior = stack.stage_urls(Stage::Prior).join(",");
    let decoder = stack.stage_urls(Stage::Decoder).join(",");
    let clip_url = format!("http://{clip_addr}");
    let config = unclip_gateway::Config::from_args([
        "unclip-gateway",
        "--clip",
        &clip_url,
        "--prior",
        &prior,
        "--decoder",
        &decoder,
        "--startup-timeout-secs",
        "60",
    ])
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let result = tokio::time::timeout(
        Duration::from_secs(90),
        unclip_gateway::run(config, listener, std::future::pending()),
    )
    .await
    .expect("the gateway gives up instead of serving");
    let error = format!("{:#}", result.expect_err("a mismatch is an error"));
    println!("{error}");
    assert!(error.contains("different models"), "{error}");
    assert!(
        error.contains("karlo-tiny") && error.contains("shapes"),
        "{error}"
    );

    let _ = stop_clip.send(());
    clip.await.unwrap().unwrap();
    stack.shutdown().await.unwrap();
}
