//! Close codes this gateway sends (RFC 6455 §7.4 and PROTOCOL.md's 4xxx range), and the
//! check on codes a peer sends.

use tungstenite::protocol::frame::coding::CloseCode;

/// 1000: the purpose of the connection is fulfilled.
pub const NORMAL: u16 = 1000;
/// 1001: the server is shutting down.
pub const GOING_AWAY: u16 = 1001;
/// 1002: the peer broke the WebSocket protocol.
pub const PROTOCOL_ERROR: u16 = 1002;
/// 1003: the peer sent a data type we do not accept (binary frames).
pub const UNSUPPORTED_DATA: u16 = 1003;
/// 1007: a text message was not valid UTF-8.
pub const INVALID_PAYLOAD: u16 = 1007;
/// 1008: a policy was violated (failed auth, rate limit).
pub const POLICY_VIOLATION: u16 = 1008;
/// 1009: a frame or message was over `max_message_bytes`.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// 1011: the server met an unexpected condition.
pub const INTERNAL_ERROR: u16 = 1011;
/// 4001: no `auth` arrived within the auth timeout.
pub const AUTH_TIMEOUT: u16 = 4001;
/// 4002: the client does not read; its outbound queue went over its bound.
pub const SLOW_CONSUMER: u16 = 4002;
/// 4003: the same `(userId, deviceId)` connected again; this older connection is replaced.
pub const REPLACED: u16 = 4003;
/// 4005: the session's token expired and no `auth_refresh` extended it.
pub const TOKEN_EXPIRED: u16 = 4005;

/// 1006: never sent in a frame; names a connection that ended without a closing
/// handshake (a reset, a timeout), where a close code is reported.
pub const ABNORMAL: u16 = 1006;

/// Every code above that a close frame carries, in order: what the gateway counts its
/// closes by.
pub const SENT: [u16; 12] = [
    NORMAL,
    GOING_AWAY,
    PROTOCOL_ERROR,
    UNSUPPORTED_DATA,
    INVALID_PAYLOAD,
    POLICY_VIOLATION,
    MESSAGE_TOO_BIG,
    INTERNAL_ERROR,
    AUTH_TIMEOUT,
    SLOW_CONSUMER,
    REPLACED,
    TOKEN_EXPIRED,
];

/// [`SENT`] as text, in the same order: the `code` label of the closes' metric.
pub const SENT_LABELS: [&str; SENT.len()] = [
    "1000", "1001", "1002", "1003", "1007", "1008", "1009", "1011", "4001", "4002", "4003", "4005",
];

/// Where `code` sits in [`SENT`] (`None` for a code the gateway does not send).
pub fn sent_index(code: u16) -> Option<usize> {
    SENT.iter().position(|&sent| sent == code)
}

/// Whether a peer may send `code` in a close frame (RFC 6455 §7.4.1, and 3000–4999).
pub fn peer_code_is_valid(code: u16) -> bool {
    CloseCode::from(code).is_allowed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_sent_has_its_label_and_index() {
        for (i, code) in SENT.iter().enumerate() {
            assert_eq!(SENT_LABELS[i], code.to_string());
            assert_eq!(sent_index(*code), Some(i));
        }
        assert_eq!(sent_index(1005), None);
    }

    #[test]
    fn reserved_and_out_of_range_codes_are_refused() {
        for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            assert!(!peer_code_is_valid(code), "{code}");
        }
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 4001, 4999,
        ] {
            assert!(peer_code_is_valid(code), "{code}");
        }
    }
}
