//! The HTTP API, driven in process through the axum router: every route's success and every error
//! status, with the JSON error body `{"error":{"code","message"}}` checked for a message that names
//! the problem.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::sync::watch;
use tower::ServiceExt;

use crate::common::{self, TestNode};
use fogmesh::config::Config;
use fogmesh::identity::Identity;
use fogmesh::Node;

const SEED: u8 = 42;
const FLU: &str = "/v1/datasets/hospital/flu";
const RECORDS: &str = "/v1/datasets/hospital/flu/records";
/// How long a streamed event may take to arrive before the test fails.
const EVENT_WAIT: Duration = Duration::from_secs(10);

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
struct Api {
    t: TestNode,
    router: Router,
    closing: watch::Sender<bool>,
}

impl Api {
    async fn new() -> Self {
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

    fn admin(&self) -> &str {
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
    async fn call(
        &self,
        m: Method,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (StatusCode, Value) {
        self.send(request(m, path, token, Body::from(body.to_owned())))
            .await
    }

    async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), "").await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(token), &body.to_string())
            .await
    }

    async fn delete(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, Some(token), "").await
    }

    /// Registers an app as admin and returns its token.
    async fn app(&self, name: &str, rights: &[&str]) -> String {
        let body = json!({ "name": name, "rights": rights });
        let (s, b) = self.post("/v1/apps", self.admin(), body).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        b["token"].as_str().expect("token").to_owned()
    }

    /// Publishes `records` to hospital/flu as admin and returns the ids.
    async fn publish(&self, records: Value) -> Vec<String> {
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

fn request(method: Method, path: &str, token: Option<&str>, body: Body) -> Request<Body> {
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
fn assert_error((s, b): (StatusCode, Value), status: u16, needle: &str) {
    let code = match status {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        409 => "conflict",
        413 => "payload_too_large",
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
    assert_error(got, 400, "a batch holds 1 to");
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
    let cases: [(&[(&str, &str)], &str); 7] = [
        (&[("where", "cases")], "no operator"),
        (&[("order", "up")], "order must be \"asc\" or \"desc\""),
        (&[("limit", "0")], "limit must be 1 to"),
        (&[("since", "5"), ("until", "1")], "since (5) is after until (1)"),
        (&[("since", "yesterday")], "since must be a non-negative integer"),
        (&[("bogus", "1")], "unknown query parameter \"bogus\""),
        (&[("name_prefix", "a/../b")], "name_prefix"),
    ];
    for (params, needle) in cases {
        let got = api.get(&query_path(params), api.admin()).await;
        assert_error(got, 400, needle);
    }
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

/// Reads frames until an `event: KIND` block mentioning `needle` arrives; returns its data.
async fn next_event(body: &mut Body, kind: &str, needle: &str) -> Value {
    let mut seen = String::new();
    let wait = async {
        loop {
            let frame = body.frame().await.expect("stream open").expect("frame");
            if let Some(bytes) = frame.data_ref() {
                seen.push_str(std::str::from_utf8(bytes).expect("utf-8"));
            }
            for block in seen.split("\n\n") {
                let is_kind = block.lines().any(|l| l == format!("event: {kind}"));
                if is_kind && block.contains(needle) {
                    let data = block.lines().filter_map(|l| l.strip_prefix("data: "));
                    let data: String = data.collect();
                    return serde_json::from_str(&data).expect("event data is JSON");
                }
            }
        }
    };
    let got = tokio::time::timeout(EVENT_WAIT, wait).await;
    got.expect("the event arrives in time")
}

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
    assert_eq!(ev, json!({"kind": "delete", "id": id}));

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
    async fn shared_beds(&self) {
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
        (json!({"dataset": "hospital/flu", "to": "pharmacy/*", "rights": ["read"]}),
            "hospital/flu is private"),
        (json!({"dataset": "hospital/flu", "to": "pharmacy/*", "rights": ["query", "write"]}),
            "only query can be granted"),
    ];
    for (body, needle) in cases {
        let got = api.post(GRANTS, api.admin(), body.clone()).await;
        assert_error(got, 400, needle);
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
    assert!(api.grants().await.is_empty());
}
