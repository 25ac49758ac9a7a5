//! The dashboard in a real browser: two `fogmesh run` nodes in one mesh, datasets, records, an app,
//! a flow and grants written through the CLI and the API, then `node/tests/browser/dashboard.mjs`
//! drives Debian's Chromium with playwright-core against the first node's `/` and checks that every
//! panel shows what was written, the query box with its charts (flu cases per district per day),
//! the live view of a dataset, the layout at laptop and tablet sizes, an app token's 403s and what
//! it cannot see, the Content-Security-Policy, no console error, and signing out. A second test
//! runs `fogmesh demo --serve` and `node/tests/browser/demo.mjs` against the agency's node: the
//! demo's members with their roles, the example chart of the flow's flu counts, and an app
//! without rights that sees only what the grants to `agency/*` give every agency app.
//!
//! Skipped, saying why, where Chromium, Node.js or playwright-core is missing (`.ci/browser`
//! installs them), unless `FOGMESH_REQUIRE_BROWSER` is set (`.ci/run` sets it): then it fails. `FOGMESH_SCREENSHOTS=docs/screenshots` saves screenshots (a relative path is
//! taken from the repository's root).

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::{join, reader, strip_ansi, wait, wait_deadline, TestNode};
use serde_json::{json, Value};

/// How long the browser script may run.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(180);
/// How long `fogmesh demo --serve` may take to serve its nodes.
const DEMO_DEADLINE: Duration = Duration::from_secs(120);
/// Records of `hospital/flu`: `d{i % 3}/ward-{i}` with `cases: i`.
const FLU_RECORDS: usize = 25;
/// Records of the private `hospital/beds`.
const BED_RECORDS: usize = 7;
/// Districts, wards and days of `hospital/flu-cases`: `district-{d}/ward-{w}` records over
/// [`DAYS`] days from [`DAY0`], each a flu count, plus a cold count per district and day that the
/// chart's `diagnosis=flu` filter leaves out.
const DISTRICTS: u64 = 3;
const WARDS: u64 = 2;
const DAYS: u64 = 4;
/// 2026-03-02T00:00:00Z, in ms.
const DAY0: u64 = 1_772_409_600_000;
const DAY_MS: u64 = 86_400_000;
/// A record's data that would be markup if the page used it as HTML.
const MARKER: &str = "<img src=x onerror=window.__pwned=1>";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn script_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// The Chromium to drive: `FOGMESH_CHROMIUM`, Debian's binary, or `chromium` on the PATH.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FOGMESH_CHROMIUM") {
        return Some(p.into());
    }
    let debian = PathBuf::from("/usr/lib/chromium/chromium");
    if debian.exists() {
        return Some(debian);
    }
    let out = Command::new("sh")
        .args(["-c", "command -v chromium"])
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !path.is_empty()).then(|| path.into())
}

/// What the test needs, or why it is skipped.
fn prerequisites() -> Result<PathBuf, String> {
    let browser = chromium().ok_or("chromium is missing (Debian package `chromium`)")?;
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        return Err("node (Node.js 20 or later) is missing".into());
    }
    let pw = script_dir().join("node_modules/playwright-core/package.json");
    if !pw.exists() {
        return Err("playwright-core is not installed: run .ci/browser".into());
    }
    Ok(browser)
}

/// The Chromium to drive; `None` (the test is skipped, saying why) where something is missing,
/// unless `FOGMESH_REQUIRE_BROWSER` is set: then the test fails.
fn browser_or_skip(test: &str) -> Option<PathBuf> {
    match prerequisites() {
        Ok(b) => Some(b),
        Err(why) if std::env::var_os("FOGMESH_REQUIRE_BROWSER").is_some() => {
            panic!("FOGMESH_REQUIRE_BROWSER is set and the browser test cannot run: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            None
        }
    }
}

/// `n` NDJSON records of `hospital/flu`, then the marker record.
fn flu_records(n: usize) -> String {
    let mut lines: String = (0..n)
        .map(|i| {
            format!(
                "{}\n",
                json!({"name": format!("d{}/ward-{i}", i % 3), "data": {"cases": i}})
            )
        })
        .collect();
    lines.push_str(&format!(
        "{}\n",
        json!({"name": "x/marker", "data": {"note": MARKER, "cases": -5}})
    ));
    lines
}

/// NDJSON records of `hospital/flu-cases`: flu cases per district, ward and day, and colds.
fn case_records() -> String {
    let mut lines = String::new();
    for d in 1..=DISTRICTS {
        for day in 0..DAYS {
            let time = DAY0 + day * DAY_MS;
            for w in 1..=WARDS {
                let record = json!({"name": format!("district-{d}/ward-{w}/admissions"),
                    "time": time + w * 3_600_000,
                    "data": {"diagnosis": "flu", "cases": (d * 3 + day * 2 + w) % 9 + 1}});
                lines.push_str(&format!("{record}\n"));
            }
            let cold = json!({"name": format!("district-{d}/ward-1/admissions"),
                "time": time + 7_200_000, "data": {"diagnosis": "cold", "cases": 40}});
            lines.push_str(&format!("{cold}\n"));
        }
    }
    lines
}

/// The hospital's datasets, records, app, flow and grants; returns the app's token.
fn fill(hospital: &TestNode) -> Result<String> {
    hospital.create_flu("pharmacy", &[]);
    hospital.cli(&["dataset", "create", "beds"]).ok();
    hospital.cli(&["dataset", "create", "flu-cases"]).ok();
    hospital
        .cli_stdin(
            &["publish", "hospital/flu-cases"],
            case_records().as_bytes(),
        )
        .ok();
    hospital.cli(&["dataset", "create", "flu-by-district"]).ok();
    hospital
        .cli_stdin(
            &["publish", "hospital/flu"],
            flu_records(FLU_RECORDS).as_bytes(),
        )
        .ok();
    let beds: String = (0..BED_RECORDS)
        .map(|i| {
            format!(
                "{}\n",
                json!({"name": format!("ward-{i}"), "data": {"free": i}})
            )
        })
        .collect();
    hospital
        .cli_stdin(&["publish", "hospital/beds"], beds.as_bytes())
        .ok();
    let flow = json!({"name": "by-district", "source": "hospital/flu",
        "target": "hospital/flu-by-district", "group_by": ["segment:0"], "aggregates": ["count"]});
    hospital.post("/v1/flows", &flow)?;
    let app = hospital
        .cli(&[
            "app",
            "add",
            "planner",
            "--rights",
            "read:hospital/flu",
            "--json",
        ])
        .ok()
        .json();
    Ok(app["token"].as_str().context("the app's token")?.to_owned())
}

/// Waits until `node` lists `org` as a member that is up.
fn await_peer_up(node: &TestNode, org: &str) -> Result<()> {
    wait(&format!("{org} up"), Duration::from_secs(60), || {
        let peers = node.get("/v1/peers")?;
        let list = peers["peers"].as_array().cloned().unwrap_or_default();
        Ok(list.iter().any(|p| p["org"] == org && p["up"] == true))
    })
}

/// What the script must find on the page.
fn expectations(hospital: &TestNode, pharmacy: &TestNode) -> Result<Value> {
    let id = |n: &TestNode| -> Result<String> {
        let info = n.get("/v1/node")?;
        Ok(info["peer_id"].as_str().context("peer_id")?.to_owned())
    };
    let flu = FLU_RECORDS + 1;
    Ok(json!({
        "peer_id": id(hospital)?,
        "peer": {"id": id(pharmacy)?, "org": "pharmacy"},
        "members": ["hospital", "pharmacy"],
        "datasets": {"hospital/flu": flu, "hospital/beds": BED_RECORDS,
                     "hospital/flu-cases": DISTRICTS * DAYS * (WARDS + 1)},
        "apps": ["planner"],
        "grantee": "pharmacy/*",
        "flows": ["by-district"],
        "live": {"dataset": "hospital/flu", "records": flu},
        "chart": {"dataset": "hospital/flu-cases", "districts": DISTRICTS, "days": DAYS},
        "query": {"dataset": "hospital/flu", "where": "cases>=20", "rows": 5,
                  "group": "d0", "group_count": FLU_RECORDS.div_ceil(3), "marker": MARKER},
        "app_datasets": ["hospital/flu"],
    }))
}

/// Runs `node dashboard.mjs` against `hospital`; its output is printed, its failure returned.
fn run_script(browser: &Path, hospital: &TestNode, app_token: &str, expect: &Value) -> Result<()> {
    run_node(
        "dashboard.mjs",
        browser,
        &[
            ("FOGMESH_URL", hospital.url("")),
            ("FOGMESH_ADMIN_TOKEN", hospital.token.clone()),
            ("FOGMESH_APP_TOKEN", app_token.to_owned()),
            ("FOGMESH_EXPECT", expect.to_string()),
        ],
    )
}

/// Runs `node <script>` with `vars` and the Chromium, within [`SCRIPT_DEADLINE`]; its output is
/// printed, its failure returned. `FOGMESH_SCREENSHOTS` is passed on from the repository's root.
fn run_node(script: &str, browser: &Path, vars: &[(&str, String)]) -> Result<()> {
    let mut cmd = Command::new("node");
    cmd.arg(script)
        .current_dir(script_dir())
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .env("FOGMESH_CHROMIUM", browser)
        .env_remove("FOGMESH_SCREENSHOTS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = std::env::var_os("FOGMESH_SCREENSHOTS") {
        cmd.env("FOGMESH_SCREENSHOTS", repo_root().join(dir));
    }
    let mut child = cmd.spawn().context("spawning node")?;
    let out = reader(child.stdout.take().context("stdout")?);
    let err = reader(child.stderr.take().context("stderr")?);
    let status = wait_deadline(&mut child, SCRIPT_DEADLINE);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    eprintln!("{script}:\n{out}{err}");
    let status = status.with_context(|| format!("{script} ran past {SCRIPT_DEADLINE:?}"))?;
    ensure!(status.success(), "{script} failed ({status})");
    Ok(())
}

/// Every panel of the dashboard shows what two real nodes hold, in a real Chromium: the node's
/// identity, the other member up, both datasets with their record counts, the app, the grant,
/// the flow, audit entries and health figures; a record written after sign-in appears by
/// itself and pause holds it back; the query box's rows and groups, a bar chart of groups and a
/// line per district of flu cases per day (as many points as the node's own answer has groups);
/// records written after the live view started showing in it; no horizontal overflow at
/// 1366x768 and 768x1024; an app token's 403 on every admin-only panel and nothing of a dataset it
/// holds no right on; no console error and no CSP violation; the token gone on sign-out.
#[test]
fn the_dashboard_shows_what_the_nodes_hold_in_a_real_browser() {
    let Some(browser) =
        browser_or_skip("the_dashboard_shows_what_the_nodes_hold_in_a_real_browser")
    else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let hospital = TestNode::init(&dir.path().join("h"), "hospital").unwrap();
    let pharmacy = TestNode::init(&dir.path().join("p"), "pharmacy").unwrap();
    join(&hospital, &pharmacy).unwrap();
    let app_token = fill(&hospital).unwrap();
    await_peer_up(&hospital, "pharmacy").unwrap();
    let expect = expectations(&hospital, &pharmacy).unwrap();
    let ran = run_script(&browser, &hospital, &app_token, &expect);
    if let Err(e) = ran {
        panic!("{e:#}\nhospital's log:\n{}", hospital.log_tail());
    }
    eprintln!("browser test passed in {:.1?}", started.elapsed());
}

/// `fogmesh demo --serve`, running: each organization's dashboard and admin token, and what the
/// demo printed so far. Dropped without [`Demo::stop`], it ends stdin (the demo stops its nodes)
/// and kills the demo if it has not exited within 20 s, so nothing is left running.
struct Demo {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    printed: Vec<String>,
    /// Organization -> (dashboard URL without the trailing `/`, admin token).
    nodes: BTreeMap<String, (String, String)>,
}

impl Demo {
    /// Starts the demo and reads its output until it serves, within [`DEMO_DEADLINE`].
    fn start() -> Result<Self> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fogmesh"))
            .args(["demo", "--serve"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning fogmesh demo --serve")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut demo = Demo {
            child,
            stdin,
            lines,
            printed: Vec::new(),
            nodes: BTreeMap::new(),
        };
        let deadline = Instant::now() + DEMO_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match demo.lines.recv_timeout(left) {
                Ok(l) => strip_ansi(&l),
                Err(_) => bail!(
                    "the demo did not serve within {DEMO_DEADLINE:?}:\n{}",
                    demo.printed.join("\n")
                ),
            };
            demo.printed.push(line.clone());
            // `[  2.17s] agency           dashboard http://127.0.0.1:46819/ token /tmp/…/admin.token`
            let words: Vec<&str> = line.split_whitespace().collect();
            if let Some(i) = words.iter().position(|w| *w == "dashboard") {
                if words.get(i + 2) == Some(&"token") && i >= 1 {
                    let org = words[i - 1].to_owned();
                    let url = words[i + 1].trim_end_matches('/').to_owned();
                    let file = words.get(i + 3).context("the token file")?;
                    let token = std::fs::read_to_string(file)
                        .with_context(|| format!("reading {file}"))?
                        .trim()
                        .to_owned();
                    demo.nodes.insert(org, (url, token));
                }
            }
            if words.contains(&"serving:") {
                return Ok(demo);
            }
        }
    }

    /// Ends the demo with a line on its stdin; it must stop its nodes and exit 0.
    fn stop(mut self) -> Result<()> {
        let mut stdin = self.stdin.take().context("stdin")?;
        stdin.write_all(b"\n")?;
        drop(stdin);
        let status = wait_deadline(&mut self.child, Duration::from_secs(60))
            .context("the demo did not stop within 60 s of Enter")?;
        let rest: Vec<String> = self.lines.try_iter().collect();
        ensure!(
            status.success(),
            "the demo exited with {status}:\n{}",
            rest.join("\n")
        );
        Ok(())
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if wait_deadline(&mut self.child, Duration::from_secs(20)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A JSON call to a demo node's API with `token`.
fn call(url: &str, token: &str, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
    let req = ureq::request(method, &format!("{url}{path}"))
        .timeout(Duration::from_secs(30))
        .set("Authorization", &format!("Bearer {token}"));
    let res = match body {
        Some(b) => req.send_json(b.clone()),
        None => req.call(),
    };
    match res {
        Ok(r) => Ok(r.into_json()?),
        Err(ureq::Error::Status(code, r)) => {
            bail!(
                "{method} {path}: {code} {}",
                r.into_string().unwrap_or_default()
            )
        }
        Err(e) => Err(e).with_context(|| format!("{method} {path}")),
    }
}

/// The example query of the dashboard for the demo: flu cases per district per day from the
/// hospital flow's daily counts.
fn demo_example() -> Value {
    json!({"datasets": ["hospital/flu-daily"], "group_by": ["segment:0", "bucket:1d"],
        "aggregates": ["sum:count"]})
}

/// What demo.mjs must find on the agency's dashboard, and a token of an app without rights.
fn demo_expectations(url: &str, admin: &str) -> Result<(Value, String)> {
    let roster = call(url, admin, "GET", "/v1/members", None)?;
    let members: Vec<Value> = roster["members"]
        .as_array()
        .context("members")?
        .iter()
        .map(|m| json!({"org": m["org"], "role": m["role"], "state": m["state"]}))
        .collect();
    ensure!(members.len() >= 4, "the demo's roster: {roster}");
    let node = call(url, admin, "GET", "/v1/node", None)?;
    let query = demo_example();
    let answer = call(url, admin, "POST", "/v1/query", Some(&query))?;
    let groups = answer["groups"].as_array().context("groups")?;
    let mut districts: Vec<&str> = groups
        .iter()
        .filter_map(|g| g["segment:0"].as_str())
        .collect();
    districts.sort_unstable();
    districts.dedup();
    ensure!(
        districts.len() > 1 && groups.len() > districts.len(),
        "the example's answer: {answer}"
    );
    let datasets = call(url, admin, "GET", "/v1/datasets", None)?;
    let ids: Vec<&Value> = datasets["datasets"]
        .as_array()
        .context("datasets")?
        .iter()
        .map(|d| &d["id"])
        .collect();
    let app = call(
        url,
        admin,
        "POST",
        "/v1/apps",
        Some(&json!({"name": "nobody", "rights": []})),
    )?;
    let token = app["token"].as_str().context("the app's token")?.to_owned();
    // A grant to `agency/*` names every app of the agency, this one too (its local rights do not
    // count on another organization's dataset): it sees those datasets and no other.
    let grants = call(url, admin, "GET", "/v1/grants", None)?;
    let mut app_datasets: Vec<&Value> = grants["grants"]
        .as_array()
        .context("grants")?
        .iter()
        .filter(|g| {
            g["state"] == "active"
                && (g["grantee"] == "agency/*" || g["grantee"] == "agency/nobody")
                && g["rights"].as_array().is_some_and(|r| !r.is_empty())
                && ids.contains(&&g["dataset"])
        })
        .map(|g| &g["dataset"])
        .collect();
    app_datasets.sort_by_key(|d| d.as_str());
    app_datasets.dedup();
    let hidden: Vec<&&Value> = ids.iter().filter(|d| !app_datasets.contains(d)).collect();
    ensure!(
        !hidden.is_empty(),
        "the agency holds no dataset the app may not see: {datasets}"
    );
    let expect = json!({
        "app_datasets": app_datasets,
        "hidden": hidden,
        "peer_id": node["peer_id"],
        "members": members,
        "datasets": ids,
        "example": query,
        "groups": groups,
        "districts": districts,
    });
    Ok((expect, token))
}

/// The demo mesh of five organizations (`fogmesh demo --serve`) in a real Chromium, on the
/// agency's dashboard: every member on the roster with its role and state, the example chart of
/// the hospital flow's flu counts (a line per district, a point per district and day, as the node's
/// own answer has them); then an app registered without rights: only the datasets granted to
/// `agency/*` (every app of the agency), 403 on the admin-only panels, and of every other dataset
/// no name, district or figure on the page, its query refused with nothing drawn; no console
/// error, no CSP violation; the demo stops cleanly on Enter.
#[test]
fn the_dashboard_shows_the_demo_mesh_in_a_real_browser() {
    let Some(browser) = browser_or_skip("the_dashboard_shows_the_demo_mesh_in_a_real_browser")
    else {
        return;
    };
    let started = Instant::now();
    let demo = Demo::start().unwrap();
    let (url, admin) = demo
        .nodes
        .get("agency")
        .cloned()
        .unwrap_or_else(|| panic!("no agency dashboard in:\n{}", demo.printed.join("\n")));
    let (expect, nobody) = demo_expectations(&url, &admin).unwrap();
    let ran = run_node(
        "demo.mjs",
        &browser,
        &[
            ("FOGMESH_URL", url),
            ("FOGMESH_ADMIN_TOKEN", admin),
            ("FOGMESH_APP_TOKEN", nobody),
            ("FOGMESH_EXPECT", expect.to_string()),
        ],
    );
    if let Err(e) = ran {
        panic!("{e:#}\nthe demo printed:\n{}", demo.printed.join("\n"));
    }
    demo.stop().unwrap();
    eprintln!("demo browser test passed in {:.1?}", started.elapsed());
}
