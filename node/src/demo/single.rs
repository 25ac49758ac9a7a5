//! `fogmesh demo --single`: one organization's node as a real process on loopback.
//!
//! The hospital's node runs as a separate `fogmesh run` process. Its ward app publishes flu
//! admissions, a dashboard app reads and watches them, an outside app without rights is refused,
//! and the node is stopped and restarted to show that every acknowledged record survives.

use std::io::BufRead;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::procs::{demo_dir, init, start, stop, Timeline};
use crate::cli::{Cli, DemoArgs};
use crate::client::Client;
use crate::daemon::API_ADDR_FILE;

/// Runs the single-node walkthrough.
pub fn run(_cli: &Cli, a: &DemoArgs) -> Result<()> {
    let dir = demo_dir()?;
    let home = dir.join("hospital");
    let t = Timeline(Instant::now());
    println!(
        "fogmesh demo: one organization's node, its apps, and durability (home: {})\n",
        home.display()
    );
    let result = walkthrough(&t, &home);
    if a.keep {
        println!("\nkept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn walkthrough(t: &Timeline, home: &Path) -> Result<()> {
    init(home, "hospital", "flu-response")?;
    let (proc, admin) = start(home)?;
    let node = admin.get("/v1/node")?;
    t.say(
        "hospital",
        format!("node up: peer {}", node["peer_id"].as_str().unwrap_or("?")),
    );
    admin.post(
        "/v1/datasets",
        &json!({"name": "patients", "visibility": "private"}),
    )?;
    admin.post(
        "/v1/datasets",
        &json!({"name": "flu-cases", "visibility": "shared", "priority": "high",
        "readers": ["pharmacy", "public-health"]}),
    )?;
    t.say(
        "hospital",
        "datasets hospital/patients (private) and hospital/flu-cases (shared, high priority)",
    );
    let ward = app(
        &admin,
        home,
        "ward-intake",
        &["write:hospital/patients", "write:hospital/flu-cases"],
    )?;
    let dash = app(&admin, home, "flu-dashboard", &["read:hospital/flu-cases"])?;
    let outsider = app(&admin, home, "ad-tracker", &[])?;
    t.say(
        "hospital",
        "apps: ward-intake (write), flu-dashboard (read flu-cases), ad-tracker (no rights)",
    );
    let watcher = spawn_watcher(&dash)?;
    publish_week(t, &ward)?;
    show_counts(t, &dash)?;
    match outsider.get("/v1/datasets/hospital/patients/records") {
        Ok(_) => bail!("an app without rights read patient rows"),
        Err(e) => t.say("ad-tracker", format!("refused: {e}")),
    }
    let seen = watcher
        .join()
        .map_err(|_| anyhow::anyhow!("watcher panicked"))??;
    t.say(
        "flu-dashboard",
        format!("live stream delivered {seen} flu-case events as they were acknowledged"),
    );
    stop(proc)?;
    t.say("hospital", "node stopped (SIGTERM: snapshot + final flush)");
    let (proc, admin) = start(home)?;
    let ds = admin.get("/v1/datasets")?;
    for d in ds["datasets"].as_array().into_iter().flatten() {
        t.say(
            "hospital",
            format!(
                "after restart {} holds {} records",
                d["id"].as_str().unwrap_or("?"),
                d["records"]
            ),
        );
    }
    stop(proc)?;
    t.say("demo", "done");
    Ok(())
}

fn app(admin: &Client, home: &Path, name: &str, rights: &[&str]) -> Result<Client> {
    let v = admin.post("/v1/apps", &json!({"name": name, "rights": rights}))?;
    let token = v["token"]
        .as_str()
        .context("no token in answer")?
        .to_owned();
    let addr = std::fs::read_to_string(home.join(API_ADDR_FILE))?
        .trim()
        .parse()?;
    Ok(Client::new(addr, token, home))
}

const DISTRICTS: usize = 6;
const DAY_MS: u64 = 86_400_000;

fn publish_week(t: &Timeline, ward: &Client) -> Result<()> {
    let start = fogmesh::hlc::wall_millis() - 7 * DAY_MS;
    let mut total = 0;
    for day in 0..7u64 {
        let mut patients = Vec::new();
        let mut cases = Vec::new();
        for d in 1..=DISTRICTS as u64 {
            let n = 2 + (d * 3 + day * day) % 9;
            let time = start + day * DAY_MS + d * 1000;
            for p in 0..n {
                patients.push(json!({"name": format!("district-{d}/ward-{}/flu-admission", p % 3 + 1), "time": time + p,
                    "data": {"age": 20 + (p * 7 + d) % 60, "symptoms": ["fever", "cough"], "cost": 300 + p * 45}}));
            }
            cases.push(json!({"name": format!("district-{d}/flu-daily"), "time": time, "data": {"day": day, "cases": n}}));
        }
        total += patients.len();
        ward.post(
            "/v1/datasets/hospital/patients/records",
            &json!({"records": patients}),
        )?;
        ward.post(
            "/v1/datasets/hospital/flu-cases/records",
            &json!({"records": cases}),
        )?;
    }
    t.say(
        "ward-intake",
        format!(
            "published {total} private patient rows and {} daily district counts over 7 days",
            7 * DISTRICTS
        ),
    );
    Ok(())
}

fn show_counts(t: &Timeline, dash: &Client) -> Result<()> {
    let v = dash.get("/v1/datasets/hospital/flu-cases/records?limit=10000")?;
    let mut per: std::collections::BTreeMap<String, i64> = Default::default();
    for r in v["records"].as_array().into_iter().flatten() {
        let district = r["name"]
            .as_str()
            .unwrap_or("")
            .split('/')
            .next()
            .unwrap_or("")
            .to_owned();
        *per.entry(district).or_default() += r["data"]["cases"].as_i64().unwrap_or(0);
    }
    let line: Vec<String> = per.iter().map(|(d, n)| format!("{d}={n}")).collect();
    t.say(
        "flu-dashboard",
        format!("cases per district this week: {}", line.join(" ")),
    );
    let hot =
        dash.get("/v1/datasets/hospital/flu-cases/records?where=cases%3E%3D8&order=desc&limit=3")?;
    t.say(
        "flu-dashboard",
        format!(
            "{} district-days with >= 8 cases; latest: {}",
            hot["count"],
            hot["records"][0]["name"].as_str().unwrap_or("-")
        ),
    );
    Ok(())
}

fn spawn_watcher(dash: &Client) -> Result<std::thread::JoinHandle<Result<usize>>> {
    let reader = dash.stream("/v1/datasets/hospital/flu-cases/events")?;
    Ok(std::thread::spawn(move || {
        let mut n = 0;
        for line in reader.lines() {
            if line?.starts_with("event: upsert") {
                n += 1;
                if n == 7 * DISTRICTS {
                    break;
                }
            }
        }
        Ok(n)
    }))
}
