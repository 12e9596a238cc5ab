//! Errors of the store. Every variant names the database file.

use std::path::PathBuf;

/// An error of the durable store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The directory that should hold the database does not exist (it is never created here).
    #[error("opening store {path}: directory {dir} does not exist", path = .path.display(), dir = .dir.display())]
    MissingDirectory {
        /// The database file.
        path: PathBuf,
        /// Its parent directory.
        dir: PathBuf,
    },
    /// A read-only open found no file (only the agent creates the store).
    #[error("opening store {path} read-only: no such file (has the agent run yet?)", path = .path.display())]
    MissingFile {
        /// The database file.
        path: PathBuf,
    },
    /// SQLite could not open or set up the file (permissions, read-only directory, ...).
    #[error("opening store {path}: {cause}: {source}", path = .path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// What was being done, with a hint where one helps.
        cause: String,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// Setting up the connection failed for a reason SQLite does not report as an error.
    #[error("opening store {path}: {cause}", path = .path.display())]
    Setup {
        /// The database file.
        path: PathBuf,
        /// What went wrong.
        cause: String,
    },
    /// The lock file beside the database could not be created or locked.
    #[error("opening store {path}: lock file {lock}: {source}", path = .path.display(), lock = .lock.display())]
    Lock {
        /// The database file.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// Another writer (another twinbridge process, or a not yet closed [`super::Store`] in this
    /// one) holds the store.
    #[error(
        "opening store {path}: another twinbridge process has it open for writing (lock {lock} is held)",
        path = .path.display(),
        lock = .lock.display()
    )]
    Locked {
        /// The database file.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// The state directory is on a file system that refuses writes (mounted read-only, or
    /// turned read-only by the kernel after a file system error); checked before anything is
    /// opened, so the store is left untouched.
    #[error(
        "opening store {path}: the state directory {dir} is on a read-only file system \
         (make it writable: remount read-write, or check the disk); nothing was changed",
        path = .path.display(),
        dir = .dir.display()
    )]
    ReadOnlyDirectory {
        /// The database file.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
    },
    /// The file exists but is not a twinbridge store (another SQLite database, or not SQLite).
    #[error("opening store {path}: not a twinbridge database: {detail}", path = .path.display())]
    NotTwinbridge {
        /// The database file.
        path: PathBuf,
        /// What was found instead.
        detail: String,
    },
    /// The file is a damaged SQLite database.
    #[error("opening store {path}: database is corrupt: {detail}", path = .path.display())]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// SQLite's diagnosis.
        detail: String,
    },
    /// The file was written by a newer twinbridge (schema version above what this build knows).
    #[error(
        "opening store {path}: schema version {found} is newer than this build supports ({supported}); \
         refusing to touch it",
        path = .path.display()
    )]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// The file's `user_version`.
        found: i32,
        /// [`super::LATEST_VERSION`].
        supported: i32,
    },
    /// A read-only open found an older schema that only the agent (read-write) may migrate.
    #[error(
        "opening store {path} read-only: schema version {found} is older than {supported}; \
         start the agent once to migrate it",
        path = .path.display()
    )]
    NeedsMigration {
        /// The database file.
        path: PathBuf,
        /// The file's `user_version`.
        found: i32,
        /// [`super::LATEST_VERSION`].
        supported: i32,
    },
    /// A schema migration step failed (the step's transaction was rolled back).
    #[error("migrating store {path} from schema version {from}: {source}", path = .path.display())]
    Migration {
        /// The database file.
        path: PathBuf,
        /// The version the failed step started from.
        from: i32,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// A statement failed on an open store.
    #[error("store {path}: {source}", path = .path.display())]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// A JSON column holds something that does not parse (damage or a foreign writer).
    #[error("store {path}: device {device}: column {column} holds invalid JSON: {source}", path = .path.display())]
    BadJson {
        /// The database file.
        path: PathBuf,
        /// The device row.
        device: String,
        /// The column.
        column: &'static str,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A caller passed a document or patch of the wrong shape.
    #[error("store {path}: device {device}: {detail}", path = .path.display())]
    InvalidInput {
        /// The database file.
        path: PathBuf,
        /// The device concerned.
        device: String,
        /// What is wrong.
        detail: String,
    },
    /// The writer thread has stopped (the store was closed, or the thread panicked).
    #[error("store {path}: the writer thread has stopped", path = .path.display())]
    Closed {
        /// The database file.
        path: PathBuf,
    },
}

impl StoreError {
    /// Whether this is a write that failed because the state directory is full, read-only or
    /// failing (`SQLITE_FULL`, `SQLITE_READONLY`, `SQLITE_IOERR`, `SQLITE_CANTOPEN` on an open store):
    /// conditions an operator can fix while the agent runs, so the writer retries them.
    pub fn is_out_of_space(&self) -> bool {
        let Self::Sqlite { source, .. } = self else {
            return false;
        };
        matches!(
            source.sqlite_error_code(),
            Some(
                rusqlite::ErrorCode::DiskFull
                    | rusqlite::ErrorCode::ReadOnly
                    | rusqlite::ErrorCode::SystemIoFailure
                    | rusqlite::ErrorCode::CannotOpen
            )
        )
    }
}
