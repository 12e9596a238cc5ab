//! Records when this build was made (`TWINBRIDGE_BUILD_EPOCH`, seconds since the Unix epoch):
//! the hub link treats a wall clock before it as obviously wrong (a Pi without RTC boots in
//! 1970). `SOURCE_DATE_EPOCH` (reproducible builds) wins over the current time.

use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    // Re-run only when this file or the variable changes, not on every build.
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
    println!("cargo:rustc-env=TWINBRIDGE_BUILD_EPOCH={epoch}");
}
