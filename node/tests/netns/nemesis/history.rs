//! What a nemesis run did: every write acknowledged, and its history as JSON lines.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{json, Value};

use crate::say;

/// A write a node acknowledged.
pub(super) struct Ack {
    pub(super) org: String,
    pub(super) data: Value,
    /// When, since the run began.
    pub(super) at: Duration,
}

/// What one run did: the writes acknowledged, and its history file.
pub(super) struct Run {
    pub(super) t0: Instant,
    acked: Mutex<BTreeMap<String, Ack>>,
    history: Mutex<std::fs::File>,
}

impl Run {
    pub(super) fn new(t0: Instant, path: &Path) -> Result<Self> {
        Ok(Self {
            t0,
            acked: Mutex::new(BTreeMap::new()),
            history: Mutex::new(std::fs::File::create(path)?),
        })
    }

    /// Appends one event to the history.
    pub(super) fn note(&self, kind: &str, what: Value) {
        use std::io::Write;
        let t = self.t0.elapsed().as_secs_f64();
        let line = json!({ "t": t, "kind": kind, "what": what });
        let mut f = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(f, "{line}");
    }

    /// Prints and notes `what`.
    pub(super) fn say(&self, kind: &str, what: String) {
        say(self.t0, &what);
        self.note(kind, json!(what));
    }

    pub(super) fn acked(&self) -> MutexGuard<'_, BTreeMap<String, Ack>> {
        self.acked.lock().unwrap_or_else(|e| e.into_inner())
    }
}
