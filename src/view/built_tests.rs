//! Records built from the changes that created them match what the document shows, and only
//! those a change created whole, alone, in its own page are built.

use std::num::NonZeroU64;

use automerge::legacy::{ElementId, Key, ObjectId, Op, OpId, OpType, SortedVec};
use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, Change, ExpandedChange, ObjType, ScalarValue, ROOT};
use serde_json::json;

use crate::view::doc::tests::up;
use crate::view::doc::Doc;

fn change(bytes: Option<Vec<u8>>) -> Change {
    Change::from_bytes(bytes.expect("a change")).expect("parses")
}

#[test]
fn records_built_from_their_change_are_what_the_document_reads() {
    let mut writer = Doc::new(&[1; 32]);
    let ups = vec![
        up(
            "r1",
            json!({"s": "x", "i": -3, "u": u64::MAX, "f": 1.5, "b": true, "n": null}),
        ),
        up(
            "r2",
            json!({"nested": {"a": [1, {"b": "c"}, [], [2, 3]], "e": {}}}),
        ),
        up(
            "r3",
            json!({"list": ["a", "b", "c", "d"], "uni": "ünïcødé ✓"}),
        ),
        up("r4", json!({})),
    ];
    let c = change(writer.write(&ups, &[]).expect("write"));
    let built = super::records(&c.decode());
    assert_eq!(built.len(), 4, "every record of the new page is built");
    let mut reader = Doc::new(&[2; 32]);
    let applied = reader.apply(vec![c]).expect("apply");
    assert_eq!(applied.built.len(), 4);
    for b in built {
        assert_eq!(reader.read(&b.id).as_ref(), Some(&b.record), "{}", b.id);
        assert_eq!(applied.built.get(&b.id), Some(&b.record));
    }
}

#[test]
fn an_update_is_read_from_the_document_not_built() {
    let mut writer = Doc::new(&[1; 32]);
    let created = change(
        writer
            .write(&[up("r1", json!({"a": 1}))], &[])
            .expect("write"),
    );
    let updated = change(
        writer
            .write(&[up("r1", json!({"a": 2}))], &[])
            .expect("write"),
    );
    assert!(super::records(&updated.decode()).is_empty());
    let mut reader = Doc::new(&[2; 32]);
    let applied = reader.apply(vec![created, updated]).expect("apply");
    assert!(
        applied.built.is_empty(),
        "created and updated in one batch: read from the document"
    );
    assert_eq!(applied.touched, vec!["r1".to_string()]);
    assert_eq!(reader.read("r1").expect("held").data["a"], json!(2));
}

/// Two writers that make the same page key: the document shows one page object, and a record
/// built from the other writer's change is not taken.
#[test]
fn a_page_key_made_twice_keeps_only_the_page_the_document_shows() {
    let page_change = |actor: u8, value: &str| {
        let mut am = Automerge::new().with_actor(automerge::ActorId::from(&[actor; 32][..]));
        let mut tx = am.transaction();
        let page = tx.put_object(ROOT, "p.0SAME", ObjType::Map).expect("page");
        let rec = tx.put_object(&page, "r1", ObjType::Map).expect("record");
        tx.put(&rec, "name", "d7/ward-3").expect("name");
        tx.put(&rec, "time", 5u64).expect("time");
        let data = tx.put_object(&rec, "data", ObjType::Map).expect("data");
        tx.put(&data, "v", value).expect("value");
        tx.commit();
        am.get_last_local_change().expect("a change").clone()
    };
    let (a, b) = (page_change(1, "from a"), page_change(2, "from b"));
    let mut reader = Doc::new(&[3; 32]);
    reader.apply(vec![b]).expect("apply b");
    // a's page object loses to b's (the greater actor): its record is not what shows.
    let applied = reader.apply(vec![a]).expect("apply a");
    assert_eq!(applied.touched, vec!["r1".to_string()]);
    assert!(applied.built.is_empty(), "{:?}", applied.built);
    assert_eq!(reader.read("r1").expect("shown").data["v"], json!("from b"));
}

pub(in crate::view) fn op(obj: ObjectId, key: &str, action: OpType) -> Op {
    Op {
        action,
        obj,
        key: Key::Map(key.into()),
        pred: SortedVec::new(),
        insert: false,
    }
}

pub(in crate::view) fn on(counter: u64, a: &ActorId) -> ObjectId {
    ObjectId::Id(OpId(counter, a.clone()))
}

pub(in crate::view) fn put(v: &str) -> OpType {
    OpType::Put(ScalarValue::Str(v.into()))
}

fn insert_first(list: ObjectId, v: &str) -> Op {
    Op {
        key: Key::Seq(ElementId::Head),
        insert: true,
        ..op(list, "", put(v))
    }
}

/// A change of `a` made of `ops`, numbered from 1, encoded as Automerge encodes it.
pub(in crate::view) fn crafted(a: &ActorId, ops: Vec<Op>) -> Change {
    Change::from(ExpandedChange {
        operations: ops,
        actor_id: a.clone(),
        hash: None,
        seq: 1,
        start_op: NonZeroU64::MIN,
        time: 0,
        message: None,
        deps: vec![],
        extra_bytes: vec![],
        author: None,
    })
}

/// Record `r1` in page `p.0X`: 1 page, 2 record, 3 name, 4 time, 5 data.
fn record_ops(a: &ActorId) -> Vec<Op> {
    vec![
        op(ObjectId::Root, "p.0X", OpType::Make(ObjType::Map)),
        op(on(1, a), "r1", OpType::Make(ObjType::Map)),
        op(on(2, a), "name", put("d7/ward-3")),
        op(on(2, a), "time", OpType::Put(ScalarValue::Uint(5))),
        op(on(2, a), "data", OpType::Make(ObjType::Map)),
    ]
}

/// Judged and applied as the live path does; every record built must read the same.
fn applied_agrees(change: Change) -> usize {
    let mut doc = Doc::new(&[9; 32]);
    let batch = vec![change];
    let (refused, expanded) = doc.refused(&batch, true);
    assert!(refused.is_empty(), "{refused:?}");
    let applied = doc.apply_judged(batch, expanded).expect("apply");
    for (id, built) in &applied.built {
        assert_eq!(doc.read(id).as_ref(), Some(built), "{id}");
    }
    applied.built.len()
}

/// Found by an attacker review: an operation on an object the change makes later applies, and
/// a record built from the operations in order would lack it.
#[test]
fn a_change_writing_into_an_object_it_makes_later_is_read_not_built() {
    let a = ActorId::from(&[1u8; 32][..]);
    let mut plain = record_ops(&a);
    plain.push(op(on(5, &a), "v", put("x")));
    assert_eq!(
        applied_agrees(crafted(&a, plain)),
        1,
        "the plain shape is built"
    );

    // 3 writes into the data map, which 5 makes.
    let mut early_key = record_ops(&a);
    early_key[2] = op(on(5, &a), "hidden", put("sneaky"));
    early_key.push(op(on(2, &a), "name", put("d7/ward-3")));
    assert!(super::records(&crafted(&a, early_key.clone()).decode()).is_empty());
    assert_eq!(applied_agrees(crafted(&a, early_key)), 0);

    // 6 inserts into the list that 8 makes.
    let mut early_item = record_ops(&a);
    early_item.push(insert_first(on(8, &a), "early"));
    early_item.push(op(on(5, &a), "v", put("x")));
    early_item.push(op(on(5, &a), "l", OpType::Make(ObjType::List)));
    early_item.push(insert_first(on(8, &a), "first"));
    assert_eq!(applied_agrees(crafted(&a, early_item)), 0);
}
