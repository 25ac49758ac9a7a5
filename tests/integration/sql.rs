//! `POST /v1/sql` on one node: the statement answers what the equivalent view query answers,
//! OR and NOT filter as SQL's three-valued logic says, groups are named, ordered and limited as
//! the statement asks, rights apply as to any query, and a statement outside the dialect is a 400
//! naming the part.

use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::http::{assert_error, Api};

const SQL: &str = "/v1/sql";

/// Twelve flu records over three districts and two days; two lack `cases`.
fn outbreak() -> Value {
    let day = 86_400_000u64;
    let rows: Vec<Value> = (0..12u64)
        .map(|i| {
            let district = format!("d{}", i % 3);
            let mut data = json!({"diagnosis": if i % 4 == 0 { "cold" } else { "flu" }});
            if i % 5 != 4 {
                data["cases"] = json!(i + 1);
            }
            json!({
                "id": format!("r{i}"),
                "name": format!("{district}/ward-{}", i % 2),
                "time": day * (1 + i / 6) + i,
                "data": data,
            })
        })
        .collect();
    Value::Array(rows)
}

async fn api() -> Api {
    let api = Api::new().await;
    api.publish(outbreak()).await;
    api
}

async fn sql(api: &Api, token: &str, statement: &str) -> (StatusCode, Value) {
    api.post(SQL, token, json!({ "sql": statement })).await
}

async fn ok(api: &Api, statement: &str) -> Value {
    let (s, b) = sql(api, api.admin(), statement).await;
    assert_eq!(s, StatusCode::OK, "{statement}: {b}");
    assert_eq!(b["count"], b["rows"].as_array().map_or(0, Vec::len), "{b}");
    b
}

fn ids(rows: &Value) -> Vec<&str> {
    rows.as_array()
        .expect("rows")
        .iter()
        .map(|r| r["id"].as_str().expect("id"))
        .collect()
}

#[tokio::test]
async fn grouped_flu_cases_are_named_ordered_and_limited() {
    let api = api().await;
    let b = ok(
        &api,
        "SELECT segment(0) AS district, sum(cases) AS cases, count(*) AS reports \
         FROM \"hospital/flu\" WHERE diagnosis = 'flu' GROUP BY district \
         ORDER BY cases DESC LIMIT 2",
    )
    .await;
    assert_eq!(b["columns"], json!(["district", "cases", "reports"]));
    // Flu rows: i not divisible by 4: 1,2,3,5,6,7,9,10,11; cases i+1 except i=9 (no cases).
    // d0: i=3,6 -> 4+7=11, 2 reports; d1: i=1,7,10 -> 2+8+11=21, 3; d2: i=2,5,11 -> 3+6+12=21, 3.
    assert_eq!(
        b["rows"],
        json!([
            {"district": "d1", "cases": 21.0, "reports": 3},
            {"district": "d2", "cases": 21.0, "reports": 3},
        ])
    );
    assert_eq!(b["sources"][0]["status"], "local");
    // The same question as a view query gives the same groups (ordered by key there).
    let (s, v) = api
        .post(
            "/v1/query",
            api.admin(),
            json!({"datasets": ["hospital/flu"], "where": ["diagnosis=flu"],
                   "group_by": ["segment:0"], "aggregates": ["sum:cases", "count"]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["groups"][1],
        json!({"segment:0": "d1", "sum:cases": 21.0, "count": 3})
    );
}

#[tokio::test]
async fn or_and_not_follow_three_valued_logic_in_sql_and_in_json() {
    let api = api().await;
    let b = ok(
        &api,
        "SELECT id FROM \"hospital/flu\" WHERE cases >= 11 OR diagnosis = 'cold' ORDER BY id",
    )
    .await;
    // cold: r0, r4, r8; cases>=11: r10 (11), r11 (12).
    assert_eq!(ids(&b["rows"]), ["r0", "r10", "r11", "r4", "r8"]);
    // NOT of a comparison on a missing field is unknown: r4 and r9 lack cases.
    let b = ok(
        &api,
        "SELECT id FROM \"hospital/flu\" WHERE NOT cases < 11 ORDER BY id",
    )
    .await;
    assert_eq!(ids(&b["rows"]), ["r10", "r11"]);
    let b = ok(
        &api,
        "SELECT id FROM \"hospital/flu\" WHERE cases IS NULL ORDER BY id",
    )
    .await;
    assert_eq!(ids(&b["rows"]), ["r4", "r9"]);
    // The view query's JSON takes the same tree.
    let (s, v) = api
        .post(
            "/v1/query",
            api.admin(),
            json!({"datasets": ["hospital/flu"], "select": ["id"], "order_by": "id",
                   "where": [{"or": ["cases>=11", {"not": "diagnosis!=cold"}]}]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(ids(&v["rows"]), ["r0", "r10", "r11", "r4", "r8"]);
}

#[tokio::test]
async fn rows_are_projected_with_aliases_and_whole_records_with_star() {
    let api = api().await;
    let b = ok(
        &api,
        "SELECT id, cases AS n FROM \"hospital/flu\" WHERE segment(0) = 'd2' \
         AND name LIKE 'd2/ward-1/%' ORDER BY n DESC LIMIT 2",
    )
    .await;
    assert_eq!(b["columns"], json!(["id", "n"]));
    // d2/ward-1: i with i%3==2 and i%2==1: 5 (6 cases), 11 (12 cases).
    assert_eq!(
        b["rows"],
        json!([{"id": "r11", "n": 12}, {"id": "r5", "n": 6}])
    );
    let b = ok(&api, "SELECT * FROM hospital.flu WHERE id = 'r3'").await;
    assert_eq!(
        b["columns"],
        json!(["dataset", "id", "name", "time", "data"])
    );
    assert_eq!(
        b["rows"][0]["data"],
        json!({"diagnosis": "flu", "cases": 4})
    );
}

#[tokio::test]
async fn rights_apply_as_to_any_query() {
    let api = api().await;
    let nothing = api.app("nosy", &[]).await;
    let query_only = api.app("counter", &["query:hospital/flu"]).await;
    let rows = "SELECT id FROM \"hospital/flu\"";
    let (s, _) = sql(&api, &nothing, rows).await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "an app with no right does not learn it exists"
    );
    let (s, _) = sql(&api, &query_only, rows).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "rows need the read right");
    let counts = "SELECT segment(0), count(*) FROM \"hospital/flu\" GROUP BY 1";
    let (s, b) = sql(&api, &query_only, counts).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(b["rows"].as_array().expect("rows").len() <= 3);
}

#[tokio::test]
async fn statements_outside_the_dialect_are_400_naming_the_part() {
    let api = api().await;
    let cases = [
        (
            "SELECT * FROM \"hospital/flu\" a JOIN \"hospital/x\" b ON a.id = b.id",
            "sql: JOIN: ",
        ),
        (
            "SELECT district, count(*) FROM hospital.flu GROUP BY district HAVING count(*) > 1",
            "sql: HAVING: ",
        ),
        ("DROP TABLE hospital.flu", "sql: statement: only SELECT"),
        (
            "SELECT * FROM hospital.flu WHERE cases = NULL",
            "sql: WHERE: ",
        ),
        (
            "SELECT * FROM hospital.flu LIMIT 20000",
            "limit: more than 10000 rows stream as NDJSON",
        ),
        ("SELECT * FROM hospital.flu WHERE", "sql: syntax: "),
    ];
    for (statement, start) in cases {
        let got = sql(&api, api.admin(), statement).await;
        assert_error(got, 400, start);
    }
    let (s, b) = api
        .post(
            SQL,
            api.admin(),
            json!({"sql": "SELECT * FROM hospital.flu", "extra": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let (s, b) = api
        .post(
            SQL,
            api.admin(),
            json!({"sql": "SELECT count(*) FROM hospital.flu", "federated": true}),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::SERVICE_UNAVAILABLE,
        "federated needs the mesh: {b}"
    );
    let (s, b) = api
        .post(
            SQL,
            api.admin(),
            json!({"sql": "SELECT id FROM hospital.flu", "federated": true}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "rows are never federated: {b}");
}

/// Many statements at once, each as long and deep as allowed (`1+1+...`, 16 KiB): each is
/// refused alone (400) or told to retry (503 `busy`, `Retry-After`), never more than four are
/// translated at once, and the node answers a plain statement afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_deep_statements_is_answered_and_bounded() {
    let api = api().await;
    let chain = vec!["1"; 8_100].join("+");
    let statement = format!("SELECT * FROM \"hospital/flu\" WHERE cases > {chain}");
    assert!(statement.len() <= 16 * 1024);
    let calls = (0..48).map(|_| sql(&api, api.admin(), &statement));
    for (s, b) in futures::future::join_all(calls).await {
        let busy = s == StatusCode::SERVICE_UNAVAILABLE && b["error"]["reason"] == "busy";
        assert!(s == StatusCode::BAD_REQUEST || busy, "{s}: {b}");
    }
    let b = ok(&api, "SELECT id FROM \"hospital/flu\" WHERE cases > 11").await;
    assert_eq!(b["count"], 1, "{b}");
}
