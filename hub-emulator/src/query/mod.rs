//! The subset of IoT Hub's query language a back end uses on device twins.
//!
//! ```text
//! SELECT [TOP n] * | <item> [AS alias] [, …] FROM devices [WHERE <condition>] [GROUP BY <path>]
//! <item>      ::= <path> | COUNT() | SUM(<path>) | AVG(<path>) | MIN(<path>) | MAX(<path>)
//! <condition> ::= <condition> OR <condition> | <condition> AND <condition> | NOT <condition>
//!               | <operand> (= | != | <> | < | <= | > | >=) <operand>
//!               | <operand> [IN | NIN] [<constant>, …] | ( <condition> ) | <operand>
//! <operand>   ::= <path> | <constant> | IS_DEFINED(<path>) | IS_NULL(…) | IS_STRING(…) | …
//!               | STARTS_WITH(a, b) | ENDS_WITH(a, b) | CONTAINS(a, b)
//! <path>      ::= name ( .name | ['quoted name'] | [index] )*
//! <constant>  ::= 'string' | "string" | number | 0xHEX | true | false | null | undefined
//! ```
//!
//! Keywords and function names are case-insensitive; property names are case-sensitive except
//! the first one of a path (the twin's system properties: `DeviceId` finds `deviceId`), as the
//! hub does. Queries are at most 8192 characters. Grouped results hold one row per distinct value
//! of the grouped property, `{"<leaf name or alias>": value, "<count alias>": n}`, in order of
//! first appearance.

mod eval;
mod lexer;
mod parser;

use serde_json::Value;

/// Longest query IoT Hub accepts, in characters.
pub const MAX_QUERY_CHARS: usize = 8192;

/// A query that did not parse: where (character offset from 0) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("query error at position {position}: {message}")]
pub struct QueryError {
    /// Character (not byte) offset of the offending token in the query text.
    pub position: usize,
    /// What was expected or what is wrong.
    pub message: String,
}

impl QueryError {
    pub(crate) fn new(position: usize, message: impl Into<String>) -> Self {
        Self {
            position,
            message: message.into(),
        }
    }
}

/// A parsed query, ready to run over twin documents.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    ast: parser::Ast,
}

impl Query {
    /// Parses `text`; errors carry the character position of the offending token.
    pub fn parse(text: &str) -> Result<Self, QueryError> {
        if text.chars().nth(MAX_QUERY_CHARS).is_some() {
            return Err(QueryError::new(
                MAX_QUERY_CHARS,
                format!("query longer than {MAX_QUERY_CHARS} characters"),
            ));
        }
        let tokens = lexer::tokenize(text)?;
        let ast = parser::Parser::new(tokens).query()?;
        Ok(Self { ast })
    }

    /// Runs the query over service-API twin documents (`deviceId`, `etag`, `status`,
    /// `connectionState`, `lastActivityTime`, `tags`, `properties.desired`,
    /// `properties.reported`, …) and returns the result rows.
    pub fn execute(&self, twins: &[Value]) -> Vec<Value> {
        eval::execute(&self.ast, twins)
    }

    /// Whether the rows are whole twin documents (`SELECT *`) rather than projections.
    pub fn returns_documents(&self) -> bool {
        self.ast.select == parser::Select::Star
    }
}
