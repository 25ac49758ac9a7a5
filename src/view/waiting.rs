//! Remote changes that Automerge holds back until a dependency arrives, and which of them a later
//! apply released, so that their records can be named then.
//!
//! Automerge queues a change whose dependencies it lacks and applies it, silently, during the
//! apply that brings the last of them. A change that waits is kept here as received (not
//! decoded: the compact form) until it applies, so its records can be named then and a snapshot
//! can leave it out (snapshots are saved without Automerge's queue). Only a document loaded with
//! a queue (saved with it) holds changes not known here ("unknown": their release is only known
//! to be possible).

use std::collections::{HashMap, HashSet};

use automerge::{Automerge, Change, ChangeHash, ReadDoc};

/// What waits in a document.
#[derive(Debug, Default)]
pub(super) struct Waiting {
    /// Changes held back, kept as received, by hash.
    held: HashMap<ChangeHash, Change>,
    /// The hashes missing when changes that are not in `held` were queued (empty: none are).
    unknown: HashSet<ChangeHash>,
    /// The hashes missing now (empty: nothing waits).
    missing: HashSet<ChangeHash>,
}

/// What an apply let through.
pub(super) struct Released {
    /// The given changes that are in the document now, and the held ones that applied with them.
    pub ready: Vec<Change>,
    /// Changes that are not in `held` may have applied too.
    pub unknown: bool,
}

impl Waiting {
    /// The state of a document just loaded or created.
    pub fn of(am: &Automerge) -> Self {
        let missing = missing(am);
        Self {
            held: HashMap::new(),
            unknown: missing.clone(),
            missing,
        }
    }

    /// How many changes of `actor` are held, and their bytes; and how many are held in all.
    pub fn held_by(&self, actor: &automerge::ActorId) -> (usize, usize, usize) {
        let mine = self.held.values().filter(|c| c.actor_id() == actor);
        let (n, bytes) = mine.fold((0, 0), |(n, b), c| (n + 1, b + c.raw_bytes().len()));
        (n, bytes, self.held.len())
    }

    /// Whether changes wait.
    pub fn any(&self) -> bool {
        !self.missing.is_empty()
    }

    /// After Automerge applied `given` (copies of what it was handed).
    pub fn after_apply(&mut self, am: &Automerge, given: Vec<Change>) -> Released {
        let before = std::mem::replace(&mut self.missing, missing(am));
        // A queued change applies only once something it waited for arrives.
        let released = before.iter().any(|h| !self.missing.contains(h));
        let mut ready = Vec::with_capacity(given.len());
        for c in given {
            match has(am, &c.hash()) {
                true => ready.push(c),
                false => {
                    self.held.insert(c.hash(), c);
                }
            }
        }
        if released && !self.held.is_empty() {
            let now: Vec<ChangeHash> = self.held.keys().filter(|h| has(am, h)).copied().collect();
            ready.extend(now.iter().filter_map(|h| self.held.remove(h)));
        }
        let unknown = self.unknown.iter().any(|h| !self.missing.contains(h));
        if unknown {
            // Unknown changes may still wait, now for what is missing now.
            self.unknown = self.missing.clone();
        }
        self.forget_released_unknown();
        Released { ready, unknown }
    }

    /// After Automerge applied changes without finding what they touch (`Doc::apply_all`, whose
    /// caller re-reads everything): of `given`, those that could wait, the ones that wait now
    /// are kept like any held change.
    pub fn after_apply_all(&mut self, am: &Automerge, given: Vec<Change>) {
        self.missing = missing(am);
        self.held.retain(|h, _| !has(am, h));
        for c in given {
            if !has(am, &c.hash()) {
                self.held.insert(c.hash(), c);
            }
        }
        self.forget_released_unknown();
    }

    /// Per actor, the lowest sequence of its changes held back; `None` when changes may wait
    /// that are not known here (a document loaded with a queue).
    pub fn lowest_held(&self) -> Option<HashMap<automerge::ActorId, u64>> {
        if !self.unknown.is_empty() {
            return None;
        }
        let mut out: HashMap<automerge::ActorId, u64> = HashMap::new();
        for c in self.held.values() {
            let at = out.entry(c.actor_id().clone()).or_insert(c.seq());
            *at = (*at).min(c.seq());
        }
        Some(out)
    }

    /// After a local write or a failed apply, which can make Automerge drop queued changes
    /// (a conflicting branch of the same actor): forgets held changes no longer queued.
    pub fn resync(&mut self, am: &Automerge) {
        if !self.held.is_empty() {
            let hashes: Vec<ChangeHash> = self.held.keys().copied().collect();
            // A hash neither applied nor queued is reported missing itself.
            let gone: HashSet<ChangeHash> = am.get_missing_deps(&hashes).into_iter().collect();
            self.held.retain(|h, _| !gone.contains(h) && !has(am, h));
        }
        self.missing = missing(am);
        self.forget_released_unknown();
    }

    fn forget_released_unknown(&mut self) {
        if self.missing.is_empty() {
            self.unknown.clear();
            self.held.clear();
        }
    }
}

fn missing(am: &Automerge) -> HashSet<ChangeHash> {
    am.get_missing_deps(&[]).into_iter().collect()
}

/// Whether `hash` is applied (queued changes are not).
fn has(am: &Automerge, hash: &ChangeHash) -> bool {
    am.get_change_meta_by_hash(hash).is_some()
}
