//! The crate's error: each module's own error, plus the outcomes of authorization and lookup.

use crate::naming::DatasetId;
use crate::{apps, audit, config, dataset, identity, naming, record, store, view};

/// Everything a [`crate::Node`] operation can fail with. The HTTP API maps each variant to a
/// status code (see `api::error`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad name.
    #[error(transparent)]
    Name(#[from] naming::Error),
    /// A bad record or batch.
    #[error(transparent)]
    Record(#[from] record::Error),
    /// A malformed query.
    #[error(transparent)]
    Query(#[from] view::query::Error),
    /// A bad dataset spec.
    #[error(transparent)]
    Dataset(#[from] dataset::Error),
    /// A bad app or right.
    #[error(transparent)]
    App(#[from] apps::Error),
    /// Any other invalid input, with what is wrong.
    #[error("{0}")]
    Invalid(String),
    /// No valid bearer token.
    #[error("missing or unknown bearer token")]
    Unauthorized,
    /// The caller lacks the right.
    #[error("{0}")]
    Forbidden(String),
    /// No such dataset or record.
    #[error("{0}")]
    NotFound(String),
    /// The thing already exists.
    #[error("{0}")]
    Conflict(String),
    /// Storage failed (a failed disk is [`Unavailable::DiskFailed`]).
    #[error(transparent)]
    Store(store::Error),
    /// The audit log failed.
    #[error(transparent)]
    Audit(#[from] audit::Error),
    /// A document operation failed.
    #[error(transparent)]
    Doc(#[from] view::doc::Error),
    /// Keys could not be loaded.
    #[error(transparent)]
    Identity(#[from] identity::Error),
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] config::Error),
    /// Something needed is not available now; the reason says what, and whether to retry or
    /// to act.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// The mesh or the network could not do what was asked (a peer unreachable, the mesh not
    /// running).
    #[error("mesh: {0}")]
    Network(String),
    /// A background task failed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<store::Error> for Error {
    fn from(e: store::Error) -> Self {
        match e {
            store::Error::DiskFailed(why) => Unavailable::DiskFailed(why).into(),
            other => Self::Store(other),
        }
    }
}

/// Why something is not available now (HTTP 503, with `reason` in the error body and, when a
/// retry soon may succeed, a `Retry-After` header).
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// The node's disk failed a write or a flush (full, or an I/O error): nothing more is
    /// acknowledged until the node restarts, which it does by itself once space is back.
    #[error("this node's disk failed ({0}): writes are refused and nothing more is acknowledged; reads go on. Free space in the node's home: the node restarts itself once its disk takes writes again")]
    DiskFailed(String),
    /// A write of the dataset failed to reach the store: it takes no more writes until a
    /// restart rebuilds it from the store.
    #[error("dataset {0} is unavailable after a storage failure; restart the node")]
    StorageFailed(DatasetId),
    /// An earlier write of the dataset failed to store (its later ones are refused in turn).
    #[error("an earlier write of this dataset failed to store; restart the node")]
    EarlierWriteFailed,
    /// The dataset's newest epoch key has not reached this node yet.
    #[error("{dataset}: the key of epoch {epoch} has not reached this node yet; retry shortly")]
    KeyNotArrived {
        /// The dataset.
        dataset: DatasetId,
        /// The epoch waited for.
        epoch: u64,
    },
    /// The dataset's access set holds as many key epochs as it may.
    #[error("{0}: no room for another key epoch")]
    KeyTableFull(DatasetId),
    /// This node's keys are being rotated; it restarts with its new keys shortly.
    #[error("this node's keys are being rotated; it restarts with its new keys in a few seconds: retry then")]
    Rotating,
    /// This node's key was proven to equivocate in the dataset: it writes nothing more there.
    #[error("{dataset}: this node's key was found signing two histories here (from its change {seq} on, set aside on every node); rotate the node's key (fogmesh key rotate) to write again")]
    Equivocated {
        /// The dataset.
        dataset: DatasetId,
        /// The fork.
        seq: u64,
    },
    /// A change of this node's was set aside, or waits for a change that was.
    #[error("{0}: a change of this node's was set aside, or waits for a change that was (an equivocating or revoked writer's); rotate the node's key (fogmesh key rotate) to write again")]
    ChainBroken(DatasetId),
    /// Admitted to a mesh, but its roster could not be fetched from the inviter.
    #[error("admitted, but the roster could not be fetched from the inviter ({0}); run the same join again")]
    RosterNotFetched(String),
    /// As much of this work runs at once as may: retry shortly.
    #[error("{0}: as many run at once as the node allows; retry in a second")]
    Busy(&'static str),
    /// The node started a moment ago and has not loaded the dataset yet.
    #[error("{0} is still loading: the node started a moment ago; retry shortly")]
    Loading(DatasetId),
    /// The node started a moment ago: its mesh, flows, grants and writes to sealed shared
    /// datasets wait until every dataset is loaded and the mesh runs.
    #[error("the node started a moment ago: {0} once every dataset is loaded and the mesh runs; retry shortly")]
    Starting(&'static str),
}

impl Unavailable {
    /// A stable machine-readable name (`storage_failed`, `key_not_arrived`, ...).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::DiskFailed(_) => "disk_failed",
            Self::StorageFailed(_) => "storage_failed",
            Self::EarlierWriteFailed => "earlier_write_failed",
            Self::KeyNotArrived { .. } => "key_not_arrived",
            Self::KeyTableFull(_) => "key_table_full",
            Self::Rotating => "rotating",
            Self::Equivocated { .. } => "equivocated",
            Self::ChainBroken(_) => "chain_broken",
            Self::RosterNotFetched(_) => "roster_not_fetched",
            Self::Busy(_) => "busy",
            Self::Loading(_) => "loading",
            Self::Starting(_) => "starting",
        }
    }

    /// Seconds after which a retry may succeed, for a cause that passes by itself.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::KeyNotArrived { .. } => Some(1),
            Self::DiskFailed(_) => Some(30),
            Self::Rotating => Some(5),
            Self::RosterNotFetched(_) => Some(5),
            Self::Busy(_) | Self::Loading(_) | Self::Starting(_) => Some(1),
            _ => None,
        }
    }
}

/// Shorthand for results of [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
