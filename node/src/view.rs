//! The shared-view commands: `query` (rows or aggregates, federated on request), `sql` (the
//! same in SQL), `search`
//! (pushed down, answers as they arrive) and `flow` (computation flows).

use std::io::{BufRead, Write};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::cli::{Cli, FlowArgs, Format, Order, QueryArgs, SearchArgs, SqlArgs};
use crate::client::Client;
use crate::commands::{records, records_path, urlencode};
use crate::output;

pub(crate) fn flow_add(cli: &Cli, a: &FlowArgs) -> Result<()> {
    let body = json!({
        "name": a.name, "source": a.source, "target": a.target,
        "filter": a.filter.to_json(),
        "project": a.project, "group_by": a.group_by, "aggregates": a.aggregates,
        "min_rows": a.min_rows,
    });
    let v = Client::from_cli(cli)?.post("/v1/flows", &body)?;
    if cli.json {
        output::json(&v);
    } else {
        println!(
            "flow {} started: {} -> {}",
            a.name,
            v["source"].as_str().unwrap_or("?"),
            v["target"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

pub(crate) fn flow_list(cli: &Cli) -> Result<()> {
    let v = Client::from_cli(cli)?.get("/v1/flows")?;
    if cli.json {
        output::json(&v);
    } else {
        output::table(
            &["name", "source", "target", "group_by", "aggregates"],
            v["flows"].as_array().map_or(&[][..], |a| a),
        );
    }
    Ok(())
}

pub(crate) fn flow_remove(cli: &Cli, name: &str) -> Result<()> {
    let v = Client::from_cli(cli)?.delete(&format!("/v1/flows/{}", urlencode(name)))?;
    if cli.json {
        output::json(&v);
    } else {
        println!("flow {name} removed");
    }
    Ok(())
}

pub(crate) fn query(cli: &Cli, a: &QueryArgs) -> Result<()> {
    let format = if cli.json { Format::Json } else { a.format };
    // Rows as NDJSON stream from `/v1/query`, whatever the limit (the records page of one
    // dataset stops at 10,000).
    let streamed = format == Format::Ndjson && a.aggregates.is_empty();
    let simple = a.datasets.len() == 1
        && a.filter.segments.is_empty()
        && a.select.is_empty()
        && a.order_by.is_none()
        && a.group_by.is_empty()
        && a.aggregates.is_empty()
        && !a.federated
        && !streamed;
    if simple {
        return query_records(cli, a);
    }
    if a.order.is_some() && a.datasets.len() > 1 {
        bail!("--order goes with one dataset; use --order-by time or --order-by -time");
    }
    let order_by = a.order_by.as_deref().or(a.order.map(Order::by_time));
    let mut body = json!({
        "datasets": a.datasets, "select": a.select,
        "order_by": order_by, "limit": a.limit, "group_by": a.group_by,
        "aggregates": a.aggregates, "federated": a.federated, "timeout_ms": a.timeout_ms,
    });
    if let (Some(b), Value::Object(f)) = (body.as_object_mut(), a.filter.to_json()) {
        b.extend(f);
    }
    if streamed {
        return stream_rows(cli, "/v1/query", &body);
    }
    let v = Client::from_cli(cli)?.post("/v1/query", &body)?;
    let rows = v["groups"]
        .as_array()
        .or(v["rows"].as_array())
        .cloned()
        .unwrap_or_default();
    match format {
        Format::Json => output::json(&v),
        Format::Ndjson => rows.iter().for_each(output::ndjson),
        Format::Table => print_view(&v, &rows, None),
    }
    Ok(())
}

pub(crate) fn sql(cli: &Cli, a: &SqlArgs) -> Result<()> {
    let statement = if a.statement == "-" {
        std::io::read_to_string(std::io::stdin().lock()).context("reading the statement")?
    } else {
        a.statement.clone()
    };
    // Translated here too, so that a statement outside the dialect is named before any request
    // and --explain needs no node.
    let t = fogmesh::view::sql::translate(&statement).context("sql")?;
    if a.explain {
        let mut q = serde_json::to_value(&t.query)?;
        q["federated"] = Value::Bool(a.federated);
        q["timeout_ms"] = json!(a.timeout_ms);
        // What the statement leaves unset is left out, as one would write the query by hand.
        if let Value::Object(m) = &mut q {
            m.retain(|_, v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()));
        }
        let order: Vec<String> = t
            .group_order
            .iter()
            .map(|(c, desc)| if *desc { format!("-{c}") } else { c.clone() })
            .collect();
        let groups = json!({ "order_by": order, "limit": t.group_limit });
        let explained = json!({ "query": q, "columns": t.column_names(), "groups": groups });
        output::json(&explained);
        return Ok(());
    }
    let body = json!({ "sql": statement, "federated": a.federated, "timeout_ms": a.timeout_ms });
    let format = if cli.json { Format::Json } else { a.format };
    if format == Format::Ndjson && t.query.aggregates.is_empty() {
        return stream_rows(cli, "/v1/sql", &body);
    }
    let v = Client::from_cli(cli)?.post("/v1/sql", &body)?;
    let rows = v["rows"].as_array().cloned().unwrap_or_default();
    match format {
        Format::Json => output::json(&v),
        Format::Ndjson => rows.iter().for_each(output::ndjson),
        Format::Table => {
            let columns: Vec<String> = v["columns"]
                .as_array()
                .map(|c| {
                    c.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            print_view(&v, &rows, Some(columns));
        }
    }
    Ok(())
}

/// Posts `body` asking for NDJSON and prints each row as it arrives.
fn stream_rows(cli: &Cli, path: &str, body: &Value) -> Result<()> {
    let reader = Client::from_cli(cli)?.post_stream(path, body)?;
    let mut out = std::io::stdout().lock();
    for line in reader.lines() {
        writeln!(out, "{}", line.context("reading the rows")?)?;
    }
    Ok(())
}

/// Rows or groups as a table (columns as given, or the first row's keys), then who answered
/// (aggregates).
fn print_view(v: &Value, rows: &[Value], columns: Option<Vec<String>>) {
    let flat: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut r = r.clone();
            if r.get("data").is_some() {
                r["data"] = Value::String(r["data"].to_string());
            }
            r
        })
        .collect();
    let columns: Vec<String> = columns.unwrap_or_else(|| {
        flat.first()
            .and_then(Value::as_object)
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    });
    let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
    output::table(&columns, &flat);
    match v["sources"].as_array() {
        Some(sources) => {
            for s in sources {
                eprintln!(
                    "{}: {}{}",
                    s["dataset"].as_str().unwrap_or("?"),
                    s["status"].as_str().unwrap_or("?"),
                    s["reason"]
                        .as_str()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default(),
                );
            }
            eprintln!("{} groups", flat.len());
        }
        None => eprintln!("{}", records(flat.len())),
    }
}

fn query_records(cli: &Cli, a: &QueryArgs) -> Result<()> {
    let mut q = form_query(a);
    if q.is_empty() {
        q.push_str("limit=1000");
    }
    let v =
        Client::from_cli(cli)?.get(&format!("{}/records?{q}", records_path(&a.datasets[0])?))?;
    let rows = v["records"].as_array().cloned().unwrap_or_default();
    let format = if cli.json { Format::Json } else { a.format };
    match format {
        Format::Json => output::json(&v),
        Format::Ndjson => rows.iter().for_each(output::ndjson),
        Format::Table => {
            let rows: Vec<Value> = rows
                .into_iter()
                .map(|mut r| {
                    r["data"] = Value::String(r["data"].to_string());
                    r
                })
                .collect();
            output::table(&["id", "time", "name", "data"], &rows);
            eprintln!("{}", records(rows.len()));
        }
    }
    Ok(())
}

fn form_query(a: &QueryArgs) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    let f = &a.filter;
    if let Some(p) = &f.name_prefix {
        s.append_pair("name_prefix", p);
    }
    for (k, v) in [("since", f.since), ("until", f.until)] {
        if let Some(v) = v {
            s.append_pair(k, &v.to_string());
        }
    }
    for w in &f.predicates {
        s.append_pair("where", w);
    }
    if let Some(l) = a.limit {
        s.append_pair("limit", &l.to_string());
    }
    if let Some(o) = a.order {
        s.append_pair("order", &o.to_string());
    }
    s.finish()
}

pub(crate) fn search(cli: &Cli, a: &SearchArgs) -> Result<()> {
    let body = json!({
        "dataset": a.dataset, "targets": a.targets,
        "filter": a.filter.to_json(),
        "location_segment": a.location_segment, "limit": a.limit, "timeout_ms": a.timeout_ms,
    });
    let reader = Client::from_cli(cli)?.post_stream("/v1/search", &body)?;
    let t0 = std::time::Instant::now();
    for line in reader.lines() {
        let line = line.context("reading the search answers")?;
        if line.trim().is_empty() {
            continue;
        }
        let ev: Value = serde_json::from_str(&line).context("a search answer is not JSON")?;
        if cli.json {
            output::ndjson(&ev);
            continue;
        }
        print_search_event(&ev, t0.elapsed());
    }
    Ok(())
}

fn print_search_event(ev: &Value, at: std::time::Duration) {
    let from = ev["from"].as_str().unwrap_or("?");
    let at = format!("[{:>6.0} ms]", at.as_secs_f64() * 1e3);
    match ev["event"].as_str() {
        Some("answered") => {
            let m = ev["matches"].as_array().map_or(&[][..], |a| a);
            println!("{at} {from}: {} match(es)", m.len());
            for x in m {
                println!(
                    "           {}  {}  at {}  ({})",
                    x["time"],
                    x["name"].as_str().unwrap_or("?"),
                    x["location"].as_str().unwrap_or("?"),
                    x["id"].as_str().unwrap_or("?")
                );
            }
        }
        Some("refused") => println!(
            "{at} {from}: refused: {}",
            ev["reason"].as_str().unwrap_or("?")
        ),
        Some("timed_out") => println!("{at} {from}: no answer in time"),
        Some("summary") => println!(
            "{at} done: {} match(es); answered {}, refused {}, timed out {}",
            ev["matches"], ev["answered"], ev["refused"], ev["timed_out"]
        ),
        _ => println!("{at} {ev}"),
    }
}
