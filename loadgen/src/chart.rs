//! An SVG chart of latency by percentile: x is the percentile on the usual "nines" scale
//! (log of 1/(1−p)), y is latency in milliseconds; one line per series.

use std::fmt::Write as _;

use crate::latency::Latency;

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 450.0;
const MARGIN: f64 = 60.0;
/// The rightmost percentile shown: 99.999%.
const NINES_MAX: f64 = 5.0;
const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// Draws each `(name, latency)` series; `title` goes on top.
pub fn percentile_svg(title: &str, series: &[(&str, &Latency)]) -> String {
    let points: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|(_, latency)| {
            latency
                .distribution()
                .into_iter()
                .map(|(q, value_us, _)| (nines(q), value_us as f64 / 1000.0))
                .filter(|(x, _)| *x <= NINES_MAX)
                .collect()
        })
        .collect();
    let y_max = points
        .iter()
        .flatten()
        .map(|p| p.1)
        .fold(0.0, f64::max)
        .max(0.001)
        * 1.1;
    let x_of = |n: f64| MARGIN + n / NINES_MAX * (WIDTH - 2.0 * MARGIN);
    let y_of = |ms: f64| HEIGHT - MARGIN - ms / y_max * (HEIGHT - 2.0 * MARGIN);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    // Axes, percentile ticks and latency ticks.
    let (x0, y0) = (x_of(0.0), y_of(0.0));
    let _ = writeln!(
        svg,
        r#"<line x1="{x0}" y1="{y0}" x2="{}" y2="{y0}" stroke="black"/>"#,
        x_of(NINES_MAX)
    );
    let _ = writeln!(
        svg,
        r#"<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{}" stroke="black"/>"#,
        y_of(y_max)
    );
    for (n, label) in [
        (0.0, "0%"),
        (1.0, "90%"),
        (2.0, "99%"),
        (3.0, "99.9%"),
        (4.0, "99.99%"),
        (5.0, "99.999%"),
    ] {
        let x = x_of(n);
        let _ = writeln!(
            svg,
            r##"<line x1="{x}" y1="{y0}" x2="{x}" y2="{}" stroke="#ddd"/>"##,
            y_of(y_max)
        );
        let _ = writeln!(
            svg,
            r#"<text x="{x}" y="{}" text-anchor="middle">{label}</text>"#,
            y0 + 18.0
        );
    }
    for i in 0..=5 {
        let ms = y_max * i as f64 / 5.0;
        let y = y_of(ms);
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{ms:.2}</text>"#,
            x0 - 6.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text>"#,
        WIDTH / 2.0,
        HEIGHT - 12.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">latency (ms)</text>"#,
        HEIGHT / 2.0,
        HEIGHT / 2.0
    );
    for (i, ((name, _), line)) in series.iter().zip(&points).enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = line
            .iter()
            .map(|(n, ms)| format!("{:.1},{:.1}", x_of(*n), y_of(*ms)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        let ly = MARGIN + 16.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{ly}" fill="{colour}">{}</text>"#,
            x0 + 10.0,
            escape(name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The "nines" of a quantile: 0.9 → 1, 0.99 → 2, 0.999 → 3.
fn nines(quantile: f64) -> f64 {
    if quantile >= 1.0 {
        NINES_MAX + 1.0
    } else {
        -(1.0 - quantile).log10()
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_one_line_per_series_with_labels() {
        let mut a = Latency::default();
        let mut b = Latency::default();
        for us in 1..=1000 {
            a.record_us(us);
            b.record_us(us * 2);
        }
        let svg = percentile_svg("t <1>", &[("delivery", &a), ("ack", &b)]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("t &lt;1&gt;") && svg.contains("99.9%"));
        assert!((nines(0.99) - 2.0).abs() < 1e-9);
    }
}
