//! A dataset as an Automerge document, and the JSON <-> Automerge mapping.
//!
//! Layout: the root map maps record id to a map `{name, time, data}` where `data` is a nested map.
//! The root, unlike a nested map, exists in every replica from the start, so records written by
//! nodes that had not yet seen each other's changes land in the same map. Objects become maps and arrays lists, so two nodes that update different
//! fields of one record concurrently both keep their field. No I/O happens here.

use std::collections::HashMap;

use automerge::transaction::Transactable;
use automerge::{hydrate, ActorId, Automerge, ObjId, ObjType, ReadDoc, ScalarValue, Value, ROOT};
use serde_json::{Map, Number, Value as Json};

use crate::record::Record;

/// An Automerge failure on a document.
#[derive(Debug, thiserror::Error)]
#[error("automerge: {0}")]
pub struct Error(#[from] pub automerge::AutomergeError);

/// One record, validated and with id and time assigned, ready to write.
#[derive(Debug, Clone)]
pub struct Upsert {
    /// Record id.
    pub id: String,
    /// Record name.
    pub name: String,
    /// Record time (ms).
    pub time: u64,
    /// Fields to set.
    pub data: Map<String, Json>,
}

/// A new empty document whose changes are authored by `actor`.
pub fn new_doc(actor: &[u8]) -> Automerge {
    Automerge::new().with_actor(ActorId::from(actor))
}

/// True when a record with `id` exists.
pub fn contains(doc: &Automerge, id: &str) -> bool {
    matches!(doc.get(ROOT, id), Ok(Some(_)))
}

/// Applies upserts and deletes as one change; returns its bytes, or `None` if nothing changed.
pub fn write(
    doc: &mut Automerge,
    ups: &[Upsert],
    deletes: &[String],
) -> Result<Option<Vec<u8>>, Error> {
    let mut tx = doc.transaction();
    for u in ups {
        let rec = match tx.get(ROOT, u.id.as_str())? {
            Some((Value::Object(ObjType::Map), id)) => id,
            _ => {
                // A new record: one batch insertion instead of one operation per field, about
                // four times faster (docs/benchmarks.md).
                tx.batch_create_object(ROOT, u.id.as_str(), &new_record(u), false)?;
                continue;
            }
        };
        tx.put(&rec, "name", u.name.as_str())?;
        tx.put(&rec, "time", u.time)?;
        let data = match tx.get(&rec, "data")? {
            Some((Value::Object(ObjType::Map), id)) => id,
            _ => tx.put_object(&rec, "data", ObjType::Map)?,
        };
        for (k, v) in &u.data {
            put_json(&mut tx, &data, k.as_str().into(), v)?;
        }
    }
    for id in deletes {
        tx.delete(ROOT, id.as_str())?;
    }
    let (hash, _) = tx.commit();
    Ok(hash
        .and_then(|h| doc.get_change_by_hash(&h))
        .map(|c| c.raw_bytes().to_vec()))
}

/// What applying remote changes did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Ids of the records the given changes touch (created, updated or deleted).
    pub touched: Vec<String>,
    /// Some changes wait inside the document for dependencies that have not arrived; when they
    /// arrive, records touched by the waiting changes change too (see [`Applied::touched`] of
    /// that later call: it does not name them, so the caller re-reads everything then).
    pub waiting: bool,
}

/// Changes applied at once from which decoding spreads over threads.
const PARALLEL_CHANGES: usize = 16;
/// Records read at once from which reading spreads over threads.
const PARALLEL_READS: usize = 256;

/// Applies changes from other authors. The records they touch are found from the changes' own
/// operations (a root key, or the root key above the object an operation edits), not by diffing
/// the document, so the cost follows the size of the changes, not of the document.
pub fn apply(doc: &mut Automerge, changes: Vec<automerge::Change>) -> Result<Applied, Error> {
    // Decoding each change, and finding the records it touches (a read), spread over threads
    // when a catch-up page brings many changes.
    let decoded = crate::parallel::map(&changes, PARALLEL_CHANGES, |c| c.decode());
    doc.apply_changes(changes)?;
    let doc_ref: &Automerge = doc;
    let touched = crate::parallel::map(&decoded, PARALLEL_CHANGES, |c| touched_by(doc_ref, c));
    let ids: std::collections::BTreeSet<String> = touched.into_iter().flatten().collect();
    Ok(Applied {
        touched: ids.into_iter().collect(),
        waiting: waiting(doc),
    })
}

/// Whether changes wait in `doc` for dependencies it lacks: when those arrive, the records the
/// waiting changes touch change too, though the arriving changes do not name them.
pub fn waiting(doc: &Automerge) -> bool {
    !doc.get_missing_deps(&[]).is_empty()
}

/// The root key of every record one change touches, each once. Objects the change creates are
/// looked up by their counter (no string formatting per operation: this runs for every
/// operation of every remote change).
fn touched_by(doc: &Automerge, c: &automerge::ExpandedChange) -> Vec<String> {
    use automerge::legacy::{Key, ObjectId};
    // Records this change touches, and the objects it creates (by counter) with their record.
    let (mut records, mut seen) = (Vec::new(), HashMap::new());
    let mut created: HashMap<u64, usize> = HashMap::new();
    for (i, op) in c.operations.iter().enumerate() {
        let record = match &op.obj {
            ObjectId::Root => match &op.key {
                Key::Map(k) => Some(index_of(&mut records, &mut seen, k.as_str())),
                Key::Seq(_) => None,
            },
            ObjectId::Id(id) => match created.get(&id.0) {
                Some(r) if id.1 == c.actor_id => Some(*r),
                _ => record_above(doc, &id.to_string())
                    .map(|k| index_of(&mut records, &mut seen, &k)),
            },
        };
        let Some(record) = record else { continue };
        if matches!(op.action, automerge::legacy::OpType::Make(_)) {
            created.insert(c.start_op.get() + i as u64, record);
        }
    }
    records
}

/// The index of record `key` among `records`, added if absent.
fn index_of(records: &mut Vec<String>, seen: &mut HashMap<String, usize>, key: &str) -> usize {
    if let Some(i) = seen.get(key) {
        return *i;
    }
    records.push(key.to_owned());
    seen.insert(key.to_owned(), records.len() - 1);
    records.len() - 1
}

/// The root key above object `obj` ("counter@actor"), if the object is in the document.
fn record_above(doc: &Automerge, obj: &str) -> Option<String> {
    let exid = doc.import_obj(obj).ok()?;
    let top = doc.parents(&exid).ok()?.last()?;
    match top.prop {
        automerge::Prop::Map(k) if top.obj == ROOT => Some(k),
        _ => None,
    }
}

/// A whole new record as one hydrate value, laid out as the per-field path writes it.
fn new_record(u: &Upsert) -> hydrate::Value {
    let data: HashMap<String, hydrate::Value> = u
        .data
        .iter()
        .map(|(k, v)| (k.clone(), to_hydrate(v)))
        .collect();
    let rec = HashMap::from([
        ("name".to_owned(), hydrate::Value::from(u.name.as_str())),
        ("time".to_owned(), hydrate::Value::from(u.time)),
        ("data".to_owned(), hydrate::Map::from(data).into()),
    ]);
    hydrate::Map::from(rec).into()
}

fn to_hydrate(v: &Json) -> hydrate::Value {
    match v {
        Json::Object(m) => {
            let m: HashMap<String, hydrate::Value> =
                m.iter().map(|(k, v)| (k.clone(), to_hydrate(v))).collect();
            hydrate::Map::from(m).into()
        }
        Json::Array(a) => a.iter().map(to_hydrate).collect::<Vec<_>>().into(),
        scalar => to_scalar(scalar).into(),
    }
}

fn put_json<T: Transactable>(
    tx: &mut T,
    obj: &ObjId,
    prop: automerge::Prop,
    v: &Json,
) -> Result<(), Error> {
    let insert = matches!(prop, automerge::Prop::Seq(_));
    let place_obj = |tx: &mut T, t: ObjType| -> Result<ObjId, Error> {
        Ok(match &prop {
            automerge::Prop::Seq(i) if insert => tx.insert_object(obj, *i, t)?,
            p => tx.put_object(obj, p.clone(), t)?,
        })
    };
    match v {
        Json::Object(m) => {
            let child = place_obj(tx, ObjType::Map)?;
            for (k, v) in m {
                put_json(tx, &child, k.as_str().into(), v)?;
            }
        }
        Json::Array(a) => {
            let child = place_obj(tx, ObjType::List)?;
            for (i, v) in a.iter().enumerate() {
                put_json(tx, &child, i.into(), v)?;
            }
        }
        scalar => {
            let s = to_scalar(scalar);
            match &prop {
                automerge::Prop::Seq(i) => tx.insert(obj, *i, s)?,
                p => tx.put(obj, p.clone(), s)?,
            }
        }
    }
    Ok(())
}

fn to_scalar(v: &Json) -> ScalarValue {
    match v {
        Json::Bool(b) => ScalarValue::Boolean(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => ScalarValue::Int(i),
            (None, Some(u)) => ScalarValue::Uint(u),
            _ => ScalarValue::F64(n.as_f64().unwrap_or(0.0)),
        },
        Json::String(s) => ScalarValue::Str(s.as_str().into()),
        _ => ScalarValue::Null,
    }
}

fn from_hydrated(v: &hydrate::Value) -> Json {
    match v {
        hydrate::Value::Map(m) => Json::Object(
            m.iter()
                .map(|(k, mv)| (k.clone(), from_hydrated(&mv.value)))
                .collect(),
        ),
        hydrate::Value::List(l) => {
            Json::Array(l.iter().map(|lv| from_hydrated(&lv.value)).collect())
        }
        hydrate::Value::Text(t) => Json::String(t.to_string()),
        hydrate::Value::Scalar(s) => from_scalar(s),
    }
}

fn from_scalar(s: &ScalarValue) -> Json {
    match s {
        ScalarValue::Str(s) => Json::String(s.to_string()),
        ScalarValue::Int(i) => Json::from(*i),
        ScalarValue::Uint(u) => Json::from(*u),
        ScalarValue::F64(f) => Number::from_f64(*f).map_or(Json::Null, Json::Number),
        ScalarValue::Counter(c) => Json::from(i64::from(c)),
        ScalarValue::Timestamp(t) => Json::from(*t),
        ScalarValue::Boolean(b) => Json::Bool(*b),
        ScalarValue::Bytes(b) => Json::String(hex::encode(b)),
        _ => Json::Null,
    }
}

/// Reads one record.
pub fn read(doc: &Automerge, id: &str) -> Option<Record> {
    let Ok(Some((Value::Object(ObjType::Map), obj))) = doc.get(ROOT, id) else {
        return None;
    };
    match ReadDoc::hydrate(doc, &obj, None) {
        Ok(hydrate::Value::Map(m)) => from_record_map(id, &m),
        _ => None,
    }
}

/// Every record (restoring a dataset). Record by record: measured faster on Automerge 0.12 than
/// hydrating the whole root in one call (1.6 s against 2.1 s for 100,000 records).
pub fn read_all(doc: &Automerge) -> Vec<Record> {
    read_many(doc, &ids(doc)).into_iter().flatten().collect()
}

/// Reads the records `ids` (`None` for one that is gone), on several threads when there are
/// many: reading is a large part of a catch-up or a restart, and the document is only read.
pub fn read_many(doc: &Automerge, ids: &[String]) -> Vec<Option<Record>> {
    crate::parallel::map(ids, PARALLEL_READS, |id| read(doc, id))
}

fn from_record_map(id: &str, m: &hydrate::Map) -> Option<Record> {
    let name = match m.get("name") {
        Some(hydrate::Value::Scalar(ScalarValue::Str(s))) => s.to_string(),
        _ => return None,
    };
    let time = match m.get("time") {
        Some(hydrate::Value::Scalar(ScalarValue::Uint(t))) => *t,
        Some(hydrate::Value::Scalar(ScalarValue::Int(t))) => u64::try_from(*t).unwrap_or(0),
        _ => 0,
    };
    let data = match m.get("data").map(from_hydrated) {
        Some(Json::Object(o)) => o,
        _ => Map::new(),
    };
    Some(Record {
        id: id.to_owned(),
        name,
        time,
        data,
    })
}

/// Every record id in the document.
pub fn ids(doc: &Automerge) -> Vec<String> {
    doc.keys(ROOT).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn up(id: &str, data: Json) -> Upsert {
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
        let mut doc = new_doc(&[1; 32]);
        let data = json!({"s": "x", "i": -3, "u": u64::MAX, "f": 1.5, "b": true, "n": null,
                          "nested": {"a": [1, {"b": "c"}]}});
        write(&mut doc, &[up("r1", data.clone())], &[]).expect("write");
        let r = read(&doc, "r1").expect("present");
        assert_eq!(Json::Object(r.data), data);
        assert_eq!((r.name.as_str(), r.time), ("d7/ward-3", 5));
    }

    #[test]
    fn updates_patch_fields_and_deletes_remove() {
        let mut doc = new_doc(&[1; 32]);
        write(&mut doc, &[up("r1", json!({"a": 1, "b": 2}))], &[]).expect("write");
        write(&mut doc, &[up("r1", json!({"b": 3}))], &[]).expect("write");
        assert_eq!(
            Json::Object(read(&doc, "r1").expect("r").data),
            json!({"a": 1, "b": 3})
        );
        write(&mut doc, &[], &["r1".into()]).expect("delete");
        assert!(read(&doc, "r1").is_none());
        assert!(ids(&doc).is_empty());
    }

    #[test]
    fn concurrent_updates_of_different_fields_merge() {
        let mut a = new_doc(&[1; 32]);
        let base = write(&mut a, &[up("r1", json!({"x": 0, "y": 0}))], &[])
            .expect("w")
            .expect("change");
        let mut b = new_doc(&[2; 32]);
        b.apply_changes([automerge::Change::from_bytes(base).expect("change")])
            .expect("apply");
        let ca = write(&mut a, &[up("r1", json!({"x": 1}))], &[])
            .expect("w")
            .expect("c");
        let cb = write(&mut b, &[up("r1", json!({"y": 2}))], &[])
            .expect("w")
            .expect("c");
        a.apply_changes([automerge::Change::from_bytes(cb).expect("c")])
            .expect("apply");
        b.apply_changes([automerge::Change::from_bytes(ca).expect("c")])
            .expect("apply");
        let (ra, rb) = (read(&a, "r1").expect("a"), read(&b, "r1").expect("b"));
        assert_eq!(ra, rb);
        assert_eq!(Json::Object(ra.data), json!({"x": 1, "y": 2}));
    }

    #[test]
    fn a_batch_created_record_travels_by_change_and_by_save() {
        let mut a = new_doc(&[1; 32]);
        let data =
            json!({"s": "x", "u": u64::MAX, "f": -0.5, "nested": {"l": [1, [2], {"k": null}]}});
        let change = write(&mut a, &[up("r1", data.clone()), up("r2", json!({}))], &[])
            .expect("write")
            .expect("change");
        let mut b = new_doc(&[2; 32]);
        b.apply_changes([automerge::Change::from_bytes(change).expect("c")])
            .expect("apply");
        let loaded = Automerge::load(&a.save()).expect("load");
        for doc in [&a, &b, &loaded] {
            assert_eq!(ids(doc), ["r1", "r2"]);
            let all: Vec<Record> = ["r1", "r2"].iter().filter_map(|id| read(doc, id)).collect();
            let mut one_pass = read_all(doc);
            one_pass.sort_by(|x, y| x.id.cmp(&y.id));
            assert_eq!(one_pass, all, "one pass reads what record-by-record does");
            let r = read(doc, "r1").expect("r1");
            assert_eq!((Json::Object(r.data), r.time), (data.clone(), 5));
        }
        // And it updates field by field like any other record.
        write(&mut b, &[up("r1", json!({"s": "y"}))], &[]).expect("update");
        assert_eq!(read(&b, "r1").expect("r1").data["nested"], data["nested"]);
    }

    #[test]
    fn records_written_before_two_replicas_met_all_survive_and_apply_names_them() {
        let (mut a, mut b) = (new_doc(&[1; 32]), new_doc(&[2; 32]));
        let ca = write(&mut a, &[up("ra", json!({"x": 1}))], &[])
            .expect("w")
            .expect("c");
        let cb = write(&mut b, &[up("rb", json!({"y": 2}))], &[])
            .expect("w")
            .expect("c");
        let got = apply(&mut a, vec![automerge::Change::from_bytes(cb).expect("c")])
            .expect("apply")
            .touched;
        assert_eq!(got, ["rb"]);
        let got = apply(&mut b, vec![automerge::Change::from_bytes(ca).expect("c")])
            .expect("apply")
            .touched;
        assert_eq!(got, ["ra"]);
        assert_eq!(ids(&a), ["ra", "rb"]);
        assert_eq!(ids(&b), ids(&a));
        // Field updates and deletes name their record too; a duplicate names nothing.
        let cu = write(&mut a, &[up("rb", json!({"y": 3}))], &["ra".into()])
            .expect("w")
            .expect("c");
        let change = automerge::Change::from_bytes(cu).expect("c");
        let got = apply(&mut b, vec![change.clone()]).expect("apply").touched;
        assert_eq!(got, ["ra", "rb"]);
        // An update that makes nested objects inside an existing record names that record
        // alone, as do the operations inside those new objects.
        let cn = write(&mut a, &[up("rb", json!({"n": {"k": [1, {"d": 2}]}}))], &[])
            .expect("w")
            .expect("c");
        let got = apply(&mut b, vec![automerge::Change::from_bytes(cn).expect("c")]);
        assert_eq!(got.expect("apply").touched, ["rb"]);
        assert_eq!(
            read(&b, "rb").expect("rb").data["n"],
            json!({"k": [1, {"d": 2}]})
        );
        // A duplicate changes nothing (it may name its records again: re-reading is harmless).
        assert!(!apply(&mut b, vec![change]).expect("dup").waiting);
        assert_eq!(read(&b, "rb").expect("rb").data["y"], 3);
    }

    #[test]
    fn a_change_that_arrives_before_its_dependency_waits_and_says_so() {
        let mut a = new_doc(&[1; 32]);
        let c1 = write(&mut a, &[up("r1", json!({"x": 1}))], &[])
            .expect("w")
            .expect("c");
        let c2 = write(
            &mut a,
            &[up("r1", json!({"x": 2})), up("r2", json!({}))],
            &[],
        )
        .expect("w")
        .expect("c");
        let mut b = new_doc(&[2; 32]);
        let early = apply(&mut b, vec![automerge::Change::from_bytes(c2).expect("c")]).expect("a");
        assert!(early.waiting);
        assert!(ids(&b).is_empty());
        let late = apply(&mut b, vec![automerge::Change::from_bytes(c1).expect("c")]).expect("a");
        assert!(!late.waiting);
        assert_eq!(late.touched, ["r1"]);
        assert_eq!(
            ids(&b),
            ["r1", "r2"],
            "the waiting change applied with its dependency"
        );
        assert_eq!(read(&b, "r1").expect("r1").data["x"], 2);
    }

    mod convergence {
        use super::*;
        use proptest::prelude::*;

        /// Three writers each make a few batches on their own replica, seeing only their own
        /// changes; every replica then receives all changes shuffled and partly duplicated.
        fn changes(plan: &[Vec<(u8, u8)>]) -> Vec<Vec<u8>> {
            let mut out = Vec::new();
            for (w, batches) in plan.iter().enumerate() {
                let mut doc = new_doc(&[w as u8 + 1; 32]);
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
                    if let Ok(Some(c)) = write(&mut doc, &[u], &[]) {
                        out.push(c);
                    }
                    if val % 5 == 0 {
                        if let Ok(Some(c)) = write(&mut doc, &[], &[id]) {
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
                let mut reference = new_doc(&[9; 32]);
                let parsed: Vec<automerge::Change> = all
                    .iter()
                    .map(|c| automerge::Change::from_bytes(c.clone()).expect("change"))
                    .collect();
                apply(&mut reference, parsed.clone()).expect("apply");
                // Another replica: a shuffled sequence with duplicates, then everything once more.
                let mut other = new_doc(&[8; 32]);
                for ix in &order {
                    let c = parsed[ix.index(parsed.len())].clone();
                    apply(&mut other, vec![c]).expect("apply");
                }
                let mut rev = parsed.clone();
                rev.reverse();
                apply(&mut other, rev).expect("apply");
                prop_assert_eq!(ids(&reference), ids(&other));
                for id in ids(&reference) {
                    prop_assert_eq!(read(&reference, &id), read(&other, &id));
                }
            }
        }
    }
}
