//! Evidence of equivocation from peers (`Push::evidence`, CBOR): `Evidence::decode`, `check`.
//!
//! Asserts: decode(encode(e)) == e for whatever decodes (CBOR via serde: not canonical at the byte
//! level); a fork that checks is of one author and dataset, at a sequence >= 1 that one of the
//! two messages names; checking is deterministic.
#![no_main]

use fogmesh::envelope::Envelope;
use fogmesh::equivocation::Evidence;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(e) = Evidence::decode(data) else {
        return;
    };
    assert_eq!(
        Evidence::decode(&e.encode()).as_ref().ok(),
        Some(&e),
        "round trip"
    );
    // A first message at sequence u64::MAX overflowed `a.seq + 1` once
    // (fuzz/regressions/evidence/seq_max_overflow).
    let checked = e.check();
    assert_eq!(checked.is_ok(), e.check().is_ok());
    if let Ok(fork) = checked {
        let a = Envelope::slot_of(&e.first.message).expect("a checked message parses");
        let b = Envelope::slot_of(&e.second.message).expect("a checked message parses");
        assert!(fork.seq >= 1);
        assert_eq!((&a.dataset, &a.author), (&fork.dataset, &fork.author));
        assert_eq!((&b.dataset, &b.author), (&fork.dataset, &fork.author));
        assert!(fork.seq == a.seq || fork.seq == b.seq);
    }
});
