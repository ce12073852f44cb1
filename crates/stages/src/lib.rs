//! unclip-stages: the unCLIP pipeline as calls to its stage services, for the `unclip-stages`
//! command and the gateway.
//!
//! | module | what |
//! |---|---|
//! | [`clients`] | [`StageClients`]: gRPC clients of the clip, prior and decoder services, health probes |
//! | [`pipeline`] | [`text_to_image`]: EncodeText → prior Sample → Decode → every Upsample stage → PNGs |
//! | [`local`] | [`LocalStack`]: the stage service binaries (replicas, optionally the gateway and Redis) as child processes on loopback ports |
//! | [`cli`] | the `unclip-stages` command line (`generate`) |
//! | [`error`] | [`Error`], the one error type of this crate |
//!
//! ```no_run
//! # async fn example() -> unclip_stages::Result<()> {
//! use unclip_stages::{LocalStack, LocalStackConfig, ServiceBinaries, StageClients, TextToImage};
//!
//! let binaries = ServiceBinaries::next_to_current_exe()?;
//! let stack = LocalStack::start(LocalStackConfig::new("models/shapes", binaries)).await?;
//! let mut clients = StageClients::connect(&stack.endpoints()).await?;
//! let request = TextToImage {
//!     num_images: 2,
//!     seed: 7,
//!     ..TextToImage::new("a red circle in the center on a white background")
//! };
//! let generated = unclip_stages::text_to_image(&mut clients, &request).await?;
//! for image in &generated.images {
//!     std::fs::write(format!("out_{}.png", image.seed), &image.png).unwrap();
//! }
//! stack.shutdown().await?;
//! # Ok(())
//! # }
//! ```

pub mod cli;
pub mod clients;
pub mod error;
pub mod local;
pub mod pipeline;

pub use clients::{HealthProbe, Stage, StageClients, StageEndpoints};
pub use error::{Error, Result};
pub use local::{
    LocalProcess, LocalStack, LocalStackConfig, ProcessExit, RedisMode, ServiceBinaries,
    StageReplicas,
};
pub use pipeline::{
    Generated, GeneratedImage, StageTimings, StepsUsed, TextToImage, text_to_image,
};
