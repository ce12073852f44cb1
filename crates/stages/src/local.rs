//! A local stack: the clip, prior and decoder service binaries as child processes of this one,
//! each on a free loopback port, all loading the same model repository.
//!
//! [`LocalStack::start`] spawns the three at once, keeps the last lines each prints (their logs,
//! stdout and stderr), and polls their `grpc.health.v1` until every one reports SERVING. If one
//! exits first, or the start-up timeout passes, the error carries its last output and the others
//! are stopped. [`LocalStack::shutdown`] (or dropping the stack) sends SIGTERM, which the
//! services answer with a graceful shutdown, waits, and kills what is still running after the
//! stop timeout.
//!
//! The children run in their own process group, so a Ctrl-C at the terminal reaches only this
//! process, which then stops them in order. On Linux they also get SIGTERM if the thread that
//! started them dies (`PR_SET_PDEATHSIG`), so a killed parent leaves no servers behind; start
//! the stack from an async task or the main thread, not from a short-lived thread.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::clients::{HEALTH_POLL_INTERVAL, HealthProbe, Stage, StageEndpoints};
use crate::error::{Error, Result};

/// Lines of each child's output kept for error messages.
const OUTPUT_LINES: usize = 40;

/// Where the three service binaries are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceBinaries {
    /// `unclip-clip`.
    pub clip: PathBuf,
    /// `unclip-prior`.
    pub prior: PathBuf,
    /// `unclip-decoder`.
    pub decoder: PathBuf,
}

impl ServiceBinaries {
    /// `dir/unclip-clip`, `dir/unclip-prior` and `dir/unclip-decoder`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            clip: dir.join(Stage::Clip.binary_name()),
            prior: dir.join(Stage::Prior.binary_name()),
            decoder: dir.join(Stage::Decoder.binary_name()),
        }
    }

    /// The binaries next to the running executable: `target/release/unclip-stages` finds
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
    /// `--intra-threads` of each service; `None` leaves the service's default.
    pub intra_threads: Option<usize>,
    /// How long the services may take to load and warm up before start-up fails.
    pub startup_timeout: Duration,
    /// How long a service may take to exit after SIGTERM before it is killed.
    pub stop_timeout: Duration,
}

impl LocalStackConfig {
    /// `model` served by `binaries`, library from the environment, 120 s to start, 10 s to stop.
    pub fn new(model: impl Into<PathBuf>, binaries: ServiceBinaries) -> Self {
        Self {
            model: model.into(),
            binaries,
            ort_library: None,
            intra_threads: None,
            startup_timeout: Duration::from_secs(120),
            stop_timeout: Duration::from_secs(10),
        }
    }
}

/// The three services running as child processes; stopped on [`LocalStack::shutdown`] or drop.
#[derive(Debug)]
pub struct LocalStack {
    /// The CLIP service.
    clip: LocalService,
    /// The prior service.
    prior: LocalService,
    /// The decoder service.
    decoder: LocalService,
}

impl LocalStack {
    /// Spawns the three services on free loopback ports and waits until all are SERVING.
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
        }
        let [clip, prior, decoder] = free_loopback_addrs()?;
        // A failed spawn drops the services already started, which stops them.
        let mut stack = Self {
            clip: LocalService::spawn(Stage::Clip, clip, &config)?,
            prior: LocalService::spawn(Stage::Prior, prior, &config)?,
            decoder: LocalService::spawn(Stage::Decoder, decoder, &config)?,
        };
        let deadline = Instant::now() + config.startup_timeout;
        let Self {
            clip,
            prior,
            decoder,
        } = &mut stack;
        // They load in parallel; the first failure ends the wait (and drops the stack).
        tokio::try_join!(
            clip.wait_serving(deadline),
            prior.wait_serving(deadline),
            decoder.wait_serving(deadline),
        )?;
        Ok(stack)
    }

    /// Where the services listen.
    pub fn endpoints(&self) -> StageEndpoints {
        StageEndpoints::new(
            format!("http://{}", self.clip.addr),
            format!("http://{}", self.prior.addr),
            format!("http://{}", self.decoder.addr),
        )
    }

    /// The address `stage` listens on.
    pub fn addr(&self, stage: Stage) -> SocketAddr {
        self.service(stage).addr
    }

    /// The process id of `stage`, while it runs.
    pub fn pid(&self, stage: Stage) -> Option<u32> {
        self.service(stage).child.id()
    }

    /// The last lines `stage` printed.
    pub fn output(&self, stage: Stage) -> String {
        self.service(stage).output.text()
    }

    fn service(&self, stage: Stage) -> &LocalService {
        match stage {
            Stage::Clip => &self.clip,
            Stage::Prior => &self.prior,
            Stage::Decoder => &self.decoder,
        }
    }

    /// Stops the services: SIGTERM to all, then waits for each (killing it after the stop
    /// timeout). Returns how each ended, in pipeline order.
    pub async fn shutdown(mut self) -> Result<[ExitStatus; 3]> {
        for service in [&mut self.clip, &mut self.prior, &mut self.decoder] {
            service.terminate();
        }
        Ok([
            self.clip.wait_stopped().await?,
            self.prior.wait_stopped().await?,
            self.decoder.wait_stopped().await?,
        ])
    }
}

impl Drop for LocalStack {
    /// Signals all three first, so they stop in parallel; each service's own drop then waits.
    fn drop(&mut self) {
        for service in [&mut self.clip, &mut self.prior, &mut self.decoder] {
            service.terminate();
        }
    }
}

/// Three distinct free loopback addresses. The ports are released again before the services
/// bind them; another process could take one in between, which start-up then reports.
fn free_loopback_addrs() -> Result<[SocketAddr; 3]> {
    let bind = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| Error::io("finding a free loopback port", e))
    };
    // All three are held at once, so they differ.
    let listeners = [bind()?, bind()?, bind()?];
    let addr = |l: &std::net::TcpListener| {
        l.local_addr()
            .map_err(|e| Error::io("reading a listener's address", e))
    };
    Ok([
        addr(&listeners[0])?,
        addr(&listeners[1])?,
        addr(&listeners[2])?,
    ])
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

/// One service child process.
#[derive(Debug)]
struct LocalService {
    /// Which service.
    stage: Stage,
    /// Where it listens.
    addr: SocketAddr,
    /// The process.
    child: Child,
    /// How it ended, once known.
    exited: Option<ExitStatus>,
    /// Whether SIGTERM was sent (once is enough: the services treat a second like the first).
    terminated: bool,
    /// Its last output lines.
    output: OutputTail,
    /// The tasks reading its stdout and stderr.
    readers: Vec<JoinHandle<()>>,
    /// How long it may take to exit after SIGTERM.
    stop_timeout: Duration,
}

impl LocalService {
    /// Starts `stage`'s binary listening on `addr`.
    fn spawn(stage: Stage, addr: SocketAddr, config: &LocalStackConfig) -> Result<Self> {
        let path = config.binaries.get(stage);
        let mut command = Command::new(path);
        command
            .arg("--model")
            .arg(&config.model)
            .arg("--listen")
            .arg(addr.to_string());
        if let Some(library) = &config.ort_library {
            command.arg("--ort-library").arg(library);
        }
        if let Some(threads) = config.intra_threads {
            command.arg("--intra-threads").arg(threads.to_string());
        }
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
            path: path.to_path_buf(),
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
        tracing::debug!(%stage, %addr, pid = child.id(), "started");
        Ok(Self {
            stage,
            addr,
            child,
            exited: None,
            terminated: false,
            output,
            readers,
            stop_timeout: config.stop_timeout,
        })
    }

    /// Whether it has ended (and how), without waiting.
    fn poll_exit(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self
                .child
                .try_wait()
                .map_err(|e| Error::io(format!("checking on the {} service", self.stage), e))?;
        }
        Ok(self.exited)
    }

    /// Polls health until SERVING; fails if the process ends first or `deadline` passes.
    async fn wait_serving(&mut self, deadline: Instant) -> Result<()> {
        let started = Instant::now();
        let url = format!("http://{}", self.addr);
        let mut probe = HealthProbe::new(self.stage, &url)?;
        loop {
            if let Some(status) = self.poll_exit()? {
                self.finish_output().await;
                return Err(Error::Exited {
                    stage: self.stage,
                    status,
                    output: self.output.text(),
                });
            }
            if let Ok(true) = tokio::time::timeout_at(deadline, probe.is_serving()).await {
                tracing::debug!(stage = %self.stage, after = ?started.elapsed(), "serving");
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::NotServing {
                    stage: self.stage,
                    url,
                    after: started.elapsed(),
                    output: self.output.text(),
                });
            }
            tokio::time::sleep(HEALTH_POLL_INTERVAL).await;
        }
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

    /// Waits for it to end after [`LocalService::terminate`], killing it after the stop timeout.
    async fn wait_stopped(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.exited {
            return Ok(status);
        }
        let context = || format!("stopping the {} service", self.stage);
        let status = match tokio::time::timeout(self.stop_timeout, self.child.wait()).await {
            Ok(waited) => waited.map_err(|e| Error::io(context(), e))?,
            Err(_) => {
                tracing::warn!(stage = %self.stage, "still running after SIGTERM; killing it");
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
        Ok(status)
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
                tracing::warn!(stage = %self.stage, "still running after SIGTERM; killing it");
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
