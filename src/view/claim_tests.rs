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

fn uleb(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// A positive count as a signed LEB128 (a zero byte ends it where the last one's sign bit is
/// set).
fn sleb(n: u64) -> Vec<u8> {
    let mut out = uleb(n);
    if out.last().is_some_and(|b| b & 0x40 != 0) {
        let last = out.len() - 1;
        out[last] |= 0x80;
        out.push(0);
    }
    out
}

/// A change chunk of actor `[1]`, sequence 1, numbered from 1, holding `columns` (spec, data);
/// its checksum is left zero (Automerge 0.12 does not check it, and the count comes first).
fn chunk(columns: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut data = vec![0, 1, 1, 1, 1, 0, 0, 0];
    data.extend(uleb(columns.len() as u64));
    for (spec, column) in columns {
        data.push(*spec);
        data.extend(uleb(column.len() as u64));
    }
    for (_, column) in columns {
        data.extend(column);
    }
    let mut bytes = vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 1];
    bytes.extend(uleb(data.len() as u64));
    bytes.extend(data);
    bytes
}

/// `n` operations `ROOT.k = null`, each column one run: a few dozen bytes whatever `n`.
fn nulls(n: u64) -> Vec<u8> {
    let run = |value: &[u8]| [sleb(n), value.to_vec()].concat();
    chunk(&[
        (0x15, run(&[1, b'k'])), // key: the string "k"
        (0x34, uleb(n)),         // insert: n times false
        (0x42, run(&[1])),       // action: set
        (0x56, run(&[0])),       // value: null
        (0x70, run(&[0])),       // predecessors: none
    ])
}

/// A change whose action column is `column` alone.
fn claiming(column: &[u8]) -> Vec<u8> {
    chunk(&[(0x42, column.to_vec())])
}

#[test]
fn a_change_claiming_billions_of_operations_is_refused_at_once() {
    // The shape is one Automerge walks operation by operation...
    let small = automerge::Change::from_bytes(nulls(1000)).expect("Automerge parses it");
    assert_eq!(small.len(), 1000);
    assert_eq!(ops(&nulls(1000)), Ok(1000));
    assert!(decode_change(nulls(1000)).is_ok());
    // ...and 2^40 of them take 64 bytes: refused before Automerge would walk them (which would
    // not end in this test's lifetime).
    let bomb = nulls(1 << 40);
    assert!(bomb.len() <= 64, "{} bytes", bomb.len());
    assert_eq!(ops(&bomb), Ok(1 << 40));
    let refused = decode_change(bomb).expect_err("refused");
    assert!(refused.to_string().contains("operations"), "{refused}");
    // Literal and null runs count too; the cap is taken, one past it refused.
    assert_eq!(ops(&claiming(&[0x7e, 5, 6, 0, 3])), Ok(5));
    let cap = [sleb(MAX_CHANGE_OPS), vec![1]].concat();
    assert!(check(&claiming(&cap)).is_ok());
    let over = [sleb(MAX_CHANGE_OPS + 1), vec![1]].concat();
    assert_eq!(
        check(&claiming(&over)),
        Err(Refusal::TooManyOps(MAX_CHANGE_OPS + 1))
    );
}

#[test]
fn one_operation_claiming_billions_of_predecessors_is_refused() {
    // One action, and predecessor actor and counter columns of 2^40 entries each: Automerge
    // would push 2^40 predecessors for that one operation.
    let run = [sleb(1 << 40), vec![0]].concat();
    let bytes = chunk(&[(0x42, vec![1, 1]), (0x71, run.clone()), (0x73, run)]);
    assert_eq!(check(&bytes), Err(Refusal::TooManyOps(1 << 40)));
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

#[test]
fn a_batch_takes_its_first_change_whatever_it_claims_and_the_others_within_the_budget() {
    assert!(joins_batch(0, MAX_CHANGE_OPS));
    assert!(joins_batch(BATCH_OPS - 10, 10));
    assert!(!joins_batch(BATCH_OPS - 10, 11));
    assert!(!joins_batch(1, u64::MAX));
    // A batch of equal changes stops where the next one would pass the budget.
    let (mut taken, mut joined) = (0, 0);
    while joins_batch(taken, 300_000) {
        taken += 300_000;
        joined += 1;
    }
    assert_eq!(joined, 3);
}
