//! [`Probe`]: the check a replica passes before it receives calls, and again on an interval
//! (health and what it serves), and [`Verdict`], what one check found.

use std::future::Future;
use std::pin::Pin;

use tonic::transport::Channel;

/// What one probe of one replica found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It answers, is serving, and serves what the set wants: it may receive calls.
    Ready,
    /// It cannot take calls now (unreachable, still loading, draining), for the reason given.
    /// A replica admitted before stays a last resort; one never admitted gets no call.
    NotServing(String),
    /// It serves something else (e.g. another model version), for the reason given: it gets
    /// no call until a later probe finds it [`Ready`](Verdict::Ready). Counted and logged.
    Refused(String),
}

/// A boxed probe future.
pub type ProbeFuture = Pin<Box<dyn Future<Output = Verdict> + Send + 'static>>;

/// Checks one replica, given its channel: what a [`ReplicaSet`](crate::ReplicaSet) built with
/// [`ReplicaSet::probed`](crate::ReplicaSet::probed) asks before a replica's first call and
/// then every [`ReplicaConfig::probe_interval`](crate::ReplicaConfig::probe_interval). The set
/// bounds each probe by [`PROBE_TIMEOUT`]; running out is
/// [`Verdict::NotServing`].
///
/// Any `Fn(Channel) -> impl Future<Output = Verdict>` is a probe.
pub trait Probe: Send + Sync + 'static {
    /// Probes the replica behind `channel`.
    fn probe(&self, channel: Channel) -> ProbeFuture;
}

impl<F, Fut> Probe for F
where
    F: Fn(Channel) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Verdict> + Send + 'static,
{
    fn probe(&self, channel: Channel) -> ProbeFuture {
        Box::pin(self(channel))
    }
}

/// The longest one probe may take.
pub const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
