//! The admission layer on a paused clock: slots, the FIFO queue, refusals, learning, and the
//! deadline checks against the schedule (the model's own arithmetic is tested in
//! `schedule.rs`).

use std::time::Duration;

use tokio::time::{Instant, advance};

use super::*;
use crate::layer::{Caller, Capability};

fn layer(slots: usize, queued: usize, max_cost: u64) -> Admission {
    Admission::new(AdmissionArgs {
        max_request_cost: max_cost,
        max_concurrent_requests: slots,
        max_queued_requests: queued,
    })
}

/// A Generate of `units` cost (1 image, best of 1) due `within` from now.
fn request(units: u32, within: Duration) -> RequestContext {
    RequestContext {
        capability: Capability::Generate,
        streaming: false,
        caller: Caller::default(),
        deadline: Instant::now() + within,
        cost: Cost {
            images: 1,
            best_of: 1,
            steps: units,
        },
    }
}

const LONG: Duration = Duration::from_secs(3600);

/// Lets spawned tasks run up to their next wait.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// A request over the cost budget is INVALID_ARGUMENT naming the cost, its factors and the
/// limit; one at the budget is admitted; 0 means no budget.
#[tokio::test(start_paused = true)]
async fn the_cost_budget() {
    let admission = layer(4, 4, 500);
    let mut over = request(100, LONG);
    over.cost.images = 3;
    over.cost.best_of = 2;
    match admission.admit(&over).await.unwrap_err() {
        Refusal::InvalidArgument(message) => assert_eq!(
            message,
            "cost: 3 images × best_of 2 × 100 steps = 600, over the gateway's limit of 500 per \
             request"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(admission.shed(Shed::Cost), 1);
    assert!(admission.admit(&request(500, LONG)).await.is_ok());
    let unlimited = layer(4, 4, 0);
    assert!(unlimited.admit(&request(u32::MAX, LONG)).await.is_ok());
}

/// Past the slots requests wait first come first served; past the queue too they are
/// refused at once with RESOURCE_EXHAUSTED and a retry hint; a released slot goes to the
/// first in line; GetInfo is never queued.
#[tokio::test(start_paused = true)]
async fn slots_then_a_bounded_fifo_queue() {
    let admission = layer(2, 2, 0);
    let first = admission.admit(&request(10, LONG)).await.unwrap();
    let second = admission.admit(&request(10, LONG)).await.unwrap();
    let (order_tx, mut order) = tokio::sync::mpsc::unbounded_channel();
    let mut waiting = Vec::new();
    for name in ["third", "fourth"] {
        let (admission, order_tx) = (admission.clone(), order_tx.clone());
        waiting.push(tokio::spawn(async move {
            let permit = admission.admit(&request(10, LONG)).await.unwrap();
            order_tx.send(name).unwrap();
            permit
        }));
        settle().await;
    }
    assert_eq!(
        (admission.snapshot().in_flight, admission.snapshot().queued),
        (2, 2)
    );

    let arrived = Instant::now();
    match admission.admit(&request(10, LONG)).await.unwrap_err() {
        Refusal::ResourceExhausted {
            message,
            retry_after,
        } => {
            assert!(message.contains("2 requests running"), "{message}");
            assert!(message.contains("2 waiting"), "{message}");
            assert_eq!(retry_after, Some(Duration::from_secs(1)), "no estimate yet");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(Instant::now(), arrived, "refused without waiting");
    assert_eq!(admission.shed(Shed::QueueFull), 1);

    let info = RequestContext {
        capability: Capability::Info,
        cost: Cost::default(),
        ..request(0, LONG)
    };
    assert!(
        admission.admit(&info).await.is_ok(),
        "GetInfo is not queued"
    );

    drop(second);
    settle().await;
    assert_eq!(order.try_recv().unwrap(), "third");
    assert!(order.try_recv().is_err());
    drop(first);
    settle().await;
    assert_eq!(order.try_recv().unwrap(), "fourth");
    let snapshot = admission.snapshot();
    assert_eq!((snapshot.in_flight, snapshot.queued), (2, 0));
    for task in waiting {
        drop(task.await.unwrap());
    }
    assert_eq!(admission.snapshot().in_flight, 0);
}

/// A waiter whose client goes away leaves the queue; one whose deadline passes in the queue
/// gets DEADLINE_EXCEEDED and is counted.
#[tokio::test(start_paused = true)]
async fn leaving_the_queue() {
    let admission = layer(1, 4, 0);
    let running = admission.admit(&request(10, LONG)).await.unwrap();
    let gone = {
        let admission = admission.clone();
        tokio::spawn(async move { admission.admit(&request(10, LONG)).await.map(drop) })
    };
    let late = {
        let admission = admission.clone();
        tokio::spawn(async move {
            admission
                .admit(&request(10, Duration::from_secs(2)))
                .await
                .map(drop)
        })
    };
    settle().await;
    assert_eq!(admission.snapshot().queued, 2);
    gone.abort();
    settle().await;
    assert_eq!(admission.snapshot().queued, 1);
    advance(Duration::from_secs(3)).await;
    match late.await.unwrap().unwrap_err() {
        Refusal::DeadlineExceeded(message) => {
            assert!(message.contains("waiting for one of 1 places"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(admission.snapshot().queued, 0);
    assert_eq!(admission.shed(Shed::DeadlineInQueue), 1);
    drop(running);
    assert_eq!(admission.snapshot().in_flight, 0);
    assert!(admission.admit(&request(10, LONG)).await.is_ok());
}

/// An estimate of `solo` seconds per unit and `parallelism`, settled with every request as
/// modelled (the margin is then its minimum, 1.06).
fn estimate(solo: f64, parallelism: f64) -> Estimate {
    Estimate {
        solo: Some(solo),
        parallelism,
        alone: Misses::exact(SETTLED),
        shared: Misses::exact(SETTLED),
    }
}

/// The first request to finish sets the solo pace; one that ran beside another teaches the
/// parallelism (two requests of 100 units side by side for 10 s, 0.05 s per unit alone: each
/// at half pace, so parallelism 1). A failure quicker than the estimate teaches nothing; one
/// that ran longer than it said teaches it as a lower bound.
#[tokio::test(start_paused = true)]
async fn learning_from_finished_requests() {
    let admission = layer(4, 4, 0);
    let first = admission.admit(&request(100, LONG)).await.unwrap();
    advance(Duration::from_secs(5)).await;
    first.succeeded();
    let learned = admission.snapshot().estimate;
    assert_eq!(learned.solo, Some(0.05), "{learned:?}");

    let a = admission.admit(&request(100, LONG)).await.unwrap();
    let b = admission.admit(&request(100, LONG)).await.unwrap();
    advance(Duration::from_secs(10)).await;
    a.succeeded();
    let shared = admission.snapshot().estimate;
    // Sample 1, from the initial 2: 2 + 0.2 × (1 − 2).
    assert!((shared.parallelism - 1.8).abs() < 1e-9, "{shared:?}");
    assert_eq!(
        shared.solo,
        Some(0.05),
        "sharing does not teach the solo pace"
    );
    // b fails after 10 s that the model counts as 9 s of work for 5 needed: learned as a
    // lower bound.
    drop(b);
    assert!(admission.snapshot().estimate.parallelism < shared.parallelism);

    let before = admission.snapshot().estimate;
    let quick = admission.admit(&request(100, LONG)).await.unwrap();
    advance(Duration::from_secs(1)).await;
    drop(quick);
    assert_eq!(
        admission.snapshot().estimate,
        before,
        "a quick failure teaches nothing"
    );
}

/// With an estimate of 0.01 s per unit alone (margin 1.06) and parallelism 1, two requests of
/// 100 units running side by side both finish after 2.12 s; a newcomer would wait for that
/// and then run alone for 1.06 s. Too short a deadline is refused
/// at once with DEADLINE_EXCEEDED, taking no place; a meetable one waits.
#[tokio::test(start_paused = true)]
async fn deadlines_against_the_schedule() {
    let admission = layer(2, 8, 0).with_estimate(estimate(0.01, 1.0));
    let _a = admission.admit(&request(100, LONG)).await.unwrap();
    let _b = admission.admit(&request(100, LONG)).await.unwrap();
    let arrived = Instant::now();
    match admission
        .admit(&request(100, Duration::from_secs(2)))
        .await
        .unwrap_err()
    {
        Refusal::DeadlineExceeded(message) => assert_eq!(
            message,
            "the deadline cannot be met: about 2120 ms until a place is free and 1060 ms to \
             run, 2000 ms left"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(Instant::now(), arrived, "refused at once");
    assert_eq!(admission.shed(Shed::Deadline), 1);
    assert_eq!(admission.snapshot().queued, 0, "it took no place");

    let patient = {
        let admission = admission.clone();
        tokio::spawn(async move {
            admission
                .admit(&request(100, Duration::from_secs(4)))
                .await
                .map(drop)
        })
    };
    settle().await;
    assert_eq!(admission.snapshot().queued, 1, "a meetable deadline waits");
    patient.abort();
}

/// Given a free place, a request is refused at once if its own run would pass its deadline.
/// A newcomer that would make a running request late (two at parallelism 1 each take twice
/// as long) is not started beside it but waits for it to finish, if its deadline allows.
#[tokio::test(start_paused = true)]
async fn a_newcomer_must_not_make_others_late() {
    let admission = layer(4, 4, 0).with_estimate(estimate(0.01, 1.0));
    match admission
        .admit(&request(100, Duration::from_millis(1000)))
        .await
        .unwrap_err()
    {
        Refusal::DeadlineExceeded(message) => assert_eq!(
            message,
            "the deadline cannot be met: about 1060 ms to run, 1000 ms left"
        ),
        other => panic!("{other:?}"),
    }
    // Due in 1.5 s: 1.06 s alone, but 2.12 s beside another.
    let first = admission
        .admit(&request(100, Duration::from_millis(1500)))
        .await
        .unwrap();
    // Its own deadline (10 s) is fine either way, but starting now would make the first
    // late: it waits for the first to finish.
    let second = {
        let admission = admission.clone();
        tokio::spawn(async move {
            admission
                .admit(&request(100, Duration::from_secs(10)))
                .await
        })
    };
    settle().await;
    assert_eq!(
        (admission.snapshot().in_flight, admission.snapshot().queued),
        (1, 1),
        "a free slot, but the second waits"
    );
    advance(Duration::from_millis(1000)).await;
    first.succeeded();
    settle().await;
    let second = second.await.unwrap().unwrap();
    assert_eq!(admission.snapshot().in_flight, 1);
    // With parallelism 2, the same two would overlap.
    let relaxed = layer(4, 4, 0).with_estimate(estimate(0.01, 2.0));
    let _one = relaxed
        .admit(&request(100, Duration::from_millis(1500)))
        .await
        .unwrap();
    let _two = relaxed
        .admit(&request(100, Duration::from_millis(1500)))
        .await
        .unwrap();
    assert_eq!(relaxed.snapshot().in_flight, 2);
    drop(second);
}

/// A slot given back goes to the first waiter at once; free slots beyond it only to waiters
/// that fit beside those running.
#[tokio::test(start_paused = true)]
async fn hand_over_fills_free_slots_only_while_they_fit() {
    let admission = layer(3, 4, 0).with_estimate(estimate(0.01, 1.0));
    let running = admission
        .admit(&request(100, Duration::from_millis(1100)))
        .await
        .unwrap();
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let admission = admission.clone();
        waiting.push(tokio::spawn(async move {
            admission
                .admit(&request(100, Duration::from_secs(60)))
                .await
        }));
        settle().await;
    }
    assert_eq!(
        admission.snapshot().queued,
        2,
        "both would make the first late"
    );
    drop(running);
    settle().await;
    // One replaces the first; the second would share with it, and both have time for that.
    let snapshot = admission.snapshot();
    assert_eq!(
        (snapshot.in_flight, snapshot.queued),
        (2, 0),
        "{snapshot:?}"
    );
    for task in waiting {
        drop(task.await.unwrap().unwrap());
    }
}

/// The retry hint of a full queue is when the requests ahead are expected to have started
/// (here the one running to have finished), at least 1 s.
#[tokio::test(start_paused = true)]
async fn retry_after_follows_the_estimate() {
    let admission = layer(1, 0, 0).with_estimate(estimate(0.05, 1.0));
    let _running = admission.admit(&request(100, LONG)).await.unwrap();
    match admission.admit(&request(100, LONG)).await.unwrap_err() {
        Refusal::ResourceExhausted { retry_after, .. } => {
            // 100 units at 0.05 s, margin 1.06.
            assert_eq!(retry_after, Some(Duration::from_millis(5300)));
        }
        other => panic!("{other:?}"),
    }
}

/// `/metrics` shows the slots in use, the queue, the shed counts by reason and the queue wait.
#[tokio::test(start_paused = true)]
async fn metrics_report_the_queue() {
    let admission = layer(1, 1, 50);
    let _running = admission.admit(&request(10, LONG)).await.unwrap();
    let waiting = {
        let admission = admission.clone();
        tokio::spawn(async move { admission.admit(&request(10, LONG)).await.map(drop) })
    };
    settle().await;
    let _ = admission.admit(&request(10, LONG)).await.unwrap_err();
    let _ = admission.admit(&request(60, LONG)).await.unwrap_err();
    let metrics = unclip_server::metrics::Metrics::new({
        let admission = admission.clone();
        move |registry| admission.metrics(registry)
    });
    let text = metrics.render();
    for line in [
        "unclip_gateway_requests_in_flight 1",
        "unclip_gateway_queue_depth 1",
        "unclip_gateway_shed_total{reason=\"queue_full\"} 1",
        "unclip_gateway_shed_total{reason=\"cost\"} 1",
        "unclip_gateway_shed_total{reason=\"deadline\"} 0",
        "unclip_gateway_queue_wait_seconds_count 1",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    waiting.abort();
}
