//! Applications and their rights at a node: bearer tokens (stored only as SHA-256 hashes) and the
//! datasets each app may read, write or query.
//!
//! A right is written `ACTION:DATASET` where `ACTION` is `read`, `write` or `query` and `DATASET`
//! is `owner/name`, `owner/*` (every dataset of an organization) or `*`; `metrics:*` lets an app
//! scrape `/metrics` (a Prometheus server's token) and no dataset or grant. The admin token (created by
//! `fogmesh init`) may do everything, including registering apps and creating datasets.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::naming::{self, DatasetId};

/// Prefix of every token, so a leaked one is recognizable in logs and scanners.
pub const TOKEN_PREFIX: &str = "fm_";
/// Most rights one app may hold.
pub const MAX_RIGHTS: usize = 256;

/// What a right allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Read records, query them, subscribe to them.
    Read,
    /// Publish, update and delete records.
    Write,
    /// Ask for aggregates without reading rows.
    Query,
    /// Scrape the node's metrics (`metrics:*` only: they name every dataset held). Never part of
    /// a grant between organizations.
    Metrics,
}

/// Which datasets a right covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every dataset.
    All,
    /// Every dataset of one organization.
    Owner(String),
    /// One dataset.
    One(DatasetId),
}

/// One `ACTION:DATASET` right.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Right {
    /// What it allows.
    pub action: Action,
    /// Where.
    pub scope: Scope,
}

/// A right that does not parse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// Not `ACTION:DATASET`.
    #[error("right {0:?} must be ACTION:DATASET with ACTION read, write or query and DATASET owner/name, owner/* or *, or metrics:*")]
    Form(String),
    /// A bad org or dataset name inside it.
    #[error("right {right:?}: {source}")]
    Name {
        /// The right as given.
        right: String,
        /// What is wrong.
        source: naming::Error,
    },
    /// A bad app name.
    #[error("app name: {0}")]
    AppName(naming::Error),
    /// Too many rights.
    #[error("at most {MAX_RIGHTS} rights per app, got {0}")]
    TooMany(usize),
    /// An operation on ordinary apps asked of the node's admin app.
    #[error("app {name} is the node's admin app: {hint}")]
    AdminApp {
        /// The admin app's name.
        name: String,
        /// What to do instead.
        hint: &'static str,
    },
}

impl Right {
    /// Parses `ACTION:DATASET`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let (action, scope) = s.split_once(':').ok_or_else(|| Error::Form(s.to_owned()))?;
        let action = match action.trim() {
            "read" => Action::Read,
            "write" => Action::Write,
            "query" => Action::Query,
            "metrics" if scope.trim() == "*" => Action::Metrics,
            _ => return Err(Error::Form(s.to_owned())),
        };
        let name_err = |source| Error::Name {
            right: s.to_owned(),
            source,
        };
        let scope = match scope.trim() {
            "*" => Scope::All,
            ds => match ds.strip_suffix("/*") {
                Some(owner) => {
                    naming::validate_ident("organization", owner).map_err(name_err)?;
                    Scope::Owner(owner.to_owned())
                }
                None => Scope::One(DatasetId::parse(ds).map_err(name_err)?),
            },
        };
        Ok(Self { action, scope })
    }

    /// True when this right allows `action` on `dataset`.
    pub fn allows(&self, action: Action, dataset: &DatasetId) -> bool {
        self.action == action
            && match &self.scope {
                Scope::All => true,
                Scope::Owner(o) => o == dataset.owner(),
                Scope::One(d) => d == dataset,
            }
    }
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = match self.action {
            Action::Read => "read",
            Action::Write => "write",
            Action::Query => "query",
            Action::Metrics => "metrics",
        };
        match &self.scope {
            Scope::All => write!(f, "{action}:*"),
            Scope::Owner(o) => write!(f, "{action}:{o}/*"),
            Scope::One(d) => write!(f, "{action}:{d}"),
        }
    }
}

impl TryFrom<String> for Right {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        Self::parse(&s)
    }
}

impl From<Right> for String {
    fn from(r: Right) -> String {
        r.to_string()
    }
}

/// A registered app, as stored (under its token's hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct App {
    /// Unique name at this node, e.g. `restock-planner`.
    pub name: String,
    /// What it may do.
    pub rights: Vec<Right>,
    /// Registration time (ms).
    pub created: u64,
    /// True for the node's admin token.
    #[serde(default)]
    pub admin: bool,
    /// Tells the app's current token apart from earlier ones without revealing it (see
    /// [`token_id`]); empty until the app is registered. A rotation changes it, which is how an
    /// event stream opened with the old token knows to end.
    #[serde(default)]
    pub token_id: String,
}

impl App {
    /// A new non-admin app, validated.
    pub fn new(name: &str, rights: Vec<Right>, now_ms: u64) -> Result<Self, Error> {
        validate_name(name)?;
        let mut app = Self {
            name: name.to_owned(),
            rights: vec![],
            created: now_ms,
            admin: false,
            token_id: String::new(),
        };
        app.set_rights(rights)?;
        Ok(app)
    }

    /// Replaces the app's rights, refusing more than [`MAX_RIGHTS`].
    pub fn set_rights(&mut self, rights: Vec<Right>) -> Result<(), Error> {
        if rights.len() > MAX_RIGHTS {
            return Err(Error::TooMany(rights.len()));
        }
        self.rights = rights;
        Ok(())
    }

    /// True when the app may do `action` on `dataset`.
    pub fn may(&self, action: Action, dataset: &DatasetId) -> bool {
        self.admin || self.rights.iter().any(|r| r.allows(action, dataset))
    }

    /// True when the app may scrape `/metrics`: the admin, or an app holding `metrics:*`.
    pub fn may_scrape(&self) -> bool {
        self.admin || self.rights.iter().any(|r| r.action == Action::Metrics)
    }

    /// Whether the app holds any right on `dataset`; an app that does not may not learn that it
    /// exists.
    pub fn sees(&self, dataset: &DatasetId) -> bool {
        [Action::Read, Action::Write, Action::Query]
            .iter()
            .any(|a| self.may(*a, dataset))
    }
}

/// Checks an app name (the rules of every identifier: `a-z 0-9 - _`, at most 64 bytes).
pub fn validate_name(name: &str) -> Result<(), Error> {
    naming::validate_ident("app name", name).map_err(Error::AppName)
}

/// A new random bearer token.
pub fn new_token() -> String {
    format!("{TOKEN_PREFIX}{}", hex::encode(rand::random::<[u8; 32]>()))
}

/// The stored form of a token. Tokens carry 256 random bits, so a plain hash is enough: there is
/// nothing to brute-force.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The public id of the token whose hash is `hash`: its first 16 hex digits. Enough to tell an
/// app's tokens apart in listings and logs; useless for guessing the token.
pub fn token_id(hash: &[u8; 32]) -> String {
    hex::encode(&hash[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(s: &str) -> DatasetId {
        DatasetId::parse(s).expect("valid")
    }

    #[test]
    fn rights_parse_and_print_back() {
        for s in [
            "read:hospital/flu-cases",
            "write:pharmacy/*",
            "query:*",
            "metrics:*",
        ] {
            assert_eq!(Right::parse(s).expect("parses").to_string(), s);
        }
        for bad in [
            "read",
            "delete:a/b",
            "read:a",
            "read:A/b",
            "read:a/b/c",
            "write:-x/*",
            "metrics:hospital/flu",
            "metrics:hospital/*",
            "metrics",
        ] {
            assert!(Right::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn metrics_lets_an_app_scrape_and_nothing_else() {
        let scraper = App::new("prometheus", vec![Right::parse("metrics:*").expect("r")], 0);
        let scraper = scraper.expect("app");
        assert!(scraper.may_scrape());
        for action in [Action::Read, Action::Write, Action::Query] {
            assert!(!scraper.may(action, &ds("hospital/flu")));
        }
        assert!(!scraper.sees(&ds("hospital/flu")));
        let reader = App::new("r", vec![Right::parse("read:*").expect("r")], 0).expect("app");
        assert!(!reader.may_scrape());
        assert!(App {
            admin: true,
            ..reader
        }
        .may_scrape());
    }

    #[test]
    fn rights_allow_only_their_action_and_scope() {
        let app = App::new(
            "planner",
            vec![
                Right::parse("read:hospital/flu").expect("r"),
                Right::parse("write:pharmacy/*").expect("r"),
            ],
            0,
        )
        .expect("app");
        assert!(app.may(Action::Read, &ds("hospital/flu")));
        assert!(!app.may(Action::Write, &ds("hospital/flu")));
        assert!(!app.may(Action::Read, &ds("hospital/other")));
        assert!(app.may(Action::Write, &ds("pharmacy/stock")));
        assert!(!app.may(Action::Query, &ds("pharmacy/stock")));
        let admin = App { admin: true, ..app };
        assert!(admin.may(Action::Query, &ds("x/y")));
    }

    #[test]
    fn tokens_are_random_and_hashes_stable() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 64);
        assert_eq!(token_hash(&a), token_hash(&a));
        assert_ne!(token_hash(&a), token_hash(&b));
        assert_eq!(token_id(&token_hash(&a)).len(), 16);
        assert_ne!(token_id(&token_hash(&a)), token_id(&token_hash(&b)));
    }

    #[test]
    fn rights_past_the_cap_are_refused_and_leave_the_app_as_it_was() {
        let read = Right::parse("read:*").expect("r");
        let mut app = App::new("planner", vec![read.clone()], 0).expect("app");
        let many = vec![read.clone(); MAX_RIGHTS + 1];
        assert!(matches!(app.set_rights(many), Err(Error::TooMany(n)) if n == MAX_RIGHTS + 1));
        assert_eq!(app.rights, vec![read]);
        app.set_rights(vec![]).expect("no rights is allowed");
        assert!(app.rights.is_empty());
    }
}
