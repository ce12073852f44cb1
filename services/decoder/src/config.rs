//! The service's configuration: command-line flags, each with an environment fallback.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use unclip_model_server::{RuntimeArgs, ServeArgs};

/// unclip-decoder: unCLIP's image decoder and super-resolution cascade over gRPC
/// (unclip.v1.DecoderService), with DDIM sampling, DDIM inversion and inpainting.
#[derive(Debug, Clone, Parser)]
#[command(name = "unclip-decoder", version, about)]
pub struct Config {
    /// The model repository: the folder holding manifest.json (e.g. models/karlo-tiny).
    #[arg(long, env = "UNCLIP_MODEL")]
    pub model: PathBuf,

    /// Address to listen on.
    #[arg(long, env = "UNCLIP_DECODER_LISTEN", default_value = "127.0.0.1:50053")]
    pub listen: SocketAddr,

    /// ONNX Runtime library, device and threads.
    #[command(flatten)]
    pub runtime: RuntimeArgs,

    /// Most images one call may produce or take: Decode's embeddings × num_images, Upsample's
    /// and Invert's images. Each call runs them as one batch (doubled for guidance).
    #[arg(long, env = "UNCLIP_DECODER_MAX_BATCH", default_value_t = 16)]
    pub max_batch: usize,

    /// Most images per embedding in one Decode (num_images).
    #[arg(long, env = "UNCLIP_MAX_IMAGES_PER_INPUT", default_value_t = 16)]
    pub max_images_per_input: usize,

    /// Largest encoded image accepted (Upsample, Invert, inpainting), in bytes.
    #[arg(long, env = "UNCLIP_MAX_IMAGE_BYTES", default_value_t = 16 << 20)]
    pub max_image_bytes: usize,

    /// Largest decoded image width or height accepted, in pixels (images must also be exactly
    /// the size of the stage they are for).
    #[arg(long, env = "UNCLIP_MAX_IMAGE_SIDE", default_value_t = 4096)]
    pub max_image_side: u32,

    /// Message limits and graceful shutdown.
    #[command(flatten)]
    pub serve: ServeArgs,
}
