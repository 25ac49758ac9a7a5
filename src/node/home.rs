//! The node's home directory: keys, configuration, admin token and data.
//!
//! ```text
//! HOME/config.toml     configuration (every field documented)
//! HOME/identity.key    ed25519 secret key, 0600
//! HOME/x25519.key      X25519 secret key, 0600
//! HOME/admin.token     the admin bearer token, 0600 (its hash is in the store)
//! HOME/data/           the sled store
//! ```

use std::path::Path;

use crate::apps::App;
use crate::config::{self, Config};
use crate::error::{Error, Result};
use crate::identity::{self, Identity};

use super::Node;

/// Data directory inside the home.
pub const DATA_DIR: &str = "data";
/// Admin token file inside the home.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// What `init` created.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Created {
    /// The new node's PeerId.
    pub peer_id: String,
    /// Where its admin token is.
    pub admin_token_file: String,
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
    };
    let new = node.register(admin).await?;
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

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::Config(config::Error::Io {
        path: path.display().to_string(),
        source: e,
    })
}
