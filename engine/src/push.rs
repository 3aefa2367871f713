//! The push hook for offline users: when the store has committed a chat message to the
//! queue of a user with no device online, a small JSON goes to `--push-webhook` (an
//! `http://` URL) so that a push service can wake the user's phone:
//! `{"userId","senderId","messageId","groupId"?,"preview"}` where `preview` is the text's
//! start with `--push-preview`, `null` without.
//!
//! Never in the way of delivery: the store hands jobs over a bounded channel without
//! waiting (a full channel drops the job and counts it), and one thread posts them with a
//! few retries and a growing pause between them.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use tracing::{info, warn};

use crate::protocol::json::Obj;

/// Jobs waiting for the push thread at most; more are dropped (and counted).
pub const QUEUE_MAX: usize = 10_000;
/// Attempts per notification.
pub const ATTEMPTS: u32 = 3;
/// The pause before the second attempt; each later one waits four times longer.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Characters of the text a preview carries at most.
pub const PREVIEW_CHARS_MAX: usize = 100;
/// Bound on connecting, sending and reading the answer of one attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where notifications go: an `http://host:port/path` URL, checked at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// `host:port` as given (the `Host` header).
    pub authority: String,
    /// The path (and query), `/` at least.
    pub path: String,
}

impl Webhook {
    /// Parses `http://host[:port][/path]`; https is not spoken here (put a local relay in
    /// front of a TLS endpoint).
    pub fn parse(url: &str) -> Result<Webhook, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or("must start with http:// (https is not supported)")?;
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("must name a host, and a path without spaces".into());
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.contains(']'))
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(Webhook {
            authority,
            path: path.to_owned(),
        })
    }
}

/// What the push hook counts, for `/metrics`.
#[derive(Debug, Default)]
pub struct PushStats {
    /// Notifications the webhook accepted (2xx).
    pub sent: AtomicU64,
    /// Notifications given up after every attempt failed.
    pub failed: AtomicU64,
    /// Notifications dropped because the queue was full.
    pub dropped: AtomicU64,
}

/// The store's side: hand over a job without waiting.
#[derive(Debug, Clone)]
pub struct Push {
    jobs: mpsc::SyncSender<(Box<str>, Bytes)>,
    stats: Arc<PushStats>,
}

impl Push {
    /// The counters the push thread keeps.
    pub fn stats(&self) -> Arc<PushStats> {
        self.stats.clone()
    }

    /// Notifies about `payload` (a queued `new_message`) for the offline `user`; never
    /// waits: a full queue drops the job and counts it.
    pub fn notify(&self, user: &str, payload: Bytes) {
        if self.jobs.try_send((user.into(), payload)).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Starts the push thread; it ends once every [`Push`] handle is gone.
pub fn start(webhook: Webhook, preview: bool, stats: Arc<PushStats>) -> io::Result<Push> {
    let (jobs, inbox) = mpsc::sync_channel(QUEUE_MAX);
    let worker_stats = stats.clone();
    std::thread::Builder::new()
        .name("push".into())
        .spawn(move || run(&webhook, preview, &inbox, &worker_stats))?;
    info!("push notifications for offline users go to the webhook");
    Ok(Push { jobs, stats })
}

/// Posts each job, retrying with backoff; ends when the store's handle is gone.
fn run(
    webhook: &Webhook,
    preview: bool,
    inbox: &mpsc::Receiver<(Box<str>, Bytes)>,
    stats: &PushStats,
) {
    while let Ok((user, payload)) = inbox.recv() {
        let Some(body) = notification(&user, &payload, preview) else {
            continue;
        };
        let mut pause = FIRST_BACKOFF;
        let mut outcome = Err(io::Error::other("not tried"));
        for attempt in 1..=ATTEMPTS {
            outcome = post(webhook, &body);
            if outcome.is_ok() || attempt == ATTEMPTS {
                break;
            }
            std::thread::sleep(pause);
            pause *= 4;
        }
        match outcome {
            Ok(()) => stats.sent.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                warn!("push webhook failed {ATTEMPTS} times for {user}: {e}");
                stats.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// The notification JSON for a stored `new_message`; `None` for anything else.
fn notification(user: &str, payload: &[u8], preview: bool) -> Option<Vec<u8>> {
    let message: serde_json::Value = serde_json::from_slice(payload).ok()?;
    if message["type"] != "new_message" {
        return None;
    }
    let text = |key: &str| message[key].as_str().unwrap_or_default();
    let mut body = Vec::with_capacity(256);
    let obj = Obj::new(&mut body)
        .str("userId", user)
        .str("senderId", text("senderId"))
        .str("messageId", text("messageId"))
        .opt_str("groupId", message["groupId"].as_str());
    let shown: String = text("content").chars().take(PREVIEW_CHARS_MAX).collect();
    let obj = if preview {
        obj.str("preview", &shown)
    } else {
        obj.null("preview")
    };
    obj.end();
    Some(body)
}

/// One POST; Ok on a 2xx answer.
fn post(webhook: &Webhook, body: &[u8]) -> io::Result<()> {
    let address: SocketAddr = webhook
        .authority
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other("the webhook's host has no address"))?;
    let mut stream = TcpStream::connect_timeout(&address, ATTEMPT_TIMEOUT)?;
    stream.set_read_timeout(Some(ATTEMPT_TIMEOUT))?;
    stream.set_write_timeout(Some(ATTEMPT_TIMEOUT))?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        webhook.path,
        webhook.authority,
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut status = [0u8; 12];
    stream.read_exact(&mut status)?;
    match &status[..9] {
        b"HTTP/1.1 " | b"HTTP/1.0 " if status[9] == b'2' => Ok(()),
        _ => Err(io::Error::other(format!(
            "the webhook answered {}",
            String::from_utf8_lossy(&status)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_are_checked() {
        assert_eq!(
            Webhook::parse("http://127.0.0.1:9000/hooks/push?k=1"),
            Ok(Webhook {
                authority: "127.0.0.1:9000".into(),
                path: "/hooks/push?k=1".into()
            })
        );
        assert_eq!(
            Webhook::parse("http://push.local").unwrap().authority,
            "push.local:80"
        );
        assert!(Webhook::parse("https://push.example").is_err());
        assert!(Webhook::parse("http:///path").is_err());
        assert!(Webhook::parse("http://h/a b").is_err());
    }

    #[test]
    fn a_notification_names_who_and_what_and_previews_only_when_asked() {
        let stored =
            br#"{"type":"new_message","messageId":"m1","senderId":"alice","content":"hi bob"}"#;
        let plain = notification("bob", stored, false).unwrap();
        assert_eq!(
            std::str::from_utf8(&plain).unwrap(),
            r#"{"userId":"bob","senderId":"alice","messageId":"m1","preview":null}"#
        );
        let shown = notification("bob", stored, true).unwrap();
        assert!(std::str::from_utf8(&shown)
            .unwrap()
            .ends_with(r#""preview":"hi bob"}"#));
        let receipt = br#"{"type":"delivery_receipt","messageId":"m1"}"#;
        assert!(notification("alice", receipt, true).is_none());
    }
}
