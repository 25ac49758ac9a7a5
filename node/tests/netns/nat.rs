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
//!   crosses. Agency restarts with hole punching on while the way between the two routers is
//!   blocked: the first punch must fail (an end logs it) and neither may list `hole-punched`.
//!   Unblocked, the two must punch again by themselves and both list `hole-punched` (the
//!   timeline of what they listed is printed);
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

mod net;
mod nodes;
use net::*;
use nodes::*;

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
/// How long the first hole punch after agency's restart may take to fail, with the way between
/// the sites blocked: the relayed connection, then a DCUtR round of 3 dial attempts, each ending
/// when its dials time out (seen: 30 to 64 s for the round).
const PUNCH_FAILS_WITHIN: Duration = Duration::from_secs(120);
/// How long the connection between pharmacy and agency may take to end hole-punched once the
/// way is unblocked: the 15 s a node waits before closing the relayed connection to try again,
/// a new relayed connection and a DCUtR round; with room for one more failed round (3 dial
/// attempts about 10 s apart) and the longer wait after it.
const PUNCH_WITHIN: Duration = Duration::from_secs(120);
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
    let marks = [pharmacy.log().len(), agency.log().len()];
    agency.stop()?;
    edit_config(&agency, |c| c.hole_punch = true)?;
    net.block_sites(true)?;
    agency.start()?;
    first_punch_fails(t0, &mut sum, &net, [&pharmacy, &agency], marks)?;
    let timeline = hole_punch(t0, &mut sum, [&pharmacy, &agency], marks, &hospital)?;
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

/// With the way between the two routers blocked, the first hole punch after agency's restart
/// fails: waits until an end logs the failure, checks that neither lists the other as
/// hole-punched, and unblocks. The two must then punch again by themselves (the end whose
/// punch failed closes the relayed connection after a wait, and the next one brings a new
/// round); [`hole_punch`] waits for that.
fn first_punch_fails(
    t0: Instant,
    sum: &mut Summary,
    net: &NatNet,
    pair: [&NsNode; 2],
    marks: [usize; 2],
) -> Result<()> {
    let failed = || {
        pair.iter().zip(marks).find_map(|(n, mark)| {
            let line = grep(n, &["hole punch failed"], mark, 1);
            (!line.is_empty()).then(|| format!("{}: {line}", n.org))
        })
    };
    let took = wait_for(PUNCH_FAILS_WITHIN, || Ok(failed().is_some()))?;
    let Some(took) = took else {
        let logs: Vec<String> = pair
            .iter()
            .zip(marks)
            .map(|(n, mark)| format!("--- {}:\n{}", n.org, grep(n, &["hole", "relay"], mark, 30)))
            .collect();
        bail!(
            "no hole punch failed within {PUNCH_FAILS_WITHIN:?} with the way between the sites \
             blocked; their logs since agency's restart:\n{}",
            logs.join("\n")
        );
    };
    for (n, other) in [(pair[0], pair[1]), (pair[1], pair[0])] {
        let c = connection(n, other.org)?;
        ensure!(
            c.as_deref() != Some("hole-punched"),
            "{} lists {} as hole-punched with the way between the sites blocked",
            n.org,
            other.org
        );
    }
    net.block_sites(false)?;
    sum.mark(
        t0,
        format!(
            "way between the sites blocked: the first hole punch failed ({:.2} s after agency's \
             restart; {}); unblocked",
            took.as_secs_f64(),
            failed().unwrap_or_default()
        ),
    );
    Ok(())
}

/// Polls what pharmacy and agency list as their connection to each other until both list
/// `hole-punched`; the timeline of what they listed. `marks` are the lengths of the pair's logs
/// before agency's restart: the punch rounds logged since (each with the candidates the other
/// end offered) are printed, and on a failure also the dials that reached the wrong peer (this
/// node itself through a peer's loopback address, or the relay) and the connections lost.
fn hole_punch(
    t0: Instant,
    sum: &mut Summary,
    pair: [&NsNode; 2],
    marks: [usize; 2],
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
    let since_restart = |needles: &[&str], max: usize| -> String {
        let logs: Vec<String> = pair
            .iter()
            .zip(marks)
            .map(|(n, mark)| format!("--- {}:\n{}", n.org, grep(n, needles, mark, max)))
            .collect();
        logs.join("\n")
    };
    let rounds = ["hole-punch as", "hole punch"];
    if done.is_none() {
        let lost = ["unexpected peer id", "peer down", "reservation"];
        bail!(
            "pharmacy and agency did not end hole-punched within {PUNCH_WITHIN:?} (timeline: \
             {timeline}); their logs since agency's restart:\n{}\n--- {} (relay):\n{}",
            since_restart(&[&rounds[..], &lost[..]].concat(), 60),
            relay.org,
            grep(relay, &["circuit", "reservation"], 0, 20)
        );
    }
    if !timeline.contains("relayed") {
        say(
            t0,
            "no relayed connection seen between two polls: the hole was punched before",
        );
    }
    say(
        t0,
        format!(
            "punch rounds since agency's restart:\n{}",
            since_restart(&rounds, 12)
        ),
    );
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
