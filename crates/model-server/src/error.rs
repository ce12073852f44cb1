//! [`ServiceError`], the error of every RPC handler, and its one mapping to gRPC status codes.
//!
//! | error | code |
//! |---|---|
//! | a request field out of its limits | INVALID_ARGUMENT, "field: what and the limit" |
//! | a feature the loaded model lacks (no image encoder, …) | FAILED_PRECONDITION |
//! | the model is still loading | UNAVAILABLE |
//! | a graph queue is full | RESOURCE_EXHAUSTED |
//! | an executor thread has stopped | UNAVAILABLE |
//! | anything else (ONNX Runtime failures, bugs) | INTERNAL, logged at error level |

use std::fmt::Display;

use thiserror::Error;
use tonic::Status;
use unclip_proto::TensorError;
use unclip_runtime::RuntimeError;

/// Why an RPC failed.
#[derive(Debug, Error)]
pub enum ServiceError {
    /// A request field is missing, malformed or out of its limits.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The field path, e.g. `prompts` or `text.last_hidden_state`.
        field: String,
        /// What is wrong, with the limit.
        message: String,
    },
    /// The request is well-formed but the served model cannot do it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The service cannot answer yet (still loading) or any more (shutting down).
    #[error("{0}")]
    Unavailable(String),
    /// A model-execution error.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A bug or an unexpected failure.
    #[error("{0}")]
    Internal(String),
}

impl ServiceError {
    /// INVALID_ARGUMENT naming `field`.
    pub fn invalid(field: impl Into<String>, message: impl Display) -> Self {
        ServiceError::InvalidArgument {
            field: field.into(),
            message: message.to_string(),
        }
    }

    /// INVALID_ARGUMENT for a tensor field that failed to decode or validate.
    pub fn tensor(field: impl Into<String>, error: TensorError) -> Self {
        Self::invalid(field, error)
    }
}

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Status {
        let message = error.to_string();
        match error {
            ServiceError::InvalidArgument { .. } => Status::invalid_argument(message),
            ServiceError::FailedPrecondition(_) => Status::failed_precondition(message),
            ServiceError::Unavailable(_) => Status::unavailable(message),
            ServiceError::Runtime(RuntimeError::Overloaded { .. }) => {
                tracing::warn!(%message, "refusing a request: overloaded");
                Status::resource_exhausted(message)
            }
            ServiceError::Runtime(RuntimeError::ExecutorStopped { .. }) => {
                tracing::error!(%message, "executor stopped");
                Status::unavailable(message)
            }
            ServiceError::Runtime(_) | ServiceError::Internal(_) => {
                tracing::error!(%message, "request failed");
                Status::internal(message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each kind of error gets its documented code and keeps its message.
    #[test]
    fn codes() {
        let s = Status::from(ServiceError::invalid(
            "prompts",
            "must hold 1..=64 prompts, got 0",
        ));
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert_eq!(s.message(), "prompts: must hold 1..=64 prompts, got 0");
        let s = Status::from(ServiceError::FailedPrecondition("no image encoder".into()));
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
        let s = Status::from(ServiceError::Runtime(RuntimeError::Overloaded {
            component: "prior".into(),
            capacity: 4,
        }));
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        let s = Status::from(ServiceError::Runtime(RuntimeError::ExecutorStopped {
            component: "prior".into(),
        }));
        assert_eq!(s.code(), tonic::Code::Unavailable);
        let s = Status::from(ServiceError::Internal("boom".into()));
        assert_eq!(s.code(), tonic::Code::Internal);
    }
}
