//! `fogmesh demo`: a flu outbreak across five organizations, each a separate `fogmesh run`
//! process on loopback. The hospital keeps patient rows private and a computation flow on its
//! node exports daily flu counts per district; the pharmacy's restock app reads them and orders
//! stock; the drug maker's planner reads the orders and sets production priorities; the
//! public-health agency asks the hospital for cases by district with a federated query and
//! publishes alert levels; the insurer's pricing app may only ask for aggregated treatment costs,
//! reprices, and after its grant is revoked gets nothing new. Then a member's outage and
//! catch-up; the insurer's keys are reported stolen: the hospital, an admin of the mesh, removes
//! it, every member cuts it off, and it receives nothing written after. Last, each node's audit
//! log: every action above, counted, its chain verified.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::procs::{
    demo_dir, form_mesh, start, start_orgs, stop, stop_all, wait_until, Org, Timeline,
};
use crate::cli::DemoArgs;
use crate::client::Client;

const ORGS: [&str; 5] = ["hospital", "pharmacy", "drugmaker", "agency", "insurer"];
pub(super) const CONVERGE: Duration = Duration::from_secs(60);
const DISTRICTS: u64 = 6;
const DAYS: u64 = 7;
const DAY_MS: u64 = 86_400_000;

/// What the scenario must leave in the audit logs: (node, action, outcome, actor's organization);
/// node `any`: some node's log.
const AUDITED: [super::audit::Expected; 31] = [
    ("hospital", "dataset-create", "ok", "hospital"),
    ("hospital", "flow-add", "ok", "hospital"),
    ("hospital", "invite", "ok", "hospital"),
    ("hospital", "member-admit", "ok", "pharmacy"),
    ("hospital", "member-admit", "ok", "drugmaker"),
    ("hospital", "member-admit", "ok", "agency"),
    ("hospital", "member-admit", "ok", "insurer"),
    ("hospital", "grant", "ok", "hospital"),
    ("hospital", "federated-aggregate", "ok", "agency"),
    ("hospital", "federated-aggregate", "ok", "insurer"),
    ("hospital", "revoke", "ok", "hospital"),
    ("hospital", "federated-aggregate", "refused", "insurer"),
    ("pharmacy", "join", "ok", "pharmacy"),
    ("pharmacy", "app-add", "ok", "pharmacy"),
    ("pharmacy", "dataset-create", "ok", "pharmacy"),
    ("pharmacy", "grant", "ok", "pharmacy"),
    ("pharmacy", "read", "refused", "pharmacy"),
    ("drugmaker", "join", "ok", "drugmaker"),
    ("drugmaker", "app-add", "ok", "drugmaker"),
    ("drugmaker", "grant", "ok", "drugmaker"),
    ("agency", "join", "ok", "agency"),
    ("agency", "app-add", "ok", "agency"),
    ("agency", "grant", "ok", "agency"),
    ("insurer", "join", "ok", "insurer"),
    ("insurer", "app-add", "ok", "insurer"),
    ("insurer", "dataset-create", "ok", "insurer"),
    ("insurer", "grant", "ok", "insurer"),
    ("any", "fetch", "ok", "pharmacy"),
    ("hospital", "member-remove", "ok", "hospital"),
    ("agency", "member-remove", "ok", "hospital"),
    ("agency", "revoke", "ok", "agency"),
];

/// The apps of the scenario, each with its own token.
struct Apps {
    restock: Client,
    marketing: Client,
    planner: Client,
    monitor: Client,
    pricing: Client,
    pricing_grant: String,
}

/// Runs the five-organization demo.
pub fn run(a: &DemoArgs) -> Result<()> {
    let dir = demo_dir()?;
    let t = Timeline(Instant::now());
    println!(
        "fogmesh demo: a flu outbreak across five organizations, five node processes on loopback\n\
         (homes and node logs under {})\n",
        dir.display()
    );
    let result = scenario(&t, &dir, a.serve);
    if a.keep || result.is_err() {
        println!("\nkept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn scenario(t: &Timeline, dir: &Path, serve: bool) -> Result<()> {
    let mut orgs = start_orgs(t, dir, &ORGS, "flu-response")?;
    form_mesh(t, &orgs, false)?;
    let apps = setup(t, &orgs)?;
    hospital_records(t, &orgs)?;
    pharmacy_restocks(t, &apps)?;
    drugmaker_plans(t, &apps)?;
    agency_alerts(t, &apps)?;
    insurer_reprices(t, &orgs, &apps)?;
    latency(t, &orgs[3], &orgs[0])?;
    show_views(t, &orgs)?;
    outage(t, &mut orgs)?;
    super::removal::compromised(t, &orgs)?;
    super::audit::summary(t, &orgs, &AUDITED)?;
    if serve {
        super::procs::serve(t, &orgs)?;
    }
    stop_all(&mut orgs)?;
    t.say("demo", "all five nodes stopped cleanly; done");
    Ok(())
}

fn create(o: &Org, name: &str, shared: bool, readers: &[&str]) -> Result<()> {
    let visibility = if shared { "shared" } else { "private" };
    o.api.post(
        "/v1/datasets",
        &json!({"name": name, "visibility": visibility, "readers": readers}),
    )?;
    Ok(())
}

fn app(o: &Org, name: &str, rights: &[&str]) -> Result<Client> {
    let v = o
        .api
        .post("/v1/apps", &json!({"name": name, "rights": rights}))?;
    let token = v["token"].as_str().context("no app token")?;
    Ok(o.api.as_app(token))
}

fn grant(o: &Org, dataset: &str, to: &str, rights: &[&str]) -> Result<String> {
    let g = o.api.post(
        "/v1/grants",
        &json!({"dataset": dataset, "to": to, "rights": rights}),
    )?;
    Ok(g["id"].as_str().unwrap_or("?").to_owned())
}

fn setup(t: &Timeline, orgs: &[Org]) -> Result<Apps> {
    let [hospital, pharmacy, drugmaker, agency, insurer] = orgs else {
        bail!("five organizations expected");
    };
    create(hospital, "patients", false, &[])?;
    create(hospital, "flu-daily", true, &[])?;
    create(pharmacy, "stock-orders", true, &[])?;
    create(drugmaker, "production", true, &["pharmacy"])?;
    create(
        agency,
        "alerts",
        true,
        &["hospital", "pharmacy", "drugmaker", "insurer"],
    )?;
    create(insurer, "premiums", true, &["agency"])?;
    hospital.api.post(
        "/v1/flows",
        &json!({"name": "flu-daily", "source": "hospital/patients", "target": "hospital/flu-daily",
                "filter": {"where": ["diagnosis=flu"]},
                "group_by": ["segment:0", "bucket:1d"], "aggregates": ["count", "avg:cost"]}),
    )?;
    t.say(
        "hospital",
        "private hospital/patients; flow flu-daily: patients -> filter diagnosis=flu -> count per district per day -> shared hospital/flu-daily",
    );
    let apps = Apps {
        restock: app(pharmacy, "restock", &["write:pharmacy/stock-orders"])?,
        marketing: app(pharmacy, "marketing", &[])?,
        planner: app(drugmaker, "planner", &["write:drugmaker/production"])?,
        monitor: app(agency, "monitor", &["write:agency/alerts"])?,
        pricing: app(insurer, "pricing", &["write:insurer/premiums"])?,
        pricing_grant: String::new(),
    };
    grant(
        hospital,
        "hospital/flu-daily",
        "pharmacy/restock",
        &["read"],
    )?;
    grant(hospital, "hospital/flu-daily", "agency/*", &["read"])?;
    grant(hospital, "hospital/patients", "agency/monitor", &["query"])?;
    let pricing_grant = grant(hospital, "hospital/patients", "insurer/pricing", &["query"])?;
    grant(
        pharmacy,
        "pharmacy/stock-orders",
        "drugmaker/planner",
        &["read"],
    )?;
    t.say(
        "hospital",
        "grants: flu-daily -> pharmacy/restock (read), agency/* (read); patients -> agency/monitor, insurer/pricing (query only)",
    );
    t.say(
        "pharmacy",
        "grants: stock-orders -> drugmaker/planner (read); apps restock and marketing registered",
    );
    t.say(
        "all",
        "shared datasets travel sealed to every member; only granted organizations get the keys",
    );
    Ok(Apps {
        pricing_grant,
        ..apps
    })
}

/// Flu patients on `day` in district `d` (district 3 is where the outbreak grows).
fn flu_cases(d: u64, day: u64) -> u64 {
    2 + (d * 3 + day * day) % 9 + if d == 3 { day * 3 } else { 0 }
}

fn patient_rows(start: u64, day: u64) -> Vec<Value> {
    let mut rows = Vec::new();
    for d in 1..=DISTRICTS {
        let time = start + day * DAY_MS + d * 1000;
        for p in 0..flu_cases(d, day) + 3 {
            let diagnosis = if p < flu_cases(d, day) { "flu" } else { "cold" };
            rows.push(
                json!({"name": format!("district-{d}/ward-{}/admission", p % 3 + 1),
                "time": time + p, "data": {"age": 20 + (p * 7 + d) % 60,
                "diagnosis": diagnosis, "cost": 300 + p * 45 + d * 10}}),
            );
        }
    }
    rows
}

fn hospital_records(t: &Timeline, orgs: &[Org]) -> Result<()> {
    let hospital = &orgs[0];
    let start = fogmesh::hlc::wall_millis() - DAYS * DAY_MS;
    let start = start - start % DAY_MS;
    let mut rows = 0;
    for day in 0..DAYS {
        let batch = patient_rows(start, day);
        rows += batch.len();
        hospital.api.post(
            "/v1/datasets/hospital/patients/records",
            &json!({"records": batch}),
        )?;
    }
    let groups = (DISTRICTS * DAYS) as usize;
    let took = wait_until("the flow to compute flu-daily", CONVERGE, || {
        Ok(count(&hospital.api, "hospital/flu-daily")? == groups)
    })?;
    t.say(
        "hospital",
        format!(
            "recorded {rows} private patient rows; the flow computed {groups} district-day flu counts in {:.0} ms",
            took.as_secs_f64() * 1e3
        ),
    );
    Ok(())
}

/// Records of `ds` that `c` may read (0 when it may not).
pub(super) fn count(c: &Client, ds: &str) -> Result<usize> {
    match c.get(&format!("/v1/datasets/{ds}/records?limit=10000")) {
        Ok(v) => Ok(v["records"].as_array().map_or(0, Vec::len)),
        Err(_) => Ok(0),
    }
}

fn records(c: &Client, ds: &str) -> Result<Vec<Value>> {
    let v = c.get(&format!("/v1/datasets/{ds}/records?limit=10000"))?;
    Ok(v["records"].as_array().cloned().unwrap_or_default())
}

/// Sums `field` of `rows` per first name segment.
fn per_district(rows: &[Value], field: &str) -> BTreeMap<String, f64> {
    let mut per = BTreeMap::new();
    for r in rows {
        let district = r["name"]
            .as_str()
            .and_then(|n| n.split('/').next())
            .unwrap_or("?");
        *per.entry(district.to_owned()).or_insert(0.0) += r["data"][field].as_f64().unwrap_or(0.0);
    }
    per
}

fn pharmacy_restocks(t: &Timeline, apps: &Apps) -> Result<()> {
    let groups = (DISTRICTS * DAYS) as usize;
    let took = wait_until("restock to read flu-daily", CONVERGE, || {
        Ok(count(&apps.restock, "hospital/flu-daily")? == groups)
    })?;
    let daily = records(&apps.restock, "hospital/flu-daily")?;
    let week = per_district(&daily, "count");
    t.say(
        "pharmacy",
        format!(
            "restock app reads hospital/flu-daily ({groups} counts, {:.0} ms after the flow): {}",
            took.as_secs_f64() * 1e3,
            fmt(&week)
        ),
    );
    let orders: Vec<Value> = week
        .iter()
        .map(|(d, n)| json!({"name": format!("{d}/oseltamivir"), "data": {"packs": (n * 2.0) as u64, "weekly_cases": n}}))
        .collect();
    apps.restock.post(
        "/v1/datasets/pharmacy/stock-orders/records",
        &json!({"records": orders}),
    )?;
    t.say(
        "pharmacy",
        "restock app published stock orders: 2 packs per weekly case, per district",
    );
    match apps
        .marketing
        .get("/v1/datasets/hospital/flu-daily/records")
    {
        Ok(_) => bail!("the marketing app read flu-daily without a grant"),
        Err(e) => t.say(
            "pharmacy",
            format!(
                "marketing app (same node, no grant) is refused: {}",
                first_line(&e)
            ),
        ),
    }
    Ok(())
}

fn first_line(e: &anyhow::Error) -> String {
    e.to_string().lines().next().unwrap_or("").to_owned()
}

fn drugmaker_plans(t: &Timeline, apps: &Apps) -> Result<()> {
    wait_until("the planner to read the orders", CONVERGE, || {
        Ok(count(&apps.planner, "pharmacy/stock-orders")? == DISTRICTS as usize)
    })?;
    let orders = records(&apps.planner, "pharmacy/stock-orders")?;
    let mut demand: Vec<(String, f64)> = per_district(&orders, "packs").into_iter().collect();
    demand.sort_by(|a, b| b.1.total_cmp(&a.1));
    let plan: Vec<Value> = demand
        .iter()
        .enumerate()
        .map(|(i, (d, packs))| json!({"name": format!("{d}/oseltamivir"), "data": {"priority": i + 1, "packs": packs}}))
        .collect();
    apps.planner.post(
        "/v1/datasets/drugmaker/production/records",
        &json!({"records": plan}),
    )?;
    t.say(
        "drugmaker",
        format!(
            "planner read the pharmacy's orders and set production priorities: first {} ({} packs)",
            demand[0].0, demand[0].1
        ),
    );
    Ok(())
}

/// A federated aggregate over the hospital's private patients, by district.
fn federated(c: &Client, aggregates: &[&str]) -> Result<Value> {
    c.post(
        "/v1/query",
        &json!({"datasets": ["hospital/patients"], "where": ["diagnosis=flu"],
                "group_by": ["segment:0"], "aggregates": aggregates, "federated": true}),
    )
}

fn source_line(v: &Value) -> String {
    v["sources"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            format!(
                "{} {}{}",
                s["owner"].as_str().unwrap_or("?"),
                s["status"].as_str().unwrap_or("?"),
                s["reason"]
                    .as_str()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The agency asks the same question in SQL, federated, for the three worst districts; the answer
/// must agree with the view query's.
fn sql_top_districts(t: &Timeline, apps: &Apps, cases: &BTreeMap<String, f64>) -> Result<()> {
    const TOP: &str = "SELECT segment(0) AS district, count(*) AS cases \
        FROM \"hospital/patients\" WHERE diagnosis = 'flu' \
        GROUP BY district ORDER BY cases DESC LIMIT 3";
    let v = apps
        .monitor
        .post("/v1/sql", &json!({"sql": TOP, "federated": true}))?;
    let rows = v["rows"].as_array().cloned().unwrap_or_default();
    let top: Vec<(String, f64)> = rows
        .iter()
        .map(|r| {
            let d = r["district"].as_str().unwrap_or("?").to_owned();
            (d, r["cases"].as_f64().unwrap_or(-1.0))
        })
        .collect();
    let mut want: Vec<(&String, &f64)> = cases.iter().collect();
    want.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
    let agrees = top.len() == want.len().min(3)
        && top
            .iter()
            .zip(&want)
            .all(|((d, n), (wd, wn))| d == *wd && n == *wn);
    if !agrees {
        bail!("SQL's top districts {top:?} disagree with the view query's {want:?}");
    }
    let shown: Vec<String> = top.iter().map(|(d, n)| format!("{d} {n:.0}")).collect();
    t.say(
        "agency",
        format!("the same in SQL (fogmesh sql --federated \"SELECT segment(0) AS district, count(*) AS cases ... ORDER BY cases DESC LIMIT 3\"): {}", shown.join(", ")),
    );
    Ok(())
}

fn agency_alerts(t: &Timeline, apps: &Apps) -> Result<()> {
    let sent = Instant::now();
    let v = federated(&apps.monitor, &["count"])?;
    let groups = v["groups"].as_array().cloned().unwrap_or_default();
    let cases: BTreeMap<String, f64> = groups
        .iter()
        .map(|g| {
            (
                g["segment:0"].as_str().unwrap_or("?").to_owned(),
                g["count"].as_f64().unwrap_or(0.0),
            )
        })
        .collect();
    t.say(
        "agency",
        format!(
            "federated query to the hospital (its rows never leave it), {:.0} ms, {}: {}",
            sent.elapsed().as_secs_f64() * 1e3,
            source_line(&v),
            fmt(&cases)
        ),
    );
    sql_top_districts(t, apps, &cases)?;
    let alerts: Vec<Value> = cases
        .iter()
        .map(|(d, n)| {
            let level = match *n as u64 {
                n if n >= 80 => "high",
                n if n >= 45 => "medium",
                _ => "low",
            };
            json!({"name": format!("{d}/flu-alert"), "data": {"level": level, "weekly_cases": n}})
        })
        .collect();
    apps.monitor.post(
        "/v1/datasets/agency/alerts/records",
        &json!({"records": alerts}),
    )?;
    let high: Vec<&String> = cases
        .iter()
        .filter(|(_, n)| **n >= 100.0)
        .map(|(d, _)| d)
        .collect();
    t.say(
        "agency",
        format!(
            "published alert levels for {} districts to every member (high: {high:?})",
            cases.len()
        ),
    );
    Ok(())
}

fn insurer_reprices(t: &Timeline, orgs: &[Org], apps: &Apps) -> Result<()> {
    let v = federated(&apps.pricing, &["count", "avg:cost"])?;
    let groups = v["groups"].as_array().cloned().unwrap_or_default();
    let premiums: Vec<Value> = groups
        .iter()
        .map(|g| {
            let avg = g["avg:cost"].as_f64().unwrap_or(0.0);
            let change = ((avg - 400.0) / 40.0).clamp(0.0, 15.0).round();
            json!({"name": format!("{}/flu-cover", g["segment:0"].as_str().unwrap_or("?")),
                   "data": {"premium_change_pct": change, "avg_treatment_cost": avg}})
        })
        .collect();
    apps.pricing.post(
        "/v1/datasets/insurer/premiums/records",
        &json!({"records": premiums}),
    )?;
    t.say(
        "insurer",
        format!(
            "pricing app (query-only) got average flu treatment cost per district ({}) and published {} premium changes",
            source_line(&v),
            premiums.len()
        ),
    );
    match apps.pricing.get("/v1/datasets/hospital/patients/records") {
        Ok(_) => bail!("the pricing app read patient rows"),
        Err(e) => t.say(
            "insurer",
            format!(
                "pricing app asking for the rows themselves: {}",
                first_line(&e)
            ),
        ),
    }
    orgs[0]
        .api
        .delete(&format!("/v1/grants/{}", apps.pricing_grant))?;
    t.say("hospital", "revoked insurer/pricing's query grant");
    let v = federated(&apps.pricing, &["count", "avg:cost"])?;
    let n = v["groups"].as_array().map_or(0, Vec::len);
    if n != 0 {
        bail!("the revoked pricing app still got {n} groups");
    }
    t.say(
        "insurer",
        format!("pricing app asks again: 0 groups; {}", source_line(&v)),
    );
    Ok(())
}

/// Write-to-visible latency of single records over the live push path.
fn latency(t: &Timeline, from: &Org, to: &Org) -> Result<()> {
    let mut lat = Vec::new();
    for i in 0..20 {
        let id = format!("probe-{i}");
        let rec =
            json!({"records": [{"id": id, "name": "district-1/probe", "data": {"level": "test"}}]});
        let sent = Instant::now();
        from.api.post("/v1/datasets/agency/alerts/records", &rec)?;
        let path = format!("/v1/datasets/agency/alerts/records/{id}");
        wait_until("a probe to arrive", CONVERGE, || {
            Ok(to.api.get(&path).is_ok())
        })?;
        lat.push(sent.elapsed().as_secs_f64() * 1e3);
    }
    lat.sort_by(f64::total_cmp);
    t.say(
        to.name,
        format!(
            "write-to-visible {} -> {} over HTTP+mesh, sealed: p50 {:.1} ms, max {:.1} ms (20 probes, incl. polling)",
            from.name,
            to.name,
            lat[lat.len() / 2],
            lat[lat.len() - 1]
        ),
    );
    Ok(())
}

fn fmt(per: &BTreeMap<String, f64>) -> String {
    per.iter()
        .map(|(d, n)| format!("{d}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn show_views(t: &Timeline, orgs: &[Org]) -> Result<()> {
    println!();
    for o in orgs {
        let ds = o.api.get("/v1/datasets")?;
        let list: Vec<String> = ds["datasets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| {
                let id = d["id"].as_str().unwrap_or("?");
                match d["readable"].as_bool() {
                    Some(false) => format!("{id} (sealed, relays {})", d["envelopes"]),
                    _ => format!("{id} ({})", d["records"]),
                }
            })
            .collect();
        t.say(o.name, format!("holds {}", list.join(", ")));
    }
    println!();
    t.say(
        "all",
        "patient rows never left the hospital; shared datasets reached every member sealed, readable only where granted",
    );
    Ok(())
}

fn outage(t: &Timeline, orgs: &mut [Org]) -> Result<()> {
    let p = orgs[1].proc.take().context("pharmacy not running")?;
    stop(p)?;
    t.say("pharmacy", "node stopped (maintenance)");
    let now = fogmesh::hlc::wall_millis();
    let day8 = patient_rows(now - now % DAY_MS, 0);
    orgs[0].api.post(
        "/v1/datasets/hospital/patients/records",
        &json!({"records": day8}),
    )?;
    let want = (DISTRICTS * (DAYS + 1)) as usize;
    wait_until("the flow to add today", CONVERGE, || {
        Ok(count(&orgs[0].api, "hospital/flu-daily")? == want)
    })?;
    t.say(
        "hospital",
        format!("today's admissions while the pharmacy was down; flu-daily now {want} counts"),
    );
    let (proc, api) = start(&orgs[1].home)?;
    orgs[1].proc = Some(proc);
    orgs[1].api = api;
    let pharmacy = &orgs[1];
    let took = wait_until("the pharmacy to catch up", CONVERGE, || {
        Ok(count(&pharmacy.api, "hospital/flu-daily")? == want)
    })?;
    t.say(
        "pharmacy",
        format!(
            "restarted and caught up: {want} counts, {:.0} ms after it answered again",
            took.as_secs_f64() * 1e3
        ),
    );
    Ok(())
}
