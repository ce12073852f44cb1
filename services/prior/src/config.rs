//! The service's configuration: command-line flags, each with an environment fallback.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use unclip_model_server::{RuntimeArgs, ServeArgs};

/// unclip-prior: the unCLIP diffusion prior over gRPC (unclip.v1.PriorService): CLIP text
/// encodings in, CLIP image embeddings out.
#[derive(Debug, Clone, Parser)]
#[command(name = "unclip-prior", version, about)]
pub struct Config {
    /// The model repository: the folder holding manifest.json (e.g. models/karlo-tiny).
    #[arg(long, env = "UNCLIP_MODEL")]
    pub model: PathBuf,

    /// Address to listen on.
    #[arg(long, env = "UNCLIP_PRIOR_LISTEN", default_value = "127.0.0.1:50052")]
    pub listen: SocketAddr,

    /// ONNX Runtime library, device and threads.
    #[command(flatten)]
    pub runtime: RuntimeArgs,

    /// Message limits and graceful shutdown.
    #[command(flatten)]
    pub serve: ServeArgs,

    /// Most prompts per Sample request; larger requests get INVALID_ARGUMENT.
    #[arg(long, env = "UNCLIP_MAX_BATCH", default_value_t = 64)]
    pub max_batch: usize,

    /// Most embeddings per prompt (Sample's num_images).
    #[arg(long, env = "UNCLIP_MAX_IMAGES_PER_INPUT", default_value_t = 16)]
    pub max_images_per_input: u32,

    /// Largest best_of (candidates per embedding for reranking).
    #[arg(long, env = "UNCLIP_MAX_BEST_OF", default_value_t = 8)]
    pub max_best_of: u32,

    /// Most rows (prompts × num_images × best_of) in one model call; bigger requests run as
    /// several calls in sequence. Each row has its own noise, so the split never changes
    /// results. The model sees twice this many rows with guidance.
    #[arg(long, env = "UNCLIP_PRIOR_MAX_ROWS_PER_CALL", default_value_t = 64)]
    pub max_rows_per_call: usize,
}
