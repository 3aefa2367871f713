//! `/metrics` (Prometheus text exposition 0.0.4) and `/api/stats` (JSON), both written
//! straight from the per-reactor counters at request time.
//!
//! Why not a metrics crate (prometheus-client, metrics): their counters are shared atomics
//! updated with read-modify-write instructions, and their histograms take a lock per
//! observation. Here every counter has exactly one writer (its reactor), so a relaxed
//! load and store is enough on the hot path, and summing happens only when scraped. The
//! exposition format itself is a few lines of text.

use std::{fmt::Write, sync::atomic::AtomicU64};

use super::health::Health;
use crate::{
    protocol::{
        codes::{ErrorCode, MessageKind, OutKind},
        json::Obj,
    },
    stats::{self, LatencyHistogram, ReactorStats, LATENCY_BUCKETS_US},
    store::StoreStats,
};

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Writes every metric, per reactor where that is how it is kept.
pub fn render(out: &mut Vec<u8>, health: &Health, reactors: &[ReactorStats], store: &StoreStats) {
    let mut text = String::with_capacity(8 * 1024);
    let per_reactor_gauge =
        |text: &mut String, name: &str, help: &str, get: &dyn Fn(&ReactorStats) -> i64| {
            header(text, name, help, "gauge");
            for (id, r) in reactors.iter().enumerate() {
                let _ = writeln!(text, "{name}{{reactor=\"{id}\"}} {}", get(r));
            }
        };
    let per_reactor_counter =
        |text: &mut String, name: &str, help: &str, get: &dyn Fn(&ReactorStats) -> u64| {
            header(text, name, help, "counter");
            for (id, r) in reactors.iter().enumerate() {
                let _ = writeln!(text, "{name}{{reactor=\"{id}\"}} {}", get(r));
            }
        };
    header(
        &mut text,
        "engine_uptime_seconds",
        "Seconds since the engine started.",
        "gauge",
    );
    let _ = writeln!(text, "engine_uptime_seconds {}", health.uptime_seconds);
    header(
        &mut text,
        "engine_ready",
        "1 while accepting and not draining.",
        "gauge",
    );
    let _ = writeln!(text, "engine_ready {}", u8::from(health.ready));
    for (name, help, value) in [
        (
            "engine_store_messages_persisted_total",
            "Messages committed to offline queues.",
            &store.persisted,
        ),
        (
            "engine_store_history_recorded_total",
            "Chat messages committed to conversation history.",
            &store.recorded,
        ),
        (
            "engine_store_persistence_failures_total",
            "Messages a failed commit did not hold.",
            &store.failures,
        ),
        (
            "engine_store_commits_total",
            "Store transactions committed (group commits).",
            &store.commits,
        ),
        (
            "engine_store_expired_total",
            "Queued messages removed unread after the retention period.",
            &store.expired,
        ),
        (
            "engine_store_history_expired_total",
            "History entries removed after the retention period.",
            &store.expired_history,
        ),
        (
            "engine_push_sent_total",
            "Push notifications the webhook accepted.",
            &store.push.sent,
        ),
        (
            "engine_push_failed_total",
            "Push notifications given up after every attempt failed.",
            &store.push.failed,
        ),
        (
            "engine_push_dropped_total",
            "Push notifications dropped because the push queue was full.",
            &store.push.dropped,
        ),
    ] {
        header(&mut text, name, help, "counter");
        let _ = writeln!(text, "{name} {}", stats::read(value));
    }
    header(&mut text, "engine_reactors", "Reactor threads.", "gauge");
    let _ = writeln!(text, "engine_reactors {}", reactors.len());
    if let Some(rss) = stats::rss_bytes() {
        header(
            &mut text,
            "engine_resident_memory_bytes",
            "Resident set size of the process.",
            "gauge",
        );
        let _ = writeln!(text, "engine_resident_memory_bytes {rss}");
    }
    per_reactor_gauge(
        &mut text,
        "engine_connections",
        "Open connections (HTTP and WebSocket).",
        &|r| stats::load_gauge(&r.connections),
    );
    per_reactor_gauge(
        &mut text,
        "engine_online_users",
        "Users homed on the reactor with a device online.",
        &|r| stats::load_gauge(&r.online_users),
    );
    per_reactor_counter(
        &mut text,
        "engine_handshakes_total",
        "Completed WebSocket upgrades.",
        &|r| stats::read(&r.handshakes),
    );
    per_reactor_counter(
        &mut text,
        "engine_handshake_failures_total",
        "Refused WebSocket upgrades.",
        &|r| stats::read(&r.handshake_failures),
    );
    per_reactor_counter(
        &mut text,
        "engine_handler_panics_total",
        "Panics caught while handling one message, request or envelope (the connection was closed with 1011).",
        &|r| stats::read(&r.panics),
    );
    per_reactor_counter(
        &mut text,
        "engine_backpressure_pauses_total",
        "Connections whose reading paused because their input met a full mailbox ring.",
        &|r| stats::read(&r.backpressure_pauses),
    );
    per_reactor_counter(
        &mut text,
        "engine_http_requests_total",
        "Plain HTTP requests answered.",
        &|r| stats::read(&r.http_requests),
    );
    per_reactor_counter(
        &mut text,
        "engine_bytes_in_total",
        "Bytes read from sockets.",
        &|r| stats::read(&r.bytes_in),
    );
    per_reactor_counter(
        &mut text,
        "engine_bytes_out_total",
        "Bytes of frames and responses queued to sockets.",
        &|r| stats::read(&r.bytes_out),
    );
    per_reactor_counter(
        &mut text,
        "engine_messages_out_total",
        "Frames queued to connections.",
        &|r| stats::read(&r.frames_out),
    );
    per_reactor_counter(
        &mut text,
        "engine_envelopes_sent_total",
        "Envelopes mailed to other reactors.",
        &|r| stats::read(&r.envelopes_sent),
    );
    per_reactor_counter(
        &mut text,
        "engine_envelopes_received_total",
        "Envelopes received from other reactors.",
        &|r| stats::read(&r.envelopes_received),
    );
    let in_flight = stats::sum(reactors, |r| &r.envelopes_sent)
        .saturating_sub(stats::sum(reactors, |r| &r.envelopes_received));
    header(
        &mut text,
        "engine_mailbox_depth",
        "Envelopes mailed and not yet received, all reactors.",
        "gauge",
    );
    let _ = writeln!(text, "engine_mailbox_depth {in_flight}");
    let by_name = [
        (
            "engine_messages_in_total",
            "Client messages by type.",
            "type",
            MessageKind::NAMES,
            (|r: &ReactorStats| &r.messages_in[..]) as fn(&ReactorStats) -> &[AtomicU64],
        ),
        (
            "engine_messages_out_by_type_total",
            "Frames and responses queued to connections, by type.",
            "type",
            OutKind::NAMES,
            |r| &r.messages_out[..],
        ),
        (
            "engine_errors_total",
            "Error replies by code.",
            "code",
            ErrorCode::NAMES,
            |r| &r.errors[..],
        ),
    ];
    for (name, help, label, names, counters) in by_name {
        header(&mut text, name, help, "counter");
        for (id, r) in reactors.iter().enumerate() {
            for (value, counter) in names.iter().zip(counters(r)) {
                let count = stats::read(counter);
                let _ = writeln!(
                    text,
                    "{name}{{reactor=\"{id}\",{label}=\"{value}\"}} {count}"
                );
            }
        }
    }
    header(
        &mut text,
        "engine_routing_latency_seconds",
        "Time from a message's acceptance to its frame being queued on the receiving connection.",
        "histogram",
    );
    for (id, r) in reactors.iter().enumerate() {
        let labels = format!("reactor=\"{id}\"");
        histogram(
            &mut text,
            "engine_routing_latency_seconds",
            &labels,
            &r.routing_latency,
        );
    }
    header(
        &mut text,
        "engine_store_commit_seconds",
        "Time one store group commit takes (apply the batch, commit, fsync).",
        "histogram",
    );
    histogram(
        &mut text,
        "engine_store_commit_seconds",
        "",
        &store.commit_latency,
    );
    out.extend_from_slice(text.as_bytes());
}

/// The `_bucket` (cumulative), `_sum` and `_count` lines of one histogram; `labels` is
/// `name="value",...` or empty.
fn histogram(text: &mut String, name: &str, labels: &str, latency: &LatencyHistogram) {
    let (sep, plain) = if labels.is_empty() {
        ("", String::new())
    } else {
        (",", format!("{{{labels}}}"))
    };
    let mut cumulative = 0;
    for (bound, counter) in LATENCY_BUCKETS_US.iter().zip(&latency.buckets) {
        cumulative += stats::read(counter);
        let le = *bound as f64 / 1e6;
        let _ = writeln!(
            text,
            "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
        );
    }
    cumulative += stats::read(&latency.buckets[LATENCY_BUCKETS_US.len()]);
    let _ = writeln!(
        text,
        "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
    );
    let sum = stats::read(&latency.sum_us) as f64 / 1e6;
    let _ = writeln!(text, "{name}_sum{plain} {sum}");
    let _ = writeln!(text, "{name}_count{plain} {cumulative}");
}

fn header(text: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Writes `/api/stats`: totals, then one object per reactor.
pub fn stats_json(
    out: &mut Vec<u8>,
    health: &Health,
    reactors: &[ReactorStats],
    store: &StoreStats,
) {
    let processed = stats::sum(reactors, |r| &r.messages_processed);
    let rss = stats::rss_bytes();
    Obj::new(out)
        .u64("messages_processed", processed)
        .u64("messages_persisted", stats::read(&store.persisted))
        .u64("messages_recorded", stats::read(&store.recorded))
        .u64("persistence_failures", stats::read(&store.failures))
        .u64("uptime_seconds", health.uptime_seconds)
        .with("memory", |out| match rss {
            Some(rss) => Obj::new(out).u64("rss_bytes", rss).end(),
            None => Obj::new(out).null("rss_bytes").end(),
        })
        .i64("connections", health.connections)
        .i64("online_users", health.online_users)
        .with("reactors", |out| {
            out.push(b'[');
            for (id, r) in reactors.iter().enumerate() {
                if id > 0 {
                    out.push(b',');
                }
                Obj::new(out)
                    .u64("reactor", id as u64)
                    .i64("connections", stats::load_gauge(&r.connections))
                    .i64("online_users", stats::load_gauge(&r.online_users))
                    .u64("messages_processed", stats::read(&r.messages_processed))
                    .u64("messages_out", stats::read(&r.frames_out))
                    .u64("bytes_in", stats::read(&r.bytes_in))
                    .u64("bytes_out", stats::read(&r.bytes_out))
                    .end();
            }
            out.push(b']');
        })
        .end();
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEALTH: Health = Health {
        online_users: 1,
        connections: 2,
        uptime_seconds: 3,
        ready: true,
        now_ms: 4,
    };

    #[test]
    fn every_sample_line_is_name_labels_value() {
        let reactors = [ReactorStats::default(), ReactorStats::default()];
        ReactorStats::bump(&reactors[1].handshakes);
        reactors[0].observe_routing(stats::clock_ns());
        let mut out = Vec::new();
        render(&mut out, &HEALTH, &reactors, &StoreStats::default());
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("engine_handshakes_total{reactor=\"1\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("engine_routing_latency_seconds_count{reactor=\"0\"} 1\n"));
        assert!(
            text.contains("engine_routing_latency_seconds_bucket{reactor=\"0\",le=\"+Inf\"} 1\n")
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(!name.is_empty() && value.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn stats_are_json_with_a_row_per_reactor() {
        let reactors = [ReactorStats::default(), ReactorStats::default()];
        let mut out = Vec::new();
        stats_json(&mut out, &HEALTH, &reactors, &StoreStats::default());
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["connections"], 2);
        assert_eq!(value["reactors"].as_array().unwrap().len(), 2);
        assert_eq!(value["messages_persisted"], 0);
    }
}
