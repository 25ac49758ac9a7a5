//! The NAT topology: namespaces for the "internet", the public member, two NAT routers
//! (MASQUERADE, and a firewall that drops what its LAN did not ask for) and the sites behind them;
//! and the check of its plumbing with plain tools before any node starts.

use super::*;

/// The namespaces of the NAT topology. Dropping it deletes every namespace it created; the
/// bridges, veths and iptables rules live in those namespaces and go with them.
///
/// - `inet`: the "internet", a bridge `br0` on 10.88.S.0/24 (S = pid % 250);
/// - `pub`: the public member, 10.88.S.1, no route to any private network;
/// - `ra` / `rb`: NAT routers, `wan0` 10.88.S.2 / .3, `lan` 192.168.10.1 / 192.168.20.1;
/// - `a` (192.168.10.2) and `c` (192.168.10.3) on router A's LAN (a bridge), `b`
///   (192.168.20.2) on router B's; each routes by default through its router.
pub(super) struct NatNet {
    tag: String,
    /// The third octet of the public addresses.
    pub(crate) subnet: u32,
    pub(crate) created: Namespaces,
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

    /// Blocks (or unblocks) what each router forwards to the other's public address: hole
    /// punches between the sites fail while the relay still carries their traffic.
    pub(crate) fn block_sites(&self, block: bool) -> Result<()> {
        let op = if block { "-I" } else { "-D" };
        for (router, other) in [("ra", 3), ("rb", 2)] {
            let to = self.public(other);
            let rule = [
                "iptables", op, "FORWARD", "-o", "wan0", "-d", &to, "-j", "DROP",
            ];
            ns_ok(&self.ns(router), &rule)?;
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
pub(super) fn ns_exec(ns: &str, args: &[&str]) -> Result<Output> {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .with_context(|| format!("running `ip netns exec {ns} {}`", args.join(" ")))
}

/// `ip netns exec NS ARGS`, which must succeed.
pub(super) fn ns_ok(ns: &str, args: &[&str]) -> Result<()> {
    let mut all = vec!["netns", "exec", ns];
    all.extend_from_slice(args);
    ip(&all)
}

/// A TCP connection attempt from `ns` to `addr:port` (nothing listens there): `Ok` when the
/// host answered (connected or refused), else why not (unreachable, or no answer in 2 s).
pub(super) fn probe(ns: &str, addr: &str, port: u16) -> Result<std::result::Result<(), String>> {
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
pub(super) fn verify_plumbing(net: &NatNet) -> Result<String> {
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
