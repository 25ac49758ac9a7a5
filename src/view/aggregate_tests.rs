//! Tests of the aggregates: every function and dimension, empty input, merging, suppression,
//! malformed input.

use super::*;
use serde_json::json;

fn rec(name: &str, time: u64, data: Json) -> Record {
    let Json::Object(data) = data else {
        panic!("object")
    };
    Record {
        id: format!("{name}-{time}"),
        name: name.into(),
        time,
        data,
    }
}

fn agg(g: &[&str], a: &[&str]) -> Aggregation {
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    Aggregation::parse(&s(g), &s(a)).expect("valid")
}

fn rows() -> Vec<Record> {
    vec![
        rec(
            "district-1/ward-1",
            1_000,
            json!({"cases": 2, "cost": 10.5}),
        ),
        rec("district-1/ward-2", 90_000_000, json!({"cases": 4})),
        rec("district-2/ward-1", 2_000, json!({"cases": 7, "cost": 1.5})),
        rec("district-2/ward-1", 3_000, json!({"cases": "n/a"})),
    ]
}

#[test]
fn every_function_by_segment() {
    let a = agg(
        &["segment:0"],
        &["count", "sum:cases", "avg:cases", "min:cost", "max:cases"],
    );
    let r = rows();
    let g = a.fold(r.iter()).expect("fold");
    let out: Vec<_> = g.iter().map(|(k, p)| a.finish(k, p)).collect();
    assert_eq!(
        Json::from(out),
        json!([
            {"segment:0": "district-1", "count": 2, "sum:cases": 6.0, "avg:cases": 3.0, "min:cost": 10.5, "max:cases": 4.0},
            {"segment:0": "district-2", "count": 2, "sum:cases": 7.0, "avg:cases": 7.0, "min:cost": 1.5, "max:cases": 7.0},
        ])
    );
}

#[test]
fn buckets_fields_and_empty_input() {
    let a = agg(&["bucket:1d", "field:cost"], &["count"]);
    let r = rows();
    let g = a.fold(r.iter()).expect("fold");
    let keys: Vec<_> = g.keys().map(GroupKey::values).collect();
    assert!(keys.contains(&vec![json!(0), json!(10.5)]));
    assert!(keys.contains(&vec![json!(86_400_000), Json::Null]));
    assert_eq!(g.values().map(|p| p.rows).sum::<u64>(), 4);
    let none = a.fold([].iter()).expect("fold");
    assert!(none.is_empty());
    // No dimensions: one group over everything; empty input: no group at all.
    let total = agg(&[], &["count", "avg:cases", "min:cases"]);
    let g = total.fold(r.iter()).expect("fold");
    assert_eq!(g.len(), 1);
    let empty = total.fold([].iter()).expect("fold");
    assert!(empty.is_empty());
    // A group whose values are all non-numeric has null sum-based measures.
    let only_text = [rec("a", 1, json!({"cases": "x"}))];
    let g = total.fold(only_text.iter()).expect("fold");
    let (k, p) = g.iter().next().expect("group");
    let out = total.finish(k, p);
    assert_eq!(out["avg:cases"], Json::Null);
    assert_eq!(out["min:cases"], Json::Null);
    assert_eq!(out["count"], json!(1));
}

#[test]
fn merging_partials_equals_folding_everything() {
    let a = agg(
        &["segment:0"],
        &["count", "avg:cases", "min:cases", "max:cases"],
    );
    let r = rows();
    let whole = a.fold(r.iter()).expect("fold");
    let left = a.fold(r[..1].iter()).expect("fold");
    let right = a.fold(r[1..].iter()).expect("fold");
    assert_eq!(merge_all([&left, &right]), whole);
}

#[test]
fn small_groups_are_suppressed() {
    let a = agg(&["segment:0"], &["count"]);
    let r = rows();
    let mut g = a.fold(r.iter()).expect("fold");
    assert_eq!(suppress_small(&mut g, 3), 2);
    assert!(g.is_empty());
}

#[test]
fn malformed_dimensions_and_measures_name_the_problem() {
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    for (g, a, at) in [
        (&["segment:x"][..], &["count"][..], "group_by[0]"),
        (&["bucket:0s"], &["count"], "group_by[0]"),
        (&["bucket:1w"], &["count"], "group_by[0]"),
        (&["field:"], &["count"], "group_by[0]"),
        (&["colour"], &["count"], "group_by[0]"),
        (&[], &["median:cases"], "aggregates[0]"),
        (&[], &["count", "sum"], "aggregates[1]"),
        (&[], &[], "aggregates"),
    ] {
        let e = Aggregation::parse(&s(g), &s(a)).expect_err("malformed");
        assert_eq!(e.0, at, "{g:?} {a:?}: {}", e.1);
    }
}
