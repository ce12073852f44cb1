//! The gateway's configuration: command-line flags, each with an environment fallback.

use std::net::SocketAddr;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use unclip_server::ServeArgs;

/// `--startup-timeout-secs` when neither the flag nor an environment variable sets it.
const DEFAULT_STARTUP_TIMEOUT_SECS: u64 = 120;

/// The name `--startup-timeout-secs` was read from before UNCLIP_GATEWAY_STARTUP_TIMEOUT_SECS
/// (the `unclip` command reads it too, meaning something else). Still honoured, with a
/// warning, when neither the flag nor the new name is given.
const DEPRECATED_STARTUP_TIMEOUT_ENV: &str = "UNCLIP_STARTUP_TIMEOUT_SECS";

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

    /// Seconds to wait at start-up for every stage replica to answer GetInfo. The environment
    /// name UNCLIP_STARTUP_TIMEOUT_SECS (which the `unclip` command uses for its own local
    /// services) is still accepted here, with a deprecation warning.
    #[arg(
        long,
        env = "UNCLIP_GATEWAY_STARTUP_TIMEOUT_SECS",
        default_value_t = DEFAULT_STARTUP_TIMEOUT_SECS
    )]
    pub startup_timeout_secs: u64,

    /// Longest a request may run when its client sets no deadline, in seconds.
    #[arg(long, env = "UNCLIP_REQUEST_TIMEOUT_SECS", default_value_t = 600)]
    pub request_timeout_secs: u64,

    /// Message limits and graceful shutdown.
    #[command(flatten)]
    pub serve: ServeArgs,

    /// The HTTP API's file store and public URL.
    #[command(flatten)]
    pub http: crate::http::HttpArgs,
}

impl Config {
    /// The process's flags and environment, as the binary reads them: `--help` and parse
    /// errors exit, and a renamed environment variable still set under its old name is used
    /// with a warning (logged, so call this after setting up tracing).
    pub fn from_env_and_args() -> Self {
        let matches = Self::command().get_matches();
        Self::from_matches(&matches, |name| std::env::var(name).ok()).unwrap_or_else(|e| e.exit())
    }

    /// Flags parsed from `args` (the first is the program name), for tests. Environment
    /// fallbacks apply as for the binary.
    pub fn from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Self::command().try_get_matches_from(args)?;
        Self::from_matches(&matches, |name| std::env::var(name).ok())
    }

    /// The configuration `matches` describe, with the deprecated environment name read through
    /// `env` where the flag was left at its default.
    fn from_matches(
        matches: &ArgMatches,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, clap::Error> {
        let mut config = Self::from_arg_matches(matches)?;
        let defaulted =
            matches.value_source("startup_timeout_secs") == Some(ValueSource::DefaultValue);
        if let Some(value) = env(DEPRECATED_STARTUP_TIMEOUT_ENV).filter(|_| defaulted) {
            let old = DEPRECATED_STARTUP_TIMEOUT_ENV;
            tracing::warn!(
                "{old} is deprecated for the gateway; set UNCLIP_GATEWAY_STARTUP_TIMEOUT_SECS instead"
            );
            config.startup_timeout_secs = value.trim().parse().map_err(|_| {
                Self::command().error(
                    clap::error::ErrorKind::ValueValidation,
                    format!("{old}: expected a whole number of seconds, got {value:?}"),
                )
            })?;
        }
        Ok(config)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Config, clap::Error> {
        let matches = Config::command().try_get_matches_from(
            [
                "unclip-gateway",
                "--clip",
                "a:1",
                "--prior",
                "b:1",
                "--decoder",
                "c:1",
            ]
            .iter()
            .chain(args),
        )?;
        Config::from_matches(&matches, |name| {
            env.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    /// The old name applies only when nothing newer says otherwise; a bad value names it.
    #[test]
    fn renamed_startup_timeout() {
        let old = "UNCLIP_STARTUP_TIMEOUT_SECS";
        assert_eq!(
            parse(&[], &[]).unwrap().startup_timeout_secs,
            DEFAULT_STARTUP_TIMEOUT_SECS
        );
        assert_eq!(
            parse(&[], &[(old, "240")]).unwrap().startup_timeout_secs,
            240
        );
        let flag = ["--startup-timeout-secs", "30"];
        assert_eq!(
            parse(&flag, &[(old, "240")]).unwrap().startup_timeout_secs,
            30
        );
        let e = parse(&[], &[(old, "soon")]).unwrap_err().to_string();
        assert!(e.contains("UNCLIP_STARTUP_TIMEOUT_SECS"), "{e}");
    }
}
