//! Every mesh message the node decodes from a peer (`mesh::proto::decode`: shape check, then
//! CBOR), chosen by the first input byte: JoinRequest, JoinResponse, SyncRequest, SyncResponse,
//! Push, PushAck, QueryRequest, QueryResponse, Answer. Then what the node does next with the
//! parts (caps, envelopes, frontiers, access bundles, catalog entries, evidence, rosters,
//! query filters and aggregations, answer groups).
//!
//! Asserts: a decoded message re-encodes to bytes that decode again, and encoding is stable
//! (encode(decode(encode(m))) == encode(m)); the inner decoders never panic on what the outer one
//! let through; a query filter that compiles compiles again after its CBOR round trip (owners
//! compile what requesters send).
#![no_main]

use fogmesh::access::{AccessSet, Bundle};
use fogmesh::envelope::Envelope;
use fogmesh::equivocation::Evidence;
use fogmesh::mesh::catalog::SignedMeta;
use fogmesh::mesh::proto::{self, *};
use fogmesh::mesh::roster::Roster;
use fogmesh::version::Frontier;
use fogmesh::view::aggregate::{self, Aggregation};
use fogmesh::view::plan::FilterSpec;
use fogmesh_fuzz::{ds, id, records, roster, NOW};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn round_trip<T: Serialize + DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Option<T> {
    let msg: T = proto::decode(what, bytes).ok()?;
    let once = proto::encode(&msg);
    let back: T = proto::decode(what, &once)
        .unwrap_or_else(|e| panic!("{what}: re-encoded message does not decode: {e}"));
    assert_eq!(proto::encode(&back), once, "{what}: encoding is not stable");
    Some(msg)
}

fn catalog(c: &[SignedMeta]) {
    let _ = proto::cap("catalog", c.len(), MAX_DATASETS);
    for sm in c {
        let _ = sm.verify(roster());
        let _ = fogmesh::mesh::catalog::entitled(&sm.meta, "pharmacy");
    }
}

fn access(a: &[(String, Bundle)]) {
    for (d, b) in a.iter().take(4) {
        if let Ok(d) = fogmesh::naming::DatasetId::parse(d) {
            let mut set = AccessSet::new(d);
            let _ = set.merge_bundle(b, &id(1).author());
            let _ = set.digest();
        }
    }
}

fn envelopes(e: &[serde_bytes::ByteBuf]) {
    let _ = proto::cap("envelopes", e.len(), MAX_ENVELOPES);
    for bytes in e.iter().take(16) {
        if let Ok(env) = Envelope::decode(bytes) {
            let _ = env.verify();
        }
    }
}

fn filter(f: &FilterSpec) {
    if let Ok(compiled) = f.compile() {
        let sent: FilterSpec =
            proto::decode("filter", &proto::encode(f)).expect("a filter travels");
        assert_eq!(&sent, f);
        assert_eq!(sent.compile().as_ref(), Ok(&compiled));
        for r in records() {
            let _ = compiled.matches(r);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else {
        return;
    };
    match sel % 9 {
        0 => {
            if let Some(j) = round_trip::<JoinRequest>("join", bytes) {
                let _ = j.member.author_id();
            }
        }
        1 => {
            if let Some(JoinResponse::Admitted { op }) =
                round_trip::<JoinResponse>("join answer", bytes)
            {
                if let Ok(i) = op.check(fogmesh_fuzz::MESH) {
                    assert_eq!(i, op.id());
                }
            }
        }
        2 => match round_trip::<SyncRequest>("sync", bytes) {
            Some(SyncRequest::Hello {
                datasets, access, ..
            }) => {
                let _ = proto::cap("hello", datasets.len(), MAX_DATASETS);
                let _ = proto::cap("hello access", access.len(), MAX_DATASETS);
                for (d, _) in datasets.iter().take(32) {
                    let _ = fogmesh::naming::DatasetId::parse(d);
                }
            }
            Some(SyncRequest::Fetch {
                dataset, author, ..
            }) => {
                let _ = fogmesh::naming::DatasetId::parse(&dataset);
                let _ = fogmesh::identity::AuthorId::from_hex(&author);
            }
            _ => {}
        },
        3 => match round_trip::<SyncResponse>("sync answer", bytes) {
            Some(SyncResponse::Hello {
                roster: r,
                catalog: c,
                vectors,
                access: a,
            }) => {
                if let Some(r) = r {
                    let _ = Roster::verified(&r, NOW);
                }
                catalog(&c);
                for (d, v) in vectors.iter().take(16) {
                    let _ = fogmesh::naming::DatasetId::parse(d);
                    if let Ok(f) = Frontier::decode(v) {
                        assert_eq!(f.encode(), v.as_ref());
                    }
                }
                access(&a);
            }
            Some(SyncResponse::Roster(r)) => {
                let _ = Roster::verified(&r, NOW);
            }
            Some(SyncResponse::Envelopes { envelopes: e, .. }) => envelopes(&e),
            _ => {}
        },
        4 => {
            if let Some(p) = round_trip::<Push>("push", bytes) {
                catalog(&p.catalog);
                access(&p.access);
                for ev in p.evidence.iter().take(8) {
                    if let Ok(e) = Evidence::decode(ev) {
                        let _ = e.check();
                    }
                }
                envelopes(&p.envelopes);
            }
        }
        5 => {
            let _ = round_trip::<PushAck>("push ack", bytes);
        }
        6 => match round_trip::<QueryRequest>("query", bytes) {
            Some(QueryRequest::Aggregate {
                app,
                dataset,
                filter: f,
                group_by,
                aggregates,
            }) => {
                let _ = fogmesh::naming::validate_ident("app", &app);
                let _ = fogmesh::naming::DatasetId::parse(&dataset);
                filter(&f);
                if let (Ok(fl), Ok(agg)) = (f.compile(), Aggregation::parse(&group_by, &aggregates))
                {
                    let rows = records().iter().filter(|r| fl.matches(r));
                    if let Ok(mut groups) = agg.fold(rows) {
                        agg.minimize(&mut groups);
                        aggregate::suppress_small(&mut groups, 2);
                    }
                }
            }
            Some(QueryRequest::Search { app, filter: f, .. }) => {
                let _ = fogmesh::naming::validate_ident("app", &app);
                filter(&f);
            }
            None => {}
        },
        7 => {
            if let Some(QueryResponse::Answer { body, signature }) =
                round_trip::<QueryResponse>("query answer", bytes)
            {
                let sig: Result<[u8; 64], _> = signature.as_ref().try_into();
                if let Ok(sig) = sig {
                    let _ = id(1)
                        .author()
                        .verify(&[ANSWER_DOMAIN, &body].concat(), &sig);
                }
                let _ = proto::decode::<Answer>("answer", &body);
            }
        }
        _ => {
            if let Some(Answer::Groups { groups, .. }) = round_trip::<Answer>("answer", bytes) {
                if proto::cap("groups", groups.len(), aggregate::MAX_GROUPS).is_ok() {
                    // A requester merges owners' partial groups and finishes them.
                    let agg = Aggregation::parse(
                        &["field:sym".into()],
                        &["count".into(), "avg:cases".into(), "min:cases".into()],
                    )
                    .expect("valid aggregation");
                    let part: aggregate::Groups = groups.into_iter().collect();
                    let all = aggregate::merge_all([&part, &part]);
                    for (k, p) in aggregate::ordered(&all) {
                        if agg.fits(k, p) {
                            let _ = agg.finish(k, p);
                        }
                    }
                }
            }
        }
    }
    let _ = ds();
});
