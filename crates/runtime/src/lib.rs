//! Model repositories and ONNX Runtime execution for the unCLIP services.
//!
//! | module | what |
//! |---|---|
//! | [`manifest`] | manifest.json: typed structs, graph contracts, [`ModelSizes`] |
//! | [`repository`] | a repository on disk: files, hashes, the version rule, tokenizer check |
//! | [`tensors`] | tensors.safetensors: clip mean/std, the CFG embedding, the encoding of "" |
//! | [`environment`] | loading libonnxruntime once per process from an explicit path |
//! | [`device`] | `cpu` / `cuda[:N]`, thread counts, queue size |
//! | [`session`] | building sessions and checking them against the manifest |
//! | [`executor`] | a session on its own thread behind an async, bounded queue |
//! | [`batch`] | stacking queued calls of one graph into one run, and splitting the outputs |
//! | [`compute`] | [`ComputeMeter`]: a request's seconds inside `Session::run` |
//! | [`threads`] | [`ThreadBudget`]: the process's compute budget, shared by its sessions |
//!
//! A service opens the repository ([`ModelRepository::open`]), hashes the files it will load
//! ([`ModelRepository::verify_files`]), initialises ONNX Runtime
//! ([`init_environment`]), and loads each graph it needs into a [`SessionExecutor`]
//! ([`ModelRepository::load_executor`]), whose async `run` never blocks the caller's thread.

pub mod batch;
pub mod compute;
pub mod device;
pub mod environment;
pub mod error;
pub mod executor;
pub mod manifest;
pub mod repository;
pub mod session;
pub mod tensors;
pub mod threads;
pub mod value;

pub use compute::{ComputeMeter, MeterGuard};
pub use device::{Device, GPU_BATCH_ROWS, SessionConfig};
pub use environment::{
    LIBRARY_ENV, environment_budget, init_environment, init_environment_with, resolve_library,
};
pub use error::{Result, RuntimeError};
pub use executor::{ExecutorStats, Inputs, Outputs, SessionExecutor};
pub use manifest::{ComponentSpec, DataType, Manifest, ModelSizes};
pub use repository::ModelRepository;
pub use tensors::{ModelTensors, UncondText};
pub use threads::{ThreadBudget, ThreadPool, available_cores};
pub use value::TensorData;

/// The ONNX Runtime environment type returned by [`init_environment`].
pub use ort::environment::Environment;

impl ModelRepository {
    /// Loads one graph of this repository into an executor (`label` names it in logs and
    /// errors, e.g. `text_encoder`).
    pub fn load_executor(
        &self,
        env: &Environment,
        label: &str,
        spec: &ComponentSpec,
        config: &SessionConfig,
    ) -> Result<SessionExecutor> {
        SessionExecutor::load(env, &self.path(&spec.file), label, spec, config)
    }
}
