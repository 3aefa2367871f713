//! Groups: a member's device asks the group's home reactor to join, leave or post; the
//! home keeps the members (persisted through the store) and fans a post out through each
//! member's home, like a direct message: every online device of every member but the
//! sending device gets the one encoded frame, and members with no device online get it
//! queued.

use std::sync::Arc;

use super::core::Reactor;
use crate::{
    protocol::{
        now_ms,
        outbound::{self, NewMessage},
        Priority,
    },
    router::{AckStatus, ConnAddr, Envelope, GroupDelivery, GroupJoin, GroupPost},
    store::Command,
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
    pub(super) fn group_join(&mut self, user: Arc<str>, group: &str, join: bool) {
        let home = self.home_of(group);
        let change = GroupJoin {
            group: group.into(),
            user,
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
        let GroupJoin { group, user, join } = change;
        let changed = if join {
            self.groups.join(&group, user.clone())
        } else {
            self.groups.leave(&group, &user)
        };
        if !changed {
            return;
        }
        let _ = self.store.send(Command::Membership {
            group: group.clone(),
            user: (*user).into(),
            joined: join,
        });
        self.json.clear();
        outbound::group_member(&mut self.json, &group, &user, join, now_ms());
        let frame = frame::encode_text(&self.json);
        let mut told = self.groups.members(&group);
        if !join {
            told.push(user);
        }
        let delivery = GroupDelivery {
            users: told,
            frame,
            priority: Priority::Normal,
            except: None,
            queue_offline: false,
            sender: None,
        };
        self.fan_out(delivery);
    }

    /// At the group's home: fans a post out to every member (the sender's other devices
    /// included) and acknowledges it; a non-member gets `not_member`.
    ///
    /// One `Deliver` per member to the member's home, all sharing the one frame.
    pub(super) fn on_group_post(&mut self, post: GroupPost) {
        if !self.groups.is_member(&post.group, &post.sender_user) {
            let text = "only members may post to a group: send group_join first";
            return self.error_to(post.sender, "not_member", text, Some(&post.message_id));
        }
        let delivery = GroupDelivery {
            users: self.groups.members(&post.group),
            frame: post.frame,
            priority: post.priority,
            except: Some(post.sender),
            queue_offline: true,
            sender: Some(post.sender_user),
        };
        self.fan_out(delivery);
        let ack = Envelope::Ack {
            sender: post.sender,
            message_id: post.message_id,
            status: AckStatus::Sent,
        };
        self.route(post.sender.reactor as usize, ack);
    }

    /// At the group's home: splits `delivery.users` by home reactor and mails each home
    /// its share (one envelope per home, however large the group).
    fn fan_out(&mut self, delivery: GroupDelivery) {
        let reactors = self.shared.config.reactors;
        let mut by_home: Vec<Vec<Arc<str>>> = vec![Vec::new(); reactors];
        for user in delivery.users {
            by_home[self.home_of(&user)].push(user);
        }
        for (home, users) in by_home.into_iter().enumerate() {
            if users.is_empty() {
                continue;
            }
            let share = GroupDelivery {
                users,
                frame: delivery.frame.clone(),
                sender: delivery.sender.clone(),
                ..delivery
            };
            self.route(home, Envelope::GroupDeliver(Box::new(share)));
        }
    }

    /// At a member's home: writes the group's frame to every device of these members
    /// (but the sending one) and queues it for members with no device online, when asked.
    pub(super) fn on_group_deliver(&mut self, delivery: GroupDelivery) {
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
                let envelope = Envelope::ToConn {
                    addr,
                    frame: delivery.frame.clone(),
                    priority: delivery.priority,
                    accepted_ns: 0,
                };
                self.route(addr.reactor as usize, envelope);
            }
            if !online && delivery.queue_offline {
                let user = Box::from(&**user);
                self.queue_offline(user, delivery.priority, &delivery.frame, None, None);
            }
        }
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
        let envelope = Envelope::ToConn {
            addr,
            frame: frame::encode_text(&self.json),
            priority: Priority::High,
            accepted_ns: 0,
        };
        self.route(addr.reactor as usize, envelope);
    }
}
