//! `ApiError`: maps domain errors to HTTP statuses and the JSON error body
//! `{"error": {"code": "...", "message": "..."}}`. Internal details are logged, not sent.

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::Error;

/// An error as the API answers it.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
}

impl ApiError {
    /// A 400 with `message`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: message.into(),
        }
    }

    /// A 404 with `message`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: message.into(),
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        use Error::*;
        let (status, code) = match &e {
            Name(_) | Record(_) | Query(_) | Dataset(_) | App(_) | Invalid(_) => {
                (StatusCode::BAD_REQUEST, "bad_request")
            }
            Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Unavailable(_) | Network(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Store(_) | Audit(_) | Doc(_) | Identity(_) | Config(_) | Internal(_) => {
                tracing::error!(error = %e, "request failed");
                return Self {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    code: "internal",
                    message: "internal error; the node's log has the details".into(),
                };
            }
        };
        Self {
            status,
            code,
            message: e.to_string(),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let status = r.status();
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            _ => "bad_request",
        };
        // Unprocessable JSON (wrong shape) is a client error like any other malformed body.
        let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
            StatusCode::BAD_REQUEST
        } else {
            status
        };
        Self {
            status,
            code,
            message: r.body_text(),
        }
    }
}

/// The message of a 403, left on the response for the middleware that records refusals in the
/// audit log.
#[derive(Debug, Clone)]
pub(crate) struct Refused(pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let refused = (self.status == StatusCode::FORBIDDEN).then(|| Refused(self.message.clone()));
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        let mut res = (self.status, axum::Json(body)).into_response();
        if let Some(r) = refused {
            res.extensions_mut().insert(r);
        }
        res
    }
}
