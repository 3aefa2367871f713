//! Groups at their home reactor (`home_of(groupId)`): who the members are and who may do
//! what ([`Settings`]; both persisted by the store, loaded at start) and which devices
//! are present in each of the group's huddle rooms (in memory only: a room is the
//! connections in it).

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use super::ConnAddr;
use crate::protocol::access::Settings;

/// How many groups each user is in, across every home, so that `--groups-per-user-max`
/// holds whichever reactors a user's groups live on.
///
/// The one structure reactors share behind a lock, and it is taken only when a
/// membership changes (a join or a leave at the group's home), never for a message.
#[derive(Debug)]
pub struct GroupQuota {
    max: u32,
    counts: Mutex<HashMap<Box<str>, u32>>,
}

impl GroupQuota {
    /// An empty quota of `max` groups per user.
    pub fn new(max: u32) -> Self {
        GroupQuota {
            max,
            counts: Mutex::default(),
        }
    }

    /// Counts a membership whatever the cap: one loaded from the store (a lowered cap
    /// keeps what users already have and refuses them more), or one restored after a
    /// leave that could not be stored.
    pub fn count_anyway(&self, user: &str) {
        *self.lock().entry(user.into()).or_default() += 1;
    }

    /// Takes one membership for `user`; false when the user is at the cap.
    pub fn take(&self, user: &str) -> bool {
        let mut counts = self.lock();
        let count = counts.entry(user.into()).or_default();
        if *count >= self.max {
            return false;
        }
        *count += 1;
        true
    }

    /// Gives back the membership of a group `user` left.
    pub fn give_back(&self, user: &str) {
        let mut counts = self.lock();
        if let Some(count) = counts.get_mut(user) {
            *count -= 1;
            if *count == 0 {
                counts.remove(user);
            }
        }
    }

    /// The counts; a panic elsewhere while holding the lock leaves them consistent (each
    /// change is one step), so a poisoned lock is used as it is.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, u32>> {
        self.counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The groups one home holds.
#[derive(Debug, Default)]
pub struct Groups {
    groups: HashMap<Box<str>, Group>,
}

#[derive(Debug, Default)]
struct Group {
    /// In id order, so a fan-out's order depends on nothing but the members (the
    /// simulator replays a seed exactly).
    members: BTreeSet<Arc<str>>,
    /// Who may do what.
    settings: Settings,
    /// Huddle id → the devices present, with their users.
    rooms: HashMap<Box<str>, Vec<(ConnAddr, Arc<str>)>>,
}

impl Groups {
    /// Adds `user` to `group`; false when it already was a member.
    pub fn join(&mut self, group: &str, user: Arc<str>) -> bool {
        self.groups
            .entry(group.into())
            .or_default()
            .members
            .insert(user)
    }

    /// Removes `user` from `group` (and its devices from the group's huddles); false when
    /// it was not a member.
    pub fn leave(&mut self, group: &str, user: &str) -> bool {
        let Some(entry) = self.groups.get_mut(group) else {
            return false;
        };
        let was = entry.members.remove(user);
        for present in entry.rooms.values_mut() {
            present.retain(|(_, u)| &**u != user);
        }
        entry.rooms.retain(|_, present| !present.is_empty());
        if entry.members.is_empty() && entry.rooms.is_empty() {
            self.groups.remove(group);
        }
        was
    }

    /// Whether `group` exists: it has members (a group all members left is gone, and its
    /// id free to create again).
    pub fn exists(&self, group: &str) -> bool {
        self.groups
            .get(group)
            .is_some_and(|g| !g.members.is_empty())
    }

    /// `group`'s settings: a v1 group's when it does not exist (settings a cluster's
    /// watch gave before the members, or left by members who all left elsewhere, do not
    /// bind a group made anew).
    pub fn settings(&self, group: &str) -> Settings {
        match self.groups.get(group) {
            Some(entry) if !entry.members.is_empty() => entry.settings.clone(),
            _ => Settings::default(),
        }
    }

    /// Sets `group`'s settings, members or not yet: a cluster's watch may give a group's
    /// settings before its members.
    pub fn set_settings(&mut self, group: &str, settings: Settings) {
        match self.groups.get_mut(group) {
            Some(entry) => {
                entry.settings = settings;
                if entry.members.is_empty() && entry.rooms.is_empty() && entry.settings.is_default()
                {
                    self.groups.remove(group);
                }
            }
            None if settings.is_default() => {}
            None => {
                let entry = self.groups.entry(group.into()).or_default();
                entry.settings = settings;
            }
        }
    }

    /// Whether `user` is a member of `group`.
    pub fn is_member(&self, group: &str, user: &str) -> bool {
        self.groups
            .get(group)
            .is_some_and(|g| g.members.contains(user))
    }

    /// The members of `group`, in id order.
    pub fn members(&self, group: &str) -> Vec<Arc<str>> {
        self.groups
            .get(group)
            .map(|g| g.members.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Puts a member's device in a huddle room; false when it was already there.
    pub fn enter_room(&mut self, group: &str, room: &str, addr: ConnAddr, user: Arc<str>) -> bool {
        let Some(entry) = self.groups.get_mut(group) else {
            return false;
        };
        let present = entry.rooms.entry(room.into()).or_default();
        if present.iter().any(|(a, _)| *a == addr) {
            return false;
        }
        present.push((addr, user));
        true
    }

    /// Takes a device out of a huddle room; false when it was not there.
    pub fn leave_room(&mut self, group: &str, room: &str, addr: ConnAddr) -> bool {
        let Some(present) = self
            .groups
            .get_mut(group)
            .and_then(|g| g.rooms.get_mut(room))
        else {
            return false;
        };
        let before = present.len();
        present.retain(|(a, _)| *a != addr);
        let left = present.len() < before;
        if present.is_empty() {
            if let Some(entry) = self.groups.get_mut(group) {
                entry.rooms.remove(room);
            }
        }
        left
    }

    /// The devices present in a huddle room, with their users.
    pub fn present_users(&self, group: &str, room: &str) -> Vec<(ConnAddr, Arc<str>)> {
        self.groups
            .get(group)
            .and_then(|g| g.rooms.get(room))
            .cloned()
            .unwrap_or_default()
    }

    /// The devices present in a huddle room.
    pub fn present(&self, group: &str, room: &str) -> Vec<ConnAddr> {
        self.groups
            .get(group)
            .and_then(|g| g.rooms.get(room))
            .map(|present| present.iter().map(|(a, _)| *a).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::tests::addr;

    #[test]
    fn the_quota_caps_each_user_and_leaves_give_back() {
        let quota = GroupQuota::new(2);
        quota.count_anyway("ann");
        assert!(quota.take("ann"));
        assert!(!quota.take("ann"), "at the cap");
        assert!(quota.take("bob"), "other users have their own count");
        quota.give_back("ann");
        assert!(quota.take("ann"));
        quota.give_back("nobody");
    }

    #[test]
    fn members_join_once_and_leave() {
        let mut groups = Groups::default();
        assert!(groups.join("g", "alice".into()));
        assert!(!groups.join("g", "alice".into()));
        assert!(groups.join("g", "bob".into()));
        assert!(groups.is_member("g", "bob"));
        assert!(!groups.is_member("h", "bob"));
        assert!(groups.leave("g", "bob"));
        assert!(!groups.leave("g", "bob"));
        assert_eq!(groups.members("g"), vec![Arc::<str>::from("alice")]);
        assert!(groups.leave("g", "alice"));
        assert!(groups.groups.is_empty());
    }

    #[test]
    fn settings_go_with_the_last_member() {
        let settings = Settings {
            invite: true,
            owner: Some("ann".into()),
            ..Settings::default()
        };
        let mut groups = Groups::default();
        // A cluster's watch may give the settings first.
        groups.set_settings("g", settings.clone());
        assert!(groups.settings("g").is_default(), "no members: no group");
        groups.join("g", "ann".into());
        assert!(groups.exists("g"));
        assert_eq!(groups.settings("g"), settings);
        groups.leave("g", "ann");
        assert!(!groups.exists("g"));
        assert!(groups.groups.is_empty());
        groups.join("g", "cy".into());
        assert!(
            groups.settings("g").is_default(),
            "a group made anew starts open"
        );
    }

    #[test]
    fn a_room_holds_devices_until_they_or_their_user_leave() {
        let mut groups = Groups::default();
        groups.join("g", "alice".into());
        groups.join("g", "bob".into());
        assert!(groups.enter_room("g", "r", addr(1), "alice".into()));
        assert!(!groups.enter_room("g", "r", addr(1), "alice".into()));
        assert!(groups.enter_room("g", "r", addr(2), "bob".into()));
        assert!(!groups.enter_room("nope", "r", addr(3), "carol".into()));
        assert_eq!(groups.present("g", "r"), vec![addr(1), addr(2)]);
        assert!(groups.leave_room("g", "r", addr(1)));
        assert!(!groups.leave_room("g", "r", addr(1)));
        groups.leave("g", "bob");
        assert!(groups.present("g", "r").is_empty());
    }
}
