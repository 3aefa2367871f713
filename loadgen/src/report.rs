//! The run's report: a readable table on stdout, and in the output directory
//! `report.json`, the `.hgrm` distributions, the charts and `index.html`, which shows
//! the table and both charts in one file that can be attached to a ticket.

use std::{collections::BTreeMap, io, path::Path};

use serde_json::json;

use crate::{
    chart::{self, escape},
    latency::Latency,
    timeline::SecondFigures,
    worker::WorkerReport,
};

/// Everything the report says, summed over workers.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The server addresses.
    pub targets: Vec<String>,
    /// Connections held per target.
    pub held_per_target: Vec<u64>,
    /// Workers used.
    pub workers: usize,
    /// Where the workers' sockets lived (`uring-sockets`).
    pub sockets: &'static str,
    /// Source addresses used.
    pub source_addrs: usize,
    /// Connections attempted.
    pub attempted: u64,
    /// Connections held to the end (answered the ping sweep, still open).
    pub held: u64,
    /// Failures by reason.
    pub failed: BTreeMap<String, u64>,
    /// Seconds the ramp took (slowest worker).
    pub ramp_secs: f64,
    /// Seconds held.
    pub hold_secs: u64,
    /// Server RSS before the ramp and at the end of the hold (before any load), when
    /// `--server-pid` was given.
    pub server_rss_bytes: Option<(u64, u64)>,
    /// Server CPU seconds (user + system) from the start of the load to its drain, when
    /// `--server-pid` was given.
    pub server_cpu_secs: Option<f64>,
    /// The loadgen's own CPU seconds over the same span (it must not be what limits the
    /// box it shares with the server).
    pub loadgen_cpu_secs: Option<f64>,
    /// Load phase: messages sent.
    pub sent: u64,
    /// Load phase: those whose receiver is held by another target than its sender.
    pub sent_across: u64,
    /// Load phase: messages that reached their receiver.
    pub delivered: u64,
    /// Load phase: messages answered `peer_offline` (their receiver was not held).
    pub undeliverable: u64,
    /// Load phase: messages acknowledged `queued` (stored for an offline receiver).
    pub queued: u64,
    /// Load phase: messages the server rejected (`message_ack` `rejected`).
    pub rejected: u64,
    /// Their ids, when asked for (`--queued-ids`), written to `queued-ids.txt`.
    pub queued_ids: Option<Vec<Box<str>>>,
    /// Load phase: acks received.
    pub acked: u64,
    /// Load phase: messages sent more than 1 ms after their scheduled time.
    pub sent_late: u64,
    /// Scheduled send → arrival.
    pub delivery: Latency,
    /// Scheduled send → ack.
    pub ack: Latency,
    /// Messages per second asked for, and for how long.
    pub rate: (u64, u64),
    /// Ctrl-C ended the run early; the figures are partial.
    pub interrupted: bool,
    /// `chat`, `echo` or `churn`.
    pub scenario: &'static str,
    /// Churn: what the devices saw.
    pub churn: Option<Churn>,
    /// The load second by second.
    pub timeline: Vec<SecondFigures>,
}

/// The churn scenario's verdict, over every worker.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Churn {
    /// Messages acknowledged to their sender (`sent` or `queued`) that never reached their
    /// receiver's device.
    pub lost: u64,
    /// Inbox events a device got twice.
    pub duplicated: u64,
    /// Connections dropped with a reset on purpose, and reconnects made.
    pub dropped: u64,
    /// Reconnects (after a drop, or a failure such as a server kill).
    pub reconnects: u64,
    /// Resumes honoured and refused.
    pub resumed: u64,
    /// See `resumed`.
    pub refused: u64,
}

impl Churn {
    /// Merges the workers' devices: a message acked by any worker's sender must have been
    /// received by some worker's device (its receiver's).
    pub fn from_workers(reports: &mut [WorkerReport]) -> Churn {
        let mut received = std::collections::HashSet::new();
        let mut churn = Churn::default();
        for report in reports.iter_mut() {
            let devices = &mut report.devices;
            received.extend(std::mem::take(&mut devices.received));
            churn.duplicated += devices.duplicated;
            churn.resumed += devices.resumes.0;
            churn.refused += devices.resumes.1;
            churn.dropped += report.churned.0;
            churn.reconnects += report.churned.1;
        }
        churn.lost = reports
            .iter()
            .flat_map(|r| r.devices.acked.iter())
            .filter(|id| !received.contains(*id))
            .count() as u64;
        churn
    }
}

impl Summary {
    /// Sums the workers' reports.
    pub fn from_workers(
        targets: Vec<String>,
        source_addrs: usize,
        hold_secs: u64,
        reports: &[WorkerReport],
    ) -> Summary {
        let mut failed = BTreeMap::new();
        for report in reports {
            for (reason, count) in &report.failed {
                *failed.entry((*reason).to_owned()).or_default() += count;
            }
        }
        let mut delivery = Latency::default();
        let mut ack = Latency::default();
        for report in reports {
            delivery.merge(&report.delivery);
            ack.merge(&report.ack);
        }
        Summary {
            sent: reports.iter().map(|r| r.sent).sum(),
            sent_across: reports.iter().map(|r| r.sent_across).sum(),
            delivered: reports.iter().map(|r| r.delivered).sum(),
            undeliverable: reports.iter().map(|r| r.undeliverable).sum(),
            queued: reports.iter().map(|r| r.queued).sum(),
            rejected: reports.iter().map(|r| r.rejected).sum(),
            queued_ids: None,
            acked: reports.iter().map(|r| r.acked).sum(),
            sent_late: reports.iter().map(|r| r.sent_late).sum(),
            delivery,
            ack,
            rate: (0, 0),
            interrupted: false,
            scenario: "chat",
            churn: None,
            timeline: Vec::new(),
            held_per_target: (0..targets.len())
                .map(|t| {
                    let held = |r: &WorkerReport| r.held_per_target.get(t).copied().unwrap_or(0);
                    reports.iter().map(held).sum()
                })
                .collect(),
            targets,
            workers: reports.len(),
            sockets: "fd table",
            source_addrs,
            attempted: reports.iter().map(|r| r.attempted).sum(),
            held: reports.iter().map(|r| r.held).sum(),
            failed,
            ramp_secs: reports.iter().map(|r| r.ramp_secs).fold(0.0, f64::max),
            hold_secs,
            server_rss_bytes: None,
            server_cpu_secs: None,
            loadgen_cpu_secs: None,
        }
    }

    /// Messages sent that neither arrived nor were answered: `peer_offline`, `queued` or
    /// `rejected`.
    pub fn lost(&self) -> u64 {
        self.sent
            .saturating_sub(self.delivered + self.undeliverable + self.queued + self.rejected)
    }

    /// Connections authenticated per second during the ramp.
    pub fn connect_rate_per_sec(&self) -> f64 {
        if self.ramp_secs > 0.0 {
            (self.held as f64 / self.ramp_secs).round()
        } else {
            0.0
        }
    }

    /// CPU seconds per million messages delivered in the load phase.
    fn per_million(&self, cpu_secs: Option<f64>) -> Option<f64> {
        let secs = cpu_secs?;
        (self.delivered > 0).then(|| secs * 1e6 / self.delivered as f64)
    }

    /// The second with the highest delivery p99 (the first of equals), if any arrived.
    pub fn worst_second(&self) -> Option<&SecondFigures> {
        self.timeline
            .iter()
            .filter(|s| s.delivered > 0)
            .rev()
            .max_by_key(|s| s.delivery.p99_us)
    }

    /// The JSON summary (schema in the README).
    pub fn to_json(&self) -> serde_json::Value {
        let per_conn = match (self.server_rss_bytes, self.held) {
            (Some((before, after)), held) if held > 0 => {
                json!((after as f64 - before as f64) / held as f64)
            }
            _ => serde_json::Value::Null,
        };
        json!({
            "scenario": self.scenario,
            "interrupted": self.interrupted,
            "target": self.targets.join(","),
            "targets": self.targets,
            "held_per_target": self.held_per_target,
            "workers": self.workers,
            "sockets": self.sockets,
            "source_addrs": self.source_addrs,
            "attempted": self.attempted,
            "held": self.held,
            "failed": self.failed,
            "failed_total": self.failed.values().sum::<u64>(),
            "ramp_secs": self.ramp_secs,
            "connect_rate_per_sec": self.connect_rate_per_sec(),
            "hold_secs": self.hold_secs,
            "load": {
                "rate_per_sec": self.rate.0,
                "duration_secs": self.rate.1,
                "sent": self.sent,
                "sent_across_targets": self.sent_across,
                "delivered": self.delivered,
                "undeliverable": self.undeliverable,
                "queued": self.queued,
                "rejected": self.rejected,
                "lost": self.lost(),
                "acked": self.acked,
                "sent_late": self.sent_late,
            },
            "latency": {
                "delivery": self.delivery.to_json(),
                "ack": self.ack.to_json(),
            },
            "churn": self.churn.as_ref().map(|c| json!({
                "lost": c.lost,
                "duplicated": c.duplicated,
                "dropped": c.dropped,
                "reconnects": c.reconnects,
                "resumed": c.resumed,
                "resume_refused": c.refused,
            })),
            "server": {
                "rss_bytes_before": self.server_rss_bytes.map(|(before, _)| before),
                "rss_bytes": self.server_rss_bytes.map(|(_, after)| after),
                "rss_bytes_per_connection": per_conn,
                "cpu_secs_load": self.server_cpu_secs,
                "cpu_secs_per_million_messages": self.per_million(self.server_cpu_secs),
            },
            "loadgen": {
                "cpu_secs_load": self.loadgen_cpu_secs,
                "cpu_secs_per_million_messages": self.per_million(self.loadgen_cpu_secs),
            },
            "timeline": self.timeline.iter().map(|s| s.to_json()).collect::<Vec<_>>(),
        })
    }

    /// The table printed on stdout.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let mut row = |k: &str, v: String| out.push_str(&format!("{k:<24} {v}\n"));
        row("target", self.targets.join(","));
        if self.interrupted {
            row("interrupted", "yes: partial figures".into());
        }
        row(
            "workers / sources",
            format!("{} / {}", self.workers, self.source_addrs),
        );
        row("sockets in", self.sockets.to_owned());
        row("attempted", self.attempted.to_string());
        row("held", self.held.to_string());
        if self.targets.len() > 1 {
            let per_target: Vec<String> = self.held_per_target.iter().map(u64::to_string).collect();
            row("  per target", per_target.join(" / "));
        }
        row("failed", self.failed.values().sum::<u64>().to_string());
        for (reason, count) in &self.failed {
            row(&format!("  {reason}"), count.to_string());
        }
        row(
            "ramp",
            format!(
                "{:.2} s ({} conn/s)",
                self.ramp_secs,
                self.connect_rate_per_sec()
            ),
        );
        row("hold", format!("{} s", self.hold_secs));
        if self.sent > 0 {
            row(
                "load",
                format!("{} msg/s for {} s", self.rate.0, self.rate.1),
            );
            row(
                "sent / delivered",
                format!("{} / {}", self.sent, self.delivered),
            );
            if self.targets.len() > 1 {
                let share = self.sent_across as f64 / self.sent as f64;
                row(
                    "  across targets",
                    format!("{} ({:.1}%)", self.sent_across, share * 100.0),
                );
            }
            row(
                "undeliverable / queued / rejected / lost",
                format!(
                    "{} / {} / {} / {}",
                    self.undeliverable,
                    self.queued,
                    self.rejected,
                    self.lost()
                ),
            );
            for (name, latency) in [("delivery", &self.delivery), ("ack", &self.ack)] {
                row(
                    &format!("{name} latency"),
                    format!(
                        "p50 {} µs  p90 {} µs  p99 {} µs  p99.9 {} µs  max {} µs",
                        latency.at(0.5),
                        latency.at(0.9),
                        latency.at(0.99),
                        latency.at(0.999),
                        latency.at(1.0)
                    ),
                );
            }
            if let Some(worst) = self.worst_second() {
                row(
                    "worst second",
                    format!(
                        "{} of {}: delivery p99 {} µs, max {} µs ({} delivered)",
                        worst.second,
                        self.timeline.len(),
                        worst.delivery.p99_us,
                        worst.delivery.max_us,
                        worst.delivered
                    ),
                );
            }
        }
        if let Some(churn) = &self.churn {
            row(
                "churn",
                format!(
                    "{} dropped, {} reconnects, resumed {} / refused {}",
                    churn.dropped, churn.reconnects, churn.resumed, churn.refused
                ),
            );
            row(
                "lost / duplicated",
                format!("{} / {}", churn.lost, churn.duplicated),
            );
        }
        if let Some((before, after)) = self.server_rss_bytes {
            let per_conn = if self.held > 0 {
                let per_conn = (after as f64 - before as f64) / self.held as f64;
                format!("{per_conn:.0} B per held connection")
            } else {
                "none held".to_owned()
            };
            row(
                "server rss",
                format!("{before} B before, {after} B after ({per_conn})"),
            );
        }
        for (name, secs) in [
            ("server cpu", self.server_cpu_secs),
            ("loadgen cpu", self.loadgen_cpu_secs),
        ] {
            if let (Some(secs), Some(per_million)) = (secs, self.per_million(secs)) {
                row(
                    name,
                    format!(
                        "{secs:.2} s during the load ({per_million:.2} s per million messages)"
                    ),
                );
            }
        }
        out
    }

    /// Writes `report.json` into `dir` (created if missing).
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let text = serde_json::to_string_pretty(&self.to_json()).map_err(io::Error::other)?;
        std::fs::write(dir.join("report.json"), text)?;
        std::fs::write(dir.join("delivery.hgrm"), self.delivery.to_hgrm())?;
        std::fs::write(dir.join("ack.hgrm"), self.ack.to_hgrm())?;
        if let Some(ids) = &self.queued_ids {
            let mut text = String::with_capacity(ids.len() * 24);
            for id in ids {
                text.push_str(id);
                text.push('\n');
            }
            std::fs::write(dir.join("queued-ids.txt"), text)?;
        }
        let title = format!(
            "{} connections, {} msg/s: latency by percentile",
            self.held, self.rate.0
        );
        let percentiles =
            chart::percentile_svg(&title, &[("delivery", &self.delivery), ("ack", &self.ack)]);
        std::fs::write(dir.join("latency.svg"), &percentiles)?;
        let title = format!(
            "{} connections, {} msg/s: the load second by second",
            self.held, self.rate.0
        );
        let timeline = chart::timeline_svg(&title, &self.timeline);
        std::fs::write(dir.join("timeline.svg"), &timeline)?;
        std::fs::write(dir.join("index.html"), self.page(&percentiles, &timeline))
    }

    /// `index.html`: the table and both charts inline, with links to the other files.
    fn page(&self, percentiles: &str, timeline: &str) -> String {
        let title = format!(
            "loadgen: {} held, {} msg/s, {}",
            self.held,
            self.rate.0,
            self.targets.join(",")
        );
        let mut links = vec!["report.json", "delivery.hgrm", "ack.hgrm"];
        if self.queued_ids.is_some() {
            links.push("queued-ids.txt");
        }
        let links: Vec<String> = links
            .iter()
            .map(|file| format!(r#"<a href="{file}">{file}</a>"#))
            .collect();
        format!(
            r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:860px}}pre{{background:#f6f6f6;padding:1em;overflow-x:auto}}</style>
</head><body>
<h1>{title}</h1>
<h2>Summary</h2>
<pre>{table}</pre>
<h2>Latency by percentile</h2>
{percentiles}
<h2>Second by second</h2>
<p>Each second's delivery p50, p99 and max and ack p99 (log scale), over the messages sent and delivered in it: a stall shows in its second.</p>
{timeline}
<p>Files: {links}</p>
</body></html>
"#,
            title = escape(&title),
            table = escape(&self.to_table()),
            links = links.join(" · "),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_workers_and_names_the_documented_keys() {
        let mut a = WorkerReport {
            attempted: 5,
            held: 4,
            ramp_secs: 2.0,
            ..WorkerReport::default()
        };
        a.failed.insert("refused", 1);
        let b = WorkerReport {
            attempted: 5,
            held: 5,
            ramp_secs: 3.0,
            ..WorkerReport::default()
        };
        let mut summary = Summary::from_workers(vec!["t".into()], 1, 5, &[a, b]);
        summary.server_rss_bytes = Some((100, 1000));
        summary.server_cpu_secs = Some(0.5);
        summary.loadgen_cpu_secs = Some(0.25);
        summary.delivered = 250_000;
        let json = summary.to_json();
        assert_eq!(json["server"]["cpu_secs_per_million_messages"], 2.0);
        assert_eq!(json["loadgen"]["cpu_secs_per_million_messages"], 1.0);
        assert!(summary.to_table().contains("loadgen cpu"));
        assert_eq!(json["held"], 9);
        assert_eq!(json["attempted"], 10);
        assert_eq!(json["failed"]["refused"], 1);
        assert_eq!(json["ramp_secs"], 3.0);
        assert_eq!(json["connect_rate_per_sec"], 3.0);
        assert_eq!(json["server"]["rss_bytes_per_connection"], 100.0);
        assert!(summary.to_table().contains("refused"));
    }
}
