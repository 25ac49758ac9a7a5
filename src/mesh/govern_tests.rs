use super::*;
use crate::mesh::roster::Roster;

const NOW: u64 = 1_000_000;

fn member(seed: u8, org: &str) -> (Identity, Member) {
    let id = Identity::from_seed([seed; 32]);
    let m = Member::of(&id, "flu", org, vec![], 10).expect("member");
    (id, m)
}

fn admit(r: &mut Roster, by: &Identity, m: Member, role: Role) -> Op {
    let action = Action::Admit {
        member: m,
        role,
        invitation: String::new(),
    };
    r.sign_and_apply(action, by, NOW).expect("admit")
}

fn remove(r: &mut Roster, by: &Identity, org: &str) -> Op {
    let action = Action::Remove { org: org.into() };
    r.sign_and_apply(action, by, NOW).expect("remove")
}

/// hospital (founder) with pharmacy and agency as admins and insurer as a member.
fn mesh() -> (Vec<Identity>, Roster) {
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

/// Every order in which `ops` can reach a node that holds `base`, one at a time.
fn every_order(base: &Roster, ops: &[Op]) -> Vec<Roster> {
    let mut out = Vec::new();
    permute(ops.to_vec(), 0, &mut |order: &[Op]| {
        let mut r = base.clone();
        for op in order {
            let mut one = base.clone();
            one.log.ops.insert(op.id(), op.clone());
            r.merge(&one, NOW);
        }
        out.push(r);
    });
    out
}

fn permute(mut v: Vec<Op>, k: usize, f: &mut dyn FnMut(&[Op])) {
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
