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
}

/// Presence state of a watched user.
#[derive(Debug, Default)]
struct Presence {
    /// Connections watching this user's presence.
    watchers: Vec<ConnAddr>,
    /// When the last device went offline (ms).
    last_seen_ms: Option<u64>,
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
                });
                vacant.insert(key as u32);
                key
            }
        }
    }

    /// Adds a device; the same device id replaces the older connection.
    pub fn register(&mut self, user: Arc<str>, device: Box<str>, addr: ConnAddr) -> Registered {
        let key = self.find_or_insert(&user.clone(), || user);
        let entry = &mut self.entries[key];
        let mut outcome = Registered::default();
        if let Some(existing) = entry.devices.iter_mut().find(|d| d.id == device) {
            outcome.replaced = Some(std::mem::replace(&mut existing.addr, addr));
            return outcome;
        }
        if entry.devices.len() >= DEVICES_PER_USER_MAX {
            outcome.refused = true;
            return outcome;
        }
        outcome.came_online = entry.devices.is_empty();
        entry.devices.push(Device { id: device, addr });
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
        let before = entry.devices.len();
        entry.devices.retain(|d| d.addr != addr);
        let went_offline = before > 0 && entry.devices.is_empty();
        if went_offline {
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

    /// `watcher` starts watching `user`; returns `(online, last_seen_ms)`.
    pub fn subscribe(&mut self, user: &str, watcher: ConnAddr) -> (bool, Option<u64>) {
        let key = self.find_or_insert(user, || Arc::from(user));
        let entry = &mut self.entries[key];
        let presence = entry.presence.get_or_insert_with(Box::default);
        if !presence.watchers.contains(&watcher) {
            presence.watchers.push(watcher);
        }
        (!entry.devices.is_empty(), presence.last_seen_ms)
    }

    /// `watcher` stops watching `user`.
    pub fn unsubscribe(&mut self, user: &str, watcher: ConnAddr) {
        let Some(key) = self.find(user) else {
            return;
        };
        let entry = &mut self.entries[key];
        if let Some(presence) = entry.presence.as_mut() {
            presence.watchers.retain(|w| *w != watcher);
            if presence.watchers.is_empty() {
                entry.presence = None;
            }
        }
        self.forget_if_unused(key);
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
    fn first_device_comes_online_and_last_goes_offline() {
        let mut dir = Directory::default();
        let user: Arc<str> = Arc::from("u1");
        assert!(
            dir.register(user.clone(), "phone".into(), addr(1))
                .came_online
        );
        assert!(
            !dir.register(user.clone(), "laptop".into(), addr(2))
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
        dir.register(Arc::from("u1"), "phone".into(), addr(1));
        let outcome = dir.register(Arc::from("u1"), "phone".into(), addr(2));
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
        assert_eq!(dir.subscribe("u1", addr(9)), (false, None));
        dir.register(Arc::from("u1"), "d".into(), addr(1));
        assert_eq!(dir.subscribe("u1", addr(9)), (true, None));
        assert_eq!(dir.watchers("u1"), &[addr(9)]);
        dir.unregister("u1", addr(1), 42);
        assert_eq!(dir.subscribe("u1", addr(9)), (false, Some(42)));
        dir.unsubscribe("u1", addr(9));
        assert!(dir.entries.is_empty() && dir.index.is_empty());
    }

    #[test]
    fn an_online_users_entry_stays_small() {
        // The per-connection budget counts one slab slot and one index bucket per online user.
        let entry = std::mem::size_of::<UserEntry>();
        assert!(entry <= 64, "{entry}");
    }

    #[test]
    fn many_users_come_and_go_and_each_is_found() {
        let mut dir = Directory::default();
        for i in 0..1000u32 {
            dir.register(Arc::from(format!("u{i}")), "d".into(), addr(i));
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
                !dir.register(Arc::from("u"), format!("d{i}").into(), addr(i))
                    .refused
            );
        }
        assert!(
            dir.register(Arc::from("u"), "one-more".into(), addr(99))
                .refused
        );
    }
}
