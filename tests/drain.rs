//! Graceful drain across real processes: a stage given SIGTERM in the middle of a call
//! finishes it and exits 0; with a second replica, the gateway loses no request while one
//! drains and exits.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use unclip_e2e::{StackOptions, gateway, requests, stack, stats};
use unclip_proto::v1::{GenerateRequest, images_event};
use unclip_stack::{Stage, StageReplicas};

const RED_CIRCLE: &str = "a small red circle in the top left on a white background";

/// A prior given SIGTERM while it samples (200 steps, reported step by step) finishes that
/// call: the request completes with its image, and the prior process exits with status 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_drains_the_call_in_flight_and_exits_0() {
    let mut stack = stack(StackOptions::default()).await;
    let mut client = gateway(&stack).await;
    let mut events = client
        .generate_stream(GenerateRequest {
            prompt: RED_CIRCLE.into(),
            seed: Some(7),
            prior_steps: Some(200),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut terminated = false;
    let mut result = None;
    while let Some(event) = events.message().await.unwrap() {
        match event.event.unwrap() {
            images_event::Event::Progress(p)
                if !terminated && p.stage == "prior.sample" && p.step >= 1 && p.step < p.total =>
            {
                // Mid-call: the prior has reported a step and has more to go.
                stack.terminate_replica(Stage::Prior, 0).unwrap();
                terminated = true;
            }
            images_event::Event::Result(r) => result = Some(r),
            _ => {}
        }
    }
    assert!(terminated, "the prior never reported a step mid-call");
    let result = result.expect("the request completes");
    assert_eq!(result.images.len(), 1);
    let exit = stack.wait_replica(Stage::Prior, 0).await.unwrap();
    assert!(
        exit.status.success() && !exit.killed,
        "the prior exited with {:?} (killed: {})\n{}",
        exit.status,
        exit.killed,
        stack.output(Stage::Prior)
    );
    let output = stack.output(Stage::Prior);
    assert!(output.contains("draining"), "{output}");
}

/// Two prior replicas under steady load from four clients; one is given SIGTERM and drains
/// (calls in flight finished, new calls refused with UNAVAILABLE and retried by the gateway on
/// the other replica) and exits 0. Every request succeeds, before, during and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_loses_nothing_while_a_replica_drains() {
    let mut stack = stack(StackOptions {
        replicas: StageReplicas {
            prior: 2,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let client = gateway(&stack).await;
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4u64)
        .map(|w| {
            let (mut client, stop) = (client.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut sent = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let request = GenerateRequest {
                        prompt: RED_CIRCLE.into(),
                        // A fresh seed each time: no prior sample comes from the cache.
                        seed: Some(w * 1_000_000 + sent),
                        // Short calls, so the drain ends well within the stack's 10 s stop
                        // timeout even on a loaded machine.
                        prior_steps: Some(10),
                        ..Default::default()
                    };
                    if let Err(status) = client.generate(request).await {
                        return Err(format!("request {sent} of client {w}: {status:?}"));
                    }
                    sent += 1;
                }
                Ok(sent)
            })
        })
        .collect();

    let mut probe = client.clone();
    let prior_calls = |s: &unclip_proto::v1::GatewayStats| -> u64 {
        s.replicas
            .iter()
            .filter(|r| r.stage == "prior")
            .map(|r| r.calls)
            .sum()
    };
    // Under load: a few prior calls made.
    for _ in 0..600 {
        if prior_calls(&stats(&mut probe).await) >= 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stack.terminate_replica(Stage::Prior, 0).unwrap();
    let exit = stack.wait_replica(Stage::Prior, 0).await.unwrap();
    assert!(
        exit.status.success() && !exit.killed,
        "the drained prior exited with {:?}\n{}",
        exit.status,
        stack.output(Stage::Prior)
    );
    // More load on the one replica left.
    let after = prior_calls(&stats(&mut probe).await);
    for _ in 0..600 {
        if prior_calls(&stats(&mut probe).await) >= after + 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for worker in workers {
        total += worker
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("lost: {e}"));
    }
    let stats = stats(&mut probe).await;
    assert_eq!(
        requests(&stats, "generate ok"),
        total,
        "{:?}",
        stats.requests
    );
    assert_eq!(
        stats.requests.len(),
        1,
        "only successes: {:?}",
        stats.requests
    );
    assert!(total >= 8, "{total} requests");
    stack.shutdown().await.unwrap();
}
