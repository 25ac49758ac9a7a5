//! `ApiError`: maps domain errors to HTTP statuses and the JSON error body
//! `{"error": {"code": "...", "message": "..."}}` (a 503 of the node also names its `reason`, and
//! carries `Retry-After` when a retry soon may succeed). Internal details are logged, not sent.

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
    /// Why the node is unavailable, and in how many seconds to retry (a 503 of the node).
    pub unavailable: Option<(&'static str, Option<u64>)>,
}

impl ApiError {
    /// A 400 with `message`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: message.into(),
            unavailable: None,
        }
    }

    /// A 404 with `message`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: message.into(),
            unavailable: None,
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        use Error::*;
        let (status, code) = match &e {
            // The request is well formed; the node's own admin app cannot take it.
            App(crate::apps::Error::AdminApp { .. }) => (StatusCode::CONFLICT, "conflict"),
            // A batch whose change members would refuse: the client writes fewer at once.
            Doc(crate::view::doc::Error::TooManyOps(_)) => (StatusCode::BAD_REQUEST, "bad_request"),
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
                    unavailable: None,
                };
            }
        };
        let unavailable = match &e {
            Unavailable(u) => Some((u.reason(), u.retry_after())),
            _ => None,
        };
        Self {
            status,
            code,
            message: e.to_string(),
            unavailable,
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
            unavailable: None,
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
        let mut body = json!({ "error": { "code": self.code, "message": self.message } });
        if let Some((reason, _)) = self.unavailable {
            body["error"]["reason"] = reason.into();
        }
        let mut res = (self.status, axum::Json(body)).into_response();
        if let Some((_, Some(secs))) = self.unavailable {
            res.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        if let Some(r) = refused {
            res.extensions_mut().insert(r);
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Unavailable;
    use crate::naming::DatasetId;

    async fn body(res: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 16).await;
        serde_json::from_slice(&bytes.expect("body")).expect("json")
    }

    #[tokio::test]
    async fn an_unavailable_node_says_why_and_when_to_retry() {
        let ds = DatasetId::parse("hospital/flu").expect("valid");
        let waiting = Unavailable::KeyNotArrived {
            dataset: ds.clone(),
            epoch: 3,
        };
        let res = ApiError::from(Error::from(waiting)).into_response();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[axum::http::header::RETRY_AFTER], "1");
        let b = body(res).await;
        assert_eq!(b["error"]["reason"], "key_not_arrived");
        assert!(b["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("epoch 3")));

        let res = ApiError::from(Error::from(Unavailable::StorageFailed(ds))).into_response();
        assert!(res.headers().get(axum::http::header::RETRY_AFTER).is_none());
        let b = body(res).await;
        assert_eq!(b["error"]["reason"], "storage_failed");
        assert!(b["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("restart the node")));

        let res = ApiError::from(Error::Network("the mesh is not running".into()));
        let b = body(res.into_response()).await;
        assert!(b["error"].get("reason").is_none(), "{b}");
    }
}
