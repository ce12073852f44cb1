//! The service's configuration: command-line flags, each with an environment fallback.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use unclip_model_server::{RuntimeArgs, ServeArgs};

/// unclip-clip: CLIP text and image encodings for unCLIP over gRPC (unclip.v1.ClipService).
#[derive(Debug, Clone, Parser)]
#[command(name = "unclip-clip", version, about)]
pub struct Config {
    /// The model repository: the folder holding manifest.json (e.g. models/karlo-tiny).
    #[arg(long, env = "UNCLIP_MODEL")]
    pub model: PathBuf,

    /// Address to listen on.
    #[arg(long, env = "UNCLIP_CLIP_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// ONNX Runtime library, device and threads.
    #[command(flatten)]
    pub runtime: RuntimeArgs,

    /// Most prompts per EncodeText and images per EncodeImage; larger requests get
    /// INVALID_ARGUMENT. Each request runs as one batch through the encoder.
    #[arg(long, env = "UNCLIP_MAX_BATCH", default_value_t = 64)]
    pub max_batch: usize,

    /// Longest prompt accepted, in bytes of UTF-8. Prompts are cut to 77 tokens anyway; this
    /// only bounds the tokenizer's work on absurd inputs.
    #[arg(long, env = "UNCLIP_MAX_PROMPT_BYTES", default_value_t = 16 << 10)]
    pub max_prompt_bytes: usize,

    /// Largest encoded image accepted by EncodeImage, in bytes.
    #[arg(long, env = "UNCLIP_MAX_IMAGE_BYTES", default_value_t = 16 << 20)]
    pub max_image_bytes: usize,

    /// Largest decoded image width or height accepted by EncodeImage, in pixels.
    #[arg(long, env = "UNCLIP_MAX_IMAGE_SIDE", default_value_t = 4096)]
    pub max_image_side: u32,

    /// Message limits and graceful shutdown.
    #[command(flatten)]
    pub serve: ServeArgs,

    /// Do not load the image encoder even if the model has one (EncodeImage then answers
    /// FAILED_PRECONDITION); saves memory for text-only deployments.
    #[arg(long, env = "UNCLIP_TEXT_ONLY")]
    pub text_only: bool,
}
