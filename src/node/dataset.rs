//! One dataset at run time: its Automerge document, the records materialized from it, its version
//! vector, and its live event channel. All CRDT work happens here, on blocking threads.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use automerge::{ActorId, Automerge, Change};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::dataset::Meta;
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::identity::{AuthorId, Identity};
use crate::record::{self, Record};
use crate::store::{Snapshot, Store};
use crate::version::VersionVector;
use crate::view::doc::{self, Upsert};

/// Events buffered per dataset for slow subscribers before they are told they lagged.
pub const EVENTS_CAP: usize = 1024;
/// Stored envelopes applied to a document per Automerge call when restoring.
const RESTORE_CHUNK: usize = 256;

/// A change to a dataset, as subscribers see it.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Event {
    /// A record was created or updated; this is its new state.
    Upsert {
        /// The record.
        record: Record,
    },
    /// A record was deleted.
    Delete {
        /// Its id.
        id: String,
    },
}

/// What one write batch asks for.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// Records to create or update.
    #[serde(default)]
    pub records: Vec<record::Input>,
    /// Ids of records to delete.
    #[serde(default)]
    pub delete: Vec<String>,
}

/// Mutable state, behind the dataset's lock.
pub(crate) struct State {
    pub(crate) doc: Automerge,
    pub(crate) records: BTreeMap<String, Record>,
    pub(crate) vv: VersionVector,
    pub(super) next_seq: u64,
    pub(super) since_snapshot: u64,
    pub(super) failed: bool,
    /// Remote changes wait in the document for missing dependencies.
    pub(super) waiting: bool,
}

/// A dataset held by this node.
pub struct Dataset {
    pub(crate) meta: Meta,
    state: Mutex<State>,
    events: broadcast::Sender<Arc<Event>>,
    snapshotting: AtomicBool,
}

/// What a local write produced, before it is acknowledged.
pub(crate) struct Written {
    pub(crate) ids: Vec<String>,
    /// The stored envelope, for the mesh to push once it is durable.
    pub(crate) envelope: Option<Envelope>,
    pub(crate) events: Vec<Event>,
    pub(crate) snapshot_due: bool,
}

impl Dataset {
    /// A new, empty dataset.
    pub(crate) fn create(meta: Meta, author: &AuthorId) -> Self {
        Self::with_state(meta, State::empty(author))
    }

    fn with_state(meta: Meta, state: State) -> Self {
        Self {
            meta,
            state: Mutex::new(state),
            events: broadcast::channel(EVENTS_CAP).0,
            snapshotting: AtomicBool::new(false),
        }
    }

    /// Rebuilds a dataset from its latest snapshot plus the envelopes stored after it.
    /// Returns it with the highest HLC seen, so the node clock can move past it.
    pub(crate) fn restore(meta: Meta, store: &Store, author: &AuthorId) -> Result<(Self, u64)> {
        let (mut state, mut max_hlc) = match store.snapshot(&meta.id)? {
            Some(snap) => (State::from_snapshot(snap, author)?, 0),
            None => (State::empty(author), 0),
        };
        let mut pending: Vec<Envelope> = Vec::with_capacity(RESTORE_CHUNK);
        store.for_each_envelope_after(&meta.id, &state.vv.clone(), |env| {
            max_hlc = max_hlc.max(env.hlc);
            pending.push(env);
            if pending.len() == RESTORE_CHUNK {
                state
                    .apply_stored(std::mem::take(&mut pending))
                    .map_err(to_store_err)?;
            }
            Ok(())
        })?;
        state.apply_stored(pending)?;
        let last = store.last_seq(&meta.id, author)?;
        state.next_seq = state.vv.get(author).max(last) + 1;
        state.materialize();
        Ok((Self::with_state(meta, state), max_hlc))
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribes to live events.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    /// Sends acknowledged events to subscribers.
    pub(crate) fn publish_events(&self, events: Vec<Event>) {
        for e in events {
            // No subscribers is not an error.
            let _ = self.events.send(Arc::new(e));
        }
    }

    /// Runs `f` over the materialized records.
    pub(crate) fn with_records<T>(&self, f: impl FnOnce(&BTreeMap<String, Record>) -> T) -> T {
        f(&self.lock().records)
    }

    /// Applies a validated batch as one change and stores its envelope (not yet flushed).
    pub(crate) fn write_local(
        &self,
        id: &Identity,
        store: &Store,
        hlc: u64,
        batch: Batch,
        snapshot_every: u64,
    ) -> Result<Written> {
        let mut st = self.lock();
        if st.failed {
            return Err(Error::Unavailable(self.meta.id.to_string()));
        }
        if let Some(missing) = batch.delete.iter().find(|d| !st.records.contains_key(*d)) {
            return Err(Error::NotFound(format!(
                "record {missing} not found in {}",
                self.meta.id
            )));
        }
        let ms = crate::hlc::Timestamp(hlc).millis();
        let ups: Vec<Upsert> = batch
            .records
            .into_iter()
            .map(|i| {
                let kept =
                    i.id.as_ref()
                        .and_then(|id| st.records.get(id))
                        .map(|r| r.time);
                upsert(i, kept.unwrap_or(ms))
            })
            .collect();
        let Some(change) = doc::write(&mut st.doc, &ups, &batch.delete)? else {
            return Ok(Written {
                ids: vec![],
                envelope: None,
                events: vec![],
                snapshot_due: false,
            });
        };
        let seq = st.next_seq;
        let env = Envelope::seal(id, self.meta.id.clone(), seq, 0, hlc, change);
        if let Err(e) = store.put_envelope(&env) {
            // The document now holds a change the store lacks: stop writing until a restart
            // rebuilds the document from the store.
            st.failed = true;
            return Err(e.into());
        }
        st.vv.advance(id.author(), seq);
        st.next_seq += 1;
        st.since_snapshot += 1;
        let events = st.refresh(&ups, &batch.delete);
        let ids = ups.into_iter().map(|u| u.id).chain(batch.delete).collect();
        Ok(Written {
            ids,
            envelope: Some(env),
            events,
            snapshot_due: st.since_snapshot >= snapshot_every,
        })
    }

    /// Saves the document if no other snapshot of this dataset is under way. Blocking.
    pub(crate) fn snapshot(&self, store: &Store) -> Result<bool> {
        if self.snapshotting.swap(true, Ordering::AcqRel) {
            return Ok(false);
        }
        let (doc, vv) = {
            let mut st = self.lock();
            st.since_snapshot = 0;
            (st.doc.clone(), st.vv.clone())
        };
        let result = store.put_snapshot(
            &self.meta.id,
            &Snapshot {
                vv,
                doc: doc.save(),
            },
        );
        self.snapshotting.store(false, Ordering::Release);
        result.map(|_| true).map_err(Into::into)
    }

    /// Record count and version-vector total, for listings.
    pub(crate) fn stats(&self) -> (usize, u64) {
        let st = self.lock();
        (st.records.len(), st.vv.total())
    }
}

/// Turns an input into an upsert; `default_time` is the record's current time when it exists (an
/// update that names no time keeps it), else the write's clock.
fn upsert(i: record::Input, default_time: u64) -> Upsert {
    let time = i.time.unwrap_or(default_time);
    let data = match i.data {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    Upsert {
        id: i.id.unwrap_or_else(|| record::new_id(time)),
        name: i.name,
        time,
        data,
    }
}

fn to_store_err(e: Error) -> crate::store::Error {
    crate::store::Error::Corrupt {
        what: "envelope payload",
        key: String::new(),
        detail: e.to_string(),
    }
}

impl State {
    fn empty(author: &AuthorId) -> Self {
        Self {
            doc: doc::new_doc(author.as_bytes()),
            records: BTreeMap::new(),
            vv: VersionVector::new(),
            next_seq: 1,
            since_snapshot: 0,
            failed: false,
            waiting: false,
        }
    }

    fn from_snapshot(snap: Snapshot, author: &AuthorId) -> Result<Self> {
        let doc = Automerge::load(&snap.doc)
            .map_err(|e| Error::Doc(doc::Error(e)))?
            .with_actor(ActorId::from(author.as_bytes()));
        Ok(Self {
            doc,
            vv: snap.vv,
            ..Self::empty(author)
        })
    }

    fn apply_stored(&mut self, envs: Vec<Envelope>) -> Result<()> {
        let mut changes = Vec::with_capacity(envs.len());
        for env in envs {
            let change = Change::from_bytes(env.payload).map_err(|e| {
                Error::Internal(format!(
                    "stored change {} #{} does not decode: {e}",
                    env.author, env.seq
                ))
            })?;
            changes.push(change);
            // Only a contiguous run advances the vector: after a gap, later envelopes wait in
            // the document until the gap is filled by catch-up.
            self.vv.advance(env.author, env.seq);
        }
        self.doc
            .apply_changes(changes)
            .map_err(|e| Error::Doc(doc::Error(e)))
    }

    fn materialize(&mut self) {
        self.records = doc::read_all(&self.doc)
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
    }

    /// Re-reads every record and reports what differs from the materialized map.
    pub(super) fn rematerialize(&mut self) -> Vec<Event> {
        let fresh: BTreeMap<String, Record> = doc::read_all(&self.doc)
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        let mut events: Vec<Event> = fresh
            .values()
            .filter(|r| self.records.get(&r.id) != Some(*r))
            .map(|r| Event::Upsert { record: r.clone() })
            .collect();
        events.extend(
            self.records
                .keys()
                .filter(|id| !fresh.contains_key(*id))
                .map(|id| Event::Delete { id: id.clone() }),
        );
        self.records = fresh;
        events
    }

    /// Re-reads the given records from the document after remote changes: upserts for those
    /// present, deletes for those that were held and are gone.
    pub(super) fn reread(&mut self, ids: &[String]) -> Vec<Event> {
        let mut events = Vec::with_capacity(ids.len());
        for id in ids {
            match doc::read(&self.doc, id) {
                Some(r) => {
                    self.records.insert(id.clone(), r.clone());
                    events.push(Event::Upsert { record: r });
                }
                None => {
                    if self.records.remove(id).is_some() {
                        events.push(Event::Delete { id: id.clone() });
                    }
                }
            }
        }
        events
    }

    /// Re-reads touched records from the document (which may hold merged concurrent edits).
    pub(super) fn refresh(&mut self, ups: &[Upsert], deletes: &[String]) -> Vec<Event> {
        let mut events = Vec::with_capacity(ups.len() + deletes.len());
        for u in ups {
            // A record this change created holds exactly what was written: no need to read it
            // back (the ids of one batch are distinct, and `records` mirrors the document).
            if !self.records.contains_key(&u.id) {
                let r = Record {
                    id: u.id.clone(),
                    name: u.name.clone(),
                    time: u.time,
                    data: u.data.clone(),
                };
                self.records.insert(u.id.clone(), r.clone());
                events.push(Event::Upsert { record: r });
                continue;
            }
            if let Some(r) = doc::read(&self.doc, &u.id) {
                self.records.insert(u.id.clone(), r.clone());
                events.push(Event::Upsert { record: r });
            }
        }
        for id in deletes {
            self.records.remove(id);
            events.push(Event::Delete { id: id.clone() });
        }
        events
    }
}
