//! The audit log over HTTP (admin only): `GET /v1/audit` lists entries by time, organization,
//! action and dataset; `GET /v1/audit/verify` checks the chain; `GET /v1/audit/events` follows
//! new entries as server-sent events. And the middleware that records every 403 the API answers.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{RawQuery, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::Response;
use axum::Json;
use futures::{Stream, StreamExt};
use serde_json::json;
use tokio_stream::wrappers::{errors::BroadcastStreamRecvError, BroadcastStream};

use super::auth::{bearer, Caller};
use super::error::{ApiError, Refused};
use super::ApiState;
use crate::audit::{self, Action, Entry, Event, Filter, Outcome, Verification};
use crate::node::{AuditListing, Node};

type ApiResult<T> = Result<T, ApiError>;

fn number(key: &str, v: &str) -> ApiResult<u64> {
    v.parse().map_err(|_| {
        ApiError::bad_request(format!("{key} must be a non-negative integer, got {v:?}"))
    })
}

/// Parses `since`, `until`, `org`, `action`, `dataset`, `outcome`, `after`, `limit`.
fn parse_filter(raw: Option<&str>) -> ApiResult<Filter> {
    let mut f = Filter::default();
    for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "since" => f.since = Some(number("since", &v)?),
            "until" => f.until = Some(number("until", &v)?),
            "after" => f.after = Some(number("after", &v)?),
            "limit" => f.limit = Some(limit(&v)?),
            "org" => f.org = Some(v.into_owned()),
            "dataset" => f.dataset = Some(v.into_owned()),
            "action" => f.action = Some(action(&v)?),
            "outcome" => f.outcome = Some(outcome(&v)?),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?}; use since, until, org, action, dataset, \
                     outcome, after, limit"
                )))
            }
        }
    }
    Ok(f)
}

fn limit(v: &str) -> ApiResult<usize> {
    let n = number("limit", v)?;
    if n == 0 || n > audit::MAX_LIST as u64 {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {}",
            audit::MAX_LIST
        )));
    }
    Ok(n as usize)
}

fn action(v: &str) -> ApiResult<Action> {
    Action::parse(v).ok_or_else(|| {
        let all: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
        ApiError::bad_request(format!(
            "action {v:?} is unknown; one of {}",
            all.join(", ")
        ))
    })
}

fn outcome(v: &str) -> ApiResult<Outcome> {
    match v {
        "ok" => Ok(Outcome::Ok),
        "refused" => Ok(Outcome::Refused),
        _ => Err(ApiError::bad_request(format!(
            "outcome {v:?} is unknown; ok or refused"
        ))),
    }
}

pub async fn list(
    State(s): State<ApiState>,
    Caller(c): Caller,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<AuditListing>> {
    let filter = parse_filter(raw.as_deref())?;
    Ok(Json(s.node.audit_entries(&c, filter).await?))
}

pub async fn verify(State(s): State<ApiState>, Caller(c): Caller) -> ApiResult<Json<Verification>> {
    Ok(Json(s.node.audit_verify(&c).await?))
}

/// New entries as they are appended; with `after`, first the kept entries after that seq.
pub async fn events(
    State(s): State<ApiState>,
    Caller(c): Caller,
    RawQuery(raw): RawQuery,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let filter = parse_filter(raw.as_deref())?;
    // Subscribed before the backlog is read: nothing appended in between is lost.
    let rx = s.node.audit_follow(&c)?;
    let backlog = match filter.after {
        Some(_) => {
            let f = Filter {
                limit: Some(audit::MAX_LIST),
                ..filter.clone()
            };
            s.node.audit_entries(&c, f).await?.entries
        }
        None => Vec::new(),
    };
    let seen = backlog.last().map(|e| e.seq).or(filter.after).unwrap_or(0);
    let live = BroadcastStream::new(rx).filter(move |item| {
        let keep = match item {
            Ok(e) => e.seq > seen && filter.matches(e),
            Err(_) => true,
        };
        std::future::ready(keep)
    });
    let mut closing = s.closing.clone();
    let stop = async move {
        let _ = closing.wait_for(|c| *c).await;
    };
    let stream = futures::stream::iter(backlog.into_iter().map(|e| Ok(Arc::new(e))))
        .chain(live)
        .map(to_sse)
        .take_until(stop);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn to_sse(item: Result<Arc<Entry>, BroadcastStreamRecvError>) -> Result<SseEvent, Infallible> {
    Ok(match item {
        Ok(e) => SseEvent::default()
            .event("entry")
            .json_data(e.as_ref())
            .unwrap_or_else(|_| SseEvent::default().event("error")),
        Err(BroadcastStreamRecvError::Lagged(n)) => SseEvent::default()
            .event("lagged")
            .data(json!({ "missed": n }).to_string()),
    })
}

/// Records every 403 the API answers: who (the token's app), what (from the method and path),
/// which dataset (from the path), and the refusal's message.
pub(super) async fn record_refusals(
    State(node): State<Node>,
    req: Request,
    next: Next,
) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let token = bearer(req.headers()).map(str::to_owned);
    let res = next.run(req).await;
    if res.status() == StatusCode::FORBIDDEN {
        let reason = res.extensions().get::<Refused>().map(|r| r.0.clone());
        let actor = token
            .and_then(|t| node.authenticate(&t).ok())
            .map_or_else(|| "unknown".to_owned(), |app| node.actor(&app));
        node.audit(refusal(actor, &method, &path, reason.unwrap_or_default()));
    }
    res
}

/// The audit event of a refused API request.
fn refusal(actor: String, method: &Method, path: &str, reason: String) -> Event {
    let (action, dataset) = classify(method, path);
    let ev = Event::refused(actor, action, reason).detail(format!("{method} {path}"));
    match dataset {
        Some(d) => ev.dataset(d),
        None => ev,
    }
}

/// What an API request asks for, and the dataset its path names.
fn classify(method: &Method, path: &str) -> (Action, Option<String>) {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let post = method == Method::POST;
    let delete = method == Method::DELETE;
    match parts.as_slice() {
        ["v1", "datasets", owner, name, rest @ ..] => {
            let writes = (post && rest == ["records"]) || (delete && rest.len() == 2);
            let action = if writes { Action::Write } else { Action::Read };
            (action, Some(format!("{owner}/{name}")))
        }
        ["v1", "datasets"] if post => (Action::DatasetCreate, None),
        ["v1", "apps"] if post => (Action::AppAdd, None),
        ["v1", "grants"] if post => (Action::Grant, None),
        ["v1", "grants", _] if delete => (Action::Revoke, None),
        ["v1", "flows"] if post => (Action::FlowAdd, None),
        ["v1", "flows", _] if delete => (Action::FlowRemove, None),
        ["v1", "query"] => (Action::Query, None),
        ["v1", "search"] => (Action::Search, None),
        ["v1", "invites"] => (Action::Invite, None),
        ["v1", "join"] => (Action::Join, None),
        ["v1", "members", _] if delete => (Action::MemberRemove, None),
        ["v1", "members", _, "role"] if post => (Action::RoleChange, None),
        ["v1", "apps", _] if delete => (Action::AppRemove, None),
        ["v1", "apps", _, "rotate"] if post => (Action::AppRotate, None),
        ["v1", "apps", _, "rights"] => (Action::AppRights, None),
        ["v1", "admin", "rotate-token"] if post => (Action::AdminRotateToken, None),
        _ => (Action::Request, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_requests_are_named_by_what_they_ask() {
        let cases = [
            (
                "POST",
                "/v1/datasets/hospital/flu/records",
                Action::Write,
                Some("hospital/flu"),
            ),
            (
                "DELETE",
                "/v1/datasets/hospital/flu/records/r1",
                Action::Write,
                Some("hospital/flu"),
            ),
            (
                "GET",
                "/v1/datasets/hospital/flu/records/r1",
                Action::Read,
                Some("hospital/flu"),
            ),
            (
                "GET",
                "/v1/datasets/hospital/flu/events",
                Action::Read,
                Some("hospital/flu"),
            ),
            ("POST", "/v1/datasets", Action::DatasetCreate, None),
            ("POST", "/v1/grants", Action::Grant, None),
            ("DELETE", "/v1/grants/01J", Action::Revoke, None),
            ("POST", "/v1/apps", Action::AppAdd, None),
            ("GET", "/v1/apps", Action::Request, None),
            ("POST", "/v1/invites", Action::Invite, None),
            ("GET", "/v1/audit", Action::Request, None),
        ];
        for (m, path, action, ds) in cases {
            let m = Method::from_bytes(m.as_bytes()).expect("method");
            let got = classify(&m, path);
            assert_eq!(got, (action, ds.map(str::to_owned)), "{m} {path}");
        }
    }

    #[test]
    fn filters_parse_and_bad_ones_are_400() {
        let f = parse_filter(Some(
            "since=5&until=9&org=pharmacy&action=member-admit&dataset=a%2Fb&outcome=refused&after=3&limit=7",
        ))
            .expect("parses");
        assert_eq!(
            f,
            Filter {
                since: Some(5),
                until: Some(9),
                org: Some("pharmacy".into()),
                action: Some(Action::MemberAdmit),
                dataset: Some("a/b".into()),
                outcome: Some(Outcome::Refused),
                after: Some(3),
                limit: Some(7),
            }
        );
        for bad in [
            "limit=0",
            "limit=10001",
            "action=grants",
            "outcome=no",
            "since=-1",
            "bogus=1",
        ] {
            let e = parse_filter(Some(bad)).expect_err(bad);
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
