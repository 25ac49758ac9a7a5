//! SQL on the shared view: one `SELECT` parsed with `sqlparser` and translated into a
//! [`ViewQuery`], plus what the answer's columns are called and how groups are ordered. Pure: the
//! query runs as any view query does (`POST /v1/sql`). The dialect is documented with examples in
//! `docs/queries.md`; anything outside it is refused with an error naming the part.
//!
//! ```
//! use fogmesh::view::sql;
//! let t = sql::translate(
//!     "SELECT district, sum(cases) AS cases FROM \"hospital/flu\" \
//!      WHERE diagnosis = 'flu' OR cases > 3 GROUP BY district ORDER BY cases DESC LIMIT 5",
//! ).unwrap();
//! assert_eq!(t.query.group_by, ["field:district"]);
//! assert_eq!(t.query.aggregates, ["sum:cases"]);
//! ```

use serde_json::{Map, Value as Json};
use sqlparser::ast::{
    self, BinaryOperator as B, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr,
    LimitClause, OrderByKind, SelectItem, SetExpr, Statement, TableFactor, Value,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

use super::aggregate::MAX_GROUPS;
use super::plan::{ViewQuery, MAX_SELECT};
use crate::naming::DatasetId;

mod filter;
use filter::{condition, flatten, name_prefix, segment_filter};

/// Longest statement accepted, bytes.
pub const MAX_SQL_LEN: usize = 16 * 1024;
/// Deepest nesting of parentheses, function calls and prefix operators the parser follows.
const RECURSION_LIMIT: usize = 64;
/// Stack of the thread a statement is parsed and translated on. A chain of binary operators
/// (`1+1+1..`, `x=1 OR x=2 OR ..`) parses without recursion but nests one level per operator, and
/// dropping, printing or walking it recurses: up to about 8,000 levels in [`MAX_SQL_LEN`] bytes.
/// Measured in a debug build: such a statement needs more than 256 KiB and less than 1 MiB; the
/// thread gets 16 times that, and the caller's own stack depth does not count against it.
const STACK_BYTES: usize = 16 * 1024 * 1024;

/// A statement outside the dialect: the part, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {why}")]
pub struct Error {
    /// The part at fault, e.g. `WHERE`, `GROUP BY`, `JOIN`.
    pub at: String,
    /// What is wrong or not supported.
    pub why: String,
}

fn err<T>(at: &str, why: impl std::fmt::Display) -> Result<T, Error> {
    Err(Error {
        at: at.to_owned(),
        why: why.to_string(),
    })
}

/// One column of the answer: what it is called and which key of a row or group holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// The name in the answer (an alias, or the expression as written).
    pub name: String,
    /// The key in the view query's rows or groups.
    pub key: String,
}

/// A statement translated.
#[derive(Debug, Clone)]
pub struct Translation {
    /// The view query that computes it.
    pub query: ViewQuery,
    /// The answer's columns, in SELECT order (empty for `SELECT *`: whole records).
    pub columns: Vec<Column>,
    /// Aggregates: the order of groups, by answer column (`true`: descending).
    pub group_order: Vec<(String, bool)>,
    /// Aggregates: most groups, applied after `group_order`.
    pub group_limit: Option<usize>,
}

/// Parses and translates one `SELECT` (on a thread of its own, see [`STACK_BYTES`]).
pub fn translate(sql: &str) -> Result<Translation, Error> {
    if sql.len() > MAX_SQL_LEN {
        return err("statement", format!("longer than {MAX_SQL_LEN} bytes"));
    }
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("sql".into())
            .stack_size(STACK_BYTES)
            .spawn_scoped(s, || translate_here(sql))
            .map_err(|e| Error {
                at: "statement".into(),
                why: format!("no thread to translate on: {e}"),
            })?
            .join()
            .unwrap_or_else(|_| err("statement", "translation failed"))
    })
}

fn translate_here(sql: &str) -> Result<Translation, Error> {
    let dialect = GenericDialect {};
    let parsed = Parser::new(&dialect)
        .with_recursion_limit(RECURSION_LIMIT)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements());
    let mut statements = match parsed {
        Ok(s) => s,
        Err(e) => return err("syntax", e),
    };
    if statements.len() != 1 {
        return err("statement", "exactly one SELECT");
    }
    match statements.remove(0) {
        Statement::Query(q) => Translator::default().query(&q),
        other => err(
            "statement",
            format!("only SELECT is supported, not {}", kind(&other)),
        ),
    }
}

fn kind(s: &Statement) -> String {
    s.to_string()
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_uppercase()
}

/// What a SELECT item or GROUP BY expression is.
#[derive(Debug, Clone, PartialEq)]
enum Item {
    /// A column: `id`, `name`, `time`, `dataset` or a data field (dotted).
    Field(String),
    /// `segment(N)`.
    Segment(usize),
    /// `bucket('1d')`.
    Bucket(String),
    /// `count(*)`, `sum(f)`...: the measure as a view query writes it.
    Measure(String),
}

impl Item {
    fn dimension(&self) -> Option<String> {
        match self {
            Self::Field(f) => Some(format!("field:{f}")),
            Self::Segment(n) => Some(format!("segment:{n}")),
            Self::Bucket(d) => Some(format!("bucket:{d}")),
            Self::Measure(_) => None,
        }
    }
}

#[derive(Default)]
struct Translator {
    query: ViewQuery,
    columns: Vec<Column>,
}

impl Translator {
    fn query(mut self, q: &ast::Query) -> Result<Translation, Error> {
        refuse_query_extras(q)?;
        let SetExpr::Select(s) = q.body.as_ref() else {
            return err(
                "statement",
                "one plain SELECT (no UNION, VALUES or parentheses)",
            );
        };
        refuse_select_extras(s)?;
        self.query.datasets = from(&s.from)?;
        if let Some(w) = &s.selection {
            self.filter(w)?;
        }
        let limit = limit(q.limit_clause.as_ref())?;
        let order = order_keys(q)?;
        let items = select_items(&s.projection)?;
        let group_by = match &s.group_by {
            GroupByExpr::Expressions(exprs, mods) if mods.is_empty() => exprs,
            _ => return err("GROUP BY", "GROUP BY ALL and modifiers are not supported"),
        };
        let grouped =
            !group_by.is_empty() || items.iter().any(|(i, _)| matches!(i, Item::Measure(_)));
        if grouped {
            return self.aggregate(items, group_by, order, limit);
        }
        self.rows(items, order, limit)
    }

    /// WHERE: `segment(N) = 'v'` and `name LIKE 'a/b/%'` ANDed at the top become the segment and
    /// prefix filters; everything else becomes conditions.
    fn filter(&mut self, w: &Expr) -> Result<(), Error> {
        let mut top = Vec::new();
        flatten(w, B::And, &mut top);
        for e in top {
            if let Some(seg) = segment_filter(e)? {
                self.query.segments.push(seg);
            } else if let Some(prefix) = name_prefix(e)? {
                if self.query.name_prefix.replace(prefix).is_some() {
                    return err("WHERE", "one name LIKE 'prefix/%' at most");
                }
            } else {
                self.query.predicates.push(condition(e)?);
            }
        }
        Ok(())
    }

    fn rows(
        mut self,
        items: Vec<(Item, String)>,
        order: Vec<(&Expr, bool)>,
        limit: Option<usize>,
    ) -> Result<Translation, Error> {
        let star = items.is_empty();
        for (item, name) in &items {
            let Item::Field(f) = item else {
                return err("SELECT", format!("{name} needs GROUP BY or an aggregate"));
            };
            self.push_column(name, f)?;
            self.query.select.push(f.clone());
        }
        if order.len() > 1 {
            return err("ORDER BY", "rows are ordered by one key");
        }
        if let Some((e, desc)) = order.first() {
            let f = match self.by_alias(e) {
                Some(key) => key,
                None => field(e, "ORDER BY")?,
            };
            if f == "dataset" {
                return err("ORDER BY", "rows cannot be ordered by dataset");
            }
            self.query.order_by = Some(if *desc { format!("-{f}") } else { f });
        }
        self.query.limit = limit;
        if star {
            self.query.select.clear();
        }
        Ok(Translation {
            query: self.query,
            columns: self.columns,
            group_order: Vec::new(),
            group_limit: None,
        })
    }

    fn aggregate(
        mut self,
        items: Vec<(Item, String)>,
        group_by: &[Expr],
        order: Vec<(&Expr, bool)>,
        limit: Option<usize>,
    ) -> Result<Translation, Error> {
        if items.is_empty() {
            return err(
                "SELECT",
                "* cannot be grouped; name the columns and aggregates",
            );
        }
        let dims = group_by
            .iter()
            .map(|e| self.group_item(e, &items))
            .collect::<Result<Vec<_>, _>>()?;
        if limit.is_some_and(|n| n > MAX_GROUPS) {
            return err("LIMIT", format!("at most {MAX_GROUPS} groups"));
        }
        for d in &dims {
            let Some(key) = d.dimension() else {
                return err("GROUP BY", "an aggregate cannot be a group");
            };
            if let Item::Field(f) = d {
                data_field(f, "GROUP BY")?;
            }
            if !self.query.group_by.contains(&key) {
                self.query.group_by.push(key);
            }
        }
        for (item, name) in &items {
            let key = match item {
                Item::Measure(m) => {
                    if !self.query.aggregates.contains(m) {
                        self.query.aggregates.push(m.clone());
                    }
                    m.clone()
                }
                other if dims.contains(other) => other.dimension().unwrap_or_default(),
                _ => {
                    return err(
                        "SELECT",
                        format!("{name} must be in GROUP BY or be an aggregate"),
                    )
                }
            };
            self.push_column(name, &key)?;
        }
        if self.query.aggregates.is_empty() {
            // Groups need one measure; its column is not shown.
            self.query.aggregates.push("count".into());
        }
        let group_order = order
            .iter()
            .map(|(e, desc)| self.output_column(e).map(|c| (c, *desc)))
            .collect::<Result<Vec<_>, _>>()?;
        if group_order.is_empty() {
            self.query.limit = limit;
        }
        Ok(Translation {
            query: self.query,
            columns: self.columns,
            group_order,
            group_limit: limit,
        })
    }

    /// A GROUP BY expression: an alias of a SELECT item, a 1-based SELECT position, or an item.
    fn group_item(&self, e: &Expr, items: &[(Item, String)]) -> Result<Item, Error> {
        if let Expr::Identifier(id) = e {
            if let Some((item, _)) = items.iter().find(|(_, n)| *n == id.value) {
                return Ok(item.clone());
            }
        }
        if let Some(n) = position(e) {
            return match items.get(n.wrapping_sub(1)) {
                Some((item, _)) => Ok(item.clone()),
                None => err("GROUP BY", format!("position {n} is not a SELECT item")),
            };
        }
        item(e, "GROUP BY")
    }

    /// An ORDER BY key of an aggregate: a column of the answer by name, expression or position.
    fn output_column(&self, e: &Expr) -> Result<String, Error> {
        let text = match e {
            Expr::Identifier(id) => id.value.clone(),
            other => other.to_string(),
        };
        if let Some(n) = position(e) {
            if let Some(c) = self.columns.get(n.wrapping_sub(1)) {
                return Ok(c.name.clone());
            }
        }
        match self.columns.iter().find(|c| c.name == text) {
            Some(c) => Ok(c.name.clone()),
            None => err("ORDER BY", format!("{text} is not a column of the answer")),
        }
    }

    /// The key a rows query orders by when `e` names a SELECT alias or position.
    fn by_alias(&self, e: &Expr) -> Option<String> {
        if let Some(n) = position(e) {
            return self.columns.get(n.wrapping_sub(1)).map(|c| c.key.clone());
        }
        let Expr::Identifier(id) = e else { return None };
        self.columns
            .iter()
            .find(|c| c.name == id.value && c.name != c.key)
            .map(|c| c.key.clone())
    }

    fn push_column(&mut self, name: &str, key: &str) -> Result<(), Error> {
        if self.columns.iter().any(|c| c.name == name) {
            return err("SELECT", format!("two columns are called {name}; add AS"));
        }
        if self.columns.len() >= MAX_SELECT {
            return err("SELECT", format!("at most {MAX_SELECT} columns"));
        }
        self.columns.push(Column {
            name: name.to_owned(),
            key: key.to_owned(),
        });
        Ok(())
    }
}

fn refuse_query_extras(q: &ast::Query) -> Result<(), Error> {
    let extras = [
        (q.with.is_some(), "WITH"),
        (q.fetch.is_some(), "FETCH"),
        (!q.locks.is_empty(), "FOR UPDATE"),
        (q.for_clause.is_some(), "FOR"),
        (q.settings.is_some(), "SETTINGS"),
        (q.format_clause.is_some(), "FORMAT"),
        (!q.pipe_operators.is_empty(), "pipe operators"),
    ];
    match extras.iter().find(|(present, _)| *present) {
        Some((_, what)) => err(what, "not supported"),
        None => Ok(()),
    }
}

fn refuse_select_extras(s: &ast::Select) -> Result<(), Error> {
    let extras = [
        (s.distinct.is_some(), "DISTINCT"),
        (s.top.is_some(), "TOP"),
        (s.into.is_some(), "INTO"),
        (s.having.is_some(), "HAVING"),
        (s.qualify.is_some(), "QUALIFY"),
        (!s.named_window.is_empty(), "WINDOW"),
        (!s.lateral_views.is_empty(), "LATERAL VIEW"),
        (s.prewhere.is_some(), "PREWHERE"),
        (!s.connect_by.is_empty(), "CONNECT BY"),
        (
            !(s.cluster_by.is_empty() && s.distribute_by.is_empty() && s.sort_by.is_empty()),
            "CLUSTER/DISTRIBUTE/SORT BY",
        ),
        (s.exclude.is_some(), "EXCLUDE"),
        (s.select_modifiers.is_some(), "SELECT modifiers"),
        (s.value_table_mode.is_some(), "SELECT AS VALUE"),
        (!s.optimizer_hints.is_empty(), "optimizer hints"),
    ];
    match extras.iter().find(|(present, _)| *present) {
        Some((_, what)) => err(what, "not supported"),
        None => Ok(()),
    }
}

/// FROM: one or more datasets, `"owner/name"` or `owner.name`; several are read as one (their
/// rows together), not joined.
fn from(tables: &[ast::TableWithJoins]) -> Result<Vec<String>, Error> {
    if tables.is_empty() {
        return err("FROM", "name a dataset, e.g. FROM \"hospital/flu\"");
    }
    tables
        .iter()
        .map(|t| {
            if !t.joins.is_empty() {
                return err(
                    "JOIN",
                    "not supported: datasets listed in FROM are read as one, not joined",
                );
            }
            let TableFactor::Table { name, .. } = &t.relation else {
                return err("FROM", "datasets only (no subqueries or table functions)");
            };
            if t.relation.to_string() != name.to_string() {
                return err(
                    "FROM",
                    format!(
                        "{}: aliases and table options are not supported",
                        t.relation
                    ),
                );
            }
            let parts: Vec<String> = name
                .0
                .iter()
                .map(|p| p.as_ident().map(|i| i.value.clone()))
                .collect::<Option<_>>()
                .unwrap_or_default();
            let id = parts.join("/");
            match DatasetId::parse(&id) {
                Ok(_) if (1..=2).contains(&parts.len()) => Ok(id),
                Ok(_) => err(
                    "FROM",
                    format!("{name}: a dataset is \"owner/name\" or owner.name"),
                ),
                Err(e) => err("FROM", format!("{name}: {e}")),
            }
        })
        .collect()
}

fn limit(l: Option<&LimitClause>) -> Result<Option<usize>, Error> {
    match l {
        None => Ok(None),
        Some(LimitClause::LimitOffset {
            limit: Some(e),
            offset: None,
            limit_by,
        }) if limit_by.is_empty() => match position(e) {
            Some(n) if n > 0 => Ok(Some(n)),
            _ => err("LIMIT", "a positive whole number"),
        },
        Some(_) => err("LIMIT", "LIMIT n only (no OFFSET, LIMIT ALL or LIMIT BY)"),
    }
}

fn order_keys(q: &ast::Query) -> Result<Vec<(&Expr, bool)>, Error> {
    let Some(o) = &q.order_by else {
        return Ok(Vec::new());
    };
    let OrderByKind::Expressions(keys) = &o.kind else {
        return err("ORDER BY", "ORDER BY ALL is not supported");
    };
    if o.interpolate.is_some() {
        return err("ORDER BY", "INTERPOLATE is not supported");
    }
    keys.iter()
        .map(|k| {
            if k.with_fill.is_some() || k.options.nulls_first.is_some() {
                return err(
                    "ORDER BY",
                    "NULLS FIRST/LAST and WITH FILL are not supported (missing values come last)",
                );
            }
            let desc = match &k.options.sort {
                None | Some(ast::OrderBySort::Asc) => false,
                Some(ast::OrderBySort::Desc) => true,
                Some(_) => return err("ORDER BY", "ASC or DESC"),
            };
            Ok((&k.expr, desc))
        })
        .collect()
}

/// SELECT items and their answer names; empty for `*`.
fn select_items(items: &[SelectItem]) -> Result<Vec<(Item, String)>, Error> {
    if let [SelectItem::Wildcard(w)] = items {
        if SelectItem::Wildcard(w.clone()).to_string() == "*" {
            return Ok(Vec::new());
        }
    }
    items
        .iter()
        .map(|i| match i {
            SelectItem::UnnamedExpr(e) => {
                let name = match e {
                    Expr::Identifier(id) => id.value.clone(),
                    Expr::CompoundIdentifier(ids) => dotted(ids),
                    other => other.to_string(),
                };
                Ok((item(e, "SELECT")?, name))
            }
            SelectItem::ExprWithAlias { expr, alias } => {
                Ok((item(expr, "SELECT")?, alias.value.clone()))
            }
            other => err(
                "SELECT",
                format!(
                    "{}: * stands alone (whole records); otherwise name columns",
                    shown(other)
                ),
            ),
        })
        .collect()
}

/// A column, `segment(N)`, `bucket('D')` or an aggregate.
fn item(e: &Expr, at: &str) -> Result<Item, Error> {
    let Expr::Function(f) = e else {
        return field(e, at).map(Item::Field);
    };
    let name = f.name.to_string().to_lowercase();
    let args = plain_args(f, at)?;
    match (name.as_str(), args.as_slice()) {
        ("count", [None]) => Ok(Item::Measure("count".into())),
        ("count", _) => err(
            at,
            "count(*) counts rows; count(field) and count(DISTINCT ..) are not supported",
        ),
        ("sum" | "avg" | "min" | "max", [Some(arg)]) => {
            let f = data_field(&field(arg, at)?, at)?;
            Ok(Item::Measure(format!("{name}:{f}")))
        }
        ("segment", [Some(arg)]) => match position(arg) {
            Some(n) => Ok(Item::Segment(n)),
            None => err(at, "segment(N): N is a segment index, 0, 1, 2..."),
        },
        ("bucket", [Some(Expr::Value(v))]) => match &v.value {
            Value::SingleQuotedString(d) => {
                super::aggregate::parse_duration(d).or_else(|e| err(at, e))?;
                Ok(Item::Bucket(d.clone()))
            }
            _ => err(at, "bucket('1d'): a duration such as '15m', '1h' or '1d'"),
        },
        _ => err(
            at,
            format!(
                "{}: the functions are count(*), sum, avg, min, max, segment(N) and bucket('1d')",
                shown(e)
            ),
        ),
    }
}

/// A function's arguments: `None` for `*`.
fn plain_args<'a>(f: &'a ast::Function, at: &str) -> Result<Vec<Option<&'a Expr>>, Error> {
    let plain = !f.uses_odbc_syntax
        && matches!(f.parameters, FunctionArguments::None)
        && f.within_group.is_empty()
        && f.filter.is_none()
        && f.null_treatment.is_none()
        && f.over.is_none();
    let FunctionArguments::List(list) = &f.args else {
        return err(at, format!("{}: arguments in parentheses", shown(f)));
    };
    if !plain || list.duplicate_treatment.is_some() || !list.clauses.is_empty() {
        return err(
            at,
            format!(
                "{}: DISTINCT, FILTER, OVER and other modifiers are not supported",
                shown(f)
            ),
        );
    }
    list.args
        .iter()
        .map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(Some(e)),
            FunctionArg::Unnamed(FunctionArgExpr::Wildcard) => Ok(None),
            other => err(
                at,
                format!("{}: not supported as an argument", shown(other)),
            ),
        })
        .collect()
}

/// A column name: `cases`, `patient.age`, `"data.x"`.
fn field(e: &Expr, at: &str) -> Result<String, Error> {
    let f = match e {
        Expr::Identifier(id) => id.value.clone(),
        Expr::CompoundIdentifier(ids) => dotted(ids),
        Expr::Nested(inner) => return field(inner, at),
        other => return err(at, format!("{}: a column name was expected", shown(other))),
    };
    let ok = !f.is_empty()
        && f.split('.').all(|s| !s.is_empty())
        && f.chars().all(|c| c.is_alphanumeric() || "_-.".contains(c));
    if !ok {
        return err(
            at,
            format!("{f:?}: column names are letters, digits, _, - and dots"),
        );
    }
    Ok(f)
}

/// A field that groups and measures read: a data field, not a record's own `id`, `name`, `time`
/// or `dataset`.
fn data_field(f: &str, at: &str) -> Result<String, Error> {
    let hint = match f {
        "time" => "group time with bucket('1d')",
        "name" => "group names with segment(N)",
        "id" | "dataset" => "it cannot be grouped or measured",
        _ => return Ok(f.to_owned()),
    };
    err(
        at,
        format!("{f} is the record's own {f}: {hint}; a data field called {f} is data.{f}"),
    )
}

/// A part of the statement as an error message shows it: at most 60 characters.
fn shown(part: &impl std::fmt::Display) -> String {
    let text = part.to_string();
    match text.char_indices().nth(60) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

fn dotted(ids: &[ast::Ident]) -> String {
    ids.iter()
        .map(|i| i.value.as_str())
        .collect::<Vec<_>>()
        .join(".")
}

/// A whole number literal.
fn position(e: &Expr) -> Option<usize> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse().ok(),
            _ => None,
        },
        _ => None,
    }
}

impl Translation {
    /// A row of the view query's answer with the statement's column names.
    pub fn row(&self, v: Json) -> Json {
        if self.columns.is_empty() {
            return v;
        }
        let Json::Object(m) = &v else { return v };
        Json::Object(
            self.columns
                .iter()
                .map(|c| (c.name.clone(), m.get(&c.key).cloned().unwrap_or(Json::Null)))
                .collect(),
        )
    }

    /// The answer's groups: named by the statement's columns, ordered, limited.
    pub fn groups(&self, groups: Vec<Map<String, Json>>) -> Vec<Json> {
        let mut rows: Vec<Json> = groups
            .into_iter()
            .map(|g| self.row(Json::Object(g)))
            .collect();
        if !self.group_order.is_empty() {
            rows.sort_by(|a, b| {
                self.group_order
                    .iter()
                    .map(|(col, desc)| {
                        let o = super::aggregate::cmp_value(&a[col], &b[col]);
                        if *desc {
                            o.reverse()
                        } else {
                            o
                        }
                    })
                    .find(|o| o.is_ne())
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
        }
        rows.truncate(self.group_limit.unwrap_or(MAX_GROUPS));
        rows
    }

    /// The answer's column names (`SELECT *`: the fields of a whole record).
    pub fn column_names(&self) -> Vec<String> {
        if self.columns.is_empty() {
            return ["dataset", "id", "name", "time", "data"]
                .map(String::from)
                .to_vec();
        }
        self.columns.iter().map(|c| c.name.clone()).collect()
    }
}

#[cfg(test)]
#[path = "sql_tests.rs"]
mod tests;
