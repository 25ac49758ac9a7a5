//! The view query a user POSTs to /v1/query (`view::plan::ViewQuery`, JSON, `deny_unknown_fields`)
//! checked by `plan()` (its `where` conditions, and/or/not of predicates, through
//! `view::condition::Where::compile` and `view::query::Predicate::parse`, group-by and
//! measures through `Aggregation::parse`), then run over a few fixed records: filter, order,
//! limit, projection, or grouping and aggregates. Inputs that are not a JSON query are used as
//! one `where` clause.
//!
//! Asserts: rows are filtered, limited and ordered as asked; every row passes the filter; groups
//! count each matching record once; every group fits the aggregation; the filter that travels to
//! owners (CBOR) compiles to the same filter; `x != v` is the negation of `x = v` on records that
//! have the field, not null.
#![no_main]

use fogmesh::mesh::proto;
use fogmesh::view::aggregate;
use fogmesh::view::condition::Where;
use fogmesh::view::plan::{self, FilterSpec, Shape, ViewQuery};
use fogmesh::view::query::{lookup, Op, Predicate, Query};
use fogmesh_fuzz::{ds, records};
use libfuzzer_sys::fuzz_target;
use serde_json::Value as Json;

fn field<'a>(p: &Predicate, r: &'a fogmesh::record::Record) -> Option<Json> {
    match p.path.first().map(String::as_str) {
        Some("id") if p.path.len() == 1 => Some(Json::from(r.id.as_str())),
        Some("name") if p.path.len() == 1 => Some(Json::from(r.name.as_str())),
        Some("time") if p.path.len() == 1 => Some(Json::from(r.time)),
        _ => lookup(&r.data, &p.path[1..]).cloned(),
    }
}

fn predicate(text: &str) {
    let Ok(p) = Predicate::parse(text) else {
        return;
    };
    assert!(!p.path.is_empty());
    assert!(p.op != Op::In || p.value.is_array());
    for r in records() {
        let m = p.matches(r);
        if matches!(p.op, Op::Eq | Op::Ne) && field(&p, r).is_some_and(|v| !v.is_null()) {
            let flipped = Predicate {
                op: if p.op == Op::Eq { Op::Ne } else { Op::Eq },
                ..p.clone()
            };
            assert_ne!(m, flipped.matches(r), "= and != agree on {text:?}");
        }
        if field(&p, r).is_none() && p.op != Op::IsNull {
            assert!(!m, "a record without the field matched {text:?}");
        }
    }
    let q = Query {
        predicates: vec![p],
        ..Query::default()
    };
    if q.validate().is_ok() {
        let hits = q.run(records().iter());
        assert!(hits.len() <= q.limit);
        assert!(hits
            .windows(2)
            .all(|w| (w[0].time, &w[0].id) <= (w[1].time, &w[1].id)));
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(vq) = serde_json::from_str::<ViewQuery>(text) else {
        predicate(text);
        return;
    };
    for w in &vq.predicates {
        if let Where::Is(p) = w {
            predicate(p);
        }
    }
    let Ok(plan) = vq.plan() else { return };
    assert!(!plan.datasets.is_empty() && plan.datasets.len() <= plan::MAX_DATASETS);
    // The filter as an owner receives it.
    let sent: FilterSpec =
        proto::decode("filter", &proto::encode(&plan.filter_spec)).expect("a filter travels");
    assert_eq!(sent.compile().as_ref(), Ok(&plan.filter));
    let d = ds();
    let matching: Vec<_> = records()
        .iter()
        .filter(|r| plan.filter.matches(r))
        .collect();
    match &plan.shape {
        Shape::Rows {
            select,
            order,
            limit,
        } => {
            let mut rows: Vec<plan::Row> = matching.iter().map(|r| (&d, *r)).collect();
            plan::order_rows(&mut rows, order, *limit);
            assert!(rows.len() <= *limit);
            assert_eq!(rows.len(), matching.len().min(*limit));
            for (ds, r) in &rows {
                assert!(plan.filter.matches(r));
                let v = plan::project(ds, r, select);
                assert!(v.is_object());
            }
        }
        Shape::Aggregate { aggregation, limit } => {
            assert!(*limit >= 1);
            let Ok(mut groups) = aggregation.fold(matching.iter().copied()) else {
                return;
            };
            let rows: u64 = groups.values().map(|p| p.rows).sum();
            assert_eq!(
                rows,
                matching.len() as u64,
                "groups do not count each record once"
            );
            for (k, p) in &groups {
                assert!(
                    aggregation.fits(k, p),
                    "a group does not fit its own aggregation"
                );
                let out = aggregation.finish(k, p);
                assert!(out.len() <= aggregation.dims.len() + aggregation.measures.len());
            }
            let merged = aggregate::merge_all([&groups, &groups]);
            assert_eq!(merged.len(), groups.len());
            assert_eq!(aggregate::ordered(&merged).len(), merged.len());
            aggregation.minimize(&mut groups);
            let _ = aggregate::suppress_small(&mut groups, 2);
        }
    }
});
