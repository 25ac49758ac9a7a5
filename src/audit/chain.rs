//! The hash chain, without I/O: an entry's canonical bytes and hash, and the verification of a
//! sequence of stored entries against the anchor and the head.
//!
//! `hash = SHA-256(prev[32] | "fogmesh/audit/v1\0" | seq u64 | time u64 | actor | action |
//! dataset? | outcome u8 | reason? | detail)`, integers big-endian, strings as a u32 length and
//! UTF-8 bytes, optional strings behind a presence byte (0 or 1). The JSON an entry is stored as
//! is never hashed, so re-serializing it cannot break the chain, and changing any field can.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::event::{Entry, Event, Outcome};

/// Domain tag of the hashed bytes.
const DOMAIN: &[u8] = b"fogmesh/audit/v1\0";

/// The hash before the first entry ever appended.
pub const GENESIS: [u8; 32] = [0; 32];

/// The last entry appended: written right after it (a head one entry behind, left by a crash, is
/// moved on at the next open), so a log whose tail is cut off afterwards no longer reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// Its seq.
    pub seq: u64,
    /// Its hash.
    #[serde(with = "hex32")]
    pub hash: [u8; 32],
}

/// Where the kept entries start: the first kept seq and the hash of the entry before it (pruned).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// The first seq kept.
    pub seq: u64,
    /// The hash of entry `seq - 1`.
    #[serde(with = "hex32")]
    pub prev: [u8; 32],
}

impl Default for Anchor {
    fn default() -> Self {
        Self {
            seq: 1,
            prev: GENESIS,
        }
    }
}

/// The entry `event` becomes at `seq` and `time` after the entry whose hash is `prev`.
pub fn link(event: Event, seq: u64, time: u64, prev: &[u8; 32]) -> Entry {
    let mut e = Entry {
        seq,
        time,
        event,
        prev: hex::encode(prev),
        hash: String::new(),
    };
    e.hash = hex::encode(hash(&e, prev));
    e
}

/// The hash of `e` linked after `prev` (whatever `e.prev` and `e.hash` say).
pub fn hash(e: &Entry, prev: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(DOMAIN);
    h.update(e.seq.to_be_bytes());
    h.update(e.time.to_be_bytes());
    let e = &e.event;
    put(&mut h, &e.actor);
    put(&mut h, e.action.as_str());
    put_opt(&mut h, e.dataset.as_deref());
    h.update([match e.outcome {
        Outcome::Ok => 0u8,
        Outcome::Refused => 1,
    }]);
    put_opt(&mut h, e.reason.as_deref());
    put(&mut h, &e.detail);
    h.finalize().into()
}

fn put(h: &mut Sha256, s: &str) {
    h.update((s.len() as u32).to_be_bytes());
    h.update(s.as_bytes());
}

fn put_opt(h: &mut Sha256, s: Option<&str>) {
    match s {
        None => h.update([0u8]),
        Some(s) => {
            h.update([1u8]);
            put(h, s);
        }
    }
}

/// Decodes a hex hash.
pub fn unhex(s: &str) -> Option<[u8; 32]> {
    hex::decode(s).ok()?.try_into().ok()
}

/// What is wrong with the first bad entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Problem {
    /// Its content (or its hash) was changed: the hash does not match, or it does not link to
    /// the entry before.
    Edited,
    /// It is missing from the middle of the log (or from the start of what is kept).
    Missing,
    /// It and every entry after it up to the recorded head are missing: the tail was cut off.
    Truncated,
    /// It does not decode, or the log's bookkeeping (head, anchor) contradicts it.
    Corrupt,
}

/// The first bad entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bad {
    /// Its seq.
    pub seq: u64,
    /// What is wrong.
    pub problem: Problem,
    /// In words.
    pub message: String,
}

/// The result of verifying the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// True when every kept entry is intact, in order, linked, and the last one is the recorded
    /// head.
    pub ok: bool,
    /// Entries checked before the first bad one (all of them when `ok`).
    pub entries: u64,
    /// The first seq kept (the anchor).
    pub first: u64,
    /// The seq of the recorded head (none: nothing was ever appended).
    pub head: Option<u64>,
    /// The first bad entry, when not `ok`.
    pub bad: Option<Bad>,
}

/// Walks the stored entries in key order: `(seq of the key, the decoded entry or why it did not
/// decode)`. Stops at the first bad entry.
pub fn verify(
    anchor: Anchor,
    head: Option<Head>,
    stored: impl Iterator<Item = (u64, Result<Entry, String>)>,
) -> Verification {
    let mut walk = Walk {
        next: anchor.seq,
        prev: anchor.prev,
        checked: 0,
    };
    let mut bad = None;
    for (key, entry) in stored {
        if let Err(b) = walk.step(key, entry) {
            bad = Some(b);
            break;
        }
    }
    let bad = bad.or_else(|| walk.finish(head));
    Verification {
        ok: bad.is_none(),
        entries: walk.checked,
        first: anchor.seq,
        head: head.map(|h| h.seq),
        bad,
    }
}

/// Where a verification walk stands: the seq and the link it expects next.
struct Walk {
    next: u64,
    prev: [u8; 32],
    checked: u64,
}

fn bad(seq: u64, problem: Problem, message: impl Into<String>) -> Bad {
    Bad {
        seq,
        problem,
        message: message.into(),
    }
}

impl Walk {
    fn step(&mut self, key: u64, entry: Result<Entry, String>) -> Result<(), Bad> {
        if key > self.next {
            let msg = format!(
                "entries {} to {} are missing",
                self.next,
                key.saturating_sub(1)
            );
            return Err(bad(self.next, Problem::Missing, msg));
        }
        if key < self.next {
            let msg = format!("entry {key} lies before the first kept entry {}", self.next);
            return Err(bad(key, Problem::Corrupt, msg));
        }
        let e = entry.map_err(|d| bad(key, Problem::Corrupt, format!("does not decode: {d}")))?;
        if e.seq != key {
            let msg = format!("entry {key} says it is entry {}", e.seq);
            return Err(bad(key, Problem::Edited, msg));
        }
        let stored_prev = unhex(&e.prev);
        let own = stored_prev.map(|p| hash(&e, &p));
        if own.is_none() || own.map(hex::encode).as_deref() != Some(e.hash.as_str()) {
            let msg = format!("entry {key}: its hash does not match its content");
            return Err(bad(key, Problem::Edited, msg));
        }
        if stored_prev != Some(self.prev) {
            return Err(self.broken_link(key));
        }
        self.next = key.saturating_add(1);
        self.prev = own.unwrap_or(GENESIS);
        self.checked += 1;
        Ok(())
    }

    /// Entry `key` is whole but does not link to what came before: the entry before it was
    /// rewritten with a recomputed hash (or, for the first kept entry, the anchor was changed).
    fn broken_link(&self, key: u64) -> Bad {
        if self.checked == 0 {
            let msg = format!("entry {key} does not link to the recorded anchor");
            return bad(key, Problem::Edited, msg);
        }
        let msg = format!(
            "entry {} was rewritten: entry {key} does not link to it",
            key.saturating_sub(1)
        );
        bad(key.saturating_sub(1), Problem::Edited, msg)
    }

    /// Checks that the walk ended at the recorded head.
    fn finish(&self, head: Option<Head>) -> Option<Bad> {
        let Some(head) = head else {
            return (self.checked > 0).then(|| {
                bad(
                    self.next.saturating_sub(1),
                    Problem::Corrupt,
                    "entries are stored but no head is recorded",
                )
            });
        };
        if self.next <= head.seq {
            let msg = format!(
                "entries {} to {} are missing: the log was truncated",
                self.next, head.seq
            );
            return Some(bad(self.next, Problem::Truncated, msg));
        }
        if self.next > head.seq.saturating_add(1) {
            let msg = format!("entries after the recorded head {} are stored", head.seq);
            return Some(bad(head.seq.saturating_add(1), Problem::Corrupt, msg));
        }
        (self.prev != head.hash).then(|| {
            let msg = format!("entry {} is not the one the head records", head.seq);
            bad(head.seq, Problem::Edited, msg)
        })
    }
}

/// Serde of a 32-byte hash as hex.
mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(h: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(h))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        super::unhex(&s).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
    }
}
