//! HTTP client for the running node, the way `docker` talks to its daemon.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use serde_json::Value;

use crate::cli::Cli;

/// A client bound to one node and one token.
pub struct Client {
    base: String,
    token: String,
    home: PathBuf,
    agent: ureq::Agent,
}

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
    /// A client for the node of `cli.home`, authenticated with `--token` or the admin token.
    pub fn from_cli(cli: &Cli) -> Result<Self> {
        let addr = api_addr(cli)?;
        let token = match &cli.token {
            Some(t) => t.clone(),
            None => fogmesh::node::home::admin_token(&cli.home)
                .with_context(|| format!("reading the admin token of {}", cli.home.display()))?,
        };
        Ok(Self::new(addr, token, &cli.home))
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
        }
    }

    /// The same node, as the app holding `token`.
    pub fn as_app(&self, token: &str) -> Self {
        Self {
            base: self.base.clone(),
            token: token.to_owned(),
            home: self.home.clone(),
            agent: self.agent.clone(),
        }
    }

    fn req(&self, method: &str, path: &str) -> ureq::Request {
        self.agent
            .request(method, &format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {}", self.token))
    }

    /// GET a JSON document.
    pub fn get(&self, path: &str) -> Result<Value> {
        self.finish(self.req("GET", path).call())
    }

    /// POST a JSON body, returning the JSON answer.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.finish(self.req("POST", path).send_json(body))
    }

    /// DELETE, returning the JSON answer.
    pub fn delete(&self, path: &str) -> Result<Value> {
        self.finish(self.req("DELETE", path).call())
    }

    /// POSTs a JSON body and reads the answer as it streams (NDJSON).
    pub fn post_stream(&self, path: &str, body: &Value) -> Result<impl BufRead> {
        let resp = self
            .req("POST", path)
            .set("Accept", "application/x-ndjson")
            .send_json(body)
            .map_err(|e| self.explain(e))?;
        Ok(BufReader::new(resp.into_reader()))
    }

    /// Opens a server-sent event stream.
    pub fn stream(&self, path: &str) -> Result<impl BufRead> {
        let resp = self
            .req("GET", path)
            .set("Accept", "text/event-stream")
            .call()
            .map_err(|e| self.explain(e))?;
        Ok(BufReader::new(resp.into_reader()))
    }

    fn finish(&self, r: Result<ureq::Response, ureq::Error>) -> Result<Value> {
        let resp = r.map_err(|e| self.explain(e))?;
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
                let body: Value = resp.into_json().unwrap_or(Value::Null);
                let err = &body["error"];
                match (err["code"].as_str(), err["message"].as_str()) {
                    (Some(c), Some(m)) => anyhow!("the node answered {code} {c}: {m}"),
                    _ => anyhow!("the node answered HTTP {code}"),
                }
            }
            ureq::Error::Transport(t) => anyhow!(
                "cannot reach the fogmesh node at {}: {t}\nIs it running? Start it with `fogmesh run --home {}`.",
                self.base,
                self.home.display()
            ),
        }
    }
}
