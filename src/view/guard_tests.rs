//! The fuzzers' reproducers (fuzz/regressions/doc_apply), run through the guard as the live path
//! runs them: each leaves a document whose snapshot loads, with the same records.

use std::panic::catch_unwind;

use automerge::{Automerge, Change, SaveOptions};

use super::super::doc::{Doc, Error};
use super::decode_change;
use crate::record::Record;

/// The document the fuzz target starts from (written by fuzz/examples/seed.rs).
const BASE: &[u8] = include_bytes!("../../fuzz/data/base_doc.bin");

/// The reproducers whose changes applied unguarded but made a snapshot that does not load.
const BREAKING: [(&str, &[u8]); 4] = [
    (
        "noncanonical_change_heads",
        include_bytes!("../../fuzz/regressions/doc_apply/noncanonical_change_heads"),
    ),
    (
        "mismatching_heads_in_context",
        include_bytes!("../../fuzz/regressions/doc_apply/mismatching_heads_in_context"),
    ),
    (
        "delete_unknown_pred_missing_ops",
        include_bytes!("../../fuzz/regressions/doc_apply/delete_unknown_pred_missing_ops"),
    ),
    (
        "load_panics_collector_assert",
        include_bytes!("../../fuzz/regressions/doc_apply/load_panics_collector_assert"),
    ),
];

/// Splits a fuzz input as the target does: a mode byte, then up to 8 u16-length-prefixed
/// changes (the whole rest as one if none of those parse).
fn changes_of(input: &[u8]) -> (u8, Vec<Change>) {
    let (&mode, mut rest) = input.split_first().expect("a mode byte");
    let whole = rest;
    let mut out = Vec::new();
    while rest.len() >= 2 && out.len() < 8 {
        let n = (u16::from_be_bytes([rest[0], rest[1]]) as usize).min(rest.len() - 2);
        out.extend(decode_change(rest[2..2 + n].to_vec()).ok());
        rest = &rest[2 + n..];
    }
    if out.is_empty() {
        out.extend(decode_change(whole.to_vec()).ok());
    }
    (mode, out)
}

fn sorted(mut v: Vec<Record>) -> Vec<Record> {
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

fn base() -> Doc {
    let am = Automerge::load(BASE).expect("the base document loads");
    Doc::from_automerge(am.with_actor(automerge::ActorId::from(&[9u8; 32][..])))
}

/// Runs `input` through the guard; returns whether it was stopped (refused, or the apply
/// reported a broken document, after which the node rebuilds from its store: here, `base`).
fn guarded(input: &[u8]) -> (Doc, bool) {
    let (mode, changes) = changes_of(input);
    assert!(!changes.is_empty(), "the reproducer holds a change");
    let mut doc = base();
    let refused: Vec<usize> = doc
        .refused(&changes, true)
        .into_iter()
        .map(|(i, _)| i)
        .collect();
    let ok: Vec<Change> = (0..changes.len())
        .filter(|i| !refused.contains(i))
        .map(|i| changes[i].clone())
        .collect();
    let stopped = !refused.is_empty();
    if ok.is_empty() {
        return (doc, stopped);
    }
    let result = if mode & 1 == 0 {
        doc.apply(ok).map(|_| ())
    } else {
        doc.apply_all(ok)
    };
    match result {
        Err(e) if e.broke_document() => (base(), true),
        _ => (doc, stopped),
    }
}

#[test]
fn changes_that_would_break_a_snapshot_are_stopped_and_snapshots_load() {
    for (name, input) in BREAKING {
        let (mut doc, stopped) = guarded(input);
        assert!(stopped, "{name}: the guard let it through");
        let records = sorted(doc.read_all());
        let saved = doc.automerge().save_with_options(SaveOptions {
            retain_orphans: false,
            ..Default::default()
        });
        let mut loaded = Doc::load(&saved, &[9; 32]).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(sorted(loaded.read_all()), records, "{name}");
    }
}

#[test]
fn bytes_automerge_panics_on_are_refused_as_not_a_change() {
    let input = include_bytes!("../../fuzz/regressions/doc_apply/change_from_bytes_panics");
    let rest = &input[1..];
    let mut candidates = vec![rest.to_vec()];
    let mut at = rest;
    while at.len() >= 2 {
        let n = (u16::from_be_bytes([at[0], at[1]]) as usize).min(at.len() - 2);
        candidates.push(at[2..2 + n].to_vec());
        at = &at[2 + n..];
    }
    let mut panicking = 0;
    for bytes in candidates {
        let raw = catch_unwind(|| Change::from_bytes(bytes.clone()).is_ok());
        let guarded = catch_unwind(|| decode_change(bytes));
        let guarded = guarded.expect("decode_change never panics");
        if raw.is_err() {
            panicking += 1;
            assert!(
                matches!(&guarded, Err(Error::NotAChange(why)) if why.contains("automerge failed")),
                "{guarded:?}"
            );
        }
    }
    // If an Automerge upgrade stops panicking on it, this reproducer no longer tests the guard.
    assert!(
        panicking > 0,
        "Change::from_bytes no longer panics on the reproducer"
    );
}

#[test]
fn a_snapshot_automerge_panics_on_does_not_load_and_does_not_panic() {
    // The document the collector-assert reproducer left, saved before the guard existed: made
    // again here by applying it with no guard (Automerge alone).
    let (_, changes) = changes_of(BREAKING[3].1);
    let mut am = Automerge::load(BASE).expect("base");
    let applied = catch_unwind(std::panic::AssertUnwindSafe(|| am.apply_changes(changes)));
    assert!(matches!(applied, Ok(Ok(()))), "applies unguarded");
    let saved = catch_unwind(std::panic::AssertUnwindSafe(|| am.save()));
    let Ok(saved) = saved else {
        return; // Automerge no longer even saves it: nothing to load.
    };
    let loaded = catch_unwind(|| Doc::load(&saved, &[9; 32]).map(|_| ()));
    assert!(matches!(loaded, Ok(Err(_))), "{loaded:?}");
}

/// From the attacker review of the guard: changes that apply and whose saved document then does
/// not load, which no fogmesh node makes, are refused before Automerge sees them.
#[test]
fn changes_no_fogmesh_node_makes_are_refused() {
    use automerge::transaction::Transactable;
    let up = |id: &str| super::super::doc::Upsert {
        id: id.into(),
        name: format!("ward/{id}"),
        time: 1,
        data: serde_json::Map::new(),
    };
    let mut author = Doc::new(&[4; 32]);
    let first = author
        .write(&[up("a")], &[])
        .expect("write")
        .expect("a change");
    let second = author
        .write(&[up("b")], &[])
        .expect("write")
        .expect("a change");
    let (first, second) = (
        decode_change(first).expect("first"),
        decode_change(second).expect("second"),
    );
    let victim = Doc::new(&[5; 32]);
    assert!(
        victim
            .refused(&[first.clone(), second.clone()], true)
            .is_empty(),
        "honest"
    );

    // Operation counters that go back below its dependency's.
    let mut back = second.decode();
    back.start_op = std::num::NonZeroU64::new(1).expect("non-zero");
    let back = Change::from(back);
    let refused = victim.refused(&[first.clone(), back], true);
    assert!(
        matches!(refused.as_slice(), [(1, Error::Foreign(_))]),
        "{refused:?}"
    );

    // A text object (and its marks), which no fogmesh document holds.
    let mut text =
        automerge::AutoCommit::new().with_actor(automerge::ActorId::from(&[6u8; 32][..]));
    let obj = text
        .put_object(automerge::ROOT, "t", automerge::ObjType::Text)
        .expect("text");
    text.splice_text(&obj, 0, 0, "hello").expect("splice");
    text.commit();
    let change = text.document().get_last_local_change().expect("a change");
    let refused = victim.refused(&[change], true);
    assert!(
        matches!(refused.as_slice(), [(0, Error::Foreign(_))]),
        "{refused:?}"
    );
}

/// From the third attacker review: a change that waits for an honest change, and makes Automerge
/// fail once that change lets it through, is judged when it is let through and refused alone;
/// the honest change applies. (Automerge's own queue released it inside the honest change's
/// apply, which was then blamed.)
#[test]
fn a_change_that_waited_is_judged_when_let_through_and_refused_alone() {
    use automerge::transaction::Transactable;
    let mut honest = Doc::new(&[4; 32]);
    let up = super::super::doc::Upsert {
        id: "a".into(),
        name: "ward/a".into(),
        time: 1,
        data: serde_json::Map::new(),
    };
    let first = honest.write(&[up], &[]).expect("write").expect("a change");
    let first = decode_change(first).expect("first");
    // A member makes a map (change by actor 8, never sent), writes into it (actor 7), and sends
    // that write alone, re-encoded to depend on the honest change instead of on the map.
    let mut mallory = Automerge::new();
    mallory.apply_changes([first.clone()]).expect("honest");
    let mut maker = mallory
        .fork()
        .with_actor(automerge::ActorId::from(&[8u8; 32][..]));
    let mut tx = maker.transaction();
    let map = tx
        .put_object(automerge::ROOT, "x", automerge::ObjType::Map)
        .expect("map");
    tx.commit();
    let mut writer = maker
        .fork()
        .with_actor(automerge::ActorId::from(&[7u8; 32][..]));
    let mut tx = writer.transaction();
    tx.put(&map, "k", 1).expect("put");
    tx.commit();
    let mut bad = writer.get_last_local_change().expect("a change").decode();
    bad.deps = vec![first.hash()];
    let bad = Change::from(bad);

    // Automerge alone fails on it once the honest change lets it through.
    let mut plain = Automerge::new();
    plain.apply_changes([bad.clone()]).expect("queued");
    let unguarded = catch_unwind(std::panic::AssertUnwindSafe(|| {
        plain.apply_changes([first.clone()])
    }));
    assert!(
        !matches!(unguarded, Ok(Ok(()))),
        "Automerge no longer fails on it: the test no longer shows the guard at work"
    );

    let mut victim = Doc::new(&[5; 32]);
    assert!(
        victim.refused(std::slice::from_ref(&bad), true).is_empty(),
        "its history is not at hand yet: judged alone it passes"
    );
    assert!(victim.apply(vec![bad]).expect("waits").waiting);
    let applied = victim
        .apply(vec![first])
        .expect("the honest change applies");
    assert_eq!(applied.touched, ["a"]);
    assert!(!applied.waiting);
    let [refused] = applied.refused.as_slice() else {
        panic!("{:?}", applied.refused)
    };
    assert_eq!((refused.actor.to_bytes(), refused.seq), (&[7u8; 32][..], 1));
    assert!(refused.why.contains("object"), "{}", refused.why);
    let saved = victim.automerge().save();
    let loaded = Doc::load(&saved, &[5; 32]).expect("loads");
    assert_eq!(loaded.ids(), ["a"]);
}

/// A change that waited and that Automerge fails on though the guard passes it (here a gap in
/// its author's sequence) breaks the document; applied step by step after that, the change that
/// broke it is named, not the honest change that let it through.
#[test]
fn applied_step_by_step_the_change_that_breaks_the_document_is_named() {
    let mut author = Doc::new(&[7; 32]);
    let up = |id: &str| super::super::doc::Upsert {
        id: id.into(),
        name: format!("ward/{id}"),
        time: 1,
        data: serde_json::Map::new(),
    };
    let first = author
        .write(&[up("a")], &[])
        .expect("write")
        .expect("a change");
    let first = decode_change(first).expect("first");
    let second = author
        .write(&[up("b")], &[])
        .expect("write")
        .expect("a change");
    // Numbered 3, as if a change 2 existed.
    let mut gap = decode_change(second).expect("second").decode();
    gap.seq = 3;
    let gap = Change::from(gap);

    let mut victim = Doc::new(&[5; 32]);
    assert!(victim.refused(std::slice::from_ref(&gap), false).is_empty());
    assert!(victim.apply(vec![gap]).expect("waits").waiting);
    match victim.apply_stepwise(vec![first]) {
        Err(Error::BrokeOn(actor, seq, why)) => {
            assert_eq!((actor.to_bytes(), seq), (&[7u8; 32][..], 3), "{why}");
            assert!(why.broke_document(), "{why}");
        }
        Ok(applied) => {
            panic!("Automerge took a sequence gap: the test shows nothing ({applied:?})")
        }
        Err(e) => panic!("{e}"),
    }
}
