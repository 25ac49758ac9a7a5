//! The audit log through the HTTP API: grants, revocations, app registration, a federated
//! aggregate answered for another organization and refusals between two in-process nodes, found
//! with `GET /v1/audit` and its filters; following new entries; and an entry edited on disk
//! while the node was stopped, named by `GET /v1/audit/verify`.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::sync::watch;
use tower::ServiceExt;

use crate::common::{self, next_event};
use crate::mesh::{spawn_mesh, Member};

async fn call(
    r: &Router,
    m: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(m)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json");
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
    let resp = r
        .clone()
        .oneshot(req.body(body).expect("request"))
        .await
        .expect("infallible");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn get(r: &Router, path: &str, token: &str) -> Value {
    let (s, b) = call(r, Method::GET, path, token, None).await;
    assert_eq!(s, StatusCode::OK, "GET {path}: {b}");
    b
}

async fn post(r: &Router, path: &str, token: &str, body: Value) -> Value {
    let (s, b) = call(r, Method::POST, path, token, Some(body)).await;
    assert!(s.is_success(), "POST {path}: {s} {b}");
    b
}

/// The entries `GET /v1/audit?QUERY` lists.
async fn audit(r: &Router, token: &str, query: &str) -> Vec<Value> {
    let b = get(r, &format!("/v1/audit?{query}"), token).await;
    b["entries"].as_array().cloned().expect("entries")
}

pub(crate) fn router(m: &Member) -> (Router, watch::Sender<bool>) {
    let (tx, rx) = watch::channel(false);
    (
        fogmesh::api::router_with(m.node.clone(), Some(m.mesh.clone()), rx),
        tx,
    )
}

pub(crate) fn token(m: &Member) -> String {
    fogmesh::node::home::admin_token(m.dir.path()).expect("token")
}

fn rows() -> Value {
    let rows: Vec<Value> = (0..20)
        .map(|i| json!({"name": format!("district-{}/ward-1/visit", i % 2), "data": {"cases": i}}))
        .collect();
    json!({ "records": rows })
}

fn federated() -> Value {
    json!({"datasets": ["hospital/patients"], "group_by": ["segment:0"],
           "aggregates": ["count"], "federated": true})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grants_revocations_apps_federated_answers_and_refusals_are_audited() {
    let nodes = spawn_mesh(2).await;
    let (h, p) = (&nodes[0], &nodes[1]);
    let ((hr, _hc), (pr, _pc)) = (router(h), router(p));
    let (ht, pt) = (token(h), token(p));

    post(&hr, "/v1/datasets", &ht, json!({"name": "patients"})).await;
    post(&hr, "/v1/datasets/hospital/patients/records", &ht, rows()).await;
    let analyst = post(&pr, "/v1/apps", &pt, json!({"name": "analyst"})).await;
    let analyst = analyst["token"].as_str().expect("token").to_owned();
    let req =
        json!({"dataset": "hospital/patients", "to": "pharmacy/analyst", "rights": ["query"]});
    let grant = post(&hr, "/v1/grants", &ht, req).await;
    let grant = grant["id"].as_str().expect("grant id").to_owned();
    let answered = post(&pr, "/v1/query", &analyst, federated()).await;
    assert_eq!(answered["sources"][0]["status"], "answered", "{answered}");
    let (s, b) = call(
        &hr,
        Method::DELETE,
        &format!("/v1/grants/{grant}"),
        &ht,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let refused = post(&pr, "/v1/query", &analyst, federated()).await;
    assert_eq!(refused["sources"][0]["status"], "refused", "{refused}");
    let text = crate::observe::scrape(h).await;
    for outcome in ["answered", "refused"] {
        let series = format!("fogmesh_questions_total{{kind=\"aggregate\",outcome=\"{outcome}\"}}");
        assert_eq!(crate::observe::sample(&text, &series), Some(1.0), "{text}");
    }
    let planner = post(
        &hr,
        "/v1/apps",
        &ht,
        json!({"name": "planner", "rights": ["read:hospital/patients"]}),
    )
    .await;
    let planner = planner["token"].as_str().expect("token").to_owned();
    let (s, _) = call(
        &hr,
        Method::POST,
        "/v1/datasets/hospital/patients/records",
        &planner,
        Some(rows()),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = call(&pr, Method::GET, "/v1/audit", &analyst, None).await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "only the admin reads the audit log"
    );

    // The owner's log.
    let g = audit(&hr, &ht, "action=grant&dataset=hospital%2Fpatients").await;
    assert_eq!(g.len(), 1, "{g:?}");
    assert_eq!(
        (g[0]["actor"].as_str(), g[0]["outcome"].as_str()),
        (Some("hospital/admin"), Some("ok"))
    );
    let detail = g[0]["detail"].as_str().expect("detail");
    assert!(
        detail.contains("query to pharmacy/analyst") && detail.contains(&grant),
        "{detail}"
    );
    let r = audit(&hr, &ht, "action=revoke").await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(
        r[0]["detail"].as_str().is_some_and(|d| d.contains(&grant)),
        "{r:?}"
    );
    let f = audit(&hr, &ht, "action=federated-aggregate&org=pharmacy").await;
    let outcomes: Vec<(&str, &str)> = f
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap_or("?"),
                e["outcome"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [("pharmacy/analyst", "ok"), ("pharmacy/analyst", "refused")]
    );
    assert!(
        f.iter().all(|e| e["dataset"] == "hospital/patients"),
        "{f:?}"
    );
    assert!(
        f[0]["detail"]
            .as_str()
            .is_some_and(|d| d.ends_with("2 groups")),
        "{f:?}"
    );
    assert!(
        f[1]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no query grant")),
        "{f:?}"
    );
    assert_eq!(audit(&hr, &ht, "action=write&outcome=ok").await.len(), 0);
    let w = audit(&hr, &ht, "action=write&outcome=refused").await;
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(
        (w[0]["actor"].as_str(), w[0]["outcome"].as_str()),
        (Some("hospital/planner"), Some("refused"))
    );
    assert_eq!(w[0]["dataset"], "hospital/patients");
    let admitted = audit(&hr, &ht, "action=member-admit").await;
    assert_eq!(admitted.len(), 1);
    assert_eq!(admitted[0]["actor"], "pharmacy");
    assert_eq!(audit(&hr, &ht, "action=invite").await.len(), 1);

    // The requester's log.
    let a = audit(&pr, &pt, "action=app-add").await;
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0]["actor"], "pharmacy/admin");
    assert!(a[0]["detail"]
        .as_str()
        .is_some_and(|d| d.contains("analyst")));
    let j = audit(&pr, &pt, "action=join").await;
    assert_eq!((j.len(), j[0]["actor"].as_str()), (1, Some("pharmacy")));
    let refused = audit(&pr, &pt, "action=request&org=pharmacy").await;
    assert_eq!(refused.len(), 1, "the refused GET /v1/audit: {refused:?}");
    assert_eq!(refused[0]["actor"], "pharmacy/analyst");

    time_and_limit_filters(&hr, &ht).await;
    for (r, t) in [(&hr, &ht), (&pr, &pt)] {
        let v = get(r, "/v1/audit/verify", t).await;
        assert_eq!(v["ok"], true, "{v}");
    }
}

/// `since`, `until` and `limit` pick exactly what they say from the full listing.
async fn time_and_limit_filters(r: &Router, token: &str) {
    let all = audit(r, token, "limit=10000").await;
    assert!(all.len() >= 8, "{all:?}");
    let times: Vec<u64> = all
        .iter()
        .map(|e| e["time"].as_u64().expect("time"))
        .collect();
    let mid = times[times.len() / 2];
    let since = audit(r, token, &format!("since={mid}&limit=10000")).await;
    assert_eq!(since.len(), times.iter().filter(|t| **t >= mid).count());
    let until = audit(r, token, &format!("until={mid}&limit=10000")).await;
    assert_eq!(until.len(), times.iter().filter(|t| **t < mid).count());
    let last2 = audit(r, token, "limit=2").await;
    assert_eq!(
        last2,
        all[all.len() - 2..].to_vec(),
        "the newest two, oldest first"
    );
    let (s, b) = call(r, Method::GET, "/v1/audit?action=bogus", token, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
}

/// Opens the sled store of a stopped node, waiting for its lock to be released.
fn open_raw(path: &std::path::Path) -> sled::Db {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match sled::Config::new().path(path).open() {
            Ok(db) => return db,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("store still locked: {e}"),
        }
    }
}

#[tokio::test]
async fn an_entry_edited_on_disk_fails_verification_naming_it() {
    let t = common::test_node("hospital", 61).await;
    let (closing, rx) = watch::channel(false);
    let r = fogmesh::api::router(t.node.clone(), rx);
    let token = t.admin_token.clone();
    // Followed from the start: the backlog, then what is appended meanwhile.
    let req = Request::builder()
        .uri("/v1/audit/events?after=0")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .expect("request");
    let resp = r.clone().oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut events = resp.into_body();
    post(&r, "/v1/datasets", &token, json!({"name": "flu"})).await;
    post(&r, "/v1/apps", &token, json!({"name": "dashboard"})).await;
    let req = json!({"dataset": "hospital/flu", "to": "agency/*", "rights": ["query"]});
    post(&r, "/v1/grants", &token, req).await;
    let first = next_event(&mut events, "entry", r#""seq":1,"#).await;
    assert_eq!(first["action"], "dataset-create");
    let third = next_event(&mut events, "entry", r#""seq":3,"#).await;
    assert_eq!(third["action"], "grant");
    let v = get(&r, "/v1/audit/verify", &token).await;
    assert_eq!(
        (v["ok"].as_bool(), v["entries"].as_u64()),
        (Some(true), Some(3)),
        "{v}"
    );

    // Stopped; someone changes who registered the app.
    closing.send(true).expect("open");
    drop((r, events));
    t.node.shutdown().await.expect("shutdown");
    let common::TestNode {
        node,
        dir,
        admin_token,
        ..
    } = t;
    drop(node);
    let db = open_raw(&dir.path().join(fogmesh::node::home::DATA_DIR));
    let tree = db.open_tree("audit").expect("tree");
    let mut key = vec![b'e'];
    key.extend_from_slice(&2u64.to_be_bytes());
    let mut e: Value =
        serde_json::from_slice(&tree.get(&key).expect("get").expect("entry 2")).expect("json");
    assert_eq!(e["action"], "app-add");
    e["actor"] = "hospital/someone-else".into();
    tree.insert(key, serde_json::to_vec(&e).expect("json"))
        .expect("insert");
    db.flush().expect("flush");
    drop((tree, db));

    let node =
        fogmesh::Node::open_home(dir.path(), common::test_config("hospital")).expect("reopen");
    let (_closing, rx) = watch::channel(false);
    let r = fogmesh::api::router(node, rx);
    let v = get(&r, "/v1/audit/verify", &admin_token).await;
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(
        (v["bad"]["seq"].as_u64(), v["bad"]["problem"].as_str()),
        (Some(2), Some("edited")),
        "{v}"
    );
    assert_eq!(v["entries"], 1, "entry 1 checked before the bad one: {v}");
}
