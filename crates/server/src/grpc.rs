//! gRPC plumbing shared by the services: message limits, health and reflection.

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tonic_reflection::server::{v1, v1alpha};

/// Default cap on one encoded message, each way: [`unclip_proto::MAX_MESSAGE_BYTES`].
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = unclip_proto::MAX_MESSAGE_BYTES;

/// The reflection service (`grpc.reflection.v1`), describing `unclip.v1` and
/// `grpc.health.v1`.
pub fn reflection_v1() -> v1::ServerReflectionServer<impl v1::ServerReflection> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(unclip_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the embedded descriptor sets are valid; this is a bug")
}

/// The same on `grpc.reflection.v1alpha`, for older clients (grpcurl before 1.8.8).
pub fn reflection_v1alpha() -> v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(unclip_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("the embedded descriptor sets are valid; this is a bug")
}

/// A service's health as `grpc.health.v1` reports it: under its own name and under "" (the
/// whole server), which are always set together since each server hosts one service.
#[derive(Debug, Clone)]
pub struct Health {
    /// The reporter behind the health service.
    reporter: HealthReporter,
    /// The fully qualified service name, e.g. `unclip.v1.ClipService`.
    service: &'static str,
}

impl Health {
    /// Wraps `reporter` for `service`. Call [`Health::set`] with `false` before serving: the
    /// reporter starts with "" SERVING.
    pub fn new(reporter: HealthReporter, service: &'static str) -> Self {
        Self { reporter, service }
    }

    /// Marks the service (and the server) SERVING or NOT_SERVING.
    pub async fn set(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status(self.service, status).await;
        self.reporter.set_service_status("", status).await;
    }
}

impl Health {
    /// For shutdown, once NOT_SERVING has been reported ([`Health::set`]): removes the
    /// statuses, which ends every open `Watch` stream (a watcher would otherwise hold graceful
    /// shutdown open forever). Checks after this answer NOT_FOUND.
    pub async fn stop(&self) {
        let mut reporter = self.reporter.clone();
        reporter.clear_service_status(self.service).await;
        reporter.clear_service_status("").await;
    }
}

/// A bound listener as tonic's incoming stream, with TCP_NODELAY (small unary replies should
/// not wait for Nagle).
pub fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}
