//! The report's SVG charts, self-contained (no script, no external asset):
//! - [`percentile_svg`]: latency by percentile, x on the usual "nines" scale (log of
//!   1/(1−p)), y in milliseconds, one line per series;
//! - [`timeline_svg`]: the load second by second, delivery and ack latency (log scale) over
//!   the messages sent and delivered each second.

use std::fmt::Write as _;

use crate::{latency::Latency, timeline::SecondFigures};

const WIDTH: f64 = 800.0;
const MARGIN: f64 = 60.0;
/// The rightmost percentile shown: 99.999%.
const NINES_MAX: f64 = 5.0;
const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// Draws each `(name, latency)` series; `title` goes on top.
pub fn percentile_svg(title: &str, series: &[(&str, &Latency)]) -> String {
    let lines: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(name, latency)| {
            let points = latency
                .distribution()
                .into_iter()
                .map(|(q, value_us, _)| (nines(q), value_us as f64 / 1000.0))
                .filter(|(x, _)| *x <= NINES_MAX)
                .collect();
            (*name, points)
        })
        .collect();
    let y_max = lines
        .iter()
        .flat_map(|(_, points)| points)
        .map(|p| p.1)
        .fold(0.0, f64::max)
        .max(0.001)
        * 1.1;
    let height = 450.0;
    let mut canvas = Canvas::new(title, height);
    let panel = Panel {
        top: MARGIN,
        bottom: height - MARGIN,
        x: Scale::linear(0.0, NINES_MAX),
        y: Scale::linear(0.0, y_max),
    };
    panel.frame(&mut canvas, "percentile", "latency (ms)");
    let labels = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"];
    for (n, label) in labels.iter().enumerate() {
        panel.x_tick(&mut canvas, n as f64, label);
    }
    for i in 0..=5 {
        let ms = y_max * i as f64 / 5.0;
        panel.y_tick(&mut canvas, ms, &format!("{ms:.2}"));
    }
    for (i, (name, points)) in lines.iter().enumerate() {
        panel.series(&mut canvas, i, name, points);
    }
    canvas.finish()
}

/// Draws the load's seconds: on top the delivery p50, p99 and max and the ack p99 of each
/// second (log scale, seconds where nothing arrived left out), below the messages sent
/// and delivered in each.
pub fn timeline_svg(title: &str, seconds: &[SecondFigures]) -> String {
    let height = 600.0;
    let mut canvas = Canvas::new(title, height);
    let x = Scale::linear(0.0, (seconds.len() as f64).max(1.0));
    let latencies: [(&str, Figure); 4] = [
        ("delivery p50", |s| s.delivery.p50_us),
        ("delivery p99", |s| s.delivery.p99_us),
        ("delivery max", |s| s.delivery.max_us),
        ("ack p99", |s| s.ack.p99_us),
    ];
    // In ms; a second where nothing arrived has no latency, and no point.
    let latency_series = lines(seconds, &latencies, 1e-3, true);
    let all_ms = latency_series.iter().flat_map(|(_, p)| p).map(|p| p.1);
    let (lo, hi) = all_ms.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo_decade, hi_decade) = if hi > 0.0 {
        (
            lo.log10().floor(),
            hi.log10().ceil().max(lo.log10().floor() + 1.0),
        )
    } else {
        (-1.0, 1.0)
    };
    let latency = Panel {
        top: MARGIN,
        bottom: 360.0,
        x,
        y: Scale::log10(lo_decade, hi_decade),
    };
    latency.frame(&mut canvas, "", "latency (ms, log)");
    for decade in lo_decade as i32..=hi_decade as i32 {
        let value = 10f64.powi(decade);
        latency.y_tick(&mut canvas, value, &trim_number(value));
    }
    for (i, (name, points)) in latency_series.iter().enumerate() {
        latency.series(&mut canvas, i, name, points);
    }
    let counts: [(&str, Figure); 2] =
        [("sent / s", |s| s.sent), ("delivered / s", |s| s.delivered)];
    let rates = lines(seconds, &counts, 1.0, false);
    let rate_max = rates
        .iter()
        .flat_map(|(_, p)| p)
        .map(|p| p.1)
        .fold(1.0, f64::max)
        * 1.1;
    let messages = Panel {
        top: 400.0,
        bottom: height - MARGIN,
        x,
        y: Scale::linear(0.0, rate_max),
    };
    messages.frame(&mut canvas, "second of the load", "messages");
    for i in 0..=2 {
        let value = rate_max * i as f64 / 2.0;
        messages.y_tick(&mut canvas, value, &format!("{value:.0}"));
    }
    let step = tick_step(seconds.len() as f64);
    let mut second = 0.0;
    while second <= seconds.len() as f64 {
        let label = format!("{second}");
        latency.x_tick(&mut canvas, second, "");
        messages.x_tick(&mut canvas, second, &label);
        second += step;
    }
    for (i, (name, points)) in rates.iter().enumerate() {
        messages.series(&mut canvas, i + 2, name, points);
    }
    canvas.finish()
}

/// One figure of a second, as a timeline line plots it.
type Figure = fn(&SecondFigures) -> u64;

/// Each named figure of every second as a line's points, at the middle of its second, the
/// value times `scale` (zeros left out if `skip_zeros`).
fn lines<'a>(
    seconds: &[SecondFigures],
    figures: &[(&'a str, Figure)],
    scale: f64,
    skip_zeros: bool,
) -> Vec<(&'a str, Vec<(f64, f64)>)> {
    figures
        .iter()
        .map(|&(name, value)| {
            let points = seconds
                .iter()
                .filter(|s| !skip_zeros || value(s) > 0)
                .map(|s| (s.second as f64 + 0.5, value(s) as f64 * scale))
                .collect();
            (name, points)
        })
        .collect()
}

/// An SVG document being drawn, `WIDTH` wide, with a white ground and a title.
struct Canvas {
    svg: String,
    height: f64,
}

impl Canvas {
    fn new(title: &str, height: f64) -> Canvas {
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
            WIDTH / 2.0,
            escape(title)
        );
        Canvas { svg, height }
    }

    fn line(&mut self, (x1, y1): (f64, f64), (x2, y2): (f64, f64), stroke: &str) {
        let _ = writeln!(
            self.svg,
            r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{stroke}"/>"#
        );
    }

    fn text(&mut self, (x, y): (f64, f64), anchor: &str, fill: &str, text: &str) {
        let _ = writeln!(
            self.svg,
            r#"<text x="{x:.1}" y="{y:.1}" text-anchor="{anchor}" fill="{fill}">{}</text>"#,
            escape(text)
        );
    }

    fn finish(mut self) -> String {
        self.svg.push_str("</svg>\n");
        self.svg
    }
}

/// How one axis maps values to a 0..=1 share of its length.
#[derive(Debug, Clone, Copy)]
struct Scale {
    lo: f64,
    hi: f64,
    /// Values are powers of ten and `lo`..`hi` their exponents.
    log: bool,
}

impl Scale {
    fn linear(lo: f64, hi: f64) -> Scale {
        Scale { lo, hi, log: false }
    }

    fn log10(lo_exponent: f64, hi_exponent: f64) -> Scale {
        Scale {
            lo: lo_exponent,
            hi: hi_exponent,
            log: true,
        }
    }

    fn share(&self, value: f64) -> f64 {
        let value = if self.log {
            value.max(f64::MIN_POSITIVE).log10()
        } else {
            value
        };
        ((value - self.lo) / (self.hi - self.lo)).clamp(0.0, 1.0)
    }
}

/// A plot area across the canvas between `top` and `bottom`, with its two scales.
struct Panel {
    top: f64,
    bottom: f64,
    x: Scale,
    y: Scale,
}

impl Panel {
    fn at(&self, x: f64, y: f64) -> (f64, f64) {
        (
            MARGIN + self.x.share(x) * (WIDTH - 2.0 * MARGIN),
            self.bottom - self.y.share(y) * (self.bottom - self.top),
        )
    }

    /// The axes and their labels (an empty `x_label` is left out).
    fn frame(&self, canvas: &mut Canvas, x_label: &str, y_label: &str) {
        let (left, right) = (MARGIN, WIDTH - MARGIN);
        canvas.line((left, self.bottom), (right, self.bottom), "black");
        canvas.line((left, self.bottom), (left, self.top), "black");
        if !x_label.is_empty() {
            let y = (self.bottom + 36.0).min(canvas.height - 6.0);
            canvas.text((WIDTH / 2.0, y), "middle", "black", x_label);
        }
        let middle = (self.top + self.bottom) / 2.0;
        let _ = writeln!(
            canvas.svg,
            r#"<text x="16" y="{middle:.1}" text-anchor="middle" transform="rotate(-90 16 {middle:.1})">{}</text>"#,
            escape(y_label)
        );
    }

    /// A grid line at `x`, labelled below the axis (when `label` is not empty).
    fn x_tick(&self, canvas: &mut Canvas, x: f64, label: &str) {
        let (px, bottom) = self.at(x, self.y_lowest());
        canvas.line((px, bottom), (px, self.top), "#ddd");
        if !label.is_empty() {
            canvas.text((px, bottom + 18.0), "middle", "black", label);
        }
    }

    /// A grid line at `y`, labelled left of the axis.
    fn y_tick(&self, canvas: &mut Canvas, y: f64, label: &str) {
        let (_, py) = self.at(self.x.lo, y);
        canvas.line((MARGIN, py), (WIDTH - MARGIN, py), "#eee");
        canvas.text((MARGIN - 6.0, py + 4.0), "end", "black", label);
    }

    /// Series number `i` as a line, its name in the legend above the panel.
    fn series(&self, canvas: &mut Canvas, i: usize, name: &str, points: &[(f64, f64)]) {
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = points
            .iter()
            .map(|&(x, y)| {
                let (px, py) = self.at(x, y);
                format!("{px:.1},{py:.1}")
            })
            .collect();
        let _ = writeln!(
            canvas.svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        let legend = (MARGIN + 10.0 + 120.0 * (i % 4) as f64, self.top - 8.0);
        canvas.text(legend, "start", colour, name);
    }

    /// The lowest value the y axis shows.
    fn y_lowest(&self) -> f64 {
        if self.y.log {
            10f64.powf(self.y.lo)
        } else {
            self.y.lo
        }
    }
}

/// Seconds between labelled ticks: a round step giving at most about ten.
fn tick_step(span: f64) -> f64 {
    [
        1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
    ]
    .into_iter()
    .find(|step| span / step <= 10.0)
    .unwrap_or(7200.0)
}

/// A power of ten without trailing zeros: 0.01, 1, 1000.
fn trim_number(value: f64) -> String {
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// The "nines" of a quantile: 0.9 → 1, 0.99 → 2, 0.999 → 3.
fn nines(quantile: f64) -> f64 {
    if quantile >= 1.0 {
        NINES_MAX + 1.0
    } else {
        -(1.0 - quantile).log10()
    }
}

/// Text made safe inside SVG or HTML.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::Tail;

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

    #[test]
    fn the_timeline_shows_a_spike_in_its_second_on_a_log_axis() {
        let seconds: Vec<SecondFigures> = (0..30)
            .map(|second| {
                let spike = second == 17;
                let delivery = Tail {
                    p50_us: 400,
                    p99_us: if spike { 250_000 } else { 2_000 },
                    max_us: if spike { 900_000 } else { 5_000 },
                };
                SecondFigures {
                    second,
                    sent: 1000,
                    delivered: if spike { 0 } else { 1000 },
                    acked: 1000,
                    delivery,
                    ack: delivery,
                }
            })
            .collect();
        let svg = timeline_svg("a run", &seconds);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 6, "4 latencies, 2 rates");
        // Decades from 0.1 ms (p50 0.4 ms) to 1000 ms (max 900 ms).
        for label in [">0.1<", ">1<", ">10<", ">100<", ">1000<"] {
            assert!(svg.contains(label), "{label}");
        }
        assert!(svg.contains(">second of the load<") && svg.contains(">25<"));
        // The spike is the highest point of the max line: the smallest y on it.
        let max_line = svg
            .lines()
            .filter(|l| l.starts_with("<polyline"))
            .nth(2)
            .unwrap();
        let ys: Vec<f64> = max_line
            .split("points=\"")
            .nth(1)
            .unwrap()
            .trim_end_matches("\"/>")
            .split(' ')
            .map(|p| p.split(',').nth(1).unwrap().parse().unwrap())
            .collect();
        let top = ys.iter().copied().fold(f64::MAX, f64::min);
        assert_eq!(ys.iter().position(|&y| y == top), Some(17));
        assert!((top - MARGIN).abs() < 60.0, "near the top: {top}");
    }

    #[test]
    fn an_empty_timeline_still_draws_its_axes() {
        let svg = timeline_svg("nothing", &[]);
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 6);
    }

    #[test]
    fn ticks_are_round_and_few() {
        assert_eq!(tick_step(8.0), 1.0);
        assert_eq!(tick_step(30.0), 5.0);
        assert_eq!(tick_step(600.0), 60.0);
        assert_eq!(trim_number(0.01), "0.01");
        assert_eq!(trim_number(100.0), "100");
    }
}
