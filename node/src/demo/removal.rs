//! The flu demo's last step: the insurer's keys are reported stolen; the hospital, an admin of
//! the mesh, removes it; every member cuts it off and it receives nothing written after.

use std::time::{Duration, Instant};

use super::flu::CONVERGE;

use anyhow::{bail, Result};
use serde_json::json;

use super::flu::count;
use super::procs::{wait_until, Org, Timeline};

fn removed_everywhere(orgs: &[Org], org: &str) -> Result<bool> {
    for o in orgs.iter().filter(|o| o.name != org) {
        let v = o.api.get("/v1/members")?;
        let removed = v["members"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["org"] == org && m["state"] == "removed");
        if !removed {
            return Ok(false);
        }
    }
    Ok(true)
}

fn up_peers(o: &Org) -> Result<usize> {
    let v = o.api.get("/v1/peers")?;
    Ok(v["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["up"] == true && p["member"] == true)
        .count())
}

/// The insurer's node is compromised: the hospital removes it; it gets nothing written after.
pub fn compromised(t: &Timeline, orgs: &[Org]) -> Result<()> {
    let [hospital, pharmacy, _, agency, insurer] = orgs else {
        bail!("five organizations expected");
    };
    println!();
    let before = count(&insurer.api, "agency/alerts")?;
    let started = Instant::now();
    hospital.api.delete("/v1/members/insurer")?;
    t.say(
        "hospital",
        "the insurer reports its node's keys stolen: `fogmesh member remove insurer` (the hospital is an admin)",
    );
    wait_until("every member to learn of the removal", CONVERGE, || {
        removed_everywhere(orgs, "insurer")
    })?;
    wait_until("the insurer to be cut off", CONVERGE, || {
        Ok(up_peers(insurer)? == 0)
    })?;
    t.say(
        "all",
        format!(
            "every member lists the insurer as removed and refuses its connections ({:.0} ms)",
            started.elapsed().as_secs_f64() * 1e3
        ),
    );
    wait_until("the agency to revoke the insurer's grant", CONVERGE, || {
        let v = agency.api.get("/v1/grants")?;
        Ok(v["grants"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|g| g["grantee"] == "insurer/*" && g["state"] == "revoked"))
    })?;
    t.say(
        "agency",
        "learnt of the removal on its own: revoked the insurer's grant on agency/alerts, new key epoch without it",
    );
    let alert = json!({"records": [{"name": "district-3/alert", "data": {"level": "critical", "after": "removal"}}]});
    // The grant shows revoked as soon as it is signed; its new key is in use a flush later, and a
    // write in between is answered 503 "retry shortly".
    wait_until("the agency's new key to be in use", CONVERGE, || {
        Ok(agency
            .api
            .post("/v1/datasets/agency/alerts/records", &alert)
            .is_ok())
    })?;
    let want = count(&agency.api, "agency/alerts")?;
    wait_until("the pharmacy to get the new alert", CONVERGE, || {
        Ok(count(&pharmacy.api, "agency/alerts")? == want)
    })?;
    std::thread::sleep(Duration::from_secs(1));
    let after = count(&insurer.api, "agency/alerts")?;
    if after != before {
        bail!("the removed insurer received {} new alerts", after - before);
    }
    t.say(
        "insurer",
        format!(
            "new alert reached the pharmacy ({want} alerts) but not the removed insurer (still {after}); what it read before stays read"
        ),
    );
    Ok(())
}
