//! Paths into twin documents, for error messages that point at the offending member.

use std::fmt;

/// One step from a JSON value to one of its children.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// A member of an object.
    Key(String),
    /// An element of an array.
    Index(usize),
}

/// The location of a value inside a document: the steps from the document root.
///
/// Displays as `config.a[2].b`; keys that would make that form ambiguous (empty, or holding
/// `.`, `[`, `]`, `"`, whitespace or control characters) are shown quoted and escaped, e.g.
/// `["a.b"]`, `["a\u{85}"]`.
/// The empty path (the document root) displays as `<root>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Path(pub Vec<Segment>);

impl Path {
    /// The document root.
    pub fn root() -> Self {
        Self(Vec::new())
    }

    /// A path made only of object keys, e.g. `Path::from_keys(["config", "a"])`.
    pub fn from_keys<I, S>(keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self(keys.into_iter().map(|k| Segment::Key(k.into())).collect())
    }

    /// True for the document root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of steps from the root.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for the document root (same as [`Path::is_root`]).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// This path extended by one object key.
    #[must_use]
    pub fn key(&self, key: &str) -> Self {
        let mut out = self.clone();
        out.0.push(Segment::Key(key.to_owned()));
        out
    }

    /// This path extended by one array index.
    #[must_use]
    pub fn index(&self, index: usize) -> Self {
        let mut out = self.clone();
        out.0.push(Segment::Index(index));
        out
    }

    /// The RFC 6901 JSON pointer for this path, usable with [`serde_json::Value::pointer`].
    pub fn to_pointer(&self) -> String {
        let mut out = String::new();
        for segment in &self.0 {
            out.push('/');
            match segment {
                Segment::Key(key) => out.push_str(&key.replace('~', "~0").replace('/', "~1")),
                Segment::Index(index) => out.push_str(&index.to_string()),
            }
        }
        out
    }

    /// Writes the segments (without any root name) in the display form described on [`Path`].
    pub(crate) fn write_segments(
        &self,
        f: &mut fmt::Formatter<'_>,
        leading_dot: bool,
    ) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if is_plain(key) => {
                    if i > 0 || leading_dot {
                        f.write_str(".")?;
                    }
                    f.write_str(key)?;
                }
                // Rust's string escaping keeps control characters visible in logs.
                Segment::Key(key) => write!(f, "[{key:?}]")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// Keys that can be shown bare in a dotted path without ambiguity.
fn is_plain(key: &str) -> bool {
    !key.is_empty()
        && !key
            .chars()
            .any(|c| matches!(c, '.' | '[' | ']' | '"') || c.is_whitespace() || c.is_control())
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_root() {
            return f.write_str("<root>");
        }
        self.write_segments(f, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_dotted_with_indices_and_quotes_odd_keys() {
        let path = Path::from_keys(["config", "a"]).index(2).key("b.c").key("");
        assert_eq!(path.to_string(), r#"config.a[2]["b.c"][""]"#);
        assert_eq!(Path::root().to_string(), "<root>");
    }

    #[test]
    fn pointer_escapes_per_rfc6901() {
        let path = Path::from_keys(["a/b", "c~d"]).index(0);
        assert_eq!(path.to_pointer(), "/a~1b/c~0d/0");
        let doc = serde_json::json!({"a/b": {"c~d": [7]}});
        assert_eq!(doc.pointer(&path.to_pointer()), Some(&serde_json::json!(7)));
    }
}
