//! Envelopes: the unit of replication. One envelope carries one Automerge change of one dataset by
//! one author, with the author's sequence number, the key epoch it is sealed under, the author's HLC
//! time, and an ed25519 signature over all of it.
//!
//! Wire format, version 1 (integers big-endian):
//!
//! ```text
//! "FME" 0x01 | u16 dataset-len | dataset | author[32] | seq u64 | epoch u64 | hlc u64
//!            | u32 payload-len | payload | signature[64]
//! ```
//!
//! The signature covers [`SIGNING_DOMAIN`] followed by every byte before it, so an envelope cannot be
//! re-labelled (other dataset, sequence or epoch) without breaking it. Decoding is strict: exact
//! lengths, no trailing bytes, capped sizes; nothing a peer sends can make it panic.
//!
//! ```
//! use fogmesh::{envelope::Envelope, identity::Identity, naming::DatasetId};
//! let id = Identity::from_seed([7; 32]);
//! let ds = DatasetId::parse("hospital/flu-cases").unwrap();
//! let env = Envelope::seal(&id, ds, 1, 0, 42, b"change bytes".to_vec());
//! let wire = env.encode();
//! assert_eq!(Envelope::decode_verified(&wire).unwrap(), env);
//! ```

use crate::identity::{AuthorId, Identity};
use crate::naming::DatasetId;

/// Domain-separation tag prefixed to the signed bytes.
pub const SIGNING_DOMAIN: &[u8] = b"fogmesh/envelope/v1\0";
/// Codec version written by this build.
pub const VERSION: u8 = 1;
/// Largest payload accepted, in bytes.
pub const MAX_PAYLOAD: usize = 16 * 1024 * 1024;
/// Largest encoded envelope accepted, in bytes.
pub const MAX_ENCODED: usize = MAX_PAYLOAD + 1024;
const MAGIC: &[u8; 3] = b"FME";

/// Why an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Structurally malformed bytes.
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
    /// A codec version this build does not speak.
    #[error("envelope codec version {0} is not supported (this build speaks {VERSION})")]
    Version(u8),
    /// Too large.
    #[error("envelope of {0} bytes exceeds the cap of {MAX_ENCODED}")]
    TooLarge(usize),
    /// The signature does not verify.
    #[error("envelope signature does not verify")]
    BadSignature,
}

/// A signed change of one dataset by one author.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The dataset changed.
    pub dataset: DatasetId,
    /// Who wrote it.
    pub author: AuthorId,
    /// The author's sequence number in this dataset, from 1, without gaps.
    pub seq: u64,
    /// The key epoch the payload is sealed under (0: plaintext).
    pub epoch: u64,
    /// The author's HLC timestamp when it wrote the change.
    pub hlc: u64,
    /// The (possibly sealed) Automerge change bytes.
    pub payload: Vec<u8>,
    /// ed25519 signature by `author` over the signed bytes.
    pub signature: [u8; 64],
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.0.len() < n {
            return Err(Error::Malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        self.take(N)?
            .try_into()
            .map_err(|_| Error::Malformed("truncated"))
    }

    fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_be_bytes(self.array()?))
    }
}

impl Envelope {
    /// Builds and signs an envelope.
    pub fn seal(
        id: &Identity,
        dataset: DatasetId,
        seq: u64,
        epoch: u64,
        hlc: u64,
        payload: Vec<u8>,
    ) -> Self {
        let mut env = Self {
            dataset,
            author: id.author(),
            seq,
            epoch,
            hlc,
            payload,
            signature: [0; 64],
        };
        let signed = env.signed_bytes();
        env.signature = id.sign(&signed);
        env
    }

    fn header_bytes(&self) -> Vec<u8> {
        let ds = self.dataset.to_string();
        let mut out = Vec::with_capacity(self.payload.len() + ds.len() + 140);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&(ds.len() as u16).to_be_bytes());
        out.extend_from_slice(ds.as_bytes());
        out.extend_from_slice(self.author.as_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.hlc.to_be_bytes());
        out.extend_from_slice(&(self.payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut msg = SIGNING_DOMAIN.to_vec();
        msg.extend_from_slice(&self.header_bytes());
        msg
    }

    /// The wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.header_bytes();
        out.extend_from_slice(&self.signature);
        out
    }

    /// Parses wire bytes without checking the signature (use [`Self::verify`] before trusting it).
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() > MAX_ENCODED {
            return Err(Error::TooLarge(bytes.len()));
        }
        let mut r = Reader(bytes);
        if r.take(3)? != MAGIC {
            return Err(Error::Malformed("bad magic"));
        }
        let [version] = r.array::<1>()?;
        if version != VERSION {
            return Err(Error::Version(version));
        }
        let ds_len = u16::from_be_bytes(r.array()?) as usize;
        let ds = std::str::from_utf8(r.take(ds_len)?).map_err(|_| Error::Malformed("dataset"))?;
        let dataset = DatasetId::parse(ds).map_err(|_| Error::Malformed("dataset"))?;
        let author = AuthorId::from_bytes(r.array()?);
        let (seq, epoch, hlc) = (r.u64()?, r.u64()?, r.u64()?);
        let len = u32::from_be_bytes(r.array()?) as usize;
        if len > MAX_PAYLOAD {
            return Err(Error::Malformed("payload too large"));
        }
        let payload = r.take(len)?.to_vec();
        let signature = r.array::<64>()?;
        if !r.0.is_empty() {
            return Err(Error::Malformed("trailing bytes"));
        }
        if seq == 0 {
            return Err(Error::Malformed("sequence 0"));
        }
        Ok(Self {
            dataset,
            author,
            seq,
            epoch,
            hlc,
            payload,
            signature,
        })
    }

    /// Checks the author's signature.
    pub fn verify(&self) -> Result<(), Error> {
        if self.author.verify(&self.signed_bytes(), &self.signature) {
            Ok(())
        } else {
            Err(Error::BadSignature)
        }
    }

    /// Parses and verifies: the only way bytes from outside should become an envelope.
    pub fn decode_verified(bytes: &[u8]) -> Result<Self, Error> {
        let env = Self::decode(bytes)?;
        env.verify()?;
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(payload: Vec<u8>) -> Envelope {
        let id = Identity::from_seed([9; 32]);
        let ds = DatasetId::parse("hospital/flu-cases").expect("valid");
        Envelope::seal(&id, ds, 3, 1, 123_456, payload)
    }

    #[test]
    fn every_single_byte_flip_is_rejected() {
        let wire = sample(b"automerge change".to_vec()).encode();
        for i in 0..wire.len() {
            for bit in [0x01u8, 0x80, 0xff] {
                let mut bad = wire.clone();
                bad[i] ^= bit;
                assert!(
                    Envelope::decode_verified(&bad).is_err(),
                    "flip {bit:#x} at byte {i} was accepted"
                );
            }
        }
    }

    #[test]
    fn truncation_and_trailing_bytes_are_rejected() {
        let wire = sample(vec![1, 2, 3]).encode();
        for n in 0..wire.len() {
            assert!(Envelope::decode(&wire[..n]).is_err(), "prefix of {n} bytes");
        }
        let mut long = wire.clone();
        long.push(0);
        assert_eq!(
            Envelope::decode(&long),
            Err(Error::Malformed("trailing bytes"))
        );
    }

    #[test]
    fn unknown_versions_are_named() {
        let mut wire = sample(vec![]).encode();
        wire[3] = 9;
        assert_eq!(Envelope::decode(&wire), Err(Error::Version(9)));
    }

    #[test]
    fn a_relabelled_envelope_fails_verification() {
        let mut env = sample(vec![5; 10]);
        env.seq += 1;
        assert_eq!(env.verify(), Err(Error::BadSignature));
    }

    proptest! {
        #[test]
        fn codec_round_trips(payload in proptest::collection::vec(any::<u8>(), 0..2048),
                             seq in 1u64.., epoch in any::<u64>(), hlc in any::<u64>()) {
            let id = Identity::from_seed([4; 32]);
            let ds = DatasetId::parse("a/b").expect("valid");
            let env = Envelope::seal(&id, ds, seq, epoch, hlc, payload);
            prop_assert_eq!(Envelope::decode_verified(&env.encode()).expect("round trip"), env);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Envelope::decode_verified(&bytes);
        }
    }
}
