//! The `unclip.v1` gRPC API shared by the unCLIP services, and conversions between its
//! [`Tensor`](v1::Tensor) message and `ndarray` arrays.
//!
//! The code in [`v1`] is generated at build time from `proto/unclip/v1/*.proto` by protox (no
//! `protoc` needed) and tonic-prost-build: prost messages, tonic clients and servers.
//! [`FILE_DESCRIPTOR_SET`] is the encoded descriptor set, for gRPC reflection.
//!
//! [`tensor`] turns wire tensors into arrays and back, validating dtype, shape and byte length on
//! the way in (a request is untrusted input), and offers the shape and finiteness checks every
//! service runs before handing arrays to a model. [`StepEvent`] is the common shape of the stage
//! services' streaming events. [`client`] holds the message limit and endpoint URL rule every
//! client and server shares.

pub mod client;
pub mod steps;
pub mod tensor;

/// Generated messages, clients (`*_client`) and servers (`*_server`) of package `unclip.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("unclip.v1");
}

/// The encoded `FileDescriptorSet` of every `unclip.v1` file, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("unclip_descriptor");

pub use client::{MAX_MESSAGE_BYTES, with_scheme};
pub use steps::StepEvent;
pub use tensor::{Dim, Element, TensorError, check_finite, check_shape};
