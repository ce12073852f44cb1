//! The gateway's HTTP API, shaped after OpenAI's Images API: [`router`] serves it on the gRPC
//! port (HTTP/1.1 beside gRPC's HTTP/2, see `docs/http-api.md`).
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/images/generations` | JSON → [`Core::run`] of a `GenerateRequest` |
//! | `POST /v1/images/variations`, `edits`, `interpolations`, `text-diffs` | multipart → `Vary`, `Inpaint`, `Interpolate`, `TextDiff` |
//! | `GET /v1/files/{id}.png` | images of `response_format: "url"` answers ([`files`]) |
//! | `GET /v1/models` | the served model |
//! | `GET /healthz`, `GET /readyz` | the process is up (liveness); every stage has an available replica (readiness) |
//! | `GET /openapi.json` | the OpenAPI 3 document of all of this (`openapi.json`, written by hand) |
//!
//! Every image endpoint fills a [`Caller`] (the `Authorization: Bearer` token, the peer, the
//! `x-request-timeout-ms` deadline) and calls the transport-neutral [`Core`] exactly as the gRPC
//! adapter does, so the request layers (API keys, admission) apply alike. `"stream": true`
//! answers Server-Sent Events made from [`Core::run_stream`]'s events ([`stream`]); a client
//! that goes away drops the stream, which cancels the stage work. Errors are OpenAI's shape
//! with the gRPC code mapped to one HTTP status ([`error`]).

pub mod error;
pub mod files;
pub mod request;
mod response;
mod stream;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::multipart::MultipartRejection;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Multipart, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use clap::Args;
use serde_json::json;
use tokio::time::Instant;

use crate::api::{Core, ImagesRequest};
use crate::layer::Caller;
use error::ApiError;
use files::FileStore;
use request::{Fields, Options, PartLimits, Served};
use response::Kind;

/// The OpenAPI 3 document of the HTTP API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Largest JSON body (a generation request is a few hundred bytes).
const JSON_LIMIT: usize = 1 << 20;

/// Largest text part of a multipart form.
const TEXT_PART_LIMIT: usize = 64 << 10;

/// The header of a caller's deadline: milliseconds from when the request arrives.
pub const TIMEOUT_HEADER: &str = "x-request-timeout-ms";

/// The HTTP API's flags, flattened into the gateway's `Config`.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// MiB of memory for the images of `response_format: "url"` answers (served at
    /// /v1/files/...); the oldest are dropped past it.
    #[arg(long, env = "UNCLIP_HTTP_FILES_MB", default_value_t = 256)]
    pub http_files_mb: u64,

    /// Seconds an image of a `url` answer stays available; afterwards its URL answers 404.
    #[arg(long, env = "UNCLIP_HTTP_FILES_TTL_SECS", default_value_t = 3600)]
    pub http_files_ttl_secs: u64,

    /// The gateway's public base URL for the URLs of `url` answers (e.g.
    /// https://images.example.com behind a proxy); without it they are made from the request's
    /// Host header over http.
    #[arg(long, env = "UNCLIP_HTTP_PUBLIC_URL")]
    pub http_public_url: Option<String>,
}

impl Default for HttpArgs {
    fn default() -> Self {
        Self {
            http_files_mb: 256,
            http_files_ttl_secs: 3600,
            http_public_url: None,
        }
    }
}

/// What the router needs besides the core.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// The URL store's byte bound.
    pub files_max_bytes: u64,
    /// How long a stored image lives.
    pub files_ttl: Duration,
    /// The base of stored images' URLs; `None`: `http://` + the request's Host.
    pub public_url: Option<String>,
    /// Largest image part (the gateway's `--max-image-bytes`).
    pub max_image_bytes: usize,
}

impl HttpConfig {
    /// The HTTP API's configuration from the gateway's.
    pub fn from_config(config: &crate::Config) -> Self {
        let http = &config.http;
        Self {
            files_max_bytes: http.http_files_mb << 20,
            files_ttl: Duration::from_secs(http.http_files_ttl_secs.max(1)),
            public_url: http
                .http_public_url
                .as_ref()
                .map(|url| url.trim_end_matches('/').to_string()),
            max_image_bytes: usize::try_from(config.max_image_bytes).unwrap_or(usize::MAX),
        }
    }
}

/// The router's shared state.
#[derive(Debug)]
struct App {
    core: Core,
    files: FileStore,
    /// `Cache-Control` of stored files: private, for as long as they live.
    files_cache_control: String,
    public_url: Option<String>,
    part_limits: PartLimits,
    /// When the router was made (unix seconds): the model's `created`.
    started: u64,
}

/// The HTTP API over `core`.
pub fn router(core: Core, config: HttpConfig) -> Router {
    let part_limits = PartLimits {
        file: config.max_image_bytes,
        text: TEXT_PART_LIMIT,
    };
    // Two images (interpolations; an edit's image and mask) and the text fields.
    let form_limit = config
        .max_image_bytes
        .saturating_mul(2)
        .saturating_add(1 << 20);
    let app = Arc::new(App {
        core,
        files: FileStore::new(config.files_max_bytes, config.files_ttl),
        files_cache_control: format!("private, max-age={}", config.files_ttl.as_secs()),
        public_url: config.public_url,
        part_limits,
        started: unix_now(),
    });
    let forms = Router::new()
        .route("/v1/images/variations", post(variations))
        .route("/v1/images/edits", post(edits))
        .route("/v1/images/interpolations", post(interpolations))
        .route("/v1/images/text-diffs", post(text_diffs))
        .layer(DefaultBodyLimit::max(form_limit));
    Router::new()
        .route(
            "/v1/images/generations",
            post(generations).layer(DefaultBodyLimit::max(JSON_LIMIT)),
        )
        .merge(forms)
        .route("/v1/files/{name}", get(file))
        .route("/v1/models", get(models))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .with_state(app)
}

/// Seconds since the epoch.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Who calls and where their URLs point.
#[derive(Debug, Clone)]
struct Call {
    caller: Caller,
    /// The base of `/v1/files/...` URLs in the answer.
    base_url: String,
}

impl FromRequestParts<Arc<App>> for Call {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let headers = &parts.headers;
        let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
        let bearer = text(header::AUTHORIZATION.as_str()).and_then(Caller::bearer_of);
        let deadline = match text(TIMEOUT_HEADER) {
            None => None,
            Some(value) => {
                let millis: u64 = value.trim().parse().map_err(|_| {
                    ApiError::invalid(
                        TIMEOUT_HEADER,
                        format!("must be whole milliseconds, got {value:?}"),
                    )
                })?;
                Some(Instant::now() + Duration::from_millis(millis))
            }
        };
        let peer = parts
            .extensions
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(|info| info.remote_addr());
        let base_url = match &app.public_url {
            Some(url) => url.clone(),
            None => format!(
                "http://{}",
                text(header::HOST.as_str()).unwrap_or("localhost")
            ),
        };
        Ok(Call {
            caller: Caller {
                bearer,
                peer,
                deadline,
            },
            base_url,
        })
    }
}

impl App {
    /// The served model's id and size, once the stages are checked.
    fn served(&self) -> Option<Served> {
        self.core.state().map(|gw| Served {
            model_id: gw.infos.decoder.model_id.clone(),
            size: gw.infos.output_size(),
        })
    }

    /// Runs `request` and answers with JSON, or with the stream of its events.
    async fn answer(
        self: &Arc<Self>,
        call: Call,
        request: impl Into<ImagesRequest>,
        options: Options,
        kind: Kind,
    ) -> Result<Response, ApiError> {
        if options.stream {
            let events = self.core.run_stream(call.caller, request).await?;
            Ok(stream::sse(
                Arc::clone(self),
                events,
                options,
                kind,
                call.base_url,
            ))
        } else {
            let images = self.core.run(call.caller, request).await?;
            let body = self
                .images_json(&images, options.format, kind, &call.base_url)
                .await;
            Ok(axum::Json(body).into_response())
        }
    }
}

/// One answer from a handler's result.
fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `POST /v1/images/generations`.
async fn generations(
    State(app): State<Arc<App>>,
    call: Call,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    respond(
        async {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !content_type.starts_with("application/json") {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    format!("Content-Type must be application/json, got {content_type:?}"),
                ));
            }
            let body = body.map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::too_large(None, JSON_LIMIT)
                } else {
                    ApiError::new(rejection.status(), "bad_body", rejection.body_text())
                }
            })?;
            let fields = Fields::from_json(&body)?;
            let (request, options) = request::generation(&fields, app.served().as_ref())?;
            app.answer(call, request, options, Kind::Generation).await
        }
        .await,
    )
}

/// Makes an endpoint's request and options from its fields.
type Build<R> = fn(&Fields, Option<&Served>) -> Result<(R, Options), ApiError>;

/// The multipart endpoints: the form read within its limits, `build` makes the request.
async fn form<R: Into<ImagesRequest>>(
    app: Arc<App>,
    call: Call,
    multipart: Result<Multipart, MultipartRejection>,
    kind: Kind,
    build: Build<R>,
) -> Response {
    respond(
        async {
            let multipart = multipart.map_err(|rejection| {
                ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    format!(
                        "Content-Type must be multipart/form-data: {}",
                        rejection.body_text()
                    ),
                )
            })?;
            let fields = Fields::from_multipart(multipart, app.part_limits).await?;
            let (request, options) = build(&fields, app.served().as_ref())?;
            app.answer(call, request, options, kind).await
        }
        .await,
    )
}

/// `POST /v1/images/variations`.
async fn variations(
    State(app): State<Arc<App>>,
    call: Call,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    form(app, call, multipart, Kind::Variation, request::variation).await
}

/// `POST /v1/images/edits`.
async fn edits(
    State(app): State<Arc<App>>,
    call: Call,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    form(app, call, multipart, Kind::Edit, request::edit).await
}

/// `POST /v1/images/interpolations`.
async fn interpolations(
    State(app): State<Arc<App>>,
    call: Call,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    form(
        app,
        call,
        multipart,
        Kind::Interpolation,
        request::interpolation,
    )
    .await
}

/// `POST /v1/images/text-diffs`.
async fn text_diffs(
    State(app): State<Arc<App>>,
    call: Call,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    form(app, call, multipart, Kind::TextDiff, request::text_diff).await
}

/// `GET /v1/files/{id}.png`.
async fn file(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    match app.files.get(&name).await {
        Some(file) => (
            [
                (header::CONTENT_TYPE, file.mime_type),
                (header::CACHE_CONTROL, app.files_cache_control.as_str()),
            ],
            file.bytes,
        )
            .into_response(),
        None => ApiError::not_found(format!(
            "file {name:?}: not found (files are kept for a limited time)"
        ))
        .into_response(),
    }
}

/// `GET /v1/models`: the served model (asks the request layer, as GetInfo does).
async fn models(State(app): State<Arc<App>>, call: Call) -> Response {
    respond(
        async {
            let info = app.core.info(call.caller).await?;
            let id = info.model.map(|m| m.model_id).unwrap_or_default();
            let body = json!({
                "object": "list",
                "data": [{
                    "id": id,
                    "object": "model",
                    "created": app.started,
                    "owned_by": "unclip-serve",
                }],
            });
            Ok(axum::Json(body).into_response())
        }
        .await,
    )
}

/// `GET /healthz`: the process is up (200 whatever the stages do: a liveness probe).
async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

/// `GET /readyz`: 200 while the gateway can serve (its stages checked and each with an
/// available replica, as gRPC health says), else 503: a readiness probe.
async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.core.ready() {
        return axum::Json(json!({"status": "ready"})).into_response();
    }
    let message = if app.core.state().is_none() {
        "the gateway is still checking its stages"
    } else {
        "a stage has no available replica"
    };
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message).into_response()
}

/// `GET /openapi.json`.
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The OpenAPI document is JSON, OpenAPI 3, and describes every route the router serves.
    #[test]
    fn openapi_lists_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("valid JSON");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        for path in [
            "/v1/images/generations",
            "/v1/images/variations",
            "/v1/images/edits",
            "/v1/images/interpolations",
            "/v1/images/text-diffs",
            "/v1/files/{name}",
            "/v1/models",
            "/healthz",
            "/readyz",
            "/openapi.json",
        ] {
            assert!(doc["paths"].get(path).is_some(), "{path} missing");
        }
    }
}
