//! `unclip soak`: mixed traffic against a local stack for a fixed time, watching every process's
//! memory and open file descriptors.
//!
//! `--clients` clients each send, in turn, every kind of [`Traffic`]: Generate that the
//! embedding cache answers (a few fixed prompts and seeds) and that it cannot (a fresh seed
//! each time), Vary, Interpolate, TextDiff and Inpaint, a GenerateStream read to its end with
//! previews, one the client cancels after its first progress event, and bad requests (a blank
//! prompt, num_images 0, bytes that are no image, a PNG declaring 60000 × 60000). Every few
//! seconds the resident set size and the open file descriptors of every process of the stack
//! are read from `/proc`. The report counts requests by outcome (a bad request refused with
//! INVALID_ARGUMENT and a stream the client cancelled are expected; anything else that is not
//! OK is an unexpected failure), gives latency percentiles of the served requests, and per
//! process the RSS at the start, at the 2-minute mark, in the middle and at the end, and the
//! file descriptors at the start and the end.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use image::{ImageFormat, Rgb, RgbImage};
use tonic::Code;

use unclip_proto::v1::{
    DecoderSettings, GenerateRequest, InpaintRequest, InterpolateRequest, TextDiffRequest,
    VaryRequest, images_event,
};
use unclip_stack::{LocalStack, RedisMode};

use crate::Interrupted;
use crate::args::{ConnectArgs, GlobalArgs, SoakArgs};
use crate::bench::DEFAULT_PROMPTS;
use crate::client::{Gateway, code_name, connect, with_deadline};

/// The longest any one soak request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// When the "2-minute mark" is (the first moment after warm-up that RSS growth is measured
/// from).
pub const RSS_MARK: Duration = Duration::from_secs(120);

/// How a soak runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoakConfig {
    /// How long traffic is sent.
    pub duration: Duration,
    /// Clients sending at once.
    pub clients: usize,
    /// Time between two samples of every process's RSS and file descriptors.
    pub sample_every: Duration,
    /// Denoising steps of the prior, the decoder and each upsampler in every request (small,
    /// so that many requests pass through in the time).
    pub steps: u32,
}

impl Default for SoakConfig {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(600),
            clients: 4,
            sample_every: Duration::from_secs(5),
            steps: 4,
        }
    }
}

/// One kind of request of the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    /// Generate of a fixed prompt and seed: after its first time, both embeddings come from the
    /// cache.
    GenerateCached,
    /// Generate with a fresh seed: the prior runs (the text encoding is cached).
    GenerateFresh,
    /// Variations of an image.
    Vary,
    /// Three frames between two images.
    Interpolate,
    /// A three-frame text diff.
    TextDiff,
    /// Inpainting of the right half.
    Inpaint,
    /// GenerateStream with previews, read to its end.
    Stream,
    /// GenerateStream dropped by the client after its first progress event.
    StreamCancelled,
    /// A request that must be refused with INVALID_ARGUMENT.
    Bad,
}

impl Traffic {
    /// The mix, in the order each client sends it.
    pub const MIX: [Traffic; 10] = [
        Traffic::GenerateCached,
        Traffic::GenerateFresh,
        Traffic::Vary,
        Traffic::StreamCancelled,
        Traffic::Interpolate,
        Traffic::GenerateCached,
        Traffic::TextDiff,
        Traffic::Bad,
        Traffic::Inpaint,
        Traffic::Stream,
    ];

    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Traffic::GenerateCached => "generate (cached)",
            Traffic::GenerateFresh => "generate (fresh seed)",
            Traffic::Vary => "vary",
            Traffic::Interpolate => "interpolate",
            Traffic::TextDiff => "text diff",
            Traffic::Inpaint => "inpaint",
            Traffic::Stream => "generate stream",
            Traffic::StreamCancelled => "generate stream, cancelled",
            Traffic::Bad => "bad request",
        }
    }
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Served, or refused or cancelled as it should be; the label says which.
    Expected(&'static str),
    /// Anything else: the status code and message.
    Unexpected(Code, String),
}

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessSample {
    /// Since the traffic started.
    pub at: Duration,
    /// Resident set size in KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Open file descriptors.
    pub fds: u64,
}

/// The readings of one process of the stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSamples {
    /// The process, e.g. "decoder service [1]".
    pub name: String,
    /// Its id.
    pub pid: u32,
    /// Its readings in time order (the first before any traffic, the last after all of it).
    pub samples: Vec<ProcessSample>,
}

impl ProcessSamples {
    /// The reading nearest to `at`.
    pub fn at(&self, at: Duration) -> Option<ProcessSample> {
        self.samples
            .iter()
            .min_by_key(|s| s.at.abs_diff(at))
            .copied()
    }

    /// The first reading.
    pub fn first(&self) -> Option<ProcessSample> {
        self.samples.first().copied()
    }

    /// The last reading.
    pub fn last(&self) -> Option<ProcessSample> {
        self.samples.last().copied()
    }

    /// RSS growth from the 2-minute mark to the end, as a fraction (0.1 = 10 %); `None` for a
    /// run shorter than twice the mark (too little time after it to say).
    pub fn rss_growth(&self, duration: Duration) -> Option<f64> {
        if duration < RSS_MARK * 2 {
            return None;
        }
        let (mark, end) = (self.at(RSS_MARK)?, self.last()?);
        Some((end.rss_kib as f64 - mark.rss_kib as f64) / mark.rss_kib.max(1) as f64)
    }

    /// Whether the open file descriptors stayed flat: at the end no more than at the start
    /// plus `slack`, and never more than twice the start plus `slack` in between.
    pub fn fds_flat(&self, slack: u64) -> bool {
        match (self.first(), self.last()) {
            (Some(first), Some(last)) => {
                last.fds <= first.fds + slack
                    && self.samples.iter().all(|s| s.fds <= 2 * first.fds + slack)
            }
            _ => false,
        }
    }
}

/// What a soak saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SoakReport {
    /// How long the traffic ran.
    pub duration: Duration,
    /// Requests by kind and outcome, e.g. "vary: ok" → 12.
    pub outcomes: BTreeMap<String, u64>,
    /// Requests that ended in an unexpected way.
    pub unexpected: u64,
    /// The first few unexpected failures, as `kind: CODE: message`.
    pub failures: Vec<String>,
    /// Milliseconds of every served request (cancelled streams and bad requests left out).
    pub latencies_ms: Vec<f64>,
    /// Every process of the stack.
    pub processes: Vec<ProcessSamples>,
}

/// File descriptors a process may hold at the end beyond its count at the start (a pooled
/// connection opened late, a log file rotated) without counting as a leak.
pub const FD_SLACK: u64 = 8;

/// The RSS growth from the 2-minute mark to the end that a long soak may show.
pub const MAX_RSS_GROWTH: f64 = 0.10;

impl SoakReport {
    /// The `p`-th latency percentile (nearest rank) in milliseconds.
    pub fn percentile(&self, p: f64) -> Option<f64> {
        let mut sorted = self.latencies_ms.clone();
        sorted.sort_by(f64::total_cmp);
        if sorted.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        Some(sorted[rank.clamp(1, sorted.len()) - 1])
    }

    /// Requests sent in all.
    pub fn requests(&self) -> u64 {
        self.outcomes.values().sum()
    }

    /// What is wrong with the run, if anything: unexpected failures, a process whose file
    /// descriptors grew, or (runs of at least 4 minutes) RSS growth over 10 % after the
    /// 2-minute mark.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.unexpected > 0 {
            problems.push(format!("{} unexpected failures", self.unexpected));
        }
        for p in &self.processes {
            if !p.fds_flat(FD_SLACK) {
                problems.push(format!("{}: open file descriptors grew", p.name));
            }
            if let Some(growth) = p.rss_growth(self.duration)
                && growth > MAX_RSS_GROWTH
            {
                problems.push(format!(
                    "{}: RSS grew {:.1} % after the 2-minute mark",
                    p.name,
                    growth * 100.0
                ));
            }
        }
        problems
    }

    /// The report as a text table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "soak: {:.0} s, {} requests, {} unexpected failures",
            self.duration.as_secs_f64(),
            self.requests(),
            self.unexpected
        );
        let _ = writeln!(out, "\n{:<52} {:>8}", "requests by outcome", "count");
        for (outcome, count) in &self.outcomes {
            let _ = writeln!(out, "{outcome:<52} {count:>8}");
        }
        let ms = |p| {
            self.percentile(p)
                .map_or("-".into(), |v| format!("{v:.0} ms"))
        };
        let _ = writeln!(
            out,
            "\nlatency of served requests: p50 {}, p99 {}",
            ms(50.0),
            ms(99.0)
        );
        let mid = self.duration / 2;
        let _ = writeln!(
            out,
            "\n{:<22} {:>7} {:>10} {:>10} {:>10} {:>10} {:>7} {:>5} {:>5} {:>5}",
            "process (RSS in MiB)",
            "pid",
            "start",
            "2 min",
            "middle",
            "end",
            "growth",
            "FDs",
            "end",
            "max"
        );
        let mib = |s: Option<ProcessSample>| {
            s.map_or("-".into(), |s| format!("{:.1}", s.rss_kib as f64 / 1024.0))
        };
        for p in &self.processes {
            let mark = if self.duration >= RSS_MARK {
                mib(p.at(RSS_MARK))
            } else {
                "-".into()
            };
            let growth = p
                .rss_growth(self.duration)
                .map_or("-".into(), |g| format!("{:+.1}%", g * 100.0));
            let max_fds = p.samples.iter().map(|s| s.fds).max().unwrap_or(0);
            let _ = writeln!(
                out,
                "{:<22} {:>7} {:>10} {:>10} {:>10} {:>10} {:>7} {:>5} {:>5} {:>5}",
                p.name,
                p.pid,
                mib(p.first()),
                mark,
                mib(p.at(mid)),
                mib(p.last()),
                growth,
                p.first().map_or(0, |s| s.fds),
                p.last().map_or(0, |s| s.fds),
                max_fds
            );
        }
        for failure in &self.failures {
            let _ = writeln!(out, "unexpected: {failure}");
        }
        out
    }
}

/// The images the requests send.
#[derive(Debug, Clone)]
struct Inputs {
    /// A red circle on white, 64 × 64.
    circle: Bytes,
    /// A blue square on black, 64 × 64.
    square: Bytes,
    /// The right half white: regenerate it.
    mask: Bytes,
    /// A PNG header declaring 60000 × 60000.
    huge: Bytes,
}

fn png(image: &RgbImage) -> Bytes {
    let mut out = Cursor::new(Vec::new());
    image
        .write_to(&mut out, ImageFormat::Png)
        .expect("encoding a PNG in memory");
    out.into_inner().into()
}

impl Inputs {
    fn new() -> Self {
        let circle = RgbImage::from_fn(64, 64, |x, y| {
            let (dx, dy) = (x as i32 - 16, y as i32 - 16);
            if dx * dx + dy * dy < 100 {
                Rgb([220, 20, 20])
            } else {
                Rgb([255, 255, 255])
            }
        });
        let square = RgbImage::from_fn(64, 64, |x, y| {
            if (16..48).contains(&x) && (16..48).contains(&y) {
                Rgb([20, 20, 220])
            } else {
                Rgb([0, 0, 0])
            }
        });
        let mask = RgbImage::from_fn(64, 64, |x, _| {
            if x >= 32 {
                Rgb([255, 255, 255])
            } else {
                Rgb([0, 0, 0])
            }
        });
        // A valid 1 x 1 PNG with its IHDR rewritten to 60000 x 60000 (the CRC left stale:
        // refused either way, and before any pixel is decoded).
        let mut huge = png(&RgbImage::new(1, 1)).to_vec();
        huge[16..20].copy_from_slice(&60000u32.to_be_bytes());
        huge[20..24].copy_from_slice(&60000u32.to_be_bytes());
        Self {
            circle: png(&circle),
            square: png(&square),
            mask: png(&mask),
            huge: huge.into(),
        }
    }
}

/// What every client shares.
struct Shared {
    inputs: Inputs,
    config: SoakConfig,
    report: Mutex<SoakReport>,
}

/// `unclip soak`: starts the stack, soaks it, stops it, prints the report; an error when the
/// report finds a problem.
pub async fn run(global: &GlobalArgs, args: &SoakArgs) -> anyhow::Result<()> {
    let Some(model) = args.model.as_ref().or(global.local.as_ref()) else {
        anyhow::bail!(
            "--model is needed: the model repository the services load (e.g. models/shapes)"
        );
    };
    let redis = if global.redis {
        RedisMode::Required
    } else {
        RedisMode::Off
    };
    let config = crate::stack::config(global, model, args.replicas, redis, vec![])?;
    let stack = crate::stack::start(config, global.quiet).await?;
    let soak_config = SoakConfig {
        duration: Duration::from_secs_f64(args.minutes * 60.0),
        clients: args.clients,
        sample_every: Duration::from_secs(args.sample_secs),
        steps: args.steps,
    };
    if !global.quiet {
        eprintln!(
            "soaking {} ({} clients, replicas {}) for {:.1} min ...",
            stack.gateway_url().unwrap_or_default(),
            args.clients,
            args.replicas,
            args.minutes
        );
    }
    let result = tokio::select! {
        report = soak(&stack, soak_config) => report,
        () = unclip_server::shutdown_signal() => Err(Interrupted.into()),
    };
    crate::stack::stop(stack).await?;
    let report = result?;
    print!("{}", report.table());
    let problems = report.problems();
    if !problems.is_empty() {
        anyhow::bail!("the soak failed: {}", problems.join("; "));
    }
    println!("soak passed");
    Ok(())
}

/// Runs the soak against `stack`'s gateway and reports.
pub async fn soak(stack: &LocalStack, config: SoakConfig) -> anyhow::Result<SoakReport> {
    let url = stack
        .gateway_url()
        .ok_or_else(|| anyhow::anyhow!("the stack runs no gateway"))?;
    let processes = stack.processes();
    let shared = Arc::new(Shared {
        inputs: Inputs::new(),
        config,
        report: Mutex::new(SoakReport {
            processes: processes
                .iter()
                .map(|(process, pid)| ProcessSamples {
                    name: process.to_string(),
                    pid: *pid,
                    samples: Vec::new(),
                })
                .collect(),
            ..Default::default()
        }),
    });
    let started = Instant::now();
    let end = started + config.duration;
    sample(&shared, started);

    let sampler = {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(shared.config.sample_every);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                if Instant::now() >= end {
                    break;
                }
                sample(&shared, started);
            }
        })
    };
    let mut clients = Vec::with_capacity(config.clients);
    for client in 0..config.clients {
        let gateway = connect(&url, &ConnectArgs::default()).await?;
        let shared = Arc::clone(&shared);
        clients.push(tokio::spawn(async move {
            run_client(gateway, client, &shared, end).await;
        }));
    }
    for client in clients {
        client.await?;
    }
    sampler.abort();
    sample(&shared, started);
    let mut report = shared
        .report
        .lock()
        .expect("the report lock is never poisoned")
        .clone();
    report.duration = started.elapsed();
    Ok(report)
}

/// Reads every process's RSS and file descriptors now.
fn sample(shared: &Shared, started: Instant) {
    let at = started.elapsed();
    let mut report = shared.report.lock().expect("not poisoned");
    for process in &mut report.processes {
        if let Some((rss_kib, fds)) = read_proc(process.pid) {
            process.samples.push(ProcessSample { at, rss_kib, fds });
        }
    }
}

/// `VmRSS` in KiB and the open file descriptors of `pid`, from `/proc`.
pub fn read_proc(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss, fds))
}

/// One client: the mix in turn until `end`.
async fn run_client(mut gateway: Gateway, client: usize, shared: &Shared, end: Instant) {
    let mut i = 0usize;
    while Instant::now() < end {
        let kind = Traffic::MIX[(i + client) % Traffic::MIX.len()];
        // Distinct per client and request, so fresh seeds never repeat.
        let n = (client as u64) << 32 | i as u64;
        let started = Instant::now();
        let outcome = send(&mut gateway, kind, n, shared).await;
        let elapsed = started.elapsed();
        let mut report = shared.report.lock().expect("not poisoned");
        match outcome {
            Outcome::Expected(label) => {
                *report
                    .outcomes
                    .entry(format!("{}: {label}", kind.name()))
                    .or_default() += 1;
                if label == "ok" {
                    report.latencies_ms.push(elapsed.as_secs_f64() * 1000.0);
                }
            }
            Outcome::Unexpected(code, message) => {
                *report
                    .outcomes
                    .entry(format!("{}: {} (unexpected)", kind.name(), code_name(code)))
                    .or_default() += 1;
                report.unexpected += 1;
                if report.failures.len() < 10 {
                    report.failures.push(format!(
                        "{}: {}: {message}",
                        kind.name(),
                        code_name(code)
                    ));
                }
            }
        }
        i += 1;
    }
}

/// OK, or an unexpected failure.
fn served<T>(result: Result<T, tonic::Status>) -> Outcome {
    match result {
        Ok(_) => Outcome::Expected("ok"),
        Err(status) => Outcome::Unexpected(status.code(), status.message().to_string()),
    }
}

/// `message` with the soak's deadline.
fn timed<T>(message: T) -> tonic::Request<T> {
    with_deadline(message, REQUEST_TIMEOUT)
}

/// Sends one request of `kind` (`n` numbers it) and says how it ended.
async fn send(gateway: &mut Gateway, kind: Traffic, n: u64, shared: &Shared) -> Outcome {
    let inputs = &shared.inputs;
    let steps = shared.config.steps;
    let decoder = Some(DecoderSettings {
        decoder_steps: Some(steps),
        upsampler_steps: Some(steps),
        decoder_guidance_scale: None,
    });
    let prompt = DEFAULT_PROMPTS[(n % DEFAULT_PROMPTS.len() as u64) as usize].to_string();
    let generate = |seed: u64| GenerateRequest {
        prompt: prompt.clone(),
        seed: Some(seed),
        prior_steps: Some(steps),
        decoder,
        ..Default::default()
    };
    match kind {
        Traffic::GenerateCached => served(gateway.generate(timed(generate(n % 3))).await),
        Traffic::GenerateFresh => served(gateway.generate(timed(generate(1000 + n))).await),
        Traffic::Vary => {
            let request = VaryRequest {
                image: if n.is_multiple_of(2) {
                    inputs.circle.clone()
                } else {
                    inputs.square.clone()
                },
                seed: Some(n),
                decoder,
                ..Default::default()
            };
            served(gateway.vary(timed(request)).await)
        }
        Traffic::Interpolate => {
            let request = InterpolateRequest {
                image_a: inputs.circle.clone(),
                image_b: inputs.square.clone(),
                frames: Some(3),
                seed: Some(n),
                decoder,
                ..Default::default()
            };
            served(gateway.interpolate(timed(request)).await)
        }
        Traffic::TextDiff => {
            let request = TextDiffRequest {
                image: inputs.circle.clone(),
                source_caption: DEFAULT_PROMPTS[0].into(),
                target_caption: DEFAULT_PROMPTS[1].into(),
                frames: Some(3),
                seed: Some(n),
                decoder,
                ..Default::default()
            };
            served(gateway.text_diff(timed(request)).await)
        }
        Traffic::Inpaint => {
            let request = InpaintRequest {
                image: inputs.circle.clone(),
                mask: inputs.mask.clone(),
                prompt: prompt.clone(),
                seed: Some(n),
                prior_steps: Some(steps),
                decoder,
                ..Default::default()
            };
            served(gateway.inpaint(timed(request)).await)
        }
        Traffic::Stream | Traffic::StreamCancelled => {
            let request = GenerateRequest {
                previews: true,
                ..generate(2000 + n)
            };
            let mut stream = match gateway.generate_stream(timed(request)).await {
                Ok(response) => response.into_inner(),
                Err(status) => return served(Err::<(), _>(status)),
            };
            loop {
                match stream.message().await {
                    Ok(Some(event)) => {
                        let progress =
                            matches!(event.event, Some(images_event::Event::Progress(_)));
                        if kind == Traffic::StreamCancelled && progress {
                            // Dropping the stream cancels the call.
                            return Outcome::Expected("cancelled by the client");
                        }
                    }
                    Ok(None) => return Outcome::Expected("ok"),
                    Err(status) => return served(Err::<(), _>(status)),
                }
            }
        }
        Traffic::Bad => {
            let result = match n % 4 {
                0 => gateway
                    .generate(timed(GenerateRequest {
                        prompt: "\u{200b}\u{7}".into(),
                        ..generate(n)
                    }))
                    .await
                    .map(|_| ()),
                1 => gateway
                    .generate(timed(GenerateRequest {
                        num_images: Some(0),
                        ..generate(n)
                    }))
                    .await
                    .map(|_| ()),
                2 => gateway
                    .vary(timed(VaryRequest {
                        image: Bytes::from_static(b"not an image"),
                        ..Default::default()
                    }))
                    .await
                    .map(|_| ()),
                _ => gateway
                    .inpaint(timed(InpaintRequest {
                        image: inputs.circle.clone(),
                        mask: inputs.huge.clone(),
                        prompt: prompt.clone(),
                        ..Default::default()
                    }))
                    .await
                    .map(|_| ()),
            };
            match result {
                Err(status) if status.code() == Code::InvalidArgument => {
                    Outcome::Expected("refused (INVALID_ARGUMENT)")
                }
                Ok(()) => Outcome::Unexpected(Code::Ok, "a bad request was served".into()),
                Err(status) => Outcome::Unexpected(status.code(), status.message().to_string()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(rss: &[u64], fds: &[u64], every: u64) -> ProcessSamples {
        ProcessSamples {
            name: "p".into(),
            pid: 1,
            samples: rss
                .iter()
                .zip(fds)
                .enumerate()
                .map(|(i, (&rss_kib, &fds))| ProcessSample {
                    at: Duration::from_secs(i as u64 * every),
                    rss_kib,
                    fds,
                })
                .collect(),
        }
    }

    /// Growth is measured from the sample nearest the 2-minute mark to the last one, only on
    /// runs long enough; file descriptors may not grow past the slack.
    #[test]
    fn growth_and_flatness() {
        // A sample a minute: 0, 60, 120, 180, 240 s.
        let p = samples(&[100, 500, 1000, 1050, 1100], &[10, 12, 12, 12, 11], 60);
        assert_eq!(p.at(RSS_MARK).unwrap().rss_kib, 1000);
        let growth = p.rss_growth(Duration::from_secs(240)).unwrap();
        assert!((growth - 0.1).abs() < 1e-9, "{growth}");
        assert_eq!(p.rss_growth(Duration::from_secs(200)), None);
        assert!(p.fds_flat(FD_SLACK));
        let leaking = samples(&[1, 1, 1], &[10, 30, 50], 60);
        assert!(!leaking.fds_flat(FD_SLACK));
    }

    /// Nearest-rank percentiles, and a report's problems.
    #[test]
    fn percentiles_and_problems() {
        let mut report = SoakReport {
            duration: Duration::from_secs(60),
            latencies_ms: (1..=100).map(f64::from).collect(),
            ..Default::default()
        };
        assert_eq!(report.percentile(50.0), Some(50.0));
        assert_eq!(report.percentile(99.0), Some(99.0));
        assert!(report.problems().is_empty());
        report.unexpected = 2;
        report.processes.push(samples(&[1, 1], &[10, 40], 5));
        assert_eq!(report.problems().len(), 2, "{:?}", report.problems());
        assert!(report.table().contains("2 unexpected failures"));
    }

    /// The process reader sees this process.
    #[test]
    fn reads_proc() {
        let (rss, fds) = read_proc(std::process::id()).expect("/proc of this process");
        assert!(rss > 0 && fds >= 3, "{rss} {fds}");
    }
}
