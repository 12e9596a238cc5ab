//! The demo's script: start, hub outage, unplugged line, desired value; each step waits for
//! what it claims (with a deadline) and shows the view.

use std::io::Write;
use std::time::Duration;

use device_protocols::point::Table;
use serde_json::json;
use tokio::time::Instant;

use super::view::{self, Row};
use super::{Demo, DemoError, DemoOptions, f32_cdab};

/// How long any step may take to converge before the demo says it did not.
const STEP_DEADLINE: Duration = Duration::from_mins(1);

/// The steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Everything connects; every twin converges.
    Start,
    /// The hub refuses connections while values change; on its return each twin converges.
    HubOutage,
    /// A line's USB adapter vanishes: its devices go offline in their twins; then it is back.
    Unplug,
    /// A desired value set in the hub is written to the device, read back and acknowledged.
    Desired,
}

impl Step {
    fn title(self) -> &'static str {
        match self {
            Self::Start => "1/4 start: devices -> SQLite -> hub",
            Self::HubOutage => {
                "2/4 hub outage: changes queue locally, one update per twin on return"
            }
            Self::Unplug => "3/4 line rs485-b unplugged: its devices show offline, then come back",
            Self::Desired => {
                "4/4 desired setpoint 22.5 for boiler-01: written, read back, acknowledged"
            }
        }
    }
}

/// Plays the script.
pub(crate) async fn play(
    demo: &Demo,
    options: &DemoOptions,
    out: &mut (dyn Write + Send),
) -> Result<(), DemoError> {
    step(out, Step::Start);
    wait(demo, options, out, "every twin in sync", all_in_sync).await?;

    step(out, Step::HubOutage);
    refuse(demo, true);
    let outage_end = Instant::now() + options.phase;
    let mut watts = 1234.5_f32;
    while Instant::now() < outage_end {
        watts += 10.0;
        demo.site
            .line_a
            .handle()
            .set_values(3, Table::Input, 0, &f32_cdab(watts));
        show_live(demo, options, out).await;
        tokio::time::sleep(Duration::from_millis(500)).await; // the pace of the changes
    }
    let _ = writeln!(out, "hub back");
    refuse(demo, false);
    wait(
        demo,
        options,
        out,
        "every twin in sync after the outage",
        all_in_sync,
    )
    .await?;

    step(out, Step::Unplug);
    demo.site
        .line_b
        .unplug()
        .await
        .map_err(|e| DemoError::NotConverged(format!("unplugging rs485-b: {e}")))?;
    wait(
        demo,
        options,
        out,
        "meter-02 and pump-01 offline in their twins",
        |rows| {
            rows.iter()
                .filter(|r| r.device == "meter-02" || r.device == "pump-01")
                .all(|r| r.online == Some(false) && r.in_sync)
        },
    )
    .await?;
    demo.site
        .line_b
        .handle()
        .set_values(4, Table::Input, 0, &f32_cdab(99.5));
    demo.site
        .line_b
        .replug()
        .await
        .map_err(|e| DemoError::NotConverged(format!("replugging rs485-b: {e}")))?;
    let _ = writeln!(out, "rs485-b plugged back in");
    wait(
        demo,
        options,
        out,
        "rs485-b devices online and in sync",
        |rows| all_in_sync(rows) && rows.iter().all(|r| r.online == Some(true)),
    )
    .await?;

    step(out, Step::Desired);
    let twin = demo
        .hub
        .hub()
        .patch_twin(
            "boiler-01",
            &json!({"properties": {"desired": {"setpoint": 22.5}}}),
            None,
        )
        .map_err(|e| DemoError::NotConverged(format!("setting desired: {e}")))?;
    let version = twin["properties"]["desired"]["$version"].clone();
    wait(
        demo,
        options,
        out,
        "setpoint written, read back and acked in the hub",
        |_| {
            let (reported, _) = view::hub_reported(demo, "boiler-01");
            demo.site.line_a.handle().holding(1, 0) == Some(225)
                && reported["setpoint"] == json!({"value": 22.5, "ac": 200, "av": version})
        },
    )
    .await?;
    let _ = writeln!(
        out,
        "\ndone: devices -> SQLite -> hub and hub -> devices, across an outage and an unplug."
    );
    Ok(())
}

fn step(out: &mut (dyn Write + Send), step: Step) {
    let _ = writeln!(out, "\n== {}", step.title());
}

fn all_in_sync(rows: &[Row]) -> bool {
    rows.iter().all(|r| r.in_sync && r.online == Some(true))
}

fn refuse(demo: &Demo, on: bool) {
    let hub = demo.hub.hub();
    hub.set_faults(|f| f.refuse_until = on.then(|| Instant::now() + Duration::from_hours(1)));
    if on {
        hub.drop_connections(None, hub_emulator::state::CloseReason::Dropped);
    }
}

async fn show_live(demo: &Demo, options: &DemoOptions, out: &mut (dyn Write + Send)) {
    if options.live {
        let table = view::render(&view::rows(demo).await);
        let _ = write!(out, "\x1b[s{table}\x1b[u");
        let _ = out.flush();
    }
}

/// Waits until `done` holds for the view's rows (checked every 250 ms), then prints the view.
async fn wait(
    demo: &Demo,
    options: &DemoOptions,
    out: &mut (dyn Write + Send),
    what: &str,
    mut done: impl FnMut(&[Row]) -> bool,
) -> Result<(), DemoError> {
    let deadline = Instant::now() + STEP_DEADLINE;
    loop {
        let rows = view::rows(demo).await;
        if done(&rows) {
            let _ = writeln!(out, "{}-> {what}", view::render(&rows));
            let _ = out.flush();
            return Ok(());
        }
        if Instant::now() >= deadline {
            let _ = writeln!(out, "{}", view::render(&rows));
            return Err(DemoError::NotConverged(format!(
                "not reached within {STEP_DEADLINE:?}: {what}"
            )));
        }
        show_live(demo, options, out).await;
        tokio::time::sleep(Duration::from_millis(250)).await; // the view's refresh
    }
}
