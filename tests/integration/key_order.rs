//! Envelopes of a sealed dataset reaching a relay in every awkward order: a record before the
//! one it depends on, a record before its key, a gap across a restart. Two nodes without a
//! network: envelopes and access state are handed over directly, in exactly the order chosen.

use fogmesh::apps::Action;
use fogmesh::envelope::Envelope;
use fogmesh::naming::DatasetId;
use fogmesh::node::{Batch, GrantRequest, MemberKeys};
use fogmesh::record::Input;
use fogmesh::view::query::Query;

use crate::common::{reopen, test_node, TestNode};
use crate::mesh::shared_spec;

fn keys(b: &TestNode, org: &str) -> MemberKeys {
    MemberKeys {
        org: org.into(),
        author: b.node.identity().author(),
        agreement: b.node.identity().agreement_public(),
        removed: false,
        retired: Vec::new(),
    }
}

/// A hospital owning sealed dataset "beds" with two records written in order (h1 then h7),
/// the pharmacy granted read, and a pharmacy node that knows the dataset and its epoch but holds
/// no key and no record.
/// Returns the two envelopes in write order.
async fn setup() -> (TestNode, TestNode, DatasetId, Vec<Envelope>) {
    let (h, p) = (
        test_node("hospital", 1).await,
        test_node("pharmacy", 2).await,
    );
    let members = vec![keys(&h, "hospital"), keys(&p, "pharmacy")];
    h.node.set_members(members.clone()).await.expect("members");
    p.node.set_members(members).await.expect("members");
    let spec = shared_spec("beds", &[]);
    let ds = h.node.create_dataset(&h.admin, spec).await.expect("ds").id;
    // The access state as it was before the grant: it names the epoch, but holds no key for
    // the pharmacy (an envelope of an epoch the receiver has never heard of is refused).
    let before_grant = h.node.access_bundle(&ds).expect("bundle");
    let grant = GrantRequest {
        dataset: ds.to_string(),
        to: "pharmacy/*".into(),
        rights: vec![Action::Read],
        prefix: None,
        expires: None,
    };
    h.node.grant(&h.admin, grant).await.expect("grant");
    for (id, name) in [("h1", "district-1/a"), ("h7", "district-7/b")] {
        let b = Batch {
            records: vec![Input {
                id: Some(id.into()),
                name: name.into(),
                data: serde_json::json!({ "free": 1 }),
                time: None,
            }],
            delete: vec![],
        };
        h.node.publish(&h.admin, &ds, b).await.expect("publish");
    }
    let (meta, vv) = h.node.replica(&ds).expect("held");
    let owner = h.node.identity().author();
    let (pages, _) = h
        .node
        .envelopes_between(&ds, &owner, (0, vv.get(&owner)), (usize::MAX, usize::MAX))
        .expect("envelopes");
    let envs: Vec<Envelope> = pages
        .iter()
        .map(|b| Envelope::decode(b).expect("decodes"))
        .collect();
    assert_eq!(envs.len(), 2);
    p.node
        .adopt_dataset((*meta).clone(), owner)
        .await
        .expect("adopt");
    p.node
        .merge_access(&ds, &before_grant)
        .await
        .expect("access without keys");
    (h, p, ds, envs)
}

async fn give_keys(h: &TestNode, p: &TestNode, ds: &DatasetId) {
    let bundle = h.node.access_bundle(ds).expect("bundle");
    assert!(p.node.merge_access(ds, &bundle).await.expect("merge") > 0);
}

/// Gives `p` one envelope, which must be new to it.
async fn hand_over(p: &TestNode, ds: &DatasetId, env: &Envelope) {
    let new = p.node.apply_envelopes(ds, vec![env.clone()]).await;
    assert_eq!(new.expect("apply"), 1);
}

fn ids(b: &TestNode, ds: &DatasetId) -> Vec<String> {
    let rows = b
        .node
        .query(&b.admin, ds, &Query::default())
        .expect("query");
    rows.into_iter().map(|r| r.id).collect()
}

/// The later record arrives first and before the key: once the key comes it waits in the
/// document for its predecessor, and shows when that arrives.
#[tokio::test]
async fn a_record_held_before_its_key_and_its_predecessor_shows_once_both_arrive() {
    let (h, p, ds, envs) = setup().await;
    hand_over(&p, &ds, &envs[1]).await;
    give_keys(&h, &p, &ds).await;
    assert!(ids(&p, &ds).is_empty(), "h7 cannot show before h1 is known");
    hand_over(&p, &ds, &envs[0]).await;
    assert_eq!(ids(&p, &ds), ["h1", "h7"]);
}

/// A record waiting for its predecessor across a restart shows once the predecessor arrives.
#[tokio::test]
async fn a_record_waiting_for_its_predecessor_across_a_restart_shows_once_it_arrives() {
    let (h, p, ds, envs) = setup().await;
    give_keys(&h, &p, &ds).await;
    hand_over(&p, &ds, &envs[1]).await;
    p.node.shutdown().await.expect("shutdown");
    let p = reopen(p, "pharmacy");
    assert!(ids(&p, &ds).is_empty());
    hand_over(&p, &ds, &envs[0]).await;
    assert_eq!(ids(&p, &ds), ["h1", "h7"]);
}

/// Every order of the two records and the key ends with both records readable.
#[tokio::test]
async fn every_order_of_two_records_and_their_key_ends_with_both_readable() {
    for order in [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ] {
        let (h, p, ds, envs) = setup().await;
        for step in order {
            match step {
                2 => give_keys(&h, &p, &ds).await,
                i => hand_over(&p, &ds, &envs[i]).await,
            }
        }
        assert_eq!(ids(&p, &ds), ["h1", "h7"], "order {order:?}");
    }
}

/// A change whose dependency no member holds (here a made-up hash) waits for good; it must not
/// keep the dataset from being snapshotted, so a restart does not replay its whole history. The
/// snapshot covers the history up to the waiting change, and after a restart the change still
/// waits (it was replayed from the store, not lost) while everything before it shows.
#[tokio::test]
async fn a_change_waiting_for_a_dependency_nobody_holds_does_not_stop_snapshots() {
    use automerge::{Change, ChangeHash};
    use fogmesh::envelope::GENESIS;
    use fogmesh::identity::Identity;
    use fogmesh::view::doc::{Doc, Upsert};

    let (_h, p, ds) = crate::equivocation::clear_replica().await;

    let owner = Identity::from_seed([1; 32]);
    let mut doc = Doc::new(owner.author().as_bytes());
    let mut prev = GENESIS;
    let mut envs = Vec::new();
    for i in 1..=4u64 {
        let up = Upsert {
            id: format!("r{i}"),
            name: format!("ward/r{i}"),
            time: 1,
            data: serde_json::Map::new(),
        };
        let mut change = doc.write(&[up], &[]).expect("write").expect("a change");
        if i == 4 {
            // Its dependencies name a change nobody has.
            let mut expanded = Change::from_bytes(change).expect("change").decode();
            expanded.deps.push(ChangeHash([7; 32]));
            change = Change::from(expanded).raw_bytes().to_vec();
        }
        let env = Envelope::seal(&owner, ds.clone(), i, 0, i, prev, change);
        prev = env.digest();
        envs.push(env);
    }
    assert_eq!(p.node.apply_envelopes(&ds, envs).await.expect("apply"), 4);
    assert_eq!(ids(&p, &ds), ["r1", "r2", "r3"], "r4 waits");
    let (dir, admin_token) = crate::common::stop(p).await;
    let store = fogmesh::store::Store::open(&dir.path().join(fogmesh::node::home::DATA_DIR))
        .expect("store");
    let snap = store
        .snapshot(&ds)
        .expect("read")
        .expect("a snapshot was taken");
    assert_eq!(
        snap.vv.get(&owner.author()),
        3,
        "the snapshot covers r1..r3 only"
    );
    drop(store);
    let p = crate::common::open(dir, crate::common::test_config("pharmacy"), admin_token);
    assert_eq!(ids(&p, &ds), ["r1", "r2", "r3"], "after the restart");
    let (_, vv) = p.node.replica(&ds).expect("held");
    assert_eq!(
        vv.get(&owner.author()),
        4,
        "the waiting change was replayed, not lost"
    );
}

/// The owner's first `n` changes to a clear dataset, one record `r{i}` each.
fn owner_changes(n: u64) -> (fogmesh::identity::Identity, Vec<Vec<u8>>) {
    let owner = fogmesh::identity::Identity::from_seed([1; 32]);
    let mut doc = fogmesh::view::doc::Doc::new(owner.author().as_bytes());
    let changes = (1..=n)
        .map(|i| {
            let up = fogmesh::view::doc::Upsert {
                id: format!("r{i}"),
                name: format!("ward/r{i}"),
                time: 1,
                data: serde_json::Map::new(),
            };
            doc.write(&[up], &[]).expect("write").expect("a change")
        })
        .collect();
    (owner, changes)
}

/// `changes` sealed as the owner's envelopes 1, 2, ... of `ds`, chained.
fn chained(
    owner: &fogmesh::identity::Identity,
    ds: &DatasetId,
    changes: Vec<Vec<u8>>,
) -> Vec<Envelope> {
    let mut prev = fogmesh::envelope::GENESIS;
    (1..)
        .zip(changes)
        .map(|(i, change)| {
            let env = Envelope::seal(owner, ds.clone(), i, 0, i, prev, change);
            prev = env.digest();
            env
        })
        .collect()
}

/// Halves the stored snapshot of `ds` (in the store at `data`, the node stopped), so that it no
/// longer loads; `also` may store more first.
fn damage_snapshot(
    data: &std::path::Path,
    ds: &DatasetId,
    also: impl FnOnce(&fogmesh::store::Store),
) {
    let store = fogmesh::store::Store::open(data).expect("store");
    also(&store);
    let mut snap = store.snapshot(ds).expect("read").expect("a snapshot");
    snap.doc.truncate(snap.doc.len() / 2);
    store.put_snapshot(ds, &snap).expect("damaged");
    store.flush_blocking().expect("flush");
}

/// A snapshot is a head start, not the data: one that does not load (damaged bytes, or one saved
/// before the guard from a document that had taken a member's malformed change, which made
/// Automerge fail or panic on load) is removed and the dataset rebuilt from its envelopes, with
/// every record, and the next snapshot loads.
#[tokio::test]
async fn a_snapshot_that_does_not_load_is_replaced_from_the_envelopes() {
    let (_h, p, ds) = crate::equivocation::clear_replica().await;
    let (owner, changes) = owner_changes(3);
    let envs = chained(&owner, &ds, changes);
    assert_eq!(p.node.apply_envelopes(&ds, envs).await.expect("apply"), 3);
    let (dir, admin_token) = crate::common::stop(p).await;
    let data = dir.path().join(fogmesh::node::home::DATA_DIR);
    damage_snapshot(&data, &ds, |store| {
        let snap = store.snapshot(&ds).expect("read").expect("a snapshot");
        assert_eq!(snap.vv.get(&owner.author()), 3);
    });

    let p = crate::common::open(dir, crate::common::test_config("pharmacy"), admin_token);
    assert_eq!(
        ids(&p, &ds),
        ["r1", "r2", "r3"],
        "rebuilt from the envelopes"
    );
    let (dir, _) = crate::common::stop(p).await;
    let store = fogmesh::store::Store::open(&data).expect("store");
    let snap = store.snapshot(&ds).expect("read").expect("a new snapshot");
    let loaded = fogmesh::view::doc::Doc::load(&snap.doc, &[5; 32]).expect("it loads");
    assert_eq!(loaded.automerge().get_heads().len(), 1);
    drop((store, dir));
}

/// From the fourth attacker review: a store written before the guard refused a change whose
/// history lacks its author's previous change holds such a change, and every snapshot taken
/// since fails to load. The restart rebuilds the dataset change by change, judging each: that
/// change is quarantined, every other record is kept, and the next snapshot loads.
#[tokio::test]
async fn a_stored_change_that_skips_its_authors_previous_change_is_set_aside_on_restart() {
    let (_h, p, ds) = crate::equivocation::clear_replica().await;
    let (owner, mut changes) = owner_changes(4);
    // Change 4's history lacks change 3: it names change 1 only.
    let first = automerge::Change::from_bytes(changes[0].clone()).expect("a change");
    let mut skipping = automerge::Change::from_bytes(changes[3].clone())
        .expect("a change")
        .decode();
    skipping.deps = vec![first.hash()];
    changes[3] = automerge::Change::from(skipping).raw_bytes().to_vec();
    let mut envs = chained(&owner, &ds, changes);
    let skipping = envs.pop().expect("four");
    assert_eq!(p.node.apply_envelopes(&ds, envs).await.expect("apply"), 3);
    let (dir, admin_token) = crate::common::stop(p).await;
    let data = dir.path().join(fogmesh::node::home::DATA_DIR);
    // As an earlier build stored it, with a snapshot (of a document holding it) that does not
    // load.
    damage_snapshot(&data, &ds, |store| {
        store.put_envelope(&skipping).expect("stored")
    });

    let p = crate::common::open(dir, crate::common::test_config("pharmacy"), admin_token);
    assert_eq!(ids(&p, &ds), ["r1", "r2", "r3"], "the others are kept");
    let (dir, _) = crate::common::stop(p).await;
    let store = fogmesh::store::Store::open(&data).expect("store");
    assert_eq!(
        store.last_quarantined(&ds, &owner.author()).expect("read"),
        4,
        "the change that skips is set aside"
    );
    let snap = store.snapshot(&ds).expect("read").expect("a new snapshot");
    fogmesh::view::doc::Doc::load(&snap.doc, &[5; 32]).expect("it loads");
    drop((store, dir));
}
