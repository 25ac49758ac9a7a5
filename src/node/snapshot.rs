//! A dataset's document saved (a snapshot: the document and the envelopes it covers) and
//! restored (the latest snapshot, then the envelopes stored after it).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use crate::access::EpochKey;
use crate::dataset::Meta;
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::identity::AuthorId;
use crate::store::{Snapshot, Store};
use crate::version::VersionVector;
use crate::view::doc::Doc;

use super::dataset::{Dataset, State};

/// Stored envelopes applied to a document per Automerge call when restoring.
const RESTORE_CHUNK: usize = 256;

impl Dataset {
    /// Saves the document if no other snapshot of this dataset is under way. Blocking.
    pub(crate) fn snapshot(&self, store: &Store) -> Result<bool> {
        if self.snapshotting.swap(true, Ordering::AcqRel) {
            return Ok(false);
        }
        let (doc, vv, local) = {
            let mut st = self.lock();
            let Some(vv) = st.saved_cover() else {
                self.snapshotting.store(false, Ordering::Release);
                return Ok(false);
            };
            st.since_snapshot = 0;
            (st.doc.automerge().clone(), vv, self.sequencer.issued())
        };
        // The copy may hold local changes still on their way to the store: saved before them,
        // it would restore changes whose envelopes a crash lost. (Their envelopes lie after
        // `vv`, so a restore replays them again, harmlessly.)
        if !self.sequencer.wait_stored(local) {
            self.snapshotting.store(false, Ordering::Release);
            return Ok(false);
        }
        // Without the changes held back: the vector leaves them out, and one set aside later
        // must not come back from the snapshot.
        let saved = doc.save_with_options(automerge::SaveOptions {
            retain_orphans: false,
            ..Default::default()
        });
        // Not loaded again to check it: that costs a whole second document in memory (200 MiB
        // at 60,000 records). The guard checks every change as it is applied, and a snapshot
        // that does not load at open is dropped and rebuilt from the envelopes it covers.
        let result = store.put_snapshot(&self.meta.id, &Snapshot { vv, doc: saved });
        self.snapshotting.store(false, Ordering::Release);
        result.map(|_| true).map_err(Into::into)
    }
}

/// Whether a load failed on a stored change (applied in chunks: one before the last comes back
/// through the store's scan, as [`to_store_err`] made it).
fn breaks_document(e: &Error) -> bool {
    match e {
        Error::Doc(_) => true,
        Error::Store(crate::store::Error::Corrupt { what, .. }) => *what == STORED_CHANGE,
        _ => false,
    }
}

/// What [`to_store_err`] names.
const STORED_CHANGE: &str = "stored change";

fn to_store_err(e: Error) -> crate::store::Error {
    crate::store::Error::Corrupt {
        what: STORED_CHANGE,
        key: String::new(),
        detail: e.to_string(),
    }
}

impl State {
    /// The envelopes a snapshot of the document now covers: the version vector less, per
    /// author, its changes held back for dependencies (the snapshot is saved without them; a
    /// restore replays them from the store and they wait again). `None` when the document
    /// waits for epoch keys, or holds back changes not known here.
    fn saved_cover(&self) -> Option<VersionVector> {
        if !self.missing.is_empty() {
            return None;
        }
        let mut vv = self.vv.clone();
        if !self.doc.waiting() {
            return Some(vv);
        }
        for (actor, seq) in self.doc.lowest_held()? {
            let author = AuthorId::from_slice(actor.to_bytes())?;
            if vv.get(&author) >= seq {
                vv.set(author, seq - 1);
            }
        }
        Some(vv)
    }

    fn from_snapshot(snap: Snapshot, author: &AuthorId) -> Result<Self> {
        let doc = Doc::load(&snap.doc, author.as_bytes())?;
        Ok(Self {
            doc,
            vv: snap.vv,
            ..Self::empty(author)
        })
    }

    /// The state the store holds for `meta`: its latest snapshot and the envelopes stored after
    /// it, opened with `keys`; with the highest HLC seen. Should a stored change make Automerge
    /// fail, the document is rebuilt change by change and each change that cannot apply is
    /// quarantined ([`Store::quarantine`]), so the dataset opens whatever a peer sent.
    pub(super) fn load(
        meta: &Meta,
        store: &Store,
        author: &AuthorId,
        keys: BTreeMap<u64, EpochKey>,
    ) -> Result<(Self, u64)> {
        match Self::load_at_once(meta, store, author, keys.clone()) {
            // Any failure of the document (a panic, or an error Automerge returns for a stored
            // change): rebuilt change by change, setting aside what does not apply.
            Err(why) if breaks_document(&why) => {
                tracing::error!(dataset = %meta.id, %why, "a stored change breaks the document: rebuilding it change by change");
                Self::load_one_by_one(meta, store, author, keys)
            }
            other => other,
        }
    }

    pub(super) fn start(
        meta: &Meta,
        store: &Store,
        author: &AuthorId,
        keys: BTreeMap<u64, EpochKey>,
    ) -> Result<Self> {
        let mut state = match store.snapshot(&meta.id)? {
            Some(snap) => match Self::from_snapshot(snap, author) {
                Ok(state) => state,
                // The store keeps every envelope a snapshot covers: it is only a head start.
                Err(e) => {
                    tracing::error!(dataset = %meta.id, error = %e, "the snapshot does not load: removed, the dataset is rebuilt from its envelopes");
                    store.remove_snapshot(&meta.id)?;
                    Self::empty(author)
                }
            },
            None => Self::empty(author),
        };
        state.keys = keys;
        Ok(state)
    }

    pub(super) fn finish_load(
        &mut self,
        meta: &Meta,
        store: &Store,
        author: &AuthorId,
    ) -> Result<()> {
        // A sequence of ours that was set aside is never used again: a peer may hold it.
        let last = store.last_seq(&meta.id, author)?;
        let set_aside = store.last_quarantined(&meta.id, author)?;
        self.next_seq = self.vv.get(author).max(last).max(set_aside) + 1;
        self.own_set_aside = set_aside > 0;
        self.forks = store.forks(&meta.id)?.into_iter().collect();
        self.tips.clear();
        let vv: Vec<(AuthorId, u64)> = self.vv.iter().map(|(a, s)| (*a, *s)).collect();
        for (a, s) in vv {
            super::forks::set_tip(store, &meta.id, &mut self.tips, a, s)?;
        }
        self.materialize();
        // What a store opens with is on its disk.
        self.durable = self.current();
        Ok(())
    }

    fn load_at_once(
        meta: &Meta,
        store: &Store,
        author: &AuthorId,
        keys: BTreeMap<u64, EpochKey>,
    ) -> Result<(Self, u64)> {
        let began = std::time::Instant::now();
        let mut state = Self::start(meta, store, author, keys)?;
        let snapshot = began.elapsed();
        let mut max_hlc = 0;
        let mut replayed = 0usize;
        let mut pending: Vec<Envelope> = Vec::with_capacity(RESTORE_CHUNK);
        store.for_each_envelope_after(&meta.id, &state.vv.clone(), |env| {
            max_hlc = max_hlc.max(env.hlc);
            replayed += 1;
            pending.push(env);
            if pending.len() == RESTORE_CHUNK {
                state
                    .apply_stored(meta, std::mem::take(&mut pending))
                    .map_err(to_store_err)?;
            }
            Ok(())
        })?;
        state.apply_stored(meta, pending)?;
        let replay = began.elapsed() - snapshot;
        state.finish_load(meta, store, author)?;
        tracing::debug!(
            dataset = %meta.id,
            records = state.records.len(),
            snapshot_s = snapshot.as_secs_f64(),
            replayed,
            replay_s = replay.as_secs_f64(),
            materialize_s = (began.elapsed() - snapshot - replay).as_secs_f64(),
            "dataset state loaded"
        );
        Ok((state, max_hlc))
    }

    fn apply_stored(&mut self, meta: &Meta, envs: Vec<Envelope>) -> Result<()> {
        let mut changes = Vec::with_capacity(envs.len());
        for env in envs {
            // Only a contiguous run advances the vector: after a gap, later envelopes wait in
            // the document until the gap is filled by catch-up.
            self.vv.advance(env.author, env.seq);
            // An envelope stored while its key was missing was never checked: one that does
            // not open or carries a change that is not its author's is skipped, not fatal.
            let change = match self.open_payload(meta, &env) {
                Ok(Some(plain)) => super::replica::change_of(&env, plain),
                Ok(None) => continue,
                Err(e) => Err(Error::Invalid(e)),
            };
            match change {
                Ok(c) => changes.push(c),
                Err(e) => {
                    tracing::warn!(dataset = %meta.id, author = %env.author, seq = env.seq, error = %e, "stored envelope skipped")
                }
            }
        }
        // The caller reads every record back once all are applied (`materialize`).
        Ok(self.doc.apply_all(changes)?)
    }
}
