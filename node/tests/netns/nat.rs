//! NAT traversal on a real network: two members behind two NAT routers that never forward an
//! unsolicited packet reach each other first through a circuit relay served by a public member,
//! then directly once DCUtR punched a hole through both NATs.
//!
//! `members_behind_two_nats_replicate_through_a_relay_then_hole_punch` proves:
//!
//! - the plumbing, with plain tools before any node starts: each site reaches the public member
//!   (its router masquerades it), the public member cannot reach a site, the sites cannot reach
//!   each other, and an unsolicited connection to a router's public address is dropped;
//! - hospital (public, `--serve-relay`, 2 reservations at most) founds the mesh; pharmacy (site A)
//!   and agency (site B), both `--relay` hospital, join with its invitation: each then listens on
//!   a relayed (`/p2p-circuit`) address through the hospital, and its roster entry carries it;
//! - pharmacy's shared dataset replicates to agency. Shared datasets are relayed (as ciphertext)
//!   by every member, so this alone does not prove the circuit: the `connection` the two list for
//!   each other does. Agency starts with `hole_punch = false`: both list `relayed`, and a record
//!   crosses. Restarted with hole punching on, both must list `hole-punched` (the timeline of what
//!   they listed is printed);
//! - AutoNAT: the relay reports `public` and both sites `private` (before insurer joins: it shares
//!   site A's LAN and could dial pharmacy directly);
//! - a third node (insurer, on site A's LAN) is refused a reservation (the relay holds 2): it
//!   never listens on a circuit address, and the relay's log refuses it without "not a member"
//!   (the limit, not the members gate); pharmacy and agency still replicate;
//! - with the hospital stopped (no relay, no member but the two), a record pharmacy publishes
//!   still reaches agency: over the punched hole, the only path left.
//!
//! Each router drops unsolicited inbound packets to itself, as a home router's firewall does.
//! Without that, Linux conntrack records the first punch packet that reaches a router before its
//! own member's punch leaves, and MASQUERADE then gives that member's punch another port: the
//! hole never opens (seen with plain UDP sockets while building this test). `tc netem` adds
//! latency on the routers' public side when the kernel has it; without it the test says so and
//! goes on (it was not available where this was written).
//!
//! Run it with `cargo test -p fogmesh-node --test netns -- nat --nocapture` (as root; needs `ip
//! netns`, `iptables`, `curl`, `bash` and `timeout`, else it says why and passes without running).
//! The homes and node logs are kept when it fails, or always with `FOGMESH_NETNS_KEEP=1`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::hosts::{ip, Namespaces, NsNode};
use crate::{say, strip_ansi, wait_for};

const NAME: &str = "members_behind_two_nats_replicate_through_a_relay_then_hole_punch";
/// Every node listens on QUIC too: hole punching over UDP is the likelier to work.
const QUIC: &str = "/ip4/0.0.0.0/udp/7071/quic-v1";
/// The public member (founder, relay), the two members behind NATs, the one refused a relay.
const HOSPITAL: &str = "hospital";
const PHARMACY: &str = "pharmacy";
const AGENCY: &str = "agency";
const INSURER: &str = "insurer";
/// Pharmacy's dataset, read by agency.
const RX: &str = "pharmacy/rx";
/// Latency added on each router's public side (when `tc netem` is available).
const WAN_DELAY: &str = "25ms";
/// Reservations the relay grants: pharmacy's and agency's, not insurer's.
const MAX_RESERVATIONS: usize = 2;
/// How long joins and membership may take to spread.
const SPREAD: Duration = Duration::from_secs(30);
/// How long a reservation on the relay may take to show as a listen address (a node asks as it
/// starts, before it is a member, and is refused; it asks again with a backoff doubling from
/// 2 s).
const CIRCUIT_WITHIN: Duration = Duration::from_secs(90);
/// How long records may take to reach agency.
const REPLICATE_WITHIN: Duration = Duration::from_secs(60);
/// How long the connection between pharmacy and agency may take to end hole-punched.
const PUNCH_WITHIN: Duration = Duration::from_secs(60);
/// How long insurer is watched not getting a circuit address, at least.
const REFUSAL_WATCH: Duration = Duration::from_secs(15);
/// How long the relay may take to log a refusal of insurer's reservation once insurer is a
/// member (its requests are retried with a backoff doubling from 2 s).
const REFUSAL_WITHIN: Duration = Duration::from_secs(70);

#[test]
fn members_behind_two_nats_replicate_through_a_relay_then_hole_punch() -> Result<()> {
    if let Some(why) = crate::unavailable().or_else(nat_unavailable) {
        eprintln!("SKIPPED {NAME}: {why}");
        return Ok(());
    }
    crate::run_scenario(NAME, scenario)
}

/// Why this machine cannot build the NAT routers, if it cannot.
fn nat_unavailable() -> Option<String> {
    for (tool, arg) in [("iptables", "--version"), ("timeout", "--version")] {
        match Command::new(tool).arg(arg).output() {
            Ok(o) if o.status.success() => {}
            _ => return Some(format!("`{tool}` is needed for the NAT routers and probes")),
        }
    }
    match Command::new("bash").args(["-c", "true"]).status() {
        Ok(st) if st.success() => None,
        _ => Some("`bash` is needed for the reachability probes (/dev/tcp)".into()),
    }
}

// ---------------------------------------------------------------------------------------------
// The network.

/// The namespaces of the NAT topology. Dropping it deletes every namespace it created; the
/// bridges, veths and iptables rules live in those namespaces and go with them.
///
/// - `inet`: the "internet", a bridge `br0` on 10.88.S.0/24 (S = pid % 250);
/// - `pub`: the public member, 10.88.S.1, no route to any private network;
/// - `ra` / `rb`: NAT routers, `wan0` 10.88.S.2 / .3, `lan` 192.168.10.1 / 192.168.20.1;
/// - `a` (192.168.10.2) and `c` (192.168.10.3) on router A's LAN (a bridge), `b`
///   (192.168.20.2) on router B's; each routes by default through its router.
pub(crate) struct NatNet {
    tag: String,
    /// The third octet of the public addresses.
    pub(crate) subnet: u32,
    created: Namespaces,
    /// Whether `tc netem` delays the routers' public side.
    pub(crate) netem: bool,
}

impl NatNet {
    /// Builds the whole topology.
    pub(crate) fn create(tag: &str) -> Result<Self> {
        let mut net = Self {
            tag: tag.to_owned(),
            subnet: std::process::id() % 250,
            created: Namespaces::default(),
            netem: true,
        };
        for host in ["inet", "pub", "ra", "rb", "a", "b", "c"] {
            net.add_ns(host)?;
        }
        net.wire_internet()?;
        net.wire_lan("ra", "192.168.10", &[("la", "a", 2), ("lc", "c", 3)])?;
        net.wire_lan("rb", "192.168.20", &[("lb", "b", 2)])?;
        for r in ["ra", "rb"] {
            net.route_and_masquerade(r)?;
        }
        Ok(net)
    }

    /// The namespace of `host` (`pub`, `ra`, `a`...).
    pub(crate) fn ns(&self, host: &str) -> String {
        format!("fm{}-{host}", self.tag)
    }

    /// The public address ending in `last`.
    pub(crate) fn public(&self, last: u8) -> String {
        format!("10.88.{}.{last}", self.subnet)
    }

    fn add_ns(&mut self, host: &str) -> Result<()> {
        let ns = self.ns(host);
        self.created.add(&ns)?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])
    }

    /// The internet bridge, and the public interfaces of the public member and the routers.
    fn wire_internet(&self) -> Result<()> {
        let inet = self.ns("inet");
        ip(&["-n", &inet, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &inet, "link", "set", "br0", "up"])?;
        for (port, host, dev, last) in [
            ("vp", "pub", "eth0", 1),
            ("vra", "ra", "wan0", 2),
            ("vrb", "rb", "wan0", 3),
        ] {
            let ns = self.ns(host);
            ip(&[
                "-n", &inet, "link", "add", port, "type", "veth", "peer", "name", dev, "netns", &ns,
            ])?;
            ip(&["-n", &inet, "link", "set", port, "master", "br0"])?;
            ip(&["-n", &inet, "link", "set", port, "up"])?;
            let addr = format!("{}/24", self.public(last));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", dev])?;
            ip(&["-n", &ns, "link", "set", dev, "up"])?;
        }
        Ok(())
    }

    /// Router `router`'s LAN `prefix`.0/24: a bridge `lan` (.1) with one port per site, each
    /// site's `eth0` at `prefix`.N with a default route through the router.
    fn wire_lan(&self, router: &str, prefix: &str, sites: &[(&str, &str, u8)]) -> Result<()> {
        let r = self.ns(router);
        let (gw, net) = (format!("{prefix}.1"), format!("{prefix}.1/24"));
        ip(&["-n", &r, "link", "add", "lan", "type", "bridge"])?;
        ip(&["-n", &r, "addr", "add", &net, "dev", "lan"])?;
        ip(&["-n", &r, "link", "set", "lan", "up"])?;
        for (port, host, last) in sites {
            let ns = self.ns(host);
            ip(&[
                "-n", &r, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["-n", &r, "link", "set", port, "master", "lan"])?;
            ip(&["-n", &r, "link", "set", port, "up"])?;
            let addr = format!("{prefix}.{last}/24");
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "route", "add", "default", "via", &gw])?;
        }
        Ok(())
    }

    /// Forwarding from the LAN out, MASQUERADE on `wan0`, and a firewall that lets in only
    /// replies (forwarded or to the router itself). Adds `tc netem` latency on `wan0` if it can.
    fn route_and_masquerade(&mut self, router: &str) -> Result<()> {
        let r = self.ns(router);
        ns_ok(&r, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        let reply = "-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT";
        let rules = [
            "-t nat -A POSTROUTING -o wan0 -j MASQUERADE".to_owned(),
            "-P FORWARD DROP".into(),
            // Between two ports of the LAN bridge (bridged packets meet iptables too when the
            // kernel has br_netfilter loaded).
            "-A FORWARD -i lan -o lan -j ACCEPT".into(),
            "-A FORWARD -i lan -o wan0 -j ACCEPT".into(),
            format!("-A FORWARD -i wan0 -o lan {reply}"),
            format!("-A INPUT -i wan0 {reply}"),
            // Dropped before conntrack confirms it, an early punch packet leaves no entry that
            // would make MASQUERADE move the member's own punch to another port.
            "-A INPUT -i wan0 -j DROP".into(),
        ];
        for rule in &rules {
            let mut args = vec!["iptables"];
            args.extend(rule.split(' '));
            ns_ok(&r, &args)?;
        }
        let delay = [
            "tc", "qdisc", "add", "dev", "wan0", "root", "netem", "delay", WAN_DELAY,
        ];
        let out = ns_exec(&r, &delay)?;
        if !out.status.success() {
            self.netem = false;
            eprintln!(
                "netem unavailable in {r} ({}): no latency added, going on",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Packets router `router`'s MASQUERADE rule has rewritten.
    fn masqueraded(&self, router: &str) -> Result<u64> {
        let r = self.ns(router);
        let list = "iptables -t nat -L POSTROUTING -v -n -x";
        let out = ns_exec(&r, &list.split(' ').collect::<Vec<_>>())?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.contains("MASQUERADE"))
            .with_context(|| format!("no MASQUERADE rule in {r}:\n{text}"))?;
        line.split_whitespace()
            .next()
            .context("packet count")?
            .parse()
            .with_context(|| format!("packet count in {line:?}"))
    }
}

/// `ip netns exec NS ARGS`.
fn ns_exec(ns: &str, args: &[&str]) -> Result<Output> {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .with_context(|| format!("running `ip netns exec {ns} {}`", args.join(" ")))
}

/// `ip netns exec NS ARGS`, which must succeed.
fn ns_ok(ns: &str, args: &[&str]) -> Result<()> {
    let out = ns_exec(ns, args)?;
    ensure!(
        out.status.success(),
        "`ip netns exec {ns} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// A TCP connection attempt from `ns` to `addr:port` (nothing listens there): `Ok` when the
/// host answered (connected or refused), else why not (unreachable, or no answer in 2 s).
fn probe(ns: &str, addr: &str, port: u16) -> Result<std::result::Result<(), String>> {
    let script = format!("exec 3<>/dev/tcp/{addr}/{port}");
    let out = ns_exec(ns, &["timeout", "2", "bash", "-c", &script])?;
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || err.contains("refused") {
        return Ok(Ok(()));
    }
    Ok(Err(match out.status.code() {
        Some(124) => "no answer in 2 s".to_owned(),
        _ => err.lines().next().unwrap_or("failed").trim().to_owned(),
    }))
}

/// Checks the topology with plain tools; what was seen.
fn verify_plumbing(net: &NatNet) -> Result<String> {
    let (p, ra, rb) = (net.public(1), net.public(2), net.public(3));
    let before = net.masqueraded("ra")?;
    let mut seen = Vec::new();
    for site in ["a", "b", "c"] {
        let r = probe(&net.ns(site), &p, 9)?;
        ensure!(
            r.is_ok(),
            "site {site} cannot reach the public member {p}: {r:?}"
        );
    }
    seen.push(format!("a, b and c reach {p}"));
    let after = net.masqueraded("ra")?;
    ensure!(
        after > before,
        "router A's MASQUERADE rule rewrote nothing ({before} -> {after} packets)"
    );
    seen.push(format!("router A masqueraded {} packets", after - before));
    for (from, to, port) in [
        ("pub", "192.168.10.2", 9),
        ("pub", "192.168.20.2", 9),
        ("a", "192.168.20.2", 9),
        ("b", "192.168.10.2", 9),
        ("pub", ra.as_str(), 7071),
        ("a", rb.as_str(), 7071),
    ] {
        match probe(&net.ns(from), to, port)? {
            Ok(()) => bail!("{from} reaches {to}:{port}: the NAT does not isolate"),
            Err(why) => seen.push(format!("{from} -/-> {to}:{port} ({why})")),
        }
    }
    Ok(seen.join("; "))
}

// ---------------------------------------------------------------------------------------------
// The nodes.

/// `fogmesh init` in `ns` with mDNS off, TCP and QUIC listeners, and `extra` arguments.
fn init_node(ns: &str, home: PathBuf, org: &'static str, extra: &[&str]) -> Result<NsNode> {
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
fn edit_config(n: &NsNode, change: impl FnOnce(&mut fogmesh::config::Config)) -> Result<()> {
    let path = n.home.join("config.toml");
    let mut config = fogmesh::config::Config::load(&path)
        .with_context(|| format!("{}'s config.toml does not load", n.org))?;
    change(&mut config);
    std::fs::write(&path, config.to_commented_toml()).context("writing config.toml")?;
    Ok(())
}

/// The node's configuration.
fn config(n: &NsNode) -> Result<fogmesh::config::Config> {
    Ok(fogmesh::config::Config::load(&n.home.join("config.toml"))?)
}

/// The public member: founder, relay for 2 reservations at most.
fn start_hospital(net: &NatNet, dir: &Path) -> Result<NsNode> {
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
fn start_behind_nat(
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
fn join(inviter: &NsNode, joiner: &NsNode) -> Result<Duration> {
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
fn await_members(nodes: &[&NsNode]) -> Result<Duration> {
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
fn status(n: &NsNode) -> Result<Value> {
    n.json(&["status"])
}

/// The listen addresses `status --json` shows (at the top level, or under `node` or `mesh`).
fn listen_addrs(status: &Value) -> Vec<String> {
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
fn reachability(status: &Value) -> Option<String> {
    [
        &status["reachability"],
        &status["node"]["reachability"],
        &status["mesh"]["reachability"],
    ]
    .into_iter()
    .find_map(|v| v.as_str().map(String::from))
}

/// The node's relayed listen address through `relay_id`, if it has one.
fn circuit_addr(n: &NsNode, relay_id: &str) -> Result<Option<String>> {
    Ok(listen_addrs(&status(n)?)
        .into_iter()
        .find(|a| a.contains("/p2p-circuit") && a.contains(relay_id)))
}

/// Waits until `n` listens on a relayed address through `relay_id`; the address.
fn await_circuit(n: &NsNode, relay_id: &str) -> Result<String> {
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
fn await_roster_circuit(viewer: &NsNode, member: &NsNode) -> Result<()> {
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
fn connection(n: &NsNode, org: &str) -> Result<Option<String>> {
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
fn rx_ids(n: &NsNode) -> Result<BTreeSet<String>> {
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
fn publish(n: &NsNode, id: &str, data: &Value) -> Result<()> {
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
fn await_records(reader: &NsNode, ids: &[String], within: Duration) -> Result<Duration> {
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
fn grep(n: &NsNode, needles: &[&str], mark: usize, max: usize) -> String {
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

// ---------------------------------------------------------------------------------------------
// The scenario.

/// Events and their times since the start, for the summary.
#[derive(Default)]
struct Summary(Vec<(String, Duration)>);

impl Summary {
    /// Records `what` now and says it.
    fn mark(&mut self, t0: Instant, what: impl Into<String>) {
        let what = what.into();
        say(t0, &what);
        self.0.push((what, t0.elapsed()));
    }

    fn table(&self) -> String {
        let rows: Vec<String> = self
            .0
            .iter()
            .map(|(what, at)| format!("  {:>7.2} s  {what}", at.as_secs_f64()))
            .collect();
        format!("  {:>9}  event\n{}", "at", rows.join("\n"))
    }
}

/// The whole scenario; every namespace and process it creates is gone when it returns.
fn scenario(t0: Instant, dir: &Path) -> Result<()> {
    let tag = format!("{}n", std::process::id());
    let net = NatNet::create(&tag)?;
    let mut sum = Summary::default();
    let netem = if net.netem {
        format!("netem {WAN_DELAY} on each router's wan0")
    } else {
        "no netem".into()
    };
    say(
        t0,
        format!("namespaces {} ready ({netem})", net.created.0.join(", ")),
    );
    let seen = verify_plumbing(&net)?;
    sum.mark(t0, format!("plumbing verified: {seen}"));

    let hospital = start_hospital(&net, dir)?;
    let relay = format!("/ip4/{}/tcp/7071/p2p/{}", net.public(1), hospital.peer_id);
    let pharmacy = start_behind_nat("a", PHARMACY, &relay, (&net, dir), true)?;
    // Agency starts with hole punching off, so that replication through the relay is seen
    // alone; it is turned on at a restart.
    let mut agency = start_behind_nat("b", AGENCY, &relay, (&net, dir), false)?;
    sum.mark(
        t0,
        format!(
            "hospital (relay, {MAX_RESERVATIONS} reservations), pharmacy (site A) and agency \
             (site B) running; relay {relay}"
        ),
    );
    for n in [&pharmacy, &agency] {
        let took = join(&hospital, n)?;
        say(
            t0,
            format!("{} joined after {:.2} s", n.org, took.as_secs_f64()),
        );
    }
    await_members(&[&hospital, &pharmacy, &agency])?;
    sum.mark(
        t0,
        "hospital, pharmacy and agency list each other as members",
    );

    for n in [&pharmacy, &agency] {
        let addr = await_circuit(n, &hospital.peer_id)?;
        sum.mark(t0, format!("{} listens on {addr}", n.org));
    }
    await_roster_circuit(&agency, &pharmacy)?;
    await_roster_circuit(&pharmacy, &agency)?;
    sum.mark(
        t0,
        "each lists the other's relayed address in its roster entry",
    );

    replicate(t0, &mut sum, &pharmacy, &agency)?;
    relayed_only(t0, &mut sum, &pharmacy, &agency)?;
    agency.stop()?;
    edit_config(&agency, |c| c.hole_punch = true)?;
    agency.start()?;
    let timeline = hole_punch(t0, &mut sum, [&pharmacy, &agency], &hospital)?;
    await_reachability(
        t0,
        &mut sum,
        &[
            (&hospital, "public"),
            (&pharmacy, "private"),
            (&agency, "private"),
        ],
    )?;
    let insurer = relay_limit(
        t0,
        &mut sum,
        &net,
        dir,
        &relay,
        &hospital,
        [&pharmacy, &agency],
    )?;
    let reach = reachabilities(&[&hospital, &pharmacy, &agency, &insurer])?;
    say(t0, format!("reachability: {reach}"));
    let mut nodes = vec![hospital, pharmacy, agency, insurer];
    without_relay(t0, &mut sum, &mut nodes)?;

    say(
        t0,
        format!(
            "summary:\n{}\n  connection timeline: {timeline}\n  reachability: {reach}",
            sum.table()
        ),
    );
    crate::stop_and_clean(nodes, net.created, &tag)?;
    say(
        t0,
        "nodes stopped cleanly; namespaces, bridges, veths and rules removed",
    );
    Ok(())
}

/// Pharmacy creates `RX` for agency and publishes three records; agency must hold them.
fn replicate(t0: Instant, sum: &mut Summary, a: &NsNode, b: &NsNode) -> Result<()> {
    a.json(&["dataset", "create", "rx", "--shared", "--readers", AGENCY])?;
    let ids: Vec<String> = (0..3).map(|i| format!("rx-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        publish(a, id, &json!({ "n": i, "drug": "oseltamivir" }))?;
    }
    let took = await_records(b, &ids, REPLICATE_WITHIN)?;
    sum.mark(
        t0,
        format!(
            "{} holds the 3 records {} published, {:.2} s after the last",
            b.org,
            a.org,
            took.as_secs_f64()
        ),
    );
    Ok(())
}

/// With hole punching off at agency, both list their connection as relayed, and the relay
/// carries a record published now (every record so far came through it).
fn relayed_only(t0: Instant, sum: &mut Summary, a: &NsNode, b: &NsNode) -> Result<()> {
    for (n, other) in [(a, b), (b, a)] {
        let c = connection(n, other.org)?;
        ensure!(
            c.as_deref() == Some("relayed"),
            "{} lists its connection to {} as {c:?} with hole punching off at agency",
            n.org,
            other.org
        );
    }
    publish(a, "rx-relayed", &json!({ "n": 3, "drug": "zanamivir" }))?;
    let took = await_records(b, &["rx-relayed".to_owned()], REPLICATE_WITHIN)?;
    sum.mark(
        t0,
        format!(
            "hole punching off at agency: both list the connection as relayed, and a record \
             crossed it in {:.2} s",
            took.as_secs_f64()
        ),
    );
    Ok(())
}

/// Polls what pharmacy and agency list as their connection to each other until both list
/// `hole-punched`; the timeline of what they listed.
fn hole_punch(
    t0: Instant,
    sum: &mut Summary,
    pair: [&NsNode; 2],
    relay: &NsNode,
) -> Result<String> {
    let start = Instant::now();
    let mut last: [Option<Option<String>>; 2] = [None, None];
    let mut timeline = Vec::new();
    let done = wait_for(PUNCH_WITHIN, || {
        for (i, (me, other)) in [(pair[0], pair[1]), (pair[1], pair[0])]
            .into_iter()
            .enumerate()
        {
            let c = connection(me, other.org)?;
            if last[i].as_ref() != Some(&c) {
                let at = t0.elapsed().as_secs_f64();
                timeline.push(format!(
                    "{}->{} {} at {at:.2} s",
                    me.org,
                    other.org,
                    c.as_deref().unwrap_or("none")
                ));
                last[i] = Some(c);
            }
        }
        Ok(last
            .iter()
            .all(|c| matches!(c, Some(Some(c)) if c == "hole-punched")))
    })?;
    let timeline = timeline.join(", ");
    if done.is_none() {
        let logs: Vec<String> = [pair[0], pair[1], relay]
            .iter()
            .map(|n| {
                format!(
                    "--- {}:\n{}",
                    n.org,
                    grep(n, &["dcutr", "hole", "relay"], 0, 40)
                )
            })
            .collect();
        bail!(
            "pharmacy and agency did not end hole-punched within {PUNCH_WITHIN:?} (timeline: \
             {timeline}); logs:\n{}",
            logs.join("\n")
        );
    }
    if !timeline.contains("relayed") {
        say(
            t0,
            "no relayed connection seen between two polls: the hole was punched before",
        );
    }
    sum.mark(
        t0,
        format!(
            "pharmacy and agency connected hole-punched ({:.2} s of polling): {timeline}",
            start.elapsed().as_secs_f64()
        ),
    );
    Ok(timeline)
}

/// Insurer, on site A's LAN, `--relay` the hospital, joins: the relay holds its 2 reservations,
/// so insurer gets none, and the refusal is logged. Pharmacy and agency still replicate. Returns
/// insurer.
fn relay_limit(
    t0: Instant,
    sum: &mut Summary,
    net: &NatNet,
    dir: &Path,
    relay: &str,
    hospital: &NsNode,
    pair: [&NsNode; 2],
) -> Result<NsNode> {
    let insurer = start_behind_nat("c", INSURER, relay, (net, dir), true)?;
    join(hospital, &insurer)?;
    await_members(&[hospital, pair[0], pair[1], &insurer])?;
    sum.mark(
        t0,
        "insurer (site A's LAN, --relay hospital) joined; watching its reservation",
    );
    let took = watch_refusal(t0, hospital, &insurer)?;
    sum.mark(
        t0,
        format!(
            "insurer refused a reservation: the refusal logged {:.2} s after it was a member, no \
             circuit address for {:.2} s",
            took.0.as_secs_f64(),
            took.1.as_secs_f64()
        ),
    );
    publish(pair[0], "rx-after-limit", &json!({ "n": 3 }))?;
    let took = await_records(pair[1], &["rx-after-limit".to_owned()], REPLICATE_WITHIN)?;
    sum.mark(
        t0,
        format!(
            "agency still receives pharmacy's records ({:.2} s)",
            took.as_secs_f64()
        ),
    );
    Ok(insurer)
}

/// Watches `insurer`, a member now, for at least `REFUSAL_WATCH` and until a refusal of its
/// reservation is logged (at most `REFUSAL_WITHIN`): it must never show a circuit address. A
/// refusal before it was a member does not count (the relay serves members only, and a node
/// asks for its reservations as it starts). Returns when the refusal was logged and how long
/// insurer was watched.
fn watch_refusal(t0: Instant, hospital: &NsNode, insurer: &NsNode) -> Result<(Duration, Duration)> {
    let marks = (hospital.log().len(), insurer.log().len());
    let start = Instant::now();
    // The relay logs "not a member" (debug) when that is why it refuses: a refusal of a member
    // without that line is the limit's.
    let refused = |lines: &str, who: Option<&str>| {
        let about = |l: &&str| who.is_none_or(|id| l.contains(id));
        let lines: Vec<&str> = lines.lines().filter(about).collect();
        lines
            .iter()
            .any(|l| l.contains("reservation refused") || l.contains("Failed to get"))
            && !lines.iter().any(|l| l.contains("not a member"))
    };
    let mut logged = None;
    let mut said = (String::new(), String::new());
    let watched = wait_for(REFUSAL_WITHIN, || {
        if let Some(addr) = circuit_addr(insurer, &hospital.peer_id)? {
            bail!(
                "insurer listens on {addr} although the relay allows {MAX_RESERVATIONS} \
                 reservations, both held"
            );
        }
        said = (
            grep(hospital, &["reservation", "not a member"], marks.0, 20),
            grep(insurer, &["reservation"], marks.1, 20),
        );
        if logged.is_none() && (refused(&said.0, Some(&insurer.peer_id)) || refused(&said.1, None))
        {
            logged = Some(start.elapsed());
        }
        Ok(logged.is_some() && start.elapsed() >= REFUSAL_WATCH)
    })?;
    say(
        t0,
        format!(
            "log lines about reservations since insurer was a member:\n--- hospital:\n{}\n--- \
             insurer:\n{}",
            said.0, said.1
        ),
    );
    match (logged, watched) {
        (Some(logged), Some(watched)) => Ok((logged, watched)),
        _ => bail!(
            "insurer got no reservation in {REFUSAL_WITHIN:?}, but no log line about a \
             reservation says the limit refused it (the relay's \"reservation refused\" with \
             insurer's peer id and no \"not a member\")"
        ),
    }
}

/// Waits until AutoNAT has told each node what is expected of it: the relay is public, the
/// members behind the NATs private (before insurer joins: insurer shares pharmacy's LAN, dials
/// it directly, and so may find it public, which is what AutoNAT means by it).
fn await_reachability(t0: Instant, sum: &mut Summary, want: &[(&NsNode, &str)]) -> Result<()> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(60);
    loop {
        let got: Vec<Option<String>> = want
            .iter()
            .map(|(n, _)| Ok(reachability(&status(n)?)))
            .collect::<Result<_>>()?;
        if want
            .iter()
            .zip(&got)
            .all(|((_, w), g)| g.as_deref() == Some(*w))
        {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "AutoNAT did not conclude as expected within 60 s: want {:?}, got {got:?}",
            want.iter()
                .map(|(n, w)| format!("{} {w}", n.org))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    sum.mark(
        t0,
        format!(
            "AutoNAT: hospital public, pharmacy and agency private ({:.1} s of waiting)",
            start.elapsed().as_secs_f64()
        ),
    );
    Ok(())
}

/// Each node's reachability, as `status --json` shows it.
fn reachabilities(nodes: &[&NsNode]) -> Result<String> {
    let all: Vec<String> = nodes
        .iter()
        .map(|n| {
            Ok(format!(
                "{} {}",
                n.org,
                reachability(&status(n)?).as_deref().unwrap_or("(absent)")
            ))
        })
        .collect::<Result<_>>()?;
    Ok(all.join(", "))
}

/// Stops the hospital (the relay) and the insurer: a record pharmacy publishes must still
/// reach agency, over the punched hole. `nodes` is [hospital, pharmacy, agency, insurer].
fn without_relay(t0: Instant, sum: &mut Summary, nodes: &mut [NsNode]) -> Result<()> {
    nodes[0].stop()?;
    nodes[3].stop()?;
    publish(&nodes[1], "rx-without-relay", &json!({ "n": 4 }))?;
    let took =
        await_records(&nodes[2], &["rx-without-relay".to_owned()], SPREAD).with_context(|| {
            format!(
                "with the relay stopped; pharmacy's connection to agency: {:?}",
                connection(&nodes[1], AGENCY)
            )
        })?;
    let c = connection(&nodes[1], AGENCY)?;
    sum.mark(
        t0,
        format!(
            "relay stopped: agency holds pharmacy's next record after {:.2} s (pharmacy lists \
             its connection to agency as {})",
            took.as_secs_f64(),
            c.as_deref().unwrap_or("none")
        ),
    );
    Ok(())
}
