//! `/metrics` (Prometheus text exposition 0.0.4) and `/api/stats` (JSON), both written
//! straight from the per-reactor counters at request time.
//!
//! Why not a metrics crate (prometheus-client, metrics): their counters are shared atomics
//! updated with read-modify-write instructions, and their histograms take a lock per
//! observation. Here every counter has exactly one writer (its reactor), so a relaxed
//! load and store is enough on the hot path, and summing happens only when scraped. The
//! exposition format itself is a few lines of text.

use std::{
    fmt::Write,
    sync::atomic::{AtomicI64, AtomicU64},
};

use super::health::Health;
use crate::{
    protocol::{
        codes::{ErrorCode, MessageKind, OutKind},
        json::{write_list, Obj},
    },
    push::HookStats,
    stats::{self, LatencyHistogram, ReactorStats, LATENCY_BUCKETS_US},
    store::StoreStats,
};

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A process-wide counter: name, help, where it is kept.
type StoreCounter = (&'static str, &'static str, fn(&StoreStats) -> &AtomicU64);
/// A per-reactor counter: name, help, where it is kept.
type ReactorCounter = (&'static str, &'static str, fn(&ReactorStats) -> &AtomicU64);
/// A per-reactor gauge: name, help, where it is kept.
type ReactorGauge = (&'static str, &'static str, fn(&ReactorStats) -> &AtomicI64);
/// A per-reactor counter by name: metric, help, label, the names, the counters.
type ReactorCountersByName = (
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
    fn(&ReactorStats) -> &[AtomicU64],
);

/// The store's and the push hook's counters.
const STORE_COUNTERS: [StoreCounter; 11] = [
    (
        "engine_store_messages_persisted_total",
        "Messages committed to offline queues.",
        |s| &s.persisted,
    ),
    (
        "engine_store_history_recorded_total",
        "Chat messages committed to conversation history.",
        |s| &s.recorded,
    ),
    (
        "engine_store_persistence_failures_total",
        "Messages a failed commit did not hold.",
        |s| &s.failures,
    ),
    (
        "engine_store_commits_total",
        "Store group commits, each made durable by its journal record.",
        |s| &s.commits,
    ),
    (
        "engine_store_checkpoints_total",
        "Checkpoints: durable commits of the store file that hold its journal up to a freeze.",
        |s| &s.checkpoints,
    ),
    (
        "engine_store_checkpoint_failures_total",
        "Checkpoints that failed (each tried again a second later; the journal holds what they had).",
        |s| &s.checkpoint_failures,
    ),
    (
        "engine_store_expired_total",
        "Queued messages removed unread after the retention period.",
        |s| &s.expired,
    ),
    (
        "engine_store_history_expired_total",
        "History entries removed after the retention period.",
        |s| &s.expired_history,
    ),
    (
        "engine_push_sent_total",
        "Push notifications the webhook accepted.",
        |s| &s.push.sent,
    ),
    (
        "engine_push_failed_total",
        "Push notifications given up after every attempt failed.",
        |s| &s.push.failed,
    ),
    (
        "engine_push_dropped_total",
        "Push notifications dropped because the push queue was full.",
        |s| &s.push.dropped,
    ),
];

/// Gauges each reactor keeps.
const REACTOR_GAUGES: [ReactorGauge; 3] = [
    (
        "engine_connections",
        "Open connections (HTTP and WebSocket).",
        |r| &r.connections,
    ),
    (
        "engine_online_users",
        "Users homed on the reactor with a device online.",
        |r| &r.online_users,
    ),
    (
        "engine_mailbox_waiting_batches",
        "Batches of envelopes (up to 256 each) left in the reactor's inbound mailbox rings after its last drain: above 0, it falls behind its peers.",
        |r| &r.mailbox_waiting,
    ),
];

/// Counters each reactor keeps.
const REACTOR_COUNTERS: [ReactorCounter; 20] = [
    (
        "engine_handshakes_total",
        "Completed WebSocket upgrades.",
        |r| &r.handshakes,
    ),
    (
        "engine_handshake_failures_total",
        "Refused WebSocket upgrades.",
        |r| &r.handshake_failures,
    ),
    (
        "engine_handler_panics_total",
        "Panics caught while handling one message, request or envelope (the connection was closed with 1011).",
        |r| &r.panics,
    ),
    (
        "engine_connections_moved_home_total",
        "Authenticated WebSockets moved from the reactor that accepted them to their user's home reactor (--connections-at-home).",
        |r| &r.connections_moved,
    ),
    (
        "engine_connections_kept_off_home_total",
        "Authenticated WebSockets that could not move to their home reactor and stayed where they were accepted (a refused release, a full handoff queue).",
        |r| &r.connections_kept_off_home,
    ),
    (
        "engine_deadline_closes_total",
        "Connections closed because their HTTP request head (--handshake-timeout-ms) or their auth (--auth-timeout-ms) did not come in time.",
        |r| &r.deadline_closes,
    ),
    (
        "engine_sessions_expired_total",
        "Sessions closed with 4005 because their token expired without auth_refresh.",
        |r| &r.sessions_expired,
    ),
    (
        "engine_deadlines_met_late_total",
        "Handshake or auth deadlines met by input that had come but was read only when the deadline fired (the reactor ran late, not the client).",
        |r| &r.deadlines_met_late,
    ),
    (
        "engine_refused_per_address_total",
        "Connections closed as they were accepted: their address held --max-pending-per-ip unauthenticated connections or opened --connects-per-ip-per-sec this second.",
        |r| &r.refused_per_address,
    ),
    (
        "engine_tls_handshakes_total",
        "TLS handshakes completed on the listen port (--tls-cert).",
        |r| &r.tls_handshakes,
    ),
    (
        "engine_tls_failures_total",
        "TLS connections closed for a failed handshake, a record that did not authenticate, or an alert from the client.",
        |r| &r.tls_failures,
    ),
    (
        "engine_pace_pauses_total",
        "Connections whose input paused until the next second: over --message-pace client messages in this one.",
        |r| &r.pace_pauses,
    ),
    (
        "engine_backpressure_pauses_total",
        "Connections whose reading paused because their input met a full mailbox ring.",
        |r| &r.backpressure_pauses,
    ),
    (
        "engine_dedup_evicted_young_total",
        "Recent messages the home's dedup window let go of before 5 minutes (--dedup-window-pairs): a retry of one could reach a device twice.",
        |r| &r.dedup_evicted_young,
    ),
    (
        "engine_http_requests_total",
        "Plain HTTP requests answered.",
        |r| &r.http_requests,
    ),
    ("engine_bytes_in_total", "Bytes read from sockets.", |r| &r.bytes_in),
    (
        "engine_bytes_out_total",
        "Bytes of frames and responses queued to sockets.",
        |r| &r.bytes_out,
    ),
    (
        "engine_messages_out_total",
        "Frames queued to connections.",
        |r| &r.frames_out,
    ),
    (
        "engine_envelopes_sent_total",
        "Envelopes mailed to other reactors.",
        |r| &r.envelopes_sent,
    ),
    (
        "engine_envelopes_received_total",
        "Envelopes received from other reactors.",
        |r| &r.envelopes_received,
    ),
];

/// A counter of a hook: name, help, and where it is kept.
type HookCounter = (&'static str, &'static str, fn(&HookStats) -> &AtomicU64);

/// The events hook's counters (`--events-webhook`).
const EVENTS_COUNTERS: [HookCounter; 3] = [
    (
        "engine_events_sent_total",
        "Events the events webhook accepted (2xx), counted per event of each batch.",
        |s| &s.sent,
    ),
    (
        "engine_events_failed_total",
        "Events given up after every attempt to post their batch failed.",
        |s| &s.failed,
    ),
    (
        "engine_events_dropped_total",
        "Events dropped because the events queue was full.",
        |s| &s.dropped,
    ),
];

/// Counters each reactor keeps per message kind, error code or close code.
const REACTOR_COUNTERS_BY_NAME: [ReactorCountersByName; 4] = [
    (
        "engine_messages_in_total",
        "Client messages by type.",
        "type",
        MessageKind::NAMES,
        |r| &r.messages_in[..],
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
    (
        "engine_closes_total",
        "Connections the gateway closed, by close code (4002: slow consumer).",
        "code",
        &ws_frame::close::SENT_LABELS,
        |r| &r.closes[..],
    ),
];

/// Writes every metric, per reactor where that is how it is kept (and the cluster's, in
/// one; the events hook's, with one).
pub fn render(
    out: &mut Vec<u8>,
    health: &Health,
    reactors: &[ReactorStats],
    store: &StoreStats,
    (cluster, events): (Option<&crate::cluster::State>, Option<&HookStats>),
) {
    let mut text = String::with_capacity(8 * 1024);
    render_process(&mut text, health, reactors);
    if let Some(cluster) = cluster {
        render_cluster(&mut text, cluster);
    }
    for (name, help, counter) in EVENTS_COUNTERS.iter().filter(|_| events.is_some()) {
        header(&mut text, name, help, "counter");
        let count = events.map_or(0, |stats| stats::read(counter(stats)));
        let _ = writeln!(text, "{name} {count}");
    }
    for (name, help, counter) in STORE_COUNTERS {
        header(&mut text, name, help, "counter");
        let _ = writeln!(text, "{name} {}", stats::read(counter(store)));
    }
    for (name, help, gauge) in REACTOR_GAUGES {
        header(&mut text, name, help, "gauge");
        for (id, r) in reactors.iter().enumerate() {
            let _ = writeln!(
                text,
                "{name}{{reactor=\"{id}\"}} {}",
                stats::load_gauge(gauge(r))
            );
        }
    }
    for (name, help, counter) in REACTOR_COUNTERS {
        header(&mut text, name, help, "counter");
        for (id, r) in reactors.iter().enumerate() {
            let _ = writeln!(
                text,
                "{name}{{reactor=\"{id}\"}} {}",
                stats::read(counter(r))
            );
        }
    }
    render_mailbox_depth(&mut text, reactors);
    for (name, help, label, names, counters) in REACTOR_COUNTERS_BY_NAME {
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
    render_latencies(&mut text, reactors, store);
    out.extend_from_slice(text.as_bytes());
}

/// Uptime, readiness, reactors, resident memory.
fn render_process(text: &mut String, health: &Health, reactors: &[ReactorStats]) {
    header(
        text,
        "engine_uptime_seconds",
        "Seconds since the engine started.",
        "gauge",
    );
    let _ = writeln!(text, "engine_uptime_seconds {}", health.uptime_seconds);
    header(
        text,
        "engine_ready",
        "1 while accepting and not draining.",
        "gauge",
    );
    let _ = writeln!(text, "engine_ready {}", u8::from(health.ready));
    header(text, "engine_reactors", "Reactor threads.", "gauge");
    let _ = writeln!(text, "engine_reactors {}", reactors.len());
    if let Some(rss) = stats::rss_bytes() {
        let help = "Resident set size of the process.";
        header(text, "engine_resident_memory_bytes", help, "gauge");
        let _ = writeln!(text, "engine_resident_memory_bytes {rss}");
    }
}

/// The node's view of its cluster.
fn render_cluster(text: &mut String, cluster: &crate::cluster::State) {
    let help = "1 while this node is connected to NATS.";
    header(text, "engine_cluster_connected", help, "gauge");
    let _ = writeln!(
        text,
        "engine_cluster_connected {}",
        u8::from(cluster.connected())
    );
    let help = "Live nodes in the cluster, this one included.";
    header(text, "engine_cluster_nodes", help, "gauge");
    let _ = writeln!(text, "engine_cluster_nodes {}", cluster.nodes());
}

/// Envelopes mailed and not yet received, over every ring.
fn render_mailbox_depth(text: &mut String, reactors: &[ReactorStats]) {
    let in_flight = stats::sum(reactors, |r| &r.envelopes_sent)
        .saturating_sub(stats::sum(reactors, |r| &r.envelopes_received));
    let help = "Envelopes mailed and not yet received, all reactors.";
    header(text, "engine_mailbox_depth", help, "gauge");
    let _ = writeln!(text, "engine_mailbox_depth {in_flight}");
}

/// The routing latency per reactor and the store's commit and checkpoint latencies.
fn render_latencies(text: &mut String, reactors: &[ReactorStats], store: &StoreStats) {
    let name = "engine_routing_latency_seconds";
    let help =
        "Time from a message's acceptance to its frame being queued on the receiving connection.";
    header(text, name, help, "histogram");
    for (id, r) in reactors.iter().enumerate() {
        let labels = format!("reactor=\"{id}\"");
        histogram(text, name, &labels, &r.routing_latency);
    }
    let name = "engine_store_commit_seconds";
    let help = "Time one store group commit takes (apply the batch, journal it, fdatasync).";
    header(text, name, help, "histogram");
    histogram(text, name, "", &store.commit_latency);
    let name = "engine_store_checkpoint_seconds";
    let help = "Time one checkpoint takes on its own thread (a frozen memtable written into the store file and synced; acks do not wait for it).";
    header(text, name, help, "histogram");
    histogram(text, name, "", &store.checkpoint_latency);
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

/// Writes `/api/stats`: totals, counts by error and close code, the routing and commit
/// latency histograms, then one object per reactor (schema in the README; the `/admin`
/// page draws it every second).
pub fn stats_json(
    out: &mut Vec<u8>,
    health: &Health,
    reactors: &[ReactorStats],
    store: &StoreStats,
) {
    let processed = stats::sum(reactors, |r| &r.messages_processed);
    let rss = stats::rss_bytes();
    let by_name =
        |out: &mut Vec<u8>, names: &[&str], counters: fn(&ReactorStats) -> &[AtomicU64]| {
            let mut obj = Obj::new(out);
            for (i, name) in names.iter().enumerate() {
                obj = obj.u64(
                    name,
                    reactors.iter().map(|r| stats::read(&counters(r)[i])).sum(),
                );
            }
            obj.end();
        };
    let routing = |bucket: usize| {
        reactors
            .iter()
            .map(|r| stats::read(&r.routing_latency.buckets[bucket]))
            .sum()
    };
    let commit = |bucket: usize| stats::read(&store.commit_latency.buckets[bucket]);
    Obj::new(out)
        .u64("messages_processed", processed)
        .u64("messages_out", stats::sum(reactors, |r| &r.frames_out))
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
        .with("errors", |out| {
            by_name(out, ErrorCode::NAMES, |r| &r.errors[..])
        })
        .with("closes", |out| {
            by_name(out, &ws_frame::close::SENT_LABELS, |r| &r.closes[..])
        })
        .with("routing_latency", |out| buckets_json(out, routing))
        .with("store_commit_latency", |out| buckets_json(out, commit))
        .with("reactors", |out| {
            write_list(out, reactors.iter().enumerate(), |out, (id, r)| {
                Obj::new(out)
                    .u64("reactor", id as u64)
                    .i64("connections", stats::load_gauge(&r.connections))
                    .i64("online_users", stats::load_gauge(&r.online_users))
                    .u64("messages_processed", stats::read(&r.messages_processed))
                    .u64("messages_out", stats::read(&r.frames_out))
                    .u64("bytes_in", stats::read(&r.bytes_in))
                    .u64("bytes_out", stats::read(&r.bytes_out))
                    .i64("mailbox_waiting", stats::load_gauge(&r.mailbox_waiting))
                    .u64("backpressure_pauses", stats::read(&r.backpressure_pauses))
                    .end();
            })
        })
        .end();
}

/// A latency histogram as `{"le_us":[bounds…,null],"counts":[…]}`: the count in each
/// bucket (not cumulative) up to its bound, the last one unbounded.
fn buckets_json(out: &mut Vec<u8>, count: impl Fn(usize) -> u64) {
    let list = |out: &mut Vec<u8>, items: &mut dyn Iterator<Item = String>| {
        write_list(out, items, |out, item| {
            out.extend_from_slice(item.as_bytes())
        })
    };
    let bounds = LATENCY_BUCKETS_US.iter().map(u64::to_string);
    let counts = (0..=LATENCY_BUCKETS_US.len()).map(|i| count(i).to_string());
    Obj::new(out)
        .with("le_us", |out| {
            list(out, &mut bounds.chain(std::iter::once("null".into())))
        })
        .with("counts", |out| list(out, &mut counts.into_iter()))
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
        let events = HookStats::default();
        let extras = (None, Some(&events));
        render(&mut out, &HEALTH, &reactors, &StoreStats::default(), extras);
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

    #[test]
    fn stats_sum_codes_and_latency_buckets_over_reactors() {
        let reactors = [ReactorStats::default(), ReactorStats::default()];
        let store = StoreStats::default();
        reactors[0].count_error(ErrorCode::RateLimited);
        reactors[1].count_error(ErrorCode::RateLimited);
        let slow = ws_frame::close::sent_index(ws_frame::close::SLOW_CONSUMER).unwrap();
        ReactorStats::bump(&reactors[1].closes[slow]);
        reactors[0].routing_latency.observe_us(3);
        reactors[1].routing_latency.observe_us(3);
        reactors[1].routing_latency.observe_us(10_000_000_000);
        store.commit_latency.observe_us(700);
        reactors[1]
            .mailbox_waiting
            .store(3, std::sync::atomic::Ordering::Relaxed);
        let mut out = Vec::new();
        stats_json(&mut out, &HEALTH, &reactors, &store);
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["errors"]["rate_limited"], 2, "{value}");
        assert_eq!(value["errors"].as_object().unwrap().len(), ErrorCode::COUNT);
        assert_eq!(value["closes"]["4002"], 1);
        let routing = &value["routing_latency"];
        let (bounds, counts) = (
            routing["le_us"].as_array().unwrap(),
            routing["counts"].as_array().unwrap(),
        );
        assert_eq!(
            (bounds.len(), counts.len()),
            (LATENCY_BUCKETS_US.len() + 1, bounds.len())
        );
        assert!(
            bounds.last().unwrap().is_null(),
            "the last bucket is unbounded"
        );
        let at = LATENCY_BUCKETS_US.partition_point(|&b| b < 3);
        assert_eq!(
            (counts[at].as_u64(), counts.last().unwrap().as_u64()),
            (Some(2), Some(1))
        );
        let commit = value["store_commit_latency"]["counts"].as_array().unwrap();
        assert_eq!(commit.iter().filter_map(|c| c.as_u64()).sum::<u64>(), 1);
        assert_eq!(value["reactors"][1]["mailbox_waiting"], 3);
    }
}
