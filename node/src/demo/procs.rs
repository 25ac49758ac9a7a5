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
pub fn init(home: &Path, org: &str) -> Result<()> {
    let status = Command::new(exe()?)
        .args([
            "init",
            "--org",
            org,
            "--mesh",
            "flu-response",
            "--api",
            "127.0.0.1:0",
        ])
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
