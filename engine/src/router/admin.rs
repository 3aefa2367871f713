//! An operator's call (`/api/admin/*`) on its way through the homes and, in a cluster,
//! the other nodes: what a home is asked ([`AdminAsk`]), what each home or node finds
//! ([`AdminPart`]) and how parts fold into one ([`AdminPart::fold`]). A part crosses
//! NATS as JSON, so it holds plain owned data.
//!
//! Not a hot path: an operator's call is rare, and its parts are small vectors.

use serde::{Deserialize, Serialize};

use super::ConnAddr;
use crate::protocol::outbound::PresenceEntry;

/// An operator's call for a home: about users homed there, or a group.
#[derive(Debug)]
pub struct AdminAsk {
    /// Where the answer goes: for a call about users, the reactor where the call
    /// gathers its parts (the connection is the operator's, or none when another node
    /// asked); for a group's, the operator's HTTP connection itself.
    pub requester: ConnAddr,
    /// What is asked.
    pub what: AdminWhat,
}

/// What an operator asks a home.
#[derive(Debug)]
pub enum AdminWhat {
    /// A user's devices online here, as a part of gathered call `request`.
    Devices {
        /// The call at the requester's reactor.
        request: u32,
        /// The user.
        user: Box<str>,
    },
    /// Close a user's devices here, or one of them, with `code`; a part of `request`.
    Disconnect {
        /// The call at the requester's reactor.
        request: u32,
        /// The user.
        user: Box<str>,
        /// Only this device.
        device: Option<Box<str>>,
        /// The close code.
        code: u16,
    },
    /// These users' presence here, as a part of `request`.
    Presence {
        /// The call at the requester's reactor.
        request: u32,
        /// The users homed here.
        users: Vec<Box<str>>,
    },
    /// A group's members and settings, answered whole.
    Members {
        /// The group.
        group: Box<str>,
    },
}

/// What one home, or one node's homes together, found for a call about users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "part", rename_all = "snake_case")]
pub enum AdminPart {
    /// The user's devices online.
    Devices {
        /// One per device.
        devices: Vec<AdminDevice>,
    },
    /// How many devices were told to close.
    Disconnected {
        /// The count.
        count: u32,
    },
    /// Each user's presence as seen there.
    Presence {
        /// One per user asked there.
        users: Vec<PresenceEntry>,
    },
}

/// One device online, as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminDevice {
    /// The device id.
    pub device_id: String,
    /// When it connected (Unix ms).
    pub connected_at_ms: u64,
    /// The reactor holding its connection, on its node.
    pub reactor: u16,
    /// Whether it speaks protocol v2 acks.
    pub acks: bool,
    /// Its node, in a cluster (filled where parts from several nodes meet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
}

impl AdminPart {
    /// Folds `other` (the same call's part from another home or node) into this one:
    /// devices side by side, counts summed, and a user online if online anywhere, last
    /// seen at the latest time any part saw the user go.
    pub fn fold(&mut self, other: AdminPart) {
        match (self, other) {
            (AdminPart::Devices { devices }, AdminPart::Devices { devices: more }) => {
                devices.extend(more)
            }
            (AdminPart::Disconnected { count }, AdminPart::Disconnected { count: more }) => {
                *count = count.saturating_add(more)
            }
            (AdminPart::Presence { users }, AdminPart::Presence { users: more }) => {
                // Up to 1,000 users a part: found by a map, not a scan each.
                let mut at: std::collections::HashMap<String, usize> = users
                    .iter()
                    .enumerate()
                    .map(|(i, u)| (u.user_id.clone(), i))
                    .collect();
                for seen in more {
                    match at.get(&seen.user_id) {
                        Some(&i) => {
                            let user = &mut users[i];
                            user.online |= seen.online;
                            user.last_seen_ms = user.last_seen_ms.max(seen.last_seen_ms);
                        }
                        None => {
                            at.insert(seen.user_id.clone(), users.len());
                            users.push(seen);
                        }
                    }
                }
                for user in users.iter_mut().filter(|u| u.online) {
                    user.last_seen_ms = None;
                }
            }
            (this, other) => debug_assert!(false, "parts of two calls: {this:?}, {other:?}"),
        }
    }

    /// Names `node` on each device (the other parts of a cluster's answer name theirs).
    pub fn name_node(&mut self, node: &str) {
        if let AdminPart::Devices { devices } = self {
            for device in devices.iter_mut().filter(|d| d.node_id.is_none()) {
                device.node_id = Some(node.to_owned());
            }
        }
    }
}

/// The other nodes' parts of a call about users, gathered by this node's relay.
#[derive(Debug)]
pub struct NodesAnswer {
    /// The call at the reactor where it waits.
    pub request: u32,
    /// This node's id.
    pub this_node: Box<str>,
    /// Each other node that answered in time, and its part.
    pub parts: Vec<(Box<str>, AdminPart)>,
    /// Nodes known alive when the call went out, this one included.
    pub known: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str, node: Option<&str>) -> AdminDevice {
        AdminDevice {
            device_id: id.into(),
            connected_at_ms: 5,
            reactor: 1,
            acks: true,
            node_id: node.map(Into::into),
        }
    }

    fn seen(user: &str, online: bool, last_seen_ms: Option<u64>) -> PresenceEntry {
        PresenceEntry {
            user_id: user.into(),
            online,
            last_seen_ms,
        }
    }

    #[test]
    fn devices_are_listed_side_by_side_and_counts_summed() {
        let mut here = AdminPart::Devices {
            devices: vec![device("phone", None)],
        };
        here.name_node("a");
        here.fold(AdminPart::Devices {
            devices: vec![device("laptop", Some("b"))],
        });
        let expected = vec![device("phone", Some("a")), device("laptop", Some("b"))];
        assert_eq!(here, AdminPart::Devices { devices: expected });
        let mut closed = AdminPart::Disconnected { count: 1 };
        closed.fold(AdminPart::Disconnected { count: 2 });
        assert_eq!(closed, AdminPart::Disconnected { count: 3 });
    }

    #[test]
    fn a_user_is_online_anywhere_or_last_seen_at_the_latest() {
        let mut here = AdminPart::Presence {
            users: vec![seen("u", false, Some(10)), seen("v", false, Some(50))],
        };
        here.fold(AdminPart::Presence {
            users: vec![seen("u", false, Some(30)), seen("v", true, None)],
        });
        here.fold(AdminPart::Presence {
            users: vec![seen("u", false, None), seen("w", false, None)],
        });
        let expected = vec![
            seen("u", false, Some(30)),
            seen("v", true, None),
            seen("w", false, None),
        ];
        assert_eq!(here, AdminPart::Presence { users: expected });
    }

    #[test]
    fn a_part_crosses_nodes_as_json() {
        let part = AdminPart::Devices {
            devices: vec![device("phone", None)],
        };
        let said = serde_json::to_vec(&part).unwrap();
        assert_eq!(serde_json::from_slice::<AdminPart>(&said).unwrap(), part);
        let presence = AdminPart::Presence {
            users: vec![seen("u", false, Some(3))],
        };
        let said = serde_json::to_vec(&presence).unwrap();
        assert_eq!(
            serde_json::from_slice::<AdminPart>(&said).unwrap(),
            presence
        );
    }
}
