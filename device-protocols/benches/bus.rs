//! Bus runtime benchmark (not a test): `cargo bench -p device-protocols --bench bus`.
//!
//! Over a real pty with the RTU simulator on the other end:
//! 1. requests per poll cycle and CPU time per transaction for 10 and 50 units × 20 contiguous
//!    holding registers polled every second, planned vs naive (one request per register);
//! 2. line capacity: transactions per second with every unit always due;
//! 3. the share of poll cycles a healthy unit keeps while one unit on the line is dead, with
//!    and without the per-unit backoff.
//!
//! The bus runs alone on a dedicated current-thread runtime, so that thread's CPU time
//! (`/proc/thread-self/schedstat`) is the bus's cost per transaction (tokio-modbus framing,
//! planner, decoding, scheduling and the tokio driver); the simulator runs on other threads.
//! `BENCH_SECS` sets the measuring window of parts 1 and 2 (default 10 s), `BENCH_DEAD_SECS`
//! that of part 3 (default 60 s, long enough for the backoff to grow).

use std::time::Duration;

use device_protocols::backoff::BackoffConfig;
use device_protocols::bus::{Bus, BusConfig, Transport, UnitConfig};
use device_protocols::health::BusHealth;
use device_protocols::planner::{AdaptivePlanner, PlanLimits};
use device_protocols::point::{DataType, Point, Table};
use device_protocols::serial::SerialSettings;
use device_protocols::sim::{RtuSim, SimMap, UnitMap};

/// CPU time of the calling thread in nanoseconds.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

struct Outcome {
    before: BusHealth,
    after: BusHealth,
    cpu_ns: u64,
    window: Duration,
}

impl Outcome {
    fn transactions(&self) -> u64 {
        let sum = |h: &BusHealth| h.units.iter().map(|u| u.transactions).sum::<u64>();
        sum(&self.after) - sum(&self.before)
    }

    fn cycles(&self, unit: u8) -> u64 {
        let c = |h: &BusHealth| h.unit(unit).map_or(0, |u| u.poll_cycles);
        c(&self.after) - c(&self.before)
    }

    fn all_cycles(&self) -> u64 {
        self.after.units.iter().map(|u| self.cycles(u.unit)).sum()
    }
}

/// Runs a bus on its own thread for `warmup + window` and measures the window.
fn run_bus(
    config: BusConfig,
    units: Vec<UnitConfig>,
    warmup: Duration,
    window: Duration,
) -> Outcome {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let (bus, mut polls) = Bus::spawn(config, units).expect("valid bus config");
            tokio::spawn(async move { while polls.recv().await.is_some() {} });
            tokio::time::sleep(warmup).await;
            let before = bus.health();
            let cpu0 = thread_cpu_ns();
            tokio::time::sleep(window).await;
            let cpu1 = thread_cpu_ns();
            let after = bus.health();
            bus.shutdown().await;
            Outcome {
                before,
                after,
                cpu_ns: cpu1 - cpu0,
                window,
            }
        })
    })
    .join()
    .expect("bench thread")
}

fn registers(n: u16) -> Vec<Point> {
    (0..n)
        .map(|a| {
            Point::new(format!("r{a}"), Table::Holding, a, DataType::U16).expect("valid point")
        })
        .collect()
}

fn bus_config(path: &std::path::Path, timeout: Duration) -> BusConfig {
    let mut settings = SerialSettings::new(path);
    settings.baud = 9600;
    let mut c = BusConfig::new("bench", Transport::Serial(settings));
    c.timeout = timeout;
    c
}

fn sim_map(units: u8) -> SimMap {
    (1..=units).fold(SimMap::new(), |m, u| {
        m.with_unit(u, UnitMap::new().with_holding(0, &[u16::from(u); 20]))
    })
}

fn requests_per_cycle(dir: &std::path::Path, warmup: Duration, window: Duration) {
    println!(
        "## Requests per poll cycle and CPU per transaction (20 contiguous u16 holding registers per unit, poll 1 s)\n"
    );
    println!(
        "| units | plan | requests / cycle | wire time / cycle at 9600 8N1 (computed) | measured transactions / cycle | cycles kept (of ideal) | bus CPU / transaction |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let serial = SerialSettings::new("/dev/null");
    for n in [10u8, 50] {
        for (label, limits) in [
            ("planned", PlanLimits::default()),
            (
                "naive (1 register / request)",
                PlanLimits {
                    max_registers: 1,
                    max_gap_registers: 0,
                    ..PlanLimits::default()
                },
            ),
        ] {
            let plan = AdaptivePlanner::for_points(&registers(20), limits);
            let per_unit = plan.plan().requests.len();
            // Request frame 8 bytes, response 5 + 2 per register, t3.5 after each frame.
            let wire: Duration = plan
                .plan()
                .requests
                .iter()
                .map(|r| {
                    serial.transmit_time(8 + 5 + 2 * usize::from(r.count))
                        + serial.inter_frame_gap() * 2
                })
                .sum::<Duration>()
                * u32::from(n);
            let sim = RtuSim::start(dir.join(format!("tty-{n}-{}", label.len())), sim_map(n))
                .expect("sim");
            let mut config = bus_config(sim.path(), Duration::from_millis(500));
            config.limits = limits;
            let units = (1..=n)
                .map(|u| UnitConfig::new(u, Duration::from_secs(1), registers(20)))
                .collect();
            let o = run_bus(config, units, warmup, window);
            let tx = o.transactions();
            let rounds = o.all_cycles() as f64 / f64::from(n);
            println!(
                "| {n} | {label} | {} | {:.2} s | {:.1} | {:.0} % | {:.1} µs |",
                per_unit * usize::from(n),
                wire.as_secs_f64(),
                tx as f64 / rounds,
                rounds / o.window.as_secs_f64() * 100.0,
                o.cpu_ns as f64 / tx as f64 / 1000.0,
            );
        }
    }
}

fn line_capacity(dir: &std::path::Path, warmup: Duration, window: Duration) {
    println!(
        "\n## Line capacity over a pty (every unit always due; 9600 baud t3.5 pacing, but a pty has no wire time)\n"
    );
    println!("| units | transactions / s | bus CPU / transaction |");
    println!("| --- | --- | --- |");
    for n in [10u8, 50] {
        let sim = RtuSim::start(dir.join(format!("tty-cap-{n}")), sim_map(n)).expect("sim");
        let units = (1..=n)
            .map(|u| UnitConfig::new(u, Duration::from_millis(1), registers(20)))
            .collect();
        let o = run_bus(
            bus_config(sim.path(), Duration::from_millis(500)),
            units,
            warmup,
            window,
        );
        let tx = o.transactions();
        println!(
            "| {n} | {:.0} | {:.1} µs |",
            tx as f64 / o.window.as_secs_f64(),
            o.cpu_ns as f64 / tx as f64 / 1000.0
        );
    }
}

/// A pty moves bytes instantly, so here each transaction is made to occupy the line for the
/// wire time it would take at 9600 8N1 (request + 20-register answer ≈ 55 ms) through the
/// turnaround delay. Ten healthy units then use ~60 % of the line every second.
fn dead_unit_share(dir: &std::path::Path, warmup: Duration, window: Duration) {
    let secs = window.as_secs();
    let n = 10u8;
    let serial = SerialSettings::new("/dev/null");
    let wire = serial.transmit_time(8 + 5 + 40);
    println!(
        "\n## Poll cycles a healthy unit keeps while one unit is dead ({n} healthy + 1 dead unit, poll 1 s, timeout 1 s, {:.0} ms line time per transaction as at 9600 8N1, {secs} s window)\n",
        wire.as_secs_f64() * 1000.0
    );
    println!(
        "| dead unit | unit backoff | healthy unit cycles kept (mean, min) | requests to the dead unit | line time lost to the dead unit |"
    );
    println!("| --- | --- | --- | --- | --- |");
    let scenarios = [
        (
            "none (all healthy)",
            false,
            BackoffConfig::new(Duration::from_secs(1), Duration::from_mins(1)),
        ),
        (
            "1 s … 60 s, jitter 20 % (default)",
            true,
            BackoffConfig::new(Duration::from_secs(1), Duration::from_mins(1)),
        ),
        (
            "none: retried every poll",
            true,
            BackoffConfig::new(Duration::from_millis(1), Duration::from_millis(1)),
        ),
    ];
    for (label, is_dead, backoff) in scenarios {
        let dead = n + 1;
        let sim = RtuSim::start(dir.join(format!("tty-dead-{}", label.len())), sim_map(dead))
            .expect("sim");
        sim.handle().set_silent(dead, is_dead);
        let mut config = bus_config(sim.path(), Duration::from_secs(1));
        config.unit_backoff = backoff;
        config.turnaround = wire;
        let units = (1..=dead)
            .map(|u| UnitConfig::new(u, Duration::from_secs(1), registers(20)))
            .collect();
        let o = run_bus(config, units, warmup, window);
        let tx = |h: &BusHealth| h.unit(dead).map_or(0, |u| u.transactions);
        let dead_requests = tx(&o.after) - tx(&o.before);
        let ideal = window.as_secs_f64();
        let shares: Vec<f64> = (1..=n).map(|u| o.cycles(u) as f64 / ideal).collect();
        let mean = shares.iter().sum::<f64>() / shares.len() as f64;
        let min = shares.iter().copied().fold(f64::INFINITY, f64::min);
        let lost = if is_dead {
            dead_requests as f64 / ideal
        } else {
            0.0
        };
        println!(
            "| {} | {label} | {:.0} %, {:.0} % | {dead_requests} | {:.0} % |",
            if is_dead { "silent" } else { "answers" },
            mean * 100.0,
            min * 100.0,
            lost * 100.0
        );
    }
}

fn main() {
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let window = Duration::from_secs(secs);
    let warmup = Duration::from_secs(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let dir = tempfile::tempdir().expect("tempdir");
    requests_per_cycle(dir.path(), warmup, window);
    line_capacity(dir.path(), warmup, window);
    let dead_window = Duration::from_secs(
        std::env::var("BENCH_DEAD_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    dead_unit_share(dir.path(), warmup, dead_window);
}
