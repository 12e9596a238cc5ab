//! `bus-efficiency`: how close the bus runtime comes to the theoretical capacity of a real
//! serial line (issue 10).
//!
//! Set-up, all real parts: the RTU simulator ([`RtuSim`], tokio-modbus server) on its own pty,
//! a [`WireRelay`] that gives the line wire time at the baud rate, and the real bus runtime
//! ([`Bus::spawn`], the code the agent polls with) opening the relay's end. The bus polls
//! `units` units of `registers` contiguous u16 holding registers each (one request per unit
//! per cycle), with a poll period short enough that every unit is always due: the line is
//! saturated, as a large installation's line is.
//!
//! The ideal transaction takes (request + answer bytes) × char time + max(t3.5, turnaround)
//! plus the simulator's configured answer delay: the wire time of the frames and the silence
//! the master must keep before each request. Achieved transactions per second come from the
//! bus's own counters; the gap before each request, the device's answer latency and the
//! relay's own lateness come from the relay's frame log.
//!
//! The frame log's instants are the relay's real-clock `std::time::Instant`s. With
//! `BUS_EFFICIENCY_DUMP=<file>` set, each run writes its gaps (ns, line order) to that file.
#![allow(clippy::disallowed_types)]

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use device_protocols::bus::{Bus, BusConfig, Transport, UnitConfig};
use device_protocols::health::BusHealth;
use device_protocols::point::{DataType, Point, Table};
use device_protocols::serial::SerialSettings;
use device_protocols::sim::{RtuSim, SimMap, UnitMap};

use crate::device::Responder;
use crate::side_thread::SideThread;
use crate::stats::{Summary, median_f64, ms, us};
use crate::wire::{Direction, Frame, WireConfig, WireRelay};

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// Baud rates to measure at (8N1).
    pub bauds: Vec<u32>,
    /// Measuring window per run.
    pub window: Duration,
    /// Warm-up before each window.
    pub warmup: Duration,
    /// Runs per baud rate.
    pub runs: usize,
    /// Units on the line.
    pub units: u8,
    /// Contiguous u16 holding registers read from each unit.
    pub registers: u16,
    /// The bus's turnaround (silence after each answer; t3.5 is always kept).
    pub turnaround: Duration,
    /// The simulator's answer delay (each unit answers this much later).
    pub sim_delay: Duration,
    /// What answers on the far side of the wire.
    pub device: Device,
}

/// The command line of `twinbridge-bench bus-efficiency`.
#[derive(Debug, clap::Args)]
pub struct Flags {
    /// Baud rates (8N1), comma separated.
    #[arg(long, value_delimiter = ',', default_value = "9600,115200")]
    baud: Vec<u32>,
    /// Measuring window of each run, in seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Warm-up before each window, in seconds.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Runs per baud rate.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Units on the line.
    #[arg(long, default_value_t = 4)]
    units: u8,
    /// Contiguous u16 holding registers read from each unit.
    #[arg(long, default_value_t = 20)]
    registers: u16,
    /// The bus's turnaround (silence after each answer, e.g. 5ms; t3.5 is always kept).
    #[arg(long, default_value = "0s", value_parser = crate::cli::duration)]
    turnaround: Duration,
    /// The device's answer delay (e.g. 2ms).
    #[arg(long, default_value = "0s", value_parser = crate::cli::duration)]
    sim_delay: Duration,
    /// The device stand-in: `direct` (tokio-modbus' RTU server over loopback TCP, no pty
    /// on the device side) or `sim` (the RTU simulator on its pty, as the tests use it).
    #[arg(long, value_enum, default_value = "direct")]
    device: Device,
}

impl Flags {
    /// The options these flags select (at least one run).
    pub fn options(self) -> Options {
        Options {
            bauds: self.baud,
            window: Duration::from_secs(self.seconds),
            warmup: Duration::from_secs(self.warmup),
            runs: self.runs.max(1),
            units: self.units,
            registers: self.registers,
            turnaround: self.turnaround,
            sim_delay: self.sim_delay,
            device: self.device,
        }
    }
}

/// The device stand-in on the far side of the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    /// [`Responder`]: tokio-modbus' RTU server over loopback TCP, the simulator's data model;
    /// no pty on the device side (small, stable answer latency).
    Direct,
    /// The RTU simulator on its pty ([`RtuSim`], as the tests use it): four pty hops per
    /// transaction (relay → line task → internal pty → server and back).
    Sim,
}

/// The outcome of one run.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Baud rate.
    pub baud: u32,
    /// Transactions in the window (bus counters).
    pub transactions: u64,
    /// Transactions without a valid answer in the window.
    pub failures: u64,
    /// Measured window.
    pub window: Duration,
    /// Ideal transaction time.
    pub ideal: Duration,
    /// The inter-frame silence the bus must keep: max(t3.5, turnaround).
    pub min_gap: Duration,
    /// Silence from the end of an answer (delivered to the bus) to the start of the next
    /// request.
    pub gap: Summary,
    /// Silence from the end of a request (delivered to the device) to the start of its
    /// answer: the simulator's latency.
    pub answer_latency: Summary,
    /// Relay lateness at frame ends.
    pub frame_end_late: Summary,
    /// Relay lateness of every byte.
    pub byte_late: Summary,
    /// Request frames seen on the wire in the window.
    pub requests_seen: usize,
    /// Request frames from their first byte read by the relay to their last byte delivered
    /// (ideal: request bytes × char time).
    pub request_frame: Summary,
    /// Answer frames, the same way (ideal: answer bytes × char time; longer when the device
    /// writes its answer in pieces).
    pub answer_frame: Summary,
    /// Answer frames per request frame (1 unless answers arrive in pieces more than t1.5
    /// apart).
    pub answer_pieces: f64,
    /// Gaps before a request longer than the minimum gap + 1 ms (scheduling stalls rather
    /// than wake-up latency).
    pub long_gaps: usize,
}

impl RunResult {
    /// Mean gap beyond the minimum: what the bus side (its wake-ups, the pty hops between bus
    /// and wire, preemption) adds to every transaction.
    pub fn gap_excess_mean(&self) -> f64 {
        (self.gap.mean as f64 - self.min_gap.as_nanos() as f64) / 1e6
    }

    /// Share of the gaps longer than the minimum gap + 1 ms.
    pub fn long_gap_share(&self) -> f64 {
        self.long_gaps as f64 / self.gap.n.max(1) as f64
    }
}

impl RunResult {
    /// Transactions per second achieved.
    pub fn achieved(&self) -> f64 {
        self.transactions as f64 / self.window.as_secs_f64()
    }

    /// Transactions per second of the ideal line.
    pub fn ideal_rate(&self) -> f64 {
        1.0 / self.ideal.as_secs_f64()
    }

    /// Achieved / ideal.
    pub fn ratio(&self) -> f64 {
        self.achieved() / self.ideal_rate()
    }

    /// Achieved / ideal when the ideal also contains the device's measured (mean) answer
    /// latency: what is left is lost on the bus side (gap beyond t3.5) and in the relay.
    pub fn ratio_bus_only(&self) -> f64 {
        let ideal = self.ideal.as_secs_f64() + self.answer_latency.mean as f64 * 1e-9;
        self.achieved() * ideal
    }
}

fn settings(path: &std::path::Path, baud: u32) -> SerialSettings {
    let mut s = SerialSettings::new(path);
    s.baud = baud;
    s
}

/// Request and answer sizes of a read of `registers` holding registers (RTU).
fn frame_bytes(registers: u16) -> (usize, usize) {
    // unit, fc, address ×2, count ×2, CRC ×2 / unit, fc, byte count, data, CRC ×2.
    (8, 5 + 2 * usize::from(registers))
}

/// The ideal transaction time at `baud` for `opts`' frames.
pub fn ideal_transaction(baud: u32, opts: &Options) -> Duration {
    let s = settings(std::path::Path::new("/dev/null"), baud);
    let (req, ans) = frame_bytes(opts.registers);
    s.transmit_time(req + ans) + s.inter_frame_gap().max(opts.turnaround) + opts.sim_delay
}

/// Runs the benchmark and prints the report to stdout.
pub fn run(opts: &Options) -> anyhow::Result<Vec<RunResult>> {
    if opts.units == 0 || opts.units > 247 || opts.registers == 0 || opts.registers > 125 {
        bail!("units must be 1–247 and registers 1–125");
    }
    let dir = tempfile::tempdir().context("creating a temporary directory for the ptys")?;
    let mut results = Vec::new();
    println!(
        "bus-efficiency: {} units × {} u16 holding registers (request {} B, answer {} B), 8N1, \
         turnaround {:?}, device {:?} with answer delay {:?}, window {:?} after {:?} warm-up, {} run(s) per baud",
        opts.units,
        opts.registers,
        frame_bytes(opts.registers).0,
        frame_bytes(opts.registers).1,
        opts.turnaround,
        opts.device,
        opts.sim_delay,
        opts.window,
        opts.warmup,
        opts.runs
    );
    println!();
    println!(
        "| baud | run | achieved tx/s | ideal tx/s | achieved / ideal | gap before request: median / p99 / min / mean (ms) | t3.5 (ms) | device answer latency median / mean (µs) | achieved / (ideal + mean device latency) | relay lateness at frame end: median / p99 (µs) | gaps > t3.5 + 1 ms | failed tx |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: |");
    for &baud in &opts.bauds {
        for run in 1..=opts.runs {
            let r = run_once(dir.path(), baud, opts)
                .with_context(|| format!("bus-efficiency at {baud} baud, run {run}"))?;
            println!(
                "| {baud} | {run} | {:.2} | {:.2} | {:.1} % | {} / {} / {} / {} | {} | {} / {} | {:.1} % | {} / {} | {:.1} % | {} |",
                r.achieved(),
                r.ideal_rate(),
                r.ratio() * 100.0,
                ms(r.gap.median),
                ms(r.gap.p99),
                ms(r.gap.min),
                ms(r.gap.mean),
                ms(nanos(r.min_gap)),
                us(r.answer_latency.median),
                us(r.answer_latency.mean),
                r.ratio_bus_only() * 100.0,
                us(r.frame_end_late.median),
                us(r.frame_end_late.p99),
                r.long_gap_share() * 100.0,
                r.failures,
            );
            results.push(r);
        }
    }
    print_medians(&results, opts);
    print_breakdown(&results, opts);
    Ok(results)
}

/// Medians over the runs of each baud rate.
fn print_medians(results: &[RunResult], opts: &Options) {
    println!();
    println!("Medians over the runs:");
    println!();
    println!(
        "| baud | achieved tx/s | ideal tx/s | achieved / ideal (min–max) | gap median − t3.5 (ms) | gap min − t3.5 (ms) | gap mean − t3.5 (ms) | gaps > t3.5 + 1 ms | device latency mean (ms) | relay byte lateness median / p99 / max (µs) |"
    );
    println!("| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |");
    for &baud in &opts.bauds {
        let rs: Vec<&RunResult> = results.iter().filter(|r| r.baud == baud).collect();
        let ratios: Vec<f64> = rs.iter().map(|r| r.ratio() * 100.0).collect();
        let excess: Vec<f64> = rs
            .iter()
            .map(|r| (r.gap.median as f64 - r.min_gap.as_nanos() as f64) / 1e6)
            .collect();
        let min_excess = rs
            .iter()
            .map(|r| (r.gap.min as f64 - r.min_gap.as_nanos() as f64) / 1e6)
            .fold(f64::INFINITY, f64::min);
        let late_med: Vec<f64> = rs.iter().map(|r| r.byte_late.median as f64).collect();
        let late_p99: Vec<f64> = rs.iter().map(|r| r.byte_late.p99 as f64).collect();
        let late_max = rs.iter().map(|r| r.byte_late.max).max().unwrap_or(0);
        println!(
            "| {baud} | {:.2} | {:.2} | {:.1} % ({:.1}–{:.1}) | {:.3} | {:.3} | {:.3} | {:.1} % | {:.3} | {:.0} / {:.0} / {} |",
            median_f64(&rs.iter().map(|r| r.achieved()).collect::<Vec<_>>()),
            rs.first().map_or(0.0, |r| r.ideal_rate()),
            median_f64(&ratios),
            ratios.iter().copied().fold(f64::INFINITY, f64::min),
            ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            median_f64(&excess),
            min_excess,
            median_f64(&rs.iter().map(|r| r.gap_excess_mean()).collect::<Vec<_>>()),
            median_f64(
                &rs.iter()
                    .map(|r| r.long_gap_share() * 100.0)
                    .collect::<Vec<_>>()
            ),
            median_f64(
                &rs.iter()
                    .map(|r| r.answer_latency.mean as f64 / 1e6)
                    .collect::<Vec<_>>()
            ),
            median_f64(&late_med) / 1e3,
            median_f64(&late_p99) / 1e3,
            us(late_max),
        );
    }
}

/// Where the time of each run's mean transaction goes.
fn print_breakdown(results: &[RunResult], opts: &Options) {
    println!();
    println!(
        "Where the time of a transaction goes (means over the window, from the relay's frame log; ms):"
    );
    println!();
    println!(
        "| baud | run | request on the wire (ideal) | device answer latency | answer on the wire (ideal) | answer pieces / request | gap before request (t3.5) | sum | measured period (window / tx) |"
    );
    println!("| ---: | ---: | --- | ---: | --- | ---: | --- | ---: | ---: |");
    for (i, r) in results.iter().enumerate() {
        let line = settings(std::path::Path::new("/dev/null"), r.baud);
        let (req, ans) = frame_bytes(opts.registers);
        let sum = r.request_frame.mean + r.answer_latency.mean + r.answer_frame.mean + r.gap.mean;
        println!(
            "| {} | {} | {} ({}) | {} | {} ({}) | {:.2} | {} ({}) | {} | {} |",
            r.baud,
            i % opts.runs + 1,
            ms(r.request_frame.mean),
            ms(nanos(line.transmit_time(req))),
            ms(r.answer_latency.mean),
            ms(r.answer_frame.mean),
            ms(nanos(line.transmit_time(ans))),
            r.answer_pieces,
            ms(r.gap.mean),
            ms(nanos(r.min_gap)),
            ms(sum),
            ms(nanos(r.window) / r.transactions.max(1)),
        );
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn sim_map(opts: &Options) -> SimMap {
    (1..=opts.units).fold(SimMap::new(), |m, u| {
        let values: Vec<u16> = (0..opts.registers)
            .map(|r| u16::from(u) * 1000 + r)
            .collect();
        m.with_unit(u, UnitMap::new().with_holding(0, &values))
    })
}

fn units(opts: &Options) -> anyhow::Result<Vec<UnitConfig>> {
    (1..=opts.units)
        .map(|u| {
            let points = (0..opts.registers)
                .map(|a| Point::new(format!("r{a}"), Table::Holding, a, DataType::U16))
                .collect::<Result<Vec<_>, _>>()
                .context("building points")?;
            // Always due: the line is saturated.
            Ok(UnitConfig::new(u, Duration::from_millis(1), points))
        })
        .collect()
}

/// The simulator on its own thread and current-thread runtime (as a device is separate from
/// the gateway): its pty's path, and the thread (stopping it stops the simulator).
fn start_sim(
    link: std::path::PathBuf,
    opts: &Options,
) -> anyhow::Result<(std::path::PathBuf, SideThread)> {
    let map = sim_map(opts);
    let delay = (!opts.sim_delay.is_zero()).then_some(opts.sim_delay);
    let unit_ids: Vec<u8> = (1..=opts.units).collect();
    SideThread::start("simulator", move || async move {
        let sim = RtuSim::start(link, map).context("starting the simulator")?;
        for u in unit_ids {
            sim.handle().set_delay(u, delay);
        }
        let path = sim.path().to_owned();
        // The simulator lives (and serves) as long as this future.
        let serve = async move {
            let _sim = sim;
            std::future::pending::<()>().await;
        };
        Ok((path, serve))
    })
}

/// The far side of the wire while a run lasts.
enum FarSide {
    Sim(SideThread),
    Direct(Responder),
}

impl FarSide {
    fn stop(self) -> anyhow::Result<()> {
        match self {
            FarSide::Sim(thread) => thread.stop(),
            FarSide::Direct(responder) => responder.stop(),
        }
    }
}

/// The device stand-in and the wire relay in front of it.
fn start_line(
    dir: &std::path::Path,
    baud: u32,
    opts: &Options,
    line: &SerialSettings,
) -> anyhow::Result<(FarSide, WireRelay)> {
    let link = dir.join(format!("line-{baud}"));
    Ok(match opts.device {
        Device::Sim => {
            let (sim_path, sim_thread) = start_sim(dir.join(format!("sim-{baud}")), opts)?;
            let far = FarSide::Sim(sim_thread);
            let relay = WireRelay::start(link, &sim_path, WireConfig::for_serial(line))?;
            (far, relay)
        }
        Device::Direct => {
            let responder = Responder::start(sim_map(opts), opts.sim_delay)?;
            let relay = WireRelay::start_tcp(link, responder.addr(), WireConfig::for_serial(line))?;
            (FarSide::Direct(responder), relay)
        }
    })
}

fn run_once(dir: &std::path::Path, baud: u32, opts: &Options) -> anyhow::Result<RunResult> {
    let line = settings(std::path::Path::new("/dev/null"), baud);
    let (far, relay) = start_line(dir, baud, opts, &line)?;
    let mut config = BusConfig::new(
        format!("bench-{baud}"),
        Transport::Serial(settings(relay.path(), baud)),
    );
    config.turnaround = opts.turnaround;
    let units = units(opts)?;
    let (warmup, window) = (opts.warmup, opts.window);
    let measured = std::thread::scope(|scope| {
        let relay = &relay;
        scope
            .spawn(
                move || -> anyhow::Result<(BusHealth, BusHealth, Duration, Vec<Frame>)> {
                    // The bus alone on a current-thread runtime, as `twinbridge run` runs it.
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("bus runtime")?;
                    rt.block_on(async move {
                        let (bus, mut polls) =
                            Bus::spawn(config, units).context("starting the bus")?;
                        tokio::spawn(async move { while polls.recv().await.is_some() {} });
                        tokio::time::sleep(warmup).await;
                        relay.reset();
                        let before = bus.health();
                        let t0 = Instant::now();
                        tokio::time::sleep(window).await;
                        let after = bus.health();
                        let elapsed = t0.elapsed();
                        let frames = relay.frames();
                        bus.shutdown().await;
                        Ok((before, after, elapsed, frames))
                    })
                },
            )
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the bus thread panicked")))
    });
    let pacing = relay.pacing();
    relay.stop()?;
    far.stop()?;
    let (before, after, elapsed, frames) = measured?;
    let sum = |h: &BusHealth, f: fn(&device_protocols::health::UnitHealth) -> u64| {
        h.units.iter().map(f).sum::<u64>()
    };
    let transactions = sum(&after, |u| u.transactions) - sum(&before, |u| u.transactions);
    let successes = sum(&after, |u| u.successes) - sum(&before, |u| u.successes);
    if transactions == 0 {
        bail!("no transaction in the window: is the line working? ({after:?})");
    }
    if successes < transactions {
        // Which side held the answer back: a split or late answer on the wire means the
        // device side; complete, prompt answers mean the bus did not read what it was given.
        let answer_bytes = frame_bytes(opts.registers).1;
        let odd = frames
            .iter()
            .filter(|f| f.dir == Direction::FarToNear && f.bytes != answer_bytes)
            .map(|f| f.bytes)
            .collect::<Vec<_>>();
        let t = line_timing(frames.clone());
        eprintln!(
            "  {baud} baud line: answer frames not of {answer_bytes} bytes: {odd:?}; longest answer \
             latency {} ms, longest gap before a request {} ms",
            ms(t.latencies.iter().copied().max().unwrap_or(0)),
            ms(t.gaps.iter().copied().max().unwrap_or(0)),
        );
        for u in &after.units {
            eprintln!(
                "  {baud} baud unit {}: timeouts {}, corrupted {}, exceptions {}, last error: {:?}",
                u.unit, u.timeouts, u.crc_errors, u.exceptions, u.last_error
            );
        }
    }
    let timing = line_timing(frames);
    dump_gaps(&timing.gaps)?;
    let min_gap = line.inter_frame_gap().max(opts.turnaround);
    let long = nanos(min_gap + Duration::from_millis(1));
    Ok(RunResult {
        baud,
        transactions,
        failures: transactions - successes,
        window: elapsed,
        ideal: ideal_transaction(baud, opts),
        min_gap,
        long_gaps: timing.gaps.iter().filter(|&&g| g > long).count(),
        gap: Summary::of(&timing.gaps),
        answer_latency: Summary::of(&timing.latencies),
        frame_end_late: Summary::of(&pacing.frame_end_ns),
        byte_late: Summary::of(&pacing.byte_ns),
        requests_seen: timing.requests.len(),
        request_frame: Summary::of(&timing.requests),
        answer_frame: Summary::of(&timing.answers),
        answer_pieces: timing.answers.len() as f64 / timing.requests.len().max(1) as f64,
    })
}

/// With `BUS_EFFICIENCY_DUMP=<file>`: writes the gaps before requests in line order, one a
/// line (ns), for the distribution and clustering of long gaps behind the summaries.
fn dump_gaps(gaps: &[u64]) -> anyhow::Result<()> {
    let Some(path) = std::env::var_os("BUS_EFFICIENCY_DUMP") else {
        return Ok(());
    };
    let mut lines = gaps
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    lines.push('\n');
    std::fs::write(&path, lines)
        .with_context(|| format!("writing {}", std::path::Path::new(&path).display()))
}

/// What the frame log says about the line.
#[derive(Debug, Default, PartialEq, Eq)]
struct LineTiming {
    /// Silences before requests: answer delivered → next request starts.
    gaps: Vec<u64>,
    /// Answer latencies: request delivered → answer starts.
    latencies: Vec<u64>,
    /// Request frames, first byte read → last byte delivered.
    requests: Vec<u64>,
    /// Answer frames, the same way.
    answers: Vec<u64>,
}

fn line_timing(mut frames: Vec<Frame>) -> LineTiming {
    frames.sort_by_key(|f| f.start);
    let mut t = LineTiming::default();
    for pair in frames.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let silence = nanos(b.start.saturating_duration_since(a.delivered));
        match (a.dir, b.dir) {
            (Direction::FarToNear, Direction::NearToFar) => t.gaps.push(silence),
            (Direction::NearToFar, Direction::FarToNear) => t.latencies.push(silence),
            _ => {}
        }
    }
    for f in &frames {
        let d = nanos(f.delivered.saturating_duration_since(f.start));
        match f.dir {
            Direction::NearToFar => t.requests.push(d),
            Direction::FarToNear => t.answers.push(d),
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options {
            bauds: vec![9600],
            window: Duration::from_secs(1),
            warmup: Duration::from_secs(1),
            runs: 1,
            units: 4,
            registers: 20,
            turnaround: Duration::ZERO,
            sim_delay: Duration::ZERO,
            device: Device::Direct,
        }
    }

    #[test]
    fn ideal_is_wire_time_plus_the_gap_before_each_request() {
        // 53 bytes × 1041.667 µs + t3.5 (3645.834 µs) at 9600 8N1.
        let d = ideal_transaction(9600, &opts());
        assert_eq!(d, Duration::from_nanos(1_041_667 * 53 + 3_645_834));
        // Above 19200 baud t3.5 is fixed at 1.75 ms.
        let d = ideal_transaction(115_200, &opts());
        assert_eq!(d, Duration::from_nanos(86_806 * 53 + 1_750_000));
        // A turnaround longer than t3.5 replaces it; the simulator's delay adds.
        let mut o = opts();
        o.turnaround = Duration::from_millis(5);
        o.sim_delay = Duration::from_millis(1);
        assert_eq!(
            ideal_transaction(115_200, &o),
            Duration::from_nanos(86_806 * 53 + 6_000_000)
        );
    }

    #[test]
    fn line_timing_pairs_answers_and_requests() {
        let t = Instant::now();
        let ms = |m: u64| t + Duration::from_millis(m);
        let frame = |dir, start, delivered| Frame {
            dir,
            start: ms(start),
            end: ms(delivered),
            delivered: ms(delivered),
            bytes: 1,
        };
        let frames = vec![
            frame(Direction::FarToNear, 12, 20),
            frame(Direction::NearToFar, 0, 10),
            frame(Direction::NearToFar, 24, 30),
            frame(Direction::FarToNear, 31, 40),
        ];
        let t = line_timing(frames);
        assert_eq!(t.gaps, vec![4_000_000]);
        assert_eq!(t.latencies, vec![2_000_000, 1_000_000]);
        assert_eq!(t.requests, vec![10_000_000, 6_000_000]);
        assert_eq!(t.answers, vec![8_000_000, 9_000_000]);
    }
}
