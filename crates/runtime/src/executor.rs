//! [`SessionExecutor`]: one OS thread owning one ONNX Runtime session, fed through a channel.
//!
//! `Session::run` takes `&mut self` and blocks for as long as the graph runs, so it must never
//! run on the async runtime's threads. Each executor owns its session on a dedicated thread and
//! receives jobs (named input arrays plus a oneshot reply) over a bounded channel; the async
//! [`SessionExecutor::run`] enqueues and awaits the reply, so a tokio worker only ever waits on a
//! future. The single consumer is also where calls are batched: after taking a job, the thread
//! takes every compatible job already queued (up to `max_batch_rows` rows) and runs them as one
//! batch, stacked along the batch axis ([`crate::batch`]). It never waits for more, so a lone
//! call is not delayed; under load, loops of different requests share their model calls.
//!
//! Back-pressure: the queue holds `queue_capacity` jobs; beyond that `run` fails at once with
//! [`RuntimeError::Overloaded`] (RESOURCE_EXHAUSTED for gRPC) instead of queueing without bound.
//! A job whose caller has gone away (its reply receiver dropped, e.g. a cancelled RPC) is skipped.
//!
//! Inputs are checked against the manifest's declaration before they are queued (names, dtype,
//! rank, fixed axes, one batch size), so a caller's mistake is reported by name rather than as
//! an ONNX Runtime error. float32 inputs are narrowed automatically for float16 graphs and
//! outputs can be read back as float32 ([`Outputs::take_f32`]), so services are dtype-agnostic.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use half::f16;
use ndarray::{ArrayD, IxDyn};
use ort::environment::Environment;
use ort::session::{Session, SessionInputValue};
use ort::value::Tensor;
use tokio::sync::oneshot;

use crate::batch;
use crate::compute::ComputeMeter;
use crate::device::SessionConfig;
use crate::error::{Result, RuntimeError};
use crate::manifest::{ComponentSpec, DataType, Dim};
use crate::session::build_session;
use crate::value::TensorData;

/// Named graph inputs, in any order.
pub type Inputs = Vec<(String, TensorData)>;

/// The outputs of one run, by name.
#[derive(Debug, Clone)]
pub struct Outputs {
    /// The component label, for messages.
    component: String,
    /// Every declared output.
    values: BTreeMap<String, TensorData>,
}

impl Outputs {
    /// Removes and returns an output.
    pub fn take(&mut self, name: &str) -> Result<TensorData> {
        self.values
            .remove(name)
            .ok_or_else(|| RuntimeError::Outputs {
                component: self.component.clone(),
                message: format!("no output '{name}'"),
            })
    }

    /// Removes an output and returns it as float32 (float16 is widened).
    pub fn take_f32(&mut self, name: &str) -> Result<ArrayD<f32>> {
        let value = self.take(name)?;
        let dtype = value.dtype_name();
        value.into_f32().ok_or_else(|| RuntimeError::Outputs {
            component: self.component.clone(),
            message: format!("output '{name}' is {dtype}, not a float"),
        })
    }

    /// The output names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }
}

/// One queued run.
struct Job {
    /// Checked inputs, already in the graph's dtypes.
    inputs: Inputs,
    /// Where the result goes.
    reply: oneshot::Sender<Result<Outputs>>,
    /// The caller's span, entered on the executor thread so logs keep the request context.
    span: tracing::Span,
    /// When the job was queued (for the queue-wait log).
    queued: Instant,
    /// The caller's meter, credited with this job's share of the run time.
    meter: Option<ComputeMeter>,
}

/// What an executor has done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExecutorStats {
    /// Calls answered (successfully or not).
    pub calls: u64,
    /// Graph runs: fewer than `calls` when calls were stacked.
    pub runs: u64,
    /// Rows run, over all runs.
    pub rows: u64,
    /// Whether the executor's thread has ended (it panicked outside a run, or was shut
    /// down): its session answers no more calls, so the stage is not ready.
    pub stopped: bool,
    /// Nanoseconds inside `Session::run`, over all runs.
    pub run_nanos: u64,
}

impl ExecutorStats {
    /// Seconds inside `Session::run`, over all runs.
    pub fn run_seconds(&self) -> f64 {
        self.run_nanos as f64 * 1e-9
    }
}

/// The counters behind [`ExecutorStats`], shared with the executor thread.
#[derive(Debug, Default)]
struct Counters {
    calls: AtomicU64,
    runs: AtomicU64,
    rows: AtomicU64,
    run_nanos: AtomicU64,
}

/// A session on its own thread; see the module docs.
#[derive(Debug)]
pub struct SessionExecutor {
    /// Component label, e.g. `text_encoder` or `upsamplers[0].first`.
    label: String,
    /// The manifest's declaration of the graph.
    spec: ComponentSpec,
    /// Queue capacity (for the overload message).
    capacity: usize,
    /// The job queue; `None` once shut down.
    sender: Option<SyncSender<Job>>,
    /// The thread, joined by [`SessionExecutor::shutdown`].
    thread: Option<JoinHandle<()>>,
    /// What the thread has done.
    counters: Arc<Counters>,
}

impl SessionExecutor {
    /// Builds the session for the graph at `path`, checks it against `spec` and starts its
    /// thread.
    pub fn load(
        env: &Environment,
        path: &Path,
        label: &str,
        spec: &ComponentSpec,
        config: &SessionConfig,
    ) -> Result<Self> {
        let started = Instant::now();
        let session = build_session(env, path, spec, config)?;
        tracing::info!(
            component = label,
            file = %spec.file,
            device = %config.device,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "session ready"
        );
        Self::spawn(
            label,
            session,
            spec,
            config.queue_capacity,
            config.batch_rows(),
        )
    }

    /// Starts a thread owning `session` (already checked against `spec`) that stacks queued
    /// calls into runs of at most `max_batch_rows` rows when the graph allows it.
    pub fn spawn(
        label: &str,
        session: Session,
        spec: &ComponentSpec,
        capacity: usize,
        max_batch_rows: usize,
    ) -> Result<Self> {
        let capacity = capacity.max(1);
        let (sender, receiver) = mpsc::sync_channel(capacity);
        let thread_label = label.to_string();
        let thread_spec = spec.clone();
        let max_rows = if batch::batchable(spec) {
            max_batch_rows.max(1)
        } else {
            1
        };
        let counters = Arc::new(Counters::default());
        let thread_counters = Arc::clone(&counters);
        let thread = std::thread::Builder::new()
            .name(format!("ort-{label}"))
            .spawn(move || {
                let worker = Worker {
                    label: thread_label,
                    spec: thread_spec,
                    counters: thread_counters,
                };
                worker.serve(session, receiver, max_rows);
            })
            .map_err(|source| RuntimeError::Io {
                path: format!("<thread ort-{label}>").into(),
                source,
            })?;
        Ok(SessionExecutor {
            label: label.to_string(),
            spec: spec.clone(),
            capacity,
            sender: Some(sender),
            thread: Some(thread),
            counters,
        })
    }

    /// Calls, runs and rows so far.
    pub fn stats(&self) -> ExecutorStats {
        ExecutorStats {
            calls: self.counters.calls.load(Ordering::Relaxed),
            runs: self.counters.runs.load(Ordering::Relaxed),
            rows: self.counters.rows.load(Ordering::Relaxed),
            stopped: self.thread.as_ref().is_none_or(|t| t.is_finished()),
            run_nanos: self.counters.run_nanos.load(Ordering::Relaxed),
        }
    }

    /// The component label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The manifest's declaration of the graph.
    pub fn spec(&self) -> &ComponentSpec {
        &self.spec
    }

    /// Checks and queues `inputs` at once (so an overloaded queue is reported at the call),
    /// and returns a future of the outputs. Never blocks the calling thread.
    pub fn run(&self, inputs: Inputs) -> impl Future<Output = Result<Outputs>> + Send + 'static {
        let submitted = self.submit(inputs);
        let stopped = self.stopped();
        async move { submitted?.await.map_err(|_| stopped)? }
    }

    /// Like [`run`](Self::run), for synchronous callers outside an async runtime.
    pub fn run_blocking(&self, inputs: Inputs) -> Result<Outputs> {
        let receiver = self.submit(inputs)?;
        receiver.blocking_recv().map_err(|_| self.stopped())?
    }

    /// Runs the graph once on zero inputs with every symbolic axis 1, and checks that each
    /// output has the declared rank, fixed axes and batch 1. Used before reporting SERVING: it
    /// also pays ONNX Runtime's first-run costs (allocations, kernel selection).
    pub async fn warm_up(&self) -> Result<Outputs> {
        let inputs = self
            .spec
            .inputs
            .iter()
            .map(|t| {
                let shape: Vec<usize> = t
                    .shape
                    .iter()
                    .map(|d| match d {
                        Dim::Fixed(n) => *n as usize,
                        Dim::Symbolic(_) => 1,
                    })
                    .collect();
                let shape = IxDyn(&shape);
                let data = match t.dtype {
                    DataType::Float32 => TensorData::F32(ArrayD::zeros(shape)),
                    DataType::Float16 => TensorData::F16(ArrayD::from_elem(shape, f16::ZERO)),
                    DataType::Int64 => TensorData::I64(ArrayD::zeros(shape)),
                    DataType::Bool => TensorData::Bool(ArrayD::from_elem(shape, false)),
                };
                (t.name.clone(), data)
            })
            .collect();
        let outputs = self.run(inputs).await?;
        for spec in &self.spec.outputs {
            let value = outputs
                .values
                .get(&spec.name)
                .ok_or_else(|| RuntimeError::Outputs {
                    component: self.label.clone(),
                    message: format!("warm-up produced no output '{}'", spec.name),
                })?;
            let fits = value.shape().len() == spec.shape.len()
                && value
                    .shape()
                    .iter()
                    .zip(&spec.shape)
                    .all(|(have, want)| match want {
                        Dim::Fixed(n) => *have as u64 == *n,
                        Dim::Symbolic(_) => *have == 1,
                    });
            if !fits {
                let declared: Vec<String> = spec.shape.iter().map(ToString::to_string).collect();
                return Err(RuntimeError::Outputs {
                    component: self.label.clone(),
                    message: format!(
                        "warm-up output '{}' has shape {:?}, manifest declares [{}] (batch 1)",
                        spec.name,
                        value.shape(),
                        declared.join(", ")
                    ),
                });
            }
        }
        Ok(outputs)
    }

    /// Closes the queue and waits for the thread to finish the jobs already queued. Dropping
    /// an executor closes the queue without waiting.
    pub fn shutdown(mut self) {
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    fn stopped(&self) -> RuntimeError {
        RuntimeError::ExecutorStopped {
            component: self.label.clone(),
        }
    }

    /// Checks and converts the inputs, then queues them.
    fn submit(&self, inputs: Inputs) -> Result<oneshot::Receiver<Result<Outputs>>> {
        let inputs = self.check_inputs(inputs)?;
        let sender = self.sender.as_ref().ok_or_else(|| self.stopped())?;
        let (reply, receiver) = oneshot::channel();
        let job = Job {
            inputs,
            reply,
            span: tracing::Span::current(),
            queued: Instant::now(),
            meter: ComputeMeter::current(),
        };
        match sender.try_send(job) {
            Ok(()) => Ok(receiver),
            Err(TrySendError::Full(_)) => Err(RuntimeError::Overloaded {
                component: self.label.clone(),
                capacity: self.capacity,
            }),
            Err(TrySendError::Disconnected(_)) => Err(self.stopped()),
        }
    }

    /// Names, dtypes (narrowing float32 to float16 where declared), ranks, fixed axes and one
    /// size per symbolic axis name.
    fn check_inputs(&self, inputs: Inputs) -> Result<Inputs> {
        let fail = |message: String| RuntimeError::Inputs {
            component: self.label.clone(),
            message,
        };
        for (name, _) in &inputs {
            if self.spec.input(name).is_none() {
                return Err(fail(format!("the graph has no input '{name}'")));
            }
        }
        let mut symbols: BTreeMap<&str, usize> = BTreeMap::new();
        let mut checked = Vec::with_capacity(inputs.len());
        let mut by_name: BTreeMap<String, TensorData> = BTreeMap::new();
        for (name, value) in inputs {
            if by_name.insert(name.clone(), value).is_some() {
                return Err(fail(format!("input '{name}' is given twice")));
            }
        }
        for spec in &self.spec.inputs {
            let Some(value) = by_name.remove(&spec.name) else {
                return Err(fail(format!("input '{}' is missing", spec.name)));
            };
            let value = match (spec.dtype, value) {
                (DataType::Float16, TensorData::F32(a)) => TensorData::F16(a.mapv(f16::from_f32)),
                (_, v) => v,
            };
            if value.data_type() != Some(spec.dtype) {
                return Err(fail(format!(
                    "input '{}' must be {}, got {}",
                    spec.name,
                    spec.dtype,
                    value.dtype_name()
                )));
            }
            let shape = value.shape();
            let declared = || {
                let dims: Vec<String> = spec.shape.iter().map(ToString::to_string).collect();
                format!("[{}]", dims.join(", "))
            };
            if shape.len() != spec.shape.len() {
                return Err(fail(format!(
                    "input '{}' must have shape {}, got {shape:?}",
                    spec.name,
                    declared()
                )));
            }
            for (have, want) in shape.iter().zip(&spec.shape) {
                match want {
                    Dim::Fixed(n) if *have as u64 != *n => {
                        return Err(fail(format!(
                            "input '{}' must have shape {}, got {shape:?}",
                            spec.name,
                            declared()
                        )));
                    }
                    Dim::Symbolic(symbol) => match symbols.get(symbol.as_str()) {
                        Some(size) if size != have => {
                            return Err(fail(format!(
                                "input '{}' has {symbol} {have}, other inputs have {size}",
                                spec.name
                            )));
                        }
                        _ => {
                            symbols.insert(symbol, *have);
                        }
                    },
                    Dim::Fixed(_) => {}
                }
            }
            checked.push((spec.name.clone(), value));
        }
        Ok(checked)
    }
}

impl Drop for SessionExecutor {
    fn drop(&mut self) {
        // Closing the queue ends the thread after its current job; joining here could block an
        // async runtime thread, so the thread is left to finish on its own.
        self.sender.take();
    }
}

/// What the executor thread needs besides the session and the queue.
struct Worker {
    /// The component label.
    label: String,
    /// The graph's declaration.
    spec: ComponentSpec,
    /// Shared with the executor.
    counters: Arc<Counters>,
}

impl Worker {
    /// Runs queued jobs until the queue closes. After taking a job it takes every compatible
    /// job already waiting, up to `max_rows` rows, and runs them as one batch; it never waits
    /// for more, so a lone call runs at once.
    fn serve(&self, mut session: Session, receiver: Receiver<Job>, max_rows: usize) {
        let label = &self.label;
        let live = |job: &Job| {
            let closed = job.reply.is_closed();
            if closed {
                tracing::debug!(component = %label, "skipping a job whose caller has gone");
            }
            !closed
        };
        // A job taken from the queue that did not fit the batch before it.
        let mut carried: Option<Job> = None;
        loop {
            let first = match carried.take() {
                Some(job) => job,
                None => match receiver.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                },
            };
            if !live(&first) {
                continue;
            }
            let mut rows = batch::rows(&first.inputs);
            let mut jobs = vec![first];
            while rows < max_rows {
                let Ok(job) = receiver.try_recv() else {
                    break;
                };
                if !live(&job) {
                    continue;
                }
                let more = batch::rows(&job.inputs);
                if rows + more <= max_rows && batch::compatible(&jobs[0].inputs, &job.inputs) {
                    rows += more;
                    jobs.push(job);
                } else {
                    carried = Some(job);
                    break;
                }
            }
            self.run_jobs(&mut session, jobs);
        }
        tracing::debug!(component = %label, "executor thread stopped");
    }

    /// Runs `jobs` (one, or several compatible ones stacked) and answers each.
    fn run_jobs(&self, session: &mut Session, mut jobs: Vec<Job>) {
        let (label, spec) = (self.label.as_str(), &self.spec);
        let _entered = jobs[0].span.clone().entered();
        let waited = jobs[0].queued.elapsed();
        let started = Instant::now();
        let count = jobs.len();
        let sizes: Vec<usize> = jobs.iter().map(|j| batch::rows(&j.inputs)).collect();
        self.counters
            .calls
            .fetch_add(count as u64, Ordering::Relaxed);
        self.counters.runs.fetch_add(1, Ordering::Relaxed);
        self.counters
            .rows
            .fetch_add(sizes.iter().sum::<usize>() as u64, Ordering::Relaxed);
        let guarded = |inputs: Inputs, session: &mut Session| {
            catch_unwind(AssertUnwindSafe(|| {
                run_session(label, spec, session, inputs)
            }))
            .unwrap_or_else(|panic| {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                Err(RuntimeError::Outputs {
                    component: label.to_string(),
                    message: format!("the run panicked: {message}"),
                })
            })
        };
        let total_rows = sizes.iter().sum::<usize>().max(1);
        let credit = |meters: &[Option<ComputeMeter>], ran: Duration| {
            let nanos = u64::try_from(ran.as_nanos()).unwrap_or(u64::MAX);
            self.counters.run_nanos.fetch_add(nanos, Ordering::Relaxed);
            for (meter, rows) in meters.iter().zip(&sizes) {
                if let Some(meter) = meter {
                    meter.add(ran.mul_f64(*rows as f64 / total_rows as f64));
                }
            }
        };
        if count == 1 {
            let job = jobs.remove(0);
            let result = guarded(job.inputs, session);
            let ran = result.as_ref().map_or(Duration::ZERO, |(_, ran)| *ran);
            credit(std::slice::from_ref(&job.meter), ran);
            log_run(label, waited, started, 1, sizes[0], result.is_ok());
            let _ = job.reply.send(result.map(|(outputs, _)| outputs));
            return;
        }
        let meters: Vec<Option<ComputeMeter>> = jobs.iter_mut().map(|j| j.meter.take()).collect();
        let (inputs, replies): (Vec<Inputs>, Vec<_>) =
            jobs.into_iter().map(|j| (j.inputs, j.reply)).unzip();
        let fail = |message: String| RuntimeError::Outputs {
            component: label.to_string(),
            message,
        };
        let result = batch::stack(inputs)
            .map_err(fail)
            .and_then(|stacked| guarded(stacked, session))
            .and_then(|(outputs, ran)| {
                credit(&meters, ran);
                split_outputs(outputs, &sizes).map_err(fail)
            });
        log_run(
            label,
            waited,
            started,
            count,
            sizes.iter().sum(),
            result.is_ok(),
        );
        match result {
            Ok(per_job) => {
                for (reply, outputs) in replies.into_iter().zip(per_job) {
                    let _ = reply.send(Ok(outputs));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(fail(format!("a batched run failed: {message}"))));
                }
            }
        }
    }
}

/// The outputs of a stacked run, cut back into one [`Outputs`] per job of `sizes` rows.
fn split_outputs(outputs: Outputs, sizes: &[usize]) -> std::result::Result<Vec<Outputs>, String> {
    let mut per_job: Vec<BTreeMap<String, TensorData>> = vec![BTreeMap::new(); sizes.len()];
    for (name, data) in &outputs.values {
        for (values, piece) in per_job.iter_mut().zip(batch::split(data, sizes)?) {
            values.insert(name.clone(), piece);
        }
    }
    Ok(per_job
        .into_iter()
        .map(|values| Outputs {
            component: outputs.component.clone(),
            values,
        })
        .collect())
}

/// The debug log line of one graph run.
fn log_run(label: &str, waited: Duration, started: Instant, jobs: usize, rows: usize, ok: bool) {
    tracing::debug!(
        component = %label,
        queue_ms = waited.as_secs_f64() * 1e3,
        run_ms = started.elapsed().as_secs_f64() * 1e3,
        jobs,
        rows,
        ok,
        "graph run"
    );
}

/// One `Session::run`, copying every declared output into owned arrays; also returns the time
/// `Session::run` itself took.
fn run_session(
    label: &str,
    spec: &ComponentSpec,
    session: &mut Session,
    inputs: Inputs,
) -> Result<(Outputs, Duration)> {
    let context = |what: &str| format!("{label}: {what}");
    let mut values: Vec<(String, SessionInputValue<'static>)> = Vec::with_capacity(inputs.len());
    for (name, data) in inputs {
        let value: SessionInputValue<'static> = match data {
            TensorData::F32(a) => Tensor::from_array(a)
                .map_err(|e| RuntimeError::ort(context("input"), e))?
                .into(),
            TensorData::F16(a) => Tensor::from_array(a)
                .map_err(|e| RuntimeError::ort(context("input"), e))?
                .into(),
            TensorData::I64(a) => Tensor::from_array(a)
                .map_err(|e| RuntimeError::ort(context("input"), e))?
                .into(),
            TensorData::Bool(a) => Tensor::from_array(a)
                .map_err(|e| RuntimeError::ort(context("input"), e))?
                .into(),
            TensorData::U8(a) => Tensor::from_array(a)
                .map_err(|e| RuntimeError::ort(context("input"), e))?
                .into(),
        };
        values.push((name, value));
    }
    let started = Instant::now();
    let outputs = session
        .run(values)
        .map_err(|e| RuntimeError::ort(context("run"), e))?;
    let ran = started.elapsed();
    let mut result = BTreeMap::new();
    for out in &spec.outputs {
        let value = outputs
            .get(&out.name)
            .ok_or_else(|| RuntimeError::Outputs {
                component: label.to_string(),
                message: format!("the graph produced no output '{}'", out.name),
            })?;
        let extract = |e| RuntimeError::ort(context(&format!("reading output '{}'", out.name)), e);
        let data = match out.dtype {
            DataType::Float32 => TensorData::F32(
                value
                    .try_extract_array::<f32>()
                    .map_err(extract)?
                    .to_owned(),
            ),
            DataType::Float16 => TensorData::F16(
                value
                    .try_extract_array::<f16>()
                    .map_err(extract)?
                    .to_owned(),
            ),
            DataType::Int64 => TensorData::I64(
                value
                    .try_extract_array::<i64>()
                    .map_err(extract)?
                    .to_owned(),
            ),
            DataType::Bool => TensorData::Bool(
                value
                    .try_extract_array::<bool>()
                    .map_err(extract)?
                    .to_owned(),
            ),
        };
        result.insert(out.name.clone(), data);
    }
    Ok((
        Outputs {
            component: label.to_string(),
            values: result,
        },
        ran,
    ))
}
