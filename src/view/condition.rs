//! Conditions: predicates joined by `and`, `or` and `not`, as a view query's `where` holds them
//! ([`Where`], the form that travels) and as they are evaluated ([`Condition`]). Pure: no I/O.
//!
//! A `where` item is a predicate string (`cases>=5`, see [`super::query`]) or an object with one
//! key: `{"and": [..]}`, `{"or": [..]}` or `{"not": ..}`. Evaluation follows SQL's three-valued
//! logic: a predicate on a field the record lacks is unknown (not false), `not` of unknown is
//! unknown, and a record passes only when the whole condition is true.
//!
//! ```
//! use fogmesh::view::condition::Where;
//! let w: Where = serde_json::from_str(r#"{"or": ["cases>=5", {"not": "district=d1"}]}"#).unwrap();
//! assert!(w.compile().is_ok());
//! ```

use serde::de::{Deserializer, Error as _};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::query::{self, Predicate};
use crate::record::Record;

/// Most predicates in one query's conditions, counted over every nesting.
pub const MAX_CONDITIONS: usize = 256;
/// Most items in one `and` or `or` (and in `where` itself).
pub const MAX_ITEMS: usize = query::MAX_PREDICATES;
/// Deepest nesting of `and`, `or` and `not` inside a `where`.
pub const MAX_DEPTH: usize = 8;
/// Most bytes of predicate text in one query's conditions, summed: it bounds the work per record.
pub const MAX_TEXT: usize = 8 * 1024;

/// Why a condition is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A list (`where`, `and`, `or`) is empty or too long.
    #[error("and/or take 1 to {MAX_ITEMS} conditions, got {0}")]
    Items(usize),
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("and/or/not nest at most {MAX_DEPTH} deep")]
    TooDeep,
    /// More than [`MAX_CONDITIONS`] predicates.
    #[error("at most {MAX_CONDITIONS} predicates in all")]
    TooManyPredicates,
    /// More than [`MAX_TEXT`] bytes of predicates.
    #[error("at most {MAX_TEXT} bytes of predicates in all")]
    TooLong,
    /// A predicate does not parse.
    #[error(transparent)]
    Predicate(#[from] query::Error),
}

/// A condition refused, with the index of the item of `where` at fault (`None`: the list).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct ItemError {
    /// The item of the top-level list at fault, if one is.
    pub index: Option<usize>,
    /// Why.
    pub error: Error,
}

/// What compiling has used so far of the per-query budgets.
#[derive(Default)]
struct Budget {
    predicates: usize,
    bytes: usize,
}

/// A condition as written in a query and sent to owners.
#[derive(Debug, Clone, PartialEq)]
pub enum Where {
    /// A predicate `FIELD OP VALUE`.
    Is(String),
    /// Every item holds.
    All(Vec<Where>),
    /// Some item holds.
    Any(Vec<Where>),
    /// The item does not hold.
    Not(Box<Where>),
}

impl From<&str> for Where {
    fn from(p: &str) -> Self {
        Self::Is(p.to_owned())
    }
}

impl From<String> for Where {
    fn from(p: String) -> Self {
        Self::Is(p)
    }
}

impl Serialize for Where {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        fn one<S: Serializer, T: Serialize + ?Sized>(
            s: S,
            key: &str,
            v: &T,
        ) -> Result<S::Ok, S::Error> {
            let mut m = s.serialize_map(Some(1))?;
            m.serialize_entry(key, v)?;
            m.end()
        }
        match self {
            Self::Is(p) => s.serialize_str(p),
            Self::All(items) => one(s, "and", items),
            Self::Any(items) => one(s, "or", items),
            Self::Not(item) => one(s, "not", item.as_ref()),
        }
    }
}

impl<'de> Deserialize<'de> for Where {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Depth is bounded before this runs: by serde_json's recursion limit for a body, by the
        // wire's shape check for a peer's message.
        Self::from_json(Json::deserialize(d)?).map_err(D::Error::custom)
    }
}

const SHAPE: &str = "a predicate string or an object with one key: and, or, not";

impl Where {
    fn from_json(v: Json) -> Result<Self, String> {
        let Json::Object(m) = v else {
            return match v {
                Json::String(p) => Ok(Self::Is(p)),
                _ => Err(SHAPE.into()),
            };
        };
        let mut entries = m.into_iter();
        let (Some((key, inner)), None) = (entries.next(), entries.next()) else {
            return Err(SHAPE.into());
        };
        let list = |inner: Json| match inner {
            Json::Array(items) => items.into_iter().map(Self::from_json).collect(),
            _ => Err(format!("{key} takes a list of conditions")),
        };
        match key.as_str() {
            "and" => list(inner).map(Self::All),
            "or" => list(inner).map(Self::Any),
            "not" => Self::from_json(inner).map(|w| Self::Not(Box::new(w))),
            other => Err(format!("unknown key {other:?}: {SHAPE}")),
        }
    }

    /// Checks and compiles the condition, as the only item of a `where`.
    pub fn compile(&self) -> Result<Condition, Error> {
        self.compile_at(1, &mut Budget::default())
    }

    /// Compiles every item of a list that must all hold (a query's `where`), naming the first
    /// bad item by its index.
    pub fn compile_all(items: &[Where]) -> Result<Condition, ItemError> {
        if items.len() > MAX_ITEMS {
            let error = Error::Items(items.len());
            return Err(ItemError { index: None, error });
        }
        let mut budget = Budget::default();
        let all = items
            .iter()
            .enumerate()
            .map(|(i, w)| {
                w.compile_at(1, &mut budget).map_err(|error| ItemError {
                    index: Some(i),
                    error,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Condition::All(all))
    }

    fn compile_at(&self, depth: usize, budget: &mut Budget) -> Result<Condition, Error> {
        if depth > MAX_DEPTH && !matches!(self, Self::Is(_)) {
            return Err(Error::TooDeep);
        }
        let list = |items: &[Where], budget: &mut Budget| {
            if items.is_empty() || items.len() > MAX_ITEMS {
                return Err(Error::Items(items.len()));
            }
            items
                .iter()
                .map(|w| w.compile_at(depth + 1, budget))
                .collect()
        };
        match self {
            Self::Is(p) => {
                budget.predicates += 1;
                budget.bytes += p.len();
                if budget.predicates > MAX_CONDITIONS {
                    return Err(Error::TooManyPredicates);
                }
                if budget.bytes > MAX_TEXT {
                    return Err(Error::TooLong);
                }
                Ok(Condition::Is(Predicate::parse(p)?))
            }
            Self::All(items) => list(items, budget).map(Condition::All),
            Self::Any(items) => list(items, budget).map(Condition::Any),
            Self::Not(item) => item
                .compile_at(depth + 1, budget)
                .map(|c| Condition::Not(Box::new(c))),
        }
    }
}

/// A compiled condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// A predicate.
    Is(Predicate),
    /// Every item holds.
    All(Vec<Condition>),
    /// Some item holds.
    Any(Vec<Condition>),
    /// The item does not hold.
    Not(Box<Condition>),
}

impl Condition {
    /// `Some(true)` or `Some(false)`, or `None` where it is unknown (a field missing).
    pub fn eval(&self, r: &Record) -> Option<bool> {
        match self {
            Self::Is(p) => p.eval(r),
            Self::All(items) => fold(items, r, false),
            Self::Any(items) => fold(items, r, true),
            Self::Not(c) => c.eval(r).map(|b| !b),
        }
    }

    /// Whether `r` passes: the condition is true.
    pub fn matches(&self, r: &Record) -> bool {
        self.eval(r) == Some(true)
    }

    /// Whether some predicate inside satisfies `f`.
    pub fn any_predicate(&self, f: &impl Fn(&Predicate) -> bool) -> bool {
        match self {
            Self::Is(p) => f(p),
            Self::All(items) | Self::Any(items) => items.iter().any(|c| c.any_predicate(f)),
            Self::Not(c) => c.any_predicate(f),
        }
    }
}

/// `and` (`decisive` false) or `or` (`decisive` true) in three-valued logic: one item equal to
/// `decisive` decides; otherwise any unknown item makes the whole unknown.
fn fold(items: &[Condition], r: &Record, decisive: bool) -> Option<bool> {
    let mut unknown = false;
    for c in items {
        match c.eval(r) {
            Some(b) if b == decisive => return Some(decisive),
            None => unknown = true,
            Some(_) => {}
        }
    }
    (!unknown).then_some(!decisive)
}

#[cfg(test)]
#[path = "condition_tests.rs"]
mod tests;
