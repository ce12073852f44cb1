//! The crate's error type: what can go wrong starting, watching and stopping a local stack.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use crate::local::LocalProcess;
use crate::stage::Stage;

/// Everything this crate's functions can fail with. Messages name the stage, the call or the
/// path involved, so they can be shown to a user as they are.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request that no service would accept, caught before any call.
    #[error("{0}")]
    InvalidRequest(String),

    /// An endpoint that is not a URL tonic can connect to.
    #[error("the {stage} endpoint {url:?} is not a valid URL: {source}")]
    InvalidEndpoint {
        /// Whose endpoint.
        stage: Stage,
        /// As given.
        url: String,
        /// tonic's reason.
        #[source]
        source: tonic::transport::Error,
    },

    /// A service did not report SERVING in time.
    #[error("the {stage} service at {url} was not SERVING after {:.1} s{}", .after.as_secs_f64(), output_suffix(.output))]
    NotServing {
        /// Which service.
        stage: Stage,
        /// Where it was polled.
        url: String,
        /// How long it was given.
        after: Duration,
        /// The last lines it printed, when it is a local child process.
        output: String,
    },

    /// The model repository for a local stack is missing.
    #[error("{} is not a model repository (it has no manifest.json)", .0.display())]
    ModelNotFound(PathBuf),

    /// A service binary of a local stack is missing.
    #[error("the {stage} service binary {} does not exist; build it with `cargo build --release -p {}`", .path.display(), .stage.binary_name())]
    BinaryNotFound {
        /// Which service.
        stage: Stage,
        /// Where it was looked for.
        path: PathBuf,
    },

    /// The gateway binary of a local stack with a gateway is missing.
    #[error("the gateway binary {} does not exist; build it with `cargo build --release -p unclip-gateway`", .0.display())]
    GatewayBinaryNotFound(PathBuf),

    /// A local stack must run Redis, and `redis-server` is not on `PATH`.
    #[error(
        "redis-server is not on PATH; install it (`apt-get install redis-server`) or run without Redis"
    )]
    RedisNotFound,

    /// The gateway or Redis of a local stack ended before it was ready.
    #[error("the {process} exited ({status}) before it was ready{}", output_suffix(.output))]
    ProcessExited {
        /// Which process.
        process: LocalProcess,
        /// How it ended.
        status: ExitStatus,
        /// The last lines it printed (stdout and stderr).
        output: String,
    },

    /// The gateway or Redis of a local stack was not ready in time.
    #[error("the {process} at {url} was not ready after {:.1} s{}", .after.as_secs_f64(), output_suffix(.output))]
    ProcessNotReady {
        /// Which process.
        process: LocalProcess,
        /// Where it was polled.
        url: String,
        /// How long it was given.
        after: Duration,
        /// The last lines it printed.
        output: String,
    },

    /// A local service process could not be started.
    #[error("cannot start {}: {source}", .path.display())]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// The OS's reason.
        #[source]
        source: std::io::Error,
    },

    /// A local service process ended before it was SERVING (e.g. the model failed to load).
    #[error("the {stage} service exited ({status}) before it was serving{}", output_suffix(.output))]
    Exited {
        /// Which service.
        stage: Stage,
        /// How it ended.
        status: ExitStatus,
        /// The last lines it printed (stdout and stderr).
        output: String,
    },

    /// Any other I/O failure (free ports, waiting for children).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS's reason.
        #[source]
        source: std::io::Error,
    },
}

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// "; its last output:\n..." when there is output to show.
fn output_suffix(output: &str) -> String {
    if output.trim().is_empty() {
        String::new()
    } else {
        format!("; its last output:\n{}", output.trim_end())
    }
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
