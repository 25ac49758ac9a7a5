use super::*;
use serde_json::json;

fn t(sql: &str) -> Translation {
    translate(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn q(sql: &str) -> Json {
    serde_json::to_value(&t(sql).query).unwrap()
}

#[test]
fn rows_with_projection_where_order_and_limit() {
    let v = q(
        "SELECT id, cases AS n, patient.age FROM \"hospital/flu\", pharmacy.sales \
               WHERE (district = 'd1' OR cases >= 5) AND NOT patient.age < 18 \
               ORDER BY n DESC LIMIT 20",
    );
    assert_eq!(v["datasets"], json!(["hospital/flu", "pharmacy/sales"]));
    assert_eq!(v["select"], json!(["id", "cases", "patient.age"]));
    assert_eq!(
        v["where"],
        json!([{"or": ["district=\"d1\"", "cases>=5"]}, {"not": "patient.age<18"}])
    );
    assert_eq!(v["order_by"], json!("-cases"));
    assert_eq!(v["limit"], json!(20));
    let tr = t("SELECT id, cases AS n FROM a.b");
    assert_eq!(tr.column_names(), ["id", "n"]);
    assert_eq!(
        tr.row(json!({"id": "r1", "cases": 3})),
        json!({"id": "r1", "n": 3})
    );
}

#[test]
fn star_is_whole_records() {
    let tr = t("select * from \"hospital/flu\" where x is null and y is not null");
    assert!(tr.query.select.is_empty() && tr.columns.is_empty());
    assert_eq!(tr.column_names(), ["dataset", "id", "name", "time", "data"]);
    assert_eq!(
        serde_json::to_value(&tr.query.predicates).unwrap(),
        json!(["x is null", "y is not null"])
    );
}

#[test]
fn in_between_literals_and_flipped_comparisons() {
    let v = q(
        "SELECT id FROM a.b WHERE status IN ('open', 'held') AND n NOT IN (1, -2.5) \
               AND t BETWEEN 3 AND 9 AND 5 < cases AND ok = TRUE",
    );
    assert_eq!(
        v["where"],
        json!([
            "status in [\"open\",\"held\"]",
            {"not": "n in [1,-2.5]"},
            {"and": ["t>=3", "t<=9"]},
            "cases>5",
            "ok=true"
        ])
    );
}

#[test]
fn segments_and_name_prefixes_become_filters() {
    let v = q(
        "SELECT id FROM a.b WHERE segment(0) = 'district-3' AND name LIKE 'district-3/ward-1/%'",
    );
    assert_eq!(v["segments"], json!(["0=district-3"]));
    assert_eq!(v["name_prefix"], json!("district-3/ward-1"));
    assert!(v["where"].as_array().unwrap().is_empty());
}

#[test]
fn aggregates_group_by_fields_segments_and_buckets() {
    let tr = t(
        "SELECT segment(1) AS district, bucket('1d') AS day, sum(cases) AS cases, count(*) \
                FROM \"hospital/flu\", \"clinic/flu\" WHERE diagnosis = 'flu' \
                GROUP BY district, 2 ORDER BY cases DESC, district LIMIT 3",
    );
    assert_eq!(tr.query.group_by, ["segment:1", "bucket:1d"]);
    assert_eq!(tr.query.aggregates, ["sum:cases", "count"]);
    assert_eq!(tr.query.limit, None, "the limit applies after ordering");
    assert_eq!(tr.column_names(), ["district", "day", "cases", "count(*)"]);
    let group = |d: &str, n: u64| {
        let v = json!({"segment:1": d, "bucket:1d": 0, "sum:cases": n, "count": 1});
        v.as_object().unwrap().clone()
    };
    let rows = tr.groups(vec![
        group("d1", 2),
        group("d2", 9),
        group("d0", 2),
        group("d3", 1),
    ]);
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["district"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["d2", "d0", "d1"]);
    assert_eq!(
        rows[0],
        json!({"district": "d2", "day": 0, "cases": 9, "count(*)": 1})
    );
}

#[test]
fn grouping_without_a_shown_measure_and_one_group_of_everything() {
    let tr = t("SELECT district FROM a.b GROUP BY district");
    assert_eq!(tr.query.aggregates, ["count"]);
    assert_eq!(tr.column_names(), ["district"]);
    let all = t("SELECT avg(temp), max(temp) FROM a.b LIMIT 2");
    assert!(all.query.group_by.is_empty());
    assert_eq!(all.query.aggregates, ["avg:temp", "max:temp"]);
    assert_eq!(all.query.limit, Some(2));
}

#[test]
fn unsupported_parts_are_named() {
    let cases = [
        ("SELECT * FROM a.b JOIN c.d ON a.b.x = c.d.x", "JOIN"),
        (
            "SELECT district, count(*) FROM a.b GROUP BY district HAVING count(*) > 2",
            "HAVING",
        ),
        ("SELECT DISTINCT district FROM a.b", "DISTINCT"),
        ("WITH x AS (SELECT 1) SELECT * FROM x", "WITH"),
        ("SELECT * FROM a.b UNION SELECT * FROM c.d", "statement"),
        ("DELETE FROM a.b", "statement"),
        ("SELECT * FROM a.b; SELECT * FROM c.d", "statement"),
        ("SELECT * FROM (SELECT * FROM a.b)", "FROM"),
        ("SELECT * FROM a.b AS x", "FROM"),
        ("SELECT * FROM nodots", "FROM"),
        ("SELECT", "FROM"),
        ("SELEKT *", "syntax"),
        ("SELECT * FROM a.b LIMIT 5 OFFSET 2", "LIMIT"),
        ("SELECT * FROM a.b LIMIT 0", "LIMIT"),
        ("SELECT * FROM a.b WHERE x LIKE '%a'", "WHERE"),
        ("SELECT * FROM a.b WHERE x = NULL", "WHERE"),
        ("SELECT * FROM a.b WHERE x = y", "WHERE"),
        ("SELECT * FROM a.b WHERE x + 1 > 2", "WHERE"),
        ("SELECT * FROM a.b WHERE segment(1) = 'd' OR x = 1", "WHERE"),
        ("SELECT * FROM a.b WHERE dataset = 'a/b'", "WHERE"),
        ("SELECT * FROM a.b WHERE x IN (SELECT 1)", "WHERE"),
        (
            "SELECT cases, count(*) FROM a.b GROUP BY district",
            "SELECT",
        ),
        ("SELECT count(cases) FROM a.b", "SELECT"),
        ("SELECT count(DISTINCT cases) FROM a.b", "SELECT"),
        ("SELECT median(cases) FROM a.b", "SELECT"),
        ("SELECT cases * 2 FROM a.b", "SELECT"),
        ("SELECT *, id FROM a.b", "SELECT"),
        ("SELECT id, name AS id FROM a.b", "SELECT"),
        ("SELECT \"a b\" FROM a.b", "SELECT"),
        ("SELECT * FROM a.b GROUP BY x", "SELECT"),
        (
            "SELECT bucket('soon'), count(*) FROM a.b GROUP BY 1",
            "SELECT",
        ),
        ("SELECT id FROM a.b ORDER BY time, id", "ORDER BY"),
        ("SELECT id FROM a.b ORDER BY time NULLS FIRST", "ORDER BY"),
        (
            "SELECT x, count(*) FROM a.b GROUP BY x ORDER BY y",
            "ORDER BY",
        ),
        ("SELECT x, count(*) FROM a.b GROUP BY 3", "GROUP BY"),
        ("SELECT count(*) FROM a.b GROUP BY count(*)", "GROUP BY"),
        ("SELECT name, count(*) FROM a.b GROUP BY name", "GROUP BY"),
        ("SELECT time, count(*) FROM a.b GROUP BY 1", "GROUP BY"),
        ("SELECT id, count(*) FROM a.b GROUP BY id", "GROUP BY"),
        ("SELECT max(time) FROM a.b", "SELECT"),
        ("SELECT sum(dataset) FROM a.b", "SELECT"),
        ("SELECT id FROM a.b ORDER BY dataset", "ORDER BY"),
        ("SELECT id FROM a.b ORDER BY 2", "ORDER BY"),
        ("SELECT * FROM a.b WHERE x IN (1, NULL)", "WHERE"),
        (
            "SELECT x, count(*) FROM a.b GROUP BY x LIMIT 100001",
            "LIMIT",
        ),
        (
            "SELECT x, count(*) FROM a.b GROUP BY x ORDER BY 2 LIMIT 100001",
            "LIMIT",
        ),
    ];
    for (sql, at) in cases {
        let e = translate(sql).expect_err(sql);
        assert_eq!(e.at, at, "{sql}: {e}");
    }
}

#[test]
fn data_fields_named_like_record_parts_and_flipped_segments() {
    let tr = t("SELECT data.name, max(data.time) AS t FROM a.b GROUP BY 1");
    assert_eq!(tr.query.group_by, ["field:data.name"]);
    assert_eq!(tr.query.aggregates, ["max:data.time"]);
    let v = q("SELECT id, time FROM a.b WHERE 'd1' = segment(0) ORDER BY 2 DESC");
    assert_eq!(v["segments"], json!(["0=d1"]));
    assert_eq!(v["order_by"], json!("-time"));
}

/// A thread with an async worker's stack: translation must not need more of it.
fn on_small_stack(sql: String) -> Result<Translation, Error> {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || translate(&sql))
        .unwrap()
        .join()
        .expect("no panic")
}

#[test]
fn operator_chains_as_long_as_a_statement_allows() {
    let chain = |sep: &str, term: &str| {
        let n = (MAX_SQL_LEN - 64) / (term.len() + sep.len());
        vec![term; n].join(sep)
    };
    let plus = chain("+", "1");
    let ors = chain(" OR ", "x=1");
    for sql in [
        format!("SELECT * FROM a.b WHERE x > {plus}"),
        format!("SELECT * FROM a.b ORDER BY {plus}"),
        format!("SELECT {plus} FROM a.b"),
        format!("SELECT x, count(*) FROM a.b GROUP BY {plus}"),
        format!("SELECT * FROM a.b WHERE {ors}"),
        format!("SELECT * FROM a.b WHERE x IN ({plus})"),
    ] {
        assert!(sql.len() <= MAX_SQL_LEN);
        match on_small_stack(sql.clone()) {
            Err(e) => assert!(e.to_string().len() < 300, "{e}"),
            Ok(t) => assert!(t.query.plan().is_err(), "{}", &sql[..40]),
        }
    }
}

#[test]
fn hostile_statements_are_capped() {
    let long = format!(
        "SELECT * FROM a.b WHERE x IN ({})",
        vec!["1"; 9000].join(",")
    );
    assert_eq!(translate(&long).unwrap_err().at, "statement");
    let deep = format!(
        "SELECT * FROM a.b WHERE {}x = 1{}",
        "(".repeat(200),
        ")".repeat(200)
    );
    assert_eq!(translate(&deep).unwrap_err().at, "syntax");
    let nots = format!("SELECT * FROM a.b WHERE {}x = 1", "NOT ".repeat(20));
    let tr = t(&nots);
    assert!(
        tr.query.plan().is_err(),
        "more nesting than a condition takes"
    );
}

#[test]
fn translations_plan() {
    for sql in [
        "SELECT * FROM \"hospital/flu\" WHERE a = 1 OR NOT (b > 2 AND c IS NULL)",
        "SELECT segment(1) AS district, sum(cases) FROM \"hospital/flu\" GROUP BY district",
        "SELECT time, coat FROM \"camera-3/sightings\" WHERE coat = 'red' ORDER BY time DESC LIMIT 10",
    ] {
        t(sql).query.plan().unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}
