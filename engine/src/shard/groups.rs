//! Groups at their home: joins and leaves (kept by the store, announced once committed)
//! and posts, fanned out as one envelope per member home however large the group. A
//! member home numbers the event in each member's inbox, writes it to their live devices
//! and appends it to every member's inbox in one store command (the post's content once);
//! the post is acknowledged once every member home's share is committed.

use std::sync::Arc;

use super::{groups_state::Groups, Effects, PostShares, Shard};
use crate::{
    protocol::{
        access::Settings,
        codes::ErrorCode,
        inbound::{GroupRequest, Text},
        outbound, Priority, Role,
    },
    router::{AckStatus, ConnAddr, Envelope, GroupChange, GroupDelivery, GroupPost},
    store::{Append, Command, Event, Failure, FanOut, SettingsChange, Share, ShareRow, Waiter},
};

/// Whether `actor` may add `user` to `group` (with `role`, when given) or remove them:
/// the group's settings after it, or the refusal. The owner may do anything but lose
/// the group; an admin may add members and remove members who are not admins.
fn administer(
    groups: &Groups,
    group: &str,
    actor: &str,
    user: &str,
    role: Option<Role>,
) -> Result<Settings, (ErrorCode, &'static str)> {
    let settings = groups.settings(group);
    let (actor_role, user_role) = (settings.role(actor), settings.role(user));
    let member = groups.is_member(group, actor);
    if !member || actor_role == Role::Member {
        return Err((
            ErrorCode::Forbidden,
            "only the group's owner or an admin may do that",
        ));
    }
    if user_role == Role::Owner {
        return Err((
            ErrorCode::Forbidden,
            "no one changes or removes the group's owner",
        ));
    }
    if actor_role != Role::Owner && (role.is_some() || user_role == Role::Admin) {
        return Err((
            ErrorCode::Forbidden,
            "only the group's owner names or removes admins",
        ));
    }
    Ok(with_role(settings, user, role))
}

/// `settings` with `user` named an admin, or no longer one (`role`; `None` changes
/// nothing).
fn with_role(settings: Settings, user: &str, role: Option<Role>) -> Settings {
    let mut after = settings;
    match role {
        Some(Role::Admin) => {
            after.admins.insert(user.into());
        }
        Some(_) => {
            after.admins.remove(user);
        }
        None => {}
    }
    after
}

impl Shard {
    /// At the device's reactor: a change of a group's members or settings goes to the
    /// group's home, which decides on it.
    pub(super) fn ask_group_change(
        &mut self,
        conn: ConnAddr,
        user: &Arc<str>,
        group: &str,
        request: GroupRequest,
        out: &mut Effects,
    ) {
        let change = GroupChange {
            group: group.into(),
            actor: user.clone(),
            device: conn,
            action: request,
            operator: false,
        };
        out.mail(self.home_of(group), Envelope::GroupChange(Box::new(change)));
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

    /// At the group's home: decides on a change (PROTOCOL.md v2, "Group access") and
    /// applies it in memory; the store keeps it, and the members hear of it once it is
    /// committed ([`Shard::membership_stored`]). A refusal (`forbidden`, `conflict`,
    /// `too_many_groups`) goes to the asking device; a change that changes nothing (a
    /// join by a member, a leave by a non-member) is confirmed to it alone.
    pub(super) fn group_change(&mut self, change: GroupChange, out: &mut Effects) {
        let GroupChange {
            group,
            actor,
            device,
            action,
            operator,
        } = change;
        let before = self.groups.settings(&group);
        let decided = match action {
            // An operator (`/api/admin/*`) adds and removes as the owner would, anyone.
            GroupRequest::Add { user, role } if operator => {
                let after = with_role(before.clone(), &user, role);
                let role = after.role(&user);
                Ok((user, Some(role), after))
            }
            GroupRequest::Remove { user } if operator => {
                let after = before.without(&user);
                Ok((user, None, after))
            }
            GroupRequest::Join { token_grants } => {
                let closed = before.invite && self.groups.exists(&group) && !token_grants;
                if closed && !self.groups.is_member(&group, &actor) {
                    Err((
                        ErrorCode::Forbidden,
                        "this group is invite-only: ask its owner or an admin to add you",
                    ))
                } else {
                    Ok((actor.clone(), Some(Role::Member), before.clone()))
                }
            }
            GroupRequest::Leave => Ok((actor.clone(), None, before.without(&actor))),
            GroupRequest::Create { invite } => {
                if self.groups.exists(&group) {
                    Err((
                        ErrorCode::Conflict,
                        "this group exists already: join it, or pick another id",
                    ))
                } else {
                    let settings = Settings {
                        invite,
                        owner: Some((*actor).into()),
                        admins: Default::default(),
                    };
                    Ok((actor.clone(), Some(Role::Owner), settings))
                }
            }
            GroupRequest::Add { user, role } => {
                administer(&self.groups, &group, &actor, &user, role).map(|after| {
                    let role = after.role(&user);
                    (user, Some(role), after)
                })
            }
            GroupRequest::Remove { user } if user == actor => {
                Ok((actor.clone(), None, before.without(&actor)))
            }
            GroupRequest::Remove { user } => administer(&self.groups, &group, &actor, &user, None)
                .map(|_| {
                    let after = before.without(&user);
                    (user, None, after)
                }),
        };
        let (user, joined, after) = match decided {
            Ok(decided) => decided,
            Err((code, text)) => return out.error(device, code, text, Some(&group)),
        };
        let changed = match joined {
            Some(_) if self.groups.is_member(&group, &user) => false,
            Some(_) if !self.user_groups.take(&user, &group) => {
                let text = "this user is in --groups-per-user-max groups already: leave one first";
                return out.error(device, ErrorCode::TooManyGroups, text, Some(&group));
            }
            Some(_) => self.groups.join(&group, user.clone()),
            None => {
                let left = self.groups.leave(&group, &user);
                if left {
                    self.user_groups.give_back(&user, &group);
                }
                left
            }
        };
        // A group all members left is gone, and so are its settings.
        let after = if self.groups.exists(&group) {
            after
        } else {
            Settings::default()
        };
        self.groups.set_settings(&group, after.clone());
        let settings = (after != before).then(|| Box::new(SettingsChange { before, after }));
        if !changed && settings.is_none() {
            let role = joined.map(|_| self.groups.settings(&group).role(&user));
            outbound::group_member(&mut self.json, (&group, &user), role, self.now_ms);
            let frame = self.json.frame();
            return out.frame_to(device, frame, Priority::Normal, 0);
        }
        if operator {
            self.operator_changes.insert(device);
        }
        out.store(Command::Membership {
            group,
            user: (*user).into(),
            joined: joined.is_some(),
            device: device.into(),
            home: self.id,
            settings,
        });
    }

    /// In a cluster: a member joined or left a group homed here, on this node or another
    /// (JetStream's bucket of members, watched by every node). The node where it happened
    /// announced it; here only the members change.
    pub(super) fn group_membership_elsewhere(&mut self, group: &str, user: &str, joined: bool) {
        if joined {
            if self.groups.join(group, user.into()) {
                self.user_groups.count_anyway(user, group);
            }
        } else if self.groups.leave(group, user) {
            self.user_groups.give_back(user, group);
        }
    }

    /// The store answered a membership change: a committed change is announced to every
    /// member (and to the user who left), and an operator's connection gets it as its
    /// answer; a failed one is undone here and the asking device gets
    /// `persistence_failed` (`cluster_unavailable` when NATS is out of reach), so memory
    /// and disk agree.
    pub(super) fn membership_stored(
        &mut self,
        (group, user, join): (&str, &str, bool),
        device: ConnAddr,
        settings: Option<Box<SettingsChange>>,
        failed: Option<Failure>,
        out: &mut Effects,
    ) {
        let user: Arc<str> = user.into();
        if let Some(why) = failed {
            self.operator_changes.remove(&device);
            if join && self.groups.leave(group, &user) {
                self.user_groups.give_back(&user, group);
            } else if !join && self.groups.join(group, user.clone()) {
                self.user_groups.count_anyway(&user, group);
            }
            if let Some(change) = settings {
                self.groups.set_settings(group, change.before);
            }
            let text =
                format!("the membership change could not be stored ({why}); nothing changed");
            let code = why.code_or(ErrorCode::PersistenceFailed);
            return out.error(device, code, text, Some(group));
        }
        let role = join.then(|| self.groups.settings(group).role(&user));
        if self.hooks {
            let (group, user) = (group.into(), user.clone());
            out.hook(crate::events::Hook::GroupMember { group, user, role });
        }
        outbound::group_member(&mut self.json, (group, &user), role, self.now_ms);
        let frame = self.json.frame();
        let mut told = self.groups.members(group);
        if !join {
            told.push(user);
        }
        if self.operator_changes.remove(&device) {
            out.frame_to(device, frame.clone(), Priority::Normal, 0);
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
                    copy: None,
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
