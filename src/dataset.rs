//! Dataset metadata: who owns it, who may see it, how it is kept.

use serde::{Deserialize, Serialize};

use crate::naming::{self, DatasetId};

/// Longest schema document accepted, in bytes of JSON.
pub const SCHEMA_MAX_BYTES: usize = 16 * 1024;
/// Deepest nesting of arrays and objects a schema may have (serde_json's and the wire codec's
/// own limits are about 128, and a description travels and is stored inside other messages).
pub const SCHEMA_MAX_DEPTH: usize = 32;
/// Most reader organizations one dataset may name.
pub const MAX_READERS: usize = 256;

/// Whether a dataset may leave its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Never leaves the owner's node.
    #[default]
    Private,
    /// Replicated to the organizations it is shared with.
    Shared,
}

/// Service priority: which datasets the node serves first when it is busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Served after everything else.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Served first (alerts, emergencies).
    High,
}

/// The order datasets are served in when several wait (loading after a start, catching up):
/// high priority first, then normal, then low; by id within one priority. A sort key.
pub fn service_order(priority: Priority, id: String) -> (std::cmp::Reverse<Priority>, String) {
    (std::cmp::Reverse(priority), id)
}

/// How long records are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Keep records newer than this many days (`None`: forever).
    #[serde(default)]
    pub max_age_days: Option<u32>,
    /// Keep at most this many newest records (`None`: no limit).
    #[serde(default)]
    pub max_records: Option<u64>,
}

/// What an admin sends to create a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Name within the owning organization.
    pub name: String,
    /// `private` (default) or `shared`.
    #[serde(default)]
    pub visibility: Visibility,
    /// `low`, `normal` (default) or `high`.
    #[serde(default)]
    pub priority: Priority,
    /// Retention policy; keep everything by default.
    #[serde(default)]
    pub retention: Retention,
    /// Free-form JSON describing the records' data fields, for humans and apps.
    #[serde(default)]
    pub schema: Option<serde_json::Value>,
    /// Organizations the dataset is shared with (shared datasets only): each gets a grant for
    /// all its apps to read and query.
    #[serde(default)]
    pub readers: Vec<String>,
    /// Seal envelopes under epoch keys; default: yes for shared datasets, no for private ones
    /// (which never leave the node). A shared dataset made with `false` travels in clear.
    #[serde(default)]
    pub encrypted: Option<bool>,
}

/// A dataset as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// `owner/name`.
    pub id: DatasetId,
    /// Private or shared.
    pub visibility: Visibility,
    /// Service priority.
    pub priority: Priority,
    /// Retention policy.
    pub retention: Retention,
    /// Schema description, if given.
    pub schema: Option<serde_json::Value>,
    /// Reader organizations named at creation (each was granted read and query).
    pub readers: Vec<String>,
    /// Whether envelope payloads are sealed under epoch keys.
    #[serde(default)]
    pub encrypted: bool,
    /// Creation time (ms).
    pub created: u64,
}

/// Why a dataset spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A bad dataset or reader name.
    #[error(transparent)]
    Name(#[from] naming::Error),
    /// Readers named on a private dataset.
    #[error("a private dataset has no readers; make it shared or drop the readers")]
    PrivateReaders,
    /// Too many readers.
    #[error("at most {MAX_READERS} readers, got {0}")]
    TooManyReaders(usize),
    /// Schema too large.
    #[error("schema is {0} bytes; the limit is {SCHEMA_MAX_BYTES}")]
    SchemaTooLarge(usize),
    /// Schema nested too deeply.
    #[error("schema nests {0} levels of arrays and objects; the limit is {SCHEMA_MAX_DEPTH}")]
    SchemaTooDeep(usize),
    /// A creation time past what a date shows.
    #[error("created {0} ms lies past the end of year 9999")]
    CreatedOutOfRange(u64),
}

impl Meta {
    /// Checks what a description carries that its owner chose: its creation time, reader names
    /// and count, the schema's size and depth. Run where one enters: the owner's API, and a peer's catalog.
    pub fn check(&self) -> Result<(), Error> {
        if self.created > crate::record::TIME_MAX_MS {
            return Err(Error::CreatedOutOfRange(self.created));
        }
        if self.visibility == Visibility::Private && !self.readers.is_empty() {
            return Err(Error::PrivateReaders);
        }
        if self.readers.len() > MAX_READERS {
            return Err(Error::TooManyReaders(self.readers.len()));
        }
        for r in &self.readers {
            naming::validate_ident("reader organization", r)?;
        }
        if let Some(schema) = &self.schema {
            let depth = crate::record::json_depth(schema);
            if depth > SCHEMA_MAX_DEPTH {
                return Err(Error::SchemaTooDeep(depth));
            }
            let len = schema.to_string().len();
            if len > SCHEMA_MAX_BYTES {
                return Err(Error::SchemaTooLarge(len));
            }
        }
        Ok(())
    }
}

impl Spec {
    /// Validates the spec and makes the metadata of a dataset owned by `owner`.
    pub fn into_meta(self, owner: &str, now_ms: u64) -> Result<Meta, Error> {
        let id = DatasetId::new(owner, &self.name)?;
        let mut readers = self.readers;
        readers.sort();
        readers.dedup();
        let meta = Meta {
            id,
            visibility: self.visibility,
            priority: self.priority,
            retention: self.retention,
            schema: self.schema,
            readers,
            encrypted: self
                .encrypted
                .unwrap_or(self.visibility == Visibility::Shared),
            created: now_ms,
        };
        meta.check()?;
        Ok(meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> Spec {
        Spec {
            name: name.into(),
            visibility: Visibility::Shared,
            priority: Priority::High,
            retention: Retention::default(),
            schema: None,
            readers: vec!["pharmacy".into(), "agency".into(), "pharmacy".into()],
            encrypted: None,
        }
    }

    #[test]
    fn a_valid_spec_becomes_sorted_metadata() {
        let m = spec("flu-cases").into_meta("hospital", 7).expect("valid");
        assert_eq!(m.id.to_string(), "hospital/flu-cases");
        assert_eq!(m.readers, ["agency", "pharmacy"]);
        assert!(m.encrypted, "shared datasets are sealed by default");
    }

    #[test]
    fn a_description_created_past_year_9999_is_refused() {
        let mut m = spec("flu")
            .into_meta("hospital", crate::record::TIME_MAX_MS)
            .expect("valid");
        assert_eq!(m.check(), Ok(()));
        m.created = crate::record::TIME_MAX_MS + 1;
        assert_eq!(m.check(), Err(Error::CreatedOutOfRange(m.created)));
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!(spec("Bad Name").into_meta("hospital", 0).is_err());
        let mut s = spec("x");
        s.visibility = Visibility::Private;
        assert_eq!(s.into_meta("h", 0), Err(Error::PrivateReaders));
        let mut s = spec("x");
        s.readers = vec!["No".into()];
        assert!(matches!(s.into_meta("h", 0), Err(Error::Name(_))));
    }

    #[test]
    fn specs_parse_from_json_with_defaults() {
        let s: Spec = serde_json::from_str(r#"{"name":"x"}"#).expect("parses");
        assert_eq!(
            (s.visibility, s.priority),
            (Visibility::Private, Priority::Normal)
        );
        assert!(serde_json::from_str::<Spec>(r#"{"name":"x","bogus":1}"#).is_err());
    }
}
