//! The life of app and admin tokens over the HTTP API: a rotated or removed token is refused at
//! the next request, an open event stream of a rotated, removed or re-righted app ends within
//! [`END_WAIT`] with no event to carry the news, rights changes apply at once, and the admin token
//! rotates with the home's token file.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::common::next_event;
use crate::http::{assert_error, request, Api, FLU, RECORDS};

/// How soon an event stream must end once its app's access is gone.
const END_WAIT: Duration = Duration::from_secs(2);

impl Api {
    /// Opens `GET {dataset}/events` with `token` and returns the stream's body.
    async fn open_events(&self, dataset: &str, token: &str) -> Body {
        let path = format!("{dataset}/events");
        let req = request(Method::GET, &path, Some(token), Body::empty());
        let resp = self.router.clone().oneshot(req).await.expect("infallible");
        assert_eq!(resp.status(), StatusCode::OK, "GET {path}");
        resp.into_body()
    }

    /// Proves `body` is live: publishes a record and waits for its event.
    async fn assert_live(&self, body: &mut Body, dataset: &str) {
        let record = json!({"records": [{"name": "d1/live", "data": {"n": 1}}]});
        let path = format!("{dataset}/records");
        let (s, b) = self.post(&path, self.admin(), record).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let id = b["ids"][0].as_str().expect("id").to_owned();
        next_event(body, "upsert", &id).await;
    }

    async fn put(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(token), &body.to_string())
            .await
    }

    /// Rotates app `name`'s token as admin; returns the answer.
    async fn rotate(&self, name: &str) -> Value {
        let path = format!("/v1/apps/{name}/rotate");
        let (s, b) = self.post(&path, self.admin(), json!({})).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        b
    }

    /// The app `name` as `GET /v1/apps` lists it, if listed.
    async fn listed(&self, name: &str) -> Option<Value> {
        let (s, b) = self.get("/v1/apps", self.admin()).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let apps = b["apps"].as_array().expect("apps").clone();
        apps.into_iter().find(|a| a["name"] == name)
    }
}

/// Asserts that the stream ends (no more frames) within [`END_WAIT`], with no event sent to end it.
async fn assert_ends(body: &mut Body, why: &str) {
    let end = async {
        loop {
            match body.frame().await {
                None => return,
                Some(Ok(frame)) => {
                    // Keep-alive comments may come; an event may not.
                    let text = frame
                        .data_ref()
                        .map(|b| String::from_utf8_lossy(b).into_owned());
                    let text = text.unwrap_or_default();
                    assert!(
                        !text.contains("event:"),
                        "{why}: an event after the end: {text}"
                    );
                }
                Some(Err(e)) => panic!("{why}: the stream failed: {e}"),
            }
        }
    };
    let ended = tokio::time::timeout(END_WAIT, end).await;
    assert!(
        ended.is_ok(),
        "{why}: the stream is still open after {END_WAIT:?}"
    );
}

#[tokio::test]
async fn a_rotated_token_is_401_at_once_and_the_new_one_works() {
    let api = Api::new().await;
    let old = api.app("reader", &["read:hospital/flu"]).await;
    let before = api.listed("reader").await.expect("listed");
    let (s, _) = api.get(RECORDS, &old).await;
    assert_eq!(s, StatusCode::OK);

    let b = api.rotate("reader").await;
    let new = b["token"].as_str().expect("token").to_owned();
    assert_ne!(new, old);
    assert_eq!(
        (&b["name"], &b["rights"]),
        (&json!("reader"), &json!(["read:hospital/flu"]))
    );
    assert_error(api.get(RECORDS, &old).await, 401, "bearer token");
    let (s, b) = api.get(RECORDS, &new).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let after = api.listed("reader").await.expect("still listed");
    assert_ne!(
        after["token_id"], before["token_id"],
        "the listing tells the tokens apart"
    );
    assert_eq!(after["created"], before["created"], "the same app");
}

#[tokio::test]
async fn a_removed_app_is_401_and_its_name_can_be_registered_again() {
    let api = Api::new().await;
    let old = api.app("reader", &["read:hospital/flu"]).await;
    let (s, b) = api.delete("/v1/apps/reader", api.admin()).await;
    assert_eq!((s, &b), (StatusCode::OK, &json!({"removed": "reader"})));
    assert_error(api.get(RECORDS, &old).await, 401, "bearer token");
    assert!(api.listed("reader").await.is_none());

    let again = api.app("reader", &[]).await;
    assert_error(api.get(RECORDS, &old).await, 401, "bearer token");
    let (s, b) = api.get("/v1/datasets", &again).await;
    assert_eq!(
        (s, &b["datasets"]),
        (StatusCode::OK, &json!([])),
        "no rights: {b}"
    );
}

#[tokio::test]
async fn an_open_event_stream_ends_at_once_when_its_token_is_rotated() {
    let api = Api::new().await;
    let token = api.app("watcher", &["read:hospital/flu"]).await;
    let mut body = api.open_events(FLU, &token).await;
    api.assert_live(&mut body, FLU).await;
    let new = api.rotate("watcher").await["token"]
        .as_str()
        .map(str::to_owned);
    assert_ends(&mut body, "after rotation").await;
    // The new token opens a stream that lives.
    let mut body = api.open_events(FLU, new.as_deref().expect("token")).await;
    api.assert_live(&mut body, FLU).await;
}

#[tokio::test]
async fn an_open_event_stream_ends_at_once_when_its_app_is_removed() {
    let api = Api::new().await;
    let token = api.app("watcher", &["read:hospital/flu"]).await;
    let mut body = api.open_events(FLU, &token).await;
    api.assert_live(&mut body, FLU).await;
    let (s, b) = api.delete("/v1/apps/watcher", api.admin()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_ends(&mut body, "after removal").await;
}

#[tokio::test]
async fn a_rights_change_applies_at_once_and_ends_only_the_streams_it_no_longer_covers() {
    let api = Api::new().await;
    let (s, b) = api
        .post("/v1/datasets", api.admin(), json!({"name": "beds"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let beds = "/v1/datasets/hospital/beds";
    let token = api
        .app("watcher", &["read:hospital/flu", "read:hospital/beds"])
        .await;
    let bystander = api.app("bystander", &["read:hospital/flu"]).await;
    let mut flu = api.open_events(FLU, &token).await;
    let mut kept = api.open_events(beds, &token).await;
    let mut other = api.open_events(FLU, &bystander).await;
    api.assert_live(&mut flu, FLU).await;

    let now = json!(["read:hospital/beds", "write:hospital/flu"]);
    let rights = json!({ "rights": now });
    let (s, b) = api
        .put("/v1/apps/watcher/rights", api.admin(), rights)
        .await;
    assert_eq!((s, &b["rights"]), (StatusCode::OK, &now), "{b}");
    assert_ends(&mut flu, "after losing read on hospital/flu").await;
    // The stream the new rights still cover, and another app's, live on.
    api.assert_live(&mut kept, beds).await;
    api.assert_live(&mut other, FLU).await;

    let got = api.get(RECORDS, &token).await;
    assert_error(got, 403, "no read right on hospital/flu");
    let write = json!({"records": [{"name": "d2", "data": {"cases": 1}}]});
    let (s, b) = api.post(RECORDS, &token, write).await;
    assert_eq!(s, StatusCode::OK, "the new write right works: {b}");
    assert_eq!(api.listed("watcher").await.expect("listed")["rights"], now);
}

#[tokio::test]
async fn revoking_a_grant_ends_the_grantees_open_stream_at_once() {
    let api = Api::new().await;
    api.shared_beds().await;
    let beds = "/v1/datasets/hospital/beds";
    let token = api.app("reader", &[]).await;
    let req = json!({"dataset": "hospital/beds", "to": "hospital/reader", "rights": ["read"]});
    let (s, grant) = api.post("/v1/grants", api.admin(), req).await;
    assert_eq!(s, StatusCode::CREATED, "{grant}");
    let mut body = api.open_events(beds, &token).await;
    api.assert_live(&mut body, beds).await;
    let id = grant["id"].as_str().expect("grant id");
    let (s, b) = api.delete(&format!("/v1/grants/{id}"), api.admin()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_ends(&mut body, "after the grant's revocation").await;
}

#[tokio::test]
async fn the_admin_token_rotates_and_the_homes_token_file_follows() {
    let api = Api::new().await;
    let old = api.admin().to_owned();
    let mut body = api.open_events(FLU, &old).await;
    let (s, b) = api.post("/v1/admin/rotate-token", &old, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let new = b["token"].as_str().expect("token").to_owned();
    assert_eq!((&b["name"], &b["admin"]), (&json!("admin"), &json!(true)));
    assert_error(api.get("/v1/node", &old).await, 401, "bearer token");
    let (s, _) = api.get("/v1/apps", &new).await;
    assert_eq!(s, StatusCode::OK, "the new admin token works");
    assert_ends(&mut body, "the old admin token's stream").await;
    // A request authenticated just before the rotation cannot rotate the new token away.
    let stale = api.t.node.rotate_admin_token(&api.t.admin).await;
    assert!(
        matches!(stale, Err(fogmesh::Error::Unauthorized)),
        "{stale:?}"
    );

    let home = api.t.dir.path();
    let file = home.join(fogmesh::node::home::ADMIN_TOKEN_FILE);
    let canonical = std::fs::canonicalize(&file).expect("canonical path");
    assert_eq!(b["token_file"], json!(canonical.display().to_string()));
    assert_eq!(
        fogmesh::node::home::admin_token(home).expect("token file"),
        new
    );
    assert!(!home
        .join(fogmesh::node::home::STAGED_ADMIN_TOKEN_FILE)
        .exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[tokio::test]
async fn app_changes_refuse_the_admin_app_unknown_apps_bad_rights_and_non_admins() {
    let api = Api::new().await;
    let app = api.app("planner", &["read:hospital/flu"]).await;
    let admin = api.admin();
    let got = api.post("/v1/apps/admin/rotate", admin, json!({})).await;
    // Well formed, but the admin app cannot take them: conflicts (409), not bad requests.
    assert_error(got, 409, "fogmesh admin rotate-token");
    assert_error(
        api.delete("/v1/apps/admin", admin).await,
        409,
        "cannot be removed",
    );
    let rights = json!({"rights": ["read:*"]});
    let got = api
        .put("/v1/apps/admin/rights", admin, rights.clone())
        .await;
    assert_error(got, 409, "rights cannot be changed");
    let (s, _) = api.get("/v1/node", admin).await;
    assert_eq!(s, StatusCode::OK, "the admin token still works");

    assert_error(
        api.delete("/v1/apps/nobody", admin).await,
        404,
        "app nobody not found",
    );
    let got = api.post("/v1/apps/nobody/rotate", admin, json!({})).await;
    assert_error(got, 404, "app nobody not found");
    let got = api
        .put("/v1/apps/nobody/rights", admin, rights.clone())
        .await;
    assert_error(got, 404, "app nobody not found");
    assert_error(api.delete("/v1/apps/No-Such", admin).await, 400, "app name");

    let bad = json!({"rights": ["read:hospital/flu", "erase:hospital/flu"]});
    let got = api.put("/v1/apps/planner/rights", admin, bad).await;
    assert_error(got, 400, "\"erase:hospital/flu\"");
    let too_many = json!({"rights": vec!["read:*"; fogmesh::apps::MAX_RIGHTS + 1]});
    let got = api.put("/v1/apps/planner/rights", admin, too_many).await;
    assert_error(got, 400, "at most 256 rights");
    assert_eq!(
        api.listed("planner").await.expect("listed")["rights"],
        json!(["read:hospital/flu"]),
        "refused changes change nothing"
    );

    let needs = "needs the admin token";
    assert_error(api.delete("/v1/apps/planner", &app).await, 403, needs);
    let got = api.post("/v1/apps/planner/rotate", &app, json!({})).await;
    assert_error(got, 403, needs);
    let got = api.put("/v1/apps/planner/rights", &app, rights).await;
    assert_error(got, 403, needs);
    let got = api.post("/v1/admin/rotate-token", &app, json!({})).await;
    assert_error(got, 403, needs);
    let (s, _) = api.get(RECORDS, &app).await;
    assert_eq!(s, StatusCode::OK, "the app's own token still works");
}
