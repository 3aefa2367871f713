//! Routing between reactors: who is where, and the envelopes reactors mail each other.
//!
//! Each user has a home reactor (`home_of`). The home's [`crate::shard::Shard`] holds the
//! user's online devices and presence watchers. Sending to user V from reactor A goes
//! A → home(V) → each device's reactor, skipping hops that stay on one reactor. Frames are
//! encoded once and travel as refcounted [`Outgoing`] frames.

pub mod admin;
pub mod gather;

use std::sync::Arc;

pub use admin::{AdminAsk, AdminPart, AdminWhat, NodesAnswer};

use crate::protocol::{
    outbound::{Outgoing, PresenceEntry},
    Priority,
};

/// Where one connection lives: reactor, slab slot, and the slot's generation (so a route
/// to a slot that was closed and reused is detected and dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnAddr {
    /// The reactor that owns the connection.
    pub reactor: u16,
    /// The connection's generation on that reactor.
    pub generation: u32,
    /// The slab key.
    pub slot: u32,
}

impl From<ConnAddr> for crate::store::Waiter {
    /// The connection as the store carries it: its reactor, and the rest as a ticket.
    fn from(addr: ConnAddr) -> Self {
        crate::store::Waiter {
            reactor: usize::from(addr.reactor),
            ticket: u64::from(addr.generation) << 32 | u64::from(addr.slot),
        }
    }
}

impl From<crate::store::Waiter> for ConnAddr {
    /// The connection a store answer is for.
    fn from(waiter: crate::store::Waiter) -> Self {
        ConnAddr {
            reactor: waiter.reactor as u16,
            generation: (waiter.ticket >> 32) as u32,
            slot: waiter.ticket as u32,
        }
    }
}

/// The home reactor of `user_id`: FNV-1a of the id, modulo the reactor count.
///
/// FNV is stable across threads and runs (no random keys), cheap for short ids.
pub fn home_of(user_id: &str, reactors: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in user_id.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % reactors as u64) as usize
}

/// `users` (or groups) by their home among `homes`, homes without any left out: what a
/// request to several homes sends each.
pub fn by_home<U: AsRef<str>>(users: Vec<U>, homes: usize) -> Vec<(usize, Vec<U>)> {
    let mut by_home: Vec<Vec<U>> = (0..homes).map(|_| Vec::new()).collect();
    for user in users {
        by_home[home_of(user.as_ref(), homes)].push(user);
    }
    by_home
        .into_iter()
        .enumerate()
        .filter(|(_, users)| !users.is_empty())
        .collect()
}

/// A frame for every online device of `user`, sent to the user's home.
#[derive(Debug)]
pub struct Delivery {
    /// The recipient user.
    pub user: Box<str>,
    /// The encoded WebSocket frame, shared with every device.
    pub frame: Outgoing,
    /// Its priority in each device's outbound queue.
    pub priority: Priority,
    /// A device not to deliver to (the sending device itself).
    pub except: Option<ConnAddr>,
    /// When set, the home tells this sender whether any device got it.
    pub ack: Option<AckRequest>,
    /// For the copy of a chat message to its sender's other devices: the message's id.
    /// The sender's home delivers a retry's copy only to devices that did not get one.
    pub copy_of: Option<Box<str>>,
    /// When the message was accepted ([`crate::stats::clock_ns`]), for routing latency.
    pub accepted_ns: u64,
    /// Whether it is an inbox event, kept until a device acknowledges it.
    pub durability: Durability,
}

impl Delivery {
    /// `frame` for `user`'s devices, accepted at `accepted_ns`, with `durability`:
    /// nobody is excepted and nobody hears the outcome (callers change what differs).
    pub fn new(
        user: &str,
        (frame, priority): (Outgoing, Priority),
        accepted_ns: u64,
        durability: Durability,
    ) -> Delivery {
        Delivery {
            user: user.into(),
            frame,
            priority,
            except: None,
            ack: None,
            copy_of: None,
            accepted_ns,
            durability,
        }
    }
}

/// Whether a delivery is kept for its user.
#[derive(Debug)]
pub enum Durability {
    /// An inbox event (PROTOCOL.md v2): numbered by `seq` and kept until a device of the
    /// user acknowledges it (messages, receipts, edits, group events).
    Inbox,
    /// For the devices online now, else nobody (typing).
    Transient,
    /// For the devices online now, else the sender hears `peer_offline` (call
    /// signaling is never kept).
    Call {
        /// The sending connection.
        sender: ConnAddr,
        /// The `ref` of the error (the call id).
        reference: Box<str>,
    },
    /// A typing or call signal another node relayed: for the devices online on this
    /// node, never relayed again ([`crate::cluster::relay`]).
    Relayed,
}

/// Who to tell about a delivery's outcome, and for which message.
#[derive(Debug)]
pub struct AckRequest {
    /// The sending connection.
    pub sender: ConnAddr,
    /// The client's message id.
    pub message_id: Box<str>,
    /// Whether the sender gets a `delivery_receipt` when a queued copy is delivered
    /// (WebSocket senders do; HTTP API senders do not).
    pub receipt: bool,
    /// The sending user: with `message_id`, the pair a retry is recognised by.
    pub sender_user: Arc<str>,
    /// The `timestamp` of the `new_message` (Unix ms): where it sits in history.
    pub sent_ms: u64,
}

/// What the receiver's home tells a sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckStatus {
    /// Every copy is committed (a group post).
    Sent,
    /// The store could not take it (it is shutting down).
    Offline,
    /// Its sender has queued `--queue-max-per-sender` messages for the receiver, who has
    /// no device online.
    OverSenderQuota,
}

/// A user came online or went offline, for each of the user's watchers (one allocation
/// per change, shared by every watcher).
#[derive(Debug)]
pub struct PresenceNote {
    /// The user.
    pub user: Box<str>,
    /// Online (first device) or offline (last device gone).
    pub online: bool,
    /// When (Unix ms).
    pub at_ms: u64,
    /// The `presence_update` frame.
    pub frame: Outgoing,
}

/// A message the HTTP API broadcasts, shared by every home that delivers it.
#[derive(Debug)]
pub struct BroadcastMessage {
    /// The id the API gave it.
    pub message_id: Box<str>,
    /// Who it is from.
    pub sender_id: Box<str>,
    /// The text.
    pub text: Box<str>,
    /// Its message type.
    pub message_type: Box<str>,
    /// Its priority.
    pub priority: Priority,
    /// When it was accepted ([`crate::stats::clock_ns`]).
    pub accepted_ns: u64,
}

/// To a home: deliver a broadcast to these users homed there (or all its online users).
#[derive(Debug)]
pub struct BroadcastOrder {
    /// The HTTP connection waiting for the counts.
    pub requester: ConnAddr,
    /// The pending broadcast at the requester's reactor.
    pub request: u32,
    /// The users; `None` for every online user homed there.
    pub users: Option<Vec<Box<str>>>,
    /// The message.
    pub message: Arc<BroadcastMessage>,
}

/// A change of a group's members or settings, for the group's home to decide on.
#[derive(Debug)]
pub struct GroupChange {
    /// The group.
    pub group: Box<str>,
    /// The user who asks.
    pub actor: Arc<str>,
    /// The device that asked (told when the change is refused).
    pub device: ConnAddr,
    /// What is asked.
    pub action: crate::protocol::inbound::GroupRequest,
    /// Asked by an operator (`/api/admin/*`, from the HTTP connection `device`): an
    /// `Add` or `Remove` that no member's role limits.
    pub operator: bool,
}

/// A message to every member of a group.
#[derive(Debug)]
pub struct GroupPost {
    /// The group.
    pub group: Box<str>,
    /// The sending connection (it gets the ack, and no copy).
    pub sender: ConnAddr,
    /// The sending user.
    pub sender_user: Arc<str>,
    /// The client's message id.
    pub message_id: Box<str>,
    /// The `new_message` frame, encoded once for every member.
    pub frame: Outgoing,
    /// Its priority.
    pub priority: Priority,
}

/// A group's frame for the members one home holds (one envelope per home, not per
/// member: a 10,000-member group costs a handful of envelopes).
#[derive(Debug)]
pub struct GroupDelivery {
    /// The members homed at the receiving reactor.
    pub users: Vec<Arc<str>>,
    /// The frame, shared.
    pub frame: Outgoing,
    /// Its priority.
    pub priority: Priority,
    /// The sending device, which gets no copy.
    pub except: Option<ConnAddr>,
    /// For a post: the group's home and the post there, which hears when this home's
    /// share is committed. Membership events have none.
    pub post: Option<(usize, u32)>,
}

/// A `huddle:*` signal: a group's call room.
#[derive(Debug)]
pub struct HuddleSignal {
    /// The group the huddle belongs to.
    pub group: Box<str>,
    /// The huddle (the signal's `callId`).
    pub room: Box<str>,
    /// The signaling connection.
    pub sender: ConnAddr,
    /// The signaling user.
    pub sender_user: Arc<str>,
    /// `huddle:join`, `huddle:leave`, or any other `huddle:*` kind relayed to the room.
    pub kind: Box<str>,
    /// The `signal` frame for the others present.
    pub frame: Outgoing,
}

/// A huddle signal from another node ([`Envelope::HuddleRelayed`]).
#[derive(Debug)]
pub struct HuddleRelayed {
    /// The group.
    pub group: Box<str>,
    /// The room.
    pub room: Box<str>,
    /// The `signal` frame.
    pub frame: Outgoing,
    /// For a `huddle:join`: where the joining node waits to hear who is here.
    pub introduce_to: Option<Box<str>>,
}

/// What reactors mail each other.
#[derive(Debug)]
pub enum Envelope {
    /// To a home: a device authenticated. A device with the same id is replaced.
    Register {
        /// The user.
        user: Arc<str>,
        /// The device id.
        device: Box<str>,
        /// The connection.
        addr: ConnAddr,
        /// It acknowledges what it gets (its `auth` had `resume`).
        acks: bool,
    },
    /// To a device's reactor: the device gets live events from now on; it reads its
    /// inbox (the first page brings `auth_success`), holding what comes live meanwhile.
    Registered {
        /// The connection.
        addr: ConnAddr,
    },
    /// To a home: a device's connection closed.
    Unregister {
        /// The user.
        user: Arc<str>,
        /// The connection.
        addr: ConnAddr,
        /// The client closed it with a close frame (a logout: no presence grace).
        clean: bool,
        /// The close code (1006 without a closing handshake).
        code: u16,
    },
    /// To a home: deliver a frame to a user's devices.
    Deliver(Box<Delivery>),
    /// To a device's reactor: write this frame to this connection.
    ToConn {
        /// The connection.
        addr: ConnAddr,
        /// The encoded frame.
        frame: Outgoing,
        /// Its outbound priority.
        priority: Priority,
        /// When the message was accepted ([`crate::stats::clock_ns`]); 0 for frames that
        /// are not messages (presence), which are not timed.
        accepted_ns: u64,
    },
    /// To a sender's reactor: the outcome of a delivery with an ack request.
    Ack {
        /// The sending connection.
        sender: ConnAddr,
        /// The client's message id.
        message_id: Box<str>,
        /// The outcome.
        status: AckStatus,
    },
    /// To a device's reactor: close this connection with `code` (4003 when replaced)
    /// and `reason`.
    Close {
        /// The connection.
        addr: ConnAddr,
        /// The close code.
        code: u16,
        /// The close frame's reason.
        reason: &'static str,
    },
    /// To a user's home reactor: an authenticated connection moving there. Its socket came
    /// first, through the home's [`crate::sockets::Handoff`], under `id`.
    Moved {
        /// The socket's id in the handoff.
        id: u64,
        /// The connection's state (its socket handle was the old reactor's).
        conn: Box<crate::conn::Conn>,
    },
    /// To a home: `watcher` subscribes to these users' presence; reply to `request`.
    Subscribe {
        /// The watching connection.
        watcher: ConnAddr,
        /// The subscribe request at the watcher's reactor.
        request: u32,
        /// The users.
        users: Vec<Box<str>>,
    },
    /// To a watcher's reactor: a watched user's presence changed. (Through the shard,
    /// not straight to the connection: a `presence_state` still being gathered for the
    /// watcher must not be older than an update written before it.)
    Presence {
        /// The watching connection.
        watcher: ConnAddr,
        /// The change.
        note: Arc<PresenceNote>,
    },
    /// To a home, from the cluster's relay: whether other nodes hold a user watched here
    /// (any of their devices online, or the user in their grace).
    RemotePresence {
        /// The user.
        user: Box<str>,
        /// Whether another node holds the user.
        online: bool,
        /// When that became so (Unix ms).
        at_ms: u64,
    },
    /// To a home: `watcher` stops watching these users.
    Unsubscribe {
        /// The watching connection.
        watcher: ConnAddr,
        /// The users.
        users: Vec<Box<str>>,
    },
    /// To a home: deliver a broadcast.
    Broadcast(Box<BroadcastOrder>),
    /// To a group's home: a change of its members or settings.
    GroupChange(Box<GroupChange>),
    /// To a group's home, from the cluster: a member joined or left on some node (this
    /// one's own changes come back too, and change nothing).
    GroupMembership {
        /// The group.
        group: Box<str>,
        /// The member.
        user: Box<str>,
        /// Joined, or left.
        joined: bool,
    },
    /// To a group's home, from the cluster: a group's settings as some node stored them
    /// (`None`: a v1 group's).
    GroupSettings {
        /// The group.
        group: Box<str>,
        /// Its settings.
        settings: Option<Box<crate::protocol::access::Settings>>,
    },
    /// To a group's home: fan a message out to the members.
    GroupPost(Box<GroupPost>),
    /// To a group's home: a huddle signal for the members present in the room.
    Huddle(Box<HuddleSignal>),
    /// To a group's home, from the cluster: a huddle signal from another node, for the
    /// devices in the room here.
    HuddleRelayed(Box<HuddleRelayed>),
    /// From a group's home to a member's home: one frame for these members homed there.
    GroupDeliver(Box<GroupDelivery>),
    /// To a group's home: one member home's share of a post is delivered and queued.
    GroupShareDone {
        /// The post at the group's home.
        post: u32,
        /// Queueing failed (the store is gone or its commit failed).
        failed: bool,
    },
    /// To a broadcast's requester: one home's counts.
    BroadcastReply {
        /// The pending broadcast at the requester's reactor.
        request: u32,
        /// Users reached on at least one device.
        delivered: u32,
        /// Users with no device online that could not be queued.
        offline: u32,
    },
    /// To a home: an operator's call (`/api/admin/*`).
    Admin(Box<AdminAsk>),
    /// To an operator's HTTP connection: the answer to its call, a JSON body.
    AdminAnswer {
        /// The HTTP connection.
        to: ConnAddr,
        /// The HTTP status.
        status: u16,
        /// The JSON body (an object).
        body: Vec<u8>,
    },
    /// To the reactor where an operator's call about users waits: one home's part of
    /// call `request`.
    AdminPart {
        /// The call at that reactor.
        request: u32,
        /// What the home found.
        part: Box<AdminPart>,
    },
    /// To the same, in a cluster: the other nodes' parts.
    AdminNodes(Box<NodesAnswer>),
    /// To a watcher's reactor: part of the answer to subscribe request `request`.
    PresenceReply {
        /// The subscribe request at the watcher's reactor.
        request: u32,
        /// Presence of the users this home holds.
        entries: Vec<PresenceEntry>,
    },
}

impl Envelope {
    /// Whether the envelope is for the receiving reactor's [`crate::shard::Shard`]; the
    /// others are for the driver, to write to or close one of its connections.
    pub fn is_for_shard(&self) -> bool {
        match self {
            Envelope::Register { .. }
            | Envelope::PresenceReply { .. }
            | Envelope::Presence { .. }
            | Envelope::Unregister { .. }
            | Envelope::Deliver(_)
            | Envelope::Subscribe { .. }
            | Envelope::Unsubscribe { .. }
            | Envelope::RemotePresence { .. }
            | Envelope::Broadcast(_)
            | Envelope::GroupChange(_)
            | Envelope::GroupMembership { .. }
            | Envelope::GroupSettings { .. }
            | Envelope::GroupPost(_)
            | Envelope::Huddle(_)
            | Envelope::HuddleRelayed(_)
            | Envelope::GroupDeliver(_)
            | Envelope::GroupShareDone { .. }
            | Envelope::Admin(_)
            | Envelope::AdminPart { .. }
            | Envelope::AdminNodes(_) => true,
            Envelope::ToConn { .. }
            | Envelope::Registered { .. }
            | Envelope::Ack { .. }
            | Envelope::Close { .. }
            | Envelope::Moved { .. }
            | Envelope::BroadcastReply { .. }
            | Envelope::AdminAnswer { .. } => false,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A connection address on reactor 0, for the router's unit tests.
    pub(crate) fn addr(slot: u32) -> ConnAddr {
        ConnAddr {
            reactor: 0,
            generation: 1,
            slot,
        }
    }

    #[test]
    fn envelopes_stay_small_enough_for_dense_rings() {
        assert!(
            std::mem::size_of::<Envelope>() <= 64,
            "{}",
            std::mem::size_of::<Envelope>()
        );
    }

    #[test]
    fn homes_spread_over_reactors() {
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[home_of(&format!("user{i}"), 4)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        assert_eq!(home_of("alice", 1), 0);
    }
}
