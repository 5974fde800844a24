//! Figures and the table they are printed in: each figure is measured several
//! times and shown as its median with the range, ours next to the original's,
//! with the ratio of the medians.

use std::fmt::Write as _;

/// Median and range of repeated measurements of one figure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// `None` when nothing was measured.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|s| s.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let (first, last) = (*sorted.first()?, *sorted.last()?);
        let mid = sorted.len() / 2;
        let median = if sorted.len() % 2 == 1 { sorted[mid] } else { (sorted[mid - 1] + sorted[mid]) / 2.0 };
        Some(Summary { median, min: first, max: last })
    }

    pub fn show(&self) -> String {
        if number(self.min) == number(self.max) {
            number(self.median)
        } else {
            format!("{} ({}–{})", number(self.median), number(self.min), number(self.max))
        }
    }
}

/// The value at quantile `q` (0..=1) of unsorted samples, nearest rank.
pub fn quantile(samples: &mut [f64], q: f64) -> Option<f64> {
    samples.sort_by(f64::total_cmp);
    let last = samples.len().checked_sub(1)?;
    let rank = ((q * samples.len() as f64).ceil() as usize).saturating_sub(1).min(last);
    Some(samples[rank])
}

/// Three significant-ish digits: enough to compare, not more than the noise.
fn number(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// Where a row goes in the table; rows are printed in this order whatever the
/// order they were measured in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Section {
    Idle,
    Interrupts,
    Memory,
    Cpu,
    Latency,
    Size,
    Closure,
    Ebpf,
}

/// One line of the table. A figure may have parts (p50 and p99), shown as `a / b`.
pub struct Row {
    pub section: Section,
    pub label: String,
    pub unit: &'static str,
    pub ours: Vec<Option<Summary>>,
    pub original: Vec<Option<Summary>>,
}

impl Row {
    pub fn single(
        section: Section,
        label: impl Into<String>,
        unit: &'static str,
        ours: &[f64],
        original: &[f64],
    ) -> Row {
        let (ours, original) = (vec![Summary::of(ours)], vec![Summary::of(original)]);
        Row { section, label: label.into(), unit, ours, original }
    }

    fn cells(parts: &[Option<Summary>]) -> String {
        parts.iter().map(|p| p.map_or_else(|| "n/a".to_owned(), |s| s.show())).collect::<Vec<_>>().join(" / ")
    }

    fn ratios(&self) -> String {
        self.ours
            .iter()
            .zip(&self.original)
            .map(|(ours, original)| match (ours, original) {
                (Some(o), Some(t)) if t.median > 0.0 => format!("{:.2}×", o.median / t.median),
                _ => "—".to_owned(),
            })
            .collect::<Vec<_>>()
            .join(" / ")
    }
}

/// The bench's output: a Markdown table, printable as is and pasted into
/// docs/BENCHMARKS.md.
pub struct Table {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    /// What the second column holds.
    pub other: String,
}

impl Default for Table {
    fn default() -> Self {
        Self { rows: Vec::new(), notes: Vec::new(), other: "original".to_owned() }
    }
}

impl Table {
    pub fn push(&mut self, row: Row) {
        self.rows.push(row);
    }

    pub fn render(&self) -> String {
        let other = &self.other;
        let mut out = format!("| figure | unit | ours | {other} | ours / {other} |\n|---|---|---:|---:|---:|\n");
        let mut rows: Vec<&Row> = self.rows.iter().collect();
        rows.sort_by_key(|row| row.section);
        for row in rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                row.label,
                row.unit,
                Row::cells(&row.ours),
                Row::cells(&row.original),
                row.ratios()
            );
        }
        for note in &self.notes {
            let _ = writeln!(out, "\n{note}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_range_of_odd_and_even_counts() {
        assert_eq!(Summary::of(&[3.0, 1.0, 2.0]), Some(Summary { median: 2.0, min: 1.0, max: 3.0 }));
        assert_eq!(Summary::of(&[4.0, 1.0, 2.0, 3.0]).map(|s| s.median), Some(2.5));
        assert_eq!(Summary::of(&[]), None);
    }

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let mut samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&mut samples, 0.5), Some(50.0));
        assert_eq!(quantile(&mut samples, 0.99), Some(99.0));
        assert_eq!(quantile(&mut [], 0.5), None);
    }

    #[test]
    fn ratio_is_ours_over_original_and_blank_when_undefined() {
        let row = Row::single(Section::Cpu, "x", "µs", &[50.0], &[200.0]);
        assert_eq!(row.ratios(), "0.25×");
        let row = Row::single(Section::Idle, "idle", "%", &[0.0], &[0.0]);
        assert_eq!(row.ratios(), "—");
    }
}
