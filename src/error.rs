//! The crate's error: each module's own error, plus the outcomes of authorization and lookup.

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
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] store::Error),
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
    /// Something needed is not available now: a dataset stopped accepting writes after a
    /// storage failure (restart the node), a key that has not arrived yet (retry shortly), ...
    /// The message says which.
    #[error("{0}")]
    Unavailable(String),
    /// The mesh or the network could not do what was asked (a peer unreachable, the mesh not
    /// running).
    #[error("mesh: {0}")]
    Network(String),
    /// A background task failed.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Shorthand for results of [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
