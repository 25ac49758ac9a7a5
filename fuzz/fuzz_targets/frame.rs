//! The wire framing under every protocol: a CBOR byte string with a hard cap per direction
//! (`net::codec::decode`, crate-private, replicated here over the public `net::Frame` and the
//! per-protocol caps of `net::Protocol`), and `mesh::shape::check`, the allocation-free pass
//! that counts items and depth before any message is decoded.
//!
//! Asserts: a frame that decodes is within its cap, and re-encodes (at most 16 bytes of header
//! over its payload) to bytes that decode to the same frame; the budgeted reader's header arithmetic (`read_held`) agrees with
//! the decoder on a definite-length byte string; `shape::check` never refuses as *malformed*
//! a value the CBOR decoder reads (trailing bytes aside), and counts at least one item.
#![no_main]

use fogmesh::mesh::shape;
use fogmesh::net::{Frame, Protocol};
use libfuzzer_sys::fuzz_target;

const FRAME_OVERHEAD: usize = 16;

/// `net::codec::decode`, as written there.
fn decode(bytes: &[u8], max: usize) -> Option<Frame> {
    if bytes.len() > max.saturating_add(FRAME_OVERHEAD) {
        return None;
    }
    match cbor4ii::serde::from_slice::<Frame>(bytes) {
        Ok(frame) if frame.0.len() > max => None,
        Ok(frame) => Some(frame),
        Err(_) => None,
    }
}

/// The header arithmetic of `FrameCodec::read_held`: the payload length a definite byte string
/// declares, and the header's length.
fn held_len(bytes: &[u8]) -> Option<(u64, usize)> {
    let (&head, rest) = bytes.split_first()?;
    let extra = match head {
        0x40..=0x57 => 0,
        0x58 => 1,
        0x59 => 2,
        0x5a => 4,
        0x5b => 8,
        _ => return None,
    };
    let len_bytes = rest.get(..extra)?;
    let mut b = [0u8; 8];
    b[8 - extra..].copy_from_slice(len_bytes);
    let len = if extra == 0 {
        u64::from(head - 0x40)
    } else {
        u64::from_be_bytes(b)
    };
    Some((len, 1 + extra))
}

fuzz_target!(|data: &[u8]| {
    for p in Protocol::ALL {
        for max in [p.max_request_bytes(), p.max_response_bytes(), 64] {
            let Some(frame) = decode(data, max) else {
                continue;
            };
            assert!(frame.0.len() <= max);
            let again = cbor4ii::serde::to_vec(Vec::new(), &frame).expect("encodes");
            assert!(again.len() <= frame.0.len() + FRAME_OVERHEAD);
            assert_eq!(decode(&again, max).as_ref(), Some(&frame));
            if let Some((len, header)) = held_len(data) {
                // The budgeted reader reads `header + len` bytes and refuses anything after them.
                if header as u64 + len == data.len() as u64 {
                    assert_eq!(len as usize, frame.0.len());
                }
            }
        }
    }
    let shape = shape::check(data);
    if let Ok(n) = shape {
        assert!(n >= 1);
    }
    // shape::check must let through whatever an honest peer's encoder (cbor4ii) writes. (Not
    // compared on `data` itself: cbor4ii's reader is lenient, it ignores trailing bytes and takes
    // an indefinite string with a chunk of another type; shape::check refuses both, which is what
    // keeps proto::decode strict. Reproducers: fuzz/regressions/frame.)
    if let Ok(v) = cbor4ii::serde::from_slice::<cbor4ii::core::Value>(data) {
        let honest = cbor4ii::serde::to_vec(Vec::new(), &v).expect("a value encodes");
        let checked = shape::check(&honest);
        assert!(
            !matches!(checked, Err(shape::Error::Malformed(_))),
            "shape::check calls what cbor4ii writes malformed: {checked:?}"
        );
    }
});
