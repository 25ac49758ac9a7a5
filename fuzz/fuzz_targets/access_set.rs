//! A dataset's access state from peers: the CBOR `Bundle` of a Push or Hello answer
//! (`proto::decode`), merged into an `AccessSet` as the node does (`merge_bundle`, `holds_all`,
//! `digest`, `bundle`), then the write-authority checks over the result.
//!
//! Asserts: a merged set holds its own bundle; its bundle merged into a fresh set gives the same
//! digest and the same number of items; merging again adds nothing; merge is order-independent
//! when it succeeds both ways ("idempotent and order-independent for honest input"; bundles with
//! two different keys wrapped for one (epoch, recipient) are left out of that check).
#![no_main]

use fogmesh::access::{AccessSet, Bundle, SignedGrant, WrappedKey};
use fogmesh::apps::Action;
use fogmesh::mesh::proto;
use fogmesh_fuzz::{ds, id, NOW};
use libfuzzer_sys::fuzz_target;

fn items(s: &AccessSet) -> usize {
    s.grants().count() + s.wraps().count()
}

fuzz_target!(|data: &[u8]| {
    let Ok(b) = proto::decode::<Bundle>("access", data) else {
        return;
    };
    let owner = id(1).author();
    let mut set = AccessSet::new(ds());
    let merged = set.merge_bundle(&b, &owner);
    // Whatever was merged (all of it, or the good items before a bad one) is consistent.
    let mine = set.bundle();
    assert!(set.holds_all(&mine), "a set does not hold its own bundle");
    let mut copy = AccessSet::new(ds());
    let n = copy
        .merge_bundle(&mine, &owner)
        .expect("a set's own bundle merges");
    assert_eq!(n, items(&set));
    assert_eq!(copy.digest(), set.digest(), "same items, other digest");
    assert_eq!(
        copy.merge_bundle(&mine, &owner),
        Ok(0),
        "merging again added items"
    );
    assert!(set.epoch() >= set.grants().map(|g| g.grant.epoch).max().unwrap_or(0));
    // Order independence, when both orders merge cleanly.
    if merged.is_ok() {
        let wraps: Vec<WrappedKey> = b
            .wraps
            .iter()
            .filter_map(|w| WrappedKey::decode(w).ok())
            .collect();
        let one_per_slot = wraps.iter().all(|w| {
            wraps
                .iter()
                .all(|v| (v.epoch, v.recipient) != (w.epoch, w.recipient) || v == w)
        });
        let reversed = Bundle {
            grants: b.grants.iter().rev().cloned().collect(),
            wraps: b.wraps.iter().rev().cloned().collect(),
        };
        let mut other = AccessSet::new(ds());
        if other.merge_bundle(&reversed, &owner).is_ok() && one_per_slot {
            assert_eq!(
                other.digest(),
                set.digest(),
                "merge depends on the order of the items"
            );
        }
    }
    // What the node asks of the set afterwards.
    let (k2, k3) = (id(2).author(), id(3).author());
    for (org, key) in [("pharmacy", &k2), ("insurer", &k3)] {
        let w = fogmesh::access::Writer {
            org,
            key,
            first_key: key,
        };
        let _ = (set.may_write(w, set.epoch(), 1, NOW), set.ever_writes(w));
        let _ = set.allowing(org, "app", Action::Read, NOW);
        let _ = set.names_org(org, NOW);
        let _ = set.wraps_for(key).count();
    }
    let _ = (set.key_holders(NOW), set.next_seq());
    for g in set.grants() {
        assert!(SignedGrant::decode(&g.encode()).is_ok());
    }
});
