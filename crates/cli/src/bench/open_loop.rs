//! `unclip bench --rate R`: an open-loop load of the gateway's Generate. Requests are sent at
//! Poisson arrival times of mean rate R for `--duration-secs`, whether or not earlier ones
//! have been answered (a closed loop of N clients slows down with the server and never
//! overloads it; real callers do not). Each carries `--deadline-ms` as its deadline, so the
//! gateway's admission control can refuse at once what it could not finish in time.
//!
//! The report: requests sent, the rate achieved (successes per second), the latency of the
//! admitted requests (p50/p90/p99), their queueing time (latency minus the seconds their stage
//! calls took: the time spent waiting in the gateway, and its own overhead), refusals by code
//! with their p50/p99 time to answer, and, with `--watch-pid`, the RSS of that process
//! (the gateway) sampled from `/proc` every 250 ms.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp};
use serde::Serialize;

use crate::client::Gateway;

use super::{Latency, percentile, request};
use crate::args::{BenchArgs, OpenLoopArgs};
use crate::client::{code_name, with_deadline};

/// How often the watched process's RSS is read.
const RSS_INTERVAL: Duration = Duration::from_millis(250);

/// What one request of the open loop gave.
#[derive(Debug, Clone)]
pub struct Shot {
    /// From sending to the answer.
    pub latency: Duration,
    /// `Ok(seconds of its stage calls)`, or the code of its failure.
    pub outcome: Result<f64, tonic::Code>,
}

/// RSS of the watched process, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Rss {
    /// At the first sample.
    pub start_kib: u64,
    /// The largest sample.
    pub max_kib: u64,
    /// At the last sample.
    pub end_kib: u64,
    /// Samples taken.
    pub samples: usize,
}

/// The open loop's report; `--json` prints it, `--report FILE` writes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpenLoopReport {
    /// The model the gateway serves, "id version".
    pub model: String,
    /// Requests per second asked for.
    pub offered_rate: f64,
    /// Seconds of sending.
    pub duration_secs: f64,
    /// Each request's deadline, in milliseconds.
    pub deadline_ms: u64,
    /// Requests sent.
    pub sent: usize,
    /// Requests answered with images.
    pub ok: usize,
    /// Successes per second, from the first send to the last answer.
    pub achieved_rate: f64,
    /// Latency of the successful requests.
    pub admitted_ms: Option<Latency>,
    /// Of the successful requests: latency minus their stage calls' seconds.
    pub queueing_ms: Option<Latency>,
    /// Failed requests by code (`RESOURCE_EXHAUSTED`, `DEADLINE_EXCEEDED`, ...).
    pub refusals: BTreeMap<String, usize>,
    /// Time to answer the failed requests.
    pub refusal_ms: Option<Latency>,
    /// The watched process's RSS, with `--watch-pid`.
    pub rss: Option<Rss>,
}

/// Percentiles of `values` (milliseconds); `None` when empty.
fn latency(mut values: Vec<f64>) -> Option<Latency> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(Latency {
        mean: values.iter().sum::<f64>() / values.len() as f64,
        p50: percentile(&values, 0.5),
        p90: percentile(&values, 0.9),
        p99: percentile(&values, 0.99),
        max: values[values.len() - 1],
    })
}

impl OpenLoopReport {
    /// The report of `shots`, the last answered `wall` after the first was sent.
    pub fn new(
        model: String,
        load: &OpenLoopArgs,
        shots: &[Shot],
        wall: Duration,
        rss: Option<Rss>,
    ) -> Self {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let mut admitted = Vec::new();
        let mut queueing = Vec::new();
        let mut refused = Vec::new();
        let mut refusals: BTreeMap<String, usize> = BTreeMap::new();
        for shot in shots {
            match shot.outcome {
                Ok(stage_seconds) => {
                    admitted.push(ms(shot.latency));
                    queueing.push((ms(shot.latency) - stage_seconds * 1000.0).max(0.0));
                }
                Err(code) => {
                    refused.push(ms(shot.latency));
                    *refusals.entry(code_name(code).to_string()).or_default() += 1;
                }
            }
        }
        let ok = admitted.len();
        let wall = wall.as_secs_f64();
        Self {
            model,
            offered_rate: load.rate.unwrap_or(0.0),
            duration_secs: load.duration_secs,
            deadline_ms: load.deadline_ms,
            sent: shots.len(),
            ok,
            achieved_rate: if wall > 0.0 { ok as f64 / wall } else { 0.0 },
            admitted_ms: latency(admitted),
            queueing_ms: latency(queueing),
            refusals,
            refusal_ms: latency(refused),
            rss,
        }
    }

    /// The report as a few lines for a terminal.
    pub fn table(&self) -> String {
        let mut lines = vec![
            format!(
                "model {}: open loop at {:.2} req/s for {:.0} s, deadline {} ms",
                self.model, self.offered_rate, self.duration_secs, self.deadline_ms
            ),
            format!(
                "sent {}  ok {}  achieved {:.2} req/s",
                self.sent, self.ok, self.achieved_rate
            ),
        ];
        let row = |name: &str, l: &Option<Latency>| {
            l.as_ref().map(|l| {
                format!(
                    "{name:<12} ms  p50 {:.0}  p90 {:.0}  p99 {:.0}  max {:.0}",
                    l.p50, l.p90, l.p99, l.max
                )
            })
        };
        lines.extend(row("admitted", &self.admitted_ms));
        lines.extend(row("queueing", &self.queueing_ms));
        lines.extend(row("refused", &self.refusal_ms));
        for (code, count) in &self.refusals {
            lines.push(format!("  {code:<20} {count}"));
        }
        if let Some(rss) = &self.rss {
            lines.push(format!(
                "watched RSS KiB  start {}  max {}  end {}  ({} samples)",
                rss.start_kib, rss.max_kib, rss.end_kib, rss.samples
            ));
        }
        lines.join("\n")
    }
}

/// The resident set of process `pid` in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Samples the RSS of `pid` until `stop` is told.
async fn watch_rss(pid: u32, mut stop: tokio::sync::oneshot::Receiver<()>) -> Option<Rss> {
    let mut rss: Option<Rss> = None;
    let mut interval = tokio::time::interval(RSS_INTERVAL);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = &mut stop => return rss,
        }
        let Some(kib) = rss_kib(pid) else {
            continue;
        };
        let r = rss.get_or_insert(Rss {
            start_kib: kib,
            ..Rss::default()
        });
        r.max_kib = r.max_kib.max(kib);
        r.end_kib = kib;
        r.samples += 1;
    }
}

/// Runs the open loop against the gateway behind `client`, after `args.warmup` requests one
/// at a time, and prints (and with `--report`, writes) the report.
pub async fn run(
    client: Gateway,
    args: Arc<BenchArgs>,
    model: String,
    quiet: bool,
) -> anyhow::Result<()> {
    let load = args.open_loop.clone();
    let rate = load.rate.unwrap_or(1.0);
    anyhow::ensure!(
        rate.is_finite() && rate > 0.0,
        "--rate must be above 0, got {rate}"
    );
    let deadline = Duration::from_millis(load.deadline_ms.max(1));
    for i in 0..args.warmup {
        let mut client = client.clone();
        client
            .generate(with_deadline(request(&args, i), Duration::from_secs(600)))
            .await
            .map_err(|s| anyhow::anyhow!("a warm-up request failed: {}", s.message()))?;
    }
    if !quiet && !args.json {
        eprintln!(
            "open loop: {rate} req/s for {} s, deadline {} ms ...",
            load.duration_secs, load.deadline_ms
        );
    }
    let (stop_rss, stopped) = tokio::sync::oneshot::channel();
    let rss = load
        .watch_pid
        .map(|pid| tokio::spawn(watch_rss(pid, stopped)));

    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let gaps = Exp::new(rate)?;
    let started = Instant::now();
    let span = Duration::from_secs_f64(load.duration_secs.max(0.0));
    let mut at = Duration::ZERO;
    let mut tasks = Vec::new();
    let mut i = args.warmup;
    while at < span {
        tokio::time::sleep_until((started + at).into()).await;
        let (mut client, message) = (client.clone(), request(&args, i));
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let outcome = client
                .generate(with_deadline(message, deadline))
                .await
                .map(|r| {
                    r.into_inner()
                        .timings
                        .iter()
                        .filter(|t| !t.cached)
                        .map(|t| t.seconds)
                        .sum::<f64>()
                })
                .map_err(|s| s.code());
            Shot {
                latency: sent.elapsed(),
                outcome,
            }
        }));
        i += 1;
        at += Duration::from_secs_f64(gaps.sample(&mut rng));
    }
    let mut shots = Vec::with_capacity(tasks.len());
    for task in tasks {
        shots.push(task.await?);
    }
    let wall = started.elapsed();
    let _ = stop_rss.send(());
    let rss = match rss {
        Some(task) => task.await?,
        None => None,
    };
    let report = OpenLoopReport::new(model, &load, &shots, wall, rss);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.table());
    }
    if let Some(path) = &load.report {
        write_report(path, &report)?;
    }
    Ok(())
}

/// Writes `report` as JSON to `path`.
fn write_report(path: &Path, report: &OpenLoopReport) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(report)? + "\n")
        .map_err(|e| anyhow::anyhow!("writing the report {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Successes give the admitted latency, the queueing (latency minus stage time) and the
    /// achieved rate; failures are counted by code with their own latency.
    #[test]
    fn open_loop_figures() {
        let load = OpenLoopArgs {
            rate: Some(4.0),
            duration_secs: 2.0,
            deadline_ms: 900,
            report: None,
            watch_pid: None,
        };
        let ms = Duration::from_millis;
        let shots = vec![
            Shot {
                latency: ms(400),
                outcome: Ok(0.3),
            },
            Shot {
                latency: ms(600),
                outcome: Ok(0.35),
            },
            Shot {
                latency: ms(2),
                outcome: Err(tonic::Code::ResourceExhausted),
            },
            Shot {
                latency: ms(4),
                outcome: Err(tonic::Code::DeadlineExceeded),
            },
            Shot {
                latency: ms(3),
                outcome: Err(tonic::Code::ResourceExhausted),
            },
        ];
        let report = OpenLoopReport::new("m v".into(), &load, &shots, ms(2000), None);
        assert_eq!((report.sent, report.ok), (5, 2));
        assert!((report.achieved_rate - 1.0).abs() < 1e-9);
        let admitted = report.admitted_ms.unwrap();
        assert_eq!((admitted.p50, admitted.p99), (400.0, 600.0));
        let queueing = report.queueing_ms.unwrap();
        assert!((queueing.p50 - 100.0).abs() < 1e-6, "{queueing:?}");
        assert!((queueing.p99 - 250.0).abs() < 1e-6, "{queueing:?}");
        assert_eq!(report.refusals["RESOURCE_EXHAUSTED"], 2);
        assert_eq!(report.refusals["DEADLINE_EXCEEDED"], 1);
        assert_eq!(report.refusal_ms.unwrap().p99, 4.0);
        let table = report.table();
        assert!(table.contains("achieved 1.00 req/s"), "{table}");
    }

    /// This process's own RSS reads from /proc.
    #[test]
    fn reads_rss() {
        assert!(rss_kib(std::process::id()).unwrap() > 0);
    }
}
