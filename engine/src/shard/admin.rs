//! The operator's calls (`/api/admin/*`, parsed by `http::admin`): at the HTTP
//! connection's reactor each goes to the homes that hold its answer; at a home it is
//! answered from the directory or the groups, as a JSON body for the HTTP connection.
//! A group membership change goes the way a member's does (`groups`), decided as an
//! owner would and kept by the store before it is answered.
//!
//! Not a hot path: answers are built with the shard's JSON writer, a few allocations each.

use std::sync::Arc;

use super::{Effects, Shard};
use crate::{
    http::admin::AdminRequest,
    protocol::{inbound::GroupRequest, json::Obj, outbound::PresenceEntry, Role},
    router::{AdminAsk, AdminWhat, ConnAddr, Envelope, GroupChange},
};

impl Shard {
    /// At the HTTP connection's reactor: sends `request` to the homes that answer it.
    pub(super) fn admin(&mut self, conn: ConnAddr, request: &AdminRequest, out: &mut Effects) {
        let ask = |what| {
            Envelope::Admin(Box::new(AdminAsk {
                requester: conn,
                what,
            }))
        };
        match request {
            AdminRequest::Devices { user } => {
                let what = AdminWhat::Devices {
                    user: user.as_str().into(),
                };
                out.mail(self.home_of(user), ask(what));
            }
            AdminRequest::Disconnect { user, device, code } => {
                let what = AdminWhat::Disconnect {
                    user: user.as_str().into(),
                    device: device.as_deref().map(Into::into),
                    code: *code,
                };
                out.mail(self.home_of(user), ask(what));
            }
            AdminRequest::Presence { users } => {
                let mut by_home: Vec<Vec<Box<str>>> = vec![Vec::new(); self.homes];
                for user in users {
                    by_home[self.home_of(user)].push(user.as_str().into());
                }
                let homes = by_home.iter().filter(|users| !users.is_empty()).count();
                let asked = (users.clone(), Vec::with_capacity(users.len()));
                let request = self.admin_presence.start(conn, homes, asked);
                for (home, users) in by_home.into_iter().enumerate() {
                    if !users.is_empty() {
                        out.mail(home, ask(AdminWhat::Presence { request, users }));
                    }
                }
            }
            AdminRequest::Members { group } => {
                let what = AdminWhat::Members {
                    group: group.as_str().into(),
                };
                out.mail(self.home_of(group), ask(what));
            }
            AdminRequest::Membership { group, user, role } => {
                let user: Arc<str> = user.as_str().into();
                let action = match role {
                    Some(role) => GroupRequest::Add {
                        user: user.clone(),
                        role: Some(*role),
                    },
                    None => GroupRequest::Remove { user: user.clone() },
                };
                let change = GroupChange {
                    group: group.as_str().into(),
                    actor: user,
                    device: conn,
                    action,
                    operator: true,
                };
                out.mail(self.home_of(group), Envelope::GroupChange(Box::new(change)));
            }
        }
    }

    /// At a home: answers an operator's call about users or a group homed here.
    pub(super) fn admin_at_home(&mut self, ask: AdminAsk, out: &mut Effects) {
        let AdminAsk { requester, what } = ask;
        let mut body = Vec::with_capacity(256);
        // What is said of users speaks for this node's devices; a group's members are
        // the cluster's.
        let node_scoped = !matches!(what, AdminWhat::Members { .. });
        match what {
            AdminWhat::Devices { user } => self.devices_json(&user, &mut body),
            AdminWhat::Disconnect { user, device, code } => {
                let mut closed = 0u32;
                for found in self.directory.devices(&user) {
                    if device.as_deref().is_none_or(|id| *found.id == *id) {
                        let addr = found.addr;
                        let reason = "disconnected by an operator";
                        let close = Envelope::Close { addr, code, reason };
                        out.mail(addr.reactor as usize, close);
                        closed += 1;
                    }
                }
                Obj::new(&mut body)
                    .str("user_id", &user)
                    .u64("disconnected", closed.into())
                    .end();
            }
            AdminWhat::Presence { request, users } => {
                let entries = users.iter().map(|user| self.presence_here(user)).collect();
                let part = Envelope::AdminPresence { request, entries };
                return out.mail(requester.reactor as usize, part);
            }
            AdminWhat::Members { group } => {
                let settings = self.groups.settings(&group);
                let mut members: Vec<Arc<str>> = self.groups.members(&group);
                members.sort();
                Obj::new(&mut body)
                    .str("group_id", &group)
                    .bool("exists", self.groups.exists(&group))
                    .bool("invite", settings.invite)
                    .with("members", |out| {
                        out.push(b'[');
                        for (i, member) in members.iter().enumerate() {
                            if i > 0 {
                                out.push(b',');
                            }
                            let role = match settings.role(member) {
                                Role::Owner => "owner",
                                Role::Admin => "admin",
                                Role::Member => "member",
                            };
                            Obj::new(out).str("user_id", member).str("role", role).end();
                        }
                        out.push(b']');
                    })
                    .end();
            }
        }
        let to = requester.reactor as usize;
        let answer = Envelope::AdminAnswer {
            to: requester,
            status: 200,
            body,
            node_scoped,
        };
        out.mail(to, answer);
    }

    /// At the operator's reactor: one home's part of a presence call; the last part
    /// answers it, in the order the call named the users.
    pub(super) fn admin_presence_part(
        &mut self,
        request: u32,
        entries: Vec<PresenceEntry>,
        out: &mut Effects,
    ) {
        let Some(done) = self
            .admin_presence
            .answer(request, |(_, so_far)| so_far.extend(entries))
        else {
            return;
        };
        let (asked, mut found) = done.so_far;
        let position: std::collections::HashMap<&str, usize> = asked
            .iter()
            .enumerate()
            .map(|(i, user)| (user.as_str(), i))
            .collect();
        found.sort_by_key(|entry| position.get(entry.user_id.as_str()).copied());
        let mut body = Vec::with_capacity(64 + 64 * found.len());
        Obj::new(&mut body)
            .with("users", |out| {
                out.push(b'[');
                for (i, entry) in found.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    let obj = Obj::new(out)
                        .str("user_id", &entry.user_id)
                        .bool("online", entry.online);
                    match entry.last_seen_ms {
                        Some(at) => obj.u64("last_seen_ms", at),
                        None => obj.null("last_seen_ms"),
                    }
                    .end();
                }
                out.push(b']');
            })
            .end();
        let answer = Envelope::AdminAnswer {
            to: done.requester,
            status: 200,
            body,
            node_scoped: true,
        };
        out.mail(done.requester.reactor as usize, answer);
    }

    /// A user's devices here, as `{user_id, devices:[{device_id, connected_at_ms,
    /// reactor, acks}]}`.
    fn devices_json(&self, user: &str, body: &mut Vec<u8>) {
        let devices = self.directory.devices(user);
        Obj::new(body)
            .str("user_id", user)
            .with("devices", |out| {
                out.push(b'[');
                for (i, device) in devices.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    Obj::new(out)
                        .str("device_id", &device.id)
                        .u64("connected_at_ms", device.since_ms)
                        .u64("reactor", device.addr.reactor.into())
                        .bool("acks", device.acks)
                        .end();
                }
                out.push(b']');
            })
            .end();
    }
}
