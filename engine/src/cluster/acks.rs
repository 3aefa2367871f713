//! Each user's acknowledgement record in a cluster (docs/cluster.md, "Inboxes"): how far
//! the user's devices have acknowledged, and which acknowledged events are still kept for
//! the user's other devices. One key per user in key-value bucket `chat_acks_<shard>` (the
//! user's shard, [`Shards`]), written with a compare-and-set on its revision, so that two
//! nodes acknowledging for one user at once never move it back.
//!
//! Acknowledged events are kept by generations of [`generation`] events: when a
//! generation fills, the one before it may be removed from the inbox stream (with one
//! purge), so between one and two generations of the newest acknowledged events stay.
//! Removing events in batches costs nats-server one purge per generation instead of a
//! delete per event (benches/RESULTS.md).

use super::{relay::key_token, shards::Shards};

/// The key-value buckets of the users' acknowledgement records: `chat_acks_<shard>`.
const ACK_BUCKET: &str = "chat_acks";

/// Shard `shard`'s bucket.
fn ack_bucket(shard: u16) -> String {
    Shards::stream(ACK_BUCKET, shard)
}

/// The stream of shard `shard`'s bucket.
pub(super) fn ack_stream(shard: u16) -> String {
    format!("KV_{}", ack_bucket(shard))
}

/// A user's acknowledgement record, stored as four decimal numbers separated by spaces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct AckRecord {
    /// The highest `seq` a device of the user acknowledged.
    pub acked: u64,
    /// Every event up to here may have been removed: a resume from below it cannot be
    /// honoured.
    pub gone: u64,
    /// The last event of the newest full generation of acknowledged events.
    pub mark: u64,
    /// Acknowledged events after `mark`: the generation being filled.
    pub newer: u64,
}

impl AckRecord {
    /// The record in a stored value, or `None` if it is not one.
    pub(super) fn parse(value: &[u8]) -> Option<AckRecord> {
        let text = std::str::from_utf8(value).ok()?;
        let mut numbers = text.split(' ').map(|n| n.parse::<u64>().ok());
        let record = AckRecord {
            acked: numbers.next()??,
            gone: numbers.next()??,
            mark: numbers.next()??,
            newer: numbers.next()??,
        };
        let ordered = record.gone <= record.mark && record.mark <= record.acked;
        (numbers.next().is_none() && ordered).then_some(record)
    }

    /// The value to store.
    pub(super) fn encode(&self) -> String {
        format!("{} {} {} {}", self.acked, self.gone, self.mark, self.newer)
    }

    /// Event `seq` (above `acked`) is acknowledged: it joins the generation being filled;
    /// when that holds `generation` events it closes at `seq`, and everything up to the
    /// previous generation's end becomes removable.
    pub(super) fn take(&mut self, seq: u64, generation: u64) {
        self.acked = self.acked.max(seq);
        self.newer += 1;
        if self.newer >= generation {
            self.gone = self.mark;
            self.mark = seq;
            self.newer = 0;
        }
    }
}

/// The header naming the ack that wrote a record: a token unique to that write.
pub(super) const WRITER_HEADER: &str = "Chat-Writer";
/// The header naming the writer of the record a write replaced (its compare-and-set's
/// base): a node unsure whether its write landed finds it under one later write.
pub(super) const OVER_HEADER: &str = "Chat-Over";

/// A user's record as stored: its value, its revision (what a compare-and-set names) and
/// the token of the ack that wrote it (0: unknown).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Stored {
    /// The value.
    pub record: AckRecord,
    /// Its revision (0: none stored yet).
    pub revision: u64,
    /// [`WRITER_HEADER`]'s token.
    pub writer: u64,
}

/// The token header `name` of a stored record holds (0: none).
pub(super) fn token_of(headers: &[u8], name: &str) -> u64 {
    super::wire::header(headers, name)
        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
        .unwrap_or(0)
}

/// The events of one generation of acknowledged events kept: half the per-user bound, so
/// that the newest `--queue-max-per-user` / 2 acknowledged events always stay.
pub(super) fn generation(queue_max_per_user: u64) -> u64 {
    (queue_max_per_user / 2).max(1)
}

/// The subject of `user`'s record, in the user's shard.
pub(super) fn record_subject(shards: Shards, user: &str) -> String {
    format!("$KV.{}.{}", ack_bucket(shards.of(user)), key_token(user))
}

/// The configuration of shard `shard`'s bucket stream (as the key-value API lays it
/// out), with `replicas` copies.
pub(super) fn stream_config(replicas: u8, shard: u16) -> serde_json::Value {
    serde_json::json!({
        "name": ack_stream(shard),
        "subjects": [format!("$KV.{}.>", ack_bucket(shard))],
        "storage": "file",
        "retention": "limits",
        "max_msgs_per_subject": 1,
        "discard": "new",
        "allow_rollup_hdrs": true,
        "deny_delete": true,
        "allow_direct": true,
        "num_replicas": replicas,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_garbage_or_disorder_is_refused() {
        let record = AckRecord {
            acked: 9,
            gone: 2,
            mark: 7,
            newer: 1,
        };
        assert_eq!(AckRecord::parse(record.encode().as_bytes()), Some(record));
        for bad in ["", "1 2 3", "1 2 3 4 5", "9 x 7 1", "9 8 7 1", "5 0 7 1"] {
            assert_eq!(AckRecord::parse(bad.as_bytes()), None, "{bad:?}");
        }
        assert_eq!(
            record_subject(Shards::new(1), "a.b"),
            "$KV.chat_acks_0.=612e62"
        );
        let shards = Shards::new(4);
        let shard = shards.of("bob");
        assert_eq!(
            record_subject(shards, "bob"),
            format!("$KV.chat_acks_{shard}.bob")
        );
        assert_eq!(ack_stream(shard), format!("KV_chat_acks_{shard}"));
    }

    #[test]
    fn between_one_and_two_generations_of_acknowledged_events_stay() {
        let mut record = AckRecord::default();
        // Generations of 2 over events 10, 20, … 80.
        let mut removable = Vec::new();
        for seq in (10..=80).step_by(10) {
            record.take(seq, 2);
            removable.push(record.gone);
        }
        assert_eq!(removable, [0, 0, 0, 20, 20, 40, 40, 60]);
        assert_eq!(
            record,
            AckRecord {
                acked: 80,
                gone: 60,
                mark: 80,
                newer: 0
            }
        );
        assert_eq!(generation(10_000), 5_000);
        assert_eq!(generation(1), 1);
    }
}
