//! The churn scenario's devices (protocol v2): each user's one device resumes from the
//! last inbox `seq` it processed, acknowledges what it processed, and counts what the
//! gateway got wrong: an inbox event at or below a `seq` it already had (duplicated), and,
//! with the senders' acks merged at the end, a message acknowledged to its sender that
//! never arrived (lost).

use std::collections::{HashMap, HashSet};

/// A device acknowledges after this many events.
const ACK_EVERY: u32 = 8;

/// One user's device, kept across its connections.
#[derive(Debug, Default)]
struct Device {
    /// The epoch its last `auth_success` gave.
    epoch: String,
    /// The highest `seq` it processed.
    seq: u64,
    /// Events processed since its last `ack`.
    since_ack: u32,
}

/// This worker's devices and what they saw.
#[derive(Debug, Default)]
pub struct Devices {
    by_user: HashMap<usize, Device>,
    /// Ids of the messages these devices received.
    pub received: HashSet<Box<str>>,
    /// Ids of the messages these devices sent that the gateway acknowledged.
    pub acked: HashSet<Box<str>>,
    /// Inbox events received twice (a `seq` at or below one already had, or a message id
    /// already received).
    pub duplicated: u64,
    /// Connections whose resume was honoured, and refused.
    pub resumes: (u64, u64),
}

impl Devices {
    /// The `auth` of `user`'s device: with `resume` from where it left off.
    pub fn auth(&self, user: usize) -> String {
        let (epoch, seq) = self
            .by_user
            .get(&user)
            .map_or(("", 0), |d| (d.epoch.as_str(), d.seq));
        format!(
            r#"{{"type":"auth","userId":"lg{user}","deviceId":"lg","resume":{{"epoch":"{epoch}","seq":{seq}}}}}"#
        )
    }

    /// `auth_success` for `user`'s device: its epoch, and whether it resumed.
    pub fn greeted(&mut self, user: usize, payload: &[u8]) {
        let device = self.by_user.entry(user).or_default();
        if let Some(epoch) = text_field(payload, "epoch") {
            device.epoch = epoch.to_owned();
        }
        if contains(payload, br#""resumed":true"#) {
            self.resumes.0 += 1;
        } else {
            self.resumes.1 += 1;
            // What comes is what no device acknowledged: it starts from there.
            device.seq = 0;
        }
    }

    /// An inbox event (a frame with a `seq`) for `user`'s device: counted once, a repeat
    /// counted as duplicated. Returns the `seq` to acknowledge, when it is time to.
    pub fn event(&mut self, user: usize, payload: &[u8]) -> Option<u64> {
        let seq = seq_of(payload)?;
        let device = self.by_user.entry(user).or_default();
        if seq <= device.seq {
            self.duplicated += 1;
            return None;
        }
        device.seq = seq;
        if payload.starts_with(br#"{"type":"new_message""#) {
            if let Some(id) = text_field(payload, "messageId") {
                if !self.received.insert(id.into()) {
                    self.duplicated += 1;
                }
            }
        }
        device.since_ack += 1;
        if device.since_ack < ACK_EVERY {
            return None;
        }
        device.since_ack = 0;
        Some(seq)
    }

    /// A `message_ack` for a message these devices sent: `sent` and `queued` are the
    /// gateway's promise (a rejection is not).
    pub fn sender_acked(&mut self, payload: &[u8]) {
        let kept =
            contains(payload, br#""status":"sent""#) || contains(payload, br#""status":"queued""#);
        if let Some(id) = text_field(payload, "messageId").filter(|_| kept) {
            self.acked.insert(id.into());
        }
    }
}

/// The `seq` of an inbox event: the engine writes it right after the `type`.
pub fn seq_of(payload: &[u8]) -> Option<u64> {
    let head = &payload[..payload.len().min(48)];
    number_after(head, br#","seq":"#)
}

/// The decimal number right after the first `key` in `payload`.
pub fn number_after(payload: &[u8], key: &[u8]) -> Option<u64> {
    let at = payload.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = payload[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&payload[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// A string field the loadgen's own ids and the engine's epochs fill (no escapes in them).
pub fn text_field<'p>(payload: &'p [u8], key: &str) -> Option<&'p str> {
    let pattern = format!(r#""{key}":""#);
    let at = payload
        .windows(pattern.len())
        .position(|w| w == pattern.as_bytes())?
        + pattern.len();
    let len = payload[at..].iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&payload[at..at + len]).ok()
}

fn contains(payload: &[u8], needle: &[u8]) -> bool {
    payload.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_resumes_counts_repeats_and_acks_in_steps() {
        let mut devices = Devices::default();
        assert!(devices.auth(7).contains(r#""resume":{"epoch":"","seq":0}"#));
        devices.greeted(
            7,
            br#"{"type":"auth_success","epoch":"e9","seq":3,"resumed":false}"#,
        );
        let event = |seq: u64, id: &str| {
            format!(r#"{{"type":"new_message","seq":{seq},"messageId":"{id}","content":"1"}}"#)
        };
        let mut acks = Vec::new();
        for seq in 1..=9 {
            acks.extend(devices.event(7, event(seq, &format!("m{seq}")).as_bytes()));
        }
        assert_eq!(acks, [8]);
        assert_eq!(devices.event(7, event(9, "m9").as_bytes()), None);
        assert_eq!(devices.duplicated, 1);
        assert!(devices
            .auth(7)
            .contains(r#""resume":{"epoch":"e9","seq":9}"#));
        devices.sender_acked(br#"{"type":"message_ack","messageId":"x1","status":"queued"}"#);
        devices.sender_acked(br#"{"type":"message_ack","messageId":"x2","status":"rejected"}"#);
        assert!(devices.acked.contains("x1") && !devices.acked.contains("x2"));
        assert_eq!(seq_of(br#"{"type":"pong","ts":0}"#), None);
    }
}
