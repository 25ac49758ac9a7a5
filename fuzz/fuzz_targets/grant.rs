//! Grants from peers (access bundles in Hello answers and pushes) and from the store:
//! `SignedGrant::decode`, `verify`, `decode_verified`.
//!
//! Asserts: the encoding is canonical (grant.rs: "Canonical encoding ... Decoding is strict"),
//! so bytes that decode re-encode to the same bytes; what decodes passes `Grant::validate`;
//! decode_verified == decode + verify; a decoded grant signed again by the owner verifies.
#![no_main]

use fogmesh::access::SignedGrant;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let owner = fogmesh_fuzz::id(1).author();
    let Ok(g) = SignedGrant::decode(data) else {
        assert!(SignedGrant::decode_verified(data, &owner).is_err());
        return;
    };
    assert_eq!(
        g.encode(),
        data,
        "decode(bytes) does not re-encode to bytes"
    );
    assert!(g.grant.validate().is_ok(), "a decoded grant fails validate");
    assert!(data.len() <= fogmesh::access::grant::MAX_GRANT_BYTES);
    let ok = g.verify(&owner).is_ok();
    assert_eq!(ok, SignedGrant::decode_verified(data, &owner).is_ok());
    // The node's own checks over a grant never panic.
    let _ = (
        g.grant.live(fogmesh_fuzz::NOW),
        g.grant.rights.actions(),
        g.grant.grantee.to_string(),
    );
    let first = fogmesh_fuzz::id(2).author();
    let _ = g.grant.cut_of(&first, &first);
    // Re-signed by the owner, the same grant verifies and still round-trips.
    let resigned = g.grant.clone().sign(&fogmesh_fuzz::id(1));
    let wire = resigned.encode();
    let back = SignedGrant::decode_verified(&wire, &owner)
        .expect("a re-signed grant decodes and verifies");
    assert_eq!(back, resigned);
});
