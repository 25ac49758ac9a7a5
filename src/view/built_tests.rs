//! Records built from the changes that created them match what the document shows, and only
//! those a change created whole, alone, in its own page are built.

use automerge::transaction::Transactable;
use automerge::{Automerge, Change, ObjType, ROOT};
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
