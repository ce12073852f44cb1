//! The gRPC serving skeleton every unCLIP service shares, with no model in it: serving on a
//! bound listener until a shutdown future resolves, health, reflection, message limits,
//! `GET /metrics`, logging, signal handling and image and text input checks. The gateway uses
//! it as it is; the three stage services use it through `unclip-model-server`, which adds the ONNX
//! Runtime flags, model loading and the model errors. Nothing here depends on ONNX Runtime.
//!
//! | module | what |
//! |---|---|
//! | [`mod@serve`] | the serving skeleton: [`serve()`], [`ServeArgs`], [`Slot`] |
//! | [`logging`] | `tracing` set-up (default filter `info,ort=warn`) |
//! | [`shutdown`] | the SIGTERM / Ctrl-C future |
//! | [`grpc`] | message limits, health and reflection services, the listener stream |
//! | [`metrics`] | `GET /metrics` (OpenMetrics text) beside gRPC on the service's port |
//! | [`tls`] | TLS and mutual TLS on the listener, reloaded while serving |
//! | [`reload`] | reloading files on SIGHUP and on change (TLS files, the gateway's API keys) |
//! | [`image_input`] | decoding uploaded images within byte and side limits |
//! | [`text_input`] | prompts that say nothing (only white space, control or format characters) |
//!
//! # How a service uses it
//!
//! The service's `Config` flattens [`ServeArgs`] (`#[command(flatten)] serve`:
//! `--max-message-bytes`, `--shutdown-grace-secs`). Its handlers hold a [`Slot<T>`] and read
//! their state with [`Slot::get`] (`None` while starting). Its library `run` builds its tonic
//! server with the message limits applied and calls
//!
//! ```ignore
//! unclip_server::serve(
//!     config.serve.serve_config(SERVICE_NAME).with_metrics(metrics),
//!     listener,
//!     tonic::service::Routes::new(server),
//!     slot,
//!     ready, // a future making the state: checks, loading, a warm-up call
//!     shutdown,
//! )
//! .await
//! ```
//!
//! [`serve()`] reports NOT_SERVING at once, SERVING once `ready` returned (its value is then in
//! the slot), adds health and reflection (v1 + v1alpha), and on `shutdown` reports
//! NOT_SERVING, ends health `Watch` streams, stops accepting and finishes the calls in flight
//! (at most `--shutdown-grace-secs`). A failed `ready` stops the server and is `serve`'s error.
//! The binary is `init_tracing()`, `Config::parse()`, bind, `run(config, listener,
//! shutdown_signal())`; tests bind `127.0.0.1:0` and pass a oneshot.

pub mod grpc;
pub mod image_input;
pub mod logging;
pub mod metrics;
pub mod reload;
pub mod serve;
pub mod shutdown;
pub mod text_input;
pub mod tls;

pub use serve::{ServeArgs, ServeConfig, Slot, serve};
pub use shutdown::shutdown_signal;
