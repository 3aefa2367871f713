//! The operator's calls (`/api/admin/*`, parsed by `http::admin`).
//!
//! A call about users (devices, disconnect, presence) gathers at the reactor it came
//! to: each home of the users named sends its part, and in a cluster the relay adds the
//! other nodes' parts (`router::admin`); the last part answers. The other nodes run the
//! same call on their homes and send their part back ([`Shard::admin_from_node`]), so an
//! operator asks any node about any user.
//!
//! A group's members are answered by the group's home. A membership change goes the way
//! a member's does (`groups`), decided as an owner would and kept by the store before it
//! is answered.
//!
//! Not a hot path: answers are built with the shard's JSON writer, a few allocations each.

use std::sync::Arc;

use super::{Effects, Shard};
use crate::{
    cluster::relay::Relay,
    http::admin::AdminRequest,
    protocol::{
        inbound::GroupRequest,
        json::{write_list, Obj},
        outbound::PresenceEntry,
    },
    router::{
        admin::AdminDevice, gather::Gather, AdminAsk, AdminPart, AdminWhat, ConnAddr, Envelope,
        GroupChange, NodesAnswer,
    },
};

/// An operator's call about users, gathering its parts at the reactor it came to.
#[derive(Debug)]
pub(super) struct AdminCall {
    /// `Some`: another node asked, and its relay waits there for this node's part.
    /// `None`: the gather's requester, an operator's HTTP connection here, waits.
    answer_to: Option<Box<str>>,
    /// The call.
    call: AdminRequest,
    /// This node's homes' parts, folded.
    here: Option<AdminPart>,
    /// The other nodes' parts (a cluster's only).
    nodes: Option<Box<NodesAnswer>>,
}

impl Shard {
    /// At the HTTP connection's reactor: sends `request` to the homes that answer it (and,
    /// for a call about users in a cluster, to the other nodes).
    pub(super) fn admin(&mut self, conn: ConnAddr, request: &AdminRequest, out: &mut Effects) {
        match request {
            AdminRequest::Members { group } => {
                let what = AdminWhat::Members {
                    group: group.as_str().into(),
                };
                let ask = AdminAsk {
                    requester: conn,
                    what,
                };
                out.mail(self.home_of(group), Envelope::Admin(Box::new(ask)));
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
            AdminRequest::Devices { .. }
            | AdminRequest::Disconnect { .. }
            | AdminRequest::Presence { .. } => {
                self.gather_admin(conn, None, request.clone(), out);
            }
        }
    }

    /// Another node's call about users, said through the relay (which waits at `reply`):
    /// this node's homes answer it, and their part goes back.
    pub(super) fn admin_from_node(
        &mut self,
        call: AdminRequest,
        reply: Box<str>,
        out: &mut Effects,
    ) {
        // No connection here waits: the part goes back to the asking node.
        let nobody = ConnAddr {
            reactor: self.id as u16,
            generation: 0,
            slot: 0,
        };
        self.gather_admin(nobody, Some(reply), call, out);
    }

    /// Asks the homes of the users `call` names for their parts (and, for an operator
    /// here in a cluster, the other nodes for theirs).
    fn gather_admin(
        &mut self,
        requester: ConnAddr,
        answer_to: Option<Box<str>>,
        call: AdminRequest,
        out: &mut Effects,
    ) {
        let named: Vec<Box<str>> = match &call {
            AdminRequest::Devices { user } | AdminRequest::Disconnect { user, .. } => {
                vec![user.as_str().into()]
            }
            AdminRequest::Presence { users } => users.iter().map(|u| u.as_str().into()).collect(),
            AdminRequest::Members { .. } | AdminRequest::Membership { .. } => {
                return debug_assert!(false, "a group's call gathers nothing: {call:?}");
            }
        };
        let shares = self.split_by_home(named);
        let other_nodes = self.relays && answer_to.is_none();
        let awaiting = shares.len() + usize::from(other_nodes);
        let gathering = AdminCall {
            answer_to,
            call,
            here: None,
            nodes: None,
        };
        let request = self.admin_calls.start(requester, awaiting, gathering);
        let Some(Gather { so_far, .. }) = self.admin_calls.get(request) else {
            return;
        };
        for (home, mut users) in shares {
            let what = match &so_far.call {
                AdminRequest::Devices { .. } => AdminWhat::Devices {
                    request,
                    user: users.swap_remove(0),
                },
                AdminRequest::Disconnect { device, code, .. } => AdminWhat::Disconnect {
                    request,
                    user: users.swap_remove(0),
                    device: device.as_deref().map(Into::into),
                    code: *code,
                },
                _ => AdminWhat::Presence { request, users },
            };
            out.mail(
                home,
                Envelope::Admin(Box::new(AdminAsk { requester, what })),
            );
        }
        if other_nodes {
            out.cluster(Relay::Admin {
                reactor: self.id as u16,
                request,
                said: so_far.call.to_node(),
            });
        }
    }

    /// At a home: its part of a call about users homed here, to the reactor where the
    /// call gathers; or a group's members, to the operator.
    pub(super) fn admin_at_home(&mut self, ask: AdminAsk, out: &mut Effects) {
        let AdminAsk { requester, what } = ask;
        let (request, part) = match what {
            AdminWhat::Members { group } => return self.members_answer(requester, &group, out),
            AdminWhat::Devices { request, user } => {
                let devices = self.directory.devices(&user).iter();
                let devices = devices
                    .map(|device| AdminDevice {
                        device_id: device.id.to_string(),
                        connected_at_ms: device.since_ms,
                        reactor: device.addr.reactor,
                        acks: device.acks,
                        node_id: None,
                    })
                    .collect();
                (request, AdminPart::Devices { devices })
            }
            AdminWhat::Disconnect {
                request,
                user,
                device,
                code,
            } => {
                let mut count = 0u32;
                for found in self.directory.devices(&user) {
                    if device.as_deref().is_none_or(|id| *found.id == *id) {
                        let addr = found.addr;
                        let reason = "disconnected by an operator";
                        let close = Envelope::Close { addr, code, reason };
                        out.mail(addr.reactor as usize, close);
                        count += 1;
                    }
                }
                (request, AdminPart::Disconnected { count })
            }
            AdminWhat::Presence { request, users } => {
                let users = users.iter().map(|user| self.presence_here(user)).collect();
                (request, AdminPart::Presence { users })
            }
        };
        let part = Box::new(part);
        out.mail(
            requester.reactor as usize,
            Envelope::AdminPart { request, part },
        );
    }

    /// At the call's reactor: one home's part of call `request`.
    pub(super) fn admin_part(&mut self, request: u32, part: AdminPart, out: &mut Effects) {
        let done = self
            .admin_calls
            .answer(request, |gathering| match &mut gathering.here {
                Some(here) => here.fold(part),
                None => gathering.here = Some(part),
            });
        if let Some(done) = done {
            self.finish_admin(done, out);
        }
    }

    /// At the call's reactor: the other nodes' parts, from the relay.
    pub(super) fn admin_nodes(&mut self, nodes: Box<NodesAnswer>, out: &mut Effects) {
        let request = nodes.request;
        let done = self
            .admin_calls
            .answer(request, |gathering| gathering.nodes = Some(nodes));
        if let Some(done) = done {
            self.finish_admin(done, out);
        }
    }

    /// Every part came: this node's part goes back to the node that asked, or the
    /// operator gets the answer. In a cluster the answer names each device's node and
    /// says how many nodes answered of how many known.
    fn finish_admin(&mut self, done: Gather<AdminCall>, out: &mut Effects) {
        let AdminCall {
            answer_to,
            call,
            here,
            nodes,
        } = done.so_far;
        let Some(mut part) = here else {
            return debug_assert!(false, "a call about users asks one home at least");
        };
        if let Some(reply) = answer_to {
            let part = Box::new(part);
            return out.cluster(Relay::AdminPart { reply, part });
        }
        let scope = nodes.map(|nodes| {
            let NodesAnswer {
                this_node,
                parts,
                known,
                ..
            } = *nodes;
            part.name_node(&this_node);
            let answered = 1 + parts.len() as u64;
            for (node, mut theirs) in parts {
                theirs.name_node(&node);
                part.fold(theirs);
            }
            (answered, u64::from(known))
        });
        let mut body = Vec::with_capacity(256);
        write_answer(&call, &part, scope, &mut body);
        let to = done.requester;
        let answer = Envelope::AdminAnswer {
            to,
            status: 200,
            body,
        };
        out.mail(to.reactor as usize, answer);
    }

    /// At a group's home: its members and settings, to the operator at `requester`.
    fn members_answer(&mut self, requester: ConnAddr, group: &str, out: &mut Effects) {
        let settings = self.groups.settings(group);
        let mut members: Vec<Arc<str>> = self.groups.members(group);
        members.sort();
        let mut body = Vec::with_capacity(64 + 48 * members.len());
        Obj::new(&mut body)
            .str("group_id", group)
            .bool("exists", self.groups.exists(group))
            .bool("invite", settings.invite)
            .with("members", |out| {
                write_list(out, &members, |out, member| {
                    let role = settings.role(member).as_str();
                    Obj::new(out).str("user_id", member).str("role", role).end();
                })
            })
            .end();
        let answer = Envelope::AdminAnswer {
            to: requester,
            status: 200,
            body,
        };
        out.mail(requester.reactor as usize, answer);
    }
}

/// The operator's answer to `call` from its folded `part`: `{user_id, devices}`,
/// `{user_id, disconnected}` or `{users}` (in the order asked). In a cluster, `scope` is
/// `(nodes answered, nodes known)`, said as `"scope":"cluster"` and the two counts.
fn write_answer(
    call: &AdminRequest,
    part: &AdminPart,
    scope: Option<(u64, u64)>,
    body: &mut Vec<u8>,
) {
    let obj = match (call, part) {
        (AdminRequest::Devices { user }, AdminPart::Devices { devices }) => {
            Obj::new(body).str("user_id", user).with("devices", |out| {
                write_list(out, devices, |out, device| {
                    Obj::new(out)
                        .str("device_id", &device.device_id)
                        .opt_str("node_id", device.node_id.as_deref())
                        .u64("connected_at_ms", device.connected_at_ms)
                        .u64("reactor", device.reactor.into())
                        .bool("acks", device.acks)
                        .end()
                })
            })
        }
        (AdminRequest::Disconnect { user, .. }, AdminPart::Disconnected { count }) => {
            Obj::new(body)
                .str("user_id", user)
                .u64("disconnected", (*count).into())
        }
        (AdminRequest::Presence { users: asked }, AdminPart::Presence { users }) => {
            let by_user: std::collections::HashMap<&str, &PresenceEntry> = users
                .iter()
                .map(|entry| (entry.user_id.as_str(), entry))
                .collect();
            let in_order: Vec<&PresenceEntry> = asked
                .iter()
                .filter_map(|user| by_user.get(user.as_str()).copied())
                .collect();
            Obj::new(body).with("users", |out| {
                write_list(out, in_order, |out, entry| {
                    let obj = Obj::new(out)
                        .str("user_id", &entry.user_id)
                        .bool("online", entry.online);
                    match entry.last_seen_ms {
                        Some(at) => obj.u64("last_seen_ms", at),
                        None => obj.null("last_seen_ms"),
                    }
                    .end()
                })
            })
        }
        (call, part) => {
            debug_assert!(false, "{part:?} does not answer {call:?}");
            Obj::new(body)
        }
    };
    match scope {
        Some((answered, known)) => obj
            .str("scope", "cluster")
            .u64("nodes_answered", answered)
            .u64("nodes_known", known)
            .end(),
        None => obj.end(),
    }
}
