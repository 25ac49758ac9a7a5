//! The node's home directory: keys, configuration, admin token and data.
//!
//! ```text
//! HOME/config.toml     configuration (every field documented)
//! HOME/identity.key    ed25519 secret key, 0600
//! HOME/x25519.key      X25519 secret key, 0600
//! HOME/admin.token     the admin bearer token, 0600 (its hash is in the store); replaced, by a
//!                      rename, when the admin token is rotated
//! HOME/data/           the sled store
//! ```

use std::path::{Path, PathBuf};

use crate::apps::App;
use crate::config::{self, Config};
use crate::error::{Error, Result};
use crate::identity::{self, Identity};

use super::Node;

/// Data directory inside the home.
pub const DATA_DIR: &str = "data";
/// Admin token file inside the home.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// Where a rotation writes the new admin token before it replaces [`ADMIN_TOKEN_FILE`].
pub const STAGED_ADMIN_TOKEN_FILE: &str = "admin.token.new";

/// What `init` created.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Created {
    /// The new node's PeerId.
    pub peer_id: String,
    /// Where its admin token is.
    pub admin_token_file: String,
}

/// A home for the node's in-process tests: organization `hospital` of mesh `m`, a fixed key.
/// Returns its configuration.
#[cfg(test)]
pub(crate) async fn for_tests(dir: &Path) -> Config {
    let config = Config {
        org: "hospital".into(),
        mesh: "m".into(),
        ..Config::default()
    };
    init_with(dir, config.clone(), Identity::from_seed([1; 32]))
        .await
        .expect("init");
    config
}

/// Creates a home directory: keys, config, store and admin token. Refuses an existing home.
pub async fn init(home: &Path, config: Config) -> Result<Created> {
    init_with(home, config, Identity::generate()).await
}

/// [`init`] with a given identity (tests and benchmarks use seeded keys).
pub async fn init_with(home: &Path, config: Config, id: Identity) -> Result<Created> {
    config.validate()?;
    if home.join(config::FILE).exists() || home.join(identity::IDENTITY_FILE).exists() {
        return Err(Error::Conflict(format!(
            "{} already holds a fogmesh node; refusing to overwrite it",
            home.display()
        )));
    }
    std::fs::create_dir_all(home).map_err(|e| io(home, e))?;
    id.save(home)?;
    let cfg_path = home.join(config::FILE);
    std::fs::write(&cfg_path, config.to_commented_toml()).map_err(|e| io(&cfg_path, e))?;
    let node = Node::open(id, config, &home.join(DATA_DIR))?;
    let admin = App {
        name: "admin".into(),
        rights: vec![],
        created: crate::hlc::wall_millis(),
        admin: true,
        token_id: String::new(),
    };
    let new = node.register(admin)?;
    node.inner.store.durable().await?;
    let token_path = home.join(ADMIN_TOKEN_FILE);
    identity::write_secret(&token_path, new.token.as_bytes())?;
    Ok(Created {
        peer_id: node.info().peer_id,
        admin_token_file: token_path.display().to_string(),
    })
}

/// Reads the admin token from a home directory.
pub fn admin_token(home: &Path) -> Result<String> {
    let path = home.join(ADMIN_TOKEN_FILE);
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| io(&path, e))
}

/// Writes a new admin token beside the current file (mode 0600), to be put in its place by
/// [`commit_admin_token`] once the node has switched to it. Returns the staged file.
pub(crate) fn stage_admin_token(home: &Path, token: &str) -> Result<PathBuf> {
    let staged = home.join(STAGED_ADMIN_TOKEN_FILE);
    // Left by a rotation that failed half-way; its token was never in force.
    match std::fs::remove_file(&staged) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&staged, e)),
    }
    identity::write_secret(&staged, token.as_bytes())?;
    Ok(staged)
}

/// Puts a staged admin token in place of the home's admin token file, in one rename; returns
/// the file's path.
pub(crate) fn commit_admin_token(staged: &Path) -> Result<String> {
    let dir = staged.parent().unwrap_or(Path::new("."));
    let path = dir.join(ADMIN_TOKEN_FILE);
    std::fs::rename(staged, &path).map_err(|e| {
        tracing::error!(staged = %staged.display(), error = %e, "the new admin token could not replace the old file; it is in the staged file");
        io(&path, e)
    })?;
    let shown = std::fs::canonicalize(&path).unwrap_or(path);
    Ok(shown.display().to_string())
}

/// Deletes a staged admin token that will not be used.
pub(crate) fn discard_staged(staged: &Path) {
    if let Err(e) = std::fs::remove_file(staged) {
        tracing::warn!(file = %staged.display(), error = %e, "could not delete a staged admin token");
    }
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::Config(config::Error::Io {
        path: path.display().to_string(),
        source: e,
    })
}
