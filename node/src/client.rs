//! HTTP client for the running node, the way `docker` talks to its daemon.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;

use crate::cli::Cli;

/// Largest token file read: a token is 67 bytes, so anything much larger is the wrong file.
const TOKEN_FILE_MAX_BYTES: u64 = 4096;

/// A client bound to one node and one token.
pub struct Client {
    base: String,
    token: String,
    home: PathBuf,
    agent: ureq::Agent,
    /// Where the token came from.
    source: TokenSource,
}

/// Where a client command's bearer token came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `--token` or `FOGMESH_TOKEN`.
    Given,
    /// `--token-file` or `FOGMESH_TOKEN_FILE`.
    File(PathBuf),
    /// The home's admin token file.
    Home(PathBuf),
}

/// The bearer token for a client command: `--token`/`FOGMESH_TOKEN`, else
/// `--token-file`/`FOGMESH_TOKEN_FILE`, else the home's admin token; never two of them.
pub fn token(cli: &Cli) -> Result<(String, TokenSource)> {
    match (&cli.token, &cli.token_file) {
        (Some(_), Some(_)) => bail!(
            "both a token (--token or FOGMESH_TOKEN) and a token file (--token-file or \
             FOGMESH_TOKEN_FILE) are given; use one"
        ),
        (Some(t), None) => {
            if cli.token_on_command_line {
                eprintln!(
                    "warning: a token on the command line is visible to other users (ps); \
                     prefer --token-file PATH or FOGMESH_TOKEN"
                );
            }
            ensure!(
                !t.trim().is_empty(),
                "the token given by --token or FOGMESH_TOKEN is empty"
            );
            Ok((t.trim().to_owned(), TokenSource::Given))
        }
        (None, Some(path)) => Ok((read_token_file(path)?, TokenSource::File(path.clone()))),
        (None, None) => {
            let path = cli.home.join(fogmesh::node::home::ADMIN_TOKEN_FILE);
            let token = read_token_file(&path).with_context(|| {
                format!(
                    "reading the admin token of {} (or pass --token-file, or set FOGMESH_TOKEN)",
                    cli.home.display()
                )
            })?;
            Ok((token, TokenSource::Home(path)))
        }
    }
}

/// Reads a token file: one token, blanks around it ignored.
pub fn read_token_file(path: &Path) -> Result<String> {
    let shown = path.display();
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read the token file {shown}"))?;
    ensure!(
        meta.is_file(),
        "the token file {shown} is not a regular file"
    );
    ensure!(
        meta.len() <= TOKEN_FILE_MAX_BYTES,
        "the token file {shown} holds {} bytes; it must hold only the token",
        meta.len()
    );
    warn_if_others_may_read(path, &meta);
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {shown}"))?;
    let token = text.trim();
    ensure!(!token.is_empty(), "the token file {shown} is empty");
    ensure!(
        !token.contains(char::is_whitespace),
        "the token file {shown} holds more than one word; it must hold only the token"
    );
    Ok(token.to_owned())
}

#[cfg(unix)]
fn warn_if_others_may_read(path: &Path, meta: &std::fs::Metadata) {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        eprintln!(
            "warning: the token file {} may be read by other users (mode {mode:o}); chmod 600 it",
            path.display()
        );
    }
}

#[cfg(not(unix))]
fn warn_if_others_may_read(_: &Path, _: &std::fs::Metadata) {}

/// The API address: `--api`/`FOGMESH_API`, else the home's config.
pub fn api_addr(cli: &Cli) -> Result<SocketAddr> {
    if let Some(a) = cli.api {
        return Ok(a);
    }
    let path = cli.home.join(fogmesh::config::FILE);
    let cfg = fogmesh::config::Config::load(&path).with_context(|| {
        format!(
            "no usable node home at {} (run `fogmesh init` first, or pass --home)",
            cli.home.display()
        )
    })?;
    if cfg.api.port() == 0 {
        // The node bound an ephemeral port and wrote it down.
        let file = cli.home.join(crate::daemon::API_ADDR_FILE);
        let text = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "the API port is 0 in the config and {} is missing: is the node running?",
                file.display()
            )
        })?;
        return text
            .trim()
            .parse()
            .context("api.addr holds no socket address");
    }
    Ok(cfg.api)
}

impl Client {
    /// The node's API base URL, e.g. `http://127.0.0.1:7070`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// A client for the node of `cli.home`, authenticated with the token [`token`] finds.
    pub fn from_cli(cli: &Cli) -> Result<Self> {
        let addr = api_addr(cli)?;
        let (token, source) = token(cli)?;
        let mut client = Self::new(addr, token, &cli.home);
        client.source = source;
        Ok(client)
    }

    /// Where this client's token came from.
    pub fn token_source(&self) -> &TokenSource {
        &self.source
    }

    /// A client for `addr` with `token`.
    pub fn new(addr: SocketAddr, token: String, home: &Path) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(3))
            .build();
        Self {
            base: format!("http://{addr}"),
            token,
            home: home.to_owned(),
            agent,
            source: TokenSource::Given,
        }
    }

    /// The same node, as the app holding `token`.
    pub fn as_app(&self, token: &str) -> Self {
        Self {
            base: self.base.clone(),
            token: token.to_owned(),
            home: self.home.clone(),
            agent: self.agent.clone(),
            source: TokenSource::Given,
        }
    }

    fn req(&self, method: &str, path: &str) -> ureq::Request {
        self.agent
            .request(method, &format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {}", self.token))
    }

    /// GET a JSON document.
    pub fn get(&self, path: &str) -> Result<Value> {
        self.finish(self.call("GET", path, None, None))
    }

    /// POST a JSON body, returning the JSON answer.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.finish(self.call("POST", path, None, Some(body)))
    }

    /// PUT a JSON body, returning the JSON answer.
    pub fn put(&self, path: &str, body: &Value) -> Result<Value> {
        self.finish(self.call("PUT", path, None, Some(body)))
    }

    /// DELETE, returning the JSON answer.
    pub fn delete(&self, path: &str) -> Result<Value> {
        self.finish(self.call("DELETE", path, None, None))
    }

    /// POSTs a JSON body and reads the answer as it streams (NDJSON).
    pub fn post_stream(&self, path: &str, body: &Value) -> Result<impl BufRead> {
        let resp = self.call("POST", path, Some("application/x-ndjson"), Some(body))?;
        Ok(BufReader::new(resp.into_reader()))
    }

    /// Opens a server-sent event stream.
    pub fn stream(&self, path: &str) -> Result<impl BufRead> {
        let resp = self.call("GET", path, Some("text/event-stream"), None)?;
        Ok(BufReader::new(resp.into_reader()))
    }

    /// Sends a request, again while the node answers that it is still loading after its start
    /// (`loading`, `starting`: nothing was done), for up to [`LOADING_WAIT`], saying so once.
    fn call(
        &self,
        method: &str,
        path: &str,
        accept: Option<&str>,
        body: Option<&Value>,
    ) -> Result<ureq::Response> {
        let began = Instant::now();
        let mut told = false;
        loop {
            let mut req = self.req(method, path);
            if let Some(a) = accept {
                req = req.set("Accept", a);
            }
            let sent = match body {
                Some(b) => req.send_json(b),
                None => req.call(),
            };
            let (code, resp) = match sent {
                Ok(resp) => return Ok(resp),
                Err(ureq::Error::Status(code, resp)) => (code, resp),
                Err(e) => return Err(self.explain(e)),
            };
            let answer: Value = resp.into_json().unwrap_or(Value::Null);
            let err = &answer["error"];
            let reason = err["reason"].as_str().unwrap_or_default();
            if code != 503
                || !matches!(reason, "loading" | "starting")
                || began.elapsed() > LOADING_WAIT
            {
                return Err(refusal(code, &answer));
            }
            if !told {
                eprintln!(
                    "waiting: {}",
                    err["message"].as_str().unwrap_or("the node is starting")
                );
                told = true;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    fn finish(&self, r: Result<ureq::Response>) -> Result<Value> {
        let resp = r?;
        let mut body = String::new();
        resp.into_reader()
            .take(256 * 1024 * 1024)
            .read_to_string(&mut body)
            .context("reading the node's answer")?;
        serde_json::from_str(&body).context("the node's answer is not JSON")
    }

    fn explain(&self, e: ureq::Error) -> anyhow::Error {
        match e {
            ureq::Error::Status(code, resp) => {
                refusal(code, &resp.into_json().unwrap_or(Value::Null))
            }
            ureq::Error::Transport(t) => anyhow!(
                "cannot reach the fogmesh node at {}: {t}\nIs it running? Start it with `fogmesh run --home {}`.",
                self.base,
                self.home.display()
            ),
        }
    }
}

/// How long a command waits for a node that is still loading its datasets after its start.
pub const LOADING_WAIT: Duration = Duration::from_secs(120);

/// The node's refusal `body` (HTTP `code`) as an error.
fn refusal(code: u16, body: &Value) -> anyhow::Error {
    let err = &body["error"];
    match (err["code"].as_str(), err["message"].as_str()) {
        (Some(c), Some(m)) => anyhow!("the node answered {code} {c}: {m}"),
        _ => anyhow!("the node answered HTTP {code}"),
    }
}
