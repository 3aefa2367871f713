//! Requests to JetStream on the relay's connection, and what waits on each answer: the
//! bookkeeping [`super::inboxes`] and [`super::history`] share. A request's answer comes
//! to `<inbox><letter><number>`; one not answered within [`REQUEST_WAIT`] is late.

use std::time::Duration;

use bytes::BytesMut;
use hashbrown::HashMap;
use serde_json::Value;
use tokio::time::Instant;

use super::wire;

/// A request JetStream has not answered in this long failed.
pub(super) const REQUEST_WAIT: Duration = Duration::from_secs(5);
/// JetStream's error code for a compare-and-set that found another sequence.
pub(super) const WRONG_LAST_SEQUENCE: u64 = 10071;
/// JetStream's error code for a stream that exists with another configuration.
pub(super) const STREAM_DIFFERS: u64 = 10058;
/// JetStream's error code for a stream that is not there (never made, or deleted).
pub(super) const STREAM_NOT_FOUND: u64 = 10059;
/// JetStream's error code for a stream whose subjects another stream takes already.
pub(super) const SUBJECTS_OVERLAP: u64 = 10065;

/// Requests under way, each with what its answer goes on to (`P`).
pub(super) struct Requests<P> {
    /// `<inbox><letter>`: the answers' subject, before the request's number.
    reply_prefix: String,
    /// The last number given out.
    last: u64,
    pending: HashMap<u64, (P, Instant)>,
}

impl<P> Requests<P> {
    /// Requests whose answers come to `<inbox><letter><number>`.
    pub(super) fn new(inbox: &str, letter: char) -> Requests<P> {
        Requests {
            reply_prefix: format!("{inbox}{letter}"),
            last: 0,
            pending: HashMap::new(),
        }
    }

    /// Sends a request (a publish with `headers`, if any) to `subject`; `pending` waits
    /// for its answer, at most [`REQUEST_WAIT`].
    pub(super) fn send(
        &mut self,
        out: &mut BytesMut,
        to: (&str, &[(&str, &str)]),
        body: &[u8],
        pending: P,
    ) {
        self.send_within(out, to, body, pending, REQUEST_WAIT);
    }

    /// Like [`Requests::send`], waiting at most `wait`; returns the request's number.
    pub(super) fn send_within(
        &mut self,
        out: &mut BytesMut,
        (subject, headers): (&str, &[(&str, &str)]),
        body: &[u8],
        pending: P,
        wait: Duration,
    ) -> u64 {
        let id = self.take_number();
        let reply = format!("{}{id}", self.reply_prefix);
        if headers.is_empty() {
            wire::publish(out, subject.as_bytes(), Some(&reply), body);
        } else {
            wire::publish_with_headers(out, subject.as_bytes(), &reply, headers, body);
        }
        self.pending.insert(id, (pending, Instant::now() + wait));
        id
    }

    /// A number from the requests' sequence (so that what waits on it is ordered with
    /// them).
    pub(super) fn take_number(&mut self) -> u64 {
        self.last += 1;
        self.last
    }

    /// The last number given out.
    pub(super) fn last_number(&self) -> u64 {
        self.last
    }

    /// What waited on the answer to request `number` (its reply subject's tail), if it
    /// still waits.
    pub(super) fn answered(&mut self, number: &[u8]) -> Option<P> {
        let number = std::str::from_utf8(number).ok()?.parse::<u64>().ok()?;
        self.pending.remove(&number).map(|(pending, _)| pending)
    }

    /// What waited on the requests not answered by `now`, in the order they were sent.
    pub(super) fn late(&mut self, now: Instant) -> Vec<P> {
        let late = self.pending.extract_if(|_, (_, until)| *until <= now);
        in_order(late.collect())
    }

    /// What waited on every request (the connection dropped), in the order they were
    /// sent.
    pub(super) fn drain(&mut self) -> Vec<P> {
        in_order(self.pending.drain().collect())
    }

    /// Requests under way.
    pub(super) fn len(&self) -> usize {
        self.pending.len()
    }

    /// The requests under way, by number.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, &P)> {
        self.pending.iter().map(|(id, (pending, _))| (*id, pending))
    }
}

/// Requests taken out of the map, sorted by number: failures are then said in the order
/// the requests went (the map's own order is random per process, which would also keep
/// the cluster simulator from replaying a seed).
fn in_order<P>(mut taken: Vec<(u64, (P, Instant))>) -> Vec<P> {
    taken.sort_unstable_by_key(|(id, _)| *id);
    taken.into_iter().map(|(_, (pending, _))| pending).collect()
}

/// The direct-get subject of `stream`.
pub(super) fn direct_get(stream: &str) -> String {
    format!("$JS.API.DIRECT.GET.{stream}")
}

/// The error of a JetStream answer (a status, or an API error in its JSON), if it is one.
pub(super) fn api_error(status: Option<u16>, answer: &Value) -> Option<String> {
    if let Some(status) = status {
        return Some(format!("status {status}"));
    }
    let error = answer.get("error")?;
    Some(
        error["description"]
            .as_str()
            .unwrap_or("an error")
            .to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_answered_once_by_its_number_or_is_late() {
        let mut requests: Requests<&str> = Requests::new("_INBOX.x.", 'j');
        let mut out = BytesMut::new();
        requests.send(&mut out, ("a.b", &[]), b"{}", "first");
        requests.send(&mut out, ("c", &[("H", "v")]), b"", "second");
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("PUB a.b _INBOX.x.j1 2\r\n{}\r\nHPUB c _INBOX.x.j2"),
            "{text}"
        );
        assert_eq!(requests.answered(b"1"), Some("first"));
        assert_eq!(requests.answered(b"1"), None, "once");
        assert_eq!(requests.answered(b"x"), None);
        assert_eq!(requests.late(Instant::now()), Vec::<&str>::new());
        assert_eq!(requests.late(Instant::now() + REQUEST_WAIT), vec!["second"]);
        assert_eq!((requests.len(), requests.last_number()), (0, 2));
        let error = serde_json::json!({"error": {"description": "no"}});
        assert_eq!(api_error(None, &error).as_deref(), Some("no"));
        assert_eq!(
            api_error(Some(503), &Value::Null).as_deref(),
            Some("status 503")
        );
        assert_eq!(api_error(None, &serde_json::json!({"seq": 1})), None);
    }

    #[test]
    fn late_and_dropped_requests_fail_in_the_order_they_were_sent() {
        let mut requests: Requests<u64> = Requests::new("_INBOX.x.", 'j');
        let mut out = BytesMut::new();
        for n in 1..=200 {
            requests.send(&mut out, ("a", &[]), b"", n);
        }
        let late = requests.late(Instant::now() + REQUEST_WAIT);
        assert_eq!(late, (1..=200).collect::<Vec<_>>());
        for n in 201..=400 {
            requests.send(&mut out, ("a", &[]), b"", n);
        }
        assert_eq!(requests.drain(), (201..=400).collect::<Vec<_>>());
    }
}
