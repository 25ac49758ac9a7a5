//! `fogmesh demo`: a flu outbreak across five organizations, each a separate `fogmesh run`
//! process on loopback. The hospital founds the mesh and invites the others; each shares what its
//! partners need and keeps the rest private; the timeline shows what each one sees as the views
//! converge, how long a write takes to become visible elsewhere, and a member catching up after
//! an outage.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::procs::{demo_dir, init, start, stop, wait_until, NodeProcess, Timeline};
use crate::cli::DemoArgs;
use crate::client::Client;

const ORGS: [&str; 5] = ["hospital", "pharmacy", "drugmaker", "agency", "insurer"];
const CONVERGE: Duration = Duration::from_secs(60);
const DISTRICTS: u64 = 6;
const DAY_MS: u64 = 86_400_000;

struct Org {
    name: &'static str,
    home: PathBuf,
    proc: Option<NodeProcess>,
    api: Client,
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
    let result = scenario(&t, &dir);
    if a.keep || result.is_err() {
        println!("\nkept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn scenario(t: &Timeline, dir: &Path) -> Result<()> {
    let mut orgs = start_all(t, dir)?;
    form_mesh(t, &orgs)?;
    create_datasets(t, &orgs)?;
    hospital_reports(t, &orgs)?;
    pharmacy_and_agency_react(t, &orgs)?;
    show_views(t, &orgs)?;
    outage(t, &mut orgs)?;
    for o in &mut orgs {
        if let Some(p) = o.proc.take() {
            stop(p)?;
        }
    }
    t.say("demo", "all five nodes stopped cleanly; done");
    Ok(())
}

fn start_all(t: &Timeline, dir: &Path) -> Result<Vec<Org>> {
    let mut orgs = Vec::new();
    for name in ORGS {
        let home = dir.join(name);
        init(&home, name)?;
        let (proc, api) = start(&home)?;
        let peer = api.get("/v1/node")?["peer_id"]
            .as_str()
            .unwrap_or("?")
            .to_owned();
        t.say(name, format!("node up, peer {}", short(&peer)));
        orgs.push(Org {
            name,
            home,
            proc: Some(proc),
            api,
        });
    }
    Ok(orgs)
}

fn short(peer: &str) -> String {
    peer.get(peer.len().saturating_sub(8)..)
        .unwrap_or(peer)
        .to_owned()
}

fn form_mesh(t: &Timeline, orgs: &[Org]) -> Result<()> {
    let hospital = &orgs[0];
    for o in &orgs[1..] {
        let inv = hospital
            .api
            .post("/v1/invites", &json!({"ttl_secs": 600}))?;
        let token = inv["token"].as_str().context("no token")?;
        let joined = o.api.post("/v1/join", &json!({ "token": token }))?;
        t.say(
            o.name,
            format!(
                "joined with a one-time invitation ({} members so far)",
                joined["members"].as_array().map_or(0, Vec::len)
            ),
        );
    }
    for o in orgs {
        let took = wait_until("the roster to reach everyone", CONVERGE, || {
            Ok(o.api.get("/v1/mesh")?["members"]
                .as_array()
                .map_or(0, Vec::len)
                == ORGS.len())
        })?;
        let up = o.api.get("/v1/peers")?["peers"]
            .as_array()
            .map_or(0, |p| p.iter().filter(|p| p["up"] == true).count());
        t.say(
            o.name,
            format!(
                "sees all 5 members ({up} connected) after {:.0} ms more",
                took.as_secs_f64() * 1e3
            ),
        );
    }
    Ok(())
}

fn create(o: &Org, name: &str, readers: &[&str]) -> Result<()> {
    let visibility = if readers.is_empty() {
        "private"
    } else {
        "shared"
    };
    o.api.post(
        "/v1/datasets",
        &json!({"name": name, "visibility": visibility, "readers": readers}),
    )?;
    Ok(())
}

fn create_datasets(t: &Timeline, orgs: &[Org]) -> Result<()> {
    let [hospital, pharmacy, drugmaker, agency, insurer] = orgs else {
        anyhow::bail!("five organizations expected");
    };
    create(hospital, "patients", &[])?;
    create(hospital, "flu-cases", &["pharmacy", "agency"])?;
    create(pharmacy, "antiviral-sales", &["agency", "drugmaker"])?;
    create(drugmaker, "shipments", &["pharmacy"])?;
    create(
        agency,
        "alerts",
        &["hospital", "pharmacy", "drugmaker", "insurer"],
    )?;
    create(insurer, "claims", &[])?;
    t.say(
        "all",
        "datasets: hospital/patients (private), hospital/flu-cases -> pharmacy, agency;",
    );
    t.say(
        "",
        "pharmacy/antiviral-sales -> agency, drugmaker; drugmaker/shipments -> pharmacy;",
    );
    t.say("", "agency/alerts -> everyone; insurer/claims (private)");
    Ok(())
}

fn hospital_reports(t: &Timeline, orgs: &[Org]) -> Result<()> {
    let (hospital, agency) = (&orgs[0], &orgs[3]);
    let start = fogmesh::hlc::wall_millis() - 7 * DAY_MS;
    let (mut rows, mut counts) = (0, 0);
    for day in 0..7u64 {
        let mut patients = Vec::new();
        let mut cases = Vec::new();
        for d in 1..=DISTRICTS {
            let n = 2 + (d * 3 + day * day) % 9 + if d == 3 { day * 2 } else { 0 };
            let time = start + day * DAY_MS + d * 1000;
            for p in 0..n {
                patients.push(json!({"name": format!("district-{d}/ward-{}/flu-admission", p % 3 + 1),
                    "time": time + p, "data": {"age": 20 + (p * 7 + d) % 60, "cost": 300 + p * 45}}));
            }
            cases.push(
                json!({"id": format!("d{d}-day{day}"), "name": format!("district-{d}/flu-daily"),
                "time": time, "data": {"day": day, "cases": n}}),
            );
        }
        rows += patients.len();
        counts += cases.len();
        hospital.api.post(
            "/v1/datasets/hospital/patients/records",
            &json!({"records": patients}),
        )?;
        hospital.api.post(
            "/v1/datasets/hospital/flu-cases/records",
            &json!({"records": cases}),
        )?;
    }
    t.say(
        "hospital",
        format!("recorded {rows} private patient rows; shared {counts} daily district counts"),
    );
    let took = wait_until("the agency to see every count", CONVERGE, || {
        Ok(count(agency, "hospital/flu-cases")? == counts)
    })?;
    t.say(
        "agency",
        format!(
            "has all {counts} hospital counts ({:.0} ms after the last write)",
            took.as_secs_f64() * 1e3
        ),
    );
    latency(t, hospital, agency)
}

/// Write-to-visible latency of single records, hospital -> agency, over the live push path.
fn latency(t: &Timeline, from: &Org, to: &Org) -> Result<()> {
    let mut lat = Vec::new();
    for i in 0..20 {
        let id = format!("probe-{i}");
        let rec =
            json!({"records": [{"id": id, "name": "district-1/probe", "data": {"cases": 0}}]});
        let sent = Instant::now();
        from.api
            .post("/v1/datasets/hospital/flu-cases/records", &rec)?;
        let path = format!("/v1/datasets/hospital/flu-cases/records/{id}");
        wait_until("a probe to arrive", CONVERGE, || {
            Ok(to.api.get(&path).is_ok())
        })?;
        lat.push(sent.elapsed().as_secs_f64() * 1e3);
    }
    lat.sort_by(f64::total_cmp);
    t.say(
        "agency",
        format!(
            "write-to-visible latency hospital -> agency over HTTP+mesh: p50 {:.1} ms, max {:.1} ms (20 probes, incl. polling)",
            lat[lat.len() / 2],
            lat[lat.len() - 1]
        ),
    );
    Ok(())
}

fn count(o: &Org, ds: &str) -> Result<usize> {
    match o.api.get(&format!("/v1/datasets/{ds}/records?limit=10000")) {
        Ok(v) => Ok(v["records"].as_array().map_or(0, Vec::len)),
        Err(_) => Ok(0),
    }
}

fn district_totals(o: &Org) -> Result<Vec<(String, i64)>> {
    let v = o
        .api
        .get("/v1/datasets/hospital/flu-cases/records?limit=10000")?;
    let mut per: std::collections::BTreeMap<String, i64> = Default::default();
    for r in v["records"].as_array().into_iter().flatten() {
        let name = r["name"].as_str().unwrap_or("");
        let district = name.split('/').next().unwrap_or("").to_owned();
        *per.entry(district).or_default() += r["data"]["cases"].as_i64().unwrap_or(0);
    }
    Ok(per.into_iter().collect())
}

fn pharmacy_and_agency_react(t: &Timeline, orgs: &[Org]) -> Result<()> {
    let [_, pharmacy, drugmaker, agency, insurer] = orgs else {
        anyhow::bail!("five organizations expected");
    };
    let totals = district_totals(agency)?;
    let (hot, n) = totals
        .iter()
        .max_by_key(|(_, n)| *n)
        .cloned()
        .unwrap_or_default();
    t.say(
        "agency",
        format!("weekly cases per district: {}", fmt_totals(&totals)),
    );
    let sales: Vec<Value> = (1..=DISTRICTS)
        .map(|d| json!({"name": format!("district-{d}/oseltamivir"), "data": {"packs": if format!("district-{d}") == hot { 140 } else { 20 + d * 3 }}}))
        .collect();
    pharmacy.api.post(
        "/v1/datasets/pharmacy/antiviral-sales/records",
        &json!({"records": sales}),
    )?;
    t.say(
        "pharmacy",
        "shared this week's antiviral sales with the agency and the drug maker",
    );
    let alert = json!({"records": [{"name": format!("{hot}/flu-alert"), "data": {"level": "high", "cases": n, "advice": "stock antivirals, open a fever clinic"}}]});
    agency
        .api
        .post("/v1/datasets/agency/alerts/records", &alert)?;
    t.say(
        "agency",
        format!("published a high flu alert for {hot} ({n} cases this week) to all members"),
    );
    wait_until("drug maker to see the sales", CONVERGE, || {
        Ok(count(drugmaker, "pharmacy/antiviral-sales")? == DISTRICTS as usize)
    })?;
    let ship = json!({"records": [{"name": format!("{hot}/oseltamivir"), "data": {"packs": 500, "eta_hours": 12}}]});
    drugmaker
        .api
        .post("/v1/datasets/drugmaker/shipments/records", &ship)?;
    t.say(
        "drugmaker",
        format!("saw the sales spike in {hot}; shipping 500 packs there, shared with the pharmacy"),
    );
    wait_until("the alert to reach the insurer", CONVERGE, || {
        Ok(count(insurer, "agency/alerts")? == 1)
    })?;
    wait_until("the shipment to reach the pharmacy", CONVERGE, || {
        Ok(count(pharmacy, "drugmaker/shipments")? == 1)
    })?;
    t.say("pharmacy", "received the drug maker's shipment notice");
    Ok(())
}

fn fmt_totals(totals: &[(String, i64)]) -> String {
    totals
        .iter()
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
                    Some(false) => format!("{id} (relays {} sealed envelopes)", d["envelopes"]),
                    _ => format!("{id} ({})", d["records"]),
                }
            })
            .collect();
        t.say(o.name, format!("holds {}", list.join(", ")));
    }
    println!();
    t.say("all", "raw patient rows and claims never left their owners; every member relays the shared datasets, sealed; only their readers hold the keys");
    Ok(())
}

fn outage(t: &Timeline, orgs: &mut [Org]) -> Result<()> {
    let p = orgs[1].proc.take().context("pharmacy not running")?;
    stop(p)?;
    t.say("pharmacy", "node stopped (maintenance)");
    let mut cases = Vec::new();
    for d in 1..=DISTRICTS {
        cases.push(
            json!({"name": format!("district-{d}/flu-daily"), "data": {"day": 7, "cases": 3 + d}}),
        );
    }
    orgs[0].api.post(
        "/v1/datasets/hospital/flu-cases/records",
        &json!({"records": cases}),
    )?;
    let want = count(&orgs[0], "hospital/flu-cases")?;
    t.say(
        "hospital",
        format!("shared day 8 while the pharmacy was down ({want} counts now)"),
    );
    let (proc, api) = start(&orgs[1].home)?;
    orgs[1].proc = Some(proc);
    orgs[1].api = api;
    let pharmacy = &orgs[1];
    let took = wait_until("the pharmacy to catch up", CONVERGE, || {
        Ok(count(pharmacy, "hospital/flu-cases")? == want)
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
