//! Three organizations' nodes in one process, meshed over loopback with the public API.
//!
//! ```text
//! cargo run --example mesh
//! ```
//!
//! The hospital founds the mesh and invites the pharmacy and the public-health agency; it shares
//! a dataset of flu counts with both; each write is pushed to them as it is acknowledged. The
//! example prints how long each record took to become visible at the agency.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use fogmesh::apps::App;
use fogmesh::config::Config;
use fogmesh::dataset::{Priority, Retention, Spec, Visibility};
use fogmesh::mesh::{self, Mesh};
use fogmesh::node::{home, Batch};
use fogmesh::record::Input;
use fogmesh::view::query::Query;
use fogmesh::Node;
use serde_json::json;

struct Org {
    _dir: tempfile::TempDir,
    node: Node,
    mesh: Mesh,
    admin: App,
}

async fn start(org: &str) -> Result<Org> {
    let dir = tempfile::tempdir()?;
    let cfg = Config {
        org: org.into(),
        mesh: "flu-response".into(),
        listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
        mdns: false,
        ..Config::default()
    };
    home::init(dir.path(), cfg.clone()).await?;
    let node = Node::open_home(dir.path(), cfg.clone())?;
    let admin = node.authenticate(&home::admin_token(dir.path())?)?;
    let mesh = Mesh::start(node.clone(), mesh::net_config(&cfg)?).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while mesh.status().await?.listen.is_empty() {
        if Instant::now() > deadline {
            bail!("{org} is not listening");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(Org {
        _dir: dir,
        node,
        mesh,
        admin,
    })
}

fn count(o: &Org, ds: &fogmesh::naming::DatasetId) -> usize {
    o.node
        .query(&o.admin, ds, &Query::default())
        .map_or(0, |r| r.len())
}

#[tokio::main]
async fn main() -> Result<()> {
    let hospital = start("hospital").await?;
    let pharmacy = start("pharmacy").await?;
    let agency = start("agency").await?;
    for o in [&pharmacy, &agency] {
        let (token, _) = hospital.mesh.invite(Duration::from_secs(60)).await?;
        let roster = o.mesh.join(&token).await?;
        println!("joined: {:?}", roster.orgs());
    }
    let spec = Spec {
        name: "flu-cases".into(),
        visibility: Visibility::Shared,
        priority: Priority::High,
        retention: Retention::default(),
        schema: None,
        readers: vec!["pharmacy".into(), "agency".into()],
        encrypted: None,
    };
    let ds = hospital
        .node
        .create_dataset(&hospital.admin, spec)
        .await?
        .id;
    for day in 0..5u64 {
        let batch = Batch {
            records: vec![Input {
                id: None,
                name: format!("district-3/day-{day}"),
                data: json!({ "cases": 10 + day * 4 }),
                time: None,
            }],
            delete: vec![],
        };
        let sent = Instant::now();
        hospital.node.publish(&hospital.admin, &ds, batch).await?;
        let want = day as usize + 1;
        while count(&agency, &ds) < want {
            if sent.elapsed() > Duration::from_secs(30) {
                bail!("the agency did not receive day {day}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        println!(
            "day {day}: visible at the agency after {:.1} ms",
            sent.elapsed().as_secs_f64() * 1e3
        );
    }
    println!(
        "pharmacy holds {} records, agency {}",
        count(&pharmacy, &ds),
        count(&agency, &ds)
    );
    for p in hospital.mesh.peers().await? {
        println!(
            "hospital sees {} up={} rtt={:?} ms",
            p.org, p.net.up, p.net.rtt_ms
        );
    }
    for o in [&hospital, &pharmacy, &agency] {
        o.mesh.shutdown().await;
        o.node.shutdown().await?;
    }
    Ok(())
}
