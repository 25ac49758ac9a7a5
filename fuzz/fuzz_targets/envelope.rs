//! Envelopes from peers (push, fetch pages) and from the store: `Envelope::decode`, `verify`,
//! `decode_verified`, `slot_of`, `is_chained`.
//!
//! Asserts: the codec is strict and canonical ("exact lengths, no trailing bytes"), so any bytes
//! that decode re-encode to exactly the same bytes; decode_verified == decode + verify; the
//! signed message of a decoded envelope names the envelope's own slot; digests are stable.
#![no_main]

use fogmesh::envelope::{Envelope, GENESIS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = fogmesh::envelope::is_chained(data);
    // What equivocation evidence carries: a signed message alone.
    if let Ok(slot) = Envelope::slot_of(data) {
        assert!(slot.seq >= 1);
    }
    let decoded = Envelope::decode(data);
    let verified = Envelope::decode_verified(data);
    match &decoded {
        Err(_) => assert!(
            verified.is_err(),
            "decode_verified accepted what decode refused"
        ),
        Ok(env) => {
            assert_eq!(
                env.encode(),
                data,
                "decode(bytes) does not re-encode to bytes"
            );
            assert!(env.seq >= 1);
            if env.seq == 1 {
                assert!(env.prev.is_none() || env.prev == Some(GENESIS));
            }
            assert_eq!(env.prev.is_some(), fogmesh::envelope::is_chained(data));
            assert_eq!(verified.is_ok(), env.verify().is_ok());
            if let Ok(v) = &verified {
                assert_eq!(v, env);
            }
            let msg = env.signed_message();
            let slot = Envelope::slot_of(&msg).expect("the signed message of an envelope parses");
            assert_eq!(
                (&slot.dataset, &slot.author, slot.seq, slot.prev),
                (&env.dataset, &env.author, env.seq, env.prev)
            );
            assert_eq!(env.digest(), env.clone().digest());
        }
    }
});
