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
use super::built;
pub use super::claim::{claimed, joins_batch, BATCH_OPS, MAX_CHANGE_OPS};
use super::guard;
pub use super::guard::{decode_change, load, Expanded};
use super::lineage::Lineage;
use super::touched;
use super::waiting::Waiting;
use crate::record::Record;

/// A failure on a document.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Automerge refused.
    #[error("automerge: {0}")]
    Automerge(#[from] automerge::AutomergeError),
    /// A remote change names an object the document lacks and its own history does not make
    /// (Automerge 0.12 panics on such a change instead of refusing it).
    #[error(
        "the change names object {0}, which neither the document nor the change's history holds"
    )]
    MissingObject(String),
    /// A remote change that Automerge cannot even decode.
    #[error("the change does not decode (an operation names an actor it does not declare)")]
    Undecodable,
    /// Bytes from a peer that are not an Automerge change.
    #[error("not an Automerge change: {0}")]
    NotAChange(String),
    /// A remote change whose bytes are not Automerge's own encoding of its operations: it
    /// would apply, but a saved document would not load.
    #[error("the change is not encoded as Automerge encodes it (a saved document would not load)")]
    NotCanonical,
    /// A remote change that no fogmesh node makes: an operation fogmesh documents never hold,
    /// or operation counters that do not follow its dependencies' (a saved document holding
    /// it would not load).
    #[error("the change is not one a fogmesh node makes: {0}")]
    Foreign(String),
    /// Automerge panicked: the document may be half-changed and must be rebuilt from the store.
    #[error("automerge failed applying a change ({0}); the document is rebuilt from the store")]
    Panicked(String),
    /// Changes (actor, sequence) applied, but the document does not hold them as Automerge would
    /// write them again, so a saved document would not load: it must be rebuilt from the store.
    #[error("{} change(s) applied unfaithfully (first: {}); the document is rebuilt from the store", .0.len(), .0.first().map(|(a, s)| format!("{a} #{s}")).unwrap_or_default())]
    Unfaithful(Vec<(ActorId, u64)>),
    /// A write would make a change of this many operations, past half of what other members
    /// take (they refuse a change past 8 Mi operations, or predecessors, before parsing it):
    /// nothing was written.
    #[error("the write would make a change of {0} operations; a write makes at most {max}: write fewer records at once", max = super::claim::MAX_CHANGE_OPS / 2)]
    TooManyOps(u64),
    /// Applying the change (actor, sequence) alone failed (see [`Doc::apply_stepwise`]): the
    /// change to quarantine; the document is to be rebuilt.
    #[error("change #{1} of {0} broke the document: {2}")]
    BrokeOn(ActorId, u64, Box<Error>),
    /// A remote change numbered n whose history lacks its author's change n-1 (n-1 given):
    /// Automerge never makes one, and a saved document holding it may not load.
    #[error("the change's history lacks its author's change #{0} (Automerge never makes one; a saved document holding it may not load)")]
    SkipsPrevious(u64),
    /// A saved document that Automerge failed on while loading.
    #[error("automerge failed loading the saved document: {0}")]
    Unloadable(String),
}

impl Error {
    /// Whether the document this came from is unusable and must be rebuilt from the store.
    pub fn broke_document(&self) -> bool {
        matches!(
            self,
            Self::Panicked(_) | Self::Unfaithful(_) | Self::BrokeOn(..)
        )
    }
}

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
#[derive(Debug, Default, PartialEq)]
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
    /// Changes that waited for dependencies and that the guard refuses now that their history
    /// is at hand: not applied, to be quarantined.
    pub refused: Vec<Refused>,
    /// Records of `touched` read from the changes that created them (see `built`), by id: the
    /// caller need not read them from the document.
    pub built: HashMap<String, Record>,
}

/// A change the guard refused, by author and sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Its author.
    pub actor: ActorId,
    /// Its sequence number.
    pub seq: u64,
    /// Why it was refused.
    pub why: String,
}

/// The prefix of every page key; record ids never contain `.`, so no id looks like a page.
const PAGE_PREFIX: &str = "p.";

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
    /// Each author's last change in the document (see [`Error::SkipsPrevious`]).
    lineage: Lineage,
    /// Changes were applied without keeping the index (see [`Doc::apply_all`]): it is rebuilt
    /// before the next write, apply or [`Doc::read_all`].
    unindexed: bool,
    /// Most operations a local write may make (see [`Error::TooManyOps`]): half of what members
    /// take, leaving room for predecessors, which they count too (an update of a conflicted
    /// key names each value it replaces).
    max_ops: u64,
}

impl Doc {
    /// A new empty document whose changes are authored by `actor`.
    pub fn new(actor: &[u8]) -> Self {
        Self::from_automerge(Automerge::new().with_actor(ActorId::from(actor)))
    }

    /// Loads a saved document; its new changes are authored by `actor`.
    pub fn load(bytes: &[u8], actor: &[u8]) -> Result<Self, Error> {
        let am = guard::load(bytes)?.with_actor(ActorId::from(actor));
        Ok(Self::from_automerge(am))
    }

    /// A document already in memory (its index is built from its pages).
    pub fn from_automerge(am: Automerge) -> Self {
        let mut doc = Self {
            waiting: Waiting::of(&am),
            lineage: Lineage::of(&am),
            am,
            pages: HashMap::new(),
            unindexed: false,
            max_ops: super::claim::MAX_CHANGE_OPS / 2,
        };
        doc.reindex();
        doc
    }

    /// This document, with local writes capped at `max` operations (tests: the real cap takes
    /// millions of operations to reach).
    #[cfg(test)]
    pub(crate) fn with_max_ops(self, max: u64) -> Self {
        Self {
            max_ops: max,
            ..self
        }
    }

    /// The Automerge document (to save it, or to clone it for a snapshot).
    pub fn automerge(&self) -> &Automerge {
        &self.am
    }

    /// The actor this document's local changes are authored by.
    pub fn actor(&self) -> &ActorId {
        self.am.get_actor()
    }

    /// Whether changes wait in the document for dependencies it lacks (the apply that brings
    /// those names the waiting changes' records too; see [`Applied`]).
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
    /// changed. New records go to one new page; existing ones are updated where they live. A
    /// change of more operations than other members take ([`Error::TooManyOps`]) is not made:
    /// the caller writes fewer records at once.
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
        let ops = tx.pending_ops() as u64;
        if ops > self.max_ops {
            tx.rollback();
            return Err(Error::TooManyOps(ops));
        }
        let (hash, _) = tx.commit();
        let change = hash.and_then(|h| self.am.get_change_by_hash(&h));
        if let Some(c) = &change {
            self.waiting.forget_actor(c.actor_id());
            self.lineage.applied([c]);
        }
        for id in created {
            place(&mut self.pages, id, page.clone());
        }
        for id in deletes {
            self.pages.remove(id);
        }
        Ok(change.map(|c| c.raw_bytes().to_vec()))
    }

    /// Applies changes from other authors, and reports the records they touch (found from the
    /// changes' own operations, see `touched`). A change whose dependencies are not all in the
    /// document waits, outside Automerge, until they are; one that waited is judged by the guard
    /// again when it is let through, and reported in [`Applied::refused`] if refused. After an
    /// error, the document is to be rebuilt from the store (what waited may be lost from it).
    pub fn apply(&mut self, changes: Vec<automerge::Change>) -> Result<Applied, Error> {
        self.apply_with(changes, Expanded::default(), false)
    }

    /// [`Doc::apply`] of changes the guard judged ([`Doc::refused`]), with the operations it
    /// decoded then, so that each change is decoded once.
    pub fn apply_judged(
        &mut self,
        changes: Vec<automerge::Change>,
        expanded: Expanded,
    ) -> Result<Applied, Error> {
        self.apply_with(changes, expanded, false)
    }

    /// [`Doc::apply`], handing Automerge one change at a time, so that a change that breaks the
    /// document or does not apply, given or let through, is named ([`Error::BrokeOn`]). Slower:
    /// for finding the culprit after a batch failed. After an error of either, the document is to
    /// be rebuilt from the store (what waited may be lost from it).
    pub fn apply_stepwise(&mut self, changes: Vec<automerge::Change>) -> Result<Applied, Error> {
        self.apply_with(changes, Expanded::default(), true)
    }

    fn apply_with(
        &mut self,
        changes: Vec<automerge::Change>,
        mut expanded: Expanded,
        stepwise: bool,
    ) -> Result<Applied, Error> {
        self.ensure_indexed();
        let (ready, refused) = self.take_ready(changes, &mut expanded);
        // Each change as the guard decoded it, to find the records it touches (a read, spread
        // over threads when a catch-up chunk brings large changes) and build those it created.
        let copies = ready.clone();
        let expanded: Vec<_> = ready.iter().map(|c| expanded.take(c)).collect();
        let decoded: Vec<_> = expanded.iter().flatten().collect();
        let spread = guard::spread(&ready);
        let scan = |am: &Automerge| {
            crate::parallel::map(&decoded, spread, |c| {
                (touched::scan(am, c), built::records(c))
            })
        };
        let found = if stepwise {
            for c in ready {
                let (actor, seq) = (c.actor_id().clone(), c.seq());
                guard::apply(&mut self.am, vec![c])
                    .map_err(|e| Error::BrokeOn(actor, seq, Box::new(e)))?;
            }
            scan(&self.am)
        } else {
            // The faithfulness check of a large batch runs beside the scan.
            guard::apply_then(&mut self.am, ready, spread == guard::SPREAD_ANY, scan)?
        };
        let missed = decoded.len() < copies.len();
        self.lineage.applied(&copies);
        let mut everything = self.legacy_released() || missed;
        let mut ids = BTreeSet::new();
        let mut touches: HashMap<String, usize> = HashMap::new();
        let mut candidates = Vec::new();
        for (t, b) in found {
            for (id, page) in t.placed {
                place(&mut self.pages, id, page.into());
            }
            for id in &t.removed {
                self.prune(id);
            }
            everything |= t.rescan;
            for id in &t.records {
                *touches.entry(id.clone()).or_default() += 1;
            }
            ids.extend(t.records);
            candidates.extend(b);
        }
        if everything {
            // Changes not decoded here applied, or pages went: index everything again.
            self.reindex();
        }
        let built = if everything {
            HashMap::new()
        } else {
            self.keep_built(candidates, &touches)
        };
        Ok(Applied {
            touched: ids.into_iter().collect(),
            waiting: self.waiting.any(),
            everything,
            refused,
            built,
        })
    }

    /// Of the records built from changes, those the document shows as built: touched by their
    /// creating change alone in the batch, held in no greater page, and in the page object
    /// that change made (a page key made twice shows one object). In a debug build each is
    /// compared with the document.
    fn keep_built(
        &self,
        candidates: Vec<built::Built>,
        touches: &HashMap<String, usize>,
    ) -> HashMap<String, Record> {
        let mut made: HashMap<String, bool> = HashMap::new();
        let mut out = HashMap::new();
        for b in candidates {
            let alone = touches.get(&b.id) == Some(&1);
            let last = self.pages.get(&b.id).and_then(|p| p.last());
            if !alone || last.map(|p| &**p) != Some(b.page.as_str()) {
                continue;
            }
            let ours = *made.entry(b.page_obj.clone()).or_insert_with(|| {
                let shown = self.am.get(ROOT, b.page.as_str());
                matches!(shown, Ok(Some((_, obj))) if obj.to_string() == b.page_obj)
            });
            if ours {
                debug_assert_eq!(self.read(&b.id).as_ref(), Some(&b.record), "built differs");
                out.insert(b.id, b.record);
            }
        }
        out
    }

    /// Applies changes without finding what they touch or keeping the index (rebuilt once, before
    /// the next write, apply or [`Doc::read_all`]); the caller re-reads every record: restoring
    /// from the store, or opening changes whose key just arrived. Changes that waited are not
    /// judged again here (a restore lets long runs through): one that fails is caught by the
    /// apply, and the caller rebuilds change by change.
    pub fn apply_all(&mut self, changes: Vec<automerge::Change>) -> Result<(), Error> {
        let ready = self.waiting.take_ready(&self.am, changes);
        // Set first: after an error, some of the changes may have applied.
        self.unindexed = true;
        let mut lines = Lineage::default();
        lines.applied(&ready.changes);
        guard::apply(&mut self.am, ready.changes)?;
        self.lineage.absorb(lines);
        self.legacy_released();
        Ok(())
    }

    /// After changes applied: whether Automerge's own queue (a legacy document) released any
    /// (not known here: the lineage is read again).
    fn legacy_released(&mut self) -> bool {
        let released = self.waiting.legacy_released(&self.am);
        if released {
            self.lineage = Lineage::of(&self.am);
        }
        released
    }

    /// Of `changes` and the changes waiting, those whose history is at hand, dependencies first;
    /// the rest wait. When changes that waited are among them, the guard judges them all again
    /// with their history at hand: the ones it refuses are returned apart, and what depends on
    /// them waits.
    fn take_ready(
        &mut self,
        changes: Vec<automerge::Change>,
        expanded: &mut Expanded,
    ) -> (Vec<automerge::Change>, Vec<Refused>) {
        let ready = self.waiting.take_ready(&self.am, changes);
        let mut changes = ready.changes;
        let mut refused = Vec::new();
        if !ready.released {
            return (changes, refused);
        }
        loop {
            let (bad, more) = guard::refused(&self.am, &self.lineage, &changes, false);
            let bad: HashMap<usize, Error> = bad.into_iter().collect();
            expanded.absorb(more);
            if bad.is_empty() {
                return (changes, refused);
            }
            let mut kept = Vec::with_capacity(changes.len());
            for (i, c) in changes.into_iter().enumerate() {
                match bad.get(&i) {
                    Some(why) => refused.push(Refused {
                        actor: c.actor_id().clone(),
                        seq: c.seq(),
                        why: why.to_string(),
                    }),
                    None => kept.push(c),
                }
            }
            let order = super::waiting::ordered(&self.am, kept.iter());
            let mut slots: Vec<Option<automerge::Change>> = kept.into_iter().map(Some).collect();
            changes = order.iter().filter_map(|&i| slots[i].take()).collect();
            self.waiting.put_back(slots.into_iter().flatten().collect());
        }
    }

    /// Changes of `actor` held back for dependencies (count, bytes), and all held back.
    pub fn held_by(&self, actor: &ActorId) -> (usize, usize, usize) {
        self.waiting.held_by(actor)
    }

    /// The operations of all the changes held back for dependencies: released together, they
    /// are judged and applied in one batch.
    pub fn held_ops(&self) -> u64 {
        self.waiting.held_ops()
    }

    /// Per actor, the lowest sequence of its changes held back for dependencies (a saved
    /// document does not hold them); `None` when that is not known.
    pub fn lowest_held(&self) -> Option<HashMap<ActorId, u64>> {
        self.waiting.lowest_held()
    }

    /// Whether the document holds the change `hash`.
    pub fn has_change(&self, hash: &ChangeHash) -> bool {
        self.am.get_change_meta_by_hash(hash).is_some()
    }

    /// Refuses, before Automerge sees them, changes of `batch` it would fail on or keep
    /// unfaithfully ([`guard::refused`]). With `ready_only`, a change whose dependencies are not
    /// all in the document or the batch is judged only on what it is alone (its history may
    /// make an object it names; Automerge holds it back). Returns the index and reason of each
    /// refused change, and the expanded operations of the others, for [`Doc::apply`].
    pub fn refused(
        &self,
        batch: &[automerge::Change],
        ready_only: bool,
    ) -> (Vec<(usize, Error)>, Expanded) {
        guard::refused(&self.am, &self.lineage, batch, ready_only)
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
#[path = "doc_tests.rs"]
pub(super) mod tests;
