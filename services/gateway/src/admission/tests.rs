//! The admission arithmetic on a paused clock: slots, the FIFO queue, refusals and the
//! estimate that divides the work ahead by the parallelism actually served.

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

/// Two requests of 100 units that ran side by side for 10 s teach 0.1 s per unit at a
/// parallelism of 2. With two such requests running and two queued, a newcomer has
/// 2 × 100 queued + half of the 2 × 100 running = 300 units ahead, which drain at
/// 2 / 0.1 = 20 units per second: 15 s, then 10 s of its own. A 20 s
/// deadline is refused at once (DEADLINE_EXCEEDED, nothing queued); a 30 s one waits (not
/// dividing by the parallelism would have said 40 s and refused it). Failures quicker than the
/// estimate teach nothing.
#[tokio::test(start_paused = true)]
async fn deadlines_against_the_learned_estimate() {
    let admission = layer(2, 8, 0);
    let a = admission.admit(&request(100, LONG)).await.unwrap();
    let b = admission.admit(&request(100, LONG)).await.unwrap();
    advance(Duration::from_secs(10)).await;
    a.succeeded();
    b.succeeded();
    let estimate = admission.snapshot().estimate;
    assert!(
        (estimate.seconds_per_cost.unwrap() - 0.1).abs() < 1e-9,
        "{estimate:?}"
    );
    // The first ran beside the second all along (2); the second alone for an instant after.
    assert!((estimate.parallelism - 2.0).abs() < 1e-6, "{estimate:?}");
    let (wait, run) = estimate.wait_and_run(300.0, 100, 2).unwrap();
    assert_eq!((wait.as_secs(), run.as_secs()), (15, 10));
    assert_eq!(
        estimate.wait_and_run(300.0, 100, 1).unwrap().0.as_secs(),
        30,
        "never more parallel than the slots"
    );

    // A failure (the permit dropped) within the estimate (100 units: 10 s) changes nothing.
    let failed = admission.admit(&request(100, LONG)).await.unwrap();
    advance(Duration::from_secs(5)).await;
    drop(failed);
    assert_eq!(admission.snapshot().estimate, estimate);

    let _a = admission.admit(&request(100, LONG)).await.unwrap();
    let _b = admission.admit(&request(100, LONG)).await.unwrap();
    let mut queued = Vec::new();
    for _ in 0..2 {
        let admission = admission.clone();
        queued.push(tokio::spawn(async move {
            admission.admit(&request(100, LONG)).await.map(drop)
        }));
    }
    settle().await;
    assert_eq!(admission.snapshot().queued, 2);

    let arrived = Instant::now();
    match admission
        .admit(&request(100, Duration::from_secs(20)))
        .await
        .unwrap_err()
    {
        Refusal::DeadlineExceeded(message) => assert_eq!(
            message,
            "the deadline cannot be met: about 15000 ms of queued work ahead and 10000 ms to \
             run, 20000 ms left"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(Instant::now(), arrived, "refused at once");
    assert_eq!(admission.shed(Shed::Deadline), 1);
    assert_eq!(admission.snapshot().queued, 2, "it took no place");

    let patient = {
        let admission = admission.clone();
        tokio::spawn(async move {
            admission
                .admit(&request(100, Duration::from_secs(30)))
                .await
                .map(drop)
        })
    };
    settle().await;
    assert_eq!(admission.snapshot().queued, 3, "a meetable deadline waits");
    patient.abort();
    for task in queued {
        task.abort();
    }
}

/// The retry hint of a full queue is the estimated time for the work ahead, at least 1 s.
#[tokio::test(start_paused = true)]
async fn retry_after_follows_the_estimate() {
    let admission = layer(1, 0, 0);
    let learn = admission.admit(&request(100, LONG)).await.unwrap();
    advance(Duration::from_secs(10)).await;
    learn.succeeded();
    let _running = admission.admit(&request(100, LONG)).await.unwrap();
    match admission.admit(&request(100, LONG)).await.unwrap_err() {
        Refusal::ResourceExhausted { retry_after, .. } => {
            // Half of the 100 units running, at 0.1 s per unit, one at a time.
            assert_eq!(retry_after, Some(Duration::from_secs(5)));
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

/// Given a free place, a request is refused at once if its own run (at the pace of the
/// requests it joins) would pass its deadline: 100 units at 0.1 s per unit learned at a
/// parallelism of 2 take 5 s alone. A failure that ran longer than the estimate teaches it.
#[tokio::test(start_paused = true)]
async fn free_places_check_the_run_itself() {
    let admission = layer(4, 4, 0).with_estimate(Estimate {
        seconds_per_cost: Some(0.1),
        parallelism: 2.0,
    });
    match admission
        .admit(&request(100, Duration::from_secs(4)))
        .await
        .unwrap_err()
    {
        Refusal::DeadlineExceeded(message) => assert_eq!(
            message,
            "the deadline cannot be met: about 5000 ms to run, 4000 ms left"
        ),
        other => panic!("{other:?}"),
    }
    let admitted = admission
        .admit(&request(100, Duration::from_secs(6)))
        .await
        .unwrap();
    // Beside it, a second would take the learned 10 s: refused for an 8 s deadline.
    match admission
        .admit(&request(100, Duration::from_secs(8)))
        .await
        .unwrap_err()
    {
        Refusal::DeadlineExceeded(message) => assert!(message.contains("10000 ms to run")),
        other => panic!("{other:?}"),
    }
    // It fails at 30 s (three times the 10 s estimate): the estimate grows.
    advance(Duration::from_secs(30)).await;
    drop(admitted);
    let learned = admission.snapshot().estimate.seconds_per_cost.unwrap();
    assert!(
        (learned - (0.1 + 0.2 * (0.3 - 0.1))).abs() < 1e-9,
        "{learned}"
    );
}
