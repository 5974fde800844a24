//! Machine and per-core CPU busy shares from the aggregate counters of `/proc/stat`
//! (proc(5)): each `cpuN` line holds cumulative ticks per state, and the busy share
//! over an interval is the non-idle part of the ticks that passed.

/// The first eight counters of a `cpu` line, in their order (proc(5)); the
/// guest ones after them are already counted in user and nice.
pub const CPU_MODES: [&str; 8] = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"];

/// Cumulative ticks of one `cpu` line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTicks {
    /// All ticks except guest ones, which the kernel already counts in user/nice.
    pub total: u64,
    /// idle + iowait.
    pub idle: u64,
    /// Each mode's ticks, in the order of [`CPU_MODES`] (Prometheus exports them
    /// as counters).
    pub modes: [u64; 8],
}

impl CpuTicks {
    /// Ticks spent running something: user, nice, system, irq and softirq. Guest
    /// time is inside user and nice; idle, iowait and steal (another guest's time
    /// on a shared host) are not. The processes list's rows over an interval add up
    /// to at most this (the closure tests and `cargo xtask bench` compare them).
    pub fn busy(&self) -> u64 {
        let [user, nice, system, _idle, _iowait, irq, softirq, _steal] = self.modes;
        [user, nice, system, irq, softirq].iter().fold(0u64, |sum, &value| sum.saturating_add(value))
    }
}

/// One reading of `/proc/stat`'s CPU lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuStat {
    pub all: CpuTicks,
    /// Per logical CPU, keyed by its number (offline CPUs have no line).
    pub cores: Vec<(u32, CpuTicks)>,
}

/// Parses the `cpu` and `cpuN` lines of `/proc/stat`. They come first (fs/proc/stat.c),
/// so parsing stops at the first other line after them, before the long `intr` line.
pub fn parse_proc_stat(text: &str) -> CpuStat {
    let mut stat = CpuStat::default();
    let mut seen_cpu = false;
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(label) = fields.next() else { continue };
        let Some(rest) = label.strip_prefix("cpu") else {
            if seen_cpu {
                break;
            }
            continue;
        };
        seen_cpu = true;
        let ticks = parse_ticks(fields);
        if rest.is_empty() {
            stat.all = ticks;
        } else if let Ok(core) = rest.parse() {
            stat.cores.push((core, ticks));
        }
    }
    stat
}

/// user nice system idle iowait irq softirq steal guest guest_nice
fn parse_ticks<'a>(fields: impl Iterator<Item = &'a str>) -> CpuTicks {
    let mut values = [0u64; 8];
    for (value, field) in values.iter_mut().zip(fields) {
        *value = field.parse().unwrap_or(0);
    }
    // Saturating: garbage counters must not overflow (fuzz target proc_stat).
    let total = values.iter().fold(0u64, |sum, &value| sum.saturating_add(value));
    CpuTicks { total, idle: values[3].saturating_add(values[4]), modes: values }
}

/// Busy share in percent between two readings of the same counters.
pub fn busy_percent(before: CpuTicks, after: CpuTicks) -> f32 {
    let total = after.total.saturating_sub(before.total);
    if total == 0 {
        return 0.0;
    }
    let idle = after.idle.saturating_sub(before.idle).min(total);
    ((total - idle) as f64 / total as f64 * 100.0) as f32
}

/// Keeps the previous reading so each call reports the shares since the last one.
#[derive(Debug, Default)]
pub struct CpuUsage {
    previous: CpuStat,
}

/// Busy shares since the previous reading.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuShares {
    pub total: f32,
    pub per_core: Vec<f32>,
}

impl CpuUsage {
    pub fn new(baseline: CpuStat) -> Self {
        Self { previous: baseline }
    }

    pub fn update(&mut self, now: CpuStat) -> CpuShares {
        let per_core = now
            .cores
            .iter()
            .enumerate()
            .map(|(i, &(core, ticks))| busy_percent(self.previous_core(i, core), ticks))
            .collect();
        let total = busy_percent(self.previous.all, now.all);
        self.previous = now;
        CpuShares { total, per_core }
    }

    /// The previous reading of `core`, found at the same position unless CPUs came
    /// or went since.
    fn previous_core(&self, position: usize, core: u32) -> CpuTicks {
        let cores = &self.previous.cores;
        match cores.get(position) {
            Some(&(c, ticks)) if c == core => ticks,
            _ => cores.iter().find(|(c, _)| *c == core).map(|&(_, ticks)| ticks).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT_T0: &str = include_str!("../../tests/fixtures/proc/stat");

    #[test]
    fn parses_the_aggregate_and_every_core_line() {
        let stat = parse_proc_stat(STAT_T0);
        assert_eq!(stat.cores.len(), 2);
        assert_eq!(stat.cores[1].0, 1);
        // cpu  4705 150 1120 16250 520 0 23 0 0 0
        assert_eq!(stat.all.total, 4705 + 150 + 1120 + 16250 + 520 + 23);
        assert_eq!(stat.all.idle, 16250 + 520);
        assert_eq!(stat.all.modes, [4705, 150, 1120, 16250, 520, 0, 23, 0]);
        assert_eq!(stat.all.busy(), 4705 + 150 + 1120 + 23);
    }

    #[test]
    fn busy_ticks_leave_out_idle_iowait_and_steal() {
        let ticks = parse_proc_stat("cpu 1 2 4 1000 2000 8 16 4000 1 2\n").all;
        assert_eq!(ticks.busy(), 1 + 2 + 4 + 8 + 16);
    }

    #[test]
    fn busy_share_is_the_non_idle_part_of_elapsed_ticks() {
        let before = CpuTicks { total: 1000, idle: 800, ..CpuTicks::default() };
        let after = CpuTicks { total: 1200, idle: 850, ..CpuTicks::default() };
        assert!((busy_percent(before, after) - 75.0).abs() < 1e-4);
        assert_eq!(busy_percent(after, after), 0.0);
        // Counters that go backwards (CPU hot-unplug) give 0, not a panic.
        assert_eq!(busy_percent(after, before), 0.0);
    }

    #[test]
    fn usage_reports_shares_since_the_previous_reading() {
        let t0 = parse_proc_stat("cpu 10 0 10 80 0\ncpu0 5 0 5 40 0\ncpu1 5 0 5 40 0\n");
        let t1 = parse_proc_stat("cpu 110 0 10 180 0\ncpu0 105 0 5 40 0\ncpu1 5 0 5 140 0\n");
        let mut usage = CpuUsage::new(t0);
        let shares = usage.update(t1);
        assert_eq!(shares.per_core, vec![100.0, 0.0]);
        assert!((shares.total - 50.0).abs() < 1e-4);
    }

    #[test]
    fn a_cpu_going_offline_keeps_the_others_matched_by_number() {
        let t0 = parse_proc_stat("cpu 0 0 0 0 0\ncpu0 5 0 5 40 0\ncpu1 5 0 5 40 0\ncpu2 0 0 0 50 0\n");
        let t1 = parse_proc_stat("cpu 0 0 0 0 0\ncpu0 5 0 5 140 0\ncpu2 100 0 0 50 0\n");
        let mut usage = CpuUsage::new(t0);
        assert_eq!(usage.update(t1).per_core, vec![0.0, 100.0]);
    }

    #[test]
    fn lines_other_than_cpu_are_ignored() {
        let stat = parse_proc_stat("intr 1 2 3\nctxt 99\nbtime 1700000000\n");
        assert_eq!(stat, CpuStat::default());
    }
}
