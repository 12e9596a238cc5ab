//! Issue 10, disk faults: the real `twinbridge run` with its state directory on a small tmpfs
//! (mounted here; CI runs as root) that fills up. The agent stays up and keeps polling, says
//! so in its log and in `twinbridge status`, loses nothing it had committed, and delivers new
//! values once space returns.
//!
//! A read-only remount cannot be done here: the kernel refuses `mount -o remount,ro` (EBUSY)
//! while the agent holds the database open for writing; only the kernel itself does it (ext4
//! `errors=remount-ro`), and the writes then fail with `SQLITE_IOERR`/`SQLITE_READONLY`, which
//! the store retries the same way as `SQLITE_FULL`. `fault_readonly.rs` tests that case (an
//! ext4 error on a loop device) and an agent started on a read-only mount.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use device_protocols::point::Table;
use twinbridge_e2e::site::PtySite;
use twinbridge_e2e::{DEADLINE, NotifySocket, eventually, has_line, spawn_notified, terminate};

const GATEWAY: &str = "gw-1";
const DEVICE: &str = "meter-01";

/// A tmpfs mounted on a fresh folder, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `"2m"`); `None` (with a loud notice) only when this is
    /// not root and not CI. Under `CI` a failure to mount fails the test.
    fn mount(size: &str) -> Option<Self> {
        let ci = std::env::var_os("CI").is_some();
        let dir = tempfile::tempdir().expect("mount point");
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status();
        match status {
            Ok(s) if s.success() => Some(Self { dir }),
            other => {
                assert!(
                    !ci,
                    "CI: cannot mount a tmpfs for the disk-fault test: {other:?}"
                );
                // /proc/self belongs to the effective user.
                let root = std::os::unix::fs::MetadataExt::uid(
                    &std::fs::metadata("/proc/self").expect("/proc/self"),
                ) == 0;
                assert!(!root, "root but mounting a tmpfs failed: {other:?}");
                eprintln!(
                    "\n*** SKIPPED: the disk-fault test needs root to mount a tmpfs ({other:?}) ***\n"
                );
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the file system holding `dir` with a file until it refuses more (ENOSPC).
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("filler created");
    let block = vec![0xa5u8; 4096];
    loop {
        if let Err(e) = file.write_all(&block).and_then(|()| file.sync_all()) {
            assert_eq!(e.raw_os_error(), Some(nix::libc::ENOSPC), "filling: {e}");
            return path;
        }
    }
}

/// Sets a new register value (tenths) on every call until `done` holds.
async fn change_until(
    what: &str,
    sim: &device_protocols::sim::SimHandle,
    next: &mut u16,
    mut done: impl FnMut() -> bool,
) {
    eventually(what, DEADLINE, || {
        *next += 1;
        sim.set_values(1, Table::Input, 0, &[*next]);
        let ok = done();
        async move { ok }
    })
    .await;
}

/// Fills the site's disk, then changes the register until the agent logs that its store
/// writes fail. Returns the filler file (removing it frees the space).
async fn fill_until_writes_fail(disk: &Tmpfs, site: &PtySite, value: &mut u16) -> PathBuf {
    let filler = fill(disk.path());
    change_until(
        "the agent reports the failing writes",
        site.sim(),
        value,
        || site.log().contains("store write failed"),
    )
    .await;
    filler
}

/// The agent on a site whose state directory is a 2 MiB tmpfs, its first value at the hub;
/// `None` where no tmpfs can be mounted (see [`Tmpfs::mount`]). The tmpfs comes first so that
/// it is dropped last.
async fn agent_on_a_small_disk() -> Option<(Tmpfs, PtySite, Child, NotifySocket)> {
    let disk = Tmpfs::mount("2m")?;
    let site = PtySite::start(GATEWAY, &[DEVICE], Some(&disk.path().join("state"))).await;
    let (agent, notify) = spawn_notified(site.command()).await;
    eventually("the first value reaches the hub", DEADLINE, || async {
        site.hub_temperature(DEVICE) == Some(21.1)
    })
    .await;
    Some((disk, site, agent, notify))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_dir_keeps_the_agent_polling_and_loses_nothing() {
    let Some((disk, site, mut agent, _notify)) = agent_on_a_small_disk().await else {
        return;
    };
    let sim = site.sim();
    let temperature = || site.hub_temperature(DEVICE);
    let mut value: u16 = 300;
    sim.set_values(1, Table::Input, 0, &[value]);
    eventually("a committed value reaches the hub", DEADLINE, || async {
        temperature() == Some(30.0)
    })
    .await;

    // Disk full. New values are read but cannot be committed.
    let filler = fill_until_writes_fail(&disk, &site, &mut value).await;
    let stuck_at = temperature().expect("the hub keeps its value");
    assert!(stuck_at >= 30.0, "nothing committed was lost: {stuck_at}");
    let requests = sim.requests(1);
    eventually(
        "the bus keeps reading while the disk is full",
        DEADLINE,
        || async { sim.requests(1) >= requests + 5 },
    )
    .await;
    assert!(
        agent.try_wait().expect("agent status").is_none(),
        "the agent stays up"
    );
    let status = site.status();
    assert!(
        status.contains("state directory full"),
        "status tells: {status}"
    );
    assert!(
        status.contains(DEVICE),
        "status still reads the store: {status}"
    );

    // Space returns: the latest value is committed and reaches the hub.
    std::fs::remove_file(filler).expect("filler removed");
    value += 10;
    sim.set_values(1, Table::Input, 0, &[value]);
    let want = f64::from(value) / 10.0;
    eventually(
        "the new value reaches the hub after space returns",
        DEADLINE,
        || async { temperature() == Some(want) },
    )
    .await;
    assert!(
        site.log().contains("resumed"),
        "the log says writes resumed"
    );
    assert!(
        !site.status().contains("state directory full"),
        "status clears"
    );

    let exit = terminate(agent).await;
    assert!(exit.success(), "clean exit on SIGTERM: {exit}");
    assert_eq!(site.integrity(), "ok");
}

/// A reload while the disk is full must not hold up a stop: a SIGHUP that changes the bus
/// (its bridge is stopped and restarted, while the bridge waits on a write the store keeps
/// retrying), then SIGTERM: the agent exits cleanly without waiting for space.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_on_a_full_disk_does_not_hold_up_sigterm() {
    let Some((disk, site, agent, notify)) = agent_on_a_small_disk().await else {
        return;
    };
    let sim = site.sim();

    let mut value: u16 = 300;
    let _filler = fill_until_writes_fail(&disk, &site, &mut value).await;
    // The bus changes (a new poll period): the reload stops and restarts its bridge.
    let config = std::fs::read_to_string(site.config()).expect("config read");
    assert!(config.contains("poll = \"100ms\""), "{config}");
    std::fs::write(
        site.config(),
        config.replace("poll = \"100ms\"", "poll = \"150ms\""),
    )
    .expect("config changed");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(agent.id()).expect("pids fit in i32")),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP sent");
    notify
        .wait_for("RELOADING=1", |m| has_line(m, "RELOADING=1"))
        .await;
    sim.set_values(1, Table::Input, 0, &[value + 1]);

    let exit = terminate(agent).await;
    assert!(
        exit.success(),
        "clean exit on SIGTERM during a reload on a full disk: {exit}; log:\n{}",
        site.log()
    );
    assert_eq!(site.integrity(), "ok");
}
