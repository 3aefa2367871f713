//! Latency recording (HdrHistogram, microseconds) and its outputs: percentiles for the JSON
//! summary and the standard `.hgrm` percentile distribution text.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// The highest latency recorded exactly: 60 s; above it values saturate (and count).
const HIGHEST_US: u64 = 60_000_000;

/// One latency distribution in microseconds.
#[derive(Debug, Clone)]
pub struct Latency {
    histogram: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        // 3 significant digits over 1 µs..60 s: the bounds are constants, so this cannot fail.
        Latency {
            histogram: Histogram::new_with_bounds(1, HIGHEST_US, 3)
                .expect("valid histogram bounds"),
        }
    }
}

impl Latency {
    /// A distribution for one second of a timeline: 2 significant digits (2,560 counters,
    /// 20 KiB, instead of 3 digits' 17,408), plenty for a second's p50, p99 and max.
    pub fn per_second() -> Latency {
        Latency {
            histogram: Histogram::new_with_bounds(1, HIGHEST_US, 2)
                .expect("valid histogram bounds"),
        }
    }

    /// Records one latency.
    pub fn record_us(&mut self, latency_us: u64) {
        self.histogram.saturating_record(latency_us.max(1));
    }

    /// Adds another worker's distribution.
    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so addition cannot fail.
        let _ = self.histogram.add(&other.histogram);
    }

    /// How many latencies were recorded.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The value at `quantile` (0..=1), in µs.
    pub fn at(&self, quantile: f64) -> u64 {
        self.histogram.value_at_quantile(quantile)
    }

    /// The summary object of the JSON report (schema in the README).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "count": self.count(),
            "p50_us": self.at(0.5),
            "p90_us": self.at(0.9),
            "p99_us": self.at(0.99),
            "p999_us": self.at(0.999),
            "p9999_us": self.at(0.9999),
            "max_us": self.histogram.max(),
            "mean_us": self.histogram.mean(),
        })
    }

    /// The percentile distribution: `(quantile, value in µs, count up to it)`, 5 steps per
    /// halving of the remaining tail, as HdrHistogram's own output does.
    pub fn distribution(&self) -> Vec<(f64, u64, u64)> {
        let mut total = 0u64;
        self.histogram
            .iter_quantiles(5)
            .map(|step| {
                total += step.count_since_last_iteration();
                (step.quantile_iterated_to(), step.value_iterated_to(), total)
            })
            .collect()
    }

    /// HdrHistogram's percentile distribution text (values in milliseconds), as the usual
    /// HdrHistogram plotters load it.
    pub fn to_hgrm(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:>12} {:>14} {:>10} {:>14}\n",
            "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
        );
        let h = &self.histogram;
        for (quantile, value_us, total) in self.distribution() {
            let value_ms = value_us as f64 / 1000.0;
            if quantile < 1.0 {
                let _ = writeln!(
                    out,
                    "{value_ms:12.3} {quantile:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - quantile)
                );
            } else {
                let _ = writeln!(out, "{value_ms:12.3} {quantile:2.12} {total:10}");
            }
        }
        let _ = writeln!(
            out,
            "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
            h.mean() / 1000.0,
            h.stdev() / 1000.0
        );
        let _ = writeln!(
            out,
            "#[Max     = {:12.3}, Total count    = {:12}]",
            h.max() as f64 / 1000.0,
            h.len()
        );
        let _ = writeln!(
            out,
            "#[Buckets = {:12}, SubBuckets     = {:12}]",
            h.buckets(),
            h.distinct_values()
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_ordered_and_hgrm_has_the_standard_shape() {
        let mut latency = Latency::default();
        for us in 1..=10_000 {
            latency.record_us(us);
        }
        let json = latency.to_json();
        let p = |k: &str| json[k].as_u64().unwrap();
        assert!(
            p("p50_us") <= p("p90_us") && p("p90_us") <= p("p99_us") && p("p99_us") <= p("p999_us")
        );
        assert!((4_990..=5_010).contains(&p("p50_us")), "{json}");
        let hgrm = latency.to_hgrm();
        assert!(hgrm.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"));
        let rows: Vec<Vec<f64>> = hgrm
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.contains("Value"))
            .map(|l| l.split_whitespace().map(|v| v.parse().unwrap()).collect())
            .collect();
        assert!(rows
            .windows(2)
            .all(|w| w[0][0] <= w[1][0] && w[0][1] <= w[1][1]));
        assert_eq!(rows.last().unwrap()[2], 10_000.0);
        assert!(hgrm.contains("#[Max     =       10.007"), "{hgrm}");
    }

    #[test]
    fn merging_adds_counts() {
        let (mut a, mut b) = (Latency::default(), Latency::default());
        a.record_us(10);
        b.record_us(20);
        a.merge(&b);
        assert_eq!(a.count(), 2);
    }
}
