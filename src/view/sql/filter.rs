//! WHERE: a statement's filter as the view query's segment filters, name prefix and conditions
//! (comparisons, IN, BETWEEN, IS [NOT] NULL under AND, OR and NOT).

use serde_json::Value as Json;
use sqlparser::ast::{self, BinaryOperator as B, Expr, UnaryOperator, Value};

use super::{err, field, item, shown, Error, Item};
use crate::view::condition::Where;
use crate::view::query::Predicate;

/// Collects the operands of a chain of `op` (AND or OR), through parentheses.
pub(super) fn flatten<'a>(e: &'a Expr, op: B, out: &mut Vec<&'a Expr>) {
    match e {
        Expr::BinaryOp { left, op: o, right } if *o == op => {
            flatten(left, op.clone(), out);
            flatten(right, op, out);
        }
        Expr::Nested(inner) if matches!(inner.as_ref(), Expr::BinaryOp { op: o, .. } if *o == op) => {
            flatten(inner, op, out)
        }
        other => out.push(other),
    }
}

/// `segment(N) = 'v'` (either way round), as the segment filter `N=v`.
pub(super) fn segment_filter(e: &Expr) -> Result<Option<String>, Error> {
    let Expr::BinaryOp {
        left,
        op: B::Eq,
        right,
    } = e
    else {
        return Ok(None);
    };
    let (n, value) = match (as_segment(left), as_segment(right)) {
        (Some(n), _) => (n, right),
        (None, Some(n)) => (n, left),
        (None, None) => return Ok(None),
    };
    match literal(value)? {
        Json::String(v) => Ok(Some(format!("{n}={v}"))),
        _ => err("WHERE", "segment(N) = 'value': a string"),
    }
}

/// `N` if `e` is `segment(N)`.
fn as_segment(e: &Expr) -> Option<usize> {
    match e {
        Expr::Function(_) => match item(e, "WHERE") {
            Ok(Item::Segment(n)) => Some(n),
            _ => None,
        },
        _ => None,
    }
}

/// `name LIKE 'a/b/%'`, as the name prefix `a/b`.
pub(super) fn name_prefix(e: &Expr) -> Result<Option<String>, Error> {
    let Expr::Like {
        negated: false,
        any: false,
        expr,
        pattern,
        escape_char: None,
    } = e
    else {
        return Ok(None);
    };
    if !matches!(expr.as_ref(), Expr::Identifier(id) if id.value == "name") {
        return Ok(None);
    }
    match literal(pattern)? {
        Json::String(p) if p.ends_with("/%") && !p[..p.len() - 1].contains(['%', '_']) => {
            Ok(Some(p[..p.len() - 2].to_owned()))
        }
        _ => err(
            "WHERE",
            "LIKE only as name LIKE 'a/b/%' (a name prefix, ANDed at the top)",
        ),
    }
}

/// A condition from a WHERE expression.
pub(super) fn condition(e: &Expr) -> Result<Where, Error> {
    match e {
        Expr::Nested(inner) => condition(inner),
        Expr::BinaryOp {
            op: op @ (B::And | B::Or),
            ..
        } => {
            let mut parts = Vec::new();
            flatten(e, op.clone(), &mut parts);
            let items = parts.into_iter().map(condition).collect::<Result<_, _>>()?;
            Ok(if *op == B::And {
                Where::All(items)
            } else {
                Where::Any(items)
            })
        }
        Expr::UnaryOp {
            op: UnaryOperator::Not,
            expr,
        } => Ok(Where::Not(Box::new(condition(expr)?))),
        Expr::BinaryOp { left, op, right } => comparison(left, op, right),
        Expr::IsNull(f) => predicate(&format!("{} is null", field(f, "WHERE")?)),
        Expr::IsNotNull(f) => predicate(&format!("{} is not null", field(f, "WHERE")?)),
        Expr::In {
            expr,
            target: ast::InTarget::List(list),
            negated,
            global: false,
        } => {
            let values = list.iter().map(literal).collect::<Result<Vec<_>, _>>()?;
            if values.iter().any(Json::is_null) {
                return err("WHERE", "NULL in an IN list never matches; write IS NULL");
            }
            let p = predicate(&format!(
                "{} in {}",
                field(expr, "WHERE")?,
                Json::Array(values)
            ))?;
            Ok(if *negated { Where::Not(Box::new(p)) } else { p })
        }
        Expr::Between {
            expr,
            negated,
            low,
            high,
        } => {
            let f = field(expr, "WHERE")?;
            let both = Where::All(vec![
                predicate(&format!("{f}>={}", literal(low)?))?,
                predicate(&format!("{f}<={}", literal(high)?))?,
            ]);
            Ok(if *negated {
                Where::Not(Box::new(both))
            } else {
                both
            })
        }
        other => err(
            "WHERE",
            format!(
                "{}: conditions are comparisons, IN, BETWEEN, IS [NOT] NULL joined by AND, OR, NOT",
                shown(other)
            ),
        ),
    }
}

/// `column OP literal` (either way round).
fn comparison(left: &Expr, op: &B, right: &Expr) -> Result<Where, Error> {
    let flip = |op: &B| match op {
        B::Lt => B::Gt,
        B::LtEq => B::GtEq,
        B::Gt => B::Lt,
        B::GtEq => B::LtEq,
        other => other.clone(),
    };
    if as_segment(left).or(as_segment(right)).is_some() {
        return err("WHERE", "segment(N) = 'v' only ANDed at the top of WHERE");
    }
    let (col, op, lit) = match (field(left, "WHERE"), field(right, "WHERE")) {
        (Ok(f), _) => (f, op.clone(), right),
        (Err(_), Ok(f)) => (f, flip(op), left),
        (Err(e), Err(_)) => return Err(e),
    };
    if col == "dataset" {
        return err("WHERE", "dataset is chosen in FROM, not in WHERE");
    }
    let sym = match op {
        B::Eq => "=",
        B::NotEq => "!=",
        B::Lt => "<",
        B::LtEq => "<=",
        B::Gt => ">",
        B::GtEq => ">=",
        other => return err("WHERE", format!("operator {other} is not supported")),
    };
    let value = literal(lit)?;
    if value.is_null() {
        return err(
            "WHERE",
            format!("{col} {sym} NULL is never true; write IS NULL or IS NOT NULL"),
        );
    }
    predicate(&format!("{col}{sym}{value}"))
}

/// A predicate string, checked to read back as written (a field name cannot hide an operator).
fn predicate(text: &str) -> Result<Where, Error> {
    match Predicate::parse(text) {
        Ok(_) => Ok(Where::Is(text.to_owned())),
        Err(e) => err("WHERE", e),
    }
}

/// A literal: a number, a 'string', TRUE/FALSE or NULL (a minus sign in front of a number).
fn literal(e: &Expr) -> Result<Json, Error> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => serde_json::from_str::<serde_json::Number>(n)
                .map(Json::Number)
                .or_else(|_| err("WHERE", format!("{n}: not a number"))),
            Value::SingleQuotedString(s) => Ok(Json::String(s.clone())),
            Value::Boolean(b) => Ok(Json::Bool(*b)),
            Value::Null => Ok(Json::Null),
            other => err(
                "WHERE",
                format!(
                    "{}: a number, a 'string', TRUE, FALSE or NULL",
                    shown(other)
                ),
            ),
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match literal(expr)? {
            Json::Number(n) => serde_json::from_str::<serde_json::Number>(&format!("-{n}"))
                .map(Json::Number)
                .or_else(|_| err("WHERE", "not a number")),
            _ => err("WHERE", "minus goes before a number"),
        },
        Expr::Nested(inner) => literal(inner),
        other => err(
            "WHERE",
            format!("{}: a literal value was expected", shown(other)),
        ),
    }
}
