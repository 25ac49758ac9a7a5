//! Tests of the document layout: records in pages, the index, reads, waiting changes, and
//! convergence of replicas.

use super::*;
use serde_json::json;

/// A record of ward 3 at time 5 with `data`.
pub(in crate::view) fn up(id: &str, data: Json) -> Upsert {
    let Json::Object(data) = data else {
        panic!("object")
    };
    Upsert {
        id: id.into(),
        name: "d7/ward-3".into(),
        time: 5,
        data,
    }
}

#[test]
fn json_round_trips_through_the_document() {
    let mut doc = Doc::new(&[1; 32]);
    let data = json!({"s": "x", "i": -3, "u": u64::MAX, "f": 1.5, "b": true, "n": null,
                      "nested": {"a": [1, {"b": "c"}]}});
    doc.write(&[up("r1", data.clone())], &[]).expect("write");
    let r = doc.read("r1").expect("present");
    assert_eq!(Json::Object(r.data), data);
    assert_eq!((r.name.as_str(), r.time), ("d7/ward-3", 5));
}

/// A member's change can carry any time (its own node checks only what its apps write): every
/// node reads one past year 9999 as that year's end, so no reader meets a time it cannot show.
#[test]
fn a_record_time_past_year_9999_reads_as_its_end() {
    let mut doc = Doc::new(&[1; 32]);
    let mut far = up("r1", json!({"a": 1}));
    far.time = u64::MAX;
    doc.write(&[far], &[]).expect("write");
    let r = doc.read("r1").expect("present");
    assert_eq!(r.time, crate::record::TIME_MAX_MS);
    assert_eq!(doc.read_all()[0].time, crate::record::TIME_MAX_MS);
}

#[test]
fn updates_patch_fields_and_deletes_remove() {
    let mut doc = Doc::new(&[1; 32]);
    doc.write(&[up("r1", json!({"a": 1, "b": 2}))], &[])
        .expect("write");
    doc.write(&[up("r1", json!({"b": 3}))], &[]).expect("write");
    assert_eq!(
        Json::Object(doc.read("r1").expect("r").data),
        json!({"a": 1, "b": 3})
    );
    doc.write(&[], &["r1".into()]).expect("delete");
    assert!(doc.read("r1").is_none());
    assert!(doc.ids().is_empty());
}

#[test]
fn concurrent_updates_of_different_fields_merge() {
    let mut a = Doc::new(&[1; 32]);
    let base = a
        .write(&[up("r1", json!({"x": 0, "y": 0}))], &[])
        .expect("w");
    let mut b = Doc::new(&[2; 32]);
    b.apply(change(base)).expect("apply");
    let ca = a.write(&[up("r1", json!({"x": 1}))], &[]).expect("w");
    let cb = b.write(&[up("r1", json!({"y": 2}))], &[]).expect("w");
    a.apply(change(cb)).expect("apply");
    b.apply(change(ca)).expect("apply");
    let (ra, rb) = (a.read("r1").expect("a"), b.read("r1").expect("b"));
    assert_eq!(ra, rb);
    assert_eq!(Json::Object(ra.data), json!({"x": 1, "y": 2}));
}

#[test]
fn a_batch_created_record_travels_by_change_and_by_save() {
    let mut a = Doc::new(&[1; 32]);
    let data = json!({"s": "x", "u": u64::MAX, "f": -0.5, "nested": {"l": [1, [2], {"k": null}]}});
    let created = a
        .write(&[up("r1", data.clone()), up("r2", json!({}))], &[])
        .expect("write");
    let mut b = Doc::new(&[2; 32]);
    b.apply(change(created)).expect("apply");
    let mut loaded = Doc::load(&a.automerge().save(), &[3; 32]).expect("load");
    for doc in [&mut a, &mut b, &mut loaded] {
        assert_eq!(doc.ids(), ["r1", "r2"]);
        let all: Vec<Record> = ["r1", "r2"].iter().filter_map(|id| doc.read(id)).collect();
        let mut one_pass = doc.read_all();
        one_pass.sort_by(|x, y| x.id.cmp(&y.id));
        assert_eq!(one_pass, all, "one pass reads what record-by-record does");
        let r = doc.read("r1").expect("r1");
        assert_eq!((Json::Object(r.data), r.time), (data.clone(), 5));
    }
    // And it updates field by field like any other record.
    b.write(&[up("r1", json!({"s": "y"}))], &[])
        .expect("update");
    assert_eq!(b.read("r1").expect("r1").data["nested"], data["nested"]);
}

#[test]
fn records_written_before_two_replicas_met_all_survive_and_apply_names_them() {
    let (mut a, mut b) = (Doc::new(&[1; 32]), Doc::new(&[2; 32]));
    let ca = a.write(&[up("ra", json!({"x": 1}))], &[]).expect("w");
    let cb = b.write(&[up("rb", json!({"y": 2}))], &[]).expect("w");
    let got = a.apply(change(cb)).expect("apply").touched;
    assert_eq!(got, ["rb"]);
    let got = b.apply(change(ca)).expect("apply").touched;
    assert_eq!(got, ["ra"]);
    assert_eq!(a.ids(), ["ra", "rb"]);
    assert_eq!(b.ids(), a.ids());
    // Field updates and deletes name their record too; a duplicate names nothing.
    let cu = a
        .write(&[up("rb", json!({"y": 3}))], &["ra".into()])
        .expect("w");
    let update = change(cu);
    let got = b.apply(update.clone()).expect("apply").touched;
    assert_eq!(got, ["ra", "rb"]);
    // An update that makes nested objects inside an existing record names that record
    // alone, as do the operations inside those new objects.
    let cn = a
        .write(&[up("rb", json!({"n": {"k": [1, {"d": 2}]}}))], &[])
        .expect("w");
    let got = b.apply(change(cn));
    assert_eq!(got.expect("apply").touched, ["rb"]);
    assert_eq!(
        b.read("rb").expect("rb").data["n"],
        json!({"k": [1, {"d": 2}]})
    );
    // A duplicate changes nothing (it may name its records again: re-reading is harmless).
    assert!(!b.apply(update).expect("dup").waiting);
    assert_eq!(b.read("rb").expect("rb").data["y"], 3);
}

#[test]
fn a_change_that_arrives_before_its_dependency_waits_and_says_so() {
    let mut a = Doc::new(&[1; 32]);
    let c1 = a.write(&[up("r1", json!({"x": 1}))], &[]).expect("w");
    let c2 = a
        .write(&[up("r1", json!({"x": 2})), up("r2", json!({}))], &[])
        .expect("w");
    let mut b = Doc::new(&[2; 32]);
    let early = b.apply(change(c2.clone())).expect("a");
    assert!(early.waiting && !early.everything);
    assert!(b.ids().is_empty());
    let late = b.apply(change(c1.clone())).expect("a");
    assert!(!late.waiting);
    assert!(!late.everything);
    assert_eq!(
        late.touched,
        ["r1", "r2"],
        "the apply names the records of the change that waited too"
    );
    assert_eq!(
        b.ids(),
        ["r1", "r2"],
        "the waiting change applied with its dependency"
    );
    assert_eq!(b.read("r1").expect("r1").data["x"], 2);
    // A change left waiting by `apply_all` (restore, a key's arrival) is kept like one left
    // by `apply`: it is known held back (a snapshot leaves it out), and named when it applies.
    let mut c = Doc::new(&[3; 32]);
    c.apply_all(change(c2)).expect("apply_all");
    assert!(c.waiting() && c.read_all().is_empty());
    let held = c.lowest_held().expect("known");
    assert_eq!(
        held.get(&automerge::ActorId::from(&[1u8; 32][..])),
        Some(&2)
    );
    let late = c.apply(change(c1)).expect("a");
    assert!(!late.everything && !late.waiting);
    assert_eq!(late.touched, ["r1", "r2"]);
    assert_eq!(c.ids(), ["r1", "r2"]);
    assert_eq!(c.lowest_held().expect("known").len(), 0);
}

fn change(bytes: Option<Vec<u8>>) -> Vec<automerge::Change> {
    vec![automerge::Change::from_bytes(bytes.expect("a change")).expect("change")]
}

#[test]
fn two_creations_of_one_id_show_the_same_copy_everywhere_and_a_delete_removes_both() {
    let (mut a, mut b) = (Doc::new(&[1; 32]), Doc::new(&[2; 32]));
    let ca = a.write(&[up("r1", json!({"from": "a"}))], &[]).expect("w");
    let cb = b.write(&[up("r1", json!({"from": "b"}))], &[]).expect("w");
    assert_eq!(a.apply(change(cb)).expect("apply").touched, ["r1"]);
    assert_eq!(b.apply(change(ca)).expect("apply").touched, ["r1"]);
    let (ra, rb) = (a.read("r1").expect("a"), b.read("r1").expect("b"));
    assert_eq!(ra, rb, "both replicas show the same copy");
    assert_eq!((a.ids(), b.ids()), (vec!["r1".into()], vec!["r1".into()]));
    // An update goes to the copy shown, on either side.
    let cu = b.write(&[up("r1", json!({"n": 1}))], &[]).expect("w");
    a.apply(change(cu)).expect("apply");
    assert_eq!(a.read("r1"), b.read("r1"));
    assert_eq!(a.read("r1").expect("r1").data["n"], 1);
    // A node that holds both copies deletes both.
    let cd = a.write(&[], &["r1".into()]).expect("w");
    assert!(a.read("r1").is_none());
    assert_eq!(b.apply(change(cd)).expect("apply").touched, ["r1"]);
    assert!(b.read("r1").is_none() && b.ids().is_empty());
}

#[test]
fn a_deleted_record_written_again_lives_in_a_new_page() {
    let mut a = Doc::new(&[1; 32]);
    a.write(&[up("r1", json!({"v": 1, "old": true}))], &[])
        .expect("w");
    a.write(&[], &["r1".into()]).expect("delete");
    a.write(&[up("r1", json!({"v": 2}))], &[]).expect("w");
    let loaded = Doc::load(&a.automerge().save(), &[1; 32]).expect("load");
    for doc in [&a, &loaded] {
        assert_eq!(
            Json::Object(doc.read("r1").expect("r1").data),
            json!({"v": 2})
        );
        assert_eq!(doc.ids(), ["r1"]);
    }
}

#[test]
fn keys_at_the_root_that_are_not_pages_are_not_records() {
    // What an older layout (records directly at the root) or a foreign writer leaves there.
    let mut foreign = Automerge::new().with_actor(ActorId::from([5u8; 32].as_slice()));
    let mut tx = foreign.transaction();
    let rec = tx.put_object(ROOT, "r9", ObjType::Map).expect("put");
    tx.put(&rec, "name", "x").expect("put");
    tx.put(ROOT, "p.scalar", 3).expect("put");
    let (hash, _) = tx.commit();
    let bytes = foreign
        .get_change_by_hash(&hash.expect("hash"))
        .map(|c| c.raw_bytes().to_vec());
    let mut a = Doc::new(&[1; 32]);
    a.write(&[up("r1", json!({}))], &[]).expect("w");
    assert!(a.apply(change(bytes)).expect("apply").touched.is_empty());
    let loaded = Doc::load(&a.automerge().save(), &[1; 32]).expect("load");
    for doc in [&a, &loaded] {
        assert_eq!(doc.ids(), ["r1"]);
        assert!(doc.read("r9").is_none());
    }
}

#[test]
fn many_records_read_page_by_page_as_one_by_one() {
    let (mut a, mut b) = (Doc::new(&[1; 32]), Doc::new(&[2; 32]));
    let batch = |from: usize, who: &str| -> Vec<Upsert> {
        (from..from + 150)
            .map(|i| up(&format!("r{i}"), json!({ "who": who, "i": i })))
            .collect()
    };
    let mut changes = Vec::new();
    for from in [0, 150] {
        changes.push(a.write(&batch(from, "a"), &[]).expect("w"));
    }
    // b creates half of a's ids again before seeing a's: two copies of each.
    let cb = b.write(&batch(75, "b"), &[]).expect("w");
    for c in changes {
        b.apply(change(c)).expect("apply");
    }
    a.apply(change(cb)).expect("apply");
    let gone: Vec<String> = (0..300).step_by(7).map(|i| format!("r{i}")).collect();
    let cd = a.write(&[], &gone).expect("delete");
    b.apply(change(cd)).expect("apply");
    let ids: Vec<String> = (0..320).map(|i| format!("r{i}")).collect();
    for doc in [&mut a, &mut b] {
        let one_by_one: Vec<Option<Record>> = ids.iter().map(|id| doc.read(id)).collect();
        assert_eq!(doc.read_many(&ids), one_by_one);
        let mut all = doc.read_all();
        all.sort_by(|x, y| x.id.cmp(&y.id));
        let mut expected: Vec<Record> = one_by_one.into_iter().flatten().collect();
        expected.sort_by(|x, y| x.id.cmp(&y.id));
        assert_eq!(all, expected);
        assert_eq!(all.len(), 300 - gone.len());
    }
    assert_eq!(a.read_many(&ids), b.read_many(&ids));
}

#[test]
fn a_change_that_removes_a_whole_page_says_everything_changed() {
    // Honest writers never touch a page at the root after creating it; a foreign one may.
    let mut a = Doc::new(&[1; 32]);
    let base = a
        .write(&[up("r1", json!({})), up("r2", json!({}))], &[])
        .expect("w");
    let mut foreign = Automerge::new().with_actor(ActorId::from([5u8; 32].as_slice()));
    foreign.apply_changes(change(base.clone())).expect("apply");
    let page = foreign.keys(ROOT).next().expect("a page");
    let mut tx = foreign.transaction();
    tx.delete(ROOT, page.as_str()).expect("delete");
    let (hash, _) = tx.commit();
    let cut = foreign
        .get_change_by_hash(&hash.expect("hash"))
        .map(|c| c.raw_bytes().to_vec());
    let applied = a.apply(change(cut)).expect("apply");
    assert!(applied.everything && applied.touched.is_empty());
    assert!(a.ids().is_empty() && a.read("r1").is_none() && a.read_all().is_empty());
}

#[test]
fn a_page_made_again_at_a_key_that_holds_one_says_everything_changed() {
    // A crafted change makes a page at a key already used without naming the first page: the
    // document shows one of the two whatever the order they arrive in, and the view follows it.
    let mut owner = Doc::new(&[1; 32]);
    let base = owner.write(&[up("r1", json!({"v": 1}))], &[]).expect("w");
    let page = owner.automerge().keys(ROOT).next().expect("a page");
    let mut foreign = Automerge::new().with_actor(ActorId::from([9u8; 32].as_slice()));
    let mut tx = foreign.transaction();
    tx.put_object(ROOT, page.as_str(), ObjType::Map)
        .expect("put");
    let (hash, _) = tx.commit();
    let over = foreign
        .get_change_by_hash(&hash.expect("hash"))
        .map(|c| c.raw_bytes().to_vec());
    let (mut a, mut b) = (Doc::new(&[2; 32]), Doc::new(&[3; 32]));
    a.apply(change(base.clone())).expect("apply");
    assert!(a.apply(change(over.clone())).expect("apply").everything);
    b.apply(change(over)).expect("apply");
    assert!(b.apply(change(base)).expect("apply").everything);
    for doc in [&mut a, &mut b] {
        let loaded = Doc::load(&doc.automerge().save(), &[4; 32]).expect("load");
        // The crafted (empty) page shows: its author's id is the greater.
        assert!(loaded.ids().is_empty() && loaded.read("r1").is_none());
        assert_eq!(doc.ids(), loaded.ids());
        assert!(doc.read("r1").is_none() && doc.read_all().is_empty());
    }
}

#[test]
fn many_records_mixing_whole_pages_and_single_reads_read_as_one_by_one() {
    let mut a = Doc::new(&[1; 32]);
    let batch = |from: usize, n: usize| -> Vec<Upsert> {
        (from..from + n)
            .map(|i| up(&format!("r{i}"), json!({ "i": i })))
            .collect()
    };
    a.write(&batch(0, 600), &[]).expect("w");
    a.write(&batch(600, 1000), &[]).expect("w");
    a.write(&[], &["r7".into(), "r700".into()]).expect("delete");
    // Half of the first page (read whole), a quarter of the second (read one by one), and
    // ids that are not there.
    let ids: Vec<String> = (0..300)
        .chain((600..1600).step_by(4))
        .chain(5000..5010)
        .map(|i| format!("r{i}"))
        .collect();
    let one_by_one: Vec<Option<Record>> = ids.iter().map(|id| a.read(id)).collect();
    assert_eq!(a.read_many(&ids), one_by_one);
    assert_eq!(one_by_one.iter().flatten().count(), 300 + 250 - 2);
}

#[test]
fn a_waiting_change_that_a_local_write_makes_automerge_drop_is_forgotten() {
    let mut a = Doc::new(&[1; 32]);
    a.write(&[up("r1", json!({}))], &[]).expect("w");
    let c2 = a.write(&[up("r2", json!({}))], &[]).expect("w");
    // The same author on a node that lost its store: its own second change comes back
    // before its first, and a local write takes that sequence number meanwhile.
    let mut b = Doc::new(&[1; 32]);
    assert!(b.apply(change(c2)).expect("apply").waiting);
    b.write(&[up("r3", json!({}))], &[]).expect("w");
    assert!(!b.waiting(), "the dropped change no longer waits");
    assert_eq!(b.ids(), ["r3"]);
}

mod convergence {
    use super::*;
    use proptest::prelude::*;

    /// Three writers each make a few batches on their own replica, seeing only their own
    /// changes; every replica then receives all changes shuffled and partly duplicated.
    fn changes(plan: &[Vec<(u8, u8)>]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for (w, batches) in plan.iter().enumerate() {
            let mut doc = Doc::new(&[w as u8 + 1; 32]);
            for (i, (rec, val)) in batches.iter().enumerate() {
                let u = Upsert {
                    id: format!("r{}", rec % 4),
                    name: "a".into(),
                    time: i as u64,
                    data: json!({ format!("f{w}"): val, "shared": val })
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
                };
                let id = u.id.clone();
                if let Ok(Some(c)) = doc.write(&[u], &[]) {
                    out.push(c);
                }
                if val % 5 == 0 {
                    if let Ok(Some(c)) = doc.write(&[], &[id]) {
                        out.push(c);
                    }
                }
            }
        }
        out
    }

    proptest! {
        #[test]
        fn replicas_converge_whatever_the_order_and_duplicates(
            plan in proptest::collection::vec(proptest::collection::vec((0u8..8, 0u8..50), 1..5), 3),
            order in proptest::collection::vec(any::<proptest::sample::Index>(), 0..40),
        ) {
            let all = changes(&plan);
            let mut reference = Doc::new(&[9; 32]);
            let parsed: Vec<automerge::Change> = all
                .iter()
                .map(|c| automerge::Change::from_bytes(c.clone()).expect("change"))
                .collect();
            reference.apply(parsed.clone()).expect("apply");
            // Another replica: a shuffled sequence with duplicates, then everything once more.
            let mut other = Doc::new(&[8; 32]);
            for ix in &order {
                let c = parsed[ix.index(parsed.len())].clone();
                other.apply(vec![c]).expect("apply");
            }
            let mut rev = parsed.clone();
            rev.reverse();
            other.apply(rev).expect("apply");
            // And a replica loaded from a save, whose index is built from the pages.
            let loaded = Doc::load(&other.automerge().save(), &[7; 32]).expect("load");
            prop_assert_eq!(reference.ids(), other.ids());
            prop_assert_eq!(reference.ids(), loaded.ids());
            for id in reference.ids() {
                prop_assert_eq!(reference.read(&id), other.read(&id));
                prop_assert_eq!(reference.read(&id), loaded.read(&id));
            }
        }
    }
}

/// The change from the review: a write into a map, its dependency (the change that made the map)
/// dropped and the change re-encoded. Automerge 0.12 panics applying it to a document without
/// that map ("Obj ... Missing from Index"). Numbered 1, so that its history lacks no change of
/// its author's (the guard refuses that first, see `view::lineage`).
fn orphaned_write() -> automerge::Change {
    let mut src = Doc::new(&[9; 32]);
    src.write(&[up("r1", json!({"a": 1}))], &[]).expect("first");
    let second = src
        .write(&[up("r1", json!({"a": 2}))], &[])
        .expect("second")
        .expect("a change");
    let change = automerge::Change::from_bytes(second).expect("decodes");
    let mut expanded = change.decode();
    expanded.deps.clear();
    expanded.seq = 1;
    automerge::Change::from(expanded)
}

#[test]
fn a_change_on_an_object_the_document_lacks_is_refused_before_automerge_sees_it() {
    let bad = orphaned_write();
    let mut victim = Doc::new(&[1; 32]);
    victim
        .write(&[up("v1", json!({"x": 1}))], &[])
        .expect("write");
    let refused = victim.refused(std::slice::from_ref(&bad), true).0;
    assert!(
        matches!(refused.as_slice(), [(0, Error::MissingObject(_))]),
        "{refused:?}"
    );
    // A change whose objects its own history (in the same batch) makes is fine.
    let mut src = Doc::new(&[8; 32]);
    let c1 = src
        .write(&[up("r1", json!({"a": 1}))], &[])
        .expect("w")
        .expect("c");
    let c2 = src
        .write(&[up("r1", json!({"a": 2}))], &[])
        .expect("w")
        .expect("c");
    let pair: Vec<automerge::Change> = [c2, c1]
        .into_iter()
        .map(|b| automerge::Change::from_bytes(b).expect("decodes"))
        .collect();
    assert!(victim.refused(&pair, true).0.is_empty());
    victim.apply(pair).expect("applies");
    assert_eq!(victim.read("r1").expect("r1").data["a"], json!(2));
}

/// Found by the seeded simulation: an honest change updating an old record, arriving with its
/// predecessor but before the change that made the record's page, was refused (its dependency
/// was in the batch, so it counted as ready, though that dependency's own was missing). Such a
/// change waits; it is judged once its whole history is at hand.
#[test]
fn a_change_whose_history_is_not_all_at_hand_is_not_judged() {
    let mut src = Doc::new(&[8; 32]);
    let mut next = |id: &str, a: i64| {
        let made = src.write(&[up(id, json!({ "a": a }))], &[]).expect("w");
        automerge::Change::from_bytes(made.expect("c")).expect("decodes")
    };
    let (c1, c2, c3) = (next("r1", 1), next("r2", 1), next("r1", 2));
    let mut victim = Doc::new(&[1; 32]);
    let early = vec![c3, c2];
    assert!(
        victim.refused(&early, true).0.is_empty(),
        "a change waiting for its history was refused"
    );
    victim.apply(early).expect("waits");
    assert!(victim.waiting());
    victim.apply(vec![c1]).expect("applies");
    assert!(!victim.waiting());
    assert_eq!(victim.read("r1").expect("r1").data["a"], json!(2));
}

#[test]
fn a_panic_inside_automerge_is_caught_and_reported() {
    let bad = orphaned_write();
    let mut victim = Doc::new(&[1; 32]);
    victim
        .write(&[up("v1", json!({"x": 1}))], &[])
        .expect("write");
    let res = victim.apply(vec![bad]);
    assert!(matches!(res, Err(Error::Panicked(_))), "{res:?}");
}

fn uleb(b: &[u8], i: &mut usize) -> u64 {
    let (mut v, mut s) = (0u64, 0);
    loop {
        let x = b[*i];
        *i += 1;
        v |= u64::from(x & 0x7f) << s;
        s += 7;
        if x & 0x80 == 0 {
            return v;
        }
    }
}

fn put_uleb(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let x = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(x);
            return;
        }
        out.push(x | 0x80);
    }
}

/// Re-encodes an uncompressed change chunk with its "other actors" table emptied: its ops then
/// name actor index 1, which the change no longer declares.
fn strip_other_actors(raw: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    assert_eq!(raw[8], 1, "an uncompressed change chunk");
    let mut i = 9;
    let len = uleb(raw, &mut i) as usize;
    let body = &raw[i..i + len];
    let mut j = 0;
    let ndeps = uleb(body, &mut j) as usize;
    j += 32 * ndeps;
    let alen = uleb(body, &mut j) as usize;
    j += alen;
    uleb(body, &mut j); // seq
    uleb(body, &mut j); // start op
    uleb(body, &mut j); // time (sleb, same length rules)
    let mlen = uleb(body, &mut j) as usize;
    j += mlen;
    let others_at = j;
    let n = uleb(body, &mut j);
    assert!(n >= 1);
    for _ in 0..n {
        let l = uleb(body, &mut j) as usize;
        j += l;
    }
    let mut nb = body[..others_at].to_vec();
    nb.push(0);
    nb.extend_from_slice(&body[j..]);
    let mut hashed = vec![1u8];
    put_uleb(nb.len() as u64, &mut hashed);
    hashed.extend_from_slice(&nb);
    let sum = sha2::Sha256::digest(&hashed);
    let mut out = raw[..4].to_vec();
    out.extend_from_slice(&sum[..4]);
    out.extend_from_slice(&hashed);
    out
}

/// A change of actor [7;32] overwriting a key actor [6;32] set: its pred names actor index 1.
fn change_with_undeclared_actor_and_dep() -> (automerge::Change, automerge::Change) {
    undeclared_actor_pair(&[6u8; 32], &[7u8; 32])
}

/// (the change of `dep_actor` setting root "x", the change of `actor` overwriting it with its
/// other-actor table emptied).
fn undeclared_actor_pair(dep_actor: &[u8], actor: &[u8]) -> (automerge::Change, automerge::Change) {
    use automerge::transaction::Transactable;
    let mut b =
        automerge::AutoCommit::new().with_actor(automerge::ActorId::from(dep_actor.to_vec()));
    b.put(automerge::ROOT, "x", 1).unwrap();
    b.commit();
    let mut a = b
        .fork()
        .with_actor(automerge::ActorId::from(actor.to_vec()));
    a.put(automerge::ROOT, "x", 2).unwrap();
    a.commit();
    let raw = a
        .document()
        .get_last_local_change()
        .unwrap()
        .raw_bytes()
        .to_vec();
    let bad = strip_other_actors(&raw);
    let dep = b.document().get_last_local_change().unwrap();
    (
        dep,
        automerge::Change::from_bytes(bad).expect("automerge accepts the change"),
    )
}

/// From a second attacker review: a change whose operations name an actor it does not declare
/// makes Automerge 0.12 panic while decoding it. It is refused by the check (not a panic out of
/// it), and a document that applies it reports the failure instead of unwinding.
#[test]
fn a_change_naming_an_undeclared_actor_is_refused_without_a_panic() {
    let (dep, bad) = change_with_undeclared_actor_and_dep();
    let mut victim = Doc::new(&[1; 32]);
    let refused = victim.refused(std::slice::from_ref(&bad), false).0;
    assert!(
        matches!(refused.as_slice(), [(0, Error::Undecodable)]),
        "{refused:?}"
    );
    victim.apply_all(vec![dep]).expect("its dependency applies");
    assert!(victim.apply_all(vec![bad]).is_err());
}

#[test]
fn a_write_of_more_operations_than_members_take_is_not_made() {
    let mut doc = Doc::new(&[1; 32]).with_max_ops(100);
    doc.write(&[up("a", json!({"n": 1}))], &[]).expect("small");
    let heads = doc.automerge().get_heads();
    let big = up("b", json!({"list": vec![0; 200]}));
    match doc.write(&[big.clone(), up("c", json!({}))], &[]) {
        Err(Error::TooManyOps(n)) => assert!(n > 200, "{n}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(doc.automerge().get_heads(), heads, "nothing written");
    assert_eq!(doc.ids(), ["a"]);
    // The same records in smaller writes go in.
    let mut doc = doc.with_max_ops(1000);
    doc.write(&[big], &[]).expect("alone");
    doc.write(&[up("c", json!({}))], &[]).expect("alone");
    assert_eq!(doc.ids(), ["a", "b", "c"]);
}
