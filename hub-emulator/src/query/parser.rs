//! Recursive-descent parser for the IoT Hub query subset a back end uses.

use serde_json::Value;

use super::QueryError;
use super::lexer::{Tok, Token};

/// Deepest nesting of parentheses and `NOT`s accepted (keeps recursion bounded).
const MAX_NESTING: usize = 64;

/// One step of a property path.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// A property path into the twin document, e.g. `properties.reported.temperature`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Path(pub Vec<Seg>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Func {
    IsDefined,
    IsNull,
    IsBool,
    IsNumber,
    IsString,
    IsObject,
    IsArray,
    IsPrimitive,
    StartsWith,
    EndsWith,
    Contains,
}

impl Func {
    fn lookup(name: &str) -> Option<(Self, usize)> {
        let f = match name.to_ascii_uppercase().as_str() {
            "IS_DEFINED" => (Self::IsDefined, 1),
            "IS_NULL" => (Self::IsNull, 1),
            "IS_BOOL" => (Self::IsBool, 1),
            "IS_NUMBER" => (Self::IsNumber, 1),
            "IS_STRING" => (Self::IsString, 1),
            "IS_OBJECT" => (Self::IsObject, 1),
            "IS_ARRAY" => (Self::IsArray, 1),
            "IS_PRIMITIVE" => (Self::IsPrimitive, 1),
            "STARTS_WITH" => (Self::StartsWith, 2),
            "ENDS_WITH" => (Self::EndsWith, 2),
            "CONTAINS" => (Self::Contains, 2),
            _ => return None,
        };
        Some(f)
    }
}

/// An expression of the WHERE clause. `Const(None)` is `undefined`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    Const(Option<Value>),
    Path(Path),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
    In {
        expr: Box<Expr>,
        list: Vec<Value>,
        negated: bool,
    },
    Call(Func, Vec<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Agg {
    Count,
    Sum,
    Avg,
    Min,
    Max,
}

/// What one element of the SELECT list computes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ItemKind {
    Path(Path),
    Agg(Agg, Option<Path>),
}

/// One element of the SELECT list with its output name.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Item {
    pub kind: ItemKind,
    /// `AS alias`; otherwise the path's last key (or `$n` for an unnamed aggregate).
    pub alias: Option<String>,
    /// Character offset of the item in the query (for errors).
    pub pos: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Select {
    Star,
    Items(Vec<Item>),
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ast {
    pub top: Option<usize>,
    pub select: Select,
    pub filter: Option<Expr>,
    pub group_by: Option<Path>,
}

pub(crate) struct Parser {
    toks: Vec<Token>,
    at: usize,
    nesting: usize,
}

impl Parser {
    pub(crate) fn new(toks: Vec<Token>) -> Self {
        Self {
            toks,
            at: 0,
            nesting: 0,
        }
    }

    fn peek(&self) -> &Token {
        &self.toks[self.at.min(self.toks.len() - 1)]
    }

    fn next(&mut self) -> Token {
        let t = self.peek().clone();
        if self.at < self.toks.len() - 1 {
            self.at += 1;
        }
        t
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(&self.peek().tok, Tok::Ident(s) if s.eq_ignore_ascii_case(kw))
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        let hit = self.is_kw(kw);
        if hit {
            self.next();
        }
        hit
    }

    fn expect_kw(&mut self, kw: &str) -> Result<(), QueryError> {
        if self.eat_kw(kw) {
            Ok(())
        } else {
            Err(self.unexpected(&format!("expected {kw}")))
        }
    }

    fn is_sym(&self, sym: &str) -> bool {
        matches!(&self.peek().tok, Tok::Sym(s) if *s == sym)
    }

    fn eat_sym(&mut self, sym: &str) -> bool {
        let hit = self.is_sym(sym);
        if hit {
            self.next();
        }
        hit
    }

    fn expect_sym(&mut self, sym: &str) -> Result<(), QueryError> {
        if self.eat_sym(sym) {
            Ok(())
        } else {
            Err(self.unexpected(&format!("expected '{sym}'")))
        }
    }

    fn unexpected(&self, what: &str) -> QueryError {
        let t = self.peek();
        let found = match &t.tok {
            Tok::Ident(s) => format!("'{s}'"),
            Tok::Str(s) => format!("string {s:?}"),
            Tok::Num(n) => format!("number {n}"),
            Tok::Sym(s) => format!("'{s}'"),
            Tok::Eof => "end of query".to_owned(),
        };
        QueryError::new(t.pos, format!("{what}, found {found}"))
    }

    /// `SELECT [TOP n] <list> FROM devices [WHERE <cond>] [GROUP BY <path>]`
    pub(crate) fn query(&mut self) -> Result<Ast, QueryError> {
        self.expect_kw("SELECT")?;
        let top = if self.eat_kw("TOP") {
            let t = self.next();
            match t.tok {
                Tok::Num(n) if n.as_u64().is_some() => {
                    Some(usize::try_from(n.as_u64().expect("checked")).unwrap_or(usize::MAX))
                }
                _ => return Err(QueryError::new(t.pos, "TOP needs a non-negative integer")),
            }
        } else {
            None
        };
        let select_pos = self.peek().pos;
        let select = self.select_list()?;
        self.expect_kw("FROM")?;
        let from = self.next();
        match &from.tok {
            Tok::Ident(s) if s.eq_ignore_ascii_case("devices") => {}
            _ => {
                return Err(QueryError::new(from.pos, "only FROM devices is supported"));
            }
        }
        if self.is_sym(".") {
            return Err(QueryError::new(
                self.peek().pos,
                "only FROM devices is supported",
            ));
        }
        let filter = if self.eat_kw("WHERE") {
            Some(self.or_expr()?)
        } else {
            None
        };
        let group_by = if self.is_kw("GROUP") {
            self.next();
            self.expect_kw("BY")?;
            Some(self.path()?)
        } else {
            None
        };
        if self.peek().tok != Tok::Eof {
            return Err(self.unexpected("expected end of query"));
        }
        check_shape(&select, group_by.as_ref(), select_pos)?;
        Ok(Ast {
            top,
            select,
            filter,
            group_by,
        })
    }

    fn select_list(&mut self) -> Result<Select, QueryError> {
        if self.eat_sym("*") {
            return Ok(Select::Star);
        }
        let mut items = vec![self.select_item()?];
        while self.eat_sym(",") {
            items.push(self.select_item()?);
        }
        Ok(Select::Items(items))
    }

    fn select_item(&mut self) -> Result<Item, QueryError> {
        let t = self.peek().clone();
        let kind = match &t.tok {
            Tok::Ident(name)
                if self
                    .toks
                    .get(self.at + 1)
                    .is_some_and(|n| n.tok == Tok::Sym("(")) =>
            {
                let agg = match name.to_ascii_uppercase().as_str() {
                    "COUNT" => Agg::Count,
                    "SUM" => Agg::Sum,
                    "AVG" => Agg::Avg,
                    "MIN" => Agg::Min,
                    "MAX" => Agg::Max,
                    _ => {
                        return Err(QueryError::new(
                            t.pos,
                            format!("unknown aggregate function '{name}'"),
                        ));
                    }
                };
                self.next();
                self.expect_sym("(")?;
                let arg = if agg == Agg::Count {
                    None
                } else {
                    Some(self.path()?)
                };
                self.expect_sym(")")?;
                ItemKind::Agg(agg, arg)
            }
            Tok::Ident(_) => ItemKind::Path(self.path()?),
            _ => return Err(self.unexpected("expected '*', a property path or an aggregate")),
        };
        let alias = if self.eat_kw("AS") {
            let t = self.next();
            match t.tok {
                Tok::Ident(s) => Some(s),
                _ => return Err(QueryError::new(t.pos, "expected an alias after AS")),
            }
        } else {
            None
        };
        Ok(Item {
            kind,
            alias,
            pos: t.pos,
        })
    }

    /// `name ('.' name | '[' 'key' ']' | '[' n ']')*`
    fn path(&mut self) -> Result<Path, QueryError> {
        let first = match &self.peek().tok {
            Tok::Ident(s) if !is_reserved(s) => s.clone(),
            _ => return Err(self.unexpected("expected a property name")),
        };
        self.next();
        let mut segs = vec![Seg::Key(first)];
        loop {
            if self.eat_sym(".") {
                let t = self.next();
                match t.tok {
                    Tok::Ident(s) => segs.push(Seg::Key(s)),
                    _ => return Err(QueryError::new(t.pos, "expected a property name after '.'")),
                }
            } else if self.is_sym("[") {
                self.next();
                let t = self.next();
                match t.tok {
                    Tok::Str(s) => segs.push(Seg::Key(s)),
                    Tok::Num(n) if n.as_u64().is_some() => segs.push(Seg::Index(
                        usize::try_from(n.as_u64().expect("checked")).unwrap_or(usize::MAX),
                    )),
                    _ => {
                        return Err(QueryError::new(
                            t.pos,
                            "expected a quoted property name or an index inside '[ ]'",
                        ));
                    }
                }
                self.expect_sym("]")?;
            } else {
                return Ok(Path(segs));
            }
        }
    }

    fn enter(&mut self) -> Result<(), QueryError> {
        self.nesting += 1;
        if self.nesting > MAX_NESTING {
            return Err(QueryError::new(
                self.peek().pos,
                format!("expression nested deeper than {MAX_NESTING} levels"),
            ));
        }
        Ok(())
    }

    fn or_expr(&mut self) -> Result<Expr, QueryError> {
        let mut left = self.and_expr()?;
        while self.eat_kw("OR") {
            let right = self.and_expr()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and_expr(&mut self) -> Result<Expr, QueryError> {
        let mut left = self.not_expr()?;
        while self.eat_kw("AND") {
            let right = self.not_expr()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn not_expr(&mut self) -> Result<Expr, QueryError> {
        if self.eat_kw("NOT") {
            self.enter()?;
            let inner = self.not_expr()?;
            self.nesting -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr, QueryError> {
        let left = self.operand()?;
        let op = match &self.peek().tok {
            Tok::Sym("=") => Some(CmpOp::Eq),
            Tok::Sym("!=" | "<>") => Some(CmpOp::Ne),
            Tok::Sym("<") => Some(CmpOp::Lt),
            Tok::Sym("<=") => Some(CmpOp::Le),
            Tok::Sym(">") => Some(CmpOp::Gt),
            Tok::Sym(">=") => Some(CmpOp::Ge),
            Tok::Sym(s @ ("+" | "-" | "*" | "/" | "%")) => {
                return Err(QueryError::new(
                    self.peek().pos,
                    format!("arithmetic operator '{s}' is not supported in twin queries"),
                ));
            }
            _ => None,
        };
        if let Some(op) = op {
            self.next();
            let right = self.operand()?;
            return Ok(Expr::Cmp(op, Box::new(left), Box::new(right)));
        }
        let negated = if self.is_kw("NIN") {
            true
        } else if self.is_kw("IN") {
            false
        } else {
            return Ok(left);
        };
        self.next();
        let list_pos = self.peek().pos;
        let Some(Value::Array(list)) = self.constant()? else {
            return Err(QueryError::new(
                list_pos,
                "IN and NIN need an array constant like ['a', 'b']",
            ));
        };
        Ok(Expr::In {
            expr: Box::new(left),
            list,
            negated,
        })
    }

    fn operand(&mut self) -> Result<Expr, QueryError> {
        let t = self.peek().clone();
        match &t.tok {
            Tok::Sym("(") => {
                self.next();
                self.enter()?;
                let e = self.or_expr()?;
                self.nesting -= 1;
                self.expect_sym(")")?;
                Ok(e)
            }
            Tok::Ident(name) => {
                let upper = name.to_ascii_uppercase();
                let is_call = self
                    .toks
                    .get(self.at + 1)
                    .is_some_and(|n| n.tok == Tok::Sym("("));
                if is_call {
                    let Some((func, arity)) = Func::lookup(name) else {
                        return Err(QueryError::new(t.pos, format!("unknown function '{name}'")));
                    };
                    self.next();
                    self.next();
                    let mut args = Vec::new();
                    if !self.is_sym(")") {
                        self.enter()?;
                        args.push(self.or_expr()?);
                        while self.eat_sym(",") {
                            args.push(self.or_expr()?);
                        }
                        self.nesting -= 1;
                    }
                    self.expect_sym(")")?;
                    if args.len() != arity {
                        return Err(QueryError::new(
                            t.pos,
                            format!("{upper} takes {arity} argument(s), got {}", args.len()),
                        ));
                    }
                    return Ok(Expr::Call(func, args));
                }
                match upper.as_str() {
                    "TRUE" | "FALSE" | "NULL" | "UNDEFINED" => Ok(Expr::Const(self.constant()?)),
                    _ if is_reserved(name) => Err(self.unexpected("expected an operand")),
                    _ => Ok(Expr::Path(self.path()?)),
                }
            }
            Tok::Str(_) | Tok::Num(_) | Tok::Sym("[" | "-") => Ok(Expr::Const(self.constant()?)),
            _ => Err(self.unexpected("expected an operand")),
        }
    }

    /// A literal: string, number (optionally negative), true/false/null/undefined, or an array of
    /// constants. `None` is `undefined`.
    fn constant(&mut self) -> Result<Option<Value>, QueryError> {
        let t = self.next();
        match t.tok {
            Tok::Str(s) => Ok(Some(Value::String(s))),
            Tok::Num(n) => Ok(Some(Value::Number(n))),
            Tok::Sym("-") => {
                let n = self.next();
                match n.tok {
                    Tok::Num(n) => Ok(Some(negate(&n))),
                    _ => Err(QueryError::new(n.pos, "expected a number after '-'")),
                }
            }
            Tok::Sym("[") => {
                let mut items = Vec::new();
                if !self.eat_sym("]") {
                    loop {
                        let pos = self.peek().pos;
                        match self.constant()? {
                            Some(v) => items.push(v),
                            None => {
                                return Err(QueryError::new(
                                    pos,
                                    "undefined inside an array constant",
                                ));
                            }
                        }
                        if self.eat_sym("]") {
                            break;
                        }
                        self.expect_sym(",")?;
                    }
                }
                Ok(Some(Value::Array(items)))
            }
            Tok::Ident(s) => match s.to_ascii_uppercase().as_str() {
                "TRUE" => Ok(Some(Value::Bool(true))),
                "FALSE" => Ok(Some(Value::Bool(false))),
                "NULL" => Ok(Some(Value::Null)),
                "UNDEFINED" => Ok(None),
                _ => Err(QueryError::new(
                    t.pos,
                    format!("expected a constant, found '{s}'"),
                )),
            },
            Tok::Sym(s) => Err(QueryError::new(
                t.pos,
                format!("expected a constant, found '{s}'"),
            )),
            Tok::Eof => Err(QueryError::new(
                t.pos,
                "expected a constant, found end of query",
            )),
        }
    }
}

/// Keywords that cannot start a property path.
fn is_reserved(word: &str) -> bool {
    const RESERVED: [&str; 12] = [
        "SELECT", "FROM", "WHERE", "GROUP", "BY", "AS", "AND", "OR", "NOT", "IN", "NIN", "TOP",
    ];
    RESERVED.iter().any(|r| r.eq_ignore_ascii_case(word))
}

fn negate(n: &serde_json::Number) -> Value {
    if let Some(i) = n.as_i64() {
        Value::from(-i)
    } else {
        Value::from(-n.as_f64().unwrap_or(0.0))
    }
}

/// Checks that the SELECT list fits the GROUP BY clause (or its absence).
fn check_shape(select: &Select, group_by: Option<&Path>, pos: usize) -> Result<(), QueryError> {
    let Select::Items(items) = select else {
        return match group_by {
            Some(_) => Err(QueryError::new(
                pos,
                "SELECT * cannot be used with GROUP BY",
            )),
            None => Ok(()),
        };
    };
    let has_agg = items.iter().any(|i| matches!(i.kind, ItemKind::Agg(..)));
    for item in items {
        if let ItemKind::Path(p) = &item.kind {
            match group_by {
                Some(g) if g != p => {
                    return Err(QueryError::new(
                        item.pos,
                        "with GROUP BY, the SELECT list may hold only the grouped property and aggregates",
                    ));
                }
                None if has_agg => {
                    return Err(QueryError::new(
                        item.pos,
                        "a SELECT list mixing properties and aggregates needs GROUP BY",
                    ));
                }
                _ => {}
            }
        }
    }
    Ok(())
}
