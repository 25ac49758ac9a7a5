//! Invitation tokens typed or pasted by a user (`fogmesh join fm-invite-...`): `Invite::decode`.
//!
//! Asserts: whatever decodes encodes to a token that decodes to the same invitation (the token
//! text itself is not canonical: surrounding whitespace, JSON spacing and field order vary).
#![no_main]

use fogmesh::mesh::invite::Invite;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for token in [
        text.to_owned(),
        format!("{}{text}", fogmesh::mesh::invite::PREFIX),
    ] {
        if let Ok(inv) = Invite::decode(&token) {
            let again = inv.encode();
            // Re-encoding may add the defaulted `founding` field: past the cap is no round trip.
            if again.len() > fogmesh::mesh::invite::MAX_TOKEN_BYTES {
                continue;
            }
            assert_eq!(
                Invite::decode(&again).as_ref(),
                Ok(&inv),
                "encode/decode is not a round trip"
            );
            let _ = Invite::secret_hash(&inv.secret);
        }
    }
});
