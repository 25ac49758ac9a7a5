//! Key rotation in governance: the new key takes over, the retired one signs nothing more, and
//! concurrent rotations, removals and operations converge in every delivery order.

use super::tests_support::*;
use super::*;
use crate::mesh::roster::{Error as RosterError, Roster};

fn rotate(r: &mut Roster, old: &Identity, seed: u8) -> (Identity, Op) {
    let new = Identity::from_seed([seed; 32]);
    let op = r.rotate(old, &new, vec![], 77, NOW).expect("rotate");
    (new, op)
}

fn remove_action(org: &str) -> Action {
    Action::Remove { org: org.into() }
}

#[test]
fn a_rotation_replaces_the_keys_and_the_retired_key_signs_nothing_more() {
    let (ids, mut r) = mesh();
    let old = &ids[1];
    let (new, op) = rotate(&mut r, old, 20);
    let m = r.by_org("pharmacy").expect("still a member");
    assert_eq!(m.author, new.author().to_string());
    assert_eq!(m.agreement_key, hex::encode(new.agreement_public()));
    let e = r.entry("pharmacy").expect("entry");
    assert_eq!(e.retired.len(), 1);
    assert_eq!(e.retired[0].member.author, old.author().to_string());
    assert_eq!(e.retired[0].until, 77);
    assert_eq!(e.role, Role::Admin, "the role is kept");
    // The retired key signs nothing more; the new one signs as the admin it is.
    let by_old = r.sign_and_apply(remove_action("insurer"), old, NOW);
    assert!(matches!(by_old, Err(RosterError::NotApplied(why)) if why.contains("retired")));
    r.sign_and_apply(remove_action("insurer"), &new, NOW)
        .expect("the new key removes");
    // A node that learns it all from a peer keeps every operation, the new key's included.
    let fresh = Roster::verified(&r, NOW).expect("verified");
    assert_eq!(fresh.digest(), r.digest());
    assert!(fresh.log.ops.contains_key(&op.id()));
    assert!(fresh.by_org("insurer").is_none());
}

#[test]
fn a_rotation_needs_the_new_keys_proof_a_fresh_key_and_its_own_organization() {
    let (ids, r) = mesh();
    let new = Identity::from_seed([21; 32]);
    let mut m = Member::of(&new, "flu", "pharmacy", vec![], NOW).expect("member");
    // The proof signed by another key than the one named.
    let wrong = rotation_proof("flu", "pharmacy", &ids[1].author().to_string(), &ids[3]);
    let forged = Op::sign(
        "flu",
        Action::Rotate {
            member: m.clone(),
            until: 1,
            proof: wrong,
        },
        r.heads(),
        &ids[1],
        NOW,
    );
    assert!(matches!(forged.check("flu"), Err(Error::Invalid { .. })));
    // The agency's key rotating the pharmacy's entry.
    let proof = rotation_proof("flu", "pharmacy", &ids[2].author().to_string(), &new);
    let action = Action::Rotate {
        member: m.clone(),
        until: 1,
        proof,
    };
    let mut other = r.clone();
    let res = other.sign_and_apply(action, &ids[2], NOW);
    assert!(matches!(res, Err(RosterError::NotApplied(why)) if why.contains("only its own")));
    // Rotating to a key another member holds.
    m = Member::of(&ids[2], "flu", "pharmacy", vec![], NOW).expect("member");
    let proof = rotation_proof("flu", "pharmacy", &ids[1].author().to_string(), &ids[2]);
    let action = Action::Rotate {
        member: m,
        until: 1,
        proof,
    };
    let mut taken = r.clone();
    let res = taken.sign_and_apply(action, &ids[1], NOW);
    assert!(matches!(res, Err(RosterError::NotApplied(why)) if why.contains("before")));
}

#[test]
fn two_rotations_of_one_key_that_did_not_see_each_other_remove_the_organization_in_every_order() {
    let (ids, base) = mesh();
    let (mut on_a, mut on_b) = (base.clone(), base.clone());
    let (_, r1) = rotate(&mut on_a, &ids[1], 22);
    let (_, r2) = rotate(&mut on_b, &ids[1], 23);
    let mut on_c = base.clone();
    let rm = remove(&mut on_c, &ids[0], "insurer");
    let all = every_order(&base, &[r1.clone(), r2.clone(), rm]);
    for r in &all {
        assert_eq!(r.digest(), all[0].digest());
        let e = r.entry("pharmacy").expect("entry");
        assert!(e.retired.is_empty(), "neither rotation stands");
        assert_eq!(e.removed_by.as_ref(), Some(&r1.id().min(r2.id())));
        assert!(r.dropped()[&r1.id()].contains("two hands"));
        assert!(r.by_org("insurer").is_none());
    }
}

fn key(i: u16) -> Identity {
    let mut seed = [0xEE; 32];
    seed[0] = (i & 0xff) as u8;
    seed[1] = (i >> 8) as u8;
    Identity::from_seed(seed)
}

/// A rotation of `org`'s key `old` to `new`, with the deps the signer chose.
fn rotation(org: &str, old: &Identity, new: &Identity, deps: Vec<OpId>) -> Op {
    let m = Member::of(new, "flu", org, vec![], NOW).expect("member");
    let proof = rotation_proof("flu", org, &old.author().to_string(), new);
    // The latest `until` a rotation may name: the retired key signs on to the end of year 9999.
    let until = crate::hlc::Timestamp::new(crate::record::TIME_MAX_MS, u16::MAX).0;
    let action = Action::Rotate {
        member: m,
        until,
        proof,
    };
    Op::sign("flu", action, deps, old, NOW)
}

/// From an attacker review: a thief of a key its organization rotated away signs a rotation
/// naming only old operations, so that it sorts first. It must not take the entry over: the
/// key is in two hands, and the organization is removed.
#[test]
fn a_backdated_rotation_by_a_stolen_retired_key_does_not_take_the_entry_over() {
    let (ids, mut r) = mesh();
    let legit = Identity::from_seed([30; 32]);
    r.rotate(&ids[3], &legit, vec![], 1_000, NOW)
        .expect("insurer rotates");
    let admission = r
        .log
        .ops
        .iter()
        .find(|(_, o)| matches!(&o.body.action, Action::Admit { member, .. } if member.org == "insurer"))
        .map(|(id, _)| id.clone())
        .expect("admission");
    let thief = key(2);
    let forged = rotation("insurer", &ids[3], &thief, vec![admission]);
    let mut victim = r.clone();
    victim.merge(&served(&r, &[forged]), NOW);
    let e = victim.entry("insurer").expect("entry");
    assert_ne!(e.member.author, thief.author().to_string());
    assert!(
        victim.by_org("insurer").is_none(),
        "a key in two hands removes its organization"
    );
}

/// From an attacker review: many concurrent rotations of one key reach two nodes in different
/// halves; what each stores must not depend on that, so they converge.
#[test]
fn concurrent_rotations_delivered_in_halves_converge() {
    let (ids, base) = mesh();
    let ops: Vec<Op> = (0..2 * MAX_ROTATIONS as u16)
        .map(|i| rotation("insurer", &ids[3], &key(100 + i), base.heads()))
        .collect();
    let (first, second) = ops.split_at(MAX_ROTATIONS);
    let (mut x, mut y) = (base.clone(), base.clone());
    x.merge(&served(&base, first), NOW);
    y.merge(&served(&base, second), NOW);
    let (xc, yc) = (x.clone(), y.clone());
    x.merge(&yc, NOW);
    y.merge(&xc, NOW);
    assert_eq!(x.digest(), y.digest());
    assert!(x.by_org("insurer").is_none());
}

/// From an attacker review: a retired key's rotations, which resolution drops, do not use up
/// its organization's rotations.
#[test]
fn a_retired_key_cannot_use_up_its_organizations_rotations() {
    let (ids, mut r) = mesh();
    let k1 = key(1);
    r.rotate(&ids[3], &k1, vec![], 1_000, NOW).expect("rotate");
    let junk: Vec<Op> = (0..MAX_ROTATIONS as u16)
        .map(|i| rotation("insurer", &ids[3], &key(300 + i), r.heads()))
        .collect();
    let mut peer = r.clone();
    peer.merge(&served(&r, &junk), NOW);
    let mut own = peer.clone();
    let legit = own
        .rotate(&k1, &key(2), vec![], 2_000, NOW)
        .expect("applies locally");
    let mut other = peer.clone();
    other.merge(&own, NOW);
    assert!(other.log.ops.contains_key(&legit.id()));
    assert_eq!(
        other.by_org("insurer").expect("member").author,
        key(2).author().to_string()
    );
}

#[test]
fn what_a_retired_key_signed_concurrently_with_its_rotation_is_dropped() {
    let (ids, base) = mesh();
    let (mut on_a, mut on_b) = (base.clone(), base.clone());
    let (_, rot) = rotate(&mut on_a, &ids[1], 24);
    let late = remove(&mut on_b, &ids[1], "insurer");
    let all = every_order(&base, &[rot, late.clone()]);
    for r in &all {
        assert_eq!(r.digest(), all[0].digest());
        assert!(
            r.by_org("insurer").is_some(),
            "the old key's removal is dropped"
        );
        assert!(r.dropped().contains_key(&late.id()));
    }
}

#[test]
fn a_removal_concurrent_with_a_rotation_removes_the_organization_and_both_keys() {
    let (ids, base) = mesh();
    let (mut on_a, mut on_b) = (base.clone(), base.clone());
    let (new, rot) = rotate(&mut on_a, &ids[3], 25);
    let rm = remove(&mut on_b, &ids[0], "insurer");
    let all = every_order(&base, &[rot, rm]);
    for r in &all {
        assert_eq!(r.digest(), all[0].digest());
        assert!(r.by_org("insurer").is_none());
        let banned: Vec<String> = r.removed_keys().into_iter().map(|m| m.author).collect();
        assert!(banned.contains(&ids[3].author().to_string()));
        assert!(
            r.log
                .ops
                .values()
                .all(|o| o.body.author != new.author().to_string()),
            "the new key signed nothing"
        );
    }
}

#[test]
fn a_plain_member_rotates_but_cannot_fill_the_log_or_rotate_another_entry() {
    let (ids, base) = mesh();
    let mut r = base.clone();
    let mut key = Identity::from_seed([4; 32]);
    for i in 0..MAX_ROTATIONS {
        let (next, _) = rotate(&mut r, &key, 100 + i as u8);
        key = next;
    }
    // One more is refused here, and no peer stores it.
    let next = Identity::from_seed([200; 32]);
    assert!(r.rotate(&key, &next, vec![], 77, NOW).is_err());
    let extra = rotation("insurer", &key, &next, r.heads());
    r.log.ops.insert(extra.id(), extra.clone());
    let mut peer = base.clone();
    let (_, errors) = peer.merge(&r, NOW);
    assert_eq!(
        peer.entry("insurer").expect("entry").retired.len(),
        MAX_ROTATIONS
    );
    assert!(!peer.log.ops.contains_key(&extra.id()));
    assert!(!errors.is_empty());
    // A member's key signing a rotation of the founder's entry is not even stored.
    let thief = Identity::from_seed([201; 32]);
    let m = Member::of(&thief, "flu", "hospital", vec![], NOW).expect("member");
    let proof = rotation_proof("flu", "hospital", &ids[3].author().to_string(), &thief);
    let op = Op::sign(
        "flu",
        Action::Rotate {
            member: m,
            until: 1,
            proof,
        },
        base.heads(),
        &ids[3],
        NOW,
    );
    let mut victim = base.clone();
    let (changed, _) = victim.merge(&served(&base, &[op]), NOW);
    assert_eq!(changed, 0);
    assert!(
        !admin_keys(&victim.founder, victim.log.ops.values()).contains(&thief.author().to_string())
    );
}

#[test]
fn the_founder_rotates_and_still_governs() {
    let (ids, mut r) = mesh();
    let (new, _) = rotate(&mut r, &ids[0], 26);
    r.sign_and_apply(remove_action("insurer"), &new, NOW)
        .expect("the founder's new key removes");
    let fresh = Roster::verified(&r, NOW).expect("a roster whose founder rotated verifies");
    assert_eq!(fresh.digest(), r.digest());
    assert!(fresh.is_admin("hospital"));
}

/// A rotation naming an `until` or a signing time past year 9999 is refused where it arrives;
/// the latest in that year passes.
#[test]
fn a_rotation_until_past_year_9999_is_refused() {
    let (ids, _) = mesh();
    let latest = rotation("insurer", &ids[3], &key(7), vec![]);
    assert_eq!(latest.check_times(), Ok(()));
    let m = Member::of(&key(7), "flu", "insurer", vec![], NOW).expect("member");
    let proof = rotation_proof("flu", "insurer", &ids[3].author().to_string(), &key(7));
    let until = crate::hlc::Timestamp::new(crate::record::TIME_MAX_MS + 1, 0).0;
    let late = Op::sign(
        "flu",
        Action::Rotate {
            member: m,
            until,
            proof,
        },
        vec![],
        &ids[3],
        NOW,
    );
    assert!(matches!(late.check_times(), Err(Error::Invalid { .. })));
    let signed_late = Op::sign(
        "flu",
        latest.body.action.clone(),
        vec![],
        &ids[3],
        crate::record::TIME_MAX_MS + 1,
    );
    assert!(matches!(
        signed_late.check_times(),
        Err(Error::Invalid { .. })
    ));
}
