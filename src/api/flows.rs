//! Handlers for computation flows: list, declare, remove (admin only).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use super::auth::Caller;
use super::body::JsonBody;
use super::error::ApiError;
use super::ApiState;
use crate::view::flow::FlowSpec;

pub async fn list(State(s): State<ApiState>, Caller(c): Caller) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "flows": s.node.flows(&c)? })))
}

pub async fn add(
    State(s): State<ApiState>,
    Caller(c): Caller,
    JsonBody(spec): JsonBody<FlowSpec>,
) -> Result<impl IntoResponse, ApiError> {
    let spec = s.node.add_flow(&c, spec).await?;
    Ok((StatusCode::CREATED, Json(spec)))
}

pub async fn remove(
    State(s): State<ApiState>,
    Caller(c): Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    s.node.remove_flow(&c, &name).await?;
    Ok(Json(json!({ "removed": name })))
}
