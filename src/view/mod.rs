//! The data view: datasets as Automerge documents, and queries over their records.

pub mod aggregate;
pub mod amjson;
mod built;
mod claim;
pub mod condition;
pub mod doc;
pub mod flow;
mod guard;
mod lineage;
pub mod plan;
pub mod query;
pub mod sql;
mod touched;
mod waiting;
