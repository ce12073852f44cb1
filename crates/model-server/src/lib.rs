//! The model layer of the three stage services (clip, prior, decoder), on top of the model-free
//! [`unclip_server`] (whose modules are re-exported, so a service imports one crate).
//!
//! | module | what |
//! |---|---|
//! | [`mod@serve`] | [`serve_model()`], [`StageModel`], [`ModelSlot`] |
//! | [`args`] | the ONNX Runtime flags (`--ort-library`, `--device`, threads, queue) |
//! | [`error`] | [`ServiceError`] and its one mapping to `tonic::Status` |
//! | [`validate`] | request checks: counts, tensors, text encodings |
//! | [`info`] | the `ModelInfo` every `GetInfo` returns |
//! | [`metrics`] | [`metrics::graph_metrics`]: readiness and each graph's counters |
//! | [`steps`] | step progress of a loop and the `...Stream` form of a stage RPC that sends it |
//!
//! # How a service uses it
//!
//! The service's `Config` flattens [`RuntimeArgs`] (`#[command(flatten)] runtime`) and
//! [`ServeArgs`] (`#[command(flatten)] serve`). Its model implements [`StageModel`]; its
//! handlers hold a [`ModelSlot<M>`], call [`ModelSlot::get`] (UNAVAILABLE while loading),
//! validate with [`validate`] and return [`ServiceError`]s (converted with `?` into
//! `tonic::Status`). Its library `run` is then:
//!
//! ```ignore
//! pub async fn run(config: Config, listener: TcpListener,
//!                  shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
//!     let slot = ModelSlot::new();
//!     let server = MyServiceServer::new(MyApi::new(slot.clone(), limits))
//!         .max_decoding_message_size(config.serve.max_message_bytes)
//!         .max_encoding_message_size(config.serve.max_message_bytes);
//!     let serve = config.serve.serve_config(SERVICE_NAME); // "unclip.v1.MyService"
//!     serve_model(config.model.clone(), config, serve, listener, Routes::new(server), slot,
//!                 shutdown).await
//! }
//! ```

pub mod args;
pub mod error;
pub mod info;
pub mod metrics;
pub mod serve;
pub mod steps;
pub mod validate;

pub use unclip_server::{
    ServeArgs, ServeConfig, image_input, logging, shutdown_signal, text_input,
};

pub use args::RuntimeArgs;
pub use error::ServiceError;
pub use serve::{ModelSlot, StageModel, serve_model};
pub use steps::{EventStream, Steps, stream_request, stream_steps};
