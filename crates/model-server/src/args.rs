//! Command-line flags shared by every service, flattened into each service's `Config`.

use std::path::PathBuf;

use clap::Args;
use unclip_runtime::{
    Device, Environment, SessionConfig, ThreadBudget, ThreadPool, init_environment_with,
};

/// How ONNX Runtime is loaded and runs the graphs.
#[derive(Debug, Clone, Args)]
pub struct RuntimeArgs {
    /// Path of the ONNX Runtime shared library, libonnxruntime.so.1.N with N >= 31 (e.g. the
    /// PyPI `onnxruntime` wheel's onnxruntime/capi/libonnxruntime.so.1.32.0). Falls back to
    /// ORT_DYLIB_PATH.
    #[arg(long, env = "UNCLIP_ORT_LIBRARY")]
    pub ort_library: Option<PathBuf>,

    /// Where the graphs run: cpu, cuda (GPU 0) or cuda:N. CUDA that cannot be used is a
    /// start-up error, never a silent fall-back to the CPU.
    #[arg(long, env = "UNCLIP_DEVICE", default_value = "cpu")]
    pub device: Device,

    /// Threads this service's graphs compute on, together: the size of the one ONNX Runtime
    /// thread pool all its sessions share; 0 takes the cores the process may use (its CPU
    /// affinity and cgroup CPU quota). `unclip stack` gives each stage its share.
    #[arg(long, env = "UNCLIP_THREADS", default_value_t = 0)]
    pub threads: usize,

    /// shared: one thread pool for all the service's sessions, sized by --threads; per-session:
    /// each session its own pool of --intra-threads (the behaviour before budgets, for
    /// comparison).
    #[arg(long, env = "UNCLIP_THREAD_POOL", default_value = "shared")]
    pub thread_pool: ThreadPool,

    /// Let idle ONNX Runtime pool threads spin (busy-wait) for work instead of sleeping:
    /// ONNX Runtime's own default, slightly quicker for a lone caller, but it burns the
    /// cores other stages and requests need.
    #[arg(long, env = "UNCLIP_ORT_SPIN")]
    pub spin: bool,

    /// Intra-op threads of each graph session's own pool; 0 uses the shared pool (with
    /// --thread-pool per-session: lets ONNX Runtime choose, one per physical core).
    #[arg(long, env = "UNCLIP_INTRA_THREADS", default_value_t = 0)]
    pub intra_threads: usize,

    /// ONNX Runtime inter-op threads per graph session (parallel branches); 0 or 1 runs
    /// operators one after another.
    #[arg(long, env = "UNCLIP_INTER_THREADS", default_value_t = 0)]
    pub inter_threads: usize,

    /// Model calls that may wait per graph before new requests are refused with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "UNCLIP_QUEUE_DEPTH", default_value_t = 64)]
    pub queue_depth: usize,

    /// Most rows per graph run when calls queued for one graph (from different requests, at
    /// different steps of their loops) are stacked into one run; 1 runs each call alone; 0
    /// picks by device: 1 on the CPU (where stacking did not pay), 64 on CUDA.
    #[arg(long, env = "UNCLIP_MAX_BATCH_ROWS", default_value_t = 0)]
    pub max_batch_rows: usize,
}

impl RuntimeArgs {
    /// The session settings these flags describe.
    pub fn session_config(&self) -> SessionConfig {
        SessionConfig {
            device: self.device,
            intra_threads: self.intra_threads,
            inter_threads: self.inter_threads,
            spin: self.spin,
            queue_capacity: self.queue_depth,
            max_batch_rows: self.max_batch_rows,
        }
    }
}

impl RuntimeArgs {
    /// The process's compute budget these flags describe.
    pub fn thread_budget(&self) -> ThreadBudget {
        ThreadBudget {
            threads: self.threads,
            pool: self.thread_pool,
            spin: self.spin,
        }
    }

    /// Loads ONNX Runtime (`--ort-library`) and builds the process's environment with its
    /// thread budget.
    pub fn init_environment(&self) -> unclip_runtime::Result<Environment> {
        init_environment_with(self.ort_library.as_deref(), &self.thread_budget())
    }
}

impl Default for RuntimeArgs {
    fn default() -> Self {
        Self {
            ort_library: None,
            device: Device::Cpu,
            threads: 0,
            thread_pool: ThreadPool::Shared,
            spin: false,
            intra_threads: 0,
            inter_threads: 0,
            queue_depth: 64,
            max_batch_rows: 0,
        }
    }
}
