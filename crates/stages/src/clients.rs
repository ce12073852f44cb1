//! gRPC clients of the three stage services (clip, prior, decoder) and their health probes.
//!
//! Endpoints are URLs (`http://127.0.0.1:50051`; a bare `host:port` gets `http://`). Message
//! limits are raised to [`MAX_MESSAGE_BYTES`] on every client, as large as the services' own
//! default, so a batch of large images or tensors is not refused by the 4 MiB tonic default.

use std::fmt;
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use unclip_proto::v1::clip_service_client::ClipServiceClient;
use unclip_proto::v1::decoder_service_client::DecoderServiceClient;
use unclip_proto::v1::prior_service_client::PriorServiceClient;
use unclip_proto::v1::{GetInfoRequest, ModelInfo};

use crate::error::{Error, Result};

/// Largest gRPC message the clients send or accept (64 MiB).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// How long a connection attempt may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one health check may take before it counts as "not serving" (and reconnects).
const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// How often [`StageClients::wait_serving`] asks again. Loading takes seconds; 50 ms keeps
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
            clip: with_scheme(clip.into()),
            prior: with_scheme(prior.into()),
            decoder: with_scheme(decoder.into()),
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

/// `url`, with `http://` in front when it names no scheme.
fn with_scheme(url: String) -> String {
    if url.contains("://") {
        url
    } else {
        format!("http://{url}")
    }
}

/// The tonic endpoint of `stage` at `url`.
fn endpoint(stage: Stage, url: &str) -> Result<Endpoint> {
    Endpoint::from_shared(with_scheme(url.to_string()))
        .map(|e| e.connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true))
        .map_err(|source| Error::InvalidEndpoint {
            stage,
            url: url.to_string(),
            source,
        })
}

/// Connects to `stage` at `url`.
async fn connect(stage: Stage, url: &str) -> Result<Channel> {
    endpoint(stage, url)?
        .connect()
        .await
        .map_err(|source| Error::Connect {
            stage,
            url: url.to_string(),
            source,
        })
}

/// Connected clients of the three stage services. Cheap to clone: clones share the
/// connections (tonic channels multiplex calls).
#[derive(Debug, Clone)]
pub struct StageClients {
    /// `unclip.v1.ClipService`.
    pub clip: ClipServiceClient<Channel>,
    /// `unclip.v1.PriorService`.
    pub prior: PriorServiceClient<Channel>,
    /// `unclip.v1.DecoderService`.
    pub decoder: DecoderServiceClient<Channel>,
    /// Where they are, for messages.
    endpoints: StageEndpoints,
}

impl StageClients {
    /// Connects to the three services (each must accept a connection; use
    /// [`StageClients::wait_serving`] first to wait for them to load).
    pub async fn connect(endpoints: &StageEndpoints) -> Result<Self> {
        let (clip, prior, decoder) = tokio::try_join!(
            connect(Stage::Clip, &endpoints.clip),
            connect(Stage::Prior, &endpoints.prior),
            connect(Stage::Decoder, &endpoints.decoder),
        )?;
        Ok(Self {
            clip: ClipServiceClient::new(clip)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            prior: PriorServiceClient::new(prior)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            decoder: DecoderServiceClient::new(decoder)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            endpoints: endpoints.clone(),
        })
    }

    /// Where the services are.
    pub fn endpoints(&self) -> &StageEndpoints {
        &self.endpoints
    }

    /// Polls the health of all three services until each reports SERVING, for at most
    /// `timeout` in all.
    pub async fn wait_serving(endpoints: &StageEndpoints, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        for stage in Stage::ALL {
            let mut probe = HealthProbe::new(stage, endpoints.get(stage))?;
            while !probe.is_serving().await {
                if started.elapsed() >= timeout {
                    return Err(Error::NotServing {
                        stage,
                        url: endpoints.get(stage).to_string(),
                        after: started.elapsed(),
                        output: String::new(),
                    });
                }
                tokio::time::sleep(HEALTH_POLL_INTERVAL).await;
            }
        }
        Ok(())
    }

    /// The `GetInfo` of the clip, prior and decoder services, in that order, after checking
    /// that all three loaded the same model repository (same `version`).
    pub async fn model_infos(&mut self) -> Result<[ModelInfo; 3]> {
        let rpc = |call| move |status| Error::Rpc { call, status };
        let clip = self
            .clip
            .get_info(GetInfoRequest {})
            .await
            .map_err(rpc("clip GetInfo"))?
            .into_inner();
        let prior = self
            .prior
            .get_info(GetInfoRequest {})
            .await
            .map_err(rpc("prior GetInfo"))?
            .into_inner();
        let decoder = self
            .decoder
            .get_info(GetInfoRequest {})
            .await
            .map_err(rpc("decoder GetInfo"))?
            .into_inner();
        if clip.version != prior.version || clip.version != decoder.version {
            return Err(Error::ModelMismatch(format!(
                "clip {} {}, prior {} {}, decoder {} {}",
                clip.model_id,
                clip.version,
                prior.model_id,
                prior.version,
                decoder.model_id,
                decoder.version
            )));
        }
        Ok([clip, prior, decoder])
    }
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
