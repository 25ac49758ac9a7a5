use super::*;
use crate::mesh::roster::Roster;

pub(super) const NOW: u64 = 1_000_000;

pub(super) fn member(seed: u8, org: &str) -> (Identity, Member) {
    let id = Identity::from_seed([seed; 32]);
    let m = Member::of(&id, "flu", org, vec![], 10).expect("member");
    (id, m)
}

pub(super) fn admit(r: &mut Roster, by: &Identity, m: Member, role: Role) -> Op {
    let action = Action::Admit {
        member: m,
        role,
        invitation: String::new(),
    };
    r.sign_and_apply(action, by, NOW).expect("admit")
}

pub(super) fn remove(r: &mut Roster, by: &Identity, org: &str) -> Op {
    let action = Action::Remove { org: org.into() };
    r.sign_and_apply(action, by, NOW).expect("remove")
}

/// hospital (founder) with pharmacy and agency as admins and insurer as a member.
pub(super) fn mesh() -> (Vec<Identity>, Roster) {
    let (a, ma) = member(1, "hospital");
    let mut r = Roster::found(ma, &a).expect("found");
    let (b, mb) = member(2, "pharmacy");
    let (c, mc) = member(3, "agency");
    let (d, md) = member(4, "insurer");
    admit(&mut r, &a, mb, Role::Admin);
    admit(&mut r, &a, mc, Role::Admin);
    admit(&mut r, &a, md, Role::Member);
    (vec![a, b, c, d], r)
}

/// Every order in which `ops` can reach a node that holds `base`, one at a time, each time with
/// what the sender held already (a peer serves its whole roster): an operation whose deps have
/// not arrived is not kept, and comes again with the next delivery.
pub(super) fn every_order(base: &Roster, ops: &[Op]) -> Vec<Roster> {
    let mut out = Vec::new();
    permute(ops.to_vec(), 0, &mut |order: &[Op]| {
        let mut r = base.clone();
        let mut sent = base.clone();
        for op in order {
            sent.log.ops.insert(op.id(), op.clone());
            r.merge(&sent, NOW);
        }
        out.push(r);
    });
    out
}

pub(super) fn permute(mut v: Vec<Op>, k: usize, f: &mut dyn FnMut(&[Op])) {
    if k == v.len() {
        return f(&v);
    }
    for i in k..v.len() {
        v.swap(k, i);
        permute(v.clone(), k + 1, f);
        v.swap(k, i);
    }
}

#[test]
fn a_mutual_removal_removes_both_in_every_order() {
    let (ids, base) = mesh();
    let (mut on_b, mut on_c) = (base.clone(), base.clone());
    let rb = remove(&mut on_b, &ids[1], "agency");
    let rc = remove(&mut on_c, &ids[2], "pharmacy");
    let all = every_order(&base, &[rb, rc]);
    for r in &all {
        assert!(r.by_org("pharmacy").is_none() && r.by_org("agency").is_none());
        assert_eq!(r.orgs(), ["hospital", "insurer"]);
        assert_eq!(r.digest(), all[0].digest());
    }
}

#[test]
fn what_a_removed_admin_does_concurrently_with_its_removal_is_dropped() {
    let (ids, base) = mesh();
    let (mut on_a, mut on_b) = (base.clone(), base.clone());
    let removal = remove(&mut on_a, &ids[0], "pharmacy");
    // Concurrently, the pharmacy admits a stranger and demotes the agency.
    let (_, mx) = member(9, "mallory");
    let sneak = admit(&mut on_b, &ids[1], mx, Role::Admin);
    let demote = on_b
        .sign_and_apply(
            Action::Role {
                org: "agency".into(),
                role: Role::Member,
            },
            &ids[1],
            NOW,
        )
        .expect("demote");
    let all = every_order(&base, &[removal, sneak.clone(), demote]);
    for r in &all {
        assert!(
            r.by_org("mallory").is_none(),
            "the concurrent admission is dropped"
        );
        assert!(r.is_admin("agency"), "the concurrent demotion is dropped");
        assert!(r.dropped().contains_key(&sneak.id()));
        assert_eq!(r.digest(), all[0].digest());
    }
}

#[test]
fn what_an_admin_did_before_its_removal_stands() {
    let (ids, mut r) = mesh();
    let (_, mx) = member(9, "lab");
    admit(&mut r, &ids[1], mx, Role::Member);
    remove(&mut r, &ids[0], "pharmacy");
    assert!(r.by_org("lab").is_some(), "seen by the removal: kept");
    let (_, my) = member(10, "clinic");
    let late = Op::sign(
        "flu",
        Action::Admit {
            member: my,
            role: Role::Member,
            invitation: String::new(),
        },
        r.log.heads(),
        &ids[1],
        NOW,
    );
    assert!(matches!(
        r.apply(late),
        Err(crate::mesh::roster::Error::NotApplied(_))
    ));
}

#[test]
fn a_removed_key_is_never_admitted_again_and_a_non_member_signs_nothing() {
    let (ids, mut r) = mesh();
    remove(&mut r, &ids[0], "insurer");
    let (_, again) = member(4, "insurer-2");
    let refused = r.sign_and_apply(
        Action::Admit {
            member: again,
            role: Role::Member,
            invitation: String::new(),
        },
        &ids[0],
        NOW,
    );
    assert!(refused.is_err(), "{refused:?}");
    let (x, _) = member(9, "mallory");
    let refused = r.sign_and_apply(
        Action::Remove {
            org: "hospital".into(),
        },
        &x,
        NOW,
    );
    assert!(refused.is_err());
    let listed = r.list();
    let ins = listed.iter().find(|l| l.org == "insurer").expect("listed");
    assert_eq!((ins.state, ins.removed_by.is_some()), ("removed", true));
}

#[test]
fn concurrent_admissions_and_role_changes_converge_in_every_order() {
    let (ids, base) = mesh();
    let (mut on_a, mut on_b, mut on_c) = (base.clone(), base.clone(), base.clone());
    let (_, m1) = member(11, "lab");
    let (_, m2) = member(12, "lab-copy");
    let (_, m3) = member(13, "clinic");
    let o1 = admit(&mut on_a, &ids[0], m1, Role::Member);
    let o2 = admit(&mut on_b, &ids[1], m2, Role::Member);
    let o3 = on_c
        .sign_and_apply(
            Action::Role {
                org: "pharmacy".into(),
                role: Role::Member,
            },
            &ids[2],
            NOW,
        )
        .expect("demote");
    let o4 = admit(&mut on_c, &ids[2], m3, Role::Member);
    let all = every_order(&base, &[o1, o2, o3, o4]);
    for r in &all {
        assert_eq!(r.digest(), all[0].digest());
        assert_eq!(r.list(), all[0].list());
    }
}

// Regression tests from the attacker review of governed membership: each built the attack that
// worked before the fix and asserts that it no longer does.

pub(super) fn admit_action(m: Member, role: Role) -> Action {
    Action::Admit {
        member: m,
        role,
        invitation: String::new(),
    }
}

/// A roster holding `base`'s operations plus `extra`, as a peer would serve it.
pub(super) fn served(base: &Roster, extra: &[Op]) -> Roster {
    let mut r = base.clone();
    for op in extra {
        r.log.ops.insert(op.id(), op.clone());
    }
    r
}

pub(super) fn found_id(r: &Roster) -> OpId {
    let found = r
        .log
        .ops
        .iter()
        .find(|(_, o)| o.body.action.kind() == "found");
    found.expect("found").0.clone()
}

#[test]
fn a_plain_member_cannot_fill_the_log_or_leave_an_operation_waiting() {
    let (ids, base) = mesh();
    let insurer = &ids[3];
    let (_, me) = member(4, "insurer");
    let heads = base.log.heads();
    // Self-admissions as an admin: the incoming batch may not vouch for its own authors.
    let junk: Vec<Op> = (0..64)
        .map(|t| {
            Op::sign(
                "flu",
                admit_action(me.clone(), Role::Admin),
                heads.clone(),
                insurer,
                t,
            )
        })
        .collect();
    // And one operation naming an operation nobody holds.
    let ghost = Op::sign(
        "flu",
        admit_action(me, Role::Admin),
        vec!["0".repeat(64)],
        &ids[0],
        NOW,
    );
    let mut victim = base.clone();
    let (changed, errors) = victim.merge(&served(&base, &[&junk[..], &[ghost]].concat()), NOW);
    assert_eq!(changed, 0, "nothing kept");
    assert_eq!(errors.len(), 65);
    assert_eq!(victim.digest(), base.digest());
    victim
        .sign_and_apply(
            Action::Remove {
                org: "insurer".into(),
            },
            &ids[0],
            NOW,
        )
        .expect("governance still works");
}

#[test]
fn an_admin_cannot_take_over_a_members_name_with_a_second_admission() {
    let (ids, r) = mesh();
    let pharmacy_admission = r.entry("pharmacy").expect("pharmacy").admitted_by.clone();
    let (evil_id, evil) = member(66, "insurer");
    // Signed after only the pharmacy's own admission, so it sorts before the insurer's.
    let squat = Op::sign(
        "flu",
        admit_action(evil, Role::Admin),
        vec![pharmacy_admission],
        &ids[1],
        NOW,
    );
    let mut victim = r.clone();
    victim.merge(&served(&r, &[squat]), NOW);
    let evil_key = evil_id.author().to_string();
    assert!(
        victim.iter().all(|m| m.author != evil_key),
        "no entry has the attacker's key"
    );
    assert!(victim
        .dropped()
        .values()
        .any(|w| w.contains("conflicting admissions")));
}

#[test]
fn a_second_founding_is_never_kept() {
    let (ids, r) = mesh();
    let first = found_id(&r);
    let (_, mut m) = member(1, "agency");
    let refound = (0u64..)
        .map(|t| {
            m.updated = t;
            Op::sign(
                "flu",
                Action::Found { member: m.clone() },
                vec![],
                &ids[0],
                t,
            )
        })
        .find(|o| o.id() < first)
        .expect("a lower id");
    let mut v = r.clone();
    let (changed, _) = v.merge(&served(&r, &[refound]), NOW);
    assert_eq!(changed, 0);
    assert_eq!(
        v.by_org("agency").map(|m| m.author),
        Some(ids[2].author().to_string())
    );
}

#[test]
fn a_removed_admin_may_only_remove_the_admin_that_removed_it() {
    let (ids, mut r) = mesh();
    let before = r.log.heads();
    remove(&mut r, &ids[0], "pharmacy");
    let late = NOW + 30 * 86_400_000;
    let k1 = Op::sign(
        "flu",
        Action::Remove {
            org: "agency".into(),
        },
        before.clone(),
        &ids[1],
        late,
    );
    let mut v = r.clone();
    v.merge(&served(&r, &[k1]), late);
    assert!(v.is_admin("agency"), "not its remover: refused");
    assert!(v.is_admin("hospital"));
}

#[test]
fn certificates_of_one_date_converge_and_removals_by_removed_admins_stay_cheap() {
    use crate::mesh::roster::Cert;
    let (ids, r) = mesh();
    let (_, mut m) = member(4, "insurer");
    m.updated = 500;
    m.addresses = vec!["/ip4/10.0.0.1/tcp/1".into()];
    let c1 = Cert::sign(m.clone(), &ids[3]);
    m.addresses = vec!["/ip4/10.0.0.2/tcp/1".into()];
    let c2 = Cert::sign(m, &ids[3]);
    let (mut a, mut b) = (r.clone(), r.clone());
    a.admit(c1, NOW).expect("c1");
    b.admit(c2, NOW).expect("c2");
    let (a0, b0) = (a.clone(), b.clone());
    let ra = a.merge(&b0, NOW);
    let rb = b.merge(&a0, NOW);
    assert_eq!(a.certs, b.certs, "{ra:?} {rb:?}");
    assert_eq!(a.digest(), b.digest());

    // 2,000 removals by a removed admin, each naming 64 earlier ones.
    let (ids, mut r) = mesh();
    remove(&mut r, &ids[0], "pharmacy");
    let mut prev: Vec<OpId> = vec![found_id(&r)];
    let mut junk = Vec::new();
    for i in 0..2000u64 {
        let deps: Vec<OpId> = prev.iter().rev().take(MAX_DEPS).cloned().collect();
        let op = Op::sign(
            "flu",
            Action::Remove {
                org: "insurer".into(),
            },
            deps,
            &ids[1],
            i,
        );
        prev.push(op.id());
        junk.push(op);
    }
    let t = std::time::Instant::now();
    let mut victim = r.clone();
    victim.merge(&served(&r, &junk), NOW);
    eprintln!(
        "2,000 removals by a removed admin merged and resolved in {:?}",
        t.elapsed()
    );
    assert!(victim.by_org("insurer").is_some());
}

#[test]
fn passes_that_cycle_drop_the_union_and_say_so() {
    let (ids, r) = mesh();
    let mut on_a = r.clone();
    let y = on_a
        .sign_and_apply(
            Action::Role {
                org: "insurer".into(),
                role: Role::Admin,
            },
            &ids[2],
            NOW,
        )
        .expect("promote");
    let insurer_admission = r.entry("insurer").expect("insurer").admitted_by.clone();
    let pad = Op::sign(
        "flu",
        Action::Role {
            org: "hospital".into(),
            role: Role::Admin,
        },
        vec![insurer_admission],
        &ids[3],
        NOW,
    );
    let kill = Op::sign(
        "flu",
        Action::Remove {
            org: "agency".into(),
        },
        vec![pad.id()],
        &ids[3],
        NOW,
    );
    let mut v = on_a.clone();
    v.merge(&served(&on_a, &[pad, kill]), NOW);
    let st = v.log.resolve(&v.founder);
    assert!(
        st.applied.contains(&y.id()) || st.dropped.contains_key(&y.id()),
        "every operation is either applied or dropped with a reason"
    );
    assert_eq!(v.is_admin("insurer"), st.applied.contains(&y.id()));
}

// From the second review: what a removed or demoted admin, and key shadowing, could still do.

#[test]
fn a_removed_or_demoted_admin_cannot_evict_anyone_with_a_conflicting_admission() {
    // A removed admin admits its remover's name and the founder's name.
    let (ids, mut r) = mesh();
    remove(&mut r, &ids[2], "pharmacy");
    let (_, squat) = member(77, "agency");
    let evict = Op::sign(
        "flu",
        admit_action(squat, Role::Member),
        vec![found_id(&r)],
        &ids[1],
        NOW,
    );
    let (_, founder_name) = member(78, "hospital");
    let dissolve = Op::sign(
        "flu",
        admit_action(founder_name, Role::Member),
        vec![],
        &ids[1],
        NOW,
    );
    let mut v = r.clone();
    v.merge(&served(&r, &[evict, dissolve]), NOW);
    assert!(v.is_admin("agency") && !v.is_admin("pharmacy"));
    assert_eq!(v.orgs(), ["agency", "hospital", "insurer"]);
    // A demoted admin admits a member's name.
    let (ids, mut r) = mesh();
    r.sign_and_apply(
        Action::Role {
            org: "pharmacy".into(),
            role: Role::Member,
        },
        &ids[0],
        NOW,
    )
    .expect("demote");
    let (_, squat) = member(79, "insurer");
    let op = Op::sign(
        "flu",
        admit_action(squat, Role::Member),
        vec![found_id(&r)],
        &ids[1],
        NOW,
    );
    let mut v = r.clone();
    v.merge(&served(&r, &[op]), NOW);
    assert!(v.by_org("insurer").is_some());
}

#[test]
fn a_second_admission_of_a_promoted_admins_name_does_not_shadow_its_key() {
    let (ids, mut r) = mesh();
    let (lab, ml) = member(5, "lab");
    let lab_admission = admit(&mut r, &ids[0], ml, Role::Member);
    r.sign_and_apply(
        Action::Role {
            org: "lab".into(),
            role: Role::Admin,
        },
        &ids[0],
        NOW,
    )
    .expect("promote");
    remove(&mut r, &ids[0], "pharmacy");
    let base = r.clone();
    let (_, mut junk) = member(88, "lab");
    let shadow = (0u64..)
        .map(|t| {
            junk.updated = t;
            Op::sign(
                "flu",
                admit_action(junk.clone(), Role::Member),
                base.log.heads(),
                &ids[1],
                t,
            )
        })
        .find(|o| o.id() > lab_admission.id())
        .expect("a higher id");
    let mut on_lab = base.clone();
    remove(&mut on_lab, &lab, "insurer");
    let (mut w, mut v) = (base.clone(), base.clone());
    w.merge(&on_lab, NOW);
    w.merge(&served(&base, std::slice::from_ref(&shadow)), NOW);
    v.merge(&served(&base, &[shadow]), NOW);
    v.merge(&on_lab, NOW);
    for _ in 0..3 {
        let (w0, v0) = (w.clone(), v.clone());
        w.merge(&v0, NOW);
        v.merge(&w0, NOW);
    }
    assert_eq!(w.digest(), v.digest(), "two honest nodes converge");
    assert!(
        w.by_org("insurer").is_none(),
        "the lab's removal took effect"
    );
}

#[test]
fn many_concurrent_admissions_of_one_name_by_a_removed_admin_stay_cheap() {
    let (ids, mut r) = mesh();
    remove(&mut r, &ids[0], "pharmacy");
    let f = found_id(&r);
    let room = MAX_OPS - r.log.ops.len();
    let (_, mut m) = member(90, "squat");
    let junk: Vec<Op> = (0..room as u64)
        .map(|t| {
            m.updated = t;
            Op::sign(
                "flu",
                admit_action(m.clone(), Role::Admin),
                vec![f.clone()],
                &ids[1],
                t,
            )
        })
        .collect();
    let t = std::time::Instant::now();
    let mut v = r.clone();
    v.merge(&served(&r, &junk), NOW);
    eprintln!(
        "{room} admissions of one name by a removed admin: merged and resolved in {:?}",
        t.elapsed()
    );
    assert!(v.by_org("squat").is_none());
    assert_eq!(v.orgs(), ["agency", "hospital", "insurer"]);
}

#[test]
fn a_removed_admins_stored_operations_do_not_crowd_a_removal_out_of_the_next_deps() {
    let (ids, mut r) = mesh();
    let removal = remove(&mut r, &ids[0], "pharmacy");
    let f = found_id(&r);
    let junk: Vec<Op> = (0..100u64)
        .map(|t| {
            Op::sign(
                "flu",
                Action::Remove {
                    org: "insurer".into(),
                },
                vec![f.clone()],
                &ids[1],
                t,
            )
        })
        .collect();
    let mut v = r.clone();
    v.merge(&served(&r, &junk), NOW);
    assert!(
        v.log.heads().len() > MAX_DEPS,
        "the junk is stored, as heads"
    );
    let next = remove(&mut v, &ids[0], "insurer");
    assert!(
        next.body.deps.contains(&removal.id()),
        "the removal is among the deps"
    );
    assert!(v.by_org("insurer").is_none());
}
