//! Configuration errors: each names where (`file:line:column`), what (section and field) and
//! what was expected.

use std::fmt;
use std::path::PathBuf;

/// A place in a configuration file (1-based line and column, columns count characters).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// The file as shown to the user: relative to the directory of the main configuration
    /// file when it lies below it (`config.d/10-meters.toml`), else the full path.
    pub file: PathBuf,
    /// Line, from 1.
    pub line: u32,
    /// Column in characters, from 1.
    pub column: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// One problem with the configuration (or with a credential it names).
///
/// Displays as `file:line:col: context: field: message`, leaving out the parts that do not
/// apply, e.g.
/// `config.d/10-meters.toml:14:9: device "meter-01": history_max_age: expected a duration like "5s", got "fast"`.
/// Never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where, when the problem is at a place in a file (`None` e.g. for an unreadable file,
    /// whose path is then in `message`).
    pub location: Option<Location>,
    /// The section: `gateway`, `hub`, `device "meter-01"`, `device #2` (no id), or `None`
    /// at the top level.
    pub context: Option<String>,
    /// The field, dotted below the section (`backoff.initial`), if the problem has one.
    pub field: Option<String>,
    /// What is wrong and what was expected.
    pub message: String,
}

impl ConfigError {
    /// An error at `location` (if any) without section or field.
    pub fn new(location: Option<Location>, message: impl Into<String>) -> Self {
        Self {
            location,
            context: None,
            field: None,
            message: message.into(),
        }
    }

    /// An error about `field` of section `context`.
    pub fn field(
        location: Option<Location>,
        context: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            location,
            context: Some(context.into()).filter(|c: &String| !c.is_empty()),
            field: Some(field.into()).filter(|f: &String| !f.is_empty()),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(location) = &self.location {
            write!(f, "{location}: ")?;
        }
        if let Some(context) = &self.context {
            write!(f, "{context}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found, in file order. Displays one error per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The errors.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none (a `ConfigErrors` returned as `Err` never is).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        Self(vec![error])
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
