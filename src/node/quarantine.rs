//! What a replica does with remote changes it cannot take as they come: changes Automerge
//! cannot apply are quarantined (set aside for good, the document rebuilt from the store without
//! them), a revoked writer's envelopes past its cut are forgotten, and changes waiting for
//! dependencies are bounded.

use automerge::Change;

use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::identity::AuthorId;
use crate::store::Store;
use crate::view::doc;

use std::collections::BTreeMap;

use crate::access::EpochKey;
use crate::dataset::Meta;

use super::dataset::{Dataset, Event, State};

/// Changes one author may have held back in one dataset for dependencies not yet there; past
/// it, its further ones are dropped, not stored, and fetched again later.
pub const MAX_HELD_PER_AUTHOR: usize = 1_000;
/// Bytes of such changes one author may have held back in one dataset.
pub const MAX_HELD_BYTES_PER_AUTHOR: usize = 16 * 1024 * 1024;
/// Changes held back in one dataset, all authors together.
pub const MAX_HELD_PER_DATASET: usize = 10_000;
/// Operations of the changes held back in one dataset, all authors together: released at once,
/// they are judged and applied in one batch, which this bounds with the batch's own budget
/// ([`doc::BATCH_OPS`]).
pub const MAX_HELD_OPS_PER_DATASET: u64 = doc::BATCH_OPS;

impl Dataset {
    /// Quarantines the changes of `batch` the document's guard refuses (see [`doc::Doc::refused`]).
    pub(super) fn refuse_unsafe(
        &self,
        store: &Store,
        st: &State,
        batch: &mut Vec<(Envelope, Option<Change>)>,
        invalid: &mut Vec<AuthorId>,
    ) -> Result<doc::Expanded> {
        let idx: Vec<usize> = (0..batch.len()).filter(|i| batch[*i].1.is_some()).collect();
        let changes: Vec<Change> = idx.iter().filter_map(|i| batch[*i].1.clone()).collect();
        let (refused, expanded) = st.doc.refused(&changes, true);
        let mut drop: Vec<usize> = Vec::new();
        for (k, why) in refused {
            let i = idx[k];
            let env = &batch[i].0;
            self.quarantine(store, env.author, env.seq, &why.to_string())?;
            invalid.push(env.author);
            drop.push(i);
        }
        let mut i = 0;
        batch.retain(|_| {
            i += 1;
            !drop.contains(&(i - 1))
        });
        Ok(expanded)
    }

    /// Drops (unstored, to be fetched again later) the changes of `batch` that would wait for
    /// dependencies past what one author, or the dataset, may have waiting (in changes, bytes,
    /// and operations).
    pub(super) fn bound_held_back(&self, st: &State, batch: &mut Vec<(Envelope, Option<Change>)>) {
        let hashes: std::collections::HashSet<automerge::ChangeHash> = batch
            .iter()
            .filter_map(|(_, c)| c.as_ref().map(Change::hash))
            .collect();
        let mut added: std::collections::HashMap<AuthorId, (usize, usize)> =
            std::collections::HashMap::new();
        let mut total = None;
        let mut ops = None;
        let mut dropped = 0;
        batch.retain(|(env, c)| {
            let Some(c) = c else { return true };
            let ready = c
                .deps()
                .iter()
                .all(|d| hashes.contains(d) || st.doc.has_change(d));
            if ready {
                return true;
            }
            // What the document holds back already, counted once per author and batch.
            let mine = added.entry(env.author).or_insert_with(|| {
                let (n, bytes, all) = st.doc.held_by(c.actor_id());
                total.get_or_insert(all);
                (n, bytes)
            });
            let all = total.get_or_insert(0);
            let all_ops = ops.get_or_insert_with(|| st.doc.held_ops());
            let fits = mine.0 < MAX_HELD_PER_AUTHOR
                && mine.1 + c.raw_bytes().len() <= MAX_HELD_BYTES_PER_AUTHOR
                && *all < MAX_HELD_PER_DATASET
                && *all_ops + c.len() as u64 <= MAX_HELD_OPS_PER_DATASET;
            if fits {
                mine.0 += 1;
                mine.1 += c.raw_bytes().len();
                *all += 1;
                *all_ops += c.len() as u64;
            } else {
                dropped += 1;
            }
            fits
        });
        if dropped > 0 {
            tracing::warn!(dataset = %self.meta.id, dropped, "changes waiting for dependencies past the limits dropped; they are fetched again later");
        }
    }

    /// Sets one envelope aside for good (see [`Store::quarantine`]), naming its author.
    fn quarantine(&self, store: &Store, author: AuthorId, seq: u64, why: &str) -> Result<()> {
        tracing::warn!(dataset = %self.meta.id, %author, seq, why, "envelope quarantined: its change cannot be applied");
        store.quarantine(&self.meta.id, &author, seq, why)?;
        Ok(())
    }

    /// After Automerge failed inside on `batch`: rebuilds the document from the store and
    /// applies the batch's changes again one at a time, with what each lets through that waited
    /// ([`doc::Doc::apply_stepwise`]). The change that breaks the document (one of the batch, or
    /// one that waited) is quarantined and everything is tried again without it. Returns the
    /// envelopes to store.
    pub(super) fn recover(
        &self,
        store: &Store,
        st: &mut State,
        mut batch: Vec<(Envelope, Option<Change>)>,
        invalid: &mut Vec<AuthorId>,
    ) -> Result<Vec<(Envelope, Option<Change>)>> {
        let shown = std::mem::take(&mut st.records);
        // Each round quarantines one change, so this ends.
        'again: loop {
            self.rebuild(store, st)?;
            let mut refused = Vec::new();
            for (env, change) in &batch {
                let Some(change) = change else { continue };
                let culprit = match st.doc.apply_stepwise(vec![change.clone()]) {
                    Ok(applied) => {
                        refused.extend(applied.refused);
                        continue;
                    }
                    Err(doc::Error::BrokeOn(actor, seq, why)) => {
                        (actor_key(&actor)?, seq, why.to_string())
                    }
                    Err(e) => (env.author, env.seq, e.to_string()),
                };
                self.quarantine_one(store, culprit, &mut batch, invalid)?;
                continue 'again;
            }
            self.quarantine_refused(store, &refused, &mut batch, invalid)?;
            break;
        }
        st.records = shown;
        Ok(batch)
    }

    /// Quarantines the changes that waited and that the guard refused once their history was at
    /// hand ([`doc::Applied::refused`]): stored ones are set aside, ones of `batch` dropped from it.
    pub(super) fn quarantine_refused(
        &self,
        store: &Store,
        refused: &[doc::Refused],
        batch: &mut Vec<(Envelope, Option<Change>)>,
        invalid: &mut Vec<AuthorId>,
    ) -> Result<()> {
        for r in refused {
            let why = format!("refused once its dependencies arrived: {}", r.why);
            self.quarantine_one(store, (actor_key(&r.actor)?, r.seq, why), batch, invalid)?;
        }
        Ok(())
    }

    /// Quarantines one change (author, sequence, why), stored or of `batch`.
    fn quarantine_one(
        &self,
        store: &Store,
        (author, seq, why): (AuthorId, u64, String),
        batch: &mut Vec<(Envelope, Option<Change>)>,
        invalid: &mut Vec<AuthorId>,
    ) -> Result<()> {
        self.quarantine(store, author, seq, &why)?;
        batch.retain(|(e, _)| (e.author, e.seq) != (author, seq));
        invalid.push(author);
        Ok(())
    }

    /// Sets aside for good the stored envelopes `drop` (author and sequence), which a grant
    /// learnt since says their author could not write, and rebuilds the document without them
    /// (from scratch when the snapshot holds one of them). Returns record events.
    pub(crate) fn forget(
        &self,
        store: &Store,
        drop: &[(AuthorId, u64)],
        why: &str,
    ) -> Result<Vec<Event>> {
        let mut st = self.lock();
        for (author, seq) in drop {
            self.quarantine(store, *author, *seq, why)?;
        }
        if let Some(snap) = store.snapshot(&self.meta.id)? {
            if drop.iter().any(|(a, s)| snap.vv.get(a) >= *s) {
                store.remove_snapshot(&self.meta.id)?;
            }
        }
        let shown = std::mem::take(&mut st.records);
        self.rebuild(store, &mut st)?;
        st.records = shown;
        Ok(st.rematerialize())
    }

    /// Replaces the document (and what derives from it) with what the store holds.
    pub(super) fn rebuild(&self, store: &Store, st: &mut State) -> Result<()> {
        let author = AuthorId::from_slice(st.doc.actor().to_bytes())
            .ok_or_else(|| Error::Internal("document actor is not a key".into()))?;
        let (fresh, _) = State::load(&self.meta, store, &author, st.keys.clone())?;
        let keep_next = st.next_seq;
        // The store may hold envelopes whose flush has not returned: what is on disk stays
        // what writers settled, not what the store shows.
        let durable = std::mem::take(&mut st.durable);
        *st = fresh;
        st.next_seq = st.next_seq.max(keep_next);
        st.durable = durable;
        Ok(())
    }
}

impl State {
    /// [`Self::load`] applying each stored change alone, once its dependencies are in (so that
    /// Automerge holds none back and a failure names its change), quarantining the ones that
    /// name missing objects or fail.
    pub(super) fn load_one_by_one(
        meta: &Meta,
        store: &Store,
        author: &AuthorId,
        keys: BTreeMap<u64, EpochKey>,
    ) -> Result<(Self, u64)> {
        'again: loop {
            let mut state = Self::start(meta, store, author, keys.clone())?;
            let mut max_hlc = 0;
            let mut pending: Vec<(Envelope, automerge::Change)> = Vec::new();
            store.for_each_envelope_after(&meta.id, &state.vv.clone(), |env| {
                max_hlc = max_hlc.max(env.hlc);
                state.vv.advance(env.author, env.seq);
                if let Ok(Some(plain)) = state.open_payload(meta, &env) {
                    if let Ok(c) = super::replica::change_of(&env, plain) {
                        pending.push((env, c));
                    }
                }
                Ok(())
            })?;
            let mut progress = true;
            while progress {
                progress = false;
                let mut rest = Vec::new();
                for (env, c) in pending {
                    if !c.deps().iter().all(|d| state.doc.has_change(d)) {
                        rest.push((env, c));
                        continue;
                    }
                    progress = true;
                    let refused = !state
                        .doc
                        .refused(std::slice::from_ref(&c), true)
                        .0
                        .is_empty();
                    let (why, poisoned) = if refused {
                        ("the guard refuses it".to_owned(), false)
                    } else {
                        // Nothing waits in the document here: nothing is let through.
                        match state.doc.apply_all(vec![c]) {
                            Ok(()) => continue,
                            Err(e) => (e.to_string(), e.broke_document()),
                        }
                    };
                    tracing::warn!(dataset = %meta.id, author = %env.author, seq = env.seq, why, "stored envelope quarantined");
                    store.quarantine(&meta.id, &env.author, env.seq, &why)?;
                    if poisoned {
                        continue 'again;
                    }
                }
                pending = rest;
            }
            // What is left waits for changes no one here holds.
            state
                .doc
                .apply_all(pending.into_iter().map(|(_, c)| c).collect())?;
            state.finish_load(meta, store, author)?;
            return Ok((state, max_hlc));
        }
    }
}

/// The author key an Automerge actor of a fogmesh document is.
fn actor_key(actor: &automerge::ActorId) -> Result<AuthorId> {
    AuthorId::from_slice(actor.to_bytes())
        .ok_or_else(|| Error::Internal("a document actor is not a key".into()))
}
