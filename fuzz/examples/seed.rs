//! Writes the seed corpora (corpus/TARGET/*) from the library's own encoders, and the fixed
//! document of the doc_apply target (data/base_doc.bin, kept if it exists: the doc_apply seeds
//! are changes on top of it).
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --example seed
//!
//! Seeds are only a starting point; `cargo fuzz cmin` keeps the corpus small afterwards.

use std::fs;
use std::path::{Path, PathBuf};

use automerge::transaction::Transactable;
use automerge::{Automerge, ObjType, ReadDoc, ROOT};
use fogmesh::access::{Bundle, EpochKey, Grant, Grantee, Rights, WrappedKey};
use fogmesh::envelope::{Envelope, GENESIS};
use fogmesh::equivocation::Evidence;
use fogmesh::identity::AuthorId;
use fogmesh::mesh::govern::{self, Action, Op, Role};
use fogmesh::mesh::invite::Invite;
use fogmesh::mesh::proto::{self, *};
use fogmesh::mesh::roster::Cert;
use fogmesh::net::Frame;
use fogmesh::version::{Frontier, VersionVector};
use fogmesh::view::doc::{Doc, Upsert};
use fogmesh::view::plan::FilterSpec;
use fogmesh_fuzz::{ds, id, join_parts, member, roster, MESH, NOW};
use serde_bytes::ByteBuf;
use serde_json::json;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn put(target: &str, name: &str, bytes: &[u8]) {
    let dir = root().join("corpus").join(target);
    fs::create_dir_all(&dir).expect("corpus dir");
    fs::write(dir.join(name), bytes).expect("write seed");
}

fn grant(seq: u64, to: &str, rights: &str, epoch: u64) -> Grant {
    Grant {
        id: format!("01J{seq:023}"),
        dataset: ds(),
        grantee: Grantee::parse(to).expect("grantee"),
        rights: Rights::parse(rights).expect("rights"),
        prefix: Some("d7".into()),
        not_after: Some(NOW + 1_000_000),
        seq,
        epoch,
        cut: 3,
        issued: NOW,
        cuts: Vec::new(),
    }
}

fn wrap(epoch: u64, to: u8) -> WrappedKey {
    let r = id(to);
    WrappedKey::wrap(
        &id(1),
        &ds(),
        epoch,
        &EpochKey::from_bytes([epoch as u8; 32]),
        r.author(),
        &r.agreement_public(),
    )
    .expect("wrap")
}

fn envelopes() -> Vec<Envelope> {
    let a = id(2);
    let e1 = Envelope::seal(&a, ds(), 1, 0, 10, GENESIS, b"change 1".to_vec());
    let e2 = Envelope::seal(&a, ds(), 2, 1, 11, e1.digest(), vec![]);
    let fork = Envelope::seal(&a, ds(), 2, 1, 12, e1.digest(), b"other".to_vec());
    let mut v1 = Envelope::seal(&id(3), ds(), 4, 0, 13, [5; 32], b"old".to_vec());
    v1.prev = None;
    v1.signature = id(3).sign(&v1.signed_message());
    vec![e1, e2, fork, v1]
}

fn main() {
    let r = roster();
    let envs = envelopes();

    // envelope
    for (i, e) in envs.iter().enumerate() {
        put("envelope", &format!("env{i}"), &e.encode());
    }
    put("envelope", "signed_message", &envs[1].signed_message());

    // version
    let (a, b, c) = (
        AuthorId::from_bytes([1; 32]),
        AuthorId::from_bytes([2; 32]),
        id(2).author(),
    );
    let mut v = VersionVector::new();
    v.set(a, 3);
    v.set(b, 9);
    let mut w = VersionVector::new();
    w.set(b, 2);
    w.set(c, 7);
    put("version", "vv_empty", &VersionVector::new().encode());
    put("version", "vv", &v.encode());
    let mut f = Frontier {
        vv: v.clone(),
        ..Frontier::default()
    };
    f.tips.insert(a, [7; 32]);
    let mut g = Frontier {
        vv: w.clone(),
        ..Frontier::default()
    };
    g.tips.insert(b, [8; 32]);
    g.tips.insert(c, [9; 32]);
    put("version", "frontier", &f.encode());
    put(
        "version",
        "vv_pair",
        &join_parts(&[&v.encode(), &w.encode()]),
    );
    put(
        "version",
        "frontier_pair",
        &join_parts(&[&f.encode(), &g.encode()]),
    );

    // grant
    let g1 = grant(1, "pharmacy/restock", "read,query", 1).sign(&id(1));
    let mut cuts = grant(2, "insurer/*", "", 2);
    cuts.prefix = None;
    cuts.not_after = None;
    cuts.cuts = vec![(id(3).author(), 12), (id(5).author(), 3)];
    let g2 = cuts.sign(&id(1));
    let g3 = grant(3, "pharmacy/restock", "read,write,query", 2).sign(&id(1));
    put("grant", "v1", &g1.encode());
    put("grant", "v2_cuts", &g2.encode());
    put(
        "grant",
        "stranger",
        &grant(1, "pharmacy/*", "write", 1).sign(&id(4)).encode(),
    );

    // wrapped_key
    let (w1, w2, w3) = (wrap(1, 2), wrap(2, 3), wrap(2, 3));
    put("wrapped_key", "k1", &w1.encode());
    put("wrapped_key", "k2", &w2.encode());

    // access_set
    let bundle = |gs: &[&fogmesh::access::SignedGrant], ws: &[&WrappedKey]| Bundle {
        grants: gs.iter().map(|g| ByteBuf::from(g.encode())).collect(),
        wraps: ws.iter().map(|w| ByteBuf::from(w.encode())).collect(),
    };
    put(
        "access_set",
        "two",
        &proto::encode(&bundle(&[&g1, &g2], &[&w1, &w2])),
    );
    put(
        "access_set",
        "superseding",
        &proto::encode(&bundle(&[&g1, &g3, &g2], &[&w1])),
    );
    put(
        "access_set",
        "two_wraps_one_slot",
        &proto::encode(&bundle(&[&g2], &[&w2, &w3])),
    );
    put("access_set", "empty", &proto::encode(&Bundle::default()));

    // roster: the fixture, one with a newer certificate, one with more governance.
    put("roster", "fixture", &proto::encode(r));
    let mut rc = r.clone();
    let mut m2 = member(2);
    m2.addresses = vec!["/ip4/10.1.1.2/tcp/7072".into()];
    m2.updated = NOW;
    rc.admit(Cert::sign(m2, &id(2)), NOW).expect("cert");
    put("roster", "cert", &proto::encode(&rc));
    let mut rg = r.clone();
    rg.sign_and_apply(
        Action::Role {
            org: "insurer".into(),
            role: Role::Admin,
        },
        &id(2),
        NOW,
    )
    .expect("role");
    let admit4 = Action::Admit {
        member: member(4),
        role: Role::Member,
        invitation: "ab".repeat(32),
    };
    rg.sign_and_apply(admit4.clone(), &id(3), NOW)
        .expect("admit by new admin");
    rg.sign_and_apply(
        Action::Remove {
            org: "pharmacy".into(),
        },
        &id(1),
        NOW,
    )
    .expect("remove");
    put("roster", "governed", &proto::encode(&rg));
    let mut rr = r.clone();
    rr.rotate(&id(3), &id(5), vec![], NOW, NOW).expect("rotate");
    put("roster", "rotated", &proto::encode(&rr));

    // govern_op: JSON arrays of operations after the fixture's heads.
    let heads = r.heads();
    let op = |action: Action, by: u8, deps: Vec<String>| Op::sign(MESH, action, deps, &id(by), NOW);
    let admit = op(admit4.clone(), 1, heads.clone());
    let role = op(
        Action::Role {
            org: "insurer".into(),
            role: Role::Admin,
        },
        2,
        heads.clone(),
    );
    let remove = op(
        Action::Remove {
            org: "pharmacy".into(),
        },
        1,
        vec![admit.id()],
    );
    let counter = op(
        Action::Remove {
            org: "hospital".into(),
        },
        2,
        heads.clone(),
    );
    let mut m5 = member(5);
    m5.org = "insurer".into();
    let rotate = op(
        Action::Rotate {
            member: m5,
            until: NOW,
            proof: govern::rotation_proof(MESH, "insurer", &id(3).author().to_string(), &id(5)),
        },
        3,
        heads.clone(),
    );
    let by_member = op(admit4, 3, heads.clone());
    let json = |ops: &[&Op]| serde_json::to_vec(ops).expect("json");
    put("govern_op", "admit", &json(&[&admit]));
    put("govern_op", "admit_remove", &json(&[&admit, &remove]));
    put(
        "govern_op",
        "mutual_removal",
        &json(&[&remove, &counter, &admit]),
    );
    put("govern_op", "role_rotate", &json(&[&role, &rotate]));
    put("govern_op", "by_member", &json(&[&by_member]));

    // invite
    let inv = Invite {
        mesh: MESH.into(),
        inviter_org: "hospital".into(),
        inviter_peer: id(1).peer_id().expect("peer id").to_string(),
        addresses: vec!["/ip4/127.0.0.1/tcp/7071".into()],
        secret: "ab".repeat(32),
        expires: NOW,
        founding: r.founding().unwrap_or_default(),
    };
    put("invite", "token", inv.encode().as_bytes());
    put(
        "invite",
        "token_ws",
        format!(
            "  {}\n",
            Invite {
                addresses: vec![],
                founding: String::new(),
                ..inv.clone()
            }
            .encode()
        )
        .as_bytes(),
    );

    // proto: selector byte, then the message.
    let sel = |s: u8, bytes: Vec<u8>| [vec![s], bytes].concat();
    let filter = FilterSpec {
        name_prefix: Some("d7".into()),
        segments: vec!["1=ward-3".into()],
        since: Some(1),
        until: Some(NOW),
        predicates: vec!["cases>=2".into(), "sym in [\"fever\",\"cough\"]".into()],
    };
    let ev = Evidence::same_seq(&envs[1], &envs[2]).expect("evidence");
    let frontier_bytes = ByteBuf::from(f.encode());
    let msgs: Vec<(&str, Vec<u8>)> = vec![
        (
            "join",
            sel(
                0,
                proto::encode(&JoinRequest {
                    secret: "ab".repeat(32),
                    member: member(4),
                }),
            ),
        ),
        (
            "join_answer",
            sel(
                1,
                proto::encode(&JoinResponse::Admitted {
                    op: Box::new(admit.clone()),
                }),
            ),
        ),
        (
            "join_refused",
            sel(
                1,
                proto::encode(&JoinResponse::Refused {
                    reason: "no".into(),
                }),
            ),
        ),
        (
            "hello",
            sel(
                2,
                proto::encode(&SyncRequest::Hello {
                    roster: r.digest(),
                    datasets: vec![("hospital/flu".into(), [1; 32])],
                    access: vec![("hospital/flu".into(), [2; 32])],
                    after: Some("a/b".into()),
                    more: true,
                }),
            ),
        ),
        (
            "fetch",
            sel(
                2,
                proto::encode(&SyncRequest::Fetch {
                    dataset: "hospital/flu".into(),
                    author: id(2).author().to_string(),
                    after: 0,
                    upto: 9,
                }),
            ),
        ),
        ("roster_req", sel(2, proto::encode(&SyncRequest::Roster))),
        (
            "hello_answer",
            sel(
                3,
                proto::encode(&SyncResponse::Hello {
                    roster: Some(r.clone()),
                    catalog: vec![],
                    vectors: vec![("hospital/flu".into(), frontier_bytes)],
                    access: vec![("hospital/flu".into(), bundle(&[&g1], &[&w1]))],
                }),
            ),
        ),
        (
            "envelopes",
            sel(
                3,
                proto::encode(&SyncResponse::Envelopes {
                    envelopes: envs.iter().map(|e| ByteBuf::from(e.encode())).collect(),
                    more: false,
                }),
            ),
        ),
        (
            "push",
            sel(
                4,
                proto::encode(&Push {
                    catalog: vec![],
                    access: vec![("hospital/flu".into(), bundle(&[&g2], &[&w2]))],
                    envelopes: vec![ByteBuf::from(envs[0].encode())],
                    evidence: vec![ByteBuf::from(ev.encode())],
                    tree: true,
                }),
            ),
        ),
        ("push_ack", sel(5, proto::encode(&PushAck { accepted: 3 }))),
        (
            "aggregate",
            sel(
                6,
                proto::encode(&QueryRequest::Aggregate {
                    app: "dash".into(),
                    dataset: "hospital/flu".into(),
                    filter: filter.clone(),
                    group_by: vec!["segment:0".into(), "bucket:1d".into(), "field:sym".into()],
                    aggregates: vec!["count".into(), "avg:cases".into(), "max:cases".into()],
                }),
            ),
        ),
        (
            "search",
            sel(
                6,
                proto::encode(&QueryRequest::Search {
                    app: "dash".into(),
                    dataset: "flu".into(),
                    filter: filter.clone(),
                    location_segment: 1,
                    limit: 10,
                }),
            ),
        ),
        (
            "query_answer",
            sel(
                7,
                proto::encode(&QueryResponse::Answer {
                    body: ByteBuf::from(vec![0xa0]),
                    signature: ByteBuf::from(vec![1; 64]),
                }),
            ),
        ),
    ];
    for (name, bytes) in &msgs {
        put("proto", name, bytes);
    }
    let groups = fogmesh::view::aggregate::Aggregation::parse(
        &["field:sym".into()],
        &["count".into(), "avg:cases".into(), "min:cases".into()],
    )
    .expect("aggregation")
    .fold(fogmesh_fuzz::records().iter())
    .expect("groups");
    let answer = Answer::Groups {
        request: [3; 32],
        groups: groups.into_iter().collect(),
    };
    put("proto", "answer", &sel(8, proto::encode(&answer)));

    // frame: frames around a few messages, and the bare messages (for shape::check).
    for (name, bytes) in msgs.iter().take(6) {
        let frame = Frame(bytes[1..].to_vec());
        put(
            "frame",
            name,
            &cbor4ii::serde::to_vec(Vec::new(), &frame).expect("frame"),
        );
    }
    put("frame", "bare_push", &msgs[8].1[1..]);
    put("frame", "indefinite", &[0x5f, 0x41, 0xaa, 0x42, 1, 2, 0xff]);

    // evidence
    put("evidence", "same_seq", &ev.encode());
    let next = Envelope::seal(&id(2), ds(), 3, 1, 13, [0xee; 32], b"x".to_vec());
    put(
        "evidence",
        "successor",
        &Evidence::successor(&envs[1], &next)
            .expect("evidence")
            .encode(),
    );

    // query
    let queries = [
        json!({"datasets": ["hospital/flu"], "where": ["cases>=2", "sym=fever"], "order_by": "-cases", "limit": 2, "select": ["id", "cases", "loc.x"]}),
        json!({"datasets": ["hospital/flu", "pharmacy/stock"], "name_prefix": "d7", "since": 5, "until": 50, "segments": ["0=d7"]}),
        json!({"datasets": ["hospital/flu"], "group_by": ["segment:0", "bucket:1d", "field:data.sym"], "aggregates": ["count", "sum:cases", "avg:r", "min:cases", "max:big"], "federated": true, "timeout_ms": 2000}),
        json!({"datasets": ["hospital/flu"], "where": ["tags in [\"a\"]", "loc.x != 1", "time<40"], "order_by": "name"}),
    ];
    for (i, q) in queries.iter().enumerate() {
        put(
            "query",
            &format!("q{i}"),
            &serde_json::to_vec(q).expect("json"),
        );
    }
    put("query", "where", b"data.loc.x >= 1");
    let tree = json!({"datasets": ["hospital/flu"], "where": [{"or": ["cases>=2", {"not": "sym is null"}, {"and": ["loc.x<3", "time>=1"]}]}]});
    put("query", "tree", &serde_json::to_vec(&tree).expect("json"));

    // sql
    let statements = [
        "SELECT segment(0) AS district, bucket('1d') AS day, sum(cases) AS cases, count(*) FROM \"hospital/flu\", clinic.flu WHERE diagnosis = 'flu' OR cases >= 5 GROUP BY district, 2 ORDER BY cases DESC LIMIT 10",
        "SELECT id, cases AS n, loc.x FROM hospital.flu WHERE NOT (sym IN ('fever', 'cough') AND cases BETWEEN 1 AND -2.5) AND x IS NOT NULL AND segment(1) = 'ward-3' AND name LIKE 'd7/%' ORDER BY n DESC LIMIT 3",
        "SELECT * FROM \"camera-3/sightings\" WHERE coat = 'red' AND time >= 1700000000000 AND flag = TRUE",
        "SELECT avg(temp), min(temp), max(temp) FROM a.b",
    ];
    for (i, s) in statements.iter().enumerate() {
        put("sql", &format!("s{i}"), s.as_bytes());
    }

    // record_batch
    let batches = [
        json!({"records": [{"name": "d7/ward-3", "data": {"cases": 3, "sym": "fever"}, "time": 10, "id": "r1"},
                           {"name": "d8", "data": {"f": 1.5, "u": u64::MAX, "n": null, "l": [1, {"a": "b"}], "o": {"p": {"q": true}}}}]}),
        json!({"records": [{"name": "d7/ward-4", "data": {"cases": 9}, "id": "base"}]}),
        json!({"delete": ["base"]}),
    ];
    for (i, b) in batches.iter().enumerate() {
        put(
            "record_batch",
            &format!("b{i}"),
            &serde_json::to_vec(b).expect("json"),
        );
    }

    doc_apply_seeds();
    println!("seeds written under {}", root().join("corpus").display());
}

fn record(id: &str, name: &str, time: u64, data: serde_json::Value) -> Upsert {
    Upsert {
        id: id.into(),
        name: name.into(),
        time,
        data: data.as_object().cloned().unwrap_or_default(),
    }
}

fn base_doc(path: &Path) -> Vec<u8> {
    if let Ok(bytes) = fs::read(path) {
        return bytes;
    }
    let mut doc = Doc::new(&[1; 32]);
    doc.write(
        &[
            record(
                "a",
                "d7/ward-3",
                10,
                json!({"cases": 3, "loc": {"x": 1}, "l": [1, 2, 3]}),
            ),
            record("b", "d7/ward-4", 20, json!({"cases": 8})),
        ],
        &[],
    )
    .expect("write");
    doc.write(
        &[
            record("c", "d8", 30, json!({"s": "x"})),
            record("a", "d7/ward-3", 11, json!({"cases": 4})),
        ],
        &[],
    )
    .expect("write");
    doc.write(&[], &["b".into()]).expect("delete");
    let bytes = doc.automerge().save();
    fs::create_dir_all(path.parent().expect("parent")).expect("data dir");
    fs::write(path, &bytes).expect("base doc");
    bytes
}

fn doc_apply_seeds() {
    let base = base_doc(&root().join("data").join("base_doc.bin"));
    let raw = |c: Option<Vec<u8>>| c.expect("a change");
    // Changes by another node through the library's own writes.
    let mut other = Doc::load(&base, &[2; 32]).expect("load");
    let c1 = raw(other
        .write(
            &[record(
                "a",
                "d7/ward-3",
                12,
                json!({"cases": 5, "loc": {"y": 2}}),
            )],
            &[],
        )
        .expect("w"));
    let c2 = raw(other
        .write(
            &[record("n", "d9", 40, json!({"k": [true, null]}))],
            &["c".into()],
        )
        .expect("w"));
    let c3 = raw(other
        .write(&[record("n", "d9", 41, json!({"k": 2}))], &[])
        .expect("w"));
    put(
        "doc_apply",
        "update",
        &[vec![0], join_parts(&[&c1])].concat(),
    );
    put(
        "doc_apply",
        "chain",
        &[vec![0], join_parts(&[&c1, &c2, &c3])].concat(),
    );
    put(
        "doc_apply",
        "waiting",
        &[vec![0], join_parts(&[&c3])].concat(),
    );
    put(
        "doc_apply",
        "out_of_order_all",
        &[vec![1], join_parts(&[&c3, &c2, &c1])].concat(),
    );
    put("doc_apply", "raw_single", &[vec![0], c2.clone()].concat());
    // Raw Automerge operations the library never writes: text, counters, lists, conflicts.
    let mut am = Automerge::load(&base)
        .expect("load")
        .with_actor(automerge::ActorId::from(&[3u8; 32][..]));
    let mut tx = am.transaction();
    let page = tx.keys(ROOT).next().expect("a page");
    let (_, page_obj) = tx.get(ROOT, &page).expect("get").expect("page");
    let text = tx.put_object(&page_obj, "t", ObjType::Text).expect("text");
    tx.splice_text(&text, 0, 0, "hello").expect("splice");
    tx.put(&page_obj, "ctr", automerge::ScalarValue::counter(1))
        .expect("counter");
    tx.increment(&page_obj, "ctr", 5).expect("inc");
    let list = tx.put_object(ROOT, "p.zzz", ObjType::List).expect("list");
    tx.insert(&list, 0, "x").expect("insert");
    tx.delete(ROOT, &page).expect("delete page");
    let (h, _) = tx.commit();
    let c4 = am
        .get_change_by_hash(&h.expect("hash"))
        .expect("change")
        .raw_bytes()
        .to_vec();
    put(
        "doc_apply",
        "raw_ops",
        &[vec![0], join_parts(&[&c4])].concat(),
    );
    put(
        "doc_apply",
        "mixed",
        &[vec![1], join_parts(&[&c1, &c4, &c2])].concat(),
    );
}
