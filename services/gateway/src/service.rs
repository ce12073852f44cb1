//! The `unclip.v1.Gateway` gRPC adapter over [`Core`]: each handler reads the [`Caller`] off
//! the request (the `authorization: Bearer` token, the peer address, the `grpc-timeout`
//! deadline), calls the core, and maps its [`Error`](crate::Error) to a [`Status`]. The
//! `...Stream` calls return the core's event stream with its errors mapped the same way.

use std::pin::Pin;

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use unclip_proto::v1::gateway_server::Gateway as GatewayService;
use unclip_proto::v1::{
    GatewayInfo, GatewayStats, GenerateRequest, GetInfoRequest, GetStatsRequest, ImagesEvent,
    ImagesResponse, InpaintRequest, InterpolateRequest, TextDiffRequest, VaryRequest,
};
use unclip_replicas::deadline_of;
use unclip_server::metrics::Metrics;

use crate::api::Core;
use crate::error::Result;
use crate::layer::Caller;

/// The fully qualified service name health reports under.
pub const SERVICE_NAME: &str = "unclip.v1.Gateway";

/// A stream of events, as tonic sends it.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<ImagesEvent, Status>> + Send>>;

/// The gRPC handlers.
#[derive(Debug, Clone)]
pub struct GatewayApi {
    core: Core,
}

impl GatewayApi {
    /// Handlers over `core`.
    pub fn new(core: Core) -> Self {
        Self { core }
    }

    /// The core the handlers call.
    pub fn core(&self) -> &Core {
        &self.core
    }

    /// What `GET /metrics` reports.
    pub fn metrics(&self) -> Metrics {
        self.core.metrics()
    }
}

/// The caller as the request shows it, and the message.
fn caller_of<T>(request: Request<T>) -> (Caller, T) {
    let bearer = request
        .metadata()
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(Caller::bearer_of);
    let caller = Caller {
        bearer,
        peer: request.remote_addr(),
        deadline: deadline_of(&request),
    };
    (caller, request.into_inner())
}

/// The core's answer as a gRPC one.
fn answer<T>(result: Result<T>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
}

/// The core's stream as a gRPC one.
fn stream_answer(result: Result<crate::api::EventStream>) -> Result<Response<EventStream>, Status> {
    let events = result.map_err(Status::from)?;
    Ok(Response::new(Box::pin(
        events.map(|event| event.map_err(Status::from)),
    )))
}

/// The handlers of the image capabilities: each unary one and its `...Stream` twin call the
/// core with the same request type.
macro_rules! gateway_service {
    ($(($unary:ident, $stream:ident, $stream_type:ident, $request:ty)),* $(,)?) => {
        #[tonic::async_trait]
        impl GatewayService for GatewayApi {
            $(
                async fn $unary(
                    &self,
                    request: Request<$request>,
                ) -> Result<Response<ImagesResponse>, Status> {
                    let (caller, message) = caller_of(request);
                    answer(self.core.run(caller, message).await)
                }

                type $stream_type = EventStream;

                async fn $stream(
                    &self,
                    request: Request<$request>,
                ) -> Result<Response<EventStream>, Status> {
                    let (caller, message) = caller_of(request);
                    stream_answer(self.core.run_stream(caller, message).await)
                }
            )*

            async fn get_info(
                &self,
                request: Request<GetInfoRequest>,
            ) -> Result<Response<GatewayInfo>, Status> {
                answer(self.core.info(caller_of(request).0).await)
            }

            async fn get_stats(
                &self,
                request: Request<GetStatsRequest>,
            ) -> Result<Response<GatewayStats>, Status> {
                answer(self.core.stats(caller_of(request).0).await)
            }
        }
    };
}

gateway_service!(
    (
        generate,
        generate_stream,
        GenerateStreamStream,
        GenerateRequest
    ),
    (vary, vary_stream, VaryStreamStream, VaryRequest),
    (
        interpolate,
        interpolate_stream,
        InterpolateStreamStream,
        InterpolateRequest
    ),
    (
        text_diff,
        text_diff_stream,
        TextDiffStreamStream,
        TextDiffRequest
    ),
    (inpaint, inpaint_stream, InpaintStreamStream, InpaintRequest),
);

#[cfg(test)]
mod tests;
