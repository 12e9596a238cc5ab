//! Evaluation of a parsed query over twin documents.
//!
//! Values follow the query language's three-valued logic: an expression yields a JSON value or
//! `undefined` (`None`). A missing property is `undefined`; comparing values of different types
//! (or objects and arrays) is `undefined`; `NOT undefined` is `undefined`; a document is selected
//! only when the condition is Boolean `true`.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use super::parser::{Agg, Ast, CmpOp, Expr, Func, Item, ItemKind, Path, Seg, Select};

pub(crate) fn execute(ast: &Ast, twins: &[Value]) -> Vec<Value> {
    let matched: Vec<&Value> = twins
        .iter()
        .filter(|t| {
            ast.filter
                .as_ref()
                .is_none_or(|f| eval(f, t) == Some(Value::Bool(true)))
        })
        .collect();
    let mut rows = match (&ast.select, &ast.group_by) {
        (Select::Star, _) => matched.into_iter().cloned().collect(),
        (Select::Items(items), Some(group)) => grouped(items, group, &matched),
        (Select::Items(items), None) => {
            if items.iter().any(|i| matches!(i.kind, ItemKind::Agg(..))) {
                vec![row(items, None, &matched)]
            } else {
                matched
                    .iter()
                    .map(|t| row(items, Some(t), std::slice::from_ref(t)))
                    .collect()
            }
        }
    };
    if let Some(top) = ast.top {
        rows.truncate(top);
    }
    rows
}

/// One row per distinct value of `group` (in order of first appearance); devices without the
/// property form one group whose row lacks the grouped field.
fn grouped(items: &[Item], group: &Path, matched: &[&Value]) -> Vec<Value> {
    let mut groups: Vec<(Option<&Value>, Vec<&Value>)> = Vec::new();
    for twin in matched {
        let key = resolve(twin, group).map(|(v, _)| v);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, members)) => members.push(twin),
            None => groups.push((key, vec![twin])),
        }
    }
    let projects_group = items
        .iter()
        .any(|i| matches!(&i.kind, ItemKind::Path(p) if p == group));
    groups
        .into_iter()
        .map(|(key, members)| {
            let mut out = row(items, members.first().copied(), &members);
            if !projects_group && let (Some(v), Value::Object(map)) = (key, &mut out) {
                map.insert(leaf_name(members[0], group), v.clone());
            }
            out
        })
        .collect()
}

/// Builds one output row: paths are read from `sample` (a member of the group), aggregates are
/// computed over `members`.
fn row(items: &[Item], sample: Option<&Value>, members: &[&Value]) -> Value {
    let mut out = Map::new();
    let mut unnamed = 0;
    for item in items {
        let (name, value) = match &item.kind {
            ItemKind::Path(p) => {
                let value = sample.and_then(|s| resolve(s, p)).map(|(v, _)| v.clone());
                let name = item
                    .alias
                    .clone()
                    .unwrap_or_else(|| sample.map_or_else(|| last_key(p), |s| leaf_name(s, p)));
                (name, value)
            }
            ItemKind::Agg(agg, arg) => {
                let name = item.alias.clone().unwrap_or_else(|| {
                    unnamed += 1;
                    format!("${unnamed}")
                });
                (name, aggregate(*agg, arg.as_ref(), members))
            }
        };
        if let Some(v) = value {
            out.insert(name, v);
        }
    }
    Value::Object(out)
}

fn aggregate(agg: Agg, arg: Option<&Path>, members: &[&Value]) -> Option<Value> {
    if agg == Agg::Count {
        return Some(Value::from(members.len()));
    }
    let path = arg.expect("the parser requires an argument for SUM, AVG, MIN and MAX");
    let numbers: Vec<&serde_json::Number> = members
        .iter()
        .filter_map(|m| resolve(m, path))
        .filter_map(|(v, _)| v.as_number())
        .collect();
    let floats = numbers.iter().filter_map(|n| n.as_f64());
    match agg {
        Agg::Count => unreachable!("handled above"),
        Agg::Sum => {
            let ints: Option<Vec<i64>> = numbers.iter().map(|n| n.as_i64()).collect();
            match ints.and_then(|v| v.into_iter().try_fold(0i64, i64::checked_add)) {
                Some(sum) => Some(Value::from(sum)),
                None => Some(Value::from(floats.sum::<f64>())),
            }
        }
        Agg::Avg => {
            (!numbers.is_empty()).then(|| Value::from(floats.sum::<f64>() / numbers.len() as f64))
        }
        Agg::Min => numbers
            .iter()
            .min_by(|a, b| num_cmp(a, b))
            .map(|n| Value::Number((*n).clone())),
        Agg::Max => numbers
            .iter()
            .max_by(|a, b| num_cmp(a, b))
            .map(|n| Value::Number((*n).clone())),
    }
}

fn num_cmp(a: &serde_json::Number, b: &serde_json::Number) -> Ordering {
    a.as_f64()
        .partial_cmp(&b.as_f64())
        .unwrap_or(Ordering::Equal)
}

/// The output name of a projected path: its last key, spelled as in the document when the
/// top-level key matched case-insensitively (`DeviceId` → `deviceId`).
fn leaf_name(doc: &Value, path: &Path) -> String {
    match resolve(doc, path) {
        Some((_, Some(key))) => key.to_owned(),
        _ => last_key(path),
    }
}

fn last_key(path: &Path) -> String {
    path.0
        .iter()
        .rev()
        .find_map(|s| match s {
            Seg::Key(k) => Some(k.clone()),
            Seg::Index(_) => None,
        })
        .unwrap_or_default()
}

/// Follows `path` into `doc`. The first key also matches case-insensitively, as IoT Hub's
/// system properties do (`DeviceId`, `ConnectionState`). Returns the value and the last key as
/// spelled in the document.
fn resolve<'a>(doc: &'a Value, path: &Path) -> Option<(&'a Value, Option<&'a str>)> {
    let mut cur = doc;
    let mut name = None;
    for (i, seg) in path.0.iter().enumerate() {
        match (seg, cur) {
            (Seg::Key(k), Value::Object(map)) => {
                let (key, value) = map.get_key_value(k.as_str()).or_else(|| {
                    (i == 0)
                        .then(|| map.iter().find(|(key, _)| key.eq_ignore_ascii_case(k)))
                        .flatten()
                })?;
                cur = value;
                name = Some(key.as_str());
            }
            (Seg::Index(n), Value::Array(items)) => {
                cur = items.get(*n)?;
            }
            _ => return None,
        }
    }
    Some((cur, name))
}

fn eval(expr: &Expr, doc: &Value) -> Option<Value> {
    match expr {
        Expr::Const(c) => c.clone(),
        Expr::Path(p) => resolve(doc, p).map(|(v, _)| v.clone()),
        Expr::Not(e) => match eval(e, doc) {
            Some(Value::Bool(b)) => Some(Value::Bool(!b)),
            _ => None,
        },
        Expr::And(a, b) => match (truth(eval(a, doc).as_ref()), truth(eval(b, doc).as_ref())) {
            (Some(false), _) | (_, Some(false)) => Some(Value::Bool(false)),
            (Some(true), Some(true)) => Some(Value::Bool(true)),
            _ => None,
        },
        Expr::Or(a, b) => match (truth(eval(a, doc).as_ref()), truth(eval(b, doc).as_ref())) {
            (Some(true), _) | (_, Some(true)) => Some(Value::Bool(true)),
            (Some(false), Some(false)) => Some(Value::Bool(false)),
            _ => None,
        },
        Expr::Cmp(op, a, b) => {
            let ord = order(&eval(a, doc)?, &eval(b, doc)?)?;
            let hit = match op {
                CmpOp::Eq => ord == Ordering::Equal,
                CmpOp::Ne => ord != Ordering::Equal,
                CmpOp::Lt => ord == Ordering::Less,
                CmpOp::Le => ord != Ordering::Greater,
                CmpOp::Gt => ord == Ordering::Greater,
                CmpOp::Ge => ord != Ordering::Less,
            };
            Some(Value::Bool(hit))
        }
        Expr::In {
            expr,
            list,
            negated,
        } => {
            let v = eval(expr, doc)?;
            if v.is_object() || v.is_array() {
                return None;
            }
            let found = list.iter().any(|c| order(&v, c) == Some(Ordering::Equal));
            Some(Value::Bool(found != *negated))
        }
        Expr::Call(func, args) => call(*func, args, doc),
    }
}

fn truth(v: Option<&Value>) -> Option<bool> {
    v.and_then(Value::as_bool)
}

/// Orders two primitive values of the same type; anything else is incomparable (`None`).
fn order(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Null, Value::Null) => Some(Ordering::Equal),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => Some(x.cmp(&y)),
            _ => x.as_f64()?.partial_cmp(&y.as_f64()?),
        },
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn call(func: Func, args: &[Expr], doc: &Value) -> Option<Value> {
    let arg = |i: usize| eval(&args[i], doc);
    let is = |pred: fn(&Value) -> bool| Some(Value::Bool(arg(0).as_ref().is_some_and(pred)));
    match func {
        Func::IsDefined => Some(Value::Bool(arg(0).is_some())),
        Func::IsNull => is(Value::is_null),
        Func::IsBool => is(Value::is_boolean),
        Func::IsNumber => is(Value::is_number),
        Func::IsString => is(Value::is_string),
        Func::IsObject => is(Value::is_object),
        Func::IsArray => is(Value::is_array),
        Func::IsPrimitive => is(|v| !v.is_object() && !v.is_array()),
        Func::StartsWith | Func::EndsWith | Func::Contains => {
            let (Some(Value::String(s)), Some(Value::String(p))) = (arg(0), arg(1)) else {
                return None;
            };
            let hit = match func {
                Func::StartsWith => s.starts_with(&p),
                Func::EndsWith => s.ends_with(&p),
                _ => s.contains(&p),
            };
            Some(Value::Bool(hit))
        }
    }
}
