//! The cluster's shards (docs/cluster.md, "Shards"): JetStream's durable state is split
//! over `--cluster-shards` streams of each kind, so that their leaders, which do all of a
//! stream's work, spread over the servers of a NATS cluster. A user's inbox, its
//! acknowledgement record and the message-index keys of what it received live in the
//! user's shard; a conversation's history lives in the conversation's shard.
//!
//! Every node must pick the same shard for the same user, in every version: the hash is
//! FNV-1a over the id's bytes, written out here rather than std's, whose keys are random
//! per process. The count is fixed for the life of a cluster's JetStream data, and the
//! first node writes it down where the others check it (bucket [`LAYOUT_BUCKET`]).

/// The key-value bucket of the cluster's layout: key [`SHARDS_KEY`] holds the count.
pub(super) const LAYOUT_BUCKET: &str = "chat_layout";
/// The layout key that holds the number of shards, in decimal.
pub(super) const SHARDS_KEY: &str = "shards";
/// The most shards a cluster may have (`--cluster-shards`).
pub const SHARDS_MAX: u16 = 64;

/// How many shards the cluster's streams are split into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shards(u16);

impl Shards {
    /// `count` shards, at least 1 and at most [`SHARDS_MAX`] (the flag's range).
    pub fn new(count: u16) -> Shards {
        Shards(count.clamp(1, SHARDS_MAX))
    }

    /// How many there are.
    pub fn count(self) -> u16 {
        self.0
    }

    /// The shard of `key` (a user id).
    pub fn of(self, key: &str) -> u16 {
        self.pick(fnv1a(FNV_OFFSET, key.as_bytes()))
    }

    /// The shard of the conversation between `a` and `b` (either order): the two ids
    /// hashed as one, the lower first, with a zero byte between them.
    pub fn of_pair(self, a: &str, b: &str) -> u16 {
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        let hash = fnv1a(fnv1a(FNV_OFFSET, low.as_bytes()), &[0]);
        self.pick(fnv1a(hash, high.as_bytes()))
    }

    /// The shard a hash falls in.
    fn pick(self, hash: u64) -> u16 {
        (hash % u64::from(self.0)) as u16
    }

    /// Stream `base`'s name for `shard`: `<base>_<shard>`.
    pub fn stream(base: &str, shard: u16) -> String {
        format!("{base}_{shard}")
    }

    /// The count as the layout key holds it, checked against this node's: `Err` says
    /// why a node started with another count must not serve.
    pub(super) fn agrees(self, stored: &[u8]) -> Result<(), String> {
        let stored = std::str::from_utf8(stored).unwrap_or("").trim();
        match stored.parse::<u16>() {
            Ok(count) if count == self.0 => Ok(()),
            Ok(count) => Err(format!(
                "this cluster's streams are split into {count} shards (bucket \
                 {LAYOUT_BUCKET}), and this node was started with --cluster-shards {}: \
                 start every node with --cluster-shards {count}",
                self.0
            )),
            Err(_) => Err(format!(
                "bucket {LAYOUT_BUCKET} holds '{stored}' as the number of shards, not a number"
            )),
        }
    }
}

/// FNV-1a's 64-bit offset basis.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a (64 bits) of `bytes`, going on from `hash`.
fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_fixed_so_every_node_and_version_picks_the_same_shard() {
        // FNV-1a 64 of "" and of "alice" (reference values), then taken modulo.
        let shards = Shards::new(64);
        assert_eq!(shards.of(""), (0xcbf2_9ce4_8422_2325_u64 % 64) as u16);
        assert_eq!(shards.of("alice"), (0x508b_2abb_65a0_3907_u64 % 64) as u16);
        assert_eq!(Shards::new(1).of("anyone"), 0);
    }

    #[test]
    fn users_spread_over_every_shard_and_a_pair_has_one_shard_either_way() {
        let shards = Shards::new(6);
        let mut counts = [0u32; 6];
        for i in 0..6_000 {
            counts[usize::from(shards.of(&format!("user-{i}")))] += 1;
        }
        assert!(
            counts.iter().all(|&n| (800..1200).contains(&n)),
            "{counts:?}"
        );
        assert_eq!(
            shards.of_pair("bob", "alice"),
            shards.of_pair("alice", "bob")
        );
        assert_eq!(Shards::stream("CHAT_INBOX", 3), "CHAT_INBOX_3");
    }

    #[test]
    fn a_stored_count_agrees_only_when_it_is_this_nodes() {
        let shards = Shards::new(4);
        assert_eq!(shards.agrees(b"4"), Ok(()));
        let other = shards.agrees(b"6").unwrap_err();
        assert!(other.contains("--cluster-shards 6"), "{other}");
        assert!(shards.agrees(b"four").unwrap_err().contains("not a number"));
        assert_eq!(Shards::new(0).count(), 1);
        assert_eq!(Shards::new(1000).count(), SHARDS_MAX);
    }
}
