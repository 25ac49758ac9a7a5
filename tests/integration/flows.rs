//! Computation flows on one node: the target always equals recomputing it from the source, after
//! inserts, updates and deletes; removing the flow stops it.

use std::time::{Duration, Instant};

use fogmesh::dataset::{Priority, Retention, Spec, Visibility};
use fogmesh::naming::DatasetId;
use fogmesh::node::Batch;
use fogmesh::record::{Input, Record};
use fogmesh::view::flow::{Flow, FlowSpec};
use fogmesh::view::plan::FilterSpec;
use fogmesh::view::query::Query;
use serde_json::{json, Value};

use crate::common::{test_node, TestNode};

const DAY: u64 = 86_400_000;

async fn dataset(t: &TestNode, name: &str, visibility: Visibility) -> DatasetId {
    let spec = Spec {
        name: name.into(),
        visibility,
        priority: Priority::Normal,
        retention: Retention::default(),
        schema: None,
        readers: vec![],
        encrypted: None,
    };
    t.node
        .create_dataset(&t.admin, spec)
        .await
        .expect("create")
        .id
}

fn all(t: &TestNode, ds: &DatasetId) -> Vec<Record> {
    let q = Query {
        limit: 10_000,
        ..Query::default()
    };
    t.node.query(&t.admin, ds, &q).expect("query")
}

/// (id, name, time, data) of records.
type Rows = Vec<(String, String, u64, Value)>;

/// The target's rows, and the flow's recomputed from the source.
fn both(t: &TestNode, flow: &Flow) -> (Rows, Rows) {
    let mut have: Vec<_> = all(t, &flow.target)
        .into_iter()
        .map(|r| (r.id, r.name, r.time, Value::Object(r.data)))
        .collect();
    have.sort_by(|a, b| a.0.cmp(&b.0));
    let src = all(t, &flow.source);
    let want: Vec<_> = flow
        .compute(src.iter())
        .expect("compute")
        .into_iter()
        .map(|(id, i)| (id, i.name, i.time.expect("time"), i.data))
        .collect();
    (have, want)
}

async fn converges(t: &TestNode, flow: &Flow, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (have, want) = both(t, flow);
        if have == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: target {have:?}\n != recomputed {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn admission(id: &str, district: u32, day: u64, diagnosis: &str, cost: u32) -> Input {
    Input {
        id: Some(id.into()),
        name: format!("district-{district}/ward-{}/admission", district % 3),
        data: json!({ "diagnosis": diagnosis, "cost": cost }),
        time: Some(1_700_000_000_000 + day * DAY + u64::from(cost)),
    }
}

async fn write(t: &TestNode, ds: &DatasetId, records: Vec<Input>, delete: Vec<&str>) {
    let b = Batch {
        records,
        delete: delete.into_iter().map(str::to_owned).collect(),
    };
    t.node.publish(&t.admin, ds, b).await.expect("publish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregating_flow_stays_equal_to_recomputing_it_and_stops_when_removed() {
    let t = test_node("hospital", 1).await;
    let patients = dataset(&t, "patients", Visibility::Private).await;
    let daily = dataset(&t, "flu-daily", Visibility::Shared).await;
    // Rows before the flow exists are picked up by its first pass.
    write(
        &t,
        &patients,
        (0..20)
            .map(|i| {
                admission(
                    &format!("p{i}"),
                    i % 4,
                    u64::from(i % 3),
                    if i % 5 == 0 { "cold" } else { "flu" },
                    100 + i,
                )
            })
            .collect(),
        vec![],
    )
    .await;
    let spec = FlowSpec {
        name: "flu-daily".into(),
        source: patients.to_string(),
        target: daily.to_string(),
        filter: FilterSpec {
            predicates: vec!["diagnosis=flu".into()],
            ..FilterSpec::default()
        },
        project: vec![],
        group_by: vec!["segment:0".into(), "bucket:1d".into()],
        aggregates: vec!["count".into(), "avg:cost".into(), "max:cost".into()],
        min_rows: None,
    };
    let flow = spec.check().expect("valid");
    t.node.add_flow(&t.admin, spec.clone()).await.expect("add");
    converges(&t, &flow, "first pass").await;
    assert!(!all(&t, &daily).is_empty());

    write(
        &t,
        &patients,
        (20..30)
            .map(|i| admission(&format!("p{i}"), 5, 1, "flu", 200 + i))
            .collect(),
        vec![],
    )
    .await;
    converges(&t, &flow, "inserts, one new district").await;
    // Updates: a diagnosis changes (leaves the filter), a patient moves district and day.
    write(
        &t,
        &patients,
        vec![
            admission("p1", 1, 1, "cold", 101),
            admission("p2", 3, 2, "flu", 102),
        ],
        vec![],
    )
    .await;
    converges(&t, &flow, "updates").await;
    // Deletes, including every row of one group.
    let district5: Vec<String> = (20..30).map(|i| format!("p{i}")).collect();
    write(
        &t,
        &patients,
        vec![],
        district5.iter().map(String::as_str).chain(["p3"]).collect(),
    )
    .await;
    converges(&t, &flow, "deletes").await;
    assert!(!all(&t, &daily)
        .iter()
        .any(|r| r.name.starts_with("district-5/")));

    assert_eq!(t.node.flows(&t.admin).expect("list"), vec![spec]);
    t.node
        .remove_flow(&t.admin, "flu-daily")
        .await
        .expect("remove");
    let before = all(&t, &daily);
    write(
        &t,
        &patients,
        vec![admission("p99", 9, 0, "flu", 999)],
        vec![],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(all(&t, &daily), before, "a removed flow writes nothing");
    assert!(t.node.flows(&t.admin).expect("list").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_flow_filters_and_projects_and_bad_flows_are_refused() {
    let t = test_node("hospital", 2).await;
    let patients = dataset(&t, "patients", Visibility::Private).await;
    let fever = dataset(&t, "fever", Visibility::Shared).await;
    let spec = FlowSpec {
        name: "fever".into(),
        source: patients.to_string(),
        target: fever.to_string(),
        filter: FilterSpec {
            predicates: vec!["cost>=150".into()],
            ..FilterSpec::default()
        },
        project: vec!["cost".into()],
        group_by: vec![],
        aggregates: vec![],
        min_rows: None,
    };
    let flow = spec.check().expect("valid");
    t.node.add_flow(&t.admin, spec.clone()).await.expect("add");
    write(
        &t,
        &patients,
        (0..10)
            .map(|i| admission(&format!("p{i}"), i, 0, "flu", 100 + 20 * i))
            .collect(),
        vec![],
    )
    .await;
    converges(&t, &flow, "inserts").await;
    write(
        &t,
        &patients,
        vec![admission("p9", 9, 0, "flu", 10)],
        vec!["p8"],
    )
    .await;
    converges(&t, &flow, "update out of the filter, delete").await;
    assert!(all(&t, &fever)
        .iter()
        .all(|r| r.data.keys().collect::<Vec<_>>() == ["cost"]));

    let err = |r: fogmesh::Result<FlowSpec>| r.expect_err("refused").to_string();
    assert!(err(t.node.add_flow(&t.admin, spec.clone()).await).contains("exists"));
    let second_writer = FlowSpec {
        name: "fever2".into(),
        ..spec.clone()
    };
    assert!(err(t.node.add_flow(&t.admin, second_writer).await).contains("already writes"));
    let cycle = FlowSpec {
        name: "back".into(),
        source: fever.to_string(),
        target: patients.to_string(),
        ..spec.clone()
    };
    assert!(err(t.node.add_flow(&t.admin, cycle).await).contains("cycle"));
    let foreign = FlowSpec {
        name: "other".into(),
        source: "pharmacy/sales".into(),
        ..spec.clone()
    };
    assert!(err(t.node.add_flow(&t.admin, foreign).await).contains("where its data lives"));
    let missing = FlowSpec {
        name: "other".into(),
        target: "hospital/nope".into(),
        ..spec.clone()
    };
    assert!(err(t.node.add_flow(&t.admin, missing).await).contains("not found"));
    // Well formed, but its two fields clash (the contract's schema cannot say it): a conflict.
    let onto_itself = FlowSpec {
        name: "other".into(),
        target: spec.source.clone(),
        ..spec.clone()
    };
    let got = t.node.add_flow(&t.admin, onto_itself).await;
    assert!(
        matches!(&got, Err(fogmesh::Error::Conflict(why)) if why.contains("own source")),
        "{got:?}"
    );
    let app = t
        .node
        .add_app(&t.admin, "dashboard", vec![])
        .await
        .expect("app")
        .app;
    let denied = FlowSpec {
        name: "mine".into(),
        ..spec
    };
    assert!(err(t.node.add_flow(&app, denied).await).contains("admin"));
}
