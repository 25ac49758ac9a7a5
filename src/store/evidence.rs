//! The `evidence` tree: per dataset and author, the lowest fork proven against it and the
//! evidence that proves it (see [`crate::equivocation`]). Key `dataset 0x00 author[32]`, value
//! `fork seq (u64 BE) | evidence CBOR`.

use crate::identity::AuthorId;
use crate::naming::DatasetId;

use super::{corrupt, keys, Error, Store};

fn key(dataset: &DatasetId, author: &AuthorId) -> Vec<u8> {
    let mut k = keys::dataset_prefix(dataset);
    k.extend_from_slice(author.as_bytes());
    k
}

fn split(k: &[u8], v: &[u8]) -> Result<(u64, Vec<u8>), Error> {
    let (seq, rest) = v
        .split_first_chunk::<8>()
        .ok_or_else(|| corrupt("evidence", k, "shorter than its fork"))?;
    Ok((u64::from_be_bytes(*seq), rest.to_vec()))
}

impl Store {
    /// Keeps `evidence` of a fork of `author` in `dataset` at `seq`, replacing what was kept
    /// (not yet flushed).
    pub fn put_evidence(
        &self,
        dataset: &DatasetId,
        author: &AuthorId,
        seq: u64,
        evidence: &[u8],
    ) -> Result<(), Error> {
        let mut v = seq.to_be_bytes().to_vec();
        v.extend_from_slice(evidence);
        self.wrote(self.evidence.insert(key(dataset, author), v))?;
        Ok(())
    }

    /// The fork kept against `author` in `dataset` and its evidence.
    pub fn evidence(
        &self,
        dataset: &DatasetId,
        author: &AuthorId,
    ) -> Result<Option<(u64, Vec<u8>)>, Error> {
        let k = key(dataset, author);
        self.evidence.get(&k)?.map(|v| split(&k, &v)).transpose()
    }

    /// Every fork kept in `dataset`: author and sequence.
    pub fn forks(&self, dataset: &DatasetId) -> Result<Vec<(AuthorId, u64)>, Error> {
        let prefix = keys::dataset_prefix(dataset);
        let mut out = Vec::new();
        for kv in self.evidence.scan_prefix(&prefix) {
            let (k, v) = kv?;
            let author = k
                .strip_prefix(prefix.as_slice())
                .and_then(keys::author_of)
                .ok_or_else(|| corrupt("evidence", &k, "bad key"))?;
            out.push((author, split(&k, &v)?.0));
        }
        Ok(out)
    }

    /// Every fork kept: dataset, author and sequence.
    pub fn all_forks(&self) -> Result<Vec<(DatasetId, AuthorId, u64)>, Error> {
        let mut out = Vec::new();
        for kv in self.evidence.iter() {
            let (k, v) = kv?;
            let at = k
                .iter()
                .position(|b| *b == 0)
                .ok_or_else(|| corrupt("evidence", &k, "bad key"))?;
            let id = std::str::from_utf8(&k[..at])
                .ok()
                .and_then(|s| DatasetId::parse(s).ok());
            let author = keys::author_of(&k[at + 1..]);
            let (Some(id), Some(author)) = (id, author) else {
                return Err(corrupt("evidence", &k, "bad key"));
            };
            out.push((id, author, split(&k, &v)?.0));
        }
        Ok(out)
    }
}
