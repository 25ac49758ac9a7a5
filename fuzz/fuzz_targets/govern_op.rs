//! Governance operations (JSON, as stored and as signed; the same `Op` travels inside
//! `JoinResponse::Admitted` and rosters): `Op::check`, `Op::id`, then resolution through
//! `Roster::apply` and `Roster::merge`/`Roster::verified`.
//!
//! Structure-aware: the input is a JSON array of operations; an operation whose `author` (or, for
//! `rotate`, whose new key) is one of the fixture identities 1..=6 is signed again with that key
//! before use, so the fuzzer reaches resolution with valid signatures instead of stopping at
//! the signature check.
//!
//! Asserts: `check` returns the operation's `id`; an operation `apply` refuses leaves the roster
//! unchanged; whatever `apply` or `merge` leaves re-verifies to the same roster (same digest,
//! same member listing), i.e. a restart (`Roster::verified` of the stored roster) rebuilds what
//! the node had; resolution is a function of the set of operations (merging the applied set into
//! the fixture gives the sequentially applied roster).
#![no_main]

use fogmesh::mesh::govern::{self, Action, Op};
use fogmesh::mesh::roster::Roster;
use fogmesh_fuzz::{id, NOW};
use libfuzzer_sys::fuzz_target;

fn fixture_key(hex_key: &str) -> Option<u8> {
    (1..=6u8).find(|n| id(*n).author().to_string() == hex_key)
}

/// Signs `op` again with the fixture key it names (and its rotation proof with the new key).
fn resign(mut op: Op) -> Op {
    if let Action::Rotate { member, proof, .. } = &mut op.body.action {
        if let Some(n) = fixture_key(&member.author) {
            *proof =
                govern::rotation_proof(fogmesh_fuzz::MESH, &member.org, &op.body.author, &id(n));
        }
    }
    match fixture_key(&op.body.author) {
        Some(n) => Op::sign(
            &op.body.mesh,
            op.body.action,
            op.body.deps,
            &id(n),
            op.body.time,
        ),
        None => op,
    }
}

fn listing(r: &Roster) -> String {
    serde_json::to_string(&r.list()).expect("listing serializes")
}

fn same_after_restart(r: &Roster, what: &str) {
    let rebuilt = Roster::verified(r, NOW).expect("a roster the node holds verifies");
    assert_eq!(
        rebuilt.digest(),
        r.digest(),
        "{what}: a restart rebuilds another roster"
    );
    assert_eq!(
        listing(&rebuilt),
        listing(r),
        "{what}: a restart resolves other members"
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(ops) = serde_json::from_slice::<Vec<Op>>(data) else {
        return;
    };
    if ops.len() > 8 {
        return;
    }
    let ops: Vec<Op> = ops.into_iter().map(resign).collect();
    let mut r = fogmesh_fuzz::roster().clone();
    let mut applied = Vec::new();
    for op in &ops {
        if let Ok(checked) = op.check(fogmesh_fuzz::MESH) {
            assert_eq!(checked, op.id());
        }
        // What a stored rotation goes through on restart.
        let json = serde_json::to_vec(op).expect("op serializes");
        assert_eq!(serde_json::from_slice::<Op>(&json).ok().as_ref(), Some(op));
        let before = r.digest();
        match r.apply(op.clone()) {
            Ok(i) => {
                assert_eq!(i, op.id());
                applied.push(op.clone());
            }
            Err(_) => assert_eq!(r.digest(), before, "a refused operation changed the roster"),
        }
    }
    same_after_restart(&r, "apply");
    // The same operations as a peer's roster, merged.
    same_after_restart(&merged_from(&ops), "merge");
    // Only what `apply` took, merged: the same roster as applying it in order.
    let m2 = merged_from(&applied);
    assert_eq!(
        m2.digest(),
        r.digest(),
        "applied in order and merged as a set differ"
    );
    assert_eq!(listing(&m2), listing(&r));
});

/// The fixture roster after merging a peer's roster that holds `ops`.
fn merged_from<'a>(ops: impl IntoIterator<Item = &'a Op>) -> Roster {
    let mut other = fogmesh_fuzz::roster().clone();
    for op in ops {
        other.log.ops.insert(op.id(), op.clone());
    }
    let mut merged = fogmesh_fuzz::roster().clone();
    let _ = merged.merge(&other, NOW);
    merged
}
