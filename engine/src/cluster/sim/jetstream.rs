//! A simulated nats-server with JetStream, for the cluster simulator: what the cluster's
//! inboxes and history ask of nats-server 2.9, in memory, on a virtual clock. It reads
//! the bytes a node writes (`PUB` and `HPUB`, as [`super::super::wire`] writes them) and
//! answers as nats-server does: stream creation and description (with its last
//! sequence), publishes with `Nats-Msg-Id` (a duplicate window),
//! `Nats-Expected-Last-Subject-Sequence`, per-subject limits (refused with
//! `discard_new_per_subject`, else the oldest goes), the republish, direct gets
//! (`last_by_subj`, `next_by_subj` from a `seq`, a `seq`), purges of a subject below a
//! `seq`, stream deletions (with their consumers; a stream made again has another
//! `created`), pull consumers without acks (created from a sequence, with a filter or
//! without, pulled with `no_wait`: the messages, then 408 if fewer came than asked, or
//! 404 if none; nothing for a consumer not there; deleted), and "no responders" for a
//! subject no stream takes.
//!
//! It also keeps what an oracle needs: every message ever stored (purged ones too).

use std::collections::{BTreeMap, HashMap};

use bytes::{Buf, Bytes, BytesMut};
use serde_json::{json, Value};

/// One operation a node sent.
#[derive(Debug)]
pub(super) struct Publish {
    pub subject: String,
    pub reply: Option<String>,
    pub headers: Vec<(String, String)>,
    pub payload: Bytes,
}

/// What the server sends a node: an answer to its request, or a republished event.
#[derive(Debug)]
pub(super) struct Delivery {
    /// The subject it is delivered on (a reply subject, or `chat.live.<user>`).
    pub subject: String,
    /// A status (404, 503), if any.
    #[cfg_attr(not(test), expect(dead_code, reason = "the stores simulator reads it"))]
    pub status: Option<u16>,
    /// A consumer's delivery, routed by `subject` (the pull's reply subject): the stored
    /// message's subject, which its `MSG` line names, and the consumer's acknowledgement
    /// subject, its reply.
    pub stored: Option<(String, String)>,
    /// The header block, as NATS writes it (empty: none).
    pub headers: Bytes,
    pub payload: Bytes,
}

/// One stored message.
#[derive(Debug, Clone)]
pub(super) struct Stored {
    pub subject: String,
    pub headers: Vec<(String, String)>,
    pub payload: Bytes,
}

impl Stored {
    /// Header `name`'s value.
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One stream.
struct Stream {
    config: Value,
    created: String,
    last: u64,
    messages: BTreeMap<u64, Stored>,
    /// `Nats-Msg-Id` → (sequence, when).
    ids: HashMap<String, (u64, u64)>,
}

impl Stream {
    fn takes(&self, subject: &str) -> bool {
        self.config["subjects"].as_array().is_some_and(|subjects| {
            subjects
                .iter()
                .any(|s| matches(s.as_str().unwrap_or(""), subject))
        })
    }

    fn last_of(&self, subject: &str) -> Option<u64> {
        self.messages
            .iter()
            .rev()
            .find(|(_, m)| m.subject == subject)
            .map(|(seq, _)| *seq)
    }
}

/// A pull consumer without acks: its stream, filter and next sequence.
struct Consumer {
    stream: String,
    filter: String,
    next: u64,
}

/// The simulated server.
#[derive(Default)]
pub(super) struct JetStream {
    streams: BTreeMap<String, Stream>,
    /// Consumers by name.
    consumers: BTreeMap<String, Consumer>,
    /// The last consumer name given out (`c<number>`).
    consumers_made: u64,
    /// The streams made so far: a stream's `created` names its number.
    streams_made: u64,
    /// The virtual clock (ms).
    pub now_ms: u64,
    /// Every message ever stored, by stream and sequence.
    pub ever: BTreeMap<(String, u64), Stored>,
}

/// Whether NATS subject pattern `pattern` (`*`, `>`) matches `subject`.
pub(super) fn matches(pattern: &str, subject: &str) -> bool {
    let mut subject = subject.split('.');
    for token in pattern.split('.') {
        match (token, subject.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (t, Some(s)) if t == s => {}
            _ => return false,
        }
    }
    subject.next().is_none()
}

/// A header block as NATS writes it.
fn block(status: Option<(u16, &str)>, headers: &[(String, String)]) -> Bytes {
    let mut text = match status {
        Some((code, why)) => format!("NATS/1.0 {code} {why}\r\n"),
        None => "NATS/1.0\r\n".to_owned(),
    };
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    Bytes::from(text)
}

/// A JSON answer.
fn answer(reply: &str, body: Value) -> Delivery {
    Delivery {
        subject: reply.to_owned(),
        status: None,
        headers: Bytes::new(),
        payload: Bytes::from(body.to_string()),
        stored: None,
    }
}

/// A status answer (404, 503).
fn status(reply: &str, code: u16, why: &str) -> Delivery {
    Delivery {
        subject: reply.to_owned(),
        status: Some(code),
        headers: block(Some((code, why)), &[]),
        payload: Bytes::new(),
        stored: None,
    }
}

fn error(err_code: u64, code: u64, description: &str) -> Value {
    json!({"error": {"code": code, "err_code": err_code, "description": description}})
}

/// Takes the next whole `PUB`/`HPUB` out of `buf`; `None` if there is none.
pub(super) fn next_publish(buf: &mut BytesMut) -> Option<Publish> {
    let eol = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = String::from_utf8_lossy(&buf[..eol]).into_owned();
    let parts: Vec<&str> = line.split(' ').collect();
    let (subject, reply, header_len, total) = match parts[..] {
        ["PUB", subject, size] => (subject, None, 0, size.parse().ok()?),
        ["PUB", subject, reply, size] => (subject, Some(reply), 0, size.parse().ok()?),
        ["HPUB", subject, reply, h, size] => {
            (subject, Some(reply), h.parse().ok()?, size.parse().ok()?)
        }
        _ => panic!("the simulated server reads only PUB and HPUB: {line}"),
    };
    let total: usize = total;
    let header_len: usize = header_len;
    if buf.len() < eol + 2 + total + 2 {
        return None;
    }
    buf.advance(eol + 2);
    let body = buf.split_to(total).freeze();
    buf.advance(2);
    let headers = String::from_utf8_lossy(&body[..header_len])
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    Some(Publish {
        subject: subject.to_owned(),
        reply: reply.map(str::to_owned),
        headers,
        payload: body.slice(header_len..),
    })
}

impl JetStream {
    /// Whether a publish on `subject` is JetStream's (its API, or a stream's subject)
    /// rather than NATS core's.
    pub(super) fn takes(&self, subject: &str) -> bool {
        subject.starts_with("$JS.") || self.streams.values().any(|s| s.takes(subject))
    }

    /// Carries out one publish; returns what is delivered because of it (the answer, and
    /// a republish).
    pub(super) fn handle(&mut self, publish: Publish) -> Vec<Delivery> {
        let reply = publish.reply.clone().unwrap_or_default();
        let subject = publish.subject.clone();
        if let Some(name) = subject.strip_prefix("$JS.API.STREAM.CREATE.") {
            let config: Value = serde_json::from_slice(&publish.payload).unwrap_or_default();
            let (now, made) = (self.now_ms, &mut self.streams_made);
            let stream = self.streams.entry(name.to_owned()).or_insert_with(|| {
                *made += 1;
                Stream {
                    config,
                    created: format!("stream-{made}-created-at-{now}"),
                    last: 0,
                    messages: BTreeMap::new(),
                    ids: HashMap::new(),
                }
            });
            return vec![answer(
                &reply,
                json!({"config": stream.config, "created": stream.created}),
            )];
        }
        if let Some(name) = subject.strip_prefix("$JS.API.STREAM.INFO.") {
            return vec![match self.streams.get(name) {
                Some(s) => {
                    let state = json!({"messages": s.messages.len(), "last_seq": s.last});
                    answer(
                        &reply,
                        json!({"config": s.config, "created": s.created, "state": state}),
                    )
                }
                None => answer(&reply, error(10059, 404, "stream not found")),
            }];
        }
        if let Some(name) = subject.strip_prefix("$JS.API.STREAM.DELETE.") {
            if self.streams.remove(name).is_none() {
                return vec![answer(&reply, error(10059, 404, "stream not found"))];
            }
            self.consumers.retain(|_, consumer| consumer.stream != name);
            let advisory = json!({
                "type": "io.nats.jetstream.advisory.v1.stream_action",
                "stream": name,
                "action": "delete",
            });
            let advised = format!("$JS.EVENT.ADVISORY.STREAM.DELETED.{name}");
            return vec![
                answer(&reply, json!({"success": true})),
                answer(&advised, advisory),
            ];
        }
        if let Some(name) = subject.strip_prefix("$JS.API.STREAM.PURGE.") {
            let body: Value = serde_json::from_slice(&publish.payload).unwrap_or_default();
            let Some(stream) = self.streams.get_mut(name) else {
                return vec![answer(&reply, error(10059, 404, "stream not found"))];
            };
            let (filter, below) = (body["filter"].as_str().unwrap_or(">"), body["seq"].as_u64());
            // Without a `seq`, everything the filter takes.
            let below = below.unwrap_or(u64::MAX);
            let before = stream.messages.len();
            stream
                .messages
                .retain(|seq, m| *seq >= below || !matches(filter, &m.subject));
            let purged = before - stream.messages.len();
            return vec![answer(&reply, json!({"success": true, "purged": purged}))];
        }
        if let Some(stream) = subject.strip_prefix("$JS.API.CONSUMER.CREATE.") {
            let body: Value = serde_json::from_slice(&publish.payload).unwrap_or_default();
            if !self.streams.contains_key(stream) {
                return vec![answer(&reply, error(10059, 404, "stream not found"))];
            }
            self.consumers_made += 1;
            let name = format!("c{}", self.consumers_made);
            let config = &body["config"];
            let consumer = Consumer {
                stream: stream.to_owned(),
                filter: config["filter_subject"].as_str().unwrap_or(">").to_owned(),
                next: config["opt_start_seq"].as_u64().unwrap_or(1),
            };
            self.consumers.insert(name.clone(), consumer);
            return vec![answer(&reply, json!({"name": name, "config": config}))];
        }
        if let Some(rest) = subject.strip_prefix("$JS.API.CONSUMER.DELETE.") {
            let name = rest.split_once('.').map_or("", |(_, name)| name);
            let found = self.consumers.remove(name).is_some();
            return vec![match found {
                true => answer(&reply, json!({"success": true})),
                false => answer(&reply, error(10014, 404, "consumer not found")),
            }];
        }
        if let Some(rest) = subject.strip_prefix("$JS.API.CONSUMER.MSG.NEXT.") {
            return self.pull(rest, &reply, &publish.payload);
        }
        if let Some(name) = subject.strip_prefix("$JS.API.DIRECT.GET.") {
            let body: Value = serde_json::from_slice(&publish.payload).unwrap_or_default();
            let Some(stream) = self.streams.get(name) else {
                return vec![status(&reply, 503, "No Responders")];
            };
            let found = if let Some(subject) = body["last_by_subj"].as_str() {
                stream.last_of(subject)
            } else {
                let from = body["seq"].as_u64().unwrap_or(0);
                let filter = body["next_by_subj"].as_str();
                stream
                    .messages
                    .range(from..)
                    .find(|(seq, m)| match filter {
                        Some(f) => matches(f, &m.subject),
                        None => **seq == from,
                    })
                    .map(|(seq, _)| *seq)
            };
            let Some(seq) = found else {
                return vec![status(&reply, 404, "Message Not Found")];
            };
            let message = &stream.messages[&seq];
            let mut headers = vec![
                ("Nats-Stream".to_owned(), name.to_owned()),
                ("Nats-Subject".to_owned(), message.subject.clone()),
                ("Nats-Sequence".to_owned(), seq.to_string()),
            ];
            headers.extend(message.headers.iter().cloned());
            return vec![Delivery {
                subject: reply,
                status: None,
                headers: block(None, &headers),
                payload: message.payload.clone(),
                stored: None,
            }];
        }
        let Some(name) = self
            .streams
            .iter()
            .find(|(_, s)| s.takes(&subject))
            .map(|(name, _)| name.clone())
        else {
            return match publish.reply {
                Some(reply) => vec![status(&reply, 503, "No Responders")],
                None => Vec::new(),
            };
        };
        self.store(&name, publish)
    }

    /// A pull of consumer `<stream>.<name>` (`rest`) with `no_wait`: up to `batch`
    /// messages from its next sequence, then 408 if fewer came, or 404 if none.
    fn pull(&mut self, rest: &str, reply: &str, body: &[u8]) -> Vec<Delivery> {
        let name = rest.split_once('.').map_or("", |(_, name)| name);
        let Some(consumer) = self.consumers.get_mut(name) else {
            return Vec::new(); // nats-server 2.9 says nothing to a pull of no consumer
        };
        let body: Value = serde_json::from_slice(body).unwrap_or_default();
        let batch = body["batch"].as_u64().unwrap_or(1) as usize;
        let stream = &self.streams[&consumer.stream];
        let matching: Vec<u64> = (stream.messages.range(consumer.next..))
            .filter(|(_, m)| matches(&consumer.filter, &m.subject))
            .map(|(seq, _)| *seq)
            .collect();
        let mut out = Vec::new();
        for (i, seq) in matching.iter().take(batch).enumerate() {
            let message = &stream.messages[seq];
            let left = matching.len() - i - 1;
            let ack = format!(
                "$JS.ACK.{}.{name}.1.{seq}.{}.0.{left}",
                consumer.stream,
                i + 1
            );
            out.push(Delivery {
                subject: reply.to_owned(),
                status: None,
                headers: Bytes::new(),
                payload: message.payload.clone(),
                stored: Some((message.subject.clone(), ack)),
            });
            consumer.next = seq + 1;
        }
        match out.len() {
            0 => out.push(status(reply, 404, "No Messages")),
            n if n < batch => out.push(status(reply, 408, "Request Timeout")),
            _ => {}
        }
        out
    }

    /// A publish to stream `name`'s subject.
    fn store(&mut self, name: &str, publish: Publish) -> Vec<Delivery> {
        let now = self.now_ms;
        let stream = self.streams.get_mut(name).expect("the stream");
        let reply = publish.reply.clone().unwrap_or_default();
        let find = |n: &str| {
            publish
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let window_ms = stream.config["duplicate_window"]
            .as_u64()
            .unwrap_or(120_000_000_000)
            / 1_000_000;
        stream
            .ids
            .retain(|_, (_, at)| at.saturating_add(window_ms) > now);
        if let Some(id) = find("Nats-Msg-Id") {
            if let Some((seq, _)) = stream.ids.get(&id) {
                let body = json!({"stream": name, "seq": seq, "duplicate": true});
                return vec![answer(&reply, body)];
            }
        }
        let last_of_subject = stream.last_of(&publish.subject);
        if let Some(expected) = find("Nats-Expected-Last-Subject-Sequence") {
            let expected: u64 = expected.parse().expect("a sequence");
            let last = last_of_subject.unwrap_or(0);
            if last != expected {
                let description = format!("wrong last sequence: {last}");
                return vec![answer(&reply, error(10071, 400, &description))];
            }
        }
        let per_subject = stream.config["max_msgs_per_subject"].as_i64().unwrap_or(-1);
        if per_subject > 0 {
            let held: Vec<u64> = stream
                .messages
                .iter()
                .filter(|(_, m)| m.subject == publish.subject)
                .map(|(seq, _)| *seq)
                .collect();
            if held.len() as i64 >= per_subject {
                if stream.config["discard_new_per_subject"].as_bool() == Some(true) {
                    let description = "maximum messages per subject exceeded";
                    return vec![answer(&reply, error(10077, 503, description))];
                }
                stream.messages.remove(&held[0]);
            }
        }
        stream.last += 1;
        let seq = stream.last;
        let stored = Stored {
            subject: publish.subject.clone(),
            headers: publish.headers.clone(),
            payload: publish.payload.clone(),
        };
        stream.messages.insert(seq, stored.clone());
        if let Some(id) = find("Nats-Msg-Id") {
            stream.ids.insert(id, (seq, now));
        }
        let mut out = Vec::new();
        if publish.reply.is_some() {
            out.push(answer(&reply, json!({"stream": name, "seq": seq})));
        }
        let republish = &stream.config["republish"];
        if let (Some(src), Some(dest)) = (republish["src"].as_str(), republish["dest"].as_str()) {
            if matches(src, &publish.subject) {
                // The tokens the source's `>` matched take the destination's `>`.
                let literal = src.split('.').count() - 1;
                let tail: Vec<&str> = publish.subject.split('.').skip(literal).collect();
                let dest = dest.replace('>', &tail.join("."));
                let mut headers = vec![
                    ("Nats-Stream".to_owned(), name.to_owned()),
                    ("Nats-Subject".to_owned(), publish.subject.clone()),
                    ("Nats-Sequence".to_owned(), seq.to_string()),
                    (
                        "Nats-Last-Sequence".to_owned(),
                        last_of_subject.unwrap_or(0).to_string(),
                    ),
                ];
                headers.extend(publish.headers.iter().cloned());
                out.push(Delivery {
                    subject: dest,
                    status: None,
                    headers: block(None, &headers),
                    payload: publish.payload.clone(),
                    stored: None,
                });
            }
        }
        self.ever.insert((name.to_owned(), seq), stored);
        out
    }

    /// The messages stream `name` holds now after sequence `after`, by sequence.
    pub(super) fn stored_after(&self, name: &str, after: u64) -> Vec<(u64, Stored)> {
        self.streams.get(name).map_or_else(Vec::new, |stream| {
            (stream.messages.range(after + 1..))
                .map(|(seq, m)| (*seq, m.clone()))
                .collect()
        })
    }

    /// The messages stream `name` holds now, on `subject`, by sequence.
    pub(super) fn held(&self, name: &str, subject: &str) -> Vec<(u64, Stored)> {
        self.streams.get(name).map_or_else(Vec::new, |stream| {
            stream
                .messages
                .iter()
                .filter(|(_, m)| m.subject == subject)
                .map(|(seq, m)| (*seq, m.clone()))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_match_as_nats_does() {
        assert!(matches("chat.inbox.>", "chat.inbox.bob"));
        assert!(matches("$KV.chat_acks.>", "$KV.chat_acks.bob"));
        assert!(matches("a.*.c", "a.b.c"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(!matches("chat.inbox.>", "chat.inbox"));
    }

    #[test]
    fn publishes_are_read_back_whole() {
        let mut out = BytesMut::new();
        super::super::super::wire::publish(&mut out, b"a.b", Some("_INBOX.x.j1"), b"hi");
        let headers = [("Nats-Msg-Id", "x")];
        super::super::super::wire::publish_with_headers(&mut out, b"c", "r", &headers, b"yo");
        let first = next_publish(&mut out).unwrap();
        assert_eq!(
            (first.subject.as_str(), &first.payload[..]),
            ("a.b", &b"hi"[..])
        );
        let second = next_publish(&mut out).unwrap();
        assert_eq!(
            second.headers,
            vec![("Nats-Msg-Id".to_owned(), "x".to_owned())]
        );
        assert_eq!(&second.payload[..], b"yo");
        assert!(next_publish(&mut out).is_none());
    }
}
