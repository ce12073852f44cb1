//! The serving skeleton of every service: health that turns SERVING only after the service's
//! state is ready (a stage's model loaded and warmed up, the gateway's stages checked),
//! reflection v1 and v1alpha, a bound listener with TCP_NODELAY, and a graceful drain on shutdown
//! (NOT_SERVING first, a delay, new calls refused with UNAVAILABLE, the calls in flight finished
//! within a timeout).
//!
//! A service supplies three things: its tonic server(s) as [`Routes`] (message limits already
//! applied, see [`ServeArgs::max_message_bytes`]), a [`Slot`] its handlers read their state
//! from (a stage's model, the gateway's checked stages), and a `load` future that makes that
//! state ready (opens and warms up the model; checks the stages). [`serve`] does the rest.
//! Nothing here knows about models: `unclip-model-server` adds those on top.
//!
//! With `--tls-cert`/`--tls-key` the port speaks TLS (mutual with `--tls-client-ca`), reloaded
//! while serving ([`crate::tls`]); `--health-listen` adds a plaintext port serving only health.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context;
use axum::middleware::Next;
use clap::Args;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tonic::Status;
use tonic::service::Routes;
use tonic::transport::Server;

use crate::grpc::{self, DEFAULT_MAX_MESSAGE_BYTES, Health};
use crate::metrics::{CONTENT_TYPE, Metrics};
use crate::reload::watch_files;
use crate::tls::{ReloadingTls, TlsFiles};

/// Serving flags shared by every service, flattened into each service's `Config`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Largest gRPC message accepted or sent, in bytes (sized for a batch of 1024×1024 images).
    #[arg(long, env = "UNCLIP_MAX_MESSAGE_BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,

    /// Serve TLS with this certificate chain (PEM, leaf first); needs --tls-key. Without it
    /// the service speaks plaintext. Reloaded on SIGHUP and when the file changes.
    #[arg(long, env = "UNCLIP_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "UNCLIP_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Mutual TLS: answer only clients presenting a certificate issued by a CA in this PEM
    /// file (e.g. the gateway's, at a stage). Needs --tls-cert.
    #[arg(long, env = "UNCLIP_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Seconds between checks of the TLS files (and the gateway's API key file) for changes;
    /// 0 reloads on SIGHUP only.
    #[arg(long, env = "UNCLIP_RELOAD_CHECK_SECS", default_value_t = 10)]
    pub reload_check_secs: u64,

    /// Also serve gRPC health (only health) in plaintext on this address, for probes that
    /// cannot speak TLS (Kubernetes `grpc` probes) when the main port has TLS.
    #[arg(long, env = "UNCLIP_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,

    /// Milliseconds to keep serving after SIGTERM/Ctrl-C with health already NOT_SERVING, so
    /// load balancers (and the gateway) stop sending before new calls are refused. Behind a
    /// Kubernetes Service, a few seconds; 0 refuses new calls at once.
    #[arg(long, env = "UNCLIP_DRAIN_DELAY_MS", default_value_t = DEFAULT_DRAIN_DELAY_MS)]
    pub drain_delay_ms: u64,

    /// Seconds calls in flight may take to finish once draining (new calls are then refused
    /// with UNAVAILABLE) before the service stops anyway. Default 30.
    #[arg(long, env = "UNCLIP_DRAIN_TIMEOUT_SECS")]
    pub drain_timeout_secs: Option<u64>,

    /// Deprecated: the old name of --drain-timeout-secs, used when that is not given.
    #[arg(long, env = "UNCLIP_SHUTDOWN_GRACE_SECS", hide_short_help = true)]
    pub shutdown_grace_secs: Option<u64>,
}

/// `--drain-delay-ms` when not given: long enough for a client polling health to see
/// NOT_SERVING, short enough not to slow every restart.
pub const DEFAULT_DRAIN_DELAY_MS: u64 = 1000;

/// `--drain-timeout-secs` when neither it nor `--shutdown-grace-secs` is given.
pub const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 30;

impl Default for ServeArgs {
    fn default() -> Self {
        Self {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            reload_check_secs: 10,
            health_listen: None,
            drain_delay_ms: DEFAULT_DRAIN_DELAY_MS,
            drain_timeout_secs: None,
            shutdown_grace_secs: None,
        }
    }
}

impl ServeArgs {
    /// The [`ServeConfig`] of the service named `service` (e.g. `unclip.v1.PriorService`).
    /// `--shutdown-grace-secs` (or UNCLIP_SHUTDOWN_GRACE_SECS) stands in for
    /// `--drain-timeout-secs` when only it is given, with a deprecation warning.
    pub fn serve_config(&self, service: &'static str) -> ServeConfig {
        let drain_timeout = match (self.drain_timeout_secs, self.shutdown_grace_secs) {
            (Some(secs), _) => secs,
            (None, Some(secs)) => {
                tracing::warn!(
                    "--shutdown-grace-secs (UNCLIP_SHUTDOWN_GRACE_SECS) is deprecated; use \
                     --drain-timeout-secs (UNCLIP_DRAIN_TIMEOUT_SECS)"
                );
                secs
            }
            (None, None) => DEFAULT_DRAIN_TIMEOUT_SECS,
        };
        ServeConfig {
            service,
            drain_delay: Duration::from_millis(self.drain_delay_ms),
            shutdown_grace: Duration::from_secs(drain_timeout),
            metrics: None,
            http: None,
            readiness: None,
            tls: self.tls_files(),
            reload_every: Duration::from_secs(self.reload_check_secs),
            health_listen: self.health_listen,
        }
    }

    /// The TLS files, when --tls-cert and --tls-key are given.
    pub fn tls_files(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
    }
}

/// What [`serve`] needs to know about the service besides its routes.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The fully qualified gRPC service name health reports under (besides "").
    pub service: &'static str,
    /// How long the service keeps serving after shutdown starts, health NOT_SERVING, before
    /// it refuses new calls.
    pub drain_delay: Duration,
    /// How long calls in flight may run on once new calls are refused (the drain timeout).
    pub shutdown_grace: Duration,
    /// What `GET /metrics` reports (HTTP/1.1 on the same port as gRPC); `None`: no endpoint.
    pub metrics: Option<Metrics>,
    /// More HTTP routes served beside gRPC on the same port (HTTP/1.1 and HTTP/2), merged into
    /// the router after `/metrics`; `None`: none.
    pub http: Option<axum::Router>,
    /// Whether the loaded service can answer right now (a stage's executors alive, the
    /// gateway's stages reachable). After `load`, health follows it: SERVING while it holds
    /// `true`, NOT_SERVING while `false`. `None`: SERVING from `load` until shutdown.
    pub readiness: Option<watch::Receiver<bool>>,
    /// TLS (mutual when a client CA is given) on the port, from these files; `None`: plaintext.
    pub tls: Option<TlsFiles>,
    /// How often the TLS files are checked for changes ([`Duration::ZERO`]: on SIGHUP only).
    pub reload_every: Duration,
    /// A second, plaintext port serving only gRPC health (for probes that cannot do TLS).
    pub health_listen: Option<SocketAddr>,
}

impl ServeConfig {
    /// The same, serving `metrics` at `GET /metrics`.
    pub fn with_metrics(self, metrics: Metrics) -> Self {
        Self {
            metrics: Some(metrics),
            ..self
        }
    }

    /// The same, also serving `router`'s routes over HTTP on the gRPC port (merged with any
    /// given before).
    pub fn with_http(self, router: axum::Router) -> Self {
        let http = match self.http {
            Some(before) => before.merge(router),
            None => router,
        };
        Self {
            http: Some(http),
            ..self
        }
    }

    /// The same, with health following `readiness` once loaded (see [`ServeConfig::readiness`]).
    pub fn with_readiness(self, readiness: watch::Receiver<bool>) -> Self {
        Self {
            readiness: Some(readiness),
            ..self
        }
    }
}

/// Where the handlers find the service's state: empty until `load` has succeeded. Cheap to
/// clone; every clone sees the same value.
#[derive(Debug)]
pub struct Slot<T>(Arc<OnceLock<Arc<T>>>);

impl<T> Clone for Slot<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self(Arc::new(OnceLock::new()))
    }
}

impl<T> Slot<T> {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value, or `None` while `load` has not finished.
    pub fn get(&self) -> Option<Arc<T>> {
        self.0.get().cloned()
    }

    /// Fills the slot (the first call wins). [`serve`] does this after `load`; tests of
    /// handlers may do it directly.
    pub fn set(&self, value: T) {
        let _ = self.0.set(Arc::new(value));
    }
}

/// A background task of [`serve`] (TLS reloads, the health-only port) that ends with it,
/// however `serve` returns.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sets health from `readiness` now and on every change, until the sender is dropped (then it
/// keeps the last value). The loader task running this is aborted when serving stops.
async fn follow(health: &Health, mut readiness: watch::Receiver<bool>) {
    loop {
        let ready = *readiness.borrow_and_update();
        health.set(ready).await;
        if ready {
            tracing::info!("serving");
        } else {
            tracing::warn!("not ready: health NOT_SERVING");
        }
        if readiness.changed().await.is_err() {
            return;
        }
    }
}

/// The service's calls in flight (gRPC, not health checks), and whether new ones are refused.
#[derive(Debug, Default)]
struct Drain {
    /// Calls whose response body has not ended.
    calls: AtomicUsize,
    /// Set when draining starts: new calls are refused.
    refusing: AtomicBool,
    /// Told when `calls` drops to 0.
    idle: Notify,
}

/// One call in flight; dropped with its response body.
#[derive(Debug)]
struct Call(Arc<Drain>);

impl Drop for Call {
    fn drop(&mut self) {
        if self.0.calls.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Drain {
    /// Counts a new call, or `None` when draining (refuse it).
    fn enter(drain: &Arc<Drain>) -> Option<Call> {
        // Count first, then look: a call counted before the flag was set is waited for, one
        // counted after sees the flag.
        drain.calls.fetch_add(1, Ordering::SeqCst);
        let call = Call(Arc::clone(drain));
        (!drain.refusing.load(Ordering::SeqCst)).then_some(call)
    }

    /// Refuses new calls and waits for the ones in flight to end.
    async fn refuse_and_wait(&self) {
        self.refusing.store(true, Ordering::SeqCst);
        loop {
            let idle = self.idle.notified();
            if self.calls.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// A response body that holds its [`Call`] until it ends (a stream's last message sent, or
/// the client gone).
struct Counted {
    body: axum::body::Body,
    _call: Call,
}

impl http_body::Body for Counted {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Whether a draining service refuses `request`: a gRPC call other than a health check.
fn refusable(request: &axum::extract::Request) -> bool {
    let grpc = request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    grpc && !request.uri().path().starts_with("/grpc.health.v1.Health/")
}

/// Serves `routes` on `listener` until `shutdown` resolves, or until `load` fails, whose
/// error is then returned.
///
/// 1. Health (`grpc.health.v1`, under `config.service` and "") answers at once, NOT_SERVING.
/// 2. `load` runs in the background; when it returns, its value goes into `slot` and health
///    turns SERVING (or follows `config.readiness` from then on). `load` should include a warm-up call so SERVING means "answers".
///    Blocking work inside it belongs in `spawn_blocking`.
/// 3. On `shutdown`, a graceful drain: health turns NOT_SERVING at once (and stops following
///    readiness) while the service goes on serving for `config.drain_delay`, so balancers
///    polling health stop sending; then new calls are refused with UNAVAILABLE (so a client
///    with other replicas, such as the gateway, retries there; health checks still answer),
///    the health statuses are removed (ending open `Watch` streams), no new connections are
///    accepted, and the calls in flight finish; `serve` returns `Ok`, or after
///    `config.shutdown_grace` (the drain timeout) stops anyway with a warning. A failed `load`
///    skips the delay.
///
/// Reflection v1 and v1alpha are added for `unclip.v1` and the health service.
pub async fn serve<T>(
    config: ServeConfig,
    listener: TcpListener,
    routes: Routes,
    slot: Slot<T>,
    load: impl Future<Output = anyhow::Result<T>> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()>
where
    T: Send + Sync + 'static,
{
    let address = listener
        .local_addr()
        .context("reading the listener's address")?;
    let http1 = config.metrics.is_some() || config.http.is_some();
    // A bad TLS file stops the start here, with one line naming it.
    let tls = match config.tls.clone() {
        Some(files) => Some(Arc::new(ReloadingTls::load(files, http1)?)),
        None => None,
    };
    let health_listener = match config.health_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("--health-listen: binding {addr}"))?,
        ),
        None => None,
    };
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Health::new(reporter, config.service);
    health.set(false).await;

    // Load and warm up in the background, so health answers NOT_SERVING meanwhile.
    let failure: Arc<Mutex<Option<anyhow::Error>>> = Arc::default();
    let failed = Arc::new(Notify::new());
    let loader = {
        let (health, failure, failed) = (health.clone(), Arc::clone(&failure), Arc::clone(&failed));
        let readiness = config.readiness.clone();
        tokio::spawn(async move {
            match load.await {
                Ok(value) => {
                    slot.set(value);
                    match readiness {
                        None => {
                            health.set(true).await;
                            tracing::info!("serving");
                        }
                        Some(readiness) => follow(&health, readiness).await,
                    }
                }
                Err(e) => {
                    tracing::error!(cause = format!("{e:#}"), "failed to start");
                    *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    // notify_one stores a permit, so this is not lost if nobody waits yet.
                    failed.notify_one();
                }
            }
        })
    };

    // On `shutdown`: NOT_SERVING, the drain delay, then refuse new calls and stop accepting,
    // waiting for the calls in flight for at most the drain timeout. A failed load stops at once.
    let stopping = Arc::new(Notify::new());
    let (stopped, mut stopped_rx) = watch::channel(false);
    let drain = Arc::new(Drain::default());
    let stop = {
        let (health, stopping) = (health.clone(), Arc::clone(&stopping));
        let drain = Arc::clone(&drain);
        // The loader may be following readiness: stop it so it cannot turn health back on.
        let loader = loader.abort_handle();
        let delay = config.drain_delay;
        async move {
            let signalled = tokio::select! {
                _ = shutdown => true,
                _ = failed.notified() => false,
            };
            loader.abort();
            // (After a failed load health never left NOT_SERVING.)
            if signalled {
                health.set(false).await;
                tracing::info!(
                    delay_ms = delay.as_millis() as u64,
                    "shutting down: health NOT_SERVING, still serving for the drain delay"
                );
                tokio::time::sleep(delay).await;
                tracing::info!(
                    in_flight = drain.calls.load(Ordering::SeqCst),
                    "draining: new calls refused (UNAVAILABLE), finishing calls in flight"
                );
                // The drain timeout runs from here.
                stopping.notify_one();
                drain.refuse_and_wait().await;
            } else {
                stopping.notify_one();
            }
            // Only now stop accepting: a connection closed earlier would fail the calls a
            // client sent meanwhile (CANCELLED), where a refusal says UNAVAILABLE.
            health.stop().await;
            let _ = stopped.send(true);
        }
    };
    let grace = config.shutdown_grace;
    tracing::info!(%address, service = config.service, tls = tls.is_some(), "listening");
    // The plaintext health-only port stops with the main one.
    let _health_server = health_listener.map(|listener| {
        let health_service = health_service.clone();
        tracing::info!(address = ?listener.local_addr().ok(), "serving plaintext health");
        AbortOnDrop(tokio::spawn(
            Server::builder()
                .add_service(health_service)
                .serve_with_incoming_shutdown(grpc::incoming(listener), async move {
                    let _ = stopped_rx.wait_for(|stopped| *stopped).await;
                }),
        ))
    });
    let mut routes = routes
        .add_service(health_service)
        .add_service(grpc::reflection_v1())
        .add_service(grpc::reflection_v1alpha());
    if let Some(metrics) = config.metrics.clone() {
        let scrape = move || {
            let text = metrics.render();
            async move { ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], text) }
        };
        routes = Routes::from(
            routes
                .into_axum_router()
                .route("/metrics", axum::routing::get(scrape)),
        );
    }
    if let Some(http) = config.http.clone() {
        routes = Routes::from(routes.into_axum_router().merge(http));
    }
    let routes = Routes::from(routes.into_axum_router().layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: Next| {
            let call = refusable(&request).then(|| Drain::enter(&drain));
            async move {
                match call {
                    None => next.run(request).await,
                    Some(None) => {
                        Status::unavailable("the service is shutting down; call another replica")
                            .into_http()
                    }
                    Some(Some(call)) => {
                        let (parts, body) = next.run(request).await.into_parts();
                        let body = axum::body::Body::new(Counted { body, _call: call });
                        axum::response::Response::from_parts(parts, body)
                    }
                }
            }
        },
    )));
    let router = Server::builder()
        // Prometheus scrapes (and HTTP clients call) over HTTP/1.1; gRPC stays on HTTP/2.
        .accept_http1(http1)
        .add_routes(routes);
    type Served = Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;
    let (server, _reloader): (Served, _) = match tls {
        None => (
            Box::pin(router.serve_with_incoming_shutdown(grpc::incoming(listener), stop)),
            None,
        ),
        Some(tls) => {
            let incoming = tls.incoming(listener);
            let reloader = AbortOnDrop(tokio::spawn(watch_files(
                tls.files().paths(),
                config.reload_every,
                move || tls.reload_and_log(),
            )));
            (
                Box::pin(router.serve_with_incoming_shutdown(incoming, stop)),
                Some(reloader),
            )
        }
    };
    tokio::select! {
        served = server => served.context("serving gRPC")?,
        _ = async { stopping.notified().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(drain_timeout_secs = grace.as_secs(), "calls still in flight after the drain timeout; stopping anyway");
        }
    }
    loader.abort();

    if let Some(e) = failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    tracing::info!("stopped");
    Ok(())
}
