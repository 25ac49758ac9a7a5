//! Hostile input to replication on the real wire, from a member with real keys.
//!
//! - `a_dataset_description_nested_too_deeply_is_refused_alone`: the owner's API refuses a schema
//!   nested past 32 levels (the one from the review: 126 levels); a member's push carrying its own
//!   signed description with a 40-level schema beside a sound one: the sound one is adopted, the
//!   deep one refused alone, and the node restarts with its catalog.
//! - `an_envelope_of_an_epoch_the_owner_never_made_is_refused`: a member granted write on a sealed
//!   dataset pushes a signed envelope claiming epoch 99 (the dataset has one): not stored to wait
//!   for a key that will never come, and not counted as a forgery (an honest writer's envelope of
//!   an epoch new to the node is refused the same way until the access state naming it arrives).
//! - `changes_that_would_break_automerge_are_quarantined_and_the_node_keeps_serving`: a member
//!   with write rights pushes (a) the change from the review, a write into a map whose making
//!   change it dropped (Automerge 0.12 panics on it): refused before Automerge sees it; and (b)
//!   a change that names a made-up object and depends on a change not sent yet, so the document
//!   holds it back, then that change: Automerge fails when the second lets the first through;
//!   the document is rebuilt, the held-back change quarantined and the innocent one kept. The
//!   node keeps serving, a quarantined change is refused when it comes again, the node restarts.

use anyhow::{ensure, Context, Result};
use fogmesh::dataset::{Meta, Priority, Retention, Visibility};
use fogmesh::envelope::{Envelope, GENESIS};
use fogmesh::identity::Identity;
use fogmesh::mesh::catalog::SignedMeta;
use fogmesh::mesh::proto::{self, Push, PushAck};
use fogmesh::naming::DatasetId;
use serde_json::Value;

use crate::checks::{frame, push_envelope, rejected, target};
use crate::common::TestNode;
use crate::raw::{Proto, RawClient};

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

fn description(owner: &Identity, name: &str, schema: Value) -> Result<SignedMeta> {
    let meta = Meta {
        id: DatasetId::parse(name)?,
        visibility: Visibility::Shared,
        priority: Priority::default(),
        retention: Retention::default(),
        schema: Some(schema),
        readers: vec![],
        encrypted: false,
        created: fogmesh::hlc::wall_millis(),
    };
    Ok(SignedMeta::sign(meta, owner))
}

fn listed(node: &TestNode) -> Result<Vec<String>> {
    let v = node.get("/v1/datasets")?;
    Ok(v["datasets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["id"].as_str().map(str::to_owned))
        .collect())
}

#[test]
fn a_dataset_description_nested_too_deeply_is_refused_alone() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut hospital = TestNode::init(&dir.path().join("hospital"), "hospital")?;
    let deep = nested(126);
    let args = ["dataset", "create", "deep", "--shared", "--schema", &deep];
    let out = hospital.cli(&args).code(1);
    ensure!(
        out.stderr.contains("the limit is 32"),
        "the owner's API took a 126-level schema: {}",
        out.stderr
    );

    let mut mallory = TestNode::init(&dir.path().join("mallory"), "mallory")?;
    let invite = hospital.cli(&["invite", "--json"]).ok().json();
    let token = invite["token"].as_str().context("invite token")?.to_owned();
    mallory.cli(&["join", &token]).ok();
    mallory.stop()?;
    let key = Identity::load(&mallory.home)?;
    let (peer, addr) = target(&hospital)?;
    let mut c = RawClient::new(key.libp2p_keypair()?, peer, addr)?;
    c.connect()?;
    let push = Push {
        catalog: vec![
            description(&key, "mallory/deep", serde_json::from_str(&nested(40))?)?,
            description(&key, "mallory/fine", serde_json::json!({"type": "object"}))?,
        ],
        access: vec![],
        envelopes: vec![],
        evidence: vec![],
    };
    let ack: PushAck = c
        .request(Proto::Push, frame(&proto::encode(&push)))
        .message()?;
    ensure!(ack.accepted == 0);
    let ids = listed(&hospital)?;
    ensure!(
        ids.iter().any(|i| i == "mallory/fine"),
        "the sound description beside the deep one was not adopted: {ids:?}"
    );
    ensure!(
        !ids.iter().any(|i| i == "mallory/deep"),
        "a 40-level schema was adopted: {ids:?}"
    );
    drop(c);
    hospital.stop()?;
    hospital.restart()?;
    let ids = listed(&hospital)?;
    ensure!(
        ids.iter().any(|i| i == "mallory/fine"),
        "after a restart: {ids:?}"
    );
    Ok(())
}

#[test]
fn an_envelope_of_an_epoch_the_owner_never_made_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let hospital = TestNode::init(&dir.path().join("hospital"), "hospital")?;
    let mut mallory = TestNode::init(&dir.path().join("mallory"), "mallory")?;
    let invite = hospital.cli(&["invite", "--json"]).ok().json();
    let token = invite["token"].as_str().context("invite token")?.to_owned();
    mallory.cli(&["join", &token]).ok();
    crate::share_flu_with_mallory(&hospital, false);
    mallory.stop()?;
    let key = Identity::load(&mallory.home)?;
    let (peer, addr) = target(&hospital)?;
    let mut c = RawClient::new(key.libp2p_keypair()?, peer, addr)?;
    c.connect()?;
    let hlc = fogmesh::hlc::wall_millis() << 16;
    let ds = DatasetId::parse("hospital/flu")?;
    let env = Envelope::seal(&key, ds, 1, 99, hlc, GENESIS, vec![0; 64]);
    ensure!(
        push_envelope(&c, &env)? == 0,
        "an envelope of a made-up epoch was accepted"
    );
    ensure!(
        rejected(&hospital, "hospital/flu")? == 0,
        "an epoch not known yet was counted as a forgery"
    );
    let listed = hospital.get("/v1/datasets")?;
    let flu = listed["datasets"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["id"] == "hospital/flu")
        .context("hospital/flu listed")?;
    ensure!(flu["envelopes"] == 0, "the envelope was stored: {flu}");
    Ok(())
}

fn upsert(id: &str, v: i64) -> fogmesh::view::doc::Upsert {
    let serde_json::Value::Object(data) = serde_json::json!({ "v": v }) else {
        unreachable!()
    };
    fogmesh::view::doc::Upsert {
        id: id.into(),
        name: format!("ward/{id}"),
        time: 1,
        data,
    }
}

fn envelope_of(
    key: &Identity,
    ds: &DatasetId,
    change: &automerge::Change,
    prev: [u8; 32],
) -> Envelope {
    let hlc = fogmesh::hlc::wall_millis() << 16;
    Envelope::seal(
        key,
        ds.clone(),
        change.seq(),
        0,
        hlc,
        prev,
        change.raw_bytes().to_vec(),
    )
}

fn record_ids(node: &TestNode) -> Result<Vec<String>> {
    let v = node.get("/v1/datasets/hospital/flu/records")?;
    Ok(v["records"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect())
}

#[test]
fn changes_that_would_break_automerge_are_quarantined_and_the_node_keeps_serving() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut hospital = TestNode::init(&dir.path().join("hospital"), "hospital")?;
    let mut mallory = TestNode::init(&dir.path().join("mallory"), "mallory")?;
    let invite = hospital.cli(&["invite", "--json"]).ok().json();
    let token = invite["token"].as_str().context("invite token")?.to_owned();
    mallory.cli(&["join", &token]).ok();
    crate::share_flu_with_mallory(&hospital, true);
    hospital
        .cli(&[
            "publish",
            "hospital/flu",
            "--name",
            "ward/h1",
            "--id",
            "h1",
            "--data",
            r#"{"v":1}"#,
        ])
        .ok();
    mallory.stop()?;
    let key = Identity::load(&mallory.home)?;
    let ds = DatasetId::parse("hospital/flu")?;
    let (peer, addr) = target(&hospital)?;
    let mut c = RawClient::new(key.libp2p_keypair()?, peer, addr)?;
    c.connect()?;

    // Three changes of mallory's: `first` makes record m1, the next two update it.
    let actor = key.author();
    let mut doc = fogmesh::view::doc::Doc::new(actor.as_bytes());
    let mut next = |v| -> Result<automerge::Change> {
        let bytes = doc.write(&[upsert("m1", v)], &[])?.context("a change")?;
        Ok(automerge::Change::from_bytes(bytes)?)
    };
    let (first, second, third) = (next(1)?, next(2)?, next(3)?);
    // (a) The review's change: the third, its dependencies cleared; the map it writes into is
    // made by `first`, which the hospital does not have.
    let mut orphan = third.decode();
    orphan.deps.clear();
    let orphan = automerge::Change::from(orphan);
    let first_env = envelope_of(&key, &ds, &first, GENESIS);
    // Its own bad envelope: refused (no answer) and counted against the sender.
    let refused = push_envelope(&c, &envelope_of(&key, &ds, &orphan, [3; 32]));
    ensure!(refused.is_err(), "(a) was answered: {refused:?}");

    // (b) The second, naming a made-up object instead, sent before `first`, which it depends on.
    let mut held = second.decode();
    for op in &mut held.operations {
        if let automerge::legacy::ObjectId::Id(_) = op.obj {
            op.obj = automerge::legacy::ObjectId::Id(automerge::legacy::OpId::new(
                999,
                &automerge::ActorId::from(actor.as_bytes().as_slice()),
            ));
        }
    }
    let held = automerge::Change::from(held);
    let held_env = envelope_of(&key, &ds, &held, first_env.digest());
    let kept = push_envelope(&c, &held_env);
    ensure!(
        kept.as_ref().is_ok_and(|n| *n == 1),
        "(b) not held back: {kept:?}\n{}",
        hospital.log_tail()
    );
    // The push that lets it through is refused too (its author is to blame), but the innocent
    // change in it is kept.
    let released = push_envelope(&c, &first_env);
    ensure!(
        released.is_err(),
        "the quarantine was not counted: {released:?}"
    );
    let ids = record_ids(&hospital)?;
    ensure!(
        ids.contains(&"h1".to_owned()) && ids.contains(&"m1".to_owned()),
        "records after the rebuild: {ids:?}\n{}",
        hospital.log_tail()
    );
    ensure!(
        push_envelope(&c, &held_env)? == 0,
        "a quarantined change came back"
    );
    let log = std::fs::read_to_string(hospital.home.join("test-node.log"))?;
    ensure!(log.contains("quarantined"), "no quarantine in the log");
    ensure!(log.contains(&actor.to_string()), "the author is not named");
    drop(c);
    hospital
        .cli(&[
            "publish",
            "hospital/flu",
            "--name",
            "ward/h2",
            "--id",
            "h2",
            "--data",
            r#"{"v":2}"#,
        ])
        .ok();
    hospital.stop()?;
    hospital.restart()?;
    let ids = record_ids(&hospital)?;
    ensure!(ids.len() == 3, "after a restart: {ids:?}");
    Ok(())
}
