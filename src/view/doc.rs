//! A dataset as an Automerge document: where records live in it, and an index to find them.
//!
//! Layout: the root map holds *pages*; each page is a map from record id to a record map
//! `{name, time, data}` (`data` a nested map, see `amjson`). Every local write that creates
//! records creates one new page holding them, under a fresh key (`p.` and a ULID) that no other
//! writer uses, so pages written by nodes that had not yet seen each other never conflict, and
//! the root, unlike any nested map, exists in every replica from the start.
//!
//! Why pages: Automerge 0.12 keeps each object's operations together, ordered by object, so a
//! new key in an old object (the root, when records lived there directly) is spliced in front of
//! every later object's operations; that splice grows with the document (3.4 ms per batch of 100
//! records on an empty document, 24 ms at 100,000 records). A new page and its records are new
//! objects, appended at the end: about 1.1 ms per batch, whatever the size (docs/benchmarks.md).
//!
//! A record is updated where it lives (field by field, so concurrent updates of different fields
//! merge) and deleted from its page. Two nodes that create the same id before seeing each other
//! leave two copies in two pages; every replica shows the one in the greatest page key, so all
//! agree. A delete removes every copy the deleting node holds. No I/O happens here.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use automerge::transaction::Transactable;
use automerge::{hydrate, ActorId, Automerge, ChangeHash, ObjId, ObjType, ReadDoc, Value, ROOT};
use serde_json::{Map, Value as Json};

use super::amjson::{from_record_map, new_record, put_json};
use super::touched;
use super::waiting::Waiting;
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

/// What applying remote changes did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Ids of the records the given changes touch (created, updated or deleted).
    pub touched: Vec<String>,
    /// Some changes wait inside the document for dependencies that have not arrived. The records
    /// they touch are named by the later apply that lets them apply.
    pub waiting: bool,
    /// Records other than `touched` may have changed: a change deleted or replaced a whole page,
    /// or changes applied that waited since a restore or a key's arrival (whose operations this
    /// document did not keep). Re-read every record.
    pub everything: bool,
}

/// The prefix of every page key; record ids never contain `.`, so no id looks like a page.
const PAGE_PREFIX: &str = "p.";

/// Changes applied at once from which decoding spreads over threads.
const PARALLEL_CHANGES: usize = 16;
/// Records read at once from which they are read page by page, on several threads.
const PARALLEL_READS: usize = 256;
/// Pages read at once from which reading spreads over threads.
const PARALLEL_PAGES: usize = 4;

/// A page key (shared: many records name the same page).
type PageKey = Arc<str>;

/// True when a root key names a page.
pub(super) fn is_page_key(key: &str) -> bool {
    key.starts_with(PAGE_PREFIX)
}

/// A dataset's document and, for every record id, the pages holding a copy of it.
#[derive(Debug)]
pub struct Doc {
    am: Automerge,
    /// Record id -> keys of the pages that hold (or held: a remote delete is pruned lazily) a
    /// copy, ascending; the last one that holds it is the record.
    pages: HashMap<String, Vec<PageKey>>,
    /// Changes that wait in the document for dependencies it lacks (see [`Applied::waiting`]).
    waiting: Waiting,
    /// Changes were applied without keeping the index (see [`Doc::apply_all`]): it is rebuilt
    /// before the next write, apply or [`Doc::read_all`].
    unindexed: bool,
}

impl Doc {
    /// A new empty document whose changes are authored by `actor`.
    pub fn new(actor: &[u8]) -> Self {
        Self::from_automerge(Automerge::new().with_actor(ActorId::from(actor)))
    }

    /// Loads a saved document; its new changes are authored by `actor`.
    pub fn load(bytes: &[u8], actor: &[u8]) -> Result<Self, Error> {
        let am = Automerge::load(bytes)?.with_actor(ActorId::from(actor));
        Ok(Self::from_automerge(am))
    }

    /// A document already in memory (its index is built from its pages).
    pub fn from_automerge(am: Automerge) -> Self {
        let mut doc = Self {
            waiting: Waiting::of(&am),
            am,
            pages: HashMap::new(),
            unindexed: false,
        };
        doc.reindex();
        doc
    }

    /// The Automerge document (to save it, or to clone it for a snapshot).
    pub fn automerge(&self) -> &Automerge {
        &self.am
    }

    /// The actor this document's local changes are authored by.
    pub fn actor(&self) -> &ActorId {
        self.am.get_actor()
    }

    /// Whether changes wait in the document for dependencies it lacks: when those arrive, the
    /// records the waiting changes touch change too, though the arriving changes do not name them.
    pub fn waiting(&self) -> bool {
        self.waiting.any()
    }

    /// Rebuilds the index if changes were applied without keeping it.
    fn ensure_indexed(&mut self) {
        if std::mem::take(&mut self.unindexed) {
            self.reindex();
        }
    }

    /// Applies upserts and deletes as one change; returns its bytes, or `None` if nothing
    /// changed. New records go to one new page; existing ones are updated where they live.
    pub fn write(&mut self, ups: &[Upsert], deletes: &[String]) -> Result<Option<Vec<u8>>, Error> {
        self.ensure_indexed();
        let page: PageKey = format!("{PAGE_PREFIX}{}", ulid::Ulid::new()).into();
        let mut tx = self.am.transaction();
        let mut fresh: HashMap<String, hydrate::Value> = HashMap::new();
        for u in ups {
            match self.pages.get(&u.id).and_then(|p| locate(&tx, p, &u.id)) {
                Some(rec) => update(&mut tx, &rec, u)?,
                None => {
                    fresh.insert(u.id.clone(), new_record(u));
                }
            }
        }
        let created: Vec<String> = fresh.keys().cloned().collect();
        if !fresh.is_empty() {
            // One batch insertion of the page and all its records: far fewer op-set splices
            // than one operation per field (docs/benchmarks.md).
            let value = hydrate::Map::from(fresh).into();
            tx.batch_create_object(ROOT, &*page, &value, false)?;
        }
        for id in deletes {
            for p in self.pages.get(id).into_iter().flatten() {
                if let Some(obj) = page_holding(&tx, p, id) {
                    tx.delete(&obj, id.as_str())?;
                }
            }
        }
        let (hash, _) = tx.commit();
        if self.waiting.any() {
            // A local change can make Automerge drop queued changes of the same actor.
            self.waiting.resync(&self.am);
        }
        for id in created {
            place(&mut self.pages, id, page.clone());
        }
        for id in deletes {
            self.pages.remove(id);
        }
        Ok(hash
            .and_then(|h| self.am.get_change_by_hash(&h))
            .map(|c| c.raw_bytes().to_vec()))
    }

    /// Applies changes from other authors, and reports the records they touch (found from the
    /// changes' own operations, see `touched`).
    pub fn apply(&mut self, changes: Vec<automerge::Change>) -> Result<Applied, Error> {
        self.ensure_indexed();
        // Copies (of the compact form) of what may wait, to name its records when it applies.
        let copies = changes.clone();
        if let Err(e) = self.am.apply_changes(changes) {
            self.waiting.resync(&self.am);
            return Err(e.into());
        }
        let released = self.waiting.after_apply(&self.am, copies);
        let mut everything = released.unknown;
        // Decoding each change, and finding the records it touches (a read), spread over threads
        // when a catch-up page brings many changes.
        let decoded = crate::parallel::map(&released.ready, PARALLEL_CHANGES, |c| c.decode());
        let am = &self.am;
        let found = crate::parallel::map(&decoded, PARALLEL_CHANGES, |c| touched::scan(am, c));
        let mut ids = BTreeSet::new();
        for t in found {
            for (id, page) in t.placed {
                place(&mut self.pages, id, page.into());
            }
            for id in &t.removed {
                self.prune(id);
            }
            everything |= t.rescan;
            ids.extend(t.records);
        }
        if everything {
            // Changes not decoded here applied, or pages went: index everything again.
            self.reindex();
        }
        Ok(Applied {
            touched: ids.into_iter().collect(),
            waiting: self.waiting.any(),
            everything,
        })
    }

    /// Applies changes without finding what they touch or keeping the index (rebuilt once, before
    /// the next write, apply or [`Doc::read_all`]); the caller re-reads every record: restoring
    /// from the store, or opening changes whose key just arrived.
    pub fn apply_all(&mut self, changes: Vec<automerge::Change>) -> Result<(), Error> {
        let hashes: Vec<ChangeHash> = changes.iter().map(|c| c.hash()).collect();
        let applied = self.am.apply_changes(changes);
        let am = &self.am;
        let queued = hashes
            .iter()
            .any(|h| am.get_change_meta_by_hash(h).is_none());
        self.waiting.after_apply_unkept(am, queued);
        self.unindexed = true;
        Ok(applied?)
    }

    /// Rebuilds the index from the document.
    fn reindex(&mut self) {
        self.pages.clear();
        for key in self.am.keys(ROOT).filter(|k| is_page_key(k)) {
            let Some(obj) = child_map(&self.am, &ROOT, &key) else {
                continue;
            };
            let key: PageKey = key.into();
            // Root keys come in order, so each id's pages stay ascending.
            for id in self.am.keys(&obj) {
                self.pages.entry(id).or_default().push(key.clone());
            }
        }
    }

    /// Forgets the pages that no longer hold record `id`.
    fn prune(&mut self, id: &str) {
        let Some(pages) = self.pages.get_mut(id) else {
            return;
        };
        pages.retain(|p| page_holding(&self.am, p, id).is_some());
        if pages.is_empty() {
            self.pages.remove(id);
        }
    }

    /// Reads one record.
    pub fn read(&self, id: &str) -> Option<Record> {
        debug_assert!(!self.unindexed, "read before the index was rebuilt");
        let obj = locate(&self.am, self.pages.get(id)?, id)?;
        match ReadDoc::hydrate(&self.am, &obj, None) {
            Ok(hydrate::Value::Map(m)) => from_record_map(id, &m),
            _ => None,
        }
    }

    /// Every record (restoring a dataset), read page by page on several threads.
    pub fn read_all(&mut self) -> Vec<Record> {
        self.ensure_indexed();
        let pages: BTreeSet<&PageKey> = self.pages.values().flatten().collect();
        let pages: Vec<&PageKey> = pages.into_iter().collect();
        self.read_pages(&pages).into_values().flatten().collect()
    }

    /// Reads the records `ids` (`None` for one that is gone). Few are read one by one. Of many (a
    /// catch-up), those whose page is wanted at least half are read with their whole page (on
    /// Automerge 0.12 a whole page reads about twice as fast as its records one by one), the
    /// others one by one; both on several threads.
    pub fn read_many(&self, ids: &[String]) -> Vec<Option<Record>> {
        if ids.len() < PARALLEL_READS {
            return ids.iter().map(|id| self.read(id)).collect();
        }
        // Ids held in one page only, counted by page.
        let only_page = |id: &String| match self.pages.get(id).map(Vec::as_slice) {
            Some([page]) => Some(page),
            _ => None,
        };
        let mut wanted: HashMap<&PageKey, usize> = HashMap::new();
        for page in ids.iter().filter_map(only_page) {
            *wanted.entry(page).or_default() += 1;
        }
        let mut whole: Vec<&PageKey> = wanted
            .into_iter()
            .filter(|(page, n)| 2 * n >= self.page_len(page))
            .map(|(page, _)| page)
            .collect();
        whole.sort_unstable();
        let mut found = self.read_pages(&whole);
        let in_whole = |id: &String| only_page(id).is_some_and(|p| whole.binary_search(&p).is_ok());
        let rest: Vec<&String> = ids.iter().filter(|id| !in_whole(id)).collect();
        let mut rest = crate::parallel::map(&rest, PARALLEL_READS, |id| self.read(id)).into_iter();
        ids.iter()
            .map(|id| match in_whole(id) {
                true => found.remove(id).flatten(),
                false => rest.next().flatten(),
            })
            .collect()
    }

    /// How many records page `page` holds.
    fn page_len(&self, page: &str) -> usize {
        child_map(&self.am, &ROOT, page).map_or(0, |obj| self.am.length(&obj))
    }

    /// Every record map in `pages` (ascending), by id; a record held in several pages is the copy
    /// in the greatest, as [`Doc::read`] has it.
    fn read_pages(&self, pages: &[&PageKey]) -> HashMap<String, Option<Record>> {
        let read = crate::parallel::map(pages, PARALLEL_PAGES, |p| self.read_page(p));
        let mut out = HashMap::new();
        for (id, record) in read.into_iter().flatten() {
            out.insert(id, record);
        }
        out
    }

    /// The record maps of one page, each with its record (`None` if the map is not a record).
    fn read_page(&self, page: &str) -> Vec<(String, Option<Record>)> {
        let Some(obj) = child_map(&self.am, &ROOT, page) else {
            return Vec::new();
        };
        let Ok(hydrate::Value::Map(m)) = ReadDoc::hydrate(&self.am, &obj, None) else {
            return Vec::new();
        };
        m.iter()
            .filter_map(|(id, v)| match &v.value {
                hydrate::Value::Map(r) => Some((id.clone(), from_record_map(id, r))),
                _ => None,
            })
            .collect()
    }

    /// Every record id in the document, sorted.
    pub fn ids(&self) -> Vec<String> {
        debug_assert!(!self.unindexed, "ids before the index was rebuilt");
        let mut ids: Vec<String> = self
            .pages
            .iter()
            .filter(|(id, pages)| locate(&self.am, pages, id).is_some())
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort_unstable();
        ids
    }
}

/// Adds `page` to the pages of record `id`, keeping them ascending and distinct.
fn place(pages: &mut HashMap<String, Vec<PageKey>>, id: String, page: PageKey) {
    let list = pages.entry(id).or_default();
    if let Err(at) = list.binary_search(&page) {
        list.insert(at, page);
    }
}

/// The map under `key` in `obj`, if there is one.
fn child_map<R: ReadDoc>(doc: &R, obj: &ObjId, key: &str) -> Option<ObjId> {
    match doc.get(obj, key) {
        Ok(Some((Value::Object(ObjType::Map), child))) => Some(child),
        _ => None,
    }
}

/// The page object `page`, if it holds record `id`.
fn page_holding<R: ReadDoc>(doc: &R, page: &str, id: &str) -> Option<ObjId> {
    let obj = child_map(doc, &ROOT, page)?;
    matches!(doc.get(&obj, id), Ok(Some(_))).then_some(obj)
}

/// The record object `id` among `pages`: the copy in the greatest page that holds one.
fn locate<R: ReadDoc>(doc: &R, pages: &[PageKey], id: &str) -> Option<ObjId> {
    pages
        .iter()
        .rev()
        .find_map(|p| child_map(doc, &child_map(doc, &ROOT, p)?, id))
}

/// Updates an existing record field by field.
fn update<T: Transactable>(tx: &mut T, rec: &ObjId, u: &Upsert) -> Result<(), Error> {
    tx.put(rec, "name", u.name.as_str())?;
    tx.put(rec, "time", u.time)?;
    let data = match tx.get(rec, "data")? {
        Some((Value::Object(ObjType::Map), id)) => id,
        _ => tx.put_object(rec, "data", ObjType::Map)?,
    };
    for (k, v) in &u.data {
        put_json(tx, &data, k.as_str().into(), v)?;
    }
    Ok(())
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
        let mut doc = Doc::new(&[1; 32]);
        let data = json!({"s": "x", "i": -3, "u": u64::MAX, "f": 1.5, "b": true, "n": null,
                          "nested": {"a": [1, {"b": "c"}]}});
        doc.write(&[up("r1", data.clone())], &[]).expect("write");
        let r = doc.read("r1").expect("present");
        assert_eq!(Json::Object(r.data), data);
        assert_eq!((r.name.as_str(), r.time), ("d7/ward-3", 5));
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
            .expect("w")
            .expect("change");
        let mut b = Doc::new(&[2; 32]);
        b.apply(vec![automerge::Change::from_bytes(base).expect("change")])
            .expect("apply");
        let ca = a
            .write(&[up("r1", json!({"x": 1}))], &[])
            .expect("w")
            .expect("c");
        let cb = b
            .write(&[up("r1", json!({"y": 2}))], &[])
            .expect("w")
            .expect("c");
        a.apply(vec![automerge::Change::from_bytes(cb).expect("c")])
            .expect("apply");
        b.apply(vec![automerge::Change::from_bytes(ca).expect("c")])
            .expect("apply");
        let (ra, rb) = (a.read("r1").expect("a"), b.read("r1").expect("b"));
        assert_eq!(ra, rb);
        assert_eq!(Json::Object(ra.data), json!({"x": 1, "y": 2}));
    }

    #[test]
    fn a_batch_created_record_travels_by_change_and_by_save() {
        let mut a = Doc::new(&[1; 32]);
        let data =
            json!({"s": "x", "u": u64::MAX, "f": -0.5, "nested": {"l": [1, [2], {"k": null}]}});
        let change = a
            .write(&[up("r1", data.clone()), up("r2", json!({}))], &[])
            .expect("write")
            .expect("change");
        let mut b = Doc::new(&[2; 32]);
        b.apply(vec![automerge::Change::from_bytes(change).expect("c")])
            .expect("apply");
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
        let ca = a
            .write(&[up("ra", json!({"x": 1}))], &[])
            .expect("w")
            .expect("c");
        let cb = b
            .write(&[up("rb", json!({"y": 2}))], &[])
            .expect("w")
            .expect("c");
        let got = a
            .apply(vec![automerge::Change::from_bytes(cb).expect("c")])
            .expect("apply")
            .touched;
        assert_eq!(got, ["rb"]);
        let got = b
            .apply(vec![automerge::Change::from_bytes(ca).expect("c")])
            .expect("apply")
            .touched;
        assert_eq!(got, ["ra"]);
        assert_eq!(a.ids(), ["ra", "rb"]);
        assert_eq!(b.ids(), a.ids());
        // Field updates and deletes name their record too; a duplicate names nothing.
        let cu = a
            .write(&[up("rb", json!({"y": 3}))], &["ra".into()])
            .expect("w")
            .expect("c");
        let change = automerge::Change::from_bytes(cu).expect("c");
        let got = b.apply(vec![change.clone()]).expect("apply").touched;
        assert_eq!(got, ["ra", "rb"]);
        // An update that makes nested objects inside an existing record names that record
        // alone, as do the operations inside those new objects.
        let cn = a
            .write(&[up("rb", json!({"n": {"k": [1, {"d": 2}]}}))], &[])
            .expect("w")
            .expect("c");
        let got = b.apply(vec![automerge::Change::from_bytes(cn).expect("c")]);
        assert_eq!(got.expect("apply").touched, ["rb"]);
        assert_eq!(
            b.read("rb").expect("rb").data["n"],
            json!({"k": [1, {"d": 2}]})
        );
        // A duplicate changes nothing (it may name its records again: re-reading is harmless).
        assert!(!b.apply(vec![change]).expect("dup").waiting);
        assert_eq!(b.read("rb").expect("rb").data["y"], 3);
    }

    #[test]
    fn a_change_that_arrives_before_its_dependency_waits_and_says_so() {
        let mut a = Doc::new(&[1; 32]);
        let c1 = a
            .write(&[up("r1", json!({"x": 1}))], &[])
            .expect("w")
            .expect("c");
        let c2 = a
            .write(&[up("r1", json!({"x": 2})), up("r2", json!({}))], &[])
            .expect("w")
            .expect("c");
        let mut b = Doc::new(&[2; 32]);
        let early = b
            .apply(vec![automerge::Change::from_bytes(c2.clone()).expect("c")])
            .expect("a");
        assert!(early.waiting && !early.everything);
        assert!(b.ids().is_empty());
        let late = b
            .apply(vec![automerge::Change::from_bytes(c1.clone()).expect("c")])
            .expect("a");
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
        // A change left waiting by `apply_all` (restore, a key's arrival) was not decoded: when
        // it applies, everything is re-read.
        let mut c = Doc::new(&[3; 32]);
        c.apply_all(change(Some(c2))).expect("apply_all");
        assert!(c.waiting() && c.read_all().is_empty());
        let late = c.apply(change(Some(c1))).expect("a");
        assert!(late.everything && !late.waiting);
        assert_eq!(c.ids(), ["r1", "r2"]);
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
}
