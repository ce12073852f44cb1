//! unclip-stack: a local unCLIP stack — the clip, prior and decoder service binaries (with
//! replicas), the gateway and Redis as child processes on loopback ports, started in order,
//! health-checked, killed and restarted for fault tests, and stopped cleanly. The `unclip` CLI
//! (`unclip stack`, `--local`) and the end-to-end tests run the stack through it. It calls no
//! model itself: the gateway is the one orchestrator of the stages.
//!
//! | module | what |
//! |---|---|
//! | [`local`] | [`LocalStack`]: the processes, their output, readiness, faults and shutdown |
//! | [`stage`] | [`Stage`] (the three services' names and binaries), [`StageEndpoints`], [`HealthProbe`] |
//! | [`error`] | [`Error`], the one error type of this crate |
//!
//! ```no_run
//! # async fn example() -> unclip_stack::Result<()> {
//! use unclip_stack::{LocalStack, LocalStackConfig, ServiceBinaries};
//!
//! let binaries = ServiceBinaries::next_to_current_exe()?;
//! let config = LocalStackConfig {
//!     gateway: true,
//!     ..LocalStackConfig::new("models/shapes", binaries)
//! };
//! let stack = LocalStack::start(config).await?;
//! println!("gateway at {}", stack.gateway_url().unwrap());
//! stack.shutdown().await?;
//! # Ok(())
//! # }
//! ```

pub mod error;
pub mod local;
pub mod stage;

pub use error::{Error, Result};
pub use local::{
    LocalProcess, LocalStack, LocalStackConfig, ProcessExit, RedisMode, ServiceBinaries,
    StageReplicas,
};
pub use stage::{HealthProbe, Stage, StageEndpoints};
