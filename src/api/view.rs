//! Handlers for the shared view: `POST /v1/query` (rows or aggregates over several datasets,
//! federated to owners on request), `POST /v1/sql` (the same, asked in SQL) and `POST /v1/search` (a pushed-down search whose answers
//! stream as they arrive).

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Caller;
use super::body::JsonBody;
use super::error::ApiError;
use super::ApiState;
use crate::apps::App;
use crate::error::{Error, Unavailable};
use crate::mesh::query::SearchSpec;
use crate::node::{aggregate_answer, AggregateAnswer, Source};
use crate::view::plan::{Plan, Shape, ViewQuery, MAX_JSON_ROWS};
use crate::view::{aggregate, sql};

const NDJSON: &str = "application/x-ndjson";
/// Rows per chunk of a streamed answer.
const CHUNK_ROWS: usize = 1_000;

fn wants_ndjson(h: &HeaderMap) -> bool {
    h.get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(NDJSON))
}

/// NDJSON lines, sent in chunks as they are serialized.
fn ndjson(lines: impl Iterator<Item = Value> + Send + 'static) -> Response {
    let chunks = futures::stream::iter(ChunkIter(lines)).map(Ok::<_, Infallible>);
    ([(header::CONTENT_TYPE, NDJSON)], Body::from_stream(chunks)).into_response()
}

struct ChunkIter<I>(I);

impl<I: Iterator<Item = Value>> Iterator for ChunkIter<I> {
    type Item = Bytes;
    fn next(&mut self) -> Option<Bytes> {
        let mut buf = Vec::new();
        for v in self.0.by_ref().take(CHUNK_ROWS) {
            // Serializing a JSON value into memory cannot fail.
            let _ = serde_json::to_writer(&mut buf, &v);
            buf.push(b'\n');
        }
        (!buf.is_empty()).then(|| Bytes::from(buf))
    }
}

pub async fn query(
    State(s): State<ApiState>,
    Caller(c): Caller,
    headers: HeaderMap,
    JsonBody(q): JsonBody<ViewQuery>,
) -> Result<Response, ApiError> {
    let plan = q.plan().map_err(|e| ApiError::bad_request(e.to_string()))?;
    let ndjson_out = wants_ndjson(&headers);
    Ok(match answer(&s, &c, &plan, ndjson_out).await? {
        Answer::Rows(rows) if ndjson_out => ndjson(rows.into_iter()),
        Answer::Rows(rows) => Json(json!({ "count": rows.len(), "rows": rows })).into_response(),
        Answer::Groups(groups) => Json(groups).into_response(),
    })
}

/// `POST /v1/sql`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlRequest {
    /// One `SELECT`.
    sql: String,
    /// Ask each dataset's owner to compute the aggregate.
    #[serde(default)]
    federated: bool,
    /// Wait at most this long for owners (federated), ms.
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// Statements translated at once: each takes a thread of its own (see [`sql::translate`]), so a
/// flood of statements must not take every thread of the blocking pool.
static TRANSLATIONS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);
/// How long a statement waits for its turn before the caller is told to retry (503 `busy`).
const TRANSLATION_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// `POST /v1/sql`: one SELECT translated into a view query (off the async threads: see
/// [`sql::translate`]), answered as `/v1/query` answers it, with the statement's column names.
pub async fn sql(
    State(s): State<ApiState>,
    Caller(c): Caller,
    headers: HeaderMap,
    JsonBody(req): JsonBody<SqlRequest>,
) -> Result<Response, ApiError> {
    let _turn = tokio::time::timeout(TRANSLATION_WAIT, TRANSLATIONS.acquire())
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or(Error::Unavailable(Unavailable::Busy("SQL translation")))?;
    let statement = req.sql;
    let mut t = tokio::task::spawn_blocking(move || sql::translate(&statement))
        .await
        .map_err(|e| crate::error::Error::Internal(format!("sql translation: {e}")))?
        .map_err(|e| ApiError::bad_request(format!("sql: {e}")))?;
    t.query.federated = req.federated;
    t.query.timeout_ms = req.timeout_ms;
    let plan = t
        .query
        .plan()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let ndjson_out = wants_ndjson(&headers);
    let columns = t.column_names();
    Ok(match answer(&s, &c, &plan, ndjson_out).await? {
        Answer::Rows(rows) if ndjson_out => ndjson(rows.into_iter().map(move |r| t.row(r))),
        Answer::Rows(rows) => {
            let rows: Vec<Value> = rows.into_iter().map(|r| t.row(r)).collect();
            Json(json!({ "columns": columns, "count": rows.len(), "rows": rows })).into_response()
        }
        Answer::Groups(a) => {
            let rows = t.groups(a.groups);
            let body = json!({ "columns": columns, "count": rows.len(), "rows": rows, "sources": a.sources });
            Json(body).into_response()
        }
    })
}

/// What a plan answers: rows (projected), or groups with where they came from.
enum Answer {
    Rows(Vec<Value>),
    Groups(AggregateAnswer),
}

async fn answer(s: &ApiState, c: &App, plan: &Plan, ndjson_out: bool) -> Result<Answer, ApiError> {
    match &plan.shape {
        Shape::Aggregate { .. } if plan.federated => {
            let mesh = super::mesh::mesh(s)?;
            Ok(Answer::Groups(mesh.federated(c, plan).await?))
        }
        Shape::Aggregate { .. } => local_aggregate(s, c, plan).await.map(Answer::Groups),
        Shape::Rows { limit, .. } => {
            if !ndjson_out && *limit > MAX_JSON_ROWS {
                return Err(ApiError::bad_request(format!(
                    "limit: more than {MAX_JSON_ROWS} rows stream as NDJSON; send Accept: {NDJSON}"
                )));
            }
            let (node, app, plan2) = (s.node.clone(), c.clone(), plan.clone());
            let rows = tokio::task::spawn_blocking(move || node.view_rows(&app, &plan2))
                .await
                .map_err(|e| crate::Error::Internal(e.to_string()))??;
            Ok(Answer::Rows(rows))
        }
    }
}

async fn local_aggregate(s: &ApiState, c: &App, plan: &Plan) -> Result<AggregateAnswer, ApiError> {
    let Shape::Aggregate { aggregation, limit } = &plan.shape else {
        return Err(ApiError::bad_request("not an aggregate"));
    };
    let mut parts = Vec::new();
    let mut sources = Vec::new();
    for id in &plan.datasets {
        let (node, app, id2, filter, agg) = (
            s.node.clone(),
            c.clone(),
            id.clone(),
            plan.filter.clone(),
            aggregation.clone(),
        );
        let groups =
            tokio::task::spawn_blocking(move || node.aggregate_held(&app, &id2, &filter, &agg))
                .await
                .map_err(|e| crate::Error::Internal(e.to_string()))??;
        parts.push(groups);
        sources.push(Source {
            dataset: id.to_string(),
            owner: id.owner().to_owned(),
            status: "local".into(),
            reason: None,
        });
    }
    let merged = aggregate::merge_all(parts.iter());
    Ok(aggregate_answer(aggregation, &merged, sources, *limit))
}

pub async fn search(
    State(s): State<ApiState>,
    Caller(c): Caller,
    JsonBody(spec): JsonBody<SearchSpec>,
) -> Result<Response, ApiError> {
    let mesh = super::mesh::mesh(&s)?;
    let rx = mesh.search(&c, spec)?;
    let lines = tokio_stream::wrappers::ReceiverStream::new(rx).map(|ev| {
        let mut line = serde_json::to_vec(&ev).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, Infallible>(Bytes::from(line))
    });
    Ok(([(header::CONTENT_TYPE, NDJSON)], Body::from_stream(lines)).into_response())
}
