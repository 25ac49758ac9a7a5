//! One dataset at run time: its Automerge document, the records materialized from it, its version
//! vector, and its live event channel. All CRDT work happens here, on blocking threads.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::access::{seal, AccessSet, EpochKey};
use crate::dataset::Meta;
use crate::envelope::Envelope;
use crate::error::{Error, Result, Unavailable};
use crate::identity::{AuthorId, Identity};
use crate::record::{self, Record};
use crate::store::Store;
use crate::version::{Frontier, VersionVector};
use crate::view::doc::{Doc, Upsert};

use super::sequencer::Sequencer;

/// How long a count of a dataset's bytes in the store is shown before it is counted again.
pub const SIZE_TTL: Duration = Duration::from_secs(30);

/// Events buffered per dataset for slow subscribers before they are told they lagged.
pub const EVENTS_CAP: usize = 1024;

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
        /// The name it had (so a subscriber limited to a name prefix sees only its own deletes).
        name: String,
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
    pub(crate) doc: Doc,
    pub(crate) records: BTreeMap<String, Record>,
    pub(crate) vv: VersionVector,
    pub(super) next_seq: u64,
    pub(super) since_snapshot: u64,
    pub(super) failed: bool,
    /// Epoch keys this node holds.
    pub(crate) keys: BTreeMap<u64, EpochKey>,
    /// Epochs of stored envelopes that could not be opened for want of their key.
    pub(super) missing: BTreeSet<u64>,
    /// Per author in `vv`: the digest of its envelope at that sequence (its chain's tip).
    pub(crate) tips: BTreeMap<AuthorId, [u8; 32]>,
    /// Per author proven to equivocate here: the fork, from which its envelopes are refused.
    pub(crate) forks: BTreeMap<AuthorId, u64>,
    /// A change of this node's was set aside (quarantined): its next change could not join
    /// its history, so it writes here again only under a rotated key.
    pub(super) own_set_aside: bool,
    /// How far the store is known to hold each history on disk. Peers are told of and served
    /// no further ([`State::served`]): an envelope whose flush has not returned, or failed,
    /// could be lost in a crash, and this node would then give its sequence number to another
    /// change.
    pub(super) durable: Frontier,
}

/// A dataset held by this node.
pub struct Dataset {
    pub(crate) meta: std::sync::Arc<Meta>,
    /// The owner node's identity key, which signs grants and wrapped keys.
    pub(crate) owner_key: AuthorId,
    /// Grants and wrapped keys (its own lock: never taken while waiting for the state lock).
    pub(crate) access: Mutex<AccessSet>,
    /// Set once the dataset is loaded: at creation, or by [`Self::load`] after a start (the
    /// node answers before every dataset is loaded).
    state: OnceLock<Mutex<State>>,
    events: broadcast::Sender<Arc<Event>>,
    pub(super) snapshotting: AtomicBool,
    /// Storing turns of this node's own envelopes.
    pub(super) sequencer: Sequencer,
    /// Bytes the dataset takes in the store, and when they were counted.
    size: Mutex<Option<(Instant, u64)>>,
}

/// A local change made under the dataset's lock, not yet sealed, signed or stored.
struct Made {
    change: Vec<u8>,
    seq: u64,
    key: Option<(u64, EpochKey)>,
    ticket: u64,
    events: Vec<Event>,
    ids: Vec<String>,
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
    /// A new, empty dataset whose owner node has identity key `owner_key`.
    pub(crate) fn create(meta: Meta, author: &AuthorId, owner_key: AuthorId) -> Self {
        let access = AccessSet::new(meta.id.clone());
        Self::with_state(meta, owner_key, access, State::empty(author))
    }

    fn with_state(meta: Meta, owner_key: AuthorId, access: AccessSet, state: State) -> Self {
        let ds = Self::unloaded(meta, owner_key, access);
        let _ = ds.state.set(Mutex::new(state));
        ds
    }

    fn unloaded(meta: Meta, owner_key: AuthorId, access: AccessSet) -> Self {
        Self {
            meta: std::sync::Arc::new(meta),
            owner_key,
            access: Mutex::new(access),
            state: OnceLock::new(),
            events: broadcast::channel(EVENTS_CAP).0,
            snapshotting: AtomicBool::new(false),
            sequencer: Sequencer::default(),
            size: Mutex::new(None),
        }
    }

    /// A dataset held in the store, with its access state, not loaded yet ([`Self::load`]).
    pub(crate) fn stored(meta: Meta, stored: super::access::Stored) -> Result<Self> {
        let (owner_key, access) = stored.open(&meta.id)?;
        Ok(Self::unloaded(meta, owner_key, access))
    }

    /// Rebuilds the dataset's state from its latest snapshot and the envelopes stored after it,
    /// unless it is loaded already; hands `seen` the highest HLC met (for the node clock to move
    /// past it) before the dataset takes writes. Blocking; the node loads one at a time.
    pub(crate) fn load(&self, store: &Store, me: &Identity, seen: impl FnOnce(u64)) -> Result<()> {
        if self.is_loaded() {
            return Ok(());
        }
        let keys = {
            let access = self.access.lock().unwrap_or_else(PoisonError::into_inner);
            super::access::my_keys(&access, me)
        };
        let (state, max_hlc) = State::load(&self.meta, store, &me.author(), keys)?;
        seen(max_hlc);
        let _ = self.state.set(Mutex::new(state));
        Ok(())
    }

    /// Whether this node holds a key of the dataset (read from the access set while it loads).
    pub(crate) fn has_keys(&self, me: &Identity) -> bool {
        if self.is_loaded() {
            return !self.lock().keys.is_empty();
        }
        let access = self.access.lock().unwrap_or_else(PoisonError::into_inner);
        !super::access::my_keys(&access, me).is_empty()
    }

    /// Whether the dataset's state is loaded (it is, unless the node is still starting).
    pub(crate) fn is_loaded(&self) -> bool {
        self.state.get().is_some()
    }

    /// The dataset's state, waiting until it is loaded: callers on the async threads check
    /// [`Self::is_loaded`] first (the node refuses a dataset still loading).
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.wait().lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How far this dataset's histories go now: once a flush that began after this call
    /// returns, [`Self::settle`] them.
    pub(crate) fn pending(&self) -> Frontier {
        self.lock().current()
    }

    /// Records that the store holds `flushed` (from [`Self::pending`]) on disk.
    pub(crate) fn settle(&self, flushed: &Frontier) {
        self.lock().durable.join(flushed);
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

    /// Applies a validated batch as one change and stores its envelope (not yet flushed). The
    /// envelope is sealed and signed outside the dataset's lock and stored in sequence order
    /// (see [`Sequencer`]). Blocking.
    pub(crate) fn write_local(
        &self,
        id: &Identity,
        store: &Store,
        hlc: u64,
        batch: Batch,
        snapshot_every: u64,
    ) -> Result<Written> {
        let Some(made) = self.make_change(hlc, batch)? else {
            return Ok(Written {
                ids: vec![],
                envelope: None,
                events: vec![],
                snapshot_due: false,
            });
        };
        let author = id.author();
        let (seq, ticket) = (made.seq, made.ticket);
        let turn = self.sequencer.in_turn(ticket, || {
            let prev = self.prev_of(store, &author, seq)?;
            let env = self.seal_change(id, (hlc, seq, prev), made.key, made.change);
            // Stored before taking the lock, which the next writer may hold for its change.
            store.put_envelope(&env)?;
            let mut st = self.lock();
            if st.vv.advance(author, seq) {
                st.tips.insert(author, env.digest());
            }
            st.since_snapshot += 1;
            Ok((env, st.since_snapshot >= snapshot_every))
        });
        // A turn that failed (here or before) leaves a change in the document that the store
        // lacks: stop writing until a restart rebuilds the document from the store.
        let (env, snapshot_due) = turn.inspect_err(|_| self.lock().failed = true)?;
        Ok(Written {
            ids: made.ids,
            envelope: Some(env),
            events: made.events,
            snapshot_due,
        })
    }

    /// The digest of `author`'s envelope `seq - 1` ([`GENESIS`](crate::envelope::GENESIS) for
    /// the first): the chain's tip when the vector is there, else the stored envelope.
    fn prev_of(&self, store: &Store, author: &AuthorId, seq: u64) -> Result<[u8; 32]> {
        if seq == 1 {
            return Ok(crate::envelope::GENESIS);
        }
        {
            let st = self.lock();
            if st.vv.get(author) == seq - 1 {
                if let Some(tip) = st.tips.get(author) {
                    return Ok(*tip);
                }
            }
        }
        let prev = store.envelope(&self.meta.id, author, seq - 1)?;
        prev.map(|e| e.digest()).ok_or_else(|| {
            Error::Internal(format!(
                "{}: this node's envelope {} is missing from its store",
                self.meta.id,
                seq - 1
            ))
        })
    }

    /// This node's envelope for its change number `seq`, after `prev`: sealed with `key` (none:
    /// in clear), signed.
    fn seal_change(
        &self,
        id: &Identity,
        (hlc, seq, prev): (u64, u64, [u8; 32]),
        key: Option<(u64, EpochKey)>,
        change: Vec<u8>,
    ) -> Envelope {
        let (epoch, payload) = match key {
            Some((epoch, key)) => {
                let author = id.author();
                let slot = seal::Slot {
                    dataset: &self.meta.id,
                    author: &author,
                    seq,
                    epoch,
                };
                (epoch, seal::seal(&key, slot, &change))
            }
            None => (0, change),
        };
        Envelope::seal(id, self.meta.id.clone(), seq, epoch, hlc, prev, payload)
    }

    /// The part of a local write done under the dataset's lock: checks, the Automerge change,
    /// the materialized records, a sequence number and a storing turn. `None` if the batch
    /// changes nothing.
    fn make_change(&self, hlc: u64, batch: Batch) -> Result<Option<Made>> {
        let epoch_now = self
            .access
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .epoch();
        let mut st = self.lock();
        if st.failed {
            return Err(Unavailable::StorageFailed(self.meta.id.clone()).into());
        }
        self.may_write_here(&st)?;
        if let Some(missing) = batch.delete.iter().find(|d| !st.records.contains_key(*d)) {
            return Err(Error::NotFound(format!(
                "record {missing} not found in {}",
                self.meta.id
            )));
        }
        let key = st.sealing_key(&self.meta, epoch_now)?;
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
        let Some(change) = st.doc.write(&ups, &batch.delete)? else {
            return Ok(None);
        };
        let seq = st.next_seq;
        st.next_seq += 1;
        let events = st.refresh(&ups, &batch.delete);
        let ticket = self.sequencer.ticket();
        Ok(Some(Made {
            change,
            seq,
            key,
            ticket,
            events,
            ids: ups.into_iter().map(|u| u.id).chain(batch.delete).collect(),
        }))
    }

    /// Refuses a local write that could not join this node's history: after its key was found
    /// signing two histories here, or once one of its own changes was set aside or waits for a
    /// change set aside (its next change would carry a sequence Automerge does not expect).
    fn may_write_here(&self, st: &State) -> Result<()> {
        let me = AuthorId::from_slice(st.doc.actor().to_bytes());
        let Some(me) = me else { return Ok(()) };
        let dataset = self.meta.id.clone();
        if let Some(seq) = st.forks.get(&me) {
            return Err(Unavailable::Equivocated { dataset, seq: *seq }.into());
        }
        if st.own_set_aside || st.doc.held_by(st.doc.actor()).0 > 0 {
            return Err(Unavailable::ChainBroken(dataset).into());
        }
        Ok(())
    }

    /// Bytes the dataset takes in `store` (envelopes and snapshot), counted again once the last
    /// count is older than [`SIZE_TTL`]: a count reads every envelope key of the dataset.
    pub(crate) fn bytes(&self, store: &Store) -> u64 {
        let mut size = self.size.lock().unwrap_or_else(PoisonError::into_inner);
        match *size {
            Some((at, bytes)) if at.elapsed() < SIZE_TTL => bytes,
            _ => {
                let bytes = store.dataset_bytes(&self.meta.id);
                *size = Some((Instant::now(), bytes));
                bytes
            }
        }
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

impl State {
    pub(super) fn empty(author: &AuthorId) -> Self {
        Self {
            doc: Doc::new(author.as_bytes()),
            records: BTreeMap::new(),
            vv: VersionVector::new(),
            next_seq: 1,
            since_snapshot: 0,
            failed: false,
            keys: BTreeMap::new(),
            missing: BTreeSet::new(),
            tips: BTreeMap::new(),
            forks: BTreeMap::new(),
            own_set_aside: false,
            durable: Frontier::default(),
        }
    }

    /// How far each history held goes, with its tip.
    pub(crate) fn current(&self) -> Frontier {
        Frontier {
            vv: self.vv.clone(),
            tips: self.tips.clone(),
        }
    }

    /// What peers are told of and served: the histories held, as far as they are on disk.
    pub(crate) fn served(&self) -> Frontier {
        self.current().meet(&self.durable)
    }

    /// How far `author`'s history goes in [`Self::served`].
    pub(crate) fn served_seq(&self, author: &AuthorId) -> u64 {
        self.vv.get(author).min(self.durable.vv.get(author))
    }

    /// The key new local writes are sealed with (the newest epoch held), `None` for a dataset
    /// in clear. Fails when the dataset is sealed and this node holds no key for it.
    /// A write is refused while the dataset's access state names a newer epoch than the newest
    /// key held: sealing under an older key would let a revoked party read it, and other nodes
    /// would refuse it from a writer granted at the newer epoch.
    fn sealing_key(&self, meta: &Meta, epoch_now: u64) -> Result<Option<(u64, EpochKey)>> {
        if !meta.encrypted {
            return Ok(None);
        }
        match self.keys.last_key_value() {
            Some((e, _)) if *e < epoch_now => Err(Unavailable::KeyNotArrived {
                dataset: meta.id.clone(),
                epoch: epoch_now,
            }
            .into()),
            Some((e, k)) => Ok(Some((*e, k.clone()))),
            None => Err(Error::Forbidden(format!(
                "{}: this node holds no key for it (no read or write grant has reached it)",
                meta.id
            ))),
        }
    }

    /// The plaintext change bytes of `env`: `None` (and the epoch noted as missing) when its
    /// key is not held. A sealed dataset refuses clear envelopes and the other way round.
    pub(super) fn open_payload(
        &mut self,
        meta: &Meta,
        env: &Envelope,
    ) -> std::result::Result<Option<Vec<u8>>, String> {
        match (meta.encrypted, env.epoch) {
            (false, 0) => return Ok(Some(env.payload.clone())),
            (false, _) => return Err("sealed envelope in a dataset kept in clear".into()),
            (true, 0) => return Err("clear envelope in a sealed dataset".into()),
            _ => {}
        }
        let Some(key) = self.keys.get(&env.epoch) else {
            self.missing.insert(env.epoch);
            return Ok(None);
        };
        let slot = seal::Slot {
            dataset: &meta.id,
            author: &env.author,
            seq: env.seq,
            epoch: env.epoch,
        };
        seal::open(key, slot, &env.payload)
            .map(Some)
            .map_err(|e| e.to_string())
    }

    pub(super) fn materialize(&mut self) {
        self.records = self
            .doc
            .read_all()
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
    }

    /// Re-reads every record and reports what differs from the materialized map.
    pub(super) fn rematerialize(&mut self) -> Vec<Event> {
        let fresh: BTreeMap<String, Record> = self
            .doc
            .read_all()
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
                .values()
                .filter(|r| !fresh.contains_key(&r.id))
                .map(|r| Event::Delete {
                    id: r.id.clone(),
                    name: r.name.clone(),
                }),
        );
        self.records = fresh;
        events
    }

    /// Re-reads the given records from the document after remote changes (those `built` from
    /// the changes that created them are taken as built): upserts for those present, deletes
    /// for those that were held and are gone.
    pub(super) fn reread(
        &mut self,
        ids: &[String],
        mut built: HashMap<String, Record>,
    ) -> Vec<Event> {
        let mut events = Vec::with_capacity(ids.len());
        let unbuilt: Vec<String> = ids
            .iter()
            .filter(|id| !built.contains_key(*id))
            .cloned()
            .collect();
        let mut read = self.doc.read_many(&unbuilt).into_iter();
        for id in ids {
            let record = match built.remove(id) {
                Some(r) => Some(r),
                None => read.next().flatten(),
            };
            match record {
                Some(r) => {
                    self.records.insert(id.clone(), r.clone());
                    events.push(Event::Upsert { record: r });
                }
                None => {
                    if let Some(old) = self.records.remove(id) {
                        events.push(Event::Delete {
                            id: id.clone(),
                            name: old.name,
                        });
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
            if let Some(r) = self.doc.read(&u.id) {
                self.records.insert(u.id.clone(), r.clone());
                events.push(Event::Upsert { record: r });
            }
        }
        for id in deletes {
            if let Some(old) = self.records.remove(id) {
                events.push(Event::Delete {
                    id: id.clone(),
                    name: old.name,
                });
            }
        }
        events
    }
}
