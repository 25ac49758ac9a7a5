//! Each author's line of changes in a document. Automerge numbers an actor's changes from 1 and
//! applies change n after n-1 whether or not n-1 is in n's history; but a document holding a
//! change whose history lacks its author's previous change can save in a form that does not load
//! (`InvalidChanges(MissingOps)`). Such a change is refused, by its history alone, so that every
//! node decides the same: a node that holds n-1 and one that does not yet hold it (where the
//! change waits for its history) refuse it alike.

use std::collections::{HashMap, HashSet};

use automerge::{ActorId, Automerge, Change, ChangeHash};

/// The last change of each actor a document holds: its number and its last operation's counter.
#[derive(Debug, Default)]
pub(super) struct Lineage(HashMap<ActorId, Last>);

#[derive(Debug, Clone, Copy)]
struct Last {
    seq: u64,
    max_op: u64,
}

impl Lineage {
    /// Read off a document's history (its changes' metadata: no operation is decoded).
    pub fn of(am: &Automerge) -> Self {
        let mut out = Self::default();
        for meta in am.get_changes_meta(&[]) {
            out.note(&meta.actor, meta.seq, meta.max_op);
        }
        out
    }

    /// After `changes` applied.
    pub fn applied<'a>(&mut self, changes: impl IntoIterator<Item = &'a Change>) {
        for c in changes {
            self.note(c.actor_id(), c.seq(), c.max_op());
        }
    }

    /// After the changes `other` was made of applied.
    pub fn absorb(&mut self, other: Lineage) {
        for (actor, last) in other.0 {
            self.note(&actor, last.seq, last.max_op);
        }
    }

    fn note(&mut self, actor: &ActorId, seq: u64, max_op: u64) {
        let last = Last { seq, max_op };
        match self.0.get_mut(actor) {
            Some(at) if at.seq >= seq => {}
            Some(at) => *at = last,
            None => {
                self.0.insert(actor.clone(), last);
            }
        }
    }

    /// Whether `change`, whose history is all in `am` or `batch`, lacks its author's previous
    /// change in that history. The search goes back from its dependencies and stops below the
    /// previous change's counter (an operation counter follows every counter of its history, and
    /// the guard refuses a change whose counters do not), so each change of the document is
    /// passed about once per author line, not once per change.
    pub fn skips_previous(&self, am: &Automerge, batch: &Batch<'_>, change: &Change) -> bool {
        let Some(want) = change.seq().checked_sub(1).filter(|&w| w > 0) else {
            return false;
        };
        let actor = change.actor_id();
        let floor = match self.0.get(actor) {
            Some(last) if last.seq == want => last.max_op,
            // Numbered again: Automerge refuses it (a duplicate sequence number).
            Some(last) if last.seq > want => return false,
            _ => match batch.by_seq.get(&(actor, want)) {
                Some(c) => c.max_op(),
                // Neither the document nor the batch holds it: it is not in the history.
                None => return true,
            },
        };
        let is_previous = |node: &Node| &node.actor == actor && node.seq == want;
        let named = change.deps().iter().filter_map(|d| Node::of(am, batch, d));
        // Automerge names it among a change's dependencies itself: the search is for others.
        if named.into_iter().any(|n| is_previous(&n)) {
            return false;
        }
        let mut stack: Vec<ChangeHash> = change.deps().to_vec();
        let mut seen = HashSet::new();
        while let Some(hash) = stack.pop() {
            if !seen.insert(hash) {
                continue;
            }
            let Some(node) = Node::of(am, batch, &hash) else {
                continue;
            };
            if node.max_op < floor {
                continue;
            }
            if is_previous(&node) {
                return false;
            }
            stack.extend(node.deps);
        }
        true
    }
}

/// The changes judged together, by hash and by (actor, number).
pub(super) struct Batch<'a> {
    by_hash: HashMap<ChangeHash, &'a Change>,
    by_seq: HashMap<(&'a ActorId, u64), &'a Change>,
}

impl<'a> Batch<'a> {
    pub fn of(changes: &'a [Change]) -> Self {
        Self {
            by_hash: changes.iter().map(|c| (c.hash(), c)).collect(),
            by_seq: changes
                .iter()
                .map(|c| ((c.actor_id(), c.seq()), c))
                .collect(),
        }
    }
}

/// What the search needs of a change of the history.
struct Node {
    actor: ActorId,
    seq: u64,
    max_op: u64,
    deps: Vec<ChangeHash>,
}

impl Node {
    fn of(am: &Automerge, batch: &Batch<'_>, hash: &ChangeHash) -> Option<Self> {
        if let Some(c) = batch.by_hash.get(hash) {
            return Some(Self {
                actor: c.actor_id().clone(),
                seq: c.seq(),
                max_op: c.max_op(),
                deps: c.deps().to_vec(),
            });
        }
        let meta = am.get_change_meta_by_hash(hash)?;
        Some(Self {
            actor: meta.actor.into_owned(),
            seq: meta.seq,
            max_op: meta.max_op,
            deps: meta.deps,
        })
    }
}
