//! The revocation race on the real network: a writer keeps writing on the far side of a
//! partition after its owner revoked it there, and a third member accepts those writes because it
//! has not learnt the revocation. After the heal every node must hold the same records (the
//! writes past the revocation's cut set aside everywhere, the earlier ones kept) and the owner
//! must stop fetching the refused writes again (its count of refused envelopes stops growing).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};

use crate::hosts::{Net, NsNode};
use crate::{say, wait_for, DATASET};

/// Indices in `ORGS`; the partition is {hospital, insurer} | {pharmacy, agency}.
const HOSPITAL: usize = 0;
const PHARMACY: usize = 1;
const AGENCY: usize = 2;
const _INSURER: usize = 3;
/// The views must agree this soon after the heal.
const CONVERGE: Duration = Duration::from_secs(30);
/// How long the owner's refusals are watched after convergence: more than one periodic
/// catch-up round (30 s).
const QUIET: Duration = Duration::from_secs(35);
/// The hospital grants the pharmacy reading and writing.
const GRANT_WRITE: [&str; 6] = [
    "grant",
    DATASET,
    "--to",
    "pharmacy/*",
    "--rights",
    "read,write",
];

#[test]
fn a_writer_revoked_across_a_partition_ends_with_the_same_records_everywhere() -> Result<()> {
    crate::run_scenario(
        "a_writer_revoked_across_a_partition_ends_with_the_same_records_everywhere",
        revocation_race,
    )
}

fn ids(n: &NsNode) -> Result<Vec<String>> {
    Ok(n.view()?.into_keys().collect())
}

fn refused(n: &NsNode) -> Result<u64> {
    let metrics = n.metrics()?;
    let key = format!("fogmesh_envelopes_rejected_total{{dataset=\"{DATASET}\"}}");
    Ok(metrics
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64)
}

fn revocation_race(t0: Instant, dir: &Path) -> Result<()> {
    let tag = format!("{}v", std::process::id());
    let net = Net::create(&tag, crate::ORGS.len())?;
    let mut nodes = crate::removal::mesh_of_four(t0, &net, dir)?;
    let readers = "pharmacy,agency,insurer";
    nodes[HOSPITAL].json(&[
        "dataset",
        "create",
        "cases",
        "--shared",
        "--readers",
        readers,
    ])?;
    let granted = nodes[HOSPITAL].json(&GRANT_WRITE)?;
    let grant_id = granted["id"].as_str().context("grant id")?.to_owned();
    let wrote = wait_for(CONVERGE, || {
        Ok(nodes[PHARMACY]
            .publish("before", "pharmacy/before", &json!({ "n": 0 }))
            .is_ok())
    })?;
    ensure!(
        wrote.is_some(),
        "the pharmacy could not write with its grant"
    );
    let everywhere = wait_for(CONVERGE, || {
        for n in &nodes {
            if !ids(n)?.contains(&"before".to_owned()) {
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    ensure!(
        everywhere.is_some(),
        "the write before the partition did not spread"
    );
    say(
        t0,
        "hospital granted pharmacy write; its first record reached all four",
    );

    net.attach(PHARMACY, "br1")?;
    net.attach(AGENCY, "br1")?;
    nodes[HOSPITAL].json(&["revoke", &grant_id])?;
    let mut after = Vec::new();
    for i in 0..3 {
        let id = format!("after-{i}");
        nodes[PHARMACY].publish(&id, "pharmacy/after", &json!({ "n": i }))?;
        after.push(id);
    }
    let taken = wait_for(CONVERGE, || {
        let held = ids(&nodes[AGENCY])?;
        Ok(after.iter().all(|a| held.contains(a)))
    })?;
    ensure!(
        taken.is_some(),
        "control: the agency did not take the pharmacy's writes during the partition"
    );
    say(
        t0,
        "partition {hospital, insurer} | {pharmacy, agency}: hospital revoked the pharmacy, which \
         wrote 3 more records; the agency took them (control)",
    );
    net.attach(PHARMACY, "br0")?;
    net.attach(AGENCY, "br0")?;
    let healed = Instant::now();
    let mut last: Vec<(String, Vec<String>)> = Vec::new();
    let converged = wait_for(CONVERGE, || {
        last = nodes
            .iter()
            .map(|n| Ok((n.org.to_owned(), ids(n)?)))
            .collect::<Result<_>>()?;
        let first = &last[0].1;
        Ok(last.iter().all(|(_, v)| v == first)
            && first.contains(&"before".to_owned())
            && !after.iter().any(|a| first.contains(a)))
    })?;
    ensure!(
        converged.is_some(),
        "within {CONVERGE:?} of the heal the four did not hold the same records without the \
         writes past the revocation: {last:?}"
    );
    say(
        t0,
        format!(
            "converged {:.2} s after the heal: all four hold the first record and none of the 3 \
             written past the revocation",
            healed.elapsed().as_secs_f64()
        ),
    );
    let before = refused(&nodes[HOSPITAL])?;
    std::thread::sleep(QUIET);
    let later = refused(&nodes[HOSPITAL])?;
    say(
        t0,
        format!("hospital refused {before} envelopes by then, {later} after {QUIET:?} more"),
    );
    ensure!(
        later == before,
        "the hospital keeps fetching and refusing the writes past the revocation ({before} -> {later})"
    );
    let views: Vec<Value> = nodes.iter().map(|n| json!(ids(n).ok())).collect();
    say(t0, format!("views: {views:?}"));
    regrant_after_set_aside(t0, &mut nodes)?;
    crate::stop_and_clean(nodes, net.created, &tag)
}

/// The pharmacy's own writes past the cut were set aside: granted writing again, it must refuse
/// to write (its next change could not join its history, and its next sequence number may be
/// held by the agency) and say to rotate its key, before and after a restart, rather than sign
/// a change under a sequence it used before.
fn regrant_after_set_aside(t0: Instant, nodes: &mut [NsNode]) -> Result<()> {
    nodes[HOSPITAL].json(&GRANT_WRITE)?;
    let write = |n: &NsNode| {
        let data = json!({ "n": 9 }).to_string();
        n.cli(&[
            "publish",
            DATASET,
            "--id",
            "again",
            "--name",
            "pharmacy/again",
            "--data",
            &data,
        ])
    };
    let mut said = String::new();
    let refused = wait_for(CONVERGE, || {
        let out = write(&nodes[PHARMACY]);
        ensure!(
            out.code != Some(0),
            "the pharmacy wrote after its own writes were set aside"
        );
        said = out.stderr;
        Ok(said.contains("rotate the node's key"))
    })?;
    ensure!(
        refused.is_some(),
        "granted again, the pharmacy did not refuse writing for its set-aside history: {said}"
    );
    nodes[PHARMACY].stop()?;
    nodes[PHARMACY].start()?;
    let out = write(&nodes[PHARMACY]);
    ensure!(
        out.code != Some(0) && out.stderr.contains("rotate the node's key"),
        "after a restart the pharmacy wrote (or failed otherwise) after its own writes were set \
         aside: {out:?}"
    );
    say(
        t0,
        "granted again, the pharmacy refuses to write (its own writes were set aside: rotate its \
         key), before and after a restart",
    );
    Ok(())
}
