//! Pieces the benchmarks share: a deterministic generator and free-text padding to make
//! records, latency statistics ([`stats`]) and deadline waits ([`wait`]).

pub mod stats;
pub mod wait;

use serde_json::{Map, Value};

/// Deterministic xorshift, so runs are comparable.
pub struct Rng(pub u64);

impl Rng {
    /// The next pseudo-random number.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

const WORDS: [&str; 12] = [
    "patient",
    "fever",
    "cough",
    "stable",
    "observed",
    "ward",
    "oxygen",
    "swab",
    "negative",
    "positive",
    "discharged",
    "review",
];

/// Sets `m["notes"]` to free text such that `m` is `size` bytes of JSON (or as close as the
/// other fields allow).
pub fn pad_with_notes(m: &mut Map<String, Value>, size: usize, rng: &mut Rng) {
    m.insert("notes".into(), Value::String(String::new()));
    let base = serde_json::to_vec(&m).map_or(0, |b| b.len());
    let want = size.saturating_sub(base);
    let mut notes = String::with_capacity(want + 12);
    while notes.len() < want {
        if !notes.is_empty() {
            notes.push(' ');
        }
        notes.push_str(WORDS[(rng.next() % WORDS.len() as u64) as usize]);
    }
    notes.truncate(want);
    m.insert("notes".into(), Value::String(notes));
}
