//! The Debian package, checked with the real tools: the `.deb` that `packaging/build-debs.sh`
//! builds (`.ci/run` builds the amd64 one and exports its path as `$TWINBRIDGE_DEB`), read with
//! `dpkg-deb` and installed, removed and purged with the real `dpkg` into a throwaway root.
//!
//! The install uses `dpkg --root=DIR --force-script-chrootless`: the maintainer scripts run on
//! this machine with `$DPKG_ROOT=DIR` instead of chrooted into DIR (a chroot would need a whole
//! base system in it), so `systemd-sysusers --root` and `deb-systemd-helper` act on DIR and
//! the scripts skip everything that would touch the running system (udev, modules,
//! `systemctl`). `--force-depends`: DIR's dpkg database has none of the dependencies.
//!
//! Where the package comes from: `$TWINBRIDGE_DEB`, else
//! `target/debs/twinbridge_<version>-1_<arch>.deb` (`packaging/build-debs.sh <arch>` makes it).
//! Without either the tests FAIL when `$CI` is set and are otherwise skipped with a loud
//! message. Installing needs root (dpkg gives the files to root:root): the same applies.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Prints a skip notice once per test binary.
static SKIP_NOTICE: std::sync::Once = std::sync::Once::new();

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Fails under CI, else skips the test with a message on the process's stderr (libtest
/// captures `eprintln!` of passing tests, and a skipped package check must not go unnoticed).
fn skip(why: &str) {
    assert!(!in_ci(), "CI is set but {why}");
    SKIP_NOTICE.call_once(|| {
        let _ = writeln!(
            std::io::stderr(),
            "\n#####  SKIPPED: the Debian package is NOT being checked: {why}.\n#####  Build it with \
             packaging/build-debs.sh $(dpkg --print-architecture) and/or set TWINBRIDGE_DEB.\n"
        );
    });
}

/// Runs `cmd`, which must succeed; its output.
fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("UTF-8 output")
}

fn dpkg_arch() -> String {
    stdout(&run(Command::new("dpkg").arg("--print-architecture")))
        .trim()
        .to_owned()
}

/// The package to check, or `None` (after the skip notice) when there is none.
fn deb() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TWINBRIDGE_DEB") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "TWINBRIDGE_DEB={} does not exist", p.display());
        return Some(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    let built = target.join("debs").join(format!(
        "twinbridge_{}-1_{}.deb",
        env!("CARGO_PKG_VERSION"),
        dpkg_arch()
    ));
    if built.is_file() {
        return Some(built);
    }
    skip(&format!(
        "TWINBRIDGE_DEB is not set and {} does not exist",
        built.display()
    ));
    None
}

/// One line of `dpkg-deb -c`.
#[derive(Debug)]
struct Entry {
    mode: String,
    owner: String,
    link: Option<String>,
}

/// `dpkg-deb -c`: path (without the leading `.`) -> entry.
fn contents(deb: &Path) -> BTreeMap<String, Entry> {
    let listing = stdout(&run(Command::new("dpkg-deb").arg("-c").arg(deb)));
    listing
        .lines()
        .map(|line| {
            // drwxr-xr-x 0/0  0 2026-12-03 00:00 ./usr/  (symlinks: ./a -> b)
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert!(fields.len() >= 6, "unexpected dpkg-deb -c line: {line}");
            let path = fields[5].trim_start_matches('.').to_owned();
            let link = (fields.get(6) == Some(&"->")).then(|| fields[7..].join(" "));
            let entry = Entry {
                mode: fields[0].to_owned(),
                owner: fields[1].to_owned(),
                link,
            };
            (path, entry)
        })
        .collect()
}

/// `dpkg-deb -f FIELD`.
fn field(deb: &Path, name: &str) -> String {
    stdout(&run(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name)))
        .trim()
        .to_owned()
}

#[test]
fn the_package_holds_the_agent_unit_config_and_assets_owned_by_root_and_not_world_writable() {
    let Some(deb) = deb() else { return };
    assert_eq!(field(&deb, "Package"), "twinbridge");
    assert_eq!(
        field(&deb, "Version"),
        format!("{}-1", env!("CARGO_PKG_VERSION"))
    );
    let arch = field(&deb, "Architecture");
    let file_name = deb.file_name().expect("a file name").to_string_lossy();
    assert!(
        file_name.ends_with(&format!("_{arch}.deb")),
        "{file_name} vs {arch}"
    );
    let depends = field(&deb, "Depends");
    for needed in ["libc6", "ca-certificates", "systemd"] {
        assert!(depends.contains(needed), "Depends: {depends}");
    }

    let files = contents(&deb);
    let expect = |path: &str, mode: &str| {
        let entry = files
            .get(path)
            .unwrap_or_else(|| panic!("{path} is not in the package: {files:#?}"));
        assert_eq!(entry.mode, mode, "{path}");
    };
    expect("/usr/bin/twinbridge", "-rwxr-xr-x");
    expect("/usr/lib/systemd/system/twinbridge.service", "-rw-r--r--");
    expect("/etc/twinbridge/config.toml", "-rw-r--r--");
    for profile in [
        "eastron-sdm120",
        "generic-energy-meter-cdab",
        "temperature-controller",
    ] {
        expect(
            &format!("/usr/share/twinbridge/profiles/{profile}.toml"),
            "-rw-r--r--",
        );
    }
    expect("/usr/lib/sysusers.d/twinbridge.conf", "-rw-r--r--");
    expect("/usr/lib/modules-load.d/twinbridge.conf", "-rw-r--r--");
    expect(
        "/usr/lib/udev/rules.d/99-twinbridge-ftdi.rules",
        "-rw-r--r--",
    );
    expect("/usr/share/man/man1/twinbridge.1.gz", "-rw-r--r--");
    for doc in ["README.md", "copyright", "changelog.Debian.gz"] {
        expect(&format!("/usr/share/doc/twinbridge/{doc}"), "-rw-r--r--");
    }
    expect("/usr/share/lintian/overrides/twinbridge", "-rw-r--r--");

    for (path, entry) in &files {
        assert_eq!(entry.owner, "0/0", "{path} is not owned by root:root");
        // The last permission triplet is "others"; symlinks are always lrwxrwxrwx.
        if entry.link.is_none() {
            assert_ne!(&entry.mode[8..9], "w", "{path} is world-writable");
        }
        assert!(
            !entry.mode.contains(['s', 'S', 't', 'T']),
            "{path}: setuid/setgid/sticky"
        );
    }

    // Control files: the one conffile, and maintainer scripts that never start the unit.
    let control = tempfile::tempdir().expect("temp dir");
    run(Command::new("dpkg-deb")
        .arg("-e")
        .arg(&deb)
        .arg(control.path()));
    let conffiles = std::fs::read_to_string(control.path().join("conffiles")).expect("conffiles");
    assert_eq!(conffiles, "/etc/twinbridge/config.toml\n");
    for script in ["postinst", "prerm", "postrm"] {
        let path = control.path().join(script);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{script}: {e}"));
        assert_eq!(
            std::fs::metadata(&path).expect("script").mode() & 0o777,
            0o755,
            "{script}"
        );
        // (The postinst's closing message tells the technician to run `systemctl start`.)
        let starts = text
            .lines()
            .map(str::trim_start)
            .any(|l| l.starts_with("deb-systemd-invoke start") || l.starts_with("systemctl start"));
        assert!(!starts, "{script} starts the unit:\n{text}");
    }
}

/// A throwaway root for `dpkg --root`: an empty dpkg database, and this machine's users and
/// groups (so `dialout` exists, as on every Debian system).
fn throwaway_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("temp dir");
    let r = root.path();
    for dir in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
        "var/log",
        "etc",
    ] {
        std::fs::create_dir_all(r.join(dir)).expect("creating the root's directories");
    }
    std::fs::write(r.join("var/lib/dpkg/status"), "").expect("dpkg status");
    for file in ["passwd", "group"] {
        std::fs::copy(Path::new("/etc").join(file), r.join("etc").join(file))
            .unwrap_or_else(|e| panic!("copying /etc/{file}: {e}"));
    }
    root
}

fn dpkg(root: &Path) -> Command {
    let mut cmd = Command::new("dpkg");
    cmd.arg(format!("--root={}", root.display()))
        .args(["--force-script-chrootless", "--force-depends"]);
    cmd
}

#[test]
fn dpkg_installs_it_creates_the_user_enables_without_starting_and_keeps_state_until_purge() {
    let Some(deb) = deb() else { return };
    if std::fs::metadata("/proc/self").expect("/proc/self").uid() != 0 {
        skip("installing with dpkg needs root (the package's files belong to root:root)");
        return;
    }
    let root = throwaway_root();
    let r = root.path();
    let out = run(dpkg(r).arg("--install").arg(&deb));
    assert!(
        stdout(&out).contains("enabled but not started"),
        "{}",
        stdout(&out)
    );

    // postinst: the system user, in dialout, home = the state directory, no login.
    let passwd = std::fs::read_to_string(r.join("etc/passwd")).expect("passwd");
    let user = passwd
        .lines()
        .find(|l| l.starts_with("twinbridge:"))
        .unwrap_or_else(|| panic!("no twinbridge user:\n{passwd}"));
    let fields: Vec<&str> = user.split(':').collect();
    assert_eq!(fields[5], "/var/lib/twinbridge", "{user}");
    assert!(fields[6].ends_with("nologin"), "{user}");
    let group = std::fs::read_to_string(r.join("etc/group")).expect("group");
    assert!(
        group.lines().any(|l| l.starts_with("dialout:")
            && l.rsplit(':')
                .next()
                .is_some_and(|m| m.split(',').any(|u| u == "twinbridge"))),
        "twinbridge is not in dialout:\n{group}"
    );
    // Enabled (the symlink systemctl enable would make) ...
    let wants = r.join("etc/systemd/system/multi-user.target.wants/twinbridge.service");
    assert_eq!(
        std::fs::read_link(&wants).expect("twinbridge.service is enabled"),
        Path::new("/usr/lib/systemd/system/twinbridge.service")
    );
    // ... and not started: nothing ran it, so the state directory it creates does not exist.
    assert!(!r.join("var/lib/twinbridge").exists());

    check_the_installed_binary(r);
    let twinbridge = r.join("usr/bin/twinbridge");
    let config = r.join("etc/twinbridge/config.toml");

    // The agent ran for a while: its store and an edited config.
    std::fs::create_dir_all(r.join("var/lib/twinbridge")).expect("state dir");
    std::fs::write(r.join("var/lib/twinbridge/twinbridge.db"), "replica").expect("store");
    let mut edited = std::fs::read_to_string(&config).expect("config");
    edited.push_str("# edited on site\n");
    std::fs::write(&config, &edited).expect("editing the config");

    // remove: the program goes, the state and the edited conffile stay.
    run(dpkg(r).arg("--remove").arg("twinbridge"));
    assert!(!twinbridge.exists());
    assert!(!r.join("usr/lib/systemd/system/twinbridge.service").exists());
    assert!(r.join("var/lib/twinbridge/twinbridge.db").exists());
    assert_eq!(std::fs::read_to_string(&config).expect("config"), edited);

    // purge: the state, the config and the enablement go too.
    run(dpkg(r).arg("--purge").arg("twinbridge"));
    assert!(!r.join("var/lib/twinbridge").exists());
    assert!(!config.exists());
    assert!(std::fs::symlink_metadata(&wants).is_err(), "still enabled");
}

/// The installed binary is the gateway build (no demo), the installed config checks with the
/// gateway's key (and without it, fails on that key only), and the man page is help2man's.
fn check_the_installed_binary(r: &Path) {
    // The installed binary: the gateway build (no demo) and the installed config checks.
    let twinbridge = r.join("usr/bin/twinbridge");
    let help = stdout(&run(Command::new(&twinbridge).arg("--help")));
    assert!(help.contains("  check-config  "), "{help}");
    assert!(
        !help.contains("  demo "),
        "the package must be built without the demo:\n{help}"
    );
    let config = r.join("etc/twinbridge/config.toml");
    let check = |credentials: Option<&Path>| {
        let mut cmd = Command::new(&twinbridge);
        cmd.env_remove("TWINBRIDGE_CONFIG")
            .env_remove("CREDENTIALS_DIRECTORY")
            .arg("check-config")
            .arg("--config")
            .arg(&config);
        if let Some(dir) = credentials {
            cmd.arg("--credentials-dir").arg(dir);
        }
        cmd.output().expect("running the installed twinbridge")
    };
    // As installed, only the gateway's key is missing, and said to be.
    let out = check(None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "keys_file: reading key file {}",
            r.join("etc/twinbridge/keys.toml").display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("\n1 error in the configuration"),
        "{stderr}"
    );
    // With the key (as systemd's LoadCredential= provides it) the installed config is valid.
    let credentials = tempfile::tempdir().expect("temp dir");
    std::fs::write(credentials.path().join("gw-01"), "Z3c=").expect("writing the credential");
    let out = check(Some(credentials.path()));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = stdout(&out);
    assert!(summary.starts_with("configuration OK\n"), "{summary}");
    assert!(
        summary.contains("identities: 1 (the gateway and 0 devices)\n"),
        "{summary}"
    );

    // The man page is help2man's rendering of this binary's --help.
    let man = stdout(&run(Command::new("gzip")
        .arg("-dc")
        .arg(r.join("usr/share/man/man1/twinbridge.1.gz"))));
    assert!(man.contains(".TH TWINBRIDGE \"1\""), "{man}");
    assert!(man.contains("twinbridge check-config"), "{man}");
}
