//! A local stack: the clip, prior and decoder service binaries as child processes of this one,
//! each on a free loopback port, all loading the same model repository; optionally several
//! replicas of each stage, the gateway in front of them, and a Redis for the gateway's cache.
//!
//! [`LocalStack::start`] spawns the stage replicas (and Redis) at once, keeps the last lines each
//! prints (their logs, stdout and stderr), and polls their `grpc.health.v1` (Redis: `PING`) until
//! every one is ready; then it starts the gateway, which checks its stages before it reports
//! SERVING. If a process exits first, or the start-up timeout passes, the error carries its last
//! output and the others are stopped. [`LocalStack::shutdown`] (or dropping the stack) stops the
//! gateway, then the stages, then Redis: SIGTERM, which the services answer with a graceful
//! shutdown, a wait, and a kill of what is still running after the stop timeout.
//!
//! The children run in their own process group, so a Ctrl-C at the terminal reaches only this
//! process, which then stops them in order. On Linux they also get SIGTERM if the thread that
//! started them dies (`PR_SET_PDEATHSIG`), so a killed parent leaves no servers behind; start
//! the stack from an async task or the main thread, not from a short-lived thread.
//!
//! For fault tests, [`LocalStack::kill_replica`] and [`LocalStack::kill_redis`] SIGKILL one
//! process (which [`LocalStack::shutdown`] then reports as killed, not as a failure), and
//! [`LocalStack::restart_redis`] brings Redis back on its port.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::Endpoint;

use crate::error::{Error, Result};
use crate::stage::{HEALTH_POLL_INTERVAL, HealthProbe, Stage, StageEndpoints};

/// Lines of each child's output kept for error messages.
const OUTPUT_LINES: usize = 40;

/// The gateway's binary (and Cargo package) name.
pub const GATEWAY_BINARY: &str = "unclip-gateway";

/// The gRPC service name the gateway reports its health under.
pub const GATEWAY_SERVICE: &str = "unclip.v1.Gateway";

/// The Redis server binary, looked up on `PATH`.
const REDIS_BINARY: &str = "redis-server";

/// How long one readiness check of the gateway or Redis may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the service binaries are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceBinaries {
    /// `unclip-clip`.
    pub clip: PathBuf,
    /// `unclip-prior`.
    pub prior: PathBuf,
    /// `unclip-decoder`.
    pub decoder: PathBuf,
    /// `unclip-gateway`; only needs to exist when the stack runs a gateway.
    pub gateway: PathBuf,
}

impl ServiceBinaries {
    /// `dir/unclip-clip`, `dir/unclip-prior`, `dir/unclip-decoder` and `dir/unclip-gateway`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            clip: dir.join(Stage::Clip.binary_name()),
            prior: dir.join(Stage::Prior.binary_name()),
            decoder: dir.join(Stage::Decoder.binary_name()),
            gateway: dir.join(GATEWAY_BINARY),
        }
    }

    /// The binaries next to the running executable: `target/release/unclip` finds
    /// `target/release/unclip-clip`, and a test binary in `target/debug/deps` those in
    /// `target/debug`.
    pub fn next_to_current_exe() -> Result<Self> {
        let exe =
            std::env::current_exe().map_err(|e| Error::io("finding the running executable", e))?;
        let mut dir = exe.parent().unwrap_or(Path::new(".")).to_path_buf();
        if dir.file_name().is_some_and(|name| name == "deps")
            && !dir.join(Stage::Clip.binary_name()).is_file()
        {
            dir.pop();
        }
        Ok(Self::in_dir(&dir))
    }

    /// The binary of `stage`.
    pub fn get(&self, stage: Stage) -> &Path {
        match stage {
            Stage::Clip => &self.clip,
            Stage::Prior => &self.prior,
            Stage::Decoder => &self.decoder,
        }
    }
}

/// How many processes of each stage a [`LocalStack`] runs; each replica gets its own port.
///
/// Parses from and prints as `clip=1,prior=1,decoder=2` (stages not named keep 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StageReplicas {
    /// CLIP service processes.
    pub clip: usize,
    /// Prior service processes.
    pub prior: usize,
    /// Decoder service processes.
    pub decoder: usize,
}

impl Default for StageReplicas {
    /// One of each.
    fn default() -> Self {
        Self {
            clip: 1,
            prior: 1,
            decoder: 1,
        }
    }
}

impl StageReplicas {
    /// The replicas of `stage`.
    pub fn get(&self, stage: Stage) -> usize {
        match stage {
            Stage::Clip => self.clip,
            Stage::Prior => self.prior,
            Stage::Decoder => self.decoder,
        }
    }

    /// Sets the replicas of `stage`.
    pub fn set(&mut self, stage: Stage, count: usize) {
        match stage {
            Stage::Clip => self.clip = count,
            Stage::Prior => self.prior = count,
            Stage::Decoder => self.decoder = count,
        }
    }

    /// Processes of all stages together.
    pub fn total(&self) -> usize {
        self.clip + self.prior + self.decoder
    }
}

impl FromStr for StageReplicas {
    type Err = Error;

    /// `clip=1,prior=1,decoder=2`, in any order and subset; every count at least 1.
    fn from_str(text: &str) -> Result<Self> {
        let mut replicas = Self::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = || {
                Error::InvalidRequest(format!(
                    "replicas: expected STAGE=N with STAGE one of clip, prior, decoder and \
                     N >= 1 (e.g. clip=1,prior=1,decoder=2), got {part:?}"
                ))
            };
            let (name, count) = part.split_once('=').ok_or_else(bad)?;
            let stage = Stage::ALL
                .into_iter()
                .find(|s| s.to_string() == name.trim())
                .ok_or_else(bad)?;
            let count: usize = count.trim().parse().map_err(|_| bad())?;
            if count == 0 {
                return Err(bad());
            }
            replicas.set(stage, count);
        }
        Ok(replicas)
    }
}

impl fmt::Display for StageReplicas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "clip={},prior={},decoder={}",
            self.clip, self.prior, self.decoder
        )
    }
}

/// Whether a [`LocalStack`] runs a Redis server (for the gateway's embedding cache).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RedisMode {
    /// No Redis.
    #[default]
    Off,
    /// Redis when `redis-server` is on `PATH`; without it, a warning and no Redis.
    IfInstalled,
    /// Redis, or [`Error::RedisNotFound`] when `redis-server` is not on `PATH`.
    Required,
}

/// How to run a [`LocalStack`].
#[derive(Debug, Clone)]
pub struct LocalStackConfig {
    /// The model repository (folder with manifest.json) every service loads.
    pub model: PathBuf,
    /// The service binaries.
    pub binaries: ServiceBinaries,
    /// The ONNX Runtime library, passed as `--ort-library`; `None` leaves it to the children's
    /// environment (`UNCLIP_ORT_LIBRARY`, else `ORT_DYLIB_PATH`), which they inherit.
    pub ort_library: Option<PathBuf>,
    /// `--intra-threads` of each stage service; `None` leaves the service's default.
    pub intra_threads: Option<usize>,
    /// The cores to divide among the stage services, each replica getting its share as
    /// `--threads` ([`stage_threads`]); `None` takes the cores this process may use. Not
    /// passed when the environment sets `UNCLIP_THREADS`, which the children inherit.
    pub cores: Option<usize>,
    /// How long the stages (and, after them, the gateway) may take to load and warm up before
    /// start-up fails.
    pub startup_timeout: Duration,
    /// How long a process may take to exit after SIGTERM before it is killed.
    pub stop_timeout: Duration,
    /// Processes per stage (one each by default).
    pub replicas: StageReplicas,
    /// Whether to run the gateway in front of the stages (`binaries.gateway`).
    pub gateway: bool,
    /// Extra arguments for the gateway, after the ones the stack gives it (`--listen`, the
    /// stage URLs, `--redis-url`).
    pub gateway_args: Vec<String>,
    /// Whether to run Redis (started before the gateway, which gets its `--redis-url`).
    pub redis: RedisMode,
}

impl LocalStackConfig {
    /// `model` served by `binaries`, library from the environment, 120 s to start, 10 s to stop,
    /// one process per stage, no gateway, no Redis.
    pub fn new(model: impl Into<PathBuf>, binaries: ServiceBinaries) -> Self {
        Self {
            model: model.into(),
            binaries,
            ort_library: None,
            intra_threads: None,
            cores: None,
            startup_timeout: Duration::from_secs(120),
            stop_timeout: Duration::from_secs(10),
            replicas: StageReplicas::default(),
            gateway: false,
            gateway_args: Vec::new(),
            redis: RedisMode::Off,
        }
    }
}

/// One process of a [`LocalStack`], as named in messages and shutdown reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LocalProcess {
    /// Replica `replica` (from 0) of a stage service.
    Stage {
        /// Which service.
        stage: Stage,
        /// Which of its replicas.
        replica: usize,
    },
    /// The gateway.
    Gateway,
    /// The Redis server.
    Redis,
}

impl fmt::Display for LocalProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocalProcess::Stage { stage, replica } => write!(f, "{stage} service [{replica}]"),
            LocalProcess::Gateway => f.write_str("gateway"),
            LocalProcess::Redis => f.write_str(REDIS_BINARY),
        }
    }
}

/// How one process of a [`LocalStack`] ended, as [`LocalStack::shutdown`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessExit {
    /// Which process.
    pub process: LocalProcess,
    /// Its exit status.
    pub status: ExitStatus,
    /// Whether it was SIGKILLed on purpose ([`LocalStack::kill_replica`],
    /// [`LocalStack::kill_redis`]) before the shutdown.
    pub killed: bool,
}

impl ProcessExit {
    /// Whether it ended as intended: killed on purpose, or exited with status 0.
    pub fn is_clean(&self) -> bool {
        self.killed || self.status.success()
    }
}

/// The services running as child processes; stopped on [`LocalStack::shutdown`] or drop.
#[derive(Debug)]
pub struct LocalStack {
    /// The gateway, when the config asked for one.
    gateway: Option<LocalService>,
    /// Every stage replica, in pipeline order (all clip replicas, then prior, then decoder).
    stages: Vec<LocalService>,
    /// Redis, when it runs (or ran: a killed one stays until it is restarted).
    redis: Option<LocalService>,
    /// What [`LocalStack::restart_redis`] needs: the binary and the port.
    redis_server: Option<(PathBuf, SocketAddr)>,
    /// How long a (re)started process may take to become ready.
    startup_timeout: Duration,
    /// How long a process may take to exit after SIGTERM.
    stop_timeout: Duration,
}

impl LocalStack {
    /// Spawns the stage replicas (and Redis) on free loopback ports and waits until all are
    /// ready; then, if asked, spawns the gateway and waits until it is SERVING too (it gets its
    /// own `startup_timeout`).
    pub async fn start(config: LocalStackConfig) -> Result<Self> {
        // Check what can be checked before anything runs, for clearer errors.
        if !config.model.join("manifest.json").is_file() {
            return Err(Error::ModelNotFound(config.model.clone()));
        }
        for stage in Stage::ALL {
            let path = config.binaries.get(stage);
            if !path.is_file() {
                return Err(Error::BinaryNotFound {
                    stage,
                    path: path.to_path_buf(),
                });
            }
            if config.replicas.get(stage) == 0 {
                return Err(Error::InvalidRequest(format!(
                    "replicas: a local stack needs at least one {stage} replica"
                )));
            }
        }
        if config.gateway && !config.binaries.gateway.is_file() {
            return Err(Error::GatewayBinaryNotFound(
                config.binaries.gateway.clone(),
            ));
        }
        let redis_binary = match config.redis {
            RedisMode::Off => None,
            mode => match find_on_path(REDIS_BINARY) {
                Some(path) => Some(path),
                None if mode == RedisMode::Required => return Err(Error::RedisNotFound),
                None => {
                    tracing::warn!(
                        "{REDIS_BINARY} is not on PATH; running without Redis \
                         (install it with `apt-get install redis-server`)"
                    );
                    None
                }
            },
        };

        let count = config.replicas.total()
            + usize::from(config.gateway)
            + usize::from(redis_binary.is_some());
        let mut addrs = free_loopback_addrs(count)?.into_iter();
        let mut next_addr = || addrs.next().expect("one free address per process");
        // A failed spawn drops the stack, which stops what already runs.
        let mut stack = Self {
            gateway: None,
            stages: Vec::with_capacity(config.replicas.total()),
            redis: None,
            redis_server: None,
            startup_timeout: config.startup_timeout,
            stop_timeout: config.stop_timeout,
        };
        for stage in Stage::ALL {
            for replica in 0..config.replicas.get(stage) {
                let addr = next_addr();
                stack.stages.push(LocalService::spawn(
                    LocalProcess::Stage { stage, replica },
                    addr,
                    config.binaries.get(stage),
                    stage_args(&config, stage, addr),
                    config.stop_timeout,
                )?);
            }
        }
        if let Some(binary) = redis_binary {
            let addr = next_addr();
            stack.redis = Some(spawn_redis(&binary, addr, config.stop_timeout)?);
            stack.redis_server = Some((binary, addr));
        }

        // They load in parallel; the first failure ends the wait (and drops the stack).
        let deadline = Instant::now() + config.startup_timeout;
        let Self { stages, redis, .. } = &mut stack;
        wait_all_ready(stages.iter_mut().chain(redis.as_mut()).collect(), deadline).await?;

        if config.gateway {
            let addr = next_addr();
            let args = gateway_args(&config, addr, &stack);
            let gateway = stack.gateway.insert(LocalService::spawn(
                LocalProcess::Gateway,
                addr,
                &config.binaries.gateway,
                args,
                config.stop_timeout,
            )?);
            let deadline = Instant::now() + config.startup_timeout;
            wait_all_ready(vec![gateway], deadline).await?;
        }
        Ok(stack)
    }

    /// Where the services listen (the first replica of each stage).
    pub fn endpoints(&self) -> StageEndpoints {
        StageEndpoints::new(
            self.first(Stage::Clip).url(),
            self.first(Stage::Prior).url(),
            self.first(Stage::Decoder).url(),
        )
    }

    /// The URLs of every replica of `stage`, in replica order.
    pub fn stage_urls(&self, stage: Stage) -> Vec<String> {
        self.replicas(stage).map(LocalService::url).collect()
    }

    /// The gateway's URL (`http://127.0.0.1:PORT`), when the stack runs one.
    pub fn gateway_url(&self) -> Option<String> {
        self.gateway.as_ref().map(LocalService::url)
    }

    /// Redis's URL (`redis://127.0.0.1:PORT/`), when the stack runs it (also while it is
    /// killed: a restart comes back on the same port).
    pub fn redis_url(&self) -> Option<String> {
        self.redis_server.as_ref().map(|(_, addr)| redis_url(*addr))
    }

    /// The address the first replica of `stage` listens on.
    pub fn addr(&self, stage: Stage) -> SocketAddr {
        self.first(stage).addr
    }

    /// The process id of the first replica of `stage`, while it runs.
    pub fn pid(&self, stage: Stage) -> Option<u32> {
        self.first(stage).child.id()
    }

    /// Every running process of the stack with its id: the stage replicas in pipeline order,
    /// then the gateway and Redis.
    pub fn processes(&self) -> Vec<(LocalProcess, u32)> {
        self.stages
            .iter()
            .chain(&self.gateway)
            .chain(&self.redis)
            .filter_map(|service| Some((service.process, service.child.id()?)))
            .collect()
    }

    /// The last lines the first replica of `stage` printed.
    pub fn output(&self, stage: Stage) -> String {
        self.first(stage).output.text()
    }

    /// The last lines the gateway printed, when the stack runs one.
    pub fn gateway_output(&self) -> Option<String> {
        self.gateway.as_ref().map(|g| g.output.text())
    }

    /// The last lines Redis printed, when the stack runs it.
    pub fn redis_output(&self) -> Option<String> {
        self.redis.as_ref().map(|r| r.output.text())
    }

    /// SIGKILLs replica `index` of `stage` and reaps it, for fault tests. The gateway is not
    /// told; [`LocalStack::shutdown`] reports the replica as killed, not as a failure. A replica
    /// that has already ended is left as it is.
    pub async fn kill_replica(&mut self, stage: Stage, index: usize) -> Result<()> {
        let count = self.replicas(stage).count();
        let service = self
            .stages
            .iter_mut()
            .filter(|s| s.stage() == Some(stage))
            .nth(index)
            .ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "the {stage} service has {count} replicas; there is no replica {index}"
                ))
            })?;
        service.kill().await
    }

    /// Sends SIGTERM to replica `index` of `stage` (it drains: NOT_SERVING, new calls refused,
    /// calls in flight finished) and returns at once; [`LocalStack::wait_replica`] waits for
    /// it to exit.
    pub fn terminate_replica(&mut self, stage: Stage, index: usize) -> Result<()> {
        self.replica_mut(stage, index)?.terminate();
        Ok(())
    }

    /// Waits for replica `index` of `stage` to exit after [`LocalStack::terminate_replica`]
    /// (killing it after the stop timeout), and how it ended.
    pub async fn wait_replica(&mut self, stage: Stage, index: usize) -> Result<ProcessExit> {
        self.replica_mut(stage, index)?.wait_stopped().await
    }

    /// Replica `index` of `stage`.
    fn replica_mut(&mut self, stage: Stage, index: usize) -> Result<&mut LocalService> {
        let count = self.replicas(stage).count();
        self.stages
            .iter_mut()
            .filter(|s| s.stage() == Some(stage))
            .nth(index)
            .ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "the {stage} service has {count} replicas; there is no replica {index}"
                ))
            })
    }

    /// SIGKILLs Redis and reaps it, for fault tests; [`LocalStack::restart_redis`] brings it back.
    pub async fn kill_redis(&mut self) -> Result<()> {
        match &mut self.redis {
            Some(redis) => redis.kill().await,
            None => Err(Error::InvalidRequest(
                "this local stack runs no Redis".to_string(),
            )),
        }
    }

    /// Starts Redis again on its port (stopping it first if it still runs) and waits until it
    /// answers `PING`. Its contents are gone: it keeps nothing on disk.
    pub async fn restart_redis(&mut self) -> Result<()> {
        let Some((binary, addr)) = self.redis_server.clone() else {
            return Err(Error::InvalidRequest(
                "this local stack runs no Redis".to_string(),
            ));
        };
        if let Some(mut old) = self.redis.take() {
            old.terminate();
            old.wait_stopped().await?;
        }
        let redis = self
            .redis
            .insert(spawn_redis(&binary, addr, self.stop_timeout)?);
        wait_all_ready(vec![redis], Instant::now() + self.startup_timeout).await
    }

    /// The replicas of `stage`, in order.
    fn replicas(&self, stage: Stage) -> impl Iterator<Item = &LocalService> {
        self.stages.iter().filter(move |s| s.stage() == Some(stage))
    }

    /// The first replica of `stage` (every stack has one).
    fn first(&self, stage: Stage) -> &LocalService {
        self.replicas(stage)
            .next()
            .expect("a local stack runs at least one replica of each stage")
    }

    /// Stops everything in order: the gateway (so no call reaches a stopping stage), then every
    /// stage replica at once, then Redis. Each gets SIGTERM and is killed after the stop
    /// timeout. Returns how each ended, in that order (stages in pipeline and replica order);
    /// [`ProcessExit::is_clean`] tells whether it ended as intended.
    pub async fn shutdown(mut self) -> Result<Vec<ProcessExit>> {
        let mut exits = Vec::new();
        if let Some(gateway) = &mut self.gateway {
            gateway.terminate();
            exits.push(gateway.wait_stopped().await?);
        }
        for service in &mut self.stages {
            service.terminate();
        }
        for service in &mut self.stages {
            exits.push(service.wait_stopped().await?);
        }
        if let Some(redis) = &mut self.redis {
            redis.terminate();
            exits.push(redis.wait_stopped().await?);
        }
        Ok(exits)
    }
}

impl Drop for LocalStack {
    /// Stops in the same order as [`LocalStack::shutdown`]; each service's own drop waits.
    fn drop(&mut self) {
        drop(self.gateway.take());
        // Signal all stages first, so they stop in parallel.
        for service in &mut self.stages {
            service.terminate();
        }
        self.stages.clear();
        drop(self.redis.take());
    }
}

/// The `--threads` of each replica of `stage` when `cores` are divided among the stack's
/// services. A request runs its stages one after another, so each stage may use every core
/// while it works, but the replicas of one stage serve different requests at the same time, so
/// they split the cores; CLIP's encoders are a sliver of a request's compute, so CLIP gets half.
pub fn stage_threads(stage: Stage, cores: usize, replicas: &StageReplicas) -> usize {
    let share = match stage {
        Stage::Clip => cores / 2,
        Stage::Prior | Stage::Decoder => cores,
    };
    (share / replicas.get(stage).max(1)).max(1)
}

/// The arguments of a replica of `stage` listening on `addr`.
fn stage_args(config: &LocalStackConfig, stage: Stage, addr: SocketAddr) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--model".into(),
        config.model.clone().into(),
        "--listen".into(),
        addr.to_string().into(),
    ];
    if let Some(library) = &config.ort_library {
        args.extend(["--ort-library".into(), library.clone().into()]);
    }
    if let Some(threads) = config.intra_threads {
        args.extend(["--intra-threads".into(), threads.to_string().into()]);
    }
    // Nothing balances over a local stack's health, so no delay before draining.
    args.extend(["--drain-delay-ms".into(), "0".into()]);
    if std::env::var_os("UNCLIP_THREADS").is_none() {
        let cores = config.cores.unwrap_or_else(|| {
            // Affinity and the cgroup CPU quota included.
            std::thread::available_parallelism().map_or(1, |n| n.get())
        });
        let threads = stage_threads(stage, cores, &config.replicas);
        args.extend(["--threads".into(), threads.to_string().into()]);
    }
    args
}

/// The arguments of the gateway listening on `addr`, in front of `stack`'s stages and Redis.
fn gateway_args(config: &LocalStackConfig, addr: SocketAddr, stack: &LocalStack) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["--listen".into(), addr.to_string().into()];
    for stage in Stage::ALL {
        args.push(format!("--{stage}").into());
        args.push(stack.stage_urls(stage).join(",").into());
    }
    if let Some(url) = stack.redis_url() {
        args.extend(["--redis-url".into(), url.into()]);
    }
    // Explicit, so that the `unclip` command's UNCLIP_STARTUP_TIMEOUT_SECS, which the gateway
    // inherits, is not read as the gateway's deprecated name for it.
    args.extend([
        "--startup-timeout-secs".into(),
        config.startup_timeout.as_secs().max(1).to_string().into(),
    ]);
    // Nothing balances over a local gateway's health: no delay before draining, unless asked.
    if !config
        .gateway_args
        .iter()
        .any(|a| a.starts_with("--drain-delay-ms"))
    {
        args.extend(["--drain-delay-ms".into(), "0".into()]);
    }
    args.extend(config.gateway_args.iter().map(OsString::from));
    args
}

/// Starts `redis-server` on `addr` (loopback only, nothing persisted).
fn spawn_redis(binary: &Path, addr: SocketAddr, stop_timeout: Duration) -> Result<LocalService> {
    let args = [
        "--port",
        &addr.port().to_string(),
        "--bind",
        &addr.ip().to_string(),
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .map(OsString::from)
    .to_vec();
    LocalService::spawn(LocalProcess::Redis, addr, binary, args, stop_timeout)
}

/// `redis://IP:PORT/`.
fn redis_url(addr: SocketAddr) -> String {
    format!("redis://{addr}/")
}

/// The first executable file called `name` in the folders of `PATH`.
fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

/// `count` distinct free loopback addresses. The ports are released again before the services
/// bind them; another process could take one in between, which start-up then reports.
fn free_loopback_addrs(count: usize) -> Result<Vec<SocketAddr>> {
    // All are held at once, so they differ.
    let listeners = (0..count)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .map_err(|e| Error::io("finding a free loopback port", e))
        })
        .collect::<Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .map_err(|e| Error::io("reading a listener's address", e))
        })
        .collect()
}

/// Polls every one of `services` until each is ready; fails as soon as one exits, or when
/// `deadline` passes with one not ready. They are checked in turn, each check short (a refused
/// connection or a NOT_SERVING answer), so a slow one does not hide another's failure.
async fn wait_all_ready(services: Vec<&mut LocalService>, deadline: Instant) -> Result<()> {
    let started = Instant::now();
    let mut pending = services
        .into_iter()
        .map(|service| {
            let readiness = Readiness::of(service)?;
            Ok((service, readiness))
        })
        .collect::<Result<Vec<_>>>()?;
    loop {
        let mut still_pending = Vec::with_capacity(pending.len());
        for (service, mut readiness) in pending {
            if let Some(status) = service.poll_exit()? {
                service.finish_output().await;
                return Err(service.exited_error(status));
            }
            if let Ok(true) = tokio::time::timeout_at(deadline, readiness.is_ready()).await {
                tracing::debug!(process = %service.process, after = ?started.elapsed(), "ready");
            } else {
                still_pending.push((service, readiness));
            }
        }
        pending = still_pending;
        let Some((first, _)) = pending.first() else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            return Err(first.not_ready_error(started.elapsed()));
        }
        tokio::time::sleep(HEALTH_POLL_INTERVAL).await;
    }
}

/// How to tell that a process is ready.
#[derive(Debug)]
enum Readiness {
    /// A stage service or the gateway: its health under its service name is SERVING.
    Grpc(Box<HealthProbe>),
    /// Redis: it answers `PING` with `+PONG`.
    Redis(SocketAddr),
}

impl Readiness {
    /// The check that fits `service`.
    fn of(service: &LocalService) -> Result<Self> {
        Ok(match service.process {
            LocalProcess::Stage { stage, .. } => {
                Self::Grpc(Box::new(HealthProbe::new(stage, &service.url())?))
            }
            LocalProcess::Gateway => Self::Grpc(Box::new(HealthProbe::for_service(
                GATEWAY_SERVICE,
                Endpoint::from_shared(service.url())
                    .map_err(|e| Error::InvalidRequest(format!("gateway URL: {e}")))?
                    .connect_timeout(PROBE_TIMEOUT),
            ))),
            LocalProcess::Redis => Self::Redis(service.addr),
        })
    }

    /// Whether the process is ready now.
    async fn is_ready(&mut self) -> bool {
        match self {
            Self::Grpc(probe) => probe.is_serving().await,
            Self::Redis(addr) => redis_answers(*addr).await,
        }
    }
}

/// Whether Redis at `addr` answers `PING` with `+PONG` (not `-LOADING`, not silence).
async fn redis_answers(addr: SocketAddr) -> bool {
    let ping = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut answer = [0u8; 16];
        let mut read = 0;
        while read < 5 {
            let n = stream.read(&mut answer[read..]).await?;
            if n == 0 {
                break;
            }
            read += n;
        }
        Ok::<_, std::io::Error>(answer[..read].starts_with(b"+PONG"))
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, ping).await,
        Ok(Ok(true))
    )
}

/// The last [`OUTPUT_LINES`] lines a child printed, shared with the tasks reading its pipes.
#[derive(Debug, Clone, Default)]
struct OutputTail(Arc<Mutex<VecDeque<String>>>);

impl OutputTail {
    fn push(&self, line: String) {
        // A std mutex: held only for a push, never across an await.
        let mut lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() == OUTPUT_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    fn text(&self) -> String {
        let lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().map(|l| format!("  {l}\n")).collect()
    }

    /// Reads `pipe` line by line into the tail until it closes. The pipe is always drained,
    /// so a chatty child never blocks on a full pipe.
    fn follow(&self, pipe: impl AsyncRead + Unpin + Send + 'static) -> JoinHandle<()> {
        let tail = self.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(pipe);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line);
                        tail.push(text.trim_end().to_string());
                    }
                }
            }
        })
    }
}

/// One child process of the stack: a stage replica, the gateway or Redis.
#[derive(Debug)]
struct LocalService {
    /// Which process.
    process: LocalProcess,
    /// Where it listens.
    addr: SocketAddr,
    /// The process.
    child: Child,
    /// How it ended, once known.
    exited: Option<ExitStatus>,
    /// Whether SIGTERM was sent (once is enough: the services treat a second like the first).
    terminated: bool,
    /// Whether it was SIGKILLed on purpose (a fault test), so its end is not a failure.
    killed: bool,
    /// Its last output lines.
    output: OutputTail,
    /// The tasks reading its stdout and stderr.
    readers: Vec<JoinHandle<()>>,
    /// How long it may take to exit after SIGTERM.
    stop_timeout: Duration,
}

impl LocalService {
    /// Starts `program args` as `process`, listening on `addr`.
    fn spawn(
        process: LocalProcess,
        addr: SocketAddr,
        program: &Path,
        args: Vec<OsString>,
        stop_timeout: Duration,
    ) -> Result<Self> {
        let mut command = Command::new(program);
        command.args(args);
        // Plain log lines in error messages, without anyhow's backtraces (RUST_BACKTRACE=1 turns
        // those on too) unless asked for with RUST_LIB_BACKTRACE.
        command.env("NO_COLOR", "1");
        if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
            command.env("RUST_LIB_BACKTRACE", "0");
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe and the closure touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|source| Error::Spawn {
            path: program.to_path_buf(),
            source,
        })?;
        let output = OutputTail::default();
        let mut readers = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            readers.push(output.follow(stdout));
        }
        if let Some(stderr) = child.stderr.take() {
            readers.push(output.follow(stderr));
        }
        tracing::debug!(%process, %addr, pid = child.id(), "started");
        Ok(Self {
            process,
            addr,
            child,
            exited: None,
            terminated: false,
            killed: false,
            output,
            readers,
            stop_timeout,
        })
    }

    /// The stage it serves, if it is a stage replica.
    fn stage(&self) -> Option<Stage> {
        match self.process {
            LocalProcess::Stage { stage, .. } => Some(stage),
            _ => None,
        }
    }

    /// Its URL: `http://ADDR` (Redis: `redis://ADDR/`).
    fn url(&self) -> String {
        match self.process {
            LocalProcess::Redis => redis_url(self.addr),
            _ => format!("http://{}", self.addr),
        }
    }

    /// The error for having ended with `status` before it was ready.
    fn exited_error(&self, status: ExitStatus) -> Error {
        let output = self.output.text();
        match self.process {
            LocalProcess::Stage { stage, .. } => Error::Exited {
                stage,
                status,
                output,
            },
            process => Error::ProcessExited {
                process,
                status,
                output,
            },
        }
    }

    /// The error for not being ready `after` this long.
    fn not_ready_error(&self, after: Duration) -> Error {
        let (url, output) = (self.url(), self.output.text());
        match self.process {
            LocalProcess::Stage { stage, .. } => Error::NotServing {
                stage,
                url,
                after,
                output,
            },
            process => Error::ProcessNotReady {
                process,
                url,
                after,
                output,
            },
        }
    }

    /// Whether it has ended (and how), without waiting.
    fn poll_exit(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self
                .child
                .try_wait()
                .map_err(|e| Error::io(format!("checking on the {}", self.process), e))?;
        }
        Ok(self.exited)
    }

    /// Lets the pipe readers take in the last lines of an ended process.
    async fn finish_output(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(1), reader).await;
        }
    }

    /// Sends SIGTERM if it still runs and has not been sent one.
    fn terminate(&mut self) {
        if !self.terminated
            && let Ok(None) = self.poll_exit()
            && let Some(pid) = self.child.id()
        {
            self.terminated = true;
            // SAFETY: kill has no memory-safety preconditions; `pid` is our unreaped child.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
    }

    /// SIGKILLs it, if it still runs, and reaps it; marks it as killed on purpose.
    async fn kill(&mut self) -> Result<()> {
        if self.poll_exit()?.is_some() {
            return Ok(());
        }
        let context = || format!("killing the {}", self.process);
        self.child
            .start_kill()
            .map_err(|e| Error::io(context(), e))?;
        let status = self
            .child
            .wait()
            .await
            .map_err(|e| Error::io(context(), e))?;
        self.exited = Some(status);
        self.killed = true;
        tracing::debug!(process = %self.process, "killed");
        Ok(())
    }

    /// Waits for it to end after [`LocalService::terminate`], killing it after the stop timeout.
    async fn wait_stopped(&mut self) -> Result<ProcessExit> {
        let status = match self.exited {
            Some(status) => status,
            None => {
                let context = || format!("stopping the {}", self.process);
                let status = match tokio::time::timeout(self.stop_timeout, self.child.wait()).await
                {
                    Ok(waited) => waited.map_err(|e| Error::io(context(), e))?,
                    Err(_) => {
                        tracing::warn!(process = %self.process, "still running after SIGTERM; killing it");
                        self.child
                            .kill()
                            .await
                            .map_err(|e| Error::io(context(), e))?;
                        self.child
                            .wait()
                            .await
                            .map_err(|e| Error::io(context(), e))?
                    }
                };
                self.exited = Some(status);
                status
            }
        };
        Ok(ProcessExit {
            process: self.process,
            status,
            killed: self.killed,
        })
    }
}

impl Drop for LocalService {
    /// Stops the process if [`LocalStack::shutdown`] did not: SIGTERM, then a blocking wait of at
    /// most the stop timeout (services with no calls in flight exit within milliseconds), then
    /// SIGKILL.
    fn drop(&mut self) {
        self.terminate();
        let deadline = std::time::Instant::now() + self.stop_timeout;
        while let Ok(None) = self.poll_exit() {
            if std::time::Instant::now() >= deadline {
                tracing::warn!(process = %self.process, "still running after SIGTERM; killing it");
                let _ = self.child.start_kill();
                let _ = self.child.try_wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for reader in &self.readers {
            reader.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prior and decoder replicas split the cores among themselves, CLIP gets half, nobody 0.
    #[test]
    fn cores_are_divided_among_replicas() {
        let one = StageReplicas::default();
        assert_eq!(stage_threads(Stage::Decoder, 8, &one), 8);
        assert_eq!(stage_threads(Stage::Prior, 8, &one), 8);
        assert_eq!(stage_threads(Stage::Clip, 8, &one), 4);
        assert_eq!(stage_threads(Stage::Clip, 1, &one), 1);
        let two = "decoder=2".parse::<StageReplicas>().unwrap();
        assert_eq!(stage_threads(Stage::Decoder, 8, &two), 4);
        assert_eq!(stage_threads(Stage::Decoder, 1, &two), 1);
        assert_eq!(stage_threads(Stage::Prior, 8, &two), 8);
    }

    /// Replica counts parse from `stage=N` lists and print back the same way.
    #[test]
    fn replicas_parse_and_print() {
        let parsed: StageReplicas = "decoder=2, clip=3".parse().unwrap();
        assert_eq!(
            parsed,
            StageReplicas {
                clip: 3,
                prior: 1,
                decoder: 2
            }
        );
        assert_eq!(parsed.to_string(), "clip=3,prior=1,decoder=2");
        assert_eq!(parsed.to_string().parse::<StageReplicas>().unwrap(), parsed);
        assert_eq!(
            "".parse::<StageReplicas>().unwrap(),
            StageReplicas::default()
        );
        assert_eq!(parsed.total(), 6);
        for bad in [
            "decoder=0",
            "gateway=2",
            "decoder",
            "decoder=x",
            "decoder=-1",
        ] {
            let err = bad.parse::<StageReplicas>().unwrap_err().to_string();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }

    /// Free addresses are distinct loopback ports.
    #[test]
    fn free_addresses_differ() {
        let addrs = free_loopback_addrs(5).unwrap();
        let mut ports: Vec<_> = addrs.iter().map(|a| a.port()).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 5);
        assert!(addrs.iter().all(|a| a.ip().is_loopback()));
    }

    /// Redis, when installed: starts, answers PING, is killed (and reported so), comes back on
    /// the same port, and stops cleanly on SIGTERM.
    #[tokio::test]
    async fn redis_starts_is_killed_and_restarts() {
        let Some(binary) = find_on_path(REDIS_BINARY) else {
            eprintln!("skipped: {REDIS_BINARY} is not on PATH");
            return;
        };
        let addr = free_loopback_addrs(1).unwrap()[0];
        let stop = Duration::from_secs(5);
        let deadline = || Instant::now() + Duration::from_secs(20);
        let mut redis = spawn_redis(&binary, addr, stop).unwrap();
        wait_all_ready(vec![&mut redis], deadline()).await.unwrap();
        assert!(redis_answers(addr).await);

        redis.kill().await.unwrap();
        assert!(!redis_answers(addr).await);
        let exit = redis.wait_stopped().await.unwrap();
        assert!(
            exit.killed && exit.is_clean() && !exit.status.success(),
            "{exit:?}"
        );

        let mut again = spawn_redis(&binary, addr, stop).unwrap();
        wait_all_ready(vec![&mut again], deadline()).await.unwrap();
        again.terminate();
        let exit = again.wait_stopped().await.unwrap();
        assert!(exit.status.success() && !exit.killed, "{exit:?}");
    }
}
