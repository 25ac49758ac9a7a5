//! Node processes for the demos: `fogmesh init` and `fogmesh run` children on loopback, each with
//! an admin client; a child still running when dropped is killed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::client::Client;
use crate::daemon::API_ADDR_FILE;

/// Prints a timeline: seconds since the demo began, who, what.
pub struct Timeline(pub Instant);

impl Timeline {
    /// One line of the timeline.
    pub fn say(&self, who: &str, what: impl AsRef<str>) {
        println!(
            "[{:>6.2}s] {who:<16} {}",
            self.0.elapsed().as_secs_f64(),
            what.as_ref()
        );
    }
}

/// A `fogmesh run` child process; killed if still running when dropped.
pub struct NodeProcess(Child);

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn exe() -> Result<PathBuf> {
    std::env::current_exe().context("locating the fogmesh binary")
}

/// A fresh directory for the demo's node homes.
pub fn demo_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("fogmesh-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// `fogmesh init` for `org` on loopback: ephemeral API and peer ports, mDNS off (the demo's
/// members find each other through invitations and the roster).
pub fn init(home: &Path, org: &str, mesh: &str) -> Result<()> {
    let status = Command::new(exe()?)
        .args(["init", "--org", org, "--mesh", mesh, "--api", "127.0.0.1:0"])
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns", "--home"])
        .arg(home)
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("fogmesh init for {org} failed");
    }
    Ok(())
}

/// Starts `fogmesh run` on `home` and waits until its API answers.
pub fn start(home: &Path) -> Result<(NodeProcess, Client)> {
    let _ = std::fs::remove_file(home.join(API_ADDR_FILE));
    let log = std::fs::File::create(home.join("node.log"))?;
    let child = Command::new(exe()?)
        .args(["run", "--home"])
        .arg(home)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .context("starting `fogmesh run`")?;
    let proc = NodeProcess(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        if let Ok(s) = std::fs::read_to_string(home.join(API_ADDR_FILE)) {
            if let Ok(a) = s.trim().parse() {
                break a;
            }
        }
        if Instant::now() > deadline {
            bail!("the node in {} did not start within 30 s", home.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let token = fogmesh::node::home::admin_token(home)?;
    Ok((proc, Client::new(addr, token, home)))
}

/// SIGTERM, then waits for a clean exit.
pub fn stop(mut p: NodeProcess) -> Result<()> {
    let pid = p.0.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .context("sending SIGTERM")?;
    if !status.success() {
        bail!("kill -TERM {pid} failed");
    }
    let code = p.0.wait()?;
    if !code.success() {
        bail!("the node exited with {code}");
    }
    Ok(())
}

/// Polls `cond` every 5 ms until it holds; fails after `limit` with `what`.
pub fn wait_until(
    what: &str,
    limit: Duration,
    mut cond: impl FnMut() -> Result<bool>,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if cond()? {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One organization's node in a demo: its home, its process, an admin client.
pub struct Org {
    /// Organization name.
    pub name: &'static str,
    /// Home directory.
    pub home: PathBuf,
    /// The running node (none while stopped).
    pub proc: Option<NodeProcess>,
    /// Admin client.
    pub api: Client,
}

/// Initializes and starts one node per name in `dir`, all of mesh `mesh`.
pub fn start_orgs(
    t: &Timeline,
    dir: &Path,
    names: &[&'static str],
    mesh: &str,
) -> Result<Vec<Org>> {
    let mut orgs = Vec::new();
    for &name in names {
        let home = dir.join(name);
        init(&home, name, mesh)?;
        let (proc, api) = start(&home)?;
        let peer = api.get("/v1/node")?["peer_id"]
            .as_str()
            .unwrap_or("?")
            .to_owned();
        let tail = peer
            .get(peer.len().saturating_sub(8)..)
            .unwrap_or(&peer)
            .to_owned();
        t.say(name, format!("node up, peer ..{tail}"));
        orgs.push(Org {
            name,
            home,
            proc: Some(proc),
            api,
        });
    }
    Ok(orgs)
}

/// The first organization founds the mesh and invites every other; waits until every roster
/// holds everyone.
pub fn form_mesh(t: &Timeline, orgs: &[Org], quiet: bool) -> Result<()> {
    let founder = &orgs[0];
    for o in &orgs[1..] {
        let inv = founder
            .api
            .post("/v1/invites", &serde_json::json!({"ttl_secs": 600}))?;
        let token = inv["token"].as_str().context("no token")?;
        let joined = o
            .api
            .post("/v1/join", &serde_json::json!({ "token": token }))?;
        if !quiet {
            t.say(
                o.name,
                format!(
                    "joined with a one-time invitation ({} members so far)",
                    joined["members"].as_array().map_or(0, Vec::len)
                ),
            );
        }
    }
    let started = Instant::now();
    for o in orgs {
        wait_until(
            "the roster to reach everyone",
            Duration::from_secs(60),
            || {
                Ok(o.api.get("/v1/mesh")?["members"]
                    .as_array()
                    .map_or(0, Vec::len)
                    == orgs.len())
            },
        )?;
    }
    t.say(
        "all",
        format!(
            "{} members on every roster ({:.0} ms after the last join)",
            orgs.len(),
            started.elapsed().as_secs_f64() * 1e3
        ),
    );
    Ok(())
}

/// Keeps the running nodes up for a person (or a browser) to look at: prints each one's dashboard
/// and admin token file, then waits for a line, or the end, of standard input.
pub fn serve(t: &Timeline, orgs: &[Org]) -> Result<()> {
    println!();
    for o in orgs.iter().filter(|o| o.proc.is_some()) {
        let token = o.home.join("admin.token");
        let url = format!("{}/", o.api.base());
        t.say(o.name, format!("dashboard {url} token {}", token.display()));
    }
    t.say("demo", "serving: press Enter to stop the nodes");
    std::io::Write::flush(&mut std::io::stdout())?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(())
}

/// Stops every node still running.
pub fn stop_all(orgs: &mut [Org]) -> Result<()> {
    for o in orgs {
        if let Some(p) = o.proc.take() {
            stop(p)?;
        }
    }
    Ok(())
}
