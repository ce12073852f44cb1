//! What the unCLIP tests share, so that no test crate keeps its own copy: a service under test
//! on 127.0.0.1:0 ([`TestServer`]), the life-cycle checks every stage service passes
//! ([`checks`]), the committed models and the recorded karlo-tiny fixtures ([`fixtures`]), the
//! ONNX Runtime library, status and numeric assertions, a real `redis-server`
//! ([`RedisServer`]), PNG helpers, a `/metrics` reader and a small HTTP/1.1 client
//! ([`HttpRequest`], with multipart forms and Server-Sent Events).
//!
//! Nothing here passes quietly: a missing model, library or `redis-server` is a panic that says
//! what is missing and how to get it.
//!
//! The kit depends on no service crate (a service's tests name it as a dev-dependency): a
//! service is described to it by implementing [`Service`], most briefly with [`service!`].

pub mod checks;
pub mod fixtures;
pub mod http;
pub mod images;
pub mod metrics;
pub mod numeric;
pub mod redis_server;
pub mod server;
pub mod status;

pub use fixtures::{Fixture, karlo_tiny, ort_library, require_ort, root, shapes};
pub use http::{EventReader, Form, HttpAnswer, HttpRequest, SseEvent};
pub use images::{mean_abs_diff, png, rgb};
pub use metrics::{Scrape, http_get, metric, scrape};
pub use numeric::{assert_close, max_abs_diff};
pub use redis_server::{RedisServer, free_port};
pub use server::{Service, Shutdown, TestServer, init_logs};
pub use status::{assert_contains, assert_status};
pub use tonic_health::pb::health_check_response::ServingStatus;
pub use unclip_proto::MAX_MESSAGE_BYTES;

/// What [`service!`] expands to names, so the test crate need not depend on it.
#[doc(hidden)]
pub mod reexports {
    pub use {anyhow, tokio, tonic, unclip_proto};
}
