//! Names of things: organizations, datasets and record names.
//!
//! A record name is a path of location and activity segments, e.g. `district-7/ward-3/flu-admission`,
//! the article's "uniform naming of things by time, location and activity". Names cross the trust
//! boundary (apps and peers send them), so every rule here is a check with a message that says what is
//! wrong.

use std::fmt;

/// Longest record name, in bytes.
pub const NAME_MAX_BYTES: usize = 256;
/// Most segments a record name may have.
pub const NAME_MAX_SEGMENTS: usize = 16;
/// Longest segment of a record name, and longest org or dataset name, in bytes.
pub const SEGMENT_MAX_BYTES: usize = 64;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The name is the empty string.
    #[error("{what} is empty")]
    Empty {
        /// What kind of name.
        what: &'static str,
    },
    /// The name is longer than allowed.
    #[error("{what} is {len} bytes long; the limit is {max}")]
    TooLong {
        /// What kind of name.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Too many `/`-separated segments.
    #[error("name has {count} segments; the limit is {max}")]
    TooManySegments {
        /// Segments found.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An empty segment (`a//b`, leading or trailing `/`).
    #[error("name {name:?} has an empty segment (leading, trailing or doubled '/')")]
    EmptySegment {
        /// The name.
        name: String,
    },
    /// A `.` or `..` segment.
    #[error("name {name:?} has a '.' or '..' segment")]
    DotSegment {
        /// The name.
        name: String,
    },
    /// A character outside the allowed set.
    #[error("{what} {name:?} has the character {ch:?}; allowed are letters, digits, '-', '_' and '.'{extra}")]
    BadChar {
        /// What kind of name.
        what: &'static str,
        /// The name.
        name: String,
        /// The offending character.
        ch: char,
        /// What else is allowed.
        extra: &'static str,
    },
    /// A dataset id without exactly one `/`.
    #[error("dataset {0:?} must be written OWNER/NAME")]
    DatasetForm(String),
}

fn segment_char_ok(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

fn check_len(what: &'static str, s: &str, max: usize) -> Result<(), Error> {
    if s.is_empty() {
        return Err(Error::Empty { what });
    }
    if s.len() > max {
        return Err(Error::TooLong {
            what,
            len: s.len(),
            max,
        });
    }
    Ok(())
}

/// Checks a record name: `/`-separated segments of letters, digits, `-`, `_`, `.`; no empty, `.` or
/// `..` segment; at most [`NAME_MAX_SEGMENTS`] segments and [`NAME_MAX_BYTES`] bytes.
pub fn validate_record_name(name: &str) -> Result<(), Error> {
    check_len("record name", name, NAME_MAX_BYTES)?;
    if let Some(ch) = name.chars().find(|&c| c != '/' && !segment_char_ok(c)) {
        return Err(Error::BadChar {
            what: "record name",
            name: name.to_owned(),
            ch,
            extra: ", with '/' between segments",
        });
    }
    let count = name.split('/').count();
    if count > NAME_MAX_SEGMENTS {
        return Err(Error::TooManySegments {
            count,
            max: NAME_MAX_SEGMENTS,
        });
    }
    for seg in name.split('/') {
        if seg.is_empty() {
            return Err(Error::EmptySegment {
                name: name.to_owned(),
            });
        }
        if seg == "." || seg == ".." {
            return Err(Error::DotSegment {
                name: name.to_owned(),
            });
        }
        if seg.len() > SEGMENT_MAX_BYTES {
            return Err(Error::TooLong {
                what: "name segment",
                len: seg.len(),
                max: SEGMENT_MAX_BYTES,
            });
        }
    }
    Ok(())
}

/// Checks an organization, mesh, app or dataset name: one segment of lowercase letters, digits, `-`
/// and `_`, starting with a letter or digit.
pub fn validate_ident(what: &'static str, name: &str) -> Result<(), Error> {
    check_len(what, name, SEGMENT_MAX_BYTES)?;
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
    if let Some(ch) = name.chars().find(|&c| !ok(c)) {
        return Err(Error::BadChar {
            what,
            name: name.to_owned(),
            ch,
            extra: " (lowercase only, no '.')",
        });
    }
    if name.starts_with(['-', '_']) {
        return Err(Error::BadChar {
            what,
            name: name.to_owned(),
            ch: name.chars().next().unwrap_or('-'),
            extra: " (must start with a letter or digit)",
        });
    }
    Ok(())
}

/// True when `name` equals `prefix` or lies below it (segment-aware: `a/b` is under `a`, `ab` is not).
pub fn is_under(name: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || name == prefix
        || (name.starts_with(prefix) && name.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// The `index`-th segment of a record name, if it has one.
pub fn segment(name: &str, index: usize) -> Option<&str> {
    name.split('/').nth(index)
}

/// A dataset's identity: the owning organization and the dataset's name, written `owner/name`.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct DatasetId {
    owner: String,
    name: String,
}

impl DatasetId {
    /// Builds an id from its two parts, validating both.
    pub fn new(owner: &str, name: &str) -> Result<Self, Error> {
        validate_ident("organization", owner)?;
        validate_ident("dataset name", name)?;
        Ok(Self {
            owner: owner.to_owned(),
            name: name.to_owned(),
        })
    }

    /// Parses `owner/name`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        match s.split_once('/') {
            Some((owner, name)) if !name.contains('/') => Self::new(owner, name),
            _ => Err(Error::DatasetForm(s.to_owned())),
        }
    }

    /// The owning organization.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The dataset's name within its owner.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for DatasetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

impl TryFrom<String> for DatasetId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        Self::parse(&s)
    }
}

impl From<DatasetId> for String {
    fn from(d: DatasetId) -> String {
        d.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn record_names_accept_paths_of_segments() {
        for ok in ["a", "district-7/ward-3/flu-admission", "A.b_c/x", "v1.2"] {
            assert_eq!(validate_record_name(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn record_names_refuse_each_rule_with_its_own_error() {
        assert!(matches!(validate_record_name(""), Err(Error::Empty { .. })));
        assert!(matches!(
            validate_record_name("a//b"),
            Err(Error::EmptySegment { .. })
        ));
        assert!(matches!(
            validate_record_name("/a"),
            Err(Error::EmptySegment { .. })
        ));
        assert!(matches!(
            validate_record_name("a/"),
            Err(Error::EmptySegment { .. })
        ));
        assert!(matches!(
            validate_record_name("a/../b"),
            Err(Error::DotSegment { .. })
        ));
        assert!(matches!(
            validate_record_name("a/./b"),
            Err(Error::DotSegment { .. })
        ));
        assert!(matches!(
            validate_record_name("a b"),
            Err(Error::BadChar { ch: ' ', .. })
        ));
        assert!(matches!(
            validate_record_name("é"),
            Err(Error::BadChar { .. })
        ));
        let long = "a".repeat(NAME_MAX_BYTES + 1);
        assert!(matches!(
            validate_record_name(&long),
            Err(Error::TooLong { .. })
        ));
        let seg = "a".repeat(SEGMENT_MAX_BYTES + 1);
        assert!(matches!(
            validate_record_name(&seg),
            Err(Error::TooLong { .. })
        ));
        let many = vec!["a"; NAME_MAX_SEGMENTS + 1].join("/");
        assert!(matches!(
            validate_record_name(&many),
            Err(Error::TooManySegments { .. })
        ));
    }

    #[test]
    fn idents_are_lowercase_single_segments() {
        assert!(validate_ident("org", "hospital").is_ok());
        assert!(validate_ident("org", "st-mary_2").is_ok());
        assert!(validate_ident("org", "Hospital").is_err());
        assert!(validate_ident("org", "a/b").is_err());
        assert!(validate_ident("org", "-a").is_err());
        assert!(validate_ident("org", "").is_err());
    }

    #[test]
    fn dataset_ids_parse_owner_slash_name() {
        let d = DatasetId::parse("hospital/flu-cases").expect("valid");
        assert_eq!((d.owner(), d.name()), ("hospital", "flu-cases"));
        assert_eq!(d.to_string(), "hospital/flu-cases");
        for bad in ["hospital", "a/b/c", "/x", "x/", "A/b"] {
            assert!(DatasetId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefixes_respect_segment_boundaries() {
        assert!(is_under("district-7/ward-3", "district-7"));
        assert!(is_under("district-7", "district-7"));
        assert!(is_under("district-7/ward-3", "district-7/"));
        assert!(!is_under("district-70/ward-3", "district-7"));
        assert!(is_under("anything", ""));
        assert_eq!(segment("a/b/c", 1), Some("b"));
        assert_eq!(segment("a", 1), None);
    }

    proptest! {
        #[test]
        fn valid_names_never_contain_traversal(s in "[a-z./]{0,20}") {
            if validate_record_name(&s).is_ok() {
                prop_assert!(!s.split('/').any(|g| g.is_empty() || g == "." || g == ".."));
            }
        }
    }
}
