//! Key rotation on the real wire: real node processes, one of which rotates its keys with
//! `fogmesh key rotate` and restarts itself under its new PeerId; a member's raw client relays
//! envelopes signed with the retired key.
//!
//! - `after_a_key_rotation_new_writes_verify_everywhere_and_the_old_key_signs_nothing_new`:
//!   hospital (founder), pharmacy, agency and mallory. The pharmacy rotates while the agency is
//!   down. Then: every node lists the pharmacy's new key and its retired one; what the pharmacy
//!   writes with its new key reaches the hospital and, once back, the agency (which also
//!   fetches what the old key wrote before); the pharmacy still reads the hospital's sealed
//!   dataset granted to it before the rotation, old records and new; an envelope signed with
//!   the retired key and dated after the rotation, relayed by mallory, is refused and counted,
//!   while the same change dated before the rotation is history and accepted.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use fogmesh::envelope::Envelope;
use fogmesh::identity::Identity;
use fogmesh::naming::DatasetId;
use serde_json::Value;

use crate::checks::{push_envelope as push, rejected, target};
use crate::common::TestNode;
use crate::governance::{join, wait};
use crate::raw::RawClient;

fn names(node: &TestNode, dataset: &str) -> Result<Vec<String>> {
    let path = format!("/v1/datasets/{dataset}/records");
    let Ok(v) = node.get(&path) else {
        return Ok(Vec::new());
    };
    let mut out: Vec<String> = v["records"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["name"].as_str().map(str::to_owned))
        .collect();
    out.sort();
    Ok(out)
}

fn wait_names(node: &TestNode, dataset: &str, want: &[&str]) -> Result<()> {
    let what = format!("{} to read {want:?} in {dataset}", node.org);
    let res = wait(&what, Duration::from_secs(30), || {
        let got = names(node, dataset)?;
        Ok(want.iter().all(|w| got.iter().any(|g| g == w)))
    });
    res.with_context(|| format!("{} holds {:?}", node.org, names(node, dataset)))
}

fn publish(node: &TestNode, dataset: &str, name: &str) {
    let data = format!(r#"{{"by":"{}","name":"{name}"}}"#, node.org);
    node.cli(&["publish", dataset, "--name", name, "--data", &data])
        .ok();
}

fn member<'a>(list: &'a Value, org: &str) -> Result<&'a Value> {
    list["members"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["org"] == org)
        .with_context(|| format!("{org} not listed in {list}"))
}

/// A first Automerge change by `author`'s actor, in an envelope signed by `author`.
fn first_change(author: &Identity, dataset: &DatasetId, hlc: u64) -> Result<Envelope> {
    use automerge::transaction::Transactable;
    use automerge::ReadDoc;
    let actor = automerge::ActorId::from(author.author().as_bytes().as_slice());
    let mut doc = automerge::Automerge::new().with_actor(actor);
    let mut tx = doc.transaction();
    tx.put(automerge::ROOT, "relayed", 1)?;
    let (hash, _) = tx.commit();
    let change = doc
        .get_change_by_hash(&hash.context("no change")?)
        .context("change")?
        .raw_bytes()
        .to_vec();
    Ok(Envelope::seal(
        author,
        dataset.clone(),
        1,
        0,
        hlc,
        fogmesh::envelope::GENESIS,
        change,
    ))
}

#[test]
fn after_a_key_rotation_new_writes_verify_everywhere_and_the_old_key_signs_nothing_new(
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let hospital = TestNode::init(&dir.path().join("hospital"), "hospital")?;
    let mut pharmacy = TestNode::init(&dir.path().join("pharmacy"), "pharmacy")?;
    let mut agency = TestNode::init(&dir.path().join("agency"), "agency")?;
    let mut mallory = TestNode::init(&dir.path().join("mallory"), "mallory")?;
    for n in [&pharmacy, &agency, &mallory] {
        join(&hospital, n)?;
    }
    let readers = "--readers";
    hospital
        .cli(&["dataset", "create", "flu", "--shared", readers, "pharmacy"])
        .ok();
    publish(&hospital, "hospital/flu", "h1");
    let stock = ["dataset", "create", "stock", "--shared"];
    pharmacy
        .cli(&[&stock[..], &[readers, "hospital,agency"]].concat())
        .ok();
    let notes = ["dataset", "create", "notes", "--shared", "--clear"];
    pharmacy
        .cli(&[&notes[..], &[readers, "hospital"]].concat())
        .ok();
    wait_names(&pharmacy, "hospital/flu", &["h1"])?;
    agency.stop()?;
    publish(&pharmacy, "pharmacy/stock", "p1");
    wait_names(&hospital, "pharmacy/stock", &["p1"])?;

    mallory.stop()?;
    let old = Identity::load(&pharmacy.home)?;
    let before_rotation = fogmesh::hlc::wall_millis() << 16;
    let started = Instant::now();
    let rotated = pharmacy.cli(&["key", "rotate", "--json"]).ok().json();
    eprintln!(
        "`fogmesh key rotate` returned after {:.2} s, the node serving again under its new key",
        started.elapsed().as_secs_f64()
    );
    pharmacy.await_serving()?;
    eprintln!("rotated: {rotated}");
    let info = pharmacy.get("/v1/node")?;
    let new_key = info["author"].as_str().context("author")?.to_owned();
    ensure!(
        new_key != old.author().to_string(),
        "the key did not change"
    );
    ensure!(rotated["key"] == new_key.as_str() && rotated["peer_id"] == info["peer_id"]);
    ensure!(
        rotated["informed"]
            .as_array()
            .is_some_and(|a| a.iter().any(|o| o == "hospital")),
        "the hospital did not take the rotation before the restart: {rotated}"
    );
    let audit = pharmacy.get("/v1/audit?action=key-rotate")?;
    let noted = audit["entries"][0]["detail"].as_str().unwrap_or_default();
    ensure!(
        noted.contains(&new_key),
        "the rotation is not in the audit log: {audit}"
    );
    let verify = pharmacy.get("/v1/audit/verify")?;
    ensure!(
        verify["ok"] == true,
        "the audit chain does not verify after the restart: {verify}"
    );
    for n in [&hospital, &pharmacy] {
        wait("the new key on the roster", Duration::from_secs(20), || {
            let list = n.get("/v1/members")?;
            let p = member(&list, "pharmacy")?;
            Ok(p["author"] == new_key.as_str()
                && p["retired_keys"][0] == old.author().to_string().as_str())
        })
        .with_context(|| n.org.clone())?;
    }

    // New writes verify everywhere; what was granted before stays readable by the pharmacy.
    publish(&pharmacy, "pharmacy/stock", "p2");
    wait_names(&hospital, "pharmacy/stock", &["p1", "p2"])?;
    publish(&hospital, "hospital/flu", "h2");
    wait_names(&pharmacy, "hospital/flu", &["h1", "h2"])?;
    // The agency was down: it learns the rotation from the hospital, then takes what the old
    // key wrote before and what the new one wrote since.
    agency.restart()?;
    wait_names(&agency, "pharmacy/stock", &["p1", "p2"])?;

    // Mallory relays changes signed with the pharmacy's retired key.
    let notes_id = DatasetId::parse("pharmacy/notes")?;
    wait(
        "the hospital to hold pharmacy/notes",
        Duration::from_secs(20),
        || Ok(hospital.get("/v1/datasets/pharmacy/notes").is_ok()),
    )?;
    let key = Identity::load(&mallory.home)?;
    let (peer, addr) = target(&hospital)?;
    let mut c = RawClient::new(key.libp2p_keypair()?, peer, addr)?;
    c.connect()?;
    let late = first_change(&old, &notes_id, fogmesh::hlc::wall_millis() << 16)?;
    ensure!(
        push(&c, &late)? == 0,
        "an envelope the retired key dated after the rotation was accepted"
    );
    wait("the refusal to be counted", Duration::from_secs(10), || {
        Ok(rejected(&hospital, "pharmacy/notes")? == 1)
    })?;
    // The same change dated before the rotation is history: a retired key's past stays valid.
    let early = first_change(&old, &notes_id, before_rotation)?;
    ensure!(
        push(&c, &early)? == 1,
        "history signed by the retired key was refused"
    );
    ensure!(rejected(&hospital, "pharmacy/notes")? == 1);
    Ok(())
}
