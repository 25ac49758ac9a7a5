//! The audit log: a durable, hash-chained record of what was done at this node and what it
//! answered for other organizations, so that an operator can tell who granted, revoked, read,
//! queried or searched what, and an edited or truncated log is detected.
//!
//! Each [`Entry`] says when, who (`org/app`, or `org` for a peer node), what ([`Action`]), on
//! which dataset, with which [`Outcome`] (and the reason of a refusal), plus a short detail. Its
//! hash is SHA-256 over the previous entry's hash and the entry's canonical bytes ([`chain`]), so
//! changing, removing or reordering any entry breaks every link after it.
//!
//! Layout of the `audit` sled tree:
//!
//! | key | value |
//! |---|---|
//! | `e` seq\[8, big-endian\] | entry JSON |
//! | `h` | the head: the last entry's seq and hash, written right after that entry |
//! | `a` | the anchor: the first kept entry's seq and its predecessor's hash, once older entries were pruned |
//!
//! The head lets [`Log::verify`] tell a truncated tail from a short log; the anchor lets a
//! pruned log still verify. Every write is to one key (sled's multi-key batches take a global
//! lock, see docs/architecture.md); a crash between two leaves an entry just past the head or
//! entries before the anchor, which [`Log::open`] mends. Someone who rewrites the whole tree (entries, head and anchor) with
//! recomputed hashes is not detected: see docs/security.md.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use fogmesh::audit::{Action, Event, Limits, Log};
//! let dir = tempfile::tempdir()?;
//! let store = fogmesh::store::Store::open(dir.path())?;
//! let log = Log::open(&store, Limits::default())?;
//! log.record(Event::ok("hospital/admin", Action::Grant).dataset("hospital/flu"), 1_000)?;
//! log.record(Event::refused("pharmacy/marketing", Action::Read, "no read right"), 2_000)?;
//! assert!(log.verify()?.ok);
//! # Ok(()) }
//! ```

mod budget;
pub mod chain;
mod event;
mod log;

pub use budget::{ALL_REFUSALS_PER_MINUTE, REFUSALS_PER_MINUTE};
pub use chain::{Bad, Problem, Verification};
pub use event::{Action, Entry, Event, Filter, Outcome};
pub use log::{Limits, Log, Recorded};

/// Longest detail kept, in bytes (cut at a character boundary).
pub const DETAIL_CAP: usize = 512;
/// Longest refusal reason kept, in bytes.
pub const REASON_CAP: usize = 256;
/// Longest actor and dataset kept, in bytes.
pub const NAME_CAP: usize = 128;
/// New entries buffered for followers (`--follow`) before a slow one is told it lagged.
pub const EVENTS_CAP: usize = 1024;
/// Most entries one listing returns.
pub const MAX_LIST: usize = 10_000;
/// Entries a listing returns when no limit is given.
pub const DEFAULT_LIST: usize = 100;

/// A failure of the audit log itself.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// sled reported an error.
    #[error("audit log: {0}")]
    Sled(#[from] sled::Error),
    /// The store could not open the log's tree.
    #[error("audit log: {0}")]
    Store(#[from] crate::store::Error),
    /// A stored value did not decode.
    #[error("audit log: corrupt {what}: {detail}")]
    Corrupt {
        /// What kind of value (`head`, `anchor`, `entry 17`).
        what: String,
        /// The decoder's complaint.
        detail: String,
    },
}

#[cfg(test)]
mod tests;
