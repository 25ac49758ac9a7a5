//! A hostile member against governance, on the real wire: real node processes, and a member
//! whose raw client holds its real key and answers the nodes' catch-up with a roster it forged.
//!
//! - `a_member_forging_roster_entries_is_refused_by_every_node`: mallory, a plain member, serves a
//!   roster in which it re-signed the pharmacy's entry with its own X25519 key and `updated` near
//!   `u64::MAX`, admitted an organization, made itself an admin and removed the founder. Every
//!   node fetches it and keeps none of it: the pharmacy's keys are unchanged everywhere. A
//!   non-admin's `fogmesh invite` is refused.
//! - `a_join_into_a_200_member_roster_succeeds`: 199 organizations join a founder over the join
//!   protocol (one of them twice with the same invitation, as after a lost answer), then a real
//!   node joins the 200-member roster.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use fogmesh::identity::Identity;
use fogmesh::mesh::govern::{Action, Op, Role};
use fogmesh::mesh::invite::Invite;
use fogmesh::mesh::proto::{self, JoinRequest, JoinResponse, SyncRequest, SyncResponse};
use fogmesh::mesh::roster::{Cert, Member, Roster};
use serde_json::{json, Value};

use crate::checks::{frame, target};
use crate::common::TestNode;
use crate::raw::{Proto, RawClient};

const MESH: &str = "test-mesh";

pub(crate) use crate::common::{join, wait};

fn members(node: &TestNode) -> Result<Vec<Value>> {
    Ok(node.get("/v1/members")?["members"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

fn member_of<'a>(list: &'a [Value], org: &str) -> Option<&'a Value> {
    list.iter().find(|m| m["org"] == org)
}

/// The roster as `node` serves it to a member's raw client.
fn fetch_roster(c: &RawClient) -> Result<Roster> {
    let answer = c.request(Proto::Sync, frame(&proto::encode(&SyncRequest::Roster)));
    match answer.message::<SyncResponse>()? {
        SyncResponse::Roster(r) => Ok(Roster::verified(&r, fogmesh::hlc::wall_millis())?),
        other => bail!("unexpected answer to Roster: {other:?}"),
    }
}

/// `honest` with everything mallory may not do added, signed with mallory's real key.
fn forged(honest: &Roster, mallory: &Identity) -> Result<Roster> {
    let mut r = honest.clone();
    let mut victim = r.by_org("pharmacy").context("pharmacy on the roster")?;
    victim.agreement_key = hex::encode(mallory.agreement_public());
    victim.updated = u64::MAX - 1;
    r.certs
        .insert("pharmacy".into(), Cert::sign(victim, mallory));
    let squatter = Identity::generate();
    let squat = Member::of(&squatter, MESH, "insurer", vec![], 1)?;
    let now = fogmesh::hlc::wall_millis();
    let ops = [
        Action::Admit {
            member: squat,
            role: Role::Admin,
            invitation: String::new(),
        },
        Action::Role {
            org: "mallory".into(),
            role: Role::Admin,
        },
        Action::Remove {
            org: "hospital".into(),
        },
    ];
    for action in ops {
        let op = Op::sign(MESH, action, r.log.heads(), mallory, now);
        r.log.ops.insert(op.id(), op);
    }
    Ok(r)
}

fn hello_answer(roster: Roster) -> Vec<u8> {
    let answer = SyncResponse::Hello {
        roster: Some(roster),
        catalog: vec![],
        vectors: vec![],
        access: vec![],
    };
    frame(&proto::encode(&answer))
}

#[test]
fn a_member_forging_roster_entries_is_refused_by_every_node() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let hospital = TestNode::init(&dir.path().join("hospital"), "hospital")?;
    let pharmacy = TestNode::init(&dir.path().join("pharmacy"), "pharmacy")?;
    let mut mallory = TestNode::init(&dir.path().join("mallory"), "mallory")?;
    join(&hospital, &pharmacy)?;
    join(&hospital, &mallory)?;
    let nodes = [&hospital, &pharmacy];
    for n in nodes {
        wait(
            "three members on every roster",
            Duration::from_secs(30),
            || Ok(members(n)?.len() == 3),
        )?;
    }
    let before = member_of(&members(&hospital)?, "pharmacy")
        .context("pharmacy listed")?
        .clone();

    // A member that is no admin may not invite.
    let refused = pharmacy.cli(&["invite"]).code(1);
    ensure!(
        refused.stderr.contains("admins of the mesh"),
        "a non-admin's invite: {}",
        refused.stderr
    );

    mallory.stop()?;
    let key = Identity::load(&mallory.home)?;
    for n in nodes {
        let (peer, addr) = target(n)?;
        let mut c = RawClient::new(key.libp2p_keypair()?, peer, addr)?;
        c.connect()?;
        let honest = fetch_roster(&c)?;
        c.serve(Proto::Sync, hello_answer(forged(&honest, &key)?));
        // Tell the node our roster changed: it pulls it in its own catch-up.
        let nudge = c.request(
            Proto::Sync,
            frame(&proto::encode(&SyncRequest::RosterChanged)),
        );
        ensure!(
            matches!(nudge.message::<SyncResponse>()?, SyncResponse::Noted),
            "RosterChanged not noted"
        );
        wait(
            "the node to fetch the forged roster",
            Duration::from_secs(20),
            || Ok(c.received(Proto::Sync) > 0),
        )?;
        std::thread::sleep(Duration::from_millis(500));
        eprintln!("{} fetched mallory's forged roster", n.org);
    }
    for n in nodes {
        let list = members(n)?;
        let now = member_of(&list, "pharmacy").context("pharmacy listed")?;
        ensure!(
            now["agreement_key"] == before["agreement_key"] && now["author"] == before["author"],
            "{}: the pharmacy's keys changed: {now} (was {before})",
            n.org
        );
        ensure!(
            member_of(&list, "insurer").is_none(),
            "{}: squatter admitted",
            n.org
        );
        let m = member_of(&list, "mallory").context("mallory listed")?;
        ensure!(
            m["role"] == "member",
            "{}: mallory became {}",
            n.org,
            m["role"]
        );
        let h = member_of(&list, "hospital").context("hospital listed")?;
        ensure!(h["state"] == "active", "{}: the founder was removed", n.org);
        ensure!(list.len() == 3, "{}: {list:?}", n.org);
        let refused = wait("the refusal in the log", Duration::from_secs(10), || {
            Ok(n.log_tail().contains("roster item refused"))
        });
        ensure!(
            refused.is_ok(),
            "{}: no refusal logged:\n{}",
            n.org,
            n.log_tail()
        );
    }
    Ok(())
}

/// Redeems `secret` for a new organization `org` over a raw join; the admission.
fn raw_join(node: &TestNode, id: &Identity, org: &str, secret: &str) -> Result<Op> {
    let (peer, addr) = target(node)?;
    let mut c = RawClient::new(id.libp2p_keypair()?, peer, addr)?;
    c.connect()?;
    let member = Member::of(id, MESH, org, vec![], fogmesh::hlc::wall_millis())?;
    let req = JoinRequest {
        secret: secret.to_owned(),
        member,
    };
    match c
        .request(Proto::Join, frame(&proto::encode(&req)))
        .message()?
    {
        JoinResponse::Admitted { op } => Ok(*op),
        JoinResponse::Refused { reason } => bail!("{org} refused: {reason}"),
    }
}

fn invite_secret(node: &TestNode) -> Result<String> {
    let v = node.post("/v1/invites", &json!({ "ttl_secs": 600 }))?;
    let token = v["token"].as_str().context("token")?;
    Ok(Invite::decode(token)?.secret)
}

#[test]
fn a_join_into_a_200_member_roster_succeeds() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let founder = TestNode::init(&dir.path().join("hospital"), "hospital")?;
    let t0 = Instant::now();
    for i in 1..200 {
        let id = Identity::generate();
        let org = format!("org-{i:03}");
        let secret = invite_secret(&founder)?;
        let op = raw_join(&founder, &id, &org, &secret)?;
        if i == 1 {
            // Its answer "lost": the same invitation and key get the same admission again.
            let again = raw_join(&founder, &id, &org, &secret)?;
            ensure!(again == op, "a second redemption got another admission");
        }
    }
    eprintln!("199 raw joins in {:.1} s", t0.elapsed().as_secs_f64());
    ensure!(members(&founder)?.len() == 200, "the founder lists 200");
    let late = TestNode::init(&dir.path().join("late"), "late")?;
    let t1 = Instant::now();
    join(&founder, &late)?;
    eprintln!(
        "a real node joined the 200-member roster in {:.2} s",
        t1.elapsed().as_secs_f64()
    );
    let list = members(&late)?;
    ensure!(list.len() == 201, "the joiner lists {} members", list.len());
    ensure!(member_of(&list, "late").is_some_and(|m| m["role"] == "member"));
    Ok(())
}
