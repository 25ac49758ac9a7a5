//! Equivocation on one replica, through the node's own entry points: what a member's envelopes
//! and evidence can and cannot make it do (see `node/tests/hostile/equivocation.rs` for the
//! real wire).

use fogmesh::envelope::{Envelope, GENESIS};
use fogmesh::equivocation::Evidence;
use fogmesh::identity::Identity;
use fogmesh::naming::DatasetId;
use fogmesh::view::doc::{Doc, Upsert};

use crate::common::{test_node, TestNode};
use crate::mesh::shared_spec;

fn up(id: &str, big: usize) -> Upsert {
    let mut data = serde_json::Map::new();
    data.insert("v".into(), serde_json::Value::String("x".repeat(big)));
    Upsert {
        id: id.into(),
        name: format!("ward/{id}"),
        time: 1,
        data,
    }
}

fn change(doc: &mut Doc, id: &str, big: usize) -> Vec<u8> {
    let made = doc.write(&[up(id, big)], &[]).expect("write");
    made.expect("a change")
}

/// An envelope of the codec before chains (no `prev`), validly signed.
fn unchained(id: &Identity, ds: &DatasetId, seq: u64, payload: Vec<u8>) -> Envelope {
    let mut e = Envelope::seal(id, ds.clone(), seq, 0, 1, GENESIS, payload);
    e.prev = None;
    e.signature = id.sign(&e.signed_message());
    e
}

/// The owner's key and two documents of its actor (two histories).
fn owner_docs() -> (Identity, Doc, Doc) {
    let owner = Identity::from_seed([1; 32]);
    let doc = || Doc::new(owner.author().as_bytes());
    let (a, b) = (doc(), doc());
    (owner, a, b)
}

/// Hospital (seed 1) owns clear shared dataset "flu"; the pharmacy (seed 2) holds a replica.
pub(crate) async fn clear_replica() -> (TestNode, TestNode, DatasetId) {
    let (h, p) = (
        test_node("hospital", 1).await,
        test_node("pharmacy", 2).await,
    );
    let mut spec = shared_spec("flu", &["pharmacy"]);
    spec.encrypted = Some(false);
    let ds = h.node.create_dataset(&h.admin, spec).await.expect("ds").id;
    let (meta, _) = h.node.replica(&ds).expect("held");
    p.node
        .adopt_dataset((*meta).clone(), h.node.identity().author())
        .await
        .expect("adopt");
    let bundle = h.node.access_bundle(&ds).expect("bundle");
    p.node.merge_access(&ds, &bundle).await.expect("merge");
    (h, p, ds)
}

/// Without `prev` an envelope would escape the chain check: one that follows another history
/// than the one held is refused alone, its author named, and nothing of it is kept.
#[tokio::test]
async fn an_envelope_of_the_codec_before_chains_is_refused() {
    let (_h, p, ds) = clear_replica().await;
    let (owner, mut a, mut b) = owner_docs();
    let x = Envelope::seal(&owner, ds.clone(), 1, 0, 1, GENESIS, change(&mut a, "x", 1));
    let _ = change(&mut b, "y", 1);
    let y2 = unchained(&owner, &ds, 2, change(&mut b, "y2", 1));
    assert_eq!(
        p.node.apply_envelopes(&ds, vec![x]).await.expect("apply"),
        1
    );
    let (n, invalid) = p
        .node
        .apply_envelopes_checked(&ds, vec![y2], fogmesh::node::Delivery::Push)
        .await
        .expect("apply");
    assert!(n.is_empty(), "an unchained envelope was taken");
    assert_eq!(invalid, vec![owner.author()], "its author is not named");
}

/// Two large versions of one sequence: the second is proven a fork (the evidence quotes signed
/// messages, not payloads), the apply of the batch succeeds, and the author's history there is
/// set aside.
#[tokio::test]
async fn two_large_versions_of_one_sequence_are_proven_and_the_apply_succeeds() {
    let (_h, p, ds) = clear_replica().await;
    let (owner, mut a, mut b) = owner_docs();
    let x = Envelope::seal(
        &owner,
        ds.clone(),
        1,
        0,
        1,
        GENESIS,
        change(&mut a, "x", 300_000),
    );
    let y = Envelope::seal(
        &owner,
        ds.clone(),
        1,
        0,
        1,
        GENESIS,
        change(&mut b, "y", 300_000),
    );
    assert_eq!(
        p.node.apply_envelopes(&ds, vec![x]).await.expect("first"),
        1
    );
    let second = p.node.apply_envelopes(&ds, vec![y]).await;
    assert_eq!(second.expect("the other version's apply failed"), 0);
    assert_eq!(p.node.fork_of(&ds, &owner.author()), Some(1));
    assert!(p.node.evidence(&ds, &owner.author()).is_some());
}

/// A key incriminating itself at ever lower sequences is named once (one audit entry, one
/// broadcast to the mesh); the lowest fork is still kept.
#[tokio::test]
async fn evidence_at_ever_lower_sequences_names_the_author_once() {
    let (_h, p, ds) = clear_replica().await;
    let owner = Identity::from_seed([1; 32]);
    let mut found = p.node.subscribe_forks();
    let mut changed = 0;
    for seq in (1_000_000u64..1_000_200).rev() {
        let a = Envelope::seal(&owner, ds.clone(), seq, 0, 1, [1; 32], b"a".to_vec());
        let b = Envelope::seal(&owner, ds.clone(), seq, 0, 1, [1; 32], b"b".to_vec());
        let ev = Evidence::same_seq(&a, &b).expect("evidence");
        if p.node.take_evidence(ev).await.expect("apply").is_some() {
            changed += 1;
        }
    }
    assert_eq!(changed, 200, "each lower fork is kept");
    let mut named = 0;
    while found.try_recv().is_ok() {
        named += 1;
    }
    assert_eq!(named, 1, "the author was named {named} times");
    assert_eq!(p.node.fork_of(&ds, &owner.author()), Some(1_000_000));
    assert_eq!(p.node.equivocations().len(), 1);
}

/// Evidence against a key that could never write in the dataset is ignored.
#[tokio::test]
async fn evidence_against_a_key_without_write_authority_is_ignored() {
    let (_h, p, ds) = clear_replica().await;
    let stranger = Identity::from_seed([9; 32]);
    let a = Envelope::seal(&stranger, ds.clone(), 3, 0, 1, [1; 32], b"a".to_vec());
    let b = Envelope::seal(&stranger, ds.clone(), 3, 0, 1, [1; 32], b"b".to_vec());
    let ev = Evidence::same_seq(&a, &b).expect("evidence");
    assert_eq!(p.node.take_evidence(ev).await.expect("apply"), None);
    assert!(p.node.equivocations().is_empty());
}

/// Found by review: a snapshot taken while a change waits must not carry it (Automerge's
/// `save` keeps waiting changes by default). Otherwise, once that change is set aside (its
/// author forked there), the rebuild from the snapshot brings it back, and it applies when its
/// dependency arrives, on this node only.
#[tokio::test]
async fn a_waiting_change_set_aside_after_a_snapshot_stays_aside() {
    let (_h, p, ds) = clear_replica().await;
    let (owner, mut doc, mut other) = owner_docs();
    let mut prev = GENESIS;
    let mut envs = Vec::new();
    for i in 1..=4u64 {
        let env = Envelope::seal(
            &owner,
            ds.clone(),
            i,
            0,
            i,
            prev,
            change(&mut doc, &format!("r{i}"), 1),
        );
        prev = env.digest();
        envs.push(env);
    }
    // 1, 2 and 4 arrive; 4 waits for 3. The restart snapshots.
    let some = vec![envs[0].clone(), envs[1].clone(), envs[3].clone()];
    assert_eq!(p.node.apply_envelopes(&ds, some).await.expect("apply"), 3);
    let (dir, admin_token) = crate::common::stop(p).await;
    let p = crate::common::open(dir, crate::common::test_config("pharmacy"), admin_token);
    // Another change 4 signed by the owner: 4 on is set aside; then 3 arrives.
    let other4 = Envelope::seal(
        &owner,
        ds.clone(),
        4,
        0,
        4,
        [9; 32],
        change(&mut other, "x", 1),
    );
    let ev = Evidence::same_seq(&envs[3], &other4).expect("evidence");
    let fork = p.node.take_evidence(ev).await.expect("take");
    assert_eq!(fork.map(|f| f.seq), Some(4));
    let three = vec![envs[2].clone()];
    assert_eq!(
        p.node.apply_envelopes(&ds, three).await.expect("apply 3"),
        1
    );
    let rows = p
        .node
        .query(&p.admin, &ds, &fogmesh::view::query::Query::default())
        .expect("query");
    let ids: Vec<String> = rows.into_iter().map(|r| r.id).collect();
    assert_eq!(ids, ["r1", "r2", "r3"], "the set-aside change 4 came back");
}
