//! What the node tells of itself (`GET /v1/node`) and of the datasets it holds, with their
//! counts (`GET /v1/datasets`).

use serde::Serialize;

use crate::apps::App;
use crate::dataset::Meta;
use crate::naming::DatasetId;

use super::dataset::Dataset;
use super::{observe, Loading, Node};

/// What `GET /v1/node` tells.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    /// Organization.
    pub org: String,
    /// Mesh.
    pub mesh: String,
    /// libp2p PeerId (derived from the identity key).
    pub peer_id: String,
    /// Hex ed25519 public key: the author id on envelopes.
    pub author: String,
    /// Hex X25519 public key for key wrapping.
    pub agreement_key: String,
    /// HTTP API address.
    pub api: String,
    /// Configured libp2p listen addresses.
    pub listen: Vec<String>,
    /// fogmesh version.
    pub version: &'static str,
    /// Why the disk failed the store, once it did (writes are refused from then on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_failed: Option<String>,
    /// Bytes the store takes on disk.
    pub store_bytes: u64,
    /// Resident memory of the node process, bytes (0 where the system does not tell).
    pub memory_bytes: u64,
    /// While the node starts: how many of the datasets held at the start are loaded (absent
    /// once it has started whole: every dataset loaded and its mesh running). Shown to the
    /// admin only (it counts private datasets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loading: Option<Loading>,
}

/// A dataset as listed: metadata plus counts.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetInfo {
    /// Metadata.
    #[serde(flatten)]
    pub meta: Meta,
    /// Records currently present.
    pub records: usize,
    /// Envelopes (write batches, all authors) held.
    pub envelopes: u64,
    /// Bytes it takes in the store (envelopes and snapshot), counted again at most every 30 s.
    pub bytes: u64,
    /// Whether this node can open it: in clear, or sealed and a key reached it. A sealed
    /// dataset without a key is held as ciphertext only, to relay it.
    pub readable: bool,
    /// True while the dataset is still loading after the node started (its counts then read
    /// 0, and it is refused with `loading` until it is loaded).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub loading: bool,
}

impl Node {
    /// Identity and addresses.
    pub fn info(&self) -> Info {
        let i = &self.inner;
        Info {
            org: i.config.org.clone(),
            mesh: i.config.mesh.clone(),
            peer_id: i.peer_id.clone(),
            author: i.identity.author().to_string(),
            agreement_key: hex::encode(i.identity.agreement_public()),
            api: i.config.api.to_string(),
            listen: i.config.listen.clone(),
            version: env!("CARGO_PKG_VERSION"),
            disk_failed: self.disk_failed(),
            store_bytes: i.store.size_on_disk(),
            memory_bytes: observe::resident_bytes(),
            loading: self.loading(),
        }
    }

    /// Datasets the caller holds any right on, with counts (blocking: a stale byte count reads
    /// the dataset's envelope keys).
    pub fn datasets(&self, caller: &App) -> Vec<DatasetInfo> {
        let mut out: Vec<DatasetInfo> = self
            .all_datasets()
            .into_iter()
            .filter(|d| self.sees(caller, d))
            .map(|d| self.listed(&d))
            .collect();
        out.sort_by(|a, b| a.meta.id.cmp(&b.meta.id));
        out
    }

    /// Dataset `id` with its counts, if the caller holds a right on it (blocking, as
    /// [`Self::datasets`]).
    pub fn dataset_info(&self, caller: &App, id: &DatasetId) -> Option<DatasetInfo> {
        self.held(id)
            .filter(|d| self.sees(caller, d))
            .map(|d| self.listed(&d))
    }

    fn listed(&self, d: &Dataset) -> DatasetInfo {
        let loading = !d.is_loaded();
        let (records, envelopes) = if loading { (0, 0) } else { d.stats() };
        DatasetInfo {
            meta: crate::dataset::Meta::clone(&d.meta),
            records,
            envelopes,
            bytes: d.bytes(&self.inner.store),
            readable: !d.meta.encrypted || d.has_keys(&self.inner.identity),
            loading,
        }
    }
}
