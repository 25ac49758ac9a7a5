//! The operations counted off a change's bytes are Automerge's own count, and bytes that claim
//! too much are refused before Automerge parses them.

use serde_json::json;

use super::*;
use crate::view::doc::tests::up;
use crate::view::doc::{decode_change, Doc};

#[test]
fn the_count_off_the_bytes_is_automerges_own() {
    let mut doc = Doc::new(&[1; 32]);
    let writes = [
        vec![up("a", json!({}))],
        vec![up(
            "b",
            json!({"n": 1, "s": "x", "l": [1, 2, 3], "m": {"k": [{}]}}),
        )],
        // Long runs of one value: run-length encoded into a few bytes.
        vec![up(
            "c",
            json!({"zeros": vec![0; 5000], "nulls": vec![(); 300]}),
        )],
        (0..500)
            .map(|i| up(&format!("r{i}"), json!({"i": i, "w": "ward"})))
            .collect(),
        vec![up("a", json!({"n": 2}))],
    ];
    for ups in writes {
        let bytes = doc.write(&ups, &[]).expect("write").expect("a change");
        let parsed = decode_change(bytes.clone()).expect("parses");
        assert_eq!(ops(&bytes), Ok(parsed.len() as u64));
    }
    let deletes: Vec<String> = (0..500).map(|i| format!("r{i}")).collect();
    let bytes = doc.write(&[], &deletes).expect("delete").expect("a change");
    assert_eq!(ops(&bytes), Ok(500));
}

/// A change chunk of actor `[1]` whose action column is `column` (Automerge would still check
/// the checksum, which is left zero: the count comes first).
fn claiming(column: &[u8]) -> Vec<u8> {
    let mut data = vec![0, 1, 1, 1, 1, 0, 0, 0, 1, 0x42];
    data.push(u8::try_from(column.len()).expect("short column"));
    data.extend(column);
    let mut bytes = vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 1];
    bytes.push(u8::try_from(data.len()).expect("short chunk"));
    bytes.extend(data);
    bytes
}

#[test]
fn a_change_claiming_billions_of_operations_is_refused_at_once() {
    // One run of 2^40 equal actions: six bytes.
    let run = [0x80, 0x80, 0x80, 0x80, 0x80, 0x20, 1];
    let bytes = claiming(&run);
    assert_eq!(ops(&bytes), Ok(1 << 40));
    // Refused before Automerge would walk them (which would not end in this test's lifetime).
    let refused = decode_change(bytes).expect_err("refused");
    assert!(refused.to_string().contains("operations"), "{refused}");
    // Literal and null runs count too; one past the cap is refused.
    assert_eq!(ops(&claiming(&[0x7e, 5, 6, 0, 3])), Ok(5));
    let cap = [0x80, 0x80, 0x80, 0x04, 1]; // 4 << 21 = 8 Mi
    assert_eq!(ops(&claiming(&cap)), Ok(MAX_CHANGE_OPS));
    assert!(check(&claiming(&cap)).is_ok());
    let over = [0x81, 0x80, 0x80, 0x04, 1];
    assert_eq!(
        check(&claiming(&over)),
        Err(Refusal::TooManyOps(MAX_CHANGE_OPS + 1))
    );
}

#[test]
fn compressed_and_truncated_chunks_are_refused() {
    let mut doc = Doc::new(&[1; 32]);
    let ups: Vec<_> = (0..200)
        .map(|i| up(&format!("r{i}"), json!({"i": i})))
        .collect();
    let bytes = doc.write(&ups, &[]).expect("write").expect("a change");
    let mut change = decode_change(bytes.clone()).expect("parses");
    let compressed = change.bytes().to_vec();
    assert_eq!(compressed[8], 2, "Automerge compressed it");
    assert_eq!(check(&compressed), Err(Refusal::NotARawChange(2)));
    for cut in [3, 9, 40, bytes.len() / 2] {
        assert!(check(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    assert!(check(&bytes).is_ok());
}
