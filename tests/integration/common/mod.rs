//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::time::Duration;

use axum::body::Body;
use fogmesh::apps::App;
use fogmesh::config::Config;
use fogmesh::identity::Identity;
use fogmesh::Node;
use http_body_util::BodyExt;
use serde_json::Value;

/// A node on a temporary store with a seeded identity, plus its admin app.
pub struct TestNode {
    pub node: Node,
    pub admin: App,
    pub admin_token: String,
    pub dir: tempfile::TempDir,
}

/// Opens a node for org `org` in a fresh temporary directory.
pub async fn test_node(org: &str, seed: u8) -> TestNode {
    test_node_with(test_config(org), seed).await
}

/// The configuration [`test_node`] uses.
pub fn test_config(org: &str) -> Config {
    Config {
        org: org.into(),
        mesh: "test-mesh".into(),
        ..Config::default()
    }
}

/// Closes `t`'s node and opens its home again (as [`test_node`] made it for `org`).
pub fn reopen(t: TestNode, org: &str) -> TestNode {
    let (dir, admin_token) = close(t);
    open(dir, test_config(org), admin_token)
}

/// Shuts the node down cleanly (snapshots and flushes) and closes it; its home and admin token
/// remain, for [`open`].
pub async fn stop(t: TestNode) -> (tempfile::TempDir, String) {
    t.node.shutdown().await.expect("shutdown");
    close(t)
}

/// Closes the node as it is; its home and admin token remain.
fn close(t: TestNode) -> (tempfile::TempDir, String) {
    let TestNode {
        node,
        admin_token,
        dir,
        ..
    } = t;
    drop(node);
    (dir, admin_token)
}

/// Opens a node with `config` and a seeded identity in a fresh temporary directory.
pub async fn test_node_with(config: Config, seed: u8) -> TestNode {
    let dir = tempfile::tempdir().expect("tempdir");
    fogmesh::node::home::init_with(dir.path(), config.clone(), Identity::from_seed([seed; 32]))
        .await
        .expect("init");
    let admin_token = fogmesh::node::home::admin_token(dir.path()).expect("token");
    open(dir, config, admin_token)
}

/// Opens the node of home `dir` and authenticates its admin.
pub fn open(dir: tempfile::TempDir, config: Config, admin_token: String) -> TestNode {
    let node = Node::open_home(dir.path(), config).expect("open");
    let admin = node.authenticate(&admin_token).expect("admin");
    TestNode {
        node,
        admin,
        admin_token,
        dir,
    }
}

/// How long a streamed event may take to arrive before the test fails.
pub const EVENT_WAIT: Duration = Duration::from_secs(10);

/// Reads frames until an `event: KIND` block mentioning `needle` arrives; returns its data.
pub async fn next_event(body: &mut Body, kind: &str, needle: &str) -> Value {
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
