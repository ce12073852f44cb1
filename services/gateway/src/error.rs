//! [`Error`], what a gateway request can fail with, and its mapping to gRPC status codes.
//!
//! | error | code |
//! |---|---|
//! | a request field out of its limits | INVALID_ARGUMENT, "field: what and the limit" |
//! | a stage call failed | the stage's own code, message prefixed with the call |
//! | the stages answered something unexpected, or a bug | INTERNAL, logged |

use thiserror::Error;
use tonic::Status;

/// Why a gateway request failed.
#[derive(Debug, Error)]
pub enum Error {
    /// A request field is missing, malformed or out of its limits.
    #[error("{field}: {message}")]
    Invalid {
        /// The field, e.g. `num_images` or `decoder.decoder_steps`.
        field: String,
        /// What is wrong, with the limit.
        message: String,
    },
    /// A stage call failed (after retries on other replicas where that could help).
    #[error("{method}: {}", status.message())]
    Stage {
        /// The call, e.g. `decoder.Decode`.
        method: &'static str,
        /// What the stage (or the transport) answered.
        status: Status,
    },
    /// A stage answered with something the gateway cannot use, or a bug.
    #[error("{0}")]
    Internal(String),
}

/// The gateway's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// INVALID_ARGUMENT naming `field`.
    pub fn invalid(field: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Error::Invalid {
            field: field.into(),
            message: message.to_string(),
        }
    }

    /// An unusable stage answer of `method`.
    pub fn bad_answer(method: &str, detail: impl std::fmt::Display) -> Self {
        Error::Internal(format!("{method} answered unexpectedly: {detail}"))
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        match error {
            Error::Invalid { .. } => Status::invalid_argument(message),
            Error::Stage { status, .. } => Status::new(status.code(), message),
            Error::Internal(_) => {
                tracing::error!(%message, "request failed");
                Status::internal(message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let s = Status::from(Error::invalid("num_images", "must be 1..=10, got 0"));
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert_eq!(s.message(), "num_images: must be 1..=10, got 0");
        let s = Status::from(Error::Stage {
            method: "prior.Sample",
            status: Status::deadline_exceeded("late"),
        });
        assert_eq!(s.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(s.message(), "prior.Sample: late");
        assert_eq!(
            Status::from(Error::Internal("x".into())).code(),
            tonic::Code::Internal
        );
    }
}
