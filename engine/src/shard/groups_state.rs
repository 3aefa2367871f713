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

/// Which groups each user is in, across every home: `--groups-per-user-max` holds
/// whichever reactors a user's groups live on, and with `--presence-visibility shared`
/// a watcher sees the presence of the users it shares a group with.
///
/// The one structure reactors share behind a lock, taken when a membership changes (a
/// join or a leave at the group's home) and once per `presence_subscribe`, never for a
/// message. It holds each membership's group id once more (tens of bytes each).
#[derive(Debug)]
pub struct UserGroups {
    max: u32,
    /// Presence is shown only to users who share a group.
    presence_shared: bool,
    groups: Mutex<HashMap<Box<str>, Vec<Box<str>>>>,
}

impl UserGroups {
    /// No memberships yet; at most `max` groups per user; `presence_shared`: the
    /// presence of users who share no group is hidden.
    pub fn new(max: u32, presence_shared: bool) -> Self {
        UserGroups {
            max,
            presence_shared,
            groups: Mutex::default(),
        }
    }

    /// Counts a membership whatever the cap: one loaded from the store (a lowered cap
    /// keeps what users already have and refuses them more), one another node made, or
    /// one restored after a leave that could not be stored.
    pub fn count_anyway(&self, user: &str, group: &str) {
        let mut users = self.lock();
        let groups = users.entry(user.into()).or_default();
        if !groups.iter().any(|g| **g == *group) {
            groups.push(group.into());
        }
    }

    /// Takes one membership for `user`; false when the user is at the cap.
    pub fn take(&self, user: &str, group: &str) -> bool {
        let mut users = self.lock();
        let groups = users.entry(user.into()).or_default();
        if groups.iter().any(|g| **g == *group) {
            return true;
        }
        if groups.len() >= self.max as usize {
            if groups.is_empty() {
                users.remove(user);
            }
            return false;
        }
        groups.push(group.into());
        true
    }

    /// Gives back the membership of a group `user` left.
    pub fn give_back(&self, user: &str, group: &str) {
        let mut users = self.lock();
        if let Some(groups) = users.get_mut(user) {
            groups.retain(|g| **g != *group);
            if groups.is_empty() {
                users.remove(user);
            }
        }
    }

    /// The users among `users` whose presence `watcher` may see: all of them, or with
    /// `--presence-visibility shared` the watcher and those who share a group with it.
    pub fn visible<'u>(&self, watcher: &str, users: &[&'u str]) -> Vec<&'u str> {
        if !self.presence_shared {
            return users.to_vec();
        }
        let all = self.lock();
        let shown = users.iter().copied();
        shown
            .filter(|user| shares_a_group(&all, watcher, user))
            .collect()
    }

    /// Whether `watcher` may still see `user`'s presence (checked at each change, so one
    /// who left their last shared group hears nothing more). Allocates nothing.
    pub fn sees(&self, watcher: &str, user: &str) -> bool {
        !self.presence_shared || shares_a_group(&self.lock(), watcher, user)
    }

    /// The memberships; a panic elsewhere while holding the lock leaves them consistent
    /// (each change is one step), so a poisoned lock is used as it is.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Vec<Box<str>>>> {
        self.groups
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Whether `user` is `watcher` or shares a group with it, in the memberships `all`.
fn shares_a_group(all: &HashMap<Box<str>, Vec<Box<str>>>, watcher: &str, user: &str) -> bool {
    let mine = all.get(watcher).map(Vec::as_slice).unwrap_or_default();
    user == watcher
        || all
            .get(user)
            .is_some_and(|theirs| theirs.iter().any(|g| mine.contains(g)))
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
        let quota = UserGroups::new(2, false);
        quota.count_anyway("ann", "g1");
        assert!(quota.take("ann", "g2"));
        assert!(
            quota.take("ann", "g2"),
            "a group the user is in takes nothing more"
        );
        assert!(!quota.take("ann", "g3"), "at the cap");
        assert!(quota.take("bob", "g3"), "other users have their own count");
        quota.give_back("ann", "g1");
        assert!(quota.take("ann", "g3"));
        quota.give_back("nobody", "g1");
    }

    #[test]
    fn shared_presence_shows_only_users_who_share_a_group() {
        let index = UserGroups::new(10, true);
        index.count_anyway("ann", "team");
        index.count_anyway("bob", "team");
        index.count_anyway("cy", "other");
        let asked = ["bob", "cy", "ann", "dan"];
        assert_eq!(index.visible("ann", &asked), vec!["bob", "ann"]);
        assert!(index.sees("ann", "bob") && index.sees("ann", "ann") && !index.sees("ann", "cy"));
        index.give_back("bob", "team");
        assert_eq!(index.visible("ann", &asked), vec!["ann"]);
        assert!(!index.sees("ann", "bob"));
        let open = UserGroups::new(10, false);
        assert_eq!(open.visible("ann", &asked), asked.to_vec());
        assert!(open.sees("ann", "cy"));
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
