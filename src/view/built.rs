//! Records read from the change that created them. A catch-up brings thousands of changes that
//! each create a new page of new records; reading those records back from the document after
//! the apply (Automerge's hydrate) cost about a quarter of a catch-up's CPU. A record created
//! whole by one change, in a page that change made, in the plain shape a fogmesh writer gives it
//! (every operation a first write of its key, lists built front to back), holds exactly what
//! those operations say: it is built from them here instead. Anything else (an update, a
//! delete, a key written twice, a list built out of order) is left to be read from the document.

use std::collections::HashMap;

use automerge::legacy::{ElementId, Key, ObjectId, OpType};
use automerge::{hydrate, ExpandedChange, ObjType, ScalarValue};

use super::amjson::from_record_map;
use super::doc::is_page_key;
use crate::record::Record;

/// A record built from a change.
pub(super) struct Built {
    /// The record's id.
    pub id: String,
    /// The key of the page the change made for it.
    pub page: String,
    /// The page object's id as Automerge writes it (`counter@actor`).
    pub page_obj: String,
    /// The record.
    pub record: Record,
}

/// What a slot of an object holds.
enum Slot {
    Scalar(ScalarValue),
    /// An object the change made, by counter.
    Object(u64),
}

/// An object the change made, as its operations build it; `Odd` once an operation on it is not
/// a plain first write.
enum Node {
    Map(HashMap<String, Slot>),
    /// Elements in order, each with the counter of the operation that inserted it.
    List(Vec<(u64, Slot)>),
    Odd,
}

/// The records `c` created whole in pages it made (see the module docs).
pub(super) fn records(c: &ExpandedChange) -> Vec<Built> {
    let mut pages: HashMap<u64, String> = HashMap::new();
    let mut nodes: HashMap<u64, Node> = HashMap::new();
    // (page counter, record id) -> the record's map, `None` if the page's key was used twice.
    let mut roots: HashMap<(u64, String), Option<u64>> = HashMap::new();
    for (i, op) in c.operations.iter().enumerate() {
        let counter = c.start_op.get() + i as u64;
        let plain = op.pred.is_empty();
        let obj = match &op.obj {
            ObjectId::Root => {
                if let (Key::Map(k), OpType::Make(ObjType::Map), true) =
                    (&op.key, &op.action, plain)
                {
                    if is_page_key(k) {
                        pages.insert(counter, k.to_string());
                    }
                }
                continue;
            }
            // An operation on an object the change makes only later: Automerge applies it, and
            // no writer makes one; building from operations in order would leave it out.
            ObjectId::Id(id) if id.1 == c.actor_id && id.0 >= counter => return Vec::new(),
            ObjectId::Id(id) if id.1 == c.actor_id => id.0,
            ObjectId::Id(_) => continue,
        };
        if pages.contains_key(&obj) {
            if let Key::Map(k) = &op.key {
                let fresh = plain && matches!(op.action, OpType::Make(ObjType::Map));
                roots
                    .entry((obj, k.to_string()))
                    .and_modify(|r| *r = None)
                    .or_insert_with(|| fresh.then_some(counter));
                if fresh {
                    nodes.insert(counter, Node::Map(HashMap::new()));
                }
            }
            continue;
        }
        let Some(node) = nodes.get_mut(&obj) else {
            continue;
        };
        let slot = match (&op.action, plain) {
            (OpType::Put(v), true) => Some(Slot::Scalar(v.clone())),
            (OpType::Make(ObjType::Map | ObjType::List), true) => Some(Slot::Object(counter)),
            _ => None,
        };
        let placed = slot.is_some_and(|s| place(node, op, s, &c.actor_id, counter));
        if !placed {
            *node = Node::Odd;
            continue;
        }
        match op.action {
            OpType::Make(ObjType::Map) => nodes.insert(counter, Node::Map(HashMap::new())),
            OpType::Make(_) => nodes.insert(counter, Node::List(Vec::new())),
            _ => None,
        };
    }
    let actor = c.actor_id.to_hex_string();
    let mut out = Vec::new();
    for ((page, id), root) in roots {
        let Some(root) = root else { continue };
        let Some(hydrate::Value::Map(m)) = build(&nodes, root, 0) else {
            continue;
        };
        if let Some(record) = from_record_map(&id, &m) {
            out.push(Built {
                id,
                page: pages[&page].clone(),
                page_obj: format!("{page}@{actor}"),
                record,
            });
        }
    }
    out
}

/// Places a first write in `node`: a map key not written before, or a list element inserted
/// right after the last one. Whether it fit.
fn place(
    node: &mut Node,
    op: &automerge::legacy::Op,
    slot: Slot,
    actor: &automerge::ActorId,
    counter: u64,
) -> bool {
    match (node, &op.key) {
        (Node::Map(m), Key::Map(k)) if !op.insert && !m.contains_key(k.as_str()) => {
            m.insert(k.to_string(), slot);
            true
        }
        (Node::List(l), Key::Seq(after)) if op.insert => {
            let follows = match (after, l.last()) {
                (ElementId::Head, None) => true,
                (ElementId::Id(id), Some((last, _))) => id.0 == *last && id.1 == *actor,
                _ => false,
            };
            if follows {
                l.push((counter, slot));
            }
            follows
        }
        _ => false,
    }
}

/// Deepest nesting built (records are depth-capped far below this where they enter).
const MAX_DEPTH: usize = 128;

/// The value of object `at`, `None` if it or anything in it is odd.
fn build(nodes: &HashMap<u64, Node>, at: u64, depth: usize) -> Option<hydrate::Value> {
    if depth > MAX_DEPTH {
        return None;
    }
    let value = |s: &Slot| match s {
        Slot::Scalar(v) => Some(hydrate::Value::from(v.clone())),
        Slot::Object(o) => build(nodes, *o, depth + 1),
    };
    match nodes.get(&at)? {
        Node::Map(m) => {
            let mut out = HashMap::with_capacity(m.len());
            for (k, s) in m {
                out.insert(k.clone(), value(s)?);
            }
            Some(hydrate::Map::from(out).into())
        }
        Node::List(l) => {
            let items: Option<Vec<hydrate::Value>> = l.iter().map(|(_, s)| value(s)).collect();
            Some(items?.into())
        }
        Node::Odd => None,
    }
}

#[cfg(test)]
#[path = "built_tests.rs"]
pub(super) mod tests;
