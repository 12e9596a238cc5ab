//! How long one poll cycle of a serial Modbus RTU bus keeps the line busy, so that
//! `check-config` can warn when a bus cannot keep up with the poll periods asked of it.
//!
//! Pure. For each unit, its points are planned the way the bus plans them
//! ([`device_protocols::planner::plan`] with the bus's limits); every read request then costs
//!
//! - its request frame (8 bytes: unit, function, address, count, CRC) and its response frame
//!   (5 bytes: unit, function, byte count, CRC, plus the data: 2 bytes per register, 1 per 8
//!   bits) at [`BITS_PER_CHAR`] bits per character: the Modbus RTU character is 11 bits
//!   (start, 8 data, parity or a second stop bit, stop), and using it whatever the line's
//!   actual framing keeps the estimate on the safe side for 8N1 lines;
//! - an inter-frame gap t3.5 before each of the two frames: 3.5 characters, fixed at 1.75 ms
//!   above 19200 baud (Modbus over serial line V1.02, §2.5.1.1, as the bus keeps it);
//! - the bus's `turnaround` after each answer.
//!
//! Device processing time is not counted (it is unknown): the estimate is a lower bound, and
//! a bus over it surely cannot keep up.

use std::time::Duration;

use device_protocols::planner::{self, Barriers, PlanLimits, Span};
use device_protocols::point::{Point, Table};

/// Bits of one RTU character on the wire.
pub const BITS_PER_CHAR: u64 = 11;
/// Bytes of a read request frame (fc 1–4).
pub const READ_REQUEST_BYTES: u64 = 8;
/// Bytes of a read response frame besides its data.
pub const RESPONSE_OVERHEAD_BYTES: u64 = 5;
/// Baud rate above which t3.5 is fixed.
const FIXED_GAP_ABOVE_BAUD: u32 = 19_200;
/// The fixed t3.5 above 19200 baud.
const FIXED_GAP: Duration = Duration::from_micros(1750);

/// Bytes of the data of a read response for `count` registers or bits of `table`.
pub fn response_data_bytes(table: Table, count: u16) -> u64 {
    if table.is_bits() {
        u64::from(count).div_ceil(8)
    } else {
        2 * u64::from(count)
    }
}

/// The read requests the bus makes per cycle for `points` (one unit), as (table, count).
pub fn planned_reads(points: &[Point], limits: &PlanLimits) -> Vec<(Table, u16)> {
    let spans: Vec<Span> = points.iter().map(Span::from).collect();
    planner::plan(&spans, limits, &Barriers::new())
        .requests
        .iter()
        .map(|r| (r.table, r.count))
        .collect()
}

/// Line time of one poll cycle of every unit (each a list of points) on a serial bus at
/// `baud`, with `turnaround` after each answer. See the module documentation.
pub fn cycle_wire_time(
    baud: u32,
    turnaround: Duration,
    limits: &PlanLimits,
    units: &[&[Point]],
) -> Duration {
    let reads: Vec<(Table, u16)> = units
        .iter()
        .flat_map(|points| planned_reads(points, limits))
        .collect();
    reads_wire_time(baud, turnaround, &reads)
}

/// Line time of the read requests `reads` (table, count) at `baud`, with `turnaround` after
/// each answer.
pub fn reads_wire_time(baud: u32, turnaround: Duration, reads: &[(Table, u16)]) -> Duration {
    let baud = u64::from(baud.max(1));
    let fixed_gap = baud > u64::from(FIXED_GAP_ABOVE_BAUD);
    // Work in half bits so that the 3.5-character gaps stay exact.
    let mut half_bits: u128 = 0;
    let mut extra = Duration::ZERO;
    for &(table, count) in reads {
        let chars =
            READ_REQUEST_BYTES + RESPONSE_OVERHEAD_BYTES + response_data_bytes(table, count);
        half_bits += u128::from(2 * chars * BITS_PER_CHAR);
        if fixed_gap {
            extra += FIXED_GAP * 2;
        } else {
            // Two gaps of 3.5 characters: 7 characters, 14 half characters.
            half_bits += u128::from(14 * BITS_PER_CHAR);
        }
        extra += turnaround;
    }
    let nanos = (half_bits * 1_000_000_000).div_ceil(2 * u128::from(baud));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)) + extra
}

/// A duration for warnings: `250 ms`, `3.1 s`.
pub fn format_seconds(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        let tenths = (d.as_secs_f64() * 10.0).round() / 10.0;
        format!("{tenths} s")
    }
}

#[cfg(test)]
mod tests {
    use device_protocols::point::DataType;

    use super::*;

    fn ns(n: u64) -> Duration {
        Duration::from_nanos(n)
    }

    fn p(table: Table, address: u16, data_type: DataType) -> Point {
        Point::new(format!("p{address}"), table, address, data_type).unwrap()
    }

    #[test]
    fn one_register_at_9600_is_22_characters() {
        // Request 8 + response 7 bytes = 15 characters, plus 2 × 3.5 characters of gap:
        // 22 × 11 = 242 bits at 9600 bit/s = 25.208333… ms.
        let t = reads_wire_time(9600, Duration::ZERO, &[(Table::Holding, 1)]);
        assert_eq!(t, ns(25_208_334));
    }

    #[test]
    fn forty_registers_in_one_request() {
        // 20 f32 in a row = one request of 40 registers: 8 + 5 + 80 = 93 characters + 7 of
        // gaps = 100 characters = 1100 bits at 9600 = 114.583333… ms.
        let points: Vec<Point> = (0..20)
            .map(|i| p(Table::Input, 2 * i, DataType::F32))
            .collect();
        assert_eq!(
            planned_reads(&points, &PlanLimits::default()),
            [(Table::Input, 40)]
        );
        let t = cycle_wire_time(9600, Duration::ZERO, &PlanLimits::default(), &[&points]);
        assert_eq!(t, ns(114_583_334));
    }

    #[test]
    fn distant_points_cost_two_requests_and_two_turnarounds() {
        // Registers 0 and 100 lie 99 apart (more than the bridged gap of 8): 2 × 242 bits =
        // 484 bits at 9600 = 50.416666… ms, plus 2 × 10 ms turnaround.
        let points = [
            p(Table::Holding, 0, DataType::U16),
            p(Table::Holding, 100, DataType::U16),
        ];
        let t = cycle_wire_time(
            9600,
            Duration::from_millis(10),
            &PlanLimits::default(),
            &[&points],
        );
        assert_eq!(t, ns(50_416_667) + Duration::from_millis(20));
    }

    #[test]
    fn bits_pack_eight_to_a_byte_and_tables_do_not_merge() {
        // 10 coils: 2 data bytes (like one register); one discrete input: 1 data byte.
        let coils: Vec<Point> = (0..10).map(|a| p(Table::Coil, a, DataType::Bool)).collect();
        let mut points = coils.clone();
        points.push(p(Table::DiscreteInput, 0, DataType::Bool));
        // Two requests: 15 + 14 characters of frames, plus 2 × 7 of gaps = 43 characters =
        // 473 bits at 19200 bit/s = 24.635416… ms.
        let t = cycle_wire_time(19_200, Duration::ZERO, &PlanLimits::default(), &[&points]);
        assert_eq!(t, ns(24_635_417));
    }

    #[test]
    fn above_19200_baud_the_gap_is_fixed() {
        // 15 characters = 165 bits at 38400 = 4.296875 ms, plus 2 × 1.75 ms.
        let t = reads_wire_time(38_400, Duration::ZERO, &[(Table::Input, 1)]);
        assert_eq!(t, ns(4_296_875) + ns(3_500_000));
    }

    #[test]
    fn units_add_up() {
        let a = [p(Table::Holding, 0, DataType::U16)];
        let b = [p(Table::Holding, 0, DataType::U16)];
        let limits = PlanLimits::default();
        assert_eq!(
            cycle_wire_time(9600, Duration::ZERO, &limits, &[&a, &b]),
            reads_wire_time(9600, Duration::ZERO, &[(Table::Holding, 1); 2])
        );
        assert_eq!(
            cycle_wire_time(9600, Duration::ZERO, &limits, &[]),
            Duration::ZERO
        );
    }

    #[test]
    fn seconds_are_shown_to_a_tenth_and_short_times_in_ms() {
        assert_eq!(format_seconds(Duration::from_millis(3140)), "3.1 s");
        assert_eq!(format_seconds(Duration::from_secs(1)), "1 s");
        assert_eq!(format_seconds(Duration::from_millis(250)), "250 ms");
    }
}
