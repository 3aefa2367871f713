//! The driver's side of a client message: it is counted, a parse error is answered,
//! `auth` is checked here (the token, then the connection becomes its user's), and every
//! other message of an authenticated connection goes to the [`Shard`](crate::shard::Shard).

use std::sync::Arc;

use super::core::Reactor;
use crate::conn::{CatchUp, Flags, Phase};
use crate::{
    failpoint::Failpoint,
    protocol::{
        codes::{ErrorCode, MessageKind},
        inbound::{ClientMessage, ProtocolError, Resume},
        jwt, now_ms, outbound, Priority,
    },
    router::ConnAddr,
    shard::Event,
    ws::close,
};

impl Reactor {
    /// Acts on one parsed client message (or answers its parse error).
    pub(super) fn on_message(
        &mut self,
        at: ConnAddr,
        message: Result<ClientMessage<'_>, ProtocolError>,
    ) {
        let kind = message.as_ref().map_or(MessageKind::Invalid, |m| m.kind());
        self.stats().count_message(kind);
        let Some(conn) = self.conn_mut(at) else {
            return;
        };
        let (phase, user) = (conn.phase, conn.user.clone());
        let message = match message {
            Ok(message) => message,
            Err(e) => {
                let reference = e.reference.as_deref();
                self.send_error(at, e.code, &e.message, reference);
                if e.code == ErrorCode::AuthFailed {
                    self.begin_close(at, close::POLICY_VIOLATION, "auth failed");
                }
                return;
            }
        };
        if phase == Phase::Open {
            return match message {
                ClientMessage::Auth {
                    user_id,
                    device_id,
                    token,
                    resume,
                } => self.auth(at, (user_id, device_id), token, resume),
                _ => {
                    let text = "send auth first";
                    self.send_error(at, ErrorCode::NotAuthenticated, text, None)
                }
            };
        }
        let Some(user) = user else {
            return;
        };
        self.trip_failpoint(&user);
        let conn = at;
        self.feed_shard(Event::Message {
            conn,
            user: &user,
            message,
        });
    }

    /// The failpoints that act on a user's message (`ENGINE_FAILPOINT`, tests only).
    fn trip_failpoint(&mut self, user: &str) {
        let Some(failpoint) = &self.shared.config.failpoint else {
            return;
        };
        match failpoint {
            Failpoint::PanicOnMessageFrom(who) if **who == *user => {
                panic!("failpoint: a message from {user}")
            }
            Failpoint::KillReactorOnMessageFrom(who) if **who == *user => {
                self.failpoint_kill = true;
            }
            Failpoint::StallReactorOnMessageFrom(who) if **who == *user => {
                std::thread::sleep(crate::failpoint::STALL);
            }
            _ => {}
        }
    }

    /// `auth`: with `--jwt-secret` the token (in the message, or `?token=` on the
    /// upgrade) must be valid for the user, else `auth_failed` and 1008. Then the
    /// connection is the user's and the shard registers the device with its home. A
    /// device that sends `resume` acknowledges its inbox events itself.
    fn auth(
        &mut self,
        at: ConnAddr,
        (user_id, device_id): (&str, &str),
        token: Option<&str>,
        resume: Option<Resume<'_>>,
    ) {
        if let Some(secret) = self.shared.config.jwt_secret.clone() {
            let Some(conn) = self.conn_mut(at) else {
                return;
            };
            let url_token = conn.aux.as_ref().and_then(|a| a.url_token.clone());
            let verdict = match token.or(url_token.as_deref()) {
                None => Err("a token is required".to_owned()),
                Some(token) => {
                    jwt::verify(token, &secret, user_id, now_ms() / 1000).map_err(|e| e.to_string())
                }
            };
            if let Err(reason) = verdict {
                self.send_error(at, ErrorCode::AuthFailed, &reason, None);
                return self.begin_close(at, close::POLICY_VIOLATION, "auth failed");
            }
        }
        let Some(conn) = self.conn_mut(at) else {
            return;
        };
        let user: Arc<str> = Arc::from(user_id);
        conn.phase = Phase::Authenticated;
        conn.user = Some(user.clone());
        conn.deadline_tick = 0;
        conn.flags.set(Flags::ACKS, resume.is_some());
        conn.flags.set(Flags::CATCHING_UP, true);
        let aux = conn.aux_mut();
        aux.url_token = None;
        aux.catch_up = Some(Box::new(CatchUp {
            device_id: device_id.into(),
            resume: resume.map(|r| (r.epoch.into(), r.seq)),
            ..CatchUp::default()
        }));
        if let Some(home) = self.moves_home(&user) {
            if let Some(conn) = self.conn_mut(at) {
                conn.phase = Phase::Moving;
            }
            self.moving.push((at, home));
            return;
        }
        let conn = at;
        self.feed_shard(Event::Authenticated {
            conn,
            user,
            device: device_id,
            acks: resume.is_some(),
        });
    }

    /// Sends `error {code, message, ref}` to a local connection; it stays open.
    pub(super) fn send_error(
        &mut self,
        at: ConnAddr,
        code: ErrorCode,
        message: &str,
        reference: Option<&str>,
    ) {
        let addr = at;
        self.error_to(addr, code, message, reference);
    }

    /// Sends `error {code, message, ref}` to a connection on any reactor.
    pub(super) fn error_to(
        &mut self,
        addr: ConnAddr,
        code: ErrorCode,
        text: &str,
        reference: Option<&str>,
    ) {
        self.stats().count_error(code);
        outbound::error(&mut self.json, code, text, reference);
        self.send_to(addr, self.json.frame(), Priority::High);
    }
}
