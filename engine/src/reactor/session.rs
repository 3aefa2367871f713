//! A connection's input: HTTP requests until the upgrade, then WebSocket frames —
//! reassembly of fragments, control frames, and the close handshake.

use super::core::Reactor;
use crate::conn::{Flags, Inbound, Phase};
use crate::{
    http::{
        health::Health,
        origin,
        request::{self, Request, BODY_BYTES_MAX},
        response,
        routes::{self, Route},
    },
    protocol::{outbound::Outgoing, Priority},
    router::ConnAddr,
    stats,
    ws::{
        close,
        frame::{self, Kind},
        handshake::{self, HandshakeError},
    },
};
use tracing::debug;

/// The largest message a WebSocket takes before `auth` (an `auth` is under 5 KiB: a token
/// of at most 4 KiB and two ids): a connection without a token holds at most twice this
/// (a partial frame and a partial message) until its auth deadline, rather than twice
/// `--max-message-bytes` (issue 22). Larger closes with 1009.
const PRE_AUTH_MESSAGE_BYTES_MAX: usize = 8 << 10;

impl Reactor {
    /// Processes `buffer[..n]` just read for a connection, after any bytes it kept.
    ///
    /// Hot path: whole frames are handled straight from the reactor's read buffer; only
    /// the tail of a partial frame is copied into the connection.
    pub(super) fn process_input(&mut self, at: ConnAddr, buffer: &mut [u8], n: usize) {
        let Some(conn) = self.conn_mut(at) else {
            return;
        };
        let (mut partial, mut fragments) = match conn.inbound.take() {
            Some(inbound) => (inbound.partial, inbound.fragments),
            None => (Vec::new(), None),
        };
        if partial.is_empty() {
            let used = self.consume(at, &mut buffer[..n], &mut fragments);
            partial.extend_from_slice(&buffer[used..n]);
        } else {
            partial.extend_from_slice(&buffer[..n]);
            let used = self.consume(at, &mut partial, &mut fragments);
            partial.drain(..used);
        }
        let Some(conn) = self.conn_mut(at) else {
            return;
        };
        if !partial.is_empty() || fragments.is_some() {
            conn.inbound = Some(Box::new(Inbound { partial, fragments }));
        }
    }

    /// The largest message `phase` takes: before `auth`, [`PRE_AUTH_MESSAGE_BYTES_MAX`].
    fn message_bytes_max(&self, phase: Phase) -> usize {
        let max = self.shared.config.max_message_bytes;
        match phase {
            Phase::Open => max.min(PRE_AUTH_MESSAGE_BYTES_MAX),
            _ => max,
        }
    }

    /// Handles every whole request or frame at the front of `data`; returns bytes used.
    fn consume(&mut self, at: ConnAddr, data: &mut [u8], fragments: &mut Option<Vec<u8>>) -> usize {
        let mut pos = 0;
        loop {
            let Some(conn) = self.conn_mut(at) else {
                return data.len();
            };
            let phase = conn.phase;
            if conn.phase == Phase::Moving {
                return pos; // the rest is read at the connection's home
            }
            if conn.flags.has(Flags::PAUSED) {
                return pos; // at its pace: the rest waits for the next window
            }
            if conn.phase == Phase::Http {
                if conn.flags.has(Flags::CLOSE_WHEN_FLUSHED) {
                    return data.len(); // a final response is on its way; ignore the rest
                }
                if conn.aux.as_ref().is_some_and(|a| a.pending_api.is_some()) {
                    // Answers keep their order: what is pipelined waits for the answer in
                    // flight, up to one whole request's worth; a client that sends more
                    // before reading is cut off rather than buffered without bound.
                    let waiting_max = self.shared.config.handshake_bytes_max + BODY_BYTES_MAX;
                    if data.len() - pos > waiting_max {
                        debug!("closing an HTTP client that pipelined past {waiting_max} bytes");
                        self.close_now(at);
                        return data.len();
                    }
                    return pos;
                }
                match request::parse(&data[pos..], self.shared.config.handshake_bytes_max) {
                    Ok(None) => return pos,
                    Ok(Some((req, head_len))) => {
                        let total = head_len + req.content_length;
                        if data.len() - pos < total {
                            return pos;
                        }
                        let body = &data[pos + head_len..pos + total];
                        self.isolate(Some(at), "an HTTP request", |reactor| {
                            reactor.on_http_request(at, req, body);
                        });
                        pos += total;
                    }
                    Err(e) => {
                        let answer =
                            response::json_error(e.status(), "bad_request", &e.to_string(), false);
                        self.send_final(at, Outgoing::http(answer));
                        return data.len();
                    }
                }
                continue;
            }
            let max = self.message_bytes_max(phase);
            match frame::parse_client_frame(&mut data[pos..], max) {
                Ok(None) => return pos,
                Ok(Some((parsed, used))) => {
                    let payload = &mut data[pos + parsed.payload.start..pos + parsed.payload.end];
                    pos += used;
                    self.on_frame(at, parsed.fin, parsed.kind, payload, fragments);
                }
                Err(e) => {
                    self.begin_close(at, e.close_code(), &e.to_string());
                    return data.len();
                }
            }
        }
    }

    fn on_frame(
        &mut self,
        at: ConnAddr,
        fin: bool,
        kind: Kind,
        payload: &mut [u8],
        fragments: &mut Option<Vec<u8>>,
    ) {
        let Some(conn) = self.conn_mut(at) else {
            return;
        };
        if conn.phase == Phase::Closing {
            // Only the peer's close matters now: it ends the handshake.
            if kind == Kind::Close {
                self.close_now(at);
            }
            return;
        }
        match kind {
            Kind::Ping => {
                let pong = Outgoing::control(frame::encode_pong(payload));
                self.send(at, pong, Priority::High);
            }
            Kind::Pong => {}
            Kind::Close => {
                conn.flags.set(Flags::SAID_GOODBYE, true);
                match frame::parse_close_payload(payload) {
                    Ok(code) => self.begin_close(at, code, ""),
                    Err(code) => self.begin_close(at, code, "invalid close frame"),
                }
            }
            Kind::Binary => self.begin_close(
                at,
                close::UNSUPPORTED_DATA,
                "binary frames are not accepted",
            ),
            Kind::Text if fragments.is_some() => self.begin_close(
                at,
                close::PROTOCOL_ERROR,
                "new message inside a fragmented one",
            ),
            Kind::Text if fin => self.on_text(at, payload),
            Kind::Text => *fragments = Some(payload.to_vec()),
            Kind::Continuation => {
                let Some(message) = fragments.as_mut() else {
                    return self.begin_close(
                        at,
                        close::PROTOCOL_ERROR,
                        "continuation without a message",
                    );
                };
                let phase = self.conn_mut(at).map_or(Phase::Closing, |c| c.phase);
                if message.len() + payload.len() > self.message_bytes_max(phase) {
                    *fragments = None;
                    return self.begin_close(at, close::MESSAGE_TOO_BIG, "message too big");
                }
                message.extend_from_slice(payload);
                if fin {
                    if let Some(mut message) = fragments.take() {
                        self.on_text(at, &mut message);
                    }
                }
            }
        }
    }

    /// A whole text message: UTF-8 check, JSON parse in place, then the protocol.
    fn on_text(&mut self, at: ConnAddr, payload: &mut [u8]) {
        if let Err(code) = frame::check_text(payload) {
            return self.begin_close(at, code, "text is not valid UTF-8");
        }
        if !self.within_rate(at) {
            return;
        }
        stats::ReactorStats::bump(&self.stats().messages_processed);
        self.isolate(Some(at), "a client message", |reactor| {
            let message = reactor.parser.parse(payload);
            reactor.on_message(at, message);
        });
    }

    fn on_http_request(&mut self, at: ConnAddr, req: Request, body: &[u8]) {
        if req.path == "/ws" {
            return self.upgrade(at, &req);
        }
        stats::ReactorStats::bump(&self.stats().http_requests);
        let context = routes::Context {
            health: self.health(),
            reactors: &self.shared.stats,
            api_token: self.shared.config.api_token.as_deref(),
            allowed_origins: self.shared.config.allowed_origins.as_ref(),
            allow_open: self.shared.config.allow_open,
            store: &self.store.stats,
            cluster: self.shared.cluster.as_deref(),
            events: self.shared.events.as_ref().map(|e| e.stats()),
        };
        match routes::route(&req, body, &context) {
            Route::Answer(answer) => self.answer_http(at, answer, req.keep_alive()),
            Route::Send(send) => self.api_send(at, req.keep_alive(), send),
            Route::Broadcast(broadcast) => self.api_broadcast(at, req.keep_alive(), broadcast),
            Route::Queue { user, drain } => self.api_queue(at, req.keep_alive(), user, drain),
            Route::Admin(call) => self.api_admin(at, req.keep_alive(), call),
            Route::ClusterStats => self.api_cluster_stats(at, req.keep_alive()),
        }
    }

    /// Writes an HTTP response; a kept-alive connection then waits for its next request
    /// (bounded by the handshake deadline), any other closes once it is written.
    pub(super) fn answer_http(&mut self, at: ConnAddr, answer: bytes::Bytes, keep_alive: bool) {
        let answer = Outgoing::http(answer);
        if keep_alive {
            self.send(at, answer, Priority::Normal);
            let idle_ms = self.shared.config.handshake_timeout_ms;
            self.set_deadline(at, idle_ms);
        } else {
            self.send_final(at, answer);
        }
    }

    fn upgrade(&mut self, at: ConnAddr, req: &Request) {
        if !routes::origin_permitted(req, self.shared.config.allowed_origins.as_ref()) {
            stats::ReactorStats::bump(&self.stats().handshake_failures);
            let text = "this origin is not in --allowed-origins";
            let answer = response::json_error(403, "forbidden_origin", text, false);
            return self.send_final(at, Outgoing::http(answer));
        }
        let config = &self.shared.config;
        let open = config.jwt.is_none() && !config.allow_open;
        if open && !origin::names_this_host(req.header("host")) {
            stats::ReactorStats::bump(&self.stats().handshake_failures);
            let text = "open mode answers only upgrades to this host's address or localhost \
                        (or any, with --allow-open)";
            let answer = response::json_error(403, "forbidden_host", text, false);
            return self.send_final(at, Outgoing::http(answer));
        }
        if let Some(why) = self.over_capacity() {
            stats::ReactorStats::bump(&self.stats().handshake_failures);
            let answer = response::json_error(503, "over_capacity", why, false);
            return self.send_final(at, Outgoing::http(answer));
        }
        match handshake::accept(req) {
            Ok(answer) => {
                let Some(conn) = self.conn_mut(at) else {
                    return;
                };
                conn.phase = Phase::Open;
                stats::ReactorStats::bump(&self.shared.stats[self.id].handshakes);
                self.set_deadline(at, self.shared.config.auth_timeout_ms);
                let Some(conn) = self.conn_mut(at) else {
                    return;
                };
                if let Some(token) = req.query_param("token") {
                    conn.aux_mut().url_token = Some(token.into());
                }
                self.send(at, Outgoing::http(answer), Priority::High);
            }
            Err(e) => {
                stats::ReactorStats::bump(&self.stats().handshake_failures);
                let version_header: &[&str] = if e == HandshakeError::BadVersion {
                    &["Sec-WebSocket-Version: 13"]
                } else {
                    &[]
                };
                let body = format!(r#"{{"error":"bad_upgrade","message":"{e}"}}"#);
                let answer = response::write(
                    e.status(),
                    "application/json",
                    body.as_bytes(),
                    false,
                    version_header,
                );
                self.send_final(at, Outgoing::http(answer));
            }
        }
    }

    /// Why a new WebSocket is refused, when a connection cap is reached (this connection,
    /// already accepted, counts).
    fn over_capacity(&self) -> Option<&'static str> {
        let config = &self.shared.config;
        let here = stats::load_gauge(&self.stats().connections).max(0) as u64;
        if config.max_connections_per_reactor > 0 && here > config.max_connections_per_reactor {
            return Some("this gateway's reactor is at --max-connections-per-reactor: try again");
        }
        if config.max_connections > 0 {
            let all = stats::total(&self.shared.stats, |s| &s.connections).max(0) as u64;
            if all > config.max_connections {
                return Some("the gateway is at --max-connections: try again later");
            }
        }
        None
    }

    /// The live figures for `/health`, summed over every reactor.
    pub(super) fn health(&self) -> Health {
        self.shared.health()
    }
}
