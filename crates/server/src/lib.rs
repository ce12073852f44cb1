//! What every unCLIP gRPC service shares, so that the CLIP, prior and decoder services differ
//! only in their models and RPCs.
//!
//! | module | what |
//! |---|---|
//! | [`mod@serve`] | the serving skeleton: [`serve()`], [`ServeArgs`], [`ModelSlot`] |
//! | [`args`] | the ONNX Runtime flags (`--ort-library`, `--device`, threads, queue) |
//! | [`logging`] | `tracing` set-up (default filter `info,ort=warn`) |
//! | [`shutdown`] | the SIGTERM / Ctrl-C future |
//! | [`grpc`] | message limits, health and reflection services, the listener stream |
//! | [`error`] | [`ServiceError`] and its one mapping to `tonic::Status` |
//! | [`validate`] | request checks: counts, tensors, text encodings |
//! | [`info`] | the `ModelInfo` every `GetInfo` returns |
//! | [`metrics`] | `GET /metrics` (OpenMetrics text) beside gRPC on the service's port |
//! | [`steps`] | step progress of a loop and the `...Stream` form of a stage RPC that sends it |
//!
//! # How a service uses it
//!
//! The service's `Config` flattens [`RuntimeArgs`] (`#[command(flatten)] runtime`) and
//! [`ServeArgs`] (`#[command(flatten)] serve`: `--max-message-bytes`,
//! `--shutdown-grace-secs`). Its handlers hold a [`ModelSlot<M>`] and call
//! [`ModelSlot::get`] (UNAVAILABLE while loading), validate with [`validate`], and return
//! [`ServiceError`]s (converted with `?` into `tonic::Status`). Its library `run` is then:
//!
//! ```ignore
//! pub async fn run(config: Config, listener: TcpListener,
//!                  shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
//!     let slot = ModelSlot::new();
//!     let api = MyApi::new(slot.clone(), limits);
//!     let server = MyServiceServer::new(api)
//!         .max_decoding_message_size(config.serve.max_message_bytes)
//!         .max_encoding_message_size(config.serve.max_message_bytes);
//!     let load = {
//!         let config = config.clone();
//!         async move {
//!             // Blocking: hashing files, creating sessions.
//!             let model = tokio::task::spawn_blocking(move || MyModel::load(&config)).await??;
//!             model.warm_up().await?; // one real call: SERVING means "answers"
//!             anyhow::Ok(model)
//!         }
//!     };
//!     unclip_server::serve(
//!         config.serve.serve_config(SERVICE_NAME), // "unclip.v1.MyService"
//!         listener,
//!         tonic::service::Routes::new(server),
//!         slot,
//!         load,
//!         shutdown,
//!     )
//!     .await
//! }
//! ```
//!
//! [`serve()`] reports NOT_SERVING at once, SERVING once `load` returned (the model is then in
//! the slot), adds health and reflection (v1 + v1alpha), and on `shutdown` reports
//! NOT_SERVING, ends health `Watch` streams, stops accepting and finishes the calls in flight
//! (at most `--shutdown-grace-secs`). A failed `load` stops the server and is `run`'s error.
//! The binary is `init_tracing()`, `Config::parse()`, bind, `run(config, listener,
//! shutdown_signal())`; tests bind `127.0.0.1:0` and pass a oneshot.

pub mod args;
pub mod error;
pub mod grpc;
pub mod image_input;
pub mod info;
pub mod logging;
pub mod metrics;
pub mod serve;
pub mod shutdown;
pub mod steps;
pub mod validate;

pub use args::RuntimeArgs;
pub use error::ServiceError;
pub use serve::{ModelSlot, ServeArgs, ServeConfig, serve};
pub use shutdown::shutdown_signal;
pub use steps::{EventStream, Steps, stream_request, stream_steps};
