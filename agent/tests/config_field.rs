//! The field side of the configuration: `[[bus]]`, devices on buses, points, profiles, and
//! the wire-time warnings.

mod config_common;

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use config_common::{copy_fixture, error_lines, write};
use device_protocols::bus::Transport;
use device_protocols::line::{LineDeviceConfig, LineEnding, LineFormat, LineSettings};
use device_protocols::point::{DataType, Order, Point, Table};
use device_protocols::serial::{Parity, Rs485, RtsLevel, SerialSettings};
use twinbridge::config::Config;

const HEAD: &str = "[gateway]\nid = \"gw\"\n[hub]\nhost = \"127.0.0.1\"\n";

fn errors_of(dir: &Path, text: &str) -> Vec<String> {
    let path = write(dir, "config.toml", text);
    let errors = Config::load(&path).expect_err("the configuration is invalid");
    error_lines(&errors, dir)
}

#[test]
fn every_field_error_of_the_bad_fixture_is_reported_with_its_place() {
    let (dir, path) = copy_fixture("field-bad");
    let errors = Config::load(&path).unwrap_err();
    let expected = [
        r#"config.toml:9:8: bus "rs485 a": name: expected a name like "rs485-a" (letters, digits, '-', '_', '.'), got "rs485 a""#,
        r#"config.toml:10:8: bus "rs485 a": port: expected an absolute device path like "/dev/serial/by-id/usb-…-if00-port0", got "ttyUSB0""#,
        r#"config.toml:11:8: bus "rs485 a": baud: expected a baud rate like 9600 or 19200, got 0"#,
        r#"config.toml:12:10: bus "rs485 a": parity: expected one of "none", "even", "odd", got "mark""#,
        r#"config.toml:13:13: bus "rs485 a": data_bits: expected 8 (Modbus RTU characters have 8 data bits), got 7"#,
        r#"config.toml:14:13: bus "rs485 a": stop_bits: expected 1 or 2, got 3"#,
        r#"config.toml:15:11: bus "rs485 a": timeout: must be more than 0, got "0s""#,
        r#"config.toml:16:14: bus "rs485 a": turnaround: expected a duration like "5s", got "soon""#,
        r#"config.toml:17:1: bus "rs485 a": rtu: unknown key (expected one of: name, port, baud, parity, data_bits, stop_bits, tcp, rtu_over_tcp, timeout, turnaround, rs485)"#,
        r#"config.toml:21:7: bus "tcp-1": tcp: bad port: expected host:port like "10.0.0.5:502" or "plc.local", got "plc.local:99999""#,
        r#"config.toml:22:1: bus "tcp-1": baud: only used with port (a serial line)"#,
        r#"config.toml:27:1: bus "both": tcp: a bus has one of port, tcp or rtu_over_tcp, and this one has port already"#,
        r#"config.toml:35:8: bus "line-b2": port: /dev/ttyUSB2 is already used by bus "line-b" (at config.toml:31:8): one bus or line device per line or endpoint"#,
        r#"config.toml:39:7: device "m1": bus: no [[bus]] named "nope" (the buses are "both", "line-b", "line-b2", "rs485 a", "tcp-1")"#,
        r#"config.toml:40:8: device "m1": unit: expected a unit id from 1 to 247, got 0"#,
        r#"config.toml:41:8: device "m1": poll: expected a duration like "5s", got "fast""#,
        r#"config.toml:42:11: device "m1": profile: no profile "missing-profile": looked for profiles/missing-profile.toml and /usr/share/twinbridge/profiles/missing-profile.toml"#,
        r#"config.toml:49:53: device "m2": point "t": type: type f32 cannot live in the coil table (coils and discrete inputs hold type = "bool")"#,
        r#"config.toml:50:72: device "m2": point "u": writable: the input table is read-only, writable = true is not possible"#,
        r#"config.toml:51:25: device "m2": point "v": table: expected one of "coil", "discrete_input", "input", "holding", got "register""#,
        r#"config.toml:51:47: device "m2": point "v": address: expected an address from 0 to 65535, got 70000"#,
        r#"config.toml:51:61: device "m2": point "v": type: expected one of "bool", "bit", "u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64", "string", got "float""#,
        r#"config.toml:51:78: device "m2": point "v": order: expected one of "ABCD", "CDAB", "BADC", "DCBA", got "little-ish""#,
        r#"config.toml:52:3: device "m2": point "w": bit: missing: type = "bit" needs bit = 0..15"#,
        r#"config.toml:53:71: device "m2": point "x": scale: expected a non-zero number, got 0"#,
        r#"config.toml:53:85: device "m2": point "x": deadband: expected a number of at least 0, got -1"#,
        r#"config.toml:53:89: device "m2": point "x": colour: unknown key (expected one of: name, table, address, type, bit, length, order, scale, offset, unit, writable, write_multiple, property, deadband)"#,
        r#"config.toml:54:46: device "m2": point "y": address: address 65535 + 2 registers runs past 65535"#,
        r#"config.toml:55:64: device "m2": point "s": deadband: only applies to numeric points, not bool"#,
        r#"config.toml:55:78: device "m2": point "s": length: only used with type = "string""#,
        r#"config.toml:57:12: device "m2": point "p": name: reported.p contains reported.p.q of point "p.q" (at config.toml:56:12): each point needs its own twin property, and a value cannot also hold members"#,
        r#"config.toml:58:12: device "m2": point "gateway": name: expected a twin property path like "power.active", got "gateway": "gateway" is reserved at the top level (the gateway's link health) (the name is the twin property unless property = "…" says otherwise)"#,
        r#"config.toml:59:74: device "m2": point "z": property: expected a twin property path like "power.active", got "a b": reported["a b"]: key contains forbidden character ' '"#,
        r#"config.toml:60:74: device "m2": point "z": property: reported.p.q is the same as reported.p.q of point "p.q" (at config.toml:56:12): each point needs its own twin property, and a value cannot also hold members"#,
        r#"config.toml:61:3: device "m2": point #13: expected a table like { name = "t", table = "input", address = 0, type = "i16" }, got "not a table""#,
        r#"config.toml:68:11: device "m3": profile: profile "broken" (profiles/broken.toml) has errors"#,
        r#"config.toml:72:1: device "m4": unit: only used with bus (a device without bus is an identity only)"#,
        r#"config.toml:79:1: device "m5": profile: a device has either points or profile, not both"#,
        r#"config.toml:85:11: device "m6": profile: expected a profile name like "eastron-sdm120" (letters, digits, '-', '_', '.'; the file profiles/NAME.toml), got "../etc/passwd""#,
        r#"config.toml:92:92: device "nested-writable": point "sp": property: expected a twin property path like "power.active", got "heating.sp": a writable point maps to a top-level property (desired values and their acknowledgements live at the top level)"#,
        r#"profiles/broken.toml:2:15: profile "broken": description: expected a string, got 3"#,
        r#"profiles/broken.toml:9:1: profile "broken": point "a": colour: unknown key (expected one of: name, table, address, type, bit, length, order, scale, offset, unit, writable, write_multiple, property, deadband)"#,
        r#"profiles/broken.toml:11:1: profile "broken": point #2: name: missing: every point needs a name"#,
        r#"profiles/broken.toml:11:1: profile "broken": point #2: type: missing: the data type, e.g. "u16" or "f32""#,
    ];
    assert_eq!(error_lines(&errors, dir.path()), expected);
}

#[test]
#[allow(clippy::too_many_lines)] // one fixture, checked field by field
fn the_good_fixture_maps_buses_devices_points_and_profiles() {
    let (dir, path) = copy_fixture("field-good");
    let config = Config::load(&path).unwrap();
    let d = dir.path();
    assert_eq!(
        config.files,
        [path.clone(), d.join("config.d/10-site.toml")]
    );
    assert_eq!(config.profile_files, [d.join("profiles/test-meter.toml")]);

    // Buses: merged by name (the drop-in raised the baud rate), bus defaults kept.
    let names: Vec<_> = config.buses.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["rs485-a", "plc-tcp", "moxa"]);
    let rs485 = &config.buses[0];
    let mut serial =
        SerialSettings::new("/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A10K1234-if00-port0");
    serial.baud = 19_200;
    serial.parity = Parity::Even;
    assert_eq!(rs485.config.transport, Transport::Serial(serial));
    assert_eq!(rs485.config.name, "rs485-a");
    assert_eq!(rs485.config.timeout, Duration::from_millis(300));
    assert_eq!(rs485.config.turnaround, Duration::from_millis(5));
    assert_eq!(rs485.defined_at.to_string(), "config.toml:11:8");
    let tcp = &config.buses[1].config;
    assert_eq!(tcp.transport, Transport::Tcp("10.0.0.5:502".into()));
    assert_eq!(
        (tcp.timeout, tcp.turnaround),
        (Duration::from_secs(1), Duration::ZERO)
    );
    let moxa = &config.buses[2].config;
    assert_eq!(
        moxa.transport,
        Transport::RtuOverTcp("[fd00::6]:4001".into())
    );
    assert_eq!(moxa.timeout, Duration::from_millis(500), "the bus default");

    let ids: Vec<_> = config.devices.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["meter-01", "boiler-03", "plc-1", "cloud-only"]);

    // A profile's points, with their places in the profile file.
    let meter = config.devices[0].field.as_ref().unwrap();
    assert_eq!(
        (meter.bus.as_str(), meter.unit, meter.poll),
        ("rs485-a", 1, Duration::from_secs(2))
    );
    assert_eq!(meter.profile.as_deref(), Some("test-meter"));
    let mut voltage = Point::new("voltage", Table::Input, 0, DataType::F32)
        .unwrap()
        .with_order(Order::CDAB);
    voltage.unit = Some("V".into());
    assert_eq!(meter.points[0].point, voltage);
    assert_eq!(meter.points[0].property, ["voltage"]);
    assert_eq!(meter.points[0].deadband, Some(0.5));
    assert_eq!(
        meter.points[0].defined_at.to_string(),
        "profiles/test-meter.toml:3:1"
    );
    assert_eq!(meter.points[1].point.address, 342);
    assert_eq!(meter.points[1].property, ["energy", "total"]);
    assert_eq!(meter.points[1].deadband, None);

    // Inline points: every kind of field.
    let boiler = config.devices[1].field.as_ref().unwrap();
    assert_eq!(boiler.poll, Duration::from_secs(5), "the default poll");
    assert_eq!(boiler.profile, None);
    let points: Vec<_> = boiler.points.iter().map(|p| &p.point).collect();
    let mut temperature = Point::new("temperature", Table::Input, 0, DataType::I16)
        .unwrap()
        .with_scale(0.1, 0.0);
    temperature.unit = Some("°C".into());
    assert_eq!(points[0], &temperature);
    assert_eq!(boiler.points[0].deadband, Some(0.2));
    assert_eq!(boiler.points[0].defined_at.to_string(), "config.toml:41:3");
    let setpoint = Point::new("setpoint", Table::Holding, 100, DataType::U16)
        .unwrap()
        .with_scale(0.1, 0.0)
        .with_writable(true);
    assert_eq!(points[1], &setpoint);
    assert_eq!(
        boiler.points[1].property,
        ["setpoint"],
        "the leading reported. is dropped"
    );
    assert_eq!(boiler.points[2].property, ["status", "alarm"]);
    assert_eq!(
        points[2],
        &Point::new("alarm", Table::DiscreteInput, 3, DataType::Bool).unwrap()
    );
    assert_eq!(
        points[3],
        &Point::new("serial", Table::Holding, 200, DataType::String { len: 8 })
            .unwrap()
            .with_order(Order::BADC)
    );
    let mut pump = Point::new("pump", Table::Holding, 10, DataType::Bit(3))
        .unwrap()
        .with_writable(true);
    pump.write_multiple = true;
    assert_eq!(points[4], &pump);
    assert_eq!(boiler.points[4].property, ["pump"]);

    // A second device with the same profile gets the same points; the drop-in set its poll.
    let plc = config.devices[2].field.as_ref().unwrap();
    assert_eq!((plc.bus.as_str(), plc.unit), ("plc-tcp", 1));
    assert_eq!(plc.poll, Duration::from_millis(500));
    assert_eq!(plc.points, meter.points);

    assert!(config.devices[3].field.is_none(), "identity only");

    let unit = boiler.unit_config();
    assert_eq!((unit.unit, unit.poll), (7, Duration::from_secs(5)));
    assert_eq!(unit.points.len(), 5);
    assert_eq!(unit.points[1], setpoint);

    assert_eq!(config.warnings(), Vec::<String>::new());
}

/// `count` u16 holding registers 10 apart: too far apart to merge, one request each.
fn spread_points(count: u16) -> String {
    let points: Vec<String> = (0..count)
        .map(|i| {
            format!(
                "{{ name = \"r{i}\", table = \"holding\", address = {}, type = \"u16\" }}",
                i * 10
            )
        })
        .collect();
    format!("[{}]", points.join(", "))
}

#[test]
fn a_serial_bus_slower_than_its_shortest_poll_is_warned_about_with_the_numbers() {
    // 40 requests of one register at 9600 baud: 40 × 22 characters × 11 bits = 9680 bits
    // = 1.008 s, plus 40 × 50 ms turnaround = 3.008 s per cycle. The slowest device asks
    // every 10 s, the fastest every 1 s. The same device on TCP: no warning.
    let text = format!(
        "{HEAD}\
         [[bus]]\nname = \"rs485-a\"\nport = \"/dev/serial/by-id/a\"\nturnaround = \"50ms\"\n\
         [[bus]]\nname = \"fast\"\nport = \"/dev/serial/by-id/b\"\nbaud = 115200\n\
         [[bus]]\nname = \"tcp\"\ntcp = \"plc.local\"\n\
         [[device]]\nid = \"a\"\nbus = \"rs485-a\"\nunit = 1\npoll = \"1s\"\npoints = {a}\n\
         [[device]]\nid = \"b\"\nbus = \"rs485-a\"\nunit = 2\npoll = \"10s\"\npoints = {b}\n\
         [[device]]\nid = \"c\"\nbus = \"tcp\"\nunit = 1\npoll = \"100ms\"\npoints = {c}\n\
         [[device]]\nid = \"d\"\nbus = \"fast\"\nunit = 1\npoll = \"1s\"\npoints = {d}\n",
        a = spread_points(30),
        b = spread_points(10),
        c = spread_points(40),
        d = spread_points(40),
    );
    let config = Config::from_str_at(&text, Path::new("/etc/twinbridge/config.toml")).unwrap();
    assert_eq!(
        config.warnings(),
        [
            "bus rs485-a needs 3 s per cycle at 9600 baud, devices ask every 1 s (2 s more than that; raise the baud rate or the poll periods)"
        ]
    );
}

#[test]
fn a_unit_id_is_unique_per_bus_even_across_drop_ins() {
    let dir = tempfile::tempdir().unwrap();
    let one = "points = [{ name = \"t\", table = \"input\", address = 0, type = \"i16\" }]\n";
    write(
        dir.path(),
        "config.d/10-more.toml",
        &format!(
            "[[device]]\nid = \"b\"\nbus = \"x\"\nunit = 1\n{one}\n[[device]]\nid = \"c\"\nbus = \"y\"\nunit = 1\n{one}"
        ),
    );
    let errors = errors_of(
        dir.path(),
        &format!(
            "{HEAD}[[bus]]\nname = \"x\"\nport = \"/dev/ttyUSB0\"\n[[bus]]\nname = \"y\"\ntcp = \"plc\"\n\
             [[device]]\nid = \"a\"\nbus = \"x\"\nunit = 1\n{one}"
        ),
    );
    assert_eq!(
        errors,
        [
            r#"config.d/10-more.toml:4:8: device "b": unit: unit 1 on bus "x" is already device "a"'s (at config.toml:14:8)"#
        ]
    );
}

#[test]
fn a_profile_used_by_several_devices_reports_its_errors_once_in_its_own_file() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "profiles/bad.toml",
        "[[point]]\nname = \"a\"\ntable = \"coil\"\naddress = 0\ntype = \"u16\"\n",
    );
    let device = |id: &str, unit: u8| {
        format!("[[device]]\nid = \"{id}\"\nbus = \"x\"\nunit = {unit}\nprofile = \"bad\"\n")
    };
    let errors = errors_of(
        dir.path(),
        &format!(
            "{HEAD}[[bus]]\nname = \"x\"\nport = \"/dev/ttyUSB0\"\n{}{}",
            device("m1", 1),
            device("m2", 2)
        ),
    );
    assert_eq!(
        errors,
        [
            r#"config.toml:12:11: device "m1": profile: profile "bad" (profiles/bad.toml) has errors"#,
            r#"profiles/bad.toml:5:8: profile "bad": point "a": type: type u16 cannot live in the coil table (coils and discrete inputs hold type = "bool")"#,
        ]
    );
}

#[test]
fn a_profile_with_broken_toml_is_reported_with_the_rest_of_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "profiles/bad.toml", "[[point]]\nname = = 1\n");
    let errors = errors_of(
        dir.path(),
        &format!(
            "{HEAD}[[bus]]\nname = \"x\"\nport = \"/dev/ttyUSB0\"\nbaud = \"fast\"\n\
             [[device]]\nid = \"m1\"\nbus = \"x\"\nunit = 1\nprofile = \"bad\"\n"
        ),
    );
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert_eq!(
        errors[0],
        r#"config.toml:8:8: bus "x": baud: expected a baud rate like 9600 or 19200, got "fast""#
    );
    assert!(
        errors[1].starts_with("profiles/bad.toml:2:8: invalid TOML"),
        "{errors:#?}"
    );
}

#[test]
fn a_device_on_a_bus_needs_a_unit_and_points() {
    let dir = tempfile::tempdir().unwrap();
    let errors = errors_of(
        dir.path(),
        &format!(
            "{HEAD}[[bus]]\nname = \"x\"\nport = \"/dev/ttyUSB0\"\n[[device]]\nid = \"m1\"\nbus = \"x\"\n"
        ),
    );
    assert_eq!(
        errors,
        [
            r#"config.toml:8:1: device "m1": unit: missing: the device's unit (slave) id is required with bus"#,
            r#"config.toml:8:1: device "m1": points: missing: a device on a bus needs points = [ … ] or profile = "name""#,
        ]
    );
}

#[test]
fn a_drop_in_replaces_a_device_s_points_whole() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "config.d/10-x.toml",
        "[[device]]\nid = \"m1\"\npoints = [{ name = \"b\", table = \"input\", address = 5, type = \"u16\" }]\n",
    );
    let path = write(
        dir.path(),
        "config.toml",
        &format!(
            "{HEAD}[[bus]]\nname = \"x\"\nport = \"/dev/ttyUSB0\"\n\
             [[device]]\nid = \"m1\"\nbus = \"x\"\nunit = 1\n\
             points = [{{ name = \"a\", table = \"input\", address = 0, type = \"u16\" }}]\n"
        ),
    );
    let config = Config::load(&path).unwrap();
    let field = config.devices[0].field.as_ref().unwrap();
    let names: Vec<_> = field.points.iter().map(|p| p.point.name.as_str()).collect();
    assert_eq!(names, ["b"]);
    assert_eq!(
        field.points[0].defined_at.to_string(),
        "config.d/10-x.toml:3:11"
    );
}

/// The profiles shipped in the package, loaded the way an installed gateway finds them
/// (copied to `profiles/` beside the configuration).
#[test]
fn every_shipped_profile_loads() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/profiles");
    let dir = tempfile::tempdir().unwrap();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&shipped).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        std::fs::create_dir_all(dir.path().join("profiles")).unwrap();
        std::fs::copy(
            &path,
            dir.path().join("profiles").join(path.file_name().unwrap()),
        )
        .unwrap();
        names.push(name);
    }
    names.sort();
    assert!(names.len() >= 3, "{names:?}");
    let mut text = format!("{HEAD}[[bus]]\nname = \"x\"\nport = \"/dev/ttyUSB0\"\n");
    for (unit, name) in names.iter().enumerate() {
        writeln!(
            text,
            "[[device]]\nid = \"{name}\"\nbus = \"x\"\nunit = {}\nprofile = \"{name}\"",
            unit + 1
        )
        .unwrap();
    }
    let path = write(dir.path(), "config.toml", &text);
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.profile_files.len(), names.len());
    for device in &config.devices {
        let field = device.field.as_ref().unwrap();
        assert!(!field.points.is_empty(), "{}", device.id);
    }
    // The temperature controller's setpoint is a writable holding register in tenths.
    let controller = config
        .devices
        .iter()
        .flat_map(|d| &d.field.as_ref().unwrap().points)
        .find(|p| p.point.writable)
        .expect("a shipped profile with a writable point");
    assert_eq!(controller.point.table, Table::Holding);
    assert!((controller.point.scale - 0.1).abs() < 1e-12);
}

#[test]
fn a_port_named_by_its_kernel_number_is_warned_about() {
    let config = Config::from_str_at(
        &format!(
            "{HEAD}[[bus]]\nname = \"a\"\nport = \"/dev/ttyUSB0\"\n\
             [[bus]]\nname = \"b\"\nport = \"/dev/ttyACM1\"\n\
             [[bus]]\nname = \"c\"\nport = \"/dev/ttyAMA0\"\n"
        ),
        Path::new("/etc/twinbridge/config.toml"),
    )
    .unwrap();
    assert_eq!(
        config.warnings(),
        [
            "bus a: port /dev/ttyUSB0 may name another adapter after a replug or a reboot; use its /dev/serial/by-id/… link (config.toml:6:8)",
            "bus b: port /dev/ttyACM1 may name another adapter after a replug or a reboot; use its /dev/serial/by-id/… link (config.toml:9:8)",
        ]
    );
}

#[test]
fn rs485_direction_control_is_read_per_bus() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "config.toml",
        &format!(
            "{HEAD}[[bus]]\nname = \"hat\"\nport = \"/dev/ttyAMA0\"\n\
             rs485 = {{ rts_on_send = \"low\", delay_before_send = \"2ms\", delay_after_send = \"100ms\" }}\n\
             [[bus]]\nname = \"plain\"\nport = \"/dev/ttyAMA1\"\nrs485 = true\n\
             [[bus]]\nname = \"usb\"\nport = \"/dev/serial/by-id/usb-x\"\nrs485 = false\n"
        ),
    );
    let config = Config::load(&path).unwrap();
    let rs485 = |i: usize| match &config.buses[i].config.transport {
        Transport::Serial(s) => s.rs485,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        rs485(0),
        Some(Rs485 {
            rts_on_send: RtsLevel::Low,
            delay_before_send: Duration::from_millis(2),
            delay_after_send: Duration::from_millis(100),
            rx_during_tx: false,
        })
    );
    assert_eq!(rs485(1), Some(Rs485::default()));
    assert_eq!(rs485(1).unwrap().rts_on_send, RtsLevel::High);
    assert_eq!(rs485(2), None);
}

#[test]
fn rs485_mistakes_are_reported_at_their_place() {
    let dir = tempfile::tempdir().unwrap();
    let errors = errors_of(
        dir.path(),
        &format!(
            "{HEAD}[[bus]]\nname = \"a\"\nport = \"/dev/ttyAMA0\"\n\
             rs485 = {{ rts_on_send = \"up\", delay_before_send = \"200ms\", delay_after_send = \"500us\", invert = true }}\n\
             [[bus]]\nname = \"b\"\nport = \"/dev/ttyAMA1\"\nrs485 = \"kernel\"\n\
             [[bus]]\nname = \"c\"\ntcp = \"plc\"\nrs485 = true\n"
        ),
    );
    assert_eq!(
        errors,
        [
            r#"config.toml:8:25: bus "a": rs485.rts_on_send: expected one of "high", "low", got "up""#,
            r#"config.toml:8:51: bus "a": rs485.delay_before_send: expected at most "100ms" (the kernel caps RTS delays there), got "200ms""#,
            r#"config.toml:8:79: bus "a": rs485.delay_after_send: expected whole milliseconds like "2ms" (the kernel's resolution), got "500us""#,
            r#"config.toml:8:88: bus "a": rs485.invert: unknown key (expected one of: rts_on_send, delay_before_send, delay_after_send, rx_during_tx)"#,
            r#"config.toml:12:9: bus "b": rs485: expected true, false or a table like { rts_on_send = "high", delay_after_send = "1ms" }, got "kernel""#,
            r#"config.toml:16:1: bus "c": rs485: only used with port (a serial line)"#,
        ]
    );
}

#[test]
fn a_bus_name_is_unique_within_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let errors = errors_of(
        dir.path(),
        &format!(
            "{HEAD}[[bus]]\nname = \"x\"\nport = \"/dev/serial/by-id/a\"\n\
             [[bus]]\nname = \"x\"\ntcp = \"plc\"\n"
        ),
    );
    assert_eq!(
        errors,
        [
            r#"config.toml:9:8: bus "x": name: duplicate bus name (first defined at config.toml:6:8)"#
        ]
    );
}

#[test]
fn a_line_device_owns_its_serial_port() {
    let config = Config::from_str_at(
        &format!(
            "{HEAD}[[device]]\nid = \"weather-01\"\n\
             [device.line]\nport = \"/dev/serial/by-id/usb-Prolific-port0\"\nbaud = 4800\n\
             data_bits = 7\nparity = \"even\"\nprotocol = \"key-value\"\nending = \"crlf\"\n\
             max_line = 256\ncommand = \"SET {{name}} {{value}}\\r\\n\"\nproperty = \"weather\"\n\
             [[device]]\nid = \"scale-02\"\nline = {{ port = \"/dev/serial/by-id/b\", protocol = \"json-lines\" }}\n"
        ),
        Path::new("/etc/twinbridge/config.toml"),
    )
    .unwrap();
    let weather = config.devices[0].line.as_ref().unwrap();
    assert!(config.devices[0].field.is_none());
    let mut serial = SerialSettings::new("/dev/serial/by-id/usb-Prolific-port0");
    serial.baud = 4800;
    serial.data_bits = 7;
    serial.parity = Parity::Even;
    let line = LineSettings {
        format: LineFormat::KeyValue,
        ending: LineEnding::Crlf,
        max_line: 256,
    };
    assert_eq!(
        weather.config,
        LineDeviceConfig::new("weather-01", serial, line)
    );
    assert_eq!(weather.property, ["weather"]);
    let command = weather.command.as_ref().unwrap();
    assert_eq!(
        command
            .render_set("setpoint", &serde_json::json!(21.5))
            .unwrap(),
        "SET setpoint 21.5\r\n"
    );
    let scale = config.devices[1].line.as_ref().unwrap();
    assert_eq!(scale.config.line.format, LineFormat::JsonLines);
    assert_eq!(
        scale.config.line,
        LineSettings {
            format: LineFormat::JsonLines,
            ..LineSettings::default()
        }
    );
    assert_eq!(
        scale.config.serial,
        SerialSettings::new("/dev/serial/by-id/b")
    );
    assert!(scale.property.is_empty() && scale.command.is_none());
}

#[test]
fn line_device_mistakes_are_reported_at_their_place() {
    let dir = tempfile::tempdir().unwrap();
    let errors = errors_of(
        dir.path(),
        &format!(
            "{HEAD}[[bus]]\nname = \"x\"\nport = \"/dev/serial/by-id/a\"\n\
             [[device]]\nid = \"w1\"\n[device.line]\nport = \"/dev/serial/by-id/a\"\nprotocol = \"csv\"\n\
             ending = \"nl\"\nmax_line = 1\ncommand = \"SET {{name\"\nproperty = \"a..b\"\nunit = 3\n\
             [[device]]\nid = \"w2\"\nbus = \"x\"\nunit = 1\nprofile = \"p\"\nline = {{ port = \"/dev/serial/by-id/c\" }}\n\
             [[device]]\nid = \"w3\"\nline = {{ baud = 9600 }}\n"
        ),
    );
    assert_eq!(
        errors,
        [
            r#"config.toml:11:8: device "w1": line.port: /dev/serial/by-id/a is already used by bus "x" (at config.toml:7:8): one bus or line device per line or endpoint"#,
            r#"config.toml:12:12: device "w1": line.protocol: expected one of "json-lines", "key-value", got "csv""#,
            r#"config.toml:13:10: device "w1": line.ending: expected one of "any", "lf", "crlf", "cr", got "nl""#,
            r#"config.toml:14:12: device "w1": line.max_line: expected a line length in bytes from 16 to 1048576, got 1"#,
            r#"config.toml:15:11: device "w1": line.command: template `SET {name`: `{` without `}`"#,
            r#"config.toml:16:12: device "w1": line.property: expected a twin property path like "power.active", got "a..b": empty key (a dot at an end, or two in a row)"#,
            r#"config.toml:17:1: device "w1": line.unit: unknown key (expected one of: port, baud, parity, data_bits, stop_bits, protocol, ending, max_line, command, property)"#,
            r#"config.toml:22:11: device "w2": profile: no profile "p": looked for profiles/p.toml and /usr/share/twinbridge/profiles/p.toml"#,
            r#"config.toml:23:1: device "w2": line: a device is either on a bus or has its own line, not both"#,
            r#"config.toml:26:8: device "w3": line.port: missing: the serial port of the line device"#,
            r#"config.toml:26:8: device "w3": line.protocol: missing: "json-lines" or "key-value""#,
        ]
    );
}
