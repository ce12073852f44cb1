//! The three stage services as a local stack knows them: names, binaries, endpoints, and the
//! health probe that waits for each to report SERVING.
//!
//! Endpoints are URLs (`http://127.0.0.1:50051`; a bare `host:port` gets `http://`).

use std::fmt;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use unclip_proto::with_scheme;

use crate::error::{Error, Result};

/// How long a connection attempt may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one health check may take before it counts as "not serving" (and reconnects).
const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a start-up wait asks again. Loading takes seconds; 50 ms keeps
/// the wait short without busying the services.
pub(crate) const HEALTH_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// One of the three stage services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// `unclip.v1.ClipService`: prompts → CLIP text encodings.
    Clip,
    /// `unclip.v1.PriorService`: text encodings → CLIP image embeddings.
    Prior,
    /// `unclip.v1.DecoderService`: image embeddings → images, and the upsamplers.
    Decoder,
}

impl Stage {
    /// The three, in pipeline order.
    pub const ALL: [Stage; 3] = [Stage::Clip, Stage::Prior, Stage::Decoder];

    /// The service's binary (and Cargo package) name, e.g. `unclip-clip`.
    pub fn binary_name(self) -> &'static str {
        match self {
            Stage::Clip => "unclip-clip",
            Stage::Prior => "unclip-prior",
            Stage::Decoder => "unclip-decoder",
        }
    }

    /// The fully qualified gRPC service name health reports under.
    pub fn service_name(self) -> &'static str {
        match self {
            Stage::Clip => "unclip.v1.ClipService",
            Stage::Prior => "unclip.v1.PriorService",
            Stage::Decoder => "unclip.v1.DecoderService",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Clip => "clip",
            Stage::Prior => "prior",
            Stage::Decoder => "decoder",
        })
    }
}

/// Where the three services listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageEndpoints {
    /// The CLIP service's URL.
    pub clip: String,
    /// The prior service's URL.
    pub prior: String,
    /// The decoder service's URL.
    pub decoder: String,
}

impl StageEndpoints {
    /// The endpoints; a bare `host:port` gets `http://` in front.
    pub fn new(
        clip: impl Into<String>,
        prior: impl Into<String>,
        decoder: impl Into<String>,
    ) -> Self {
        Self {
            clip: with_scheme(&clip.into()),
            prior: with_scheme(&prior.into()),
            decoder: with_scheme(&decoder.into()),
        }
    }

    /// The URL of `stage`.
    pub fn get(&self, stage: Stage) -> &str {
        match stage {
            Stage::Clip => &self.clip,
            Stage::Prior => &self.prior,
            Stage::Decoder => &self.decoder,
        }
    }
}

/// The tonic endpoint of `stage` at `url`.
fn endpoint(stage: Stage, url: &str) -> Result<Endpoint> {
    Endpoint::from_shared(with_scheme(url))
        .map(|e| e.connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true))
        .map_err(|source| Error::InvalidEndpoint {
            stage,
            url: url.to_string(),
            source,
        })
}

/// Asks one service's `grpc.health.v1` whether it is SERVING, reconnecting as needed, so it
/// can be polled while the service starts.
#[derive(Debug)]
pub struct HealthProbe {
    /// The gRPC service name whose health is asked, e.g. `unclip.v1.ClipService`.
    service: &'static str,
    /// Where to connect.
    endpoint: Endpoint,
    /// The connection, once one succeeded; dropped after a failed call so the next poll
    /// reconnects.
    client: Option<HealthClient<Channel>>,
}

impl HealthProbe {
    /// A probe of `stage` at `url` (nothing is connected yet).
    pub fn new(stage: Stage, url: &str) -> Result<Self> {
        Ok(Self::for_service(
            stage.service_name(),
            endpoint(stage, url)?,
        ))
    }

    /// A probe of the health of `service` (a fully qualified gRPC service name) at `endpoint`.
    pub fn for_service(service: &'static str, endpoint: Endpoint) -> Self {
        Self {
            service,
            endpoint,
            client: None,
        }
    }

    /// Whether the service answers SERVING now; false while it cannot be reached, is still
    /// loading, or is shutting down.
    pub async fn is_serving(&mut self) -> bool {
        if self.client.is_none() {
            match self.endpoint.connect().await {
                Ok(channel) => self.client = Some(HealthClient::new(channel)),
                Err(_) => return false,
            }
        }
        let Some(client) = self.client.as_mut() else {
            return false;
        };
        let request = HealthCheckRequest {
            service: self.service.to_string(),
        };
        match tokio::time::timeout(HEALTH_CHECK_TIMEOUT, client.check(request)).await {
            Ok(Ok(response)) => response.into_inner().status == ServingStatus::Serving as i32,
            Ok(Err(_)) | Err(_) => {
                self.client = None;
                false
            }
        }
    }
}
