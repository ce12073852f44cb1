//! The soak test's short form (`scripts/soak --minutes 10` is the long one): a minute of mixed
//! traffic through `unclip soak`'s driver against a local stack with two replicas per stage and
//! Redis.

use std::time::Duration;

use unclip_cli::soak::{FD_SLACK, SoakConfig, soak};
use unclip_e2e::{StackOptions, gateway, stack, stats};
use unclip_stack::StageReplicas;

/// A minute of all five capabilities, cache hits and misses, streams read and cancelled and bad
/// requests: no unexpected failure, every kind of request served, the open file descriptors of
/// every process flat, and every process exits cleanly afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_minute_of_mixed_traffic() {
    let stack = stack(StackOptions {
        replicas: StageReplicas {
            clip: 2,
            prior: 2,
            decoder: 2,
        },
        redis: true,
        ..Default::default()
    })
    .await;
    let config = SoakConfig {
        duration: Duration::from_secs(60),
        clients: 3,
        sample_every: Duration::from_secs(5),
        steps: 3,
    };
    let report = soak(&stack, config).await.expect("the soak ran");
    println!("{}", report.table());
    assert_eq!(report.unexpected, 0, "{:?}", report.failures);
    // 6 stage replicas, the gateway and Redis.
    assert_eq!(report.processes.len(), 8, "{:?}", report.processes);
    for process in &report.processes {
        assert!(process.samples.len() >= 3, "{process:?}");
        assert!(process.fds_flat(FD_SLACK), "{process:?}");
    }
    // Every capability, the cancelled stream and the refusals happened at least once.
    for label in [
        "generate (cached): ok",
        "generate (fresh seed): ok",
        "vary: ok",
        "interpolate: ok",
        "text diff: ok",
        "inpaint: ok",
        "bad request: refused (INVALID_ARGUMENT)",
        "generate stream, cancelled: cancelled by the client",
    ] {
        assert!(
            report.outcomes.get(label).copied().unwrap_or(0) > 0,
            "no {label:?} in {:?}",
            report.outcomes
        );
    }
    let counts = stats(&mut gateway(&stack).await).await;
    assert!(
        counts.cache_hits > 0 && counts.cache_misses > 0,
        "{counts:?}"
    );
    for exit in stack.shutdown().await.expect("stopping the stack") {
        assert!(exit.is_clean(), "{exit:?}");
    }
}
