//! Issue 10, read-only state directory, with the real `twinbridge run` (needs root: CI runs as
//! root; elsewhere the tests are skipped with a loud notice).
//!
//! 1. The file system turns read-only under the running agent. The state directory is on an
//!    ext4 file system in a loop device (a file-backed image mounted `errors=remount-ro`); the
//!    kernel's own test hook (`/sys/fs/ext4/<dev>/trigger_fs_error`) raises a file-system error,
//!    the path an SD card's I/O error takes: the journal is aborted and every write refused
//!    (recent kernels mark the file system `emergency_ro` without the read-only mount flag,
//!    older ones set the flag). The agent stays up and keeps polling, logs the failing writes,
//!    `twinbridge status` says read-only, a desired value that arrives meanwhile is not written
//!    to the device (it could not be recorded first), and nothing committed is lost.
//!
//!    Such a file system never becomes writable again under a running process: the kernel
//!    keeps refusing writes after `mount -o remount,rw` (the journal stays aborted); recovery is
//!    what a technician or a reboot does — stop the service, `e2fsck`, mount, start. The test
//!    does that, then checks that the restarted agent finds every committed value and ack, applies
//!    the desired value it could not record (one register write per desired version in all),
//!    and delivers new values.
//!
//!    "Resumes when it is writable again" within one agent process is not testable on this
//!    kind of machine: `mount -o remount,ro` of the state directory (and of a bind mount of it)
//!    fails with EBUSY while the agent holds the database open for writing, so the flag can
//!    never be set and cleared under it; device-mapper (`dmsetup` `error`/`flakey` tables, which
//!    could flip the device read-only and back) is not in the kernel here (no `dm_mod`, no
//!    `/dev/mapper/control`); `blockdev --setro` on a mounted loop device does not stop writes
//!    (the block layer only warns). In-process resumption after refused writes is covered by
//!    `fault_disk.rs` (disk full): the store retries `SQLITE_FULL`, `SQLITE_READONLY` and
//!    `SQLITE_IOERR` alike.
//!
//! 2. The agent started with its state directory on a read-only mount: one line naming the
//!    directory, exit 73 (`EX_CANTCREAT`; systemd's `Restart=on-failure` keeps trying, so a
//!    remount read-write is enough), the store untouched.

use std::path::{Path, PathBuf};
use std::process::Command;

use device_protocols::point::Table;
use serde_json::{Value, json};
use twinbridge_e2e::site::{PtySite, register_writes};
use twinbridge_e2e::{DEADLINE, agent_binary, eventually, spawn_ready, terminate};

const GATEWAY: &str = "gw-1";
const DEVICE: &str = "meter-01";

/// Whether this process runs as root (`/proc/self` belongs to the effective user).
fn root() -> bool {
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").expect("/proc/self")) == 0
}

/// Runs a command; `Err` with its output when it fails.
fn sh(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "{program} {args:?}: {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `None` with a loud notice when this is neither root nor CI; under CI (or as root) a failure
/// to set up fails the test.
fn needs_root(what: &str) -> bool {
    if root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI: the read-only state directory tests need root ({what})"
    );
    eprintln!("\n*** SKIPPED: {what} needs root ***\n");
    false
}

/// An ext4 file system on a loop device, mounted `errors=remount-ro` on a fresh folder;
/// unmounted and detached on drop.
struct LoopExt4 {
    dir: tempfile::TempDir,
    device: String,
}

impl LoopExt4 {
    fn create() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let image = dir.path().join("ext4.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(32 << 20))
            .expect("image file");
        let image = image.to_str().expect("UTF-8 temp path");
        sh("mkfs.ext4", &["-q", "-F", image]).expect("mkfs.ext4 (e2fsprogs)");
        let device = sh("losetup", &["-f", "--show", image])
            .expect("a free loop device (losetup, /dev/loop-control)");
        let fs = Self { dir, device };
        std::fs::create_dir(fs.mount_point()).expect("mount point");
        fs.mount();
        fs
    }

    fn mount(&self) {
        let point = self.mount_point();
        sh(
            "mount",
            &[
                "-o",
                "errors=remount-ro",
                &self.device,
                point.to_str().expect("UTF-8"),
            ],
        )
        .expect("mount the loop device");
    }

    fn mount_point(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// The kernel's ext4 test hook: a file-system error, handled per `errors=remount-ro`.
    fn trigger_error(&self) {
        let name = Path::new(&self.device)
            .file_name()
            .expect("device name")
            .to_owned();
        let hook = Path::new("/sys/fs/ext4")
            .join(name)
            .join("trigger_fs_error");
        std::fs::write(&hook, "1\n")
            .unwrap_or_else(|e| panic!("{}: {e} (kernel without the hook?)", hook.display()));
    }

    /// Unmounts, repairs (`e2fsck -fy`: 0 clean, 1 repaired) and mounts again.
    fn repair(&self) {
        sh("umount", &[self.mount_point().to_str().expect("UTF-8")]).expect("umount");
        let status = Command::new("e2fsck")
            .args(["-fy", &self.device])
            .output()
            .expect("e2fsck runs");
        assert!(
            matches!(status.status.code(), Some(0 | 1)),
            "e2fsck: {status:?}"
        );
        self.mount();
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.mount_point())
            .status();
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

/// `twinbridge twin show DEVICE --json`, parsed.
fn twin_show(site: &PtySite) -> Value {
    let out = Command::new(agent_binary())
        .args(["twin", "show", DEVICE, "--json", "--config"])
        .arg(site.config())
        .output()
        .expect("twin show runs");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "twin show: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn setpoint_ack(site: &PtySite) -> Value {
    site.hub.reported(DEVICE).0["setpoint"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_dir_turned_read_only_keeps_the_agent_polling_and_loses_nothing() {
    if !needs_root("a loop device with ext4") {
        return;
    }
    let disk = LoopExt4::create();
    let site = PtySite::start(GATEWAY, &[DEVICE], Some(&disk.mount_point().join("state"))).await;
    let sim = site.sim();
    let mut agent = spawn_ready(site.command()).await;
    let temperature = || site.hub_temperature(DEVICE);

    // Committed before the error: a value and an applied desired setpoint.
    sim.set_values(1, Table::Input, 0, &[300]);
    let applied = site.hub.set_desired(DEVICE, &json!({"setpoint": 25.0}));
    eventually("value and ack reach the hub", DEADLINE, || async {
        temperature() == Some(30.0)
            && setpoint_ack(&site)["av"] == json!(applied)
            && setpoint_ack(&site)["ac"] == json!(200)
    })
    .await;
    assert_eq!(register_writes(sim, 1), 1);

    disk.trigger_error();
    let mut value: u16 = 300;
    eventually("the agent reports the failing writes", DEADLINE, || {
        value += 1;
        sim.set_values(1, Table::Input, 0, &[value]);
        let logged = site.log().contains("store write failed");
        async move { logged }
    })
    .await;
    let stuck_at = temperature().expect("the hub keeps its value");
    assert!(stuck_at >= 30.0, "nothing committed was lost: {stuck_at}");

    // A desired value now cannot be recorded before writing, so it is not written.
    let pending = site.hub.set_desired(DEVICE, &json!({"setpoint": 26.0}));
    let requests = sim.requests(1);
    eventually(
        "the bus keeps reading while the disk is read-only",
        DEADLINE,
        || async { sim.requests(1) >= requests + 10 },
    )
    .await;
    assert_eq!(
        register_writes(sim, 1),
        1,
        "nothing written that could not be recorded"
    );
    assert!(
        agent.try_wait().expect("agent status").is_none(),
        "the agent stays up; log:\n{}",
        site.log()
    );
    let status = site.status();
    assert!(status.contains("read-only"), "status tells: {status}");
    assert!(
        status.contains(DEVICE),
        "status still reads the store: {status}"
    );

    // Recovery as in the field: stop, repair, start. The stop is not held up by the write
    // being retried (it was, until the runtime gave up retries on shutdown).
    let exit = terminate(agent).await;
    assert!(
        exit.success(),
        "clean exit on SIGTERM while read-only: {exit}; log:\n{}",
        site.log()
    );
    disk.repair();
    assert_eq!(site.integrity(), "ok");
    let stored = twin_show(&site);
    assert!(
        stored["local"]["temperature"]
            .as_f64()
            .is_some_and(|t| t >= 30.0),
        "the committed value survived: {stored}"
    );
    let agent = spawn_ready(site.command()).await;
    value += 10;
    sim.set_values(1, Table::Input, 0, &[value]);
    let want = f64::from(value) / 10.0;
    eventually(
        "after the repair the new value and the pending desired value arrive",
        DEADLINE,
        || async {
            temperature() == Some(want)
                && setpoint_ack(&site)["av"] == json!(pending)
                && setpoint_ack(&site)["ac"] == json!(200)
        },
    )
    .await;
    assert_eq!(sim.holding(1, 0), Some(260));
    assert_eq!(
        register_writes(sim, 1),
        2,
        "one register write per desired version"
    );
    assert!(!site.status().contains("read-only"), "status clears");
    let exit = terminate(agent).await;
    assert!(exit.success(), "clean exit on SIGTERM: {exit}");
    assert_eq!(site.integrity(), "ok");
}

/// Every file in `dir` with its contents.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("state dir readable")
        .map(|e| {
            let path = e.expect("dir entry").path();
            let bytes = std::fs::read(&path).expect("file readable");
            (path, bytes)
        })
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_started_on_a_read_only_state_dir_says_so_and_touches_nothing() {
    if !needs_root("a read-only tmpfs mount") {
        return;
    }
    let mount = tempfile::tempdir().expect("mount point");
    let point = mount.path().to_str().expect("UTF-8").to_owned();
    sh(
        "mount",
        &["-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", &point],
    )
    .expect("tmpfs mounted");
    let state = mount.path().join("state");
    let site = PtySite::start(GATEWAY, &[DEVICE], Some(&state)).await;
    // A store with state in it, then the agent stopped and the file system made read-only.
    let agent = spawn_ready(site.command()).await;
    eventually("the first value reaches the hub", DEADLINE, || async {
        site.hub_temperature(DEVICE) == Some(21.1)
    })
    .await;
    assert!(terminate(agent).await.success());
    sh("mount", &["-o", "remount,ro", &point]).expect("remount read-only");
    let before = snapshot(&state);

    let log_before = site.log();
    let status = site.command().status().expect("twinbridge runs");
    let after = snapshot(&state);
    let _ = sh("umount", &["-l", &point]);
    let log = site.log();
    let said = log.strip_prefix(log_before.as_str()).unwrap_or(&log);
    let last = said.lines().last().unwrap_or_default();
    assert_eq!(status.code(), Some(73), "EX_CANTCREAT; stderr:\n{said}");
    assert!(
        last.contains(&state.display().to_string()) && last.contains("read-only"),
        "the last line names the read-only directory: {said}"
    );
    assert!(before == after, "the state directory is untouched");
}
