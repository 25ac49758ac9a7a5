use super::*;
use serde_json::json;

use crate::view::plan::FilterSpec;

fn rec(data: Json) -> Record {
    let Json::Object(data) = data else {
        panic!("object")
    };
    Record {
        id: "r1".into(),
        name: "d1/a".into(),
        time: 10,
        data,
    }
}

fn cond(v: Json) -> Condition {
    serde_json::from_value::<Where>(v)
        .expect("parses")
        .compile()
        .expect("compiles")
}

#[test]
fn and_or_not_round_trip_through_json_and_cbor() {
    let v = json!({"or": ["cases>=5", {"and": ["a=1", {"not": "b is null"}]}]});
    let w: Where = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(serde_json::to_value(&w).unwrap(), v);
    let bytes = cbor4ii::serde::to_vec(Vec::new(), &w).unwrap();
    let back: Where = cbor4ii::serde::from_slice(&bytes).unwrap();
    assert_eq!(back, w);
}

#[test]
fn bad_shapes_are_named() {
    for (v, why) in [
        (json!(5), "a predicate string or an object"),
        (json!({"and": ["a=1"], "or": ["b=1"]}), "one key"),
        (json!({"xor": ["a=1"]}), "unknown key \"xor\""),
        (json!({"or": "a=1"}), "or takes a list"),
    ] {
        let e = serde_json::from_value::<Where>(v.clone()).unwrap_err();
        assert!(e.to_string().contains(why), "{v}: {e}");
    }
    let empty: Where = serde_json::from_value(json!({"or": []})).unwrap();
    assert_eq!(empty.compile().unwrap_err(), Error::Items(0));
    let bad: Where = serde_json::from_value(json!({"not": "oops"})).unwrap();
    assert!(bad
        .compile()
        .unwrap_err()
        .to_string()
        .contains("no operator"));
}

#[test]
fn nesting_and_size_are_capped() {
    let mut w = Where::from("a=1");
    for _ in 0..MAX_DEPTH {
        w = Where::Not(Box::new(w));
    }
    assert!(w.compile().is_ok(), "{MAX_DEPTH} levels are allowed");
    let spec = |w: &Where| FilterSpec {
        predicates: vec![w.clone()],
        ..Default::default()
    };
    assert!(
        spec(&w).compile().is_ok(),
        "the same depth as a query's where"
    );
    let deeper = Where::Not(Box::new(w));
    assert_eq!(deeper.compile().unwrap_err(), Error::TooDeep);
    let e = spec(&deeper).compile().unwrap_err();
    assert_eq!(e.at, "where[0]");
    let wide = Where::Any(vec![Where::All(vec![Where::from("a=1"); 32]); 9]);
    assert_eq!(wide.compile().unwrap_err(), Error::TooManyPredicates);
    let e = Where::compile_all(&vec![Where::from("a=1"); 33]).unwrap_err();
    assert_eq!((e.index, e.error), (None, Error::Items(33)));
    let long = format!("note in [{}]", vec!["\"xxxxxxxx\""; 90].join(","));
    let heavy = Where::All(vec![Where::from(long); 10]);
    assert_eq!(heavy.compile().unwrap_err(), Error::TooLong);
}

#[test]
fn three_valued_logic_as_in_sql() {
    let r = rec(json!({"cases": 7, "district": "d1", "note": null}));
    let t = |v: Json| cond(v).eval(&r);
    assert_eq!(t(json!("cases>=5")), Some(true));
    assert_eq!(t(json!("missing=1")), None);
    assert_eq!(
        t(json!({"not": "missing=1"})),
        None,
        "not unknown is unknown"
    );
    assert_eq!(t(json!({"or": ["missing=1", "cases=7"]})), Some(true));
    assert_eq!(t(json!({"or": ["missing=1", "cases=8"]})), None);
    assert_eq!(t(json!({"and": ["missing=1", "cases=8"]})), Some(false));
    assert_eq!(t(json!({"and": ["missing=1", "cases=7"]})), None);
    assert_eq!(t(json!("missing is null")), Some(true));
    assert_eq!(t(json!("note IS NULL")), Some(true), "JSON null is null");
    for p in ["note=null", "note!=1", "note in [null]", "note in [1]"] {
        assert_eq!(t(json!(p)), None, "{p}: a comparison with null is unknown");
    }
    assert_eq!(t(json!("cases is not null")), Some(true));
    assert_eq!(t(json!({"not": "district is null"})), Some(true));
    assert_eq!(
        t(json!("district<5")),
        None,
        "a string and a number do not order"
    );
    assert!(!cond(json!({"not": "district<5"})).matches(&r));
    assert!(cond(json!({"or": ["district=d2", {"not": "cases<7"}]})).matches(&r));
}

#[test]
fn predicates_inside_are_visited() {
    let c = cond(json!({"or": ["cases=1", {"not": "id=r1"}]}));
    assert!(c.any_predicate(&|p| p.path == ["id"]));
    assert!(!c.any_predicate(&|p| p.path == ["name"]));
}
