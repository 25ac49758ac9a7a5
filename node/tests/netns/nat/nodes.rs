//! The test's nodes and what it reads of them: `fogmesh init` with TCP and QUIC listeners,
//! config edits through the library's own type, joins, listen and relayed addresses,
//! connections, records, logs.

use super::*;

/// `fogmesh init` in `ns` with mDNS off, TCP and QUIC listeners, and `extra` arguments.
pub(super) fn init_node(
    ns: &str,
    home: PathBuf,
    org: &'static str,
    extra: &[&str],
) -> Result<NsNode> {
    let mut args = vec!["--listen", QUIC, "--no-mdns"];
    args.extend(extra);
    let mut node = NsNode::init_with(ns, home, org, &args)?;
    // The hole punch's own steps, for a failure's evidence.
    node.env.push((
        "RUST_LOG".into(),
        "info,fogmesh=debug,libp2p_dcutr=debug".into(),
    ));
    Ok(node)
}

/// Changes the node's config.toml through the library's own type, as an operator's edit would.
pub(super) fn edit_config(
    n: &NsNode,
    change: impl FnOnce(&mut fogmesh::config::Config),
) -> Result<()> {
    let path = n.home.join("config.toml");
    let mut config = fogmesh::config::Config::load(&path)
        .with_context(|| format!("{}'s config.toml does not load", n.org))?;
    change(&mut config);
    std::fs::write(&path, config.to_commented_toml()).context("writing config.toml")?;
    Ok(())
}

/// The node's configuration.
pub(super) fn config(n: &NsNode) -> Result<fogmesh::config::Config> {
    Ok(fogmesh::config::Config::load(&n.home.join("config.toml"))?)
}

/// The public member: founder, relay for 2 reservations at most.
pub(super) fn start_hospital(net: &NatNet, dir: &Path) -> Result<NsNode> {
    let mut p = init_node(
        &net.ns("pub"),
        dir.join(HOSPITAL),
        HOSPITAL,
        &["--serve-relay"],
    )?;
    ensure!(
        config(&p)?.relay.serve,
        "--serve-relay did not set [relay] serve = true"
    );
    edit_config(&p, |c| c.relay.max_reservations = MAX_RESERVATIONS)?;
    p.start()?;
    Ok(p)
}

/// A member at site `host` reserving a relayed address on `relay`; `hole_punch` as given.
pub(super) fn start_behind_nat(
    host: &str,
    org: &'static str,
    relay: &str,
    (net, dir): (&NatNet, &Path),
    hole_punch: bool,
) -> Result<NsNode> {
    let mut n = init_node(&net.ns(host), dir.join(org), org, &["--relay", relay])?;
    ensure!(
        config(&n)?.relays == [relay],
        "--relay {relay} is not {org}'s only relay"
    );
    edit_config(&n, |c| c.hole_punch = hole_punch)?;
    n.start()?;
    Ok(n)
}

/// `joiner` joins with a fresh invitation from `inviter` (as issued: it carries the inviter's
/// addresses), retried until it is accepted.
pub(super) fn join(inviter: &NsNode, joiner: &NsNode) -> Result<Duration> {
    let v = inviter.json(&["invite", "--ttl", "600"])?;
    let token = v["token"].as_str().context("token")?.to_owned();
    let mut last = String::new();
    let took = wait_for(SPREAD, || {
        let (code, body) = joiner.join(&token)?;
        last = format!("{code} {}", body.trim());
        Ok((200..300).contains(&code))
    })?;
    took.with_context(|| {
        format!(
            "{} could not join in {SPREAD:?}, last answer {last}; log:\n{}",
            joiner.org,
            grep(joiner, &["join", "dial", "error", "warn"], 0, 30)
        )
    })
}

/// Waits until every node of `nodes` lists every one of them as an active member.
pub(super) fn await_members(nodes: &[&NsNode]) -> Result<Duration> {
    let want: BTreeSet<String> = nodes.iter().map(|n| n.org.to_owned()).collect();
    let mut seen = Vec::new();
    let took = wait_for(SPREAD, || {
        seen.clear();
        let mut all = true;
        for n in nodes {
            let active: BTreeSet<String> = n
                .members()?
                .into_iter()
                .filter(|(_, m)| m["state"] == "active")
                .map(|(org, _)| org)
                .collect();
            all &= want.is_subset(&active);
            seen.push(format!("{}: {active:?}", n.org));
        }
        Ok(all)
    })?;
    took.with_context(|| format!("the members never all listed each other: {seen:?}"))
}

/// `fogmesh status --json`.
pub(super) fn status(n: &NsNode) -> Result<Value> {
    n.json(&["status"])
}

/// The listen addresses `status --json` shows (at the top level, or under `node` or `mesh`).
pub(super) fn listen_addrs(status: &Value) -> Vec<String> {
    [
        &status["listen"],
        &status["node"]["listen"],
        &status["mesh"]["listen"],
    ]
    .into_iter()
    .filter_map(Value::as_array)
    .flatten()
    .filter_map(|a| a.as_str().map(String::from))
    .collect()
}

/// The reachability `status --json` shows (at the top level, or under `node` or `mesh`).
pub(super) fn reachability(status: &Value) -> Option<String> {
    [
        &status["reachability"],
        &status["node"]["reachability"],
        &status["mesh"]["reachability"],
    ]
    .into_iter()
    .find_map(|v| v.as_str().map(String::from))
}

/// The node's relayed listen address through `relay_id`, if it has one.
pub(super) fn circuit_addr(n: &NsNode, relay_id: &str) -> Result<Option<String>> {
    Ok(listen_addrs(&status(n)?)
        .into_iter()
        .find(|a| a.contains("/p2p-circuit") && a.contains(relay_id)))
}

/// Waits until `n` listens on a relayed address through `relay_id`; the address.
pub(super) fn await_circuit(n: &NsNode, relay_id: &str) -> Result<String> {
    let mut addr = None;
    wait_for(CIRCUIT_WITHIN, || {
        addr = circuit_addr(n, relay_id)?;
        Ok(addr.is_some())
    })?;
    addr.with_context(|| {
        format!(
            "{} shows no /p2p-circuit listen address within {CIRCUIT_WITHIN:?}: {:?}; log:\n{}",
            n.org,
            status(n).map(|st| listen_addrs(&st)),
            grep(n, &["relay", "reservation", "circuit", "autonat"], 0, 40)
        )
    })
}

/// Waits until `viewer` lists `member`'s relayed address (`.../p2p-circuit/p2p/<id>`) in its
/// roster entry.
pub(super) fn await_roster_circuit(viewer: &NsNode, member: &NsNode) -> Result<()> {
    let want = format!("/p2p-circuit/p2p/{}", member.peer_id);
    let mut entry = Value::Null;
    let found = wait_for(SPREAD, || {
        entry = viewer.members()?.remove(member.org).unwrap_or_default();
        Ok(entry["addresses"].as_array().is_some_and(|a| {
            a.iter()
                .any(|x| x.as_str().is_some_and(|x| x.contains(&want)))
        }))
    })?;
    ensure!(
        found.is_some(),
        "{}'s roster entry on {} carries no ...{want} address: {entry}",
        member.org,
        viewer.org
    );
    Ok(())
}

/// What `n` lists as its connection to member `org` (`peers --json`, `connection`): `None` when
/// not connected. Fails if the field is missing (the NAT traversal interface is not there).
pub(super) fn connection(n: &NsNode, org: &str) -> Result<Option<String>> {
    let v = n.json(&["peers"])?;
    let Some(p) = v["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["org"] == org && p["member"] == true)
    else {
        return Ok(None);
    };
    ensure!(
        p.get("connection").is_some(),
        "`peers --json` on {} lists {org} without a `connection` field: {p}",
        n.org
    );
    Ok(p["connection"].as_str().map(String::from))
}

/// The ids of dataset `RX` as `n` sees it (none while it cannot query it yet).
pub(super) fn rx_ids(n: &NsNode) -> Result<BTreeSet<String>> {
    let out = n.cli(&["query", RX, "--limit", "10000", "--json"]);
    if out.code != Some(0) {
        return Ok(BTreeSet::new());
    }
    let v: Value = serde_json::from_str(&out.stdout).with_context(|| out.stdout.clone())?;
    Ok(v["records"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["id"].as_str().map(String::from))
        .collect())
}

/// Publishes record `id` to `RX` on `n`.
pub(super) fn publish(n: &NsNode, id: &str, data: &Value) -> Result<()> {
    let data = data.to_string();
    n.json(&[
        "publish",
        RX,
        "--id",
        id,
        "--name",
        "rx/dispensed",
        "--data",
        &data,
    ])?;
    Ok(())
}

/// Waits until `reader` holds every one of `ids`.
pub(super) fn await_records(reader: &NsNode, ids: &[String], within: Duration) -> Result<Duration> {
    let mut held = BTreeSet::new();
    let took = wait_for(within, || {
        held = rx_ids(reader)?;
        Ok(ids.iter().all(|id| held.contains(id)))
    })?;
    took.with_context(|| {
        format!(
            "{} does not hold {ids:?} within {within:?} (it holds {held:?})",
            reader.org
        )
    })
}

/// The last `max` lines of `n`'s log past byte `mark` that contain any of `needles`, compared
/// without case and colours.
pub(super) fn grep(n: &NsNode, needles: &[&str], mark: usize, max: usize) -> String {
    let log = strip_ansi(n.log().get(mark..).unwrap_or(""));
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| {
            let l = l.to_lowercase();
            needles.iter().any(|w| l.contains(&w.to_lowercase()))
        })
        .collect();
    lines[lines.len().saturating_sub(max)..].join("\n")
}
