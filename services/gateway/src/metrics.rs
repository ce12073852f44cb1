//! What the gateway's `GET /metrics` reports, read at scrape time from the same counters as
//! GetStats, and the seconds of stage calls by [`Stage`](crate::Stage) label.

use std::sync::Arc;

use unclip_proto::v1::ReplicaInfo;
use unclip_server::Slot;
use unclip_server::metrics::{
    Labels, Metrics, counters, counters_over, gauges, gauges_over, labels,
};

use crate::pipeline::Gateway;
use crate::stats::RequestStats;

/// What `GET /metrics` reports: requests by capability and outcome, the seconds of
/// successful ones, and, once the stages are connected, the seconds of successful stage calls
/// by stage label (`decoder.decode`, ...), every replica's calls, failures, retries, calls in
/// flight, availability and whether its probe keeps it out (another model version), the
/// refusals per stage, and the cache's counters.
pub fn metrics(slot: Slot<Gateway>, stats: Arc<RequestStats>) -> Metrics {
    Metrics::new(move |registry| {
        let requests = stats.snapshot().into_iter().map(|(key, count)| {
            let (capability, outcome) = key.split_once(' ').unwrap_or((&key, ""));
            (
                labels([("capability", capability), ("outcome", outcome)]),
                count,
            )
        });
        counters(
            registry,
            "unclip_gateway_requests",
            "Requests by capability and outcome.",
            requests,
        );
        registry.register(
            "unclip_gateway_request_duration_seconds",
            "Seconds of successful requests, by capability.",
            stats.durations(),
        );
        let Some(gw) = slot.get() else {
            return;
        };
        registry.register(
            "unclip_gateway_stage_call_duration_seconds",
            "Seconds of successful stage calls (retries included), by stage label.",
            gw.stages.call_seconds(),
        );
        let replicas: Vec<(Labels, ReplicaInfo)> = gw
            .stages
            .replicas()
            .into_iter()
            .map(|r| (labels([("stage", &r.stage), ("replica", &r.address)]), r))
            .collect();
        counters_over(
            registry,
            &replicas,
            &[
                (
                    "unclip_gateway_stage_calls",
                    "Stage calls sent, per replica.",
                    |r| r.calls,
                ),
                (
                    "unclip_gateway_stage_failures",
                    "Stage calls that failed, per replica.",
                    |r| r.failures,
                ),
                (
                    "unclip_gateway_stage_retries",
                    "Failed stage calls retried on another replica, per replica.",
                    |r| r.retried,
                ),
            ],
        );
        gauges_over(
            registry,
            &replicas,
            &[
                (
                    "unclip_gateway_stage_in_flight",
                    "Stage calls in flight, per replica.",
                    |r| r.in_flight as i64,
                ),
                (
                    "unclip_gateway_replica_available",
                    "1 when the replica takes calls: healthy and serving the gateway's model \
                     version when last probed, and not backed off.",
                    |r| i64::from(r.available),
                ),
            ],
        );
        gauges(
            registry,
            "unclip_gateway_replica_refused",
            "1 when the replica is kept out because it serves another model or version.",
            gw.stages
                .kept_out()
                .into_iter()
                .map(|(stage, address, refused)| {
                    (
                        labels([("stage", stage), ("replica", &address)]),
                        i64::from(refused),
                    )
                }),
        );
        counters(
            registry,
            "unclip_gateway_replica_refusals",
            "Times a probe found a stage replica serving another model or version (kept out).",
            gw.stages
                .refusals()
                .into_iter()
                .map(|(stage, n)| (labels([("stage", stage)]), n)),
        );
        let cache = [(labels([("backend", gw.cache.backend())]), gw.cache.stats())];
        counters_over(
            registry,
            &cache,
            &[
                (
                    "unclip_gateway_cache_hits",
                    "Cache reads that found a valid entry.",
                    |c| c.hits,
                ),
                (
                    "unclip_gateway_cache_misses",
                    "Cache reads that found nothing usable.",
                    |c| c.misses,
                ),
                (
                    "unclip_gateway_cache_errors",
                    "Cache operations that failed or timed out.",
                    |c| c.errors,
                ),
                (
                    "unclip_gateway_cache_rejected",
                    "Cache entries found but refused.",
                    |c| c.rejected,
                ),
            ],
        );
        gauges_over(
            registry,
            &cache,
            &[(
                "unclip_gateway_cache_healthy",
                "1 when the last cache operation succeeded.",
                |c| i64::from(c.healthy),
            )],
        );
    })
}
