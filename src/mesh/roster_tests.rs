use super::*;

const NOW: u64 = 1_000_000;

fn member(seed: u8, org: &str) -> (Identity, Member) {
    let id = Identity::from_seed([seed; 32]);
    let m = Member::of(&id, "flu", org, vec!["/ip4/127.0.0.1/tcp/1".into()], 10).expect("member");
    (id, m)
}

fn founded() -> (Identity, Roster) {
    let (a, ma) = member(1, "hospital");
    let r = Roster::found(ma, &a).expect("found");
    (a, r)
}

fn admit(r: &mut Roster, by: &Identity, m: Member, role: Role) -> Result<Op, Error> {
    let action = Action::Admit {
        member: m,
        role,
        invitation: "00".into(),
    };
    r.sign_and_apply(action, by, NOW)
}

#[test]
fn only_admins_admit_and_every_member_chains_to_the_founder() {
    let (a, mut r) = founded();
    let (b, mb) = member(2, "pharmacy");
    admit(&mut r, &a, mb, Role::Member).expect("the founder admits");
    let (_, mc) = member(3, "insurer");
    let refused = admit(&mut r, &b, mc.clone(), Role::Member);
    assert!(
        matches!(refused, Err(Error::NotApplied(ref w)) if w.contains("not an admin")),
        "{refused:?}"
    );
    assert!(r.by_org("insurer").is_none());
    r.sign_and_apply(
        Action::Role {
            org: "pharmacy".into(),
            role: Role::Admin,
        },
        &a,
        NOW,
    )
    .expect("promote");
    admit(&mut r, &b, mc, Role::Member).expect("an admin admits");
    assert_eq!(r.orgs(), ["hospital", "insurer", "pharmacy"]);
    assert_eq!(
        r.by_org("pharmacy").map(|m| m.peer_id),
        Some(b.peer_id().expect("p").to_string())
    );
}

#[test]
fn a_member_cannot_take_over_another_members_entry() {
    let (a, mut r) = founded();
    let (v, mv) = member(2, "pharmacy");
    let (x, mx) = member(3, "insurer");
    admit(&mut r, &a, mv.clone(), Role::Member).expect("v");
    admit(&mut r, &a, mx, Role::Member).expect("x");
    // The attacker re-signs the victim's entry with its own X25519 key and the largest date.
    let mut forged = mv.clone();
    forged.agreement_key = hex::encode(x.agreement_public());
    forged.updated = u64::MAX;
    assert!(matches!(
        r.admit(Cert::sign(forged.clone(), &x), NOW),
        Err(Error::OrgTaken(_))
    ));
    // Even signed with the victim's own key, a change of keys is not an address update.
    assert!(matches!(
        r.admit(Cert::sign(forged, &v), NOW),
        Err(Error::OrgTaken(_))
    ));
    let mut addr = mv.clone();
    addr.addresses = vec!["/ip4/10.0.0.2/tcp/7071".into()];
    addr.updated = u64::MAX;
    assert!(matches!(
        r.admit(Cert::sign(addr.clone(), &x), NOW),
        Err(Error::Signature(_))
    ));
    assert!(matches!(
        r.admit(Cert::sign(addr.clone(), &v), NOW),
        Err(Error::Future(_))
    ));
    addr.updated = NOW;
    assert_eq!(r.admit(Cert::sign(addr.clone(), &v), NOW), Ok(true));
    assert_eq!(r.admit(Cert::sign(addr, &v), NOW), Ok(false), "not newer");
    let now = r.by_org("pharmacy").expect("pharmacy");
    assert_eq!(now.agreement_key, mv.agreement_key, "keys unchanged");
    assert_eq!(now.addresses, ["/ip4/10.0.0.2/tcp/7071"]);
}

#[test]
fn strangers_forgeries_and_bad_addresses_are_refused() {
    let (a, mut r) = founded();
    let (x, mx) = member(9, "mallory");
    assert!(matches!(
        r.admit(Cert::sign(mx.clone(), &x), NOW),
        Err(Error::UnknownSigner(_))
    ));
    let mut op = Op::sign(
        "flu",
        Action::Admit {
            member: mx.clone(),
            role: Role::Admin,
            invitation: String::new(),
        },
        r.log.heads(),
        &a,
        NOW,
    );
    op.body.action = Action::Remove {
        org: "hospital".into(),
    };
    assert!(matches!(
        r.apply(op),
        Err(Error::Governance(govern::Error::Signature(_)))
    ));
    let (_, mut bad) = member(4, "pharmacy");
    bad.addresses = vec!["not an address".into()];
    assert!(matches!(
        admit(&mut r, &a, bad, Role::Member),
        Err(Error::Governance(govern::Error::Invalid { .. }))
    ));
    let (_, mut mp) = member(4, "pharmacy");
    mp.peer_id = a.peer_id().expect("p").to_string();
    assert!(admit(&mut r, &a, mp, Role::Member).is_err());
}

#[test]
fn rosters_merge_whatever_the_order_and_survive_a_round_trip() {
    let (a, mut r1) = founded();
    let (b, mb) = member(2, "pharmacy");
    let (_, mc) = member(3, "insurer");
    let mut r2 = r1.clone();
    admit(&mut r2, &a, mb, Role::Admin).expect("b");
    admit(&mut r2, &b, mc, Role::Member).expect("c");
    let (changed, errors) = r1.merge(&r2, NOW);
    assert_eq!((changed, errors), (2, vec![]));
    assert_eq!(r1, r2);
    assert_eq!(r1.digest(), r2.digest());
    let wire: Roster =
        serde_json::from_slice(&serde_json::to_vec(&r1).expect("json")).expect("back");
    let again = Roster::verified(&wire, NOW).expect("verified");
    assert_eq!(again, r1);
    let (x, mx) = member(8, "other");
    let foreign = Roster::found(mx, &x).expect("found");
    assert_eq!(r1.merge(&foreign, NOW).0, 0);
}

#[test]
fn a_roster_of_1024_members_fits_a_sync_answer_and_an_admission_fits_a_join_answer() {
    let (a, mut r) = founded();
    let mut last = None;
    for i in 1..MAX_MEMBERS {
        let mut seed = [7u8; 32];
        seed[..2].copy_from_slice(&(i as u16).to_le_bytes());
        let id = Identity::from_seed(seed);
        let addrs = vec![format!("/ip4/10.0.{}.{}/tcp/7071", i / 256, i % 256)];
        let m = Member::of(&id, "flu", &format!("org-{i:04}"), addrs, 10).expect("member");
        let action = Action::Admit {
            member: m,
            role: Role::Member,
            invitation: "00".into(),
        };
        // Signed as a chain, resolved once below: as a joiner receives it.
        let op = Op::sign("flu", action, r.log.heads(), &a, NOW);
        r.log.ops.insert(op.id(), op.clone());
        last = Some(op);
    }
    let t = std::time::Instant::now();
    let r = Roster::verified(&r, NOW).expect("verified");
    eprintln!(
        "{} members verified and resolved in {:?}",
        r.orgs().len(),
        t.elapsed()
    );
    assert_eq!(r.orgs().len(), MAX_MEMBERS);
    let bytes = crate::mesh::proto::encode(&r).len();
    eprintln!("a {MAX_MEMBERS}-member roster encodes to {bytes} bytes");
    assert!(bytes < crate::net::MAX_SYNC_RESPONSE_BYTES / 4, "{bytes}");
    let answer = crate::mesh::proto::JoinResponse::Admitted {
        op: Box::new(last.expect("one")),
    };
    let bytes = crate::mesh::proto::encode(&answer).len();
    assert!(bytes < crate::net::MAX_JOIN_BYTES / 16, "{bytes}");
}

#[test]
fn times_past_year_9999_are_refused_and_a_far_future_admission_does_not_freeze_addresses() {
    let (a, mut r) = founded();
    let max = crate::record::TIME_MAX_MS;
    // Signed here: refused before it is applied.
    let (_, late) = member(2, "pharmacy");
    let mut late = late;
    late.updated = max + 1;
    assert!(matches!(
        admit(&mut r, &a, late.clone(), Role::Member),
        Err(Error::Governance(govern::Error::Invalid { .. }))
    ));
    // From a peer: refused alone where it arrives, the sound one beside it taken.
    let mut peer = r.clone();
    let (_, mi) = member(3, "insurer");
    admit(&mut peer, &a, mi, Role::Member).expect("insurer");
    let op = Op::sign(
        "flu",
        Action::Admit {
            member: late,
            role: Role::Member,
            invitation: "00".into(),
        },
        peer.heads(),
        &a,
        NOW,
    );
    peer.log
        .insert(op.id(), op)
        .expect("stored as a peer would");
    let (new, errors) = r.merge(&peer, NOW);
    assert_eq!(new, 1, "the sound admission is taken");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(r.by_org("insurer").is_some() && r.by_org("pharmacy").is_none());

    // An admission dated far ahead (within year 9999) does not freeze the member's addresses.
    let (v, mut mv) = member(4, "agency");
    mv.updated = max;
    admit(&mut r, &a, mv.clone(), Role::Member).expect("dated in year 9999, still admitted");
    let mut moved = mv;
    moved.addresses = vec!["/ip4/10.0.0.9/tcp/7071".into()];
    moved.updated = NOW;
    assert_eq!(r.admit(Cert::sign(moved, &v), NOW), Ok(true));
    assert_eq!(
        r.by_org("agency").expect("agency").addresses,
        ["/ip4/10.0.0.9/tcp/7071"]
    );
}
