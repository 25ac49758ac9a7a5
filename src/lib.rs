//! fogmesh: a peer-to-peer edge collaboration mesh.
//!
//! Each organization runs one node. A node keeps its datasets as Automerge documents in a sled
//! store, signs every write batch into an envelope, and serves apps over a local HTTP API with
//! per-app rights. Raw data stays with its owner.
//!
//! # Layout
//!
//! | module | reason to exist |
//! |---|---|
//! | [`naming`] | validated names: record paths, organizations, datasets (`owner/name`) |
//! | [`hlc`] | hybrid logical clock, so skew between organizations cannot reorder causality |
//! | [`record`] | the `(id, name, time, data)` record and its input checks |
//! | [`identity`] | the node's ed25519 and X25519 keys, the PeerId derived from them |
//! | [`envelope`] | the signed, versioned unit of replication and its strict codec |
//! | [`version`] | version vectors: what a node holds, per author |
//! | [`dataset`] | dataset metadata: visibility, priority, retention, readers |
//! | [`apps`] | app tokens (stored hashed) and rights |
//! | [`access`] | grants, epoch keys, sealing, HPKE key wrapping |
//! | [`view`] | Automerge documents per dataset, and record queries |
//! | [`net`] | the libp2p networking actor: one task owns the swarm and moves byte frames between members |
//! | [`store`] | sled trees and group commit |
//! | [`node`] | the `Node` handle: the one public service interface |
//! | [`audit`] | the durable, hash-chained audit log: who did, asked or was refused what |
//! | [`api`] | HTTP/JSON, server-sent events, metrics, OpenAPI: a face of `Node` |
//! | [`mesh`] | membership (roster, invitations), dataset catalog, push and catch-up between members |
//! | [`config`] | configuration fields and defaults |
//! | [`metrics`] | Prometheus counters |
//!
//! # The path of a write
//!
//! `POST /v1/datasets/{owner}/{name}/records` -> [`api`] authenticates the token ->
//! [`Node::publish`] checks the write right and validates the batch -> on a blocking thread the
//! batch becomes one Automerge change ([`view::doc`]), sealed into a signed [`envelope::Envelope`]
//! and inserted into the store -> [`store::Store::durable`] waits for a group flush -> the app gets
//! the ids -> subscribers get events -> [`mesh`] pushes the envelope to the connected members
//! entitled to the dataset.
#![warn(missing_docs)]

pub mod access;
pub mod api;
pub mod apps;
pub mod audit;
mod codec;
pub mod config;
pub mod dataset;
pub mod envelope;
pub mod equivocation;
mod error;
pub mod hlc;
pub mod identity;
pub mod mesh;
pub mod metrics;
pub mod naming;
pub mod net;
pub mod node;
mod parallel;
pub mod record;
pub mod store;
pub mod version;
pub mod view;

pub use error::{Error, Result, Unavailable};
pub use node::Node;
