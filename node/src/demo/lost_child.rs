//! `fogmesh demo --lost-child`: a coordinator and eight camera nodes, each a `fogmesh run`
//! process on loopback. Each camera keeps its sightings private; the coordinator's finder app
//! pushes a search for a child's description to every camera, and each camera answers with only
//! where and when of its matches, as it answers. One camera is down (reported, not fatal) and
//! one never granted the finder anything (refused).

use std::io::BufRead;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::procs::{demo_dir, form_mesh, start_orgs, stop, stop_all, Timeline};
use crate::cli::DemoArgs;

const NODES: [&str; 9] = [
    "coordinator",
    "camera-1",
    "camera-2",
    "camera-3",
    "camera-4",
    "camera-5",
    "camera-6",
    "camera-7",
    "camera-8",
];
/// Sightings each camera holds.
const SIGHTINGS: u64 = 300;

/// Runs the lost-child demo.
pub fn run(a: &DemoArgs) -> Result<()> {
    let dir = demo_dir()?;
    let t = Timeline(Instant::now());
    println!(
        "fogmesh demo: a lost child, a coordinator and eight camera nodes on loopback\n\
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

/// Camera `c`'s sightings: people passing, one of them (on some cameras) the child.
fn sightings(c: usize, start: u64) -> Vec<Value> {
    let coats = ["blue", "black", "green", "grey", "yellow"];
    (0..SIGHTINGS)
        .map(|i| {
            let child = c % 3 == 1 && i % 97 == 13;
            let (coat, height) = if child {
                ("red", 118)
            } else {
                (coats[(i as usize + c) % coats.len()], 140 + (i * 7 + c as u64) % 50)
            };
            json!({"name": format!("street-{}/cam-{c}/sighting", (c as u64 * 3 + i) % 12),
                   "time": start + i * 60_000 + c as u64 * 1_000,
                   "data": {"coat": coat, "height_cm": height, "face": format!("embedding-{c}-{i}")}})
        })
        .collect()
}

fn scenario(t: &Timeline, dir: &Path, serve: bool) -> Result<()> {
    let mut nodes = start_orgs(t, dir, &NODES, "lost-child")?;
    form_mesh(t, &nodes, true)?;
    let coordinator = &nodes[0];
    let finder = coordinator
        .api
        .post("/v1/apps", &json!({"name": "finder", "rights": []}))?;
    let finder = coordinator
        .api
        .as_app(finder["token"].as_str().context("no token")?);
    let start = fogmesh::hlc::wall_millis() - SIGHTINGS * 60_000;
    for (c, cam) in nodes.iter().enumerate().skip(1) {
        cam.api
            .post("/v1/datasets", &json!({"name": "sightings"}))?;
        cam.api.post(
            &format!("/v1/datasets/{}/sightings/records", cam.name),
            &json!({"records": sightings(c, start)}),
        )?;
        if c != 8 {
            cam.api.post(
                "/v1/grants",
                &json!({"dataset": format!("{}/sightings", cam.name), "to": "coordinator/finder", "rights": ["query"]}),
            )?;
        }
    }
    t.say(
        "cameras",
        format!("each of 8 cameras keeps {SIGHTINGS} private sightings; cameras 1-7 let coordinator/finder search them"),
    );
    let down = nodes[5].proc.take().context("camera-5 not running")?;
    stop(down)?;
    t.say("camera-5", "goes offline");
    t.say(
        "coordinator",
        "finder pushes the search: coat=red, height 110-125 cm, last 5 hours; location = street",
    );
    let search = json!({"dataset": "sightings",
        "filter": {"where": ["coat=red", "height_cm>=110", "height_cm<=125"]},
        "location_segment": 0, "limit": 50, "timeout_ms": 3000});
    let sent = Instant::now();
    let answers = finder.post_stream("/v1/search", &search)?;
    let mut found = 0;
    for line in answers.lines() {
        let line = line.context("reading the search answers")?;
        if line.trim().is_empty() {
            continue;
        }
        let ev: Value = serde_json::from_str(&line)?;
        let ms = sent.elapsed().as_secs_f64() * 1e3;
        let from = ev["from"].as_str().unwrap_or("?");
        match ev["event"].as_str() {
            Some("answered") => {
                let m = ev["matches"].as_array().cloned().unwrap_or_default();
                found += m.len();
                let seen: Vec<String> = m
                    .iter()
                    .map(|x| {
                        let ago = fogmesh::hlc::wall_millis()
                            .saturating_sub(x["time"].as_u64().unwrap_or(0))
                            / 60_000;
                        format!("{} {ago} min ago", x["location"].as_str().unwrap_or("?"))
                    })
                    .collect();
                let what = if seen.is_empty() {
                    "no match".to_owned()
                } else {
                    seen.join(", ")
                };
                t.say(from, format!("answered after {ms:.0} ms: {what}"));
                if m.iter().any(|x| x.get("data").is_some()) {
                    bail!("a camera sent data fields");
                }
            }
            Some("refused") => t.say(
                from,
                format!("refused: {}", ev["reason"].as_str().unwrap_or("?")),
            ),
            Some("timed_out") => t.say(
                from,
                format!("no answer: unreachable or slower than 3 s ({ms:.0} ms)"),
            ),
            Some("summary") => t.say(
                "coordinator",
                format!(
                    "{found} sightings of the child from {} cameras; refused: {}; no answer: {}",
                    ev["answered"].as_array().map_or(0, Vec::len),
                    ev["refused"],
                    ev["timed_out"]
                ),
            ),
            _ => t.say("coordinator", format!("{ev}")),
        }
    }
    if found == 0 {
        bail!("the search found nothing");
    }
    t.say(
        "all",
        "only street, time and record id left the cameras: no coat, height or face data crossed the network",
    );
    if serve {
        super::procs::serve(t, &nodes)?;
    }
    stop_all(&mut nodes)?;
    t.say("demo", "all nodes stopped cleanly; done");
    Ok(())
}
