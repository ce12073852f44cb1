//! [`ApiError`], the HTTP API's error answer in OpenAI's shape
//! (`{"error": {"message", "type", "param", "code"}}`), and the one-to-one mapping of the
//! gateway's gRPC codes to HTTP statuses.
//!
//! | gRPC code | HTTP | `type` |
//! |---|---|---|
//! | INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE | 400 | `invalid_request_error` |
//! | UNAUTHENTICATED | 401 | `authentication_error` |
//! | PERMISSION_DENIED | 403 | `permission_error` |
//! | NOT_FOUND | 404 | `not_found_error` |
//! | ALREADY_EXISTS, ABORTED | 409 | `invalid_request_error` |
//! | RESOURCE_EXHAUSTED | 429 (with `retry-after` when the refusal says) | `rate_limit_error` |
//! | CANCELLED | 499 | `server_error` |
//! | UNIMPLEMENTED | 501 | `server_error` |
//! | UNAVAILABLE | 503 | `server_error` |
//! | DEADLINE_EXCEEDED | 504 | `server_error` |
//! | INTERNAL, UNKNOWN, DATA_LOSS | 500 | `server_error` |
//!
//! `code` is the gRPC code's name in snake case (`invalid_argument`, `resource_exhausted`), so a
//! client sees the same outcome on either transport. `param` is the request field in the HTTP
//! API's names (`n` for the proto's `num_images`, `decoder_steps` for `decoder.decoder_steps`).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tonic::Code;

use crate::error::Error;
use crate::layer::Refusal;
use crate::stats::code_name;

/// An error answer of the HTTP API.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, starting with the parameter when there is one (`"n: must be ..."`).
    pub message: String,
    /// The request field at fault, in the HTTP API's names.
    pub param: Option<String>,
    /// The gRPC code's name, or a code of the HTTP layer (`payload_too_large`, ...).
    pub code: Option<String>,
    /// Whole seconds to wait before trying again (429 only).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// A 400 naming `param`: "`param`: `message`".
    pub fn invalid(param: &str, message: impl std::fmt::Display) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: format!("{param}: {message}"),
            param: Some(param.to_string()),
            code: Some(code_name(Code::InvalidArgument)),
            retry_after: None,
        }
    }

    /// Any status with a message and no parameter.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            param: None,
            code: Some(code.to_string()),
            retry_after: None,
        }
    }

    /// 413: the part `param` (or, with `None`, the whole body) is larger than `limit` bytes.
    pub fn too_large(param: Option<&str>, limit: usize) -> Self {
        let what = param.unwrap_or("the request body");
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("{what}: is larger than the limit of {limit} bytes"),
            param: param.map(str::to_string),
            code: Some("payload_too_large".into()),
            retry_after: None,
        }
    }

    /// 404 for a path or a file that is not (or no longer) there.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// OpenAI's `type` for this status.
    pub fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            400 | 409 | 413 | 415 | 422 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            _ => "server_error",
        }
    }

    /// The JSON body: `{"error": {...}}`.
    pub fn body(&self) -> Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind(),
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

/// The HTTP status of a gRPC code (see the table above).
pub fn status_of(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        // nginx's "client closed request": only logged, the client is gone.
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Internal | Code::Unknown | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The HTTP API's name of a request field the core named (`num_images` → `n`,
/// `decoder.decoder_steps` → `decoder_steps`).
pub fn param_of(field: &str) -> &str {
    match field {
        "num_images" => "n",
        other => other.strip_prefix("decoder.").unwrap_or(other),
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let code = error.code();
        let status = status_of(code);
        match error {
            Error::Invalid { field, message } => {
                let param = param_of(&field);
                Self::invalid(param, message)
            }
            error => {
                let retry_after = match &error {
                    Error::Refused(Refusal::ResourceExhausted {
                        retry_after: Some(after),
                        ..
                    }) => Some(after.as_secs() + u64::from(after.subsec_nanos() > 0)),
                    _ => None,
                };
                if let Error::Internal(message) = &error {
                    tracing::error!(message, "request failed");
                }
                Self {
                    status,
                    message: error.to_string(),
                    param: None,
                    code: Some(code_name(code)),
                    retry_after,
                }
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::stage::Stage;

    /// Every gRPC code has one HTTP status, and the ones the contract names are OpenAI's.
    #[test]
    fn statuses() {
        let cases = [
            (Code::InvalidArgument, 400),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::NotFound, 404),
            (Code::ResourceExhausted, 429),
            (Code::Internal, 500),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
        ];
        for (code, status) in cases {
            assert_eq!(status_of(code).as_u16(), status, "{code:?}");
        }
    }

    /// A field error names the HTTP parameter in `param` and the message; a refusal with a
    /// retry hint becomes 429 with `retry-after` rounded up.
    #[test]
    fn from_core_errors() {
        let e = ApiError::from(Error::invalid("num_images", "must be 1..=10, got 40"));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.param.as_deref(), Some("n"));
        assert_eq!(e.message, "n: must be 1..=10, got 40");
        assert_eq!(e.body()["error"]["type"], "invalid_request_error");
        assert_eq!(e.body()["error"]["code"], "invalid_argument");

        let e = ApiError::from(Error::invalid("decoder.decoder_steps", "must be 2..=1000"));
        assert_eq!(e.param.as_deref(), Some("decoder_steps"));

        let e = ApiError::from(Error::Refused(Refusal::ResourceExhausted {
            message: "busy".into(),
            retry_after: Some(Duration::from_millis(1500)),
        }));
        assert_eq!((e.status.as_u16(), e.retry_after), (429, Some(2)));
        assert_eq!(e.body()["error"]["type"], "rate_limit_error");
        let response = e.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");

        let e = ApiError::from(Error::Refused(Refusal::Unauthenticated("no key".into())));
        assert_eq!(e.status.as_u16(), 401);
        assert_eq!(e.body()["error"]["type"], "authentication_error");

        let e = ApiError::from(Error::Stage {
            stage: Stage::Decode,
            status: tonic::Status::unavailable("down"),
        });
        assert_eq!(e.status.as_u16(), 503);
        assert_eq!(e.message, "decoder.decode: down");
    }
}
