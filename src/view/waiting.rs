//! Remote changes whose dependencies the document lacks: kept here, never handed to Automerge,
//! until every one of their dependencies is in the document.
//!
//! Automerge would queue such a change and apply it silently during the apply that brings the
//! last of them, so a malformed change that waited would be applied, and blamed, with the honest
//! change that released it. Here a change is handed over only once its history is at hand, and
//! the guard judges it then (`Doc::apply`), alone if need be. A change that waits is kept as
//! received (the compact form), and a snapshot leaves it out.
//!
//! A document saved by an earlier build may still hold a queue of Automerge's own ("legacy"):
//! what it releases is not known here, only that a release happened (everything is read again).

use std::collections::{HashMap, HashSet};

use automerge::{ActorId, Automerge, Change, ChangeHash, ReadDoc};

/// What waits for a document.
#[derive(Debug, Default)]
pub(super) struct Waiting {
    /// Changes waiting for dependencies, as received, by hash.
    held: HashMap<ChangeHash, Change>,
    /// The hashes Automerge's own queue misses (a document loaded with one; empty otherwise).
    legacy: HashSet<ChangeHash>,
}

/// The changes that may be handed to Automerge now.
pub(super) struct Ready {
    /// Every given or held change whose history is at hand, dependencies before dependents.
    pub changes: Vec<Change>,
    /// Whether any of them waited here before (its history was not all checked when it came).
    pub released: bool,
}

impl Waiting {
    /// The state of a document just loaded or created.
    pub fn of(am: &Automerge) -> Self {
        Self {
            held: HashMap::new(),
            legacy: missing(am),
        }
    }

    /// How many changes of `actor` wait, and their bytes; and how many wait in all.
    pub fn held_by(&self, actor: &ActorId) -> (usize, usize, usize) {
        let mine = self.held.values().filter(|c| c.actor_id() == actor);
        let (n, bytes) = mine.fold((0, 0), |(n, b), c| (n + 1, b + c.raw_bytes().len()));
        (n, bytes, self.held.len())
    }

    /// The operations of the changes that wait, all together.
    pub fn held_ops(&self) -> u64 {
        self.held.values().map(|c| c.len() as u64).sum()
    }

    /// Whether changes wait.
    pub fn any(&self) -> bool {
        !self.held.is_empty() || !self.legacy.is_empty()
    }

    /// Takes `given` and what waits, and returns those whose history is at hand (`am` or other
    /// ready changes hold every dependency), in an order Automerge applies them in; the rest
    /// wait. A change the document holds already is dropped.
    pub fn take_ready(&mut self, am: &Automerge, given: Vec<Change>) -> Ready {
        let mut pool: Vec<(Change, bool)> = given.into_iter().map(|c| (c, false)).collect();
        if !self.held.is_empty() {
            pool.extend(self.held.drain().map(|(_, c)| (c, true)));
        }
        pool.retain(|(c, _)| !has(am, &c.hash()));
        let mut seen = HashSet::new();
        pool.retain(|(c, _)| seen.insert(c.hash()));
        // In the same order whatever order they came in (the held ones come out of a map): an
        // author's changes by number, so that the outcome does not depend on arrival.
        pool.sort_by(|(a, _), (b, _)| (a.actor_id(), a.seq()).cmp(&(b.actor_id(), b.seq())));
        let order = ordered(am, pool.iter().map(|(c, _)| c));
        let mut slots: Vec<Option<(Change, bool)>> = pool.into_iter().map(Some).collect();
        let mut ready = Ready {
            changes: Vec::with_capacity(order.len()),
            released: false,
        };
        for i in order {
            if let Some((c, was_held)) = slots[i].take() {
                ready.released |= was_held;
                ready.changes.push(c);
            }
        }
        for (c, _) in slots.into_iter().flatten() {
            self.held.insert(c.hash(), c);
        }
        ready
    }

    /// Puts back changes taken as ready but not applied (their history turned out not to be
    /// at hand after all: a dependency was refused).
    pub fn put_back(&mut self, changes: Vec<Change>) {
        for c in changes {
            self.held.insert(c.hash(), c);
        }
    }

    /// After Automerge applied changes: whether its own queue (a legacy document) released any.
    pub fn legacy_released(&mut self, am: &Automerge) -> bool {
        if self.legacy.is_empty() {
            return false;
        }
        let now = missing(am);
        let released = self.legacy.iter().any(|h| !now.contains(h));
        self.legacy = now;
        released
    }

    /// After a local change of `actor`: its changes that wait belong to a history this document
    /// no longer continues (the node lost its store and wrote again), so they can never apply.
    pub fn forget_actor(&mut self, actor: &ActorId) {
        self.held.retain(|_, c| c.actor_id() != actor);
    }

    /// Per actor, the lowest sequence of its waiting changes; `None` when changes may wait that
    /// are not known here (a legacy document).
    pub fn lowest_held(&self) -> Option<HashMap<ActorId, u64>> {
        if !self.legacy.is_empty() {
            return None;
        }
        let mut out: HashMap<ActorId, u64> = HashMap::new();
        for c in self.held.values() {
            let at = out.entry(c.actor_id().clone()).or_insert(c.seq());
            *at = (*at).min(c.seq());
        }
        Some(out)
    }
}

/// Indexes into `changes` of those whose history is at hand, each after the ones of `changes`
/// it depends on. (A dependency among `changes` is not enough: its own may be missing.)
pub(super) fn ordered<'a>(am: &Automerge, changes: impl Iterator<Item = &'a Change>) -> Vec<usize> {
    let changes: Vec<&Change> = changes.collect();
    let by_hash: HashMap<ChangeHash, usize> = changes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.hash(), i))
        .collect();
    // None: not decided; Some(false): not ready; Some(true): ready and placed in `out`.
    let mut ready: Vec<Option<bool>> = vec![None; changes.len()];
    let mut out = Vec::with_capacity(changes.len());
    // Hashes cannot form a cycle (each names its dependencies' hashes), so this ends.
    for start in 0..changes.len() {
        // Depth-first, deciding a change once all its dependencies among `changes` are decided.
        let mut stack = vec![start];
        while let Some(&j) = stack.last() {
            if ready[j].is_some() {
                stack.pop();
                continue;
            }
            let (mut bad, mut pending) = (false, Vec::new());
            for d in changes[j].deps() {
                match by_hash.get(d) {
                    Some(&k) => match ready[k] {
                        Some(true) => {}
                        Some(false) => bad = true,
                        None => pending.push(k),
                    },
                    None if has(am, d) => {}
                    None => bad = true,
                }
            }
            if bad || pending.is_empty() {
                ready[j] = Some(!bad);
                if !bad {
                    out.push(j);
                }
                stack.pop();
            } else {
                stack.extend(pending);
            }
        }
    }
    out
}

fn missing(am: &Automerge) -> HashSet<ChangeHash> {
    am.get_missing_deps(&[]).into_iter().collect()
}

/// Whether `hash` is applied (a legacy queue's changes are not).
fn has(am: &Automerge, hash: &ChangeHash) -> bool {
    am.get_change_meta_by_hash(hash).is_some()
}
