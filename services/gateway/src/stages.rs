//! The stage services as the gateway calls them: one [`ReplicaSet`] per stage, typed calls that
//! carry the request's deadline and time themselves, and the start-up check that every replica
//! serves the same model.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Streaming;
use tonic::transport::Channel;
use unclip_proto::StepEvent;
use unclip_proto::v1::clip_service_client::ClipServiceClient;
use unclip_proto::v1::decoder_service_client::DecoderServiceClient;
use unclip_proto::v1::prior_service_client::PriorServiceClient;
use unclip_proto::v1::{
    DecodeRequest, DecodeResponse, EncodeImageRequest, EncodeImageResponse, EncodeTextRequest,
    EncodeTextResponse, GetInfoRequest, InvertRequest, InvertResponse, ModelInfo,
    PriorSampleRequest, PriorSampleResponse, ReplicaInfo, StageTiming, Tensor, TextEncoding,
    UpsampleRequest, UpsampleResponse,
};
use unclip_replicas::{ReplicaConfig, ReplicaSet, request};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::stage::Stage;
use crate::stats::{self, DurationFamily};

/// The three stage services, each behind its replicas.
#[derive(Debug, Clone)]
pub struct Stages {
    /// `unclip.v1.ClipService` replicas.
    pub clip: ReplicaSet,
    /// `unclip.v1.PriorService` replicas.
    pub prior: ReplicaSet,
    /// `unclip.v1.DecoderService` replicas.
    pub decoder: ReplicaSet,
    /// Largest message sent to or accepted from a stage.
    max_message_bytes: usize,
    /// Seconds of successful stage calls, by stage label.
    call_seconds: DurationFamily,
}

/// What the stages serve, read at start-up.
#[derive(Debug, Clone)]
pub struct StageInfos {
    /// The CLIP service's description (its limits are the CLIP service's).
    pub clip: ModelInfo,
    /// The prior service's.
    pub prior: ModelInfo,
    /// The decoder service's (sizes of the cascade).
    pub decoder: ModelInfo,
}

impl StageInfos {
    /// The model version all stages serve.
    pub fn version(&self) -> &str {
        &self.decoder.version
    }

    /// The final image side: the last upsampler's output, or the decoder's.
    pub fn output_size(&self) -> u32 {
        self.decoder
            .upsamplers
            .last()
            .map_or(self.decoder.decoder_image_size, |u| u.output_size)
    }
}

/// The stage calls that have a `...Stream` twin, each one method over [`Stages::stepped`]:
/// `name(Request) -> Response, |message| its Stage, the client maker, the unary RPC, the
/// streaming RPC;`.
macro_rules! stepped_calls {
    ($($(#[$doc:meta])* $name:ident($request:ty) -> $response:ty,
        $stage:expr, $client:ident, $unary:ident, $stream:ident;)*) => {
        $(
            $(#[$doc])*
            pub async fn $name(
                &self,
                deadline: Option<Instant>,
                message: $request,
                steps: Option<StepSink>,
            ) -> Result<($response, StageTiming)> {
                let stage: fn(&$request) -> Stage = $stage;
                let call = StepCall::new(stage(&message), deadline, message, steps);
                self.stepped(
                    call,
                    |ch| self.$client(ch),
                    |mut c, r| async move { c.$unary(r).await },
                    |mut c, r| async move { c.$stream(r).await },
                )
                .await
            }
        )*
    };
}

impl Stages {
    /// Replica sets of the three stages from `config` (channels connect lazily).
    pub async fn new(config: &Config) -> anyhow::Result<Self> {
        let replica_config = ReplicaConfig {
            max_attempts: config.stage_attempts.max(1),
            dns_refresh: Duration::from_secs(config.dns_refresh_secs),
            ..ReplicaConfig::default()
        };
        let set = |stage: &'static str, list: &str| {
            let addresses = ReplicaSet::parse_list(list);
            let replica_config = replica_config.clone();
            async move {
                ReplicaSet::new(stage, &addresses, replica_config)
                    .await
                    .map_err(|e| anyhow::anyhow!("--{stage}: {e}"))
            }
        };
        Ok(Self {
            clip: set("clip", &config.clip).await?,
            prior: set("prior", &config.prior).await?,
            decoder: set("decoder", &config.decoder).await?,
            max_message_bytes: config.serve.max_message_bytes,
            call_seconds: stats::duration_family(),
        })
    }

    /// Asks every replica of every stage for its GetInfo, waiting up to `timeout` for replicas
    /// that are still loading, and checks that all serve one model version and that each stage
    /// has the components it must run. The error names every mismatch.
    pub async fn check(&self, timeout: Duration) -> anyhow::Result<StageInfos> {
        let deadline = Instant::now() + timeout;
        let mut found: Vec<(&'static str, String, ModelInfo)> = Vec::new();
        for (stage, set) in [
            ("clip", &self.clip),
            ("prior", &self.prior),
            ("decoder", &self.decoder),
        ] {
            for (name, channel) in set.channels() {
                let info = info_of(stage, channel, deadline)
                    .await
                    .map_err(|e| anyhow::anyhow!("{stage} replica {name}: {e}"))?;
                found.push((stage, name, info));
            }
        }
        let version = &found[0].2.version;
        if found.iter().any(|(_, _, info)| &info.version != version) {
            let list: Vec<String> = found
                .iter()
                .map(|(stage, name, info)| {
                    format!("{stage} {name}: {} {}", info.model_id, info.version)
                })
                .collect();
            anyhow::bail!(
                "the stages serve different models; every replica must load the same model \
                 repository: {}",
                list.join("; ")
            );
        }
        let first = |stage: &str| {
            found
                .iter()
                .find(|(s, _, _)| *s == stage)
                .map(|(_, _, info)| info.clone())
                .ok_or_else(|| anyhow::anyhow!("no {stage} replica"))
        };
        let infos = StageInfos {
            clip: first("clip")?,
            prior: first("prior")?,
            decoder: first("decoder")?,
        };
        for (stage, info, component) in [
            ("clip", &infos.clip, "text_encoder"),
            ("prior", &infos.prior, "prior"),
            ("decoder", &infos.decoder, "decoder"),
        ] {
            if !info.components.iter().any(|c| c == component) {
                anyhow::bail!(
                    "the {stage} service at {} does not run the {component} (it runs {:?})",
                    found
                        .iter()
                        .find(|(s, _, _)| *s == stage)
                        .map_or("?", |(_, name, _)| name.as_str()),
                    info.components
                );
            }
        }
        Ok(infos)
    }

    fn clip_client(&self, channel: Channel) -> ClipServiceClient<Channel> {
        ClipServiceClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes)
    }

    fn prior_client(&self, channel: Channel) -> PriorServiceClient<Channel> {
        PriorServiceClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes)
    }

    fn decoder_client(&self, channel: Channel) -> DecoderServiceClient<Channel> {
        DecoderServiceClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes)
    }

    /// Every replica of every stage with its counters.
    pub fn replicas(&self) -> Vec<ReplicaInfo> {
        [&self.clip, &self.prior, &self.decoder]
            .into_iter()
            .flat_map(|set| {
                let stage = set.stage().to_string();
                set.snapshot().into_iter().map(move |r| ReplicaInfo {
                    stage: stage.clone(),
                    address: r.address,
                    available: r.available,
                    calls: r.calls,
                    failures: r.failures,
                    retried: r.retried,
                    in_flight: r.in_flight,
                })
            })
            .collect()
    }

    /// Seconds of the stage calls that succeeded, by [`Stage`] label (shared: a clone sees
    /// later observations).
    pub fn call_seconds(&self) -> DurationFamily {
        self.call_seconds.clone()
    }

    /// One call of `stage` on its replicas, with its timing (the wall time and the stage's
    /// own report of its ONNX Runtime time).
    async fn timed<T, F, Fut>(
        &self,
        stage: Stage,
        deadline: Option<Instant>,
        f: F,
    ) -> Result<(T, StageTiming)>
    where
        T: ComputeSeconds,
        F: FnMut(Channel, Option<Duration>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let answered = self
            .set(stage)
            .call(stage.label(), deadline, f)
            .await
            .map_err(|status| Error::Stage { stage, status })?;
        let labels = vec![("stage".to_string(), stage.to_string())];
        self.call_seconds
            .get_or_create(&labels)
            .observe(answered.elapsed.as_secs_f64());
        let timing = StageTiming {
            stage: stage.to_string(),
            seconds: answered.elapsed.as_secs_f64(),
            cached: false,
            replica: answered.replica,
            compute_seconds: answered.value.compute_seconds(),
        };
        Ok((answered.value, timing))
    }

    /// The replicas that run `stage`.
    fn set(&self, stage: Stage) -> &ReplicaSet {
        match stage.service() {
            "clip" => &self.clip,
            "prior" => &self.prior,
            _ => &self.decoder,
        }
    }

    /// `ClipService.EncodeText`.
    pub async fn encode_text(
        &self,
        deadline: Option<Instant>,
        prompts: Vec<String>,
    ) -> Result<(TextEncoding, StageTiming)> {
        const STAGE: Stage = Stage::EncodeText;
        let message = EncodeTextRequest { prompts };
        let (response, timing) = self
            .timed(STAGE, deadline, |ch, t| {
                let mut client = self.clip_client(ch);
                let message = message.clone();
                async move { client.encode_text(request(message, t)).await }
            })
            .await?;
        let encoding = response
            .encoding
            .ok_or_else(|| Error::bad_answer(STAGE, "no encoding"))?;
        Ok((encoding, timing))
    }

    /// `ClipService.EncodeImage`: the raw-scale image embeddings `[B, D]`.
    pub async fn encode_image(
        &self,
        deadline: Option<Instant>,
        images: Vec<bytes::Bytes>,
    ) -> Result<(Tensor, StageTiming)> {
        const STAGE: Stage = Stage::EncodeImage;
        let message = EncodeImageRequest { images };
        let (response, timing) = self
            .timed(STAGE, deadline, |ch, t| {
                let mut client = self.clip_client(ch);
                let message = message.clone();
                async move { client.encode_image(request(message, t)).await }
            })
            .await?;
        let embeds = response
            .image_embeds
            .ok_or_else(|| Error::bad_answer(STAGE, "no image_embeds"))?;
        Ok((embeds, timing))
    }

    stepped_calls! {
        /// `PriorService.Sample`, or `SampleStream` with its steps sent to `steps`.
        sample(PriorSampleRequest) -> PriorSampleResponse,
            |_| Stage::PriorSample, prior_client, sample, sample_stream;
        /// `DecoderService.Decode`, or `DecodeStream` with its steps sent to `steps`.
        decode(DecodeRequest) -> DecodeResponse,
            |_| Stage::Decode, decoder_client, decode, decode_stream;
        /// `DecoderService.Upsample`, or `UpsampleStream` with its steps sent to `steps`.
        upsample(UpsampleRequest) -> UpsampleResponse,
            |m| Stage::Upsample(m.stage), decoder_client, upsample, upsample_stream;
        /// `DecoderService.Invert`, or `InvertStream` with its steps sent to `steps`.
        invert(InvertRequest) -> InvertResponse,
            |_| Stage::Invert, decoder_client, invert, invert_stream;
    }

    /// A stage call that has a `...Stream` twin: the unary RPC (`unary`) when nobody watches
    /// its steps, else the streaming one (`stream`) read to its result with every step sent to
    /// the call's sink. `client` makes the stage's client on the chosen replica's channel.
    async fn stepped<M, C, R, E, U, UF, S, SF>(
        &self,
        call: StepCall<M>,
        client: impl Fn(Channel) -> C,
        unary: U,
        stream: S,
    ) -> Result<(R, StageTiming)>
    where
        M: Clone,
        R: ComputeSeconds,
        E: StepEvent<Result = R>,
        U: Fn(C, tonic::Request<M>) -> UF,
        UF: Future<Output = std::result::Result<tonic::Response<R>, tonic::Status>>,
        S: Fn(C, tonic::Request<M>) -> SF,
        SF: Future<Output = std::result::Result<tonic::Response<Streaming<E>>, tonic::Status>>,
    {
        let StepCall {
            stage,
            deadline,
            message,
            steps,
        } = call;
        let (unary, stream, steps) = (&unary, &stream, steps.as_ref());
        self.timed(stage, deadline, |ch, t| {
            let client = client(ch);
            let message = request(message.clone(), t);
            async move {
                match steps {
                    None => unary(client, message).await,
                    Some(steps) => {
                        read_steps(stream(client, message).await?.into_inner(), steps).await
                    }
                }
            }
        })
        .await
    }
}

/// One stage call with steps: which, until when, the message, and where its steps go (`None`:
/// unary).
struct StepCall<M> {
    stage: Stage,
    deadline: Option<Instant>,
    message: M,
    steps: Option<StepSink>,
}

impl<M> StepCall<M> {
    fn new(stage: Stage, deadline: Option<Instant>, message: M, steps: Option<StepSink>) -> Self {
        Self {
            stage,
            deadline,
            message,
            steps,
        }
    }
}

/// Where a streaming stage call's steps go: (step, total), the latest only.
pub type StepSink = watch::Sender<(u32, u32)>;

/// Reads a stage's `...Stream` to its result, sending its steps to `steps` on the way. A
/// stream that ends without a result answers INTERNAL (not retried).
async fn read_steps<E: StepEvent>(
    mut stream: Streaming<E>,
    steps: &StepSink,
) -> std::result::Result<tonic::Response<E::Result>, tonic::Status> {
    while let Some(event) = stream.message().await? {
        match event.into_parts() {
            Some(Ok(result)) => return Ok(tonic::Response::new(result)),
            Some(Err(progress)) => {
                steps.send_replace((progress.step, progress.total));
            }
            None => {}
        }
    }
    Err(tonic::Status::internal(
        "the stage's stream ended without a result",
    ))
}

/// GetInfo of one replica, asked again while it is unreachable or loading, until `deadline`.
async fn info_of(stage: &str, channel: Channel, deadline: Instant) -> anyhow::Result<ModelInfo> {
    let mut last = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            anyhow::bail!("did not answer GetInfo before the start-up timeout ({last})");
        }
        let call = async {
            match stage {
                "clip" => ClipServiceClient::new(channel.clone())
                    .get_info(request(GetInfoRequest {}, Some(left)))
                    .await
                    .map(tonic::Response::into_inner),
                "prior" => PriorServiceClient::new(channel.clone())
                    .get_info(request(GetInfoRequest {}, Some(left)))
                    .await
                    .map(tonic::Response::into_inner),
                _ => DecoderServiceClient::new(channel.clone())
                    .get_info(request(GetInfoRequest {}, Some(left)))
                    .await
                    .map(tonic::Response::into_inner),
            }
        };
        match tokio::time::timeout(left, call).await {
            Ok(Ok(info)) => return Ok(info),
            Ok(Err(status)) => last = format!("{:?}: {}", status.code(), status.message()),
            Err(_) => last = "timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A stage response's report of the seconds its call spent inside ONNX Runtime.
pub trait ComputeSeconds {
    /// The response's `compute_seconds`.
    fn compute_seconds(&self) -> f64;
}

macro_rules! compute_seconds {
    ($($response:ty),* $(,)?) => {
        $(impl ComputeSeconds for $response {
            fn compute_seconds(&self) -> f64 {
                self.compute_seconds
            }
        })*
    };
}

compute_seconds!(
    EncodeTextResponse,
    EncodeImageResponse,
    PriorSampleResponse,
    DecodeResponse,
    UpsampleResponse,
    InvertResponse,
);
