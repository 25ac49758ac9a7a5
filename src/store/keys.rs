//! Key layout of the `envelopes` tree: `dataset 0x00 author[32] seq[8 BE]`. Dataset ids cannot
//! contain 0x00, so one dataset's keys never interleave with another's, and big-endian sequences
//! sort numerically.

use crate::identity::AuthorId;
use crate::naming::DatasetId;

/// `dataset 0x00`.
pub fn dataset_prefix(dataset: &DatasetId) -> Vec<u8> {
    let mut k = dataset.to_string().into_bytes();
    k.push(0);
    k
}

/// The key of one envelope.
pub fn envelope(dataset: &DatasetId, author: &AuthorId, seq: u64) -> Vec<u8> {
    let mut k = dataset_prefix(dataset);
    k.extend_from_slice(author.as_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The first and last possible keys of one author in one dataset.
pub fn author_range(dataset: &DatasetId, author: &AuthorId) -> (Vec<u8>, Vec<u8>) {
    (
        envelope(dataset, author, 0),
        envelope(dataset, author, u64::MAX),
    )
}

/// The author of a key with its dataset prefix removed.
pub fn author_of(rest: &[u8]) -> Option<AuthorId> {
    rest.get(..32).and_then(AuthorId::from_slice)
}

/// The sequence number at the end of a full key.
pub fn seq_of(key: &[u8]) -> Option<u64> {
    let tail = key.len().checked_sub(8).and_then(|i| key.get(i..))?;
    Some(u64::from_be_bytes(tail.try_into().ok()?))
}
