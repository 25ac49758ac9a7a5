//! Handlers for apps and their tokens: register, list, remove, rotate, change rights, and rotate
//! the admin token.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Caller;
use super::body::JsonBody;
use super::error::ApiError;
use super::ApiState;
use crate::apps::Right;
use crate::node::{NewApp, RotatedAdmin};

type ApiResult<T> = Result<T, ApiError>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddApp {
    name: String,
    #[serde(default)]
    rights: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetRights {
    rights: Vec<String>,
}

/// Parses every right; the error names the first bad one.
fn rights(given: &[String]) -> ApiResult<Vec<Right>> {
    given
        .iter()
        .map(|r| Right::parse(r))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::from(crate::Error::from(e)))
}

pub async fn add(
    State(s): State<ApiState>,
    Caller(c): Caller,
    JsonBody(req): JsonBody<AddApp>,
) -> ApiResult<impl IntoResponse> {
    let new = s.node.add_app(&c, &req.name, rights(&req.rights)?).await?;
    Ok((StatusCode::CREATED, Json(new)))
}

pub async fn list(State(s): State<ApiState>, Caller(c): Caller) -> ApiResult<Json<Value>> {
    Ok(Json(json!({ "apps": s.node.apps(&c)? })))
}

pub async fn remove(
    State(s): State<ApiState>,
    Caller(c): Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let app = s.node.remove_app(&c, &name).await?;
    Ok(Json(json!({ "removed": app.name })))
}

pub async fn rotate(
    State(s): State<ApiState>,
    Caller(c): Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<NewApp>> {
    Ok(Json(s.node.rotate_app(&c, &name).await?))
}

pub async fn set_rights(
    State(s): State<ApiState>,
    Caller(c): Caller,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<SetRights>,
) -> ApiResult<Json<crate::apps::App>> {
    let rights = rights(&req.rights)?;
    Ok(Json(s.node.set_app_rights(&c, &name, rights).await?))
}

pub async fn rotate_admin(
    State(s): State<ApiState>,
    Caller(c): Caller,
) -> ApiResult<Json<RotatedAdmin>> {
    Ok(Json(s.node.rotate_admin_token(&c).await?))
}
