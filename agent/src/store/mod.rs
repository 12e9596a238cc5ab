//! The SQLite file: per-device replicas, sync state, desired journal, schema migrations.
