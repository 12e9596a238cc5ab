//! The configuration files as one spanned tree: each file is parsed into a tree whose every
//! key and value remembers its file, line and column; the trees are deep-merged in order, so
//! validation can name the exact place of every value, whichever file set it.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use super::error::{ConfigError, Location};

/// A position: index of the file in [`Sources`], 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Pos {
    pub file: usize,
    pub line: u32,
    pub column: u32,
}

/// The files read, in order, with the names shown to the user.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sources {
    /// The directory of the main configuration file: relative paths in the configuration
    /// are resolved against it, and file names are shown relative to it.
    pub base_dir: PathBuf,
    /// The files, in merge order.
    pub files: Vec<PathBuf>,
}

impl Sources {
    /// The location of `pos` for messages.
    pub fn location(&self, pos: Pos) -> Location {
        Location {
            file: self.display_path(&self.files[pos.file]),
            line: pos.line,
            column: pos.column,
        }
    }

    /// `path` relative to the base directory when it lies below it.
    pub fn display_path(&self, path: &Path) -> PathBuf {
        path.strip_prefix(&self.base_dir)
            .ok()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| path.to_path_buf(), Path::to_path_buf)
    }

    /// `path` resolved against the base directory when relative.
    pub fn resolve(&self, path: &str) -> PathBuf {
        self.base_dir.join(path)
    }
}

/// Byte offsets of line starts, to turn parser spans into line and column.
#[derive(Debug)]
pub(crate) struct LineIndex<'a> {
    source: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub fn new(source: &'a str) -> Self {
        let starts = std::iter::once(0)
            .chain(source.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { source, starts }
    }

    /// 1-based line and character column of byte `offset`.
    pub fn line_col(&self, offset: usize) -> (u32, u32) {
        let offset = offset.min(self.source.len());
        let line = self.starts.partition_point(|&s| s <= offset) - 1;
        let start = self.starts[line];
        // Spans fall on char boundaries; be lenient anyway rather than panic on a bad one.
        let column = self
            .source
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (
            u32::try_from(line + 1).unwrap_or(u32::MAX),
            u32::try_from(column + 1).unwrap_or(u32::MAX),
        )
    }
}

/// A value with the position of its first character.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub value: Value,
    pub pos: Pos,
}

/// A table entry: the value and where its key was written.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub key_pos: Pos,
    pub node: Node,
}

/// A table: key -> entry.
pub(crate) type Table = BTreeMap<String, Entry>;

/// A TOML value, owned.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    String(String),
    /// An integer; `None` when it does not fit an `i64` (kept to report it).
    Integer(Option<i64>),
    Float(f64),
    Boolean(bool),
    Datetime(String),
    Array(Vec<Node>),
    Table(Table),
}

impl Value {
    /// How a value is described in "expected X, got Y" messages. Strings are quoted; the
    /// callers never use this for secrets.
    pub fn describe(&self) -> String {
        match self {
            Self::String(s) => format!("{s:?}"),
            Self::Integer(Some(i)) => i.to_string(),
            Self::Integer(None) => "an integer out of range".to_owned(),
            Self::Float(f) => f.to_string(),
            Self::Boolean(b) => b.to_string(),
            Self::Datetime(d) => format!("the date-time {d}"),
            Self::Array(_) => "an array".to_owned(),
            Self::Table(_) => "a table".to_owned(),
        }
    }

    pub fn as_table(&self) -> Option<&Table> {
        match self {
            Self::Table(t) => Some(t),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }
}

/// Parses one file's text into a tree, collecting syntax errors (all of them, best effort).
pub(crate) fn parse_file(
    text: &str,
    file: usize,
    sources: &Sources,
) -> (Table, Vec<(Option<Pos>, ConfigError)>) {
    let index = LineIndex::new(text);
    let (root, errors) = DeTable::parse_recoverable(text);
    let errors = errors
        .into_iter()
        .map(|e| {
            let pos = e.span().map(|span| at(&index, file, span.start));
            let message = format!("invalid TOML: {}", e.message().replace('\n', " "));
            (
                pos,
                ConfigError::new(pos.map(|p| sources.location(p)), message),
            )
        })
        .collect();
    (convert_table(root.get_ref(), &index, file), errors)
}

fn at(index: &LineIndex<'_>, file: usize, offset: usize) -> Pos {
    let (line, column) = index.line_col(offset);
    Pos { file, line, column }
}

fn convert_table(table: &DeTable<'_>, index: &LineIndex<'_>, file: usize) -> Table {
    table
        .iter()
        .map(|(key, value)| {
            let entry = Entry {
                key_pos: at(index, file, key.span().start),
                node: convert(
                    value.get_ref(),
                    at(index, file, value.span().start),
                    index,
                    file,
                ),
            };
            (key.get_ref().to_string(), entry)
        })
        .collect()
}

fn convert(value: &DeValue<'_>, pos: Pos, index: &LineIndex<'_>, file: usize) -> Node {
    let value = match value {
        DeValue::String(s) => Value::String(s.to_string()),
        DeValue::Integer(i) => {
            Value::Integer(i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok())
        }
        DeValue::Float(f) => Value::Float(f.as_str().replace('_', "").parse().unwrap_or(f64::NAN)),
        DeValue::Boolean(b) => Value::Boolean(*b),
        DeValue::Datetime(d) => Value::Datetime(d.to_string()),
        DeValue::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| convert(v.get_ref(), at(index, file, v.span().start), index, file))
                .collect(),
        ),
        DeValue::Table(t) => Value::Table(convert_table(t, index, file)),
    };
    Node { value, pos }
}

/// Top-level arrays of tables whose entries a drop-in matches by a key field instead of
/// appending: `[[device]]` by `id` (and, with the field side, `[[bus]]` by `name`).
const KEYED_ARRAYS: &[(&str, &str)] = &[("device", "id"), ("bus", "name")];

/// Merges a later file's root table into the tree built so far.
///
/// Tables merge key by key, recursively; any other value replaces the earlier one. The
/// entries of a keyed array (`[[device]]`) merge into the earlier entry with the same key
/// (`id`) or are appended; an entry whose key repeats within the same file is appended as
/// is, so that validation reports the duplicate.
pub(crate) fn merge_root(base: &mut Table, incoming: Table) {
    for (key, entry) in incoming {
        let keyed = KEYED_ARRAYS
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, f)| *f);
        match (base.get_mut(&key), keyed) {
            (Some(existing), Some(id_field)) => {
                match (&mut existing.node.value, entry.node.value) {
                    (Value::Array(old), Value::Array(new)) => merge_keyed(old, new, id_field),
                    (_, value) => {
                        *existing = Entry {
                            key_pos: entry.key_pos,
                            node: Node {
                                value,
                                pos: entry.node.pos,
                            },
                        };
                    }
                }
            }
            (Some(existing), None) => merge_entry(existing, entry),
            (None, _) => {
                base.insert(key, entry);
            }
        }
    }
}

fn key_of<'n>(node: &'n Node, id_field: &str) -> Option<&'n str> {
    node.value.as_table()?.get(id_field)?.node.value.as_str()
}

fn merge_keyed(old: &mut Vec<Node>, new: Vec<Node>, id_field: &str) {
    let mut seen_here = HashSet::new();
    for item in new {
        let id = key_of(&item, id_field).map(str::to_owned);
        let target = id
            .as_ref()
            .filter(|id| seen_here.insert((*id).clone()))
            .and_then(|id| {
                old.iter_mut()
                    .find(|o| key_of(o, id_field) == Some(id.as_str()))
            });
        match (target, item.value) {
            (Some(target), Value::Table(fields)) => {
                if let Value::Table(target_fields) = &mut target.value {
                    for (k, e) in fields {
                        if k == id_field {
                            continue; // equal by construction; keep where it was first defined
                        }
                        match target_fields.get_mut(&k) {
                            Some(existing) => merge_entry(existing, e),
                            None => {
                                target_fields.insert(k, e);
                            }
                        }
                    }
                }
            }
            (_, value) => old.push(Node {
                value,
                pos: item.pos,
            }),
        }
    }
}

fn merge_entry(existing: &mut Entry, incoming: Entry) {
    match (&mut existing.node.value, incoming.node.value) {
        (Value::Table(old), Value::Table(new)) => {
            for (k, e) in new {
                match old.get_mut(&k) {
                    Some(o) => merge_entry(o, e),
                    None => {
                        old.insert(k, e);
                    }
                }
            }
        }
        (_, value) => {
            *existing = Entry {
                key_pos: incoming.key_pos,
                node: Node {
                    value,
                    pos: incoming.node.pos,
                },
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, file: usize) -> Table {
        let sources = Sources {
            base_dir: PathBuf::from("/etc/twinbridge"),
            files: vec![PathBuf::from("/etc/twinbridge/config.toml"); 8],
        };
        let (table, errors) = parse_file(text, file, &sources);
        assert!(errors.is_empty(), "{errors:?}");
        table
    }

    fn str_at<'t>(table: &'t Table, path: &[&str]) -> &'t Node {
        let mut node = &table[path[0]].node;
        for key in &path[1..] {
            node = &node.value.as_table().expect("table")[*key].node;
        }
        node
    }

    #[test]
    fn line_and_column_count_characters_from_one() {
        let index = LineIndex::new("ab\nçd = 1\n");
        assert_eq!(index.line_col(0), (1, 1));
        assert_eq!(index.line_col(3), (2, 1));
        // "ç" is two bytes: "d" is the second character of line 2.
        assert_eq!(index.line_col(5), (2, 2));
        assert_eq!(index.line_col(100), (3, 1));
    }

    #[test]
    fn positions_point_at_keys_and_values() {
        let t = parse("[hub]\nhost = \"h\"\n", 1);
        let host = &t["hub"].node.value.as_table().unwrap()["host"];
        assert_eq!(
            host.key_pos,
            Pos {
                file: 1,
                line: 2,
                column: 1
            }
        );
        assert_eq!(
            host.node.pos,
            Pos {
                file: 1,
                line: 2,
                column: 8
            }
        );
    }

    #[test]
    fn drop_in_overrides_one_field_and_keeps_the_rest() {
        let mut base = parse(
            "[hub]\nhost = \"a\"\nport = 1\n[hub.backoff]\ninitial = \"1s\"\n",
            0,
        );
        merge_root(
            &mut base,
            parse("[hub]\nport = 2\n[hub.backoff]\nmax = \"9s\"\n", 1),
        );
        assert_eq!(
            str_at(&base, &["hub", "host"]).value,
            Value::String("a".into())
        );
        let port = str_at(&base, &["hub", "port"]);
        assert_eq!(port.value, Value::Integer(Some(2)));
        assert_eq!(port.pos.file, 1);
        assert_eq!(str_at(&base, &["hub", "backoff", "initial"]).pos.file, 0);
        assert_eq!(str_at(&base, &["hub", "backoff", "max"]).pos.file, 1);
    }

    #[test]
    fn devices_merge_by_id_and_new_ids_append() {
        let mut base = parse(
            "[[device]]\nid = \"a\"\nhistory = \"latest\"\n[[device]]\nid = \"b\"\n",
            0,
        );
        merge_root(
            &mut base,
            parse(
                "[[device]]\nid = \"b\"\nhistory = \"every-change\"\n[[device]]\nid = \"c\"\n",
                1,
            ),
        );
        let Value::Array(devices) = &base["device"].node.value else {
            panic!("array")
        };
        let ids: Vec<_> = devices.iter().map(|d| key_of(d, "id").unwrap()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        let b = devices[1].value.as_table().unwrap();
        assert_eq!(
            b["history"].node.value,
            Value::String("every-change".into())
        );
        assert_eq!(
            b["id"].node.pos.file, 0,
            "the id keeps its first definition"
        );
    }

    #[test]
    fn a_repeated_id_within_one_file_is_kept_twice_for_validation() {
        let mut base = Table::new();
        merge_root(
            &mut base,
            parse("[[device]]\nid = \"a\"\n[[device]]\nid = \"a\"\n", 0),
        );
        let Value::Array(devices) = &base["device"].node.value else {
            panic!("array")
        };
        assert_eq!(devices.len(), 2);
    }

    #[test]
    fn syntax_errors_carry_positions() {
        let sources = Sources {
            base_dir: PathBuf::from("/etc/twinbridge"),
            files: vec![PathBuf::from("/etc/twinbridge/config.d/10-x.toml")],
        };
        let (_, errors) = parse_file("[hub]\nhost = = 1\n", 0, &sources);
        assert!(!errors.is_empty());
        let shown = errors[0].1.to_string();
        assert!(shown.starts_with("config.d/10-x.toml:2:"), "{shown}");
    }

    mod properties {
        use std::collections::BTreeMap;
        use std::fmt::Write as _;

        use proptest::prelude::*;

        use super::*;

        /// One drop-in: devices with distinct ids (0..4), each maybe setting `a` and `b`.
        fn file() -> impl Strategy<Value = Vec<(usize, Option<i64>, Option<i64>)>> {
            proptest::collection::btree_map(
                0usize..4,
                (any::<Option<i64>>(), any::<Option<i64>>()),
                0..4,
            )
            .prop_map(|m| m.into_iter().map(|(id, (a, b))| (id, a, b)).collect())
            .prop_shuffle()
        }

        fn render(devices: &[(usize, Option<i64>, Option<i64>)]) -> String {
            let mut text = String::new();
            for (id, a, b) in devices {
                writeln!(text, "[[device]]\nid = \"d{id}\"").unwrap();
                if let Some(a) = a {
                    writeln!(text, "a = {a}").unwrap();
                }
                if let Some(b) = b {
                    writeln!(text, "b = {b}").unwrap();
                }
            }
            text
        }

        proptest! {
            /// Devices keep the order of their first definition; each field holds the value
            /// (and the file) of the last file that set it.
            #[test]
            fn merged_devices_are_first_seen_order_with_last_writer_fields(
                files in proptest::collection::vec(file(), 1..5)
            ) {
                let mut root = Table::new();
                for (n, devices) in files.iter().enumerate() {
                    merge_root(&mut root, parse(&render(devices), n));
                }
                let mut order = Vec::new();
                let mut expected: BTreeMap<String, BTreeMap<&str, (i64, usize)>> = BTreeMap::new();
                for (n, devices) in files.iter().enumerate() {
                    for (id, a, b) in devices {
                        let id = format!("d{id}");
                        if !order.contains(&id) {
                            order.push(id.clone());
                        }
                        let fields = expected.entry(id).or_default();
                        for (key, value) in [("a", a), ("b", b)] {
                            if let Some(v) = value {
                                fields.insert(key, (*v, n));
                            }
                        }
                    }
                }
                let merged = match root.get("device").map(|e| &e.node.value) {
                    Some(Value::Array(items)) => items.clone(),
                    _ => Vec::new(),
                };
                let ids: Vec<String> = merged.iter().map(|d| key_of(d, "id").unwrap().to_owned()).collect();
                prop_assert_eq!(&ids, &order);
                for device in &merged {
                    let table = device.value.as_table().unwrap();
                    let fields = &expected[key_of(device, "id").unwrap()];
                    for key in ["a", "b"] {
                        let got = table.get(key).map(|e| match e.node.value {
                            Value::Integer(Some(v)) => (v, e.node.pos.file),
                            ref other => panic!("{other:?}"),
                        });
                        prop_assert_eq!(got, fields.get(key).copied());
                    }
                }
            }

            /// Line and column agree with counting newlines and characters.
            #[test]
            fn line_col_counts_newlines_and_characters(text in "(a|é|\n|x){0,40}", cut in 0usize..40) {
                let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
                let offset = boundaries[cut % boundaries.len()];
                let before = &text[..offset];
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().unwrap().chars().count() + 1;
                prop_assert_eq!(LineIndex::new(&text).line_col(offset), (line as u32, column as u32));
            }
        }
    }
}
