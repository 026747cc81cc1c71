//! How fast webhook deliveries start: as fast as the endpoints and Postgres
//! take them while the machine has CPU to spare, and a trickle while it has
//! none. A delivery costs CPU in the worker, in Postgres and in the
//! receiver (BENCHMARKS.md M: ~173 µs of a machine), and on a machine that
//! also serves the sale a drain at full speed took half the reserves
//! (section O). Lowering the delivery thread's priority is not enough: most
//! of that cost is Postgres's, which runs at the priority of everything
//! else. So the pace follows the machine's idle share, read from
//! `/proc/stat`: halved while it is below [`BUSY_BELOW`], doubled while it
//! is above [`ROOM_ABOVE`], never below [`FLOOR`], so events keep moving
//! through the longest peak and catch up when it eases.

use std::time::{Duration, Instant};

/// Deliveries a second the pace never goes below.
const FLOOR: f64 = 100.0;
/// Nor above: in practice unbounded (the room in flight and Postgres bound
/// a drain first).
const CEILING: f64 = 100_000.0;
/// How often the idle share is read and the pace adjusted.
const PERIOD: Duration = Duration::from_millis(250);
/// Below this share of idle CPU the machine is busy: the pace halves.
const BUSY_BELOW: f64 = 0.25;
/// Above this share it has room: the pace doubles.
const ROOM_ABOVE: f64 = 0.30;
/// Deliveries that may start at once after a pause, at the floor.
const BURST: f64 = 64.0;
/// The fewest a paced claim takes: each claim is a Postgres query whose
/// cost hardly depends on how many it takes, so at the floor a claim of
/// one every 5 ms cost Postgres more than the deliveries (BENCHMARKS.md P).
const BATCH: f64 = 16.0;

/// The next pace (deliveries a second) after a period whose idle share
/// was `idle` (0 to 1), in which deliveries did (`hungry`) or did not use
/// all the pace allowed. A pace is earned by use: one left unused halves,
/// so a backlog that comes due after a quiet hour starts from the floor,
/// not at full speed into a busy machine.
fn next_rate(rate: f64, idle: f64, hungry: bool) -> f64 {
    if idle < BUSY_BELOW || !hungry {
        (rate / 2.0).max(FLOOR)
    } else if idle > ROOM_ABOVE {
        (rate * 2.0).min(CEILING)
    } else {
        rate
    }
}

/// A token bucket whose rate follows the machine's idle CPU.
pub struct Pace {
    rate: f64,
    tokens: f64,
    refilled: Instant,
    adjusted: Instant,
    /// The last reading; None where `/proc/stat` cannot be read, and then
    /// nothing is paced.
    cpu: Option<CpuTimes>,
    /// Whether a claim this period took all it was allowed.
    hungry: bool,
}

impl Pace {
    pub fn new() -> Pace {
        let now = Instant::now();
        let cpu = CpuTimes::read();
        Pace {
            rate: if cpu.is_some() { FLOOR } else { CEILING },
            tokens: BURST,
            refilled: now,
            adjusted: now,
            cpu,
            hungry: false,
        }
    }

    /// What the claim allowed by [`Pace::take`] found: `got` of `allowed`.
    pub fn claimed(&mut self, allowed: usize, got: usize) {
        self.hungry |= got >= allowed;
    }

    /// How many deliveries may start now, at most `want`; or how long to
    /// wait before one may.
    pub fn take(&mut self, want: usize) -> Result<usize, Duration> {
        let now = Instant::now();
        self.adjust(now);
        let capacity = BURST.max(self.rate * PERIOD.as_secs_f64());
        let gathered = self.rate * now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + gathered).min(capacity);
        self.refilled = now;
        let batch = BATCH.min(want as f64).max(1.0);
        if self.tokens < batch {
            let wait = (batch - self.tokens) / self.rate;
            return Err(Duration::from_secs_f64(wait).max(Duration::from_millis(1)));
        }
        let n = (self.tokens.floor() as usize).min(want);
        self.tokens -= n as f64;
        Ok(n)
    }

    fn adjust(&mut self, now: Instant) {
        if now.duration_since(self.adjusted) < PERIOD {
            return;
        }
        self.adjusted = now;
        let (Some(then), Some(current)) = (self.cpu, CpuTimes::read()) else {
            return;
        };
        if let Some(idle) = current.idle_share_since(&then) {
            self.rate = next_rate(self.rate, idle, self.hungry);
        }
        self.hungry = false;
        self.cpu = Some(current);
    }
}

/// The machine's CPU time so far (the first line of `/proc/stat`), in ticks.
#[derive(Debug, Clone, Copy)]
struct CpuTimes {
    idle: u64,
    total: u64,
}

impl CpuTimes {
    fn read() -> Option<CpuTimes> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        CpuTimes::parse(stat.lines().next()?)
    }

    /// `cpu  user nice system idle iowait irq softirq steal ...`: idle and
    /// iowait are time no one wanted; everything else (our own deliveries,
    /// at nice, too) was taken.
    fn parse(line: &str) -> Option<CpuTimes> {
        let mut fields = line.split_whitespace();
        if fields.next()? != "cpu" {
            return None;
        }
        let ticks: Vec<u64> = fields.map(|f| f.parse().ok()).collect::<Option<_>>()?;
        let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0);
        // guest and guest_nice are already counted in user and nice.
        let total = ticks.iter().take(8).sum();
        Some(CpuTimes { idle, total })
    }

    fn idle_share_since(&self, then: &CpuTimes) -> Option<f64> {
        let total = self.total.checked_sub(then.total)?;
        let idle = self.idle.checked_sub(then.idle)?;
        (total > 0).then(|| idle as f64 / total as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pace_halves_on_a_busy_machine_or_unused_doubles_with_room_and_keeps_its_floor() {
        assert_eq!(next_rate(1600.0, 0.05, true), 800.0);
        assert_eq!(next_rate(FLOOR * 1.5, 0.0, true), FLOOR);
        assert_eq!(next_rate(800.0, 0.27, true), 800.0);
        assert_eq!(next_rate(800.0, 0.9, true), 1600.0);
        assert_eq!(next_rate(CEILING, 1.0, true), CEILING);
        // Unused, it falls back to the floor, however idle the machine.
        assert_eq!(next_rate(1600.0, 1.0, false), 800.0);
        assert_eq!(next_rate(FLOOR, 1.0, false), FLOOR);
    }

    #[test]
    fn proc_stat_reads_idle_and_iowait_as_unwanted_time() {
        let t = CpuTimes::parse("cpu  100 5 50 800 20 0 5 0 7 0").unwrap();
        assert_eq!((t.idle, t.total), (820, 980));
        let later = CpuTimes::parse("cpu  150 5 60 880 20 0 5 0 7 0").unwrap();
        assert_eq!(later.idle_share_since(&t), Some(80.0 / 140.0));
        assert!(CpuTimes::parse("intr 1 2 3").is_none());
        assert!(CpuTimes::parse("cpu  a b c").is_none());
    }

    #[test]
    fn the_bucket_lets_a_burst_go_then_waits_for_a_batch() {
        let mut p = Pace::new();
        p.rate = FLOOR;
        p.tokens = BURST;
        assert_eq!(p.take(1000), Ok(BURST as usize));
        // A batch is BATCH / FLOOR seconds away.
        let batch = Duration::from_secs_f64(BATCH / FLOOR);
        match p.take(1000) {
            Err(wait) => assert!(wait > batch * 2 / 3 && wait <= batch, "{wait:?}"),
            Ok(n) => panic!("{n} went with no tokens"),
        }
        // Room for fewer than a batch: as many as there is room for.
        p.tokens = 5.0;
        assert_eq!(p.take(4), Ok(4));
    }
}
