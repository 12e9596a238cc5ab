//! Shared helpers for twinbridge's end-to-end tests.
