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
        inbound::{ClientMessage, GroupRequest, ProtocolError, Resume},
        now_ms, outbound, Priority,
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
        if let ClientMessage::AuthRefresh { token } = message {
            return self.refresh(at, &user, token);
        }
        let mut message = message;
        if let ClientMessage::Group {
            group_id,
            request: GroupRequest::Join { token_grants },
        } = &mut message
        {
            *token_grants = self
                .conn_mut(at)
                .and_then(|conn| conn.aux.as_ref()?.token_groups.as_ref())
                .is_some_and(|groups| groups.iter().any(|g| **g == **group_id));
        }
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
        let url_token = self
            .conn_mut(at)
            .and_then(|conn| conn.aux.as_mut())
            .and_then(|aux| aux.url_token.take());
        let Some(expires_at) = self.check_token(at, user_id, token.or(url_token.as_deref())) else {
            return;
        };
        let Some(conn) = self.conn_mut(at) else {
            return;
        };
        let user: Arc<str> = Arc::from(user_id);
        conn.phase = Phase::Authenticated;
        self.no_longer_pending(at);
        let Some(conn) = self.conn_mut(at) else {
            return;
        };
        conn.user = Some(user.clone());
        conn.deadline = expires_at;
        conn.flags.set(Flags::ACKS, resume.is_some());
        conn.flags.set(Flags::CATCHING_UP, true);
        let aux = conn.aux_mut();
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

    /// With a token checker (`--jwt-*`): whether `token` is valid for `user_id`, and when
    /// it expires, as [`Conn::deadline`](crate::conn::Conn::deadline) keeps it (Unix
    /// seconds, 0: never); its `groups` claim is kept with the connection. `None` when it
    /// is not: `auth_failed` is sent and the connection closes with 1008. Open mode takes
    /// any.
    fn check_token(&mut self, at: ConnAddr, user_id: &str, token: Option<&str>) -> Option<u32> {
        let Some(verifier) = self.shared.config.jwt.clone() else {
            return Some(0);
        };
        let verdict = match token {
            None => Err("a token is required".to_owned()),
            Some(token) => verifier
                .verify(token, user_id, now_ms() / 1000)
                .map_err(|e| e.to_string()),
        };
        match verdict {
            Ok(grant) => {
                if let Some(conn) = self.conn_mut(at) {
                    let groups = (!grant.groups.is_empty()).then(|| grant.groups.into());
                    if groups.is_some() || conn.aux.is_some() {
                        conn.aux_mut().token_groups = groups;
                        conn.trim_aux();
                    }
                }
                // An `exp` past 2106 does not fit the field: it is as good as never.
                Some(
                    grant
                        .expires_at
                        .map_or(0, |s| u32::try_from(s).unwrap_or(0)),
                )
            }
            Err(reason) => {
                self.send_error(at, ErrorCode::AuthFailed, &reason, None);
                self.begin_close(at, close::POLICY_VIOLATION, "auth failed");
                None
            }
        }
    }

    /// `auth_refresh {token}`: a new token for the session's own user moves its expiry
    /// (`auth_refreshed`); a bad one fails as `auth` does (`auth_failed`, 1008).
    fn refresh(&mut self, at: ConnAddr, user: &str, token: &str) {
        let Some(expires_at) = self.check_token(at, user, Some(token)) else {
            return;
        };
        let Some(conn) = self.conn_mut(at) else {
            return;
        };
        conn.deadline = expires_at;
        let expires_at_ms = (expires_at != 0).then(|| u64::from(expires_at) * 1000);
        outbound::auth_refreshed(&mut self.json, expires_at_ms, now_ms());
        self.send_to(at, self.json.frame(), Priority::High);
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
