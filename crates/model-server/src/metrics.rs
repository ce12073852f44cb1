//! The `/metrics` of a stage service: readiness and each graph executor's counters, on top of
//! [`unclip_server::metrics`] (re-exported here, so a service needs one import).

use std::sync::atomic::AtomicU64;

use unclip_runtime::ExecutorStats;
use unclip_server::metrics::prometheus_client::metrics::counter::Counter;
use unclip_server::metrics::prometheus_client::metrics::family::Family;
pub use unclip_server::metrics::*;

use crate::serve::{ModelSlot, StageModel};

/// The metrics of a stage service: `unclip_stage_ready` (1 once the model serves), and per
/// graph its executor's calls, runs (fewer than calls when calls were stacked) and rows, as
/// [`StageModel::graphs`] lists them for the loaded model, and the seconds its runs spent
/// inside ONNX Runtime (`unclip_stage_graph_run_seconds_total`).
pub fn graph_metrics<M: StageModel>(slot: ModelSlot<M>) -> Metrics {
    Metrics::new(move |registry| {
        let model = slot.get().ok();
        gauges(
            registry,
            "unclip_stage_ready",
            "1 once the model is loaded and warmed up.",
            [(Labels::new(), i64::from(model.is_some()))],
        );
        let Some(model) = model else {
            return;
        };
        let stats: Vec<(Labels, ExecutorStats)> = model
            .graphs()
            .into_iter()
            .map(|(graph, s)| (labels([("graph", graph.as_str())]), s))
            .collect();
        counters_over(
            registry,
            &stats,
            &[
                (
                    "unclip_stage_graph_calls",
                    "Calls answered, per graph.",
                    |s| s.calls,
                ),
                (
                    "unclip_stage_graph_runs",
                    "Graph runs (calls stacked together run once), per graph.",
                    |s| s.runs,
                ),
                ("unclip_stage_graph_rows", "Rows run, per graph.", |s| {
                    s.rows
                }),
            ],
        );
        gauges_over(
            registry,
            &stats,
            &[(
                "unclip_stage_graph_stopped",
                "1 when the graph's executor thread has stopped (health is then NOT_SERVING).",
                |s| i64::from(s.stopped),
            )],
        );
        let run_seconds = Family::<Labels, Counter<f64, AtomicU64>>::default();
        for (labels, s) in &stats {
            run_seconds.get_or_create(labels).inc_by(s.run_seconds());
        }
        registry.register(
            "unclip_stage_graph_run_seconds",
            "Seconds inside ONNX Runtime's Session::run, per graph.",
            run_seconds,
        );
    })
}
