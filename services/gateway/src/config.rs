//! The gateway's configuration: command-line flags, each with an environment fallback.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use unclip_server::ServeArgs;

/// unclip-gateway: text-to-image, variations, interpolations, text diffs and inpainting over the
/// unCLIP stage services (unclip.v1.Gateway), with an embedding cache.
#[derive(Debug, Clone, Parser)]
#[command(name = "unclip-gateway", version, about)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "UNCLIP_GATEWAY_LISTEN", default_value = "127.0.0.1:50050")]
    pub listen: SocketAddr,

    /// The CLIP service: one address per replica, comma-separated (`http://host:port` or
    /// `host:port`); a DNS name stands for every address it resolves to.
    #[arg(
        long,
        env = "UNCLIP_CLIP_URLS",
        default_value = "http://127.0.0.1:50051"
    )]
    pub clip: String,

    /// The prior service's replicas, as --clip.
    #[arg(
        long,
        env = "UNCLIP_PRIOR_URLS",
        default_value = "http://127.0.0.1:50052"
    )]
    pub prior: String,

    /// The decoder service's replicas, as --clip.
    #[arg(
        long,
        env = "UNCLIP_DECODER_URLS",
        default_value = "http://127.0.0.1:50053"
    )]
    pub decoder: String,

    /// Redis for the embedding cache (e.g. redis://127.0.0.1:6379/). Without it the gateway
    /// keeps a bounded cache in its own memory (see --cache-memory-mb).
    #[arg(long, env = "UNCLIP_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Size of the in-process cache in MiB when no Redis is given; 0 disables caching.
    #[arg(long, env = "UNCLIP_CACHE_MEMORY_MB", default_value_t = 256)]
    pub cache_memory_mb: u64,

    /// Seconds a cache entry lives.
    #[arg(long, env = "UNCLIP_CACHE_TTL_SECS", default_value_t = 86_400)]
    pub cache_ttl_secs: u64,

    /// Milliseconds a Redis operation may take before the gateway goes on without the cache.
    #[arg(long, env = "UNCLIP_CACHE_TIMEOUT_MS", default_value_t = 250)]
    pub cache_timeout_ms: u64,

    /// Most images per request.
    #[arg(long, env = "UNCLIP_MAX_IMAGES", default_value_t = 10)]
    pub max_images: u32,

    /// Most frames per Interpolate or TextDiff request.
    #[arg(long, env = "UNCLIP_MAX_FRAMES", default_value_t = 16)]
    pub max_frames: u32,

    /// Longest prompt or caption, in characters.
    #[arg(long, env = "UNCLIP_MAX_PROMPT_CHARS", default_value_t = 1000)]
    pub max_prompt_chars: u32,

    /// Largest uploaded image, in bytes.
    #[arg(long, env = "UNCLIP_MAX_IMAGE_BYTES", default_value_t = 16 << 20)]
    pub max_image_bytes: u64,

    /// Largest side of an uploaded image, in pixels.
    #[arg(long, env = "UNCLIP_MAX_IMAGE_SIDE", default_value_t = 4096)]
    pub max_image_side: u32,

    /// Attempts per stage call, across replicas, when a replica is unavailable.
    #[arg(long, env = "UNCLIP_STAGE_ATTEMPTS", default_value_t = 3)]
    pub stage_attempts: u32,

    /// Seconds between DNS lookups of stage addresses given by name; 0 looks up once.
    #[arg(long, env = "UNCLIP_DNS_REFRESH_SECS", default_value_t = 30)]
    pub dns_refresh_secs: u64,

    /// Seconds to wait at start-up for every stage replica to answer GetInfo.
    #[arg(long, env = "UNCLIP_STARTUP_TIMEOUT_SECS", default_value_t = 120)]
    pub startup_timeout_secs: u64,

    /// Longest a request may run when its client sets no deadline, in seconds.
    #[arg(long, env = "UNCLIP_REQUEST_TIMEOUT_SECS", default_value_t = 600)]
    pub request_timeout_secs: u64,

    /// Message limits and graceful shutdown.
    #[command(flatten)]
    pub serve: ServeArgs,
}

impl Config {
    /// Flags parsed from `args` (the first is the program name), for tests.
    pub fn from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Self::try_parse_from(args)
    }

    /// The cache TTL.
    pub fn cache_ttl(&self) -> Duration {
        Duration::from_secs(self.cache_ttl_secs.max(1))
    }

    /// The default request deadline.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs.max(1))
    }
}
