//! Tokens of the IoT Hub query language, with their character offsets.

use serde_json::Number;

use super::QueryError;

/// One token. Keywords are identifiers; the parser compares them case-insensitively.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    Ident(String),
    Str(String),
    Num(Number),
    /// Punctuation and operators: `* , . ( ) [ ] = != <> < <= > >= - + / %`.
    Sym(&'static str),
    Eof,
}

/// A token and the character offset where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub tok: Tok,
    pub pos: usize,
}

pub(crate) fn tokenize(input: &str) -> Result<Vec<Token>, QueryError> {
    let chars: Vec<char> = input.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let tok = if c.is_alphabetic() || c == '_' || c == '$' {
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$')
            {
                i += 1;
            }
            Tok::Ident(chars[start..i].iter().collect())
        } else if c.is_ascii_digit() {
            let (n, end) = number(&chars, start)?;
            i = end;
            Tok::Num(n)
        } else if c == '\'' || c == '"' {
            let (s, end) = string(&chars, start)?;
            i = end;
            Tok::Str(s)
        } else {
            let next = chars.get(i + 1).copied();
            let (sym, len) = match (c, next) {
                ('!', Some('=')) => ("!=", 2),
                ('<', Some('>')) => ("<>", 2),
                ('<', Some('=')) => ("<=", 2),
                ('>', Some('=')) => (">=", 2),
                ('<', _) => ("<", 1),
                ('>', _) => (">", 1),
                ('=', _) => ("=", 1),
                ('*', _) => ("*", 1),
                (',', _) => (",", 1),
                ('.', _) => (".", 1),
                ('(', _) => ("(", 1),
                (')', _) => (")", 1),
                ('[', _) => ("[", 1),
                (']', _) => ("]", 1),
                ('-', _) => ("-", 1),
                ('+', _) => ("+", 1),
                ('/', _) => ("/", 1),
                ('%', _) => ("%", 1),
                _ => {
                    return Err(QueryError::new(
                        start,
                        format!("unexpected character {c:?}"),
                    ));
                }
            };
            i += len;
            Tok::Sym(sym)
        };
        out.push(Token { tok, pos: start });
    }
    out.push(Token {
        tok: Tok::Eof,
        pos: chars.len(),
    });
    Ok(out)
}

/// A decimal (`12`, `1.5`, `2e3`) or hexadecimal (`0x1F`) literal starting at `start`.
fn number(chars: &[char], start: usize) -> Result<(Number, usize), QueryError> {
    let mut i = start;
    if chars[i] == '0' && matches!(chars.get(i + 1), Some('x' | 'X')) {
        i += 2;
        let digits_start = i;
        while i < chars.len() && chars[i].is_ascii_hexdigit() {
            i += 1;
        }
        let digits: String = chars[digits_start..i].iter().collect();
        let value = i64::from_str_radix(&digits, 16)
            .map_err(|_| QueryError::new(start, "invalid hexadecimal literal"))?;
        return Ok((Number::from(value), end_of_literal(chars, i, start)?));
    }
    while i < chars.len() && chars[i].is_ascii_digit() {
        i += 1;
    }
    let mut integral = true;
    if chars.get(i) == Some(&'.') && chars.get(i + 1).is_some_and(char::is_ascii_digit) {
        integral = false;
        i += 1;
        while i < chars.len() && chars[i].is_ascii_digit() {
            i += 1;
        }
    }
    if matches!(chars.get(i), Some('e' | 'E')) {
        let mut j = i + 1;
        if matches!(chars.get(j), Some('+' | '-')) {
            j += 1;
        }
        if chars.get(j).is_some_and(char::is_ascii_digit) {
            integral = false;
            i = j;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
        }
    }
    let text: String = chars[start..i].iter().collect();
    let end = end_of_literal(chars, i, start)?;
    if integral && let Ok(v) = text.parse::<i64>() {
        return Ok((Number::from(v), end));
    }
    text.parse::<f64>()
        .ok()
        .and_then(Number::from_f64)
        .map(|n| (n, end))
        .ok_or_else(|| QueryError::new(start, format!("invalid number {text:?}")))
}

/// A number may not run straight into a name (`12abc`).
fn end_of_literal(chars: &[char], i: usize, start: usize) -> Result<usize, QueryError> {
    match chars.get(i) {
        Some(c) if c.is_alphanumeric() || *c == '_' || *c == '$' => {
            Err(QueryError::new(start, "invalid number literal"))
        }
        _ => Ok(i),
    }
}

/// A string literal in single or double quotes with the escapes `\'`, `\"`, `\\`, `\/`, `\b`,
/// `\f`, `\n`, `\r`, `\t` and `\uXXXX`.
fn string(chars: &[char], start: usize) -> Result<(String, usize), QueryError> {
    let quote = chars[start];
    let mut out = String::new();
    let mut i = start + 1;
    loop {
        let Some(&c) = chars.get(i) else {
            return Err(QueryError::new(start, "unterminated string literal"));
        };
        if c == quote {
            return Ok((out, i + 1));
        }
        if c != '\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let esc = chars
            .get(i + 1)
            .copied()
            .ok_or_else(|| QueryError::new(start, "unterminated string literal"))?;
        match esc {
            '\'' | '"' | '\\' | '/' => out.push(esc),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'u' => {
                let hex: String = chars.iter().skip(i + 2).take(4).collect();
                let code = (hex.len() == 4 && hex.chars().all(|h| h.is_ascii_hexdigit()))
                    .then(|| u32::from_str_radix(&hex, 16).ok())
                    .flatten()
                    .and_then(char::from_u32)
                    .ok_or_else(|| QueryError::new(i, "invalid \\u escape"))?;
                out.push(code);
                i += 4;
            }
            other => return Err(QueryError::new(i, format!("invalid escape \\{other}"))),
        }
        i += 2;
    }
}
