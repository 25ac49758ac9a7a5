//! Helpers shared by the integration tests.
#![allow(dead_code)]

use fogmesh::apps::App;
use fogmesh::config::Config;
use fogmesh::identity::Identity;
use fogmesh::Node;

/// A node on a temporary store with a seeded identity, plus its admin app.
pub struct TestNode {
    pub node: Node,
    pub admin: App,
    pub admin_token: String,
    pub dir: tempfile::TempDir,
}

/// Opens a node for org `org` in a fresh temporary directory.
pub async fn test_node(org: &str, seed: u8) -> TestNode {
    let config = Config {
        org: org.into(),
        mesh: "test-mesh".into(),
        ..Config::default()
    };
    test_node_with(config, seed).await
}

/// Opens a node with `config` and a seeded identity in a fresh temporary directory.
pub async fn test_node_with(config: Config, seed: u8) -> TestNode {
    let dir = tempfile::tempdir().expect("tempdir");
    fogmesh::node::home::init_with(dir.path(), config.clone(), Identity::from_seed([seed; 32]))
        .await
        .expect("init");
    let admin_token = fogmesh::node::home::admin_token(dir.path()).expect("token");
    let node = Node::open_home(dir.path(), config).expect("open");
    let admin = node.authenticate(&admin_token).expect("admin");
    TestNode {
        node,
        admin,
        admin_token,
        dir,
    }
}
