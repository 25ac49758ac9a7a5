//! Governed membership between in-process nodes on loopback: only admins invite, remove and
//! change roles; a removed organization is disconnected, refused and cut off from everything
//! written after its removal, by every owner on its own.

use std::time::{Duration, Instant};

use fogmesh::mesh::govern::Role;
use fogmesh::naming::DatasetId;
use fogmesh::node::Batch;
use fogmesh::record::Input;
use fogmesh::view::plan::ViewQuery;
use fogmesh::Error;
use serde_json::json;

use crate::mesh::{shared, spawn_mesh, view, wait_for, Member};

/// The bound: the removed organization is disconnected this soon after its removal.
const DISCONNECT_WITHIN: Duration = Duration::from_secs(10);
/// A string no record holds except those written after the removal.
const MARKER: &str = "after-removal-7f3c9e";

fn marked(from: usize, n: usize) -> Batch {
    Batch {
        records: (from..from + n)
            .map(|i| Input {
                id: Some(format!("late-{i}")),
                name: format!("district-{}/late", i % 7),
                data: json!({ "cases": i, "note": MARKER }),
                time: None,
            })
            .collect(),
        delete: vec![],
    }
}

fn removed_on(m: &Member, org: &str) -> bool {
    m.mesh
        .members()
        .iter()
        .any(|l| l.org == org && l.state == "removed")
}

async fn connected(m: &Member, other: &Member) -> bool {
    let Ok(peers) = m.mesh.peers().await else {
        return false;
    };
    let id = other
        .node
        .identity()
        .peer_id()
        .expect("peer id")
        .to_string();
    peers.iter().any(|p| p.net.peer == id && p.net.up)
}

/// Readable by `m` (its key in use) and holding `n` records.
async fn holds(m: &Member, ds: &DatasetId, n: usize) {
    wait_for(
        &format!("{} holds {n} records of {ds}", m.org),
        || async move { view(m, ds).len() == n },
    )
    .await;
}

fn files_contain(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p)
                .map(|b| b.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
            {
                hits.push(p.display().to_string());
            }
        }
    }
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_admins_invite_remove_and_change_roles() {
    let nodes = spawn_mesh(3).await;
    let (h, p) = (&nodes[0], &nodes[1]);
    let ttl = Duration::from_secs(60);
    let refused = p.mesh.invite(ttl).await;
    assert!(
        matches!(&refused, Err(Error::Forbidden(m)) if m.contains("admins: hospital")),
        "{refused:?}"
    );
    assert!(matches!(
        p.mesh.remove_member("drugmaker").await,
        Err(Error::Forbidden(_))
    ));
    assert!(matches!(
        h.mesh.remove_member("hospital").await,
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        h.mesh.remove_member("nobody").await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        h.mesh.set_role("pharmacy", Role::Member).await,
        Err(Error::Conflict(_))
    ));
    h.mesh
        .set_role("pharmacy", Role::Admin)
        .await
        .expect("promote");
    wait_for("the pharmacy learns it is an admin", || async move {
        p.mesh.invite(ttl).await.is_ok()
    })
    .await;
    p.mesh
        .remove_member("drugmaker")
        .await
        .expect("an admin removes");
    assert!(matches!(
        p.mesh.remove_member("drugmaker").await,
        Err(Error::Conflict(_))
    ));
    for m in &nodes[..2] {
        wait_for(
            "the removal reaches every remaining member",
            || async move { removed_on(m, "drugmaker") },
        )
        .await;
    }
    let lists: Vec<_> = nodes[..2].iter().map(|m| m.mesh.members()).collect();
    assert_eq!(lists[0], lists[1], "identical rosters");
    let roles: Vec<_> = lists[0]
        .iter()
        .map(|l| (l.org.as_str(), l.role, l.state))
        .collect();
    assert_eq!(
        roles,
        [
            ("drugmaker", Role::Member, "removed"),
            ("hospital", Role::Admin, "active"),
            ("pharmacy", Role::Admin, "active"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_member_is_cut_off_and_gets_nothing_written_after_its_removal() {
    let nodes = spawn_mesh(5).await;
    let (h, p, a, ins) = (&nodes[0], &nodes[1], &nodes[3], &nodes[4]);
    // Two owners: the admin that removes, and an owner that learns of the removal from others.
    let flu = shared(h, "flu", &["pharmacy", "insurer"]).await;
    let notes = shared(a, "notes", &["pharmacy", "insurer"]).await;
    for (owner, ds) in [(h, &flu), (a, &notes)] {
        owner
            .node
            .publish(&owner.admin, ds, crate::mesh::batch(owner.org, 0, 5))
            .await
            .expect("publish");
    }
    for ds in [&flu, &notes] {
        holds(ins, ds, 5).await;
        holds(p, ds, 5).await;
    }

    let t0 = Instant::now();
    h.mesh.remove_member("insurer").await.expect("remove");
    wait_for("every member disconnects the insurer", || async {
        for m in &nodes[..4] {
            if connected(m, ins).await || connected(ins, m).await {
                return false;
            }
        }
        true
    })
    .await;
    let took = t0.elapsed();
    eprintln!("the insurer was disconnected by every member {took:?} after its removal");
    assert!(took < DISCONNECT_WITHIN, "disconnected after {took:?}");

    // The agency revokes on its own once it learns of the removal: a new epoch without it.
    wait_for("the agency learns of the removal", || async move {
        removed_on(a, "insurer")
    })
    .await;
    wait_for("the agency revoked the insurer's grant", || async move {
        a.node.grants(&a.admin).expect("grants").iter().any(|g| {
            g.grant.grantee.org == "insurer" && g.grant.rights.is_empty() && g.grant.epoch > 1
        })
    })
    .await;
    for (owner, ds) in [(h, &flu), (a, &notes)] {
        for b in 0..5 {
            owner
                .node
                .publish(&owner.admin, ds, marked(b * 100, 100))
                .await
                .expect("publish after the removal");
        }
    }
    // Replication goes on for the others...
    for ds in [&flu, &notes] {
        holds(p, ds, 505).await;
    }
    // ... and reaches nothing of the insurer: not readable, not on its disk.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for ds in [&flu, &notes] {
        let late = view(ins, ds)
            .iter()
            .filter(|(id, _)| id.starts_with("late-"))
            .count();
        assert_eq!(
            late, 0,
            "{ds}: records written after the removal reached the insurer"
        );
    }
    let hits = files_contain(ins.dir.path(), MARKER.as_bytes());
    assert!(hits.is_empty(), "plaintext on the insurer's disk: {hits:?}");

    // What it asks is refused: a federated aggregate over the hospital's dataset gets no answer
    // from the hospital (the insurer is refused at connection), and the refusals are counted.
    let q = ViewQuery {
        datasets: vec![flu.to_string()],
        aggregates: vec!["count".into()],
        federated: true,
        ..ViewQuery::default()
    };
    let plan = q.plan().expect("valid");
    let answer = ins.mesh.federated(&ins.admin, &plan).await;
    let answered = answer
        .as_ref()
        .map(|a| a.sources.iter().any(|s| s.status == "answered"))
        .unwrap_or(false);
    assert!(
        !answered,
        "the hospital answered a removed member: {answer:?}"
    );
    wait_for(
        "the insurer's attempts are refused and counted",
        || async move {
            h.node
                .metrics()
                .render()
                .lines()
                .any(|l| l.starts_with("fogmesh_removed_member_refusals_total{org=\"insurer\"}"))
        },
    )
    .await;
}
