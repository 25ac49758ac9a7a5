//! The mesh's messages, as they travel inside `net::Frame`s: CBOR, one enum per protocol. Pure:
//! encoding and decoding only, with every collection capped before it is trusted.
//!
//! ```text
//! /fogmesh/join/2   JoinRequest  -> JoinResponse   a new node redeems its invitation; the answer is
//!                                                  the admin-signed admission alone
//! /fogmesh/sync/4   SyncRequest  -> SyncResponse   Hello (roster digest, per-dataset frontier
//!                                                  digests) -> roster if it differs, catalog, the
//!                                                  frontiers that differ; Roster -> the whole roster
//!                                                  (a newcomer's first); RosterChanged (pull mine);
//!                                                  Fetch (one author's envelopes, a byte-capped page)
//!                                                  access state (grants, wrapped keys) that differs
//! /fogmesh/push/3   Push         -> PushAck        new envelopes, changed access state and
//!                                                  evidence of equivocation, eagerly
//! /fogmesh/query/1  QueryRequest -> QueryResponse  an aggregate or a search, answered by the owner
//!                                                  over its own data, signed
//! ```

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::catalog::SignedMeta;
use super::govern::Op;
use super::roster::{Member, Roster};
use crate::access::Bundle;

/// Most datasets one Hello may list.
pub const MAX_DATASETS: usize = 4096;
/// Datasets one Hello lists: a page stays far below the request cap (256 KiB) even with the
/// longest names, so any number of datasets catches up, one page at a time.
pub const HELLO_PAGE: usize = 500;
/// Most envelopes one Push or one Fetch page may carry.
pub const MAX_ENVELOPES: usize = 4096;
/// Bytes of access sets one Hello answer carries at most (beyond the one that crosses it);
/// the rest follow in later rounds.
pub const HELLO_ACCESS_BYTES: usize = 4 * 1024 * 1024;
/// Bytes of envelopes one Fetch page aims at.
pub const PAGE_BYTES: usize = 4 * 1024 * 1024;

/// A message that does not decode or breaks a cap.
#[derive(Debug, thiserror::Error)]
#[error("malformed {what}: {detail}")]
pub struct Error {
    /// Which message.
    pub what: &'static str,
    /// Why.
    pub detail: String,
}

/// A new node asks the member that invited it to admit it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The invitation's one-time secret (hex).
    pub secret: String,
    /// What the new node says about itself; its `peer_id` must be the connection's.
    pub member: Member,
}

/// The inviter's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum JoinResponse {
    /// Admitted: the admission the inviter signed. The roster follows over `sync` (a roster
    /// of hundreds of members does not fit a join answer).
    Admitted {
        /// The admission.
        op: Box<Op>,
    },
    /// Refused, and why.
    Refused {
        /// The reason.
        reason: String,
    },
}

/// Catch-up requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SyncRequest {
    /// What the requester holds, as digests.
    Hello {
        /// Its roster digest.
        roster: [u8; 32],
        /// Per dataset held: id and frontier digest (`crate::version::Frontier`).
        datasets: Vec<(String, [u8; 32])>,
        /// Per dataset held: id and access-state digest.
        #[serde(default)]
        access: Vec<(String, [u8; 32])>,
        /// A page of the requester's datasets (sorted by id): those after this id...
        #[serde(default)]
        after: Option<String>,
        /// ...up to the last one listed when more pages follow, to the end otherwise. The
        /// responder answers for the datasets in that range only.
        #[serde(default)]
        more: bool,
    },
    /// The responder's whole roster, please (a newcomer asks its inviter).
    Roster,
    /// The requester's roster changed and differs from the responder's: catch up with it.
    RosterChanged,
    /// One author's envelopes of one dataset with sequence in `(after, upto]`.
    Fetch {
        /// Dataset id.
        dataset: String,
        /// Author key (hex).
        author: String,
        /// Exclusive start.
        after: u64,
        /// Inclusive end.
        upto: u64,
    },
}

/// Catch-up answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SyncResponse {
    /// Answer to Hello.
    Hello {
        /// The responder's roster, when its digest differs from the requester's.
        roster: Option<Roster>,
        /// Datasets the requester may hold and did not list.
        catalog: Vec<SignedMeta>,
        /// Encoded frontiers (`crate::version::Frontier`) of listed datasets whose digest
        /// differs.
        vectors: Vec<(String, serde_bytes::ByteBuf)>,
        /// Access state (grants, wrapped keys) of datasets whose access digest differs.
        #[serde(default)]
        access: Vec<(String, Bundle)>,
    },
    /// Answer to Roster.
    Roster(Roster),
    /// Answer to RosterChanged.
    Noted,
    /// Answer to Fetch: encoded envelopes in order; `more` when the range continues.
    Envelopes {
        /// The envelopes.
        envelopes: Vec<serde_bytes::ByteBuf>,
        /// More remain.
        more: bool,
    },
    /// The request was understood and refused.
    Refused(String),
}

/// New envelopes, pushed by their author's node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Push {
    /// Descriptions of datasets the receiver may not know yet.
    pub catalog: Vec<SignedMeta>,
    /// Access state (grants, wrapped keys) that changed.
    #[serde(default)]
    pub access: Vec<(String, Bundle)>,
    /// Encoded envelopes.
    pub envelopes: Vec<serde_bytes::ByteBuf>,
    /// Evidence of equivocation (`crate::equivocation::Evidence`, CBOR), at most
    /// [`super::forks::MAX_EVIDENCE`].
    #[serde(default)]
    pub evidence: Vec<serde_bytes::ByteBuf>,
    /// The envelope travels along its tree (see [`super::tree`]): the receiver passes it on to
    /// its children there. Only a push of one envelope is passed on. False (and pushes of
    /// earlier versions): passed on to no one.
    #[serde(default)]
    pub tree: bool,
}

impl Push {
    /// A push of one encoded envelope alone, to be passed on along its tree when `tree`.
    pub fn of(envelope: serde_bytes::ByteBuf, tree: bool) -> Self {
        Self {
            catalog: Vec::new(),
            access: Vec::new(),
            envelopes: vec![envelope],
            evidence: Vec::new(),
            tree,
        }
    }
}

/// The receiver's answer to a push.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PushAck {
    /// Envelopes that were new to it.
    pub accepted: u32,
}

/// A question to a dataset's owner, on behalf of one of the requester's apps.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum QueryRequest {
    /// Aggregates over one dataset the responder owns.
    Aggregate {
        /// The requesting app (of the requester's organization).
        app: String,
        /// `owner/name`.
        dataset: String,
        /// Which rows.
        filter: crate::view::plan::FilterSpec,
        /// Group-by dimensions.
        group_by: Vec<String>,
        /// Measures.
        aggregates: Vec<String>,
    },
    /// Where and when of the records of the responder's dataset `dataset` that match.
    Search {
        /// The requesting app.
        app: String,
        /// Dataset name within the responder's organization.
        dataset: String,
        /// Which rows.
        filter: crate::view::plan::FilterSpec,
        /// The name segment reported as the location.
        location_segment: u32,
        /// Most matches wanted.
        limit: u32,
    },
}

/// The owner's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum QueryResponse {
    /// A signed [`Answer`].
    Answer {
        /// CBOR of the [`Answer`].
        body: serde_bytes::ByteBuf,
        /// ed25519 signature by the owner over [`ANSWER_DOMAIN`] and `body`.
        signature: serde_bytes::ByteBuf,
    },
    /// Refused, and why (no `query` grant, no such dataset, a malformed question).
    Refused(String),
}

/// Domain-separation tag of signed answers.
pub const ANSWER_DOMAIN: &[u8] = b"fogmesh/query-answer/v1\0";

/// What an owner answers, bound to the question by its digest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Answer {
    /// Partial aggregates per group (small groups already suppressed).
    Groups {
        /// SHA-256 of the request's bytes as received.
        request: [u8; 32],
        /// Groups and their partial states (groups under the owner's minimum size left out,
        /// without saying how many: that count would itself disclose a few rows).
        groups: Vec<(
            crate::view::aggregate::GroupKey,
            crate::view::aggregate::Partial,
        )>,
    },
    /// Search matches: id, name, time, location; never data fields.
    Matches {
        /// SHA-256 of the request's CBOR.
        request: [u8; 32],
        /// The matches.
        matches: Vec<crate::node::Match>,
    },
}

/// CBOR bytes of a message.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    cbor4ii::serde::to_vec(Vec::new(), msg).unwrap_or_default()
}

/// Decodes a message; `what` names it in the error.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, Error> {
    // Counted before anything is allocated: a flood of tiny items or a deep nest is refused.
    super::shape::check(bytes).map_err(|e| Error {
        what,
        detail: e.to_string(),
    })?;
    cbor4ii::serde::from_slice(bytes).map_err(|e| Error {
        what,
        detail: e.to_string(),
    })
}

/// Fails unless `n <= cap`.
pub fn cap(what: &'static str, n: usize, cap: usize) -> Result<(), Error> {
    if n > cap {
        return Err(Error {
            what,
            detail: format!("{n} items, at most {cap} allowed"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_an_error() {
        let req = SyncRequest::Fetch {
            dataset: "hospital/flu".into(),
            author: "ab".into(),
            after: 3,
            upto: 9,
        };
        let back: SyncRequest = decode("sync", &encode(&req)).expect("decodes");
        assert!(matches!(
            back,
            SyncRequest::Fetch {
                after: 3,
                upto: 9,
                ..
            }
        ));
        let push = Push {
            catalog: vec![],
            access: vec![],
            envelopes: vec![serde_bytes::ByteBuf::from(vec![1, 2, 3])],
            evidence: vec![],
            tree: true,
        };
        let back: Push = decode("push", &encode(&push)).expect("decodes");
        assert_eq!(back.envelopes[0].as_ref(), &[1, 2, 3]);
        assert!(back.tree);
        for garbage in [&b""[..], b"\xff\xff", b"\x9f\x01"] {
            assert!(decode::<SyncRequest>("sync", garbage).is_err());
        }
        assert!(cap("push", 5, 4).is_err() && cap("push", 4, 4).is_ok());
    }
}
