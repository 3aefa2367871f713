//! Groups: a member's device asks the group's home reactor to join, leave or post; the
//! home keeps the members (persisted through the store) and fans a post out through each
//! member's home, like a direct message: every online device of every member but the
//! sending device gets the one encoded frame, and members with no device online get it
//! queued.

use std::sync::Arc;

use bytes::Bytes;

use super::core::{PendingPost, Reactor};
use crate::{
    protocol::{
        now_ms,
        outbound::{self, NewMessage},
        Priority,
    },
    router::{AckStatus, ConnAddr, Envelope, GroupDelivery, GroupJoin, GroupPost},
    store::{Command, FanOut, FanOutBatch},
    ws::frame,
};

/// A `group_message` as its sending device saw it.
pub(super) struct GroupMessage<'a> {
    /// The client's message id.
    pub message_id: &'a str,
    /// The group.
    pub group_id: &'a str,
    /// The text.
    pub content: &'a str,
    /// Its message type.
    pub message_type: &'a str,
    /// Its priority.
    pub priority: Priority,
}

impl Reactor {
    /// At the device's reactor: `group_join` / `group_leave` go to the group's home.
    pub(super) fn group_join(&mut self, device: ConnAddr, user: Arc<str>, group: &str, join: bool) {
        let home = self.home_of(group);
        let change = GroupJoin {
            group: group.into(),
            user,
            device,
            join,
        };
        self.route(home, Envelope::GroupJoin(Box::new(change)));
    }

    /// At the device's reactor: encodes the `new_message` once and sends it to the
    /// group's home, which checks membership and fans it out.
    pub(super) fn group_message(
        &mut self,
        sender: ConnAddr,
        sender_user: Arc<str>,
        message: &GroupMessage<'_>,
    ) {
        self.json.clear();
        outbound::new_message(
            &mut self.json,
            &NewMessage {
                message_id: message.message_id,
                sender_id: &sender_user,
                receiver_id: message.group_id,
                content: message.content,
                message_type: message.message_type,
                priority: message.priority,
                timestamp_ms: now_ms(),
                group_id: Some(message.group_id),
            },
        );
        let post = GroupPost {
            group: message.group_id.into(),
            sender,
            sender_user,
            message_id: message.message_id.into(),
            frame: frame::encode_text(&self.json),
            priority: message.priority,
        };
        let home = self.home_of(message.group_id);
        self.route(home, Envelope::GroupPost(Box::new(post)));
    }

    /// At the group's home: a member joins or leaves. The store keeps the change, and
    /// every member hears of it: the others (PROTOCOL.md) and the user itself, whose
    /// devices so learn that the change is made (a post sent after it is accepted).
    pub(super) fn on_group_join(&mut self, change: GroupJoin) {
        let GroupJoin {
            group,
            user,
            device,
            join,
        } = change;
        let quota = &self.shared.group_quota;
        let changed = if join {
            if self.groups.is_member(&group, &user) {
                false
            } else if !quota.take(&user) {
                let text = "this user is in --groups-per-user-max groups already: leave one first";
                return self.error_to(device, "too_many_groups", text, Some(&group));
            } else {
                self.groups.join(&group, user.clone())
            }
        } else {
            let left = self.groups.leave(&group, &user);
            if left {
                quota.give_back(&user);
            }
            left
        };
        if !changed {
            // Nothing changed (a join by a member, a leave by a non-member): the device
            // that asked is told it stands, and nobody else.
            self.json.clear();
            outbound::group_member(&mut self.json, &group, &user, join, now_ms());
            return self.send_to(device, frame::encode_text(&self.json), Priority::Normal);
        }
        let stored = self.store.send(Command::Membership {
            group: group.clone(),
            user: (*user).into(),
            joined: join,
            device,
            home: self.id,
        });
        if stored.is_err() {
            self.on_membership_stored(&group, &user, join, device, false);
        }
        // The others hear of it once the store has committed it.
    }

    /// At the group's home, when the store has answered a membership change: a committed
    /// change is announced to every member (and to the user who left); a failed one is
    /// undone here and the asking device gets `persistence_failed`, so memory and disk
    /// agree.
    pub(super) fn on_membership_stored(
        &mut self,
        group: &str,
        user: &str,
        join: bool,
        device: ConnAddr,
        committed: bool,
    ) {
        let user: Arc<str> = user.into();
        let quota = &self.shared.group_quota;
        if !committed {
            if join && self.groups.leave(group, &user) {
                quota.give_back(&user);
            } else if !join && self.groups.join(group, user.clone()) {
                quota.count_anyway(&user);
            }
            let text = "the membership change could not be stored; nothing changed";
            return self.error_to(device, "persistence_failed", text, Some(group));
        }
        self.json.clear();
        outbound::group_member(&mut self.json, group, &user, join, now_ms());
        let frame = frame::encode_text(&self.json);
        let mut told = self.groups.members(group);
        if !join {
            told.push(user);
        }
        let delivery = GroupDelivery {
            users: Vec::new(),
            frame,
            priority: Priority::Normal,
            except: None,
            post: None,
            sender: None,
        };
        let shares = self.split_by_home(told);
        self.send_shares(shares, &delivery);
    }

    /// At the group's home: fans a post out to every member (the sender's other devices
    /// included); a non-member gets `not_member`. The sender's ack waits until every
    /// member home has written its share and the store has committed the copies for
    /// members with no device online (the durability rule of a `queued` ack).
    pub(super) fn on_group_post(&mut self, post: GroupPost) {
        if !self.groups.is_member(&post.group, &post.sender_user) {
            let text = "only members may post to a group: send group_join first";
            return self.error_to(post.sender, "not_member", text, Some(&post.message_id));
        }
        let pending = self.group_posts.insert(PendingPost {
            sender: post.sender,
            message_id: post.message_id,
            awaiting: 0,
            failed: false,
        });
        let shares = self.split_by_home(self.groups.members(&post.group));
        // Before any share goes out: a share homed here is handled (and reported) at once.
        self.group_posts[pending].awaiting = shares.len();
        let delivery = GroupDelivery {
            users: Vec::new(),
            frame: post.frame,
            priority: post.priority,
            except: Some(post.sender),
            post: Some((self.id, pending as u32)),
            sender: Some(post.sender_user),
        };
        self.send_shares(shares, &delivery);
    }

    /// At the group's home: one member home's share of a post is done; the last one
    /// acknowledges the post (`sent`), or reports that copies could not be stored.
    pub(super) fn on_group_share_done(&mut self, post: u32, failed: bool) {
        let Some(pending) = self.group_posts.get_mut(post as usize) else {
            return;
        };
        pending.failed |= failed;
        pending.awaiting -= 1;
        if pending.awaiting > 0 {
            return;
        }
        let done = self.group_posts.remove(post as usize);
        if done.failed {
            let text = "the message reached the members online, but the copies for members \
                        with no device online could not be stored";
            return self.error_to(
                done.sender,
                "persistence_failed",
                text,
                Some(&done.message_id),
            );
        }
        let ack = Envelope::Ack {
            sender: done.sender,
            message_id: done.message_id,
            status: AckStatus::Sent,
        };
        self.route(done.sender.reactor as usize, ack);
    }

    /// At the group's home: the members by home reactor, homes without members left out.
    fn split_by_home(&self, members: Vec<Arc<str>>) -> Vec<(usize, Vec<Arc<str>>)> {
        let mut by_home: Vec<Vec<Arc<str>>> = vec![Vec::new(); self.shared.config.reactors];
        for user in members {
            by_home[self.home_of(&user)].push(user);
        }
        by_home
            .into_iter()
            .enumerate()
            .filter(|(_, users)| !users.is_empty())
            .collect()
    }

    /// At the group's home: mails each home its share of the members with `delivery`'s
    /// frame (one envelope per home, however large the group).
    fn send_shares(&mut self, shares: Vec<(usize, Vec<Arc<str>>)>, delivery: &GroupDelivery) {
        for (home, users) in shares {
            let share = GroupDelivery {
                users,
                frame: delivery.frame.clone(),
                sender: delivery.sender.clone(),
                ..*delivery
            };
            self.route(home, Envelope::GroupDeliver(Box::new(share)));
        }
    }

    /// At a member's home: writes the group's frame to every device of these members
    /// (but the sending one); for a post, queues it for members with no device online in
    /// one store command and tells the group's home when that is committed.
    pub(super) fn on_group_deliver(&mut self, delivery: GroupDelivery) {
        let mut offline: Vec<(Box<str>, Bytes)> = Vec::new();
        for user in &delivery.users {
            let devices: smallvec::SmallVec<[ConnAddr; 4]> = self
                .directory
                .devices(user)
                .iter()
                .map(|d| d.addr)
                .filter(|a| Some(*a) != delivery.except)
                .collect();
            let online = !devices.is_empty() || delivery.sender.as_ref() == Some(user);
            for addr in devices {
                self.send_to(addr, delivery.frame.clone(), delivery.priority);
            }
            if !online && delivery.post.is_some() {
                offline.push((Box::from(&**user), frame::payload_of(&delivery.frame)));
            }
        }
        let Some((group_home, post)) = delivery.post else {
            return;
        };
        let to_queue = !offline.is_empty();
        if to_queue {
            let batch = FanOutBatch {
                messages: offline,
                priority: delivery.priority,
                purpose: FanOut::GroupPost,
                reply_to: group_home,
                request: post,
                delivered: 0,
            };
            if self
                .store
                .send(Command::EnqueueFanOut(Box::new(batch)))
                .is_ok()
            {
                return; // the store tells the group's home after its commit
            }
        }
        // Nothing to queue (done), or the store is gone, shutting down (failed).
        let failed = to_queue;
        self.route(group_home, Envelope::GroupShareDone { post, failed });
    }

    /// Sends `error {code, message, ref}` to a connection on any reactor.
    pub(super) fn error_to(
        &mut self,
        addr: ConnAddr,
        code: &str,
        text: &str,
        reference: Option<&str>,
    ) {
        self.stats().count_error(code);
        self.json.clear();
        outbound::error(&mut self.json, code, text, reference);
        self.send_to(addr, frame::encode_text(&self.json), Priority::High);
    }
}
