//! Handlers for grants: list, issue, revoke (the admin of the dataset's owner).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use super::auth::Caller;
use super::body::JsonBody;
use super::error::ApiError;
use super::ApiState;
use crate::node::GrantRequest;

pub async fn list(State(s): State<ApiState>, Caller(c): Caller) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "grants": s.node.grants(&c)? })))
}

pub async fn grant(
    State(s): State<ApiState>,
    Caller(c): Caller,
    JsonBody(req): JsonBody<GrantRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let g = s.node.grant(&c, req).await?;
    Ok((StatusCode::CREATED, Json(g)))
}

pub async fn revoke(
    State(s): State<ApiState>,
    Caller(c): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tomb = s.node.revoke(&c, &id).await?;
    Ok(Json(json!({ "revoked": id, "revocation": tomb })))
}
