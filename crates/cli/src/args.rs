//! The command line: global flags (which gateway, or a local stack just for this command) and one
//! subcommand per gateway capability, plus `stack`, `info` and `stats`.
//!
//! Values the gateway checks (image counts, steps, guidance, frames) are passed through as given,
//! so its INVALID_ARGUMENT message, which names the field and the limit, is the one the user sees.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use unclip_proto::v1::{
    DecoderSettings, GenerateRequest, InpaintRequest, InterpolateRequest, TextDiffRequest,
    VariationMode, VaryRequest,
};
use unclip_stack::StageReplicas;

/// Where the gateway is by default.
pub const DEFAULT_GATEWAY: &str = "http://127.0.0.1:50050";

/// unclip: text-to-image, variations, interpolations, text diffs and inpainting with unCLIP,
/// through its gateway.
#[derive(Debug, Parser)]
#[command(name = "unclip", version)]
pub struct Cli {
    /// Flags of every subcommand.
    #[command(flatten)]
    pub global: GlobalArgs,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand takes (before or after its name).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// URL of the gateway to call (ignored with --local).
    #[arg(long, env = "UNCLIP_GATEWAY", default_value = DEFAULT_GATEWAY, global = true)]
    pub gateway: String,

    /// Start the stage services and the gateway locally on this model repository (e.g.
    /// models/shapes) just for this command, and stop them after it.
    #[arg(
        long,
        env = "UNCLIP_LOCAL_MODEL",
        value_name = "MODEL_DIR",
        global = true
    )]
    pub local: Option<PathBuf>,

    /// Run Redis for the gateway's embedding cache: with --local if redis-server is installed
    /// (else a warning); with `stack`, required.
    #[arg(long, global = true)]
    pub redis: bool,

    /// No progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long, short, global = true)]
    pub quiet: bool,

    /// Also print the model and the time of every stage call.
    #[arg(long, short, global = true)]
    pub verbose: bool,

    /// Also write each stage's images before the last as they arrive, next to --out: the
    /// decoder's as STEM.decoder.png (STEM.decoder-K.png for several), then STEM.upsampler0.png...
    #[arg(long, global = true)]
    pub previews: bool,

    /// Deadline of the call in seconds; the gateway stops its stage work when it passes.
    #[arg(
        long,
        env = "UNCLIP_TIMEOUT_SECS",
        default_value_t = 600,
        value_name = "SECS",
        global = true,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub timeout: u64,

    /// How local services run (--local and `stack`).
    #[command(flatten)]
    pub services: ServiceArgs,

    /// TLS and the API key towards the gateway.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// How the command reaches a remote gateway: TLS and the API key.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Connecting (TLS, API key)")]
pub struct ConnectArgs {
    /// Connect with TLS, trusting the CA certificate(s) in this PEM file (the gateway's
    /// `--tls-cert` must chain to it and name the host of --gateway).
    #[arg(long, env = "UNCLIP_CA", value_name = "FILE", global = true)]
    pub ca: Option<PathBuf>,

    /// A client certificate (PEM) for a gateway that requires mutual TLS; needs --key and --ca.
    #[arg(long, env = "UNCLIP_CLIENT_CERT", value_name = "FILE", global = true, requires_all = ["key", "ca"])]
    pub cert: Option<PathBuf>,

    /// The private key of --cert (PEM).
    #[arg(
        long,
        env = "UNCLIP_CLIENT_KEY",
        value_name = "FILE",
        global = true,
        requires = "cert"
    )]
    pub key: Option<PathBuf>,

    /// The API key, sent as `authorization: Bearer KEY` (a gateway with --api-keys needs it).
    #[arg(
        long,
        env = "UNCLIP_API_KEY",
        value_name = "KEY",
        global = true,
        hide_env_values = true
    )]
    pub api_key: Option<String>,
}

/// How the local services of --local and `stack` run.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Local services (--local, stack)")]
pub struct ServiceArgs {
    /// ONNX Runtime library for local services (libonnxruntime.so.1.N, N >= 31).
    #[arg(long, env = "UNCLIP_ORT_LIBRARY", global = true)]
    pub ort_library: Option<PathBuf>,

    /// Folder holding the service binaries (default: the folder of this executable).
    #[arg(long, env = "UNCLIP_BIN_DIR", global = true)]
    pub bin_dir: Option<PathBuf>,

    /// ONNX Runtime intra-op threads per graph in each local stage service (default: the
    /// services').
    #[arg(long, env = "UNCLIP_INTRA_THREADS", global = true)]
    pub intra_threads: Option<usize>,

    /// Seconds local services may take to load and warm up.
    #[arg(
        long,
        env = "UNCLIP_STARTUP_TIMEOUT_SECS",
        default_value_t = 120,
        value_name = "SECS",
        global = true
    )]
    pub startup_timeout: u64,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Text to image: CLIP text encoding → prior → decoder → upsamplers.
    Generate(GenerateArgs),
    /// Variations of an image (fresh noise, or --anchored to its DDIM-inverted noise).
    Vary(VaryArgs),
    /// Frames between two images (a slerp of their CLIP image embeddings).
    Interpolate(InterpolateArgs),
    /// A text diff: an image moved towards a target caption, frame by frame, plus an animated
    /// PNG of the frames.
    Diff(DiffArgs),
    /// Regenerate the masked part of an image from a prompt.
    Inpaint(InpaintArgs),
    /// Run the stage services, the gateway (and Redis) locally until Ctrl-C or SIGTERM.
    Stack(StackArgs),
    /// The gateway's model, limits and stage replicas.
    Info,
    /// The gateway's counters: calls per replica, cache hits and misses, requests.
    Stats,
    /// A load test of Generate: throughput, latency percentiles and the mean time of every
    /// kind of stage call.
    Bench(BenchArgs),
    /// API keys for a gateway's --api-keys file.
    #[command(subcommand)]
    ApiKey(ApiKeyCommand),

    /// A soak test: a local stack (2 replicas per stage) under mixed traffic for --minutes,
    /// with every process's memory and open files sampled; fails on unexpected errors, growing
    /// file descriptors or (runs of 4 minutes or more) RSS growth over 10 % after 2 minutes.
    Soak(SoakArgs),
}

/// `unclip api-key ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum ApiKeyCommand {
    /// Print a fresh random key (give it to the caller) and its line for the gateway's
    /// --api-keys file (which holds only the key's SHA-256).
    New(NewKeyArgs),
}

/// `unclip api-key new NAME`.
#[derive(Debug, Clone, Args)]
pub struct NewKeyArgs {
    /// The key's name: how logs and `/metrics` call it (letters, digits, `-`, `_`, `.`).
    pub name: String,

    /// Most requests of this key in flight at once.
    #[arg(long)]
    pub max_concurrent: Option<u32>,

    /// Most images this key may make per minute (a token bucket).
    #[arg(long)]
    pub images_per_minute: Option<u32>,
}

/// Decoder and upsampler settings (unset: the model's defaults).
#[derive(Debug, Clone, Default, Args)]
pub struct DecoderArgs {
    /// Decoder denoising steps.
    #[arg(long)]
    pub decoder_steps: Option<u32>,

    /// Steps of each upsampler stage.
    #[arg(long)]
    pub upsampler_steps: Option<u32>,

    /// Decoder classifier-free guidance scale (<= 1 disables guidance).
    #[arg(long)]
    pub decoder_guidance: Option<f32>,
}

impl DecoderArgs {
    /// The request's `decoder` field.
    pub fn settings(&self) -> Option<DecoderSettings> {
        Some(DecoderSettings {
            decoder_steps: self.decoder_steps,
            upsampler_steps: self.upsampler_steps,
            decoder_guidance_scale: self.decoder_guidance,
        })
    }
}

/// The flags of `generate`.
#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// The caption to draw.
    pub prompt: String,

    /// How many images (image k is drawn from seed + k).
    #[arg(long, short = 'n')]
    pub num_images: Option<u32>,

    /// Base seed (default: a random one, printed).
    #[arg(long)]
    pub seed: Option<u64>,

    /// Prior denoising steps.
    #[arg(long)]
    pub prior_steps: Option<u32>,

    /// Prior classifier-free guidance scale.
    #[arg(long)]
    pub prior_guidance: Option<f32>,

    /// Decoder and upsampler settings.
    #[command(flatten)]
    pub decoder: DecoderArgs,

    /// Best-of-k reranking of prior samples against the prompt (0 or 1: off).
    #[arg(long)]
    pub best_of: Option<u32>,

    /// A negative prompt for the prior's unconditional branch.
    #[arg(long, default_value = "")]
    pub negative: String,

    /// Output PNG; several images go to STEM-0.png, STEM-1.png, ... next to it.
    #[arg(long, short, default_value = "out.png")]
    pub out: PathBuf,
}

impl GenerateArgs {
    /// The gateway request.
    pub fn request(&self) -> GenerateRequest {
        GenerateRequest {
            prompt: self.prompt.clone(),
            num_images: self.num_images,
            seed: self.seed,
            prior_steps: self.prior_steps,
            prior_guidance_scale: self.prior_guidance,
            decoder: self.decoder.settings(),
            best_of: self.best_of,
            negative_prompt: self.negative.clone(),
            previews: false,
        }
    }
}

/// The flags of `vary`.
#[derive(Debug, Clone, Args)]
pub struct VaryArgs {
    /// The image (PNG, JPEG or WebP).
    pub image: PathBuf,

    /// How many variations (variation k is drawn from seed + k).
    #[arg(long, short = 'n')]
    pub num_images: Option<u32>,

    /// Base seed (default: a random one, printed).
    #[arg(long)]
    pub seed: Option<u64>,

    /// Start from the image's DDIM-inverted noise (the paper's variations) instead of fresh
    /// noise, so the variations keep its layout.
    #[arg(long)]
    pub anchored: bool,

    /// With --anchored: DDIM stochasticity in 0..=1 (0 reconstructs the image; default 0.8).
    #[arg(long)]
    pub eta: Option<f32>,

    /// Decoder and upsampler settings.
    #[command(flatten)]
    pub decoder: DecoderArgs,

    /// Output PNG; several images go to STEM-0.png, STEM-1.png, ... next to it.
    #[arg(long, short, default_value = "variation.png")]
    pub out: PathBuf,
}

impl VaryArgs {
    /// The gateway request for the image's bytes.
    pub fn request(&self, image: bytes::Bytes) -> VaryRequest {
        let mode = if self.anchored {
            VariationMode::Anchored
        } else {
            VariationMode::Fresh
        };
        VaryRequest {
            image,
            num_images: self.num_images,
            seed: self.seed,
            mode: mode as i32,
            eta: self.eta,
            decoder: self.decoder.settings(),
            previews: false,
        }
    }
}

/// The flags of `interpolate`.
#[derive(Debug, Clone, Args)]
pub struct InterpolateArgs {
    /// The first image (theta = 0).
    pub image_a: PathBuf,

    /// The last image (theta = 1).
    pub image_b: PathBuf,

    /// Frames, at theta = i / (frames - 1) (default 5).
    #[arg(long)]
    pub frames: Option<u32>,

    /// Seed of the noise every frame is decoded from (default: a random one, printed).
    #[arg(long)]
    pub seed: Option<u64>,

    /// Decoder and upsampler settings.
    #[command(flatten)]
    pub decoder: DecoderArgs,

    /// Output PNG; the frames go to STEM-0.png, STEM-1.png, ... next to it.
    #[arg(long, short, default_value = "frames.png")]
    pub out: PathBuf,
}

impl InterpolateArgs {
    /// The gateway request for the two images' bytes.
    pub fn request(&self, image_a: bytes::Bytes, image_b: bytes::Bytes) -> InterpolateRequest {
        InterpolateRequest {
            image_a,
            image_b,
            frames: self.frames,
            seed: self.seed,
            decoder: self.decoder.settings(),
            previews: false,
        }
    }
}

/// The flags of `diff`.
#[derive(Debug, Clone, Args)]
pub struct DiffArgs {
    /// The image to edit.
    pub image: PathBuf,

    /// A caption of the image as it is.
    #[arg(long)]
    pub from: String,

    /// The caption it should move towards.
    #[arg(long)]
    pub to: String,

    /// Frames, at theta = max_theta * i / (frames - 1) (default 5).
    #[arg(long)]
    pub frames: Option<u32>,

    /// The last frame's theta, in [0, 1] (default 0.5).
    #[arg(long)]
    pub max_theta: Option<f32>,

    /// Seed of the upsamplers' noise (default: a random one, printed).
    #[arg(long)]
    pub seed: Option<u64>,

    /// Milliseconds each frame of the animation shows (default 250).
    #[arg(long)]
    pub frame_delay_ms: Option<u32>,

    /// Decoder and upsampler settings.
    #[command(flatten)]
    pub decoder: DecoderArgs,

    /// Output PNG; the frames go to STEM-0.png, STEM-1.png, ... and the animation to STEM.apng
    /// next to it.
    #[arg(long, short, default_value = "diff.png")]
    pub out: PathBuf,
}

impl DiffArgs {
    /// The gateway request for the image's bytes.
    pub fn request(&self, image: bytes::Bytes) -> TextDiffRequest {
        TextDiffRequest {
            image,
            source_caption: self.from.clone(),
            target_caption: self.to.clone(),
            frames: self.frames,
            max_theta: self.max_theta,
            seed: self.seed,
            decoder: self.decoder.settings(),
            frame_delay_ms: self.frame_delay_ms,
            previews: false,
        }
    }
}

/// The flags of `inpaint`.
#[derive(Debug, Clone, Args)]
pub struct InpaintArgs {
    /// The image.
    pub image: PathBuf,

    /// The mask, as large as the image: transparent pixels (with alpha) or white pixels
    /// (without) are regenerated, the rest is kept.
    pub mask: PathBuf,

    /// What to draw in the masked part.
    pub prompt: String,

    /// How many images (image k is drawn from seed + k).
    #[arg(long, short = 'n')]
    pub num_images: Option<u32>,

    /// Base seed (default: a random one, printed).
    #[arg(long)]
    pub seed: Option<u64>,

    /// Prior denoising steps.
    #[arg(long)]
    pub prior_steps: Option<u32>,

    /// Prior classifier-free guidance scale.
    #[arg(long)]
    pub prior_guidance: Option<f32>,

    /// Decoder and upsampler settings.
    #[command(flatten)]
    pub decoder: DecoderArgs,

    /// Output PNG; several images go to STEM-0.png, STEM-1.png, ... next to it.
    #[arg(long, short, default_value = "inpaint.png")]
    pub out: PathBuf,
}

impl InpaintArgs {
    /// The gateway request for the image's and the mask's bytes.
    pub fn request(&self, image: bytes::Bytes, mask: bytes::Bytes) -> InpaintRequest {
        InpaintRequest {
            image,
            mask,
            prompt: self.prompt.clone(),
            num_images: self.num_images,
            seed: self.seed,
            prior_steps: self.prior_steps,
            prior_guidance_scale: self.prior_guidance,
            decoder: self.decoder.settings(),
            previews: false,
        }
    }
}

/// The flags of `bench`.
#[derive(Debug, Clone, Default, Args)]
pub struct BenchArgs {
    /// Measured requests.
    #[arg(long, default_value_t = 20, value_parser = at_least_one)]
    pub requests: usize,

    /// Requests sent first and not counted (they load the sessions and the prompts' text
    /// encodings).
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,

    /// Clients sending requests at once.
    #[arg(long, short, default_value_t = 1, value_parser = at_least_one)]
    pub concurrency: usize,

    /// A caption to send (repeat for several, sent in turn; default: four captions of the
    /// shapes model).
    #[arg(long)]
    pub prompt: Vec<String>,

    /// Images per request.
    #[arg(long, short = 'n')]
    pub num_images: Option<u32>,

    /// Seed of the first request; request i uses seed + i × images per request, so no two
    /// share a prior sample.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Every request uses --seed itself instead: with one --prompt, repeats of one request,
    /// whose text encoding and prior sample the gateway's cache holds after the first, so only
    /// the decoder runs (the cache-hit path).
    #[arg(long)]
    pub repeat_seed: bool,

    /// Prior denoising steps.
    #[arg(long)]
    pub prior_steps: Option<u32>,

    /// Decoder and upsampler settings.
    #[command(flatten)]
    pub decoder: DecoderArgs,

    /// Send GenerateStream with previews instead of Generate, reading every progress and
    /// preview event to the result (what streaming costs the stack, measured by a client that
    /// adds little of its own). Closed loop only.
    #[arg(long, conflicts_with = "rate")]
    pub stream: bool,

    /// Print the report as one JSON object (for scripts).
    #[arg(long)]
    pub json: bool,

    /// Open-loop load (`--rate`) instead of a fixed number of closed-loop clients.
    #[command(flatten)]
    pub open_loop: OpenLoopArgs,
}

/// The flags of `bench --rate`: an open-loop load with Poisson arrivals.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Open loop (bench --rate)")]
pub struct OpenLoopArgs {
    /// Send requests at Poisson arrival times of this mean rate (requests per second) for
    /// --duration-secs, answered or not, instead of --requests from --concurrency clients.
    #[arg(long)]
    pub rate: Option<f64>,

    /// Seconds of sending in the open loop.
    #[arg(long, default_value_t = 30.0)]
    pub duration_secs: f64,

    /// Deadline of each open-loop request, in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    pub deadline_ms: u64,

    /// Also write the open-loop report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,

    /// Sample this process's RSS (e.g. the gateway's PID) from /proc during the open loop.
    #[arg(long, value_name = "PID")]
    pub watch_pid: Option<u32>,
}

/// The flags of `soak`.
#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// The model repository every service loads (default: --local's).
    #[arg(long, env = "UNCLIP_MODEL", value_name = "MODEL_DIR")]
    pub model: Option<PathBuf>,

    /// How long to send traffic, in minutes (fractions allowed).
    #[arg(long, default_value_t = 10.0, value_parser = positive_minutes)]
    pub minutes: f64,

    /// Clients sending at once.
    #[arg(long, default_value_t = 4, value_parser = at_least_one)]
    pub clients: usize,

    /// Seconds between two samples of every process's RSS and open file descriptors.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub sample_secs: u64,

    /// Denoising steps of the prior, the decoder and each upsampler in every request.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(2..=1000))]
    pub steps: u32,

    /// Processes per stage.
    #[arg(long, value_parser = parse_replicas, default_value = "clip=2,prior=2,decoder=2")]
    pub replicas: StageReplicas,
}

/// A positive number of minutes.
fn positive_minutes(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(m) if m.is_finite() && m > 0.0 => Ok(m),
        _ => Err(format!(
            "must be a positive number of minutes, got {text:?}"
        )),
    }
}

/// A count of 1 or more.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("must be a whole number of 1 or more, got {text:?}")),
    }
}

/// The flags of `stack`.
#[derive(Debug, Clone, Args)]
pub struct StackArgs {
    /// The model repository every service loads (default: --local's).
    #[arg(long, env = "UNCLIP_MODEL", value_name = "MODEL_DIR")]
    pub model: Option<PathBuf>,

    /// Processes per stage, e.g. clip=1,prior=1,decoder=2 (stages not named get 1).
    #[arg(long, value_parser = parse_replicas)]
    pub replicas: Option<StageReplicas>,

    /// CLIP service processes (overrides --replicas).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub clip_replicas: Option<u16>,

    /// Prior service processes (overrides --replicas).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub prior_replicas: Option<u16>,

    /// Decoder service processes (overrides --replicas).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub decoder_replicas: Option<u16>,

    /// Write `gateway=URL` (and `redis=URL`, `clip=URL,...`) lines to this file once everything
    /// serves, so scripts can wait for it; removed again at shutdown.
    #[arg(long, value_name = "FILE")]
    pub listen_info: Option<PathBuf>,

    /// An extra argument for the gateway (repeat for several), e.g. --gateway-arg=--max-images=4.
    #[arg(long = "gateway-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub gateway_args: Vec<String>,
}

impl StackArgs {
    /// The replicas per stage: --replicas, then the per-stage flags over it.
    pub fn stage_replicas(&self) -> StageReplicas {
        let mut replicas = self.replicas.unwrap_or_default();
        for (stage, flag) in [
            (unclip_stack::Stage::Clip, self.clip_replicas),
            (unclip_stack::Stage::Prior, self.prior_replicas),
            (unclip_stack::Stage::Decoder, self.decoder_replicas),
        ] {
            if let Some(count) = flag {
                replicas.set(stage, usize::from(count));
            }
        }
        replicas
    }
}

/// `--replicas`' parser (clap shows the message).
fn parse_replicas(text: &str) -> Result<StageReplicas, String> {
    text.parse().map_err(|e: unclip_stack::Error| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("unclip").chain(args.iter().copied()))
    }

    /// `generate` maps every flag onto the request; unset flags stay unset.
    #[test]
    fn generate_flags() {
        let cli = parse(&[
            "generate",
            "a red cube",
            "-n",
            "3",
            "--seed",
            "7",
            "--prior-steps",
            "10",
            "--decoder-steps",
            "12",
            "--upsampler-steps",
            "4",
            "--prior-guidance",
            "2.5",
            "--decoder-guidance",
            "5",
            "--best-of",
            "2",
            "--negative",
            "blurry",
            "--out",
            "x/cube.png",
        ])
        .unwrap();
        let Command::Generate(args) = &cli.command else {
            panic!("{cli:?}")
        };
        let request = args.request();
        assert_eq!(request.prompt, "a red cube");
        assert_eq!(request.num_images, Some(3));
        assert_eq!(request.seed, Some(7));
        assert_eq!(request.prior_steps, Some(10));
        assert_eq!(request.prior_guidance_scale, Some(2.5));
        assert_eq!(request.best_of, Some(2));
        assert_eq!(request.negative_prompt, "blurry");
        assert_eq!(
            request.decoder,
            Some(DecoderSettings {
                decoder_steps: Some(12),
                upsampler_steps: Some(4),
                decoder_guidance_scale: Some(5.0),
            })
        );
        assert_eq!(args.out, PathBuf::from("x/cube.png"));

        let cli = parse(&["generate", "x"]).unwrap();
        let Command::Generate(args) = &cli.command else {
            panic!()
        };
        let request = args.request();
        assert_eq!((request.num_images, request.seed), (None, None));
        assert_eq!(request.decoder.unwrap().decoder_steps, None);
        assert_eq!(args.out, PathBuf::from("out.png"));
    }

    /// Limits are the gateway's to check: 0 images parses (the gateway names the limit).
    #[test]
    fn values_pass_through() {
        let cli = parse(&["generate", "x", "--num-images", "0"]).unwrap();
        let Command::Generate(args) = &cli.command else {
            panic!()
        };
        assert_eq!(args.request().num_images, Some(0));
        assert!(parse(&["generate", "x", "--seed", "-1"]).is_err());
        assert!(parse(&["generate"]).is_err());
    }

    /// The other capabilities' flags.
    #[test]
    fn capability_flags() {
        let cli = parse(&["vary", "a.png", "--anchored", "--eta", "0.5", "--seed", "3"]).unwrap();
        let Command::Vary(args) = &cli.command else {
            panic!()
        };
        let request = args.request(bytes::Bytes::from_static(b"png"));
        assert_eq!(request.mode, VariationMode::Anchored as i32);
        assert_eq!((request.eta, request.seed), (Some(0.5), Some(3)));
        assert_eq!(&request.image[..], b"png");
        let cli = parse(&["vary", "a.png"]).unwrap();
        let Command::Vary(args) = &cli.command else {
            panic!()
        };
        assert_eq!(
            args.request(Default::default()).mode,
            VariationMode::Fresh as i32
        );

        let cli = parse(&["interpolate", "a.png", "b.png", "--frames", "7"]).unwrap();
        let Command::Interpolate(args) = &cli.command else {
            panic!()
        };
        assert_eq!(
            args.request(Default::default(), Default::default()).frames,
            Some(7)
        );
        assert_eq!(args.out, PathBuf::from("frames.png"));

        let cli = parse(&[
            "diff",
            "a.png",
            "--from",
            "a cat",
            "--to",
            "a dog",
            "--max-theta",
            "0.3",
            "--frame-delay-ms",
            "100",
        ])
        .unwrap();
        let Command::Diff(args) = &cli.command else {
            panic!()
        };
        let request = args.request(Default::default());
        assert_eq!(request.source_caption, "a cat");
        assert_eq!(request.target_caption, "a dog");
        assert_eq!(request.max_theta, Some(0.3));
        assert_eq!(request.frame_delay_ms, Some(100));
        assert!(parse(&["diff", "a.png", "--from", "a cat"]).is_err());

        let cli = parse(&["inpaint", "a.png", "m.png", "a hat", "--prior-steps", "9"]).unwrap();
        let Command::Inpaint(args) = &cli.command else {
            panic!()
        };
        let request = args.request(Default::default(), Default::default());
        assert_eq!(request.prompt, "a hat");
        assert_eq!(request.prior_steps, Some(9));
        assert!(parse(&["inpaint", "a.png", "m.png"]).is_err());
    }

    /// Global flags go before or after the subcommand.
    #[test]
    fn global_flags_anywhere() {
        let cli = parse(&[
            "--quiet",
            "info",
            "--gateway",
            "http://h:1",
            "--timeout",
            "5",
        ])
        .unwrap();
        assert!(cli.global.quiet);
        assert_eq!(cli.global.gateway, "http://h:1");
        assert_eq!(cli.global.timeout, 5);
        assert!(parse(&["stats", "--timeout", "0"]).is_err());
        let cli = parse(&["generate", "x", "--local", "models/shapes", "--redis"]).unwrap();
        assert_eq!(cli.global.local, Some(PathBuf::from("models/shapes")));
        assert!(cli.global.redis);
    }

    /// `stack`'s replicas: the list, with per-stage flags over it.
    #[test]
    fn stack_replicas() {
        let cli = parse(&[
            "stack",
            "--model",
            "m",
            "--replicas",
            "prior=2,decoder=3",
            "--decoder-replicas",
            "4",
            "--gateway-arg",
            "--max-images=4",
        ])
        .unwrap();
        let Command::Stack(args) = &cli.command else {
            panic!()
        };
        assert_eq!(
            args.stage_replicas(),
            StageReplicas {
                clip: 1,
                prior: 2,
                decoder: 4
            }
        );
        assert_eq!(args.gateway_args, ["--max-images=4"]);
        let err = parse(&["stack", "--replicas", "decoder=0"]).unwrap_err();
        assert!(err.to_string().contains("decoder=0"), "{err}");
        assert!(parse(&["stack", "--clip-replicas", "0"]).is_err());
        let cli = parse(&["stack"]).unwrap();
        let Command::Stack(args) = &cli.command else {
            panic!()
        };
        assert_eq!(args.stage_replicas(), StageReplicas::default());
    }
}
