//! The test's hosts: network namespaces on a bridge, and `fogmesh run` processes inside them.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::common::{fogmesh_in_netns, run_cli_in_netns, run_command, s, wait_deadline, Out};
use crate::*;

/// Runs `ip ARGS`; fails with its stderr.
pub(crate) fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    ensure!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Namespaces a test created: dropping it deletes them, last first (bridges, veths and
/// firewall rules live in them and go with them).
#[derive(Default)]
pub(crate) struct Namespaces(pub(crate) Vec<String>);

impl Namespaces {
    /// `ip netns add NAME`, remembered for deletion.
    pub(crate) fn add(&mut self, name: &str) -> Result<()> {
        ip(&["netns", "add", name])?;
        self.0.push(name.to_owned());
        Ok(())
    }

    /// Deletes the namespaces now; returns the errors.
    pub(crate) fn destroy(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        for ns in self.0.drain(..).rev() {
            if let Err(e) = ip(&["netns", "del", &ns]) {
                errors.push(e.to_string());
            }
        }
        errors
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for e in self.destroy() {
            eprintln!("cleanup: {e}");
        }
    }
}

/// The namespaces, bridges and veths of one test; dropping it deletes them.
pub(crate) struct Net {
    pub(crate) bridge_ns: String,
    pub(crate) node_ns: Vec<String>,
    pub(crate) created: Namespaces,
    /// The third octet of every node's address.
    pub(crate) subnet: u32,
}

impl Net {
    /// One namespace holding bridges `br0` and `br1`, and `n` node namespaces whose `eth0`
    /// (10.77.S.i+1/24) is the peer of `vb<i>` on `br0`.
    pub(crate) fn create(tag: &str, n: usize) -> Result<Self> {
        let mut net = Self {
            bridge_ns: format!("fm{tag}-br"),
            node_ns: (0..n).map(|i| format!("fm{tag}-n{i}")).collect(),
            created: Namespaces::default(),
            subnet: std::process::id() % 250,
        };
        let br = net.bridge_ns.clone();
        net.created.add(&br)?;
        ip(&["-n", &br, "link", "set", "lo", "up"])?;
        for bridge in ["br0", "br1"] {
            ip(&["-n", &br, "link", "add", bridge, "type", "bridge"])?;
            // Flood multicast to every port: no IGMP snooping between mDNS and its listeners.
            ip(&[
                "-n",
                &br,
                "link",
                "set",
                bridge,
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ])?;
            ip(&["-n", &br, "link", "set", bridge, "up"])?;
        }
        let subnet = net.subnet;
        for (i, ns) in net.node_ns.clone().iter().enumerate() {
            net.created.add(ns)?;
            let vb = format!("vb{i}");
            ip(&[
                "-n", &br, "link", "add", &vb, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ])?;
            ip(&["-n", &br, "link", "set", &vb, "master", "br0"])?;
            ip(&["-n", &br, "link", "set", &vb, "up"])?;
            let addr = format!("10.77.{subnet}.{}/24", i + 1);
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", ns, "link", "set", "eth0", "multicast", "on"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            // mDNS sends to 224.0.0.251: it needs a route.
            ip(&["-n", ns, "route", "add", "default", "dev", "eth0"])?;
        }
        Ok(net)
    }

    /// Node `i`'s address.
    pub(crate) fn addr(&self, i: usize) -> String {
        format!("10.77.{}.{}", self.subnet, i + 1)
    }

    /// Plugs node `i`'s veth into `bridge` (`br0`: everyone; `br1`: the other side).
    pub(crate) fn attach(&self, i: usize, bridge: &str) -> Result<()> {
        ip(&[
            "-n",
            &self.bridge_ns,
            "link",
            "set",
            &format!("vb{i}"),
            "master",
            bridge,
        ])
    }
}

/// A node in a namespace: its home, its `fogmesh run` (killed when dropped), its CLI.
pub(crate) struct NsNode {
    pub(crate) org: &'static str,
    pub(crate) ns: String,
    pub(crate) home: PathBuf,
    pub(crate) peer_id: String,
    pub(crate) child: Option<Child>,
    /// Environment for `fogmesh run` (e.g. libfaketime's, to skew its clock).
    pub(crate) env: Vec<(String, String)>,
}

impl NsNode {
    pub(crate) fn init(ns: &str, home: PathBuf, org: &'static str, mdns: bool) -> Result<Self> {
        let extra: &[&str] = if mdns { &[] } else { &["--no-mdns"] };
        let node = Self::init_with(ns, home, org, extra)?;
        let config = fogmesh::config::Config::load(&node.home.join("config.toml"))?;
        ensure!(
            config.bootstrap.is_empty() && config.mdns == mdns,
            "unexpected config: {config:?}"
        );
        Ok(node)
    }

    /// `fogmesh init` in `ns` listening on TCP port 7071, with `extra` arguments.
    pub(crate) fn init_with(
        ns: &str,
        home: PathBuf,
        org: &'static str,
        extra: &[&str],
    ) -> Result<Self> {
        let mut args = vec![
            "init",
            "--home",
            s(&home),
            "--org",
            org,
            "--mesh",
            MESH,
            "--api",
            API,
            "--listen",
            LISTEN,
        ];
        args.extend(extra);
        let out = run_cli_in_netns(ns, &args, None);
        ensure!(out.code == Some(0), "{}: {}", out.cmdline, out.stderr);
        let mut node = Self {
            org,
            ns: ns.to_owned(),
            home,
            peer_id: String::new(),
            child: None,
            env: Vec::new(),
        };
        let id = node.json(&["id"])?;
        node.peer_id = id["peer_id"].as_str().context("peer_id")?.to_owned();
        Ok(node)
    }

    pub(crate) fn log_path(&self) -> PathBuf {
        self.home.join("node.log")
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Log lines containing any of `needles` (for evidence), the last `n`.
    pub(crate) fn log_lines(&self, needles: &[&str], n: usize) -> String {
        let text = self.log();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| needles.iter().any(|w| l.contains(w)))
            .collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Starts `ip netns exec NS fogmesh run` and waits until its API answers.
    pub(crate) fn start(&mut self) -> Result<()> {
        ensure!(self.child.is_none(), "{} already running", self.org);
        let _ = std::fs::remove_file(self.home.join("api.addr"));
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = fogmesh_in_netns(&self.ns)
            .args(["run", "--home", s(&self.home)])
            .env("RUST_LOG", "info,fogmesh=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("spawning fogmesh run")?;
        self.child = Some(child);
        let deadline = Instant::now() + common::START_DEADLINE;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!("{} exited with {status}; log:\n{}", self.org, self.log());
            }
            if self.home.join("api.addr").exists() && self.cli(&["peers", "--json"]).code == Some(0)
            {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{} did not serve; log:\n{}",
                self.org,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then waits for a clean exit.
    pub(crate) fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        match wait_deadline(&mut child, common::STOP_DEADLINE) {
            Some(st) if st.success() => Ok(()),
            Some(st) => bail!("{} exited with {st}", self.org),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{} ignored SIGTERM", self.org)
            }
        }
    }

    /// SIGKILL: the process ends at once, with whatever its store had not flushed.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` (`-STOP`, `-CONT`) to the running process.
    pub(crate) fn signal(&self, signal: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([signal, &c.id().to_string()])
                .status();
        }
    }

    /// `fogmesh ARGS --home H` inside the namespace.
    pub(crate) fn cli(&self, args: &[&str]) -> Out {
        let mut all = args.to_vec();
        all.extend(["--home", s(&self.home)]);
        run_cli_in_netns(&self.ns, &all, None)
    }

    /// `fogmesh ARGS --json --home H`, which must succeed; its one JSON document.
    pub(crate) fn json(&self, args: &[&str]) -> Result<Value> {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.cli_ok(&all)?;
        serde_json::from_str(&out.stdout).with_context(|| out.stdout.clone())
    }

    /// `fogmesh ARGS --home H` inside the namespace, which must succeed.
    pub(crate) fn cli_ok(&self, args: &[&str]) -> Result<Out> {
        let out = self.cli(args);
        ensure!(
            out.code == Some(0),
            "`{}` failed: {}",
            out.cmdline,
            out.stderr
        );
        Ok(out)
    }

    /// `POST /v1/join` inside the namespace: the HTTP status and the body.
    pub(crate) fn join(&self, token: &str) -> Result<(u16, String)> {
        let admin = std::fs::read_to_string(self.home.join("admin.token"))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, "curl", "-sS", "--max-time", "60"])
            .args(["-o", "-", "-w", "\n%{http_code}"])
            .args(["-H", &format!("Authorization: Bearer {}", admin.trim())])
            .args([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                "@-",
            ])
            .arg(format!("http://{API}/v1/join"));
        let body = json!({ "token": token }).to_string();
        let out = run_command(
            cmd,
            format!("ip netns exec {} curl POST /v1/join", self.ns),
            Some(body.as_bytes()),
        );
        ensure!(out.code == Some(0), "{}: {}", out.cmdline, out.stderr);
        let (body, code) = out.stdout.rsplit_once('\n').context("curl output")?;
        Ok((code.trim().parse()?, body.to_owned()))
    }

    /// `GET /metrics` inside the namespace.
    pub(crate) fn metrics(&self) -> Result<String> {
        let admin = std::fs::read_to_string(self.home.join("admin.token"))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, "curl", "-sS", "--max-time", "30"])
            .args(["-H", &format!("Authorization: Bearer {}", admin.trim())])
            .arg(format!("http://{API}/metrics"));
        let out = run_command(
            cmd,
            format!("ip netns exec {} curl GET /metrics", self.ns),
            None,
        );
        ensure!(out.code == Some(0), "{}: {}", out.cmdline, out.stderr);
        Ok(out.stdout)
    }

    /// The organizations this node sees as members that are up.
    pub(crate) fn up_members(&self) -> Result<BTreeSet<String>> {
        let v = self.json(&["peers"])?;
        Ok(v["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["member"] == true && p["up"] == true)
            .filter_map(|p| p["org"].as_str().map(String::from))
            .collect())
    }

    /// The peer ids this node has an established connection to (members or not).
    pub(crate) fn up_peers(&self) -> Result<BTreeSet<String>> {
        let v = self.json(&["peers"])?;
        Ok(v["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["up"] == true)
            .filter_map(|p| p["peer"].as_str().map(String::from))
            .collect())
    }

    /// `GET /v1/members` (through `fogmesh member list`): organization -> its whole entry.
    pub(crate) fn members(&self) -> Result<BTreeMap<String, Value>> {
        let v = self.json(&["member", "list"])?;
        Ok(v["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| Some((m["org"].as_str()?.to_owned(), m.clone())))
            .collect())
    }

    /// The dataset as this node sees it: record id -> the whole record.
    pub(crate) fn view(&self) -> Result<BTreeMap<String, Value>> {
        let v = self.json(&["query", DATASET, "--limit", "10000"])?;
        Ok(v["records"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| Some((r["id"].as_str()?.to_owned(), r.clone())))
            .collect())
    }

    /// Publishes one record; its id once acknowledged.
    pub(crate) fn publish(&self, id: &str, name: &str, data: &Value) -> Result<String> {
        let v = self.json(&[
            "publish",
            DATASET,
            "--id",
            id,
            "--name",
            name,
            "--data",
            &data.to_string(),
        ])?;
        Ok(v["ids"][0].as_str().context("no id")?.to_owned())
    }
}

impl Drop for NsNode {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
