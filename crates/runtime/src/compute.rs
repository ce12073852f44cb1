//! [`ComputeMeter`]: the seconds a request spent inside ONNX Runtime's `Session::run`.
//!
//! A handler makes a meter and runs its work under it, [`ComputeMeter::measure`] for async
//! code or [`ComputeMeter::enter`] on a blocking thread. Every [`crate::SessionExecutor`] call
//! made under it captures the meter when it is queued, and the executor thread adds the run's
//! time to it (a run that stacked several requests' calls is shared among them by rows). The
//! handler then reports [`ComputeMeter::seconds`] beside its wall time, so the overhead of
//! everything else (gRPC, copies, sampler arithmetic, PNG encoding) can be told apart.

use std::cell::RefCell;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

tokio::task_local! {
    /// The meter of the async task running a request.
    static TASK_METER: ComputeMeter;
}

thread_local! {
    /// The meter of the blocking thread running a request.
    static THREAD_METER: RefCell<Option<ComputeMeter>> = const { RefCell::new(None) };
}

/// Nanoseconds of `Session::run` on behalf of one request; clones share the count.
#[derive(Debug, Clone, Default)]
pub struct ComputeMeter(Arc<AtomicU64>);

impl ComputeMeter {
    /// A meter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `elapsed` of run time.
    pub fn add(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.0.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The run time so far, in seconds.
    pub fn seconds(&self) -> f64 {
        self.0.load(Ordering::Relaxed) as f64 * 1e-9
    }

    /// Runs `work` with this meter current, so the executor calls it makes are counted here.
    pub async fn measure<F: Future>(&self, work: F) -> F::Output {
        TASK_METER.scope(self.clone(), work).await
    }

    /// Makes this meter current on this thread until the guard is dropped (for blocking code
    /// that calls [`crate::SessionExecutor::run_blocking`]).
    pub fn enter(&self) -> MeterGuard {
        let previous = THREAD_METER.with(|m| m.replace(Some(self.clone())));
        MeterGuard { previous }
    }

    /// The meter current in this task or on this thread, if any.
    pub fn current() -> Option<ComputeMeter> {
        TASK_METER
            .try_with(Clone::clone)
            .ok()
            .or_else(|| THREAD_METER.with(|m| m.borrow().clone()))
    }
}

/// Restores the thread's previous meter when dropped; see [`ComputeMeter::enter`].
#[derive(Debug)]
pub struct MeterGuard {
    /// The meter current before [`ComputeMeter::enter`].
    previous: Option<ComputeMeter>,
}

impl Drop for MeterGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        THREAD_METER.with(|m| *m.borrow_mut() = previous);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A meter is current inside `measure` and `enter`, and not outside them.
    #[tokio::test]
    async fn current_follows_scope_and_guard() {
        assert!(ComputeMeter::current().is_none());
        let meter = ComputeMeter::new();
        meter
            .measure(async {
                ComputeMeter::current()
                    .expect("current in measure")
                    .add(Duration::from_millis(3));
            })
            .await;
        assert!(ComputeMeter::current().is_none());
        {
            let _guard = meter.enter();
            ComputeMeter::current()
                .expect("current under the guard")
                .add(Duration::from_millis(2));
        }
        assert!(ComputeMeter::current().is_none());
        assert!(
            (meter.seconds() - 0.005).abs() < 1e-9,
            "{}",
            meter.seconds()
        );
    }
}
