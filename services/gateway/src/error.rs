//! [`Error`], what a gateway request can fail with, and its mapping to gRPC status codes.
//!
//! | error | code |
//! |---|---|
//! | a request field out of its limits | INVALID_ARGUMENT, "field: what and the limit" |
//! | a stage call failed | the stage's own code; the client is told the [`Stage`] label and what the code means, the stage's own text is logged (it may name hosts, files or internals), except for INVALID_ARGUMENT, whose text names the request field and is passed on |
//! | the request layer refused it ([`Refusal`]) | the refusal's code; RESOURCE_EXHAUSTED carries `retry-after` (seconds) in its metadata |
//! | the stages answered something unexpected, or a bug | INTERNAL, logged |

use thiserror::Error;
use tonic::{Code, Status};

use crate::layer::Refusal;
use crate::stage::Stage;

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
    #[error("{stage}: {}", status.message())]
    Stage {
        /// The call, e.g. `decoder.decode`.
        stage: Stage,
        /// What the stage (or the transport) answered.
        status: Status,
    },
    /// A stage answered with something the gateway cannot use, or a bug.
    #[error("{0}")]
    Internal(String),
    /// The request layer did not admit the request.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The gateway is not ready (still checking its stages).
    #[error("{0}")]
    Unavailable(String),
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

    /// An unusable answer of a `stage` call.
    pub fn bad_answer(stage: Stage, detail: impl std::fmt::Display) -> Self {
        Error::Internal(format!("{stage} answered unexpectedly: {detail}"))
    }
}

impl Error {
    /// The gRPC code of this error (also the outcome name in the request counters).
    pub fn code(&self) -> Code {
        match self {
            Error::Invalid { .. } => Code::InvalidArgument,
            Error::Stage { status, .. } => status.code(),
            Error::Internal(_) => Code::Internal,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Refused(refusal) => match refusal {
                Refusal::Unauthenticated(_) => Code::Unauthenticated,
                Refusal::PermissionDenied(_) => Code::PermissionDenied,
                Refusal::ResourceExhausted { .. } => Code::ResourceExhausted,
                Refusal::DeadlineExceeded(_) => Code::DeadlineExceeded,
                Refusal::Unavailable(_) => Code::Unavailable,
                Refusal::InvalidArgument(_) => Code::InvalidArgument,
            },
        }
    }
}

impl Error {
    /// What the client is told: the error's text, except that a stage's own text is replaced
    /// by what its code means (see the module docs).
    pub fn client_message(&self) -> String {
        match self {
            Error::Stage { stage, status } if status.code() != Code::InvalidArgument => {
                format!("{stage}: {}", stage_failure(status.code()))
            }
            _ => self.to_string(),
        }
    }
}

/// What a failed stage call's code means, for a client who must not see the stage's text.
fn stage_failure(code: Code) -> &'static str {
    match code {
        Code::DeadlineExceeded => "the deadline passed before the stage answered",
        Code::Cancelled => "the stage call was cancelled",
        Code::ResourceExhausted => "the stage is overloaded; try again later",
        Code::Unavailable => "no replica of the stage is available; try again later",
        Code::FailedPrecondition => "the stage cannot serve this request now",
        Code::Unimplemented => "the stage does not support this call",
        Code::OutOfRange => "a value is out of the stage's range",
        _ => "the stage failed",
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let message = error.client_message();
        let mut status = Status::new(error.code(), message);
        match error {
            Error::Internal(_) => tracing::error!(message = status.message(), "request failed"),
            Error::Stage {
                stage,
                status: ref cause,
            } if cause.code() != Code::InvalidArgument => {
                tracing::warn!(
                    %stage,
                    code = ?cause.code(),
                    cause = cause.message(),
                    "stage call failed"
                );
            }
            Error::Refused(Refusal::ResourceExhausted {
                retry_after: Some(after),
                ..
            }) => {
                let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
                if let Ok(value) = seconds.to_string().parse() {
                    status.metadata_mut().insert(RETRY_AFTER, value);
                }
            }
            _ => {}
        }
        status
    }
}

/// The metadata key of a refusal's retry hint: whole seconds, rounded up (as HTTP's
/// `Retry-After`).
pub const RETRY_AFTER: &str = "retry-after";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let s = Status::from(Error::invalid("num_images", "must be 1..=10, got 0"));
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert_eq!(s.message(), "num_images: must be 1..=10, got 0");
        let s = Status::from(Error::Stage {
            stage: Stage::PriorSample,
            status: Status::deadline_exceeded("late"),
        });
        assert_eq!(s.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(
            s.message(),
            "prior.sample: the deadline passed before the stage answered"
        );
        let s = Status::from(Error::Stage {
            stage: Stage::PriorSample,
            status: Status::internal("ort: /models/prior.onnx: node 17 failed on host-3"),
        });
        assert_eq!(s.code(), tonic::Code::Internal);
        assert_eq!(
            s.message(),
            "prior.sample: the stage failed",
            "no stage text"
        );
        let s = Status::from(Error::Stage {
            stage: Stage::PriorSample,
            status: Status::invalid_argument("prior_steps must be 2..=1000, got 1"),
        });
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            s.message(),
            "prior.sample: prior_steps must be 2..=1000, got 1",
            "a stage's INVALID_ARGUMENT names the field and is passed on"
        );
        assert_eq!(
            Status::from(Error::Internal("x".into())).code(),
            tonic::Code::Internal
        );
        assert_eq!(
            Status::from(Error::Unavailable("loading".into())).code(),
            tonic::Code::Unavailable
        );
    }

    /// Each refusal has its code and its message; a retry hint is whole seconds, rounded up.
    #[test]
    fn refusals() {
        use std::time::Duration;
        use tonic::Code;
        let cases = [
            (
                Refusal::Unauthenticated("no key".into()),
                Code::Unauthenticated,
            ),
            (
                Refusal::PermissionDenied("no".into()),
                Code::PermissionDenied,
            ),
            (
                Refusal::DeadlineExceeded("late".into()),
                Code::DeadlineExceeded,
            ),
            (Refusal::Unavailable("draining".into()), Code::Unavailable),
            (
                Refusal::InvalidArgument("cost: 800 over the limit of 500".into()),
                Code::InvalidArgument,
            ),
            (
                Refusal::ResourceExhausted {
                    message: "busy".into(),
                    retry_after: None,
                },
                Code::ResourceExhausted,
            ),
        ];
        for (refusal, code) in cases {
            let message = refusal.to_string();
            let s = Status::from(Error::from(refusal));
            assert_eq!((s.code(), s.message()), (code, message.as_str()));
            assert!(s.metadata().get(RETRY_AFTER).is_none());
        }
        let s = Status::from(Error::Refused(Refusal::ResourceExhausted {
            message: "3 requests in flight, the limit is 3".into(),
            retry_after: Some(Duration::from_millis(1500)),
        }));
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.message(), "3 requests in flight, the limit is 3");
        assert_eq!(s.metadata().get(RETRY_AFTER).unwrap(), "2");
    }
}
