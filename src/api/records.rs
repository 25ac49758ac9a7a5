//! Handlers for records: publish, query, get, delete, and the live event stream.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Json;
use futures::{Stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use super::auth::Caller;
use super::body::JsonBody;
use super::error::ApiError;
use super::ApiState;
use crate::naming::DatasetId;
use crate::node::{Batch, Event};
use crate::view::query::{Order, Predicate, Query};

type ApiResult<T> = Result<T, ApiError>;

fn dataset(owner: &str, name: &str) -> ApiResult<DatasetId> {
    DatasetId::new(owner, name).map_err(|e| ApiError::bad_request(e.to_string()))
}

pub async fn publish(
    State(s): State<ApiState>,
    Caller(c): Caller,
    Path((owner, name)): Path<(String, String)>,
    JsonBody(batch): JsonBody<Batch>,
) -> ApiResult<Json<Value>> {
    let ids = s.node.publish(&c, &dataset(&owner, &name)?, batch).await?;
    Ok(Json(json!({ "ids": ids })))
}

fn number(key: &str, v: &str) -> ApiResult<u64> {
    v.parse().map_err(|_| {
        ApiError::bad_request(format!("{key} must be a non-negative integer, got {v:?}"))
    })
}

/// Parses `name_prefix`, `since`, `until`, `where` (repeatable), `limit`, `order`.
pub fn parse_query(raw: Option<&str>) -> ApiResult<Query> {
    let mut q = Query::default();
    for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "name_prefix" => q.name_prefix = Some(v.into_owned()),
            "since" => q.since = Some(number("since", &v)?),
            "until" => q.until = Some(number("until", &v)?),
            "limit" => q.limit = number("limit", &v)?.try_into().unwrap_or(usize::MAX),
            "order" => q.order = Order::parse(&v).map_err(|e| ApiError::bad_request(e.to_string()))?,
            "where" => q
                .predicates
                .push(Predicate::parse(&v).map_err(|e| ApiError::bad_request(e.to_string()))?),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?}; use name_prefix, since, until, where, limit, order"
                )))
            }
        }
    }
    Ok(q)
}

pub async fn query(
    State(s): State<ApiState>,
    Caller(c): Caller,
    Path((owner, name)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let q = parse_query(raw.as_deref())?;
    let records = s.node.query(&c, &dataset(&owner, &name)?, &q)?;
    Ok(Json(json!({ "count": records.len(), "records": records })))
}

pub async fn get_one(
    State(s): State<ApiState>,
    Caller(c): Caller,
    Path((owner, name, id)): Path<(String, String, String)>,
) -> ApiResult<Json<crate::record::Record>> {
    Ok(Json(s.node.get(&c, &dataset(&owner, &name)?, &id)?))
}

pub async fn delete_one(
    State(s): State<ApiState>,
    Caller(c): Caller,
    Path((owner, name, id)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    let batch = Batch {
        records: vec![],
        delete: vec![id],
    };
    let ids = s.node.publish(&c, &dataset(&owner, &name)?, batch).await?;
    Ok(Json(json!({ "ids": ids, "deleted": true })))
}

pub async fn events(
    State(s): State<ApiState>,
    Caller(c): Caller,
    Path((owner, name)): Path<(String, String)>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let sub = s.node.subscribe(&c, &dataset(&owner, &name)?)?;
    let mut closing = s.closing.clone();
    let stop = async move {
        let _ = closing.wait_for(|c| *c).await;
    };
    // Ends when the node shuts down, or at once when the app may no longer read.
    let stream = futures::stream::unfold(sub, |mut sub| async move {
        match sub.recv().await {
            Ok(ev) => Some((Ok(ev), sub)),
            Err(RecvError::Lagged(n)) => Some((Err(n), sub)),
            Err(RecvError::Closed) => None,
        }
    })
    .map(to_sse)
    .take_until(stop);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// An event, or how many were missed.
fn to_sse(item: Result<Arc<Event>, u64>) -> Result<SseEvent, Infallible> {
    Ok(match item {
        Ok(ev) => {
            let kind = match ev.as_ref() {
                Event::Upsert { .. } => "upsert",
                Event::Delete { .. } => "delete",
            };
            SseEvent::default()
                .event(kind)
                .json_data(ev.as_ref())
                .unwrap_or_else(|_| SseEvent::default().event("error"))
        }
        Err(missed) => SseEvent::default()
            .event("lagged")
            .data(json!({ "missed": missed }).to_string()),
    })
}
