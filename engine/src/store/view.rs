//! Every journaled table as one batch sees it: its own changes, over the memtables, over
//! the file ([`Logged`]).

use std::cell::RefCell;

use redb::ReadTransaction;

use super::{
    history::Tables,
    inbox::Inboxes,
    logged::{Logged, Redo},
    memtable::Memtable,
    schema::{GROUP_SETTINGS, HEADS, HISTORY, INBOX, MEMBERS, META, POSTS, RECEIVED},
};

/// The groups' tables.
pub(super) struct GroupTables<'a> {
    /// Memberships.
    pub members: Logged<'a, (&'static str, &'static str), ()>,
    /// Settings other than a v1 group's.
    pub settings: Logged<'a, &'static str, &'static [u8]>,
}

/// The tables of one batch.
pub(super) struct View<'a> {
    /// Inboxes, posts and heads.
    pub inboxes: Inboxes<'a>,
    /// History and the message index.
    pub tables: Tables<'a>,
    /// Group memberships and settings.
    pub groups: GroupTables<'a>,
    /// Small named values.
    pub meta: Logged<'a, &'static str, u64>,
}

impl<'a> View<'a> {
    /// Opens every table over `read` (the file) and the memtables `active` and `frozen`;
    /// the batch's changes go into `batch` and `redo`.
    pub(super) fn new(
        read: &ReadTransaction,
        batch: &'a mut Memtable,
        (active, frozen): (&'a Memtable, Option<&'a Memtable>),
        redo: &'a RefCell<Redo>,
    ) -> Result<Self, redb::TableError> {
        let Memtable {
            inbox,
            posts,
            heads,
            history,
            received,
            members,
            group_settings,
            meta,
        } = batch;
        let f = frozen;
        Ok(View {
            inboxes: Inboxes {
                inbox: Logged::open(
                    read,
                    &INBOX,
                    (inbox, &active.inbox, f.map(|f| &f.inbox)),
                    redo,
                )?,
                posts: Logged::open(
                    read,
                    &POSTS,
                    (posts, &active.posts, f.map(|f| &f.posts)),
                    redo,
                )?,
                heads: Logged::open(
                    read,
                    &HEADS,
                    (heads, &active.heads, f.map(|f| &f.heads)),
                    redo,
                )?,
            },
            tables: Tables {
                history: Logged::open(
                    read,
                    &HISTORY,
                    (history, &active.history, f.map(|f| &f.history)),
                    redo,
                )?,
                received: Logged::open(
                    read,
                    &RECEIVED,
                    (received, &active.received, f.map(|f| &f.received)),
                    redo,
                )?,
            },
            groups: GroupTables {
                members: Logged::open(
                    read,
                    &MEMBERS,
                    (members, &active.members, f.map(|f| &f.members)),
                    redo,
                )?,
                settings: Logged::open(
                    read,
                    &GROUP_SETTINGS,
                    (
                        group_settings,
                        &active.group_settings,
                        f.map(|f| &f.group_settings),
                    ),
                    redo,
                )?,
            },
            meta: Logged::open(read, &META, (meta, &active.meta, f.map(|f| &f.meta)), redo)?,
        })
    }
}
