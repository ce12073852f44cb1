//! A service under test, in this process on an ephemeral loopback port: started with a oneshot
//! shutdown, waited on until its gRPC health says SERVING, and stopped on
//! [`TestServer::stop`] (or told to stop when dropped).

use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use unclip_proto::v1::ModelInfo;

/// A service the kit can run: its flags, its `run(config, listener, shutdown)` and its client.
/// [`service!`](crate::service!) writes the implementation for a stage service.
pub trait Service: 'static {
    /// The binary's name (`argv[0]` for its flags), e.g. `unclip-clip`.
    const BINARY: &'static str;
    /// The gRPC service its health reports under, e.g. `unclip.v1.ClipService`.
    const NAME: &'static str;
    /// Its configuration (clap flags).
    type Config: clap::Parser + Send + 'static;
    /// Its gRPC client.
    type Client;
    /// Serves `config` on `listener` until `shutdown` resolves (the service's `run`).
    fn run(
        config: Self::Config,
        listener: TcpListener,
        shutdown: Shutdown,
    ) -> impl Future<Output = anyhow::Result<()>> + Send + 'static;
    /// A client on `channel`, message limits raised to [`unclip_proto::MAX_MESSAGE_BYTES`].
    fn client(channel: Channel) -> Self::Client;
    /// The service's GetInfo.
    fn get_info(
        client: &mut Self::Client,
    ) -> impl Future<Output = Result<tonic::Response<ModelInfo>, tonic::Status>> + Send;
}

/// Implements [`Service`] for a stage service: `service!(Clip, unclip_clip, "unclip-clip",
/// ClipServiceClient)` defines `struct Clip` and `type TestServer = unclip_testkit::TestServer<Clip>`
/// from the crate's `Config`, `SERVICE_NAME` and `run`.
#[macro_export]
macro_rules! service {
    ($name:ident, $krate:ident, $binary:literal, $client:ident) => {
        /// The service, as the test kit runs it.
        #[derive(Debug)]
        pub struct $name;

        impl $crate::Service for $name {
            const BINARY: &'static str = $binary;
            const NAME: &'static str = $krate::SERVICE_NAME;
            type Config = $krate::Config;
            type Client = $client<$crate::reexports::tonic::transport::Channel>;

            fn run(
                config: Self::Config,
                listener: $crate::reexports::tokio::net::TcpListener,
                shutdown: $crate::Shutdown,
            ) -> impl ::std::future::Future<Output = $crate::reexports::anyhow::Result<()>>
            + Send
            + 'static {
                $krate::run(config, listener, shutdown)
            }

            fn client(channel: $crate::reexports::tonic::transport::Channel) -> Self::Client {
                $client::new(channel)
                    .max_decoding_message_size($crate::MAX_MESSAGE_BYTES)
                    .max_encoding_message_size($crate::MAX_MESSAGE_BYTES)
            }

            async fn get_info(
                client: &mut Self::Client,
            ) -> Result<
                $crate::reexports::tonic::Response<$crate::reexports::unclip_proto::v1::ModelInfo>,
                $crate::reexports::tonic::Status,
            > {
                client
                    .get_info($crate::reexports::unclip_proto::v1::GetInfoRequest {})
                    .await
            }
        }

        /// The service in this process on 127.0.0.1:0.
        pub type TestServer = $crate::TestServer<$name>;
    };
}

/// The shutdown future a test server's `run` gets: resolves when the test stops the server
/// (or drops it).
#[derive(Debug)]
pub struct Shutdown(oneshot::Receiver<()>);

impl Future for Shutdown {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

/// Routes logs through the test harness, so they show only for failing tests (`RUST_LOG`, else
/// `info,ort=warn` as the services' default).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A service `S` running in this process.
#[derive(Debug)]
pub struct TestServer<S> {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Fires the shutdown future; `None` once fired.
    shutdown: Option<oneshot::Sender<()>>,
    /// `run`'s task; `None` once awaited.
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    /// How the kit's clients connect when the server speaks TLS; `None`: plaintext.
    client_tls: Option<ClientTlsConfig>,
    service: PhantomData<fn() -> S>,
}

impl<S: Service> TestServer<S> {
    /// The configuration for `model` plus `extra` flags, with one intra-op thread (the tests
    /// share a small machine); panics unless the ONNX Runtime library is configured.
    pub fn config_for(model: &Path, extra: &[&str]) -> S::Config {
        crate::require_ort();
        let model = model.to_str().expect("a UTF-8 model path");
        let args = [S::BINARY, "--model", model, "--intra-threads", "1"];
        <S::Config as clap::Parser>::parse_from(args.iter().chain(extra))
    }

    /// The configuration for karlo-tiny plus `extra` flags.
    pub fn config(extra: &[&str]) -> S::Config {
        Self::config_for(&crate::karlo_tiny(), extra)
    }

    /// Starts `run(listener, shutdown)` on an ephemeral loopback port: the listener is bound,
    /// `shutdown` fires on [`stop`](Self::stop) or drop.
    pub async fn spawn<F, Fut>(run: F) -> Self
    where
        F: FnOnce(TcpListener, Shutdown) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        init_logs();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(run(listener, Shutdown(rx)));
        TestServer {
            addr,
            shutdown: Some(tx),
            handle: Some(handle),
            client_tls: None,
            service: PhantomData,
        }
    }

    /// Starts the service with `config` (it loads its model in the background).
    pub async fn start_with(config: S::Config) -> Self {
        Self::spawn(|listener, shutdown| S::run(config, listener, shutdown)).await
    }

    /// Starts karlo-tiny with `extra` flags.
    pub async fn start(extra: &[&str]) -> Self {
        Self::start_with(Self::config(extra)).await
    }

    /// Starts the service with `config` and waits until it reports SERVING.
    pub async fn serving_with(config: S::Config) -> Self {
        let server = Self::start_with(config).await;
        server.wait_serving().await;
        server
    }

    /// Starts karlo-tiny with `extra` flags and waits until it reports SERVING.
    pub async fn serving(extra: &[&str]) -> Self {
        Self::serving_with(Self::config(extra)).await
    }

    /// The same, its clients connecting with `tls` (for a server started with TLS flags).
    pub fn with_client_tls(mut self, tls: ClientTlsConfig) -> Self {
        self.client_tls = Some(tls);
        self
    }

    /// `http://127.0.0.1:PORT` (`https://` with client TLS).
    pub fn url(&self) -> String {
        let scheme = if self.client_tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// A channel to the server.
    pub async fn channel(&self) -> Channel {
        let mut endpoint = Endpoint::from_shared(self.url()).unwrap();
        if let Some(tls) = self.client_tls.clone() {
            endpoint = endpoint.tls_config(tls).unwrap();
        }
        endpoint.connect().await.unwrap()
    }

    /// The service's client, with message limits raised like the server's.
    pub async fn client(&self) -> S::Client {
        S::client(self.channel().await)
    }

    /// A health client.
    pub async fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel().await)
    }

    /// The health status under `service` ("" for the whole server).
    pub async fn status(&self, service: &str) -> ServingStatus {
        let status = self
            .health()
            .await
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        ServingStatus::try_from(status).unwrap()
    }

    /// A health Watch stream of the service.
    pub async fn watch(&self) -> tonic::Streaming<tonic_health::pb::HealthCheckResponse> {
        self.health()
            .await
            .watch(HealthCheckRequest {
                service: S::NAME.into(),
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// Follows the health Watch stream until SERVING; panics if the server ends first.
    pub async fn wait_serving(&self) {
        let mut stream = self.watch().await;
        loop {
            match stream.message().await {
                Ok(Some(m)) if m.status == ServingStatus::Serving as i32 => return,
                Ok(Some(_)) => continue,
                other => panic!("the health stream ended before SERVING: {other:?}"),
            }
        }
    }

    /// Fires the shutdown future and returns what `run` returned.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.join_task().await
    }

    /// Waits for `run` to return on its own (e.g. after a failed load).
    pub async fn join(mut self) -> anyhow::Result<()> {
        self.join_task().await
    }

    /// Waits for `run` to fail on its own and returns its error with its causes (`{e:#}`);
    /// panics if it returns Ok.
    pub async fn startup_error(self) -> String {
        match self.join().await {
            Ok(()) => panic!("{} started without error", S::BINARY),
            Err(e) => format!("{e:#}"),
        }
    }

    async fn join_task(&mut self) -> anyhow::Result<()> {
        let handle = self.handle.take().expect("the server task is awaited once");
        handle.await.expect("the server task panicked")
    }
}

impl<S> Drop for TestServer<S> {
    fn drop(&mut self) {
        // A test that ends without `stop` still shuts the server down.
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
