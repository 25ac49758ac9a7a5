//! A Jepsen-style nemesis soak: five `fogmesh run` processes, each in its own network namespace,
//! written to concurrently through the CLI (the HTTP API) while a nemesis breaks things at
//! random, then heals everything; a checker then judges what the nodes hold.
//!
//! The mesh: hospital owns `hospital/cases`, shared (sealed) with pharmacy, maker, agency and
//! insurer as readers; hospital, pharmacy and agency write from the start, maker is granted
//! write a third of the way through (and then writes too), and insurer's read is revoked two
//! thirds of the way through. Agency's store lies on a 1 GiB tmpfs (`data/`).
//!
//! The nemesis, one fault at a time, each for 2 to 6 s: a partition of the five into two random
//! sides (iptables drops inside the namespaces), an asymmetric one (one node hears no one but is
//! heard), `kill -9` and a restart, SIGSTOP then SIGCONT, a restart with the clock a minute or an
//! hour ahead (libfaketime; the node keeps that clock until the next heal), and agency's disk
//! filled by a ballast file (its writes fail; it restarts itself once the ballast goes). The heal
//! (before the grant, before the revocation, and at the end): rules flushed, every node continued
//! and running on its true clock, the ballast gone.
//!
//! The checker, after the heal:
//! - every acknowledged write is on every node that may read the dataset, with the data
//!   acknowledged (insurer, revoked during the run, is held to nothing but the two next points);
//! - the readers' views are identical (ids and data);
//! - the owner's writes acknowledged after the revocation returned are not in insurer's view;
//! - once every writer lists insurer's grant revoked, a write by each of them reaches every
//!   reader but insurer, which holds none of them;
//! - every node stops cleanly, starts again and still holds every acknowledged write;
//! - no node logged a panic, and no node's resident memory passed `MEMORY_MIB` (its peak,
//!   `VmHWM`, is read before every fault and at the end).
//!
//! The history of the run (every write and its answer, every fault, every check) is written as
//! JSON lines to `target/tmp/nemesis-SEED.jsonl`; a failing run prints its seed.
//!
//! `FOGMESH_NEMESIS_SECS` (default 60, as in CI) sets how long the nemesis runs,
//! `FOGMESH_NEMESIS_SEED` the seed of its choices (printed, to replay a run). The long run:
//! `FOGMESH_NEMESIS_SECS=1800 cargo test -p fogmesh-node --test netns nemesis -- --nocapture`.

mod checker;
mod history;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::json;

use crate::common::{proc_status_kib, run_cli_in_netns, s, Tmpfs};
use crate::hosts::{Net, NsNode};
use crate::{say, strip_ansi, wait_for, DATASET};
use checker::{after_revocation, check, confidential, report};
use history::{Ack, Run};

const ORGS: [&str; 5] = ["hospital", "pharmacy", "maker", "agency", "insurer"];
const OWNER: usize = 0;
const MAKER: usize = 2;
const DISK: usize = 3;
const REVOKED: usize = 4;
/// Writers from the start.
const WRITERS: [usize; 3] = [0, 1, 3];
/// The size of agency's store filesystem (tmpfs: memory is used only as it fills; a 30-minute
/// run stores a few hundred MiB).
const DISK_MIB: u64 = 1024;
/// How long the views may take to agree after the heal.
const CONVERGE: Duration = Duration::from_secs(120);
/// How long the nodes may take to serve again after the heal (a node whose disk failed restarts
/// itself).
const SERVE: Duration = Duration::from_secs(90);
/// No node's resident memory may pass this.
const MEMORY_MIB: u64 = 512;
/// libfaketime, from Debian's `faketime` package.
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
/// The kinds of fault, in the order the nemesis draws them.
const FAULTS: [&str; 6] = ["partition", "asymmetric", "kill9", "pause", "clock", "disk"];

fn nemesis_secs() -> u64 {
    std::env::var("FOGMESH_NEMESIS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
}

/// A small xorshift generator: the run is replayed from its printed seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// `iptables ARGS` inside namespace `ns`.
fn iptables(ns: &str, args: &[&str]) -> Result<()> {
    let st = Command::new("ip")
        .args(["netns", "exec", ns, "iptables"])
        .args(args)
        .status()?;
    ensure!(st.success(), "iptables {args:?} in {ns} failed");
    Ok(())
}

/// Node `i` drops what comes from node `j` (and, `both`, what it sends to `j`).
fn drop_between(net: &Net, i: usize, j: usize, both: bool) -> Result<()> {
    let ns = &net.node_ns[i];
    iptables(ns, &["-A", "INPUT", "-s", &net.addr(j), "-j", "DROP"])?;
    if both {
        iptables(ns, &["-A", "OUTPUT", "-d", &net.addr(j), "-j", "DROP"])?;
    }
    Ok(())
}

fn heal_network(net: &Net) -> Result<()> {
    for ns in &net.node_ns {
        iptables(ns, &["-F"])?;
    }
    Ok(())
}

/// Publishes one record through `org`'s node; true once acknowledged.
fn publish(ns: &str, home: &Path, id: &str, org: &str, n: u64) -> bool {
    let data = json!({ "n": n, "org": org }).to_string();
    let name = format!("w/{org}");
    let args = [
        "publish",
        DATASET,
        "--id",
        id,
        "--name",
        &name,
        "--data",
        &data,
        "--json",
        "--home",
        s(home),
    ];
    run_cli_in_netns(ns, &args, None).code == Some(0)
}

/// One writer: publishes through its node while `on` until `stop`, noting every answer.
/// Returns how many writes were not acknowledged.
fn writer(
    home: &(String, PathBuf),
    org: &str,
    on: &AtomicBool,
    stop: &AtomicBool,
    run: &Run,
) -> u64 {
    let (mut n, mut failed) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        if !on.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        let id = format!("{org}-{n}");
        let ok = publish(&home.0, &home.1, &id, org, n);
        run.note("write", json!({ "id": id, "ok": ok }));
        if ok {
            let (data, at) = (json!({ "n": n, "org": org }), run.t0.elapsed());
            let org = org.to_owned();
            run.acked().insert(id, Ack { org, data, at });
        } else {
            failed += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_millis(50));
        n += 1;
    }
    failed
}

/// The id of the owner's active grant to `org`.
fn grant_id(owner: &NsNode, org: &str) -> Result<String> {
    let grants = owner.json(&["grants"])?;
    let to = format!("{org}/*");
    grants["grants"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|g| g["grantee"] == to.as_str() && g["state"] == "active")
        .and_then(|g| g["id"].as_str().map(str::to_owned))
        .with_context(|| format!("no active grant to {to}: {grants}"))
}

fn skewed(ahead: &str) -> Vec<(String, String)> {
    vec![
        ("LD_PRELOAD".into(), FAKETIME.into()),
        ("FAKETIME".into(), ahead.into()),
        ("DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}

/// The faults: each applied, held, then undone, except a clock skew (kept until the heal).
struct Nemesis<'a> {
    net: &'a Net,
    nodes: &'a mut [NsNode],
    disk: &'a Tmpfs,
    run: &'a Run,
    rng: Rng,
    /// Faults injected, by kind.
    done: BTreeMap<&'static str, u32>,
    /// Per organization, the highest resident memory seen (KiB).
    peak: BTreeMap<&'static str, u64>,
}

impl Nemesis<'_> {
    /// Reads every running node's resident memory and its peak, noted in the history (MiB).
    fn sample(&mut self) {
        let mut now = BTreeMap::new();
        for n in self.nodes.iter() {
            let Some(pid) = n.child.as_ref().map(std::process::Child::id) else {
                continue;
            };
            if let Some(kib) = proc_status_kib(pid, "VmHWM") {
                let peak = self.peak.entry(n.org).or_default();
                *peak = (*peak).max(kib);
                let rss = proc_status_kib(pid, "VmRSS").unwrap_or(0);
                now.insert(n.org, json!({ "rss": rss >> 10, "peak": kib >> 10 }));
            }
        }
        self.run.note("memory", json!(now));
    }

    fn step(&mut self) -> Result<()> {
        self.sample();
        let i = self.rng.below(ORGS.len() as u64) as usize;
        let hold = Duration::from_millis(2_000 + self.rng.below(4_000));
        let kind = FAULTS[self.rng.below(FAULTS.len() as u64) as usize];
        *self.done.entry(kind).or_default() += 1;
        match kind {
            "partition" => self.partition(hold)?,
            "asymmetric" => {
                let what = format!("{} hears no one (it is heard) for {hold:?}", ORGS[i]);
                self.run.say("fault", what);
                for j in (0..ORGS.len()).filter(|j| *j != i) {
                    drop_between(self.net, i, j, false)?;
                }
                std::thread::sleep(hold);
                heal_network(self.net)?;
            }
            "kill9" => {
                let what = format!("kill -9 {}, restarted after {hold:?}", ORGS[i]);
                self.run.say("fault", what);
                self.nodes[i].kill9();
                std::thread::sleep(hold);
                self.nodes[i].start()?;
            }
            "pause" => {
                self.run
                    .say("fault", format!("SIGSTOP {} for {hold:?}", ORGS[i]));
                self.nodes[i].signal("-STOP");
                std::thread::sleep(hold);
                self.nodes[i].signal("-CONT");
            }
            "clock" => {
                let ahead = if self.rng.below(2) == 0 {
                    "+60s"
                } else {
                    "+1h"
                };
                let what = format!("{} restarted with its clock {ahead}", ORGS[i]);
                self.run.say("fault", what);
                self.nodes[i].stop()?;
                self.nodes[i].env = skewed(ahead);
                self.nodes[i].start()?;
            }
            _ => {
                let free = self.disk.available().unwrap_or(0) >> 20;
                let what = format!("{}'s disk ({free} MiB free) full for {hold:?}", ORGS[DISK]);
                self.run.say("fault", what);
                let ballast = self.disk.0.join("ballast");
                self.disk.fill(&ballast, 256 << 10)?;
                std::thread::sleep(hold);
                std::fs::remove_file(&ballast)?;
            }
        }
        Ok(())
    }

    /// Splits the five into two random sides for `hold`.
    fn partition(&mut self, hold: Duration) -> Result<()> {
        let side: Vec<usize> = (0..ORGS.len()).filter(|_| self.rng.below(2) == 0).collect();
        let other: Vec<usize> = (0..ORGS.len()).filter(|k| !side.contains(k)).collect();
        let names = |v: &[usize]| v.iter().map(|k| ORGS[*k]).collect::<Vec<_>>();
        let what = format!(
            "partition {:?} | {:?} for {hold:?}",
            names(&side),
            names(&other)
        );
        self.run.say("fault", what);
        for &a in &side {
            for &b in &other {
                drop_between(self.net, a, b, true)?;
                drop_between(self.net, b, a, true)?;
            }
        }
        std::thread::sleep(hold);
        heal_network(self.net)
    }

    /// Undoes everything: rules flushed, every node running on its true clock.
    fn heal(&mut self) -> Result<()> {
        self.sample();
        heal_network(self.net)?;
        let _ = std::fs::remove_file(self.disk.0.join("ballast"));
        for n in self.nodes.iter_mut() {
            n.signal("-CONT");
            if !n.env.is_empty() {
                n.stop()?;
                n.env.clear();
            }
            if n.child.is_none() {
                n.start()?;
            }
        }
        self.await_serving()?;
        self.run.note("heal", json!({}));
        Ok(())
    }

    /// Waits until every node answers with a working disk: a node whose disk failed restarts
    /// itself once the ballast is gone (within [`fogmesh::node::DISK_CHECK`] and a restart), and
    /// does not answer meanwhile.
    fn await_serving(&self) -> Result<()> {
        let mut last = String::new();
        let up = wait_for(SERVE, || {
            for n in self.nodes.iter() {
                let out = n.cli(&["status", "--json"]);
                if out.code != Some(0) {
                    last = format!("{} does not answer: {}", n.org, out.stderr);
                    return Ok(false);
                }
                let status: serde_json::Value = serde_json::from_str(&out.stdout)?;
                if let Some(why) = status["node"]["disk_failed"].as_str() {
                    last = format!("{}'s disk failed: {why}", n.org);
                    return Ok(false);
                }
            }
            Ok(true)
        })?;
        ensure!(
            up.is_some(),
            "not every node served within {SERVE:?} of the heal: {last}"
        );
        Ok(())
    }
}

/// Why this machine cannot run the soak (beyond what every netns test needs), if it cannot.
fn missing_tools() -> Option<String> {
    if !Path::new(FAKETIME).exists() {
        return Some(format!("{FAKETIME} is missing (Debian package `faketime`)"));
    }
    match Command::new("iptables").arg("--version").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("`iptables` is missing (Debian package `iptables`)".into()),
    }
}

#[test]
fn a_nemesis_soak_keeps_every_acknowledged_write() -> Result<()> {
    if let Some(why) = missing_tools() {
        eprintln!("SKIPPED a_nemesis_soak_keeps_every_acknowledged_write: {why}");
        return Ok(());
    }
    crate::run_scenario(
        "a_nemesis_soak_keeps_every_acknowledged_write",
        |t0, dir| soak(t0, dir).with_context(|| format!("the nemesis run of seed {}", seed_of())),
    )
    .inspect_err(|_| {
        let seed = seed_of();
        eprintln!("FAILED with seed {seed}: FOGMESH_NEMESIS_SEED={seed} replays its choices");
    })
}

/// The seed of this run's choices.
fn seed_of() -> u64 {
    std::env::var("FOGMESH_NEMESIS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()).wrapping_mul(2_654_435_761) | 1)
}

/// Starts the five, makes the dataset and its grants; returns the nodes and agency's tmpfs.
fn mesh(t0: Instant, net: &Net, dir: &Path) -> Result<(Vec<NsNode>, Tmpfs)> {
    let mut nodes = Vec::new();
    let mut disk = None;
    for (i, org) in ORGS.into_iter().enumerate() {
        let mut node = NsNode::init(&net.node_ns[i], dir.join(org), org, true)?;
        if i == DISK {
            let mount = Tmpfs::mount(&node.home.join("data"), DISK_MIB)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            disk = Some(mount);
        }
        node.start()?;
        nodes.push(node);
    }
    for i in 1..ORGS.len() {
        let v = nodes[OWNER].json(&["invite", "--ttl", "600"])?;
        let token = v["token"].as_str().context("token")?.to_owned();
        let joined = wait_for(Duration::from_secs(30), || {
            let (code, _) = nodes[i].join(&token)?;
            Ok((200..300).contains(&code))
        })?;
        ensure!(joined.is_some(), "{} could not join", ORGS[i]);
    }
    nodes[OWNER].json(&[
        "dataset",
        "create",
        "cases",
        "--shared",
        "--readers",
        "pharmacy,maker,agency,insurer",
    ])?;
    for org in ["pharmacy", "agency"] {
        let to = format!("{org}/*");
        nodes[OWNER].json(&["grant", DATASET, "--to", &to, "--rights", "read,write"])?;
    }
    nodes[OWNER].publish("seed", "seed", &json!({ "origin": "hospital" }))?;
    let ready = wait_for(Duration::from_secs(60), || {
        for n in &nodes {
            if !n.view()?.contains_key("seed") {
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    ensure!(ready.is_some(), "{DATASET} did not reach all five");
    say(t0, "five nodes joined; the dataset reached all five");
    Ok((nodes, disk.context("agency's tmpfs")?))
}

fn soak(t0: Instant, dir: &Path) -> Result<()> {
    let seed = seed_of();
    let secs = nemesis_secs();
    let history = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("nemesis-{seed}.jsonl"));
    let run = Run::new(t0, &history)?;
    let tag = format!("q{}", std::process::id());
    let net = Net::create(&tag, ORGS.len())?;
    let (mut nodes, disk) = mesh(t0, &net, dir)?;
    run.say(
        "start",
        format!(
            "nemesis for {secs} s, seed {seed} (FOGMESH_NEMESIS_SEED={seed} replays its \
             choices); history in {}",
            history.display()
        ),
    );
    let homes: Vec<(String, PathBuf)> = nodes
        .iter()
        .map(|n| (n.ns.clone(), n.home.clone()))
        .collect();
    let (stop, on, maker_on) = (
        AtomicBool::new(false),
        AtomicBool::new(true),
        AtomicBool::new(false),
    );
    let mut nemesis = Nemesis {
        net: &net,
        nodes: &mut nodes,
        disk: &disk,
        run: &run,
        rng: Rng(seed),
        done: BTreeMap::new(),
        peak: BTreeMap::new(),
    };
    let (failed, revoked_at) = std::thread::scope(|scope| -> Result<(Vec<u64>, Duration)> {
        let mut handles = Vec::new();
        for w in WRITERS.into_iter().chain([MAKER]) {
            let (home, run, stop) = (&homes[w], &run, &stop);
            let on = if w == MAKER { &maker_on } else { &on };
            handles.push(scope.spawn(move || writer(home, ORGS[w], on, stop, run)));
        }
        let result = run_nemesis(&mut nemesis, secs, &maker_on);
        stop.store(true, Ordering::Relaxed);
        let failed = handles.into_iter().map(|h| h.join().unwrap_or(0)).collect();
        result.map(|at| (failed, at))
    })?;
    let (done, mut peak) = (nemesis.done, nemesis.peak);
    report(&run, &nodes, &failed, &done);
    check(&run, &nodes)?;
    confidential(&run, &nodes, revoked_at)?;
    for n in &mut nodes {
        n.stop()?;
    }
    for n in &mut nodes {
        n.start()?;
    }
    check(&run, &nodes)?;
    run.say(
        "check",
        "after a clean restart of all five, every acknowledged write is still held".into(),
    );
    after_revocation(&run, &nodes)?;
    for n in &nodes {
        let pid = n.child.as_ref().map(std::process::Child::id);
        if let Some(kib) = pid.and_then(|p| proc_status_kib(p, "VmHWM")) {
            let p = peak.entry(n.org).or_default();
            *p = (*p).max(kib);
        }
        let log = strip_ansi(&n.log());
        ensure!(!log.contains("panicked"), "{} logged a panic", n.org);
    }
    let mib: BTreeMap<&str, u64> = peak.iter().map(|(k, v)| (*k, v / 1024)).collect();
    run.say(
        "check",
        format!("no panic logged; peak resident memory (MiB): {mib:?}"),
    );
    ensure!(
        mib.values().all(|m| *m <= MEMORY_MIB),
        "a node's memory passed {MEMORY_MIB} MiB: {mib:?}"
    );
    for n in &mut nodes {
        n.stop()?;
    }
    drop(nodes);
    drop(disk);
    Ok(())
}

/// Runs faults until `secs` pass, granting maker write and revoking insurer on the way; heals.
/// Returns when, since the run began, the revocation returned.
fn run_nemesis(nemesis: &mut Nemesis, secs: u64, maker_on: &AtomicBool) -> Result<Duration> {
    let until = Instant::now() + Duration::from_secs(secs);
    let (grant_at, revoke_at) = (
        until - Duration::from_secs(secs * 2 / 3),
        until - Duration::from_secs(secs / 3),
    );
    let mut revoked_at = None;
    while Instant::now() < until {
        nemesis.step()?;
        if !maker_on.load(Ordering::Relaxed) && Instant::now() >= grant_at {
            nemesis.heal()?;
            let grant = [
                "grant",
                DATASET,
                "--to",
                "maker/*",
                "--rights",
                "read,write",
            ];
            nemesis.nodes[OWNER].json(&grant)?;
            nemesis.run.say("grant", "maker granted write".into());
            maker_on.store(true, Ordering::Relaxed);
        }
        if revoked_at.is_none() && Instant::now() >= revoke_at {
            nemesis.heal()?;
            let id = grant_id(&nemesis.nodes[OWNER], ORGS[REVOKED])?;
            nemesis.nodes[OWNER].json(&["revoke", &id])?;
            revoked_at = Some(nemesis.run.t0.elapsed());
            nemesis.run.say("revoke", "insurer's read revoked".into());
        }
    }
    nemesis.heal()?;
    revoked_at.context("the run ended before the revocation")
}
