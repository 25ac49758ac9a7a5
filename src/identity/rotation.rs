//! Key rotation on disk, crash-safe at every step. A home directory holds the current keys at
//! its root, the keys being rotated to in `rotating/`, and every key rotated away in
//! `retired/<author>/` (kept to open what was wrapped for it, with the signed rotation).
//!
//! 1. [`stage`]: fresh keys are written to `rotating/` (a stale `rotating/` is replaced).
//! 2. [`commit`]: the signed rotation is written to `rotating/rotation.json` in one rename.
//!    From here the rotation happens, whatever fails next.
//! 3. [`finish`]: the current keys are copied to `retired/<author>/` (one directory rename),
//!    each new key file replaces the current one (one rename each), `rotating/` is removed.
//!
//! [`load`] finishes a committed rotation found at start and discards an uncommitted one, so a
//! node killed at any point comes back with one consistent key set.

use std::fs;
use std::path::{Path, PathBuf};

use super::{read_secret, write_secret, Error, Identity, AGREEMENT_FILE, IDENTITY_FILE};

/// Directory of the keys being rotated to.
pub const ROTATING_DIR: &str = "rotating";
/// Directory of the keys rotated away, one subdirectory per key.
pub const RETIRED_DIR: &str = "retired";
/// The signed rotation, beside the keys it concerns.
pub const ROTATION_FILE: &str = "rotation.json";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    super::io_err(path)
}

fn remove_dir(path: &Path) -> Result<(), Error> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(path)(e)),
    }
}

fn sync_dir(path: &Path) -> Result<(), Error> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io(path))
}

/// Writes fresh keys to `home/rotating/` and returns them.
pub fn stage(home: &Path) -> Result<Identity, Error> {
    let dir = home.join(ROTATING_DIR);
    remove_dir(&dir)?;
    fs::create_dir(&dir).map_err(io(&dir))?;
    let new = Identity::generate();
    new.save(&dir)?;
    sync_dir(&dir)?;
    sync_dir(home)?;
    Ok(new)
}

/// Records the signed rotation: from now on the staged keys replace the current ones.
pub fn commit(home: &Path, rotation: &[u8]) -> Result<(), Error> {
    let dir = home.join(ROTATING_DIR);
    let tmp = dir.join("rotation.tmp");
    let _ = fs::remove_file(&tmp);
    write_secret(&tmp, rotation)?;
    let path = dir.join(ROTATION_FILE);
    fs::rename(&tmp, &path).map_err(io(&path))?;
    sync_dir(&dir)
}

/// Deletes staged keys whose rotation was never committed.
pub fn discard(home: &Path) -> Result<(), Error> {
    remove_dir(&home.join(ROTATING_DIR))
}

/// Puts a committed rotation's keys in place; idempotent.
pub fn finish(home: &Path) -> Result<(), Error> {
    let dir = home.join(ROTATING_DIR);
    if !dir.join(IDENTITY_FILE).exists() || !dir.join(AGREEMENT_FILE).exists() {
        // The staged keys go only in the cleanup, after they replaced the current ones.
        return cleanup(&dir);
    }
    let new = Identity::load(&dir)?;
    let current = Identity::load(home)?;
    if current.author() != new.author() {
        retire(home, &dir.join(ROTATION_FILE))?;
    }
    for file in [AGREEMENT_FILE, IDENTITY_FILE] {
        replace(&dir.join(file), &home.join(file))?;
    }
    sync_dir(home)?;
    cleanup(&dir)
}

/// Removes a finished rotation's directory: the rotation first, so that a kill half-way leaves
/// either a whole rotation or none to finish.
fn cleanup(dir: &Path) -> Result<(), Error> {
    let marker = dir.join(ROTATION_FILE);
    match fs::remove_file(&marker) {
        Ok(()) => sync_dir(dir)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&marker)(e)),
    }
    remove_dir(dir)
}

/// Copies the home's current keys and the rotation to `retired/<author>/`, in one rename.
/// A directory there already holds them (a finish interrupted after it).
fn retire(home: &Path, rotation: &Path) -> Result<(), Error> {
    let author = read_secret(&home.join(IDENTITY_FILE))?;
    let key = ed25519_dalek::SigningKey::from_bytes(&author);
    let name = hex::encode(key.verifying_key().to_bytes());
    let retired = home.join(RETIRED_DIR);
    fs::create_dir_all(&retired).map_err(io(&retired))?;
    let target = retired.join(&name);
    if target.exists() {
        return Ok(());
    }
    let tmp = retired.join(format!("{name}.tmp"));
    remove_dir(&tmp)?;
    fs::create_dir(&tmp).map_err(io(&tmp))?;
    for file in [IDENTITY_FILE, AGREEMENT_FILE] {
        let bytes = read_secret(&home.join(file))?;
        write_secret(&tmp.join(file), &*bytes)?;
    }
    let op = fs::read(rotation).map_err(io(rotation))?;
    write_secret(&tmp.join(ROTATION_FILE), &op)?;
    sync_dir(&tmp)?;
    fs::rename(&tmp, &target).map_err(io(&target))?;
    sync_dir(&retired)
}

/// Replaces `to` with `from`'s content in one rename (`from` stays until the rotation ends).
fn replace(from: &Path, to: &Path) -> Result<(), Error> {
    let bytes = read_secret(from)?;
    let tmp: PathBuf = to.with_extension("new");
    let _ = fs::remove_file(&tmp);
    write_secret(&tmp, &*bytes)?;
    fs::rename(&tmp, to).map_err(io(to))
}

/// What a home holds: its current keys (with every retired one as [`Identity::past`]) and
/// the signed rotations that retired them (in no particular order).
pub struct Loaded {
    /// The current identity.
    pub identity: Identity,
    /// The signed rotations, as written by [`commit`].
    pub rotations: Vec<Vec<u8>>,
}

/// Loads a home's keys, finishing a committed rotation and discarding an uncommitted one.
pub fn load(home: &Path) -> Result<Loaded, Error> {
    let dir = home.join(ROTATING_DIR);
    if dir.join(ROTATION_FILE).exists() {
        tracing::warn!("finishing a key rotation interrupted before the node restarted");
        finish(home)?;
    } else if dir.exists() {
        tracing::warn!("discarding keys staged by a key rotation that never took effect");
        discard(home)?;
    }
    let mut past = Vec::new();
    let mut rotations = Vec::new();
    let retired = home.join(RETIRED_DIR);
    let mut dirs: Vec<PathBuf> = match fs::read_dir(&retired) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir() && p.extension().is_none())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io(&retired)(e)),
    };
    dirs.sort();
    for d in dirs {
        past.push(Identity::load(&d)?);
        let op = d.join(ROTATION_FILE);
        rotations.push(fs::read(&op).map_err(io(&op))?);
    }
    Ok(Loaded {
        identity: Identity::load(home)?.with_past(past),
        rotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home() -> (tempfile::TempDir, Identity) {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = Identity::generate();
        id.save(dir.path()).expect("save");
        (dir, id)
    }

    #[test]
    fn a_committed_rotation_is_finished_at_load_and_keeps_the_old_keys() {
        let (dir, old) = home();
        let new = stage(dir.path()).expect("stage");
        commit(dir.path(), b"{\"op\":1}").expect("commit");
        // Killed here: the next start finishes it.
        let loaded = load(dir.path()).expect("load");
        assert_eq!(loaded.identity.author(), new.author());
        assert_eq!(loaded.identity.past().len(), 1);
        assert_eq!(loaded.identity.past()[0].author(), old.author());
        assert_eq!(loaded.rotations, vec![b"{\"op\":1}".to_vec()]);
        assert!(!dir.path().join(ROTATING_DIR).exists());
        // Loading again changes nothing.
        let again = load(dir.path()).expect("load");
        assert_eq!(again.identity.author(), new.author());
        assert_eq!(again.identity.past().len(), 1);
    }

    #[test]
    fn an_uncommitted_rotation_is_discarded_at_load() {
        let (dir, old) = home();
        stage(dir.path()).expect("stage");
        let loaded = load(dir.path()).expect("load");
        assert_eq!(loaded.identity.author(), old.author());
        assert!(loaded.identity.past().is_empty());
        assert!(!dir.path().join(ROTATING_DIR).exists());
    }

    #[test]
    fn a_kill_during_the_cleanup_leaves_a_home_that_loads_with_the_new_keys() {
        let (dir, _) = home();
        let new = stage(dir.path()).expect("stage");
        commit(dir.path(), b"op").expect("commit");
        finish(dir.path()).expect("finish");
        // As if killed while deleting `rotating/`: the marker survived, a staged key did not.
        let rot = dir.path().join(ROTATING_DIR);
        fs::create_dir(&rot).expect("dir");
        fs::write(rot.join(ROTATION_FILE), b"op").expect("marker");
        new.save(&rot).expect("keys");
        fs::remove_file(rot.join(IDENTITY_FILE)).expect("one gone");
        let loaded = load(dir.path()).expect("load");
        assert_eq!(loaded.identity.author(), new.author());
        assert_eq!(loaded.identity.past().len(), 1);
        assert!(!rot.exists());
    }

    #[test]
    fn a_finish_interrupted_after_one_key_was_replaced_completes() {
        let (dir, old) = home();
        let new = stage(dir.path()).expect("stage");
        commit(dir.path(), b"op").expect("commit");
        retire(
            dir.path(),
            &dir.path().join(ROTATING_DIR).join(ROTATION_FILE),
        )
        .expect("retire");
        let rot = dir.path().join(ROTATING_DIR);
        replace(&rot.join(AGREEMENT_FILE), &dir.path().join(AGREEMENT_FILE)).expect("one key");
        let loaded = load(dir.path()).expect("load");
        assert_eq!(loaded.identity.author(), new.author());
        assert_eq!(loaded.identity.agreement_public(), new.agreement_public());
        let past = &loaded.identity.past()[0];
        assert_eq!(past.author(), old.author());
        assert_eq!(
            past.agreement_public(),
            old.agreement_public(),
            "the retired copy is the old pair"
        );
    }
}
