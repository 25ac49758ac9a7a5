//! `fogmesh audit`: the audit log as a table (or one JSON document), `--follow` to keep printing
//! new entries, and `audit verify` to check its hash chain (exit 1 naming the first bad entry).

use std::io::BufRead;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::cli::{AuditArgs, AuditCmd, Cli};
use crate::client::Client;
use crate::commands::urlencode;
use crate::output;

const COLUMNS: [&str; 7] = [
    "seq", "time", "actor", "action", "dataset", "outcome", "detail",
];

/// Runs `fogmesh audit`.
pub fn run(cli: &Cli, a: &AuditArgs) -> Result<()> {
    match a.command {
        Some(AuditCmd::Verify) => verify(cli),
        None => list(cli, a),
    }
}

/// A time flag: ms since the epoch, or an age (`30m`, `12h`, `7d`) before now.
fn time(flag: &str, v: &str) -> Result<u64> {
    if let Ok(ms) = v.parse::<u64>() {
        return Ok(ms);
    }
    let age = fogmesh::node::parse_ttl(v)
        .with_context(|| format!("--{flag}: ms since the epoch, or an age such as 12h"))?;
    Ok(fogmesh::hlc::wall_millis().saturating_sub(age))
}

/// The filters of `a` as a query string (without `limit` and `after`).
fn filters(a: &AuditArgs) -> Result<Vec<(String, String)>> {
    let mut q = Vec::new();
    if let Some(v) = &a.since {
        q.push(("since".into(), time("since", v)?.to_string()));
    }
    if let Some(v) = &a.until {
        q.push(("until".into(), time("until", v)?.to_string()));
    }
    for (k, v) in [
        ("org", &a.org),
        ("action", &a.action),
        ("dataset", &a.dataset),
    ] {
        if let Some(v) = v {
            q.push((k.into(), v.clone()));
        }
    }
    if a.refused {
        q.push(("outcome".into(), "refused".into()));
    }
    Ok(q)
}

fn query(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", urlencode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn list(cli: &Cli, a: &AuditArgs) -> Result<()> {
    let c = Client::from_cli(cli)?;
    let mut pairs = filters(a)?;
    pairs.push(("limit".into(), a.limit.to_string()));
    let v = c.get(&format!("/v1/audit?{}", query(&pairs)))?;
    let entries = v["entries"].as_array().cloned().unwrap_or_default();
    if !a.follow {
        if cli.json {
            output::json(&v);
        } else {
            let rows: Vec<Value> = entries.iter().map(row).collect();
            output::table(&COLUMNS, &rows);
        }
        return Ok(());
    }
    for e in &entries {
        print_entry(cli, e);
    }
    let last = entries.last().and_then(|e| e["seq"].as_u64()).unwrap_or(0);
    let after = last.max(v["last_seq"].as_u64().unwrap_or(0));
    follow(cli, &c, &filters(a)?, after)
}

/// Prints entries as the node appends them, after seq `after`.
fn follow(cli: &Cli, c: &Client, pairs: &[(String, String)], after: u64) -> Result<()> {
    let mut pairs = pairs.to_vec();
    pairs.push(("after".into(), after.to_string()));
    let reader = c.stream(&format!("/v1/audit/events?{}", query(&pairs)))?;
    eprintln!("following the audit log (ctrl-c to stop)");
    let mut event = String::new();
    for line in reader.lines() {
        let line = line.context("reading the audit stream")?;
        if let Some(e) = line.strip_prefix("event:") {
            event = e.trim().to_owned();
        } else if let Some(d) = line.strip_prefix("data:") {
            let v: Value = serde_json::from_str(d.trim()).unwrap_or(Value::Null);
            match event.as_str() {
                "entry" => print_entry(cli, &v),
                "lagged" => eprintln!("fell behind: {} entries not shown", v["missed"]),
                _ => {}
            }
        }
    }
    bail!("the node closed the audit stream")
}

/// One entry as a table row: readable time, outcome with its reason.
fn row(e: &Value) -> Value {
    let outcome = match e["reason"].as_str() {
        Some(r) => format!("{}: {r}", e["outcome"].as_str().unwrap_or("?")),
        None => e["outcome"].as_str().unwrap_or("?").to_owned(),
    };
    json!({
        "seq": e["seq"], "time": e["time"].as_u64().map(utc).unwrap_or_default(),
        "actor": e["actor"], "action": e["action"], "dataset": e["dataset"],
        "outcome": outcome, "detail": e["detail"],
    })
}

/// One followed entry: an NDJSON line, or a line of text.
fn print_entry(cli: &Cli, e: &Value) {
    if cli.json {
        output::ndjson(e);
        return;
    }
    let r = row(e);
    let s = |k: &str| match &r[k] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        v => v.to_string(),
    };
    println!(
        "{:>6}  {}  {:<24}  {:<19}  {:<24}  {}  {}",
        s("seq"),
        s("time"),
        s("actor"),
        s("action"),
        s("dataset"),
        s("outcome"),
        s("detail")
    );
}

fn verify(cli: &Cli) -> Result<()> {
    let v = Client::from_cli(cli)?.get("/v1/audit/verify")?;
    let ok = v["ok"].as_bool().unwrap_or(false);
    if cli.json {
        output::json(&v);
    } else if ok {
        println!(
            "audit log intact: {} entries, from seq {} to the recorded head {}",
            v["entries"],
            v["first"],
            v["head"]
                .as_u64()
                .map_or("(none yet)".into(), |h| h.to_string())
        );
    }
    if ok {
        return Ok(());
    }
    let bad = &v["bad"];
    bail!(
        "the audit log fails verification at entry {} ({}): {}",
        bad["seq"],
        bad["problem"].as_str().unwrap_or("?"),
        bad["message"].as_str().unwrap_or("?")
    )
}

/// `YYYY-MM-DD hh:mm:ss` (UTC) of ms since the epoch.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, day_secs) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (h, min, s) = (day_secs / 3600, day_secs / 60 % 60, day_secs % 60);
    format!("{y:04}-{m:02}-{d:02} {h:02}:{min:02}:{s:02}")
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn times_print_as_utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_700_000_000_000), "2023-11-14 22:13:20");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(utc(4_107_542_399_999), "2100-02-28 23:59:59");
    }
}
