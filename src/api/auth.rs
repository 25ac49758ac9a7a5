//! The `Caller` extractor: the app behind the request's bearer token.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::HeaderMap;

use super::error::ApiError;
use super::ApiState;
use crate::apps::App;
use crate::error::Error;

/// The authenticated app making the request.
pub struct Caller(pub App);

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers).ok_or(ApiError::from(Error::Unauthorized))?;
        Ok(Self(state.node.authenticate(token)?))
    }
}

/// The bearer token of a request, if it carries one.
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}
