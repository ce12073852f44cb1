//! Where graphs run ([`Device`]) and how sessions are configured ([`SessionConfig`]).
//!
//! `cuda` registers ONNX Runtime's CUDA execution provider with `error_on_failure`, so a
//! session that cannot use the GPU fails to build instead of silently running on the CPU (ort's
//! default). The CPU provider is not listed as a fall-back for the same reason; ONNX Runtime
//! still places the few operators CUDA lacks on the CPU, which is normal.

use std::fmt;
use std::str::FromStr;

use ort::ep::{self, ExecutionProvider};

use crate::error::{Result, RuntimeError};

/// A device to run graphs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// ONNX Runtime's CPU provider.
    #[default]
    Cpu,
    /// CUDA device N.
    Cuda(u32),
}

impl FromStr for Device {
    type Err = RuntimeError;

    /// `cpu`, `cuda` (device 0) or `cuda:N`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            RuntimeError::Device(format!(
                "'{s}' is not a device: expected cpu, cuda or cuda:N (N a GPU index)"
            ))
        };
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n.parse().map(Device::Cuda).map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl Device {
    /// The execution providers to register, in order. Fails early, with a message saying what
    /// to install, when the loaded ONNX Runtime was built without CUDA.
    pub fn execution_providers(self) -> Result<Vec<ep::ExecutionProviderDispatch>> {
        match self {
            Device::Cpu => Ok(vec![ep::CPU::default().build()]),
            Device::Cuda(n) => {
                let available = ep::CUDA::is_available()
                    .map_err(|e| RuntimeError::Device(format!("cannot query providers: {e}")))?;
                if !available {
                    return Err(RuntimeError::Device(format!(
                        "{self} requested, but the loaded ONNX Runtime library has no CUDA \
                         execution provider (the PyPI `onnxruntime` wheel is CPU-only; point \
                         --ort-library at the library of `onnxruntime-gpu`, with CUDA 12/13 and \
                         cuDNN 9 installed)"
                    )));
                }
                let id = i32::try_from(n)
                    .map_err(|_| RuntimeError::Device(format!("GPU index {n} is too large")))?;
                Ok(vec![
                    ep::CUDA::default()
                        .with_device_id(id)
                        .build()
                        .error_on_failure(),
                ])
            }
        }
    }
}

/// How sessions are built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Where the graphs run.
    pub device: Device,
    /// Threads inside one operator for this session alone (its own intra-op pool); 0 uses the
    /// process's shared pool ([`crate::ThreadBudget`]), or, in a process without one, lets
    /// ONNX Runtime choose (one per physical core).
    pub intra_threads: usize,
    /// Threads running independent branches of a graph; 0 or 1 runs operators sequentially.
    pub inter_threads: usize,
    /// Whether this session's own pools (intra-op when `intra_threads` > 0 or the process has
    /// no shared pool, inter-op when `inter_threads` > 1) spin while idle; ONNX Runtime's
    /// default is to spin.
    pub spin: bool,
    /// Requests that may wait for one executor before new ones are refused.
    pub queue_capacity: usize,
    /// Most rows of one graph run when the executor stacks queued calls (from different
    /// requests, at different steps) into one; 1 runs every call on its own; 0 picks by
    /// device ([`SessionConfig::batch_rows`]).
    pub max_batch_rows: usize,
}

/// Rows per stacked run on a GPU when `max_batch_rows` is 0.
pub const GPU_BATCH_ROWS: usize = 64;

impl SessionConfig {
    /// The largest stacked run: `max_batch_rows`, or for 0, none on the CPU (measured on 2
    /// cores: stacking lost 5-10% of throughput, as large batches of 128-pixel upsampler calls
    /// run slower per row there) and [`GPU_BATCH_ROWS`] on CUDA.
    pub fn batch_rows(&self) -> usize {
        match (self.max_batch_rows, self.device) {
            (0, Device::Cpu) => 1,
            (0, Device::Cuda(_)) => GPU_BATCH_ROWS,
            (rows, _) => rows,
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            intra_threads: 0,
            inter_threads: 0,
            spin: false,
            queue_capacity: 64,
            max_batch_rows: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 0 rows picks by device; anything else is taken as given.
    #[test]
    fn batch_rows_by_device() {
        let cpu = SessionConfig::default();
        assert_eq!(cpu.batch_rows(), 1);
        let gpu = SessionConfig {
            device: Device::Cuda(0),
            ..SessionConfig::default()
        };
        assert_eq!(gpu.batch_rows(), GPU_BATCH_ROWS);
        let set = SessionConfig {
            max_batch_rows: 8,
            ..SessionConfig::default()
        };
        assert_eq!(set.batch_rows(), 8);
    }

    /// Device strings parse to the documented forms and bad ones name the accepted ones.
    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!("CUDA".parse::<Device>().unwrap(), Device::Cuda(0));
        assert_eq!("cuda:3".parse::<Device>().unwrap(), Device::Cuda(3));
        assert_eq!(Device::Cuda(3).to_string(), "cuda:3");
        for bad in ["gpu", "cuda:", "cuda:-1", "cuda:x", ""] {
            let e = bad.parse::<Device>().unwrap_err().to_string();
            assert!(e.contains("expected cpu, cuda or cuda:N"), "{bad}: {e}");
        }
    }
}
