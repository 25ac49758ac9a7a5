//! The replica side of a dataset: applying envelopes written by other nodes, and serving stored
//! envelopes to peers that lack them. Signatures and entitlement are checked by the caller (the
//! mesh); this module stores, applies and keeps the version vector contiguous.

use std::sync::Arc;

use automerge::Change;

use crate::access::EpochKey;
use crate::dataset::{Meta, Priority};
use crate::envelope::Envelope;
use crate::equivocation::Evidence;
use crate::error::{Error, Result};
use crate::identity::AuthorId;
use crate::store::Store;
use crate::version::VersionVector;
use crate::view::doc;

use super::dataset::{Dataset, Event, State};
use super::lanes::Delivery;
use super::Worker;

/// What applying a group of remote envelopes did.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    /// Envelopes that were new to this node, now stored.
    pub(crate) fresh: Vec<Envelope>,
    /// Record events for subscribers.
    pub(crate) events: Vec<Event>,
    /// A snapshot is due.
    pub(crate) snapshot_due: bool,
    /// Authors of envelopes dropped because they did not open or their change was not theirs.
    pub(crate) invalid: Vec<AuthorId>,
    /// Evidence of equivocation found in the batch.
    pub(crate) evidence: Vec<Evidence>,
    /// Envelopes not taken: the changes before them claimed the batch's operations budget
    /// ([`doc::BATCH_OPS`]). Neither stored nor judged: to apply next, else fetched again.
    pub(crate) left: Vec<Envelope>,
}

impl Dataset {
    /// Stores and applies envelopes of this dataset from other authors (not yet flushed).
    /// Envelopes already held are skipped, so duplicates and replays are harmless. A change
    /// Automerge cannot take (one that names an object the document lacks, or one it fails on)
    /// is quarantined alone: never stored, refused when it comes again, its author reported.
    pub(crate) fn apply_remote(
        &self,
        store: &Store,
        envs: Vec<Envelope>,
        snapshot_every: u64,
    ) -> Result<Applied> {
        let mut st = self.lock();
        if st.failed {
            return Err(crate::error::Unavailable::StorageFailed(self.meta.id.clone()).into());
        }
        let (mut invalid, mut evidence, mut left) = (Vec::new(), Vec::new(), Vec::new());
        let found = (&mut invalid, &mut evidence, &mut left);
        let mut batch = self.opened(store, &mut st, envs, found)?;
        let expanded = self.refuse_unsafe(store, &st, &mut batch, &mut invalid)?;
        self.bound_held_back(&st, &mut batch);
        let new = batch.len();
        if new == 0 {
            return Ok(Applied {
                invalid,
                evidence,
                left,
                ..Applied::default()
            });
        }
        // Apply first: a change Automerge refuses is never stored, so it cannot break a restart.
        let changes: Vec<Change> = batch.iter().filter_map(|(_, c)| c.clone()).collect();
        let applied = if changes.is_empty() {
            doc::Applied::default()
        } else {
            match st.doc.apply_judged(changes, expanded) {
                Ok(a) => a,
                Err(why) => {
                    tracing::error!(dataset = %self.meta.id, %why, "a remote change failed: rebuilding the document and finding the change");
                    batch = self.recover(store, &mut st, batch, &mut invalid)?;
                    doc::Applied {
                        everything: true,
                        ..doc::Applied::default()
                    }
                }
            }
        };
        // Changes that waited and that the guard refuses now that their history is here.
        self.quarantine_refused(store, &applied.refused, &mut batch, &mut invalid)?;
        let fresh: Vec<Envelope> = batch.into_iter().map(|(e, _)| e).collect();
        let mut authors: Vec<AuthorId> = Vec::new();
        let me = st.doc.actor().to_bytes().to_vec();
        for env in &fresh {
            if let Err(e) = store.put_envelope(env) {
                // Applied but not stored: a restart rebuilds the document from the store.
                st.failed = true;
                return Err(e.into());
            }
            if env.author.as_bytes().as_slice() == me.as_slice() {
                // This node's own history coming back (its store was lost): never reuse a number.
                st.next_seq = st.next_seq.max(env.seq + 1);
            }
            if !authors.contains(&env.author) {
                authors.push(env.author);
            }
        }
        for author in authors {
            let before = st.vv.get(&author);
            advance_contiguous(store, &self.meta.id, &mut st.vv, author)?;
            let now = st.vv.get(&author);
            if now != before {
                let tip = fresh.iter().find(|e| e.author == author && e.seq == now);
                match tip {
                    Some(e) => {
                        st.tips.insert(author, e.digest());
                    }
                    None => super::forks::set_tip(store, &self.meta.id, &mut st.tips, author, now)?,
                }
            }
        }
        st.since_snapshot += fresh.len() as u64;
        let events = if applied.everything {
            // Records no decoded change names may have changed (see `Applied::everything`):
            // compare everything once.
            st.rematerialize()
        } else {
            st.reread(&applied.touched, applied.built)
        };
        Ok(Applied {
            fresh,
            events,
            snapshot_due: st.since_snapshot >= snapshot_every,
            invalid,
            evidence,
            left,
        })
    }

    /// The envelopes of `envs` new to this node, each with its change when it opens (`None`:
    /// sealed under a key this node lacks). One that does not open, or carries a change that is
    /// not its author's, is dropped alone and its author reported. One that conflicts with its
    /// author's history held here yields evidence of equivocation and is dropped; so are the
    /// envelopes of an author from its fork on. Once the changes taken claim
    /// [`doc::BATCH_OPS`] operations together, the rest of the batch is handed back untouched
    /// (`found.2`). Invalid authors and evidence go to `found.0` and `found.1`.
    fn opened(
        &self,
        store: &Store,
        st: &mut State,
        envs: Vec<Envelope>,
        found: (&mut Vec<AuthorId>, &mut Vec<Evidence>, &mut Vec<Envelope>),
    ) -> Result<Vec<(Envelope, Option<Change>)>> {
        let (invalid, evidence, left) = found;
        let mut accepted = super::forks::Accepted::new();
        let mut out = Vec::with_capacity(envs.len());
        let mut claimed = 0u64;
        let mut envs = envs.into_iter();
        while let Some(env) = envs.next() {
            let key = (env.author, env.seq);
            let forked = |st: &State| st.forks.get(&env.author).is_some_and(|s| env.seq >= *s);
            if env.dataset != self.meta.id || forked(st) {
                continue;
            }
            if let Some(ev) = self.check_chain(store, st, &env, (&accepted, &out))? {
                // Evidence any node can check is kept and passed on; otherwise (an envelope
                // held of the earlier codec, too large to quote) the newcomer is dropped alone.
                if let Ok(fork) = ev.check() {
                    let at = st.forks.entry(fork.author).or_insert(fork.seq);
                    *at = (*at).min(fork.seq);
                    evidence.push(ev);
                }
                invalid.push(env.author);
                continue;
            }
            if accepted.contains_key(&key) {
                continue;
            }
            if env.seq <= st.vv.get(&env.author)
                || store.has_envelope(&env.dataset, &env.author, env.seq)?
                || store.is_quarantined(&env.dataset, &env.author, env.seq)?
            {
                continue;
            }
            let change = match st.open_payload(&self.meta, &env) {
                Ok(Some(plain)) => {
                    let ops = doc::claimed(&plain);
                    if !doc::joins_batch(claimed, ops) {
                        tracing::debug!(dataset = %self.meta.id, claimed, "batch at its operations budget; the rest is handed back");
                        left.push(env);
                        left.extend(envs);
                        break;
                    }
                    claimed = claimed.saturating_add(ops);
                    change_of(&env, plain).map(Some)
                }
                Ok(None) => Ok(None),
                Err(e) => Err(Error::Invalid(format!(
                    "envelope {} #{}: {e}",
                    env.author, env.seq
                ))),
            };
            match change {
                Ok(c) => {
                    accepted.insert(key, (env.digest(), out.len()));
                    out.push((env, c));
                }
                Err(e) => {
                    tracing::warn!(dataset = %self.meta.id, error = %e, "envelope dropped");
                    invalid.push(env.author);
                }
            }
        }
        // Envelopes accepted before their author's fork showed later in the batch.
        out.retain(|(e, _)| st.forks.get(&e.author).is_none_or(|s| e.seq < *s));
        Ok(out)
    }

    /// Takes epoch keys newly unwrapped for this node and applies the stored envelopes that
    /// waited for them (a rare, whole-dataset scan). Returns record events. Blocking.
    pub(crate) fn add_keys(&self, store: &Store, keys: Vec<(u64, EpochKey)>) -> Result<Vec<Event>> {
        let mut st = self.lock();
        let mut unlocked = std::collections::BTreeSet::new();
        for (epoch, key) in keys {
            if st.keys.insert(epoch, key).is_none() && st.missing.remove(&epoch) {
                unlocked.insert(epoch);
            }
        }
        if unlocked.is_empty() {
            return Ok(vec![]);
        }
        let mut changes = Vec::new();
        let mut bad = None;
        store.for_each_envelope_after(&self.meta.id, &VersionVector::new(), |env| {
            if unlocked.contains(&env.epoch) {
                match st
                    .open_payload(&self.meta, &env)
                    .map(|p| p.map(|p| change_of(&env, p)))
                {
                    Ok(Some(Ok(c))) => changes.push(c),
                    Ok(None) => {}
                    Ok(Some(Err(e))) => bad = Some(e.to_string()),
                    Err(e) => bad = Some(e),
                }
            }
            Ok(())
        })?;
        if let Some(e) = bad {
            tracing::warn!(dataset = %self.meta.id, error = %e, "a stored envelope does not open");
        }
        let (refused, _) = st.doc.refused(&changes, true);
        if refused.is_empty() {
            match st.doc.apply_all(changes) {
                Err(why) => {
                    tracing::error!(dataset = %self.meta.id, %why, "a change opened with a new key failed: rebuilding the document");
                }
                Ok(()) => {
                    return Ok(st.rematerialize());
                }
            }
        }
        // A change that cannot apply: rebuilt from the store, which finds and quarantines it.
        let shown = std::mem::take(&mut st.records);
        self.rebuild(store, &mut st)?;
        st.records = shown;
        Ok(st.rematerialize())
    }

    /// This dataset's version vector.
    pub(crate) fn version_vector(&self) -> crate::version::VersionVector {
        self.lock().vv.clone()
    }
}

/// Envelopes whose count makes checking their signatures on several threads worth it.
const PARALLEL_VERIFY: usize = 16;

/// `envs` if every signature verifies. Blocking.
/// `envs` with their signatures checked (one that fails refuses them all), less the envelopes
/// of the codec before chains (no `prev`), which are refused alone with their authors named: an
/// envelope without a `prev` would escape the chain check.
fn verified(envs: Vec<Envelope>) -> Result<(Vec<Envelope>, Vec<AuthorId>)> {
    let checks = crate::parallel::map(&envs, PARALLEL_VERIFY, Envelope::verify);
    if let Some((Err(e), env)) = checks.into_iter().zip(&envs).find(|(c, _)| c.is_err()) {
        return Err(Error::Invalid(format!(
            "envelope {} #{} of {}: {e}",
            env.author, env.seq, env.dataset
        )));
    }
    let (chained, unchained): (Vec<_>, Vec<_>) = envs.into_iter().partition(|e| e.prev.is_some());
    if let Some(env) = unchained.first() {
        tracing::warn!(dataset = %env.dataset, author = %env.author, count = unchained.len(), "envelopes of the codec before chains refused");
    }
    Ok((chained, unchained.into_iter().map(|e| e.author).collect()))
}

/// The Automerge change an envelope carries (`plain`, opened), which must be the author's own
/// change number `seq`: a change that claims another actor or sequence could rewrite someone
/// else's history.
pub(super) fn change_of(env: &Envelope, plain: Vec<u8>) -> Result<Change> {
    let bad = |why: String| Error::Invalid(format!("envelope {} #{}: {why}", env.author, env.seq));
    let change = crate::view::doc::decode_change(plain).map_err(|e| bad(e.to_string()))?;
    if change.actor_id().to_bytes() != env.author.as_bytes() {
        return Err(bad("the change's actor is not the envelope's author".into()));
    }
    if change.seq() != env.seq {
        return Err(bad(format!("the change's sequence is {}", change.seq())));
    }
    Ok(change)
}

/// Moves `author`'s entry past every envelope now stored without a gap.
fn advance_contiguous(
    store: &Store,
    dataset: &crate::naming::DatasetId,
    vv: &mut crate::version::VersionVector,
    author: AuthorId,
) -> Result<()> {
    let mut next = vv.get(&author) + 1;
    while store.has_envelope(dataset, &author, next)? {
        vv.advance(author, next);
        next += 1;
    }
    Ok(())
}

impl super::Node {
    /// Subscribes to the envelopes this node writes, each sent once it is durable.
    pub fn subscribe_envelopes(&self) -> tokio::sync::broadcast::Receiver<Arc<Envelope>> {
        self.inner.outbox.subscribe()
    }

    /// This node's identity.
    pub fn identity(&self) -> &crate::identity::Identity {
        &self.inner.identity
    }

    /// Metadata and version vector of dataset `id`, if held (one lookup, no listing).
    pub fn replica(&self, id: &crate::naming::DatasetId) -> Option<(Arc<Meta>, VersionVector)> {
        self.held(id).map(|d| (d.meta.clone(), d.version_vector()))
    }

    /// Metadata of dataset `id`, if held (shared, not copied).
    pub fn meta(&self, id: &crate::naming::DatasetId) -> Option<Arc<Meta>> {
        self.held(id).map(|d| d.meta.clone())
    }

    /// The frontier of dataset `id` as far as it is on disk, if held.
    pub fn frontier(&self, id: &crate::naming::DatasetId) -> Option<crate::version::Frontier> {
        self.held(id).map(|d| d.lock().served())
    }

    /// The service priority of dataset `id`, if held.
    pub fn priority(&self, id: &crate::naming::DatasetId) -> Option<crate::dataset::Priority> {
        self.held(id).map(|d| d.meta.priority)
    }

    /// Metadata and frontier (vector and chain tips) of every dataset held, as far as it is on
    /// disk ([`Dataset::settle`]).
    pub fn frontiers(&self) -> Vec<(Arc<Meta>, crate::version::Frontier)> {
        self.all_datasets()
            .into_iter()
            .map(|d| {
                let frontier = d.lock().served();
                (d.meta.clone(), frontier)
            })
            .collect()
    }

    /// Metadata and version vector of every dataset held, private ones included.
    pub fn replicas(&self) -> Vec<(Arc<Meta>, VersionVector)> {
        self.all_datasets()
            .into_iter()
            .map(|d| (d.meta.clone(), d.version_vector()))
            .collect()
    }

    /// Starts holding a dataset owned elsewhere (known from the mesh catalog), whose owner node
    /// has identity key `owner_key`. Returns false if it is already held; refuses
    /// ([`Error::Forbidden`]) a dataset past `max_datasets_per_member` of its owner's.
    pub async fn adopt_dataset(
        &self,
        meta: crate::dataset::Meta,
        owner_key: AuthorId,
    ) -> Result<bool> {
        let key = meta.id.to_string();
        let store = &self.inner.store;
        {
            // Checked and inserted under the map's lock, with no await in between: two pushes
            // adopting the same dataset at once must not see it missing (the second would drop
            // its envelopes) nor overwrite the first's access state.
            let mut map = self.write_datasets();
            if map.contains_key(&meta.id) {
                return Ok(false);
            }
            // Counted under the same lock: two adoptions at once must not both pass the cap.
            let (owner, cap) = (meta.id.owner(), self.inner.config.max_datasets_per_member);
            if map.keys().filter(|id| id.owner() == owner).count() >= cap {
                return Err(Error::Forbidden(format!(
                    "{owner} already has {cap} datasets here, the most max_datasets_per_member \
                     lets this node adopt from one member"
                )));
            }
            let stored = super::access::Stored::empty(owner_key);
            store.put_json(crate::store::Table::Access, key.as_bytes(), &stored)?;
            if !store.insert_new_json(crate::store::Table::Datasets, key.as_bytes(), &meta)? {
                return Ok(false);
            }
            let ds = Dataset::create(meta.clone(), &self.inner.identity.author(), owner_key);
            map.insert(meta.id.clone(), Arc::new(ds));
        }
        store.durable().await?;
        tracing::info!(dataset = %key, "replica of a remote dataset created");
        Ok(true)
    }

    /// Stores and applies verified envelopes of dataset `id` written elsewhere; returns how many
    /// were new. Durable when it returns.
    pub async fn apply_envelopes(
        &self,
        id: &crate::naming::DatasetId,
        envs: Vec<Envelope>,
    ) -> Result<usize> {
        let checked = self.apply_envelopes_checked(id, envs, Delivery::CatchUp);
        Ok(checked.await?.0.len())
    }

    /// Like [`Self::apply_envelopes`], but returns the envelopes that were new (stored now), and
    /// names the authors of envelopes dropped for not opening or carrying a change that is not
    /// theirs (counted as refused). Every signature is checked first, off the async threads: one
    /// that fails refuses the whole group. `delivery` puts the apply in its dataset's priority
    /// lane.
    pub async fn apply_envelopes_checked(
        &self,
        id: &crate::naming::DatasetId,
        envs: Vec<Envelope>,
        delivery: Delivery,
    ) -> Result<(Vec<Envelope>, Vec<AuthorId>)> {
        let ds = self
            .held(id)
            .ok_or_else(|| Error::NotFound(format!("dataset {id} not held here")))?;
        // A catch-up below high priority runs on the bulk threads, which the kernel lets live
        // work preempt.
        let bulk = delivery == Delivery::CatchUp && ds.meta.priority < Priority::High;
        let worker = if bulk { Worker::Bulk } else { Worker::Blocking };
        self.inner.store.writable()?;
        let (envs, unchained) = self.run_on(worker, move || verified(envs)).await??;
        let envs = self.authorized(&ds, envs);
        if envs.is_empty() {
            return Ok((Vec::new(), unchained));
        }
        // Counted only once verified and authorized: a member's bad pushes hold no lane busy.
        let lanes = &self.inner.lanes;
        let _live = (delivery == Delivery::Push).then(|| lanes.live(ds.meta.priority));
        let (count, started) = (envs.len(), std::time::Instant::now());
        let (mut applied, flush) = self
            .store_and_settle(&ds, worker, move |node, ds| {
                let (store, every) = (&node.inner.store, node.inner.config.snapshot_every);
                let applied = match delivery {
                    Delivery::Push => ds.apply_remote(store, envs, every)?,
                    Delivery::CatchUp => {
                        ds.apply_in_chunks(store, &node.inner.lanes, envs, every)?
                    }
                };
                let stored = !applied.fresh.is_empty();
                Ok((applied, stored))
            })
            .await?;
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        tracing::debug!(dataset = %id, ?delivery, count, total_ms = ms(started.elapsed()), flush_ms = flush.map(ms), "envelopes applied");
        applied.invalid.extend(unchained);
        // Before the evidence: a fork found in a later chunk of a catch-up removes records an
        // earlier chunk showed, and the removals must follow those events, not precede them.
        ds.publish_events(std::mem::take(&mut applied.events));
        for ev in std::mem::take(&mut applied.evidence) {
            // The envelopes are stored: a failure here must not fail their apply.
            if let Err(e) = self.take_evidence(ev).await {
                tracing::warn!(dataset = %id, error = %e, "evidence of equivocation not kept");
            }
        }
        if !applied.invalid.is_empty() {
            let n = applied.invalid.len() as u64;
            let m = &self.inner.metrics.envelopes_rejected;
            m.inc_by("dataset", &id.to_string(), n);
        }
        if applied.fresh.is_empty() {
            return Ok((Vec::new(), applied.invalid));
        }
        self.inner
            .metrics
            .envelopes_stored
            .inc_by(applied.fresh.len() as u64);
        if applied.snapshot_due {
            self.snapshot_in_background(ds);
        }
        Ok((applied.fresh, applied.invalid))
    }

    /// [`Self::envelopes_between`] read for a member catching up: on the bulk threads for a
    /// dataset below `high` priority, so that serving a catch-up (4 MiB pages) does not hold up
    /// this node's live work.
    pub async fn serve_envelopes(
        &self,
        id: &crate::naming::DatasetId,
        author: &AuthorId,
        range: (u64, u64),
        limits: (usize, usize),
    ) -> Result<(Vec<Vec<u8>>, bool)> {
        let urgent = self.meta(id).is_none_or(|m| m.priority == Priority::High);
        let worker = if urgent {
            Worker::Blocking
        } else {
            Worker::Bulk
        };
        let (node, id, author) = (self.clone(), id.clone(), *author);
        self.run_on(worker, move || {
            node.envelopes_between(&id, &author, range, limits)
        })
        .await?
    }

    /// Encoded envelopes of `author` in dataset `id` with sequence in `(after, upto]`, at most
    /// `limits` (bytes, count; at least one); the flag says more remain. Envelopes not yet known
    /// to be on disk are not served (see [`Self::frontiers`]).
    pub fn envelopes_between(
        &self,
        id: &crate::naming::DatasetId,
        author: &AuthorId,
        (after, upto): (u64, u64),
        limits: (usize, usize),
    ) -> Result<(Vec<Vec<u8>>, bool)> {
        let told = self.held(id).map_or(0, |d| d.lock().served_seq(author));
        let upto = upto.min(told);
        if upto <= after {
            return Ok((Vec::new(), false));
        }
        Ok(self
            .inner
            .store
            .envelopes_between(id, author, (after, upto), limits)?)
    }
}

impl super::Node {
    /// Reads a JSON value this node's services keep in the store (the mesh keeps its roster and
    /// invitations here).
    pub fn load_state<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        Ok(self
            .inner
            .store
            .get_json(crate::store::Table::Meta, key.as_bytes())?)
    }

    /// Stores a JSON value durably under `key`.
    pub async fn save_state<T: serde::Serialize>(&self, key: &str, value: &T) -> Result<()> {
        self.inner
            .store
            .put_json(crate::store::Table::Meta, key.as_bytes(), value)?;
        self.inner.store.durable().await?;
        Ok(())
    }

    /// Every JSON value stored under a key that starts with `prefix`, in key order.
    pub fn load_states<T: serde::de::DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>> {
        Ok(self
            .inner
            .store
            .list_json_prefix(crate::store::Table::Meta, prefix.as_bytes())?)
    }

    /// Removes what is stored under `key`, durably.
    pub async fn remove_state(&self, key: &str) -> Result<()> {
        self.inner
            .store
            .remove(crate::store::Table::Meta, key.as_bytes())?;
        self.inner.store.durable().await?;
        Ok(())
    }

    /// Stores `value` under `key` only if nothing is there yet; false if something was.
    pub async fn save_state_new<T: serde::Serialize>(&self, key: &str, value: &T) -> Result<bool> {
        let fresh =
            self.inner
                .store
                .insert_new_json(crate::store::Table::Meta, key.as_bytes(), value)?;
        self.inner.store.durable().await?;
        Ok(fresh)
    }
}
