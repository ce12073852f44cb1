//! The one error type of this crate.
//!
//! Start-up problems (a repository that disagrees with its manifest, a missing or too old ONNX
//! Runtime library, a device that cannot be used) and run-time problems (an executor that is
//! overloaded or gone, a graph that fails) are all [`RuntimeError`]s. Messages name the file,
//! field or tensor at fault and, where there is one, the limit. Services map them to gRPC codes
//! in one place (`unclip_server::ServiceError`).

use std::path::PathBuf;

use thiserror::Error;

/// Why a model repository could not be used or a graph could not be run.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// manifest.json is malformed, or violates the format or the graph contracts
    /// (docs/model-repository.md). The message says where.
    #[error("{0}")]
    Manifest(String),
    /// A file listed in the manifest is missing.
    #[error("missing file {path} (listed in the manifest)")]
    MissingFile {
        /// Path relative to the repository.
        path: String,
    },
    /// A file in the repository is not listed in the manifest's `files`.
    #[error("file {path} is not listed in the manifest")]
    UnlistedFile {
        /// Path relative to the repository.
        path: String,
    },
    /// A file's SHA-256 differs from the manifest's.
    #[error("file {path}: sha256 differs from manifest (manifest {expected}, file {actual})")]
    HashMismatch {
        /// Path relative to the repository.
        path: String,
        /// The hash the manifest lists.
        expected: String,
        /// The hash of the file on disk.
        actual: String,
    },
    /// The manifest's version does not follow from its content.
    #[error("version {declared} does not match content (expected {computed})")]
    VersionMismatch {
        /// The version written in manifest.json.
        declared: String,
        /// The version computed by the rule.
        computed: String,
    },
    /// tokenizer.json or tensors.safetensors does not match the manifest.
    #[error("{file}: {message}")]
    Asset {
        /// The file, relative to the repository.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// A graph's inputs or outputs, as ONNX Runtime reports them, differ from the manifest.
    #[error("{file}: {message}")]
    GraphMismatch {
        /// The graph file.
        file: String,
        /// Which input or output differs and how.
        message: String,
    },
    /// The ONNX Runtime library is not given, missing, not ONNX Runtime, or too old.
    #[error("ONNX Runtime library: {0}")]
    Library(String),
    /// A device string that does not parse, or a device that cannot be used.
    #[error("device: {0}")]
    Device(String),
    /// Inputs handed to an executor that do not fit its graph (a bug in the caller: services
    /// validate requests before running graphs).
    #[error("{component}: {message}")]
    Inputs {
        /// The component label, e.g. `text_encoder`.
        component: String,
        /// Which input is wrong.
        message: String,
    },
    /// An output that is missing or has an unexpected type.
    #[error("{component}: {message}")]
    Outputs {
        /// The component label.
        component: String,
        /// Which output is wrong.
        message: String,
    },
    /// The executor's queue is full; the caller should back off.
    #[error("{component} is overloaded: {capacity} requests are already queued")]
    Overloaded {
        /// The component label.
        component: String,
        /// The queue capacity.
        capacity: usize,
    },
    /// The executor's thread has stopped (shut down, or panicked earlier).
    #[error("{component}: the executor thread has stopped")]
    ExecutorStopped {
        /// The component label.
        component: String,
    },
    /// ONNX Runtime failed to build a session or to run a graph.
    #[error("{context}: {source}")]
    Ort {
        /// What was being done, e.g. `text_encoder.onnx: creating the session`.
        context: String,
        /// ONNX Runtime's error.
        source: ort::Error,
    },
}

impl RuntimeError {
    /// Wraps an ort error with what was being done.
    pub fn ort(context: impl Into<String>, source: impl Into<ort::Error>) -> Self {
        RuntimeError::Ort {
            context: context.into(),
            source: source.into(),
        }
    }

    /// Whether the error is transient back-pressure rather than a failure.
    pub fn is_overloaded(&self) -> bool {
        matches!(self, RuntimeError::Overloaded { .. })
    }
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, RuntimeError>;
