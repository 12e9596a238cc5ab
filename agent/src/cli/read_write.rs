//! `twinbridge read` and `twinbridge write`: one typed value from or to one unit, for
//! commissioning. The point is described with the configuration's names (`--table holding
//! --type f32 --order CDAB --scale 0.1`) and decoded or encoded by the bus's own codecs, so
//! what `read` prints is what the twin will show. Every request has a timeout; a serial port
//! the running service holds is refused (exit 75, see [`super::field_port`]).

use std::io::Write;
use std::time::Duration;

use device_protocols::client::{self, Raw};
use device_protocols::point::{DataType, Point, Value};
use serde::Deserialize as _;
use serde_json::json;

use super::EX_USAGE;
use super::field_port::{self, PortArgs};

/// Which value: the unit and the point, with the configuration's names.
#[derive(Debug, Clone, clap::Args)]
pub struct PointArgs {
    #[command(flatten)]
    pub port: PortArgs,
    /// Unit (slave) id; 0 is broadcast, writes only, unanswered.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=247))]
    pub unit: u8,
    /// Table: holding, input, coil or `discrete_input`.
    #[arg(long, default_value = "holding")]
    pub table: String,
    /// Zero-based protocol address (manual register 40101 is --table holding --address 100).
    #[arg(long)]
    pub address: u16,
    /// Data type: bool, bit, u16, i16, u32, i32, u64, i64, f32, f64, string.
    #[arg(long = "type", default_value = "u16")]
    pub data_type: String,
    /// Byte and word order of multi-register values: ABCD, CDAB, BADC, DCBA.
    #[arg(long, default_value = "ABCD")]
    pub order: String,
    /// value = raw × scale + offset.
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// See --scale.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub offset: f64,
    /// Bit number (0–15) for --type bit.
    #[arg(long)]
    pub bit: Option<u8>,
    /// Length in bytes for --type string.
    #[arg(long)]
    pub length: Option<u16>,
    /// Write with fc 15/16 even for one coil or register (devices without fc 5/6).
    #[arg(long)]
    pub write_multiple: bool,
    /// Time to wait for each answer.
    #[arg(long, default_value = "500ms", value_parser = field_port::parse_duration)]
    pub timeout: Duration,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

impl PointArgs {
    /// The point at `address`, through the same deserialiser as points in profiles.
    fn point(&self, address: u16, writable: bool) -> Result<Point, String> {
        let mut table = toml::Table::new();
        table.insert("name".into(), "value".into());
        table.insert("table".into(), self.table.clone().into());
        table.insert("address".into(), i64::from(address).into());
        table.insert("type".into(), self.data_type.clone().into());
        table.insert("order".into(), self.order.clone().into());
        table.insert("scale".into(), self.scale.into());
        table.insert("offset".into(), self.offset.into());
        table.insert("writable".into(), writable.into());
        table.insert("write_multiple".into(), self.write_multiple.into());
        if let Some(bit) = self.bit {
            table.insert("bit".into(), i64::from(bit).into());
        }
        if let Some(length) = self.length {
            table.insert("length".into(), i64::from(length).into());
        }
        Point::deserialize(toml::Value::Table(table)).map_err(|e| e.message().to_owned())
    }

    fn describe(&self, point: &Point) -> String {
        use std::fmt::Write as _;
        let mut s = format!(
            "unit {} {} {} {}",
            self.unit, point.table, point.address, point.data_type
        );
        if point.data_type.registers() > 1 && !point.table.is_bits() {
            let _ = write!(s, " {:?}", point.order);
        }
        // Exact: these are the values given on the command line (1 and 0 by default).
        if (point.scale - 1.0).abs() > 0.0 {
            let _ = write!(s, " scale {}", point.scale);
        }
        if point.offset.abs() > 0.0 {
            let _ = write!(s, " offset {}", point.offset);
        }
        s
    }
}

/// `read`'s own options.
#[derive(Debug, Clone, clap::Args)]
pub struct ReadArgs {
    #[command(flatten)]
    pub point: PointArgs,
    /// Read this many consecutive values of the type (addresses step by its size).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=125))]
    pub count: u16,
}

/// `write`'s own options.
#[derive(Debug, Clone, clap::Args)]
pub struct WriteArgs {
    #[command(flatten)]
    pub point: PointArgs,
    /// The value: a number, true/false for bool and bit, text for string.
    #[arg(value_name = "VALUE", allow_negative_numbers = true)]
    pub value: String,
}

fn raw_text(raw: &Raw) -> String {
    match raw {
        Raw::Registers(regs) => regs
            .iter()
            .map(|r| format!("0x{r:04X}"))
            .collect::<Vec<_>>()
            .join(" "),
        Raw::Bits(bits) => bits
            .iter()
            .map(|b| if *b { "1" } else { "0" })
            .collect::<Vec<_>>()
            .join(" "),
    }
}

fn raw_json(raw: &Raw) -> serde_json::Value {
    match raw {
        Raw::Registers(regs) => json!(regs),
        Raw::Bits(bits) => json!(bits),
    }
}

/// Parses VALUE for `point`'s type.
fn parse_value(text: &str, data_type: DataType) -> Result<Value, String> {
    match data_type {
        DataType::String { .. } => Ok(Value::String(text.to_owned())),
        DataType::Bool | DataType::Bit(_) => match text.to_ascii_lowercase().as_str() {
            "true" | "1" | "on" => Ok(Value::Bool(true)),
            "false" | "0" | "off" => Ok(Value::Bool(false)),
            _ => Err(format!("{text:?} is not a bool (true/false, 1/0, on/off)")),
        },
        _ => text
            .parse::<u64>()
            .map(Value::U64)
            .or_else(|_| text.parse::<i64>().map(Value::I64))
            .or_else(|_| {
                text.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .map(Value::F64)
                    .ok_or(())
            })
            .map_err(|()| format!("{text:?} is not a number")),
    }
}

/// Runs `read`; returns the exit code (see [`super::field_port`]).
pub fn read(args: &ReadArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let a = &args.point;
    let first = match a.point(a.address, false) {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(err, "{e}");
            return EX_USAGE;
        }
    };
    let step = first.count();
    let mut points = Vec::new();
    for i in 0..args.count {
        let address = u32::from(a.address) + u32::from(i) * u32::from(step);
        let Ok(address) = u16::try_from(address) else {
            let _ = writeln!(err, "--count {} runs past address 65535", args.count);
            return EX_USAGE;
        };
        match a.point(address, false) {
            Ok(p) => points.push(p),
            Err(e) => {
                let _ = writeln!(err, "{e}");
                return EX_USAGE;
            }
        }
    }
    let transport = match a.port.transport() {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(err, "{e}");
            return EX_USAGE;
        }
    };
    field_port::block_on(async {
        let mut ctx = match field_port::connect(&transport, err).await {
            Ok(ctx) => ctx,
            Err(code) => return code,
        };
        let mut values = Vec::new();
        for point in &points {
            match client::read_point(&mut ctx, a.unit, point, a.timeout).await {
                Ok((value, raw)) => {
                    if !a.json {
                        let _ = writeln!(
                            out,
                            "{}: {value}  (raw {})",
                            a.describe(point),
                            raw_text(&raw)
                        );
                    }
                    values.push(json!({
                        "address": point.address,
                        "value": value.to_json(),
                        "raw": raw_json(&raw),
                    }));
                }
                Err(e) => return field_port::report_request_error(&e, err),
            }
        }
        if a.json {
            let doc = json!({
                "port": a.port.port,
                "unit": a.unit,
                "table": first.table.to_string(),
                "type": first.data_type.to_string(),
                "order": format!("{:?}", first.order),
                "scale": first.scale,
                "offset": first.offset,
                "values": values,
            });
            let _ = writeln!(out, "{doc}");
        }
        0
    })
    .unwrap_or_else(|e| field_port::runtime_failed(&e, err))
}

/// Runs `write`: writes, reads back, prints the read-back; exit 1 when the device holds
/// another value than the one written (it clamped or ignored it).
pub fn write(args: &WriteArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let a = &args.point;
    let point = match a.point(a.address, true) {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(err, "{e}");
            return EX_USAGE;
        }
    };
    let value = match parse_value(&args.value, point.data_type) {
        Ok(v) => v,
        Err(e) => {
            let _ = writeln!(err, "{e}");
            return EX_USAGE;
        }
    };
    // What the point can hold (an f32 narrows, a scaled integer rounds), checked before
    // anything is sent.
    let expected = match device_protocols::codec::normalize(&point, &value) {
        Ok(v) => v,
        Err(e) => {
            let _ = writeln!(
                err,
                "cannot write {} to {}: {e}",
                args.value,
                a.describe(&point)
            );
            return EX_USAGE;
        }
    };
    let transport = match a.port.transport() {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(err, "{e}");
            return EX_USAGE;
        }
    };
    field_port::block_on(async {
        let mut ctx = match field_port::connect(&transport, err).await {
            Ok(ctx) => ctx,
            Err(code) => return code,
        };
        let read_back = match client::write_point(&mut ctx, a.unit, &point, &value, a.timeout).await
        {
            Ok(v) => v,
            Err(e) => return field_port::report_request_error(&e, err),
        };
        let same = point.same_value(&expected, &read_back);
        if a.json {
            let doc = json!({
                "port": a.port.port,
                "unit": a.unit,
                "table": point.table.to_string(),
                "address": point.address,
                "type": point.data_type.to_string(),
                "written": expected.to_json(),
                "readBack": read_back.to_json(),
                "confirmed": same,
            });
            let _ = writeln!(out, "{doc}");
        } else {
            let _ = writeln!(
                out,
                "{}: wrote {expected}, read back {read_back}",
                a.describe(&point)
            );
        }
        if same {
            0
        } else {
            let _ = writeln!(
                err,
                "the device holds {read_back}, not {expected}: it clamped or ignored the write"
            );
            1
        }
    })
    .unwrap_or_else(|e| field_port::runtime_failed(&e, err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_by_type() {
        assert_eq!(parse_value("215", DataType::U16), Ok(Value::U64(215)));
        assert_eq!(parse_value("-3", DataType::I16), Ok(Value::I64(-3)));
        assert_eq!(parse_value("21.5", DataType::F32), Ok(Value::F64(21.5)));
        assert_eq!(parse_value("on", DataType::Bit(3)), Ok(Value::Bool(true)));
        assert_eq!(
            parse_value("12", DataType::String { len: 4 }),
            Ok(Value::String("12".into()))
        );
        assert!(parse_value("x", DataType::U16).is_err());
        assert!(parse_value("NaN", DataType::F32).is_err());
        assert!(parse_value("maybe", DataType::Bool).is_err());
    }
}
