//! `unclip bench`: a load test of the gateway's Generate. Sends warm-up requests, then the
//! measured ones from `--concurrency` clients at once, and reports throughput, latency
//! percentiles and the mean time of every kind of stage call (cache hits counted apart), as a
//! table or as one JSON object (`--json`) for scripts.
//!
//! Request i draws with seed `--seed + i × num_images`, so no two requests share a prior
//! sample and the prior's cache does not flatter the figures; text encodings of the repeated
//! prompts are cached after their first use, as in real traffic. `--repeat-seed` sends `--seed`
//! every time instead, to measure that cache's path.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use unclip_proto::v1::{GenerateRequest, ImagesResponse, images_event};

use crate::args::BenchArgs;
use crate::client::{Gateway, RpcError, code_name, with_deadline};

pub mod open_loop;

/// Captions of the shapes model's grammar, used in turn when no `--prompt` is given.
pub const DEFAULT_PROMPTS: [&str; 4] = [
    "a small red circle in the top left on a white background",
    "a large blue square in the center on a black background",
    "a small yellow star in the bottom right on a gray background",
    "a large green triangle in the top right on a white background",
];

/// What one measured request gave.
#[derive(Debug, Clone)]
pub struct Sample {
    /// From sending the request to having its answer.
    pub latency: Duration,
    /// The answer, or the failure as `CODE: message`.
    pub outcome: Result<ImagesResponse, String>,
}

/// Latency percentiles in milliseconds (nearest rank).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
}

/// One kind of stage call (e.g. "decoder.decode") over the measured requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StageFigures {
    /// Calls a stage service answered.
    pub calls: usize,
    /// Mean seconds of those calls, as the gateway timed them.
    pub mean_seconds: f64,
    /// Results served from the gateway's cache instead.
    pub cached: usize,
}

/// The whole report; `unclip bench --json` prints it as is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The model the gateway serves, "id version".
    pub model: String,
    /// Measured requests sent.
    pub requests: usize,
    /// Of them, those that failed.
    pub failures: usize,
    /// The first failure, `CODE: message`.
    pub first_failure: Option<String>,
    /// Clients sending at once.
    pub concurrency: usize,
    /// Images per request.
    pub num_images: u32,
    /// Images received.
    pub images: usize,
    /// Wall-clock seconds of the measured part.
    pub wall_seconds: f64,
    /// Images per second over it.
    pub images_per_second: f64,
    /// Latency of the successful requests; `None` when none succeeded.
    pub latency_ms: Option<Latency>,
    /// Per kind of stage call, in name order.
    pub stages: BTreeMap<String, StageFigures>,
    /// ONNX Runtime compute against wall time; `None` when nothing succeeded.
    pub overhead: Option<Overhead>,
}

/// How much of a request's time the stages spent inside ONNX Runtime's `Session::run`, from
/// the `compute_seconds` of the successful requests' stage timings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Overhead {
    /// Summed ONNX Runtime seconds of every stage call, per image.
    pub ort_seconds_per_image: f64,
    /// Summed request latencies (send to answer), per image.
    pub wall_seconds_per_image: f64,
    /// `wall_seconds_per_image / ort_seconds_per_image`: 1.0 would be no overhead at all. With
    /// one client it is the stack's own cost (gRPC hops, copies, sampler arithmetic, PNG
    /// encoding); with several, queueing and shared cores add to it.
    pub wall_over_ort: f64,
}

impl Overhead {
    /// The figures of `samples`; `None` when none succeeded or none reported compute.
    pub fn of(samples: &[Sample]) -> Option<Self> {
        let (mut ort, mut wall, mut images) = (0.0, 0.0, 0usize);
        for sample in samples {
            let Ok(response) = &sample.outcome else {
                continue;
            };
            ort += response
                .timings
                .iter()
                .map(|t| t.compute_seconds)
                .sum::<f64>();
            wall += sample.latency.as_secs_f64();
            images += response.images.len();
        }
        (images > 0 && ort > 0.0).then(|| Overhead {
            ort_seconds_per_image: ort / images as f64,
            wall_seconds_per_image: wall / images as f64,
            wall_over_ort: wall / ort,
        })
    }

    /// The table line.
    fn line(&self) -> String {
        format!(
            "compute     {:.4} s ONNX Runtime per image, {:.4} s wall per image, wall/ORT {:.3}",
            self.ort_seconds_per_image, self.wall_seconds_per_image, self.wall_over_ort
        )
    }
}

/// Nearest-rank percentile `q` (0..=1) of `sorted` (ascending, non-empty).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Report {
    /// The report of `samples`, measured over `wall`.
    pub fn new(
        model: String,
        samples: &[Sample],
        wall: Duration,
        concurrency: usize,
        num_images: u32,
    ) -> Self {
        let mut latencies = Vec::new();
        let mut images = 0;
        let mut stages: BTreeMap<String, StageFigures> = BTreeMap::new();
        let mut failures = samples.iter().filter_map(|s| s.outcome.as_ref().err());
        let first_failure = failures.next().cloned();
        for sample in samples {
            let Ok(response) = &sample.outcome else {
                continue;
            };
            latencies.push(sample.latency.as_secs_f64() * 1000.0);
            images += response.images.len();
            for timing in &response.timings {
                let figures = stages.entry(timing.stage.clone()).or_default();
                if timing.cached {
                    figures.cached += 1;
                } else {
                    // A running mean keeps the figures exact without a second pass.
                    figures.calls += 1;
                    figures.mean_seconds +=
                        (timing.seconds - figures.mean_seconds) / figures.calls as f64;
                }
            }
        }
        latencies.sort_by(f64::total_cmp);
        let latency_ms = (!latencies.is_empty()).then(|| Latency {
            mean: latencies.iter().sum::<f64>() / latencies.len() as f64,
            p50: percentile(&latencies, 0.5),
            p90: percentile(&latencies, 0.9),
            p99: percentile(&latencies, 0.99),
            max: latencies[latencies.len() - 1],
        });
        let wall_seconds = wall.as_secs_f64();
        Self {
            model,
            requests: samples.len(),
            failures: samples.len() - latencies.len(),
            first_failure,
            concurrency,
            num_images,
            images,
            wall_seconds,
            images_per_second: if wall_seconds > 0.0 {
                images as f64 / wall_seconds
            } else {
                0.0
            },
            latency_ms,
            stages,
            overhead: Overhead::of(samples),
        }
    }

    /// The report as a few lines for a terminal.
    pub fn table(&self) -> String {
        let mut lines = vec![
            format!(
                "model {}: {} requests of {} image(s), {} at a time",
                self.model, self.requests, self.num_images, self.concurrency
            ),
            format!(
                "throughput  {:.2} images/s ({} images in {:.2} s)",
                self.images_per_second, self.images, self.wall_seconds
            ),
        ];
        if let Some(l) = &self.latency_ms {
            lines.push(format!(
                "latency ms  mean {:.0}  p50 {:.0}  p90 {:.0}  p99 {:.0}  max {:.0}",
                l.mean, l.p50, l.p90, l.p99, l.max
            ));
        }
        if let Some(o) = &self.overhead {
            lines.push(o.line());
        }
        lines.push("stage calls (mean seconds per call; cache hits apart):".into());
        for (stage, f) in &self.stages {
            lines.push(format!(
                "  {stage:<22} {:>4} calls  {:>8.4} s   {} cached",
                f.calls, f.mean_seconds, f.cached
            ));
        }
        if self.failures > 0 {
            lines.push(format!(
                "FAILED {} of {} requests; first: {}",
                self.failures,
                self.requests,
                self.first_failure.as_deref().unwrap_or("?")
            ));
        }
        lines.join("\n")
    }
}

/// Request `i` of the run (warm-up requests come first, so measured ones never reuse their
/// seeds either; with --repeat-seed every request has --seed).
fn request(args: &BenchArgs, i: usize) -> GenerateRequest {
    let prompts: Vec<&str> = if args.prompt.is_empty() {
        DEFAULT_PROMPTS.to_vec()
    } else {
        args.prompt.iter().map(String::as_str).collect()
    };
    let num_images = args.num_images.unwrap_or(1);
    GenerateRequest {
        prompt: prompts[i % prompts.len()].to_string(),
        num_images: args.num_images,
        seed: Some(if args.repeat_seed {
            args.seed
        } else {
            args.seed.wrapping_add(i as u64 * u64::from(num_images))
        }),
        prior_steps: args.prior_steps,
        decoder: args.decoder.settings(),
        ..Default::default()
    }
}

/// Sends `count` requests numbered from `first` from `concurrency` clients sharing one
/// connection, each request with `timeout` as its deadline.
async fn send(
    client: &Gateway,
    args: &Arc<BenchArgs>,
    first: usize,
    count: usize,
    timeout: Duration,
) -> Result<Vec<Sample>, tokio::task::JoinError> {
    let next = Arc::new(AtomicUsize::new(0));
    let workers = (0..args.concurrency.max(1)).map(|_| {
        let (mut client, args, next) = (client.clone(), Arc::clone(args), Arc::clone(&next));
        tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return samples;
                }
                let started = Instant::now();
                let request = request(&args, first + i);
                let outcome = if args.stream {
                    streamed(&mut client, request, timeout).await
                } else {
                    client
                        .generate(with_deadline(request, timeout))
                        .await
                        .map(tonic::Response::into_inner)
                }
                .map_err(|status| format!("{}: {}", code_name(status.code()), status.message()));
                samples.push(Sample {
                    latency: started.elapsed(),
                    outcome,
                });
            }
        })
    });
    let mut samples = Vec::with_capacity(count);
    for worker in workers.collect::<Vec<_>>() {
        samples.extend(worker.await?);
    }
    Ok(samples)
}

/// `request` as GenerateStream with previews: every event read, the result returned.
async fn streamed(
    client: &mut Gateway,
    mut request: GenerateRequest,
    timeout: Duration,
) -> Result<ImagesResponse, tonic::Status> {
    request.previews = true;
    let mut events = client
        .generate_stream(with_deadline(request, timeout))
        .await?
        .into_inner();
    while let Some(event) = events.message().await? {
        if let Some(images_event::Event::Result(response)) = event.event {
            return Ok(response);
        }
    }
    Err(tonic::Status::unknown("the stream ended without a result"))
}

/// Runs the benchmark against the gateway behind `client` and prints the report. Fails (after
/// printing it) when any measured request failed.
pub async fn run(
    client: Gateway,
    args: BenchArgs,
    timeout: Duration,
    quiet: bool,
) -> anyhow::Result<()> {
    let args = Arc::new(args);
    let mut info_client = client.clone();
    let info = info_client
        .get_info(with_deadline(unclip_proto::v1::GetInfoRequest {}, timeout))
        .await
        .map_err(RpcError)?
        .into_inner();
    let model = info
        .model
        .map_or_else(|| "?".into(), |m| format!("{} {}", m.model_id, m.version));
    if args.open_loop.rate.is_some() {
        return open_loop::run(client, args, model, quiet).await;
    }
    if !quiet && !args.json {
        eprintln!(
            "{} warm-up, then {} measured requests, {} at a time ...",
            args.warmup, args.requests, args.concurrency
        );
    }
    let warmup = send(&client, &args, 0, args.warmup, timeout).await?;
    if let Some(failure) = warmup.iter().find_map(|s| s.outcome.as_ref().err()) {
        anyhow::bail!("a warm-up request failed: {failure}");
    }
    let started = Instant::now();
    let samples = send(&client, &args, args.warmup, args.requests, timeout).await?;
    let report = Report::new(
        model,
        &samples,
        started.elapsed(),
        args.concurrency,
        args.num_images.unwrap_or(1),
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.table());
    }
    if report.failures > 0 {
        anyhow::bail!("{} of {} requests failed", report.failures, report.requests);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use unclip_proto::v1::{GeneratedImage, StageTiming};

    fn timing(stage: &str, seconds: f64, cached: bool) -> StageTiming {
        StageTiming {
            stage: stage.into(),
            seconds,
            cached,
            replica: String::new(),
            compute_seconds: if cached { 0.0 } else { seconds / 2.0 },
        }
    }

    fn ok(ms: u64, timings: Vec<StageTiming>) -> Sample {
        Sample {
            latency: Duration::from_millis(ms),
            outcome: Ok(ImagesResponse {
                images: vec![GeneratedImage::default()],
                timings,
                ..Default::default()
            }),
        }
    }

    /// Percentiles by nearest rank, throughput over the wall time, stage means without the
    /// cache hits, failures counted and the first one kept.
    #[test]
    fn report_figures() {
        let mut samples: Vec<Sample> = (1..=10)
            .map(|k| ok(k * 100, vec![timing("prior.sample", k as f64, false)]))
            .collect();
        samples[0] = ok(100, vec![timing("prior.sample", 0.0, true)]);
        samples.push(Sample {
            latency: Duration::from_millis(5),
            outcome: Err("UNAVAILABLE: no replica".into()),
        });
        let report = Report::new("m v".into(), &samples, Duration::from_secs(2), 2, 1);
        assert_eq!(
            (report.requests, report.failures, report.images),
            (11, 1, 10)
        );
        assert_eq!(
            report.first_failure.as_deref(),
            Some("UNAVAILABLE: no replica")
        );
        assert!((report.images_per_second - 5.0).abs() < 1e-9);
        let l = report.latency_ms.unwrap();
        assert_eq!((l.p50, l.p90, l.p99, l.max), (500.0, 900.0, 1000.0, 1000.0));
        assert!((l.mean - 550.0).abs() < 1e-9);
        let prior = &report.stages["prior.sample"];
        assert_eq!((prior.calls, prior.cached), (9, 1));
        assert!((prior.mean_seconds - 6.0).abs() < 1e-9, "{prior:?}");
        // Compute is half of each stage call (2..=10 s, 54 in all) over 10 images; the
        // latencies add up to 5.5 s.
        let overhead = report.overhead.unwrap();
        assert!(
            (overhead.ort_seconds_per_image - 2.7).abs() < 1e-9,
            "{overhead:?}"
        );
        assert!(
            (overhead.wall_seconds_per_image - 0.55).abs() < 1e-9,
            "{overhead:?}"
        );
        assert!(
            (overhead.wall_over_ort - 5.5 / 27.0).abs() < 1e-9,
            "{overhead:?}"
        );
        let table = report.table();
        assert!(table.contains("throughput  5.00 images/s"), "{table}");
        assert!(
            table.contains("FAILED 1 of 11 requests; first: UNAVAILABLE"),
            "{table}"
        );
    }

    /// Seeds never repeat across requests (warm-up included); prompts go round.
    #[test]
    fn requests_use_fresh_seeds() {
        let args = BenchArgs {
            num_images: Some(3),
            seed: 10,
            ..BenchArgs::default()
        };
        let seeds: Vec<u64> = (0..4).map(|i| request(&args, i).seed.unwrap()).collect();
        assert_eq!(seeds, [10, 13, 16, 19]);
        assert_eq!(request(&args, 4).prompt, DEFAULT_PROMPTS[0]);
        assert_eq!(request(&args, 1).prompt, DEFAULT_PROMPTS[1]);
    }

    /// --repeat-seed sends --seed every time (the cache-hit path); prompts still go round.
    #[test]
    fn repeat_seed_repeats_the_seed() {
        let args = BenchArgs {
            num_images: Some(3),
            seed: 10,
            repeat_seed: true,
            ..BenchArgs::default()
        };
        let seeds: Vec<u64> = (0..4).map(|i| request(&args, i).seed.unwrap()).collect();
        assert_eq!(seeds, [10, 10, 10, 10]);
        assert_eq!(request(&args, 1).prompt, DEFAULT_PROMPTS[1]);
    }
}
