//! The store file's tables, named once: each module that reads or writes one imports it
//! from here (inbox and history describe their rows).

use redb::TableDefinition;

/// Inbox events: `(user, seq) → [kind][flags][priority][appended at][body]` (`inbox`).
pub(super) const INBOX: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("inbox");
/// Group posts' content: `post number → [appended at][JSON]` (`inbox`).
pub(super) const POSTS: TableDefinition<u64, &[u8]> = TableDefinition::new("posts");
/// Per-user inbox heads: `user → (last seq, acked seq, gone)` (`inbox`).
pub(super) const HEADS: TableDefinition<&str, (u64, u64, u64)> = TableDefinition::new("heads");
/// Conversations: `(lower user, higher user, timestamp ms, sequence) → JSON` (`history`).
pub(super) const HISTORY: TableDefinition<(&str, &str, u64, u64), &[u8]> =
    TableDefinition::new("history");
/// The message index: `(receiver, messageId, sender) → (timestamp ms, sequence)`
/// (`history`).
pub(super) const RECEIVED: TableDefinition<(&str, &str, &str), (u64, u64)> =
    TableDefinition::new("received");
/// Group memberships: `(group, user) → ()`.
pub(super) const MEMBERS: TableDefinition<(&str, &str), ()> = TableDefinition::new("members");
/// Group settings other than a v1 group's: `group → JSON` (`protocol::access`).
pub(super) const GROUP_SETTINGS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("group_settings");
/// Small named values: the sequences, the epoch, the journal's checkpoint.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
