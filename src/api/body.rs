//! `JsonBody`: axum's JSON extractor with rejections in the API's error format.

use axum::extract::FromRequest;

use super::error::ApiError;

/// A JSON request body; malformed or oversized bodies become [`ApiError`]s.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct JsonBody<T>(pub T);
