//! The push hook for offline users: when the store has committed a chat message to the
//! queue of a user with no device online, a small JSON goes to `--push-webhook` (an
//! `http://` or `https://` URL, posted by ureq over rustls, signed with `--push-secret`:
//! [`SIGNATURE_HEADER`]) so that a push service can wake the user's phone:
//! `{"userId","senderId","messageId","groupId"?,"preview"}` where `preview` is the text's
//! start with `--push-preview`, `null` without.
//!
//! Never in the way of delivery: the store hands jobs over a bounded channel without
//! waiting (a full channel drops the job and counts it), and one thread posts them with a
//! few retries and a growing pause between them.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use rustls_pki_types::{pem::PemObject, CertificateDer};
use sha2::Sha256;
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
/// The header that signs a body: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
pub const SIGNATURE_HEADER: &str = "X-Engine-Signature";

/// Where notifications go and how they are signed, checked at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// An `http://` or `https://` URL.
    pub url: String,
    /// The HMAC-SHA256 key that signs each body (`--push-secret`), if any.
    pub secret: Option<Vec<u8>>,
    /// The authorities an `https://` webhook's certificate may chain to
    /// (`--push-ca`); none: the Mozilla roots built in.
    pub roots: Option<Vec<CertificateDer<'static>>>,
}

/// The flags that give a hook's webhook, its secret and its authorities (errors name them).
pub type HookFlags = [&'static str; 3];
/// `--push-webhook`, `--push-secret`, `--push-ca`.
pub const PUSH_FLAGS: HookFlags = ["push-webhook", "push-secret", "push-ca"];
/// `--events-webhook`, `--events-secret`, `--events-ca`.
pub const EVENTS_FLAGS: HookFlags = ["events-webhook", "events-secret", "events-ca"];

impl Webhook {
    /// Checks `url` (`http://` or `https://`, a host, a path without spaces) and reads
    /// the authorities in the PEM file `ca`; an error names the flag of `flags` at fault.
    pub fn parse(
        url: &str,
        secret: Option<String>,
        ca: Option<&str>,
        flags: HookFlags,
    ) -> Result<Webhook, (&'static str, String)> {
        let [url_flag, secret_flag, ca_flag] = flags;
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or((url_flag, "must start with http:// or https://".to_owned()))?;
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            let problem = "must name a host, and a path without spaces".to_owned();
            return Err((url_flag, problem));
        }
        let secret = match secret {
            Some(secret) if secret.len() < 32 => {
                let problem = "must be at least 32 bytes (`openssl rand -hex 32` makes one)";
                return Err((secret_flag, problem.to_owned()));
            }
            secret => secret.map(String::into_bytes),
        };
        let roots = match ca {
            None => None,
            Some(path) => {
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                    .and_then(|certs| certs.collect())
                    .map_err(|e| (ca_flag, format!("cannot read {path}: {e}")))?;
                if certs.is_empty() {
                    return Err((ca_flag, format!("{path} holds no PEM certificate")));
                }
                Some(certs)
            }
        };
        Ok(Webhook {
            url: url.to_owned(),
            secret,
            roots,
        })
    }
}

/// Posts JSON bodies to a [`Webhook`], signed: the one poster of the gateway's hooks.
pub struct Poster {
    webhook: Webhook,
    agent: ureq::Agent,
}

impl Poster {
    /// An HTTP(S) client for `webhook`: TLS by rustls, no redirects, each attempt bounded.
    pub fn new(webhook: Webhook) -> Poster {
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(roots) = &webhook.roots {
            let certs = roots
                .iter()
                .map(|der| ureq::tls::Certificate::from_der(der.as_ref()).to_owned())
                .collect();
            tls = tls.root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)));
        }
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(ATTEMPT_TIMEOUT))
            .http_status_as_error(false)
            .max_redirects(0)
            .tls_config(tls.build())
            .build()
            .into();
        Poster { webhook, agent }
    }

    /// POSTs `body` until the webhook takes it, at most [`ATTEMPTS`] times with a
    /// growing pause between them; the last attempt's error.
    pub fn deliver(&self, body: &[u8]) -> Result<(), String> {
        let mut pause = FIRST_BACKOFF;
        let mut outcome = Err("not tried".to_owned());
        for attempt in 1..=ATTEMPTS {
            outcome = self.post(body);
            if outcome.is_ok() || attempt == ATTEMPTS {
                break;
            }
            std::thread::sleep(pause);
            pause *= 4;
        }
        outcome
    }

    /// One POST of `body` (signed when there is a secret); Ok on a 2xx answer.
    fn post(&self, body: &[u8]) -> Result<(), String> {
        let mut request = self
            .agent
            .post(&self.webhook.url)
            .content_type("application/json");
        if let Some(secret) = &self.webhook.secret {
            let now_s = crate::protocol::now_ms() / 1000;
            request = request.header(SIGNATURE_HEADER, signature(secret, now_s, body));
        }
        let answer = request.send(body).map_err(|e| e.to_string())?;
        let status = answer.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the webhook answered {status}"))
        }
    }
}

/// `t=<now_s>,v1=<hex HMAC-SHA256(secret, "<now_s>.<body>")>`: the receiver recomputes it
/// with the shared secret, compares in constant time, and refuses an old `t` (a replay).
pub fn signature(secret: &[u8], now_s: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(format!("{now_s}.").as_bytes());
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={now_s},v1={hex}")
}

/// What a hook (push notifications, events) counts, for `/metrics`.
#[derive(Debug, Default)]
pub struct HookStats {
    /// Notifications or events the webhook accepted (2xx).
    pub sent: AtomicU64,
    /// Those given up after every attempt failed.
    pub failed: AtomicU64,
    /// Those dropped because the hook's queue was full.
    pub dropped: AtomicU64,
}

/// The store's side: hand over a job without waiting.
#[derive(Debug, Clone)]
pub struct Push {
    jobs: mpsc::SyncSender<(Box<str>, Bytes)>,
    stats: Arc<HookStats>,
}

impl Push {
    /// The counters the push thread keeps.
    pub fn stats(&self) -> Arc<HookStats> {
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
pub fn start(webhook: Webhook, preview: bool, stats: Arc<HookStats>) -> std::io::Result<Push> {
    let (jobs, inbox) = mpsc::sync_channel(QUEUE_MAX);
    let worker_stats = stats.clone();
    if webhook.secret.is_none() {
        warn!(
            "push notifications are not signed: give --push-secret so the webhook can trust them"
        );
    }
    let poster = Poster::new(webhook);
    std::thread::Builder::new()
        .name("push".into())
        .spawn(move || run(&poster, preview, &inbox, &worker_stats))?;
    info!("push notifications for offline users go to the webhook");
    Ok(Push { jobs, stats })
}

/// Posts each job, retrying with backoff; ends when the store's handle is gone.
fn run(
    poster: &Poster,
    preview: bool,
    inbox: &mpsc::Receiver<(Box<str>, Bytes)>,
    stats: &HookStats,
) {
    while let Ok((user, payload)) = inbox.recv() {
        let Some(body) = notification(&user, &payload, preview) else {
            continue;
        };
        match poster.deliver(&body) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_secrets_and_authorities_are_checked() {
        let parse = |url, secret, ca| Webhook::parse(url, secret, ca, PUSH_FLAGS);
        let hook = parse("https://push.example:8443/hooks?k=1", None, None).unwrap();
        assert_eq!(hook.url, "https://push.example:8443/hooks?k=1");
        assert!(parse("http://127.0.0.1:9000/", None, None).is_ok());
        for bad in [
            "ftp://push.example",
            "http:///path",
            "http://h/a b",
            "push.example",
        ] {
            let (flag, _) = parse(bad, None, None).unwrap_err();
            assert_eq!(flag, "push-webhook", "{bad}");
        }
        let (flag, _) = parse("http://h/", Some("short".into()), None).unwrap_err();
        assert_eq!(flag, "push-secret");
        let (flag, problem) = parse("https://h/", None, Some("/nonexistent.pem")).unwrap_err();
        assert_eq!(flag, "push-ca", "{problem}");
    }

    #[test]
    fn a_signature_is_the_hmac_of_the_time_and_the_body() {
        // As a receiver checks it: HMAC-SHA256("<t>.<body>") with the shared secret.
        let secret = b"0123456789abcdef0123456789abcdef";
        let header = signature(secret, 1_700_000_000, br#"{"userId":"bob"}"#);
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(br#"1700000000.{"userId":"bob"}"#);
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(header, format!("t=1700000000,v1={hex}"));
        assert_ne!(
            header,
            signature(secret, 1_700_000_001, br#"{"userId":"bob"}"#)
        );
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
