//! The home side of routing: each user homed on this reactor, with online devices and
//! presence watchers. Pure bookkeeping; the reactor turns its answers into envelopes.

use std::{hash::BuildHasher, sync::Arc};

use hashbrown::{hash_table, HashTable};
use slab::Slab;
use std::collections::hash_map::RandomState;

use smallvec::SmallVec;

use super::ConnAddr;

/// The most devices one user may have online at once; a further device is refused.
pub const DEVICES_PER_USER_MAX: usize = 16;

/// One online device of a user.
#[derive(Debug, Clone)]
pub struct Device {
    /// The client's device id.
    pub id: Box<str>,
    /// Where its connection lives.
    pub addr: ConnAddr,
    /// It has caught up with its inbox and gets live events (the flags sit in what would
    /// be padding).
    pub live: bool,
    /// It acknowledges what it gets (it sent `resume`); a device that does not takes a
    /// frame handed to its socket as delivered (v1).
    pub acks: bool,
    /// When it authenticated (Unix ms), for the admin API: 8 bytes an online device, the
    /// price of the operator knowing how long a device has been connected.
    pub since_ms: u64,
}

/// A user homed here: kept while online or watched. Kept small (one slot per online user
/// counts against the per-connection memory budget): what only watched users need lives
/// out of line.
#[derive(Debug)]
struct UserEntry {
    /// The user id (shared with the user's connections homed here).
    user: Arc<str>,
    /// Online devices; one inline, as most users have one device.
    devices: SmallVec<[Device; 1]>,
    /// Watchers and last-seen time, allocated only once someone watches the user.
    presence: Option<Box<Presence>>,
    /// Who gives out the `seq` of the user's inbox events.
    inbox: InboxHead,
}

/// Who gives out `seq` for a user's inbox, in one word: the store (no device online),
/// the store until it answers an opening (with the events sent to it meanwhile, which it
/// numbers), or the home (with the last one given out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxHead(u64);

/// The [`InboxHead`] states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Numbering {
    /// The store numbers the user's events.
    Store,
    /// The home asked the store for the last `seq` (opening `ticket`); `unassigned`
    /// events went to the store without one since.
    Opening {
        /// The opening's value (30 bits).
        ticket: u32,
        /// Events sent to the store since.
        unassigned: u32,
    },
    /// The home numbers them: the last `seq` given out.
    Home {
        /// That `seq`.
        last: u64,
    },
}

const HEAD_TAG_SHIFT: u32 = 62;
const HEAD_VALUE_MASK: u64 = (1 << HEAD_TAG_SHIFT) - 1;
/// The bits an opening's ticket keeps.
pub const OPENING_TICKET_MASK: u32 = (1 << 30) - 1;

impl InboxHead {
    /// The state.
    pub fn get(self) -> Numbering {
        let value = self.0 & HEAD_VALUE_MASK;
        match self.0 >> HEAD_TAG_SHIFT {
            0 => Numbering::Store,
            1 => Numbering::Opening {
                ticket: (value >> 32) as u32,
                unassigned: value as u32,
            },
            _ => Numbering::Home { last: value },
        }
    }

    /// Packs `state`.
    pub fn new(state: Numbering) -> InboxHead {
        InboxHead(match state {
            Numbering::Store => 0,
            Numbering::Opening { ticket, unassigned } => {
                1 << HEAD_TAG_SHIFT
                    | u64::from(ticket & OPENING_TICKET_MASK) << 32
                    | u64::from(unassigned)
            }
            Numbering::Home { last } => 2 << HEAD_TAG_SHIFT | (last & HEAD_VALUE_MASK),
        })
    }
}

/// Presence state of a watched user.
#[derive(Debug, Default)]
struct Presence {
    /// Connections watching this user's presence.
    watchers: Vec<ConnAddr>,
    /// When the last device went offline (ms), here or, in a cluster, on the last node.
    last_seen_ms: Option<u64>,
    /// What the other nodes of a cluster hold of the user.
    elsewhere: Elsewhere,
}

/// Whether another node of the cluster holds a device of a watched user (or has the user
/// in its grace), as this node's relay last reported ([`crate::cluster::relay`]). Alone,
/// a node never hears of other nodes: [`Elsewhere::Offline`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Elsewhere {
    /// No other node holds the user.
    #[default]
    Offline,
    /// Asked, not yet answered: the first watcher's `presence_state` waits for it.
    Unknown,
    /// At least one other node holds the user.
    Online,
}

/// What a watcher learns as it starts watching a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watching {
    /// Whether a device of the user is online here.
    pub online_here: bool,
    /// When the user was last seen, if offline and known.
    pub last_seen_ms: Option<u64>,
    /// What the other nodes hold.
    pub elsewhere: Elsewhere,
    /// This is the user's first watcher here.
    pub first: bool,
}

/// What a registration changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Registered {
    /// The older connection with the same device id, now to be closed with 4003.
    pub replaced: Option<ConnAddr>,
    /// Whether this was the user's first device (the user came online).
    pub came_online: bool,
    /// Refused: the user already has [`DEVICES_PER_USER_MAX`] devices.
    pub refused: bool,
}

/// A device online, as deliveries see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveDevice {
    /// Its connection.
    pub addr: ConnAddr,
    /// Whether it acknowledges what it gets.
    pub acks: bool,
}

/// The users homed on one reactor.
///
/// Entries live densely in a slab; the hash table holds only 4-byte indices into it,
/// hashed by the user id they point at. A hash map of the entries themselves would keep
/// 64-byte buckets at up to 87.5% load (often near 50% after a doubling): measured at a
/// million connections that slack was worth 20–40 bytes per connection.
#[derive(Debug, Default)]
pub struct Directory {
    index: HashTable<u32>,
    entries: Slab<UserEntry>,
    /// Randomly keyed per directory, as std's `HashMap` is: user ids come from clients.
    hasher: RandomState,
    online_users: usize,
}

impl Directory {
    /// Users with at least one device online.
    pub fn online_users(&self) -> usize {
        self.online_users
    }

    /// The slab key of `user`'s entry.
    fn find(&self, user: &str) -> Option<usize> {
        let entries = &self.entries;
        self.index
            .find(self.hasher.hash_one(user), |&i| {
                &*entries[i as usize].user == user
            })
            .map(|&i| i as usize)
    }

    /// The slab key of `user`'s entry, created empty when missing.
    fn find_or_insert(&mut self, user: &str, make_key: impl FnOnce() -> Arc<str>) -> usize {
        let Directory {
            index,
            entries,
            hasher,
            ..
        } = self;
        let hash = hasher.hash_one(user);
        let entry = index.entry(
            hash,
            |&i| &*entries[i as usize].user == user,
            |&i| hasher.hash_one(&*entries[i as usize].user),
        );
        match entry {
            hash_table::Entry::Occupied(found) => *found.get() as usize,
            hash_table::Entry::Vacant(vacant) => {
                let key = entries.insert(UserEntry {
                    user: make_key(),
                    devices: SmallVec::new(),
                    presence: None,
                    inbox: InboxHead::new(Numbering::Store),
                });
                vacant.insert(key as u32);
                key
            }
        }
    }

    /// Adds a device that authenticated at `now_ms` (not yet live: it reads its inbox
    /// first); the same device id replaces the older connection. `acks`: it acknowledges
    /// what it gets.
    pub fn register(
        &mut self,
        user: Arc<str>,
        device: Box<str>,
        (addr, acks): (ConnAddr, bool),
        now_ms: u64,
    ) -> Registered {
        let key = self.find_or_insert(&user.clone(), || user);
        let entry = &mut self.entries[key];
        let mut outcome = Registered::default();
        if let Some(existing) = entry.devices.iter_mut().find(|d| d.id == device) {
            outcome.replaced = Some(std::mem::replace(&mut existing.addr, addr));
            existing.live = false;
            existing.acks = acks;
            existing.since_ms = now_ms;
            return outcome;
        }
        if entry.devices.len() >= DEVICES_PER_USER_MAX {
            outcome.refused = true;
            return outcome;
        }
        outcome.came_online = entry.devices.is_empty();
        entry.devices.push(Device {
            id: device,
            addr,
            live: false,
            acks,
            since_ms: now_ms,
        });
        if let Some(presence) = entry.presence.as_mut() {
            presence.last_seen_ms = None;
        }
        if outcome.came_online {
            self.online_users += 1;
        }
        outcome
    }

    /// Removes the device at `addr`; true when it was the user's last (the user went offline).
    pub fn unregister(&mut self, user: &str, addr: ConnAddr, now_ms: u64) -> bool {
        let Some(key) = self.find(user) else {
            return false;
        };
        let entry = &mut self.entries[key];
        let Some(i) = entry.devices.iter().position(|d| d.addr == addr) else {
            return false;
        };
        entry.devices.remove(i);
        let went_offline = entry.devices.is_empty();
        if went_offline {
            entry.inbox = InboxHead::new(Numbering::Store);
            self.online_users -= 1;
            if let Some(presence) = entry.presence.as_mut() {
                presence.last_seen_ms = Some(now_ms);
            }
        }
        self.forget_if_unused(key);
        went_offline
    }

    /// The user's online devices (empty when offline).
    pub fn devices(&self, user: &str) -> &[Device] {
        self.find(user)
            .map(|key| &self.entries[key].devices[..])
            .unwrap_or(&[])
    }

    /// The user's devices that get live events (caught up with the inbox), but `except`.
    pub fn live_devices(&self, user: &str, except: Option<ConnAddr>) -> SmallVec<[LiveDevice; 4]> {
        let Some(entry) = self.find(user).map(|key| &self.entries[key]) else {
            return SmallVec::new();
        };
        entry
            .devices
            .iter()
            .filter(|d| d.live && Some(d.addr) != except)
            .map(|d| LiveDevice {
                addr: d.addr,
                acks: d.acks,
            })
            .collect()
    }

    /// The device at `addr` gets live events from now on; false if it is gone.
    pub fn set_live(&mut self, user: &str, addr: ConnAddr) -> bool {
        let Some(entry) = self.find(user).map(|key| &mut self.entries[key]) else {
            return false;
        };
        match entry.devices.iter_mut().find(|d| d.addr == addr) {
            Some(device) => {
                device.live = true;
                true
            }
            None => false,
        }
    }

    /// Who numbers `user`'s inbox events (the store for a user with no entry).
    pub fn numbering(&self, user: &str) -> Numbering {
        self.find(user)
            .map_or(Numbering::Store, |key| self.entries[key].inbox.get())
    }

    /// Sets who numbers `user`'s inbox events; only a user with a device online has an
    /// entry to hold it.
    pub fn set_numbering(&mut self, user: &str, state: Numbering) {
        if let Some(key) = self.find(user) {
            if !self.entries[key].devices.is_empty() {
                self.entries[key].inbox = InboxHead::new(state);
            }
        }
    }

    /// Every user with a device online, with those devices.
    pub fn online(&self) -> impl Iterator<Item = (&str, &[Device])> {
        self.entries
            .iter()
            .filter(|(_, e)| !e.devices.is_empty())
            .map(|(_, e)| (&*e.user, &e.devices[..]))
    }

    /// The connections watching `user`.
    pub fn watchers(&self, user: &str) -> &[ConnAddr] {
        self.find(user)
            .and_then(|key| self.entries[key].presence.as_ref())
            .map(|p| &p.watchers[..])
            .unwrap_or(&[])
    }

    /// `watcher` starts watching `user`.
    pub fn subscribe(&mut self, user: &str, watcher: ConnAddr) -> Watching {
        let key = self.find_or_insert(user, || Arc::from(user));
        let entry = &mut self.entries[key];
        let first = entry.presence.is_none();
        let presence = entry.presence.get_or_insert_with(Box::default);
        if !presence.watchers.contains(&watcher) {
            presence.watchers.push(watcher);
        }
        Watching {
            online_here: !entry.devices.is_empty(),
            last_seen_ms: presence.last_seen_ms,
            elsewhere: presence.elsewhere,
            first,
        }
    }

    /// `watcher` stops watching `user`; true if it was the user's last watcher here.
    pub fn unsubscribe(&mut self, user: &str, watcher: ConnAddr) -> bool {
        let Some(key) = self.find(user) else {
            return false;
        };
        let entry = &mut self.entries[key];
        let mut last = false;
        if let Some(presence) = entry.presence.as_mut() {
            presence.watchers.retain(|w| *w != watcher);
            if presence.watchers.is_empty() {
                entry.presence = None;
                last = true;
            }
        }
        self.forget_if_unused(key);
        last
    }

    /// What a watcher sees of `user` now (as [`Directory::subscribe`], without watching).
    pub fn watching(&self, user: &str) -> Watching {
        let entry = self.find(user).map(|key| &self.entries[key]);
        let presence = entry.and_then(|e| e.presence.as_deref());
        Watching {
            online_here: entry.is_some_and(|e| !e.devices.is_empty()),
            last_seen_ms: presence.and_then(|p| p.last_seen_ms),
            elsewhere: presence.map_or(Elsewhere::Offline, |p| p.elsewhere),
            first: false,
        }
    }

    /// What the other nodes hold of `user`, if watched here.
    pub fn elsewhere(&self, user: &str) -> Option<Elsewhere> {
        self.find(user)
            .and_then(|key| self.entries[key].presence.as_ref())
            .map(|p| p.elsewhere)
    }

    /// Notes what the other nodes hold of watched `user`, as of `at_ms`: the last node
    /// to let the user go dates the user's last-seen time.
    pub fn set_elsewhere(&mut self, user: &str, elsewhere: Elsewhere, at_ms: u64) {
        let Some(key) = self.find(user) else {
            return;
        };
        let entry = &mut self.entries[key];
        let offline_here = entry.devices.is_empty();
        if let Some(presence) = entry.presence.as_mut() {
            presence.elsewhere = elsewhere;
            if elsewhere == Elsewhere::Offline && offline_here {
                presence.last_seen_ms = presence.last_seen_ms.max(Some(at_ms));
            }
        }
    }

    /// Drops the entry at `key` when it has neither devices nor watchers.
    fn forget_if_unused(&mut self, key: usize) {
        let entry = &self.entries[key];
        if !entry.devices.is_empty() || entry.presence.is_some() {
            return;
        }
        let hash = self.hasher.hash_one(&*entry.user);
        if let Ok(found) = self.index.find_entry(hash, |&i| i as usize == key) {
            found.remove();
        }
        self.entries.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::tests::addr;

    #[test]
    fn a_devices_flags_follow_it_when_another_leaves() {
        let mut dir = Directory::default();
        let user: Arc<str> = Arc::from("u");
        dir.register(user.clone(), "a".into(), (addr(1), false), 0);
        dir.register(user.clone(), "b".into(), (addr(2), true), 0);
        dir.register(user.clone(), "c".into(), (addr(3), false), 0);
        assert!(
            dir.live_devices("u", None).is_empty(),
            "not live before catching up"
        );
        assert!(dir.set_live("u", addr(2)) && dir.set_live("u", addr(3)));
        dir.unregister("u", addr(1), 0);
        let live = dir.live_devices("u", None);
        assert_eq!(
            &live[..],
            &[
                LiveDevice {
                    addr: addr(2),
                    acks: true
                },
                LiveDevice {
                    addr: addr(3),
                    acks: false
                }
            ]
        );
        assert_eq!(&dir.live_devices("u", Some(addr(2)))[..], &live[1..]);
    }

    #[test]
    fn the_inbox_head_packs_each_state_in_a_word() {
        for state in [
            Numbering::Store,
            Numbering::Opening {
                ticket: OPENING_TICKET_MASK,
                unassigned: u32::MAX,
            },
            Numbering::Opening {
                ticket: 7,
                unassigned: 0,
            },
            Numbering::Home { last: 0 },
            Numbering::Home {
                last: HEAD_VALUE_MASK,
            },
        ] {
            assert_eq!(InboxHead::new(state).get(), state);
        }
        let mut dir = Directory::default();
        dir.register(Arc::from("u"), "a".into(), (addr(1), true), 0);
        dir.set_numbering("u", Numbering::Home { last: 9 });
        assert_eq!(dir.numbering("u"), Numbering::Home { last: 9 });
        dir.unregister("u", addr(1), 0);
        assert_eq!(
            dir.numbering("u"),
            Numbering::Store,
            "the store numbers again"
        );
    }

    #[test]
    fn first_device_comes_online_and_last_goes_offline() {
        let mut dir = Directory::default();
        let user: Arc<str> = Arc::from("u1");
        assert!(
            dir.register(user.clone(), "phone".into(), (addr(1), false), 0)
                .came_online
        );
        assert!(
            !dir.register(user.clone(), "laptop".into(), (addr(2), false), 0)
                .came_online
        );
        assert_eq!(dir.online_users(), 1);
        assert_eq!(dir.devices("u1").len(), 2);
        assert!(!dir.unregister("u1", addr(1), 5));
        assert!(dir.unregister("u1", addr(2), 6));
        assert_eq!(dir.online_users(), 0);
        assert!(dir.devices("u1").is_empty());
    }

    #[test]
    fn same_device_id_replaces_the_older_connection() {
        let mut dir = Directory::default();
        dir.register(Arc::from("u1"), "phone".into(), (addr(1), false), 0);
        let outcome = dir.register(Arc::from("u1"), "phone".into(), (addr(2), false), 0);
        assert_eq!(
            outcome,
            Registered {
                replaced: Some(addr(1)),
                came_online: false,
                refused: false
            }
        );
        // The replaced connection's late unregister changes nothing.
        assert!(!dir.unregister("u1", addr(1), 5));
        assert_eq!(dir.devices("u1")[0].addr, addr(2));
    }

    #[test]
    fn watchers_see_last_seen_and_entries_are_forgotten_when_unused() {
        let mut dir = Directory::default();
        let seen = |dir: &mut Directory| {
            let watching = dir.subscribe("u1", addr(9));
            (watching.online_here, watching.last_seen_ms, watching.first)
        };
        assert_eq!(seen(&mut dir), (false, None, true));
        dir.register(Arc::from("u1"), "d".into(), (addr(1), false), 0);
        assert_eq!(seen(&mut dir), (true, None, false));
        assert_eq!(dir.watchers("u1"), &[addr(9)]);
        dir.unregister("u1", addr(1), 42);
        assert_eq!(seen(&mut dir), (false, Some(42), false));
        assert!(dir.unsubscribe("u1", addr(9)));
        assert!(dir.entries.is_empty() && dir.index.is_empty());
    }

    #[test]
    fn what_other_nodes_hold_is_kept_per_watched_user_and_dates_the_last_seen() {
        let mut dir = Directory::default();
        assert_eq!(dir.elsewhere("u1"), None, "not watched");
        dir.set_elsewhere("u1", Elsewhere::Online, 1);
        assert_eq!(
            dir.elsewhere("u1"),
            None,
            "nothing kept for an unwatched user"
        );
        let watching = dir.subscribe("u1", addr(9));
        assert_eq!(watching.elsewhere, Elsewhere::Offline, "alone by default");
        dir.set_elsewhere("u1", Elsewhere::Unknown, 0);
        assert_eq!(dir.subscribe("u1", addr(8)).elsewhere, Elsewhere::Unknown);
        dir.set_elsewhere("u1", Elsewhere::Online, 5);
        dir.set_elsewhere("u1", Elsewhere::Offline, 70);
        assert_eq!(dir.subscribe("u1", addr(9)).last_seen_ms, Some(70));
        assert!(!dir.unsubscribe("u1", addr(9)), "one watcher is left");
        assert!(dir.unsubscribe("u1", addr(8)));
        assert_eq!(dir.elsewhere("u1"), None);
    }

    #[test]
    fn an_online_users_entry_stays_small() {
        // The per-connection budget counts one slab slot and one index bucket per online
        // user; the inbox head took it from 64 to 72 bytes (the device flags are free),
        // the device's connect time to 80.
        let entry = std::mem::size_of::<UserEntry>();
        assert!(entry <= 80, "{entry}");
        assert_eq!(std::mem::size_of::<Device>(), 40);
    }

    #[test]
    fn many_users_come_and_go_and_each_is_found() {
        let mut dir = Directory::default();
        for i in 0..1000u32 {
            dir.register(Arc::from(format!("u{i}")), "d".into(), (addr(i), false), 0);
        }
        for i in (0..1000u32).step_by(2) {
            assert!(dir.unregister(&format!("u{i}"), addr(i), 1));
        }
        assert_eq!(dir.online_users(), 500);
        for i in 0..1000u32 {
            let devices = dir.devices(&format!("u{i}"));
            assert_eq!(devices.len(), (i % 2) as usize, "u{i}");
        }
        assert_eq!((dir.entries.len(), dir.index.len()), (500, 500));
    }

    #[test]
    fn devices_per_user_are_bounded() {
        let mut dir = Directory::default();
        for i in 0..DEVICES_PER_USER_MAX as u32 {
            assert!(
                !dir.register(Arc::from("u"), format!("d{i}").into(), (addr(i), false), 0)
                    .refused
            );
        }
        assert!(
            dir.register(Arc::from("u"), "one-more".into(), (addr(99), false), 0)
                .refused
        );
    }
}
