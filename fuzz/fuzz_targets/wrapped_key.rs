//! Wrapped epoch keys from peers (access bundles): `WrappedKey::decode`, `verify`, `unwrap_key`.
//!
//! Asserts: the codec is strict (exact field sizes, `finish`), so bytes that decode re-encode to
//! the same bytes; verifying and opening a decoded key never panics, and only the owner's
//! signature verifies.
#![no_main]

use fogmesh::access::WrappedKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(w) = WrappedKey::decode(data) else {
        return;
    };
    assert_eq!(
        w.encode(),
        data,
        "decode(bytes) does not re-encode to bytes"
    );
    let owner = fogmesh_fuzz::id(1);
    let verified = w.verify(&owner.author()).is_ok();
    assert_eq!(verified, w.signed_by(&owner.author()));
    // The recipient (and anyone else) opening it: an error at worst.
    for n in [2u8, 3] {
        let _ = w.unwrap_key(&fogmesh_fuzz::id(n));
    }
    // Re-signed by the owner it verifies, and its wire form decodes to it.
    let r = w.resigned(&owner);
    assert!(r.verify(&owner.author()).is_ok());
    assert_eq!(WrappedKey::decode(&r.encode()).as_ref(), Ok(&r));
});
