//! A simulated nats-server core, for [`super::SimCluster`] and the simulators on it: client
//! connections that subscribe, unsubscribe and publish, read by the server one operation
//! at a time, and messages routed to every matching subscription of the other
//! connections (the relay connects with `echo` off), each connection's in the order the
//! server routed them, as one nats-server does. A request that reaches no subscription
//! gets "no responders" (503). What JetStream takes goes to the simulated [`JetStream`].
//!
//! A connection closed (cut off, or its process killed) loses what it had not had read
//! and what was routed to it and not yet delivered, and its subscriptions go.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};

use super::jetstream::{self, next_publish, Delivery, JetStream, Publish};

/// One client connection, as the server sees it.
#[derive(Default)]
struct Conn {
    open: bool,
    /// What the client wrote and the server has not read yet.
    unread: BytesMut,
    /// Its subscriptions: `(sid, subject pattern)`, in the order they were made.
    subs: Vec<(u64, String)>,
    /// What the server routed to it and has not delivered yet, one operation each.
    routed: VecDeque<Bytes>,
}

/// One client operation the server reads.
enum ClientOp {
    Sub {
        subject: String,
        sid: u64,
    },
    Unsub {
        sid: u64,
    },
    Ping,
    Publish(Publish),
    /// `CONNECT`, `PONG`: nothing to do.
    Other,
}

/// The server: its connections (numbered from 0 as they open) and JetStream.
#[derive(Default)]
pub(super) struct Nats {
    conns: Vec<Conn>,
    pub jetstream: JetStream,
}

impl Nats {
    /// Opens a connection; its number.
    pub(super) fn connect(&mut self) -> usize {
        self.conns.push(Conn {
            open: true,
            ..Conn::default()
        });
        self.conns.len() - 1
    }

    /// Closes connection `conn`: what it wrote unread and what waits for it are lost.
    pub(super) fn close(&mut self, conn: usize) {
        self.conns[conn] = Conn::default();
    }

    /// What the client of `conn` writes.
    pub(super) fn write(&mut self, conn: usize, bytes: &[u8]) {
        if self.conns[conn].open {
            self.conns[conn].unread.extend_from_slice(bytes);
        }
    }

    /// The open connections with something written and not read yet.
    pub(super) fn with_unread(&self) -> Vec<usize> {
        (0..self.conns.len())
            .filter(|&c| self.conns[c].open && !self.conns[c].unread.is_empty())
            .collect()
    }

    /// The open connections with something routed to them and not delivered yet.
    pub(super) fn with_routed(&self) -> Vec<usize> {
        (0..self.conns.len())
            .filter(|&c| self.conns[c].open && !self.conns[c].routed.is_empty())
            .collect()
    }

    /// Reads connection `conn`'s next operation and carries it out.
    pub(super) fn read_one(&mut self, conn: usize) {
        let Some(op) = next_client_op(&mut self.conns[conn].unread) else {
            return;
        };
        match op {
            ClientOp::Sub { subject, sid } => self.conns[conn].subs.push((sid, subject)),
            ClientOp::Unsub { sid } => self.conns[conn].subs.retain(|(s, _)| *s != sid),
            ClientOp::Ping => self.conns[conn].routed.push_back(Bytes::from("PONG\r\n")),
            ClientOp::Publish(publish) if self.jetstream.takes(&publish.subject) => {
                for delivery in self.jetstream.handle(publish) {
                    self.route_from_server(delivery);
                }
            }
            ClientOp::Publish(publish) => self.route(conn, publish),
            ClientOp::Other => {}
        }
    }

    /// Takes up to `count` operations routed to `conn`, as the bytes the client reads.
    pub(super) fn deliver(&mut self, conn: usize, count: usize) -> BytesMut {
        let routed = &mut self.conns[conn].routed;
        let mut bytes = BytesMut::new();
        for op in routed.drain(..count.min(routed.len())) {
            bytes.extend_from_slice(&op);
        }
        bytes
    }

    /// A client's publish: to every matching subscription of the other connections,
    /// or "no responders" to its reply subject if it reached none.
    fn route(&mut self, from: usize, publish: Publish) {
        let mut reached = 0;
        for c in (0..self.conns.len()).filter(|&c| c != from) {
            reached += self.message_to(
                c,
                (&publish.subject, &publish.subject),
                publish.reply.as_deref(),
                &[],
                &publish.payload,
            );
        }
        if let (0, Some(reply)) = (reached, &publish.reply) {
            self.route_from_server(Delivery {
                subject: reply.clone(),
                status: Some(503),
                headers: Bytes::from_static(b"NATS/1.0 503\r\n\r\n"),
                payload: Bytes::new(),
                stored: None,
            });
        }
    }

    /// What the server itself sends (JetStream's answers, republishes and consumers'
    /// deliveries, "no responders"): to every matching subscription.
    fn route_from_server(&mut self, delivery: Delivery) {
        let (named, reply) = match &delivery.stored {
            Some((subject, ack)) => (subject.as_str(), Some(ack.as_str())),
            None => (delivery.subject.as_str(), None),
        };
        for c in 0..self.conns.len() {
            self.message_to(
                c,
                (&delivery.subject, named),
                reply,
                &delivery.headers,
                &delivery.payload,
            );
        }
    }

    /// `MSG`/`HMSG` to each of `conn`'s subscriptions matching `routed_by`, naming
    /// `subject` (another for a consumer's delivery); how many.
    fn message_to(
        &mut self,
        conn: usize,
        (routed_by, subject): (&str, &str),
        reply: Option<&str>,
        headers: &[u8],
        payload: &[u8],
    ) -> usize {
        let target = &mut self.conns[conn];
        if !target.open {
            return 0;
        }
        let sids: Vec<u64> = target
            .subs
            .iter()
            .filter(|(_, pattern)| jetstream::matches(pattern, routed_by))
            .map(|(sid, _)| *sid)
            .collect();
        for sid in &sids {
            let reply = reply.map(|r| format!(" {r}")).unwrap_or_default();
            let mut op = BytesMut::new();
            let line = match headers.len() {
                0 => format!("MSG {subject} {sid}{reply} {}\r\n", payload.len()),
                h => format!("HMSG {subject} {sid}{reply} {h} {}\r\n", h + payload.len()),
            };
            op.put_slice(line.as_bytes());
            op.put_slice(headers);
            op.put_slice(payload);
            op.put_slice(b"\r\n");
            target.routed.push_back(op.freeze());
        }
        sids.len()
    }
}

/// The next whole operation a client wrote, if all of it is in `buf`.
fn next_client_op(buf: &mut BytesMut) -> Option<ClientOp> {
    let eol = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = String::from_utf8_lossy(&buf[..eol]).into_owned();
    let mut fields = line.split(' ');
    let op = match fields.next()? {
        "PUB" | "HPUB" => return next_publish(buf).map(ClientOp::Publish),
        "SUB" => {
            let (subject, sid) = (fields.next()?, fields.next_back()?);
            ClientOp::Sub {
                subject: subject.to_owned(),
                sid: sid.parse().ok()?,
            }
        }
        "UNSUB" => ClientOp::Unsub {
            sid: fields.next()?.parse().ok()?,
        },
        "PING" => ClientOp::Ping,
        _ => ClientOp::Other,
    };
    let _ = buf.split_to(eol + 2);
    Some(op)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publish_reaches_the_other_connections_subscriptions_and_a_lonely_request_hears_503() {
        let mut core = Nats::default();
        let (a, b) = (core.connect(), core.connect());
        core.write(a, b"SUB chat.live.ann 7\r\nSUB _INBOX.a.* 1\r\n");
        core.write(
            b,
            b"SUB chat.live.ann 9\r\nPUB chat.live.ann _INBOX.b.1 2\r\nhi\r\n",
        );
        while let Some(&c) = core.with_unread().first() {
            core.read_one(c);
        }
        let to_a = core.deliver(a, 10);
        assert_eq!(&to_a[..], b"MSG chat.live.ann 7 _INBOX.b.1 2\r\nhi\r\n");
        assert!(
            core.deliver(b, 10).is_empty(),
            "never back to its publisher"
        );
        core.write(a, b"PUB chat.live.bob _INBOX.a.2 0\r\n\r\n");
        core.read_one(a);
        let lonely = core.deliver(a, 10);
        assert_eq!(
            &lonely[..],
            b"HMSG _INBOX.a.2 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n"
        );
        core.close(a);
        core.write(b, b"PUB chat.live.ann 1\r\nx\r\n");
        core.read_one(b);
        assert!(
            core.with_routed().is_empty(),
            "a closed connection gets nothing"
        );
    }
}
