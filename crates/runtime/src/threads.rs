//! [`ThreadBudget`]: how many threads a process's ONNX Runtime sessions may compute on, together.
//!
//! Before, every session (a stage service has several: the decoder one per graph) had its own
//! intra-op pool sized to the machine, whose idle threads spin for a while after each run. When
//! the calls of overlapping requests ran at once, in one process or in the stack's several,
//! those pools fought for the same cores, and more load made the stack slower. Now a process
//! has one pool, ONNX Runtime's global thread pool, which all its sessions share: its size is
//! the process's budget, by default the cores it may use ([`available_cores`]: the scheduler
//! affinity and the cgroup CPU quota, so a container limited to 2 CPUs counts 2), and its
//! threads sleep rather than spin when idle, handing the cores to whichever process has work.
//!
//! The budget is fixed when the process builds its ONNX Runtime environment (once per process):
//! later callers in the same process share the first one's pool.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// Where cgroup v2 publishes the process's CPU quota: `max 100000` or `200000 100000`.
pub const CGROUP_CPU_MAX: &str = "/sys/fs/cgroup/cpu.max";

/// How a process's sessions get their threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadBudget {
    /// Threads computing at once for all the process's sessions (the shared pool's size, the
    /// calling thread included); 0 takes [`available_cores`].
    pub threads: usize,
    /// One pool shared by every session ([`ThreadPool::Shared`]), or one per session.
    pub pool: ThreadPool,
    /// Whether idle pool threads spin (busy-wait) for more work instead of sleeping: a little
    /// faster for one caller alone, wasteful when processes share the cores.
    pub spin: bool,
}

impl Default for ThreadBudget {
    /// One shared pool the size of the available cores, not spinning.
    fn default() -> Self {
        Self {
            threads: 0,
            pool: ThreadPool::Shared,
            spin: false,
        }
    }
}

impl ThreadBudget {
    /// The pool size: `threads`, or the available cores for 0.
    pub fn resolved_threads(&self) -> usize {
        match self.threads {
            0 => available_cores(),
            n => n,
        }
    }
}

/// Whether a process's sessions share one intra-op pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ThreadPool {
    /// ONNX Runtime's global pool, one per process, of [`ThreadBudget::threads`] threads.
    #[default]
    Shared,
    /// Each session its own pool of `--intra-threads` (ONNX Runtime's choice, one per
    /// physical core, for 0): the behaviour before budgets.
    PerSession,
}

impl FromStr for ThreadPool {
    type Err = String;

    /// `shared` or `per-session`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "shared" => Ok(ThreadPool::Shared),
            "per-session" => Ok(ThreadPool::PerSession),
            other => Err(format!(
                "'{other}' is not a thread pool mode: expected shared or per-session"
            )),
        }
    }
}

impl fmt::Display for ThreadPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ThreadPool::Shared => "shared",
            ThreadPool::PerSession => "per-session",
        })
    }
}

/// The cores this process may use: the scheduler's count (CPU affinity, and the cgroup quota
/// as the standard library reads it), capped by the cgroup v2 quota in [`CGROUP_CPU_MAX`]
/// rounded up; at least 1.
pub fn available_cores() -> usize {
    let scheduler = std::thread::available_parallelism().map_or(1, |n| n.get());
    let quota = cgroup_quota(Path::new(CGROUP_CPU_MAX));
    quota.map_or(scheduler, |q| q.min(scheduler)).max(1)
}

/// The whole CPUs a cgroup v2 `cpu.max` file allows (quota / period, rounded up), or `None`
/// when it is absent, unreadable or unlimited (`max`).
pub fn cgroup_quota(path: &Path) -> Option<usize> {
    parse_cpu_max(&std::fs::read_to_string(path).ok()?)
}

/// Parses `cpu.max` content: `max [period]` is no limit, `QUOTA PERIOD` allows
/// ceil(QUOTA / PERIOD) CPUs.
pub fn parse_cpu_max(content: &str) -> Option<usize> {
    let mut fields = content.split_whitespace();
    let quota: u64 = fields.next()?.parse().ok()?;
    let period: u64 = fields.next().map_or(Some(100_000), |p| p.parse().ok())?;
    if period == 0 || quota == 0 {
        return None;
    }
    Some(quota.div_ceil(period).max(1) as usize)
}

/// Divides `cores` among services by weight: each gets its share rounded to the nearest whole
/// core, at least 1 and at most `cores`. Shares may add up to more than `cores`: the stages of
/// a pipeline mostly run one after another, so each may use more than its average share.
pub fn divide_cores(cores: usize, weights: &[f64]) -> Vec<usize> {
    let total: f64 = weights.iter().filter(|w| **w > 0.0).sum();
    weights
        .iter()
        .map(|w| {
            if total <= 0.0 || *w <= 0.0 {
                return 1;
            }
            ((cores as f64 * w / total).round() as usize).clamp(1, cores.max(1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// cgroup v2 `cpu.max`: unlimited, whole and fractional quotas, and junk.
    #[test]
    fn parses_cpu_max() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("200000 100000\n"), Some(2));
        assert_eq!(parse_cpu_max("150000 100000"), Some(2));
        assert_eq!(parse_cpu_max("50000 100000"), Some(1));
        assert_eq!(parse_cpu_max("400000"), Some(4));
        assert_eq!(parse_cpu_max(""), None);
        assert_eq!(parse_cpu_max("lots 100000"), None);
        assert_eq!(parse_cpu_max("0 100000"), None);
    }

    /// A missing file is no limit, and the available cores are at least 1.
    #[test]
    fn missing_quota_file_is_no_limit() {
        assert_eq!(cgroup_quota(Path::new("/nonexistent/cpu.max")), None);
        assert!(available_cores() >= 1);
    }

    /// Shares follow the weights, round to whole cores and never fall below 1.
    #[test]
    fn divides_cores_by_weight() {
        assert_eq!(divide_cores(8, &[1.0, 3.0, 4.0]), vec![1, 3, 4]);
        assert_eq!(divide_cores(2, &[0.05, 0.4, 0.55]), vec![1, 1, 1]);
        assert_eq!(divide_cores(4, &[0.05, 0.35, 0.6]), vec![1, 1, 2]);
        assert_eq!(divide_cores(1, &[1.0, 1.0]), vec![1, 1]);
        assert_eq!(divide_cores(4, &[0.0, 1.0]), vec![1, 4]);
    }

    /// The pool modes parse from and print as their flag spellings.
    #[test]
    fn pool_modes_round_trip() {
        for mode in [ThreadPool::Shared, ThreadPool::PerSession] {
            assert_eq!(mode.to_string().parse::<ThreadPool>().unwrap(), mode);
        }
        assert!("global".parse::<ThreadPool>().is_err());
    }
}
