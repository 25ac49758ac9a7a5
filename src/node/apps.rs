//! The apps registered at a node and the life of their tokens: registering, authenticating,
//! listing, changing rights, rotating and removing, and rotating the admin token.
//!
//! The registry in memory is what requests are authenticated against, so a change takes effect
//! for the next request, before it is even durable; the store keeps it across restarts (each app
//! under its name, with its token's hash, so every change, a rotation too, is one write). Every change also wakes the node's open event streams
//! ([`super::Subscription`]): a stream of a removed app, of a rotated token or of an app that lost
//! its right ends at once, not at its next event.

use std::collections::HashMap;
use std::fmt;
use std::sync::{RwLockReadGuard, RwLockWriteGuard};

use serde::{Deserialize, Serialize};

use crate::apps::{self, App, Right};
use crate::error::{Error, Result};
use crate::hlc;
use crate::store::{Store, Table};

use super::Node;

/// A newly issued token and the app it belongs to, shown once.
#[derive(Debug, Clone, Serialize)]
pub struct NewApp {
    /// The app.
    #[serde(flatten)]
    pub app: App,
    /// The bearer token; only its hash is kept.
    pub token: String,
}

/// A new admin token, and where the node's home now keeps it.
#[derive(Debug, Clone, Serialize)]
pub struct RotatedAdmin {
    /// The admin app and its new token.
    #[serde(flatten)]
    pub new: NewApp,
    /// The home's admin token file, rewritten with the new token; `None` for a node opened
    /// without a home ([`Node::open`]), whose embedder keeps the token itself.
    pub token_file: Option<String>,
}

/// A change to the registered apps, as the audit log will record it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AppChange {
    /// An app was registered.
    Added { name: String },
    /// An app was removed: its token is refused.
    Removed { name: String },
    /// An app got a new token; the old one is refused.
    Rotated { name: String, token_id: String },
    /// An app's rights were replaced.
    Rights { name: String, rights: Vec<Right> },
}

impl fmt::Display for AppChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Added { name } => write!(f, "app {name} registered"),
            Self::Removed { name } => write!(f, "app {name} removed"),
            Self::Rotated { name, token_id } => {
                write!(f, "app {name} given a new token ({token_id})")
            }
            Self::Rights { name, rights } => {
                let rights: Vec<String> = rights.iter().map(Right::to_string).collect();
                write!(f, "app {name} given rights [{}]", rights.join(", "))
            }
        }
    }
}

/// What to do instead, for operations on ordinary apps asked of the admin app.
const ADMIN_ROTATE: &str =
    "rotate its token with `fogmesh admin rotate-token` (POST /v1/admin/rotate-token)";
const ADMIN_REMOVE: &str = "it cannot be removed: the node would have no operator";
const ADMIN_RIGHTS: &str = "it may do everything; its rights cannot be changed";

/// An app as the store keeps it: under [`app_key`], with its token's hash (hex). Earlier versions
/// kept it under the hash, without this field.
#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    app: App,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_hash: Option<String>,
}

fn app_key(name: &str) -> Vec<u8> {
    format!("app/{name}").into_bytes()
}

fn parse_hash(hex_hash: &str) -> Option<[u8; 32]> {
    hex::decode(hex_hash).ok()?.try_into().ok()
}

/// `app` with the token id of `hash`.
fn identified(mut app: App, hash: &[u8; 32]) -> App {
    app.token_id = apps::token_id(hash);
    app
}

/// Stores `app` with token hash `hash` (not yet durable): one write, whatever changed.
fn put(store: &Store, hash: &[u8; 32], app: &App) -> Result<()> {
    let stored = Stored {
        app: app.clone(),
        token_hash: Some(hex::encode(hash)),
    };
    store.put_json(Table::Apps, &app_key(&app.name), &stored)?;
    Ok(())
}

/// The registered apps, by token hash and by name.
#[derive(Debug, Default)]
pub(super) struct Registry {
    /// What authentication looks up.
    by_token: HashMap<[u8; 32], App>,
    /// Each app's current token hash.
    by_name: HashMap<String, [u8; 32]>,
}

impl Registry {
    /// Every app in the store. Apps a home of an earlier version keeps under their token hash
    /// are moved under their name (a copy left by a move cut short is removed).
    pub(super) fn load(store: &Store) -> Result<Self> {
        let mut reg = Self::default();
        let mut legacy = Vec::new();
        for (key, stored) in store.list_json_keyed::<Stored>(Table::Apps)? {
            match stored.token_hash.as_deref().map(parse_hash) {
                Some(Some(hash)) => reg.insert(hash, identified(stored.app, &hash)),
                Some(None) => {
                    // No token hashes to it, so no request could ever authenticate as it.
                    tracing::warn!(app = %stored.app.name, "an app with a malformed token hash is ignored");
                }
                None => legacy.push((key, stored.app)),
            }
        }
        for (key, app) in legacy {
            reg.migrate(store, &key, app)?;
        }
        Ok(reg)
    }

    /// Moves an app stored under its token hash `key` (earlier versions) under its name.
    fn migrate(&mut self, store: &Store, key: &[u8], app: App) -> Result<()> {
        let Ok(hash) = <[u8; 32]>::try_from(key) else {
            tracing::warn!(app = %app.name, "an app stored under a malformed key is ignored");
            return Ok(());
        };
        if !self.by_name.contains_key(&app.name) {
            let app = identified(app, &hash);
            put(store, &hash, &app)?;
            self.insert(hash, app);
        }
        store.remove(Table::Apps, key)?;
        Ok(())
    }

    fn insert(&mut self, hash: [u8; 32], app: App) {
        self.by_name.insert(app.name.clone(), hash);
        self.by_token.insert(hash, app);
    }

    /// The app called `name` and its token hash.
    fn named(&self, name: &str) -> Option<([u8; 32], &App)> {
        let hash = self.by_name.get(name)?;
        Some((*hash, self.by_token.get(hash)?))
    }

    /// The app called `name` for a change meant for ordinary apps: 404 if there is none, 400 if
    /// it is the admin app (`hint` says what to do instead).
    fn ordinary(&self, name: &str, hint: &'static str) -> Result<([u8; 32], App)> {
        let (hash, app) = self
            .named(name)
            .ok_or_else(|| Error::NotFound(format!("app {name} not found")))?;
        if app.admin {
            return Err(apps::Error::AdminApp {
                name: name.to_owned(),
                hint,
            }
            .into());
        }
        Ok((hash, app.clone()))
    }
}

impl Node {
    fn registry(&self) -> RwLockReadGuard<'_, Registry> {
        self.inner.apps.read().unwrap_or_else(|e| e.into_inner())
    }

    fn registry_mut(&self) -> RwLockWriteGuard<'_, Registry> {
        self.inner.apps.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Looks up the app a bearer token belongs to.
    pub fn authenticate(&self, token: &str) -> Result<App> {
        let hash = apps::token_hash(token);
        self.registry()
            .by_token
            .get(&hash)
            .cloned()
            .ok_or(Error::Unauthorized)
    }

    /// The app `app` as registered now, if it still holds the token it was authenticated with
    /// (`None` once it is removed or its token rotated).
    pub(super) fn current_app(&self, app: &App) -> Option<App> {
        let reg = self.registry();
        let (_, now) = reg.named(&app.name)?;
        (now.token_id == app.token_id).then(|| now.clone())
    }

    pub(super) fn require_admin(caller: &App, what: &str) -> Result<()> {
        if caller.admin {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "{what} needs the admin token; app {} is not admin",
                caller.name
            )))
        }
    }

    /// Registers an app (admin only) and returns its token, which is not stored.
    pub async fn add_app(&self, caller: &App, name: &str, rights: Vec<Right>) -> Result<NewApp> {
        Self::require_admin(caller, "registering an app")?;
        let app = App::new(name, rights, hlc::wall_millis())?;
        let new = self.register(app)?;
        let change = AppChange::Added {
            name: new.app.name.clone(),
        };
        self.settle(caller, change).await?;
        Ok(new)
    }

    /// Stores an app under a fresh token, refusing a name already taken. Not yet durable.
    pub(crate) fn register(&self, mut app: App) -> Result<NewApp> {
        let token = apps::new_token();
        let hash = apps::token_hash(&token);
        app.token_id = apps::token_id(&hash);
        let mut reg = self.registry_mut();
        if reg.by_name.contains_key(&app.name) {
            return Err(Error::Conflict(format!(
                "an app named {} already exists",
                app.name
            )));
        }
        put(&self.inner.store, &hash, &app)?;
        reg.insert(hash, app.clone());
        Ok(NewApp { app, token })
    }

    /// Every registered app (admin only).
    pub fn apps(&self, caller: &App) -> Result<Vec<App>> {
        Self::require_admin(caller, "listing apps")?;
        let mut apps: Vec<App> = self.registry().by_token.values().cloned().collect();
        apps.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(apps)
    }

    /// Removes an app (admin only): its token is refused from now on and its event streams end.
    /// Grants naming it stay; an app registered later under the same name is named by them too.
    pub async fn remove_app(&self, caller: &App, name: &str) -> Result<App> {
        let what = ("removing an app", ADMIN_REMOVE);
        self.change_app(caller, name, what, |node, reg, hash, app| {
            node.inner.store.remove(Table::Apps, &app_key(&app.name))?;
            // Where earlier versions kept the name taken.
            let legacy = format!("app-name/{}", app.name);
            node.inner.store.remove(Table::Meta, legacy.as_bytes())?;
            reg.by_token.remove(&hash);
            reg.by_name.remove(&app.name);
            let change = AppChange::Removed {
                name: app.name.clone(),
            };
            Ok((app, change))
        })
        .await
    }

    /// Gives an app a new token (admin only), shown once; the old one is refused from now on and
    /// the event streams opened with it end.
    pub async fn rotate_app(&self, caller: &App, name: &str) -> Result<NewApp> {
        let what = ("rotating an app's token", ADMIN_ROTATE);
        self.change_app(caller, name, what, |node, reg, hash, app| {
            let new = node.reissue(reg, hash, app, apps::new_token())?;
            let change = rotated(&new.app);
            Ok((new, change))
        })
        .await
    }

    /// Replaces an app's rights (admin only); its event streams that its new rights no longer
    /// cover end.
    pub async fn set_app_rights(
        &self,
        caller: &App,
        name: &str,
        rights: Vec<Right>,
    ) -> Result<App> {
        let what = ("changing an app's rights", ADMIN_RIGHTS);
        self.change_app(caller, name, what, |node, reg, hash, mut app| {
            app.set_rights(rights)?;
            put(&node.inner.store, &hash, &app)?;
            reg.insert(hash, app.clone());
            let change = AppChange::Rights {
                name: app.name.clone(),
                rights: app.rights.clone(),
            };
            Ok((app, change))
        })
        .await
    }

    /// Changes the ordinary app `name` (admin only; `what` names the operation for a refusal and
    /// says what to do instead for the admin app): `change` runs under the registry's lock with
    /// the app and its token hash, then the change settles.
    async fn change_app<T>(
        &self,
        caller: &App,
        name: &str,
        (what, hint): (&str, &'static str),
        change: impl FnOnce(&Self, &mut Registry, [u8; 32], App) -> Result<(T, AppChange)>,
    ) -> Result<T> {
        Self::require_admin(caller, what)?;
        apps::validate_name(name)?;
        let (out, done) = {
            let mut reg = self.registry_mut();
            let (hash, app) = reg.ordinary(name, hint)?;
            change(self, &mut reg, hash, app)?
        };
        self.settle(caller, done).await?;
        Ok(out)
    }

    /// Gives the caller's admin app a new token: the old one is refused from now on. A node
    /// opened from a home rewrites the home's admin token file, so local commands keep working.
    pub async fn rotate_admin_token(&self, caller: &App) -> Result<RotatedAdmin> {
        Self::require_admin(caller, "rotating the admin token")?;
        // One at a time: each stages its file under the same name.
        let _one = self.inner.admin_rotation.lock().await;
        let token = apps::new_token();
        // Written beside the old file first: if that fails, nothing has changed.
        let staged = match &self.inner.home {
            Some(home) => Some(super::home::stage_admin_token(home, &token)?),
            None => None,
        };
        let swapped = self.reissue_admin(caller, token);
        let new = match (swapped, &staged) {
            (Ok(new), _) => new,
            (Err(e), Some(file)) => {
                super::home::discard_staged(file);
                return Err(e);
            }
            (Err(e), None) => return Err(e),
        };
        if let Err(e) = self.settle(caller, rotated(&new.app)).await {
            // The new token is in force until a restart; say where it is.
            if let Some(file) = &staged {
                tracing::error!(file = %file.display(), error = %e, "admin token rotated but not durable; the new token is in the staged file");
            }
            return Err(e);
        }
        let token_file = match staged {
            Some(file) => Some(super::home::commit_admin_token(&file)?),
            None => None,
        };
        Ok(RotatedAdmin { new, token_file })
    }

    /// Moves the caller's admin app to `token`, if the caller still holds its current token (a
    /// request authenticated just before another rotation must not rotate the new token away).
    fn reissue_admin(&self, caller: &App, token: String) -> Result<NewApp> {
        let mut reg = self.registry_mut();
        let (old, app) = reg
            .named(&caller.name)
            .filter(|(_, a)| a.admin)
            .map(|(h, a)| (h, a.clone()))
            .ok_or_else(|| Error::NotFound(format!("admin app {} not found", caller.name)))?;
        if app.token_id != caller.token_id {
            return Err(Error::Unauthorized);
        }
        self.reissue(&mut reg, old, app, token)
    }

    /// Moves `app` from token hash `old` to `token`'s, in the store and the registry.
    fn reissue(
        &self,
        reg: &mut Registry,
        old: [u8; 32],
        mut app: App,
        token: String,
    ) -> Result<NewApp> {
        let hash = apps::token_hash(&token);
        app.token_id = apps::token_id(&hash);
        put(&self.inner.store, &hash, &app)?;
        reg.by_token.remove(&old);
        reg.insert(hash, app.clone());
        Ok(NewApp { app, token })
    }

    /// After a change to the registry: wakes the event streams, waits until the change is
    /// durable, and records it.
    async fn settle(&self, by: &App, change: AppChange) -> Result<()> {
        self.access_may_have_changed();
        self.inner.store.durable().await?;
        self.record_app_change(by, &change);
        Ok(())
    }

    /// The one place every app change passes once durable: the audit log hooks in here.
    fn record_app_change(&self, by: &App, change: &AppChange) {
        use crate::audit::{Action, Event};
        tracing::info!(by = %by.name, "{change}");
        let action = match change {
            AppChange::Added { .. } => Action::AppAdd,
            AppChange::Removed { .. } => Action::AppRemove,
            AppChange::Rotated { name, .. } if by.admin && *name == by.name => {
                Action::AdminRotateToken
            }
            AppChange::Rotated { .. } => Action::AppRotate,
            AppChange::Rights { .. } => Action::AppRights,
        };
        self.audit(Event::ok(self.actor(by), action).detail(change.to_string()));
    }
}

fn rotated(app: &App) -> AppChange {
    AppChange::Rotated {
        name: app.name.clone(),
        token_id: app.token_id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legacy(store: &Store, token: &str, name: &str) -> [u8; 32] {
        let hash = apps::token_hash(token);
        let app = App::new(name, vec![], 1).expect("app");
        store.put_json(Table::Apps, &hash, &app).expect("put");
        hash
    }

    #[test]
    fn apps_kept_under_their_token_hash_are_moved_under_their_name() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(dir.path()).expect("open");
        let old = legacy(&store, "fm-old", "planner");
        // A move cut short: the app under its name already, and its old copy.
        let fresh = apps::token_hash("fm-new");
        let rotated = identified(App::new("lab", vec![], 1).expect("app"), &fresh);
        put(&store, &fresh, &rotated).expect("put");
        legacy(&store, "fm-stale", "lab");

        let reg = Registry::load(&store).expect("load");
        assert_eq!(reg.named("planner").map(|(h, _)| h), Some(old));
        assert_eq!(reg.named("lab").map(|(h, _)| h), Some(fresh));
        assert!(!reg.by_token.contains_key(&apps::token_hash("fm-stale")));
        let keys: Vec<Vec<u8>> = store
            .list_json_keyed::<Stored>(Table::Apps)
            .expect("list")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec![app_key("lab"), app_key("planner")]);
        let again = Registry::load(&store).expect("reload");
        assert_eq!(again.named("planner").map(|(h, _)| h), Some(old));
        assert_eq!(again.by_token.len(), 2);
    }
}
