//! The data view: datasets as Automerge documents, and queries over their records.

pub mod doc;
pub mod query;
