//! The `unclip-stages` command line: `generate` draws a prompt through the three stage services,
//! either ones already running (`--clip`, `--prior`, `--decoder`) or a [`LocalStack`] it starts
//! and stops itself.

use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::{LocalStack, LocalStackConfig, ServiceBinaries, StageClients, StageEndpoints};
use crate::{TextToImage, text_to_image};

/// unclip-stages: run unCLIP's stage services (clip, prior, decoder) as one text-to-image
/// pipeline.
#[derive(Debug, Parser)]
#[command(name = "unclip-stages", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate images from a prompt: EncodeText → prior Sample → Decode → every Upsample stage
    /// → PNG. Starts the three services locally unless --clip, --prior and --decoder are given.
    Generate(GenerateArgs),
}

/// The flags of `generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The caption to draw.
    #[arg(long)]
    pub prompt: String,

    /// Output PNG; with --num-images N > 1 the images go to OUT_0.png ... OUT_{N-1}.png.
    #[arg(long, default_value = "out.png")]
    pub out: PathBuf,

    /// How many images (image k uses seed + k, so it can be regenerated alone).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub num_images: u32,

    /// Base seed; default: a random one, printed.
    #[arg(long)]
    pub seed: Option<u64>,

    /// Prior denoising steps (default: the model's).
    #[arg(long)]
    pub prior_steps: Option<u32>,

    /// Decoder denoising steps (default: the model's).
    #[arg(long)]
    pub decoder_steps: Option<u32>,

    /// Steps of each upsampler stage (default: the model's).
    #[arg(long)]
    pub upsampler_steps: Option<u32>,

    /// Prior classifier-free guidance scale; 1 disables guidance (default: the model's).
    #[arg(long)]
    pub prior_guidance: Option<f32>,

    /// Decoder classifier-free guidance scale; 1 disables guidance (default: the model's).
    #[arg(long)]
    pub decoder_guidance: Option<f32>,

    /// Model repository the local services load (e.g. models/shapes); needed unless the
    /// service URLs are given.
    #[arg(long, env = "UNCLIP_MODEL")]
    pub model: Option<PathBuf>,

    /// URL of a running CLIP service (e.g. http://127.0.0.1:50051); give all three URLs or
    /// none.
    #[arg(long, env = "UNCLIP_CLIP_URL")]
    pub clip: Option<String>,

    /// URL of a running prior service (e.g. http://127.0.0.1:50052).
    #[arg(long, env = "UNCLIP_PRIOR_URL")]
    pub prior: Option<String>,

    /// URL of a running decoder service (e.g. http://127.0.0.1:50053).
    #[arg(long, env = "UNCLIP_DECODER_URL")]
    pub decoder: Option<String>,

    /// ONNX Runtime library for the local services (libonnxruntime.so.1.N, N >= 31).
    #[arg(long, env = "UNCLIP_ORT_LIBRARY")]
    pub ort_library: Option<PathBuf>,

    /// Folder holding the service binaries (default: the folder of this executable).
    #[arg(long, env = "UNCLIP_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,

    /// ONNX Runtime intra-op threads per graph in each local service (default: the services').
    #[arg(long, env = "UNCLIP_INTRA_THREADS")]
    pub intra_threads: Option<usize>,

    /// Seconds the services may take to load and warm up.
    #[arg(long, env = "UNCLIP_STARTUP_TIMEOUT_SECS", default_value_t = 120)]
    pub startup_timeout_secs: u64,
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate(args) => generate(args).await,
    }
}

/// The output path of image `k` of `count`: OUT itself for one image, else OUT_k.ext.
pub fn output_path(out: &Path, k: usize, count: usize) -> PathBuf {
    if count == 1 {
        return out.to_path_buf();
    }
    let stem = out.file_stem().unwrap_or_default().to_string_lossy();
    let name = match out.extension() {
        Some(ext) => format!("{stem}_{k}.{}", ext.to_string_lossy()),
        None => format!("{stem}_{k}"),
    };
    out.with_file_name(name)
}

/// `generate`: checks the flags, starts a local stack if needed, draws, writes the PNGs.
async fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    // Everything that can be checked before the services start.
    let out_dir = match args.out.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !out_dir.is_dir() {
        bail!("the output folder {} does not exist", out_dir.display());
    }
    let seed = args
        .seed
        .unwrap_or_else(|| RandomState::new().hash_one(Instant::now()) >> 33);
    let request = TextToImage {
        prompt: args.prompt.clone(),
        num_images: args.num_images,
        seed,
        prior_steps: args.prior_steps.unwrap_or(0),
        decoder_steps: args.decoder_steps.unwrap_or(0),
        upsampler_steps: args.upsampler_steps.unwrap_or(0),
        prior_guidance: args.prior_guidance,
        decoder_guidance: args.decoder_guidance,
    };

    let (endpoints, stack) = match (&args.clip, &args.prior, &args.decoder) {
        (Some(clip), Some(prior), Some(decoder)) => {
            (StageEndpoints::new(clip, prior, decoder), None)
        }
        (None, None, None) => {
            let stack = start_stack(&args).await?;
            (stack.endpoints(), Some(stack))
        }
        _ => bail!(
            "give all three of --clip, --prior and --decoder, or none to start the services here"
        ),
    };

    // Ctrl-C stops the work and, through `stack`'s shutdown, the services.
    let result = tokio::select! {
        result = draw(&endpoints, &request, &args.out) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if let Some(stack) = stack {
        stack.shutdown().await.context("stopping the services")?;
    }
    result
}

/// Starts the local services for `args.model`.
async fn start_stack(args: &GenerateArgs) -> anyhow::Result<LocalStack> {
    let Some(model) = &args.model else {
        bail!("--model is needed to start the services (or give --clip, --prior and --decoder)");
    };
    let binaries = match &args.bin_dir {
        Some(dir) => ServiceBinaries::in_dir(dir),
        None => ServiceBinaries::next_to_current_exe()?,
    };
    let config = LocalStackConfig {
        ort_library: args.ort_library.clone(),
        intra_threads: args.intra_threads,
        startup_timeout: Duration::from_secs(args.startup_timeout_secs),
        ..LocalStackConfig::new(model, binaries)
    };
    let started = Instant::now();
    let stack = tokio::select! {
        stack = LocalStack::start(config) => stack?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted while the services started"),
    };
    println!(
        "services up in {:.1} s (model {})",
        started.elapsed().as_secs_f64(),
        model.display()
    );
    Ok(stack)
}

/// Connects, draws and writes the images.
async fn draw(endpoints: &StageEndpoints, request: &TextToImage, out: &Path) -> anyhow::Result<()> {
    let mut clients = StageClients::connect(endpoints).await?;
    let [info, ..] = clients.model_infos().await?;
    println!(
        "model {} ({}), seed {}{}",
        info.model_id,
        info.version,
        request.seed,
        if request.num_images > 1 {
            " (image k uses seed + k)"
        } else {
            ""
        }
    );
    let generated = text_to_image(&mut clients, request).await?;
    if generated.truncated {
        println!(
            "note: the prompt was longer than {} tokens and was cut",
            info.context_length
        );
    }
    let (t, used) = (&generated.timings, &generated.used);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("  clip EncodeText     {:8.1} ms", ms(t.encode_text));
    println!(
        "  prior Sample        {:8.1} ms  ({} steps, guidance {})",
        ms(t.prior),
        used.prior_steps,
        used.prior_guidance
    );
    println!(
        "  decoder Decode      {:8.1} ms  ({} steps, guidance {})",
        ms(t.decode),
        used.decoder_steps,
        used.decoder_guidance
    );
    for (stage, (d, steps)) in t.upsample.iter().zip(&used.upsampler_steps).enumerate() {
        println!(
            "  decoder Upsample[{stage}] {:8.1} ms  ({steps} steps)",
            ms(*d)
        );
    }
    println!("  total               {:8.1} ms", ms(t.total()));
    let count = generated.images.len();
    for (k, image) in generated.images.iter().enumerate() {
        let path = output_path(out, k, count);
        std::fs::write(&path, &image.png).with_context(|| format!("writing {}", path.display()))?;
        println!(
            "wrote {} ({size}×{size}, seed {})",
            path.display(),
            image.seed,
            size = generated.size
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One image keeps the name; several get _k before the extension.
    #[test]
    fn output_paths() {
        let out = Path::new("dir/out.png");
        assert_eq!(output_path(out, 0, 1), Path::new("dir/out.png"));
        assert_eq!(output_path(out, 2, 3), Path::new("dir/out_2.png"));
        assert_eq!(output_path(Path::new("x"), 1, 2), Path::new("x_1"));
    }

    /// Bad flags are clap errors, not panics.
    #[test]
    fn rejects_bad_flags() {
        let parse = |args: &[&str]| Cli::try_parse_from(args);
        assert!(parse(&["unclip-stages", "generate"]).is_err());
        let zero = parse(&[
            "unclip-stages",
            "generate",
            "--prompt",
            "x",
            "--num-images",
            "0",
        ]);
        assert!(zero.unwrap_err().to_string().contains("num-images"));
        let seed = parse(&["unclip-stages", "generate", "--prompt", "x", "--seed", "-1"]);
        assert!(seed.is_err());
        assert!(parse(&["unclip-stages", "generate", "--prompt", "x", "--seed", "7"]).is_ok());
    }
}
