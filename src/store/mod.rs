//! Durable storage on sled, behind one type so that an engine swap stays a local change.
//!
//! Trees: `datasets` (id -> metadata JSON), `envelopes` (dataset, author, big-endian sequence ->
//! envelope bytes), `snapshots` (dataset -> version vector + saved Automerge document), `apps`
//! (`app/` name -> app JSON with its token hash), `meta` (node-level values), `evidence` (dataset, author -> the fork
//! and the evidence of an equivocation, see [`evidence`]), and `audit`, whose layout
//! [`crate::audit`] keeps. Writes land in sled's memory first;
//! [`Store::durable`] returns once a flush that covers them has reached the disk. Flushes are grouped
//! by [`commit`], so many writers share one fsync.

mod commit;
pub mod evidence;
mod keys;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};

use crate::envelope::{self, Envelope};
use crate::identity::AuthorId;
use crate::naming::DatasetId;
use crate::version::{self, VersionVector};

pub use commit::{FLUSH_QUEUE_CAP, FLUSH_STALL};

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// sled reported an error other than a full disk.
    #[error("store: {0}")]
    Sled(sled::Error),
    /// A stored value did not decode: the store is damaged or from another version.
    #[error("store holds a corrupt {what} under {key}: {detail}")]
    Corrupt {
        /// What kind of value.
        what: &'static str,
        /// Its key, printable.
        key: String,
        /// The decoder's complaint.
        detail: String,
    },
    /// The disk failed a write or a flush (full, or an I/O error): the writes it covered are
    /// not acknowledged, and the store takes no more until it is opened again ([`Failure`]).
    #[error("this node's disk failed ({0}); writes are refused until the node restarts with space, reads go on")]
    DiskFailed(String),
    /// The flusher thread is gone (the node is shutting down).
    #[error("store is shutting down")]
    Closed,
}

impl From<sled::Error> for Error {
    /// An I/O error is the disk's: [`Error::DiskFailed`].
    fn from(e: sled::Error) -> Self {
        match e {
            // A full disk (or quota) is a failure that passes once space is freed; any other
            // I/O error (a lock held, a missing directory, permissions) is reported as itself.
            sled::Error::Io(io) if is_full(&io) => Self::DiskFailed(io.to_string()),
            other => Self::Sled(other),
        }
    }
}

fn is_full(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{QuotaExceeded, StorageFull};
    // sled clones its first error with only the message kept (`raw_os_error` is lost).
    matches!(e.kind(), StorageFull | QuotaExceeded) || e.raw_os_error() == Some(28)
}

/// Whether the disk has failed this store, and why: set by the first write or flush that fails,
/// and never cleared. sled 0.34 keeps its first I/O error too and refuses every write after it,
/// even once space is freed; only a store opened again writes (a node restarts itself for that,
/// see [`crate::Node::disk_back`]). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Failure(Arc<OnceLock<String>>);

impl Failure {
    /// Records `why` unless a failure is recorded already; returns the recorded one.
    fn set(&self, why: &str) -> String {
        let mut first = false;
        let kept = self.0.get_or_init(|| {
            first = true;
            why.to_owned()
        });
        if first {
            tracing::error!(%why, "the disk failed: writes are refused until it has space and the node restarts itself; reads go on");
        }
        kept.clone()
    }

    /// The recorded failure, if any.
    pub fn get(&self) -> Option<String> {
        self.0.get().cloned()
    }
}

/// Opens sled in `path`, waiting up to [`LOCK_WAIT`] for this process's own closing handle.
fn open_db(path: &Path) -> sled::Result<sled::Db> {
    let config = sled::Config::new()
        .path(path)
        .cache_capacity(256 * 1024 * 1024)
        .flush_every_ms(Some(1_000));
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Removes the snapshot files sled 0.34 leaves when writing one fails (a full disk as it
/// opens): it would take the newest for its snapshot and refuse to open for good ("Read
/// corrupted data"). sled renames a snapshot once it is whole, so one still named
/// `.generating` was never finished. True if one was removed. Called only once sled's lock
/// was taken (it reported corruption, not a lock held), so no other process is writing one.
fn remove_unfinished_snapshots(path: &Path) -> bool {
    let Ok(dir) = std::fs::read_dir(path) else {
        return false;
    };
    let mut removed = false;
    for entry in dir.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            tracing::warn!(file = %name, "removing a snapshot file the store never finished (a full disk?)");
            removed |= std::fs::remove_file(entry.path()).is_ok();
        }
    }
    removed
}

fn write_probe(path: &Path, bytes: usize) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    let chunk = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        f.write_all(&chunk[..n])?;
        left -= n;
    }
    f.sync_all()
}

/// The tree an application-level JSON value lives in.
#[derive(Debug, Clone, Copy)]
pub enum Table {
    /// Dataset metadata.
    Datasets,
    /// Registered apps, keyed by name.
    Apps,
    /// Node-level values.
    Meta,
    /// Per-dataset grants and wrapped keys.
    Access,
}

/// The prefix of `author`'s quarantine notes in `dataset`; each key adds the sequence.
fn quarantine_prefix(dataset: &DatasetId, author: &AuthorId) -> String {
    format!("quarantine/{dataset}/{author}/")
}

fn quarantine_key(dataset: &DatasetId, author: &AuthorId, seq: u64) -> Vec<u8> {
    format!("{}{seq:020}", quarantine_prefix(dataset, author)).into_bytes()
}

/// A saved document and the version vector it covers.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Envelopes included in `doc`.
    pub vv: VersionVector,
    /// `Automerge::save` output.
    pub doc: Vec<u8>,
}

/// The node's database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    datasets: sled::Tree,
    envelopes: sled::Tree,
    snapshots: sled::Tree,
    apps: sled::Tree,
    meta: sled::Tree,
    access: sled::Tree,
    evidence: sled::Tree,
    failure: Failure,
    path: PathBuf,
    // Last, so it is dropped last: its thread then holds the final database handle, and sled's
    // closing flush runs there, where a hang cannot block the process (see `commit::CLOSE_WAIT`).
    flusher: commit::Flusher,
}

/// How long opening waits for a store still locked by this process's own closing handle. A lock
/// held by another process (a node already running on this home) is reported after this wait.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Store {
    /// Opens (or creates) the store in `path`.
    /// A store closed a moment ago in this process may still be locked by sled's closing
    /// threads: opening it is retried for up to [`LOCK_WAIT`].
    pub fn open(path: &Path) -> Result<Self, Error> {
        let failure = Failure::default();
        let db = match open_db(path) {
            Err(sled::Error::Corruption { .. }) if remove_unfinished_snapshots(path) => {
                open_db(path)?
            }
            other => other?,
        };
        Ok(Self {
            datasets: db.open_tree("datasets")?,
            envelopes: db.open_tree("envelopes")?,
            snapshots: db.open_tree("snapshots")?,
            apps: db.open_tree("apps")?,
            meta: db.open_tree("meta")?,
            access: db.open_tree("access")?,
            evidence: db.open_tree("evidence")?,
            flusher: commit::Flusher::spawn(db.clone(), failure.clone()),
            failure,
            path: path.to_owned(),
            db,
        })
    }

    fn table(&self, t: Table) -> &sled::Tree {
        match t {
            Table::Datasets => &self.datasets,
            Table::Apps => &self.apps,
            Table::Meta => &self.meta,
            Table::Access => &self.access,
        }
    }

    /// Stores `value` as JSON under `key`.
    pub fn put_json<T: Serialize>(&self, t: Table, key: &[u8], value: &T) -> Result<(), Error> {
        let bytes = serde_json::to_vec(value).map_err(|e| corrupt("json", key, e))?;
        self.wrote(self.table(t).insert(key, bytes))?;
        Ok(())
    }

    /// Reads the JSON value under `key`.
    pub fn get_json<T: DeserializeOwned>(&self, t: Table, key: &[u8]) -> Result<Option<T>, Error> {
        match self.table(t).get(key)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| corrupt("json", key, e)),
        }
    }

    /// Every JSON value of a table, in key order.
    pub fn list_json<T: DeserializeOwned>(&self, t: Table) -> Result<Vec<T>, Error> {
        self.table(t)
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                serde_json::from_slice(&v).map_err(|e| corrupt("json", &k, e))
            })
            .collect()
    }

    /// Every key and JSON value of a table, in key order.
    pub fn list_json_keyed<T: DeserializeOwned>(
        &self,
        t: Table,
    ) -> Result<Vec<(Vec<u8>, T)>, Error> {
        self.table(t)
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let value = serde_json::from_slice(&v).map_err(|e| corrupt("json", &k, e))?;
                Ok((k.to_vec(), value))
            })
            .collect()
    }

    /// Every JSON value of a table whose key starts with `prefix`, in key order.
    pub fn list_json_prefix<T: DeserializeOwned>(
        &self,
        t: Table,
        prefix: &[u8],
    ) -> Result<Vec<T>, Error> {
        self.table(t)
            .scan_prefix(prefix)
            .map(|kv| {
                let (k, v) = kv?;
                serde_json::from_slice(&v).map_err(|e| corrupt("json", &k, e))
            })
            .collect()
    }

    /// Removes `key` (not yet flushed).
    pub fn remove(&self, t: Table, key: &[u8]) -> Result<(), Error> {
        self.wrote(self.table(t).remove(key))?;
        Ok(())
    }

    /// Inserts `value` under `key` only if the key is free; false if it was taken.
    pub fn insert_new_json<T: Serialize>(
        &self,
        t: Table,
        key: &[u8],
        value: &T,
    ) -> Result<bool, Error> {
        let bytes = serde_json::to_vec(value).map_err(|e| corrupt("json", key, e))?;
        let cas = self
            .table(t)
            .compare_and_swap(key, None as Option<&[u8]>, Some(bytes));
        let swapped = self.wrote(cas)?;
        Ok(swapped.is_ok())
    }

    /// Stores an envelope (idempotent: the same key holds the same signed bytes).
    pub fn put_envelope(&self, env: &Envelope) -> Result<(), Error> {
        let key = keys::envelope(&env.dataset, &env.author, env.seq);
        self.wrote(self.envelopes.insert(key, env.encode()))?;
        Ok(())
    }

    /// Sets envelope `seq` of `author` in `dataset` aside for good: it is deleted if stored,
    /// noted with `why`, and refused whenever it comes again (not yet flushed).
    pub fn quarantine(
        &self,
        dataset: &DatasetId,
        author: &AuthorId,
        seq: u64,
        why: &str,
    ) -> Result<(), Error> {
        self.wrote(self.envelopes.remove(keys::envelope(dataset, author, seq)))?;
        let note = serde_json::json!({
            "dataset": dataset.to_string(),
            "author": author.to_string(),
            "seq": seq,
            "why": why,
        });
        self.put_json(Table::Meta, &quarantine_key(dataset, author, seq), &note)
    }

    /// True when envelope `seq` of `author` in `dataset` was quarantined.
    pub fn is_quarantined(
        &self,
        dataset: &DatasetId,
        author: &AuthorId,
        seq: u64,
    ) -> Result<bool, Error> {
        Ok(self
            .meta
            .contains_key(quarantine_key(dataset, author, seq))?)
    }

    /// The highest sequence of `author` in `dataset` that was quarantined (0 if none).
    pub fn last_quarantined(&self, dataset: &DatasetId, author: &AuthorId) -> Result<u64, Error> {
        let prefix = quarantine_prefix(dataset, author);
        Ok(match self.meta.scan_prefix(prefix.as_bytes()).next_back() {
            Some(kv) => {
                let key = kv?.0;
                let seq = std::str::from_utf8(&key[prefix.len()..]).ok();
                seq.and_then(|s| s.parse().ok()).unwrap_or(0)
            }
            None => 0,
        })
    }

    /// The highest sequence stored for `author` in `dataset` (0 if none).
    pub fn last_seq(&self, dataset: &DatasetId, author: &AuthorId) -> Result<u64, Error> {
        let (lo, hi) = keys::author_range(dataset, author);
        Ok(match self.envelopes.range(lo..=hi).next_back() {
            Some(kv) => keys::seq_of(&kv?.0).unwrap_or(0),
            None => 0,
        })
    }

    /// True when envelope `seq` of `author` in `dataset` is stored.
    pub fn has_envelope(
        &self,
        dataset: &DatasetId,
        author: &AuthorId,
        seq: u64,
    ) -> Result<bool, Error> {
        Ok(self
            .envelopes
            .contains_key(keys::envelope(dataset, author, seq))?)
    }

    /// Envelope `seq` of `author` in `dataset`, if stored.
    pub fn envelope(
        &self,
        dataset: &DatasetId,
        author: &AuthorId,
        seq: u64,
    ) -> Result<Option<Envelope>, Error> {
        let key = keys::envelope(dataset, author, seq);
        match self.envelopes.get(&key)? {
            Some(v) => Ok(Some(
                Envelope::decode(&v).map_err(|e| corrupt("envelope", &key, e))?,
            )),
            None => Ok(None),
        }
    }

    /// Encoded envelopes of `author` in `dataset` with sequence `after + 1 ..= upto`, in order, up
    /// to `max_bytes` in total (at least one if any exists) and `max_count`. The flag is true
    /// when more remain.
    pub fn envelopes_between(
        &self,
        dataset: &DatasetId,
        author: &AuthorId,
        (after, upto): (u64, u64),
        (max_bytes, max_count): (usize, usize),
    ) -> Result<(Vec<Vec<u8>>, bool), Error> {
        let from = keys::envelope(dataset, author, after.saturating_add(1));
        let to = keys::envelope(dataset, author, upto);
        let (mut out, mut bytes) = (Vec::new(), 0usize);
        for kv in self.envelopes.range(from..=to) {
            let (_, v) = kv?;
            let full = out.len() >= max_count || bytes + v.len() > max_bytes;
            if full && bytes > 0 {
                return Ok((out, true));
            }
            // What is read counts, served or not: a range of skipped envelopes costs a page.
            bytes += v.len();
            if envelope::is_chained(&v) {
                out.push(v.to_vec());
            }
            // Peers refuse envelopes of the codec before chains; they stay local.
        }
        Ok((out, false))
    }

    /// Calls `f` with every stored envelope of `author` in `dataset` with a sequence above
    /// `after`, in sequence order.
    pub fn for_each_envelope_of(
        &self,
        dataset: &DatasetId,
        author: &AuthorId,
        after: u64,
        mut f: impl FnMut(Envelope) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let (_, hi) = keys::author_range(dataset, author);
        let lo = keys::envelope(dataset, author, after.saturating_add(1));
        for kv in self.envelopes.range(lo..=hi) {
            let (k, v) = kv?;
            f(Envelope::decode(&v).map_err(|e: envelope::Error| corrupt("envelope", &k, e))?)?;
        }
        Ok(())
    }

    /// Calls `f` with every stored envelope of `dataset` that `vv` does not cover, per author in
    /// sequence order. Seeks past covered history instead of scanning it.
    pub fn for_each_envelope_after(
        &self,
        dataset: &DatasetId,
        vv: &VersionVector,
        mut f: impl FnMut(Envelope) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut cursor = keys::dataset_prefix(dataset);
        while let Some(author) = self.next_author(dataset, &cursor)? {
            self.for_each_envelope_of(dataset, &author, vv.get(&author), &mut f)?;
            let (_, hi) = keys::author_range(dataset, &author);
            cursor = hi;
            cursor.push(0);
        }
        Ok(())
    }

    fn next_author(&self, dataset: &DatasetId, from: &[u8]) -> Result<Option<AuthorId>, Error> {
        let prefix = keys::dataset_prefix(dataset);
        match self.envelopes.range(from.to_vec()..).next() {
            Some(kv) => {
                let (k, _) = kv?;
                Ok(k.strip_prefix(prefix.as_slice()).and_then(keys::author_of))
            }
            None => Ok(None),
        }
    }

    /// Bytes `dataset` takes in the store: its envelopes (keys and values) and its snapshot.
    /// Reads every envelope key of the dataset: O(envelopes).
    pub fn dataset_bytes(&self, dataset: &DatasetId) -> u64 {
        let envelopes: u64 = self
            .envelopes
            .scan_prefix(keys::dataset_prefix(dataset))
            .filter_map(Result::ok)
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum();
        let snapshot = self
            .snapshots
            .get(dataset.to_string().as_bytes())
            .ok()
            .flatten()
            .map_or(0, |v| v.len() as u64);
        envelopes + snapshot
    }

    /// Number of envelopes stored for `dataset`.
    pub fn envelope_count(&self, dataset: &DatasetId) -> usize {
        self.envelopes
            .scan_prefix(keys::dataset_prefix(dataset))
            .count()
    }

    /// Saves a snapshot of `dataset`.
    pub fn put_snapshot(&self, dataset: &DatasetId, snap: &Snapshot) -> Result<(), Error> {
        let vv = snap.vv.encode();
        let mut bytes = Vec::with_capacity(4 + vv.len() + snap.doc.len());
        bytes.extend_from_slice(&(vv.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&vv);
        bytes.extend_from_slice(&snap.doc);
        self.wrote(self.snapshots.insert(dataset.to_string().as_bytes(), bytes))?;
        Ok(())
    }

    /// Drops the snapshot of `dataset` (it holds changes set aside since): the next load replays
    /// every stored envelope.
    pub fn remove_snapshot(&self, dataset: &DatasetId) -> Result<(), Error> {
        self.wrote(self.snapshots.remove(dataset.to_string().as_bytes()))?;
        Ok(())
    }

    /// The latest snapshot of `dataset`, if one was taken.
    pub fn snapshot(&self, dataset: &DatasetId) -> Result<Option<Snapshot>, Error> {
        let key = dataset.to_string();
        let Some(bytes) = self.snapshots.get(key.as_bytes())? else {
            return Ok(None);
        };
        let bad = |d: &str| corrupt("snapshot", key.as_bytes(), d);
        let (len, rest) = bytes.split_first_chunk::<4>().ok_or_else(|| bad("short"))?;
        let len = u32::from_be_bytes(*len) as usize;
        if rest.len() < len {
            return Err(bad("short"));
        }
        let (vv, doc) = rest.split_at(len);
        let vv =
            VersionVector::decode(vv).map_err(|e: version::DecodeError| bad(&e.to_string()))?;
        Ok(Some(Snapshot {
            vv,
            doc: doc.to_vec(),
        }))
    }

    /// Waits until everything written before the call is on disk. Concurrent callers share flushes.
    pub async fn durable(&self) -> Result<Duration, Error> {
        self.writable()?;
        self.flusher.durable().await
    }

    /// The outcome of a write: an I/O error is the disk failing this store (recorded; the
    /// store takes no more writes).
    fn wrote<T>(&self, r: sled::Result<T>) -> Result<T, Error> {
        r.map_err(|e| match Error::from(e) {
            Error::DiskFailed(why) => Error::DiskFailed(self.failure.set(&why)),
            other => other,
        })
    }

    /// Fails with [`Error::DiskFailed`] once the disk has failed this store.
    pub fn writable(&self) -> Result<(), Error> {
        match self.failure.get() {
            Some(why) => Err(Error::DiskFailed(why)),
            None => Ok(()),
        }
    }

    /// Records that the disk failed this store (a wait on it that never ended); returns the
    /// failure recorded first.
    pub(crate) fn mark_failed(&self, why: &str) -> String {
        self.failure.set(why)
    }

    /// Why the disk failed this store, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure.get()
    }

    /// Whether the disk takes writes again: writes, syncs and removes a file of `bytes` in the
    /// store's directory (sled reads only its own files there). For a store the disk failed,
    /// asked until space is back.
    pub fn disk_takes(&self, bytes: usize) -> bool {
        let probe = self.path.join("space-probe");
        let wrote = write_probe(&probe, bytes);
        let _ = std::fs::remove_file(&probe);
        wrote.is_ok()
    }

    /// Flushes now, blocking the calling thread (shutdown, tests).
    pub fn flush_blocking(&self) -> Result<(), Error> {
        self.writable()?;
        self.db.flush()?;
        Ok(())
    }

    /// Opens (or creates) the tree `name` for a module that keeps its own key layout (the audit
    /// log). Its writes are flushed with everything else.
    pub(crate) fn open_tree(&self, name: &str) -> Result<sled::Tree, Error> {
        Ok(self.db.open_tree(name)?)
    }

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

fn corrupt(what: &'static str, key: &[u8], e: impl std::fmt::Display) -> Error {
    Error::Corrupt {
        what,
        key: String::from_utf8_lossy(key).chars().take(120).collect(),
        detail: e.to_string(),
    }
}

#[cfg(test)]
mod tests;
