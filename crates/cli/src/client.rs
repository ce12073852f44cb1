//! The gateway connection, the calls' deadline, and how a gRPC error reads to a user
//! (`INVALID_ARGUMENT: num_images: must be 1..=10, got 0`).

use std::path::Path;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};
use unclip_proto::v1::gateway_client::GatewayClient;
use unclip_proto::v1::{ImagesEvent, ImagesResponse, images_event};
use unclip_proto::{MAX_MESSAGE_BYTES, with_scheme};

use crate::output::{ImageKind, write_preview};
use crate::progress::ProgressView;

/// How long connecting to the gateway may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A call the gateway answered with an error status; shows as `CODE: message`.
#[derive(Debug, thiserror::Error)]
#[error("{}: {}", code_name(.0.code()), .0.message())]
pub struct RpcError(pub Status);

/// Anything that can go wrong reaching the gateway or reading its answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not one tonic can connect to.
    #[error("the gateway URL {url:?} is not valid: {source}")]
    InvalidUrl {
        /// As given.
        url: String,
        /// tonic's reason.
        #[source]
        source: tonic::transport::Error,
    },
    /// Nothing answered there.
    #[error(
        "cannot connect to the gateway at {url} (start one with `unclip stack --model DIR`, or \
         run this command with --local MODEL_DIR)"
    )]
    Connect {
        /// Where it was expected.
        url: String,
        /// tonic's reason.
        #[source]
        source: tonic::transport::Error,
    },
    /// The call failed with a status.
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// A preview image could not be written.
    #[error("{0:#}")]
    Preview(anyhow::Error),
    /// The stream ended without its result.
    #[error("the gateway's stream ended without a result")]
    NoResult,
}

/// The SCREAMING_SNAKE_CASE name of a gRPC status code, as the gRPC spec spells it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Connects to the gateway at `url`, with message limits as large as the services'.
pub async fn connect(url: &str) -> Result<GatewayClient<Channel>, ClientError> {
    let url = with_scheme(url);
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|source| ClientError::InvalidUrl {
            url: url.clone(),
            source,
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    let channel = endpoint
        .connect()
        .await
        .map_err(|source| ClientError::Connect { url, source })?;
    Ok(GatewayClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// `message` as a request with a `timeout` deadline (sent as `grpc-timeout`, so the gateway
/// bounds its stage calls by it too).
pub fn with_deadline<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// Reads a streaming call to its end: progress events into `view`, previews written for
/// `previews` (the output file, when asked for them) as they arrive, the result returned.
pub async fn collect(
    mut stream: Streaming<ImagesEvent>,
    view: &ProgressView,
    previews: Option<(&Path, ImageKind)>,
) -> Result<ImagesResponse, ClientError> {
    let mut result = None;
    while let Some(event) = stream.message().await.map_err(RpcError)? {
        match event.event {
            Some(images_event::Event::Progress(progress)) => view.update(&progress),
            Some(images_event::Event::Result(response)) => result = Some(response),
            Some(images_event::Event::Preview(preview)) => {
                if let Some((out, kind)) = previews {
                    let lines = write_preview(&preview, out, kind).map_err(ClientError::Preview)?;
                    for line in lines {
                        view.println(&line);
                    }
                }
            }
            None => {}
        }
    }
    view.finish();
    result.ok_or(ClientError::NoResult)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Statuses read as the spec's code name and the message.
    #[test]
    fn status_display() {
        let err = RpcError(Status::invalid_argument(
            "num_images: must be 1..=10, got 0",
        ));
        assert_eq!(
            err.to_string(),
            "INVALID_ARGUMENT: num_images: must be 1..=10, got 0"
        );
        assert_eq!(code_name(Code::Unavailable), "UNAVAILABLE");
        assert_eq!(with_scheme("127.0.0.1:5"), "http://127.0.0.1:5");
        assert_eq!(with_scheme("https://x"), "https://x");
    }
}
