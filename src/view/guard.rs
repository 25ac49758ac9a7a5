//! The guard between a dataset's document and the changes other members send. Automerge 0.12
//! trusts a change's operations: some malformed ones make it panic, and others apply but leave a
//! document whose saved form no longer loads (a predecessor that is not an operation of the same
//! key, a delete of an operation it never held, bytes that are not Automerge's own encoding of
//! the change). Every remote change is judged here before Automerge sees it and checked here
//! after it applied (fuzz/ found each of these; docs/reliability.md).

use std::collections::{HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};

use automerge::legacy::{Key, ObjectId, OpId, OpType};
use automerge::{ActorId, Automerge, Change, ChangeHash, ExpandedChange, ObjType};

use super::claim;
use super::doc::Error;
use super::lineage::{Batch, Lineage};

/// Applies `changes`, then checks that the document holds each change it applied as Automerge
/// would write it again, which is what a saved document is made of. A panic inside Automerge is
/// [`Error::Panicked`]; a change held unfaithfully is [`Error::Unfaithful`], naming it. After
/// either, the document is unusable: its owner rebuilds it from the store.
pub(super) fn apply(am: &mut Automerge, changes: Vec<Change>) -> Result<(), Error> {
    apply_then(am, changes, false, |_| ())
}

/// [`apply`], then `then` over the document once it is checked. With `beside` (a large batch),
/// `then` runs on this thread while the check runs on another: its result counts only if the
/// check passes, and a panic in it is raised again only then.
pub(super) fn apply_then<T: Send>(
    am: &mut Automerge,
    changes: Vec<Change>,
    beside: bool,
    then: impl FnOnce(&Automerge) -> T,
) -> Result<T, Error> {
    let before = am.get_heads();
    let applied = match catch_unwind(AssertUnwindSafe(|| am.apply_changes(changes))) {
        Ok(r) => r,
        Err(panic) => return Err(Error::Panicked(panic_text(&*panic))),
    };
    let am = &*am;
    if !beside {
        // Checked on an error too: the changes before the refused one applied.
        faithful(am, &before)?;
        applied?;
        return Ok(then(am));
    }
    let (checked, out) = std::thread::scope(|s| {
        let check = s.spawn(|| faithful(am, &before));
        let out = catch_unwind(AssertUnwindSafe(|| then(am)));
        let checked = check
            .join()
            .unwrap_or_else(|panic| Err(Error::Panicked(panic_text(&*panic))));
        (checked, out)
    });
    checked?;
    applied?;
    Ok(out.unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
}

/// Checks that every change the document took after `before` is rebuilt from its operations
/// with its own hash.
fn faithful(am: &Automerge, before: &[ChangeHash]) -> Result<(), Error> {
    if am.get_heads() == before {
        return Ok(());
    }
    let rebuilt = catch_unwind(AssertUnwindSafe(|| am.get_changes(before)))
        .map_err(|panic| Error::Panicked(panic_text(&*panic)))?;
    let wrong: Vec<(ActorId, u64)> = rebuilt
        .iter()
        .filter(|c| am.get_change_meta_by_hash(&c.hash()).is_none())
        .map(|c| (c.actor_id().clone(), c.seq()))
        .collect();
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(Error::Unfaithful(wrong))
    }
}

/// The message of a caught panic.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// Loads a saved document. Automerge 0.12 can panic loading bytes it saved itself from a
/// document that took a malformed change; that is an error here.
pub fn load(bytes: &[u8]) -> Result<Automerge, Error> {
    match catch_unwind(|| Automerge::load(bytes)) {
        Ok(loaded) => Ok(loaded?),
        Err(panic) => Err(Error::Unloadable(panic_text(&*panic))),
    }
}

/// Parses a change from a peer's bytes. Automerge 0.12 panics on some crafted bytes (an
/// unchecked integer conversion) instead of refusing them: such bytes are refused like any
/// other that is not a change. So are bytes that claim more than Automerge should be asked to
/// inflate or walk ([`claim::check`]).
pub fn decode_change(bytes: Vec<u8>) -> Result<Change, Error> {
    claim::check(&bytes).map_err(|e| Error::NotAChange(e.to_string()))?;
    parse_caught(bytes)
}

/// `Change::from_bytes`, with a panic inside it caught and refused.
fn parse_caught(bytes: Vec<u8>) -> Result<Change, Error> {
    match catch_unwind(|| Change::from_bytes(bytes)) {
        Ok(Ok(change)) => Ok(change),
        Ok(Err(e)) => Err(Error::NotAChange(e.to_string())),
        Err(panic) => Err(Error::NotAChange(format!(
            "automerge failed on it: {}",
            panic_text(&*panic)
        ))),
    }
}

/// Changes with their operations expanded once (Automerge's legacy form), by hash: what the
/// guard judges, used again after the apply to find the records each change touches.
#[derive(Default)]
pub struct Expanded(HashMap<ChangeHash, ExpandedChange>);

impl Expanded {
    /// The expanded form of `change`, taken out, or decoded now if it is not here.
    pub(super) fn take(&mut self, change: &Change) -> Option<ExpandedChange> {
        self.0.remove(&change.hash()).or_else(|| expand(change))
    }

    /// Adds what `other` holds.
    pub(super) fn absorb(&mut self, other: Expanded) {
        self.0.extend(other.0);
    }
}

/// The operations of `change` expanded; `None` if Automerge fails decoding them (it panics on
/// operations that name an actor the change does not declare).
fn expand(change: &Change) -> Option<ExpandedChange> {
    catch_unwind(AssertUnwindSafe(|| change.decode())).ok()
}

/// What the guard finds of one change without the document: its expanded operations (if they
/// decode) and the reason to refuse it alone, if any.
struct Alone {
    ops: Option<ExpandedChange>,
    refused: Option<Error>,
}

/// Judges one change on what it is alone: one that does not decode (Automerge 0.12 panics
/// decoding operations that name an actor the change does not declare), one whose bytes are
/// not Automerge's own encoding of its operations (it would apply, and a saved document would
/// not load), and one with an operation no fogmesh document holds.
fn alone(change: &Change) -> Alone {
    let Some(ops) = expand(change) else {
        return Alone {
            ops: None,
            refused: Some(Error::Undecodable),
        };
    };
    let refused = if !canonical(&ops, change.hash()) {
        Some(Error::NotCanonical)
    } else {
        foreign_operation(&ops).map(Error::Foreign)
    };
    Alone {
        ops: Some(ops),
        refused,
    }
}

/// The changes of `batch` to refuse before Automerge sees them, by index, with the reason, and
/// the expanded operations of those let through. Refused: one refused alone ([`alone`]; judged
/// on several threads for a large batch), one whose operation counters do not follow its
/// dependencies', and one with an operation on an object neither `am` nor a change of the batch
/// makes (Automerge 0.12 panics on it) or whose key does not fit its object ([`object_fault`]).
/// A change whose history is at hand is also refused if that history lacks its author's
/// previous change ([`Lineage`]).
/// With `ready_only`, the object test is left out for a change whose dependencies are not all in
/// the document or the batch (its history may make the object; Automerge holds it back).
pub(super) fn refused(
    am: &Automerge,
    lineage: &Lineage,
    batch: &[Change],
    ready_only: bool,
) -> (Vec<(usize, Error)>, Expanded) {
    let (decoded, mut alone): (Vec<_>, Vec<_>) = crate::parallel::map(batch, spread(batch), alone)
        .into_iter()
        .map(|a| (a.ops, a.refused))
        .unzip();
    let by_hash: HashMap<ChangeHash, usize> = batch
        .iter()
        .enumerate()
        .map(|(i, c)| (c.hash(), i))
        .collect();
    let mut ready = vec![false; batch.len()];
    for i in super::waiting::ordered(am, batch.iter()) {
        ready[i] = true;
    }
    let mut out = Vec::new();
    let mut lines = None;
    let mut placed = Vec::new();
    for (i, change) in decoded.iter().enumerate() {
        let Some(change) = change else {
            out.push((i, Error::Undecodable));
            continue;
        };
        if let Some(why) = alone[i].take() {
            out.push((i, why));
            continue;
        }
        if let Some(why) = counters_go_back(am, change, &decoded, &by_hash, batch, i) {
            out.push((i, Error::Foreign(why)));
            continue;
        }
        if ready_only && !ready[i] {
            continue;
        }
        let lines = lines.get_or_insert_with(|| Batch::of(batch));
        if ready[i] && lineage.skips_previous(am, lines, &batch[i]) {
            out.push((i, Error::SkipsPrevious(batch[i].seq() - 1)));
            continue;
        }
        placed.push(i);
    }
    // Objects last, against what the changes not refused make: a refused change does not vouch
    // for an object's type.
    if !placed.is_empty() {
        let gone: HashSet<usize> = out.iter().map(|(i, _)| *i).collect();
        let made = made_in_batch(
            (decoded.iter().enumerate())
                .filter(|(i, _)| !gone.contains(i))
                .filter_map(|(_, c)| c.as_ref()),
        );
        for i in placed {
            if let Some(why) = decoded[i].as_ref().and_then(|c| object_fault(am, c, &made)) {
                out.push((i, why));
            }
        }
        out.sort_by_key(|(i, _)| *i);
    }
    let gone: HashSet<usize> = out.iter().map(|(i, _)| *i).collect();
    let kept = (decoded.into_iter().zip(batch).enumerate())
        .filter(|(i, _)| !gone.contains(i))
        .filter_map(|(_, (ops, c))| Some((c.hash(), ops?)));
    (out, Expanded(kept.collect()))
}

/// What [`spread`] gives for a batch of large changes: any two spread.
pub(super) const SPREAD_ANY: usize = 2;

/// Changes in a batch from which judging or scanning them spreads over threads: any two when
/// they are large (a catch-up chunk holds a few changes of up to 64 KiB each), else many.
pub(super) fn spread(batch: &[Change]) -> usize {
    /// Bytes of changes worth a thread of their own.
    const PARALLEL_BYTES: usize = 64 * 1024;
    /// Small changes worth spreading.
    const PARALLEL_CHANGES: usize = 16;
    let bytes: usize = batch.iter().map(|c| c.raw_bytes().len()).sum();
    if bytes >= 2 * PARALLEL_BYTES {
        SPREAD_ANY
    } else {
        PARALLEL_CHANGES
    }
}

/// An operation no fogmesh document holds (records are maps, lists and scalars): text marks,
/// counters and their increments, text and table objects. Automerge checks some of these only
/// when it loads a saved document (a mark end without its start passes an apply), so they are
/// refused whole.
fn foreign_operation(change: &ExpandedChange) -> Option<String> {
    change.operations.iter().find_map(|op| match &op.action {
        OpType::Make(automerge::ObjType::Map | automerge::ObjType::List) | OpType::Delete => None,
        OpType::Put(automerge::ScalarValue::Counter(_)) => Some("a counter".into()),
        OpType::Put(_) => None,
        other => Some(format!("{other:?}")),
    })
}

/// Why the operation counters of change `i` do not follow those of its dependencies, if they do
/// not: Automerge numbers a change's operations after every operation of the document it was
/// made on, and a saved document whose counters go back does not load.
fn counters_go_back(
    am: &Automerge,
    change: &ExpandedChange,
    decoded: &[Option<ExpandedChange>],
    by_hash: &HashMap<ChangeHash, usize>,
    batch: &[Change],
    i: usize,
) -> Option<String> {
    let start = change.start_op.get();
    batch[i].deps().iter().find_map(|d| {
        let max_op = match by_hash.get(d) {
            Some(&k) => decoded[k]
                .as_ref()
                .map(|c| c.start_op.get() + c.operations.len() as u64 - 1)?,
            None => am.get_change_meta_by_hash(d)?.max_op,
        };
        (start <= max_op).then(|| {
            format!("operations numbered from {start}, not after its dependency's {max_op}")
        })
    })
}

/// Whether `change`, encoded again by Automerge, has the hash `hash` of the bytes received.
fn canonical(change: &ExpandedChange, hash: ChangeHash) -> bool {
    catch_unwind(AssertUnwindSafe(|| {
        Change::from(change.clone()).hash() == hash
    }))
    .unwrap_or(false)
}

/// The first fault of `change`'s operations against their objects: an object neither `am` holds
/// nor `made` lists ([`Error::MissingObject`]), or a key that does not fit its object (a list
/// position in a map, a map key or an insert in a list's place; Automerge applies these, and
/// they would show as odd keys).
fn object_fault(am: &Automerge, change: &ExpandedChange, made: &Made) -> Option<Error> {
    let mut kinds: HashMap<&OpId, ObjType> = HashMap::new();
    for op in &change.operations {
        let kind = match &op.obj {
            ObjectId::Root => ObjType::Map,
            ObjectId::Id(id) => match kinds.get(id) {
                Some(kind) => *kind,
                None => match kind_of(am, id, made) {
                    Ok(kind) => *kinds.entry(id).or_insert(kind),
                    Err(why) => return Some(why),
                },
            },
        };
        let fits = match (kind, &op.key) {
            (ObjType::Map | ObjType::Table, Key::Map(_)) => !op.insert,
            (ObjType::List | ObjType::Text, Key::Seq(_)) => true,
            _ => false,
        };
        if !fits {
            let key = match &op.key {
                Key::Map(_) if op.insert => "an insert at a map key",
                Key::Map(_) => "a map key",
                Key::Seq(_) => "a list position",
            };
            return Some(Error::Foreign(format!("{key} on a {kind:?} object")));
        }
    }
    None
}

/// The type of object `id`: as `am` holds it, else as the batch makes it. An object neither
/// holds is missing; one the batch makes more than once (an operation id used twice, which only
/// a crafted change does) has no type to trust.
fn kind_of(am: &Automerge, id: &OpId, made: &Made) -> Result<ObjType, Error> {
    let name = format!("{}@{}", id.counter(), id.actor().to_hex_string());
    if let Ok((_, kind)) = am.import(&name) {
        return Ok(kind);
    }
    match made.get(&(id.counter(), id.actor().clone())) {
        Some(Some(kind)) => Ok(*kind),
        Some(None) => Err(Error::Foreign(format!(
            "object {name} made twice in the batch"
        ))),
        None => Err(Error::MissingObject(name)),
    }
}

/// Objects made by the changes of a batch, by (counter, actor): their type, or `None` for an
/// id made more than once.
type Made = HashMap<(u64, ActorId), Option<ObjType>>;

/// The objects `changes` of a batch make. (Not only by a change's own history: that costs time
/// in the square of a chain's length. A change naming an object made by a change of the batch
/// it does not follow makes Automerge fail inside, which the apply catches, and is then found
/// and quarantined alone.)
fn made_in_batch<'a>(changes: impl Iterator<Item = &'a ExpandedChange>) -> Made {
    let mut made = Made::new();
    for c in changes {
        for (k, op) in c.operations.iter().enumerate() {
            if let OpType::Make(kind) = op.action {
                made.entry((c.start_op.get() + k as u64, c.actor_id.clone()))
                    .and_modify(|twice| *twice = None)
                    .or_insert(Some(kind));
            }
        }
    }
    made
}

#[cfg(test)]
#[path = "guard_tests.rs"]
mod tests;
