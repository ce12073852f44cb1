//! `tracing` set-up for the project's binaries: the services' (info, with targets) and the
//! `unclip` command's (warnings only, to stderr, terse).

use tracing_subscriber::EnvFilter;

/// The filter used when `RUST_LOG` is unset: our logs at info, ONNX Runtime's (forwarded by
/// ort at VERBOSE, one line per graph transformer at info) only from warn.
pub const DEFAULT_FILTER: &str = "info,ort=warn";

/// Installs a formatting subscriber filtered by `RUST_LOG`, else [`DEFAULT_FILTER`]. Does
/// nothing if one is already installed (tests may call it repeatedly).
pub fn init_tracing() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .try_init();
}

/// The `unclip` command's logging: to stderr (stdout is the command's output), filtered by
/// `RUST_LOG`, else warnings only, without timestamps or targets. Does nothing if a subscriber
/// is already installed.
pub fn init_cli_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .try_init();
}
