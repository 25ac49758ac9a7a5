//! The HTTP API, driven in process through the axum router: every route's success and every error
//! status, with the JSON error body `{"error":{"code","message"}}` checked for a message that names
//! the problem.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::sync::watch;
use tower::ServiceExt;

use crate::common::{self, next_event, TestNode, EVENT_WAIT};
use fogmesh::config::Config;
use fogmesh::identity::Identity;
use fogmesh::Node;

const SEED: u8 = 42;
pub(crate) const FLU: &str = "/v1/datasets/hospital/flu";
pub(crate) const RECORDS: &str = "/v1/datasets/hospital/flu/records";

fn config(max_body_bytes: usize) -> Config {
    let (org, mesh) = ("hospital".into(), "test-mesh".into());
    Config {
        org,
        mesh,
        max_body_bytes,
        ..Config::default()
    }
}

/// A fresh node for org `hospital` with `max_body_bytes`.
async fn test_node(max_body_bytes: usize) -> TestNode {
    common::test_node_with(config(max_body_bytes), SEED).await
}

/// A node holding the dataset `hospital/flu`, its router, and the sender that keeps event
/// streams open (dropping it would end them).
pub(crate) struct Api {
    pub(crate) t: TestNode,
    pub(crate) router: Router,
    pub(crate) closing: watch::Sender<bool>,
}

impl Api {
    pub(crate) async fn new() -> Self {
        Self::with_limit(Config::default().max_body_bytes).await
    }

    async fn with_limit(max_body_bytes: usize) -> Self {
        let t = test_node(max_body_bytes).await;
        let (closing, rx) = watch::channel(false);
        let router = fogmesh::api::router(t.node.clone(), rx);
        let api = Self { t, router, closing };
        let spec = json!({"name": "flu"});
        let (s, b) = api.post("/v1/datasets", api.admin(), spec).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        api
    }

    pub(crate) fn admin(&self) -> &str {
        &self.t.admin_token
    }

    async fn send(&self, req: Request<Body>) -> (StatusCode, Value) {
        let resp = self.router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::String(text)),
        )
    }

    /// Sends `body` as JSON with the bearer `token`, if any.
    pub(crate) async fn call(
        &self,
        m: Method,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (StatusCode, Value) {
        self.send(request(m, path, token, Body::from(body.to_owned())))
            .await
    }

    pub(crate) async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), "").await
    }

    pub(crate) async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(token), &body.to_string())
            .await
    }

    pub(crate) async fn delete(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, Some(token), "").await
    }

    /// Registers an app as admin and returns its token.
    pub(crate) async fn app(&self, name: &str, rights: &[&str]) -> String {
        let body = json!({ "name": name, "rights": rights });
        let (s, b) = self.post("/v1/apps", self.admin(), body).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        b["token"].as_str().expect("token").to_owned()
    }

    /// Publishes `records` to hospital/flu as admin and returns the ids.
    pub(crate) async fn publish(&self, records: Value) -> Vec<String> {
        let (s, b) = self
            .post(RECORDS, self.admin(), json!({ "records": records }))
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        strings(&b["ids"])
    }

    /// Ids of the records a query on hospital/flu answers, checking `count` agrees.
    async fn query(&self, params: &[(&str, &str)]) -> Vec<String> {
        let (s, b) = self.get(&query_path(params), self.admin()).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let records = b["records"].as_array().expect("records");
        assert_eq!(b["count"], records.len(), "{b}");
        records
            .iter()
            .map(|r| r["id"].as_str().expect("id").to_owned())
            .collect()
    }
}

pub(crate) fn request(
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Body,
) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    b.body(body).expect("request")
}

fn query_path(params: &[(&str, &str)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        q.append_pair(k, v);
    }
    format!("{RECORDS}?{}", q.finish())
}

fn strings(v: &Value) -> Vec<String> {
    let all = v.as_array().expect("array");
    all.iter()
        .map(|i| i.as_str().expect("string").to_owned())
        .collect()
}

/// Asserts an error answer: its status, the code that goes with it, and a message containing
/// `needle`.
#[track_caller]
pub(crate) fn assert_error((s, b): (StatusCode, Value), status: u16, needle: &str) {
    let code = match status {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        409 => "conflict",
        413 => "payload_too_large",
        503 => "unavailable",
        other => panic!("no code for {other}"),
    };
    assert_eq!(s.as_u16(), status, "{b}");
    assert_eq!(b["error"]["code"], code, "{b}");
    let msg = b["error"]["message"].as_str().expect("message is a string");
    assert!(msg.contains(needle), "message {msg:?} lacks {needle:?}");
}

/// Four records with known ids, names, times and data.
fn sample() -> Value {
    json!([
        {"id": "a", "name": "d7/ward-3", "time": 1000, "data": {"cases": 3, "sym": "fever"}},
        {"id": "b", "name": "d7/ward-4", "time": 2000, "data": {"cases": 8, "sym": "cough"}},
        {"id": "c", "name": "d70/ward-1", "time": 3000, "data": {"cases": 5}},
        {"id": "d", "name": "d8", "time": 4000, "data": {"sym": "fever"}},
    ])
}

// ---- 200 ----

#[tokio::test]
async fn node_info_names_the_org_and_a_peer_id() {
    let api = Api::new().await;
    let (s, b) = api.get("/v1/node", api.admin()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["org"], "hospital");
    assert_eq!(b["mesh"], "test-mesh");
    assert!(!b["peer_id"].as_str().expect("peer_id").is_empty(), "{b}");
}

#[tokio::test]
async fn a_published_batch_is_queried_back_by_every_filter() {
    let api = Api::new().await;
    assert_eq!(api.publish(sample()).await, ["a", "b", "c", "d"]);
    assert_eq!(api.query(&[]).await, ["a", "b", "c", "d"]);
    // A prefix matches whole segments: d7 does not take d70.
    assert_eq!(api.query(&[("name_prefix", "d7")]).await, ["a", "b"]);
    // since is inclusive, until exclusive.
    let range = [("since", "2000"), ("until", "4000")];
    assert_eq!(api.query(&range).await, ["b", "c"]);
    assert_eq!(api.query(&[("where", "cases>=5")]).await, ["b", "c"]);
    let both = [("where", "cases>=5"), ("where", "sym=cough")];
    assert_eq!(api.query(&both).await, ["b"]);
    let newest = [("limit", "2"), ("order", "desc")];
    assert_eq!(api.query(&newest).await, ["d", "c"]);
}

#[tokio::test]
async fn a_record_is_read_back_by_id() {
    let api = Api::new().await;
    let record = json!([{"name": "d7/ward-3", "time": 1234, "data": {"cases": 3}}]);
    let id = api.publish(record).await.remove(0);
    let (s, b) = api.get(&format!("{RECORDS}/{id}"), api.admin()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let want = json!({"id": id, "name": "d7/ward-3", "time": 1234, "data": {"cases": 3}});
    assert_eq!(b, want);
}

#[tokio::test]
async fn an_update_by_id_sets_given_fields_and_keeps_the_others() {
    let api = Api::new().await;
    let first = json!([{"id": "r1", "name": "d7", "data": {"cases": 3, "sym": "fever"}}]);
    api.publish(first).await;
    let patch = json!([{"id": "r1", "name": "d7", "data": {"cases": 4, "beds": 2}}]);
    assert_eq!(api.publish(patch).await, ["r1"]);
    let (s, b) = api.get(&format!("{RECORDS}/r1"), api.admin()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["data"], json!({"cases": 4, "sym": "fever", "beds": 2}));
    assert_eq!(api.query(&[]).await, ["r1"], "an update adds no record");
    let (_, before) = (s, b["time"].clone());
    let later = json!([{"id": "r1", "name": "d7", "data": {"beds": 3}}]);
    api.publish(later).await;
    let (_, b) = api.get(&format!("{RECORDS}/r1"), api.admin()).await;
    assert_eq!(
        b["time"], before,
        "an update naming no time keeps the record's time"
    );
}

#[tokio::test]
async fn a_deleted_record_is_gone() {
    let api = Api::new().await;
    api.publish(sample()).await;
    let (s, b) = api.delete(&format!("{RECORDS}/b"), api.admin()).await;
    assert_eq!((s, &b["deleted"]), (StatusCode::OK, &json!(true)), "{b}");
    assert_eq!(b["ids"], json!(["b"]), "the answer names the deleted id");
    let got = api.get(&format!("{RECORDS}/b"), api.admin()).await;
    assert_error(got, 404, "record b not found");
    assert_eq!(api.query(&[]).await, ["a", "c", "d"]);
}

#[tokio::test]
async fn metrics_count_the_records_written() {
    let api = Api::new().await;
    api.publish(sample()).await;
    let (s, b) = api.get("/metrics", api.admin()).await;
    assert_eq!(s, StatusCode::OK);
    let text = b.as_str().expect("metrics are text");
    let has = |line: &str| text.lines().any(|l| l == line);
    assert!(has("fogmesh_records_written_total 4"), "{text}");
    assert!(has("fogmesh_write_batches_total 1"), "{text}");
    // They name every dataset held: not for an app, even one that reads them all.
    let app = api.app("reader", &["read:*"]).await;
    let got = api.get("/metrics", &app).await;
    assert_error(got, 403, "need the admin token");
}

// ---- 201 ----

#[tokio::test]
async fn admin_creates_a_dataset_and_an_app_whose_token_works() {
    let api = Api::new().await;
    let spec = json!({"name": "beds", "visibility": "shared", "readers": ["pharmacy", "agency"]});
    let (s, b) = api.post("/v1/datasets", api.admin(), spec).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["id"], "hospital/beds");
    assert_eq!(b["readers"], json!(["agency", "pharmacy"]));

    let body = json!({"name": "bed-board", "rights": ["read:hospital/beds"]});
    let (s, b) = api.post("/v1/apps", api.admin(), body).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["name"], "bed-board");
    assert_eq!(b["rights"], json!(["read:hospital/beds"]));
    let token = b["token"].as_str().expect("token");
    assert!(token.starts_with("fm_"), "{token}");

    let (s, b) = api.get("/v1/datasets/hospital/beds", token).await;
    assert_eq!((s, &b["records"]), (StatusCode::OK, &json!(0)), "{b}");
    let (s, b) = api.get("/v1/datasets/hospital/beds/records", token).await;
    assert_eq!((s, &b["count"]), (StatusCode::OK, &json!(0)), "{b}");
}

// ---- 400 ----

#[tokio::test]
async fn malformed_bodies_are_400() {
    let api = Api::new().await;
    let admin = Some(api.admin());
    let got = api
        .call(Method::POST, RECORDS, admin, "{\"records\": [")
        .await;
    assert_error(got, 400, "JSON");
    #[rustfmt::skip]
    let cases = [
        (RECORDS, json!({"records": [], "bogus": 1}), "unknown field `bogus`"),
        (RECORDS, json!({"records": [{"name": "a", "data": {}, "colour": 1}]}), "`colour`"),
        ("/v1/datasets", json!({"name": "x", "owner": "pharmacy"}), "unknown field `owner`"),
        ("/v1/apps", json!({"name": "x", "admin": true}), "unknown field `admin`"),
    ];
    for (path, body, needle) in cases {
        let got = api.post(path, api.admin(), body).await;
        assert_error(got, 400, needle);
    }
}

#[tokio::test]
async fn invalid_records_are_400_and_say_why() {
    let api = Api::new().await;
    let big = "x".repeat(64 * 1024);
    #[rustfmt::skip]
    let cases = [
        (json!({"name": "a//b", "data": {}}), "empty segment"),
        (json!({"name": "../x", "data": {}}), "'..' segment"),
        (json!({"name": "a", "data": [1]}), "data must be a JSON object, got an array"),
        (json!({"name": "a", "data": {"s": big}}), "the limit is 65536"),
        (json!({"name": "a", "id": "has space", "data": {}}), "id \"has space\""),
        (json!({"name": "a", "time": u64::MAX, "data": {}}), "between 1970 and 9999"),
    ];
    for (record, needle) in cases {
        let got = api
            .post(RECORDS, api.admin(), json!({ "records": [record] }))
            .await;
        assert_error(got, 400, needle);
    }
    let got = api.post(RECORDS, api.admin(), json!({})).await;
    assert_error(got, 400, "a batch holds a record or a delete");
    let got = api
        .delete(&format!("{RECORDS}/bad%20id"), api.admin())
        .await;
    assert_error(got, 400, "id \"bad id\"");
    assert!(api.query(&[]).await.is_empty(), "nothing was written");
}

#[tokio::test]
async fn invalid_queries_are_400_and_say_why() {
    let api = Api::new().await;
    #[rustfmt::skip]
    let cases: [(&[(&str, &str)], &str); 6] = [
        (&[("where", "cases")], "no operator"),
        (&[("order", "up")], "order must be \"asc\" or \"desc\""),
        (&[("limit", "0")], "limit must be 1 to"),
        (&[("since", "yesterday")], "since must be a non-negative integer"),
        (&[("bogus", "1")], "unknown query parameter \"bogus\""),
        (&[("name_prefix", "a/../b")], "name_prefix"),
    ];
    for (params, needle) in cases {
        let got = api.get(&query_path(params), api.admin()).await;
        assert_error(got, 400, needle);
    }
    // `since` after `until`: an empty range, no error.
    let (s, b) = api
        .get(&query_path(&[("since", "5"), ("until", "1")]), api.admin())
        .await;
    assert_eq!((s, &b["records"]), (StatusCode::OK, &serde_json::json!([])));
}

#[tokio::test]
async fn bad_rights_app_names_and_dataset_specs_are_400() {
    let api = Api::new().await;
    #[rustfmt::skip]
    let cases = [
        ("/v1/apps", json!({"name": "x", "rights": ["delete:a/b"]}), "must be ACTION:DATASET"),
        ("/v1/apps", json!({"name": "x", "rights": ["read:Hospital/f"]}), "read:Hospital/f"),
        ("/v1/apps", json!({"name": "Bad App"}), "app name"),
        ("/v1/datasets", json!({"name": "x", "visibility": "private", "readers": ["pharmacy"]}),
            "a private dataset has no readers"),
        ("/v1/datasets", json!({"name": "Bad Name"}), "Bad Name"),
    ];
    for (path, body, needle) in cases {
        let got = api.post(path, api.admin(), body).await;
        assert_error(got, 400, needle);
    }
    let (s, b) = api.get("/v1/apps", api.admin()).await;
    let apps = b["apps"].as_array().expect("apps");
    assert_eq!((s, apps.len()), (StatusCode::OK, 1), "only admin: {b}");
}

// ---- 401 ----

#[tokio::test]
async fn requests_without_a_valid_token_are_401() {
    let api = Api::new().await;
    let admin = api.admin();
    let headers = [
        None,
        Some("Bearer fm_0000".to_owned()),
        Some(admin.to_owned()),
        Some(format!("Basic {admin}")),
        Some("Bearer".to_owned()),
    ];
    for h in headers {
        let mut b = Request::builder().uri("/v1/node");
        if let Some(h) = &h {
            b = b.header(header::AUTHORIZATION, h);
        }
        let got = api.send(b.body(Body::empty()).expect("request")).await;
        assert_error(got, 401, "bearer token");
    }
    let got = api.call(Method::GET, RECORDS, None, "").await;
    assert_error(got, 401, "bearer token");
    let got = api.get("/metrics", "fm_wrong").await;
    assert_error(got, 401, "bearer token");
}

// ---- 403 ----

#[tokio::test]
async fn missing_rights_are_403() {
    let api = Api::new().await;
    api.publish(sample()).await;
    let reader = api.app("flu-reader", &["read:hospital/flu"]).await;
    // An app with a right on the dataset but not this one gets 403; one with none gets 404.
    let writer = api.app("flu-writer", &["write:hospital/flu"]).await;
    let forbidden = 403;

    let body = json!({"records": [{"name": "a", "data": {}}]});
    let got = api.post(RECORDS, &reader, body).await;
    assert_error(got, forbidden, "no write right on hospital/flu");
    let got = api.delete(&format!("{RECORDS}/a"), &reader).await;
    assert_error(got, forbidden, "no write right on hospital/flu");
    let (s, _) = api.get(&format!("{RECORDS}/a"), &reader).await;
    assert_eq!(s, StatusCode::OK, "the reader may still read");

    let paths = [
        RECORDS.to_owned(),
        format!("{RECORDS}/a"),
        format!("{FLU}/events"),
    ];
    for path in paths {
        let got = api.get(&path, &writer).await;
        assert_error(got, forbidden, "no read right on hospital/flu");
    }
    let got = api
        .post("/v1/datasets", &reader, json!({"name": "x"}))
        .await;
    assert_error(got, forbidden, "creating a dataset needs the admin token");
    let got = api.post("/v1/apps", &reader, json!({"name": "x"})).await;
    assert_error(got, forbidden, "registering an app needs the admin token");
    let got = api.get("/v1/apps", &reader).await;
    assert_error(got, forbidden, "listing apps needs the admin token");
}

// ---- 404 ----

#[tokio::test]
async fn unknown_things_are_404() {
    let api = Api::new().await;
    let admin = api.admin();
    #[rustfmt::skip]
    let cases = [
        ("/v1/datasets/hospital/nope/records", "dataset hospital/nope not found"),
        ("/v1/datasets/hospital/nope", "dataset hospital/nope not found"),
        ("/v1/datasets/hospital/flu/records/zzz", "record zzz not found in hospital/flu"),
    ];
    for (path, needle) in cases {
        assert_error(api.get(path, admin).await, 404, needle);
    }
    let got = api.delete(&format!("{RECORDS}/nope"), admin).await;
    assert_error(got, 404, "record nope not found");
    // The fallback answers every unknown route, with or without a token.
    for token in [Some(admin), None] {
        let (s, b) = api.call(Method::GET, "/v2/nothing-here", token, "").await;
        let msg = b["error"]["message"].as_str().expect("message");
        assert_eq!(
            (s, &b["error"]["code"]),
            (StatusCode::NOT_FOUND, &json!("not_found"))
        );
        assert!(msg.starts_with("no such endpoint"), "{msg}");
    }
}

#[tokio::test]
async fn a_batch_deleting_a_missing_record_is_404_and_writes_nothing() {
    let api = Api::new().await;
    let got = api
        .post(RECORDS, api.admin(), json!({"delete": ["nope"]}))
        .await;
    assert_error(got, 404, "record nope not found in hospital/flu");
    let keep = json!({"id": "keep", "name": "a", "data": {}});
    let body = json!({"records": [keep], "delete": ["nope"]});
    let got = api.post(RECORDS, api.admin(), body).await;
    assert_error(got, 404, "record nope not found");
    let got = api.get(&format!("{RECORDS}/keep"), api.admin()).await;
    assert_error(got, 404, "record keep not found");
}

// ---- 409 ----

#[tokio::test]
async fn creating_twice_is_409() {
    let api = Api::new().await;
    let admin = api.admin();
    let got = api
        .post("/v1/datasets", admin, json!({"name": "flu"}))
        .await;
    assert_error(got, 409, "dataset hospital/flu already exists");
    api.app("planner", &[]).await;
    let got = api
        .post("/v1/apps", admin, json!({"name": "planner"}))
        .await;
    assert_error(got, 409, "an app named planner already exists");
    let got = api.post("/v1/apps", admin, json!({"name": "admin"})).await;
    assert_error(got, 409, "an app named admin already exists");
}

// ---- 413 ----

#[tokio::test]
async fn a_body_over_max_body_bytes_is_413() {
    let api = Api::with_limit(4096).await;
    let batch = |len: usize| json!({"records": [{"name": "a", "data": {"s": "x".repeat(len)}}]});
    let (s, b) = api.post(RECORDS, api.admin(), batch(3500)).await;
    assert_eq!(s, StatusCode::OK, "a body under the limit passes: {b}");
    let got = api.post(RECORDS, api.admin(), batch(5000)).await;
    assert_error(got, 413, "");
    let written = api.query(&[]).await;
    assert_eq!(written.len(), 1, "the large batch was not written");
}

// ---- server-sent events ----

#[tokio::test]
async fn a_reader_receives_upserts_and_deletes_as_events_until_shutdown() {
    let api = Api::new().await;
    let reader = api.app("watcher", &["read:hospital/flu"]).await;
    let path = format!("{FLU}/events");
    let req = request(Method::GET, &path, Some(&reader), Body::empty());
    let resp = api.router.clone().oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::OK);
    let ct = resp.headers()[header::CONTENT_TYPE]
        .to_str()
        .expect("ascii");
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let mut body = resp.into_body();

    let record = json!([{"name": "d7/ward-3", "data": {"cases": 9}}]);
    let id = api.publish(record).await.remove(0);
    let ev = next_event(&mut body, "upsert", &id).await;
    assert_eq!(ev["kind"], "upsert");
    assert_eq!(ev["record"]["id"], id.as_str());
    assert_eq!(ev["record"]["data"], json!({"cases": 9}));

    let (s, b) = api.delete(&format!("{RECORDS}/{id}"), api.admin()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let ev = next_event(&mut body, "delete", &id).await;
    assert_eq!(ev["kind"], "delete");
    assert_eq!(ev["id"], id.as_str());
    assert!(
        ev["name"].is_string(),
        "a delete names the record's name: {ev}"
    );

    api.closing.send(true).expect("router holds a receiver");
    let end = tokio::time::timeout(EVENT_WAIT, body.frame()).await;
    let end = end.expect("the stream ends in time");
    assert!(end.is_none(), "no frame after shutdown: {end:?}");
}

// ---- per-app isolation ----

#[tokio::test]
async fn each_app_lists_only_the_datasets_it_has_rights_on() {
    let api = Api::new().await;
    api.publish(sample()).await;
    let reader = api.app("flu-reader", &["read:hospital/flu"]).await;
    let nobody = api.app("nobody", &[]).await;

    let (s, b) = api.get("/v1/datasets", &reader).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let listed = b["datasets"].as_array().expect("datasets");
    assert_eq!(listed.len(), 1, "{b}");
    assert_eq!(listed[0]["id"], "hospital/flu");
    assert_eq!(listed[0]["records"], 4);
    let bytes = listed[0]["bytes"].as_u64().expect("bytes");
    assert!(bytes > 0, "the written envelope takes bytes: {b}");
    let (_, one) = api.get(FLU, &reader).await;
    assert_eq!(one["bytes"], bytes, "the dataset's own page agrees: {one}");

    let (s, b) = api.get("/v1/datasets", &nobody).await;
    assert_eq!((s, &b["datasets"]), (StatusCode::OK, &json!([])), "{b}");
    let got = api.get(FLU, &nobody).await;
    assert_error(got, 404, "dataset hospital/flu not found");
    // Nor do its records answer 403, which would tell the dataset exists.
    let got = api.get(RECORDS, &nobody).await;
    assert_error(got, 404, "dataset hospital/flu not found");
    let got = api
        .post(RECORDS, &nobody, json!({"records": sample()}))
        .await;
    assert_error(got, 404, "dataset hospital/flu not found");
}

// ---- regressions of defects found in review ----

#[tokio::test]
async fn api_errors_are_counted_in_metrics() {
    let api = Api::new().await;
    let (s, _) = api.get(&format!("{RECORDS}/zzz"), api.admin()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, b) = api.get("/metrics", api.admin()).await;
    let text = b.as_str().expect("metrics are text");
    let counted = text
        .lines()
        .any(|l| l.starts_with("fogmesh_api_errors_total{"));
    assert!(counted, "{text}");
}

#[tokio::test]
async fn a_wrong_method_is_405_with_a_json_error() {
    let api = Api::new().await;
    let (s, b) = api
        .call(Method::PUT, "/v1/node", Some(api.admin()), "")
        .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert!(b["error"]["message"].is_string(), "{b}");
}

#[tokio::test]
async fn a_misspelt_retention_field_is_400() {
    let api = Api::new().await;
    let spec = json!({"name": "beds", "retention": {"max_age": 30}});
    let got = api.post("/v1/datasets", api.admin(), spec).await;
    assert_error(got, 400, "max_age");
}

#[tokio::test]
async fn a_home_reopens_as_soon_as_its_node_is_dropped() {
    for round in 0..20u8 {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config {
            org: "hospital".into(),
            mesh: "m".into(),
            ..Config::default()
        };
        let id = Identity::from_seed([round; 32]);
        let home = fogmesh::node::home::init_with(dir.path(), config.clone(), id).await;
        home.expect("init");
        // init_with has dropped its Node: the home must be free again.
        if let Err(e) = Node::open_home(dir.path(), config) {
            panic!("round {round}: {e}");
        }
    }
}

#[tokio::test]
async fn max_records_retention_keeps_only_the_newest() {
    let api = Api::new().await;
    let spec = json!({"name": "beds", "retention": {"max_records": 2}});
    let (s, b) = api.post("/v1/datasets", api.admin(), spec).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let path = "/v1/datasets/hospital/beds/records";
    let (s, b) = api
        .post(path, api.admin(), json!({"records": sample()}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (_, b) = api.get(path, api.admin()).await;
    let ids: Vec<&str> = b["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| r["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["c", "d"], "{b}");
}

// ---- grants ----

const GRANTS: &str = "/v1/grants";
const THIRTY_DAYS_MS: u64 = 30 * 86_400_000;

impl Api {
    /// Creates the shared (so sealed) dataset `hospital/beds`, without readers.
    pub(crate) async fn shared_beds(&self) {
        let spec = json!({"name": "beds", "visibility": "shared"});
        let (s, b) = self.post("/v1/datasets", self.admin(), spec).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }

    /// Every grant `GET /v1/grants` lists to the admin.
    async fn grants(&self) -> Vec<Value> {
        let (s, b) = self.get(GRANTS, self.admin()).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        b["grants"].as_array().expect("grants is an array").clone()
    }
}

fn now_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    u64::try_from(since.expect("clock after 1970").as_millis()).expect("fits u64")
}

#[tokio::test]
async fn a_grant_is_issued_listed_and_revoked_into_a_new_epoch() {
    let api = Api::new().await;
    api.shared_beds().await;
    assert!(api.grants().await.is_empty(), "no readers, no grants yet");

    let before = now_ms();
    let req = json!({"dataset": "hospital/beds", "to": "pharmacy/restock",
        "rights": ["query", "read", "query"], "prefix": "d7", "expires": "30d"});
    let (s, created) = api.post(GRANTS, api.admin(), req).await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();
    assert!(!id.is_empty(), "{created}");
    assert_eq!(created["dataset"], "hospital/beds");
    assert_eq!(created["grantee"], "pharmacy/restock");
    assert_eq!(
        created["rights"],
        json!(["read", "query"]),
        "deduplicated, in order"
    );
    assert_eq!(created["prefix"], "d7");
    assert_eq!((&created["seq"], &created["epoch"]), (&json!(1), &json!(1)));
    assert_eq!(
        created["cut"], 0,
        "pharmacy is not a member: nothing accepted from it"
    );
    let issued = created["issued"].as_u64().expect("issued");
    let not_after = created["not_after"].as_u64().expect("not_after");
    assert!((before..=now_ms()).contains(&issued), "issued {issued}");
    let lifetime = not_after - issued;
    assert!(
        (THIRTY_DAYS_MS - 5_000..=THIRTY_DAYS_MS).contains(&lifetime),
        "expires 30d after issue, got {lifetime} ms"
    );

    // Listed as issued, active.
    let mut expected = created.clone();
    expected["state"] = json!("active");
    assert_eq!(api.grants().await, [expected]);

    let path = format!("{GRANTS}/{id}");
    let (s, b) = api.delete(&path, api.admin()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["revoked"], id.as_str());
    let tomb = &b["revocation"];
    let tomb_id = tomb["id"].as_str().expect("revocation id").to_owned();
    assert_ne!(tomb_id, id, "a revocation is a grant of its own");
    assert_eq!(tomb["grantee"], "pharmacy/restock");
    assert_eq!(tomb["dataset"], "hospital/beds");
    assert_eq!(tomb["rights"], json!([]));
    assert_eq!(
        (&tomb["prefix"], &tomb["not_after"]),
        (&Value::Null, &Value::Null)
    );
    assert_eq!(
        (&tomb["seq"], &tomb["epoch"]),
        (&json!(2), &json!(2)),
        "{b}"
    );

    // The revocation replaces the grant in the listing.
    let listed = api.grants().await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let g = &listed[0];
    assert_eq!(
        (&g["id"], &g["state"]),
        (&json!(tomb_id), &json!("revoked"))
    );
    assert_eq!((&g["epoch"], &g["rights"]), (&json!(2), &json!([])));
    assert_eq!(g["grantee"], "pharmacy/restock");

    // Revoking again, by the revocation's id or the revoked grant's: a conflict either way.
    let got = api
        .delete(&format!("{GRANTS}/{tomb_id}"), api.admin())
        .await;
    assert_error(got, 409, &format!("grant {tomb_id} is already revoked"));
    let got = api.delete(&path, api.admin()).await;
    assert_error(
        got,
        409,
        &format!("grant {id} is already revoked (by {tomb_id})"),
    );
    let got = api.delete(&format!("{GRANTS}/nope"), api.admin()).await;
    assert_error(got, 404, "grant nope not found");
    let after = api.grants().await;
    assert_eq!(after, listed, "failed revocations change nothing");
}

#[tokio::test]
async fn revoking_a_query_only_grant_keeps_the_epoch() {
    let api = Api::new().await;
    api.shared_beds().await;
    let req = json!({"dataset": "hospital/beds", "to": "agency/*", "rights": ["query"]});
    let (s, g) = api.post(GRANTS, api.admin(), req).await;
    assert_eq!(s, StatusCode::CREATED, "{g}");
    assert_eq!((&g["epoch"], &g["not_after"]), (&json!(1), &Value::Null));
    let (s, b) = api
        .delete(
            &format!("{GRANTS}/{}", g["id"].as_str().expect("id")),
            api.admin(),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        b["revocation"]["epoch"], 1,
        "no keys were held: no new epoch: {b}"
    );
}

#[tokio::test]
async fn grants_need_the_admin_token() {
    let api = Api::new().await;
    api.shared_beds().await;
    let req = json!({"dataset": "hospital/beds", "to": "pharmacy/*", "rights": ["read"]});
    let (s, g) = api.post(GRANTS, api.admin(), req.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{g}");
    let id = g["id"].as_str().expect("id");
    let reader = api.app("bed-board", &["read:hospital/beds"]).await;

    let got = api.get(GRANTS, &reader).await;
    assert_error(got, 403, "listing grants needs the admin token");
    let got = api.post(GRANTS, &reader, req).await;
    assert_error(got, 403, "granting needs the admin token");
    let got = api.delete(&format!("{GRANTS}/{id}"), &reader).await;
    assert_error(got, 403, "revoking needs the admin token");

    let listed = api.grants().await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (&listed[0]["id"], &listed[0]["state"]),
        (&json!(id), &json!("active"))
    );
}

#[tokio::test]
async fn bad_grant_requests_are_400_and_say_why() {
    let api = Api::new().await;
    api.shared_beds().await;
    let req =
        |to: &str, rights: Value| json!({"dataset": "hospital/beds", "to": to, "rights": rights});
    let with = |key: &str, v: &str| {
        let mut r = req("pharmacy/*", json!(["read"]));
        r[key] = json!(v);
        r
    };
    #[rustfmt::skip]
    let cases = [
        (req("pharmacy", json!(["read"])), "grantee \"pharmacy\" must be ORG/APP or ORG/*"),
        (req("Pharmacy/x", json!(["read"])), "grantee \"Pharmacy/x\""),
        (req("pharmacy/*", json!(["delete"])), "unknown variant `delete`"),
        (req("pharmacy/*", json!([])), "a grant needs at least one right"),
        (req("pharmacy/*", json!("read")), "rights"),
        (with("expires", "30x"), "expiry \"30x\": expected a number and d, h, m or s"),
        (with("expires", "0d"), "expiry \"0d\": between 1s and 3650d"),
        (with("expires", "3651d"), "expiry \"3651d\": between 1s and 3650d"),
        (with("prefix", "a//b"), "name prefix \"a//b\""),
        (with("bogus", "1"), "unknown field `bogus`"),
        (with("dataset", "Hospital/beds"), "Hospital"),
    ];
    for (body, needle) in cases {
        let got = api.post(GRANTS, api.admin(), body.clone()).await;
        assert_error(got, 400, needle);
    }
    // Well formed, but the dataset is private: a conflict with its state.
    for rights in [json!(["read"]), json!(["query", "write"])] {
        let body = json!({"dataset": "hospital/flu", "to": "pharmacy/*", "rights": rights});
        let got = api.post(GRANTS, api.admin(), body).await;
        assert_error(
            got,
            409,
            "hospital/flu is private: its rows never leave this node",
        );
    }
    assert!(api.grants().await.is_empty(), "nothing was granted");

    // Control: the private dataset takes a query-only grant, and the bounds of expiry pass.
    let query = json!({"dataset": "hospital/flu", "to": "pharmacy/*", "rights": ["query"]});
    let (s, b) = api.post(GRANTS, api.admin(), query).await;
    assert_eq!(
        (s, &b["rights"]),
        (StatusCode::CREATED, &json!(["query"])),
        "{b}"
    );
    for ttl in ["1s", "3650d"] {
        let (s, b) = api.post(GRANTS, api.admin(), with("expires", ttl)).await;
        assert_eq!(s, StatusCode::CREATED, "{ttl}: {b}");
    }
}

#[tokio::test]
async fn grants_on_datasets_this_node_does_not_own_or_hold_are_refused() {
    let api = Api::new().await;
    let body = |ds: &str| json!({"dataset": ds, "to": "agency/*", "rights": ["query"]});
    let got = api.post(GRANTS, api.admin(), body("pharmacy/x")).await;
    assert!(!got.0.is_success(), "{got:?}");
    assert_error(
        got,
        403,
        "dataset pharmacy/x is owned by pharmacy; only its owner grants",
    );
    let got = api.post(GRANTS, api.admin(), body("hospital/nope")).await;
    assert_error(got, 404, "dataset hospital/nope not found");
    // An app's right to scrape is no grant's, even beside one.
    api.shared_beds().await;
    let req = json!({"dataset": "hospital/beds", "to": "agency/*", "rights": ["query", "metrics"]});
    let got = api.post(GRANTS, api.admin(), req).await;
    assert_error(
        got,
        400,
        "metrics is a right of this node's apps, not of a grant",
    );
    assert!(api.grants().await.is_empty());
}

// ---- the shared view: POST /v1/query and POST /v1/search ----

const QUERY: &str = "/v1/query";
const SEARCH: &str = "/v1/search";
const NDJSON: &str = "application/x-ndjson";
/// Both datasets of the view tests.
const BOTH: [&str; 2] = ["hospital/flu", "hospital/beds"];

/// A streamed answer: status, content type, how many body frames it came in, and its text.
struct Streamed {
    status: StatusCode,
    content_type: String,
    frames: usize,
    text: String,
}

impl Api {
    /// `Api::new` plus the private dataset `hospital/beds`.
    async fn two_datasets() -> Self {
        let api = Self::new().await;
        let (s, b) = api
            .post("/v1/datasets", api.admin(), json!({"name": "beds"}))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        api
    }

    /// Publishes `records` to `hospital/{name}` as admin.
    async fn publish_to(&self, name: &str, records: Value) {
        let path = format!("/v1/datasets/hospital/{name}/records");
        let (s, b) = self
            .post(&path, self.admin(), json!({ "records": records }))
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }

    /// `POST /v1/query` with `body` as `token`.
    async fn view(&self, token: &str, body: Value) -> (StatusCode, Value) {
        self.post(QUERY, token, body).await
    }

    /// The rows of a row query, checking the status and that `count` agrees.
    async fn rows(&self, token: &str, body: Value) -> Vec<Value> {
        let (s, b) = self.view(token, body.clone()).await;
        assert_eq!(s, StatusCode::OK, "{body}: {b}");
        let rows = b["rows"].as_array().expect("rows").clone();
        assert_eq!(b["count"], rows.len(), "{b}");
        assert_eq!(
            b.as_object().map(|o| o.len()),
            Some(2),
            "count and rows only: {b}"
        );
        rows
    }

    /// The answer to an aggregate query (checking the status).
    async fn aggregate(&self, token: &str, body: Value) -> Value {
        let (s, b) = self.view(token, body.clone()).await;
        assert_eq!(s, StatusCode::OK, "{body}: {b}");
        assert!(b["groups"].is_array() && b["sources"].is_array(), "{b}");
        b
    }

    /// `POST /v1/query` asking for NDJSON, read to the end frame by frame.
    async fn view_ndjson(&self, body: Value) -> Streamed {
        let mut req = request(
            Method::POST,
            QUERY,
            Some(self.admin()),
            Body::from(body.to_string()),
        );
        let accept = header::HeaderValue::from_static(NDJSON);
        req.headers_mut().insert(header::ACCEPT, accept);
        let resp = self.router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let mut body = resp.into_body();
        let (mut frames, mut bytes) = (0, Vec::new());
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame.expect("frame").data_ref() {
                frames += 1;
                bytes.extend_from_slice(data);
            }
        }
        let text = String::from_utf8(bytes).expect("utf-8");
        Streamed {
            status,
            content_type,
            frames,
            text,
        }
    }
}

/// The value of `key` in each of `rows`.
fn column<'a>(rows: &'a [Value], key: &str) -> Vec<&'a Value> {
    rows.iter().map(|r| &r[key]).collect()
}

/// JSON equality with numbers compared as f64 (measures are floats: 17 and 17.0 are the same)
/// to within a rounding error.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            (x - y).abs() <= 1e-9 * x.abs().max(1.0)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

#[track_caller]
fn assert_same(got: &Value, want: &Value) {
    assert!(same(got, want), "got  {got}\nwant {want}");
}

/// Records of `hospital/flu` for the view tests.
fn flu_records() -> Value {
    json!([
        {"id": "a", "name": "d7/ward-3", "time": 1_000, "data": {"cases": 3, "kind": "flu"}},
        {"id": "b", "name": "d7/ward-4", "time": 86_400_005, "data": {"cases": 8, "kind": "flu"}},
        {"id": "c", "name": "d8/ward-1", "time": 2_000, "data": {"cases": 5, "kind": "rsv"}},
        {"id": "d", "name": "d8", "time": 3_000, "data": {"cases": "n/a", "kind": "rsv"}},
        {"id": "e", "name": "d70/ward-1", "time": 4_000, "data": {"cases": 12, "kind": "flu"}},
    ])
}

/// Records of `hospital/beds` for the view tests.
fn beds_records() -> Value {
    json!([
        {"id": "x", "name": "d7/ward-1", "time": 1_500, "data": {"cases": 6, "kind": "flu"}},
        {"id": "y", "name": "d9", "time": 172_800_000, "data": {"cases": 1}},
        {"id": "z", "name": "d7/ward-2", "time": 2_500, "data": {"beds": 4}},
    ])
}

async fn view_api() -> Api {
    let api = Api::two_datasets().await;
    api.publish_to("flu", flu_records()).await;
    api.publish_to("beds", beds_records()).await;
    api
}

#[tokio::test]
async fn view_rows_over_two_datasets_are_filtered_projected_ordered_and_limited() {
    let api = view_api().await;
    let admin = api.admin();

    // Segment filter, predicate, projection, descending order by a data field, limit.
    let q = json!({"datasets": BOTH, "segments": ["0=d7"], "where": ["cases>=2"],
        "select": ["dataset", "id", "cases"], "order_by": "-cases", "limit": 3});
    let rows = api.rows(admin, q).await;
    assert_eq!(
        Value::from(rows),
        json!([
            {"dataset": "hospital/flu", "id": "b", "cases": 8},
            {"dataset": "hospital/beds", "id": "x", "cases": 6},
            {"dataset": "hospital/flu", "id": "a", "cases": 3},
        ])
    );

    // Whole records with their dataset, by time (the default order), over both datasets.
    let rows = api
        .rows(admin, json!({"datasets": BOTH, "segments": ["0=d7"]}))
        .await;
    assert_eq!(
        column(&rows, "id"),
        [&json!("a"), &json!("x"), &json!("z"), &json!("b")]
    );
    assert_eq!(
        rows[0],
        json!({"dataset": "hospital/flu", "id": "a", "name": "d7/ward-3", "time": 1_000,
            "data": {"cases": 3, "kind": "flu"}})
    );
    assert_eq!(rows[1]["dataset"], "hospital/beds");

    // A second segment, a name prefix, a time range, ascending order by name.
    let q = json!({"datasets": BOTH, "segments": ["0=d7", "1=ward-3"], "select": ["id"]});
    assert_eq!(api.rows(admin, q).await, [json!({"id": "a"})]);
    let q = json!({"datasets": BOTH, "name_prefix": "d7", "since": 1_500, "until": 86_400_005,
        "order_by": "name", "select": ["name", "data.kind", "time"]});
    assert_eq!(
        Value::from(api.rows(admin, q).await),
        json!([
            {"name": "d7/ward-1", "data.kind": "flu", "time": 1_500},
            {"name": "d7/ward-2", "data.kind": null, "time": 2_500},
        ]),
        "until is exclusive; a missing selected field is null"
    );

    // The same dataset twice counts once; time descending; a limit of one.
    let q = json!({"datasets": ["hospital/flu", "hospital/flu"], "order_by": "-time",
        "limit": 1, "select": ["id"]});
    assert_eq!(api.rows(admin, q).await, [json!({"id": "b"})]);
    let q = json!({"datasets": ["hospital/flu", "hospital/flu"], "select": ["id"]});
    assert_eq!(api.rows(admin, q).await.len(), 5, "no row twice");

    // The default limit and order over everything; nothing matching is an empty answer.
    let all = api.rows(admin, json!({"datasets": BOTH})).await;
    let times: Vec<u64> = all
        .iter()
        .map(|r| r["time"].as_u64().expect("time"))
        .collect();
    assert_eq!(times.len(), 8);
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    let none = json!({"datasets": BOTH, "where": ["cases>1000"]});
    assert!(api.rows(admin, none).await.is_empty());
}

#[tokio::test]
async fn view_rows_lacking_the_order_field_come_last_in_either_direction() {
    let api = view_api().await;
    for order in ["cases", "-cases"] {
        let q = json!({"datasets": BOTH, "order_by": order, "select": ["id"]});
        let rows = api.rows(api.admin(), q).await;
        let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().expect("id")).collect();
        // Only z lacks `cases` (d's is a string, which still sorts).
        assert_eq!(ids.last(), Some(&"z"), "order_by {order}: {ids:?}");
    }
}

#[tokio::test]
async fn more_than_10000_rows_stream_as_ndjson_and_are_400_as_one_document() {
    let api = Api::two_datasets().await;
    let batch = |prefix: &str, n: usize, t0: u64| {
        let recs: Vec<Value> = (0..n)
            .map(|i| {
                json!({"id": format!("{prefix}{i}"), "name": format!("d{}/ward", i % 3),
                    "time": t0 + i as u64, "data": {"cases": i}})
            })
            .collect();
        Value::from(recs)
    };
    api.publish_to("flu", batch("f", 6_000, 1_000)).await;
    api.publish_to("beds", batch("b", 5_000, 500_000)).await;

    let q = json!({"datasets": BOTH, "limit": 10_500});
    let got = api.view_ndjson(q.clone()).await;
    assert_eq!(
        got.status,
        StatusCode::OK,
        "{}",
        &got.text[..got.text.len().min(500)]
    );
    assert!(got.content_type.starts_with(NDJSON), "{}", got.content_type);
    assert!(got.text.ends_with('\n'), "every line ends in a newline");
    let lines: Vec<Value> = got
        .text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON row"))
        .collect();
    assert_eq!(lines.len(), 10_500);
    assert!(
        got.frames > 1,
        "streamed in chunks, got {} frame(s)",
        got.frames
    );
    assert_eq!(lines[0]["id"], "f0");
    assert_eq!(lines[5_999]["id"], "f5999");
    assert_eq!(lines[6_000]["dataset"], "hospital/beds");
    assert_eq!(lines[10_499]["id"], "b4499");
    let ids: std::collections::HashSet<&str> = lines
        .iter()
        .map(|r| r["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids.len(), 10_500, "no row twice");

    // A limit above the rows there are: all of them; a projection streams too.
    let q2 =
        json!({"datasets": BOTH, "limit": 1_000_000, "select": ["id"], "where": ["cases>=4990"]});
    let got = api.view_ndjson(q2).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.text.lines().count(), 1_010 + 10);
    assert_eq!(got.text.lines().next(), Some(r#"{"id":"f4990"}"#));

    // Without the Accept header, more than 10,000 rows is a 400 naming the limit; 10,000 is fine.
    let got = api.view(api.admin(), q).await;
    assert_error(got, 400, "limit: ");
    let (s, b) = api
        .view(api.admin(), json!({"datasets": BOTH, "limit": 10_001}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let msg = b["error"]["message"].as_str().expect("message");
    assert!(msg.starts_with("limit: ") && msg.contains(NDJSON), "{msg}");
    let rows = api
        .rows(
            api.admin(),
            json!({"datasets": BOTH, "limit": 10_000, "select": ["id"]}),
        )
        .await;
    assert_eq!(rows.len(), 10_000);
    // The stream's limit is capped as well.
    let got = api
        .view_ndjson(json!({"datasets": BOTH, "limit": 1_000_001}))
        .await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST, "{}", got.text);
    assert!(got.text.contains("limit: "), "{}", got.text);
}

#[tokio::test]
async fn aggregates_by_segment_bucket_and_field_with_every_measure() {
    let api = view_api().await;
    let admin = api.admin();
    let measures = ["count", "sum:cases", "avg:cases", "min:cases", "max:cases"];
    let local = json!([
        {"dataset": "hospital/flu", "owner": "hospital", "status": "local"},
        {"dataset": "hospital/beds", "owner": "hospital", "status": "local"},
    ]);

    let q = json!({"datasets": BOTH, "group_by": ["segment:0"], "aggregates": measures});
    let b = api.aggregate(admin, q).await;
    assert_eq!(b["sources"], local, "{b}");
    assert_same(
        &b["groups"],
        &json!([
            // a, b, x, z (z has no cases: counted, not measured).
            {"segment:0": "d7", "count": 4, "sum:cases": 17, "avg:cases": 17.0 / 3.0,
                "min:cases": 3, "max:cases": 8},
            {"segment:0": "d70", "count": 1, "sum:cases": 12, "avg:cases": 12,
                "min:cases": 12, "max:cases": 12},
            // d's cases is a string: counted, not measured.
            {"segment:0": "d8", "count": 2, "sum:cases": 5, "avg:cases": 5,
                "min:cases": 5, "max:cases": 5},
            {"segment:0": "d9", "count": 1, "sum:cases": 1, "avg:cases": 1,
                "min:cases": 1, "max:cases": 1},
        ]),
    );

    // Day buckets: a group per day, keyed by its first millisecond (compared as a set here;
    // their order is checked below).
    let q = json!({"datasets": BOTH, "group_by": ["bucket:1d"], "aggregates": measures});
    let b = api.aggregate(admin, q).await;
    let mut groups = b["groups"].as_array().expect("groups").clone();
    groups.sort_by_key(|g| g["bucket:1d"].as_u64());
    assert_same(
        &Value::from(groups),
        &json!([
            {"bucket:1d": 0, "count": 6, "sum:cases": 26, "avg:cases": 26.0 / 4.0,
                "min:cases": 3, "max:cases": 12},
            {"bucket:1d": 86_400_000, "count": 1, "sum:cases": 8, "avg:cases": 8,
                "min:cases": 8, "max:cases": 8},
            {"bucket:1d": 172_800_000, "count": 1, "sum:cases": 1, "avg:cases": 1,
                "min:cases": 1, "max:cases": 1},
        ]),
    );

    // A data field; records without it are the null group; a group without numbers has null
    // avg, min and max.
    let q = json!({"datasets": BOTH, "group_by": ["field:kind"], "aggregates": measures,
        "where": ["name!=d7/ward-2"]});
    let b = api.aggregate(admin, q).await;
    let groups = b["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 3, "{b}");
    let by_kind = |k: Value| groups.iter().find(|g| g["field:kind"] == k).cloned();
    assert_same(
        &by_kind(json!("flu")).expect("flu"),
        &json!({"field:kind": "flu", "count": 4, "sum:cases": 29, "avg:cases": 29.0 / 4.0,
            "min:cases": 3, "max:cases": 12}),
    );
    assert_same(
        &by_kind(json!("rsv")).expect("rsv"),
        &json!({"field:kind": "rsv", "count": 2, "sum:cases": 5, "avg:cases": 5,
            "min:cases": 5, "max:cases": 5}),
    );
    assert_same(
        &by_kind(Value::Null).expect("null"),
        &json!({"field:kind": null, "count": 1, "sum:cases": 1, "avg:cases": 1,
            "min:cases": 1, "max:cases": 1}),
    );
    let q = json!({"datasets": BOTH, "group_by": ["field:kind"], "aggregates": ["count", "avg:beds", "max:beds"],
        "segments": ["0=d8"]});
    let b = api.aggregate(admin, q).await;
    assert_eq!(
        b["groups"],
        json!([{"field:kind": "rsv", "count": 2, "avg:beds": null, "max:beds": null}])
    );

    // Two dimensions at once, a filter, and a limit on groups.
    let q = json!({"datasets": BOTH, "group_by": ["segment:0", "field:kind"],
        "aggregates": ["count"], "where": ["cases>=1"]});
    let b = api.aggregate(admin, q.clone()).await;
    assert_eq!(
        b["groups"],
        json!([
            {"segment:0": "d7", "field:kind": "flu", "count": 3},
            {"segment:0": "d70", "field:kind": "flu", "count": 1},
            {"segment:0": "d8", "field:kind": "rsv", "count": 1},
            {"segment:0": "d9", "field:kind": null, "count": 1},
        ])
    );
    let mut limited = q;
    limited["limit"] = json!(2);
    let b = api.aggregate(admin, limited).await;
    assert_eq!(b["groups"].as_array().map(Vec::len), Some(2), "{b}");

    // No dimension: one group over everything.
    let q = json!({"datasets": BOTH, "aggregates": measures});
    let b = api.aggregate(admin, q).await;
    assert_same(
        &b["groups"],
        &json!([{"count": 8, "sum:cases": 35, "avg:cases": 35.0 / 6.0, "min:cases": 1,
            "max:cases": 12}]),
    );

    // Nothing matches: no groups at all, grouped or not; the sources still answer.
    for group_by in [json!([]), json!(["segment:0", "bucket:1d", "field:kind"])] {
        let q = json!({"datasets": BOTH, "group_by": group_by, "aggregates": measures,
            "since": 1_000_000_000_000u64});
        let b = api.aggregate(admin, q).await;
        assert_eq!(b, json!({"groups": [], "sources": local}));
    }
    // An empty dataset too.
    let (s, b) = api
        .post("/v1/datasets", admin, json!({"name": "empty"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let b = api
        .aggregate(
            admin,
            json!({"datasets": ["hospital/empty"], "aggregates": ["count"]}),
        )
        .await;
    assert_eq!(b["groups"], json!([]), "{b}");
}

#[tokio::test]
async fn aggregate_groups_with_numeric_keys_are_in_numeric_order() {
    let api = view_api().await;
    let q = json!({"datasets": BOTH, "group_by": ["bucket:1d"], "aggregates": ["count"]});
    let b = api.aggregate(api.admin(), q).await;
    let keys: Vec<&Value> = column(b["groups"].as_array().expect("groups"), "bucket:1d");
    assert_eq!(
        keys,
        [&json!(0), &json!(86_400_000), &json!(172_800_000)],
        "{b}"
    );
    let q = json!({"datasets": BOTH, "group_by": ["field:cases"], "aggregates": ["count"],
        "where": ["cases>=5"], "limit": 2});
    let b = api.aggregate(api.admin(), q).await;
    let keys: Vec<&Value> = column(b["groups"].as_array().expect("groups"), "field:cases");
    assert_eq!(keys, [&json!(5), &json!(6)], "the two smallest: {b}");
}

#[tokio::test]
async fn sum_over_a_group_without_numbers_is_null_like_the_other_measures() {
    let api = view_api().await;
    // d8 holds c (cases 5) and d (cases "n/a"); d alone has no numeric cases.
    let q = json!({"datasets": BOTH, "where": ["id=d"], "aggregates": ["count", "sum:cases", "avg:cases"]});
    let b = api.aggregate(api.admin(), q).await;
    assert_eq!(
        b["groups"],
        json!([{"count": 1, "sum:cases": null, "avg:cases": null}]),
        "{b}"
    );
}

#[tokio::test]
async fn equal_numbers_fall_in_one_group() {
    let api = Api::new().await;
    api.publish(json!([
        {"id": "p", "name": "a", "time": 1, "data": {"v": 1}},
        {"id": "q", "name": "a", "time": 2, "data": {"v": 1.0}},
    ]))
    .await;
    let q = json!({"datasets": ["hospital/flu"], "where": ["v=1"], "select": ["id"]});
    assert_eq!(api.rows(api.admin(), q).await.len(), 2, "both equal 1");
    let q = json!({"datasets": ["hospital/flu"], "group_by": ["field:v"], "aggregates": ["count"]});
    let b = api.aggregate(api.admin(), q).await;
    let groups = b["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 1, "{b}");
    assert_eq!(groups[0]["count"], 2, "{b}");
}

#[tokio::test]
async fn malformed_view_queries_are_400_naming_the_part_at_fault() {
    let api = view_api().await;
    let many =
        |n: usize, f: &dyn Fn(usize) -> String| Value::from((0..n).map(f).collect::<Vec<_>>());
    let agg = |mut q: Value| {
        q["aggregates"] = json!(["count"]);
        q
    };
    let ds = || json!({"datasets": BOTH});
    let with = |k: &str, v: Value| {
        let mut q = ds();
        q[k] = v;
        q
    };
    #[rustfmt::skip]
    let cases: Vec<(Value, &str)> = vec![
        (json!({"datasets": []}), "datasets: "),
        (json!({"datasets": many(65, &|i| format!("hospital/d{i}"))}), "datasets: "),
        (json!({"datasets": ["hospital/flu", "nope"]}), "datasets[1]: "),
        (json!({"datasets": ["Hospital/flu"]}), "datasets[0]: "),
        (with("where", json!(["cases>=1", "oops"])), "where[1]: "),
        (with("where", json!(["=3"])), "where[0]: "),
        (with("where", json!(["kind in 3"])), "where[0]: "),
        (with("where", many(33, &|i| format!("f{i}=1"))), "where: "),
        (with("segments", json!(["0=d7", "x=3"])), "segments[1]: "),
        (with("segments", json!(["16=a"])), "segments[0]: "),
        (with("segments", json!(["0=a/b"])), "segments[0]: "),
        (with("segments", json!(["0="])), "segments[0]: "),
        (with("name_prefix", json!("a/../b")), "name_prefix: "),
        (with("limit", json!(0)), "limit: "),
        (with("limit", json!(1_000_001)), "limit: "),
        (with("limit", json!(10_001)), "limit: "),
        (with("order_by", json!("-")), "order_by: "),
        (with("order_by", json!("a..b")), "order_by: "),
        (with("select", json!(["id", ""])), "select: "),
        (with("select", many(65, &|i| format!("f{i}"))), "select: "),
        (with("group_by", json!(["segment:0"])), "group_by: "),
        (with("federated", json!(true)), "federated: "),
        (with("timeout_ms", json!(0)), "timeout_ms: "),
        (agg(with("group_by", json!(["segment:x"]))), "group_by[0]: "),
        (agg(with("group_by", json!(["segment:0", "bucket:1y"]))), "group_by[1]: "),
        (agg(with("group_by", json!(["bucket:0s"]))), "group_by[0]: "),
        (agg(with("group_by", json!(["bucket:367d"]))), "group_by[0]: "),
        (agg(with("group_by", json!(["field:"]))), "group_by[0]: "),
        (agg(with("group_by", json!(["segment:16"]))), "group_by[0]: "),
        (agg(with("group_by", json!(["colour"]))), "group_by[0]: "),
        (agg(with("group_by", many(5, &|i| format!("segment:{i}")))), "group_by: "),
        (with("aggregates", json!(["count", "median:cases"])), "aggregates[1]: "),
        (with("aggregates", json!(["sum"])), "aggregates[0]: "),
        (with("aggregates", json!(["avg:"])), "aggregates[0]: "),
        (with("aggregates", many(17, &|_| "count".into())), "aggregates: "),
        (agg(with("select", json!(["id"]))), "select: "),
        (agg(with("order_by", json!("-count"))), "order_by: "),
        (agg(with("limit", json!(0))), "limit: "),
        (agg(with("limit", json!(100_001))), "limit: "),
        (agg(with("timeout_ms", json!(60_001))), "timeout_ms: "),
        (agg(json!({"datasets": BOTH, "federated": true, "timeout_ms": 0})), "timeout_ms: "),
        // The query is checked before the datasets: a malformed query on a missing one is 400.
        (json!({"datasets": ["hospital/none"], "limit": 0}), "limit: "),
    ];
    for (body, part) in cases {
        let (s, b) = api.view(api.admin(), body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {b}");
        assert_eq!(b["error"]["code"], "bad_request", "{b}");
        let msg = b["error"]["message"].as_str().expect("message");
        assert!(
            msg.starts_with(part),
            "{body}: message {msg:?} does not start with {part:?}"
        );
        assert!(msg.len() > part.len() + 3, "{body}: says why: {msg:?}");
    }
    // Bodies of the wrong shape.
    #[rustfmt::skip]
    let shapes = [
        (json!({"datasets": BOTH, "colour": 1}), "unknown field `colour`"),
        (json!({"datasets": "hospital/flu"}), "datasets"),
        (json!({"datasets": BOTH, "limit": -1}), "limit"),
        (json!({"select": ["id"]}), "missing field `datasets`"),
    ];
    for (body, needle) in shapes {
        assert_error(api.view(api.admin(), body).await, 400, needle);
    }
    let got = api
        .call(Method::POST, QUERY, Some(api.admin()), "{\"datasets\": [")
        .await;
    assert_error(got, 400, "JSON");
}

#[tokio::test]
async fn view_queries_need_rights_on_every_dataset() {
    let api = view_api().await;
    let flu_reader = api.app("flu-reader", &["read:hospital/flu"]).await;
    let beds_writer = api
        .app("beds-writer", &["read:hospital/flu", "write:hospital/beds"])
        .await;
    let rows = json!({"datasets": BOTH, "select": ["id"]});
    let counts = json!({"datasets": BOTH, "aggregates": ["count"]});

    // Its own dataset answers; one it holds no right on is hidden (404), even after one it may
    // read, for rows and aggregates alike.
    let only_flu = json!({"datasets": ["hospital/flu"], "select": ["id"]});
    assert_eq!(api.rows(&flu_reader, only_flu).await.len(), 5);
    for q in [&rows, &counts] {
        let got = api.view(&flu_reader, q.clone()).await;
        assert_error(got, 404, "dataset hospital/beds not found");
    }
    // A right on the dataset, but not to read it: 403.
    let got = api.view(&beds_writer, rows.clone()).await;
    assert_error(got, 403, "no read right on hospital/beds");
    let got = api.view(&beds_writer, counts.clone()).await;
    assert_error(got, 403, "hospital/beds");
    // A dataset the node does not hold is 404, whoever asks.
    let missing = json!({"datasets": ["hospital/flu", "hospital/none"]});
    let got = api.view(api.admin(), missing).await;
    assert_error(got, 404, "dataset hospital/none not found");
    // Another organization's dataset this node does not hold.
    let foreign = json!({"datasets": ["pharmacy/stock"], "aggregates": ["count"]});
    assert_error(api.view(api.admin(), foreign).await, 404, "pharmacy/stock");
    // No token.
    let got = api.call(Method::POST, QUERY, None, &rows.to_string()).await;
    assert_error(got, 401, "bearer token");
}

#[tokio::test]
async fn a_query_only_app_gets_aggregates_without_small_groups_and_no_rows() {
    let api = Api::two_datasets().await;
    // d1: 6 rows, d2: 5 rows (exactly the minimum), d3: 4 rows, d4: 1 row.
    let recs: Vec<Value> = [("d1", 6), ("d2", 5), ("d3", 4), ("d4", 1)]
        .iter()
        .flat_map(|(seg, n)| {
            (0..*n).map(move |i| {
                json!({"id": format!("{seg}-{i}"), "name": format!("{seg}/w{i}"),
                    "time": 1_000 + i, "data": {"cases": i}})
            })
        })
        .collect();
    api.publish_to("flu", Value::from(recs)).await;
    let beds: Vec<Value> = (0..3)
        .map(|i| json!({"id": format!("b{i}"), "name": "d3/beds", "time": 5_000, "data": {"cases": 1}}))
        .collect();
    api.publish_to("beds", Value::from(beds)).await;

    let counter = api.app("counter", &["query:hospital/flu"]).await;
    let q = json!({"datasets": ["hospital/flu"], "group_by": ["segment:0"],
        "aggregates": ["count", "sum:cases"]});
    let b = api.aggregate(&counter, q.clone()).await;
    assert_same(
        &b,
        &json!({
            "groups": [
                {"segment:0": "d1", "count": 6, "sum:cases": 15},
                {"segment:0": "d2", "count": 5, "sum:cases": 10},
            ],
            "sources": [{"dataset": "hospital/flu", "owner": "hospital", "status": "local"}],
        }),
    );
    // The admin (a reader) sees every group, nothing suppressed.
    let b = api.aggregate(api.admin(), q.clone()).await;
    assert_eq!(b["groups"].as_array().map(Vec::len), Some(4), "{b}");
    // A filter that leaves every group small: nothing disclosed.
    let mut small = q.clone();
    small["where"] = json!(["cases>=4"]);
    let b = api.aggregate(&counter, small).await;
    assert_eq!(b["groups"], json!([]), "{b}");
    assert!(b["sources"][0].get("suppressed_groups").is_none(), "{b}");
    // One group over everything is large enough.
    let b = api
        .aggregate(
            &counter,
            json!({"datasets": ["hospital/flu"], "aggregates": ["count"]}),
        )
        .await;
    assert_eq!(b["groups"], json!([{"count": 16}]), "{b}");
    // Picking out records by id or name would let two aggregates differ by one record.
    for w in ["id=x", "name=d1/a"] {
        let q = json!({"datasets": ["hospital/flu"], "where": [w], "aggregates": ["count"]});
        let got = api.view(&counter, q).await;
        assert_error(got, 403, "does not allow filtering on id or name");
    }

    // Rows need the read right: 403, in JSON and NDJSON alike.
    let got = api
        .view(
            &counter,
            json!({"datasets": ["hospital/flu"], "select": ["id"]}),
        )
        .await;
    assert_error(got, 403, "no read right on hospital/flu");
    let got = api.get(RECORDS, &counter).await;
    assert_error(got, 403, "no read right on hospital/flu");

    // Query on one dataset and read on the other: suppression applies to the first only.
    let mixed = api
        .app("mixed", &["query:hospital/flu", "read:hospital/beds"])
        .await;
    let q = json!({"datasets": BOTH, "group_by": ["segment:0"], "aggregates": ["count"]});
    let b = api.aggregate(&mixed, q).await;
    assert_eq!(
        b,
        json!({
            "groups": [
                {"segment:0": "d1", "count": 6},
                {"segment:0": "d2", "count": 5},
                // flu's 4 rows of d3 are suppressed before merging; beds' 3 are not.
                {"segment:0": "d3", "count": 3},
            ],
            "sources": [
                {"dataset": "hospital/flu", "owner": "hospital", "status": "local"},
                {"dataset": "hospital/beds", "owner": "hospital", "status": "local"},
            ],
        })
    );
}

#[tokio::test]
async fn a_query_only_app_respects_a_configured_min_group_size() {
    let config = Config {
        min_group_size: 2,
        ..config(Config::default().max_body_bytes)
    };
    let t = common::test_node_with(config, SEED).await;
    let (closing, rx) = watch::channel(false);
    let router = fogmesh::api::router(t.node.clone(), rx);
    let api = Api { t, router, closing };
    let (s, b) = api
        .post("/v1/datasets", api.admin(), json!({"name": "flu"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    api.publish(sample()).await;
    let counter = api.app("counter", &["query:hospital/*"]).await;
    let q =
        json!({"datasets": ["hospital/flu"], "group_by": ["segment:0"], "aggregates": ["count"]});
    let b = api.aggregate(&counter, q).await;
    assert_eq!(b["groups"], json!([{"segment:0": "d7", "count": 2}]), "{b}");
    assert!(b["sources"][0].get("suppressed_groups").is_none(), "{b}");
}

#[tokio::test]
async fn federated_queries_and_searches_are_503_without_the_mesh() {
    let api = view_api().await;
    let q = json!({"datasets": BOTH, "group_by": ["segment:0"], "aggregates": ["count"],
        "federated": true});
    let got = api.view(api.admin(), q).await;
    assert_error(got, 503, "the mesh is not running on this node");
    // Rows are never federated: a 400 before the mesh is looked for.
    let rows = json!({"datasets": BOTH, "federated": true});
    assert_error(api.view(api.admin(), rows).await, 400, "federated: ");
    // The same aggregate, not federated, is computed here.
    let local = json!({"datasets": BOTH, "aggregates": ["count"]});
    assert_eq!(
        api.aggregate(api.admin(), local).await["groups"],
        json!([{"count": 8}])
    );

    let reader = api.app("finder", &["read:hospital/flu"]).await;
    for token in [api.admin(), reader.as_str()] {
        for spec in [
            json!({"dataset": "sightings"}),
            json!({"dataset": "sightings", "targets": ["clinic"], "location_segment": 1,
                "filter": {"name_prefix": "d7", "segments": ["1=park"], "since": 1,
                    "until": 2, "where": ["coat=red"]}, "limit": 10, "timeout_ms": 1000}),
        ] {
            let got = api.post(SEARCH, token, spec).await;
            assert_error(got, 503, "the mesh is not running on this node");
        }
    }
    // A body of the wrong shape is a 400 first; no token a 401.
    for (bad, needle) in [
        (
            json!({"dataset": "sightings", "colour": 1}),
            "unknown field `colour`",
        ),
        (
            json!({"dataset": "sightings", "filter": {"colour": 1}}),
            "unknown field `colour`",
        ),
        (json!({"targets": ["clinic"]}), "missing field `dataset`"),
    ] {
        assert_error(api.post(SEARCH, api.admin(), bad).await, 400, needle);
    }
    let spec = json!({"dataset": "sightings"}).to_string();
    let got = api.call(Method::POST, SEARCH, None, &spec).await;
    assert_error(got, 401, "bearer token");
}
