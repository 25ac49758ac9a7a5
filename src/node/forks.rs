//! Equivocation on this node (see [`crate::equivocation`]): an envelope checked against the
//! author's chain as this node holds it, evidence kept, the rule applied to the dataset, the
//! author named in the audit log, the metrics and the mesh status.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::audit::{Action, Event as AuditEvent};
use crate::envelope::Envelope;
use crate::equivocation::{Evidence, Fork};
use crate::error::{Error, Result};
use crate::identity::AuthorId;
use crate::naming::DatasetId;
use crate::store::Store;

use super::dataset::{Dataset, State};
use super::Node;

/// The envelopes of a batch accepted so far: by author and sequence, the digest and the index in
/// the batch.
pub(super) type Accepted = BTreeMap<(AuthorId, u64), ([u8; 32], usize)>;

/// An author proven to have signed two histories of a dataset.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Equivocation {
    /// The dataset.
    pub dataset: String,
    /// The author's key (hex).
    pub author: String,
    /// Its organization, when the key is a member's.
    pub org: Option<String>,
    /// The fork: the author's envelopes from this sequence on are set aside.
    pub seq: u64,
}

/// Sets `author`'s tip to the digest of its stored envelope `seq` (removes it when absent).
pub(super) fn set_tip(
    store: &Store,
    id: &DatasetId,
    tips: &mut BTreeMap<AuthorId, [u8; 32]>,
    author: AuthorId,
    seq: u64,
) -> Result<()> {
    match store.envelope(id, &author, seq)? {
        Some(env) => tips.insert(author, env.digest()),
        None => tips.remove(&author),
    };
    Ok(())
}

impl Dataset {
    /// Checks a remote envelope against the author's history held here: evidence when it
    /// differs from the envelope held at its sequence, or names another predecessor than the
    /// one held, or a held successor names another than it. `batch` holds the envelopes of
    /// this batch accepted so far.
    pub(super) fn check_chain(
        &self,
        store: &Store,
        st: &State,
        env: &Envelope,
        (batch, out): (&Accepted, &[(Envelope, Option<automerge::Change>)]),
    ) -> Result<Option<Evidence>> {
        let id = &self.meta.id;
        let held_digest = |seq: u64| -> Result<Option<[u8; 32]>> {
            if let Some((d, _)) = batch.get(&(env.author, seq)) {
                return Ok(Some(*d));
            }
            if st.vv.get(&env.author) == seq {
                if let Some(tip) = st.tips.get(&env.author) {
                    return Ok(Some(*tip));
                }
            }
            Ok(store.envelope(id, &env.author, seq)?.map(|e| e.digest()))
        };
        let load = |seq: u64| -> Result<Option<Envelope>> {
            match batch.get(&(env.author, seq)) {
                Some((_, i)) => Ok(out.get(*i).map(|(e, _)| e.clone())),
                None => Ok(store.envelope(id, &env.author, seq)?),
            }
        };
        // The same sequence, held already.
        if let Some(d) = held_digest(env.seq)? {
            if d == env.digest() {
                return Ok(None);
            }
            return Ok(load(env.seq)?.and_then(|held| Evidence::same_seq(&held, env)));
        }
        // Its predecessor, held: the one it names?
        if let (Some(prev), true) = (env.prev, env.seq > 1) {
            if held_digest(env.seq - 1)?.is_some_and(|d| d != prev) {
                if let Some(pred) = load(env.seq - 1)? {
                    return Ok(Evidence::successor(&pred, env));
                }
            }
        }
        // Its successor, held: does it name this one?
        if let Some(next) = load(env.seq + 1)? {
            return Ok(Evidence::successor(env, &next));
        }
        Ok(None)
    }

    /// Records a fork of `author` at `seq` (the lower one wins) and sets aside its stored
    /// envelopes from there. Returns record events. Blocking.
    pub(super) fn apply_fork(
        &self,
        store: &Store,
        author: AuthorId,
        seq: u64,
    ) -> Result<Vec<super::dataset::Event>> {
        let mut drop = Vec::new();
        {
            let mut st = self.lock();
            let at = st.forks.entry(author).or_insert(seq);
            *at = (*at).min(seq);
        }
        store.for_each_envelope_of(&self.meta.id, &author, seq - 1, |env| {
            drop.push((env.author, env.seq));
            Ok(())
        })?;
        if drop.is_empty() {
            return Ok(Vec::new());
        }
        self.forget(
            store,
            &drop,
            "its author signed two histories (equivocation)",
        )
    }
}

impl Node {
    /// Takes evidence of equivocation, found here or sent by a peer: checks it, and if it
    /// proves a lower fork than the one kept for its dataset and author, keeps it and applies
    /// the rule (the author's envelopes there from the fork on are set aside). The first proof
    /// against an author in a dataset names it in the audit log and the metrics and is passed on
    /// to the mesh; a lower one later is kept quietly (catch-up passes it on to the members
    /// that hold past it), so a key incriminating itself again and again costs each node one
    /// audit entry. Returns the fork when it changed anything. Evidence of a dataset not held
    /// here, or against a key that could never write in it, is ignored.
    pub async fn take_evidence(&self, ev: Evidence) -> Result<Option<Fork>> {
        let fork = ev
            .check()
            .map_err(|e| Error::Invalid(format!("evidence: {e}")))?;
        let Some(ds) = self.held(&fork.dataset) else {
            return Ok(None);
        };
        if !self.ever_writes(&ds, &fork.author) {
            return Ok(None);
        }
        let node = self.clone();
        let bytes = ev.encode();
        let f = fork.clone();
        let taken = tokio::task::spawn_blocking(move || {
            let store = &node.inner.store;
            let kept = store.evidence(&f.dataset, &f.author)?.map(|(seq, _)| seq);
            if kept.is_some_and(|seq| seq <= f.seq) {
                return Ok::<_, Error>(None);
            }
            store.put_evidence(&f.dataset, &f.author, f.seq, &bytes)?;
            Ok(Some((
                kept.is_none(),
                ds.apply_fork(store, f.author, f.seq)?,
            )))
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
        let Some((first, events)) = taken else {
            return Ok(None);
        };
        if first || !events.is_empty() {
            self.inner.store.durable().await?;
        }
        if let Some(ds) = self.held(&fork.dataset) {
            ds.publish_events(events);
        }
        if first {
            self.name_equivocation(&fork);
            let _ = self
                .inner
                .forks_found
                .send((fork.dataset.clone(), fork.author));
        } else {
            tracing::info!(dataset = %fork.dataset, author = %fork.author, seq = fork.seq, "equivocation: a lower fork proven");
        }
        Ok(Some(fork))
    }

    /// Whether `author` could ever write in `ds`: the owner's key, a key of the owner's
    /// organization, or a member's key its organization was granted writing with.
    fn ever_writes(&self, ds: &Dataset, author: &AuthorId) -> bool {
        let dir = self.directory();
        let Some(m) = dir.0.values().find(|m| m.has(author)) else {
            return *author == ds.owner_key;
        };
        if m.org == ds.meta.id.owner() {
            return true;
        }
        let writer = crate::access::set::Writer {
            org: &m.org,
            key: author,
            first_key: m.first_key(),
        };
        super::access::lock(&ds.access).ever_writes(writer)
    }

    fn name_equivocation(&self, fork: &Fork) {
        let actor = self.author_name(&fork.author);
        tracing::error!(dataset = %fork.dataset, author = %fork.author, org = %actor, seq = fork.seq, "equivocation: an author signed two histories of a dataset; its envelopes from the fork on are set aside");
        let detail = format!(
            "key {} signed two envelopes {} (or one and a successor of another); its envelopes \
             from {} on are set aside",
            fork.author, fork.seq, fork.seq
        );
        let ev = AuditEvent::ok(actor, Action::Equivocation).dataset(&fork.dataset);
        self.audit(ev.detail(detail));
        self.inner.metrics.equivocations.inc();
    }

    /// The evidence kept against `author` in dataset `id`, if any.
    pub fn evidence(&self, id: &DatasetId, author: &AuthorId) -> Option<Evidence> {
        let kept = self.inner.store.evidence(id, author).ok().flatten()?;
        Evidence::decode(&kept.1).ok()
    }

    /// The fork kept against `author` in dataset `id`: its envelopes from there on are refused.
    pub fn fork_of(&self, id: &DatasetId, author: &AuthorId) -> Option<u64> {
        self.held(id)?.lock().forks.get(author).copied()
    }

    /// Every author proven to equivocate, per dataset.
    pub fn equivocations(&self) -> Vec<Equivocation> {
        let forks = self.inner.store.all_forks().unwrap_or_default();
        forks
            .into_iter()
            .map(|(id, author, seq)| {
                let org = self
                    .directory()
                    .0
                    .values()
                    .find(|m| m.has(&author))
                    .map(|m| m.org.clone());
                Equivocation {
                    dataset: id.to_string(),
                    author: author.to_string(),
                    org,
                    seq,
                }
            })
            .collect()
    }

    /// Subscribes to forks newly proven here (dataset and author), for the mesh to pass on.
    pub fn subscribe_forks(&self) -> tokio::sync::broadcast::Receiver<(DatasetId, AuthorId)> {
        self.inner.forks_found.subscribe()
    }
}
