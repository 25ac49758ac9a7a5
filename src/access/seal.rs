//! Sealing envelope payloads: XChaCha20-Poly1305 under a dataset's epoch key, with a random
//! 192-bit nonce per seal (collisions are negligible at any volume a key sees) and associated data
//! binding the dataset, author, sequence and epoch, so a sealed payload moved to another envelope
//! does not open.
//!
//! Sealed form: `nonce[24] | ciphertext | tag[16]`.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use zeroize::Zeroizing;

use crate::identity::AuthorId;
use crate::naming::DatasetId;

/// Domain-separation tag at the start of the associated data.
pub const SEAL_DOMAIN: &[u8] = b"fogmesh/seal/v1\0";
/// Nonce length.
pub const NONCE_BYTES: usize = 24;
/// Bytes a seal adds to its plaintext.
pub const OVERHEAD: usize = NONCE_BYTES + 16;

/// Why a payload did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sealed payload of {dataset} #{seq} (epoch {epoch}) does not open")]
pub struct OpenError {
    /// Dataset.
    pub dataset: String,
    /// Sequence.
    pub seq: u64,
    /// Epoch.
    pub epoch: u64,
}

/// One dataset's symmetric key for one epoch. Zeroized on drop; never printed.
#[derive(Clone)]
pub struct EpochKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for EpochKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EpochKey(..)")
    }
}

impl EpochKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut *k);
        Self(k)
    }

    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The raw bytes (for wrapping only).
    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&*self.0).into())
    }
}

/// Where a sealed payload belongs: what the associated data binds.
#[derive(Debug, Clone, Copy)]
pub struct Slot<'a> {
    /// Dataset.
    pub dataset: &'a DatasetId,
    /// Author.
    pub author: &'a AuthorId,
    /// Author's sequence number.
    pub seq: u64,
    /// Key epoch.
    pub epoch: u64,
}

impl Slot<'_> {
    fn aad(&self) -> Vec<u8> {
        let ds = self.dataset.to_string();
        let mut a = Vec::with_capacity(SEAL_DOMAIN.len() + ds.len() + 56);
        a.extend_from_slice(SEAL_DOMAIN);
        a.extend_from_slice(&(ds.len() as u16).to_be_bytes());
        a.extend_from_slice(ds.as_bytes());
        a.extend_from_slice(self.author.as_bytes());
        a.extend_from_slice(&self.seq.to_be_bytes());
        a.extend_from_slice(&self.epoch.to_be_bytes());
        a
    }

    fn error(&self) -> OpenError {
        OpenError {
            dataset: self.dataset.to_string(),
            seq: self.seq,
            epoch: self.epoch,
        }
    }
}

/// Seals `plaintext` for `slot` under `key`.
pub fn seal(key: &EpochKey, slot: Slot<'_>, plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_BYTES];
    rand::thread_rng().fill_bytes(&mut nonce);
    let aad = slot.aad();
    let ct = key
        .cipher()
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        // Encryption fails only for inputs beyond 256 GiB; payloads are capped far below.
        .unwrap_or_default();
    let mut out = Vec::with_capacity(NONCE_BYTES + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

/// Opens a payload sealed for `slot` under `key`.
pub fn open(key: &EpochKey, slot: Slot<'_>, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
    if sealed.len() < OVERHEAD {
        return Err(slot.error());
    }
    let (nonce, ct) = sealed.split_at(NONCE_BYTES);
    let aad = slot.aad();
    key.cipher()
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
        .map_err(|_| slot.error())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn parts() -> (DatasetId, DatasetId, AuthorId, AuthorId) {
        (
            DatasetId::parse("hospital/flu-daily").expect("valid"),
            DatasetId::parse("hospital/other").expect("valid"),
            AuthorId::from_bytes([1; 32]),
            AuthorId::from_bytes([2; 32]),
        )
    }

    #[test]
    fn no_nonce_repeats_across_a_million_seals() {
        let key = EpochKey::generate();
        let (ds, _, author, _) = parts();
        let mut seen = HashSet::with_capacity(1_000_000);
        for seq in 1..=1_000_000u64 {
            let slot = Slot {
                dataset: &ds,
                author: &author,
                seq,
                epoch: 1,
            };
            let sealed = seal(&key, slot, b"x");
            let nonce: [u8; NONCE_BYTES] = sealed[..NONCE_BYTES].try_into().expect("24 bytes");
            assert!(seen.insert(nonce), "nonce repeated at seal {seq}");
        }
        assert_eq!(seen.len(), 1_000_000);
    }

    #[test]
    fn a_payload_moved_to_another_slot_or_key_does_not_open() {
        let key = EpochKey::generate();
        let (ds, other_ds, author, other_author) = parts();
        let slot = Slot {
            dataset: &ds,
            author: &author,
            seq: 5,
            epoch: 2,
        };
        let sealed = seal(&key, slot, b"marker-secret");
        assert_eq!(open(&key, slot, &sealed).expect("opens"), b"marker-secret");
        let moved = [
            Slot {
                dataset: &other_ds,
                ..slot
            },
            Slot { seq: 6, ..slot },
            Slot { epoch: 3, ..slot },
            Slot {
                author: &other_author,
                ..slot
            },
        ];
        for m in moved {
            assert!(open(&key, m, &sealed).is_err(), "opened in {m:?}");
        }
        assert!(open(&EpochKey::generate(), slot, &sealed).is_err());
        let mut flipped = sealed.clone();
        flipped[30] ^= 1;
        assert!(open(&key, slot, &flipped).is_err());
        assert!(open(&key, slot, &sealed[..OVERHEAD - 1]).is_err());
        assert!(!sealed.windows(6).any(|w| w == b"marker"));
    }
}
