//! A write batch an app POSTs to /v1/datasets/{owner}/{name}/records (`node::Batch`, JSON,
//! `deny_unknown_fields`), checked by `record::validate_batch`, then written as the node writes
//! it (`view::doc::Doc::write` of `Upsert`s built like `node::dataset::upsert`), on top of a
//! document that already holds a record.
//!
//! Asserts: a batch that validates is written without error; every record reads back from the
//! document exactly as written (the node's `State::refresh` relies on it: "a record this change
//! created holds exactly what was written"); a replica that applies the change, and the document
//! saved and loaded again (a restart), hold the same records.
#![no_main]

use fogmesh::node::Batch;
use fogmesh::record::{self, Record};
use fogmesh::view::doc::{Doc, Upsert};
use fogmesh_fuzz::NOW;
use libfuzzer_sys::fuzz_target;

fn sorted(mut v: Vec<Record>) -> Vec<Record> {
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = serde_json::from_slice::<Batch>(data) else {
        return;
    };
    if record::validate_batch(&batch.records, &batch.delete).is_err() {
        return;
    }
    let mut doc = Doc::new(&[7; 32]);
    let base = Upsert {
        id: "base".into(),
        name: "d7/ward-3".into(),
        time: 5,
        data: serde_json::json!({"cases": 1, "nested": {"a": [1, 2]}})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    };
    let first = doc
        .write(&[base], &[])
        .expect("base write")
        .expect("a change");
    let held: Vec<String> = doc.ids();
    // The node refuses deletes of records it does not hold (404) before writing.
    if batch.delete.iter().any(|d| !held.contains(d)) {
        return;
    }
    let ups: Vec<Upsert> = batch
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let kept = r.id.as_ref().and_then(|id| doc.read(id)).map(|r| r.time);
            let time = r.time.unwrap_or(kept.unwrap_or(NOW));
            Upsert {
                id: r.id.clone().unwrap_or_else(|| format!("gen{i}")),
                name: r.name.clone(),
                time,
                data: r.data.as_object().cloned().unwrap_or_default(),
            }
        })
        .collect();
    let existed: Vec<bool> = ups.iter().map(|u| doc.read(&u.id).is_some()).collect();
    let change = match doc.write(&ups, &batch.delete) {
        Ok(c) => c,
        Err(e) => panic!("a batch that validates fails to write: {e}"),
    };
    for (u, existed) in ups.iter().zip(existed) {
        let r = doc.read(&u.id).expect("a written record reads back");
        assert_eq!((&r.name, r.time), (&u.name, u.time));
        if existed {
            // An update sets the fields given and keeps the others.
            for (k, v) in &u.data {
                assert_eq!(
                    r.data.get(k),
                    Some(v),
                    "field {k:?} of {} reads back otherwise",
                    u.id
                );
            }
        } else {
            assert_eq!(
                r.data, u.data,
                "record {} reads back otherwise than written",
                u.id
            );
        }
    }
    for d in &batch.delete {
        assert!(doc.read(d).is_none(), "a deleted record reads back");
    }
    let mine = sorted(doc.read_all());
    // A replica that receives the changes.
    let mut replica = Doc::new(&[8; 32]);
    let mut changes = vec![automerge::Change::from_bytes(first).expect("own change parses")];
    if let Some(c) = change {
        changes.push(automerge::Change::from_bytes(c).expect("own change parses"));
    }
    assert!(replica.refused(&changes, true).0.is_empty());
    replica
        .apply(changes)
        .expect("a replica applies the changes");
    assert_eq!(
        sorted(replica.read_all()),
        mine,
        "a replica reads other records"
    );
    // A restart.
    let saved = doc.automerge().save();
    let mut loaded = Doc::load(&saved, &[7; 32]).expect("a saved document loads");
    assert_eq!(
        sorted(loaded.read_all()),
        mine,
        "a reloaded document reads other records"
    );
});
