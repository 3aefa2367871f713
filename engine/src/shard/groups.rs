//! Groups at their home: joins and leaves (kept by the store, announced once committed)
//! and posts, fanned out as one envelope per member home however large the group. A
//! member home numbers the event in each member's inbox, writes it to their live devices
//! and appends it to every member's inbox in one store command (the post's content once);
//! the post is acknowledged once every member home's share is committed.

use crate::protocol::codes::ErrorCode;
use std::sync::Arc;

use super::{Effects, PostShares, Shard};
use crate::{
    protocol::{inbound::Text, outbound, Priority},
    router::{AckStatus, ConnAddr, Envelope, GroupDelivery, GroupJoin, GroupPost},
    store::{Append, Command, Event, Failure, FanOut, Share, ShareRow, Waiter},
};

impl Shard {
    /// At the device's reactor: `group_join` / `group_leave` go to the group's home.
    pub(super) fn ask_group_join(
        &mut self,
        conn: ConnAddr,
        user: &Arc<str>,
        group: &str,
        join: bool,
        out: &mut Effects,
    ) {
        let change = GroupJoin {
            group: group.into(),
            user: user.clone(),
            device: conn,
            join,
        };
        out.mail(self.home_of(group), Envelope::GroupJoin(Box::new(change)));
    }

    /// At the device's reactor: `group_message` is encoded once and sent to the group's
    /// home, which checks membership and fans it out.
    pub(super) fn group_message(
        &mut self,
        conn: ConnAddr,
        user: &Arc<str>,
        message: &Text<'_>,
        out: &mut Effects,
    ) {
        let group = message.to;
        let post = GroupPost {
            group: group.into(),
            sender: conn,
            sender_user: user.clone(),
            message_id: message.message_id.into(),
            frame: self.new_message_frame(user, message, Some(group)),
            priority: message.priority,
        };
        out.mail(self.home_of(group), Envelope::GroupPost(Box::new(post)));
    }

    /// A member joins or leaves. The store keeps the change; the others hear of it once
    /// it is committed ([`Shard::membership_stored`]). A change that changes nothing (a
    /// join by a member, a leave by a non-member) is confirmed to the asking device alone.
    pub(super) fn group_join(&mut self, change: GroupJoin, out: &mut Effects) {
        let GroupJoin {
            group,
            user,
            device,
            join,
        } = change;
        let changed = if join {
            if self.groups.is_member(&group, &user) {
                false
            } else if !self.group_quota.take(&user) {
                let text = "this user is in --groups-per-user-max groups already: leave one first";
                return out.error(device, ErrorCode::TooManyGroups, text, Some(&group));
            } else {
                self.groups.join(&group, user.clone())
            }
        } else {
            let left = self.groups.leave(&group, &user);
            if left {
                self.group_quota.give_back(&user);
            }
            left
        };
        if !changed {
            outbound::group_member(&mut self.json, &group, &user, join, self.now_ms);
            let frame = self.json.frame();
            return out.frame_to(device, frame, Priority::Normal, 0);
        }
        out.store(Command::Membership {
            group,
            user: (*user).into(),
            joined: join,
            device: device.into(),
            home: self.id,
        });
    }

    /// In a cluster: a member joined or left a group homed here, on this node or another
    /// (JetStream's bucket of members, watched by every node). The node where it happened
    /// announced it; here only the members change.
    pub(super) fn group_membership_elsewhere(&mut self, group: &str, user: &str, joined: bool) {
        if joined {
            if self.groups.join(group, user.into()) {
                self.group_quota.count_anyway(user);
            }
        } else if self.groups.leave(group, user) {
            self.group_quota.give_back(user);
        }
    }

    /// The store answered a membership change: a committed change is announced to every
    /// member (and to the user who left); a failed one is undone here and the asking
    /// device gets `persistence_failed` (`cluster_unavailable` when NATS is out of
    /// reach), so memory and disk agree.
    pub(super) fn membership_stored(
        &mut self,
        group: &str,
        user: &str,
        join: bool,
        device: ConnAddr,
        failed: Option<Failure>,
        out: &mut Effects,
    ) {
        let user: Arc<str> = user.into();
        if let Some(why) = failed {
            if join && self.groups.leave(group, &user) {
                self.group_quota.give_back(&user);
            } else if !join && self.groups.join(group, user.clone()) {
                self.group_quota.count_anyway(&user);
            }
            let text =
                format!("the membership change could not be stored ({why}); nothing changed");
            let code = why.code_or(ErrorCode::PersistenceFailed);
            return out.error(device, code, text, Some(group));
        }
        outbound::group_member(&mut self.json, group, &user, join, self.now_ms);
        let frame = self.json.frame();
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
        };
        self.send_shares(told, &delivery, out);
    }

    /// Fans a post out to every member (the sender's other devices included); a
    /// non-member gets `not_member`.
    pub(super) fn group_post(&mut self, post: GroupPost, out: &mut Effects) {
        if !self.groups.is_member(&post.group, &post.sender_user) {
            let text = "only members may post to a group: send group_join first";
            return out.error(
                post.sender,
                ErrorCode::NotMember,
                text,
                Some(&post.message_id),
            );
        }
        let members = self.groups.members(&post.group);
        let shares = PostShares {
            message_id: post.message_id,
            failed: false,
        };
        let pending = self.posts.start(post.sender, 0, shares);
        let delivery = GroupDelivery {
            users: Vec::new(),
            frame: post.frame,
            priority: post.priority,
            except: Some(post.sender),
            post: Some((self.id, pending)),
        };
        let homes = self.send_shares(members, &delivery, out);
        self.posts.expect(pending, homes);
    }

    /// One member home's share of a post is done; the last one acknowledges the post
    /// (`sent`), or reports that copies could not be stored.
    pub(super) fn group_share_done(&mut self, post: u32, failed: bool, out: &mut Effects) {
        let Some(done) = self.posts.answer(post, |shares| shares.failed |= failed) else {
            return;
        };
        let (sender, shares) = (done.requester, done.so_far);
        if shares.failed {
            let text = "the message reached the members online, but the copies for members \
                        with no device online could not be stored";
            return out.error(
                sender,
                ErrorCode::PersistenceFailed,
                text,
                Some(&shares.message_id),
            );
        }
        let ack = Envelope::Ack {
            sender,
            message_id: shares.message_id,
            status: AckStatus::Sent,
        };
        out.mail(sender.reactor as usize, ack);
    }

    /// Mails each member home its share of `members` with `delivery`'s frame; returns how
    /// many homes got one.
    fn send_shares(
        &self,
        members: Vec<Arc<str>>,
        delivery: &GroupDelivery,
        out: &mut Effects,
    ) -> usize {
        let shares = self.split_by_home(members);
        let homes = shares.len();
        for (home, users) in shares {
            let share = GroupDelivery {
                users,
                frame: delivery.frame.clone(),
                ..*delivery
            };
            out.mail(home, Envelope::GroupDeliver(Box::new(share)));
        }
        homes
    }

    /// At a member's home: numbers the group's event in each of these members' inboxes
    /// and writes it to their live devices (but the sending one). A post's share goes to
    /// the store in one command, which tells the group's home once it is committed; a
    /// membership event is appended to each inbox on its own.
    pub(super) fn group_deliver(&mut self, delivery: GroupDelivery, out: &mut Effects) {
        let timing = (delivery.priority, 0);
        let mut rows = Vec::with_capacity(delivery.users.len());
        let mut delivered = 0;
        for user in &delivery.users {
            let numbered = self.number_event(user, &delivery.frame, timing, delivery.except, out);
            delivered += u32::from(numbered.delivered());
            // Only a cluster's inboxes write the post live after storing it; one node
            // wrote it above, so it needs no sending device named.
            let sender = delivery.except.filter(|addr| {
                self.relays && self.directory.devices(user).iter().any(|d| d.addr == *addr)
            });
            rows.push(ShareRow {
                user: Box::from(&**user),
                seq: numbered.seq,
                json: None,
                except: sender.map(Waiter::from),
            });
        }
        let (kind, json) = (delivery.frame.kind, delivery.frame.json());
        let Some((group_home, post)) = delivery.post else {
            for row in rows {
                out.store(Command::Append(Box::new(Append {
                    user: row.user,
                    seq: row.seq,
                    home: self.id,
                    event: Event {
                        kind,
                        priority: delivery.priority,
                        json: json.clone(),
                    },
                    receipt: false,
                    chat: None,
                    ack: None,
                    dedup: None,
                })));
            }
            return;
        };
        out.store(Command::AppendShare(Box::new(Share {
            kind,
            priority: delivery.priority,
            json,
            rows,
            home: self.id,
            purpose: FanOut::GroupPost,
            reply_to: group_home,
            request: post,
            delivered,
        })));
    }
}
