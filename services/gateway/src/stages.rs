//! The stage services as the gateway calls them: one [`ReplicaSet`] per stage, typed calls that
//! carry the request's deadline and time themselves, the start-up check that every replica
//! serves the same model, and the probe ([`StageProbe`]: gRPC health and GetInfo) every replica,
//! however found, passes before its first call and again on an interval.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Streaming;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
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
use unclip_replicas::{Probe, ReplicaConfig, ReplicaSet, Verdict, request};

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
    /// The model every replica must serve, set once by the start-up check; the probes refuse
    /// every replica until then.
    expected: Arc<OnceLock<ModelKey>>,
}

/// A model's identity: its id and version (the manifest's content hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelKey {
    /// `ModelInfo.model_id`.
    pub model_id: String,
    /// `ModelInfo.version`.
    pub version: String,
}

impl ModelKey {
    /// The id and version `info` reports.
    pub fn of(info: &ModelInfo) -> Self {
        Self {
            model_id: info.model_id.clone(),
            version: info.version.clone(),
        }
    }
}

impl std::fmt::Display for ModelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.model_id, self.version)
    }
}

/// The probe of one stage's replicas: gRPC health ("" SERVING), then GetInfo, whose model id and
/// version must be the [`ModelKey`] the start-up check settled on.
struct StageProbe {
    /// "clip", "prior" or "decoder": which service's GetInfo to ask.
    stage: &'static str,
    expected: Arc<OnceLock<ModelKey>>,
}

impl Probe for StageProbe {
    fn probe(&self, channel: Channel) -> unclip_replicas::ProbeFuture {
        let (stage, expected) = (self.stage, Arc::clone(&self.expected));
        Box::pin(async move {
            let health = HealthClient::new(channel.clone())
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await;
            match health {
                Ok(answer) if answer.get_ref().status == ServingStatus::Serving as i32 => {}
                Ok(answer) => {
                    return Verdict::NotServing(format!(
                        "health {:?}",
                        ServingStatus::try_from(answer.get_ref().status)
                            .unwrap_or(ServingStatus::Unknown)
                    ));
                }
                Err(status) => {
                    return Verdict::NotServing(format!(
                        "health check: {:?}: {}",
                        status.code(),
                        status.message()
                    ));
                }
            }
            let info = match get_info(stage, channel, None).await {
                Ok(info) => info,
                Err(status) => {
                    return Verdict::NotServing(format!(
                        "GetInfo: {:?}: {}",
                        status.code(),
                        status.message()
                    ));
                }
            };
            let Some(expected) = expected.get() else {
                return Verdict::NotServing("the start-up check has not finished".into());
            };
            let found = ModelKey::of(&info);
            if &found == expected {
                Verdict::Ready
            } else {
                Verdict::Refused(format!(
                    "serves model {found}, the gateway serves {expected}"
                ))
            }
        })
    }
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
    /// Replica sets of the three stages from `config` (channels connect lazily), each replica
    /// probed before its first call ([`StageProbe`]; none passes before [`Stages::admit`]).
    pub async fn new(config: &Config) -> anyhow::Result<Self> {
        Self::build(config, true).await
    }

    /// As [`Stages::new`] without probes: every replica takes calls at once (for tests whose
    /// fake stages have no health service).
    #[cfg(test)]
    pub(crate) async fn unprobed(config: &Config) -> anyhow::Result<Self> {
        Self::build(config, false).await
    }

    async fn build(config: &Config, probed: bool) -> anyhow::Result<Self> {
        let replica_config = ReplicaConfig {
            max_attempts: config.stage_attempts.max(1),
            dns_refresh: Duration::from_secs(config.dns_refresh_secs),
            probe_interval: Duration::from_secs(config.stage_probe_interval_secs),
            tls: config.stage_tls()?,
            ..ReplicaConfig::default()
        };
        let expected: Arc<OnceLock<ModelKey>> = Arc::default();
        let set = |stage: &'static str, list: &str| {
            let addresses = ReplicaSet::parse_list(list);
            let replica_config = replica_config.clone();
            let probe = Arc::new(StageProbe {
                stage,
                expected: Arc::clone(&expected),
            });
            async move {
                if probed {
                    ReplicaSet::probed(stage, &addresses, replica_config, probe).await
                } else {
                    ReplicaSet::new(stage, &addresses, replica_config).await
                }
                .map_err(|e| anyhow::anyhow!("--{stage}: {e}"))
            }
        };
        Ok(Self {
            clip: set("clip", &config.clip).await?,
            prior: set("prior", &config.prior).await?,
            decoder: set("decoder", &config.decoder).await?,
            max_message_bytes: config.serve.max_message_bytes,
            call_seconds: stats::duration_family(),
            expected,
        })
    }

    /// The three replica sets with their labels.
    fn sets(&self) -> [(&'static str, &ReplicaSet); 3] {
        [
            ("clip", &self.clip),
            ("prior", &self.prior),
            ("decoder", &self.decoder),
        ]
    }

    /// Waits until every stage has at least one replica address (a DNS name may resolve to
    /// nothing yet: the sets keep looking it up), logging the ones still missing every 10 s.
    pub async fn resolved(&self) {
        let mut next_log = Instant::now();
        loop {
            let missing: Vec<&str> = self
                .sets()
                .into_iter()
                .filter(|(_, set)| set.snapshot().is_empty())
                .map(|(stage, _)| stage)
                .collect();
            if missing.is_empty() {
                return;
            }
            if Instant::now() >= next_log {
                tracing::warn!(
                    stages = ?missing,
                    "waiting for stage addresses to resolve; health NOT_SERVING meanwhile"
                );
                next_log = Instant::now() + Duration::from_secs(10);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Admits the replicas that serve `expected` (and refuses the others) from now on, and
    /// probes every replica once before returning.
    pub async fn admit(&self, expected: ModelKey) {
        // Set once per gateway: a second call keeps the first model.
        let _ = self.expected.set(expected);
        for (_, set) in self.sets() {
            set.probe_now().await;
        }
    }

    /// Sends `true` to `ready` while every stage has an available replica (SERVING and of the
    /// gateway's model when last probed, and no call failed on it in transport since),
    /// following the replica sets until they are dropped or nobody listens.
    pub fn readiness(&self, ready: watch::Sender<bool>) {
        let mut watches: Vec<watch::Receiver<usize>> =
            self.sets().iter().map(|(_, set)| set.available()).collect();
        let stages: Vec<&'static str> = self.sets().iter().map(|(stage, _)| *stage).collect();
        tokio::spawn(async move {
            loop {
                let mut missing: Vec<&str> = Vec::new();
                for (stage, watch) in stages.iter().zip(&mut watches) {
                    if *watch.borrow_and_update() == 0 {
                        missing.push(stage);
                    }
                }
                let now = missing.is_empty();
                let mut was = now;
                // Only a change wakes the health follower (it logs each).
                ready.send_if_modified(|value| {
                    was = std::mem::replace(value, now);
                    was != now
                });
                if was && !now {
                    tracing::warn!(stages = ?missing, "no available replica: NOT_SERVING");
                }
                let [a, b, c] = &mut watches[..] else { return };
                let changed = tokio::select! {
                    r = a.changed() => r,
                    r = b.changed() => r,
                    r = c.changed() => r,
                    () = ready.closed() => return,
                };
                if changed.is_err() {
                    return;
                }
            }
        });
    }

    /// Every replica as (stage, address, kept out because it serves another model).
    pub fn kept_out(&self) -> Vec<(&'static str, String, bool)> {
        self.sets()
            .into_iter()
            .flat_map(|(stage, set)| {
                set.snapshot()
                    .into_iter()
                    .map(move |r| (stage, r.address, r.refused.is_some()))
            })
            .collect()
    }

    /// Replicas a probe keeps out (another model) per stage: how many times one was refused.
    pub fn refusals(&self) -> Vec<(&'static str, u64)> {
        self.sets()
            .into_iter()
            .map(|(stage, set)| (stage, set.refusals()))
            .collect()
    }

    /// Asks every replica of every stage for its GetInfo, waiting up to `timeout` for replicas
    /// that are still loading, and checks that all serve one model version and that each stage
    /// has the components it must run. The error names every mismatch.
    ///
    /// A replica that refuses connections (down, not loading) is not waited for once every
    /// stage has a replica that answered: it is left to the probes, which check it before its
    /// first call. With `version` (`--model-version`), replicas of other versions are left out
    /// (logged) instead of being a mismatch, and each stage needs one replica of that version.
    pub async fn check(
        &self,
        timeout: Duration,
        version: Option<&str>,
    ) -> anyhow::Result<StageInfos> {
        let deadline = Instant::now() + timeout;
        let replicas: Vec<(&'static str, String, Channel)> = self
            .sets()
            .into_iter()
            .flat_map(|(stage, set)| {
                set.channels()
                    .into_iter()
                    .map(move |(name, channel)| (stage, name, channel))
            })
            .collect();
        let mut answers: Vec<Option<ModelInfo>> = vec![None; replicas.len()];
        loop {
            let mut asks = tokio::task::JoinSet::new();
            for (i, (stage, _, channel)) in replicas.iter().enumerate() {
                if answers[i].is_none() {
                    let (stage, channel) = (*stage, channel.clone());
                    let left = deadline
                        .saturating_duration_since(Instant::now())
                        .min(Duration::from_secs(5));
                    asks.spawn(async move {
                        let answer =
                            tokio::time::timeout(left, get_info(stage, channel, Some(left)))
                                .await
                                .unwrap_or_else(|_| {
                                    Err(tonic::Status::deadline_exceeded("timed out"))
                                });
                        (i, answer)
                    });
                }
            }
            let mut last: Vec<(usize, tonic::Status)> = Vec::new();
            while let Some(Ok((i, answer))) = asks.join_next().await {
                match answer {
                    Ok(info) => answers[i] = Some(info),
                    Err(status) => last.push((i, status)),
                }
            }
            if last.is_empty() {
                break;
            }
            let every_stage_answered = self.sets().iter().all(|(stage, _)| {
                (0..replicas.len()).any(|i| replicas[i].0 == *stage && answers[i].is_some())
            });
            let all_down = last.iter().all(|(_, status)| {
                status.code() == tonic::Code::Unavailable && status.message().contains("connect")
            });
            if every_stage_answered && all_down {
                for (i, status) in &last {
                    let (stage, name, _) = &replicas[*i];
                    tracing::warn!(stage, replica = %name, error = status.message(),
                        "replica down at start-up; the probes check it before its first call");
                }
                break;
            }
            if Instant::now() >= deadline {
                let (i, status) = &last[0];
                let (stage, name, _) = &replicas[*i];
                anyhow::bail!(
                    "{stage} replica {name}: did not answer GetInfo before the start-up timeout \
                     ({:?}: {})",
                    status.code(),
                    status.message()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let mut found: Vec<(&'static str, String, ModelInfo)> = Vec::new();
        let mut other: Vec<String> = Vec::new();
        for ((stage, name, _), info) in replicas.into_iter().zip(answers) {
            let Some(info) = info else { continue };
            if version.is_some_and(|v| v != info.version) {
                tracing::warn!(stage, replica = %name, model = %info.model_id,
                    version = %info.version, "replica of another version left out");
                other.push(format!(
                    "{stage} {name}: {} {}",
                    info.model_id, info.version
                ));
                continue;
            }
            found.push((stage, name, info));
        }
        if let Some(version) = version {
            for (stage, _) in self.sets() {
                if !found.iter().any(|(s, _, _)| *s == stage) {
                    anyhow::bail!(
                        "no {stage} replica serves version {version} (--model-version); found: {}",
                        other.join("; ")
                    );
                }
            }
        }
        let key = ModelKey::of(&found[0].2);
        if found.iter().any(|(_, _, info)| ModelKey::of(info) != key) {
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

/// One GetInfo of the `stage` service ("clip", "prior" or "decoder") on `channel`.
async fn get_info(
    stage: &str,
    channel: Channel,
    timeout: Option<Duration>,
) -> std::result::Result<ModelInfo, tonic::Status> {
    let message = request(GetInfoRequest {}, timeout);
    match stage {
        "clip" => ClipServiceClient::new(channel).get_info(message).await,
        "prior" => PriorServiceClient::new(channel).get_info(message).await,
        _ => DecoderServiceClient::new(channel).get_info(message).await,
    }
    .map(tonic::Response::into_inner)
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
