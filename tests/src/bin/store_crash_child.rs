//! Crash-test child: applies numbered changes to a twinbridge store and prints each number to
//! stdout (flushed) only after its transaction has committed. Runs until killed.
//!
//! Usage: `store_crash_child <db path> <first number> [full|normal]` (SQLite `synchronous`
//! level, default full)
//!
//! Change `n` sets key `c{n}` = `n` in the local document of device `crash-{n % 4}`. Between
//! changes it also sends and acks patches, and records applied desired values with their acks
//! (`sp`, applied version `n`: one transaction over two tables), so kills land in every kind of
//! transaction.
//! `crash-0` keeps an every-change journal with small bounds, so journal pruning runs too.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;
use twinbridge::store::{HistoryLimits, Store, StoreOptions, Synchronous};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .context("usage: store_crash_child <db path> <first number>")?;
    let first: u64 = args
        .next()
        .context("usage: store_crash_child <db path> <first number>")?
        .parse()
        .context("first number")?;
    let synchronous = match args.next().as_deref() {
        None | Some("full") => Synchronous::Full,
        Some("normal") => Synchronous::Normal,
        Some(other) => anyhow::bail!("unknown synchronous level {other:?}"),
    };
    let options = StoreOptions {
        synchronous,
        ..StoreOptions::default()
    };
    let store = Store::open(&path, options).with_context(|| format!("opening {path}"))?;
    store
        .configure_device(
            "crash-0",
            Some(HistoryLimits {
                max_bytes: 4096,
                max_age: Duration::from_hours(1),
            }),
        )
        .wait()?;
    let mut stdout = std::io::stdout().lock();
    for n in first.. {
        let device = format!("crash-{}", n % 4);
        store
            .merge_local(&device, json!({ format!("c{n}"): n }))
            .wait()?;
        writeln!(stdout, "{n}")?;
        stdout.flush()?;
        if n % 5 == 1 {
            let version = i64::try_from(n)?;
            store
                .applied_ack(
                    &device,
                    "sp",
                    version,
                    json!({"value": n, "ac": 200, "av": n}),
                )
                .wait()?;
        }
        if n % 3 == 0 {
            let rid = format!("r{n}");
            if store.begin_send(&device, &rid).wait()?.is_some() {
                store.acked(&device, &rid, i64::try_from(n)?).wait()?;
            }
        }
    }
    Ok(())
}
