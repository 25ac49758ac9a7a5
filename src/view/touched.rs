//! What one change does to a dataset's records, read from its own operations (not by diffing the
//! document, so the cost follows the size of the change, not of the document).
//!
//! Operations on a page object name a record by their key; operations inside a record (or deeper)
//! belong to the record above them. Objects the change creates are looked up by their counter (no
//! string formatting per operation: this runs for every operation of every remote change);
//! objects that were already in the document are placed once each, by their parents.

use std::collections::HashMap;

use automerge::legacy::{Key, ObjectId, OpId, OpType};
use automerge::{Automerge, ExpandedChange, Prop, ReadDoc, ROOT};

use super::doc::is_page_key;

/// The records one change touches, and where it placed or removed copies of them.
#[derive(Debug, Default)]
pub(super) struct Touch {
    /// Ids of the records touched (created, updated or deleted), each once.
    pub records: Vec<String>,
    /// `(record id, page key)` for every record the change created in a page.
    pub placed: Vec<(String, String)>,
    /// Ids of the records the change deleted from a page.
    pub removed: Vec<String>,
    /// The change deleted or replaced a page, or made one at a key that holds one, which honest
    /// writers never do: records other than those named may have changed.
    pub rescan: bool,
}

/// Where an object sits: a page (its key), or inside a record (its index in `Touch::records`).
#[derive(Clone)]
enum Place {
    Page(String),
    Record(usize),
}

/// Where an object already in the document sits, by its parents.
#[derive(Clone)]
enum Above {
    Page(String),
    Record(String),
}

/// Scans one change applied to `doc`.
pub(super) fn scan(doc: &Automerge, c: &ExpandedChange) -> Touch {
    let mut t = Touch::default();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut made: HashMap<u64, Place> = HashMap::new();
    let mut above: HashMap<OpId, Option<Above>> = HashMap::new();
    for (i, op) in c.operations.iter().enumerate() {
        let counter = c.start_op.get() + i as u64;
        let is_make = matches!(op.action, OpType::Make(_));
        let place = match &op.obj {
            ObjectId::Root => {
                if let Key::Map(k) = &op.key {
                    match (is_page_key(k), is_make && op.pred.is_empty()) {
                        (true, true) => {
                            made.insert(counter, Place::Page(k.to_string()));
                            t.rescan |= made_twice(doc, k);
                        }
                        (true, false) => t.rescan = true,
                        (false, _) => {}
                    }
                }
                continue;
            }
            ObjectId::Id(id) => match made.get(&id.0) {
                Some(p) if id.1 == c.actor_id => p.clone(),
                _ => {
                    let found = above.entry(id.clone()).or_insert_with(|| locate(doc, id));
                    match found.clone() {
                        Some(Above::Page(p)) => Place::Page(p),
                        Some(Above::Record(r)) => Place::Record(index_of(&mut t, &mut seen, &r)),
                        None => continue,
                    }
                }
            },
        };
        let record = match place {
            Place::Record(r) => r,
            Place::Page(page) => {
                let Key::Map(k) = &op.key else { continue };
                match op.action {
                    OpType::Make(_) => t.placed.push((k.to_string(), page)),
                    OpType::Delete => t.removed.push(k.to_string()),
                    _ => {}
                }
                index_of(&mut t, &mut seen, k)
            }
        };
        if is_make {
            made.insert(counter, Place::Record(record));
        }
    }
    t
}

/// Whether root key `page` holds more than one page object: made again by a change that did not
/// know the first (page keys are fresh ULIDs, so only a crafted change does this, in either
/// order of arrival). The document shows one of them, and the other's records are hidden.
fn made_twice(doc: &Automerge, page: &str) -> bool {
    doc.get_all(ROOT, page).is_ok_and(|values| values.len() > 1)
}

/// The index of record `id` in `t.records`, added if absent.
fn index_of(t: &mut Touch, seen: &mut HashMap<String, usize>, id: &str) -> usize {
    if let Some(i) = seen.get(id) {
        return *i;
    }
    t.records.push(id.to_owned());
    seen.insert(id.to_owned(), t.records.len() - 1);
    t.records.len() - 1
}

/// Where object `id` (already in the document) sits: a page directly under the root, or inside
/// the record whose key is the second step down from the root.
fn locate(doc: &Automerge, id: &OpId) -> Option<Above> {
    let exid = doc.import_obj(&id.to_string()).ok()?;
    let path: Vec<_> = doc.parents(&exid).ok()?.collect();
    let top = path.last()?;
    let Prop::Map(page) = &top.prop else {
        return None;
    };
    if top.obj != ROOT || !is_page_key(page) {
        return None;
    }
    if path.len() == 1 {
        return Some(Above::Page(page.clone()));
    }
    match &path[path.len() - 2].prop {
        Prop::Map(r) => Some(Above::Record(r.clone())),
        Prop::Seq(_) => None,
    }
}
