//! The OpenAPI contract against the router: the document is served, lists exactly the routes the
//! router serves, declares authentication as the handlers enforce it, and describes the statuses
//! and bodies they answer.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::common;

/// Every (method, path) the router in `fogmesh::api::router` serves. Keep in step with it. (The
/// dashboard's page and files, `api::dashboard`, are HTML for a browser, not API operations: they
/// are not in the document.)
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/node"),
    ("GET", "/v1/datasets"),
    ("POST", "/v1/datasets"),
    ("GET", "/v1/datasets/{owner}/{name}"),
    ("GET", "/v1/datasets/{owner}/{name}/records"),
    ("POST", "/v1/datasets/{owner}/{name}/records"),
    ("GET", "/v1/datasets/{owner}/{name}/records/{id}"),
    ("DELETE", "/v1/datasets/{owner}/{name}/records/{id}"),
    ("GET", "/v1/datasets/{owner}/{name}/events"),
    ("POST", "/v1/query"),
    ("POST", "/v1/search"),
    ("POST", "/v1/sql"),
    ("GET", "/v1/flows"),
    ("POST", "/v1/flows"),
    ("DELETE", "/v1/flows/{name}"),
    ("GET", "/v1/apps"),
    ("POST", "/v1/apps"),
    ("DELETE", "/v1/apps/{name}"),
    ("POST", "/v1/apps/{name}/rotate"),
    ("PUT", "/v1/apps/{name}/rights"),
    ("POST", "/v1/admin/rotate-token"),
    ("GET", "/v1/grants"),
    ("POST", "/v1/grants"),
    ("DELETE", "/v1/grants/{id}"),
    ("GET", "/v1/peers"),
    ("GET", "/v1/mesh"),
    ("POST", "/v1/invites"),
    ("POST", "/v1/join"),
    ("GET", "/v1/members"),
    ("DELETE", "/v1/members/{org}"),
    ("POST", "/v1/members/{org}/role"),
    ("POST", "/v1/key/rotate"),
    ("GET", "/v1/audit"),
    ("GET", "/v1/audit/verify"),
    ("GET", "/v1/audit/events"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/metrics"),
];

/// Methods an OpenAPI path item may hold operations for.
const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

struct Api {
    router: Router,
    token: String,
    // Keeps the node's directory and the closing channel alive for the test's length.
    _node: common::TestNode,
    _closing: tokio::sync::watch::Sender<bool>,
}

async fn api() -> Api {
    let node = common::test_node("hospital", 1).await;
    let (tx, rx) = tokio::sync::watch::channel(false);
    Api {
        router: fogmesh::api::router(node.node.clone(), rx),
        token: node.admin_token.clone(),
        _node: node,
        _closing: tx,
    }
}

/// Sends one request; the body is read only when `read_body` (an event stream never ends).
async fn send_raw(
    router: &Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<&Value>,
    read_body: bool,
) -> (StatusCode, Option<String>, Value) {
    let mut req = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).expect("method"))
        .uri(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .expect("request");
    let resp = router.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if !read_body {
        return (status, content_type, Value::Null);
    }
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, content_type, value)
}

async fn send(
    router: &Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let (status, _, value) = send_raw(router, method, uri, token, body, true).await;
    (status, value)
}

async fn document(router: &Router) -> Value {
    let (status, ct, doc) = send_raw(router, "GET", "/v1/openapi.json", None, None, true).await;
    assert_eq!(status, StatusCode::OK, "GET /v1/openapi.json: {doc}");
    assert_eq!(ct.as_deref(), Some("application/json"));
    assert!(doc.is_object(), "the document is not a JSON object: {doc}");
    doc
}

/// The (METHOD, path) pairs the document lists, sorted.
fn documented(doc: &Value) -> Vec<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths is an object");
    let mut out = Vec::new();
    for (path, item) in paths {
        for m in METHODS {
            if item.get(*m).is_some() {
                out.push((m.to_uppercase(), path.clone()));
            }
        }
    }
    out.sort();
    out
}

fn concrete(path: &str) -> String {
    path.replace("{owner}", "hospital")
        .replace("{name}", "x")
        .replace("{id}", "y")
}

/// True for the router's fallback answer (as opposed to a handler's 404 for a missing thing).
fn is_fallback(status: StatusCode, body: &Value) -> bool {
    status == StatusCode::NOT_FOUND
        && body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("no such endpoint"))
}

/// Follows `$ref`s within the document.
fn resolve<'a>(doc: &'a Value, mut v: &'a Value) -> &'a Value {
    while let Some(r) = v.get("$ref").and_then(Value::as_str) {
        let pointer = r.strip_prefix('#').expect("local $ref");
        v = doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("$ref {r} does not resolve"));
    }
    v
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_u64() || v.is_i64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => true,
    }
}

/// A small JSON Schema check: `$ref`, `allOf`, `oneOf`, `type`, `enum`, `const`, `required`,
/// `properties`, `additionalProperties: false` and `items`. Problems go into `errs`.
fn check(doc: &Value, schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            check(doc, s, v, at, errs);
        }
    }
    if let Some(one) = schema.get("oneOf").and_then(Value::as_array) {
        let mut misfits = Vec::new();
        let fitting = one
            .iter()
            .filter(|s| {
                let mut e = Vec::new();
                check(doc, s, v, at, &mut e);
                misfits.extend(e.iter().cloned());
                e.is_empty()
            })
            .count();
        if fitting != 1 {
            errs.push(format!(
                "{at}: fits {fitting} of the {} oneOf schemas: {misfits:?}",
                one.len()
            ));
        }
    }
    match schema.get("type") {
        Some(Value::String(t)) if !type_ok(t, v) => errs.push(format!("{at}: not a {t}: {v}")),
        Some(Value::Array(ts)) if !ts.iter().filter_map(Value::as_str).any(|t| type_ok(t, v)) => {
            errs.push(format!("{at}: none of the types {ts:?}: {v}"))
        }
        _ => {}
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            errs.push(format!("{at}: {v} not in {e:?}"));
        }
    }
    if let Some(c) = schema.get("const") {
        if c != v {
            errs.push(format!("{at}: {v} is not {c}"));
        }
    }
    if let Some(obj) = v.as_object() {
        for key in schema["required"].as_array().into_iter().flatten() {
            let key = key.as_str().expect("required names are strings");
            if !obj.contains_key(key) {
                errs.push(format!("{at}: missing required {key:?}"));
            }
        }
        let props = schema.get("properties").and_then(Value::as_object);
        for (k, child) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(s) => check(doc, s, child, &format!("{at}.{k}"), errs),
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    errs.push(format!("{at}: unexpected property {k:?}"))
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, child) in arr.iter().enumerate() {
            check(doc, items, child, &format!("{at}[{i}]"), errs);
        }
    }
}

/// Asserts that `status` is documented for the operation and `body` fits its JSON schema.
fn conforms(doc: &Value, method: &str, path: &str, status: StatusCode, body: &Value) {
    let op = &doc["paths"][path][method.to_lowercase()];
    assert!(op.is_object(), "{method} {path} is not documented");
    let code = status.as_str();
    let resp = op["responses"]
        .get(code)
        .unwrap_or_else(|| panic!("{method} {path} answered {code}, undocumented: {body}"));
    let resp = resolve(doc, resp);
    let schema = &resp["content"]["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "{method} {path} {code}: no JSON schema documented"
    );
    let mut errs = Vec::new();
    check(doc, schema, body, "$", &mut errs);
    assert!(
        errs.is_empty(),
        "{method} {path} {code} does not fit its schema: {errs:#?}\nbody: {body}"
    );
}

#[tokio::test]
async fn the_document_is_served_without_a_token() {
    let api = api().await;
    let doc = document(&api.router).await;
    let version = doc["openapi"].as_str().expect("openapi is a string");
    assert!(version.starts_with("3.1"), "openapi is {version}");
    let file: Value = serde_json::from_str(include_str!("../../src/api/openapi.json"))
        .expect("src/api/openapi.json is valid JSON");
    assert_eq!(doc, file, "the router serves src/api/openapi.json");
}

#[tokio::test]
async fn the_document_lists_exactly_the_routes_the_router_serves() {
    let api = api().await;
    let doc = document(&api.router).await;
    let mut expected: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    expected.sort();
    assert_eq!(documented(&doc), expected, "paths in the document");

    // The probe can tell the fallback from a handler.
    let (status, body) = send(&api.router, "GET", "/v1/nope", Some(&api.token), None).await;
    assert!(is_fallback(status, &body), "{status} {body}");
    let (status, body) = send(
        &api.router,
        "GET",
        "/v1/datasets/hospital/x",
        Some(&api.token),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    assert!(!is_fallback(status, &body), "{body}");

    let paths = doc["paths"].as_object().expect("paths");
    // Probing the admin token's rotation rotates it: later probes use the new one.
    let mut token = api.token.clone();
    for (path, item) in paths {
        let uri = concrete(path);
        for m in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let listed = item.get(m.to_lowercase()).is_some();
            // An event stream never ends: read the body only when it is not one.
            let stream = path.ends_with("/events");
            let (status, _, body) =
                send_raw(&api.router, m, &uri, Some(&token), None, !stream).await;
            if let Some(t) = body["token"]
                .as_str()
                .filter(|_| path == "/v1/admin/rotate-token")
            {
                token = t.to_owned();
            }
            assert_ne!(status, StatusCode::UNAUTHORIZED, "{m} {path}: {body}");
            if listed {
                assert!(
                    !is_fallback(status, &body) && status != StatusCode::METHOD_NOT_ALLOWED,
                    "{m} {path} is documented but the router does not serve it: {status} {body}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{m} {path} is served ({status}) but not documented"
                );
            }
        }
    }
}

#[tokio::test]
async fn authentication_is_as_documented() {
    let api = api().await;
    let doc = document(&api.router).await;
    let global = doc["security"].as_array().expect("global security");
    assert!(
        global.iter().any(|s| s.get("bearerAuth").is_some()),
        "bearer auth is the default"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearerAuth"]["scheme"],
        "bearer"
    );
    for (method, path) in documented(&doc) {
        let op = &doc["paths"][&path][method.to_lowercase()];
        let open = op["security"].as_array().is_some_and(Vec::is_empty);
        let uri = concrete(&path);
        for token in [None, Some("fm_not-a-token")] {
            let (status, body) = send(&api.router, &method, &uri, token, None).await;
            if open {
                assert_ne!(status, StatusCode::UNAUTHORIZED, "{method} {path} is open");
            } else {
                assert_eq!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{method} {path} with {token:?}: {body}"
                );
                conforms(&doc, &method, &path, status, &body);
                assert_eq!(body["error"]["code"], "unauthorized");
            }
        }
    }
}

#[tokio::test]
async fn answers_fit_the_documented_statuses_and_schemas() {
    let api = api().await;
    let doc = document(&api.router).await;
    let r = &api.router;
    let admin = Some(api.token.as_str());
    let ds = "/v1/datasets/{owner}/{name}";
    let records = "/v1/datasets/{owner}/{name}/records";
    let record = "/v1/datasets/{owner}/{name}/records/{id}";

    let (s, b) = send(r, "GET", "/v1/node", admin, None).await;
    assert_eq!(s, StatusCode::OK);
    conforms(&doc, "GET", "/v1/node", s, &b);

    let spec = json!({"name": "flu", "visibility": "shared", "readers": ["pharmacy"]});
    let (s, b) = send(r, "POST", "/v1/datasets", admin, Some(&spec)).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    conforms(&doc, "POST", "/v1/datasets", s, &b);
    let (s, b) = send(r, "POST", "/v1/datasets", admin, Some(&spec)).await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    conforms(&doc, "POST", "/v1/datasets", s, &b);
    let bad = json!({"name": "flu2", "readers": ["pharmacy"]});
    let (s, b) = send(r, "POST", "/v1/datasets", admin, Some(&bad)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    conforms(&doc, "POST", "/v1/datasets", s, &b);
    let (s, b) = send(r, "POST", "/v1/datasets", admin, None).await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{b}");
    conforms(&doc, "POST", "/v1/datasets", s, &b);

    let (s, b) = send(r, "GET", "/v1/datasets", admin, None).await;
    assert_eq!(s, StatusCode::OK);
    conforms(&doc, "GET", "/v1/datasets", s, &b);
    assert_eq!(b["datasets"].as_array().map(Vec::len), Some(1));
    let (s, b) = send(r, "GET", "/v1/datasets/hospital/flu", admin, None).await;
    assert_eq!(s, StatusCode::OK);
    conforms(&doc, "GET", ds, s, &b);
    let (s, b) = send(r, "GET", "/v1/datasets/Hospital/flu", admin, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    conforms(&doc, "GET", ds, s, &b);

    let batch = json!({"records": [
        {"name": "d7/ward-3", "data": {"cases": 3, "sym": "fever"}},
        {"id": "bed-12", "name": "d7/ward-3/beds", "data": {"free": 1}, "time": 1_700_000_000_000u64}
    ]});
    let uri = "/v1/datasets/hospital/flu/records";
    let (s, b) = send(r, "POST", uri, admin, Some(&batch)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    conforms(&doc, "POST", records, s, &b);
    assert_eq!(b["ids"].as_array().map(Vec::len), Some(2));
    let (s, b) = send(r, "POST", uri, admin, Some(&json!({"records": []}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    conforms(&doc, "POST", records, s, &b);
    let (s, b) = send(r, "POST", uri, admin, Some(&json!({"delete": ["nope"]}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    conforms(&doc, "POST", records, s, &b);
    let missing = "/v1/datasets/hospital/none/records";
    let (s, b) = send(r, "POST", missing, admin, Some(&batch)).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    conforms(&doc, "POST", records, s, &b);

    let q =
        format!("{uri}?where=cases%3E%3D1&where=sym%20in%20%5B%22fever%22%5D&limit=5&order=desc");
    let (s, b) = send(r, "GET", &q, admin, None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    conforms(&doc, "GET", records, s, &b);
    assert_eq!(b["count"], 1);
    for bad in [
        "bogus=1",
        "limit=0",
        "limit=10001",
        "order=up",
        "where=cases",
    ] {
        let (s, b) = send(r, "GET", &format!("{uri}?{bad}"), admin, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {b}");
        conforms(&doc, "GET", records, s, &b);
    }

    let one = "/v1/datasets/hospital/flu/records/bed-12";
    let (s, b) = send(r, "GET", one, admin, None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    conforms(&doc, "GET", record, s, &b);

    let events = "/v1/datasets/hospital/flu/events";
    let (s, ct, _) = send_raw(r, "GET", events, admin, None, false).await;
    assert_eq!(s, StatusCode::OK);
    let ct = ct.expect("content type");
    let documented_ct = doc["paths"]["/v1/datasets/{owner}/{name}/events"]["get"]["responses"]
        ["200"]["content"]
        .as_object()
        .expect("content");
    assert!(
        documented_ct.keys().any(|k| ct.starts_with(k.as_str())),
        "events answer {ct}, documented {documented_ct:?}"
    );

    let (s, b) = send(r, "GET", "/metrics", admin, None).await;
    assert_eq!(s, StatusCode::OK, "{b}");

    // A non-admin app with read rights only.
    let new = json!({"name": "planner", "rights": ["read:hospital/flu"]});
    let (s, b) = send(r, "POST", "/v1/apps", admin, Some(&new)).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    conforms(&doc, "POST", "/v1/apps", s, &b);
    let planner = b["token"].as_str().expect("token").to_owned();
    let (s, b) = send(r, "POST", "/v1/apps", admin, Some(&new)).await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    conforms(&doc, "POST", "/v1/apps", s, &b);
    let bad = json!({"name": "x", "rights": ["delete:a/b"]});
    let (s, b) = send(r, "POST", "/v1/apps", admin, Some(&bad)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    conforms(&doc, "POST", "/v1/apps", s, &b);
    let (s, b) = send(r, "GET", "/v1/apps", admin, None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    conforms(&doc, "GET", "/v1/apps", s, &b);

    let planner = Some(planner.as_str());
    let (s, b) = send(r, "GET", "/v1/apps", planner, None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    conforms(&doc, "GET", "/v1/apps", s, &b);
    let (s, b) = send(r, "POST", "/v1/apps", planner, Some(&json!({"name": "y"}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    conforms(&doc, "POST", "/v1/apps", s, &b);
    let (s, b) = send(
        r,
        "POST",
        "/v1/datasets",
        planner,
        Some(&json!({"name": "z"})),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    conforms(&doc, "POST", "/v1/datasets", s, &b);
    let (s, b) = send(r, "POST", uri, planner, Some(&batch)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    conforms(&doc, "POST", records, s, &b);
    let (s, b) = send(r, "DELETE", one, planner, None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    conforms(&doc, "DELETE", record, s, &b);
    let (s, b) = send(r, "GET", "/v1/datasets", planner, None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    conforms(&doc, "GET", "/v1/datasets", s, &b);

    // Grants: issue, list, revoke, and their errors.
    let grants = "/v1/grants";
    let grant = "/v1/grants/{id}";
    let req = json!({"dataset": "hospital/flu", "to": "pharmacy/restock", "rights": ["read", "query"],
        "prefix": "d7", "expires": "30d"});
    let (s, b) = send(r, "POST", grants, admin, Some(&req)).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    conforms(&doc, "POST", grants, s, &b);
    let id = b["id"].as_str().expect("grant id").to_owned();
    let (s, b) = send(r, "GET", grants, admin, None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    conforms(&doc, "GET", grants, s, &b);
    assert_eq!(b["grants"].as_array().map(Vec::len), Some(2), "{b}");
    for bad in [
        json!({"dataset": "hospital/flu", "to": "pharmacy", "rights": ["read"]}),
        json!({"dataset": "hospital/flu", "to": "pharmacy/*", "rights": []}),
        json!({"dataset": "hospital/flu", "to": "pharmacy/*", "rights": ["delete"]}),
        json!({"dataset": "hospital/flu", "to": "pharmacy/*", "rights": ["read"], "x": 1}),
    ] {
        let (s, b) = send(r, "POST", grants, admin, Some(&bad)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {b}");
        conforms(&doc, "POST", grants, s, &b);
    }
    let missing = json!({"dataset": "hospital/none", "to": "pharmacy/*", "rights": ["read"]});
    let (s, b) = send(r, "POST", grants, admin, Some(&missing)).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    conforms(&doc, "POST", grants, s, &b);
    let (s, b) = send(r, "POST", grants, admin, None).await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{b}");
    conforms(&doc, "POST", grants, s, &b);
    let (s, b) = send(r, "POST", grants, planner, Some(&req)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    conforms(&doc, "POST", grants, s, &b);
    let (s, b) = send(r, "GET", grants, planner, None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    conforms(&doc, "GET", grants, s, &b);
    let revoke = format!("/v1/grants/{id}");
    let (s, b) = send(r, "DELETE", &revoke, planner, None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    conforms(&doc, "DELETE", grant, s, &b);
    let (s, b) = send(r, "DELETE", &revoke, admin, None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    conforms(&doc, "DELETE", grant, s, &b);
    let tomb = b["revocation"]["id"]
        .as_str()
        .expect("revocation id")
        .to_owned();
    let (s, b) = send(r, "DELETE", &format!("/v1/grants/{tomb}"), admin, None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    conforms(&doc, "DELETE", grant, s, &b);
    let (s, b) = send(r, "DELETE", "/v1/grants/nope", admin, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    conforms(&doc, "DELETE", grant, s, &b);
    let (s, b) = send(r, "GET", grants, admin, None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    conforms(&doc, "GET", grants, s, &b);
    let states: Vec<&Value> = b["grants"]
        .as_array()
        .expect("grants")
        .iter()
        .map(|g| &g["state"])
        .collect();
    assert!(states.contains(&&json!("revoked")), "{b}");

    let (s, b) = send(r, "DELETE", one, admin, None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    conforms(&doc, "DELETE", record, s, &b);
    let (s, b) = send(r, "GET", one, admin, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    conforms(&doc, "GET", record, s, &b);
    let (s, b) = send(r, "DELETE", one, admin, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    conforms(&doc, "DELETE", record, s, &b);
}

/// One request of a table-driven test: method, concrete path, documented path, token, body, and
/// the status it must answer.
type Case<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    Option<Value>,
    StatusCode,
);

/// Sends each case, asserts its status and that the answer fits the document; returns the bodies.
async fn run_cases(doc: &Value, router: &Router, cases: Vec<Case<'_>>) -> Vec<Value> {
    let mut bodies = Vec::new();
    for (method, uri, documented, token, body, want) in cases {
        let (s, b) = send(router, method, uri, Some(token), body.as_ref()).await;
        assert_eq!(s, want, "{method} {uri} {body:?}: {b}");
        conforms(doc, method, documented, s, &b);
        bodies.push(b);
    }
    bodies
}

#[tokio::test]
async fn the_app_token_routes_answer_as_documented() {
    let api = api().await;
    let doc = document(&api.router).await;
    let r = &api.router;
    let admin = api.token.as_str();
    let new = json!({"name": "planner", "rights": ["read:hospital/flu"]});
    let (s, b) = send(r, "POST", "/v1/apps", Some(admin), Some(&new)).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let first = b["token"].as_str().expect("token").to_owned();

    let rotate = "/v1/apps/{name}/rotate";
    let (ok, bad, missing, forbidden) = (
        StatusCode::OK,
        StatusCode::BAD_REQUEST,
        StatusCode::NOT_FOUND,
        StatusCode::FORBIDDEN,
    );
    let rotated = run_cases(
        &doc,
        r,
        vec![
            ("POST", "/v1/apps/planner/rotate", rotate, admin, None, ok),
            (
                "POST",
                "/v1/apps/admin/rotate",
                rotate,
                admin,
                None,
                StatusCode::CONFLICT,
            ),
            (
                "POST",
                "/v1/apps/nobody/rotate",
                rotate,
                admin,
                None,
                missing,
            ),
            (
                "POST",
                "/v1/apps/planner/rotate",
                rotate,
                &first,
                None,
                StatusCode::UNAUTHORIZED,
            ),
        ],
    )
    .await;
    let planner = rotated[0]["token"].as_str().expect("token").to_owned();
    assert_ne!(planner, first);

    let (rights, one) = ("/v1/apps/{name}/rights", "/v1/apps/{name}");
    let (uri, body) = (
        "/v1/apps/planner/rights",
        json!({"rights": ["query:hospital/*"]}),
    );
    let bodies = [
        json!({"rights": ["delete:a/b"]}),
        json!({"rights": [], "x": 1}),
        json!({}),
    ];
    let mut cases: Vec<Case> = bodies
        .into_iter()
        .map(|b| ("PUT", uri, rights, admin, Some(b), bad))
        .collect();
    cases.extend([
        ("PUT", uri, rights, admin, Some(body.clone()), ok),
        (
            "PUT",
            uri,
            rights,
            admin,
            None,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "PUT",
            "/v1/apps/nobody/rights",
            rights,
            admin,
            Some(body.clone()),
            missing,
        ),
        (
            "POST",
            "/v1/apps/planner/rotate",
            rotate,
            &planner,
            None,
            forbidden,
        ),
        ("DELETE", "/v1/apps/planner", one, &planner, None, forbidden),
        ("DELETE", "/v1/apps/Planner", one, admin, None, bad),
        ("DELETE", "/v1/apps/planner", one, admin, None, ok),
        ("DELETE", "/v1/apps/planner", one, admin, None, missing),
        (
            "POST",
            "/v1/admin/rotate-token",
            "/v1/admin/rotate-token",
            admin,
            None,
            ok,
        ),
    ]);
    let answers = run_cases(&doc, r, cases).await;
    let last = answers.last().expect("answers");
    assert!(
        last["token_file"].is_string(),
        "a node with a home keeps the file: {last}"
    );
}

#[test]
fn every_reference_resolves() {
    fn walk(doc: &Value, v: &Value, errs: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                    let ok = r.strip_prefix('#').and_then(|p| doc.pointer(p)).is_some();
                    if !ok {
                        errs.push(r.to_owned());
                    }
                }
                m.values().for_each(|c| walk(doc, c, errs));
            }
            Value::Array(a) => a.iter().for_each(|c| walk(doc, c, errs)),
            _ => {}
        }
    }
    let doc: Value =
        serde_json::from_str(include_str!("../../src/api/openapi.json")).expect("valid JSON");
    let mut errs = Vec::new();
    walk(&doc, &doc, &mut errs);
    assert!(errs.is_empty(), "unresolved $refs: {errs:?}");
}

#[tokio::test]
async fn the_audit_endpoints_answer_as_documented() {
    let api = api().await;
    let doc = document(&api.router).await;
    let r = &api.router;
    let admin = Some(api.token.as_str());
    let (list, verify) = ("/v1/audit", "/v1/audit/verify");

    let spec = json!({"name": "flu", "visibility": "shared", "readers": ["pharmacy"]});
    let (s, b) = send(r, "POST", "/v1/datasets", admin, Some(&spec)).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let new = json!({"name": "planner", "rights": ["read:hospital/flu"]});
    let (s, b) = send(r, "POST", "/v1/apps", admin, Some(&new)).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let planner = b["token"].as_str().expect("token").to_owned();
    let planner = Some(planner.as_str());
    let batch = json!({"records": [{"name": "d7", "data": {"cases": 1}}]});
    let uri = "/v1/datasets/hospital/flu/records";
    let (s, _) = send(r, "POST", uri, planner, Some(&batch)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // dataset-create, the reader's grant, app-add, the refused write.
    let (s, b) = send(r, "GET", list, admin, None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    conforms(&doc, "GET", list, s, &b);
    let actions: Vec<&str> = b["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        ["dataset-create", "grant", "app-add", "write"],
        "{b}"
    );
    assert_eq!(b["last_seq"], 4, "{b}");
    let q = format!("{list}?outcome=refused&dataset=hospital%2Fflu&since=0&until=99999999999999&after=0&limit=5&org=hospital&action=write");
    let (s, b) = send(r, "GET", &q, admin, None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    conforms(&doc, "GET", list, s, &b);
    assert_eq!(b["entries"].as_array().map(Vec::len), Some(1), "{b}");
    for bad in ["limit=0", "action=nope", "since=x", "bogus=1"] {
        let (s, b) = send(r, "GET", &format!("{list}?{bad}"), admin, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {b}");
        conforms(&doc, "GET", list, s, &b);
    }
    let (s, b) = send(r, "GET", list, planner, None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    conforms(&doc, "GET", list, s, &b);

    let (s, b) = send(r, "GET", verify, admin, None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    conforms(&doc, "GET", verify, s, &b);
    assert_eq!(
        (b["ok"].as_bool(), b["head"].as_u64()),
        (Some(true), Some(5)),
        "{b}"
    );
    let (s, b) = send(r, "GET", verify, planner, None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    conforms(&doc, "GET", verify, s, &b);

    let events = "/v1/audit/events?after=0";
    let (s, ct, _) = send_raw(r, "GET", events, admin, None, false).await;
    assert_eq!(s, StatusCode::OK);
    assert!(ct.is_some_and(|c| c.starts_with("text/event-stream")));
    let (s, _, b) = send_raw(r, "GET", events, planner, None, true).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    conforms(&doc, "GET", "/v1/audit/events", s, &b);
}

/// Sends `body` to `uri` as the admin asking for `accept`; returns the status, content type and
/// the body as text (a stream is read to its end).
async fn send_accept(
    router: &Router,
    uri: &str,
    token: &str,
    accept: &str,
    body: &Value,
) -> (StatusCode, Option<String>, String) {
    let req = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, accept)
        .body(Body::from(body.to_string()))
        .expect("request");
    let resp = router.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        content_type,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

#[tokio::test]
async fn the_view_endpoints_answer_as_documented() {
    let api = api().await;
    let doc = document(&api.router).await;
    let r = &api.router;
    let admin = Some(api.token.as_str());
    let (query, search) = ("/v1/query", "/v1/search");

    for (name, records) in [
        (
            "flu",
            json!([
                {"id": "a", "name": "d7/ward-3", "time": 1_000, "data": {"cases": 3, "kind": "flu"}},
                {"id": "b", "name": "d7/ward-4", "time": 90_000_000, "data": {"cases": 8}},
                {"id": "c", "name": "d8", "time": 2_000, "data": {"kind": "rsv"}},
            ]),
        ),
        (
            "beds",
            json!([{"id": "x", "name": "d7/ward-3", "time": 3_000, "data": {"cases": 1, "free": 2}}]),
        ),
    ] {
        let spec = json!({ "name": name });
        let (s, b) = send(r, "POST", "/v1/datasets", admin, Some(&spec)).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        let uri = format!("/v1/datasets/hospital/{name}/records");
        let batch = json!({ "records": records });
        let (s, b) = send(r, "POST", &uri, admin, Some(&batch)).await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    let both = json!(["hospital/flu", "hospital/beds"]);

    // Rows: whole records, then selected keys.
    let q = json!({"datasets": both, "order_by": "-cases", "limit": 3});
    let (s, b) = send(r, "POST", query, admin, Some(&q)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    conforms(&doc, "POST", query, s, &b);
    assert_eq!(b["count"], 3, "{b}");
    let q =
        json!({"datasets": both, "select": ["dataset", "name", "cases"], "where": ["cases>=1"]});
    let (s, b) = send(r, "POST", query, admin, Some(&q)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    conforms(&doc, "POST", query, s, &b);
    assert_eq!(b["count"], 3, "{b}");

    // Aggregates, with and without groups.
    let measures = ["count", "sum:cases", "avg:cases", "min:cases", "max:cases"];
    let q = json!({"datasets": both, "group_by": ["segment:0", "bucket:1d", "field:kind"],
        "aggregates": measures});
    let (s, b) = send(r, "POST", query, admin, Some(&q)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    conforms(&doc, "POST", query, s, &b);
    assert_eq!(b["sources"].as_array().map(Vec::len), Some(2), "{b}");
    assert!(!b["groups"].as_array().expect("groups").is_empty(), "{b}");
    let q = json!({"datasets": both, "aggregates": measures, "since": 1_000_000_000_000u64});
    let (s, b) = send(r, "POST", query, admin, Some(&q)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    conforms(&doc, "POST", query, s, &b);
    assert_eq!(b["groups"], json!([]), "{b}");

    // Rows as NDJSON: the content type is documented, each line fits the documented row.
    let ndjson = "application/x-ndjson";
    let q = json!({"datasets": both, "limit": 20_000});
    let (s, ct, text) = send_accept(r, query, &api.token, ndjson, &q).await;
    assert_eq!(s, StatusCode::OK, "{text}");
    let ct = ct.expect("content type");
    let content = &doc["paths"][query]["post"]["responses"]["200"]["content"];
    assert!(ct.starts_with(ndjson), "{ct}");
    let item = &content[ndjson]["x-item-schema"];
    assert!(item.is_object(), "no item schema for {ndjson}: {content}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    for (i, line) in lines.iter().enumerate() {
        let row: Value = serde_json::from_str(line).expect("each line is JSON");
        let mut errs = Vec::new();
        check(&doc, item, &row, &format!("line {i}"), &mut errs);
        assert!(errs.is_empty(), "{errs:#?}");
    }
    let (s, b) = send(r, "POST", query, admin, Some(&q)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    conforms(&doc, "POST", query, s, &b);

    for bad in [
        json!({"datasets": []}),
        json!({"datasets": ["Hospital/flu"]}),
        json!({"datasets": both, "where": ["cases"]}),
        json!({"datasets": both, "aggregates": ["median:cases"]}),
        json!({"datasets": both, "colour": 1}),
        json!({"datasets": both, "federated": true}),
    ] {
        let (s, b) = send(r, "POST", query, admin, Some(&bad)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {b}");
        conforms(&doc, "POST", query, s, &b);
    }
    let (s, b) = send(r, "POST", query, admin, None).await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{b}");
    conforms(&doc, "POST", query, s, &b);
    let q = json!({"datasets": ["hospital/flu", "hospital/none"], "aggregates": ["count"]});
    let (s, b) = send(r, "POST", query, admin, Some(&q)).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    conforms(&doc, "POST", query, s, &b);

    // An app that may write but not read: the dataset is known to it, its rows are not.
    let new = json!({"name": "feeder", "rights": ["write:hospital/flu"]});
    let (s, b) = send(r, "POST", "/v1/apps", admin, Some(&new)).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let feeder = b["token"].as_str().map(str::to_owned);
    let q = json!({"datasets": ["hospital/flu"]});
    let (s, b) = send(r, "POST", query, feeder.as_deref(), Some(&q)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    conforms(&doc, "POST", query, s, &b);

    // Without the mesh: federated aggregates and searches are 503.
    let q = json!({"datasets": both, "aggregates": ["count"], "federated": true});
    let (s, b) = send(r, "POST", query, admin, Some(&q)).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
    conforms(&doc, "POST", query, s, &b);
    let spec = json!({"dataset": "sightings", "filter": {"where": ["coat=red"]}});
    let (s, b) = send(r, "POST", search, admin, Some(&spec)).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
    conforms(&doc, "POST", search, s, &b);
    let search_ct = doc["paths"][search]["post"]["responses"]["200"]["content"]
        .as_object()
        .expect("content");
    assert!(search_ct.contains_key(ndjson), "{search_ct:?}");
    for bad in [
        json!({"dataset": "sightings", "colour": 1}),
        json!({"dataset": "sightings", "filter": {"colour": 1}}),
        json!({"targets": ["clinic"]}),
    ] {
        let (s, b) = send(r, "POST", search, admin, Some(&bad)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {b}");
        conforms(&doc, "POST", search, s, &b);
    }
    let (s, b) = send(r, "POST", search, admin, None).await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{b}");
    conforms(&doc, "POST", search, s, &b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_member_routes_answer_as_documented() {
    let m = crate::mesh::member("hospital", 1).await;
    let token = fogmesh::node::home::admin_token(m.dir.path()).expect("token");
    let reader = m
        .node
        .add_app(&m.admin, "reader", vec![])
        .await
        .expect("app")
        .token;
    let (_closing, rx) = tokio::sync::watch::channel(false);
    let router = fogmesh::api::router_with(m.node.clone(), Some(m.mesh.clone()), rx);
    let doc = document(&router).await;
    let (one, role) = ("/v1/members/{org}", "/v1/members/{org}/role");
    let admin = token.as_str();
    let cases: Vec<Case<'_>> = vec![
        (
            "GET",
            "/v1/members",
            "/v1/members",
            admin,
            None,
            StatusCode::OK,
        ),
        (
            "DELETE",
            "/v1/members/nobody",
            one,
            admin,
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            "DELETE",
            "/v1/members/hospital",
            one,
            admin,
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            "DELETE",
            "/v1/members/Bad_Org",
            one,
            admin,
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            "DELETE",
            "/v1/members/nobody",
            one,
            &reader,
            None,
            StatusCode::FORBIDDEN,
        ),
        (
            "POST",
            "/v1/members/nobody/role",
            role,
            admin,
            Some(json!({"role": "admin"})),
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            "/v1/members/hospital/role",
            role,
            admin,
            Some(json!({"role": "root"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/v1/members/hospital/role",
            role,
            admin,
            Some(json!({"role": "admin"})),
            StatusCode::CONFLICT,
        ),
    ];
    let bodies = run_cases(&doc, &router, cases).await;
    let members = bodies[0]["members"].as_array().expect("members");
    assert_eq!(members.len(), 1);
    assert_eq!(
        (&members[0]["org"], &members[0]["role"]),
        (&json!("hospital"), &json!("admin"))
    );
    // Last: a rotation stops this node's signing until it restarts.
    let rotate = "/v1/key/rotate";
    let cases: Vec<Case<'_>> = vec![
        ("POST", rotate, rotate, &reader, None, StatusCode::FORBIDDEN),
        ("POST", rotate, rotate, admin, None, StatusCode::OK),
        ("POST", rotate, rotate, admin, None, StatusCode::CONFLICT),
    ];
    let bodies = run_cases(&doc, &router, cases).await;
    assert_eq!(bodies[1]["org"], "hospital");
    assert!(m.node.restart_pending(), "the node asks to be restarted");
    m.mesh.shutdown().await;
}
