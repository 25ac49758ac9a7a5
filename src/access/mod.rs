//! Per-application access and encryption: grants signed by a dataset's owner, epoch keys that
//! seal envelope payloads, and those keys wrapped for each entitled member node. Pure: no I/O.
//!
//! | module | reason to exist |
//! |---|---|
//! | [`grant`] | the signed capability, its canonical encoding and strict verification |
//! | [`seal`] | XChaCha20-Poly1305 sealing of envelope payloads under an epoch key |
//! | [`wrap`] | epoch keys wrapped with HPKE for one member node, signed by the owner |
//! | [`owner`] | which keys of the owner organization sign access items, and until when |
//! | [`set`] | a dataset's standing grants and wrapped keys; merge, write authority, digests |

pub mod grant;
pub mod owner;
pub mod seal;
pub mod set;
pub mod wrap;

pub use grant::{Grant, Grantee, Rights, SignedGrant};
pub use owner::{OwnerKeys, Signers};
pub use seal::EpochKey;
pub use set::{AccessSet, Bundle, Writer};
pub use wrap::WrappedKey;
