//! `twinbridge demo --once`, the README's first command run to the end: every scripted step
//! (start, hub outage, unplugged line, desired write) converges and the process exits 0.

use std::process::Stdio;

use twinbridge_e2e::{DEADLINE, agent_binary};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_plays_every_step_to_convergence() {
    let child = tokio::process::Command::new(agent_binary())
        .args(["demo", "--once", "--phase", "2s"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("twinbridge demo starts");
    let out = tokio::time::timeout(DEADLINE * 4, child.wait_with_output())
        .await
        .expect("the demo ends before the deadline")
        .expect("demo output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        out.status
    );
    for step in [
        "-> every twin in sync",
        "-> every twin in sync after the outage",
        "-> meter-02 and pump-01 offline in their twins",
        "-> rs485-b devices online and in sync",
        "-> setpoint written, read back and acked in the hub",
        "setpoint=22.5 (ack 200",
    ] {
        assert!(stdout.contains(step), "missing {step:?} in\n{stdout}");
    }
}
