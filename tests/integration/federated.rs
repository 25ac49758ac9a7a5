//! Compute-to-data across a real in-process mesh: federated aggregates against the same query
//! computed over all rows on one node (random data), small-group suppression, refusals, an owner
//! that does not answer, and pushed-down search.

use std::collections::BTreeMap;

use fogmesh::apps::{Action, App};
use fogmesh::dataset::{Priority, Retention, Spec, Visibility};
use fogmesh::mesh::query::{SearchEvent, SearchSpec};
use fogmesh::naming::DatasetId;
use fogmesh::node::{Batch, GrantRequest};
use fogmesh::record::{Input, Record};
use fogmesh::view::aggregate::{self, Aggregation, Groups};
use fogmesh::view::plan::{FilterSpec, ViewQuery};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{json, Value};

use crate::mesh::{spawn_mesh, Member};

const MIN_GROUP: u64 = 5;

fn private_spec(name: &str) -> Spec {
    Spec {
        name: name.into(),
        visibility: Visibility::Private,
        priority: Priority::Normal,
        retention: Retention::default(),
        schema: None,
        readers: vec![],
        encrypted: None,
    }
}

/// Creates `name` on `owner`, private, writes `rows`, and grants `to` the query right.
async fn owned(owner: &Member, name: &str, rows: &[Input], to: Option<&str>) -> DatasetId {
    let id = owner
        .node
        .create_dataset(&owner.admin, private_spec(name))
        .await
        .expect("create")
        .id;
    if !rows.is_empty() {
        let b = Batch {
            records: rows.to_vec(),
            delete: vec![],
        };
        owner
            .node
            .publish(&owner.admin, &id, b)
            .await
            .expect("publish");
    }
    if let Some(to) = to {
        let g = GrantRequest {
            dataset: id.to_string(),
            to: to.into(),
            rights: vec![Action::Query],
            prefix: None,
            expires: None,
        };
        owner.node.grant(&owner.admin, g).await.expect("grant");
    }
    id
}

async fn analyst(m: &Member) -> App {
    m.node
        .add_app(&m.admin, "analyst", vec![])
        .await
        .expect("app")
        .app
}

fn input(district: u8, ward: u8, day: u64, cases: i64, cost: i64, kind: &str) -> Input {
    Input {
        id: None,
        name: format!("district-{district}/ward-{ward}/visit"),
        data: json!({ "cases": cases, "cost": cost, "kind": kind }),
        time: Some(1_700_000_000_000 + day * 86_400_000 + u64::from(ward) * 1_000),
    }
}

fn as_record(i: &Input, n: usize) -> Record {
    let Value::Object(data) = i.data.clone() else {
        panic!("object")
    };
    Record {
        id: format!("r{n}"),
        name: i.name.clone(),
        time: i.time.expect("time"),
        data,
    }
}

fn rows_strategy() -> impl Strategy<Value = Vec<(u8, u8, u64, i64, i64, bool)>> {
    prop::collection::vec(
        (0u8..4, 0u8..3, 0u64..3, 0i64..20, 0i64..1000, any::<bool>()),
        60..120,
    )
}

fn to_inputs(v: &[(u8, u8, u64, i64, i64, bool)]) -> Vec<Input> {
    v.iter()
        .map(|&(d, w, day, c, cost, k)| input(d, w, day, c, cost, if k { "flu" } else { "cold" }))
        .collect()
}

const DIMS: [&[&str]; 4] = [
    &["segment:0"],
    &["field:kind"],
    &["bucket:1d"],
    &["segment:0", "field:kind"],
];
const MEASURES: [&str; 5] = ["count", "sum:cases", "avg:cases", "min:cost", "max:cost"];

fn finish_all(agg: &Aggregation, groups: &Groups) -> Vec<serde_json::Map<String, Value>> {
    aggregate::ordered(groups)
        .into_iter()
        .map(|(k, p)| agg.finish(k, p))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_federated_aggregate_over_four_owners_equals_computing_over_all_rows() {
    let nodes = spawn_mesh(5).await;
    let requester = &nodes[3]; // the agency asks; the four others own data
    let app = analyst(requester).await;
    let owners: Vec<&Member> = [0, 1, 2, 4].iter().map(|&i| &nodes[i]).collect();
    let mut runner = TestRunner::default();
    let mut compared = 0;
    for case in 0..6 {
        let data: Vec<Vec<Input>> = (0..4)
            .map(|_| {
                to_inputs(
                    &rows_strategy()
                        .new_tree(&mut runner)
                        .expect("tree")
                        .current(),
                )
            })
            .collect();
        let dims = DIMS[case % DIMS.len()];
        let filter = if case % 2 == 0 {
            vec![]
        } else {
            vec!["cases>=5".into()]
        };
        let mut datasets = Vec::new();
        for (o, rows) in owners.iter().zip(&data) {
            let id = owned(o, &format!("visits-{case}"), rows, Some("agency/analyst")).await;
            datasets.push(id.to_string());
        }
        let q = ViewQuery {
            datasets,
            predicates: filter.clone(),
            group_by: dims.iter().map(|d| (*d).to_owned()).collect(),
            aggregates: MEASURES.iter().map(|m| (*m).to_owned()).collect(),
            federated: true,
            ..ViewQuery::default()
        };
        let plan = q.plan().expect("valid");
        let got = requester
            .mesh
            .federated(&app, &plan)
            .await
            .expect("federated");
        assert!(
            got.sources.iter().all(|s| s.status == "answered"),
            "{:?}",
            got.sources
        );

        // The same computation on one node over all rows.
        let agg = Aggregation::parse(&q.group_by, &q.aggregates).expect("agg");
        let f = FilterSpec {
            predicates: filter,
            ..FilterSpec::default()
        }
        .compile()
        .expect("filter");
        let mut n = 0;
        let per_owner: Vec<Groups> = data
            .iter()
            .map(|rows| {
                let recs: Vec<Record> = rows
                    .iter()
                    .map(|i| {
                        n += 1;
                        as_record(i, n)
                    })
                    .filter(|r| f.matches(r))
                    .collect();
                agg.fold(recs.iter()).expect("fold")
            })
            .collect();
        let central = aggregate::merge_all(per_owner.iter());
        // Groups to which every owner contributed nothing or at least the minimum.
        let comparable: BTreeMap<_, _> = central
            .iter()
            .filter(|(k, _)| {
                per_owner
                    .iter()
                    .all(|g| g.get(*k).is_none_or(|p| p.rows >= MIN_GROUP))
            })
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect();
        // 1. The answer is exactly the merge of what each owner may disclose.
        let disclosed: Vec<Groups> = per_owner
            .iter()
            .map(|g| {
                let mut g = g.clone();
                aggregate::suppress_small(&mut g, MIN_GROUP);
                g
            })
            .collect();
        let merged = aggregate::merge_all(disclosed.iter());
        assert_eq!(
            got.groups,
            finish_all(&agg, &merged),
            "case {case}: {dims:?}"
        );
        // 2. Where no owner held a small part of a group, it equals the computation over all
        //    rows on one node (averages from sums and counts, not averages of averages).
        let by_key: BTreeMap<String, &serde_json::Map<String, Value>> = aggregate::ordered(&merged)
            .into_iter()
            .map(|(k, _)| k)
            .zip(&got.groups)
            .map(|(k, g)| (k.0.clone(), g))
            .collect();
        for (k, p) in &comparable {
            let want = agg.finish(k, p);
            assert_eq!(by_key.get(&k.0), Some(&&want), "case {case}: group {}", k.0);
        }
        compared += comparable.len();
        // Owners say nothing about what they left out.
        assert!(serde_json::to_string(&got.sources)
            .expect("json")
            .find("suppress")
            .is_none());
    }
    assert!(
        compared >= 6,
        "only {compared} groups compared with the central computation"
    );
    for m in &nodes {
        m.mesh.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn owners_suppress_small_groups_refuse_without_a_grant_and_silence_is_reported() {
    let nodes = spawn_mesh(4).await;
    let (hospital, pharmacy, drugmaker, agency) = (&nodes[0], &nodes[1], &nodes[2], &nodes[3]);
    let app = analyst(agency).await;
    // The hospital: district-0 has 6 visits, district-1 only 3 (suppressed).
    let rows: Vec<Input> = (0..9)
        .map(|i| input(u8::from(i >= 6), 0, 0, 1, 10, "flu"))
        .collect();
    let h = owned(hospital, "visits", &rows, Some("agency/analyst")).await;
    // The pharmacy grants nothing.
    let p = owned(pharmacy, "visits", &rows, None).await;
    // The drug maker answers nothing: its node goes away.
    let d = owned(drugmaker, "visits", &rows, Some("agency/analyst")).await;
    drugmaker.mesh.shutdown().await;
    let q = ViewQuery {
        datasets: vec![h.to_string(), p.to_string(), d.to_string()],
        group_by: vec!["segment:0".into()],
        aggregates: vec!["count".into(), "avg:cases".into()],
        federated: true,
        timeout_ms: Some(3_000),
        ..ViewQuery::default()
    };
    let got = agency
        .mesh
        .federated(&app, &q.plan().expect("valid"))
        .await
        .expect("an owner's silence is not fatal");
    assert_eq!(
        serde_json::to_value(&got.groups).expect("json"),
        json!([{"segment:0": "district-0", "count": 6, "avg:cases": 1.0}])
    );
    let status: Vec<(&str, &str)> = got
        .sources
        .iter()
        .map(|s| (s.owner.as_str(), s.status.as_str()))
        .collect();
    assert_eq!(
        status,
        [
            ("hospital", "answered"),
            ("pharmacy", "refused"),
            ("drugmaker", "timed_out")
        ]
    );
    let reason = got.sources[1].reason.clone().unwrap_or_default();
    assert!(reason.contains("no query grant"), "{reason}");
    for m in &nodes {
        m.mesh.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pushed_down_search_returns_only_where_and_when_as_owners_answer() {
    let nodes = spawn_mesh(4).await;
    let coordinator = &nodes[0];
    let app = coordinator
        .node
        .add_app(&coordinator.admin, "finder", vec![])
        .await
        .expect("app")
        .app;
    let sighting = |street: &str, coat: &str, t: u64| Input {
        id: None,
        name: format!("{street}/cam-1/sighting"),
        data: json!({ "coat": coat, "height_cm": 120, "face": "secret-biometric" }),
        time: Some(t),
    };
    for (i, cam) in nodes.iter().enumerate().skip(1) {
        let rows = vec![
            sighting(&format!("street-{i}"), "red", 1_000 + i as u64),
            sighting(&format!("street-{i}"), "blue", 2_000),
        ];
        let grant = (i != 3).then_some("hospital/finder");
        owned(cam, "sightings", &rows, grant).await;
    }
    let spec = SearchSpec {
        dataset: "sightings".into(),
        targets: vec![],
        filter: FilterSpec {
            predicates: vec!["coat=red".into()],
            ..FilterSpec::default()
        },
        location_segment: 0,
        limit: None,
        timeout_ms: Some(5_000),
    };
    let events = search_events(&coordinator.mesh, &app, spec.clone()).await;
    let Some(SearchEvent::Summary {
        answered,
        refused,
        timed_out,
        matches,
    }) = events.last().cloned()
    else {
        panic!("no summary: {events:?}")
    };
    assert_eq!(
        (answered.len(), refused, timed_out.len(), matches),
        (2, vec!["agency".to_owned()], 0, 2)
    );
    for ev in &events {
        if let SearchEvent::Answered { from, matches } = ev {
            assert_eq!(matches.len(), 1, "{from}");
            let m = serde_json::to_value(&matches[0]).expect("json");
            let keys: Vec<&str> = m
                .as_object()
                .expect("object")
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(keys, ["id", "location", "name", "time"]);
            assert!(!m.to_string().contains("secret-biometric"));
            assert!(m["location"]
                .as_str()
                .is_some_and(|l| l.starts_with("street-")));
        }
    }
    // A named target that is not a member is refused alone; the members named are searched.
    let spec = SearchSpec {
        targets: vec!["clinic".into(), nodes[1].org.into()],
        ..spec
    };
    let events = search_events(&coordinator.mesh, &app, spec).await;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, SearchEvent::Refused { from, reason }
            if from == "clinic" && reason.contains("not a member"))),
        "{events:?}"
    );
    assert!(
        matches!(events.last(), Some(SearchEvent::Summary { answered, refused, .. })
            if answered == &[nodes[1].org.to_owned()] && refused == &["clinic".to_owned()]),
        "{events:?}"
    );
    for m in &nodes {
        m.mesh.shutdown().await;
    }
}

/// Every event of a search, its summary last.
async fn search_events(
    mesh: &fogmesh::mesh::Mesh,
    app: &fogmesh::apps::App,
    spec: SearchSpec,
) -> Vec<SearchEvent> {
    let mut rx = mesh.search(app, spec).expect("search");
    let mut events = Vec::new();
    while let Some(ev) = rx.recv().await {
        events.push(ev);
    }
    events
}
