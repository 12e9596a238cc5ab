//! Read planner: groups the points of one unit into as few read requests as possible.
//!
//! Pure. Points of one table are sorted by address and packed greedily: a point joins the
//! current request if the gap before it is at most `max_gap_*`, the request stays within the
//! size limit (125 registers / 2000 bits and the configured maximum), and no *barrier* lies
//! between the request's first point and it. Greedy packing of sorted points is optimal for
//! contiguous points (exchange argument: taking as many points as fit into the first request
//! never hurts the rest).
//!
//! Barriers are what makes it adaptive: when a unit answers a merged request with exception 02
//! (illegal data address), [`AdaptivePlanner::on_illegal_address`] splits that request — first at
//! the bridged gaps (the usual culprit is an undefined register in a gap), then in halves — and
//! remembers the split. Down at a single point that still fails, the point is reported
//! unreadable and fenced off so it never blanks its neighbours again. (The bus also splits
//! on exception 03 when a request merges points at different addresses: some devices answer
//! 03 to reads that are too long for them or that cross an undefined register.)
//!
//! Points that start at the same address (aliases, e.g. a `u16` and a `u32` both at 10)
//! cannot be separated by a barrier: when their read fails, the longest are *isolated* (read
//! on their own from then on) and the shorter ones retried, so a healthy `u16` is never
//! blanked by a `u32` that runs into an undefined register.

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::point::{Point, Table};

/// Protocol limit for fc 3/4.
pub const MAX_READ_REGISTERS: u16 = 125;
/// Protocol limit for fc 1/2.
pub const MAX_READ_BITS: u16 = 2000;

/// Size limits for the planner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlanLimits {
    /// Maximum registers per fc 3/4 request (clamped to 125).
    pub max_registers: u16,
    /// Maximum bits per fc 1/2 request (clamped to 2000).
    pub max_bits: u16,
    /// Largest run of unused registers bridged to merge two requests.
    pub max_gap_registers: u16,
    /// Largest run of unused bits bridged to merge two requests.
    pub max_gap_bits: u16,
    /// Highest address that may be read (inclusive), in every table. `None`: 65535.
    pub ceiling: Option<u16>,
}

impl Default for PlanLimits {
    fn default() -> Self {
        Self {
            max_registers: MAX_READ_REGISTERS,
            max_bits: MAX_READ_BITS,
            max_gap_registers: 8,
            max_gap_bits: 64,
            ceiling: None,
        }
    }
}

impl PlanLimits {
    /// Effective maximum request size for a table.
    pub fn max_count(&self, table: Table) -> u16 {
        if table.is_bits() {
            self.max_bits.clamp(1, MAX_READ_BITS)
        } else {
            self.max_registers.clamp(1, MAX_READ_REGISTERS)
        }
    }

    /// Maximum bridged gap for a table.
    pub fn max_gap(&self, table: Table) -> u16 {
        if table.is_bits() {
            self.max_gap_bits
        } else {
            self.max_gap_registers
        }
    }
}

/// Where a point lives, as far as the planner cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Span {
    /// Table.
    pub table: Table,
    /// First address.
    pub address: u16,
    /// Registers or bits (≥ 1).
    pub count: u16,
}

impl Span {
    /// One past the last address (may be 65536).
    pub fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.count)
    }
}

impl From<&Point> for Span {
    fn from(p: &Point) -> Self {
        Self {
            table: p.table,
            address: p.address,
            count: p.count(),
        }
    }
}

/// One read request. `points` are indices into the planner's point list, sorted by address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReadRequest {
    /// Table (decides fc 1/2/3/4).
    pub table: Table,
    /// First address.
    pub address: u16,
    /// Registers or bits.
    pub count: u16,
    /// Indices of the points this request serves.
    pub points: Vec<usize>,
}

impl ReadRequest {
    /// One past the last address.
    pub fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.count)
    }
}

/// Why a point cannot be read at all with the current limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanIssue {
    /// The point reaches past the configured ceiling.
    #[error("address {address}..{end} reaches past the ceiling {ceiling}")]
    PastCeiling {
        /// First address.
        address: u16,
        /// One past the last.
        end: u32,
        /// Configured ceiling.
        ceiling: u16,
    },
    /// The point is larger than the maximum request.
    #[error("{count} registers/bits exceed the request maximum {max}")]
    TooLarge {
        /// Point size.
        count: u16,
        /// Limit.
        max: u16,
    },
    /// The point is empty.
    #[error("point has zero length")]
    Empty,
}

/// The result of planning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Requests, grouped by table then ascending address.
    pub requests: Vec<ReadRequest>,
    /// Points that cannot be read at all.
    pub unplannable: Vec<(usize, PlanIssue)>,
}

/// Split markers: no request may hold points starting both below and at/above a barrier.
pub type Barriers = BTreeSet<(Table, u16)>;

/// Spans read on their own: a request holding one of them holds only points of exactly that
/// span. Learned for points that fail while sharing their start address with others (a
/// barrier, being an address, cannot separate points that start at the same register).
pub type Isolated = BTreeSet<(Table, u16, u16)>;

fn span_key(s: Span) -> (Table, u16, u16) {
    (s.table, s.address, s.count)
}

/// Plans reads for `spans` (all of one unit).
pub fn plan(spans: &[Span], limits: &PlanLimits, barriers: &Barriers) -> Plan {
    plan_subset(spans, limits, barriers, &Isolated::new(), None)
}

/// Plans reads; `subset`, if given, restricts planning to those point indices.
fn plan_subset(
    spans: &[Span],
    limits: &PlanLimits,
    barriers: &Barriers,
    isolated: &Isolated,
    subset: Option<&[usize]>,
) -> Plan {
    let mut out = Plan::default();
    let mut order: Vec<usize> = match subset {
        Some(s) => s.to_vec(),
        None => (0..spans.len()).collect(),
    };
    order.retain(|&i| match check(spans[i], limits) {
        Ok(()) => true,
        Err(issue) => {
            out.unplannable.push((i, issue));
            false
        }
    });
    order.sort_by_key(|&i| (spans[i].table, spans[i].address, spans[i].count, i));
    order.dedup();

    let mut current: Option<ReadRequest> = None;
    // The current request holds an isolated span (and nothing else).
    let mut current_isolated = false;
    for i in order {
        let s = spans[i];
        let s_isolated = isolated.contains(&span_key(s));
        if let Some(req) = current.as_mut() {
            let isolation_ok = if current_isolated || s_isolated {
                current_isolated
                    && s_isolated
                    && req.table == s.table
                    && req.address == s.address
                    && req.count == s.count
            } else {
                true
            };
            let end = req.end();
            let new_end = end.max(s.end());
            let gap = u32::from(s.address).saturating_sub(end);
            let blocked = s.address > req.address
                && barriers
                    .range((s.table, req.address + 1)..=(s.table, s.address))
                    .next()
                    .is_some();
            if req.table == s.table
                && gap <= u32::from(limits.max_gap(s.table))
                && new_end - u32::from(req.address) <= u32::from(limits.max_count(s.table))
                && !blocked
                && isolation_ok
            {
                req.count = (new_end - u32::from(req.address)) as u16;
                req.points.push(i);
                continue;
            }
            out.requests
                .push(current.take().expect("checked Some just above"));
        }
        current = Some(ReadRequest {
            table: s.table,
            address: s.address,
            count: s.count,
            points: vec![i],
        });
        current_isolated = s_isolated;
    }
    out.requests.extend(current);
    out
}

fn check(s: Span, limits: &PlanLimits) -> Result<(), PlanIssue> {
    if s.count == 0 {
        return Err(PlanIssue::Empty);
    }
    let max = limits.max_count(s.table);
    if s.count > max {
        return Err(PlanIssue::TooLarge {
            count: s.count,
            max,
        });
    }
    let ceiling = limits.ceiling.unwrap_or(u16::MAX);
    if s.end() > u32::from(ceiling) + 1 {
        return Err(PlanIssue::PastCeiling {
            address: s.address,
            end: s.end(),
            ceiling,
        });
    }
    Ok(())
}

/// What to do after a request failed with exception 02.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitOutcome {
    /// Read these smaller requests instead (they cover exactly the failed request's points).
    Retry(Vec<ReadRequest>),
    /// These points fail on their own: report them as illegal address.
    Unreadable(Vec<usize>),
}

/// A unit's plan that learns from exception 02.
#[derive(Debug, Clone)]
pub struct AdaptivePlanner {
    spans: Vec<Span>,
    limits: PlanLimits,
    barriers: Barriers,
    isolated: Isolated,
    plan: Plan,
}

impl AdaptivePlanner {
    /// Plans `spans` with `limits` and no learned splits.
    pub fn new(spans: Vec<Span>, limits: PlanLimits) -> Self {
        let barriers = Barriers::new();
        let plan = plan(&spans, &limits, &barriers);
        Self {
            spans,
            limits,
            barriers,
            isolated: Isolated::new(),
            plan,
        }
    }

    /// Plans the given points.
    pub fn for_points<'a>(points: impl IntoIterator<Item = &'a Point>, limits: PlanLimits) -> Self {
        Self::new(points.into_iter().map(Span::from).collect(), limits)
    }

    /// The current plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The learned split markers.
    pub fn barriers(&self) -> &Barriers {
        &self.barriers
    }

    /// The learned spans that are read on their own.
    pub fn isolated(&self) -> &Isolated {
        &self.isolated
    }

    /// The point spans.
    pub fn spans(&self) -> &[Span] {
        &self.spans
    }

    /// Learns from an exception 02 answer to `failed` (or an exception the caller treats
    /// alike) and says what to do with its points.
    pub fn on_illegal_address(&mut self, failed: &ReadRequest) -> SplitOutcome {
        let table = failed.table;
        let mut pts: Vec<usize> = failed.points.clone();
        pts.sort_by_key(|&i| (self.spans[i].address, self.spans[i].count));
        let mut starts: Vec<u16> = pts.iter().map(|&i| self.spans[i].address).collect();
        starts.dedup();

        if starts.len() <= 1 {
            // Points sharing one start address: read the longest on their own from now on
            // (so that a healthy shorter alias is never merged into their failing read) …
            let end = pts.iter().map(|&i| self.spans[i].end()).max().unwrap_or(0);
            for &i in &pts {
                if self.spans[i].end() == end {
                    self.isolated.insert(span_key(self.spans[i]));
                }
            }
            if pts.iter().any(|&i| self.spans[i].end() != end) {
                // … and retry: the shorter ones may well be readable.
                return self.replan_and_retry(&pts);
            }
            // One span fails alone: fence it off.
            self.barriers.insert((table, failed.address));
            if let Ok(end) = u16::try_from(end) {
                self.barriers.insert((table, end));
            }
            self.replan();
            return SplitOutcome::Unreadable(pts);
        }

        // Split at every bridged gap first; with no gaps, halve at the middle start address.
        let mut covered_to = u32::from(failed.address);
        let mut gap_barriers = Vec::new();
        for &i in &pts {
            let s = self.spans[i];
            if u32::from(s.address) > covered_to {
                gap_barriers.push(s.address);
            }
            covered_to = covered_to.max(s.end());
        }
        if gap_barriers.is_empty() {
            gap_barriers.push(starts[starts.len() / 2]);
        }
        for b in gap_barriers {
            self.barriers.insert((table, b));
        }
        self.replan_and_retry(&pts)
    }

    /// Plans all points, or only `subset`, with everything learned so far.
    fn plan_of(&self, subset: Option<&[usize]>) -> Plan {
        plan_subset(
            &self.spans,
            &self.limits,
            &self.barriers,
            &self.isolated,
            subset,
        )
    }

    fn replan(&mut self) {
        self.plan = self.plan_of(None);
    }

    /// Replans with what was just learned and retries the failed request's points `pts`.
    fn replan_and_retry(&mut self, pts: &[usize]) -> SplitOutcome {
        self.replan();
        SplitOutcome::Retry(self.plan_of(Some(pts)).requests)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(addrs: &[(u16, u16)]) -> Vec<Span> {
        addrs
            .iter()
            .map(|&(address, count)| Span {
                table: Table::Holding,
                address,
                count,
            })
            .collect()
    }

    /// The point groups of `requests`, in order.
    fn point_groups(requests: &[ReadRequest]) -> Vec<Vec<usize>> {
        requests.iter().map(|r| r.points.clone()).collect()
    }

    /// The `(address, count)` ranges of `requests`, in order.
    fn ranges(requests: &[ReadRequest]) -> Vec<(u16, u16)> {
        requests.iter().map(|r| (r.address, r.count)).collect()
    }

    #[test]
    fn merges_contiguous_and_small_gaps_but_not_large_ones() {
        let spans = regs(&[(0, 1), (1, 2), (3, 1), (10, 1), (40, 2)]);
        let p = plan(&spans, &PlanLimits::default(), &Barriers::new());
        let got = ranges(&p.requests);
        assert_eq!(got, [(0, 11), (40, 2)]);
    }

    #[test]
    fn tables_never_mix() {
        let spans = vec![
            Span {
                table: Table::Holding,
                address: 0,
                count: 1,
            },
            Span {
                table: Table::Input,
                address: 1,
                count: 1,
            },
        ];
        let p = plan(&spans, &PlanLimits::default(), &Barriers::new());
        assert_eq!(p.requests.len(), 2);
    }

    #[test]
    fn ceiling_and_size_are_reported() {
        let spans = regs(&[(0, 1), (99, 2), (10, 50)]);
        let limits = PlanLimits {
            ceiling: Some(99),
            max_registers: 40,
            ..PlanLimits::default()
        };
        let p = plan(&spans, &limits, &Barriers::new());
        assert_eq!(p.requests.len(), 1);
        assert_eq!(p.unplannable.len(), 2);
    }

    #[test]
    fn undefined_gap_register_is_split_off_first() {
        let spans = regs(&[(0, 2), (2, 2), (6, 2), (8, 1)]);
        let mut ap = AdaptivePlanner::new(spans, PlanLimits::default());
        assert_eq!(ap.plan().requests.len(), 1);
        let failed = ap.plan().requests[0].clone();
        let SplitOutcome::Retry(retry) = ap.on_illegal_address(&failed) else {
            panic!("expected retry")
        };
        let got = ranges(&retry);
        assert_eq!(got, [(0, 4), (6, 3)]);
        assert_eq!(ap.plan().requests.len(), 2, "split is remembered");
    }

    /// A `u32` at 18 that runs into an undefined register 19 and a healthy `u16` alias at 18.
    #[test]
    fn a_failing_alias_never_blanks_a_healthy_one() {
        let spans = regs(&[(18, 1), (18, 8)]);
        let mut ap = AdaptivePlanner::new(spans, PlanLimits::default());
        let merged = ap.plan().requests[0].clone();
        assert_eq!(merged.points, [0, 1]);
        let SplitOutcome::Retry(parts) = ap.on_illegal_address(&merged) else {
            panic!("expected retry")
        };
        let got = point_groups(&parts);
        assert_eq!(got, [vec![0], vec![1]]);
        assert_eq!(
            ap.on_illegal_address(&parts[1]),
            SplitOutcome::Unreadable(vec![1])
        );
        let got = ranges(&ap.plan().requests);
        assert_eq!(got, [(18, 1), (18, 8)]);
    }

    /// Found by the property test: fencing the long alias must not pull the healthy short one
    /// (read fine together with its lower neighbour until then) into the fenced request.
    #[test]
    fn fencing_an_alias_keeps_the_healthy_alias_out() {
        let limits = PlanLimits {
            max_registers: 8,
            max_gap_registers: 0,
            ..PlanLimits::default()
        };
        let mut ap = AdaptivePlanner::new(regs(&[(17, 1), (18, 1), (18, 8)]), limits);
        let got = point_groups(&ap.plan().requests);
        assert_eq!(got, [vec![0, 1], vec![2]]);
        let failing = ap.plan().requests[1].clone();
        assert_eq!(
            ap.on_illegal_address(&failing),
            SplitOutcome::Unreadable(vec![2])
        );
        let got = point_groups(&ap.plan().requests);
        assert_eq!(got, [vec![0], vec![1], vec![2]]);
    }

    #[test]
    fn single_failing_point_is_fenced() {
        let spans = regs(&[(0, 1), (1, 1), (2, 1)]);
        let mut ap = AdaptivePlanner::new(spans, PlanLimits::default());
        let lone = ReadRequest {
            table: Table::Holding,
            address: 1,
            count: 1,
            points: vec![1],
        };
        assert_eq!(
            ap.on_illegal_address(&lone),
            SplitOutcome::Unreadable(vec![1])
        );
        let got = point_groups(&ap.plan().requests);
        assert_eq!(got, [vec![0], vec![1], vec![2]]);
    }
}
