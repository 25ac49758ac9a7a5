//! The mesh catalog: dataset descriptions signed by their owner, so any member may relay them, and
//! the entitlement rule that decides who receives and who may write a dataset's envelopes.
//!
//! A shared dataset's envelopes travel to every member: those without a key store and forward
//! ciphertext only (blind relays), so data stays available while its owner is away. Who can read
//! follows the grants ([`crate::access`]). A private dataset stays with its owner.

use serde::{Deserialize, Serialize};

use crate::dataset::{Meta, Visibility};
use crate::identity::Identity;

use super::roster::Roster;

/// Domain-separation tag of dataset descriptions.
pub const META_DOMAIN: &[u8] = b"fogmesh/dataset/v1\0";

/// A dataset description signed by its owner's node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedMeta {
    /// The description.
    pub meta: Meta,
    /// Hex ed25519 signature by the owner over [`META_DOMAIN`] and the JSON of `meta`.
    pub signature: String,
}

/// Why a description was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The owner is not on the roster.
    #[error("dataset {0}: its owner is not a member")]
    UnknownOwner(String),
    /// The signature does not verify against the owner's key.
    #[error("dataset {0}: bad owner signature")]
    Signature(String),
    /// Private datasets never travel.
    #[error("dataset {0} is private")]
    Private(String),
    /// A description its owner's API would have refused (a schema nested too deeply, say).
    #[error("dataset {id}: {source}")]
    Invalid {
        /// The dataset.
        id: String,
        /// What is wrong.
        source: crate::dataset::Error,
    },
}

fn signed_bytes(meta: &Meta) -> Vec<u8> {
    let mut b = META_DOMAIN.to_vec();
    b.extend_from_slice(&serde_json::to_vec(meta).unwrap_or_default());
    b
}

impl SignedMeta {
    /// Signs `meta` as its owner.
    pub fn sign(meta: Meta, owner: &Identity) -> Self {
        let signature = hex::encode(owner.sign(&signed_bytes(&meta)));
        Self { meta, signature }
    }

    /// Checks the owner's signature against the roster.
    pub fn verify(&self, roster: &Roster) -> Result<(), Error> {
        let id = self.meta.id.to_string();
        if self.meta.visibility != Visibility::Shared {
            return Err(Error::Private(id));
        }
        if let Err(source) = self.meta.check() {
            return Err(Error::Invalid { id, source });
        }
        // Signed with its owner's current key, or with one it retired since (when created before).
        let owner = roster.signing_keys(self.meta.id.owner());
        if owner.is_empty() {
            return Err(Error::UnknownOwner(id));
        }
        let sig: Option<[u8; 64]> = hex::decode(&self.signature)
            .ok()
            .and_then(|s| s.try_into().ok());
        let msg = signed_bytes(&self.meta);
        let signed = |sig: &[u8; 64]| {
            owner
                .iter()
                .any(|(k, until)| self.meta.created <= *until && k.verify(&msg, sig))
        };
        match sig {
            Some(sig) if signed(&sig) => Ok(()),
            _ => Err(Error::Signature(id)),
        }
    }
}

/// Whether organization `org` receives (and relays) the envelopes of `meta`.
pub fn entitled(meta: &Meta, org: &str) -> bool {
    match meta.visibility {
        Visibility::Private => meta.id.owner() == org,
        Visibility::Shared => true,
    }
}
