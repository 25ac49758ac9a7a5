//! `fogmesh member`: the mesh's members with their roles, removing one, changing a role;
//! `fogmesh key rotate`: replacing this node's keys.

use anyhow::Result;
use serde_json::json;

use crate::cli::{Cli, MemberCmd};
use crate::client::Client;
use crate::commands::urlencode;
use crate::output;

pub(crate) fn run(cli: &Cli, cmd: &MemberCmd) -> Result<()> {
    match cmd {
        MemberCmd::List => list(cli),
        MemberCmd::Remove { org } => remove(cli, org),
        MemberCmd::Role { org, role } => set_role(cli, org, role),
    }
}

fn list(cli: &Cli) -> Result<()> {
    let v = Client::from_cli(cli)?.get("/v1/members")?;
    if cli.json {
        output::json(&v);
    } else {
        output::table(
            &["org", "role", "state", "peer_id", "addresses"],
            v["members"].as_array().map_or(&[][..], |a| a),
        );
    }
    Ok(())
}

fn remove(cli: &Cli, org: &str) -> Result<()> {
    let v = Client::from_cli(cli)?.delete(&format!("/v1/members/{}", urlencode(org)))?;
    if cli.json {
        output::json(&v);
    } else {
        println!("{org} removed from the mesh");
        eprintln!(
            "every member disconnects it as the removal reaches it; owners revoke its grants and \
             start new key epochs without it. What it already read stays read."
        );
    }
    Ok(())
}

fn set_role(cli: &Cli, org: &str, role: &str) -> Result<()> {
    let path = format!("/v1/members/{}/role", urlencode(org));
    let v = Client::from_cli(cli)?.post(&path, &json!({ "role": role }))?;
    if cli.json {
        output::json(&v);
    } else {
        println!("{org} is now {role}");
    }
    Ok(())
}

/// How long `key rotate` waits for the node to come back under its new keys.
const RESTART_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

pub(crate) fn key_rotate(cli: &Cli) -> Result<()> {
    let client = Client::from_cli(cli)?;
    let v = client.post("/v1/key/rotate", &json!({}))?;
    let peer_id = v["peer_id"].as_str().unwrap_or_default().to_owned();
    if !cli.json {
        println!(
            "keys of {} rotated: identity key {} (was {})",
            v["org"].as_str().unwrap_or_default(),
            v["key"].as_str().unwrap_or_default(),
            v["retired_key"].as_str().unwrap_or_default()
        );
        let names = |k: &str| -> Vec<String> {
            v[k].as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|o| o.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let (yes, no) = (names("informed"), names("not_informed"));
        println!("members that took the rotation: {}", list_or_none(&yes));
        if !no.is_empty() {
            eprintln!(
                "not yet: {} (they learn it from any member that has it)",
                no.join(", ")
            );
        }
        eprintln!("the node restarts with its new keys (peer id {peer_id}) ...");
    }
    let deadline = std::time::Instant::now() + RESTART_WAIT;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let back = Client::from_cli(cli).and_then(|c| c.get("/v1/node"));
        if let Ok(info) = back {
            if info["peer_id"].as_str() == Some(peer_id.as_str()) {
                break;
            }
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "the node did not come back under peer id {peer_id} within {}s: see its log",
                RESTART_WAIT.as_secs()
            );
        }
    }
    if cli.json {
        output::json(&v);
    } else {
        println!("node running again under peer id {peer_id}");
    }
    Ok(())
}

fn list_or_none(orgs: &[String]) -> String {
    if orgs.is_empty() {
        "none connected".into()
    } else {
        orgs.join(", ")
    }
}
