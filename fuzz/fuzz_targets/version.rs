//! Version vectors and frontiers from peers (Hello answers carry encoded frontiers):
//! `VersionVector::decode`, `Frontier::decode`, then the operations the node runs on them.
//!
//! Asserts: both codecs are canonical (doc: "Canonical bytes", "Decodes strictly"), so bytes
//! that decode re-encode to the same bytes; a decoded frontier's tips name authors of its
//! vector; merge/join/meet/missing_from/dominates keep their algebra (merge dominates both
//! sides, nothing is missing from a merge, meet is dominated by both, join dominates both,
//! and what meet and join give encodes and decodes again).
#![no_main]

use fogmesh::version::{Frontier, VersionVector};
use libfuzzer_sys::fuzz_target;

fn check_vv(bytes: &[u8]) -> Option<VersionVector> {
    let v = VersionVector::decode(bytes).ok()?;
    assert_eq!(v.encode(), bytes, "version vector is not canonical");
    assert!(v.iter().all(|(_, s)| *s > 0));
    assert!(v.len() <= fogmesh::version::MAX_AUTHORS);
    Some(v)
}

fn check_frontier(bytes: &[u8]) -> Option<Frontier> {
    let f = Frontier::decode(bytes).ok()?;
    assert_eq!(f.encode(), bytes, "frontier is not canonical");
    assert!(
        f.tips.keys().all(|a| f.vv.get(a) > 0),
        "a tip outside the vector"
    );
    assert_eq!(
        f.digest(),
        Frontier::decode(&f.encode()).expect("re-decodes").digest()
    );
    Some(f)
}

fn algebra(a: &VersionVector, b: &VersionVector) {
    let mut ab = a.clone();
    ab.merge(b);
    let mut ba = b.clone();
    ba.merge(a);
    assert_eq!(ab, ba, "merge is not commutative");
    assert!(ab.dominates(a) && ab.dominates(b));
    assert!(ab.missing_from(a).is_empty() && ab.missing_from(b).is_empty());
    for (author, after, upto) in a.missing_from(b) {
        assert!(after < upto);
        assert_eq!(a.get(&author), after);
        assert_eq!(b.get(&author), upto);
    }
    assert_eq!(a.dominates(b), a.missing_from(b).is_empty());
    // `total()` saturates (it overflowed once: fuzz/regressions/version/total_overflow).
    let _ = a.total();
    let _ = a.digest();
}

fn frontier_algebra(x: &Frontier, y: &Frontier) {
    let m = x.meet(y);
    assert!(
        x.vv.dominates(&m.vv) && y.vv.dominates(&m.vv),
        "meet exceeds a side"
    );
    assert!(m.tips.keys().all(|a| m.vv.get(a) > 0));
    let mut j = x.clone();
    j.join(y);
    assert!(
        j.vv.dominates(&x.vv) && j.vv.dominates(&y.vv),
        "join falls short of a side"
    );
    assert!(j.tips.keys().all(|a| j.vv.get(a) > 0));
    // Authors a frontier names diverging are held to the same sequence on both sides.
    for (a, seq) in x.diverging(y) {
        assert_eq!((x.vv.get(&a), y.vv.get(&a)), (seq, seq));
    }
    // What the node stores must encode and decode again.
    for f in [&m, &j] {
        assert_eq!(Frontier::decode(&f.encode()).as_ref(), Ok(f));
    }
}

fuzz_target!(|data: &[u8]| {
    // Whole input as each codec.
    let v = check_vv(data);
    let f = check_frontier(data);
    if let Some(f) = &f {
        assert_eq!(f.vv.encode(), data[..f.vv.encode().len()]);
    }
    // Two halves, for the binary operations.
    let parts = fogmesh_fuzz::split_parts(data, 2);
    if parts.len() == 2 {
        if let (Some(a), Some(b)) = (check_vv(parts[0]), check_vv(parts[1])) {
            algebra(&a, &b);
        }
        if let (Some(x), Some(y)) = (check_frontier(parts[0]), check_frontier(parts[1])) {
            algebra(&x.vv, &y.vv);
            frontier_algebra(&x, &y);
        }
    }
    let _ = v;
});
