//! An app that embeds a fogmesh node in-process instead of talking to one over HTTP.
//!
//! ```text
//! cargo run --example embedded
//! ```
//!
//! It creates a node home in a temporary directory, creates a shared dataset, registers an app
//! that may only read it, publishes two write batches as the admin (the second updates a record
//! field by field), queries with a predicate as the app, shows that the app may not write, and
//! reopens the node to show that every acknowledged record survived.

use anyhow::{ensure, Result};
use fogmesh::apps::Right;
use fogmesh::config::{self, Config};
use fogmesh::dataset::{Priority, Retention, Spec, Visibility};
use fogmesh::node::{home, Batch};
use fogmesh::record::Input;
use fogmesh::view::query::{Predicate, Query};
use fogmesh::Node;
use serde_json::json;

fn input(id: &str, name: &str, data: serde_json::Value) -> Input {
    Input {
        id: Some(id.into()),
        name: name.into(),
        data,
        time: None,
    }
}

async fn open(dir: &std::path::Path) -> Result<Node> {
    let cfg = Config::load(&dir.join(config::FILE))?;
    Ok(Node::open_home(dir, cfg)?)
}

#[tokio::main]
async fn main() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = Config {
        org: "hospital".into(),
        mesh: "flu-response".into(),
        ..Config::default()
    };
    let created = home::init(dir.path(), cfg).await?;
    println!("node {} in {}", created.peer_id, dir.path().display());

    let node = open(dir.path()).await?;
    let admin = node.authenticate(&home::admin_token(dir.path())?)?;
    let spec = Spec {
        name: "flu-cases".into(),
        visibility: Visibility::Shared,
        priority: Priority::High,
        retention: Retention::default(),
        schema: Some(json!({ "cases": "integer", "symptom": "string" })),
        readers: vec!["agency".into()],
        encrypted: None,
    };
    let ds = node.create_dataset(&admin, spec).await?.id;
    let app = node
        .add_app(
            &admin,
            "dashboard",
            vec![Right::parse("read:hospital/flu-cases")?],
        )
        .await?;
    println!(
        "dataset {ds}; app {} (token shown once: {}…)",
        app.app.name,
        &app.token[..8]
    );

    let first = Batch {
        records: vec![
            input(
                "w3",
                "district-7/ward-3",
                json!({ "cases": 3, "symptom": "fever" }),
            ),
            input(
                "w4",
                "district-7/ward-4",
                json!({ "cases": 8, "symptom": "cough" }),
            ),
        ],
        delete: vec![],
    };
    node.publish(&admin, &ds, first).await?;
    let update = Batch {
        records: vec![input("w3", "district-7/ward-3", json!({ "cases": 5 }))],
        delete: vec![],
    };
    node.publish(&admin, &ds, update).await?;

    let reader = node.authenticate(&app.token)?;
    let query = Query {
        predicates: vec![Predicate::parse("cases>=5")?],
        ..Query::default()
    };
    for r in node.query(&reader, &ds, &query)? {
        println!("{} {} {}", r.id, r.name, serde_json::Value::Object(r.data));
    }
    let denied = node.publish(&reader, &ds, Batch::default()).await;
    println!(
        "the dashboard may not write: {}",
        denied.expect_err("read-only")
    );

    node.shutdown().await?;
    drop((node, admin, reader));
    let node = open(dir.path()).await?;
    let admin = node.authenticate(&home::admin_token(dir.path())?)?;
    let all = node.query(&admin, &ds, &Query::default())?;
    ensure!(all.len() == 2, "after reopening: {} records", all.len());
    let w3 = node.get(&admin, &ds, "w3")?;
    ensure!(
        w3.data["symptom"] == "fever" && w3.data["cases"] == 5,
        "merge: {w3:?}"
    );
    println!(
        "reopened: {} records; w3 kept symptom and took the new count",
        all.len()
    );
    Ok(())
}
