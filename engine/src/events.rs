//! Event webhooks (`--events-webhook`): what a backend learns without holding a
//! WebSocket. Each home hands over, as [`Hook`]s:
//! - `user_online` and `user_offline`, when the user's watchers would see it (the first
//!   device, and the last device gone after the presence grace; in a cluster the
//!   cluster's, not each node's: the relay decides which node reports them,
//!   `cluster::presence_events`);
//! - `group_member`, once the store holds a join or leave;
//! - `connection_closed`, with the device and the close code (1006 when the connection
//!   ended without a closing handshake; 4003, reported by the home when the same device
//!   connected again, since the old connection's own close then finds its device taken).
//!
//! They are posted in batches (`{"node"?,"events":[{"type","at_ms",…}]}`, at most
//! [`BATCH_MAX`] events or [`BATCH_WAIT`] after the first), signed like the push hook
//! and by the same [`Poster`], retried the same way, and never in the way of delivery:
//! a full queue drops the event and counts it.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use tracing::{info, warn};

use crate::{
    protocol::{
        json::{write_list, Obj},
        Role,
    },
    push::{HookStats, Poster, Webhook},
};

/// Events waiting for the events thread at most; more are dropped (and counted).
pub const QUEUE_MAX: usize = 100_000;
/// Events in one post at most.
pub const BATCH_MAX: usize = 500;
/// How long a batch waits for more events after its first.
pub const BATCH_WAIT: Duration = Duration::from_millis(200);

/// One event for the webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hook {
    /// The user's first device came online (and the user was not in its grace).
    UserOnline {
        /// The user.
        user: Arc<str>,
    },
    /// The user's last device is gone, after the presence grace.
    UserOffline {
        /// The user.
        user: Arc<str>,
    },
    /// A join or leave the store holds.
    GroupMember {
        /// The group.
        group: Box<str>,
        /// The member.
        user: Arc<str>,
        /// The role after a join; `None` for a leave.
        role: Option<Role>,
    },
    /// A device's connection closed.
    ConnectionClosed {
        /// The user.
        user: Arc<str>,
        /// The device.
        device: Box<str>,
        /// The close code (1006: no closing handshake).
        code: u16,
    },
}

impl Hook {
    /// The event's JSON object, stamped `at_ms`.
    fn write(&self, at_ms: u64, out: &mut Vec<u8>) {
        let obj = Obj::new(out);
        match self {
            Hook::UserOnline { user } => obj.str("type", "user_online").str("user_id", user),
            Hook::UserOffline { user } => obj.str("type", "user_offline").str("user_id", user),
            Hook::GroupMember { group, user, role } => {
                let obj = obj
                    .str("type", "group_member")
                    .str("group_id", group)
                    .str("user_id", user)
                    .str("action", if role.is_some() { "joined" } else { "left" });
                match role {
                    Some(Role::Owner) => obj.str("role", "owner"),
                    Some(Role::Admin) => obj.str("role", "admin"),
                    Some(Role::Member) => obj.str("role", "member"),
                    None => obj,
                }
            }
            Hook::ConnectionClosed { user, device, code } => obj
                .str("type", "connection_closed")
                .str("user_id", user)
                .str("device_id", device)
                .u64("code", u64::from(*code)),
        }
        .u64("at_ms", at_ms)
        .end();
    }
}

/// The reactors' side: hand an event over without waiting.
#[derive(Debug, Clone)]
pub struct Events {
    jobs: mpsc::SyncSender<(u64, Hook)>,
    stats: Arc<HookStats>,
    /// Events handed over and not yet taken by the events thread (none counted for a
    /// simulator's channel).
    waiting: Option<Arc<AtomicUsize>>,
}

impl Events {
    /// What the events thread counts.
    pub fn stats(&self) -> &HookStats {
        &self.stats
    }

    /// Events handed to the returned channel instead of a webhook's thread, for a
    /// simulator to read (after each step: it holds 1,024, and drops what comes beyond,
    /// as a full queue does).
    #[cfg(any(test, feature = "simulation"))]
    pub fn to_channel() -> (Events, mpsc::Receiver<(u64, Hook)>) {
        let (jobs, inbox) = mpsc::sync_channel(1_024);
        let stats = Arc::new(HookStats::default());
        let waiting = None;
        (
            Events {
                jobs,
                stats,
                waiting,
            },
            inbox,
        )
    }

    /// Hands `hook`, which happened at `at_ms`, to the events thread; never waits: a full
    /// queue drops it and counts it.
    pub fn emit(&self, at_ms: u64, hook: Hook) {
        // Counted before it is sent, so that the events thread never takes it first.
        if let Some(waiting) = &self.waiting {
            waiting.fetch_add(1, Ordering::Relaxed);
        }
        if self.jobs.try_send((at_ms, hook)).is_err() {
            if let Some(waiting) = &self.waiting {
                waiting.fetch_sub(1, Ordering::Relaxed);
            }
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events waiting for the events thread: a burst the sender can pace (a cluster
    /// node's checks of its users after a reconnect) keeps it well under [`QUEUE_MAX`].
    pub fn waiting(&self) -> usize {
        (self.waiting.as_ref()).map_or(0, |waiting| waiting.load(Ordering::Relaxed))
    }
}

/// Starts the events thread; `node` names the node in each batch (a cluster's, once
/// known). It ends once every [`Events`] handle is gone, after posting what it holds.
pub fn start(
    webhook: Webhook,
    node: impl Fn() -> Option<String> + Send + 'static,
) -> std::io::Result<Events> {
    let (jobs, inbox) = mpsc::sync_channel(QUEUE_MAX);
    let stats = Arc::new(HookStats::default());
    let waiting = Arc::new(AtomicUsize::new(0));
    if webhook.secret.is_none() {
        warn!("events are not signed: give --events-secret so the webhook can trust them");
    }
    let poster = Poster::new(webhook);
    let (counted, taken) = (stats.clone(), waiting.clone());
    std::thread::Builder::new()
        .name("events".into())
        .spawn(move || run(&poster, (&inbox, &taken), &counted, node))?;
    info!("events go to the webhook (--events-webhook)");
    let waiting = Some(waiting);
    Ok(Events {
        jobs,
        stats,
        waiting,
    })
}

/// Gathers batches and posts each, retrying with backoff; `waiting` counts down what it
/// takes from `inbox`.
fn run(
    poster: &Poster,
    (inbox, waiting): (&mpsc::Receiver<(u64, Hook)>, &AtomicUsize),
    stats: &HookStats,
    node: impl Fn() -> Option<String>,
) {
    while let Ok(first) = inbox.recv() {
        let mut batch = vec![first];
        let deadline = Instant::now() + BATCH_WAIT;
        while batch.len() < BATCH_MAX {
            let left = deadline.saturating_duration_since(Instant::now());
            match inbox.recv_timeout(left) {
                Ok(event) => batch.push(event),
                Err(_) => break, // the wait is over, or every handle is gone
            }
        }
        waiting.fetch_sub(batch.len(), Ordering::Relaxed);
        let body = batch_json(node().as_deref(), &batch);
        let count = batch.len() as u64;
        match poster.deliver(&body) {
            Ok(()) => stats.sent.fetch_add(count, Ordering::Relaxed),
            Err(e) => {
                warn!("events webhook failed for a batch of {count}: {e}");
                stats.failed.fetch_add(count, Ordering::Relaxed)
            }
        };
    }
}

/// `{"node"?,"events":[…]}`.
fn batch_json(node: Option<&str>, batch: &[(u64, Hook)]) -> Vec<u8> {
    let mut body = Vec::with_capacity(64 + 96 * batch.len());
    Obj::new(&mut body)
        .opt_str("node", node)
        .with("events", |out| {
            write_list(out, batch, |out, (at_ms, hook)| hook.write(*at_ms, out))
        })
        .end();
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_events_waiting_are_counted_until_the_events_thread_takes_them() {
        // A webhook that never answers: the thread takes one batch and waits on its post.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/events", silent.local_addr().unwrap());
        let webhook = Webhook {
            url,
            secret: Some(b"0123456789abcdef0123456789abcdef".to_vec()),
            roots: None,
        };
        let events = start(webhook, || None).unwrap();
        let user: Arc<str> = "alice".into();
        for at_ms in 0..(BATCH_MAX as u64 + 200) {
            let user = user.clone();
            events.emit(at_ms, Hook::UserOnline { user });
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while events.waiting() != 200 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(events.waiting(), 200, "one batch taken, the rest waiting");
        assert_eq!(
            Events::to_channel().0.waiting(),
            0,
            "a simulator's: not counted"
        );
    }

    #[test]
    fn a_batch_names_each_event_with_its_fields() {
        let user: Arc<str> = "alice".into();
        let batch = [
            (1, Hook::UserOnline { user: user.clone() }),
            (
                2,
                Hook::GroupMember {
                    group: "team".into(),
                    user: user.clone(),
                    role: Some(Role::Admin),
                },
            ),
            (
                3,
                Hook::GroupMember {
                    group: "team".into(),
                    user: user.clone(),
                    role: None,
                },
            ),
            (
                4,
                Hook::ConnectionClosed {
                    user: user.clone(),
                    device: "phone".into(),
                    code: 1006,
                },
            ),
            (5, Hook::UserOffline { user }),
        ];
        let body = batch_json(Some("a"), &batch);
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["node"], "a");
        let events = value["events"].as_array().unwrap();
        let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            [
                "user_online",
                "group_member",
                "group_member",
                "connection_closed",
                "user_offline"
            ]
        );
        assert_eq!(events[1]["role"], "admin");
        assert_eq!(events[2]["action"], "left");
        assert!(events[2].get("role").is_none());
        assert_eq!(
            (events[3]["code"].as_u64(), events[3]["at_ms"].as_u64()),
            (Some(1006), Some(4))
        );
        let alone = batch_json(None, &batch[..1]);
        assert!(!String::from_utf8(alone).unwrap().contains("node"));
    }
}
