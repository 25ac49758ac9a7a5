//! Access control across a real in-process mesh: revocation rotates keys, per-app isolation,
//! write authority, blind relays that hold ciphertext only.

use std::collections::BTreeMap;

use fogmesh::access::seal::{self, Slot};
use fogmesh::access::EpochKey;
use fogmesh::apps::Action;
use fogmesh::envelope::Envelope;
use fogmesh::identity::Identity;
use fogmesh::naming::DatasetId;
use fogmesh::node::GrantRequest;
use fogmesh::view::query::Query;
use fogmesh::Error;

use crate::mesh::{batch, publish, shared, shared_spec, spawn_mesh, view, wait_for, Member};

/// Every envelope of `ds` that `m` stores, all authors.
fn stored(m: &Member, ds: &DatasetId) -> Vec<Envelope> {
    let (_, vv) = m.node.replica(ds).expect("held");
    let mut out = Vec::new();
    for (author, upto) in vv.iter() {
        let (pages, _) = m
            .node
            .envelopes_between(ds, author, (0, *upto), (usize::MAX, usize::MAX))
            .expect("stored envelopes");
        out.extend(pages.iter().map(|b| Envelope::decode(b).expect("decodes")));
    }
    out
}

/// How many of `envs` open with any of `keys`.
fn opened(envs: &[Envelope], keys: &BTreeMap<u64, EpochKey>) -> usize {
    envs.iter()
        .filter(|e| {
            keys.values().any(|k| {
                let slot = Slot {
                    dataset: &e.dataset,
                    author: &e.author,
                    seq: e.seq,
                    epoch: e.epoch,
                };
                seal::open(k, slot, &e.payload).is_ok()
            })
        })
        .count()
}

fn grant_req(ds: &DatasetId, to: &str, rights: &[Action]) -> GrantRequest {
    GrantRequest {
        dataset: ds.to_string(),
        to: to.into(),
        rights: rights.to_vec(),
        prefix: None,
        expires: None,
    }
}

/// Waits until `m` holds `n` envelopes of `ds` durably (those it serves and [`stored`] reads:
/// its version vector counts them as soon as they apply, before the flush).
async fn wait_envelopes(m: &Member, ds: &DatasetId, n: usize) {
    wait_for(
        &format!("{} holds {n} envelopes of {ds}", m.org),
        || async move { stored(m, ds).len() >= n },
    )
    .await;
}

async fn wait_records(m: &Member, ds: &DatasetId, n: usize) {
    wait_for(
        &format!("{} reads {n} records of {ds}", m.org),
        || async move { view(m, ds).len() == n },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_organization_reads_nothing_written_after_its_revocation() {
    let nodes = spawn_mesh(4).await;
    let (hospital, pharmacy, agency) = (&nodes[0], &nodes[1], &nodes[3]);
    let ds = shared(hospital, "flu-daily", &["pharmacy", "agency"]).await;
    publish(hospital, &ds, batch("before", 0, 100)).await;
    wait_records(pharmacy, &ds, 100).await;

    let grants = hospital.node.grants(&hospital.admin).expect("grants");
    let g = grants
        .iter()
        .find(|g| g.grant.grantee.org == "pharmacy")
        .expect("pharmacy's grant");
    let revocation = hospital
        .node
        .revoke(&hospital.admin, &g.grant.id)
        .await
        .expect("revoke");
    assert_eq!(revocation.epoch, 2, "the revocation starts epoch 2");

    for i in 0..10 {
        publish(hospital, &ds, batch("after", 1000 + i * 100, 100)).await;
    }
    wait_records(agency, &ds, 1100).await;
    // The pharmacy still relays: it holds all 11 envelopes, as ciphertext for the last ten.
    wait_envelopes(pharmacy, &ds, 11).await;
    assert_eq!(
        view(pharmacy, &ds).len(),
        100,
        "API: nothing new is readable"
    );

    // From the pharmacy's own stored grants and keys: not one envelope after the revocation opens.
    let keys = pharmacy.node.stored_keys(&ds).expect("stored keys");
    assert_eq!(keys.keys().copied().collect::<Vec<_>>(), vec![1]);
    let envs = stored(pharmacy, &ds);
    let (after, before): (Vec<_>, Vec<_>) = envs.into_iter().partition(|e| e.epoch >= 2);
    assert_eq!(
        after.len(),
        10,
        "ten envelopes written after the revocation are held"
    );
    let records_after: usize = 1000;
    assert_eq!(
        opened(&after, &keys),
        0,
        "of {records_after} records' envelopes"
    );
    assert_eq!(
        opened(&before, &keys),
        1,
        "control: the earlier envelope opens"
    );
    // The agency, still granted, opens all of them with its stored keys.
    let agency_keys = agency.node.stored_keys(&ds).expect("agency keys");
    assert_eq!(opened(&after, &agency_keys), 10);
    for m in &nodes {
        m.mesh.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_two_apps_only_the_granted_one_reads_queries_and_subscribes() {
    let nodes = spawn_mesh(2).await;
    let (hospital, pharmacy) = (&nodes[0], &nodes[1]);
    let ds = shared(hospital, "flu-daily", &[]).await;
    let g = grant_req(&ds, "pharmacy/restock", &[Action::Read, Action::Query]);
    hospital
        .node
        .grant(&hospital.admin, g)
        .await
        .expect("grant");
    let restock = pharmacy
        .node
        .add_app(&pharmacy.admin, "restock", vec![])
        .await
        .expect("app")
        .app;
    let other = pharmacy
        .node
        .add_app(&pharmacy.admin, "other", vec![])
        .await
        .expect("app")
        .app;
    wait_for("the dataset and its key reach the pharmacy", || async {
        pharmacy.node.stored_keys(&ds).is_ok_and(|k| !k.is_empty())
    })
    .await;
    let mut live = pharmacy.node.subscribe(&restock, &ds).expect("subscribe");
    publish(hospital, &ds, batch("x", 0, 50)).await;
    let q = Query::default();
    wait_for("restock reads 50", || async {
        pharmacy
            .node
            .query(&restock, &ds, &q)
            .is_ok_and(|r| r.len() == 50)
    })
    .await;
    live.recv()
        .await
        .expect("restock's stream carries the records");

    let forbidden = |r: Result<(), Error>| matches!(r, Err(Error::Forbidden(_)));
    assert!(forbidden(pharmacy.node.query(&other, &ds, &q).map(drop)));
    assert!(forbidden(pharmacy.node.get(&other, &ds, "x-1").map(drop)));
    assert!(forbidden(pharmacy.node.subscribe(&other, &ds).map(drop)));
    assert!(!pharmacy
        .node
        .datasets(&other)
        .iter()
        .any(|d| d.meta.id == ds));
    // Reading is not writing.
    assert!(forbidden(
        pharmacy
            .node
            .publish(&restock, &ds, batch("y", 0, 1))
            .await
            .map(drop)
    ));
    for m in &nodes {
        m.mesh.shutdown().await;
    }
}

/// A well-formed, sealed, validly signed envelope by the pharmacy, which may read but not write.
fn forged(pharmacy: &Member, ds: &DatasetId) -> Envelope {
    let id = Identity::from_seed(pharmacy.seed);
    assert_eq!(id.author(), pharmacy.node.identity().author());
    let mut doc =
        automerge::AutoCommit::new().with_actor(automerge::ActorId::from(id.author().as_bytes()));
    use automerge::transaction::Transactable;
    doc.put(automerge::ROOT, "forged", "by a reader")
        .expect("put");
    let change = doc
        .get_last_local_change()
        .expect("change")
        .raw_bytes()
        .to_vec();
    let keys = pharmacy.node.stored_keys(ds).expect("keys");
    let (epoch, key) = keys.last_key_value().expect("a key");
    let author = id.author();
    let slot = Slot {
        dataset: ds,
        author: &author,
        seq: 1,
        epoch: *epoch,
    };
    let hlc = fogmesh::hlc::wall_millis() << 16;
    Envelope::seal(
        &id,
        ds.clone(),
        1,
        *epoch,
        hlc,
        fogmesh::envelope::GENESIS,
        seal::seal(key, slot, &change),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_envelope_forged_by_a_non_writer_is_rejected_by_every_node() {
    let nodes = spawn_mesh(3).await;
    let (hospital, pharmacy) = (&nodes[0], &nodes[1]);
    let ds = shared(hospital, "flu-daily", &["pharmacy", "drugmaker"]).await;
    publish(hospital, &ds, batch("h", 0, 5)).await;
    for m in &nodes {
        wait_records(m, &ds, 5).await;
    }
    let env = forged(pharmacy, &ds);
    for m in &nodes {
        let new = m.node.apply_envelopes(&ds, vec![env.clone()]).await;
        assert_eq!(
            new.expect("refusal is not an error"),
            0,
            "{} took it",
            m.org
        );
        let metrics = m.node.metrics().render();
        assert!(
            metrics.contains("fogmesh_envelopes_rejected_total{dataset=\"hospital/flu-daily\"} 1"),
            "{} did not count it:\n{metrics}",
            m.org
        );
        assert_eq!(view(m, &ds).len(), 5);
    }
    // Control: once the owner grants write, the same envelope is accepted.
    let g = grant_req(&ds, "pharmacy/*", &[Action::Read, Action::Write]);
    hospital
        .node
        .grant(&hospital.admin, g)
        .await
        .expect("grant");
    let new = hospital.node.apply_envelopes(&ds, vec![env]).await;
    assert_eq!(new.expect("accepted"), 1);
    for m in &nodes {
        m.mesh.shutdown().await;
    }
}

/// Every file under `dir`, read whole, contains `needle`?
fn files_contain(dir: &std::path::Path, needle: &[u8]) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            stack.extend(
                std::fs::read_dir(&p)
                    .expect("dir")
                    .map(|e| e.expect("entry").path()),
            );
        } else if std::fs::read(&p)
            .expect("file")
            .windows(needle.len())
            .any(|w| w == needle)
        {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_without_a_grant_holds_ciphertext_it_cannot_read() {
    let nodes = spawn_mesh(3).await;
    let (hospital, pharmacy, relay) = (&nodes[0], &nodes[1], &nodes[2]);
    let sealed = shared(hospital, "sealed", &["pharmacy"]).await;
    let mut clear_spec = shared_spec("clear", &["pharmacy"]);
    clear_spec.encrypted = Some(false);
    let clear = hospital
        .node
        .create_dataset(&hospital.admin, clear_spec)
        .await
        .expect("create")
        .id;
    let marker = "MARKER-4f1c9e2ab7d03";
    let secret = "SECRET-8d2e7a1c44b90";
    let rec = |ds: &str, word: &str| fogmesh::node::Batch {
        records: vec![fogmesh::record::Input {
            id: None,
            name: format!("ward-1/{ds}"),
            data: serde_json::json!({ "note": word }),
            time: None,
        }],
        delete: vec![],
    };
    publish(hospital, &sealed, rec("sealed", marker)).await;
    publish(hospital, &clear, rec("clear", secret)).await;
    wait_records(pharmacy, &sealed, 1).await;
    wait_envelopes(relay, &sealed, 1).await;
    wait_envelopes(relay, &clear, 1).await;
    assert!(relay.node.stored_keys(&sealed).expect("state").is_empty());
    assert!(view(relay, &sealed).is_empty(), "the relay reads nothing");
    for m in &nodes {
        m.mesh.shutdown().await;
        m.node.shutdown().await.expect("flush");
    }
    let data = relay.dir.path().join(fogmesh::node::home::DATA_DIR);
    assert!(
        files_contain(&data, secret.as_bytes()),
        "control: a clear dataset's text is visible in the relay's files"
    );
    assert!(
        !files_contain(&data, marker.as_bytes()),
        "the sealed marker appears in the relay's store files"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_grant_is_revoked_by_the_owner_and_the_key_rotates() {
    let nodes = spawn_mesh(2).await;
    let (hospital, pharmacy) = (&nodes[0], &nodes[1]);
    let ds = shared(hospital, "flu-daily", &[]).await;
    publish(hospital, &ds, batch("x", 0, 3)).await;
    let restock = pharmacy
        .node
        .add_app(&pharmacy.admin, "restock", vec![])
        .await
        .expect("app")
        .app;
    let mut g = grant_req(&ds, "pharmacy/restock", &[Action::Read]);
    g.expires = Some("3s".into());
    let granted = hospital
        .node
        .grant(&hospital.admin, g)
        .await
        .expect("grant");
    let expiry = std::time::Instant::now() + std::time::Duration::from_millis(3_100);
    let q = Query::default();
    wait_for("restock reads the records", || async {
        pharmacy
            .node
            .query(&restock, &ds, &q)
            .is_ok_and(|r| r.len() == 3)
    })
    .await;
    assert_eq!(hospital.node.expire_grants().await.expect("sweep"), 0);
    tokio::time::sleep_until(expiry.into()).await;
    // Refused at once by its own node, before the owner's sweep.
    assert!(matches!(
        pharmacy.node.query(&restock, &ds, &q),
        Err(Error::Forbidden(_))
    ));
    assert_eq!(hospital.node.expire_grants().await.expect("sweep"), 1);
    let listed = hospital.node.grants(&hospital.admin).expect("list");
    let now = listed
        .iter()
        .find(|v| v.grant.grantee == granted.grantee)
        .expect("listed");
    assert_eq!((now.state, now.grant.epoch), ("revoked", 2));
    assert_eq!(hospital.node.expire_grants().await.expect("sweep"), 0);
    for m in &nodes {
        m.mesh.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prefix_limited_grant_confines_reads_and_writes_and_a_revoked_app_stream_ends() {
    let nodes = spawn_mesh(2).await;
    let (hospital, pharmacy) = (&nodes[0], &nodes[1]);
    let ds = shared(hospital, "beds", &[]).await;
    // Another app of the pharmacy keeps a grant, so its node keeps receiving the keys.
    let other = grant_req(&ds, "pharmacy/other", &[Action::Read]);
    hospital
        .node
        .grant(&hospital.admin, other)
        .await
        .expect("grant");
    let rec = |id: &str, name: &str| fogmesh::node::Batch {
        records: vec![fogmesh::record::Input {
            id: Some(id.into()),
            name: name.into(),
            data: serde_json::json!({ "free": 1 }),
            time: None,
        }],
        delete: vec![],
    };
    publish(hospital, &ds, rec("h1", "district-1/ward-a")).await;
    publish(hospital, &ds, rec("h7", "district-7/ward-b")).await;
    let mut g = grant_req(&ds, "pharmacy/restock", &[Action::Read, Action::Write]);
    g.prefix = Some("district-7".into());
    let granted = hospital
        .node
        .grant(&hospital.admin, g)
        .await
        .expect("grant");
    let restock = pharmacy
        .node
        .add_app(&pharmacy.admin, "restock", vec![])
        .await
        .expect("app")
        .app;
    let q = Query::default();
    wait_for("restock reads its prefix", || async {
        pharmacy
            .node
            .query(&restock, &ds, &q)
            .is_ok_and(|r| r.iter().map(|r| r.id.as_str()).collect::<Vec<_>>() == ["h7"])
    })
    .await;
    let forbidden = |r: Result<Vec<String>, Error>| matches!(r, Err(Error::Forbidden(_)));
    let p = &pharmacy.node;
    assert!(p
        .publish(&restock, &ds, rec("p1", "district-7/ward-c"))
        .await
        .is_ok());
    assert!(forbidden(
        p.publish(&restock, &ds, rec("p2", "district-8/x")).await
    ));
    // Renaming a record from outside the prefix into it is a write outside the prefix.
    assert!(forbidden(
        p.publish(&restock, &ds, rec("h1", "district-7/taken"))
            .await
    ));
    assert!(matches!(
        p.get(&restock, &ds, "h1"),
        Err(Error::NotFound(_))
    ));

    // Its stream carries only its prefix: a delete outside it is not seen.
    let mut early = p.subscribe(&restock, &ds).expect("subscribe");
    let del = fogmesh::node::Batch {
        records: vec![],
        delete: vec!["h1".into()],
    };
    publish(hospital, &ds, del).await;
    publish(hospital, &ds, rec("h9", "district-7/ward-e")).await;
    // A change made durable just as the stream opened may come first (h7, p1: the stream is
    // at-least-once); the delete of h1 never does.
    loop {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(10), early.recv())
            .await
            .expect("an event")
            .expect("open stream");
        match ev.as_ref() {
            fogmesh::node::Event::Upsert { record } if record.id == "h9" => break,
            fogmesh::node::Event::Upsert { record } if ["h7", "p1"].contains(&&*record.id) => {}
            other => panic!("an event outside the prefix or not made: {other:?}"),
        }
    }

    // Revoking the app's grant (the organization keeps its own) ends the app's stream at the
    // next event, though its node still receives and opens the data.
    let mut live = p.subscribe(&restock, &ds).expect("subscribe");
    hospital
        .node
        .revoke(&hospital.admin, &granted.id)
        .await
        .expect("revoke");
    wait_for("the revocation reaches the pharmacy", || async {
        p.query(&restock, &ds, &q).is_err()
    })
    .await;
    publish(hospital, &ds, rec("h8", "district-7/ward-d")).await;
    let next = tokio::time::timeout(std::time::Duration::from_secs(10), live.recv()).await;
    assert!(
        matches!(
            next,
            Ok(Err(tokio::sync::broadcast::error::RecvError::Closed))
        ),
        "{next:?}"
    );
    for m in &nodes {
        m.mesh.shutdown().await;
    }
}

/// A grant narrowed to a name prefix while the grantee's app has a stream open: the stream
/// follows the standing grant from the next event on, not the one it opened with.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_narrowed_grant_narrows_an_open_event_stream() {
    let nodes = spawn_mesh(2).await;
    let (hospital, pharmacy) = (&nodes[0], &nodes[1]);
    let ds = shared(hospital, "wards", &[]).await;
    let keep = grant_req(&ds, "pharmacy/other", &[Action::Read]);
    hospital
        .node
        .grant(&hospital.admin, keep)
        .await
        .expect("grant");
    let rec = |id: &str, name: &str| fogmesh::node::Batch {
        records: vec![fogmesh::record::Input {
            id: Some(id.into()),
            name: name.into(),
            data: serde_json::json!({ "beds": 1 }),
            time: None,
        }],
        delete: vec![],
    };
    publish(hospital, &ds, rec("h1", "district-1/a")).await;
    let wide = grant_req(&ds, "pharmacy/restock", &[Action::Read]);
    hospital
        .node
        .grant(&hospital.admin, wide)
        .await
        .expect("grant");
    let p = &pharmacy.node;
    let restock = p
        .add_app(&pharmacy.admin, "restock", vec![])
        .await
        .expect("app")
        .app;
    let q = Query::default();
    wait_for("restock reads everything", || async {
        p.query(&restock, &ds, &q).is_ok_and(|r| r.len() == 1)
    })
    .await;
    let mut stream = p.subscribe(&restock, &ds).expect("subscribe");

    let mut narrow = grant_req(&ds, "pharmacy/restock", &[Action::Read]);
    narrow.prefix = Some("district-7".into());
    hospital
        .node
        .grant(&hospital.admin, narrow)
        .await
        .expect("narrow");
    wait_for("the narrowed grant at the pharmacy", || async {
        p.query(&restock, &ds, &q).is_ok_and(|r| r.is_empty())
    })
    .await;
    publish(hospital, &ds, rec("h2", "district-1/b")).await;
    publish(hospital, &ds, rec("h8", "district-7/c")).await;
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), stream.recv())
        .await
        .expect("an event")
        .expect("open stream");
    assert!(
        matches!(first.as_ref(), fogmesh::node::Event::Upsert { record } if record.id == "h8"),
        "the stream still carries records outside the narrowed prefix: {first:?}"
    );
}
