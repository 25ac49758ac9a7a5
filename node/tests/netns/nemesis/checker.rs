//! The checker: what the nodes hold once the nemesis healed everything.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};

use super::history::Run;
use super::{CONVERGE, DISK, ORGS, OWNER, REVOKED};
use crate::hosts::NsNode;
use crate::{strip_ansi, wait_for, DATASET};

/// Whether `n` lists `org`'s grants on the dataset as all revoked.
fn lists_revoked(n: &NsNode, org: &str) -> Result<bool> {
    let grants = n.json(&["grants"])?;
    let to = format!("{org}/*");
    let mine: Vec<&Value> = grants["grants"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|g| g["grantee"] == to.as_str())
        .collect();
    Ok(!mine.is_empty() && mine.iter().all(|g| g["state"] != "active"))
}

/// Every record `n` holds, id -> record (streamed: more than one page).
pub(super) fn view_all(n: &NsNode) -> Result<BTreeMap<String, Value>> {
    let args = [
        "query",
        DATASET,
        "--order-by",
        "id",
        "--format",
        "ndjson",
        "--limit",
        "1000000",
    ];
    let out = n.cli_ok(&args)?;
    let mut all = BTreeMap::new();
    for line in out.stdout.lines().filter(|l| !l.trim().is_empty()) {
        let r: Value = serde_json::from_str(line).with_context(|| line.to_owned())?;
        if let Some(id) = r["id"].as_str() {
            all.insert(id.to_owned(), r);
        }
    }
    Ok(all)
}
/// Prints and notes what the run did.
pub(super) fn report(run: &Run, nodes: &[NsNode], failed: &[u64], done: &BTreeMap<&str, u32>) {
    let acked = run.acked();
    let count = |org: &str| acked.values().filter(|a| a.org == org).count();
    let per: Vec<String> = ORGS.iter().map(|o| format!("{o} {}", count(o))).collect();
    let disk_failed = strip_ansi(&nodes[DISK].log())
        .matches("the disk failed:")
        .count();
    let what = format!(
        "healed; writes acknowledged: {} ({}); not acknowledged (node down, paused or its disk \
         full), per writer: {failed:?}; faults injected: {done:?}; agency's disk failed {} \
         time(s)",
        acked.len(),
        per.join(", "),
        disk_failed,
    );
    drop(acked);
    run.say("report", what);
}

/// Every reader but the revoked one holds every acknowledged write with its data, and their
/// views are identical.
pub(super) fn check(run: &Run, nodes: &[NsNode]) -> Result<()> {
    let readers: Vec<&NsNode> = nodes.iter().filter(|n| n.org != ORGS[REVOKED]).collect();
    let acked = run.acked();
    let mut last = String::new();
    let took = wait_for(CONVERGE, || {
        let views: Vec<BTreeMap<String, Value>> =
            readers.iter().map(|n| view_all(n)).collect::<Result<_>>()?;
        for (n, view) in readers.iter().zip(&views) {
            let missing: Vec<&String> = acked.keys().filter(|id| !view.contains_key(*id)).collect();
            if let Some(first) = missing.first() {
                last = format!(
                    "{} misses {} acknowledged writes, e.g. {first}",
                    n.org,
                    missing.len()
                );
                return Ok(false);
            }
            if let Some((id, _)) = acked.iter().find(|(id, a)| view[*id]["data"] != a.data) {
                last = format!("{} holds {id} as {}", n.org, view[id]);
                return Ok(false);
            }
        }
        let content = |v: &BTreeMap<String, Value>| -> BTreeSet<(String, String)> {
            v.iter()
                .map(|(k, r)| (k.clone(), r["data"].to_string()))
                .collect()
        };
        if views.windows(2).any(|w| content(&w[0]) != content(&w[1])) {
            last = "the readers' views differ".into();
            return Ok(false);
        }
        Ok(true)
    })?;
    let took = took.with_context(|| format!("not converged within {CONVERGE:?}: {last}"))?;
    let what = format!(
        "every reader holds all {} acknowledged writes (0 lost), identical views (0 divergent), \
         found in {:.1} s",
        acked.len(),
        took.as_secs_f64()
    );
    drop(acked);
    run.say("check", what);
    Ok(())
}

/// The owner's writes acknowledged after the revocation returned are not in insurer's view.
pub(super) fn confidential(run: &Run, nodes: &[NsNode], revoked_at: Duration) -> Result<()> {
    let insurer = view_all(&nodes[REVOKED])?;
    let acked = run.acked();
    let after: Vec<&String> = acked
        .iter()
        .filter(|(_, a)| a.org == ORGS[OWNER] && a.at > revoked_at)
        .map(|(id, _)| id)
        .collect();
    let leaked: Vec<&&String> = after
        .iter()
        .filter(|id| insurer.contains_key(**id))
        .collect();
    ensure!(
        leaked.is_empty(),
        "insurer reads {} of the owner's writes made after its revocation, e.g. {:?}",
        leaked.len(),
        leaked.first()
    );
    let what = format!(
        "insurer reads none of the owner's {} writes acknowledged after its revocation (it \
         reads {} records)",
        after.len(),
        insurer.len()
    );
    drop(acked);
    run.say("check", what);
    Ok(())
}

/// Once every writer lists insurer revoked, one write by each reaches every reader but insurer.
pub(super) fn after_revocation(run: &Run, nodes: &[NsNode]) -> Result<()> {
    let writers: Vec<&NsNode> = nodes.iter().filter(|n| n.org != ORGS[REVOKED]).collect();
    let known = wait_for(CONVERGE, || {
        for n in &writers {
            if !lists_revoked(n, ORGS[REVOKED])? {
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    ensure!(known.is_some(), "not every writer learnt of the revocation");
    let mut ids = Vec::new();
    for n in &writers {
        let id = format!("after-{}", n.org);
        ids.push(n.publish(&id, "after", &json!({ "org": n.org }))?);
    }
    let reached = wait_for(CONVERGE, || {
        for n in &writers {
            // All of it: a page of 10,000 misses the newest writes behind those a skewed clock
            // dated later.
            let view = view_all(n)?;
            if !ids.iter().all(|id| view.contains_key(id)) {
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    ensure!(
        reached.is_some(),
        "writes after the revocation did not reach every reader"
    );
    // Given time to arrive anyway, were any a leak.
    std::thread::sleep(Duration::from_secs(3));
    let insurer = view_all(&nodes[REVOKED])?;
    let leaked: Vec<&String> = ids.iter().filter(|id| insurer.contains_key(*id)).collect();
    ensure!(
        leaked.is_empty(),
        "the revoked reader holds writes made after it was revoked: {leaked:?}"
    );
    run.say(
        "check",
        "writes after every writer learnt of the revocation reached every reader, not insurer"
            .into(),
    );
    Ok(())
}
