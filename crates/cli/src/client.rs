//! The gateway connection, the calls' deadline, and how a gRPC error reads to a user
//! (`INVALID_ARGUMENT: num_images: must be 1..=10, got 0`).

use std::path::Path;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status, Streaming};
use unclip_proto::v1::gateway_client::GatewayClient;
use unclip_proto::v1::{ImagesEvent, ImagesResponse, images_event};
use unclip_proto::{MAX_MESSAGE_BYTES, with_scheme};

use crate::args::ConnectArgs;
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
    /// A TLS file (--ca, --cert, --key) cannot be used.
    #[error(transparent)]
    Tls(#[from] unclip_server::tls::TlsError),
    /// The API key cannot be sent as a header.
    #[error("--api-key: not a valid header value (printable ASCII only)")]
    BadApiKey,
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

/// Puts the API key, when there is one, on every call as `authorization: Bearer KEY`.
#[derive(Clone, Default)]
pub struct ApiKey(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself.
        f.write_str(if self.0.is_some() {
            "ApiKey(..)"
        } else {
            "ApiKey(None)"
        })
    }
}

impl Interceptor for ApiKey {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The gateway's client as the commands use it.
pub type Gateway = GatewayClient<InterceptedService<Channel, ApiKey>>;

/// Connects to the gateway at `url`, with message limits as large as the services', over TLS
/// when `connect` names a CA (an `http://` URL then means `https://`), sending its API key.
pub async fn connect(url: &str, connect: &ConnectArgs) -> Result<Gateway, ClientError> {
    use unclip_server::tls::{read_pem_certificates, read_pem_key};
    let mut url = with_scheme(url);
    let tls = match &connect.ca {
        None => None,
        Some(ca) => {
            if let Some(rest) = url.strip_prefix("http://") {
                url = format!("https://{rest}");
            }
            let mut tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read_pem_certificates("--ca", ca)?));
            if let (Some(cert), Some(key)) = (&connect.cert, &connect.key) {
                tls = tls.identity(Identity::from_pem(
                    read_pem_certificates("--cert", cert)?,
                    read_pem_key("--key", key)?,
                ));
            }
            Some(tls)
        }
    };
    let api_key = match &connect.api_key {
        None => ApiKey(None),
        Some(key) => ApiKey(Some(
            format!("Bearer {key}")
                .parse()
                .map_err(|_| ClientError::BadApiKey)?,
        )),
    };
    let invalid = |source| ClientError::InvalidUrl {
        url: url.clone(),
        source,
    };
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(invalid)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(invalid)?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|source| ClientError::Connect { url, source })?;
    Ok(GatewayClient::with_interceptor(channel, api_key)
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
