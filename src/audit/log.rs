//! The log itself: appending (one writer at a time, behind a lock held for a few single-key
//! in-memory sled writes), listing with filters, verification, pruning by count and age, and following.

use std::sync::{Arc, Mutex, MutexGuard};

use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::broadcast;

use super::budget::Budget;
use super::chain::{self, Anchor, Head, Verification, GENESIS};
use super::event::{Entry, Event, Filter, Outcome};
use super::{Error, ALL_REFUSALS_PER_MINUTE, EVENTS_CAP, REFUSALS_PER_MINUTE};
use crate::store::Store;

const HEAD_KEY: &[u8] = b"h";
const ANCHOR_KEY: &[u8] = b"a";
const ENTRY_PREFIX: u8 = b'e';
const DAY_MS: u64 = 86_400_000;
/// Old entries removed by one append, at most (a lowered `max_entries` is reached over several
/// appends or by [`Log::prune`], so one append stays cheap).
const PRUNE_PER_APPEND: u64 = 64;
/// Entries removed per step of [`Log::prune`].
const PRUNE_BATCH: usize = 10_000;

/// How much of the log is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most entries kept; the oldest go first.
    pub max_entries: u64,
    /// Entries older than this many days are pruned by [`Log::prune`].
    pub max_age_days: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_entries: 200_000,
            max_age_days: 365,
        }
    }
}

/// What [`Log::record`] did with an event.
#[derive(Debug, Clone)]
pub enum Recorded {
    /// Appended as this entry.
    Appended(Arc<Entry>),
    /// A refusal over its organization's budget ([`REFUSALS_PER_MINUTE`]): counted, not logged.
    Skipped,
}

/// Where the chain ends and the kept entries begin.
#[derive(Debug, Clone, Copy)]
struct Tip {
    next: u64,
    last_hash: [u8; 32],
    last_time: u64,
    first: u64,
}

/// The durable, hash-chained audit log of one node. Cheap to share behind an `Arc`.
pub struct Log {
    pub(super) tree: sled::Tree,
    tip: Mutex<Tip>,
    budget: Mutex<Budget>,
    events: broadcast::Sender<Arc<Entry>>,
    limits: Limits,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn entry_key(seq: u64) -> [u8; 9] {
    let mut k = [ENTRY_PREFIX; 9];
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn seq_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(1..9)?.try_into().ok()?))
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing these plain structs into memory cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

fn corrupt(what: impl Into<String>, e: impl std::fmt::Display) -> Error {
    Error::Corrupt {
        what: what.into(),
        detail: e.to_string(),
    }
}

impl Log {
    /// Opens the log in `store`'s `audit` tree.
    pub fn open(store: &Store, limits: Limits) -> Result<Self, Error> {
        let tree = store.open_tree("audit")?;
        mend(&tree)?;
        let tip = load_tip(&tree)?;
        Ok(Self {
            tree,
            tip: Mutex::new(tip),
            budget: Mutex::default(),
            events: broadcast::channel(EVENTS_CAP).0,
            limits,
        })
    }

    /// Records `event` at `now_ms` (an entry's time never goes below the one before): appends it,
    /// or skips a refusal over its organization's budget.
    pub fn record(&self, event: Event, now_ms: u64) -> Result<Recorded, Error> {
        let mut event = event.capped();
        if event.outcome == Outcome::Refused {
            let Some(skipped) = lock(&self.budget).admit(event.org(), now_ms) else {
                return Ok(Recorded::Skipped);
            };
            if skipped > 0 {
                let note = format!(
                    "{skipped} earlier refusals of {} not logged (over {REFUSALS_PER_MINUTE} a \
                     minute for one organization or {ALL_REFUSALS_PER_MINUTE} for all)",
                    event.org()
                );
                event.detail =
                    super::event::cap(format!("{note}; {}", event.detail), super::DETAIL_CAP);
            }
        }
        self.append(event, now_ms).map(Recorded::Appended)
    }

    /// Appends `event` as the next entry, moves the head to it, and removes the oldest entries
    /// beyond `max_entries` (at most [`PRUNE_PER_APPEND`]). Each step is one single-key write,
    /// in an order that a crash between any two leaves a log [`Log::open`] mends: an entry past
    /// the head, or entries before the anchor.
    fn append(&self, event: Event, now_ms: u64) -> Result<Arc<Entry>, Error> {
        let mut tip = lock(&self.tip);
        let time = now_ms.max(tip.last_time);
        let entry = chain::link(event, tip.next, time, &tip.last_hash);
        let hash = chain::unhex(&entry.hash).unwrap_or(GENESIS);
        self.tree.insert(entry_key(entry.seq), json(&entry))?;
        tip.next = entry.seq.saturating_add(1);
        tip.last_hash = hash;
        tip.last_time = time;
        let head = Head {
            seq: entry.seq,
            hash,
        };
        self.tree.insert(HEAD_KEY, json(&head))?;
        let kept = tip.next.saturating_sub(tip.first);
        let excess = kept.saturating_sub(self.limits.max_entries);
        if let n @ 1.. = excess.min(PRUNE_PER_APPEND) {
            let upto = tip.first + n;
            match self.link_into(upto, &entry) {
                Some(prev) => {
                    self.cut(&mut tip, upto, prev)?;
                }
                None => tracing::warn!(
                    seq = upto,
                    "audit entry unreadable; the log is not pruned past it"
                ),
            }
        }
        drop(tip);
        let entry = Arc::new(entry);
        // No follower listening is not an error.
        let _ = self.events.send(entry.clone());
        Ok(entry)
    }

    /// The link into entry `upto` (its `prev`), which becomes the anchor when the entries before
    /// it go; `appending` is the entry being appended. `None` when entry `upto` cannot be read:
    /// a damaged log is not pruned past the damage.
    fn link_into(&self, upto: u64, appending: &Entry) -> Option<[u8; 32]> {
        let prev = if upto == appending.seq {
            Some(appending.prev.clone())
        } else {
            self.entry(upto).ok().flatten().map(|e| e.prev)
        };
        prev.as_deref().and_then(chain::unhex)
    }

    /// Removes the entries before `upto`: the anchor moves first, then the entries go one by one
    /// (entries left before the anchor by a crash are removed at the next open). Returns how
    /// many went.
    fn cut(&self, tip: &mut Tip, upto: u64, prev: [u8; 32]) -> Result<usize, Error> {
        self.tree
            .insert(ANCHOR_KEY, json(&Anchor { seq: upto, prev }))?;
        for seq in tip.first..upto {
            self.tree.remove(entry_key(seq))?;
        }
        let n = upto.saturating_sub(tip.first) as usize;
        tip.first = upto;
        Ok(n)
    }

    /// Entry `seq`, if kept.
    pub fn entry(&self, seq: u64) -> Result<Option<Entry>, Error> {
        match self.tree.get(entry_key(seq))? {
            None => Ok(None),
            Some(v) => decode(&v, || format!("entry {seq}")).map(Some),
        }
    }

    /// The entries that pass `filter`, oldest first: the newest `limit` of them, or with
    /// `filter.after` the oldest `limit` after that seq. Entries that do not decode are left out
    /// (with a warning; [`Log::verify`] names them).
    pub fn list(&self, filter: &Filter) -> Result<Vec<Entry>, Error> {
        let limit = filter.limit();
        let forward = filter.after.is_some();
        let lo = entry_key(filter.after.map_or(0, |s| s.saturating_add(1)));
        let range = self.tree.range(lo..=entry_key(u64::MAX));
        let scan: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = if forward {
            Box::new(range)
        } else {
            Box::new(range.rev())
        };
        let mut out = Vec::new();
        for kv in scan {
            let (k, v) = kv?;
            let Ok(e) = serde_json::from_slice::<Entry>(&v) else {
                tracing::warn!(seq = ?seq_of(&k), "an audit entry does not decode; left out");
                continue;
            };
            // Times never decrease along the log: nothing further can pass.
            let past = if forward {
                filter.until.is_some_and(|t| e.time >= t)
            } else {
                filter.since.is_some_and(|t| e.time < t)
            };
            if past {
                break;
            }
            if filter.matches(&e) {
                out.push(e);
                if out.len() >= limit {
                    break;
                }
            }
        }
        if !forward {
            out.reverse();
        }
        Ok(out)
    }

    /// Checks every kept entry against its hash, its predecessor, the anchor and the head. The
    /// walk runs beside appends and pruning; a walk that finds a fault is run again with them
    /// held off, so what it reports is in the log and not a step caught half-way.
    pub fn verify(&self) -> Result<Verification, Error> {
        let v = self.walk()?;
        if v.ok {
            return Ok(v);
        }
        let _held = lock(&self.tip);
        self.walk()
    }

    fn walk(&self) -> Result<Verification, Error> {
        let anchor = self.stored(ANCHOR_KEY, "anchor")?.unwrap_or_default();
        let head = self.stored::<Head>(HEAD_KEY, "head")?;
        let lo = entry_key(0);
        let hi = entry_key(u64::MAX);
        let mut failed = None;
        let stored = self.tree.range(lo..=hi).map_while(|kv| match kv {
            Ok((k, v)) => {
                let seq = seq_of(&k).unwrap_or(0);
                Some((seq, serde_json::from_slice(&v).map_err(|e| e.to_string())))
            }
            Err(e) => {
                failed = Some(e);
                None
            }
        });
        let v = chain::verify(anchor, head, stored);
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(v),
        }
    }

    fn stored<T: DeserializeOwned>(&self, key: &[u8], what: &str) -> Result<Option<T>, Error> {
        match self.tree.get(key)? {
            None => Ok(None),
            Some(v) => decode(&v, || what.to_owned()).map(Some),
        }
    }

    /// Removes entries older than `max_age_days` at `now_ms`, and the oldest beyond
    /// `max_entries`; records the anchor so the rest still verifies. Returns how many it removed.
    pub fn prune(&self, now_ms: u64) -> Result<usize, Error> {
        let cutoff = now_ms.saturating_sub(u64::from(self.limits.max_age_days) * DAY_MS);
        let mut removed = 0;
        loop {
            let n = self.prune_some(cutoff)?;
            removed += n;
            if n < PRUNE_BATCH {
                return Ok(removed);
            }
        }
    }

    /// One step of [`Log::prune`].
    fn prune_some(&self, cutoff: u64) -> Result<usize, Error> {
        let mut tip = lock(&self.tip);
        let over = tip
            .next
            .saturating_sub(tip.first)
            .saturating_sub(self.limits.max_entries);
        let mut upto = tip.first;
        let mut anchor_prev = None;
        for kv in self.tree.range(entry_key(tip.first)..entry_key(tip.next)) {
            let (k, v) = kv?;
            let seq = seq_of(&k).unwrap_or(upto);
            // A damaged entry stops pruning: the link past it cannot be read.
            let Ok(e) = serde_json::from_slice::<Entry>(&v) else {
                break;
            };
            let old = e.time < cutoff || seq < tip.first.saturating_add(over);
            if !old || seq.saturating_sub(tip.first) >= PRUNE_BATCH as u64 {
                anchor_prev = chain::unhex(&e.prev);
                break;
            }
            upto = seq + 1;
        }
        // Everything up to the head went: the anchor is the head.
        let prev = match anchor_prev {
            Some(p) => p,
            None if upto == tip.next => tip.last_hash,
            None => return Ok(0),
        };
        if upto == tip.first {
            return Ok(0);
        }
        self.cut(&mut tip, upto, prev)
    }

    /// New entries from now on, for followers. A follower that falls [`EVENTS_CAP`] entries
    /// behind is told it lagged.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Entry>> {
        self.events.subscribe()
    }

    /// The seq of the first kept entry and of the next one to be appended.
    pub fn span(&self) -> (u64, u64) {
        let tip = lock(&self.tip);
        (tip.first, tip.next)
    }
}

fn decode<T: DeserializeOwned>(v: &[u8], what: impl FnOnce() -> String) -> Result<T, Error> {
    serde_json::from_slice(v).map_err(|e| corrupt(what(), e))
}

/// Decodes the value under `key`, or none (with a warning) when it is absent or damaged: a
/// damaged log must not stop the node; [`Log::verify`] reports it.
fn tolerant<T: DeserializeOwned>(
    tree: &sled::Tree,
    key: &[u8],
    what: &str,
) -> Result<Option<T>, Error> {
    let Some(v) = tree.get(key)? else {
        return Ok(None);
    };
    let decoded = serde_json::from_slice(&v);
    if decoded.is_err() {
        tracing::warn!(
            what,
            "the audit log's bookkeeping does not decode; run `fogmesh audit verify`"
        );
    }
    Ok(decoded.ok())
}

/// Finishes what a crash cut short (see [`Log::append`]): removes entries left before the
/// anchor, and moves the head to an entry appended just after it that links to it.
fn mend(tree: &sled::Tree) -> Result<(), Error> {
    let anchor: Anchor = tolerant(tree, ANCHOR_KEY, "anchor")?.unwrap_or_default();
    let stale: Vec<sled::IVec> = tree
        .range(entry_key(0)..entry_key(anchor.seq))
        .keys()
        .collect::<Result<_, _>>()?;
    for key in stale {
        tree.remove(key)?;
    }
    let head: Option<Head> = tolerant(tree, HEAD_KEY, "head")?;
    let (next, link) = head.map_or((anchor.seq, anchor.prev), |h| {
        (h.seq.saturating_add(1), h.hash)
    });
    let Some(kv) = tree
        .range(entry_key(next)..=entry_key(u64::MAX))
        .next_back()
    else {
        return Ok(());
    };
    let (key, value) = kv?;
    let Ok(last) = serde_json::from_slice::<Entry>(&value) else {
        return Ok(());
    };
    let linked = chain::unhex(&last.prev) == Some(link);
    if let (Some(hash), true, true) = (chain::unhex(&last.hash), linked, seq_of(&key) == Some(next))
    {
        tree.insert(HEAD_KEY, json(&Head { seq: next, hash }))?;
    }
    Ok(())
}

/// Where the chain ends (the head, or a later entry stored) and where the kept entries begin.
fn load_tip(tree: &sled::Tree) -> Result<Tip, Error> {
    let anchor: Anchor = tolerant(tree, ANCHOR_KEY, "anchor")?.unwrap_or_default();
    let head: Option<Head> = tolerant(tree, HEAD_KEY, "head")?;
    let all = entry_key(0)..=entry_key(u64::MAX);
    let last = match tree.range(all.clone()).next_back() {
        Some(kv) => {
            let (k, v) = kv?;
            let e = serde_json::from_slice::<Entry>(&v).ok();
            seq_of(&k).map(|seq| (seq, e))
        }
        None => None,
    };
    let first = match tree.range(all).next() {
        Some(kv) => seq_of(&kv?.0).unwrap_or(anchor.seq),
        None => anchor.seq,
    };
    let last_time = last
        .as_ref()
        .and_then(|(_, e)| e.as_ref())
        .map_or(0, |e| e.time);
    // The head wins over a shorter tail: appending after a truncated tail must not hide it.
    let (next, last_hash) = match (head, last) {
        (Some(h), Some((seq, Some(e)))) if seq > h.seq => (
            seq.saturating_add(1),
            chain::unhex(&e.hash).unwrap_or(GENESIS),
        ),
        (Some(h), Some((seq, None))) if seq > h.seq => (seq.saturating_add(1), GENESIS),
        (Some(h), _) => (h.seq.saturating_add(1), h.hash),
        (None, Some((seq, e))) => (
            seq.saturating_add(1),
            e.and_then(|e| chain::unhex(&e.hash)).unwrap_or(GENESIS),
        ),
        (None, None) => (anchor.seq, anchor.prev),
    };
    Ok(Tip {
        next,
        last_hash,
        last_time,
        first,
    })
}
