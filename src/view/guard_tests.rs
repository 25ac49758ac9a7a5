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
    let (refused, expanded) = doc.refused(&changes, true);
    let refused: Vec<usize> = refused.into_iter().map(|(i, _)| i).collect();
    let ok: Vec<Change> = (0..changes.len())
        .filter(|i| !refused.contains(i))
        .map(|i| changes[i].clone())
        .collect();
    let stopped = !refused.is_empty();
    if ok.is_empty() {
        return (doc, stopped);
    }
    let result = if mode & 1 == 0 {
        doc.apply_judged(ok, expanded).map(|_| ())
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
        let caught = catch_unwind(|| super::parse_caught(bytes.clone()));
        let caught = caught.expect("a panic inside Automerge is caught");
        let guarded = catch_unwind(|| decode_change(bytes));
        let guarded = guarded.expect("decode_change never panics");
        if raw.is_err() {
            panicking += 1;
            assert!(
                matches!(&caught, Err(Error::NotAChange(why)) if why.contains("automerge failed")),
                "{caught:?}"
            );
            // Refused, here by the count of what the bytes claim, before Automerge parses them.
            assert!(matches!(guarded, Err(Error::NotAChange(_))), "{guarded:?}");
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
            .0
            .is_empty(),
        "honest"
    );

    // Operation counters that go back below its dependency's.
    let mut back = second.decode();
    back.start_op = std::num::NonZeroU64::new(1).expect("non-zero");
    let back = Change::from(back);
    let refused = victim.refused(&[first.clone(), back], true).0;
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
    let refused = victim.refused(&[change], true).0;
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
        victim
            .refused(std::slice::from_ref(&bad), true)
            .0
            .is_empty(),
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

fn upsert(id: &str) -> super::super::doc::Upsert {
    super::super::doc::Upsert {
        id: id.into(),
        name: format!("ward/{id}"),
        time: 1,
        data: serde_json::Map::new(),
    }
}

/// `n` changes of a document authored by `actor`, one record each.
fn changes_by(actor: u8, n: usize) -> Vec<Change> {
    let mut author = Doc::new(&[actor; 32]);
    (0..n)
        .map(|k| {
            let bytes = author.write(&[upsert(&format!("{actor}-{k}"))], &[]);
            decode_change(bytes.expect("write").expect("a change")).expect("decodes")
        })
        .collect()
}

/// `change` with its dependencies and number replaced, encoded again.
fn renumbered(change: &Change, seq: u64, deps: Vec<automerge::ChangeHash>) -> Change {
    let mut expanded = change.decode();
    expanded.seq = seq;
    expanded.deps = deps;
    Change::from(expanded)
}

/// From the fourth attacker review: a change numbered n whose history lacks its author's change
/// n-1 applied where n-1 was held (and a document holding it saves in a form that does not load)
/// and broke the document, so was quarantined, where n-1 was not held yet: nodes differed for
/// good. It is now refused by its history alone, the same on every node, whatever it found held.
#[test]
fn a_change_whose_history_skips_its_authors_previous_change_is_refused_everywhere() {
    let c = changes_by(7, 3);
    // Change 3 names only change 1: change 2 is its author's, but not in its history.
    let third = renumbered(&c[2], 3, vec![c[0].hash()]);
    let skips = |refused: &[(usize, Error)]| matches!(refused, [(0, Error::SkipsPrevious(2))]);

    // Automerge alone takes it after change 2, and the document no longer loads.
    let mut plain = Automerge::new();
    plain
        .apply_changes([c[0].clone(), c[1].clone(), third.clone()])
        .expect("Automerge applies it");
    assert!(
        Automerge::load(&plain.save()).is_err(),
        "Automerge loads it now: the test shows nothing"
    );

    let mut holds_two = Doc::new(&[5; 32]);
    holds_two
        .apply(vec![c[0].clone(), c[1].clone()])
        .expect("applies");
    let refused = holds_two.refused(std::slice::from_ref(&third), true).0;
    assert!(skips(&refused), "{refused:?}");

    let mut holds_one = Doc::new(&[6; 32]);
    holds_one.apply(vec![c[0].clone()]).expect("applies");
    let refused = holds_one.refused(std::slice::from_ref(&third), true).0;
    assert!(skips(&refused), "{refused:?}");
    let refused = holds_one.refused(&[c[1].clone(), third.clone()], true).0;
    assert!(
        matches!(refused.as_slice(), [(1, Error::SkipsPrevious(2))]),
        "{refused:?}"
    );

    // One that held it back, its history not at hand, refuses it when that history comes.
    let mut held = Doc::new(&[4; 32]);
    assert!(held
        .refused(std::slice::from_ref(&third), true)
        .0
        .is_empty());
    assert!(held.apply(vec![third]).expect("waits").waiting);
    let applied = held.apply(vec![c[0].clone()]).expect("applies");
    let [refused] = applied.refused.as_slice() else {
        panic!("{applied:?}")
    };
    assert_eq!((refused.actor.to_bytes(), refused.seq), (&[7u8; 32][..], 3));
    held.apply(vec![c[1].clone()]).expect("applies");
    holds_two.apply(vec![]).expect("nothing");
    assert_eq!(held.ids(), holds_two.ids());
    assert_eq!(held.ids(), ["7-0", "7-1"]);
    Doc::load(&held.automerge().save(), &[4; 32]).expect("its snapshot loads");

    // A change 3 whose history holds change 2 though it names another change only: its author
    // took a change of another (made after its change 2) before writing it.
    let mut author = Doc::new(&[7; 32]);
    author.apply(c[..2].to_vec()).expect("its own");
    let mut other = Doc::new(&[8; 32]);
    other.apply(c[..2].to_vec()).expect("applies");
    let between = other
        .write(&[upsert("8-0")], &[])
        .expect("write")
        .expect("a change");
    let between = decode_change(between).expect("decodes");
    author.apply(vec![between.clone()]).expect("applies");
    let honest = author
        .write(&[upsert("7-2")], &[])
        .expect("write")
        .expect("a change");
    let honest = decode_change(honest).expect("decodes");
    // Automerge names the author's previous change itself; without it, the history still
    // holds it (through the other's change), found by the search.
    assert!(honest.deps().contains(&c[1].hash()));
    let honest = renumbered(&honest, 3, vec![between.hash()]);
    let mut plain = Automerge::new();
    plain
        .apply_changes([c[0].clone(), c[1].clone(), between.clone(), honest.clone()])
        .expect("applies");
    Automerge::load(&plain.save()).expect("and loads");
    let refused = holds_one.refused(&[c[1].clone(), between, honest], true).0;
    assert!(refused.is_empty(), "{refused:?}");
}

/// A change that waited and that Automerge fails on though the guard passes it (here a second
/// change numbered 1 by an author whose change 1 the document holds: over the wire, the
/// envelope layer finds that as equivocation first) fails the apply; applied step by step after
/// that, the change that failed is named, not the honest change that let it through.
#[test]
fn applied_step_by_step_the_change_that_breaks_the_document_is_named() {
    let first = changes_by(7, 1).remove(0);
    let honest = changes_by(4, 1).remove(0);
    let mut again = first.decode();
    again.deps = vec![honest.hash()];
    again.start_op = std::num::NonZeroU64::new(100).expect("not zero");
    let again = Change::from(again);

    let mut victim = Doc::new(&[5; 32]);
    victim.apply(vec![first]).expect("applies");
    assert!(victim
        .refused(std::slice::from_ref(&again), false)
        .0
        .is_empty());
    assert!(victim.apply(vec![again]).expect("waits").waiting);
    match victim.apply_stepwise(vec![honest]) {
        Err(Error::BrokeOn(actor, seq, why)) => {
            assert_eq!((actor.to_bytes(), seq), (&[7u8; 32][..], 1), "{why}");
        }
        Ok(applied) => {
            panic!("Automerge took a second change 1: the test shows nothing ({applied:?})")
        }
        Err(e) => panic!("{e}"),
    }
}

/// Applied with no judging first, each breaking reproducer is caught by the check after the
/// apply, whether what follows the apply runs after the check or beside it (a large batch).
#[test]
fn the_check_after_the_apply_catches_the_same_whether_run_beside_or_before() {
    for (name, input) in BREAKING {
        let (_, changes) = changes_of(input);
        let outcome = |beside: bool| {
            let mut am = Automerge::load(BASE).expect("the base document loads");
            let ran = std::sync::atomic::AtomicBool::new(false);
            let r = super::apply_then(&mut am, changes.clone(), beside, |_| {
                ran.store(true, std::sync::atomic::Ordering::Relaxed);
                7
            });
            (r.map_err(|e| e.to_string()), ran.into_inner())
        };
        let (before, beside) = (outcome(false), outcome(true));
        assert_eq!(before.0, beside.0, "{name}");
        assert!(
            before.0.is_err(),
            "{name}: applied unjudged, it was not caught"
        );
        assert!(!before.1, "{name}: what follows ran after a failed check");
    }
}

#[test]
fn an_operation_whose_key_does_not_fit_its_object_is_refused_alone() {
    use crate::view::built::tests::{crafted, on, op, put};
    use automerge::legacy::{ElementId, Key, ObjectId, Op, OpType};
    use automerge::{ActorId, ObjType};

    let a = ActorId::from([7u8; 32].as_slice());
    let at_head = |op: Op| Op {
        key: Key::Seq(ElementId::Head),
        insert: true,
        ..op
    };
    let make = |key: &str, kind| op(ObjectId::Root, key, OpType::Make(kind));
    let cases = [
        (
            "a list position in the root",
            vec![at_head(op(ObjectId::Root, "", put("x")))],
        ),
        (
            "a list position in a map",
            vec![
                make("p.0X", ObjType::Map),
                at_head(op(on(1, &a), "", put("x"))),
            ],
        ),
        (
            "a map key in a list",
            vec![make("p.0X", ObjType::List), op(on(1, &a), "k", put("x"))],
        ),
        (
            "an insert at a map key",
            vec![Op {
                insert: true,
                ..op(ObjectId::Root, "p.0Y", put("x"))
            }],
        ),
    ];
    for (what, ops) in cases {
        let doc = Doc::new(&[1; 32]);
        let (refused, _) = doc.refused(&[crafted(&a, ops)], false);
        assert_eq!(refused.len(), 1, "{what}");
        let why = refused[0].1.to_string();
        assert!(why.contains("on a"), "{what}: {why}");
    }
    // The same shapes where they fit apply.
    let fitting = vec![
        make("p.0X", ObjType::List),
        at_head(op(on(1, &a), "", put("x"))),
        make("p.0Y", ObjType::Map),
        op(on(3, &a), "k", put("x")),
    ];
    let mut doc = Doc::new(&[1; 32]);
    let fitting = vec![crafted(&a, fitting)];
    assert!(doc.refused(&fitting, false).0.is_empty());
    doc.apply(fitting).expect("apply");
    assert_eq!(doc.automerge().get_heads().len(), 1);
}

#[test]
fn a_refused_change_of_the_batch_does_not_vouch_for_an_objects_type() {
    use crate::view::built::tests::{crafted, on, op, put};
    use automerge::legacy::{ElementId, Key, ObjectId, Op, OpType};
    use automerge::{ActorId, ExpandedChange, ObjType};
    use std::num::NonZeroU64;

    let (a, b) = (
        ActorId::from([7u8; 32].as_slice()),
        ActorId::from([8u8; 32].as_slice()),
    );
    // 1@a is a map in the document.
    let first = crafted(
        &a,
        vec![op(ObjectId::Root, "p.0X", OpType::Make(ObjType::Map))],
    );
    let mut doc = Doc::new(&[1; 32]);
    doc.apply(vec![first.clone()]).expect("apply");
    let after = |actor: &ActorId, seq, start, ops| {
        Change::from(ExpandedChange {
            operations: ops,
            actor_id: actor.clone(),
            hash: None,
            seq,
            start_op: NonZeroU64::new(start).expect("start"),
            time: 0,
            message: None,
            deps: vec![first.hash()],
            extra_bytes: vec![],
            author: None,
        })
    };
    // A decoy numbered from 1 again (refused: its counters go back) makes 1@a a list...
    let decoy = after(
        &a,
        2,
        1,
        vec![op(ObjectId::Root, "p.0Z", OpType::Make(ObjType::List))],
    );
    // ...for a change that inserts into 1@a as if it were one.
    let insert = Op {
        key: Key::Seq(ElementId::Head),
        insert: true,
        ..op(on(1, &a), "", put("x"))
    };
    let culprit = after(&b, 1, 2, vec![insert]);
    let (refused, _) = doc.refused(&[decoy, culprit], false);
    let why: Vec<(usize, String)> = refused.iter().map(|(i, e)| (*i, e.to_string())).collect();
    assert_eq!(why.len(), 2, "{why:?}");
    assert!(why[1].0 == 1 && why[1].1.contains("on a Map"), "{why:?}");
}
