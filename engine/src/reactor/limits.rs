//! Per-connection limits that cost no memory per idle connection beyond two bytes of its
//! slab entry: the message rate (a one-byte count per one-second window, reset for the
//! connections that counted), the idle timeout (an activity bit set on every read and a
//! sweep over the slab driven by the reactor's timer ticks: a wheel entry per connection
//! would cost 24 bytes each, a tenth of the idle budget), and the session's token expiry
//! (a second sweep, over the expiry kept in the connection's deadline field).

use super::core::Reactor;
use crate::conn::{Conn, Flags, Phase};
use crate::protocol::{codes::ErrorCode, outbound::Outgoing};
use crate::{
    router::ConnAddr,
    stats,
    timer::TICK_MS,
    ws::{close, frame},
};

/// Timer ticks per rate window (one second).
const RATE_WINDOW_TICKS: u64 = 1000 / TICK_MS;
/// Timer ticks in which the session sweep sees every connection: a session outlives its
/// token by at most this (5 s), and a million connections cost 200,000 slot looks a
/// second.
const SESSION_SWEEP_TICKS: u64 = 5000 / TICK_MS;

impl Reactor {
    /// Counts one client message against the connection's rate; false when it is over
    /// `--rate-limit` and dropped. The first one over gets `error rate_limited`; at twice
    /// the limit in one window the connection is closed with 1008. At `--message-pace`
    /// the connection's input pauses (after this message) until the next window.
    pub(super) fn within_rate(&mut self, at: ConnAddr) -> bool {
        let (limit, pace) = (
            self.shared.config.rate_limit,
            self.shared.config.message_pace,
        );
        if limit == 0 && pace == 0 {
            return true;
        }
        let Some(conn) = self.conn_mut(at) else {
            return false;
        };
        if conn.rate_count == 0 {
            self.rate_counted.push(at);
        }
        let Some(conn) = self.conn_mut(at) else {
            return false;
        };
        conn.rate_count = conn.rate_count.saturating_add(1);
        let count = conn.rate_count;
        if pace != 0 && count == pace {
            conn.flags.set(Flags::PAUSED, true);
            self.paced.push(at);
            stats::ReactorStats::bump(&self.stats().pace_pauses);
        }
        if limit == 0 || count <= limit {
            return true;
        }
        if u16::from(count) >= 2 * u16::from(limit) {
            self.begin_close(at, close::POLICY_VIOLATION, "rate limit");
        } else if count == limit + 1 {
            let text = format!(
                "at most {limit} messages a second per connection: messages past it are dropped, \
                 twice as many close the connection"
            );
            self.send_error(at, ErrorCode::RateLimited, &text, None);
        }
        false
    }

    /// Every tick: a new rate window each second, and the next stretch of the idle sweep.
    pub(super) fn limits_tick(&mut self) {
        let tick = self.timers.now_tick();
        if tick.is_multiple_of(RATE_WINDOW_TICKS) {
            for at in std::mem::take(&mut self.rate_counted) {
                if let Some(conn) = self.conn_mut(at) {
                    conn.rate_count = 0;
                }
            }
            self.resume_paced();
        }
        let idle_ms = self.shared.config.idle_timeout_ms;
        if idle_ms > 0 {
            self.sweep_idle((idle_ms / 2).div_ceil(TICK_MS).max(1));
        }
        if self.shared.config.jwt.is_some() {
            self.sweep_sessions();
        }
    }

    /// A new window: connections paused at `--message-pace` take up what they left
    /// unread, in their buffer first, then from their sockets.
    fn resume_paced(&mut self) {
        for at in std::mem::take(&mut self.paced) {
            let Some(conn) = self.conn_mut(at) else {
                continue;
            };
            conn.flags.set(Flags::PAUSED, false);
            self.process_input(at, &mut [], 0);
            self.read_from(at, false);
        }
    }

    /// The authenticated connection in `slot`, if any.
    fn authenticated_at(&mut self, slot: usize) -> Option<(ConnAddr, &mut Conn)> {
        let reactor = self.id as u16;
        let conn = self.conns.get_mut(slot)?;
        let at = ConnAddr {
            reactor,
            generation: conn.generation,
            slot: slot as u32,
        };
        (conn.phase == Phase::Authenticated).then_some((at, conn))
    }

    /// Closes with 4005 the sessions in this tick's share whose token has expired (an
    /// `auth_refresh` moves the expiry).
    fn sweep_sessions(&mut self) {
        let capacity = self.conns.capacity();
        let (start, share) = self.session_sweep.next_share(capacity, SESSION_SWEEP_TICKS);
        if share == 0 {
            return;
        }
        let now_s = crate::protocol::now_ms() / 1000;
        for slot in (start..start + share).map(|i| i % capacity) {
            let Some((at, conn)) = self.authenticated_at(slot) else {
                continue;
            };
            if conn.deadline != 0 && u64::from(conn.deadline) <= now_s {
                stats::ReactorStats::bump(&self.stats().sessions_expired);
                self.begin_close(at, close::TOKEN_EXPIRED, "token expired");
            }
        }
    }

    /// Looks at the next share of the slab, so that every slot is seen once every
    /// `period_ticks` (half the idle timeout). An authenticated connection with no input
    /// since the last look gets a ping; one still silent at the next look is closed (1001).
    fn sweep_idle(&mut self, period_ticks: u64) {
        let capacity = self.conns.capacity();
        let (start, share) = self.idle_sweep.next_share(capacity, period_ticks);
        for slot in (start..start + share).map(|i| i % capacity) {
            let Some((at, conn)) = self.authenticated_at(slot) else {
                continue;
            };
            if conn.flags.has(Flags::ACTIVE) {
                conn.flags.set(Flags::ACTIVE, false);
                conn.flags.set(Flags::PINGED, false);
            } else if !conn.flags.has(Flags::PINGED) {
                conn.flags.set(Flags::PINGED, true);
                let ping = Outgoing::control(frame::encode(frame::PING, b"idle?"));
                self.send(at, ping, crate::protocol::Priority::High);
            } else {
                self.begin_close(at, close::GOING_AWAY, "idle timeout");
            }
        }
    }
}
