//! Configuration parsing and validation from text (`Config::from_str_at`).
//!
//! Input: the text of a `config.toml` (lossy UTF-8). The path names a directory that does
//! not exist, so only the text (and the system profile directory, if installed) is read.
//! Invariants: no panic; a rejection names at least one error, each with a message; an accepted config answers its
//! derived views (identities, link settings, pacing, warnings) without panicking.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use twinbridge::config::Config;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("/nonexistent/twinbridge-fuzz/config.toml");
    match Config::from_str_at(&text, path) {
        Ok(config) => {
            let _ = config.identity_ids().count();
            let _ = config.link_settings();
            let _ = config.pacing();
            let _ = config.warnings();
            let _ = config.store_path();
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "rejected without naming an error");
            for e in errors.iter() {
                assert!(!e.to_string().is_empty(), "an error without a message");
            }
        }
    }
});
