//! `twinbridge check-config` through the real binary: exit codes, what goes to stdout and
//! stderr, `--config` / `$TWINBRIDGE_CONFIG`, and the example configuration shipped in the
//! package.

mod config_common;

use std::path::Path;
use std::process::{Command, Output};

use config_common::{GOOD_SECRETS, copy_fixture, fixture_dir, set_mode, write};
use twinbridge::config::Config;

fn twinbridge() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_twinbridge"));
    // The test's own environment must not leak into the child.
    cmd.env_remove("TWINBRIDGE_CONFIG")
        .env_remove("CREDENTIALS_DIRECTORY");
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 output")
}

fn check_config(path: &Path) -> Output {
    twinbridge()
        .arg("check-config")
        .arg("--config")
        .arg(path)
        .output()
        .expect("running twinbridge")
}

#[test]
fn a_valid_configuration_prints_a_summary_and_exits_0() {
    let (dir, path) = copy_fixture("good");
    let out = check_config(&path);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stderr, "");
    let d = dir.path().display();
    assert_eq!(
        stdout,
        format!(
            "configuration OK\n\
             gateway: gw-plant7-01\n\
             hub: myhub.azure-devices.net:8443 (mqtt-ws)\n\
             proxy: proxy.local:3128\n\
             identities: 4 (the gateway and 3 devices)\n\
             store: {d}/state/twinbridge.db\n\
             files read:\n  {d}/config.toml\n  {d}/config.d/10-meters.toml\n  {d}/config.d/20-overrides.toml\n"
        )
    );
    for secret in GOOD_SECRETS {
        assert!(!stdout.contains(secret));
    }
}

#[test]
fn an_invalid_configuration_prints_every_error_on_stderr_and_exits_78() {
    let (_dir, path) = copy_fixture("bad");
    let out = check_config(&path);
    assert_eq!(out.status.code(), Some(78));
    assert_eq!(text(&out.stdout), "");
    let stderr = text(&out.stderr);
    // The same lines the library gives `run`, one per line, then a count.
    let errors = Config::load(&path).unwrap_err();
    let expected = format!(
        "{errors}\n{} errors in the configuration starting at {}\n",
        errors.len(),
        path.display()
    );
    assert_eq!(stderr, expected);
    assert_eq!(stderr.lines().count(), 26);
    assert!(
        !stderr.contains("hunter2"),
        "the proxy password never shows"
    );
}

#[test]
fn credential_problems_also_exit_78() {
    let (dir, path) = copy_fixture("good");
    set_mode(&dir.path().join("keys.toml"), 0o640);
    let out = check_config(&path);
    assert_eq!(out.status.code(), Some(78));
    let stderr = text(&out.stderr);
    let keys = dir.path().join("keys.toml");
    assert!(
        stderr.starts_with(&format!(
            "config.toml:19:13: keys_file: refusing key file {k}: mode 0640 lets group or others read it; restrict it with chmod 600 {k}\n",
            k = keys.display()
        )),
        "{stderr}"
    );
    for secret in GOOD_SECRETS {
        assert!(!stderr.contains(secret));
    }
}

#[test]
fn the_credentials_directory_comes_from_the_flag_or_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "config.toml",
        "[gateway]\nid = \"gw\"\n[hub]\nhost = \"h\"\n",
    );
    let out = check_config(&path);
    assert_eq!(out.status.code(), Some(78), "no key anywhere");
    let creds = dir.path().join("creds");
    write(&creds, "gw", "Z3c=\n");
    let out = twinbridge()
        .args(["check-config", "--credentials-dir"])
        .arg(&creds)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = twinbridge()
        .env("CREDENTIALS_DIRECTORY", &creds)
        .env("TWINBRIDGE_CONFIG", &path)
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn the_config_path_comes_from_the_flag_before_the_environment() {
    let (_dir, good) = copy_fixture("good");
    let (_bad_dir, bad) = copy_fixture("bad");
    let run = |cmd: &mut Command| cmd.output().unwrap().status.code();
    assert_eq!(
        run(twinbridge()
            .env("TWINBRIDGE_CONFIG", &good)
            .arg("check-config")),
        Some(0)
    );
    assert_eq!(
        run(twinbridge()
            .env("TWINBRIDGE_CONFIG", &bad)
            .arg("check-config")),
        Some(78)
    );
    // --config is global: before or after the subcommand, and it beats the environment.
    assert_eq!(
        run(twinbridge()
            .env("TWINBRIDGE_CONFIG", &bad)
            .arg("--config")
            .arg(&good)
            .arg("check-config")),
        Some(0)
    );
    let out = twinbridge()
        .arg("check-config")
        .arg("--config")
        .arg(fixture_dir("nope").join("config.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(
        text(&out.stderr).starts_with("reading config file "),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn version_still_works() {
    let out = twinbridge().arg("--version").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout),
        format!("twinbridge {}\n", env!("CARGO_PKG_VERSION"))
    );
}

/// Copies the shipped profiles to `dir/profiles`, where the example's devices find them.
fn copy_shipped_profiles(dir: &Path) {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/profiles");
    std::fs::create_dir_all(dir.join("profiles")).expect("creating profiles/");
    for entry in std::fs::read_dir(shipped).expect("packaging/profiles") {
        let path = entry.expect("a shipped profile").path();
        let name = path.file_name().expect("a file name");
        std::fs::copy(&path, dir.join("profiles").join(name)).expect("copying a profile");
    }
}

fn example() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/config.toml"))
        .expect("packaging/config.toml")
}

#[test]
fn the_shipped_example_passes_check_config_once_the_gateway_key_exists() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "config.toml", &example());
    let out = check_config(&path);
    assert_eq!(out.status.code(), Some(78), "keys.toml is not shipped");
    // The gateway's key is the only thing missing from the file as installed.
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(": keys_file: reading key file "),
        "{stderr}"
    );
    assert!(
        stderr.contains("\n1 error in the configuration"),
        "{stderr}"
    );
    let keys = write(dir.path(), "keys.toml", "gw-01 = \"Z3c=\"\n");
    set_mode(&keys, 0o600);
    let out = check_config(&path);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("hub: myhub.azure-devices.net:8883 (mqtt)\n"));
    // As shipped, no device is configured: the gateway is the only identity.
    assert!(
        stdout.contains("identities: 1 (the gateway and 0 devices)\n"),
        "{stdout}"
    );
}

#[test]
fn every_setting_commented_out_in_the_example_is_valid_too() {
    // Uncomment the settings and table headers (`#key = …`, `#[…`) and the lines of the
    // inline point arrays (`#  { … },`, `#]`), not the prose.
    let mut uncommented = String::new();
    for line in example().lines() {
        let rest = line.strip_prefix('#').unwrap_or(line);
        let is_setting = rest.starts_with('[')
            || rest.starts_with("  { ")
            || rest == "]"
            || rest.split_once(" = ").is_some_and(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            });
        uncommented.push_str(if line.starts_with('#') && is_setting {
            rest
        } else {
            line
        });
        uncommented.push('\n');
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture_dir("good").join("ca.pem"),
        dir.path().join("ca.pem"),
    )
    .unwrap();
    copy_shipped_profiles(dir.path());
    let path = write(dir.path(), "config.toml", &uncommented);
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}\n---\n{uncommented}"));
    // Every commented setting was picked up (the loop above did uncomment them).
    assert!(config.hub.proxy.is_some());
    assert!(config.hub.ca_file.is_some());
    assert_eq!(config.gateway.auth.method_name(), "x509");
    assert_eq!(config.devices.len(), 4);
    assert!(config.devices[0].history.is_some());
    assert_eq!(config.devices[1].auth.method_name(), "x509");
    assert_eq!(config.buses.len(), 1);
    let meter = config.devices[0].field.as_ref().expect("on the bus");
    assert_eq!(meter.profile.as_deref(), Some("eastron-sdm120"));
    let boiler = config.devices[2].field.as_ref().expect("on the bus");
    assert_eq!(boiler.points.len(), 2);
    assert_eq!(boiler.points[0].property, ["heating", "flow"]);
    assert_eq!(boiler.points[1].property, ["setpoint"]);
    assert_eq!(config.warnings(), Vec::<String>::new());
    let weather = config.devices[3].line.as_ref().expect("a line device");
    assert_eq!(weather.property, ["weather"]);
    assert!(weather.command.is_some());
}

#[test]
fn a_bus_too_slow_for_its_polls_is_a_warning_on_stderr_with_exit_0() {
    // 40 one-register requests (the registers lie too far apart to merge) at 9600 baud:
    // 40 × 22 characters × 11 bits = 1.008 s of line time per cycle, asked every 500 ms.
    let points: Vec<String> = (0..40)
        .map(|i| {
            format!(
                "{{ name = \"r{i}\", table = \"holding\", address = {}, type = \"u16\" }}",
                i * 10
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let keys = write(
        dir.path(),
        "keys.toml",
        "gw = \"Z3c=\"\na = \"YQ==\"\nw = \"dw==\"\n",
    );
    set_mode(&keys, 0o600);
    let path = write(
        dir.path(),
        "config.toml",
        &format!(
            "[gateway]\nid = \"gw\"\n[hub]\nhost = \"127.0.0.1\"\nkeys_file = \"keys.toml\"\n\
             [[bus]]\nname = \"rs485-a\"\nport = \"/dev/serial/by-id/usb-x-port0\"\n\
             [[device]]\nid = \"a\"\nbus = \"rs485-a\"\nunit = 1\npoll = \"500ms\"\npoints = [{}]\n\
             [[device]]\nid = \"w\"\nline = {{ port = \"/dev/serial/by-id/w\", protocol = \"json-lines\" }}\n",
            points.join(", ")
        ),
    );
    let out = check_config(&path);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr),
        "warning: bus rs485-a needs 1 s per cycle at 9600 baud, devices ask every 500 ms \
         (508 ms more than that; raise the baud rate or the poll periods)\n"
    );
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("configuration OK\n"), "{stdout}");
    assert!(
        stdout.contains(
            "bus rs485-a: serial /dev/serial/by-id/usb-x-port0 9600 8N1 (1 device, 40 points)\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("line device w: serial /dev/serial/by-id/w 9600 8N1 (json-lines)\n"),
        "{stdout}"
    );
}
