//! Helpers for process-level tests of the `fogmesh` binary: running CLI commands with a deadline,
//! and `TestNode`, a `fogmesh run` child process on loopback that is killed when dropped.

#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

/// How long a node may take to start serving.
pub const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long a node may take to exit after SIGTERM.
pub const STOP_DEADLINE: Duration = Duration::from_secs(60);
/// How long one CLI command may run.
pub const CLI_DEADLINE: Duration = Duration::from_secs(60);

/// Variables that would redirect a `fogmesh` command away from what a test says.
const REDIRECTING_VARS: [&str; 6] = [
    "FOGMESH_HOME",
    "FOGMESH_API",
    "FOGMESH_TOKEN",
    "FOGMESH_TOKEN_FILE",
    "FOGMESH_LISTEN",
    "RUST_LOG",
];

fn clean_env(c: &mut Command) {
    for var in REDIRECTING_VARS {
        c.env_remove(var);
    }
}

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_fogmesh")
}

/// A `fogmesh` command with the environment cleared of variables that would redirect it.
pub fn fogmesh() -> Command {
    let mut c = Command::new(bin());
    clean_env(&mut c);
    c
}

/// What a finished CLI command left behind.
#[derive(Debug)]
pub struct Out {
    /// The exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// The command line, for messages.
    pub cmdline: String,
}

impl Out {
    /// Asserts exit code 0 and returns self.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code,
            Some(0),
            "`{}` failed\nstdout:\n{}\nstderr:\n{}",
            self.cmdline,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Asserts the given exit code and returns self.
    #[track_caller]
    pub fn code(self, want: i32) -> Self {
        assert_eq!(
            self.code,
            Some(want),
            "`{}`: expected exit code {want}\nstdout:\n{}\nstderr:\n{}",
            self.cmdline,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Parses the whole of stdout as exactly one JSON document.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "`{}`: stdout is not exactly one JSON document: {e}\nstdout:\n{}",
                self.cmdline, self.stdout
            )
        })
    }

    /// Non-empty stdout lines.
    pub fn lines(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

/// Runs `fogmesh ARGS` with optional stdin, killing it if it outlives `CLI_DEADLINE`.
pub fn run_cli(args: &[&str], stdin: Option<&[u8]>) -> Out {
    let mut cmd = fogmesh();
    cmd.args(args);
    run_command(cmd, format!("fogmesh {}", args.join(" ")), stdin)
}

/// Reads a pipe to its end on a thread.
pub fn reader(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Waits for `child` to exit, at most `limit`; `None` if it is still running.
pub fn wait_deadline(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

/// `fogmesh init` of a loopback node with an ephemeral API port.
pub fn init_args<'a>(home: &'a str, org: &'a str) -> Vec<&'a str> {
    vec![
        "init",
        "--home",
        home,
        "--org",
        org,
        "--mesh",
        "test-mesh",
        "--api",
        "127.0.0.1:0",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--no-mdns",
    ]
}

/// Path as &str (temp dirs are UTF-8 here).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// A `fogmesh run` child process on a home directory. Killed (SIGKILL) when dropped.
pub struct TestNode {
    child: Option<Child>,
    pub home: PathBuf,
    pub org: String,
    pub addr: SocketAddr,
    pub token: String,
    agent: ureq::Agent,
}

impl TestNode {
    /// `fogmesh init` on `home`, then starts the node.
    pub fn init(home: &Path, org: &str) -> Result<Self> {
        let out = run_cli(&init_args(s(home), org), None);
        ensure!(
            out.code == Some(0),
            "fogmesh init failed: {}{}",
            out.stdout,
            out.stderr
        );
        Self::start(home, org)
    }

    /// Starts `fogmesh run --home HOME` and waits until it serves `GET /v1/node`.
    pub fn start(home: &Path, org: &str) -> Result<Self> {
        let token = std::fs::read_to_string(home.join("admin.token"))
            .context("reading admin.token")?
            .trim()
            .to_owned();
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout(Duration::from_secs(120))
            .build();
        let mut node = Self {
            child: None,
            home: home.to_owned(),
            org: org.to_owned(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            token,
            agent,
        };
        node.spawn()?;
        Ok(node)
    }

    fn log_path(&self) -> PathBuf {
        self.home.join("test-node.log")
    }

    fn spawn(&mut self) -> Result<()> {
        self.spawn_answering()?;
        self.await_loaded()
    }

    /// Starts the process and waits until its API answers, not until its datasets are loaded.
    fn spawn_answering(&mut self) -> Result<()> {
        assert!(self.child.is_none(), "node already running");
        let addr_file = self.home.join("api.addr");
        match std::fs::remove_file(&addr_file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context("removing a stale api.addr"),
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = fogmesh()
            .args(["run", "--home"])
            .arg(&self.home)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("spawning fogmesh run")?;
        self.child = Some(child);
        self.await_answering()
    }

    /// Waits until the running process serves `GET /v1/node` on the address it wrote to
    /// `api.addr` (again, after it restarted itself: the caller removes the old `api.addr`
    /// first, or waits for the node to remove it), and has loaded its datasets.
    pub fn await_serving(&mut self) -> Result<()> {
        self.await_answering()?;
        self.await_loaded()
    }

    /// Waits until `api.addr` names the address the process answers `GET /v1/node` on.
    fn await_answering(&mut self) -> Result<()> {
        let addr_file = self.home.join("api.addr");
        let deadline = Instant::now() + START_DEADLINE;
        self.addr = loop {
            if let Some(status) = self.child_mut().try_wait()? {
                self.child = None;
                bail!(
                    "fogmesh run exited with {status} before serving; log:\n{}",
                    self.log_tail()
                );
            }
            if let Ok(text) = std::fs::read_to_string(&addr_file) {
                if let Ok(a) = text.trim().parse() {
                    break a;
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "fogmesh run wrote no api.addr within {START_DEADLINE:?}; log:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let info = self.get("/v1/node").with_context(|| {
            format!(
                "the restarted node does not serve; log:\n{}",
                self.log_tail()
            )
        })?;
        ensure!(info["org"] == self.org.as_str(), "GET /v1/node: {info}");
        Ok(())
    }

    /// Waits until `GET /v1/node` shows no loading: the node answers before its datasets are
    /// loaded, and shows `loading` until its mesh runs too.
    pub fn await_loaded(&self) -> Result<()> {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let info = self.get("/v1/node")?;
            if info.get("loading").is_none() {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "still loading after {START_DEADLINE:?}: {info}; log:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the node again on the same home, returning as soon as its API answers (its
    /// datasets may still be loading).
    pub fn restart_answering(&mut self) -> Result<()> {
        self.spawn_answering()
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("node is running")
    }

    /// The process id of the running node.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("node is running").id()
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for the exit; returns its status.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let pid = self.pid().to_string();
        let st = Command::new("kill").args(["-TERM", &pid]).status()?;
        ensure!(st.success(), "kill -TERM {pid} failed");
        let status = wait_deadline(self.child_mut(), STOP_DEADLINE);
        match status {
            Some(s) => {
                self.child = None;
                Ok(s)
            }
            None => {
                self.kill();
                bail!("the node did not exit within {STOP_DEADLINE:?} of SIGTERM")
            }
        }
    }

    /// Starts the node again on the same home (after `stop` or `kill`).
    pub fn restart(&mut self) -> Result<()> {
        self.spawn()
    }

    /// The last lines of the node's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// `http://ADDR` + path.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// GET with the admin token.
    pub fn get(&self, path: &str) -> Result<Value> {
        Ok(self.get_raw(path)?.into_json()?)
    }

    fn get_raw(&self, path: &str) -> Result<ureq::Response> {
        self.agent
            .get(&self.url(path))
            .set("Authorization", &format!("Bearer {}", self.token))
            .call()
            .with_context(|| format!("GET {path}"))
    }

    /// POST JSON with the admin token.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let resp = self
            .agent
            .post(&self.url(path))
            .set("Authorization", &format!("Bearer {}", self.token))
            .send_json(body)
            .with_context(|| format!("POST {path}"))?;
        Ok(resp.into_json()?)
    }

    /// Runs a CLI command against this node's home (`--home` is appended).
    pub fn cli(&self, args: &[&str]) -> Out {
        let mut all = args.to_vec();
        all.extend(["--home", s(&self.home)]);
        run_cli(&all, None)
    }

    /// Runs a CLI command with `stdin` against this node's home.
    pub fn cli_stdin(&self, args: &[&str], stdin: &[u8]) -> Out {
        let mut all = args.to_vec();
        all.extend(["--home", s(&self.home)]);
        run_cli(&all, Some(stdin))
    }

    /// `fogmesh dataset create flu --shared --readers READERS` with `more` arguments, which must
    /// succeed: the dataset most process tests write.
    pub fn create_flu(&self, readers: &str, more: &[&str]) -> Out {
        let mut args = ["dataset", "create", "flu", "--shared", "--readers"].to_vec();
        args.push(readers);
        args.extend(more);
        self.cli(&args).ok()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Any child process of a test (e.g. `fogmesh watch`); killed when dropped.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Runs a prepared command with optional stdin, killing it if it outlives `CLI_DEADLINE`.
/// `cmdline` names it in messages.
pub fn run_command(mut cmd: Command, cmdline: String, stdin: Option<&[u8]>) -> Out {
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning `{cmdline}`: {e}"));
    let writer = stdin.map(|data| {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        })
    });
    let out = reader(child.stdout.take().expect("stdout is piped"));
    let err = reader(child.stderr.take().expect("stderr is piped"));
    let Some(status) = wait_deadline(&mut child, CLI_DEADLINE) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("`{cmdline}` did not finish within {CLI_DEADLINE:?}");
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    Out {
        code: status.code(),
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
        cmdline,
    }
}

/// `ip netns exec NS fogmesh ARGS...` with the same environment clean-up as [`fogmesh`]. The
/// binary is exec'd by `ip`, so a spawned child's pid is the `fogmesh` process itself.
pub fn fogmesh_in_netns(ns: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, bin()]);
    clean_env(&mut c);
    c
}

/// Runs `fogmesh ARGS` inside network namespace `ns`, with a deadline.
pub fn run_cli_in_netns(ns: &str, args: &[&str], stdin: Option<&[u8]>) -> Out {
    let mut cmd = fogmesh_in_netns(ns);
    cmd.args(args);
    let cmdline = format!("ip netns exec {ns} fogmesh {}", args.join(" "));
    run_command(cmd, cmdline, stdin)
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`...), in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    line[field.len() + 1..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl TestNode {
    /// GET with the admin token, the body as text (e.g. `/metrics`).
    pub fn get_text(&self, path: &str) -> Result<String> {
        Ok(self.get_raw(path)?.into_string()?)
    }
}

/// Polls `cond` every 100 ms for at most `limit`.
pub fn wait(what: &str, limit: Duration, mut cond: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if cond()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `new` joins `node`'s mesh with an invitation `node` issues.
pub fn join(node: &TestNode, new: &TestNode) -> Result<()> {
    let invite = node.cli(&["invite", "--json"]).ok().json();
    let token = invite["token"].as_str().context("invite token")?.to_owned();
    new.cli(&["join", &token]).ok();
    Ok(())
}

/// A tmpfs mounted for a test (as root), unmounted when dropped.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    /// Mounts a `mib` MiB tmpfs on `dir`, keeping what `dir` holds, or says why it cannot.
    pub fn mount(dir: &Path, mib: u64) -> Result<Self, String> {
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .map_err(|e| e.to_string())?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            return Err("not root: mounting a small filesystem needs root".into());
        }
        let kept = dir.with_extension("kept");
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        std::fs::rename(dir, &kept).map_err(|e| e.to_string())?;
        std::fs::create_dir(dir).map_err(|e| e.to_string())?;
        let size = format!("size={mib}m");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &size, "tmpfs"])
            .arg(dir)
            .status()
            .map_err(|e| format!("mount: {e}"))?;
        if !st.success() {
            return Err(format!("mount -t tmpfs failed ({st})"));
        }
        let mount = Self(dir.to_owned());
        let copied = Command::new("cp")
            .arg("-a")
            .arg(kept.join("."))
            .arg(dir)
            .status()
            .map_err(|e| format!("cp: {e}"))?;
        if !copied.success() {
            return Err("copying the directory onto the tmpfs failed".into());
        }
        Ok(mount)
    }

    /// Bytes free on it.
    pub fn available(&self) -> Result<u64> {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.0)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let last = text.lines().last().context("df output")?;
        Ok(last.trim().parse()?)
    }

    /// Fills it with a ballast file at `path`, leaving `leave` bytes free (nothing to do when
    /// less is free already). A writer on the filesystem can take space between the measure and
    /// the fill: the fill is then measured and tried again.
    pub fn fill(&self, path: &Path, leave: u64) -> Result<()> {
        for _ in 0..5 {
            let size = self.available()?.saturating_sub(leave);
            if size == 0 {
                return Ok(());
            }
            let st = Command::new("fallocate")
                .args(["-l", &size.to_string()])
                .arg(path)
                .status()?;
            if st.success() {
                return Ok(());
            }
            let _ = std::fs::remove_file(path);
        }
        bail!("fallocate failed five times on {}", self.0.display())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `text` without ANSI colour sequences (the node colours its log even into a file).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
