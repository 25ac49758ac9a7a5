//! A SQL statement a user POSTs to /v1/sql (`view::sql::translate`, sqlparser underneath), then
//! the view query it becomes checked by `plan()` and, where it plans, run over a few fixed
//! records with the answer named, ordered and limited as the statement asks.
//!
//! Asserts: translation and planning never panic; a translation survives a JSON round trip (it
//! is what `--explain` prints and what `/v1/query` takes); an answer has exactly the statement's
//! columns, and no more groups than its LIMIT.
#![no_main]

use fogmesh::view::plan::{project, Shape, ViewQuery};
use fogmesh::view::sql;
use fogmesh_fuzz::{ds, records};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(t) = sql::translate(text) else { return };
    let json = serde_json::to_value(&t.query).expect("a query serializes");
    let back: ViewQuery = serde_json::from_value(json.clone()).expect("and reads back");
    assert_eq!(serde_json::to_value(&back).expect("again"), json);
    let Ok(plan) = t.query.plan() else { return };
    let columns = t.column_names();
    let d = ds();
    match &plan.shape {
        Shape::Rows { select, .. } => {
            for r in records().iter().filter(|r| plan.filter.matches(r)) {
                let row = t.row(project(&d, r, select));
                let keys: Vec<&String> = row.as_object().expect("object").keys().collect();
                assert_eq!(keys.len(), columns.len(), "{row}");
            }
        }
        Shape::Aggregate { aggregation, .. } => {
            let Ok(groups) = aggregation.fold(records().iter().filter(|r| plan.filter.matches(r)))
            else {
                return;
            };
            let finished = groups
                .iter()
                .map(|(k, p)| aggregation.finish(k, p))
                .collect();
            let rows = t.groups(finished);
            assert!(rows.len() <= t.group_limit.unwrap_or(usize::MAX));
            for row in &rows {
                let obj = row.as_object().expect("object");
                assert_eq!(obj.len(), columns.len(), "{row}");
                assert!(columns.iter().all(|c| obj.contains_key(c)), "{row}");
            }
        }
    }
});
