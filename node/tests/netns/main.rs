//! Four organizations' `fogmesh run` processes, each in its own Linux network namespace, wired by
//! veth pairs to one bridge that lives in a fifth namespace (the host's network is never touched).
//! Each test builds its own namespaces; the tests take turns (each asserts times for four nodes
//! sharing the machine, not eight).
//!
//! `four_namespaces_meet_by_mdns_and_converge_after_a_partition` proves:
//!
//! - discovery by mDNS alone: no node has bootstrap addresses, and every invitation is rewritten
//!   with `addresses: []`, so a joiner can only reach the inviter at an address mDNS gave it. As a
//!   control, the same kind of token is refused on a node whose mDNS is off; the same node redeems
//!   it once mDNS is on. All four then see each other up in `fogmesh peers`.
//! - partition tolerance: a 2|2 split (two veths moved to a second bridge), writes acknowledged on
//!   both sides for 10 s into a dataset all four share, then the heal. All four views must become
//!   identical (ids, names, times, data) and hold every acknowledged write within 10 s.
//!
//! After the heal the test prints, per node, what its log shows since the partition began:
//! members it disconnected for bad input, connections lost, redials, empty frames counted as bad
//! input, inbound streams dropped at capacity, outbound requests timed out. Before empty requests
//! stopped counting as bad input (see `hostile.rs`), about one run in four took 19 s, the next
//! catch-up round, because members of the two sides disconnected each other at the heal.
//!
//! `admins_removing_each_other_across_a_partition_are_both_removed_after_the_heal` (in
//! `removal.rs`) proves strong remove on the real network: hospital founds, the three others
//! join, hospital makes pharmacy and insurer admins (`fogmesh member role`) and all four list
//! them so. Partitioned {hospital, pharmacy} | {agency, insurer}, pharmacy removes insurer and
//! insurer removes pharmacy, both accepted; as a control before the heal, each side lists its own
//! removal and not the other's. After the heal hospital and agency must list identical members
//! (org, role, state, removed_by): both admins removed, each by the other's operation, within
//! 10 s, connected to neither; then each of them must have refused, at connection, a redial from
//! both (the removed nodes do not learn of their own removal, and keep dialing with backoff). It
//! prints the convergence time, what the removed nodes list, and every warning logged since the
//! partition. No author can carry its removal across (the other side bans it); hospital and agency
//! each merged their side's removal from a peer, which marks the other members for a catch-up
//! retried every second, so the first retry after the heal carries it: 0.35 s measured (29 s when
//! a merged change waited for the next `SYNC_EVERY` round).
//! `FOGMESH_NETNS_REMOVAL_HOLD_SECS=N` holds the partition N s longer.
//!
//! `a_writer_revoked_across_a_partition_ends_with_the_same_records_everywhere` (in
//! `revocation.rs`) proves the rule for a writer revoked across a partition: its writes past the
//! revocation's cut, taken by a member on its side, are set aside on every node after the heal,
//! and the owner stops fetching them.
//!
//! `FOGMESH_NETNS_PARTITION_SECS=N` writes for N s instead of 10 (to explore longer partitions);
//! the homes and node logs are kept when a test fails, or always with `FOGMESH_NETNS_KEEP=1`.
//!
//! Needs root, `ip netns` and `curl` (joins go through `POST /v1/join` inside the namespace).
//! Without them each test says why and passes without running.

#[path = "../common/mod.rs"]
mod common;
pub(crate) use common::strip_ansi;
mod hosts;
mod nat;
mod nemesis;
mod removal;
mod revocation;

use hosts::*;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use fogmesh::mesh::invite::Invite;
use serde_json::{json, Value};

const ORGS: [&str; 4] = ["hospital", "pharmacy", "agency", "insurer"];
const MESH: &str = "netns-mesh";
/// Every namespace has its own loopback, so every node uses the default ports.
const API: &str = "127.0.0.1:7070";
const LISTEN: &str = "/ip4/0.0.0.0/tcp/7071";
const DATASET: &str = "hospital/cases";
/// The views must agree this soon after the heal.
const HEAL_TARGET: Duration = Duration::from_secs(10);
/// How long to keep watching past the target, to report the real figure when it is missed.
const HEAL_WATCH: Duration = Duration::from_secs(75);
/// The founder's index in `ORGS`.
const FOUNDER: usize = 0;
/// The node started with mDNS off, for the control.
const CONTROL: usize = 3;

/// How long each side of the partition keeps writing (`FOGMESH_NETNS_PARTITION_SECS` overrides,
/// to explore longer partitions).
fn partition_writes() -> Duration {
    let secs = std::env::var("FOGMESH_NETNS_PARTITION_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    Duration::from_secs(secs)
}

/// Why this machine cannot run the test, if it cannot.
fn unavailable() -> Option<String> {
    if !cfg!(target_os = "linux") {
        return Some("network namespaces are Linux only".into());
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    if euid != "0" {
        return Some(format!(
            "it must run as root to create network namespaces (euid {euid})"
        ));
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Err(e) => return Some(format!("`ip` (iproute2) cannot be run: {e}")),
        Ok(o) if !o.status.success() => {
            return Some(format!(
                "`ip netns` is unavailable: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
        Ok(_) => {}
    }
    match Command::new("curl").arg("--version").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("`curl` is needed for POST /v1/join inside the namespaces".into()),
    }
}

/// Seconds since `t0`, for the timeline.
fn say(t0: Instant, what: impl AsRef<str>) {
    eprintln!("[{:>6.2}s] {}", t0.elapsed().as_secs_f64(), what.as_ref());
}

/// A fresh invitation from `inviter`, rewritten to carry no addresses.
fn addressless_invite(inviter: &NsNode) -> Result<String> {
    let v = inviter.json(&["invite", "--ttl", "600"])?;
    let mut invite = Invite::decode(v["token"].as_str().context("token")?)?;
    ensure!(
        !invite.addresses.is_empty(),
        "a real token carries the inviter's addresses"
    );
    invite.addresses.clear();
    Ok(invite.encode())
}

/// Polls `cond` every 100 ms for at most `limit`; how long it took.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> Result<bool>) -> Result<Option<Duration>> {
    let start = Instant::now();
    loop {
        if cond()? {
            return Ok(Some(start.elapsed()));
        }
        if start.elapsed() > limit {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether `n`'s node holds a grant letting its organization write the shared dataset (the
/// founder owns it).
fn may_write(n: &NsNode) -> Result<bool> {
    if n.org == ORGS[FOUNDER] {
        return Ok(true);
    }
    let grants = n.json(&["grants"])?;
    let mine = format!("{}/*", n.org);
    Ok(grants["grants"].as_array().is_some_and(|gs| {
        gs.iter().any(|g| {
            g["grantee"] == mine.as_str()
                && g["state"] == "active"
                && g["rights"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|x| x == "write"))
        })
    }))
}

/// One side of the partition: publishes through its nodes in turn until `until`; the acknowledged
/// ids.
fn write_side(nodes: &[&NsNode], side: &str, until: Instant) -> Result<Vec<String>> {
    let mut acked = Vec::new();
    // Concurrent edits of different fields of one record on both sides: they must merge.
    acked.push(nodes[0].publish("seed", "seed", &json!({ side: "edited" }))?);
    let mut n = 0u64;
    while Instant::now() < until {
        let node = nodes[n as usize % nodes.len()];
        let id = format!("{side}-{}-{n}", node.org);
        let name = format!("{side}/{}", node.org);
        acked.push(node.publish(&id, &name, &json!({ "n": n, "org": node.org }))?);
        n += 1;
    }
    Ok(acked)
}

/// Per node, from its log since `marks`: which members it disconnected for bad input, which
/// connections went down, which members it redialed, and the counts of the lines that explain
/// them. Peer ids are replaced by organizations.
fn network_report(nodes: &[NsNode], marks: &[usize]) -> String {
    let org_of = |line: &str, key: &str| -> String {
        let Some(at) = line.find(key) else {
            return "?".into();
        };
        let id: String = line[at + key.len()..]
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .collect();
        nodes
            .iter()
            .find(|n| n.peer_id == id)
            .map_or(id, |n| n.org.to_owned())
    };
    let mut out = Vec::new();
    for (n, mark) in nodes.iter().zip(marks) {
        let log = strip_ansi(n.log().get(*mark..).unwrap_or(""));
        let lines: Vec<&str> = log.lines().collect();
        let with = |w: &str| {
            lines
                .iter()
                .filter(|l| l.contains(w))
                .copied()
                .collect::<Vec<_>>()
        };
        let orgs = |w: &str| {
            let mut v: Vec<String> = with(w).iter().map(|l| org_of(l, "peer=")).collect();
            v.sort();
            v.dedup();
            v.join(",")
        };
        out.push(format!(
            "  {}: disconnected for bad input [{}]; connections down [{}]; redialed [{}]; \
             {} empty or undecodable frames counted as bad input; {} inbound streams dropped \
             'at capacity'; {} outbound requests timed out",
            n.org,
            orgs("reason=\"too many bad inputs\""),
            orgs("peer down"),
            orgs("redialing member"),
            with("undecodable frame")
                .iter()
                .filter(|l| l.contains("event_loop"))
                .count(),
            with("Dropping inbound stream because we are at capacity").len(),
            with("Timeout while waiting for a response").len(),
        ));
    }
    out.join("\n")
}

#[test]
fn four_namespaces_meet_by_mdns_and_converge_after_a_partition() -> Result<()> {
    run_scenario(
        "four_namespaces_meet_by_mdns_and_converge_after_a_partition",
        scenario,
    )
}

/// The tests of this binary run one at a time: each starts four nodes, and the times they assert
/// are for four nodes sharing the machine, not eight.
static ONE_MESH_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `scenario` in a fresh directory, one test at a time, or says why this machine cannot.
/// The homes and node logs are kept when it fails, or always with `FOGMESH_NETNS_KEEP=1`.
fn run_scenario(name: &str, scenario: fn(Instant, &Path) -> Result<()>) -> Result<()> {
    if let Some(why) = unavailable() {
        eprintln!("SKIPPED {name}: {why}");
        return Ok(());
    }
    // A failed test poisons the lock; the next one still runs.
    let _turn = ONE_MESH_AT_A_TIME
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let t0 = Instant::now();
    say(t0, name);
    let dir = tempfile::tempdir()?;
    let result = scenario(t0, dir.path());
    if result.is_err() || std::env::var_os("FOGMESH_NETNS_KEEP").is_some() {
        say(
            t0,
            format!("homes and node logs kept in {}", dir.keep().display()),
        );
    }
    result
}

/// Stops every node with SIGTERM, deletes the namespaces, and checks nothing is left behind.
fn stop_and_clean(mut nodes: Vec<NsNode>, mut created: Namespaces, tag: &str) -> Result<()> {
    for n in &mut nodes {
        n.stop()?;
    }
    drop(nodes);
    let errors = created.destroy();
    ensure!(errors.is_empty(), "cleanup: {errors:?}");
    let left = Command::new("ip").args(["netns", "list"]).output()?;
    let left = String::from_utf8_lossy(&left.stdout);
    ensure!(
        !left.contains(&format!("fm{tag}-")),
        "namespaces left behind: {left}"
    );
    Ok(())
}

/// The whole scenario; every namespace and process it creates is gone when it returns.
fn scenario(t0: Instant, dir: &Path) -> Result<()> {
    let tag = std::process::id().to_string();
    let net = Net::create(&tag, ORGS.len())?;
    say(
        t0,
        format!(
            "namespaces {} + bridge namespace {} ready",
            net.node_ns.join(", "),
            net.bridge_ns
        ),
    );
    let mut nodes = Vec::new();
    for (i, org) in ORGS.into_iter().enumerate() {
        let mut node = NsNode::init(&net.node_ns[i], dir.join(org), org, i != CONTROL)?;
        node.start()?;
        nodes.push(node);
    }
    say(
        t0,
        "four nodes up (API 127.0.0.1:7070 and TCP 7071 in each namespace; no bootstrap)",
    );

    // Control: with mDNS off, an address-less invitation cannot be redeemed.
    let token = addressless_invite(&nodes[FOUNDER])?;
    let (code, body) = nodes[CONTROL].join(&token)?;
    ensure!(
        !(200..300).contains(&code),
        "joined without mDNS and without addresses: {code} {body}"
    );
    say(
        t0,
        format!(
            "control: {} (mDNS off) cannot redeem an address-less token: {code} {}",
            ORGS[CONTROL],
            body.trim()
        ),
    );
    nodes[CONTROL].stop()?;
    let config = nodes[CONTROL].home.join("config.toml");
    let text = std::fs::read_to_string(&config)?;
    ensure!(text.contains("\nmdns = false\n"), "config.toml:\n{text}");
    std::fs::write(&config, text.replace("\nmdns = false\n", "\nmdns = true\n"))?;
    nodes[CONTROL].start()?;

    // Joins with address-less tokens: the joiner must find the founder by mDNS.
    let founder_peer = nodes[FOUNDER].peer_id.clone();
    for i in (0..ORGS.len()).filter(|&i| i != FOUNDER) {
        let token = if i == CONTROL {
            token.clone()
        } else {
            addressless_invite(&nodes[FOUNDER])?
        };
        let started = Instant::now();
        let mut attempts = 0;
        let mut last = String::new();
        let joined = wait_for(Duration::from_secs(30), || {
            attempts += 1;
            let (code, body) = nodes[i].join(&token)?;
            last = format!("{code} {}", body.trim());
            Ok((200..300).contains(&code))
        })?;
        ensure!(
            joined.is_some(),
            "{} could not join in 30 s ({attempts} attempts), last answer {last}; log:\n{}",
            ORGS[i],
            nodes[i].log_lines(&["mdns", "discovered", "join", "ERROR", "WARN"], 30)
        );
        let discovered = strip_ansi(&nodes[i].log())
            .lines()
            .any(|l| l.contains("discovered peer on address") && l.contains(&founder_peer));
        ensure!(
            discovered,
            "{} joined, but its log shows no mDNS discovery of the founder:\n{}",
            ORGS[i],
            nodes[i].log()
        );
        say(
            t0,
            format!(
                "{} joined with an address-less token after {:.2} s ({attempts} attempt(s)); \
                 its log shows mDNS discovering the founder",
                ORGS[i],
                started.elapsed().as_secs_f64()
            ),
        );
    }
    let everyone: BTreeSet<String> = ORGS.iter().map(|o| o.to_string()).collect();
    let took = wait_for(Duration::from_secs(60), || {
        for n in &nodes {
            let mut want = everyone.clone();
            want.remove(n.org);
            if !want.is_subset(&n.up_members()?) {
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    let Some(took) = took else {
        let seen: Vec<String> = nodes
            .iter()
            .map(|n| format!("{}: {:?}", n.org, n.up_members()))
            .collect();
        bail!("the four never all saw each other up: {seen:?}");
    };
    say(
        t0,
        format!(
            "all four see the three others up ({:.2} s after the last join)",
            took.as_secs_f64()
        ),
    );

    // A dataset every member holds.
    nodes[FOUNDER].json(&[
        "dataset",
        "create",
        "cases",
        "--shared",
        "--readers",
        "pharmacy,agency,insurer",
    ])?;
    for org in ["pharmacy", "agency", "insurer"] {
        let to = format!("{org}/*");
        let grant = ["grant", DATASET, "--to", &to, "--rights", "read,write"];
        nodes[FOUNDER].json(&grant)?;
    }
    nodes[FOUNDER].publish("seed", "seed", &json!({ "origin": "hospital" }))?;
    let took = wait_for(Duration::from_secs(60), || {
        for n in &nodes {
            if n.cli(&["query", DATASET, "--json"]).code != Some(0)
                || !n.view()?.contains_key("seed")
                || !may_write(n)?
            {
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    ensure!(took.is_some(), "{DATASET} did not reach all four");
    say(t0, format!("{DATASET} created and replicated to all four"));

    // Partition 2|2: agency and insurer move to the second bridge.
    let (a, b) = ORGS.split_at(2);
    net.attach(2, "br1")?;
    net.attach(3, "br1")?;
    let parted = Instant::now();
    let log_marks: Vec<usize> = nodes.iter().map(|n| n.log().len()).collect();
    let writes_for = partition_writes();
    say(
        t0,
        format!("partition: {a:?} | {b:?}; writing on both sides for {writes_for:?}"),
    );
    let until = parted + writes_for;
    let acked = std::thread::scope(|scope| -> Result<Vec<(&str, Vec<String>)>> {
        let sides = [("a", &nodes[0..2]), ("b", &nodes[2..4])];
        let handles: Vec<_> = sides
            .into_iter()
            .map(|(side, group)| {
                scope.spawn(move || -> Result<(&str, Vec<String>)> {
                    let refs: Vec<&NsNode> = group.iter().collect();
                    Ok((side, write_side(&refs, side, until)?))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("writer thread"))
            .collect()
    })?;
    let all_acked: BTreeSet<String> = acked.iter().flat_map(|(_, ids)| ids.clone()).collect();
    for (side, ids) in &acked {
        say(
            t0,
            format!("side {side}: {} writes acknowledged", ids.len()),
        );
    }
    // The partition held: neither side has the other's writes.
    let views: Vec<BTreeMap<String, Value>> =
        nodes.iter().map(NsNode::view).collect::<Result<_>>()?;
    for (i, v) in views.iter().enumerate() {
        let other = if i < 2 { "b-" } else { "a-" };
        let leaked = v.keys().filter(|k| k.starts_with(other)).count();
        ensure!(
            leaked == 0,
            "{} holds {leaked} writes from across the partition",
            ORGS[i]
        );
    }
    let up_during: Vec<String> = nodes
        .iter()
        .map(|n| format!("{}: {:?}", n.org, n.up_members().unwrap_or_default()))
        .collect();
    say(
        t0,
        format!(
            "before the heal, members up per node: {}",
            up_during.join("; ")
        ),
    );

    // Heal, and watch the views converge.
    net.attach(2, "br0")?;
    net.attach(3, "br0")?;
    let healed = Instant::now();
    say(
        t0,
        format!(
            "healed after a {:.2} s partition",
            (healed - parted).as_secs_f64()
        ),
    );
    let mut complete_at: Vec<Option<Duration>> = vec![None; nodes.len()];
    let mut last_views = Vec::new();
    let converged = wait_for(HEAL_WATCH, || {
        let views: Vec<BTreeMap<String, Value>> =
            nodes.iter().map(NsNode::view).collect::<Result<_>>()?;
        for (i, v) in views.iter().enumerate() {
            if complete_at[i].is_none() && all_acked.iter().all(|id| v.contains_key(id)) {
                complete_at[i] = Some(healed.elapsed());
            }
        }
        let same = views.windows(2).all(|w| w[0] == w[1]);
        let complete = all_acked.iter().all(|id| views[0].contains_key(id));
        last_views = views;
        Ok(same && complete)
    })?;
    let per_node: Vec<String> = nodes
        .iter()
        .zip(&complete_at)
        .map(|(n, t)| match t {
            Some(t) => format!("{} {:.2} s", n.org, t.as_secs_f64()),
            None => format!("{} never", n.org),
        })
        .collect();
    say(
        t0,
        format!(
            "every acknowledged write present after the heal: {}",
            per_node.join(", ")
        ),
    );
    let report = network_report(&nodes, &log_marks);
    say(
        t0,
        format!("what the network layer logged since the partition began:\n{report}"),
    );
    let Some(converged) = converged else {
        bail!(
            "the views did not converge within {HEAL_WATCH:?} of the heal ({} acknowledged writes)\n{}",
            all_acked.len(),
            report
        );
    };
    say(
        t0,
        format!(
            "all four views identical ({} records, every one of the {} acknowledged writes) {:.2} s after the heal",
            last_views[0].len(),
            all_acked.len(),
            converged.as_secs_f64()
        ),
    );
    let seed = &last_views[0]["seed"]["data"];
    ensure!(
        seed["origin"] == "hospital" && seed["a"] == "edited" && seed["b"] == "edited",
        "concurrent edits of one record did not merge: {seed}"
    );
    ensure!(
        converged <= HEAL_TARGET,
        "converged {:.2} s after the heal, over the {HEAL_TARGET:?} target\n{}",
        converged.as_secs_f64(),
        report
    );

    stop_and_clean(nodes, net.created, &tag)?;
    say(
        t0,
        "nodes stopped cleanly; namespaces, bridges and veths removed",
    );
    Ok(())
}
