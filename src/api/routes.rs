//! Handlers for the node, datasets, metrics and the contract.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use super::auth::Caller;
use super::body::JsonBody;
use super::error::ApiError;
use super::ApiState;
use crate::dataset::Spec;
use crate::naming::DatasetId;
use crate::node::Node;

/// The OpenAPI document, kept beside the code it describes.
pub const OPENAPI: &str = include_str!("openapi.json");

type ApiResult<T> = Result<T, ApiError>;

/// The node's identity and state; how many datasets load after a start is the admin's to see
/// (it counts private ones), an app learns of the loading from its own datasets' answers.
pub async fn node_info(State(s): State<ApiState>, Caller(c): Caller) -> Json<crate::node::Info> {
    let mut info = s.node.info();
    if !c.admin {
        info.loading = None;
    }
    Json(info)
}

pub async fn list_datasets(State(s): State<ApiState>, Caller(c): Caller) -> ApiResult<Json<Value>> {
    let datasets = off_async(&s, move |node| node.datasets(&c)).await?;
    Ok(Json(json!({ "datasets": datasets })))
}

/// Runs `f` on the node off the async threads (a dataset's byte count reads the store).
async fn off_async<T: Send + 'static>(
    s: &ApiState,
    f: impl FnOnce(Node) -> T + Send + 'static,
) -> Result<T, ApiError> {
    let node = s.node.clone();
    tokio::task::spawn_blocking(move || f(node))
        .await
        .map_err(|e| crate::Error::Internal(format!("reading datasets: {e}")).into())
}

pub async fn create_dataset(
    State(s): State<ApiState>,
    Caller(c): Caller,
    JsonBody(spec): JsonBody<Spec>,
) -> ApiResult<impl IntoResponse> {
    let meta = s.node.create_dataset(&c, spec).await?;
    Ok((StatusCode::CREATED, Json(meta)))
}

pub async fn get_dataset(
    State(s): State<ApiState>,
    Caller(c): Caller,
    Path((owner, name)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let id = DatasetId::new(&owner, &name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let found = off_async(&s, {
        let id = id.clone();
        move |node| node.dataset_info(&c, &id)
    })
    .await?;
    found
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("dataset {id} not found")))
}

/// `/metrics`, for the admin token only: its series name every dataset held (private ones too)
/// and count grants, which `/v1/datasets` and `/v1/grants` show no app. One scrape at a time
/// (each brings the gauges up to date), its reading off the async threads.
pub async fn metrics(State(s): State<ApiState>, Caller(c): Caller) -> ApiResult<impl IntoResponse> {
    if !c.may_scrape() {
        let why =
            "metrics name every dataset held: they need the admin token or an app with metrics:*";
        return Err(crate::Error::Forbidden(why.into()).into());
    }
    let _one = s.node.metrics().scrape.lock().await;
    if let Some(Some(mesh)) = s.mesh.get() {
        mesh.observe().await;
    }
    let node = s.node.clone();
    let text = tokio::task::spawn_blocking(move || node.metrics_text())
        .await
        .map_err(|e| crate::Error::Internal(e.to_string()))?;
    let ct = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    Ok(([(header::CONTENT_TYPE, ct)], text))
}

pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; GET /v1/openapi.json lists them")
}

/// A known path asked with a method it does not serve.
pub async fn method_not_allowed() -> ApiError {
    ApiError {
        status: axum::http::StatusCode::METHOD_NOT_ALLOWED,
        code: "method_not_allowed",
        message: "this path does not serve that method; GET /v1/openapi.json lists them".into(),
        unavailable: None,
    }
}
