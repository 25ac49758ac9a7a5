//! `fogmesh member`: the mesh's members with their roles, removing one, changing a role.

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
