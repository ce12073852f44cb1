//! Calls to the replicas of one unCLIP stage service (clip, prior or decoder): balanced,
//! retried on another replica when one is unavailable, and bounded by the client's deadline.
//! The gateway holds one [`ReplicaSet`] per stage.
//!
//! | Module | What it holds |
//! |---|---|
//! | `set` | [`ReplicaSet`]: replica choice, retries, backoff, counters, DNS refresh, probing |
//! | `probe` | [`Probe`], [`Verdict`]: the check a replica passes before its calls |
//! | `config` | [`ReplicaConfig`]: attempts, connect timeout, backoff, DNS refresh and probe periods |
//! | `address` | parsing `http://host:port` / `host:port`, resolving DNS names |
//! | `deadline` | [`request`], [`deadline_of`], [`parse_grpc_timeout`]: `grpc-timeout` both ways |
//! | `error` | [`ReplicaError`]: why a set could not be built |
//!
//! # Policy of [`ReplicaSet::call`]
//!
//! - **Replicas.** Each configured address whose host is an IP is one replica; a DNS name
//!   becomes one replica per address it resolves to, re-resolved every
//!   [`ReplicaConfig::dns_refresh`] (every second while a name resolves to nothing: that is
//!   not an error when refreshing). Channels connect lazily: a replica down at start-up does
//!   not fail [`ReplicaSet::new`].
//! - **Probes.** A set built with [`ReplicaSet::probed`] sends a replica calls only after its
//!   [`Probe`] found it [`Verdict::Ready`] (e.g. gRPC health SERVING and the expected model
//!   version), however it was found; a replica serving something else is kept out, logged and
//!   counted. Probes repeat every [`ReplicaConfig::probe_interval`], at once for a new
//!   replica or one whose call failed in transport; [`ReplicaSet::available`] follows how
//!   many replicas take calls.
//! - **Choice.** Fewest calls in flight among replicas not backed off, ties round-robin; if
//!   all are backed off, the one whose backoff ends first (a call is never refused outright).
//! - **Retry.** Only when the replica could not do the work: UNAVAILABLE; UNKNOWN, INTERNAL
//!   or CANCELLED carrying a transport failure's message (what a replica killed mid-call
//!   looks like); RESOURCE_EXHAUSTED (a full queue). The retry goes to a replica this call has
//!   not tried yet when there is one, at most [`ReplicaConfig::max_attempts`] attempts in all.
//!   Every other status is returned at once, unchanged. Retrying is safe only for idempotent
//!   calls; the stage calls are deterministic (seeded).
//! - **Backoff.** A replica that could not do the work is skipped for
//!   [`ReplicaConfig::backoff_min`], doubling per consecutive failure up to
//!   [`ReplicaConfig::backoff_max`]; a success resets it. A full queue does not back the
//!   replica off; the call waits [`ReplicaConfig::busy_backoff`] (jittered) before retrying,
//!   or returns the RESOURCE_EXHAUSTED at once when that wait would pass its deadline.
//! - **Deadline.** The time left is checked before each attempt, handed to the attempt to
//!   send as `grpc-timeout`, and bounds the attempt; none left gives DEADLINE_EXCEEDED.
//!   Servers read it back with [`deadline_of`].

mod address;
mod config;
mod deadline;
mod error;
mod probe;
mod set;

pub use config::{ClientTls, ReplicaConfig};
pub use deadline::{deadline_of, parse_grpc_timeout, request};
pub use error::ReplicaError;
pub use probe::{PROBE_TIMEOUT, Probe, ProbeFuture, Verdict};
pub use set::{Answered, ReplicaSet, ReplicaStats};
