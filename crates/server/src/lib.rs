//! What every unCLIP gRPC service shares, so that the CLIP, prior and decoder services differ
//! only in their models and RPCs.
//!
//! | module | what |
//! |---|---|
//! | [`args`] | the ONNX Runtime flags (`--ort-library`, `--device`, threads, queue) |
//! | [`logging`] | `tracing` set-up (default filter `info,ort=warn`) |
//! | [`shutdown`] | the SIGTERM / Ctrl-C future |
//! | [`grpc`] | message limits, health and reflection services, serving on a bound listener |
//! | [`error`] | [`ServiceError`] and its one mapping to `tonic::Status` |
//! | [`validate`] | request checks: counts, tensors, text encodings |
//! | [`info`] | the `ModelInfo` every `GetInfo` returns |

pub mod args;
pub mod error;
pub mod grpc;
pub mod info;
pub mod logging;
pub mod shutdown;
pub mod validate;

pub use args::RuntimeArgs;
pub use error::ServiceError;
pub use shutdown::shutdown_signal;
