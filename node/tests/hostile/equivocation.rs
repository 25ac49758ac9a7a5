//! Equivocation on the real wire: a member with write rights signs two different envelopes
//! with one sequence number and pushes one to each of two nodes.
//!
//! - `two_histories_signed_by_one_member_are_found_and_set_aside_on_every_node`: hospital
//!   (owner of `hospital/flu`), pharmacy (a reader) and mallory (may write). Mallory's key signs
//!   X (its change 1) and X2 (change 2, after X) for the hospital, and Y (another change 1) for
//!   the pharmacy. When the two catch up, the node holding Y fetches X2, which names X as its
//!   predecessor: that pair is evidence. Both nodes then list mallory as equivocating (mesh
//!   status, audit log, metrics), hold the same records (mallory's from its fork on set aside,
//!   the hospital's kept), refuse mallory's next envelope in that dataset, and keep all of it
//!   across a restart.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use fogmesh::envelope::{Envelope, GENESIS};
use fogmesh::identity::Identity;
use fogmesh::naming::DatasetId;
use serde_json::Value;

use crate::checks::{metric, push_envelope, target};
use crate::common::TestNode;
use crate::governance::{join, wait};
use crate::raw::RawClient;

fn ids(node: &TestNode) -> Result<Vec<String>> {
    let v = node.get("/v1/datasets/hospital/flu/records")?;
    let mut out: Vec<String> = v["records"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect();
    out.sort();
    Ok(out)
}

pub(crate) fn upsert(id: &str, v: i64) -> fogmesh::view::doc::Upsert {
    let Value::Object(data) = serde_json::json!({ "v": v }) else {
        unreachable!()
    };
    fogmesh::view::doc::Upsert {
        id: id.into(),
        name: format!("ward/{id}"),
        time: 1,
        data,
    }
}

/// Mallory's changes to `hospital/flu`, each sealed after `prev`.
pub(crate) struct Forger {
    pub(crate) key: Identity,
    pub(crate) ds: DatasetId,
    pub(crate) hlc: u64,
}

impl Forger {
    fn envelope(
        &self,
        doc: &mut fogmesh::view::doc::Doc,
        id: &str,
        prev: [u8; 32],
    ) -> Result<Envelope> {
        let change = doc.write(&[upsert(id, 1)], &[])?.context("a change")?;
        let seq = automerge::Change::from_bytes(change.clone())?.seq();
        Ok(Envelope::seal(
            &self.key,
            self.ds.clone(),
            seq,
            0,
            self.hlc,
            prev,
            change,
        ))
    }
}

fn equivocators(node: &TestNode) -> Result<Vec<Value>> {
    let v = node.get("/v1/mesh")?;
    Ok(v["equivocations"].as_array().cloned().unwrap_or_default())
}

/// Three nodes of one mesh: the hospital owns clear shared `hospital/flu` (record h1, read by
/// the pharmacy and mallory; mallory may write), and mallory's node is stopped: its key is the
/// forger's.
struct Scene {
    _dir: tempfile::TempDir,
    hospital: TestNode,
    pharmacy: TestNode,
    forger: Forger,
}

fn scene() -> Result<Scene> {
    let dir = tempfile::tempdir()?;
    let hospital = TestNode::init(&dir.path().join("hospital"), "hospital")?;
    let pharmacy = TestNode::init(&dir.path().join("pharmacy"), "pharmacy")?;
    let mut mallory = TestNode::init(&dir.path().join("mallory"), "mallory")?;
    for n in [&pharmacy, &mallory] {
        join(&hospital, n)?;
    }
    let create = ["dataset", "create", "flu", "--shared", "--clear"];
    hospital
        .cli(&[&create[..], &["--readers", "pharmacy,mallory"]].concat())
        .ok();
    crate::let_mallory_write(&hospital);
    publish(&hospital, "h1");
    wait("the pharmacy to read h1", Duration::from_secs(30), || {
        Ok(ids(&pharmacy).unwrap_or_default() == ["h1"])
    })?;
    mallory.stop()?;
    let forger = Forger {
        key: Identity::load(&mallory.home)?,
        ds: DatasetId::parse("hospital/flu")?,
        hlc: fogmesh::hlc::wall_millis() << 16,
    };
    Ok(Scene {
        _dir: dir,
        hospital,
        pharmacy,
        forger,
    })
}

/// The hospital writes record `id`.
fn publish(hospital: &TestNode, id: &str) {
    let name = format!("ward/{id}");
    let args = [
        "publish",
        "hospital/flu",
        "--name",
        &name,
        "--id",
        id,
        "--data",
        r#"{"v":1}"#,
    ];
    hospital.cli(&args).ok();
}

/// A raw connection to `node` under the forger's key.
pub(crate) fn to(forger: &Forger, node: &TestNode) -> Result<RawClient> {
    let (peer, addr) = target(node)?;
    let mut c = RawClient::new(forger.key.libp2p_keypair()?, peer, addr)?;
    c.connect()?;
    Ok(c)
}

#[test]
fn two_histories_signed_by_one_member_are_found_and_set_aside_on_every_node() -> Result<()> {
    let Scene {
        _dir,
        mut hospital,
        mut pharmacy,
        forger,
    } = scene()?;
    let actor = forger.key.author();
    let mut one = fogmesh::view::doc::Doc::new(actor.as_bytes());
    let mut other = fogmesh::view::doc::Doc::new(actor.as_bytes());
    let x = forger.envelope(&mut one, "m1", GENESIS)?;
    let x2 = forger.envelope(&mut one, "m2", x.digest())?;
    let y = forger.envelope(&mut other, "m9", GENESIS)?;
    ensure!(x.seq == 1 && y.seq == 1 && x2.seq == 2);

    let to = |node: &TestNode| to(&forger, node);
    let (h, p) = (to(&hospital)?, to(&pharmacy)?);
    ensure!(push_envelope(&h, &x)? == 1 && push_envelope(&h, &x2)? == 1);
    ensure!(push_envelope(&p, &y)? == 1, "the pharmacy did not take Y");
    ensure!(
        ids(&hospital)? == ["h1", "m1", "m2"],
        "{:?}",
        ids(&hospital)?
    );
    ensure!(ids(&pharmacy)? == ["h1", "m9"], "{:?}", ids(&pharmacy)?);
    drop((h, p));

    // The two meet again (a restart makes them catch up at once instead of within 30 s).
    pharmacy.stop()?;
    let started = Instant::now();
    pharmacy.restart()?;
    for n in [&hospital, &pharmacy] {
        wait("the equivocation found", Duration::from_secs(40), || {
            Ok(!equivocators(n)?.is_empty() && ids(n)? == ["h1"])
        })
        .with_context(|| format!("{}: {:?}\n{}", n.org, ids(n), n.log_tail()))?;
    }
    eprintln!(
        "both nodes found the fork and set mallory's envelopes aside {:.2} s after the pharmacy \
         restarted",
        started.elapsed().as_secs_f64()
    );
    for n in [&hospital, &pharmacy] {
        let listed = equivocators(n)?;
        ensure!(
            listed.len() == 1
                && listed[0]["org"] == "mallory"
                && listed[0]["seq"] == 1
                && listed[0]["dataset"] == "hospital/flu"
                && listed[0]["author"] == actor.to_string().as_str(),
            "{}: {listed:?}",
            n.org
        );
        let audit = n.get("/v1/audit?action=equivocation")?;
        ensure!(
            audit["entries"][0]["actor"] == "mallory",
            "{}: not in the audit log: {audit}",
            n.org
        );
        ensure!(
            metric(n, "fogmesh_equivocations_total")? >= 1,
            "{}: metric",
            n.org
        );
    }

    // Mallory's next envelope there is refused; the hospital still writes.
    let x3 = forger.envelope(&mut one, "m3", x2.digest())?;
    ensure!(
        push_envelope(&to(&hospital)?, &x3)? == 0,
        "an equivocator's envelope was taken"
    );
    publish(&hospital, "h2");
    wait("the pharmacy to read h2", Duration::from_secs(30), || {
        Ok(ids(&pharmacy)? == ["h1", "h2"])
    })?;

    hospital.stop()?;
    hospital.restart()?;
    ensure!(
        ids(&hospital)? == ["h1", "h2"],
        "after a restart: {:?}",
        ids(&hospital)?
    );
    ensure!(
        equivocators(&hospital)?.len() == 1,
        "the fork was forgotten on restart"
    );
    Ok(())
}

/// Two long histories of one member, parted at its first change and of the same length: no
/// envelope of one names a predecessor held of the other, only the chain tips differ. The fork
/// must be found at its first sequence in one catch-up, not one sequence per 30 s round.
#[test]
fn two_long_histories_parted_at_the_start_are_found_at_once() -> Result<()> {
    const LEN: usize = 40;
    let Scene {
        _dir,
        hospital,
        mut pharmacy,
        forger,
    } = scene()?;
    let actor = forger.key.author();
    let (h, p) = (to(&forger, &hospital)?, to(&forger, &pharmacy)?);
    for (raw, tag) in [(&h, "x"), (&p, "y")] {
        let mut doc = fogmesh::view::doc::Doc::new(actor.as_bytes());
        let mut prev = GENESIS;
        for i in 0..LEN {
            let env = forger.envelope(&mut doc, &format!("{tag}{i}"), prev)?;
            prev = env.digest();
            ensure!(push_envelope(raw, &env)? == 1, "{tag}{i} not taken");
        }
    }
    drop((h, p));
    ensure!(ids(&hospital)?.len() == LEN + 1 && ids(&pharmacy)?.len() == LEN + 1);
    pharmacy.stop()?;
    let started = Instant::now();
    pharmacy.restart()?;
    for n in [&hospital, &pharmacy] {
        wait("the fork at sequence 1", Duration::from_secs(25), || {
            let listed = equivocators(n)?;
            Ok(listed.len() == 1 && listed[0]["seq"] == 1 && ids(n)? == ["h1"])
        })
        .with_context(|| format!("{}: {:?}\n{}", n.org, equivocators(n), n.log_tail()))?;
    }
    eprintln!(
        "histories of {LEN} parted at sequence 1: both nodes found the fork there {:.2} s after \
         the pharmacy restarted",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
